//! The benchmarks that need a KVM that runs Linux, in the nested KVM lab
//! (`integration_tests::lab`) on a host whose own KVM cannot (PVM): boots
//! L1 and runs `bench-kvm` (husk-vmm against QEMU microvm with KVM) in it,
//! printing its figures. Nested times are TCG times: only the ratios within
//! one run mean anything.
//!
//!   cargo build --release --workspace
//!   ./target/release/bench-lab [RUNS]

use std::time::Duration;

use integration_tests::lab::{self, Lab};
use integration_tests::{agent, linux};

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let bench = std::env::current_exe()
        .expect("current_exe")
        .with_file_name("bench-kvm");
    assert!(
        bench.exists(),
        "{} not found: cargo build --release -p husk-bench",
        bench.display()
    );
    let env = lab::exports(&[
        ("HUSK_KERNEL", &linux::kernel().display().to_string()),
        ("HUSK_AGENT", &agent::binary().display().to_string()),
        (
            "HUSK_BIN_DIR",
            &integration_tests::host::bin_dir().display().to_string(),
        ),
    ]);
    let mut lab = Lab::boot();
    let run = lab.run(
        &format!("{env}{} {runs}\n", bench.display()),
        Duration::from_secs(3600),
    );
    println!(
        "(in the nested KVM lab: L1 on QEMU TCG, ready in {:.1} s)",
        lab.boot_time.as_secs_f64()
    );
    print!("{}", run.output);
    if !run.success() {
        eprintln!("bench-kvm in the lab: status {}", run.status);
        std::process::exit(1);
    }
}
