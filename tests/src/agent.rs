//! The guest agent for tests: built statically, packed as the init of an
//! initramfs, booted with husk's own hypervisor backends
//! (`husk_host::hypervisor`; QEMU TCG here, with vsock served by
//! vhost-device-vsock in the same hybrid Unix-socket convention as
//! husk-vmm) and driven with husk's own agent client (`husk_host::agent`).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use husk_host::agent::AgentClient;
use husk_host::hypervisor::{Backend, Choice, Drive, Vm, VmSpec};
use husk_host::rootfs::ImageFormat;

use crate::initramfs::{Entry, build};

/// Builds (if needed) and returns the static `husk-agent`; `$HUSK_AGENT`
/// names one built already (the nested lab passes the host's).
pub fn binary() -> PathBuf {
    crate::host::static_binary("guest-agent", "husk-agent", "HUSK_AGENT")
}

/// An initramfs whose /init is `agent`.
pub fn initramfs(agent: &Path) -> Vec<u8> {
    let bytes = std::fs::read(agent).expect("read husk-agent");
    build(&[
        Entry::Dir("dev".into()),
        Entry::CharDev("dev/console".into(), 5, 1),
        Entry::Dir("proc".into()),
        Entry::Dir("sys".into()),
        Entry::Dir("run".into()),
        Entry::Dir("tmp".into()),
        Entry::File("init".into(), 0o755, bytes),
    ])
}

/// A busybox root file system directory (Debian's busybox-static, every
/// applet linked) in `dir/rootfs`.
pub fn busybox_tree(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "dev", "proc", "sys", "tmp", "etc", "root", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    root
}

/// The backend tests use: `HUSK_HYPERVISOR` (auto, husk-vmm, qemu), by
/// default `auto` (QEMU TCG where KVM cannot run stock kernels).
pub fn backend() -> Backend {
    std::env::var("HUSK_HYPERVISOR")
        .ok()
        .map(|s| s.parse::<Choice>().expect("HUSK_HYPERVISOR"))
        .unwrap_or_default()
        .resolve()
}

/// A guest with the agent as init; killed on drop.
#[derive(Debug)]
pub struct AgentVm {
    /// The VM.
    pub vm: Vm,
    /// The hybrid vsock socket.
    pub hybrid: PathBuf,
    /// Console log.
    pub console: PathBuf,
    /// The file system of the `rootfs` drive, when there is one.
    pub rootfs: Option<ImageFormat>,
}

impl AgentVm {
    /// Boots `kernel` with `initrd` in `dir`.
    pub fn boot(dir: &Path, kernel: &Path, initrd: &Path) -> AgentVm {
        Self::boot_with(dir, kernel, initrd, Vec::new())
    }

    /// Boots with drives.
    pub fn boot_with(dir: &Path, kernel: &Path, initrd: &Path, drives: Vec<Drive>) -> AgentVm {
        let spec = VmSpec {
            kernel: kernel.to_path_buf(),
            initrd: initrd.to_path_buf(),
            vcpus: 1,
            memory_mib: 256,
            drives,
            ..VmSpec::default()
        };
        Self::boot_spec(dir, &spec)
    }

    /// Boots `spec`.
    pub fn boot_spec(dir: &Path, spec: &VmSpec) -> AgentVm {
        let vm = Vm::boot(backend(), dir, spec).expect("boot the agent VM");
        AgentVm {
            hybrid: vm.vsock_path().to_path_buf(),
            console: vm.console_path().to_path_buf(),
            rootfs: None,
            vm,
        }
    }

    /// Waits for `needle` on the console.
    pub fn wait_console(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.console).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "console never showed {needle:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A raw connection to a guest vsock port.
    pub fn connect(&self, port: u32) -> UnixStream {
        let s = husk_host::agent::connect_vsock(&self.hybrid, port, Duration::from_secs(60))
            .expect("connect to the guest");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s
    }

    /// A control connection (Version checked).
    pub fn client(&self) -> AgentClient {
        AgentClient::connect_when_ready(&self.hybrid, Duration::from_secs(120))
            .expect("connect to the agent")
    }

    /// Waits for the VM to exit; returns whether it did in time.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        self.vm.wait_exit(timeout)
    }
}

/// Opens a stdio stream for a process (`exec_id` empty for the container's
/// own).
pub fn attach(
    vm: &AgentVm,
    container_id: &str,
    exec_id: &str,
    stream: protocol::StdioStream,
) -> UnixStream {
    husk_host::agent::attach(&vm.hybrid, container_id, exec_id, stream).expect("stdio attach")
}
