//! `husk-agent`: PID 1 of a husk microVM. The agent itself is built with the
//! guest agent work; this binary refuses to run rather than pretend.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "husk-agent: not implemented: the guest agent (protocol version {}) is not built yet",
        protocol::PROTOCOL_VERSION
    );
    ExitCode::FAILURE
}
