//! `containerd-shim-husk-v2`: the containerd runtime v2 shim.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("{}", shim::not_implemented("containerd-shim-husk-v2"));
    ExitCode::FAILURE
}
