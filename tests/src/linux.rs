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

/// `husk-guest-tool`, built statically for Linux test guests
/// (`$HUSK_GUEST_TOOL` names one built already).
pub fn guest_tool() -> PathBuf {
    crate::host::static_binary("guest-tool", "husk-guest-tool", "HUSK_GUEST_TOOL")
}

/// The start of every Linux test guest's init script.
const INIT_PREAMBLE: &str = "#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
";

/// An initramfs with busybox, `husk-guest-tool` in /bin and `script` (after
/// the mounts every test needs) as /init.
pub fn test_initramfs(script: &str) -> Vec<u8> {
    use crate::initramfs::{Entry, build};
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox missing: apt-get install busybox-static");
    let tool = std::fs::read(guest_tool()).expect("read husk-guest-tool");
    build(&[
        Entry::Dir("bin".into()),
        Entry::Dir("dev".into()),
        Entry::CharDev("dev/console".into(), 5, 1),
        Entry::Dir("proc".into()),
        Entry::Dir("sys".into()),
        Entry::Dir("tmp".into()),
        Entry::Dir("mnt".into()),
        Entry::File("bin/busybox".into(), 0o755, busybox),
        Entry::Symlink("bin/sh".into(), "busybox".into()),
        Entry::File("bin/husk-guest-tool".into(), 0o755, tool),
        Entry::File(
            "init".into(),
            0o755,
            format!("{INIT_PREAMBLE}{script}").into_bytes(),
        ),
    ])
}

/// A Linux test guest on husk-vmm: the husk guest kernel and a
/// [`test_initramfs`], with the devices added to it, configured and started
/// over husk-vmm's API.
#[derive(Debug, Clone)]
pub struct HuskLinux {
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub mem_mib: u32,
    /// Network namespace (by name) husk-vmm runs in.
    pub netns: Option<String>,
    /// Extra kernel arguments.
    pub append: String,
    /// Device requests (API path, body), made in order before the start.
    pub puts: Vec<(String, serde_json::Value)>,
}

impl Default for HuskLinux {
    fn default() -> Self {
        HuskLinux {
            vcpus: 1,
            mem_mib: 256,
            netns: None,
            append: String::new(),
            puts: Vec::new(),
        }
    }
}

impl HuskLinux {
    /// A drive (`/dev/vdX` in the order added).
    pub fn drive(mut self, id: &str, path: &Path, read_only: bool) -> Self {
        self.puts.push((
            format!("/drives/{id}"),
            serde_json::json!({"drive_id": id, "path_on_host": path,
                               "is_root_device": false, "is_read_only": read_only}),
        ));
        self
    }

    /// A network interface on TAP `tap` (in [`HuskLinux::netns`]).
    pub fn nic(mut self, id: &str, tap: &str, mac: &str) -> Self {
        self.puts.push((
            format!("/network-interfaces/{id}"),
            serde_json::json!({"iface_id": id, "host_dev_name": tap, "guest_mac": mac}),
        ));
        self
    }

    /// The vsock device, CID 3, on hybrid socket `uds`.
    pub fn vsock(mut self, uds: &Path) -> Self {
        self.puts.push((
            "/vsock".into(),
            serde_json::json!({"guest_cid": 3, "uds_path": uds}),
        ));
        self
    }

    /// The entropy device.
    pub fn entropy(mut self) -> Self {
        self.puts.push(("/entropy".into(), serde_json::json!({})));
        self
    }

    /// A virtio-fs device `tag` served by the vhost-user back end on
    /// `socket`.
    pub fn fs(mut self, tag: &str, socket: &Path) -> Self {
        self.puts.push((
            format!("/fs/{tag}"),
            serde_json::json!({"tag": tag, "socket": socket}),
        ));
        self
    }

    /// Starts husk-vmm in `dir` and boots the guest with `script` as init;
    /// the guest's console is in `dir/console.log`.
    pub fn start(&self, dir: &crate::host::TempDir, script: &str) -> crate::vmm::ApiVmm {
        let initrd = dir.join("initramfs.cpio");
        std::fs::write(&initrd, test_initramfs(script)).expect("write initramfs");
        let vm = crate::vmm::ApiVmm::start_in(dir, self.netns.as_deref());
        let args = format!("console=ttyS0 reboot=k panic=-1 quiet {}", self.append);
        let mut puts = vec![
            (
                "/boot-source".to_string(),
                serde_json::json!({"kernel_image_path": kernel(), "initrd_path": initrd,
                                   "boot_args": args}),
            ),
            (
                "/machine-config".to_string(),
                serde_json::json!({"vcpu_count": self.vcpus, "mem_size_mib": self.mem_mib}),
            ),
        ];
        puts.extend(self.puts.iter().cloned());
        for (path, body) in &puts {
            let r = vm.request("PUT", path, Some(&body.to_string()));
            assert_eq!(r.status, 204, "PUT {path}: {}", r.body);
        }
        let r = vm.request(
            "PUT",
            "/actions",
            Some(r#"{"action_type":"InstanceStart"}"#),
        );
        assert_eq!(r.status, 204, "InstanceStart: {}", r.body);
        vm
    }
}

/// The value of `KEY=` on a console line starting with `prefix`.
pub fn report<'a>(console: &'a str, prefix: &str) -> Option<&'a str> {
    console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(prefix))
        .map(str::trim)
}
