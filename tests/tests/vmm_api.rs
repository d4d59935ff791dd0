//! The husk-vmm control API over its Unix socket: every endpoint, bad
//! requests, pause/resume, Ctrl+Alt+Del, and clean-up of the socket.

use std::time::{Duration, Instant};

use integration_tests::guest;
use integration_tests::host::{self, TempDir};
use integration_tests::vmm::ApiVmm;

const T: Duration = Duration::from_secs(30);

fn boot_source(args: &str) -> String {
    serde_json::json!({"kernel_image_path": guest::pvh(), "boot_args": args}).to_string()
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn configure_start_and_query() {
    host::announce(host::require_kvm());
    let dir = TempDir::new("api");
    let vm = ApiVmm::start(&dir);

    let r = vm.request("GET", "/", None);
    assert_eq!(r.status, 200);
    let info = json(&r.body);
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["app_name"], "husk-vmm");

    // Starting without a boot source fails and leaves the VMM usable.
    let r = vm.request(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    );
    assert_eq!(r.status, 400);
    assert!(
        json(&r.body)["fault_message"]
            .as_str()
            .unwrap()
            .contains("boot-source"),
        "{}",
        r.body
    );

    let r = vm.request(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":2,"mem_size_mib":48}"#),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = vm.request("GET", "/machine-config", None);
    assert_eq!(json(&r.body)["vcpu_count"], 2);
    assert_eq!(json(&r.body)["mem_size_mib"], 48);

    let r = vm.request("PUT", "/boot-source", Some(&boot_source("action=halt")));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = vm.request("GET", "/vm/config", None);
    let cfg = json(&r.body);
    assert_eq!(cfg["boot-source"]["boot_args"], "action=halt");
    assert_eq!(cfg["machine-config"]["mem_size_mib"], 48);

    let r = vm.request(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let text = vm.wait_console(guest::MARKER, T);
    let report = guest::parse(&text);
    assert_eq!(report.cpus, 2);
    assert_eq!(report.e820[1].1, (48 << 20) - 0x10_0000);

    let r = vm.request("GET", "/", None);
    assert_eq!(json(&r.body)["state"], "Running");

    // Configuration is frozen once started; a second start is refused.
    let r = vm.request("PUT", "/boot-source", Some(&boot_source("x")));
    assert_eq!(r.status, 400);
    let r = vm.request(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":1,"mem_size_mib":32}"#),
    );
    assert_eq!(r.status, 400);
    let r = vm.request(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("already"), "{}", r.body);
    let r = vm.request("PUT", "/entropy", Some("{}"));
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("after the microVM has started"),
        "{}",
        r.body
    );

    // The VM is unaffected by all that.
    let r = vm.request("GET", "/", None);
    assert_eq!(json(&r.body)["state"], "Running");
}

#[test]
fn bad_requests_get_400_and_change_nothing() {
    host::require_kvm();
    let dir = TempDir::new("api-bad");
    let vm = ApiVmm::start(&dir);
    let cases: &[(&str, &str, Option<&str>, &str)] = &[
        ("GET", "/nonexistent", None, "GET /nonexistent"),
        ("DELETE", "/", None, "DELETE /"),
        ("PUT", "/actions", Some("{"), "actions"),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type":"Reboot"}"#),
            "Reboot",
        ),
        ("PUT", "/actions", None, "empty"),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count":0,"mem_size_mib":32}"#),
            "vcpu_count",
        ),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count":1,"mem_size_mib":32,"cpu_template":"T2"}"#),
            "cpu_template",
        ),
        (
            "PUT",
            "/boot-source",
            Some(r#"{"kernel_image_path":""}"#),
            "kernel_image_path",
        ),
        (
            "PATCH",
            "/vm",
            Some(r#"{"state":"Paused"}"#),
            "not been started",
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type":"SendCtrlAltDel"}"#),
            "not been started",
        ),
        ("PUT", "/balloon", Some("{}"), "not implemented"),
        ("PATCH", "/drives/rootfs", Some("{}"), "drive_id"),
        (
            "PATCH",
            "/network-interfaces/eth9",
            Some(r#"{"iface_id":"eth9"}"#),
            "eth9",
        ),
        (
            "PUT",
            "/drives/rootfs",
            Some(
                r#"{"drive_id":"rootfs","path_on_host":"/nonexistent.img","is_root_device":true}"#,
            ),
            "/nonexistent.img",
        ),
        (
            "PUT",
            "/drives/rootfs",
            Some(r#"{"drive_id":"data","path_on_host":"/dev/null","is_root_device":false}"#),
            "path names",
        ),
        (
            "PUT",
            "/vsock",
            Some(r#"{"guest_cid":1,"uds_path":"/tmp/v.sock"}"#),
            "guest_cid",
        ),
        (
            "PUT",
            "/fs/my%20tag",
            Some(r#"{"tag":"my%20tag","socket":"/tmp/fs.sock"}"#),
            "fs[].tag",
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type":"FlushMetrics"}"#),
            "no metrics file is set",
        ),
        (
            "PUT",
            "/metrics",
            Some(r#"{"metrics_path":"/nonexistent/dir/m.json"}"#),
            "/nonexistent/dir/m.json",
        ),
    ];
    for (method, path, body, needle) in cases {
        let r = vm.request(method, path, *body);
        assert_eq!(r.status, 400, "{method} {path}: {}", r.body);
        let msg = json(&r.body)["fault_message"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{method} {path}: {msg}");
    }
    // Malformed HTTP and oversized bodies are refused too.
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&vm.sock).unwrap();
    s.write_all(b"GARBAGE\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let big = "x".repeat(100 * 1024);
    let r = vm.request("PUT", "/boot-source", Some(&big));
    assert_eq!(r.status, 413);
    let r = vm.request("GET", "/", None);
    assert_eq!(json(&r.body)["state"], "Not started");
    // No refused device was kept.
    let cfg = json(&vm.request("GET", "/vm/config", None).body);
    assert!(
        cfg.get("drives").is_none() && cfg.get("vsock").is_none(),
        "{cfg}"
    );
    assert!(cfg.get("fs").is_none(), "{cfg}");
    assert_eq!(
        json(&vm.request("GET", "/machine-config", None).body),
        serde_json::json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false, "track_dirty_pages": false})
    );
}

/// Drives and the entropy device put through the API, one of them put
/// twice (the second put wins), reach the guest as the configuration file
/// would give them.
#[test]
fn devices_configured_through_the_api_reach_the_guest() {
    host::announce(host::require_kvm());
    let dir = TempDir::new("api-devices");
    let rw: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 31 % 251) as u8).collect();
    let ro: Vec<u8> = (0..512 * 1024).map(|i: u32| (i * 17 % 241) as u8).collect();
    let (rw_path, ro_path) = (dir.join("rw.img"), dir.join("ro.img"));
    std::fs::write(&rw_path, &rw).unwrap();
    std::fs::write(&ro_path, &ro).unwrap();
    let vm = ApiVmm::start(&dir);
    let args = "console=ttyS0 test=blk";
    let source = serde_json::json!({"kernel_image_path": guest::virtio(), "boot_args": args});
    let puts = [
        ("/boot-source", source),
        (
            "/drives/rootfs",
            serde_json::json!({"drive_id": "rootfs", "path_on_host": rw_path, "is_root_device": true}),
        ),
        // Read-write at first, then put again read-only.
        (
            "/drives/data-ro",
            serde_json::json!({"drive_id": "data-ro", "path_on_host": ro_path, "is_root_device": false}),
        ),
        (
            "/drives/data-ro",
            serde_json::json!({"drive_id": "data-ro", "path_on_host": ro_path, "is_root_device": false, "is_read_only": true}),
        ),
        ("/entropy", serde_json::json!({})),
    ];
    for (path, body) in &puts {
        let r = vm.request("PUT", path, Some(&body.to_string()));
        assert_eq!(r.status, 204, "PUT {path}: {}", r.body);
    }
    let cfg = json(&vm.request("GET", "/vm/config", None).body);
    assert_eq!(cfg["drives"].as_array().map(Vec::len), Some(2), "{cfg}");
    assert_eq!(cfg["entropy"], serde_json::json!({}), "{cfg}");
    let r = vm.request(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let out = vm.wait_console(guest::VIRTIO_DONE, T);
    assert_eq!(
        guest::field(&out, "blk 0 id=", "id"),
        Some("rootfs"),
        "{out}"
    );
    assert_eq!(guest::field(&out, "blk 0 id=", "ro"), Some("0"), "{out}");
    assert_eq!(
        guest::field(&out, "blk 1 id=", "id"),
        Some("data-ro"),
        "{out}"
    );
    assert_eq!(guest::field(&out, "blk 1 id=", "ro"), Some("1"), "{out}");
    assert_eq!(
        guest::field(&out, "blk 1 write8", "status"),
        Some("1"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&ro_path).unwrap(),
        ro,
        "the read-only drive changed"
    );
    // The test guest powers off when done.
    let end = vm.wait(T);
    assert_eq!(
        end.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&end.stderr)
    );
}

fn tick_count(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("tick ")).count()
}

#[test]
fn pause_and_resume() {
    host::require_kvm();
    let dir = TempDir::new("api-pause");
    let vm = ApiVmm::start(&dir);
    assert_eq!(
        vm.request("PUT", "/boot-source", Some(&boot_source("action=ticks")))
            .status,
        204
    );
    assert_eq!(
        vm.request(
            "PUT",
            "/actions",
            Some(r#"{"action_type":"InstanceStart"}"#)
        )
        .status,
        204
    );
    vm.wait_console("tick 3\n", T);

    let r = vm.request("PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(json(&vm.request("GET", "/", None).body)["state"], "Paused");
    let before = tick_count(&vm.console_text());
    std::thread::sleep(Duration::from_millis(500));
    let after = tick_count(&vm.console_text());
    assert_eq!(before, after, "the guest ran while paused");

    let r = vm.request("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(json(&vm.request("GET", "/", None).body)["state"], "Running");
    let deadline = Instant::now() + T;
    while tick_count(&vm.console_text()) < after + 3 {
        assert!(
            Instant::now() < deadline,
            "the guest did not run after resume"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Pausing twice and resuming twice are harmless.
    for state in ["Paused", "Paused", "Resumed", "Resumed"] {
        let body = format!(r#"{{"state":"{state}"}}"#);
        assert_eq!(vm.request("PATCH", "/vm", Some(&body)).status, 204);
    }
}

#[test]
fn ctrl_alt_del_reaches_the_guest_and_socket_is_removed() {
    host::require_kvm();
    let dir = TempDir::new("api-cad");
    let vm = ApiVmm::start(&dir);
    assert_eq!(
        vm.request("PUT", "/boot-source", Some(&boot_source("action=kbd")))
            .status,
        204
    );
    assert_eq!(
        vm.request(
            "PUT",
            "/actions",
            Some(r#"{"action_type":"InstanceStart"}"#)
        )
        .status,
        204
    );
    vm.wait_console(guest::MARKER, T);
    let r = vm.request(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"SendCtrlAltDel"}"#),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let sock = vm.sock.clone();
    let console = vm.console.clone();
    let out = vm.wait(T);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(console).unwrap();
    assert!(
        text.contains("key 0x1d"),
        "guest did not see the Ctrl scancode: {text}"
    );
    assert!(!sock.exists(), "API socket left behind");
}

#[test]
fn existing_socket_path_is_refused() {
    host::require_kvm();
    let dir = TempDir::new("api-exists");
    let sock = dir.join("api.sock");
    std::fs::write(&sock, b"").unwrap();
    let out = std::process::Command::new(host::bin("husk-vmm"))
        .arg("--api-sock")
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(vmm::EXIT_BAD_CONFIG));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already exists"), "{err}");
    assert!(sock.exists(), "someone else's file was removed");
}

/// The device registry outlives activation: after the start `GET /devices`
/// lists every device by its configuration name with its transport state,
/// the one the guest's driver set up as activated, the one it left alone
/// as not.
#[test]
fn devices_are_listed_with_their_state_after_the_start() {
    host::require_kvm();
    let dir = TempDir::new("api-registry");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 * 1024]).unwrap();
    let vm = ApiVmm::start(&dir);
    let before = json(&vm.request("GET", "/devices", None).body);
    assert_eq!(before, serde_json::json!({"devices": []}));
    let source = serde_json::json!({"kernel_image_path": guest::virtio(), "boot_args": "console=ttyS0 test=flush"});
    for (path, body) in [
        ("/boot-source", source),
        (
            "/drives/scratch",
            serde_json::json!({"drive_id": "scratch", "path_on_host": disk, "is_root_device": false}),
        ),
        ("/entropy", serde_json::json!({})),
    ] {
        let r = vm.request("PUT", path, Some(&body.to_string()));
        assert_eq!(r.status, 204, "PUT {path}: {}", r.body);
    }
    let r = vm.request(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    // The guest halts (and stays) once the drive has flushed.
    let out = vm.wait_console("FLUSHED", T);
    assert!(out.contains("FLUSHED"), "{out}");
    let listed = json(&vm.request("GET", "/devices", None).body);
    let devices = listed["devices"].as_array().expect("devices").clone();
    assert_eq!(devices.len(), 2, "{listed}");
    let block = &devices[0];
    assert_eq!(block["id"], "scratch", "{listed}");
    assert_eq!(block["type"], "block", "{listed}");
    assert_eq!(block["activated"], true, "{listed}");
    // ACKNOWLEDGE | DRIVER | DRIVER_OK | FEATURES_OK.
    assert_eq!(block["status"], 15, "{listed}");
    assert_ne!(block["acked_features"], 0, "{listed}");
    let rng = &devices[1];
    assert_eq!(rng["id"], "entropy", "{listed}");
    assert_eq!(rng["type"], "rng", "{listed}");
    assert_eq!(rng["activated"], false, "{listed}");
    assert_ne!(block["mmio_base"], rng["mmio_base"], "{listed}");
    assert_ne!(block["irq"], rng["irq"], "{listed}");
}

/// The metrics: vCPU exits by reason, read over the API while the guest
/// runs, and written to the metrics file on FlushMetrics and at the end.
#[test]
fn metrics_count_the_guests_exits() {
    host::require_kvm();
    let dir = TempDir::new("api-metrics");
    let vm = ApiVmm::start(&dir);
    let file = dir.join("metrics.json");
    let r = vm.request(
        "PUT",
        "/metrics",
        Some(&serde_json::json!({"metrics_path": file}).to_string()),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        vm.request("PUT", "/boot-source", Some(&boot_source("action=ticks")))
            .status,
        204
    );
    let r = vm.request(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    vm.wait_console("tick 3", T);
    let m = json(&vm.request("GET", "/metrics", None).body);
    // The test guest prints through COM1: one exit per port access.
    let serial = m["vcpu_exits"]["io_serial"].as_u64().unwrap();
    assert!(serial > 20, "{m}");
    let r = vm.request("PUT", "/actions", Some(r#"{"action_type":"FlushMetrics"}"#));
    assert_eq!(r.status, 204, "{}", r.body);
    let lines = std::fs::read_to_string(&file).unwrap();
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert!(
        first["vcpu_exits"]["io_serial"].as_u64().unwrap() >= serial,
        "{first}"
    );
    // Counts only go up.
    let later = json(&vm.request("GET", "/metrics", None).body);
    assert!(later["vcpu_exits"]["io_serial"].as_u64().unwrap() >= serial);
}
