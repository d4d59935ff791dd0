//! `husk-agent`: PID 1 of a husk microVM. As init it mounts the pseudo file
//! systems, brings up loopback, sets the hostname and reaps orphans; then it
//! serves the host–agent protocol on vsock port
//! [`protocol::AGENT_CONTROL_PORT`], one thread per connection.
//!
//! Built statically (`-C target-feature=+crt-static`) so the initramfs needs
//! nothing else.

mod cgroup;
mod container;
mod init;
mod network;
mod reaper;
mod sandbox;
mod server;
mod stdio;
mod vsock;

use std::process::ExitCode;

fn log(msg: &str) {
    // The console is the agent's log until logs go over vsock. Writing must
    // never panic: PID 1 may have no console.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "husk-agent: {msg}");
}

fn main() -> ExitCode {
    // Container set-up errors (libcontainer) go to stderr: the console, or
    // inside a container's set-up its stderr, whence create errors quote
    // them. Errors only: nothing else may appear on a container's stderr.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing_subscriber::filter::LevelFilter::ERROR)
        .without_time()
        .try_init();
    let pid1 = std::process::id() == 1;
    if pid1 {
        if let Err(e) = init::setup() {
            log(&format!("init failed: {e}"));
            init::power_off();
        }
    }
    let listener = match vsock::VsockListener::bind(protocol::AGENT_CONTROL_PORT) {
        Ok(l) => l,
        Err(e) => {
            log(&format!(
                "cannot listen on vsock port {}: {e}",
                protocol::AGENT_CONTROL_PORT
            ));
            if pid1 {
                init::power_off();
            }
            return ExitCode::FAILURE;
        }
    };
    match vsock::VsockListener::bind(protocol::STDIO_PORT) {
        Ok(l) => {
            if let Err(e) = std::thread::Builder::new()
                .name("stdio".into())
                .spawn(move || stdio::serve(l))
            {
                log(&format!("cannot start the stdio listener: {e}"));
            }
        }
        Err(e) => log(&format!(
            "cannot listen on vsock port {}: {e}",
            protocol::STDIO_PORT
        )),
    }
    let ready_ms = init::boottime_ms();
    {
        use std::io::Write;
        let _ = writeln!(
            std::io::stdout(),
            "{} in {ready_ms} ms (protocol {})",
            protocol::AGENT_READY_LINE,
            protocol::PROTOCOL_VERSION
        );
    }
    server::serve(listener, ready_ms);
    if pid1 {
        init::power_off();
    }
    ExitCode::SUCCESS
}
