//! Boot benchmark of husk-vmm against QEMU microvm (both on KVM) with the
//! same test guest (`quiet`: it prints one marker line and resets, like the
//! guests of the reference figures): launch → marker on the serial port, launch → exit, peak
//! RSS, and husk-vmm's resident memory excluding guest RAM. Prints figures
//! and ratios; asserts nothing.
//!
//!   cargo run --release -p husk-bench --bin bench-vmm-boot [-- RUNS]

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::guest;
use integration_tests::host::{self, TempDir};
use integration_tests::vmm::config_json;

const MEM_MIB: u32 = 128;

#[derive(Debug, Clone, Copy)]
struct Sample {
    marker_ms: f64,
    exit_ms: f64,
    peak_rss_kib: i64,
}

/// Waits for `child` and returns its peak RSS (KiB) from wait4.
fn wait_rusage(child: &mut Child) -> (i32, i64) {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `status` and `usage` are valid for writes; the pid is our
    // child's and has not been reaped (std's Child is not waited for).
    let r = unsafe { libc::wait4(pid, &mut status, 0, usage.as_mut_ptr()) };
    assert_eq!(r, pid, "wait4 failed: {}", std::io::Error::last_os_error());
    // SAFETY: wait4 succeeded and filled `usage`.
    let usage = unsafe { usage.assume_init() };
    (
        std::process::ExitStatus::from_raw(status)
            .code()
            .unwrap_or(-1),
        usage.ru_maxrss,
    )
}

fn run_once(mut cmd: Command) -> Sample {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // QEMU's default CPU model: `-cpu host` fails on PVM hosts (MSR 0x10a).
    let mut out = child.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let mut marker = None;
    while marker.is_none() {
        let n = out.read(&mut buf).expect("read serial");
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&seen).contains(guest::MARKER) {
            marker = Some(start.elapsed());
        }
    }
    let marker = marker.unwrap_or_else(|| {
        panic!(
            "guest never printed its marker: {}",
            String::from_utf8_lossy(&seen)
        )
    });
    let (_, peak) = wait_rusage(&mut child);
    let exit = start.elapsed();
    Sample {
        marker_ms: marker.as_secs_f64() * 1e3,
        exit_ms: exit.as_secs_f64() * 1e3,
        peak_rss_kib: peak,
    }
}

fn husk_cmd(config: &Path) -> Command {
    let mut c = Command::new(host::bin("husk-vmm"));
    c.args(["--no-api", "--config-file"]).arg(config);
    c
}

fn qemu_cmd(kernel: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-M",
        "microvm,acpi=off,pic=off,rtc=off",
        "-accel",
        "kvm",
        "-m",
        &MEM_MIB.to_string(),
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-append",
        "quiet",
        "-kernel",
    ])
    .arg(kernel);
    c
}

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn report(name: &str, samples: &[Sample]) -> (f64, f64, f64) {
    let mut m: Vec<f64> = samples.iter().map(|s| s.marker_ms).collect();
    let mut e: Vec<f64> = samples.iter().map(|s| s.exit_ms).collect();
    let mut r: Vec<f64> = samples
        .iter()
        .map(|s| s.peak_rss_kib as f64 / 1024.0)
        .collect();
    let (m_med, m_min, m_max) = stats(&mut m);
    let (e_med, e_min, e_max) = stats(&mut e);
    let (r_med, _, r_max) = stats(&mut r);
    println!(
        "{name:<14} marker {m_med:7.1} ms (min {m_min:6.1}, max {m_max:6.1})   exit {e_med:7.1} ms (min {e_min:6.1}, max {e_max:6.1})   peak RSS {r_med:5.1} MiB (max {r_max:5.1})"
    );
    (m_med, e_med, r_med)
}

/// RSS of a running husk-vmm excluding the guest RAM mapping, in KiB.
fn overhead_kib(dir: &TempDir) -> (u64, u64) {
    let config = dir.join("halt.json");
    std::fs::write(
        &config,
        config_json(&guest::pvh(), None, "action=halt", 1, MEM_MIB),
    )
    .unwrap();
    let mut child = husk_cmd(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains(guest::MARKER) {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "guest did not boot");
        seen.extend_from_slice(&buf[..n]);
    }
    std::thread::sleep(Duration::from_millis(100));
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let mut total = 0u64;
    let mut guest = 0u64;
    let mut in_guest = false;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next()) {
            (Some("Size:"), Some(v)) => {
                in_guest = v.parse::<u64>().unwrap_or(0) == u64::from(MEM_MIB) * 1024;
            }
            (Some("Rss:"), Some(v)) => {
                let kib: u64 = v.parse().unwrap_or(0);
                total += kib;
                if in_guest {
                    guest += kib;
                }
            }
            _ => {}
        }
    }
    (total, guest)
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let kvm = host::require_kvm();
    println!(
        "husk-vmm boot benchmark: {runs} runs each, 1 vCPU, {MEM_MIB} MiB, test guest (PVH ELF), host KVM {kvm:?}"
    );
    let dir = TempDir::new("bench");
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        config_json(&guest::pvh(), None, "quiet", 1, MEM_MIB),
    )
    .unwrap();

    // Warm the page cache for both.
    let _ = run_once(husk_cmd(&config));
    let have_qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok();
    if have_qemu {
        let _ = run_once(qemu_cmd(&guest::pvh()));
    }

    let mut husk = Vec::new();
    let mut qemu = Vec::new();
    for _ in 0..runs {
        husk.push(run_once(husk_cmd(&config)));
        if have_qemu {
            qemu.push(run_once(qemu_cmd(&guest::pvh())));
        }
    }
    let h = report("husk-vmm", &husk);
    if have_qemu {
        let q = report("qemu microvm", &qemu);
        println!(
            "ratio husk/qemu: marker {:.2}x, exit {:.2}x, peak RSS {:.2}x",
            h.0 / q.0,
            h.1 / q.1,
            h.2 / q.2
        );
    } else {
        println!("qemu-system-x86_64 not found: no peer figures");
    }
    let (total, guest_rss) = overhead_kib(&dir);
    println!(
        "husk-vmm resident memory excluding guest RAM (1 vCPU, {MEM_MIB} MiB guest, idle): {:.2} MiB (total RSS {:.2} MiB, guest RAM touched {:.2} MiB)",
        (total - guest_rss) as f64 / 1024.0,
        total as f64 / 1024.0,
        guest_rss as f64 / 1024.0
    );
    println!(
        "reference on this kind of machine (MACHINE-NOTES): Firecracker 10.3 ms marker / 25.0 ms exit / 4.0 MiB; Cloud Hypervisor 5.0 / 19.8 ms / 10.5 MiB; QEMU microvm 33.2 / 35.0 ms / 36.4 MiB"
    );
}
