//! The guest agent for tests: built statically, packed as the init of an
//! initramfs, booted under QEMU TCG with vsock served by vhost-device-vsock
//! (the same hybrid Unix-socket convention as husk-vmm).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::initramfs::{Entry, build};

/// Builds (if needed) and returns the static `husk-agent`.
pub fn binary() -> PathBuf {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target_dir = ws.join("target/agent");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&ws)
        .args([
            "build",
            "--release",
            "-p",
            "guest-agent",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .status()
        .expect("run cargo to build husk-agent");
    assert!(status.success(), "building husk-agent failed");
    target_dir.join("x86_64-unknown-linux-gnu/release/husk-agent")
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

/// An ext4 image of a busybox root file system (Debian's busybox-static),
/// made with `mkfs.ext4 -d` (no mounting).
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "dev", "proc", "sys", "tmp", "etc", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    for applet in ["sh", "cat", "echo", "sleep", "id", "ls", "hostname"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let img = dir.join("rootfs.ext4");
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&img)
        .arg("32M")
        .status()
        .expect("run mkfs.ext4 (e2fsprogs)");
    assert!(status.success(), "mkfs.ext4 failed");
    img
}

/// Opens a stdio stream for `container_id`'s own process on the agent.
pub fn attach(vm: &AgentVm, container_id: &str, stream: protocol::StdioStream) -> UnixStream {
    attach_exec(vm, container_id, "", stream)
}

/// Opens a stdio stream for a process (`exec_id`, empty for the container's
/// own) on the agent.
pub fn attach_exec(
    vm: &AgentVm,
    container_id: &str,
    exec_id: &str,
    stream: protocol::StdioStream,
) -> UnixStream {
    let mut s = vm.connect(protocol::STDIO_PORT);
    protocol::write_message(
        &mut s,
        &protocol::StdioAttach {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stream,
        },
    )
    .unwrap();
    let ack: protocol::Response = protocol::read_message(&mut s).expect("stdio attach answer");
    assert_eq!(
        ack.result,
        Ok(protocol::Reply::Empty),
        "stdio attach refused"
    );
    s
}

/// `vhost-device-vsock`, if installed (scripts/setup.sh installs it).
pub fn vhost_device_vsock() -> Option<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_default();
    let candidates = [
        PathBuf::from(&home).join(".cargo/bin/vhost-device-vsock"),
        PathBuf::from("/usr/local/bin/vhost-device-vsock"),
    ];
    candidates.into_iter().find(|p| p.exists())
}

/// A guest booted under QEMU TCG with the agent as init and vsock on
/// `hybrid` (Firecracker's convention). Killed on drop.
#[derive(Debug)]
pub struct AgentVm {
    qemu: Option<Child>,
    daemon: Option<Child>,
    /// The hybrid vsock socket.
    pub hybrid: PathBuf,
    /// Console log.
    pub console: PathBuf,
}

impl AgentVm {
    /// Boots `kernel` with `initrd` in `dir`.
    pub fn boot(dir: &Path, kernel: &Path, initrd: &Path) -> AgentVm {
        Self::boot_with(dir, kernel, initrd, &[])
    }

    /// Boots with extra QEMU arguments (devices).
    pub fn boot_with(dir: &Path, kernel: &Path, initrd: &Path, extra: &[String]) -> AgentVm {
        let daemon_bin = vhost_device_vsock()
            .expect("vhost-device-vsock is not installed (scripts/setup.sh installs it)");
        let vu = dir.join("vu.sock");
        let hybrid = dir.join("hybrid.sock");
        let console = dir.join("console.log");
        let daemon = Command::new(daemon_bin)
            .arg("--guest-cid")
            .arg("3")
            .arg("--socket")
            .arg(&vu)
            .arg("--uds-path")
            .arg(&hybrid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join("vhost-device-vsock.log"))
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            )
            .spawn()
            .expect("spawn vhost-device-vsock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !vu.exists() {
            assert!(
                Instant::now() < deadline,
                "vhost-device-vsock did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let qemu = Command::new("qemu-system-x86_64")
            .args([
                "-M",
                "microvm,acpi=off,memory-backend=mem",
                "-accel",
                "tcg",
                "-cpu",
                "max",
            ])
            .args(["-m", "256", "-smp", "1"])
            .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
            .args(["-global", "virtio-mmio.force-legacy=false"])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-chardev")
            .arg(format!("socket,id=vs,path={}", vu.display()))
            .args(["-device", "vhost-user-vsock-device,chardev=vs"])
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", "console=ttyS0 reboot=t panic=-1 quiet"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn qemu-system-x86_64");
        AgentVm {
            qemu: Some(qemu),
            daemon: Some(daemon),
            hybrid,
            console,
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

    /// Connects to the agent's control port.
    pub fn connect(&self, port: u32) -> UnixStream {
        let mut s = UnixStream::connect(&self.hybrid).expect("connect hybrid vsock socket");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        assert!(
            line.starts_with(b"OK "),
            "handshake answer {:?}",
            String::from_utf8_lossy(&line)
        );
        s
    }

    /// Waits for QEMU to exit; returns whether it did in time.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        if let Some(q) = self.qemu.as_mut() {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = q.try_wait() {
                    self.qemu = None;
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        false
    }
}

impl Drop for AgentVm {
    fn drop(&mut self) {
        for c in [self.qemu.take(), self.daemon.take()].into_iter().flatten() {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
