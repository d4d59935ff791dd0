//! husk-vmm backend: a Firecracker-style JSON configuration and
//! `husk-vmm --no-api --config-file`; vsock's host side is the VMM's own
//! hybrid Unix socket.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{Backend, HypervisorError, KvmKind, Vm, VmSpec, create_file, find_program};

/// What PVM hosts need on the kernel command line: PVM's CPUID reports
/// features its instruction emulator cannot run.
const PVM_CMDLINE: &str = "clearcpuid=xsave,popcnt,cx16,smap mitigations=off";

pub(super) fn boot(dir: &Path, spec: &VmSpec) -> Result<Vm, HypervisorError> {
    if super::kvm_kind() == KvmKind::Absent {
        return Err(HypervisorError::Unsupported(
            "husk-vmm needs /dev/kvm (choose hypervisor qemu)".into(),
        ));
    }
    let vmm_bin = find_program("husk-vmm", "HUSK_VMM").ok_or(HypervisorError::MissingProgram {
        program: "husk-vmm",
        hint: "cargo build -p vmm",
    })?;
    let vsock = dir.join("vsock.sock");
    let console = dir.join("console.log");
    let mut cmdline = spec.cmdline(Backend::HuskVmm);
    if super::kvm_kind() == KvmKind::Pvm {
        cmdline = format!("{cmdline} {PVM_CMDLINE}");
    }
    let drives: Vec<serde_json::Value> = spec
        .drives
        .iter()
        .map(|d| {
            serde_json::json!({
                "drive_id": d.id,
                "path_on_host": d.path,
                "is_root_device": false,
                "is_read_only": d.read_only,
            })
        })
        .collect();
    let nics: Vec<serde_json::Value> = spec
        .nics
        .iter()
        .enumerate()
        .map(|(n, nic)| {
            serde_json::json!({
                "iface_id": format!("net{n}"),
                "host_dev_name": nic.tap,
                "guest_mac": nic.mac,
            })
        })
        .collect();
    let mut config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": spec.kernel,
            "initrd_path": spec.initrd,
            "boot_args": cmdline,
        },
        "machine-config": {"vcpu_count": spec.vcpus, "mem_size_mib": spec.memory_mib},
        "drives": drives,
        "network-interfaces": nics,
        "vsock": {"guest_cid": 3, "uds_path": vsock},
    });
    let mut helpers = super::Helpers::default();
    if let Some(shared) = &spec.shared_dir {
        let socket = dir.join("fs.sock");
        helpers.push(super::virtiofsd(dir, shared, &socket)?);
        config["fs"] = serde_json::json!([{"tag": crate::shares::TAG, "socket": socket}]);
    }
    let config_path = dir.join("vm.json");
    std::fs::write(&config_path, config.to_string()).map_err(|source| HypervisorError::Io {
        path: config_path.clone(),
        source,
    })?;
    let mut cmd = Command::new(vmm_bin);
    super::die_with_parent(&mut cmd);
    let _netns = match &spec.netns {
        Some(path) => Some(super::join_netns(&mut cmd, path)?),
        None => None,
    };
    let vmm = cmd
        .arg("--no-api")
        .arg("--config-file")
        .arg(&config_path)
        .arg("--console-out")
        .arg(&console)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(create_file(&dir.join("husk-vmm.log"))?))
        .spawn()
        .map_err(|source| HypervisorError::Spawn {
            program: "husk-vmm",
            source,
        })?;
    Ok(Vm {
        backend: Backend::HuskVmm,
        vmm: Some(vmm),
        helpers: helpers.into_inner(),
        vsock,
        console,
    })
}
