//! The one provisioning path of both front ends: from a bundle and the
//! configuration to a container created in a VM.
//!
//! 1. [`plan`]: size the VM, strip the host-only parts of the spec (hooks),
//!    sort its bind mounts into guest files and virtio-fs shares, and
//!    decide how the root file system reaches the guest (an image built
//!    now, a block snapshot, or the bundle's tree shared);
//! 2. [`boot_sandbox`] for a VM of its own (or a pod's first): share root
//!    and binds, the network namespace's TAPs, spare drives for a pod, the
//!    VM booted, its agent's sandbox set up; or [`join_pod`] to go into a
//!    pod's VM: binds below its share root, the image into a spare drive;
//! 3. the caller attaches the process's stdio (which differs: a terminal
//!    and this process's stdio for the CLI, containerd's FIFOs for the
//!    shim), then [`create_container`] writes the guest files and creates
//!    the container.
//!
//! Everything acquired on the host is written to a [`Recorder`] before the
//! next step, so that a failure at any point (or a killed front end) is
//! undone by one [`super::CleanupRecord::release`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::network::NetworkConfig;
use protocol::{Call, SandboxConfig, Storage, StorageSource};
use serde_json::Value;

use super::boot::{boot_vm, check_file, make_vm_dir};
use super::record::Recorder;
use super::{Launcher, POD_SLOTS, SLOT_BYTES, Sandbox, SandboxError};
use crate::agent::AgentClient;
use crate::bundle::{Bundle, GuestFile, guest_mounts, write_guest_files};
use crate::config::{HuskConfig, Sizing, sizing};
use crate::hooks::{self, HookKind};
use crate::hypervisor::{Drive, VmSpec};
use crate::network::Attachment;
use crate::rootfs::{BlockRoot, Delivery, RootfsImage, build_image};
use crate::shares::{self, ShareBind, ShareRoot};

/// How the container's root file system reaches the guest.
#[derive(Debug, Clone)]
pub enum RootPlan {
    /// An image built from the bundle's rootfs, on a read-only drive under
    /// a writable layer in guest memory.
    Image(RootfsImage),
    /// A snapshot that is a block device or image file: the VM's root
    /// drive itself.
    Block(BlockRoot),
    /// The bundle's rootfs shared by virtio-fs.
    Shared,
}

/// What a container needs from the host, read and checked; the root image
/// (if any) is built.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    /// Container ID.
    pub id: String,
    /// The bundle.
    pub bundle: Bundle,
    /// The spec the guest gets: no hooks, bind mounts rewritten.
    pub spec: Value,
    /// The spec's hooks (host programs: they run here).
    pub hooks: Value,
    /// Small host files copied into guest memory.
    pub files: Vec<GuestFile>,
    /// Host directories shared by virtio-fs (with the rootfs when shared).
    pub binds: Vec<ShareBind>,
    /// The root file system.
    pub root: RootPlan,
    /// The VM's size, backend and root delivery.
    pub size: Sizing,
}

/// Where a container goes.
#[derive(Debug, Clone, Copy)]
pub enum Placement<'a> {
    /// A VM of its own; `pod`: it is a pod's sandbox, whose VM others join.
    NewVm {
        /// A pod's sandbox.
        pod: bool,
    },
    /// A pod's VM that is running already.
    Pod(&'a Sandbox),
}

/// Reads what container `id` needs from `bundle` and `config`, and builds
/// its root image in `dir` when it gets one. `block`: containerd's
/// snapshot when it is a block device (a VM of its own only).
pub fn plan(
    config: &HuskConfig,
    bundle: Bundle,
    id: &str,
    dir: &Path,
    block: Option<BlockRoot>,
    placement: Placement<'_>,
) -> Result<ContainerPlan, SandboxError> {
    check_file("kernel", &config.kernel)?;
    check_file("initramfs", &config.initramfs)?;
    let size = sizing(
        config,
        bundle.cpu(),
        bundle.memory_limit(),
        &bundle.annotations,
    )?;
    let mut spec = bundle.spec.clone();
    let hooks = spec
        .as_object_mut()
        .and_then(|o| o.remove("hooks"))
        .unwrap_or_default();
    let mounts = guest_mounts(&mut spec, id)?;
    let mut binds = mounts.shares;
    // A pod's members share through its VM's device when it has one.
    let delivery = match (placement, size.rootfs) {
        (Placement::Pod(vm), Delivery::Auto) if vm.shares.is_some() => Delivery::VirtioFs,
        (Placement::Pod(_), Delivery::Auto) => Delivery::Block,
        (_, d) => d.resolve(),
    };
    let root = match (block, delivery) {
        (Some(b), _) if matches!(placement, Placement::NewVm { .. }) => RootPlan::Block(b),
        (Some(_), _) => {
            return Err(SandboxError::Invalid(
                "a block snapshot cannot be the root of a container that joins a pod VM".into(),
            ));
        }
        (None, Delivery::VirtioFs) => {
            binds.push(shares::rootfs_bind(
                id,
                &bundle.rootfs,
                bundle.root_readonly(),
            ));
            RootPlan::Shared
        }
        (None, Delivery::Auto | Delivery::Block) => RootPlan::Image(build_image(
            &bundle.rootfs,
            &dir.join(format!("rootfs.{}", config.rootfs_format)),
            config.rootfs_format,
        )?),
    };
    Ok(ContainerPlan {
        id: id.to_string(),
        bundle,
        spec,
        hooks,
        files: mounts.files,
        binds,
        root,
        size,
    })
}

/// Where a new VM's files go and how it is spawned.
#[derive(Debug, Clone, Copy)]
pub struct VmPlace<'a> {
    /// The container's state directory: the share root (`shared/`) and a
    /// pod's spare drives live here.
    pub dir: &'a Path,
    /// The VM's directory: its sockets and logs (short: sockets).
    pub vm_dir: &'a Path,
    /// Spawn the VM's processes on this thread (the shim's, so that they
    /// die with it); none: this thread.
    pub launcher: Option<&'a Launcher>,
}

/// A booted sandbox with its agent ready.
#[derive(Debug)]
pub struct Booted {
    /// The VM.
    pub sandbox: Arc<Sandbox>,
    /// A connection to its agent.
    pub client: AgentClient,
    /// The serial of the drive the container's root is on, if it is on one.
    pub root_serial: Option<String>,
    /// When the VM's processes were spawned, from the start of the boot.
    pub spawned: Duration,
    /// When the boot started (host preparation before it).
    pub boot_started: Instant,
    /// The first VM's vsock never answered and this is a second one.
    pub rebooted: bool,
}

/// Boots a VM for `plan` (a pod's too when `pod`), records on `rec` every
/// host resource as it is acquired, and sets up the agent's sandbox.
pub fn boot_sandbox(
    config: &HuskConfig,
    plan: &ContainerPlan,
    pod: bool,
    place: VmPlace<'_>,
    rec: &mut Recorder,
) -> Result<Booted, SandboxError> {
    // A pod VM always gets a share root where virtiofsd is installed:
    // containers joining it later may bind volumes or share their root.
    let share = if !plan.binds.is_empty() || (pod && crate::hypervisor::virtiofs_available()) {
        let root = ShareRoot::create(&place.dir.join("shared"))?;
        rec.update(|r| r.shares = Some(root.clone()))?;
        for b in &plan.binds {
            root.bind(b)?;
        }
        Some(root)
    } else {
        None
    };
    let mut drives: Vec<Drive> = match &plan.root {
        RootPlan::Image(image) => vec![Drive {
            id: "rootfs".into(),
            path: image.path.clone(),
            read_only: true,
        }],
        RootPlan::Block(b) => vec![Drive {
            id: "rootfs".into(),
            path: b.path.clone(),
            read_only: b.read_only,
        }],
        RootPlan::Shared => Vec::new(),
    };
    let (nics, network) = match &plan.bundle.netns {
        Some(netns) => {
            let (attachment, network) = Attachment::create(netns)?;
            let nics = attachment.nics(&network);
            rec.update(|r| r.network = Some(attachment))?;
            (nics, network)
        }
        None => (Vec::new(), NetworkConfig::default()),
    };
    let slots = if pod {
        let others = nics.len() + usize::from(share.is_some());
        let count = POD_SLOTS.checked_sub(others);
        // Without virtio-fs, joining containers need a drive.
        let count = count.filter(|c| *c > 0 || share.is_some()).ok_or_else(|| {
            SandboxError::Invalid(format!(
                "a pod VM has room for {} network interfaces, not {}",
                POD_SLOTS - usize::from(share.is_none()),
                nics.len()
            ))
        })?;
        // Spare drives serve members whose roots come as block images; a
        // pod that shares roots boots without them (the guest probes each
        // at boot, ~115 ms under TCG).
        let want_drives = share.is_none() || plan.size.rootfs == Delivery::Block;
        make_slots(place.dir, if want_drives { count } else { 0 })?
    } else {
        Vec::new()
    };
    drives.extend(slots.iter().map(|(id, path)| Drive {
        id: id.clone(),
        path: path.clone(),
        read_only: true,
    }));
    make_vm_dir(place.vm_dir)?;
    let spec = VmSpec {
        kernel: config.kernel.clone(),
        initrd: config.initramfs.clone(),
        vcpus: plan.size.vcpus,
        memory_mib: plan.size.memory_mib,
        drives,
        netns: plan.bundle.netns.clone(),
        nics,
        shared_dir: share.as_ref().map(ShareRoot::root),
        extra_cmdline: String::new(),
        io_limits: plan.size.io_limits,
    };
    let backend = plan.size.hypervisor.resolve();
    let boot_started = Instant::now();
    let vm_dir = place.vm_dir.to_path_buf();
    let booted = match place.launcher {
        Some(l) => l
            .run(move || boot_vm(backend, &vm_dir, &spec))
            .ok_or(SandboxError::LauncherGone)?,
        None => boot_vm(backend, &vm_dir, &spec),
    }?;
    let processes: Vec<(i32, u64)> = booted
        .vm
        .pids()
        .into_iter()
        .filter_map(|p| crate::process::start_time(p as i32).map(|t| (p as i32, t)))
        .collect();
    rec.update(|r| r.vm_processes = processes)?;
    let mut client = booted.client;
    let shared_fs = share.as_ref().map(|_| shares::TAG.to_string());
    let sandbox = Sandbox::new(booted.vm, slots, share);
    client.call_empty(Call::CreateSandbox(SandboxConfig {
        hostname: plan.spec["hostname"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        network,
        shared_fs,
        ..SandboxConfig::default()
    }))?;
    let root_serial = match plan.root {
        RootPlan::Image(_) | RootPlan::Block(_) => Some("rootfs".to_string()),
        RootPlan::Shared => None,
    };
    Ok(Booted {
        sandbox,
        client,
        root_serial,
        spawned: booted.spawned,
        boot_started,
        rebooted: booted.rebooted,
    })
}

/// Prepares `plan` in the running pod VM `pod`: binds its shares below the
/// pod's share root and writes its root image into a spare drive; returns
/// a connection to the pod's agent and the drive's serial.
pub fn join_pod(
    pod: &Sandbox,
    plan: &ContainerPlan,
    rec: &mut Recorder,
) -> Result<(AgentClient, Option<String>), SandboxError> {
    if pod.is_dead() {
        return Err(SandboxError::PodGone);
    }
    if !plan.binds.is_empty() {
        let root = pod.shares.as_ref().ok_or_else(|| {
            SandboxError::Invalid(
                "shared directories in a pod VM without virtio-fs (virtiofsd was not found when it started)"
                    .into(),
            )
        })?;
        rec.update(|r| r.share_binds = Some((root.clone(), plan.id.clone())))?;
        for b in &plan.binds {
            root.bind(b)?;
        }
    }
    let serial = match &plan.root {
        RootPlan::Image(image) => Some(pod.fill_slot(&image.path).map_err(SandboxError::Pod)?),
        RootPlan::Shared => None,
        RootPlan::Block(_) => {
            return Err(SandboxError::Invalid(
                "a block snapshot cannot be the root of a container that joins a pod VM".into(),
            ));
        }
    };
    let client = AgentClient::connect(&pod.vsock)?;
    Ok((client, serial))
}

/// How the agent finds the container's root.
fn root_storage(plan: &ContainerPlan, serial: Option<String>) -> Result<Storage, SandboxError> {
    match (&plan.root, serial) {
        (RootPlan::Block(b), Some(serial)) => Ok(Storage {
            source: StorageSource::Block { serial },
            fstype: b.fstype.clone(),
            // A read-only snapshot gets a writable layer in guest memory;
            // a writable one is written in place.
            overlay: b.read_only,
            writable: !b.read_only,
        }),
        (RootPlan::Image(image), Some(serial)) => Ok(image.storage(serial)),
        (RootPlan::Shared, _) => Ok(shares::rootfs_storage(
            &plan.id,
            plan.bundle.root_readonly(),
        )),
        (_, None) => Err(SandboxError::Invalid(format!(
            "container {}: its root drive has no serial",
            plan.id
        ))),
    }
}

/// Writes the container's guest files and creates it (its process's stdio
/// must be attached already); returns how long the guest took to create
/// it.
pub fn create_container(
    client: &mut AgentClient,
    plan: &ContainerPlan,
    root_serial: Option<String>,
) -> Result<Duration, SandboxError> {
    let rootfs = root_storage(plan, root_serial)?;
    write_guest_files(client, plan.files.clone())?;
    let t = Instant::now();
    client.call_empty(Call::CreateContainer {
        id: plan.id.clone(),
        spec: plan.spec.clone(),
        rootfs,
    })?;
    Ok(t.elapsed())
}

/// Runs the `createRuntime` and `createContainer` hooks (on the host: the
/// container's namespaces exist only in the guest) with `state`.
pub fn run_create_hooks(plan: &ContainerPlan, state: &Value) -> Result<(), SandboxError> {
    hooks::run(&plan.hooks, HookKind::CreateRuntime, state)?;
    hooks::run(&plan.hooks, HookKind::CreateContainer, state)?;
    Ok(())
}

/// Spare drives of a pod's VM, one per container that may join it
/// (`slotN`, sparse files): a container's image is written into one before
/// the guest mounts it, as virtio-mmio drives cannot be added to a running
/// VM.
fn make_slots(dir: &Path, count: usize) -> Result<Vec<(String, PathBuf)>, SandboxError> {
    (0..count)
        .map(|i| {
            let path = dir.join(format!("slot{i}.img"));
            let err = |source| SandboxError::Io {
                path: path.clone(),
                source,
            };
            let f = std::fs::File::create(&path).map_err(err)?;
            f.set_len(SLOT_BYTES).map_err(err)?;
            Ok((format!("slot{i}"), path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory with a kernel and initramfs (any files), a
    /// bundle whose spec has a hook, a small host file and a host directory
    /// bound in, and a state directory.
    struct Scratch {
        dir: PathBuf,
        config: HuskConfig,
    }

    impl Scratch {
        fn new(tag: &str, delivery: Delivery) -> Scratch {
            let dir = std::env::temp_dir().join(format!("husk-plan-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            for d in ["bundle/rootfs/bin", "state", "volume"] {
                std::fs::create_dir_all(dir.join(d)).unwrap();
            }
            std::fs::write(dir.join("bundle/rootfs/bin/sh"), b"#!").unwrap();
            std::fs::write(dir.join("vmlinux"), b"k").unwrap();
            std::fs::write(dir.join("initramfs"), b"i").unwrap();
            std::fs::write(dir.join("hosts"), b"127.0.0.1 localhost\n").unwrap();
            let spec = serde_json::json!({
                "ociVersion": "1.0.2",
                "process": {"args": ["/bin/sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
                "root": {"path": "rootfs"},
                "hostname": "planned",
                "hooks": {"prestart": [{"path": "/bin/true"}]},
                "mounts": [
                    {"destination": "/etc/hosts", "type": "bind",
                     "source": dir.join("hosts"), "options": ["rbind", "ro"]},
                    {"destination": "/data", "type": "bind",
                     "source": dir.join("volume"), "options": ["rbind"]},
                ],
                "annotations": {"io.husk.vcpus": "2"},
            });
            std::fs::write(dir.join("bundle/config.json"), spec.to_string()).unwrap();
            let config = HuskConfig {
                kernel: dir.join("vmlinux"),
                initramfs: dir.join("initramfs"),
                rootfs: delivery,
                ..HuskConfig::default()
            };
            Scratch { dir, config }
        }

        fn plan(&self, placement: Placement<'_>) -> Result<ContainerPlan, SandboxError> {
            let bundle = Bundle::load(&self.dir.join("bundle")).unwrap();
            plan(
                &self.config,
                bundle,
                "c1",
                &self.dir.join("state"),
                None,
                placement,
            )
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn a_plan_strips_hooks_sorts_mounts_and_sizes_the_vm() {
        let s = Scratch::new("shared", Delivery::VirtioFs);
        let p = s.plan(Placement::NewVm { pod: false }).unwrap();
        assert_eq!(p.id, "c1");
        assert!(p.spec.get("hooks").is_none(), "hooks stay on the host");
        assert!(p.hooks["prestart"].is_array());
        assert_eq!(p.size.vcpus, 2, "the annotation sizes the VM");
        // The small file is copied into guest memory; the directory and
        // the root are shared.
        assert_eq!(p.files.len(), 1, "{:?}", p.files);
        assert_eq!(p.binds.len(), 2, "{:?}", p.binds);
        assert!(matches!(p.root, RootPlan::Shared));
        assert_eq!(
            root_storage(&p, None).unwrap(),
            shares::rootfs_storage("c1", false)
        );
    }

    #[test]
    fn a_block_root_is_imaged_and_found_by_its_serial() {
        let s = Scratch::new("block", Delivery::Block);
        let p = s.plan(Placement::NewVm { pod: true }).unwrap();
        let RootPlan::Image(image) = &p.root else {
            panic!("{:?}", p.root)
        };
        assert!(image.path.starts_with(s.dir.join("state")));
        assert!(image.path.exists());
        // Only the volume is shared.
        assert_eq!(p.binds.len(), 1);
        let storage = root_storage(&p, Some("rootfs".into())).unwrap();
        assert_eq!(
            storage.source,
            StorageSource::Block {
                serial: "rootfs".into()
            }
        );
        assert!(storage.overlay && !storage.writable);
        // A drive root without a serial is refused, not guessed.
        assert!(root_storage(&p, None).is_err());
    }

    #[test]
    fn a_missing_kernel_is_named_before_anything_is_made() {
        let mut s = Scratch::new("nokernel", Delivery::Block);
        s.config.kernel = s.dir.join("missing-vmlinux");
        let e = s.plan(Placement::NewVm { pod: false }).unwrap_err();
        assert!(e.to_string().contains("missing-vmlinux"), "{e}");
        assert_eq!(e.kind(), crate::ErrorKind::Internal);
        assert_eq!(
            std::fs::read_dir(s.dir.join("state")).unwrap().count(),
            0,
            "nothing was built"
        );
    }

    #[test]
    fn a_block_snapshot_cannot_join_a_pod() {
        let s = Scratch::new("podblock", Delivery::Auto);
        let bundle = Bundle::load(&s.dir.join("bundle")).unwrap();
        let block = BlockRoot {
            path: s.dir.join("vmlinux"),
            fstype: "ext4".into(),
            read_only: true,
        };
        let vm = Sandbox::detached_for_tests();
        let e = plan(
            &s.config,
            bundle,
            "c1",
            &s.dir.join("state"),
            Some(block),
            Placement::Pod(&vm),
        )
        .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{e}");
    }
}
