//! Agent start-up benchmark (QEMU TCG, the husk guest kernel): boot → the
//! agent serving, from the guest's own clock and from the host (first
//! Version answer over vsock), against the bare boot → first instruction of
//! a static /init of the same kernel in the same invocation. Then the
//! rootfs image formats side by side (EROFS against ext4: time to build the
//! image on the host, its size, and a first container reading the whole
//! image cold in a fresh VM), and the agent's resident memory with one idle
//! container. Prints figures; asserts nothing.
//!
//!   cargo run --release -p husk-bench --bin bench-agent-boot [-- RUNS]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_host::rootfs::{ImageFormat, build_image};
use integration_tests::agent::{self, AgentVm};
use integration_tests::host::TempDir;
use integration_tests::{initramfs, linux, pod};
use protocol::{Call, GuestStats, Reply, Request, Response};

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
    rootfs_formats(runs.div_ceil(2));
    agent_memory();
}

/// Files added to the busybox tree for the format comparison: 400 small
/// files and one larger one, 16 MiB in all, not compressible.
fn payload() -> Vec<(String, Vec<u8>)> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    let mut files: Vec<(String, Vec<u8>)> = (0..400)
        .map(|i| (format!("data/small/{i:03}"), bytes(20 * 1024)))
        .collect();
    files.push(("data/large".into(), bytes(8 << 20)));
    files
}

/// EROFS against ext4: host build time and size, then create → exit of a
/// first container that reads every file of the image, in a fresh VM each
/// run (so the guest's page cache is cold).
fn rootfs_formats(runs: usize) {
    let dir = TempDir::new("bench-rootfs");
    let tree = agent::busybox_tree(&dir.0);
    let files = payload();
    for (path, bytes) in &files {
        let p = tree.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let extra: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    println!();
    println!(
        "rootfs image formats: busybox + 16 MiB in {} files, {runs} runs each",
        files.len()
    );
    let mut figures = Vec::new();
    for format in [ImageFormat::Erofs, ImageFormat::Ext4] {
        let out = dir.join(&format!("image.{format}"));
        let mut build_ms = Vec::new();
        let mut size = 0;
        for _ in 0..runs {
            let start = Instant::now();
            match build_image(&tree, &out, format) {
                Ok(img) => size = img.bytes,
                Err(e) => {
                    println!("{format}: {e}");
                    return;
                }
            }
            build_ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
        let mut first_ms = Vec::new();
        for i in 0..runs {
            let run_dir = TempDir::new(&format!("bench-rootfs-{format}-{i}"));
            let vm = pod::boot_with_image(&run_dir, &extra, format);
            let mut c = vm.client();
            let start = Instant::now();
            let (st, _, err) = pod::run(
                &vm,
                &mut c,
                "reader",
                &[
                    "/bin/sh",
                    "-c",
                    "cat /bin/busybox /data/large /data/small/* > /dev/null",
                ],
                serde_json::json!({}),
            );
            if st != 0 {
                println!("{format}: the reading container failed: {err}");
                return;
            }
            first_ms.push(start.elapsed().as_secs_f64() * 1e3);
            let _ = c.call_empty(Call::Shutdown);
        }
        let (b, f) = (median(&mut build_ms), median(&mut first_ms));
        println!(
            "{:<6} build {b:7.1} ms   image {:6.1} MiB   first container (create → exit, reads all) {f:7.1} ms",
            format.fstype(),
            size as f64 / f64::from(1 << 20)
        );
        figures.push((b, size as f64, f));
    }
    let (e, x) = (figures[0], figures[1]);
    println!(
        "ratio erofs/ext4: build {:.2}x, size {:.2}x, first container {:.2}x",
        e.0 / x.0,
        e.1 / x.1,
        e.2 / x.2
    );
}

fn guest_stats(c: &mut husk_host::agent::AgentClient) -> Option<GuestStats> {
    match c.call(Call::GuestStats) {
        Ok(Reply::GuestStats(s)) => Some(s),
        _ => None,
    }
}

/// The agent's resident memory in the guest before and after creating one
/// idle container, and the guest memory in use.
fn agent_memory() {
    let dir = TempDir::new("bench-agent-mem");
    let vm = pod::boot_with_rootfs(&dir, &[]);
    let mut c = vm.client();
    let Some(before) = guest_stats(&mut c) else {
        println!("agent memory: GuestStats failed");
        return;
    };
    let idle = pod::create(
        &vm,
        &mut c,
        "idle",
        &["/bin/sleep", "1000"],
        serde_json::json!({}),
    );
    idle.start(&mut c);
    std::thread::sleep(Duration::from_millis(500));
    let Some(after) = guest_stats(&mut c) else {
        println!("agent memory: GuestStats failed");
        return;
    };
    let used = |s: &GuestStats| (s.mem_total_kib - s.mem_available_kib) as f64 / 1024.0;
    println!();
    println!(
        "agent memory (guest of {} MiB):",
        before.mem_total_kib / 1024
    );
    println!(
        "agent RSS: {:.1} MiB serving, {:.1} MiB with one idle container",
        before.agent_rss_kib as f64 / 1024.0,
        after.agent_rss_kib as f64 / 1024.0
    );
    println!(
        "guest memory in use (MemTotal - MemAvailable): {:.1} MiB serving, {:.1} MiB with one idle container",
        used(&before),
        used(&after)
    );
    let _ = c.call_empty(Call::SignalContainer {
        id: "idle".into(),
        signal: 9,
        all: true,
    });
    let _ = c.call_empty(Call::Shutdown);
}
