//! A process's stdio: three pipes, or a terminal whose master libcontainer
//! sends over a console socket, copied to and from the host's stream
//! connections. Output copiers count the bytes they delivered, so the exit
//! reply tells the host how much to expect.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use protocol::{ErrorCode, ErrorReply, StdioStream};

use super::err;

const CONSOLE_DIR: &str = "/run/husk/console";

/// How long the set-up may take to send a terminal's master.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

fn pipe() -> Result<(OwnedFd, OwnedFd), ErrorReply> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(err(
            ErrorCode::Internal,
            format!("pipe: {}", std::io::Error::last_os_error()),
        ));
    }
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The process's ends of its stdio pipes, for the container builder.
pub struct ProcessFds {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// A listening socket on which libcontainer sends a terminal's master.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    fn new(name: &str) -> Result<ConsoleSocket, ErrorReply> {
        let dir = Path::new(CONSOLE_DIR);
        let _ = std::fs::create_dir_all(dir);
        let path = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|e| {
            err(
                ErrorCode::Internal,
                format!("console socket {}: {e}", path.display()),
            )
        })?;
        Ok(ConsoleSocket { listener, path })
    }

    /// Path to hand to the container builder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives the terminal master (bounded wait).
    fn receive(&self) -> Result<File, ErrorReply> {
        let fd = self.listener.as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, CONSOLE_TIMEOUT.as_millis() as i32) };
        if ready != 1 {
            return Err(err(
                ErrorCode::Internal,
                "terminal: the container set-up sent no terminal",
            ));
        }
        let (conn, _) = self
            .listener
            .accept()
            .map_err(|e| err(ErrorCode::Internal, format!("terminal: accept: {e}")))?;
        let _ = conn.set_read_timeout(Some(CONSOLE_TIMEOUT));
        receive_fd(&conn)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One descriptor passed with SCM_RIGHTS on `conn`.
fn receive_fd(conn: &std::os::unix::net::UnixStream) -> Result<File, ErrorReply> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut name = [0u8; 64];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| err(ErrorCode::Internal, format!("terminal: recvmsg: {e}")))?;
    let mut received = Vec::new();
    for c in msg.cmsgs().map_err(|e| {
        err(
            ErrorCode::Internal,
            format!("terminal: control message: {e}"),
        )
    })? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            received.extend(fds);
        }
    }
    // SAFETY: descriptors received with SCM_RIGHTS are new and ours alone.
    let mut owned: Vec<File> = received
        .into_iter()
        .map(|fd| unsafe { File::from_raw_fd(fd) })
        .collect();
    if owned.len() != 1 {
        return Err(err(
            ErrorCode::Internal,
            format!("terminal: {} descriptors sent, not one", owned.len()),
        ));
    }
    Ok(owned.remove(0))
}

/// Where a process's input goes (a pipe, or a terminal master), how much
/// of the host's stream was delivered, and when to close it.
#[derive(Default)]
struct Input {
    to: Option<File>,
    delivered: u64,
    close_at: Option<u64>,
}

impl Input {
    /// Closes the input; a terminal gets EOF (^D) instead.
    fn close(&mut self) {
        if let Some(mut f) = self.to.take() {
            if is_terminal(&f) {
                let _ = f.write_all(&[0x04]);
            }
        }
    }
}

type InputSink = Arc<Mutex<Input>>;

fn sink(to: File) -> InputSink {
    Arc::new(Mutex::new(Input {
        to: Some(to),
        ..Input::default()
    }))
}

/// The agent's ends of a process's stdio, before the process exists.
pub struct Prepared {
    stdin: File,
    stdout: File,
    stderr: File,
    console: Option<ConsoleSocket>,
}

/// Pipes for a process, and a console socket when it asks for a terminal.
pub fn prepare(terminal: bool) -> Result<(ProcessFds, Prepared), ErrorReply> {
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (in_r, in_w) = pipe()?;
    let console = if terminal {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Some(ConsoleSocket::new(
            &NEXT.fetch_add(1, Ordering::Relaxed).to_string(),
        )?)
    } else {
        None
    };
    Ok((
        ProcessFds {
            stdin: in_r,
            stdout: out_w,
            stderr: err_w,
        },
        Prepared {
            stdin: File::from(in_w),
            stdout: File::from(out_r),
            stderr: File::from(err_r),
            console,
        },
    ))
}

/// The output copiers of a process; joined once it exited.
pub struct Output {
    copiers: Vec<(StdioStream, JoinHandle<u64>)>,
}

impl Output {
    /// Waits until the output reached EOF and was written to the host;
    /// returns the bytes delivered on (stdout, stderr).
    pub fn finish(self) -> (u64, u64) {
        let (mut out, mut errs) = (0, 0);
        for (stream, handle) in self.copiers {
            let n = handle.join().unwrap_or(0);
            match stream {
                StdioStream::Stderr => errs += n,
                _ => out += n,
            }
        }
        (out, errs)
    }
}

/// A process's input and terminal.
pub struct Control {
    input: InputSink,
    /// Whether a host stream feeds the input.
    streamed: bool,
    terminal: Option<Arc<File>>,
}

impl Prepared {
    /// The console socket's path, when the process has a terminal.
    pub fn console_path(&self) -> Option<&Path> {
        self.console.as_ref().map(ConsoleSocket::path)
    }

    /// What the set-up process wrote to stderr before it failed.
    pub fn failure_report(self) -> String {
        let detail = drain_nonblocking(self.stderr);
        let said: Vec<&str> = detail
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        said.join(" | ")
    }

    /// Connects the process to the host streams attached for (`id`,
    /// `exec_id`). With a terminal, its master carries input and output
    /// (on the stdout stream) and the pipes are closed.
    pub fn connect(self, id: &str, exec_id: &str) -> Result<(Control, Output), ErrorReply> {
        let out = crate::stdio::take(id, exec_id, StdioStream::Stdout);
        let errs = crate::stdio::take(id, exec_id, StdioStream::Stderr);
        let input = crate::stdio::take(id, exec_id, StdioStream::Stdin);
        let mut copiers = Vec::new();
        let (sink, terminal) = match &self.console {
            Some(console) => {
                let master = console.receive()?;
                let reader = master
                    .try_clone()
                    .map_err(|e| err(ErrorCode::Internal, format!("terminal: dup master: {e}")))?;
                let writer = master
                    .try_clone()
                    .map_err(|e| err(ErrorCode::Internal, format!("terminal: dup master: {e}")))?;
                copiers.extend(copier(reader, out).map(|h| (StdioStream::Stdout, h)));
                // No stderr on a terminal: close the host's stream at once.
                drop(errs);
                (sink(writer), Some(Arc::new(master)))
            }
            None => {
                copiers.extend(copier(self.stdout, out).map(|h| (StdioStream::Stdout, h)));
                copiers.extend(copier(self.stderr, errs).map(|h| (StdioStream::Stderr, h)));
                (sink(self.stdin), None)
            }
        };
        let streamed = input.is_some();
        if let Some(conn) = input {
            input_copier(conn, Arc::clone(&sink));
        }
        Ok((
            Control {
                input: sink,
                streamed,
                terminal,
            },
            Output { copiers },
        ))
    }
}

impl Control {
    /// Ends the process's input: closes its stdin pipe, or sends EOF (^D)
    /// to its terminal — at once, or once `after_bytes` of the host's
    /// stream have been delivered.
    pub fn close_stdin(&self, after_bytes: Option<u64>) {
        let mut input = self.input.lock().unwrap_or_else(|e| e.into_inner());
        match after_bytes {
            Some(n) if self.streamed && input.delivered < n => input.close_at = Some(n),
            _ => input.close(),
        }
    }

    /// Sets the terminal's window size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ErrorReply> {
        let Some(master) = &self.terminal else {
            return Err(err(
                ErrorCode::FailedPrecondition,
                "resize: the process has no terminal",
            ));
        };
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if r != 0 {
            return Err(err(
                ErrorCode::Internal,
                format!("resize: {}", std::io::Error::last_os_error()),
            ));
        }
        Ok(())
    }
}

/// Copies `from` to `to` until EOF (or drops the data when there is no
/// `to`); returns the bytes written to `to`.
fn copier(mut from: File, mut to: Option<File>) -> Option<JoinHandle<u64>> {
    std::thread::Builder::new()
        .name("output".into())
        .spawn(move || {
            let mut delivered = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buf) {
                    // EIO: a terminal whose last slave closed.
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Some(t) = to.as_mut() {
                            if t.write_all(&buf[..n]).is_ok() {
                                delivered += n as u64;
                            } else {
                                to = None;
                            }
                        }
                    }
                }
            }
            if let Some(t) = to.as_mut() {
                let _ = t.flush();
            }
            delivered
        })
        .ok()
}

/// Copies host input into the process until the host closes the stream or
/// the input is closed with [`Control::close_stdin`].
fn input_copier(mut conn: File, sink: InputSink) {
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut input = sink.lock().unwrap_or_else(|e| e.into_inner());
                let Some(to) = input.to.as_mut() else { return };
                if to.write_all(&buf[..n]).is_err() {
                    input.to = None;
                    return;
                }
                input.delivered += n as u64;
                if input.close_at.is_some_and(|at| input.delivered >= at) {
                    input.close();
                    return;
                }
            }
            // The host closed its stream: end of input, as CloseStdin.
            sink.lock().unwrap_or_else(|e| e.into_inner()).close();
        });
}

fn is_terminal(f: &File) -> bool {
    // SAFETY: isatty on a descriptor we own.
    unsafe { libc::isatty(f.as_raw_fd()) == 1 }
}

/// What is waiting in a pipe, without blocking (at most 4 KiB).
fn drain_nonblocking(mut f: File) -> String {
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut buf = vec![0u8; 4096];
    let n = f.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
