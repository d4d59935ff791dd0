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
        other => (container_call(other), false),
    }
}

/// Calls about sandboxes, containers and processes.
fn container_call(call: Call) -> Result<Reply, ErrorReply> {
    use crate::container as c;
    let empty = |r: Result<(), ErrorReply>| r.map(|()| Reply::Empty);
    match call {
        Call::CreateSandbox(cfg) => empty(crate::sandbox::create(&cfg)),
        Call::CreateContainer { id, spec, rootfs } => empty(c::create(&id, spec, &rootfs)),
        Call::StartContainer { id } => empty(c::start(&id)),
        Call::WaitContainer { id } => c::wait(&id, "").map(Reply::Exit),
        Call::SignalContainer { id, signal, all } => empty(c::signal(&id, signal, all)),
        Call::RemoveContainer { id } => empty(c::remove(&id)),
        Call::ExecProcess {
            container_id,
            exec_id,
            process,
        } => empty(c::exec(&container_id, &exec_id, process)),
        Call::WaitExec {
            container_id,
            exec_id,
        } => {
            if exec_id.is_empty() {
                return Err(ErrorReply {
                    code: ErrorCode::InvalidArgument,
                    message: "wait_exec: empty exec_id".into(),
                });
            }
            c::wait(&container_id, &exec_id).map(Reply::Exit)
        }
        Call::SignalExec {
            container_id,
            exec_id,
            signal,
        } => empty(c::signal_exec(&container_id, &exec_id, signal)),
        Call::ResizeTty {
            container_id,
            exec_id,
            rows,
            cols,
        } => empty(c::resize(&container_id, &exec_id, rows, cols)),
        Call::CloseStdin {
            container_id,
            exec_id,
            after_bytes,
        } => empty(c::close_stdin(&container_id, &exec_id, after_bytes)),
        Call::PauseContainer { id } => empty(c::freeze(&id, true)),
        Call::ResumeContainer { id } => empty(c::freeze(&id, false)),
        Call::WriteFile { path, data, mode } => {
            empty(crate::sandbox::write_file(&path, &data, mode))
        }
        Call::ListProcesses { id } => c::processes(&id).map(|pids| Reply::Processes { pids }),
        Call::Stats { id } => c::exists(&id)
            .and_then(|()| crate::cgroup::stats(&id))
            .map(Reply::Stats),
        Call::UpdateResources { id, resources } => {
            empty(c::exists(&id).and_then(|()| crate::cgroup::update(&id, resources)))
        }
        Call::WaitOomEvent { after } => Ok(Reply::OomEvent(crate::cgroup::wait_oom(after))),
        Call::GuestStats => Ok(Reply::GuestStats(crate::sandbox::guest_stats())),
        Call::Version | Call::Ping | Call::SetTime { .. } | Call::Shutdown => Err(ErrorReply {
            code: ErrorCode::Internal,
            message: "call routed to the wrong handler".into(),
        }),
    }
}

/// Serves requests on `stream` until the peer closes, a frame is too large,
/// or a shutdown was answered (then returns true).
fn serve_requests<S: std::io::Read + std::io::Write>(stream: &mut S, ready_ms: u64) -> bool {
    loop {
        let frame = match protocol::read_frame(stream) {
            Ok(f) => f,
            Err(CodecError::TooLarge(n)) => {
                let err = Response {
                    id: 0,
                    result: Err(ErrorReply {
                        code: ErrorCode::InvalidArgument,
                        message: format!("frame of {n} bytes is too large"),
                    }),
                };
                let _ = protocol::write_message(stream, &err);
                return false;
            }
            Err(_) => return false,
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
        if protocol::write_message(stream, &Response { id, result }).is_err() {
            return false;
        }
        if shutdown {
            return true;
        }
    }
}

fn connection(mut stream: File, ready_ms: u64) {
    if serve_requests(&mut stream, ready_ms) {
        // Let the answer reach the host: stop writing, then wait (bounded)
        // for the host to close before the VM goes away.
        use std::os::fd::AsRawFd;
        // SAFETY: shutdown(2) on a socket fd we own.
        unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
        drain_until_closed(&mut stream, std::time::Duration::from_secs(2));
        crate::init::power_off();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn malformed_requests_get_errors_and_the_connection_goes_on() {
        let (mut host, mut agent) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || serve_requests(&mut agent, 7));
        let bad: [&[u8]; 5] = [
            b"not json",
            br#"{"id": 1, "call": {"op": "format_disk"}}"#,
            br#"{"id": 2, "call": {"op": "stats", "id": "c", "extra": 1}}"#,
            br#"{"id": 3}"#,
            b"\xff\xfe",
        ];
        for body in bad {
            host.write_all(&frame(body)).unwrap();
            let r: Response = protocol::read_message(&mut host).unwrap();
            let e = r.result.unwrap_err();
            assert_eq!((r.id, e.code), (0, ErrorCode::InvalidArgument), "{e:?}");
        }
        // A refused call names its own request.
        let req = Request {
            id: 9,
            call: Call::SetTime {
                secs: 0,
                nanos: 2_000_000_000,
            },
        };
        protocol::write_message(&mut host, &req).unwrap();
        let r: Response = protocol::read_message(&mut host).unwrap();
        assert_eq!(r.id, 9);
        assert_eq!(r.result.unwrap_err().code, ErrorCode::InvalidArgument);
        // Still serving.
        let req = Request {
            id: 10,
            call: Call::Version,
        };
        protocol::write_message(&mut host, &req).unwrap();
        let r: Response = protocol::read_message(&mut host).unwrap();
        match r.result.unwrap() {
            Reply::Version(v) => assert_eq!((r.id, v.boot_to_ready_ms), (10, 7)),
            other => panic!("{other:?}"),
        }
        // A frame over the limit is answered, then the connection ends.
        host.write_all(&((protocol::MAX_FRAME as u32) + 1).to_be_bytes())
            .unwrap();
        let r: Response = protocol::read_message(&mut host).unwrap();
        assert_eq!(r.result.unwrap_err().code, ErrorCode::InvalidArgument);
        assert!(!server.join().unwrap());
    }
}
