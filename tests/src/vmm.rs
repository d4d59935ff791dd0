//! Running husk-vmm as a child process, as users do.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::host::{TempDir, bin};

/// A VM configuration file in Firecracker's schema.
pub fn config_json(
    kernel: &Path,
    initrd: Option<&Path>,
    args: &str,
    vcpus: u32,
    mem_mib: u32,
) -> String {
    let mut boot = serde_json::json!({
        "kernel_image_path": kernel,
        "boot_args": args,
    });
    if let Some(i) = initrd {
        boot["initrd_path"] = serde_json::json!(i);
    }
    serde_json::json!({
        "boot-source": boot,
        "machine-config": {"vcpu_count": vcpus, "mem_size_mib": mem_mib},
    })
    .to_string()
}

/// Runs `husk-vmm --no-api --config-file` on `config` with a timeout; kills
/// it (and fails) if it does not exit in time.
pub fn run_config(dir: &TempDir, config: &str, timeout: Duration) -> Output {
    let path = dir.join("vm.json");
    std::fs::write(&path, config).expect("write config");
    let child = Command::new(bin("husk-vmm"))
        .args(["--no-api", "--config-file"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn husk-vmm");
    wait_output(child, timeout)
}

/// Waits for a child with a deadline, killing it on timeout.
pub fn wait_output(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait().expect("try_wait") {
            Some(_) => return child.wait_with_output().expect("wait_with_output"),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("wait_with_output");
                panic!(
                    "process did not exit within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// A husk-vmm started with an API socket; killed on drop.
#[derive(Debug)]
pub struct ApiVmm {
    /// The child, until waited for.
    pub child: Option<Child>,
    /// API socket path.
    pub sock: PathBuf,
    /// Console output file.
    pub console: PathBuf,
    /// The VMM's stderr (its log), kept in a file so that a failure can
    /// show it while the VMM still runs.
    pub stderr: PathBuf,
}

/// An HTTP answer from the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    /// Status code.
    pub status: u16,
    /// Body text.
    pub body: String,
}

impl ApiVmm {
    /// Starts `husk-vmm --api-sock` with its console in `dir`.
    pub fn start(dir: &TempDir) -> ApiVmm {
        Self::start_in(dir, None)
    }

    /// Starts `husk-vmm --api-sock` with its console in `dir`, in network
    /// namespace `netns` (by name) if one is given.
    pub fn start_in(dir: &TempDir, netns: Option<&str>) -> ApiVmm {
        Self::spawn(dir, netns, &[])
    }

    /// Starts `husk-vmm --api-sock` with its console in `dir` and `extra`
    /// arguments.
    pub fn start_with_args(dir: &TempDir, extra: &[&str]) -> ApiVmm {
        Self::spawn(dir, None, extra)
    }

    fn spawn(dir: &TempDir, netns: Option<&str>, extra: &[&str]) -> ApiVmm {
        let sock = dir.join("api.sock");
        let console = dir.join("console.log");
        let stderr = dir.join("vmm.stderr");
        let log = std::fs::File::create(&stderr).expect("create the VMM's stderr file");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("husk-vmm"));
                c
            }
            None => Command::new(bin("husk-vmm")),
        };
        // For comparisons by hand: the same guest without the filters.
        if std::env::var_os("HUSK_TEST_NO_SECCOMP").is_some() {
            cmd.arg("--no-seccomp");
        }
        let child = cmd
            .arg("--api-sock")
            .arg(&sock)
            .arg("--console-out")
            .arg(&console)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn husk-vmm");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "API socket did not appear");
            std::thread::sleep(Duration::from_millis(2));
        }
        ApiVmm {
            child: Some(child),
            sock,
            console,
            stderr,
        }
    }

    /// Sends one request on a new connection.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> ApiResponse {
        api_request(&self.sock, method, path, body)
    }

    /// The console output so far.
    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Waits until the console contains `needle`.
    pub fn wait_console(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console_text();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "console never showed {needle:?}; it has:\n{text}\nhusk-vmm's stderr:\n{}",
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the process to exit and returns its output.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let child = self.child.take().expect("child already waited for");
        let mut out = wait_output(child, timeout);
        out.stderr = std::fs::read(&self.stderr).unwrap_or_default();
        out
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }
}

impl Drop for ApiVmm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One HTTP request over a Unix socket; returns status and body.
pub fn api_request(sock: &Path, method: &str, path: &str, body: Option<&str>) -> ApiResponse {
    let mut s = UnixStream::connect(sock).expect("connect API socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    ApiResponse { status, body }
}

/// The upstream `virtiofsd` (installed by scripts/setup.sh).
pub fn virtiofsd_binary() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([home.join(".cargo/bin")])
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file())
        .expect("virtiofsd (scripts/setup.sh installs it)")
}

/// virtiofsd sharing a directory on a vhost-user socket; killed on drop.
#[derive(Debug)]
pub struct Virtiofsd(Child);

impl Virtiofsd {
    /// Shares `shared` on `socket` with no caching (every access reaches
    /// the host).
    pub fn start(shared: &Path, socket: &Path) -> Virtiofsd {
        Self::start_with(shared, socket, "never")
    }

    /// Shares `shared` on `socket` with cache mode `cache` (`never`,
    /// `auto`, `always`).
    pub fn start_with(shared: &Path, socket: &Path, cache: &str) -> Virtiofsd {
        let child = Command::new(virtiofsd_binary())
            .arg("--socket-path")
            .arg(socket)
            .arg("--shared-dir")
            .arg(shared)
            .args([
                "--cache",
                cache,
                "--rlimit-nofile",
                "0",
                "--sandbox",
                "none",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start virtiofsd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "virtiofsd never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        Virtiofsd(child)
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
