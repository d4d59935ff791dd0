//! husk-vmm's rate limiters on virtio-blk, driven by the virtio test
//! guest's block benchmark (sequential 4 KiB reads between two marker lines
//! the host times): bandwidth and operations limits hold within 10%, a
//! one-time burst is spent first, `PATCH /drives/{id}` changes the limits
//! of a running VM, and bad limits are refused in one line.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::guest;
use integration_tests::host::{self, TempDir, bin, within_ten_percent};
use integration_tests::vmm::ApiVmm;

const T: Duration = Duration::from_secs(120);
const READ: u64 = 4096;

fn drive_image(dir: &TempDir) -> std::path::PathBuf {
    let img = dir.join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(16 << 20))
        .expect("create image");
    img
}

/// Runs `reads` guest reads through a drive limited by `limiter`; returns
/// the time between the guest's BENCH-START and BENCH-END lines.
fn timed_reads(limiter: serde_json::Value, reads: u64) -> Duration {
    host::announce(host::require_kvm());
    let dir = TempDir::new("rate-blk");
    let cfg = serde_json::json!({
        "boot-source": {"kernel_image_path": guest::virtio(),
                        "boot_args": format!("console=ttyS0 test=blk-bench bench.n={reads}")},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
        "drives": [{"drive_id": "limited", "path_on_host": drive_image(&dir),
                    "is_root_device": false, "rate_limiter": limiter}],
    });
    let cfg_path = dir.join("vm.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let mut child = Command::new(bin("husk-vmm"))
        .args(["--no-api", "--config-file"])
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn husk-vmm");
    let out = BufReader::new(child.stdout.take().unwrap());
    let deadline = Instant::now() + T;
    let mut start = None;
    let mut took = None;
    let mut seen = String::new();
    for line in out.lines() {
        let Ok(line) = line else { break };
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("BENCH-START") {
            start = Some(Instant::now());
        } else if line.starts_with("BENCH-END") {
            assert!(line.contains("failed=0"), "{line}");
            took = start.map(|s| s.elapsed());
            break;
        }
        assert!(Instant::now() < deadline, "no BENCH-END in time:\n{seen}");
    }
    let _ = child.kill();
    let _ = child.wait();
    took.unwrap_or_else(|| panic!("the guest did not finish its reads:\n{seen}"))
}

#[test]
fn a_bandwidth_limit_with_a_burst_holds() {
    // 1 MiB/s, the bucket starts full (1 MiB) and a one-time burst of
    // 512 KiB is spent first: 1500 reads (about 5.9 MiB) take the rest at
    // the rate.
    let (size, burst, reads) = (1u64 << 20, 512u64 << 10, 1500u64);
    let took = timed_reads(
        serde_json::json!({"bandwidth": {"size": size, "one_time_burst": burst,
                                         "refill_time": 1000}}),
        reads,
    );
    let paid = reads * READ - size - burst;
    let expected = Duration::from_secs_f64(paid as f64 / size as f64);
    within_ten_percent("bandwidth 1 MiB/s", took, expected);
}

#[test]
fn an_operations_limit_holds() {
    // 250 requests per second; the first 250 are in the bucket.
    let (ops, reads) = (250u64, 875u64);
    let took = timed_reads(
        serde_json::json!({"ops": {"size": ops, "refill_time": 1000}}),
        reads,
    );
    let expected = Duration::from_secs_f64((reads - ops) as f64 / ops as f64);
    within_ten_percent("250 requests/s", took, expected);
}

#[test]
fn patch_changes_the_limits_of_a_running_vm() {
    host::announce(host::require_kvm());
    let dir = TempDir::new("rate-patch");
    let vm = ApiVmm::start(&dir);
    let boot = serde_json::json!({"kernel_image_path": guest::virtio(),
                                  "boot_args": "console=ttyS0 test=blk-bench bench.n=2000"});
    assert_eq!(
        vm.request("PUT", "/boot-source", Some(&boot.to_string()))
            .status,
        204
    );
    // 20 requests per second: 2000 reads would take 100 s.
    let drive = serde_json::json!({"drive_id": "limited", "path_on_host": drive_image(&dir),
                                   "is_root_device": false,
                                   "rate_limiter": {"ops": {"size": 20, "refill_time": 1000}}});
    let r = vm.request("PUT", "/drives/limited", Some(&drive.to_string()));
    assert_eq!(r.status, 204, "{}", r.body);
    // PATCH before the start changes the configuration.
    let r = vm.request(
        "PATCH",
        "/drives/limited",
        Some(r#"{"drive_id":"limited","rate_limiter":{"ops":{"size":10,"refill_time":1000}}}"#),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = vm.request("GET", "/vm/config", None);
    assert!(r.body.contains(r#""size":10"#), "{}", r.body);
    let r = vm.request(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    vm.wait_console("BENCH-START", T);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !vm.console_text().contains("BENCH-END"),
        "the limit did not hold: {}",
        vm.console_text()
    );

    // Bad changes are refused and change nothing.
    for (body, says) in [
        (
            r#"{"drive_id":"other","rate_limiter":{}}"#,
            "the path names",
        ),
        (
            r#"{"drive_id":"limited","path_on_host":"/x"}"#,
            "not implemented",
        ),
        (
            r#"{"drive_id":"limited","rate_limiter":{"ops":{"size":1,"refill_time":99999999}}}"#,
            "rate_limiter",
        ),
        (
            r#"{"drive_id":"limited","rate_limiter":{"ops":{"size":1}}}"#,
            "refill_time",
        ),
    ] {
        let r = vm.request("PATCH", "/drives/limited", Some(body));
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.body.contains(says), "{body}: {}", r.body);
    }
    let r = vm.request(
        "PATCH",
        "/drives/missing",
        Some(r#"{"drive_id":"missing","rate_limiter":{}}"#),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("no drive"), "{}", r.body);

    // Lifting the limit lets the rest through at once.
    let lifted = Instant::now();
    let r = vm.request(
        "PATCH",
        "/drives/limited",
        Some(r#"{"drive_id":"limited","rate_limiter":{}}"#),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let out = vm.wait_console("BENCH-END", T);
    assert!(out.contains("failed=0"), "{out}");
    assert!(
        lifted.elapsed() < Duration::from_secs(60),
        "the reads still crawled after the limit was lifted"
    );
}

#[test]
fn bad_limits_in_the_configuration_are_refused_in_one_line() {
    host::announce(host::require_kvm());
    let dir = TempDir::new("rate-bad");
    let cfg = serde_json::json!({
        "boot-source": {"kernel_image_path": guest::virtio()},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
        "drives": [{"drive_id": "d", "path_on_host": drive_image(&dir), "is_root_device": false,
                    "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 4000000}}}],
    });
    let cfg_path = dir.join("vm.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let out = Command::new(bin("husk-vmm"))
        .args(["--no-api", "--config-file"])
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .output()
        .expect("run husk-vmm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("drives[].rate_limiter"), "{stderr}");
}
