//! husk-vmm backend: a Firecracker-style JSON configuration and
//! `husk-vmm --no-api --config-file`; vsock's host side is the VMM's own
//! hybrid Unix socket.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{Backend, HypervisorError, IoLimits, KvmKind, Vm, VmSpec, create_file, find_program};

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
    let mut config = vm_config(spec, &cmdline, &vsock);
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

/// husk-vmm's configuration (Firecracker's schema) for `spec`, without the
/// virtio-fs device (which needs its daemon first).
fn vm_config(spec: &VmSpec, cmdline: &str, vsock: &Path) -> serde_json::Value {
    let drives: Vec<serde_json::Value> = spec
        .drives
        .iter()
        .map(|d| {
            let mut drive = serde_json::json!({
                "drive_id": d.id,
                "path_on_host": d.path,
                "is_root_device": false,
                "is_read_only": d.read_only,
            });
            let limits = &spec.io_limits;
            if let Some(l) =
                IoLimits::rate_limiter(limits.disk_bytes_per_sec, limits.disk_ops_per_sec)
            {
                drive["rate_limiter"] = l;
            }
            drive
        })
        .collect();
    let nics: Vec<serde_json::Value> = spec
        .nics
        .iter()
        .enumerate()
        .map(|(n, nic)| {
            let mut iface = serde_json::json!({
                "iface_id": format!("net{n}"),
                "host_dev_name": nic.tap,
                "guest_mac": nic.mac,
            });
            let limits = &spec.io_limits;
            if let Some(l) = IoLimits::rate_limiter(limits.net_rx_bytes_per_sec, None) {
                iface["rx_rate_limiter"] = l;
            }
            if let Some(l) = IoLimits::rate_limiter(limits.net_tx_bytes_per_sec, None) {
                iface["tx_rate_limiter"] = l;
            }
            iface
        })
        .collect();
    serde_json::json!({
        "boot-source": {
            "kernel_image_path": spec.kernel,
            "initrd_path": spec.initrd,
            "boot_args": cmdline,
        },
        "machine-config": {"vcpu_count": spec.vcpus, "mem_size_mib": spec.memory_mib},
        "drives": drives,
        "network-interfaces": nics,
        "vsock": {"guest_cid": 3, "uds_path": vsock},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{Drive, IoLimits};

    #[test]
    fn io_limits_become_rate_limiters_on_every_drive() {
        let mut spec = VmSpec {
            kernel: "k".into(),
            initrd: "i".into(),
            vcpus: 1,
            memory_mib: 128,
            drives: vec![Drive {
                id: "root".into(),
                path: "r.img".into(),
                read_only: true,
            }],
            ..VmSpec::default()
        };
        let plain = vm_config(&spec, "console=ttyS0", Path::new("v.sock"));
        assert!(plain["drives"][0].get("rate_limiter").is_none(), "{plain}");
        spec.io_limits = IoLimits {
            disk_bytes_per_sec: Some(1 << 20),
            disk_ops_per_sec: Some(100),
            ..IoLimits::default()
        };
        let limited = vm_config(&spec, "console=ttyS0", Path::new("v.sock"));
        assert_eq!(
            limited["drives"][0]["rate_limiter"],
            serde_json::json!({
                "bandwidth": {"size": 1 << 20, "refill_time": 1000},
                "ops": {"size": 100, "refill_time": 1000},
            })
        );
        assert!(limited["network-interfaces"].as_array().unwrap().is_empty());
        spec.nics = vec![crate::network::Nic {
            tap: "tap0".into(),
            mac: "06:00:00:00:00:01".into(),
        }];
        spec.io_limits.net_tx_bytes_per_sec = Some(4096);
        let net = vm_config(&spec, "console=ttyS0", Path::new("v.sock"));
        let iface = &net["network-interfaces"][0];
        assert!(iface.get("rx_rate_limiter").is_none(), "{iface}");
        assert_eq!(
            iface["tx_rate_limiter"],
            serde_json::json!({"bandwidth": {"size": 4096, "refill_time": 1000}})
        );
        // Zero means no limit.
        assert!(IoLimits::rate_limiter(Some(0), None).is_none());
        assert_eq!(
            IoLimits::rate_limiter(None, Some(5)),
            Some(serde_json::json!({"ops": {"size": 5, "refill_time": 1000}}))
        );
    }
}
