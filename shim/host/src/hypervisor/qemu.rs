//! QEMU backend: `qemu-system-x86_64 -M microvm` with virtio-mmio devices
//! (modern transport; TAPs in the container's network namespace), guest
//! memory in a shared memfd so that `vhost-device-vsock` can serve vsock
//! with the hybrid Unix-socket convention. TCG unless KVM is
//! hardware-backed.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{HypervisorError, KvmKind, Vm, VmSpec, create_file, find_program, spawn_helper};

pub(super) fn boot(dir: &Path, spec: &VmSpec) -> Result<Vm, HypervisorError> {
    if spec.io_limits.limits_network() {
        return Err(HypervisorError::Unsupported(
            "not implemented: network rate limits on the qemu backend (husk-vmm has them)".into(),
        ));
    }
    let qemu =
        find_program("qemu-system-x86_64", "HUSK_QEMU").ok_or(HypervisorError::MissingProgram {
            program: "qemu-system-x86_64",
            hint: "apt-get install qemu-system-x86",
        })?;
    let daemon = find_program("vhost-device-vsock", "HUSK_VHOST_DEVICE_VSOCK").ok_or(
        HypervisorError::MissingProgram {
            program: "vhost-device-vsock",
            hint: "cargo install vhost-device-vsock",
        },
    )?;
    let vu = dir.join("vu.sock");
    let hybrid = dir.join("vsock.sock");
    let console = dir.join("console.log");
    let helper_log = dir.join("vhost-device-vsock.log");
    let mut helper_cmd = Command::new(daemon);
    super::die_with_parent(&mut helper_cmd);
    helper_cmd
        .arg("--guest-cid")
        .arg("3")
        .arg("--socket")
        .arg(&vu)
        .arg("--uds-path")
        .arg(&hybrid);
    let helper = spawn_helper(helper_cmd, "vhost-device-vsock", &vu, &helper_log)?;
    let mut helpers = super::Helpers::default();
    helpers.push(helper);
    let fs_socket = dir.join("fs.sock");
    if let Some(shared) = &spec.shared_dir {
        helpers.push(super::virtiofsd(dir, shared, &fs_socket)?);
    }

    let accel = if super::kvm_kind() == KvmKind::Hardware {
        "kvm"
    } else {
        "tcg"
    };
    let mem = spec.memory_mib;
    let mut cmd = Command::new(qemu);
    super::die_with_parent(&mut cmd);
    cmd.args(["-M", "microvm,acpi=off,memory-backend=mem", "-accel", accel])
        .args(["-cpu", if accel == "kvm" { "host" } else { "max" }])
        .arg("-m")
        .arg(format!("{mem}M"))
        .arg("-smp")
        .arg(spec.vcpus.to_string())
        .arg("-object")
        .arg(format!("memory-backend-memfd,id=mem,size={mem}M,share=on"))
        // Legacy virtio-mmio loses the vring call fd under TCG.
        .args(["-global", "virtio-mmio.force-legacy=false"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-chardev")
        .arg(format!("socket,id=vs,path={}", vu.display()))
        .args(["-device", "vhost-user-vsock-device,chardev=vs"])
        .arg("-kernel")
        .arg(&spec.kernel)
        .arg("-initrd")
        .arg(&spec.initrd)
        .arg("-append")
        .arg(spec.cmdline(super::Backend::Qemu));
    for d in &spec.drives {
        // Commas in a path would split QEMU's option list.
        let path = d.path.to_string_lossy();
        if path.contains(',') {
            return Err(HypervisorError::Invalid(format!(
                "drive path {path:?} contains a comma"
            )));
        }
        let ro = if d.read_only { ",read-only=on" } else { "" };
        let mut throttle = String::new();
        if let Some(b) = spec.io_limits.disk_bytes_per_sec.filter(|b| *b > 0) {
            throttle.push_str(&format!(",throttling.bps-total={b}"));
        }
        if let Some(o) = spec.io_limits.disk_ops_per_sec.filter(|o| *o > 0) {
            throttle.push_str(&format!(",throttling.iops-total={o}"));
        }
        cmd.arg("-drive")
            .arg(format!(
                "id={},file={path},format=raw,if=none{ro}{throttle}",
                d.id
            ))
            .arg("-device")
            .arg(format!("virtio-blk-device,drive={},serial={}", d.id, d.id));
    }
    if spec.shared_dir.is_some() {
        cmd.arg("-chardev")
            .arg(format!("socket,id=fs,path={}", fs_socket.display()))
            .arg("-device")
            .arg(format!(
                "vhost-user-fs-device,chardev=fs,tag={}",
                crate::shares::TAG
            ));
    }
    for (n, nic) in spec.nics.iter().enumerate() {
        cmd.arg("-netdev")
            .arg(format!(
                "tap,id=net{n},ifname={},script=no,downscript=no",
                nic.tap
            ))
            .arg("-device")
            .arg(format!("virtio-net-device,netdev=net{n},mac={}", nic.mac));
    }
    let _netns = match &spec.netns {
        Some(path) => Some(super::join_netns(&mut cmd, path)?),
        None => None,
    };
    let vmm = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(create_file(&dir.join("qemu.log"))?))
        .spawn()
        .map_err(|source| HypervisorError::Spawn {
            program: "qemu-system-x86_64",
            source,
        })?;
    Ok(Vm {
        backend: super::Backend::Qemu,
        vmm: Some(vmm),
        helpers: helpers.into_inner(),
        vsock: hybrid,
        console,
    })
}
