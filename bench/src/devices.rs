//! Device round-trip benchmark with the virtio test guest: 4 KiB block reads
//! per second from a tmpfs-backed file (husk-vmm and QEMU microvm, same
//! guest, same invocation) and vsock echo throughput through husk-vmm's
//! hybrid Unix socket. Prints figures; asserts nothing.
//!
//!   cargo run --release -p husk-bench --bin bench-devices

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::guest;
use integration_tests::host::{self, TempDir};

const READS: u32 = 5000;

/// Times the guest between its BENCH-START and BENCH-END lines.
fn timed_run(mut cmd: Command) -> Option<Duration> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let out = BufReader::new(child.stdout.take()?);
    let mut start = None;
    let mut result = None;
    for line in out.lines() {
        let Ok(line) = line else { break };
        if line.starts_with("BENCH-START") {
            start = Some(Instant::now());
        } else if line.starts_with("BENCH-END") {
            if line.contains("failed=0") {
                result = start.map(|s| s.elapsed());
            }
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn block(dir: &TempDir) {
    let img =
        std::path::Path::new("/dev/shm").join(format!("husk-bench-{}.img", std::process::id()));
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(64 << 20))
        .expect("create /dev/shm image");
    let args = format!("console=ttyS0 test=blk-bench bench.n={READS}");
    let cfg = serde_json::json!({
        "boot-source": {"kernel_image_path": guest::virtio(), "boot_args": args},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "drives": [{"drive_id": "bench", "path_on_host": img, "is_root_device": false}],
    });
    let cfg_path = dir.join("blk.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let mut husk = Command::new(host::bin("husk-vmm"));
    husk.args(["--no-api", "--config-file"]).arg(&cfg_path);
    let h = timed_run(husk);

    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-M",
        "microvm,acpi=off,pic=off,rtc=off",
        "-accel",
        "kvm",
        "-m",
        "128",
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
    ])
    .args(["-global", "virtio-mmio.force-legacy=false"])
    .arg("-drive")
    .arg(format!("id=d0,file={},format=raw,if=none", img.display()))
    .args(["-device", "virtio-blk-device,drive=d0"])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    .arg("-kernel")
    .arg(guest::virtio())
    .args(["-append", &args]);
    let q = timed_run(qemu);
    let _ = std::fs::remove_file(&img);

    let rps = |d: Option<Duration>| d.map(|d| f64::from(READS) / d.as_secs_f64());
    match rps(h) {
        Some(r) => println!("virtio-blk husk-vmm:     {READS} x 4 KiB reads, {r:8.0} requests/s"),
        None => println!("virtio-blk husk-vmm:     run failed"),
    }
    match rps(q) {
        Some(r) => println!("virtio-blk qemu microvm: {READS} x 4 KiB reads, {r:8.0} requests/s"),
        None => println!("virtio-blk qemu microvm: run failed (is qemu-system-x86_64 installed?)"),
    }
    if let (Some(a), Some(b)) = (rps(h), rps(q)) {
        println!("ratio husk/qemu (requests/s): {:.2}x", a / b);
    }
}

fn vsock(dir: &TempDir) {
    const MIB: usize = 64;
    let uds = dir.join("bench.vsock");
    let console = dir.join("vsock-console.log");
    let cfg = serde_json::json!({
        "boot-source": {"kernel_image_path": guest::virtio(), "boot_args": "console=ttyS0 test=vsock-echo vsock.port=1234 vsock.conns=1"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "vsock": {"guest_cid": 3, "uds_path": uds},
    });
    let cfg_path = dir.join("vsock.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let mut child = Command::new(host::bin("husk-vmm"))
        .args(["--no-api", "--config-file"])
        .arg(&cfg_path)
        .arg("--console-out")
        .arg(&console)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn husk-vmm");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("vsock listening")
    {
        if Instant::now() > deadline {
            println!("virtio-vsock: guest did not start");
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut s = UnixStream::connect(&uds).unwrap();
    s.write_all(b"CONNECT 1234\n").unwrap();
    let mut ok = [0u8; 64];
    let mut n = 0;
    while !ok[..n].contains(&b'\n') {
        n += s.read(&mut ok[n..]).unwrap();
    }
    let payload = vec![0x5au8; MIB << 20];
    let mut writer = s.try_clone().unwrap();
    let start = Instant::now();
    let w = std::thread::spawn(move || {
        for chunk in payload.chunks(256 << 10) {
            writer.write_all(chunk).unwrap();
        }
    });
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    while got < MIB << 20 {
        let r = s.read(&mut buf).unwrap();
        if r == 0 {
            break;
        }
        got += r;
    }
    let secs = start.elapsed().as_secs_f64();
    w.join().unwrap();
    drop(s);
    let _ = child.wait();
    println!(
        "virtio-vsock husk-vmm: {MIB} MiB echoed host -> guest -> host in {secs:.2} s: {:.1} MiB/s each way",
        (got as f64 / (1 << 20) as f64) / secs
    );
    println!("  (no peer: QEMU's vsock needs /dev/vhost-vsock or a vhost-user daemon)");
}

fn main() {
    let kvm = host::require_kvm();
    println!("husk device benchmark (virtio test guest, 1 vCPU, 128 MiB, host KVM {kvm:?})");
    let dir = TempDir::new("bench-devices");
    block(&dir);
    vsock(&dir);
}
