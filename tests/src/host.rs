//! What kind of host the tests run on. A missing or unusable /dev/kvm is a
//! test failure, never a skip.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The flavour of KVM on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKvm {
    /// VMX/SVM: husk-vmm boots stock Linux guests.
    Hardware,
    /// PVM: only tiny guests (and PVM-enlightened kernels) run at speed.
    Pvm,
}

/// Detects the host, panicking if /dev/kvm cannot be opened read-write.
pub fn require_kvm() -> HostKvm {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("/dev/kvm is not usable on this host ({e}); husk-vmm tests need KVM");
    }
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        HostKvm::Pvm
    } else {
        HostKvm::Hardware
    }
}

/// Prints which host this is, loudly, once per test binary.
pub fn announce(host: HostKvm) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| match host {
        HostKvm::Pvm => eprintln!(
            "*** host KVM is PVM (kvm_pvm): husk-vmm is tested with the test guests; \
             Linux guests run under QEMU TCG ***"
        ),
        HostKvm::Hardware => {
            eprintln!("*** host KVM is hardware-backed: husk-vmm boots Linux guests too ***")
        }
    });
}

/// Directory holding the workspace's built binaries (target/<profile>).
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("HUSK_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary, panicking with a hint if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

/// Builds (if needed) and returns a statically linked binary `name` of
/// workspace package `package`, for a guest: glibc with `+crt-static`, in
/// its own target directory (`target/agent`). `$env_override` names one
/// built already (the nested lab passes the host's).
pub fn static_binary(package: &str, name: &str, env_override: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env_override) {
        return PathBuf::from(path);
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target_dir = ws.join("target/agent");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(&ws)
        .args([
            "build",
            "--release",
            "-p",
            package,
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .status()
        .unwrap_or_else(|e| panic!("run cargo to build {name}: {e}"));
    assert!(status.success(), "building {name} failed");
    target_dir
        .join("x86_64-unknown-linux-gnu/release")
        .join(name)
}

/// A fresh, unique temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `/tmp/husk-test-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("husk-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("HUSK_KEEP_TEST_DIRS").is_some() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Lazily unmounts every mount point below `dir` (what a container engine
/// left mounted there), deepest first.
pub fn unmount_below(dir: &Path) {
    let prefix = format!("{}/", dir.display());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = std::process::Command::new("umount")
            .args(["--lazy", m])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Asserts that `measured` is within 10% of what a rate limit says it
/// should take (`expected`), printing both.
pub fn within_ten_percent(what: &str, measured: Duration, expected: Duration) {
    let ratio = measured.as_secs_f64() / expected.as_secs_f64();
    eprintln!(
        "{what}: {:.3} s, the limit says {:.3} s ({ratio:.3}x)",
        measured.as_secs_f64(),
        expected.as_secs_f64()
    );
    assert!(
        (0.9..=1.1).contains(&ratio),
        "{what}: took {measured:?}, the limit says {expected:?} ({ratio:.3}x)"
    );
}
