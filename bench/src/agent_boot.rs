//! Agent start-up benchmark (QEMU TCG, the husk guest kernel): boot → the
//! agent serving, from the guest's own clock and from the host (first
//! Version answer over vsock), against the bare boot → first instruction of
//! a static /init of the same kernel in the same invocation. Prints figures;
//! asserts nothing.
//!
//!   cargo run --release -p husk-bench --bin bench-agent-boot [-- RUNS]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::agent::{self, AgentVm};
use integration_tests::host::TempDir;
use integration_tests::{initramfs, linux};
use protocol::{Call, Reply, Request, Response};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Spawn → the tiny init's line on the console.
fn bare(kernel: &std::path::Path, initrd: &std::path::Path) -> Option<f64> {
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,acpi=off",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "256",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 reboot=t panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let out = BufReader::new(child.stdout.take()?);
    let mut t = None;
    for line in out.lines() {
        let Ok(line) = line else { break };
        if line.contains("HUSK-INIT-RAN") {
            t = Some(start.elapsed().as_secs_f64() * 1e3);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    t
}

/// (spawn → Version answered on the host, boot → ready on the guest clock).
fn with_agent(
    dir: &TempDir,
    kernel: &std::path::Path,
    initrd: &std::path::Path,
) -> Option<(f64, f64)> {
    let start = Instant::now();
    let vm = AgentVm::boot(&dir.0, kernel, initrd);
    let deadline = start + Duration::from_secs(60);
    let guest_ms;
    let host_ms;
    loop {
        if Instant::now() > deadline {
            return None;
        }
        if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&vm.hybrid) {
            use std::io::{Read, Write};
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            if s.write_all(b"CONNECT 1024\n").is_ok() {
                let mut b = [0u8; 1];
                let mut line = Vec::new();
                while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
                    line.push(b[0]);
                }
                if line.starts_with(b"OK") {
                    protocol::write_message(
                        &mut s,
                        &Request {
                            id: 1,
                            call: Call::Version,
                        },
                    )
                    .ok()?;
                    let r: Response = protocol::read_message(&mut s).ok()?;
                    host_ms = start.elapsed().as_secs_f64() * 1e3;
                    match r.result {
                        Ok(Reply::Version(v)) => guest_ms = v.boot_to_ready_ms as f64,
                        _ => return None,
                    }
                    let _ = protocol::write_message(
                        &mut s,
                        &Request {
                            id: 2,
                            call: Call::Shutdown,
                        },
                    );
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(vm);
    Some((host_ms, guest_ms))
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let kernel = linux::kernel();
    let dir = TempDir::new("bench-agent");
    let tiny = dir.join("tiny.cpio");
    std::fs::write(&tiny, initramfs::tiny_initramfs()).unwrap();
    let agent_rd = dir.join("agent.cpio");
    std::fs::write(&agent_rd, agent::initramfs(&agent::binary())).unwrap();
    println!("agent start-up benchmark: {runs} runs each, QEMU TCG (microvm), husk guest kernel");
    let mut bare_ms = Vec::new();
    let mut host_ms = Vec::new();
    let mut guest_ms = Vec::new();
    for i in 0..runs {
        if let Some(t) = bare(&kernel, &tiny) {
            bare_ms.push(t);
        }
        let run_dir = TempDir::new(&format!("bench-agent-{i}"));
        if let Some((h, g)) = with_agent(&run_dir, &kernel, &agent_rd) {
            host_ms.push(h);
            guest_ms.push(g);
        }
    }
    if bare_ms.is_empty() || host_ms.is_empty() {
        println!(
            "runs failed (bare {}, agent {})",
            bare_ms.len(),
            host_ms.len()
        );
        return;
    }
    let b = median(&mut bare_ms);
    let h = median(&mut host_ms);
    let g = median(&mut guest_ms);
    println!("bare boot to a static /init (host clock):      {b:7.1} ms");
    println!(
        "boot to agent answering Version (host clock):  {h:7.1} ms  (includes vhost-device-vsock start)"
    );
    println!("boot to agent ready (guest CLOCK_BOOTTIME):    {g:7.1} ms");
    println!(
        "agent on top of bare boot (host clocks):       {:7.1} ms ({:.2}x)",
        h - b,
        h / b
    );
}
