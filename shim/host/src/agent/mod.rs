//! The host side of the host–agent protocol: connecting through the VMM's
//! hybrid vsock socket, calls with timeouts, and a process's stdio streams
//! ([`stdio`]).
//!
//! Everything the agent sends is untrusted: frames are size-capped by the
//! codec, a response must carry the request's id, text from the guest is
//! shortened to [`GUEST_TEXT_MAX`] before anyone logs or forwards it, and
//! output streams are read only up to the byte counts of the exit reply.

pub mod stdio;

pub use stdio::{HostEnds, OutputPump, ProcessStdio, StdioPumps, pump_stdin};

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use protocol::{Call, ErrorReply, ExitInfo, Reply, Request, Response, StdioAttach, StdioStream};

use crate::ErrorKind;

/// Most bytes of guest-written text (an error message, an unexpected
/// answer) kept in an error: the rest is cut, and its size said.
pub const GUEST_TEXT_MAX: usize = 512;

/// `text` cut to [`GUEST_TEXT_MAX`] bytes (at a character boundary), on
/// one line.
pub fn shorten(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.len() <= GUEST_TEXT_MAX {
        return one_line;
    }
    let mut end = GUEST_TEXT_MAX;
    while !one_line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &one_line[..end], text.len())
}

/// Timeout of calls that do not wait for an event.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The hybrid vsock socket refused the connection.
    #[error("connect to {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The VMM's `CONNECT` handshake failed.
    #[error("vsock handshake for port {port}: {answer}")]
    Handshake {
        /// Guest port.
        port: u32,
        /// What came back.
        answer: String,
    },
    /// Nothing answered the `CONNECT` handshake (the VM's vsock device
    /// stalled, or the guest hangs).
    #[error("vsock port {port}: no answer to CONNECT")]
    NoAnswer {
        /// Guest port.
        port: u32,
    },
    /// Reading or writing the connection failed.
    #[error("agent connection: {0}")]
    Io(#[from] std::io::Error),
    /// A frame could not be read or decoded.
    #[error("agent connection: {0}")]
    Codec(#[from] protocol::CodecError),
    /// The agent speaks another protocol version.
    #[error("agent protocol {agent}, host protocol {host}")]
    Version {
        /// The agent's.
        agent: u32,
        /// Ours.
        host: u32,
    },
    /// The call did not answer in time.
    #[error("agent call {0} timed out")]
    Timeout(&'static str),
    /// The agent refused the call.
    #[error("{}", .0.message)]
    Refused(ErrorReply),
    /// The answer does not fit the call.
    #[error("agent answered {0}")]
    Unexpected(String),
    /// The agent did not come up in time.
    #[error("the agent did not answer within {0:?}")]
    NotReady(Duration),
}

impl AgentError {
    /// Whose fault this is: the agent's own refusals keep their class;
    /// everything else means the guest is not (or no longer) answering.
    pub fn kind(&self) -> ErrorKind {
        use protocol::ErrorCode;
        match self {
            AgentError::Refused(r) => match r.code {
                ErrorCode::InvalidArgument => ErrorKind::InvalidArgument,
                ErrorCode::NotFound => ErrorKind::NotFound,
                ErrorCode::FailedPrecondition => ErrorKind::FailedPrecondition,
                ErrorCode::NotImplemented => ErrorKind::NotImplemented,
                ErrorCode::Internal => ErrorKind::Internal,
            },
            AgentError::Version { .. } => ErrorKind::FailedPrecondition,
            _ => ErrorKind::Unavailable,
        }
    }

    /// An answer that does not fit the call, its text shortened.
    fn unexpected(answer: impl std::fmt::Debug, to: &str) -> AgentError {
        AgentError::Unexpected(shorten(&format!("{answer:?} to {to}")))
    }
}

/// How long one `CONNECT` handshake may take before it is tried again on a
/// fresh socket: vhost-device-vsock (the QEMU backend's vsock) now and then
/// loses a connection request under load, and a guest that listens answers
/// within milliseconds.
const HANDSHAKE_ATTEMPT: Duration = Duration::from_secs(3);

/// How long a booted guest's vsock may leave a handshake unanswered before
/// the VM counts as stalled (the guest kernel answers a `CONNECT` as soon
/// as the agent listens; before that it refuses at once).
const BOOT_HANDSHAKE: Duration = Duration::from_secs(10);

/// Opens a connection to guest vsock `port` through the hybrid socket
/// `hybrid` (`CONNECT <port>\n`, answered `OK <host port>\n`), trying the
/// handshake again until `timeout` has passed if an attempt gets no answer.
pub fn connect_vsock(
    hybrid: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, AgentError> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = HANDSHAKE_ATTEMPT.min(timeout);
        match handshake(hybrid, port, attempt) {
            Ok(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                return Ok(s);
            }
            Err(Unanswered(e)) if Instant::now() + attempt <= deadline => {
                log_lost_handshake(port);
                drop(e);
            }
            Err(Unanswered(e)) | Err(Refused(e)) => return Err(e),
        }
    }
}

/// How a handshake failed: no answer at all (worth another try), or an
/// error or refusal.
enum HandshakeError {
    Unanswered(AgentError),
    Refused(AgentError),
}
use HandshakeError::{Refused, Unanswered};

fn handshake(hybrid: &Path, port: u32, wait: Duration) -> Result<UnixStream, HandshakeError> {
    let mut s = UnixStream::connect(hybrid).map_err(|source| {
        Refused(AgentError::Connect {
            path: hybrid.to_path_buf(),
            source,
        })
    })?;
    let io = |e: std::io::Error| Refused(AgentError::from(e));
    s.set_read_timeout(Some(wait)).map_err(io)?;
    s.set_write_timeout(Some(wait)).map_err(io)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io)?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    let failed = |line: &[u8]| AgentError::Handshake {
        port,
        answer: String::from_utf8_lossy(line).into_owned(),
    };
    loop {
        match s.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) if line.len() < 64 => line.push(b[0]),
            Err(e)
                if line.is_empty()
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
            {
                return Err(Unanswered(AgentError::NoAnswer { port }));
            }
            Ok(_) | Err(_) => return Err(Refused(failed(&line))),
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(Refused(failed(&line)));
    }
    Ok(s)
}

/// Notes a lost handshake in the debug log (never on stderr, which may be
/// a container's), at most once a second per process.
fn log_lost_handshake(port: u32) {
    static LAST: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
        *last = Some(Instant::now());
        log::debug!("no answer to a vsock CONNECT to port {port}, trying again");
    }
}

/// A control connection to the agent.
#[derive(Debug)]
pub struct AgentClient {
    stream: UnixStream,
    next_id: u64,
    timeout: Duration,
}

fn name(call: &Call) -> &'static str {
    match call {
        Call::Version => "version",
        Call::Ping => "ping",
        Call::SetTime { .. } => "set_time",
        Call::CreateSandbox(_) => "create_sandbox",
        Call::Shutdown => "shutdown",
        Call::CreateContainer { .. } => "create_container",
        Call::StartContainer { .. } => "start_container",
        Call::WaitContainer { .. } => "wait_container",
        Call::SignalContainer { .. } => "signal_container",
        Call::RemoveContainer { .. } => "remove_container",
        Call::ExecProcess { .. } => "exec_process",
        Call::WaitExec { .. } => "wait_exec",
        Call::SignalExec { .. } => "signal_exec",
        Call::ResizeTty { .. } => "resize_tty",
        Call::CloseStdin { .. } => "close_stdin",
        Call::ListProcesses { .. } => "list_processes",
        Call::Stats { .. } => "stats",
        Call::UpdateResources { .. } => "update_resources",
        Call::WaitOomEvent { .. } => "wait_oom_event",
        Call::GuestStats => "guest_stats",
        Call::PauseContainer { .. } => "pause_container",
        Call::ResumeContainer { .. } => "resume_container",
        Call::WriteFile { .. } => "write_file",
    }
}

/// Calls that wait for an event and so have no timeout.
fn waits(call: &Call) -> bool {
    matches!(
        call,
        Call::WaitContainer { .. } | Call::WaitExec { .. } | Call::WaitOomEvent { .. }
    )
}

impl AgentClient {
    /// Connects to the agent and checks its protocol version.
    pub fn connect(hybrid: &Path) -> Result<AgentClient, AgentError> {
        Self::connect_with(hybrid, CALL_TIMEOUT)
    }

    /// As [`AgentClient::connect`], giving the handshake `handshake` to be
    /// answered.
    fn connect_with(hybrid: &Path, handshake: Duration) -> Result<AgentClient, AgentError> {
        let stream = connect_vsock(hybrid, protocol::AGENT_CONTROL_PORT, handshake)?;
        let mut c = AgentClient {
            stream,
            next_id: 1,
            timeout: CALL_TIMEOUT,
        };
        match c.call(Call::Version)? {
            Reply::Version(v) if v.protocol == protocol::PROTOCOL_VERSION => Ok(c),
            Reply::Version(v) => Err(AgentError::Version {
                agent: v.protocol,
                host: protocol::PROTOCOL_VERSION,
            }),
            other => Err(AgentError::unexpected(other, "version")),
        }
    }

    /// Connects once the agent serves, trying until `limit` passes (the VM
    /// is booting).
    pub fn connect_when_ready(hybrid: &Path, limit: Duration) -> Result<AgentClient, AgentError> {
        let deadline = Instant::now() + limit;
        loop {
            match Self::connect_with(hybrid, BOOT_HANDSHAKE) {
                Ok(c) => return Ok(c),
                // A guest that boots refuses connections until the agent
                // listens; one that never answers will not start to.
                Err(e @ (AgentError::Version { .. } | AgentError::NoAnswer { .. })) => {
                    return Err(e);
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(_) => return Err(AgentError::NotReady(limit)),
            }
        }
    }

    /// Makes one call; an error reply becomes [`AgentError::Refused`].
    pub fn call(&mut self, call: Call) -> Result<Reply, AgentError> {
        let what = name(&call);
        let timeout = if waits(&call) {
            None
        } else {
            Some(self.timeout)
        };
        self.stream.set_read_timeout(timeout)?;
        let id = self.next_id;
        self.next_id += 1;
        protocol::write_message(&mut self.stream, &Request { id, call })?;
        let response: Response = match protocol::read_message(&mut self.stream) {
            Ok(r) => r,
            Err(protocol::CodecError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(AgentError::Timeout(what));
            }
            Err(e) => return Err(e.into()),
        };
        if response.id != id {
            return Err(AgentError::Unexpected(format!(
                "id {} to request {id} ({what})",
                response.id
            )));
        }
        response.result.map_err(|mut e| {
            e.message = shorten(&e.message);
            AgentError::Refused(e)
        })
    }

    /// A call whose answer carries no data.
    pub fn call_empty(&mut self, call: Call) -> Result<(), AgentError> {
        let what = name(&call);
        match self.call(call)? {
            Reply::Empty => Ok(()),
            other => Err(AgentError::unexpected(other, what)),
        }
    }

    /// Waits for a process (`exec_id` empty: the container's own) to exit.
    pub fn wait(&mut self, container_id: &str, exec_id: &str) -> Result<ExitInfo, AgentError> {
        let call = if exec_id.is_empty() {
            Call::WaitContainer {
                id: container_id.to_string(),
            }
        } else {
            Call::WaitExec {
                container_id: container_id.to_string(),
                exec_id: exec_id.to_string(),
            }
        };
        match self.call(call)? {
            Reply::Exit(x) => Ok(x),
            other => Err(AgentError::unexpected(other, "wait")),
        }
    }
}

/// Opens a stdio stream of a process (before the create or exec call).
pub fn attach(
    hybrid: &Path,
    container_id: &str,
    exec_id: &str,
    stream: StdioStream,
) -> Result<UnixStream, AgentError> {
    let mut s = connect_vsock(hybrid, protocol::STDIO_PORT, CALL_TIMEOUT)?;
    protocol::write_message(
        &mut s,
        &StdioAttach {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stream,
        },
    )?;
    let ack: Response = protocol::read_message(&mut s)?;
    match ack.result {
        Ok(Reply::Empty) => {}
        Ok(other) => return Err(AgentError::unexpected(other, "attach")),
        Err(mut e) => {
            e.message = shorten(&e.message);
            return Err(AgentError::Refused(e));
        }
    }
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_text_is_cut_to_one_short_line() {
        assert_eq!(shorten("bad\nthing"), "bad thing");
        let long = "é".repeat(1000);
        let short = shorten(&long);
        assert!(short.len() < GUEST_TEXT_MAX + 40, "{}", short.len());
        assert!(short.ends_with("(2000 bytes in all)"), "{short}");
        let e = AgentError::unexpected("x".repeat(1 << 20), "stats");
        assert!(e.to_string().len() < GUEST_TEXT_MAX + 80);
    }

    #[test]
    fn refusals_keep_their_class_and_the_rest_is_unavailable() {
        let refused = AgentError::Refused(ErrorReply {
            code: protocol::ErrorCode::NotFound,
            message: "container x: not found".into(),
        });
        assert_eq!(refused.kind(), ErrorKind::NotFound);
        assert_eq!(AgentError::Timeout("stats").kind(), ErrorKind::Unavailable);
        assert_eq!(
            AgentError::NoAnswer { port: 1024 }.kind(),
            ErrorKind::Unavailable
        );
    }
}
