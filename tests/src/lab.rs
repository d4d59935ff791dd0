//! The nested KVM lab: a real KVM host inside QEMU TCG, where husk-vmm runs
//! Linux guests even when this host's own /dev/kvm cannot (PVM).
//!
//! QEMU under TCG with `-cpu max` emulates AMD SVM with nested paging, so
//! Debian's own kernel (fetched and unpacked by `scripts/lab-kernel.sh`,
//! never installed) loads `kvm_amd` in it and has a `/dev/kvm` that runs
//! stock Linux guests. That guest, "L1", boots from a small initramfs built
//! here (busybox and the modules for KVM, virtio PCI, 9p and overlay), mounts
//! this host's root file system read-only over 9p with a tmpfs overlay on
//! top, so every binary, package and cache of the host is there without
//! copying, and switches to it with `husk-lab-init` as PID 1. Commands go to
//! L1 as scripts in a second, writable 9p share; their output and exit
//! status come back the same way ([`Lab::run`]). L1 has no network device:
//! its test networks live inside it.
//!
//! L1 is killed when the [`Lab`] is dropped or the test process dies; one
//! lab runs at a time per process. A lab that cannot start is a test
//! failure, never a skip.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::host::{self, TempDir};
use crate::initramfs::{Entry, build};

/// The modules L1's initramfs loads (with their dependencies, from
/// `modules.dep`) before it can reach its root file system; everything
/// else is loaded on demand by the host's `modprobe` once L1 runs from the
/// host's root.
const INITRAMFS_MODULES: &[&str] = &["kvm-amd", "virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// The L1 kernel: Debian's linux-image package, unpacked.
#[derive(Debug, Clone)]
pub struct LabKernel {
    /// The directory `scripts/lab-kernel.sh` printed: `vmlinuz`,
    /// `lib/modules/<release>/`, `release`.
    pub dir: PathBuf,
    /// The kernel release (`6.1.0-…-amd64`).
    pub release: String,
}

impl LabKernel {
    /// `$HUSK_LAB_KERNEL`, or what `scripts/lab-kernel.sh` fetches (cached).
    pub fn locate() -> LabKernel {
        let dir = match std::env::var("HUSK_LAB_KERNEL") {
            Ok(d) => PathBuf::from(d),
            Err(_) => {
                let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab-kernel.sh");
                let out = Command::new("bash")
                    .arg(&script)
                    .stderr(Stdio::inherit())
                    .output()
                    .expect("run scripts/lab-kernel.sh");
                assert!(
                    out.status.success(),
                    "scripts/lab-kernel.sh failed: the lab cannot start"
                );
                PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            }
        };
        let release = std::fs::read_to_string(dir.join("release"))
            .unwrap_or_else(|e| panic!("{}/release: {e}: the lab cannot start", dir.display()))
            .trim()
            .to_string();
        LabKernel { dir, release }
    }

    /// `lib/modules/<release>`.
    pub fn modules(&self) -> PathBuf {
        self.dir.join("lib/modules").join(&self.release)
    }

    /// The module files to load for `wanted`, dependencies first, each once,
    /// as paths relative to [`LabKernel::modules`].
    pub fn load_order(&self, wanted: &[&str]) -> Vec<String> {
        let dep = std::fs::read_to_string(self.modules().join("modules.dep"))
            .unwrap_or_else(|e| panic!("modules.dep of the lab kernel: {e}"));
        load_order(&dep, wanted)
    }
}

/// Resolves `wanted` module names against the text of a `modules.dep`:
/// every module after all it depends on, each once.
pub fn load_order(modules_dep: &str, wanted: &[&str]) -> Vec<String> {
    let mut deps = std::collections::HashMap::new();
    for line in modules_dep.lines() {
        if let Some((module, rest)) = line.split_once(':') {
            deps.insert(
                module.to_string(),
                rest.split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
            );
        }
    }
    let name_of = |path: &str| {
        Path::new(path)
            .file_name()
            .and_then(|f| f.to_str())
            .map(|f| f.trim_end_matches(".ko").replace('-', "_"))
            .unwrap_or_default()
    };
    let mut order: Vec<String> = Vec::new();
    fn visit(
        module: &str,
        deps: &std::collections::HashMap<String, Vec<String>>,
        order: &mut Vec<String>,
    ) {
        if order.iter().any(|m| m == module) {
            return;
        }
        // modules.dep lists every transitive dependency, the ones loaded
        // last first.
        for d in deps.get(module).into_iter().flatten().rev() {
            visit(d, deps, order);
        }
        order.push(module.to_string());
    }
    for w in wanted {
        let want = w.replace('-', "_");
        let module = deps
            .keys()
            .find(|k| name_of(k) == want)
            .unwrap_or_else(|| panic!("module {w} is not in the lab kernel's modules.dep"))
            .clone();
        visit(&module, &deps, &mut order);
    }
    order
}

/// How big L1 is.
#[derive(Debug, Clone, Copy)]
pub struct LabOptions {
    /// vCPUs. One by default (`$HUSK_LAB_CPUS` sets another count): with
    /// two, QEMU 7.2's multi-threaded TCG and its emulated SVM now and then
    /// leave L1's own kernel stuck in a TLB shoot-down (soft lockups) or
    /// crashed on a vCPU thread of husk-vmm (see docs/TESTING.md); with one
    /// the suite has passed in the lab run after run.
    pub cpus: u32,
    /// Memory in MiB; half of it is the tmpfs over the host's root.
    pub memory_mib: u32,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            cpus: std::env::var("HUSK_LAB_CPUS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .unwrap_or(1),
            memory_mib: 6144,
        }
    }
}

/// What one command in L1 did.
#[derive(Debug, Clone)]
pub struct LabRun {
    /// Its exit status, `signal N`, `timeout` or `error …`.
    pub status: String,
    /// Its standard output and error, interleaved.
    pub output: String,
    /// Wall time on this host.
    pub elapsed: Duration,
}

/// The status of a command during which L1 itself ended.
pub const L1_ENDED: &str = "L1 ended";

impl LabRun {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status == "0"
    }

    /// True when L1 itself ended while the command ran.
    pub fn l1_ended(&self) -> bool {
        self.status.starts_with(L1_ENDED)
    }
}

/// One lab at a time per process: two L1s on a 2-core host would only
/// slow each other down.
static ONE_LAB: Mutex<()> = Mutex::new(());

/// A running L1 "KVM host"; powered off (or killed) on drop.
#[derive(Debug)]
pub struct Lab {
    qemu: Child,
    dir: TempDir,
    next: u32,
    console: Arc<Mutex<String>>,
    /// When L1 was ready.
    pub boot_time: Duration,
    /// Cleared on drop: ends the thread that nudges L1 (see NUDGE_EVERY).
    nudging: Arc<std::sync::atomic::AtomicBool>,
    _one: MutexGuard<'static, ()>,
}

/// How often L1 gets a key press (Shift, from QEMU's monitor). QEMU 7.2's
/// TCG with emulated SVM now and then leaves L1's APIC timer interrupt
/// pending in IRR and never delivered, L1's CPU halted with interrupts on
/// or inside L2, until some other interrupt reaches the APIC; then the
/// pending one goes too. Without one L1 froze for good (docs/TESTING.md);
/// a keyboard interrupt every few seconds is that other interrupt.
const NUDGE_EVERY: Duration = Duration::from_secs(3);

/// How long L1 may go without a heartbeat (`husk-lab-init` prints one
/// each 30 s on the console) before it counts as frozen.
const FROZEN_AFTER: Duration = Duration::from_secs(180);

/// L1's share directory as L1 sees it.
const SHARE_IN_L1: &str = "/lab";

/// QEMU's accelerator for L1: TCG, one host thread per vCPU, or
/// `$HUSK_LAB_ACCEL`.
fn accel() -> String {
    std::env::var("HUSK_LAB_ACCEL").unwrap_or_else(|_| "tcg,thread=multi".into())
}

/// L1's CPU: everything TCG emulates (AMD SVM with nested paging among
/// it), less `$HUSK_LAB_CPU_OFF` (comma-separated features; by default
/// `la57`: L1 needs no 5-level paging).
fn cpu() -> String {
    let off = std::env::var("HUSK_LAB_CPU_OFF").unwrap_or_else(|_| "la57".into());
    let mut cpu = "max".to_string();
    for f in off.split(',').filter(|f| !f.is_empty()) {
        cpu.push_str(&format!(",-{f}"));
    }
    cpu
}

/// The L1 initramfs's /init.
fn init_script(kernel: &LabKernel, modules: &[String], runner: &Path) -> String {
    let order: Vec<String> = modules
        .iter()
        .map(|m| {
            Path::new(m)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
fail() {{ echo "HUSK-LAB-FAILED: $*"; sync; poweroff -f; sleep 10; }}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in {order}; do
    insmod /modules/$m || fail "insmod $m"
done
[ -c /dev/kvm ] || fail "no /dev/kvm after loading kvm_amd (does QEMU's -cpu max offer SVM?)"
mkdir -p /host /upper
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host \
    || fail "mount the host's root by 9p"
mount -t tmpfs -o mode=0755 tmpfs /upper
mkdir -p /upper/u /upper/w /upper/root
mount -t overlay overlay -o lowerdir=/host,upperdir=/upper/u,workdir=/upper/w /upper/root \
    || fail "overlay over the host's root"
R=/upper/root
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup || fail "cgroup2"
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mount -t tmpfs -o mode=0755 tmpfs $R/run
mount -t tmpfs -o mode=1777 tmpfs $R/tmp
mkdir -p $R{share}
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none lab $R{share} \
    || fail "mount the lab share"
mkdir -p $R/lib/modules/{release}
mount --bind $R{modules} $R/lib/modules/{release} || fail "bind the lab kernel's modules"
# Device nodes that exist before their module is loaded on a distribution
# (udev's static nodes) come with the modules here.
chroot $R /sbin/modprobe -a tun loop || fail "modprobe tun loop"
ip link set lo up || fail "loopback"
hostname husk-lab
echo 1 > /proc/sys/net/ipv4/ip_forward
exec switch_root $R {runner} {share}
"#,
        order = order.join(" "),
        share = SHARE_IN_L1,
        release = kernel.release,
        modules = kernel.modules().display(),
        runner = runner.display(),
    )
}

impl Lab {
    /// Boots L1 with the default size and waits until it takes commands.
    pub fn boot() -> Lab {
        Self::boot_with(LabOptions::default())
    }

    /// Boots L1 and waits until it takes commands; panics (a test failure)
    /// with L1's console when it cannot.
    pub fn boot_with(options: LabOptions) -> Lab {
        let one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
        let kernel = LabKernel::locate();
        let runner = host::bin("husk-lab-init");
        let dir = TempDir::new("lab");
        std::fs::create_dir_all(dir.join("cmd")).expect("lab cmd dir");
        let modules = kernel.load_order(INITRAMFS_MODULES);
        let busybox = std::fs::read("/bin/busybox")
            .expect("/bin/busybox missing: apt-get install busybox-static");
        let mut entries = vec![
            Entry::Dir("bin".into()),
            Entry::Dir("dev".into()),
            Entry::CharDev("dev/console".into(), 5, 1),
            Entry::Dir("proc".into()),
            Entry::Dir("sys".into()),
            Entry::Dir("modules".into()),
            Entry::File("bin/busybox".into(), 0o755, busybox),
            Entry::File(
                "init".into(),
                0o755,
                init_script(&kernel, &modules, &runner).into_bytes(),
            ),
        ];
        for m in &modules {
            let bytes = std::fs::read(kernel.modules().join(m))
                .unwrap_or_else(|e| panic!("lab kernel module {m}: {e}"));
            let name = Path::new(m).file_name().unwrap().to_string_lossy();
            entries.push(Entry::File(format!("modules/{name}"), 0o644, bytes));
        }
        let initrd = dir.join("l1-initramfs.cpio");
        std::fs::write(&initrd, build(&entries)).expect("write the L1 initramfs");

        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-M", "q35", "-accel", &accel(), "-cpu", &cpu()])
            .args(["-smp", &options.cpus.to_string()])
            .args(["-m", &options.memory_mib.to_string()])
            .args(["-nodefaults", "-no-user-config", "-no-reboot"])
            .args(["-display", "none", "-serial", "stdio"])
            // A monitor for whoever looks into a stalled L1 (`info
            // registers`, `info cpus`): `socat - UNIX:…/monitor.sock`.
            .arg("-monitor")
            .arg(format!(
                "unix:{},server=on,wait=off",
                dir.join("monitor.sock").display()
            ))
            .arg("-kernel")
            .arg(kernel.dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .arg("-virtfs")
            .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=lab,security_model=none,multidevs=remap",
                dir.0.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of
        // the parent; it runs in the child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let mut qemu = cmd
            .spawn()
            .expect("start qemu-system-x86_64 (apt-get install qemu-system-x86)");
        let console = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(qemu.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(qemu.stderr.take().unwrap()),
        ] {
            let console = console.clone();
            std::thread::spawn(move || {
                let verbose = std::env::var_os("HUSK_LAB_VERBOSE").is_some();
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if verbose {
                        eprintln!("[L1 console] {line}");
                    }
                    let mut c = console.lock().unwrap_or_else(|e| e.into_inner());
                    c.push_str(&line);
                    c.push('\n');
                }
            });
        }
        let mut lab = Lab {
            qemu,
            dir,
            next: 0,
            console,
            boot_time: Duration::ZERO,
            nudging: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            _one: one,
        };
        lab.start_nudging();
        let deadline = started + Duration::from_secs(300);
        loop {
            let text = lab.console();
            if text.contains("HUSK-LAB-READY") {
                break;
            }
            let failed = text
                .lines()
                .find(|l| l.contains("HUSK-LAB-FAILED"))
                .map(str::to_string);
            let exited = lab.qemu.try_wait().ok().flatten();
            if failed.is_some() || exited.is_some() || Instant::now() > deadline {
                panic!(
                    "the lab (L1) did not start: {}\nL1 console:\n{text}",
                    failed.unwrap_or_else(|| match exited {
                        Some(s) => format!("QEMU exited with {s}"),
                        None => "no ready signal within 300 s".into(),
                    })
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        lab.boot_time = started.elapsed();
        eprintln!(
            "lab: L1 ({} vCPUs, {} MiB, kernel {}) ready in {:.1} s",
            options.cpus,
            options.memory_mib,
            kernel.release,
            lab.boot_time.as_secs_f64()
        );
        lab
    }

    /// The lines of L1's console that tell that L1's own kernel crashed
    /// (an oops, a BUG, a panic), if it did.
    pub fn kernel_crash(&self) -> Option<String> {
        let console = self.console();
        let start = console.lines().position(|l| {
            l.contains("BUG:") || l.contains("Oops:") || l.contains("Kernel panic")
        })?;
        Some(
            console
                .lines()
                .skip(start)
                .take(12)
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }

    /// How many `HUSK-LAB-ALIVE` lines L1 has printed (one each 30 s).
    fn heartbeats(&self) -> usize {
        self.console
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .matches("HUSK-LAB-ALIVE")
            .count()
    }

    /// Starts the thread that presses Shift in L1 every NUDGE_EVERY until
    /// the lab is dropped.
    fn start_nudging(&self) {
        let on = self.nudging.clone();
        let socket = self.dir.join("monitor.sock");
        std::thread::spawn(move || {
            while on.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(NUDGE_EVERY);
                let _ = monitor_command(&socket, "sendkey shift", Duration::from_millis(200));
            }
        });
    }

    /// Sends one command to QEMU's monitor of L1; returns its reply.
    fn monitor(&self, command: &str) -> std::io::Result<String> {
        monitor_command(
            &self.dir.join("monitor.sock"),
            command,
            Duration::from_millis(1500),
        )
    }

    /// Where L1's vCPU is and what its APIC holds, from QEMU's monitor:
    /// for a report on a stalled L1.
    fn cpu_state(&self) -> String {
        let mut state = String::new();
        for command in ["info registers", "info lapic"] {
            match self.monitor(command) {
                Ok(text) => state.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| {
                            ["RIP=", "CR3=", "GS =", "IRR", "ISR", "PPR"]
                                .iter()
                                .any(|k| l.starts_with(k))
                        })
                        .map(|l| format!("{l}; ")),
                ),
                Err(e) => state.push_str(&format!("monitor: {e}; ")),
            }
        }
        state
    }

    /// The last `lines` lines of L1's console.
    pub fn console_tail(&self, lines: usize) -> String {
        let console = self.console();
        let all: Vec<&str> = console.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// L1's console so far.
    pub fn console(&self) -> String {
        self.console
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs `script` with `/bin/sh` in L1 (as root, in `/`, with a plain
    /// PATH that includes cargo's binaries) and waits for it, at most
    /// `timeout`: then it is killed with its process group and the status
    /// is `timeout`. Each output line is echoed to stderr as `[L1] …` as it
    /// arrives.
    pub fn run(&mut self, script: &str, timeout: Duration) -> LabRun {
        let n = self.next;
        self.next += 1;
        let cmd = self.dir.join("cmd");
        let text = format!(
            "# timeout {}\nexport PATH=/root/.cargo/bin:$PATH\nset -e\n{script}\n",
            timeout.as_secs().max(1)
        );
        let tmp = cmd.join(format!("{n}.sh.tmp"));
        std::fs::write(&tmp, text).expect("write lab command");
        std::fs::rename(&tmp, cmd.join(format!("{n}.sh"))).expect("hand over lab command");
        let started = Instant::now();
        // L1 enforces the limit; this host waits a little longer for the
        // status before it gives up on L1 altogether.
        let deadline = started + timeout + Duration::from_secs(60);
        let out_path = cmd.join(format!("{n}.out"));
        let status_path = cmd.join(format!("{n}.status"));
        let mut output = Vec::new();
        let mut partial = Vec::new();
        let mut beats = self.heartbeats();
        let mut last_beat = Instant::now();
        loop {
            let done = status_path.exists();
            let now_beats = self.heartbeats();
            if now_beats != beats {
                beats = now_beats;
                last_beat = Instant::now();
            } else if last_beat.elapsed() > FROZEN_AFTER {
                panic!(
                    "L1 froze while command {n} ran: no heartbeat for {} s\nL1's CPU: {}\noutput:\n{}\nL1 console (the end):\n{}",
                    FROZEN_AFTER.as_secs(),
                    self.cpu_state(),
                    String::from_utf8_lossy(&output),
                    self.console_tail(40)
                );
            }
            if let Ok(mut f) = std::fs::File::open(&out_path) {
                if f.seek(SeekFrom::Start(output.len() as u64)).is_ok() {
                    let mut fresh = Vec::new();
                    let _ = f.read_to_end(&mut fresh);
                    output.extend_from_slice(&fresh);
                    partial.extend_from_slice(&fresh);
                    while let Some(i) = partial.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = partial.drain(..=i).collect();
                        eprint!("[L1] {}", String::from_utf8_lossy(&line));
                    }
                }
            }
            if done {
                if !partial.is_empty() {
                    eprintln!("[L1] {}", String::from_utf8_lossy(&partial));
                }
                let status = std::fs::read_to_string(&status_path)
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                return LabRun {
                    status,
                    output: String::from_utf8_lossy(&output).into_owned(),
                    elapsed: started.elapsed(),
                };
            }
            if let Ok(Some(s)) = self.qemu.try_wait() {
                return LabRun {
                    status: format!("{L1_ENDED} ({s})"),
                    output: String::from_utf8_lossy(&output).into_owned(),
                    elapsed: started.elapsed(),
                };
            }
            if Instant::now() > deadline {
                panic!(
                    "L1 gave no status for command {n} within {timeout:?}\noutput:\n{}\nL1 console (the end):\n{}",
                    String::from_utf8_lossy(&output),
                    self.console_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The directory shared with L1, as this host sees it (L1 sees it as
    /// `/lab`).
    pub fn share(&self) -> &Path {
        &self.dir.0
    }

    /// The path in L1 of a file in [`Lab::share`].
    pub fn share_path_in_l1(&self, name: &str) -> String {
        format!("{SHARE_IN_L1}/{name}")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.nudging
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let _ = std::fs::write(self.dir.join("cmd/stop"), b"");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.qemu.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// Sends one command to the QEMU monitor at `socket`; returns its reply
/// (what came until nothing more did for `wait`).
fn monitor_command(socket: &Path, command: &str, wait: Duration) -> std::io::Result<String> {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(wait))?;
    let mut buf = [0u8; 65536];
    // The banner and prompt first, then the command.
    let _ = s.read(&mut buf);
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut out = Vec::new();
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Path of an integration test binary built by cargo for this workspace
/// (`target/<profile>/deps/<name>-<hash>`, the newest when there are
/// several), to run in L1.
pub fn test_binary(name: &str) -> PathBuf {
    let deps = host::bin_dir().join("deps");
    let prefix = format!("{}-", name.replace('-', "_"));
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&deps)
        .unwrap_or_else(|e| panic!("{}: {e}", deps.display()))
        .filter_map(|e| e.ok())
        .filter(|e| {
            let f = e.file_name();
            let f = f.to_string_lossy();
            f.strip_prefix(&prefix)
                .is_some_and(|hash| hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .filter_map(|e| {
            use std::os::unix::fs::PermissionsExt;
            let m = e.metadata().ok()?;
            if !m.is_file() || m.permissions().mode() & 0o111 == 0 {
                return None;
            }
            Some((m.modified().ok()?, e.path()))
        })
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| {
            panic!(
                "no test binary {name} in {}: build the tests first (cargo test --no-run)",
                deps.display()
            )
        })
        .1
}

/// `export K='V'` lines for a lab script.
pub fn exports(vars: &[(&str, &str)]) -> String {
    vars.iter()
        .map(|(k, v)| format!("export {k}='{}'\n", v.replace('\'', "'\\''")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_after_their_dependencies() {
        let dep = "kernel/arch/x86/kvm/kvm-amd.ko: kernel/drivers/crypto/ccp/ccp.ko kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko\n\
                   kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko\n\
                   kernel/virt/lib/irqbypass.ko:\n\
                   kernel/drivers/crypto/ccp/ccp.ko:\n\
                   kernel/fs/overlayfs/overlay.ko:\n";
        let order = load_order(dep, &["kvm_amd", "overlay", "kvm"]);
        assert_eq!(
            order,
            vec![
                "kernel/virt/lib/irqbypass.ko",
                "kernel/arch/x86/kvm/kvm.ko",
                "kernel/drivers/crypto/ccp/ccp.ko",
                "kernel/arch/x86/kvm/kvm-amd.ko",
                "kernel/fs/overlayfs/overlay.ko",
            ]
        );
    }

    #[test]
    fn exports_quote() {
        assert_eq!(exports(&[("A", "it's")]), "export A='it'\\''s'\n");
    }
}
