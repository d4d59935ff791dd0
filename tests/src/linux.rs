//! The husk guest kernel for tests: built (or taken from the cache) by
//! `kernel-config/build.sh`, booted under QEMU TCG.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Path of the guest vmlinux: `$HUSK_KERNEL`, or what `kernel-config/build.sh`
/// builds (cached; minutes the first time).
pub fn kernel() -> PathBuf {
    if let Ok(k) = std::env::var("HUSK_KERNEL") {
        return PathBuf::from(k);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel-config/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run kernel-config/build.sh");
    assert!(out.status.success(), "kernel-config/build.sh failed");
    PathBuf::from(
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .lines()
            .last()
            .unwrap(),
    )
}

/// Options of one QEMU TCG boot.
#[derive(Debug, Clone)]
pub struct QemuBoot<'a> {
    /// Kernel (ELF vmlinux with PVH note).
    pub kernel: &'a Path,
    /// Initramfs.
    pub initrd: &'a Path,
    /// Extra kernel arguments.
    pub append: &'a str,
    /// vCPUs.
    pub smp: u32,
    /// Memory in MiB.
    pub mem_mib: u32,
    /// Extra QEMU arguments (devices).
    pub extra: Vec<String>,
}

/// Boots under `qemu-system-x86_64 -M microvm -accel tcg` and returns its output
/// (the guest console is on stdout). The guest must end by rebooting.
pub fn qemu_tcg(boot: &QemuBoot<'_>, timeout: Duration) -> Output {
    let append = format!("console=ttyS0 reboot=t panic=-1 {}", boot.append);
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,acpi=off",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .args([
            "-m",
            &boot.mem_mib.to_string(),
            "-smp",
            &boot.smp.to_string(),
        ])
        .arg("-kernel")
        .arg(boot.kernel)
        .arg("-initrd")
        .arg(boot.initrd)
        .args(["-append", &append])
        .args(&boot.extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qemu-system-x86_64 (apt-get install qemu-system-x86)");
    crate::vmm::wait_output(child, timeout)
}
