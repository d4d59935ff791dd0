//! The host side of the host–agent protocol: connecting through the VMM's
//! hybrid vsock socket, calls with timeouts, stdio stream connections.
//!
//! Everything the agent sends is untrusted: frames are size-capped by the
//! codec, a response must carry the request's id, and output streams are
//! read only up to the byte counts of the exit reply.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protocol::{Call, ErrorReply, ExitInfo, Reply, Request, Response, StdioAttach, StdioStream};

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
        crate::runtime::log::debug(
            "no answer to a vsock CONNECT, trying again",
            serde_json::json!({ "port": port }),
        );
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
            other => Err(AgentError::Unexpected(format!("{other:?} to version"))),
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
        response.result.map_err(AgentError::Refused)
    }

    /// A call whose answer carries no data.
    pub fn call_empty(&mut self, call: Call) -> Result<(), AgentError> {
        let what = name(&call);
        match self.call(call)? {
            Reply::Empty => Ok(()),
            other => Err(AgentError::Unexpected(format!("{other:?} to {what}"))),
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
            other => Err(AgentError::Unexpected(format!("{other:?} to wait"))),
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
        Ok(other) => return Err(AgentError::Unexpected(format!("{other:?} to attach"))),
        Err(e) => return Err(AgentError::Refused(e)),
    }
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok(s)
}

#[derive(Debug, Default)]
struct Progress {
    bytes: u64,
    ended: bool,
}

/// Copies an output stream into a sink on its own thread, counting bytes,
/// so the host can stop at the exit reply's count even if the end of the
/// stream is never signalled.
#[derive(Debug)]
pub struct OutputPump {
    progress: Arc<(Mutex<Progress>, Condvar)>,
    stream: UnixStream,
    handle: Option<JoinHandle<()>>,
}

impl OutputPump {
    /// Starts copying `stream` into `sink`.
    pub fn start(
        stream: UnixStream,
        mut sink: Box<dyn Write + Send>,
    ) -> std::io::Result<OutputPump> {
        let progress = Arc::new((Mutex::new(Progress::default()), Condvar::new()));
        let p = Arc::clone(&progress);
        let mut reader = stream.try_clone()?;
        let handle = std::thread::Builder::new()
            .name("output".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match reader.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if sink.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    let (lock, cv) = &*p;
                    lock.lock().unwrap_or_else(|e| e.into_inner()).bytes += n as u64;
                    cv.notify_all();
                }
                let _ = sink.flush();
                let (lock, cv) = &*p;
                lock.lock().unwrap_or_else(|e| e.into_inner()).ended = true;
                cv.notify_all();
            })?;
        Ok(OutputPump {
            progress,
            stream,
            handle: Some(handle),
        })
    }

    /// Waits until `expected` bytes arrived (or the stream ended, or `grace`
    /// passed), then stops; returns the bytes copied.
    pub fn finish(mut self, expected: u64, grace: Duration) -> u64 {
        let deadline = Instant::now() + grace;
        let (lock, cv) = &*self.progress;
        let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
        while p.bytes < expected && !p.ended {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            p = cv
                .wait_timeout(p, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        let bytes = p.bytes;
        drop(p);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        bytes
    }
}
