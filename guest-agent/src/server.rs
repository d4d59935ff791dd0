//! Serving the protocol: one thread per connection; handlers are thin
//! (validate, do, answer); a malformed or unknown message gets an error reply
//! and the connection keeps going.

use std::fs::File;

use protocol::{Call, CodecError, ErrorCode, ErrorReply, Reply, Request, Response, VersionInfo};

use crate::vsock::VsockListener;

fn handle(call: Call, ready_ms: u64) -> (Result<Reply, ErrorReply>, bool) {
    match call {
        Call::Version => (
            Ok(Reply::Version(VersionInfo {
                protocol: protocol::PROTOCOL_VERSION,
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
                boot_to_ready_ms: ready_ms,
            })),
            false,
        ),
        Call::Ping => (Ok(Reply::Empty), false),
        Call::SetTime { secs, nanos } => {
            if nanos >= 1_000_000_000 {
                return (
                    Err(ErrorReply {
                        code: ErrorCode::InvalidArgument,
                        message: format!("set_time: nanos {nanos} is not below one second"),
                    }),
                    false,
                );
            }
            match crate::init::set_time(secs, nanos) {
                Ok(()) => (Ok(Reply::Empty), false),
                Err(e) => (
                    Err(ErrorReply {
                        code: ErrorCode::Internal,
                        message: format!("set_time: {e}"),
                    }),
                    false,
                ),
            }
        }
        Call::Shutdown => (Ok(Reply::Empty), true),
        Call::CreateContainer { id, spec, rootfs } => (
            crate::container::create(&id, spec, &rootfs).map(|()| Reply::Empty),
            false,
        ),
        Call::StartContainer { id } => (crate::container::start(&id).map(|()| Reply::Empty), false),
        Call::WaitContainer { id } => (
            crate::container::wait(&id).map(|status| Reply::Exit { status }),
            false,
        ),
        Call::SignalContainer { id, signal } => (
            crate::container::signal(&id, signal).map(|()| Reply::Empty),
            false,
        ),
        Call::RemoveContainer { id } => {
            (crate::container::remove(&id).map(|()| Reply::Empty), false)
        }
        Call::ExecProcess {
            container_id,
            exec_id,
            args,
            env,
            cwd,
        } => (
            crate::container::exec(&container_id, &exec_id, args, env, cwd).map(|()| Reply::Empty),
            false,
        ),
        Call::WaitExec {
            container_id,
            exec_id,
        } => (
            crate::container::wait_exec(&container_id, &exec_id)
                .map(|status| Reply::Exit { status }),
            false,
        ),
    }
}

fn connection(mut stream: File, ready_ms: u64) {
    loop {
        let frame = match protocol::read_frame(&mut stream) {
            Ok(f) => f,
            Err(CodecError::TooLarge(n)) => {
                let err = Response {
                    id: 0,
                    result: Err(ErrorReply {
                        code: ErrorCode::InvalidArgument,
                        message: format!("frame of {n} bytes is too large"),
                    }),
                };
                let _ = protocol::write_message(&mut stream, &err);
                return;
            }
            Err(_) => return,
        };
        let (id, result, shutdown) = match serde_json::from_slice::<Request>(&frame) {
            Ok(req) => {
                let (result, shutdown) = handle(req.call, ready_ms);
                (req.id, result, shutdown)
            }
            Err(e) => (
                0,
                Err(ErrorReply {
                    code: ErrorCode::InvalidArgument,
                    message: format!("malformed request: {e}"),
                }),
                false,
            ),
        };
        if protocol::write_message(&mut stream, &Response { id, result }).is_err() {
            return;
        }
        if shutdown {
            // Let the answer reach the host: stop writing, then wait (bounded)
            // for the host to close before the VM goes away.
            use std::os::fd::AsRawFd;
            // SAFETY: shutdown(2) on a socket fd we own.
            unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
            drain_until_closed(&mut stream, std::time::Duration::from_secs(2));
            crate::init::power_off();
        }
    }
}

/// Reads and drops input until the peer closes or `limit` passes.
fn drain_until_closed(stream: &mut File, limit: std::time::Duration) {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + limit;
    let mut buf = [0u8; 256];
    while std::time::Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, 100) };
        if r > 0 && matches!(stream.read(&mut buf), Ok(0) | Err(_)) {
            return;
        }
    }
}

/// Accepts connections forever.
pub fn serve(listener: VsockListener, ready_ms: u64) {
    loop {
        match listener.accept() {
            Ok(stream) => {
                let spawned = std::thread::Builder::new()
                    .name("conn".into())
                    .spawn(move || connection(stream, ready_ms));
                if let Err(e) = spawned {
                    crate::log(&format!("cannot start a connection thread: {e}"));
                }
            }
            Err(e) => {
                crate::log(&format!("accept failed: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
