//! Runs one shell script in a fresh nested KVM lab (L1) and exits with its
//! status: for looking into a lab failure by hand.
//!
//!   husk-lab 'SCRIPT' [SECONDS]
//!
//! The script runs as root in `/` of L1 (this host's root under a
//! throw-away overlay) with `HUSK_KERNEL`, `HUSK_AGENT` and `HUSK_LAB_*`
//! passed on from this environment; L1 is powered off at the end.

use std::time::Duration;

use integration_tests::lab::{self, Lab};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(script) = args.next() else {
        eprintln!("usage: husk-lab 'SCRIPT' [SECONDS]");
        std::process::exit(2);
    };
    let seconds = match args.next().map(|s| s.parse::<u64>()) {
        None => 600,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("husk-lab: SECONDS must be a positive whole number");
            std::process::exit(2);
        }
    };
    let passed: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k == "HUSK_KERNEL" || k == "HUSK_AGENT" || k.starts_with("HUSK_LAB_"))
        .collect();
    let vars: Vec<(&str, &str)> = passed
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut lab = Lab::boot();
    let run = lab.run(
        &format!("{}{script}\n", lab::exports(&vars)),
        Duration::from_secs(seconds),
    );
    if !run.success() {
        eprintln!("husk-lab: status {}", run.status);
        std::process::exit(1);
    }
}
