//! Hypervisor backends: the guest (kernel, agent initramfs, drives, vsock)
//! boots under `husk-vmm` where KVM is hardware-backed, or under QEMU
//! (`-M microvm`, TCG where KVM cannot run stock kernels) with vsock served
//! by `vhost-device-vsock`. Either way the host reaches the agent through a
//! hybrid vsock Unix socket with the same `CONNECT <port>` convention.

mod husk_vmm;
mod qemu;

pub use crate::network::Nic;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Errors starting or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// A program the backend needs is missing.
    #[error("{program} not found ({hint})")]
    MissingProgram {
        /// The program.
        program: &'static str,
        /// How to get it.
        hint: &'static str,
    },
    /// A program could not be started.
    #[error("start {program}: {source}")]
    Spawn {
        /// The program.
        program: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Writing the VM's files failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A helper process did not come up.
    #[error("{what} did not start{detail}")]
    NotStarted {
        /// The program.
        what: &'static str,
        /// Why, from its log (": …"), or " in time".
        detail: String,
    },
    /// The configuration names something invalid.
    #[error("invalid VM configuration: {0}")]
    Invalid(String),
    /// The backend cannot run on this host.
    #[error("{0}")]
    Unsupported(String),
}

/// Which hypervisor runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// husk's own VMM on KVM.
    HuskVmm,
    /// QEMU microvm (TCG, or KVM where it is hardware-backed).
    Qemu,
}

/// The configured choice (`hypervisor = "husk-vmm" | "qemu" | "auto"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Choice {
    /// husk-vmm where KVM is hardware-backed, QEMU otherwise.
    #[default]
    Auto,
    /// Always husk-vmm.
    HuskVmm,
    /// Always QEMU.
    Qemu,
}

impl FromStr for Choice {
    type Err = HypervisorError;
    fn from_str(s: &str) -> Result<Choice, HypervisorError> {
        match s {
            "auto" => Ok(Choice::Auto),
            "husk-vmm" => Ok(Choice::HuskVmm),
            "qemu" => Ok(Choice::Qemu),
            other => Err(HypervisorError::Invalid(format!(
                "hypervisor {other:?} is not auto, husk-vmm or qemu"
            ))),
        }
    }
}

/// What KVM on this host can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvmKind {
    /// No usable /dev/kvm.
    Absent,
    /// KVM on VMX/SVM: runs stock Linux guests.
    Hardware,
    /// PVM (paravirtualised KVM inside a cloud VM): stock kernels die in
    /// its instruction emulator.
    Pvm,
}

/// Probes /dev/kvm and the kind of KVM behind it.
pub fn kvm_kind() -> KvmKind {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !usable {
        return KvmKind::Absent;
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return KvmKind::Pvm;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if hw { KvmKind::Hardware } else { KvmKind::Pvm }
}

impl Choice {
    /// The backend to use on this host.
    pub fn resolve(self) -> Backend {
        match self {
            Choice::HuskVmm => Backend::HuskVmm,
            Choice::Qemu => Backend::Qemu,
            Choice::Auto => match kvm_kind() {
                KvmKind::Hardware => Backend::HuskVmm,
                KvmKind::Absent | KvmKind::Pvm => Backend::Qemu,
            },
        }
    }
}

/// A virtio-blk drive; the guest sees `id` as the device serial.
#[derive(Clone, Debug)]
pub struct Drive {
    /// Drive ID (serial).
    pub id: String,
    /// Image file or block device.
    pub path: PathBuf,
    /// Read-only.
    pub read_only: bool,
}

/// Per-second limits on a VM's I/O, each `None` for no limit: what a
/// tenant's drives and network devices may move (husk-vmm's token-bucket
/// rate limiters, refilled every second; QEMU's block throttling).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IoLimits {
    /// Bytes per second read and written, per drive.
    pub disk_bytes_per_sec: Option<u64>,
    /// Requests per second, per drive.
    pub disk_ops_per_sec: Option<u64>,
    /// Bytes per second into the guest, per network device.
    pub net_rx_bytes_per_sec: Option<u64>,
    /// Bytes per second out of the guest, per network device.
    pub net_tx_bytes_per_sec: Option<u64>,
}

impl IoLimits {
    /// husk-vmm's `rate_limiter` object for a bandwidth and an operations
    /// rate (either may be absent); `None` when neither is set.
    pub fn rate_limiter(bytes: Option<u64>, ops: Option<u64>) -> Option<serde_json::Value> {
        let bucket = |per_sec: u64| serde_json::json!({"size": per_sec, "refill_time": 1000});
        let mut limiter = serde_json::Map::new();
        if let Some(b) = bytes.filter(|b| *b > 0) {
            limiter.insert("bandwidth".into(), bucket(b));
        }
        if let Some(o) = ops.filter(|o| *o > 0) {
            limiter.insert("ops".into(), bucket(o));
        }
        (!limiter.is_empty()).then_some(serde_json::Value::Object(limiter))
    }

    /// Whether a network limit is set.
    pub fn limits_network(&self) -> bool {
        self.net_rx_bytes_per_sec.is_some_and(|v| v > 0)
            || self.net_tx_bytes_per_sec.is_some_and(|v| v > 0)
    }
}

/// What to boot.
#[derive(Clone, Debug, Default)]
pub struct VmSpec {
    /// Guest kernel (vmlinux or bzImage).
    pub kernel: PathBuf,
    /// initramfs with the agent as /init.
    pub initrd: PathBuf,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// Drives.
    pub drives: Vec<Drive>,
    /// The network namespace the VMM runs in (where its TAPs are); none:
    /// the caller's.
    pub netns: Option<PathBuf>,
    /// Network devices.
    pub nics: Vec<Nic>,
    /// A host directory exported by virtio-fs with tag
    /// [`crate::shares::TAG`] (served by `virtiofsd`).
    pub shared_dir: Option<PathBuf>,
    /// Appended to the kernel command line.
    pub extra_cmdline: String,
    /// Rate limits on the drives and network devices.
    pub io_limits: IoLimits,
}

/// Kernel command line of every husk guest; the backend adds how the
/// guest reboots (which ends the VM): husk-vmm's i8042 reset line
/// (`reboot=k`), or a triple fault for QEMU's microvm, which has no i8042
/// (`reboot=t`, with `-no-reboot`).
pub const BASE_CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

impl VmSpec {
    fn validate(&self) -> Result<(), HypervisorError> {
        if self.vcpus == 0 || self.memory_mib < 64 {
            return Err(HypervisorError::Invalid(
                "at least 1 vCPU and 64 MiB".into(),
            ));
        }
        for d in &self.drives {
            let ok = !d.id.is_empty()
                && d.id.len() <= 20
                && d.id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(HypervisorError::Invalid(format!("drive id {:?}", d.id)));
            }
        }
        if self.nics.len() > protocol::network::MAX_INTERFACES {
            return Err(HypervisorError::Invalid(format!(
                "more than {} network devices",
                protocol::network::MAX_INTERFACES
            )));
        }
        for n in &self.nics {
            if !protocol::network::is_ifname(&n.tap) || !protocol::network::is_mac(&n.mac) {
                return Err(HypervisorError::Invalid(format!(
                    "network device {} with MAC {}",
                    n.tap, n.mac
                )));
            }
        }
        Ok(())
    }

    /// The guest's kernel command line under `backend`.
    fn cmdline(&self, backend: Backend) -> String {
        let reboot = match backend {
            Backend::HuskVmm => "reboot=k",
            Backend::Qemu => "reboot=t",
        };
        if self.extra_cmdline.is_empty() {
            format!("{BASE_CMDLINE} {reboot}")
        } else {
            format!("{BASE_CMDLINE} {reboot} {}", self.extra_cmdline)
        }
    }
}

/// A running VM: its processes are killed when it is dropped.
#[derive(Debug)]
pub struct Vm {
    backend: Backend,
    vmm: Option<Child>,
    helpers: Vec<Child>,
    vsock: PathBuf,
    console: PathBuf,
}

impl Vm {
    /// Boots `spec` with `backend`; the VM's sockets and logs go in `dir`.
    pub fn boot(backend: Backend, dir: &Path, spec: &VmSpec) -> Result<Vm, HypervisorError> {
        spec.validate()?;
        match backend {
            Backend::HuskVmm => husk_vmm::boot(dir, spec),
            Backend::Qemu => qemu::boot(dir, spec),
        }
    }

    /// The backend running it.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The hybrid vsock socket (`CONNECT <port>`).
    pub fn vsock_path(&self) -> &Path {
        &self.vsock
    }

    /// The guest console log.
    pub fn console_path(&self) -> &Path {
        &self.console
    }

    /// PID of the VMM process.
    pub fn pid(&self) -> Option<u32> {
        self.vmm.as_ref().map(Child::id)
    }

    /// PIDs of every process of the VM (VMM and helpers).
    pub fn pids(&self) -> Vec<u32> {
        self.vmm
            .iter()
            .chain(self.helpers.iter())
            .map(Child::id)
            .collect()
    }

    /// Waits (at most `limit`; zero: only looks) for the VMM to exit; true
    /// if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let Some(vmm) = self.vmm.as_mut() else {
            return true;
        };
        loop {
            if let Ok(Some(_)) = vmm.try_wait() {
                self.vmm = None;
                self.stop_helpers();
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop_helpers(&mut self) {
        stop_all(&mut self.helpers);
    }

    /// Kills the VM.
    pub fn kill(&mut self) {
        if let Some(mut v) = self.vmm.take() {
            let _ = v.kill();
            let _ = v.wait();
        }
        self.stop_helpers();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes the child die with the thread that spawns it, so that a VM never
/// outlives the process that owns it (even when that one is killed with
/// SIGKILL). Spawn VMs from a thread that lives as long as they should.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls prctl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes the child run in the network namespace at `netns` (where its
/// TAPs are), as a jailer would; returns the namespace file, which must
/// stay open until the child is spawned.
pub(crate) fn join_netns(
    cmd: &mut Command,
    netns: &Path,
) -> Result<std::fs::File, HypervisorError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let file = std::fs::File::open(netns).map_err(|source| HypervisorError::Io {
        path: netns.to_path_buf(),
        source,
    })?;
    let fd = file.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls setns(2), which is async-signal-safe, on a descriptor the parent
    // holds open until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(file)
}

/// Finds a program: `$env_var`, next to the running executable (or its
/// parent directory, for test binaries in `deps/`), then `PATH`.
pub(crate) fn find_program(name: &str, env_var: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        return Some(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Spawns a helper daemon (vhost-device-vsock, virtiofsd) with its stderr
/// in `log` and waits for it to create `socket`. If it exits or is too
/// slow, it is killed with the process group it leads (if any) before it
/// is reaped, and the error quotes the last line it logged.
pub(crate) fn spawn_helper(
    mut cmd: Command,
    what: &'static str,
    socket: &Path,
    log: &Path,
) -> Result<Child, HypervisorError> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(create_file(log)?))
        .spawn()
        .map_err(|source| HypervisorError::Spawn {
            program: what,
            source,
        })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if Instant::now() >= deadline || exited {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on the process group our own, not yet
                // reaped, child leads (ESRCH when it leads none).
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let last: String = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            let detail = if last.is_empty() {
                if exited { ": it exited" } else { " in time" }.to_string()
            } else {
                format!(": {}", last.trim())
            };
            return Err(HypervisorError::NotStarted { what, detail });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(child)
}

/// Starts `virtiofsd` exporting `shared` on `socket`. It runs in its own
/// mount namespace (a slave of ours, so binds added below `shared` later
/// reach it), pivoted into `shared`, with its seccomp filter; `auto`
/// caching keeps host changes visible to the guest within a second.
pub(crate) fn virtiofsd(
    dir: &Path,
    shared: &Path,
    socket: &Path,
) -> Result<std::process::Child, HypervisorError> {
    let program =
        find_program("virtiofsd", "HUSK_VIRTIOFSD").ok_or(HypervisorError::MissingProgram {
            program: "virtiofsd",
            hint: "cargo install virtiofsd (scripts/setup.sh)",
        })?;
    let mut cmd = Command::new(program);
    die_with_parent(&mut cmd);
    // Its own process group, which `stop_all` kills whole: virtiofsd forks
    // its sandboxed server.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.arg("--socket-path")
        .arg(socket)
        .arg("--shared-dir")
        .arg(shared)
        .args(["--cache", "auto", "--sandbox", "namespace"])
        .args(["--rlimit-nofile", "0", "--log-level", "warn"]);
    spawn_helper(cmd, "virtiofsd", socket, &dir.join("virtiofsd.log"))
}

/// Whether `virtiofsd` can be found (see [`find_program`]).
pub fn virtiofs_available() -> bool {
    find_program("virtiofsd", "HUSK_VIRTIOFSD").is_some()
}

/// Kills and reaps helper processes, with the processes of the group a
/// helper leads (virtiofsd's sandboxed child), so that none outlives the
/// call.
pub(crate) fn stop_all(helpers: &mut Vec<Child>) {
    use crate::process::{kill_and_wait, start_time, with_group_members};
    let recorded: Vec<(i32, u64)> = helpers
        .iter()
        .filter_map(|h| i32::try_from(h.id()).ok())
        .filter_map(|p| start_time(p).map(|t| (p, t)))
        .collect();
    let members = with_group_members(&recorded);
    for mut h in helpers.drain(..) {
        if let Ok(pid) = i32::try_from(h.id()) {
            // SAFETY: kill(2) on the process group our own child leads (a
            // helper that leads none has no group of its PID: ESRCH).
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = h.kill();
        let _ = h.wait();
    }
    kill_and_wait(&members, Duration::from_secs(2));
}

/// Helper processes of a VM being started: stopped when dropped, so that
/// no early return of a backend leaves one running; `into_inner` hands
/// them to the [`Vm`].
#[derive(Debug, Default)]
pub(crate) struct Helpers(Vec<Child>);

impl Helpers {
    /// Adds a started helper.
    pub(crate) fn push(&mut self, child: Child) {
        self.0.push(child);
    }

    /// The VM started: it owns the helpers now.
    pub(crate) fn into_inner(mut self) -> Vec<Child> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        stop_all(&mut self.0);
    }
}

/// A file in the VM's directory, with its path in errors.
pub(crate) fn create_file(path: &Path) -> Result<std::fs::File, HypervisorError> {
    std::fs::File::create(path).map_err(|source| HypervisorError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices() {
        assert_eq!("qemu".parse::<Choice>().unwrap(), Choice::Qemu);
        assert_eq!("husk-vmm".parse::<Choice>().unwrap(), Choice::HuskVmm);
        assert_eq!("auto".parse::<Choice>().unwrap(), Choice::Auto);
        assert!("kvmtool".parse::<Choice>().is_err());
        assert_eq!(Choice::Qemu.resolve(), Backend::Qemu);
        // Auto picks husk-vmm where KVM runs stock kernels (hardware, or
        // the nested lab's L1, where this test runs too), never elsewhere.
        match kvm_kind() {
            KvmKind::Hardware => assert_eq!(Choice::Auto.resolve(), Backend::HuskVmm),
            KvmKind::Pvm | KvmKind::Absent => assert_eq!(Choice::Auto.resolve(), Backend::Qemu),
        }
    }

    #[test]
    fn drive_ids_are_checked() {
        let mut spec = VmSpec {
            kernel: "k".into(),
            initrd: "i".into(),
            vcpus: 1,
            memory_mib: 128,
            drives: vec![Drive {
                id: "root fs".into(),
                path: "x".into(),
                read_only: true,
            }],
            ..VmSpec::default()
        };
        assert!(spec.validate().is_err());
        spec.drives[0].id = "rootfs".into();
        assert!(spec.validate().is_ok());
        spec.nics.push(Nic {
            tap: "husk-tap0".into(),
            mac: "02:00:00:00:00:01".into(),
        });
        assert!(spec.validate().is_ok());
        spec.nics[0].mac = "02:00".into();
        assert!(spec.validate().is_err());
    }
}
