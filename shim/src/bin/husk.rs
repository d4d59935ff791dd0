//! `husk`: the runc-compatible OCI runtime CLI.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("{}", shim::not_implemented("husk"));
    ExitCode::FAILURE
}
