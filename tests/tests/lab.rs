//! husk-vmm for real: the Linux-guest tests of this suite, run again inside
//! the nested KVM lab (`integration_tests::lab`), where /dev/kvm is a real
//! KVM (kvm_amd on QEMU's emulated SVM with nested paging) and
//! `hypervisor = "auto"` therefore picks husk-vmm. Each test here boots one
//! L1 and runs a group of this suite's test binaries in it, unchanged.
//!
//! Where this host's own KVM is hardware-backed, those binaries already run
//! on husk-vmm in this suite and the lab is not needed. A lab that cannot
//! start is a failure.

use std::time::Duration;

use integration_tests::host::{self, HostKvm};
use integration_tests::lab::{self, Lab};
use integration_tests::{agent, linux};

/// True when the suite already runs on a KVM that runs Linux.
fn direct_on_hardware() -> bool {
    if host::require_kvm() == HostKvm::Hardware {
        eprintln!(
            "*** host KVM is hardware-backed: the Linux-guest tests run on husk-vmm \
             directly in this suite; no lab needed ***"
        );
        return true;
    }
    false
}

/// The environment of a test binary in L1: the host's guest kernel and
/// agent (built already; L1's view of the repository is a throw-away
/// overlay).
fn suite_env() -> String {
    let kernel = linux::kernel();
    let agent = agent::binary();
    let tool = linux::guest_tool();
    lab::exports(&[
        ("HUSK_KERNEL", &kernel.display().to_string()),
        ("HUSK_AGENT", &agent.display().to_string()),
        ("HUSK_GUEST_TOOL", &tool.display().to_string()),
        ("RUST_BACKTRACE", "1"),
    ])
}

/// `HUSK_LAB_TEST="BINARY [ARGS…]"` runs only that test binary of the
/// suite in the lab, with those arguments (a test name filter, say); the
/// lab tests whose groups do not hold it boot no L1.
fn selected(names: &[&'static str]) -> Option<Vec<(&'static str, String)>> {
    match std::env::var("HUSK_LAB_TEST") {
        Ok(only) => {
            let (bin, args) = only.split_once(' ').unwrap_or((&only, ""));
            let name = names.iter().find(|n| **n == bin)?;
            Some(vec![(*name, args.to_string())])
        }
        Err(_) => Some(names.iter().map(|n| (*n, String::new())).collect()),
    }
}

/// Boots L1 and runs each named test binary of this suite in it, one after
/// the other; fails naming every binary that did not pass.
fn in_the_lab(names: &[&'static str], limit: Duration, check: impl FnOnce(&mut Lab)) {
    if direct_on_hardware() {
        return;
    }
    let Some(chosen) = selected(names) else {
        eprintln!("lab: HUSK_LAB_TEST selects none of {names:?}");
        return;
    };
    let mut lab = Lab::boot();
    check(&mut lab);
    run_suites(lab, &chosen, limit);
}

/// How many times the lab may be booted again after L1's own kernel
/// crashed (QEMU's emulated SVM, not the code under test: see
/// docs/TESTING.md); the binary that ran is run again in the new L1.
const L1_CRASH_RETRIES: usize = 1;

fn run_suites(mut lab: Lab, names: &[(&str, String)], limit: Duration) {
    let env = suite_env();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut failed = Vec::new();
    let mut retries = 0;
    let mut rerun: Vec<&str> = Vec::new();
    let mut queue: std::collections::VecDeque<&(&str, String)> = names.iter().collect();
    while let Some(entry) = queue.pop_front() {
        let (name, args) = entry;
        let bin = lab::test_binary(name);
        let run = lab.run(
            &format!(
                "{env}cd {}\n{} --test-threads=2 {args}\n",
                repo.canonicalize().unwrap().display(),
                bin.display()
            ),
            limit,
        );
        if run.l1_ended() {
            let crash = lab.kernel_crash();
            match crash {
                Some(oops) if retries < L1_CRASH_RETRIES => {
                    retries += 1;
                    eprintln!(
                        "lab: *** L1's own kernel crashed while {name} ran; booting a new L1 \
                         and running {name} again ***\n{oops}"
                    );
                    drop(lab);
                    lab = Lab::boot();
                    queue.push_front(entry);
                    continue;
                }
                _ => panic!(
                    "L1 ended while {name} ran ({})\noutput:\n{}\nL1 console:\n{}",
                    run.status,
                    run.output,
                    lab.console()
                ),
            }
        }
        let summary = run
            .output
            .lines()
            .rfind(|l| l.starts_with("test result:"))
            .unwrap_or("no test result")
            .to_string();
        eprintln!(
            "lab: {name}: status {} in {:.0} s: {summary}",
            run.status,
            run.elapsed.as_secs_f64()
        );
        if !run.success() && run.status != "timeout" && !rerun.contains(name) {
            // Under TCG a 1-vCPU L1 is slow enough that a test now and then
            // fails on time alone; a binary that fails gets a second run
            // in the same L1, and fails for good if that fails too. The
            // first failure stays in the log.
            rerun.push(name);
            eprintln!(
                "lab: *** {name} failed ({}: {summary}); running it once more ***\n{}",
                run.status,
                failures(&run.output)
            );
            queue.push_front(entry);
            continue;
        }
        if !run.success() {
            failed.push(format!("{name} ({}: {summary})", run.status));
        } else if rerun.contains(name) {
            eprintln!("lab: *** {name} passed on its second run ***");
        }
    }
    let dmesg = lab.run(
        "dmesg | grep -iE 'kvm|svm' | tail -20 || true",
        Duration::from_secs(30),
    );
    eprintln!("lab: L1 kernel messages about KVM:\n{}", dmesg.output);
    assert!(
        failed.is_empty(),
        "failed in the lab: {}",
        failed.join(", ")
    );
}

/// The failures section of a test binary's output (what failed and why).
fn failures(output: &str) -> String {
    match output.find("failures:") {
        Some(i) => output[i..].chars().take(8000).collect(),
        None => output
            .lines()
            .filter(|l| l.contains("FAILED") || l.contains("panicked"))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

#[test]
fn l1_is_a_kvm_host_that_boots_linux_on_husk_vmm() {
    in_the_lab(
        &[
            "husk_host",
            "linux_husk_vmm",
            "linux_devices",
            "vmm_api",
            "vmm_seccomp",
            "linux_rate_limits",
        ],
        Duration::from_secs(900),
        |lab| {
            let kvm = lab.run(
                "test -c /dev/kvm\ncat /sys/module/kvm_amd/parameters/nested \
                 /sys/module/kvm_amd/parameters/npt\ngrep -c svm /proc/cpuinfo\n",
                Duration::from_secs(60),
            );
            assert!(kvm.success(), "L1 has no usable KVM: {}", kvm.output);
            // kvm_amd's `nested` is an int, `npt` a bool.
            let params: Vec<&str> = kvm.output.lines().map(str::trim).collect();
            assert!(matches!(params.first(), Some(&"1")), "nested: {params:?}");
            assert!(matches!(params.get(1), Some(&"Y")), "npt: {params:?}");
        },
    );
}

#[test]
fn the_agent_runs_containers_on_husk_vmm() {
    in_the_lab(
        &["agent", "agent_lifecycle", "agent_spec"],
        Duration::from_secs(900),
        |_| {},
    );
}

#[test]
fn the_husk_cli_runs_on_husk_vmm() {
    in_the_lab(
        &[
            "cli",
            "cli_podman",
            "cli_containerd",
            "volumes",
            "net_container",
        ],
        Duration::from_secs(1200),
        |_| {},
    );
}

#[test]
fn the_containerd_shim_runs_on_husk_vmm() {
    in_the_lab(
        &[
            "shim_ctr",
            "shim_block_root",
            "shim_cri",
            "net_cri",
            "volumes_cri",
        ],
        Duration::from_secs(1200),
        |_| {},
    );
}
