//! Helpers for tests of the `husk` CLI: a private runtime root and
//! configuration (the husk guest kernel and an initramfs with the agent),
//! and OCI bundles with a busybox root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::agent;
use crate::host::{TempDir, bin};
use crate::linux;

/// A husk installation for one test: its own `--root` and config file.
#[derive(Debug)]
pub struct Husk {
    /// Scratch directory holding the root, config and bundles.
    pub dir: TempDir,
    /// The runtime root.
    pub root: PathBuf,
    /// The config file (`HUSK_CONFIG`).
    pub config: PathBuf,
}

impl Husk {
    /// Writes the config (kernel, initramfs) in a new scratch directory.
    pub fn new(name: &str) -> Husk {
        let dir = TempDir::new(name);
        let initramfs = dir.join("initramfs.cpio");
        std::fs::write(&initramfs, agent::initramfs(&agent::binary())).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "kernel = {:?}\ninitramfs = {:?}\n",
                linux::kernel().display().to_string(),
                initramfs.display().to_string()
            ),
        )
        .unwrap();
        let root = dir.join("root");
        Husk { dir, root, config }
    }

    /// The `husk` binary.
    pub fn binary() -> PathBuf {
        bin("husk")
    }

    /// `husk --root R ARGS` with this config.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(Self::binary());
        c.arg("--root")
            .arg(&self.root)
            .args(args)
            .env("HUSK_CONFIG", &self.config);
        c
    }

    /// Runs `husk ARGS` with stdin from /dev/null; returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run husk")
    }

    /// `husk create --bundle B ARGS… ID` with stdin and stdout on
    /// /dev/null and stderr in a file: the container keeps its stdio open,
    /// so pipes would not reach EOF when `create` returns.
    pub fn create(&self, bundle: &Path, id: &str, args: &[&str]) -> Output {
        let err_path = self.dir.join(&format!("{id}.create-stderr"));
        let err = std::fs::File::create(&err_path).unwrap();
        let status = self
            .command(&["create", "--bundle", bundle.to_str().unwrap()])
            .args(args)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .status()
            .expect("run husk create");
        let stderr = std::fs::read(&err_path).unwrap();
        let _ = std::fs::remove_file(&err_path);
        Output {
            status,
            stdout: Vec::new(),
            stderr,
        }
    }

    /// A bundle named `name` running `args`, spec merged with `extra`.
    pub fn bundle(&self, name: &str, args: &[&str], extra: serde_json::Value) -> PathBuf {
        let b = self.dir.join(name);
        std::fs::create_dir_all(&b).unwrap();
        let tree = agent::busybox_tree(&b);
        assert_eq!(tree, b.join("rootfs"));
        let mut spec = crate::pod::spec_for(args);
        crate::pod::merge(&mut spec, extra);
        std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
        b
    }

    /// `husk state ID` as JSON, or None if it failed.
    pub fn state(&self, id: &str) -> Option<serde_json::Value> {
        let out = self.run(&["state", id]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("state JSON"))
    }
}

impl Drop for Husk {
    fn drop(&mut self) {
        // Whatever a failed test left running.
        for entry in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = entry.file_name().to_string_lossy().into_owned();
            let _ = self.run(&["delete", "--force", &id]);
        }
    }
}

/// Text of a byte buffer.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether any process still has `path` in its command line.
pub fn processes_mentioning(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) {
                found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// Accepts one connection on `listener` and receives the descriptor sent
/// with `SCM_RIGHTS` (a console socket's pty master).
pub fn receive_fd(listener: &std::os::unix::net::UnixListener) -> std::fs::File {
    use std::os::fd::{AsRawFd, FromRawFd};
    let (conn, _) = listener.accept().expect("accept on the console socket");
    let mut data = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut control = [0u8; 64];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive
    // the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    // SAFETY: recvmsg(2) into the buffers described by `msg`.
    let n = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, 0) };
    assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
    // SAFETY: walking the control messages recvmsg filled in.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        assert!(!cmsg.is_null(), "no descriptor on the console socket");
        assert_eq!((*cmsg).cmsg_type, libc::SCM_RIGHTS);
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>());
        std::fs::File::from_raw_fd(fd)
    }
}
