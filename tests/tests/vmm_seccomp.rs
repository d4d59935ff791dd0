//! husk-vmm's seccomp filters: every thread of a running VMM is filtered,
//! a forbidden call from any kind of thread ends the VMM with one clear
//! line and exit code 148, and `--no-seccomp` turns them off.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::guest;
use integration_tests::host::{self, TempDir, bin};
use integration_tests::vmm::{ApiVmm, config_json, wait_output};

const T: Duration = Duration::from_secs(30);

/// (thread name, `Seccomp:` mode) of every thread of `pid`.
fn thread_modes(pid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let dir = task.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .map(|v| v.trim().parse().expect("Seccomp: value"))
            .expect("no Seccomp: line");
        out.push((comm.trim().to_string(), mode));
    }
    out.sort();
    out
}

/// Starts a two-vCPU ticking guest over the API (with `extra` arguments)
/// and returns it once it runs.
fn ticking(dir: &TempDir, extra: &[&str]) -> ApiVmm {
    let vm = ApiVmm::start_with_args(dir, extra);
    let r = vm.request(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":2,"mem_size_mib":32}"#),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let boot = serde_json::json!({"kernel_image_path": guest::pvh(), "boot_args": "action=ticks"});
    let r = vm.request("PUT", "/boot-source", Some(&boot.to_string()));
    assert_eq!(r.status, 204, "{}", r.body);
    let r = vm.request(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    vm.wait_console("tick 3", T);
    vm
}

#[test]
fn every_thread_is_filtered_while_the_guest_runs() {
    host::announce(host::require_kvm());
    let dir = TempDir::new("seccomp-on");
    let vm = ticking(&dir, &[]);
    let pid = vm.child.as_ref().expect("child").id();
    let modes = thread_modes(pid);
    let names: Vec<&str> = modes.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"api") && names.contains(&"vcpu0") && names.contains(&"vcpu1"),
        "{modes:?}"
    );
    // Mode 2: a seccomp filter is in force on the thread.
    for (name, mode) in &modes {
        assert_eq!(*mode, 2, "thread {name} is not filtered: {modes:?}");
    }
    // The filtered VMM still serves the API and the guest.
    assert_eq!(vm.request("GET", "/", None).status, 200);
    assert_eq!(
        vm.request("PATCH", "/vm", Some(r#"{"state":"Paused"}"#))
            .status,
        204
    );
    assert_eq!(
        vm.request("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#))
            .status,
        204
    );
    let before = vm.console_text().matches("tick").count();
    let deadline = Instant::now() + T;
    while vm.console_text().matches("tick").count() <= before + 2 {
        assert!(Instant::now() < deadline, "the guest stopped ticking");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Opening a file once the VM runs is refused by the API, not left to
    // the filter.
    let r = vm.request(
        "PUT",
        "/metrics",
        Some(&serde_json::json!({"metrics_path": dir.join("m.json")}).to_string()),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("after the microVM has started"),
        "{}",
        r.body
    );
    assert!(!dir.join("m.json").exists());
}

#[test]
fn no_seccomp_leaves_the_threads_unfiltered() {
    host::announce(host::require_kvm());
    let dir = TempDir::new("seccomp-off");
    let vm = ticking(&dir, &["--no-seccomp"]);
    let modes = thread_modes(vm.child.as_ref().expect("child").id());
    for (name, mode) in &modes {
        assert_eq!(*mode, 0, "thread {name} is filtered: {modes:?}");
    }
}

/// Runs husk-vmm with the debug-build trigger that makes the first thread
/// of `kind` call acct(2) right after its filter is in.
fn violate(kind: &str) -> std::process::Output {
    let dir = TempDir::new(&format!("seccomp-{kind}"));
    let mut cmd = Command::new(bin("husk-vmm"));
    cmd.env("HUSK_VMM_TEST_SECCOMP_VIOLATION", kind)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if kind == "api" {
        cmd.arg("--api-sock").arg(dir.join("api.sock"));
    } else {
        let config = dir.join("vm.json");
        std::fs::write(
            &config,
            config_json(&guest::pvh(), None, "action=ticks", 2, 32),
        )
        .expect("write config");
        cmd.args(["--no-api", "--config-file"]).arg(&config);
    }
    wait_output(cmd.spawn().expect("spawn husk-vmm"), T)
}

#[test]
fn a_forbidden_call_ends_the_vmm_with_one_clear_line() {
    host::announce(host::require_kvm());
    for kind in ["vmm", "vcpu", "api"] {
        let out = violate(kind);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(148), "{kind}: {stderr}");
        let expected = format!(
            "husk-vmm: error: seccomp: thread {kind} made system call {}, which its filter \
             does not allow",
            libc::SYS_acct
        );
        assert!(stderr.contains(&expected), "{kind}: {stderr}");
    }
}
