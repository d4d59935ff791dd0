//! Container networking, husk against runc on the same bridge in the same
//! invocation: two namespaces prepared by the CNI bridge plugin (inside a
//! namespace standing for the host, as in the tests), a husk container in
//! one and a runc container in the other, each running `iperf3 -s` and a
//! TCP echo server (`nc -ll -e cat`). From the host namespace: iperf3
//! throughput both ways, and the round-trip time of one-byte TCP
//! request/response exchanges on one connection. Prints figures and
//! husk/runc ratios; asserts nothing about speed.
//!
//! Usage: `bench-net [SECONDS] [ROUND_TRIPS]` (defaults 5 and 2000).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::cli::{Husk, text};
use integration_tests::netns::{Attached, BridgeNetwork, joining_network};

const SERVERS: &str = "/usr/bin/iperf3 -s -p 5201 >/dev/null 2>&1 & exec nc -ll -p 7000 -e cat";

/// iperf3 from the host namespace to `ip` (`reverse`: the container
/// sends): Gbit/s received.
fn iperf3(net: &BridgeNetwork, ip: &str, secs: u32, reverse: bool) -> Result<f64, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = net.host_command("iperf3");
        c.args(["-c", ip, "-p", "5201", "-J", "-t", &secs.to_string()]);
        if reverse {
            c.arg("-R");
        }
        let out = c
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("iperf3: {e}"))?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = json["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bps / 1e9);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "iperf3 to {ip}: {}",
                json["error"].as_str().unwrap_or("no result")
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `n` one-byte request/response exchanges with the echo server at
/// `ip`:7000, from a thread in the host namespace: round-trip times, µs.
fn round_trips(net: &BridgeNetwork, ip: &str, n: usize) -> Result<Vec<f64>, String> {
    let ns = integration_tests::netns::ns_path(&net.host_ns);
    let addr = format!("{ip}:7000");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(&ns).map_err(|e| e.to_string())?;
        // SAFETY: setns(2) on an open namespace file moves only this
        // thread, which exists for this measurement.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut s = loop {
            match std::net::TcpStream::connect_timeout(
                &addr.parse().map_err(|e| format!("{addr}: {e}"))?,
                Duration::from_secs(5),
            ) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(format!("{addr}: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut times = Vec::with_capacity(n);
        let mut b = [0u8; 1];
        for i in 0..n + 50 {
            let t = Instant::now();
            s.write_all(b"x").map_err(|e| e.to_string())?;
            s.read_exact(&mut b).map_err(|e| format!("echo: {e}"))?;
            // The first exchanges warm up the path.
            if i >= 50 {
                times.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        Ok(times)
    })
    .join()
    .map_err(|_| "the measuring thread panicked".to_string())?
}

struct Figures {
    to_container: Result<f64, String>,
    from_container: Result<f64, String>,
    rtt: Result<Vec<f64>, String>,
}

fn measure(net: &BridgeNetwork, c: &Attached, secs: u32, n: usize) -> Figures {
    Figures {
        to_container: iperf3(net, &c.ip, secs, false),
        from_container: iperf3(net, &c.ip, secs, true),
        rtt: round_trips(net, &c.ip, n),
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let kvm = if Path::new("/sys/module/kvm_pvm").exists() {
        "PVM: Linux guests under QEMU TCG"
    } else {
        "hardware-backed"
    };
    println!(
        "network benchmark: iperf3 {secs} s each way and {n} one-byte TCP round trips, from the host namespace over a CNI bridge; host KVM {kvm}"
    );
    let net = BridgeNetwork::new("bench");
    let husk_ns = net.add("husk");
    let runc_ns = net.add("runc");
    let h = Husk::new("bench-net");
    let husk_bundle = h.bundle(
        "husk",
        &["/bin/sh", "-c", SERVERS],
        joining_network(&husk_ns.path()),
    );
    let runc_bundle = h.bundle(
        "runc",
        &["/bin/sh", "-c", SERVERS],
        joining_network(&runc_ns.path()),
    );
    for b in [&husk_bundle, &runc_bundle] {
        if let Err(e) = husk_bench::add_program("/usr/bin/iperf3", &b.join("rootfs")) {
            eprintln!("cannot put iperf3 in the bundle: {e} (apt-get install iperf3)");
            std::process::exit(1);
        }
    }

    let out = h.create(&husk_bundle, "net-husk", &[]);
    if !out.status.success() {
        eprintln!("husk create: {}", text(&out.stderr));
        std::process::exit(1);
    }
    let out = h.run(&["start", "net-husk"]);
    if !out.status.success() {
        eprintln!("husk start: {}", text(&out.stderr));
        std::process::exit(1);
    }
    let runc_root = h.dir.join("runc-root");
    // A detached container keeps runc's stdio: files, not pipes.
    let runc_err = h.dir.join("runc.err");
    let runc = |args: &[&str]| {
        Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&runc_err).unwrap())
            .status()
    };
    let runc_ok = match runc(&[
        "run",
        "--detach",
        "--bundle",
        runc_bundle.to_str().unwrap(),
        "net-runc",
    ]) {
        Ok(s) if s.success() => true,
        Ok(_) => {
            let err = std::fs::read_to_string(&runc_err).unwrap_or_default();
            println!("runc run: {}", err.trim());
            false
        }
        Err(e) => {
            println!("runc: {e}");
            false
        }
    };

    let husk = measure(&net, &husk_ns, secs, n);
    let peer = runc_ok.then(|| measure(&net, &runc_ns, secs, n));

    let show = |name: &str, f: &Figures| {
        for (what, r) in [
            ("host → container", &f.to_container),
            ("container → host", &f.from_container),
        ] {
            match r {
                Ok(g) => println!("{name} iperf3 {what}: {g:.2} Gbit/s"),
                Err(e) => println!("{name} iperf3 {what}: failed: {e}"),
            }
        }
        match &f.rtt {
            Ok(t) => println!(
                "{name} TCP round trip: median {:.0} µs, p99 {:.0} µs",
                percentile(t, 0.5),
                percentile(t, 0.99)
            ),
            Err(e) => println!("{name} TCP round trip: failed: {e}"),
        }
    };
    show("husk", &husk);
    if let Some(p) = &peer {
        show("runc", p);
        if let (Ok(a), Ok(b)) = (&husk.to_container, &p.to_container) {
            println!("ratio husk/runc throughput host → container: {:.3}", a / b);
        }
        if let (Ok(a), Ok(b)) = (&husk.from_container, &p.from_container) {
            println!("ratio husk/runc throughput container → host: {:.3}", a / b);
        }
        if let (Ok(a), Ok(b)) = (&husk.rtt, &p.rtt) {
            println!(
                "ratio husk/runc median round trip: {:.1}x",
                percentile(a, 0.5) / percentile(b, 0.5)
            );
        }
    }
    let _ = h.run(&["delete", "--force", "net-husk"]);
    let _ = runc(&["delete", "--force", "net-runc"]);
}
