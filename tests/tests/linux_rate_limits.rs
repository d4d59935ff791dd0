//! husk-vmm's rate limiters under Linux's own drivers: a drive limited in
//! bandwidth read with direct I/O, and a network device limited each way
//! carrying TCP streams, each timed by the host and held within 10% of its
//! limit. The network limits are lifted and set again with `PATCH` while
//! the guest runs, and each direction is timed for two sizes, so that the
//! rate measured is what the extra bytes took. Like `linux_devices`, this
//! needs a KVM that runs Linux: on a PVM host the nested lab runs it.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use integration_tests::host::{self, HostKvm, TempDir, within_ten_percent};
use integration_tests::linux::{self, HuskLinux};
use integration_tests::netns::TapNamespace;
use integration_tests::vmm::ApiVmm;

const T: Duration = Duration::from_secs(300);
const MIB: u64 = 1 << 20;

fn linux_on_husk_vmm() -> bool {
    match host::require_kvm() {
        HostKvm::Hardware => true,
        HostKvm::Pvm => {
            eprintln!("*** PVM host: these tests run in the nested KVM lab ***");
            false
        }
    }
}

/// A token bucket of `per_sec` a second, as husk-vmm's schema has it.
fn per_second(per_sec: u64) -> serde_json::Value {
    serde_json::json!({"size": per_sec, "refill_time": 1000})
}

/// Polls the console until `needle` appears; returns when it was seen.
fn seen_at(vm: &ApiVmm, needle: &str) -> Instant {
    let deadline = Instant::now() + T;
    loop {
        if vm.console_text().contains(needle) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} on the console:\n{}",
            vm.console_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_drive_bandwidth_limit_holds_for_direct_reads() {
    if !linux_on_husk_vmm() {
        return;
    }
    let dir = TempDir::new("linux-rate-blk");
    let img = dir.join("data.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(32 * MIB))
        .unwrap();
    // 2 MiB/s; the bucket starts full, so 12 MiB take 5 s.
    let (rate, total) = (2 * MIB, 12 * MIB);
    let mut guest = HuskLinux::default();
    guest.puts.push((
        "/drives/data".into(),
        serde_json::json!({"drive_id": "data", "path_on_host": img, "is_root_device": false,
                           "rate_limiter": {"bandwidth": per_second(rate)}}),
    ));
    let vm = guest.start(
        &dir,
        &format!(
            "echo DD-START
dd if=/dev/vda of=/dev/null bs=64k count={} iflag=direct 2>/dev/null && echo DD-OK
echo DD-END
reboot -f
",
            total / (64 << 10)
        ),
    );
    let start = seen_at(&vm, "DD-START");
    let end = seen_at(&vm, "DD-END");
    let out = vm.wait_console("DD-END", T);
    assert!(out.contains("DD-OK"), "{out}");
    within_ten_percent(
        "drive at 2 MiB/s",
        end - start,
        Duration::from_secs_f64((total - rate) as f64 / rate as f64),
    );
    assert_eq!(vm.wait(T).status.code(), Some(0));
}

#[test]
fn network_limits_hold_each_way() {
    if !linux_on_husk_vmm() {
        return;
    }
    let dir = TempDir::new("linux-rate-net");
    let net = TapNamespace::new("lrate");
    // 1 MiB/s each way. Each direction is timed for 3 MiB and for 9 MiB
    // (the bucket full again before each): the difference, 6 MiB, must
    // take 6 s, whatever starting a process and a connection costs.
    let (rate, small, large) = (MIB, 3 * MIB, 9 * MIB);
    let mut guest = HuskLinux {
        netns: Some(net.ns.clone()),
        ..HuskLinux::default()
    };
    guest.puts.push((
        "/network-interfaces/eth0".into(),
        serde_json::json!({"iface_id": "eth0", "host_dev_name": net.tap,
                           "guest_mac": "06:00:0a:00:00:02",
                           "rx_rate_limiter": {"bandwidth": per_second(rate)},
                           "tx_rate_limiter": {"bandwidth": per_second(rate)}}),
    ));
    let vm = guest.start(
        &dir,
        &format!(
            "ip link set eth0 up
ip addr add {guest}/24 dev eth0
husk-guest-tool tcp-listen 0.0.0.0:5002 6
echo NET-DONE
reboot -f
",
            guest = net.guest_ip,
        ),
    );
    vm.wait_console("tcp-listen: listening", T);
    let tool = linux::guest_tool();
    let timed = |send: u64, reply: u64| {
        // Let the bucket fill up again.
        std::thread::sleep(Duration::from_millis(1500));
        let started = Instant::now();
        let mut c = net.command(Path::new("timeout"));
        let out = c
            .arg("60")
            .arg(&tool)
            .args([
                "tcp-connect",
                &format!("{}:5002", net.guest_ip),
                "1",
                &send.to_string(),
                &reply.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("host tcp-connect");
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "exchange {send}/{reply}: {}{}\nconsole:\n{}\nhusk-vmm's stderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            vm.console_text(),
            std::fs::read_to_string(&vm.stderr).unwrap_or_default()
        );
        took
    };
    let patch = |limits: serde_json::Value| {
        let body = serde_json::json!({"iface_id": "eth0", "rx_rate_limiter": limits,
                                      "tx_rate_limiter": limits});
        let r = vm.request("PATCH", "/network-interfaces/eth0", Some(&body.to_string()));
        assert_eq!(r.status, 204, "{}", r.body);
    };
    // Without limits the same streams must go well above the limit, or the
    // test would measure the lab rather than the limiter.
    patch(serde_json::json!({}));
    let (free_in, free_out) = (timed(large, 0), timed(0, large));
    eprintln!("without limits, 9 MiB: host to guest {free_in:?}, guest to host {free_out:?}");
    let unlimited_enough = Duration::from_secs_f64(large as f64 / rate as f64 / 3.0);
    assert!(
        free_in < unlimited_enough && free_out < unlimited_enough,
        "without limits 9 MiB took {free_in:?} and {free_out:?}: too slow here to test a limit of 1 MiB/s"
    );
    patch(serde_json::json!({"bandwidth": per_second(rate)}));
    let expected = Duration::from_secs_f64((large - small) as f64 / rate as f64);
    let (short_in, long_in) = (timed(small, 0), timed(large, 0));
    let (short_out, long_out) = (timed(0, small), timed(0, large));
    let out = vm.wait_console("NET-DONE", T);
    eprintln!("host to guest: {short_in:?} for 3 MiB, {long_in:?} for 9 MiB");
    eprintln!("guest to host: {short_out:?} for 3 MiB, {long_out:?} for 9 MiB");
    within_ten_percent(
        "host to guest, 6 MiB more at 1 MiB/s",
        long_in - short_in,
        expected,
    );
    within_ten_percent(
        "guest to host, 6 MiB more at 1 MiB/s",
        long_out - short_out,
        expected,
    );
    assert!(out.contains("tcp-listen: ok"), "{out}");
    assert_eq!(vm.wait(T).status.code(), Some(0));
}
