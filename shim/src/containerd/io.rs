//! A process's stdio as containerd hands it over: paths of FIFOs (the
//! usual case), `file://` URIs, or `binary://` URIs naming a logging
//! program; connected to the agent's stdio streams.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Errors connecting stdio.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A FIFO or file could not be opened.
    #[error("{what} {path}: {source}")]
    Open {
        /// `stdin`, `stdout` or `stderr`.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A URI this shim does not understand.
    #[error("{what}: unsupported URI {uri:?} (expected a FIFO path, file:// or binary://)")]
    Uri {
        /// `stdin`, `stdout` or `stderr`.
        what: &'static str,
        /// The URI.
        uri: String,
    },
    /// The logging binary failed to start.
    #[error("logging binary {path}: {detail}")]
    Logger {
        /// The program.
        path: String,
        /// Why.
        detail: String,
    },
}

/// Where a process's output goes.
#[derive(Debug)]
pub enum OutputTarget {
    /// Nothing (no path).
    Discard,
    /// A FIFO or file.
    File(File),
}

impl OutputTarget {
    /// The writer for an output pump.
    pub fn into_sink(self) -> Box<dyn Write + Send> {
        match self {
            OutputTarget::Discard => Box::new(std::io::sink()),
            OutputTarget::File(f) => Box::new(f),
        }
    }
}

/// The stdout and stderr targets of one process, and the logging program
/// behind them if any (it ends when its pipes close).
#[derive(Debug)]
pub struct Outputs {
    /// stdout (a terminal's output too).
    pub stdout: OutputTarget,
    /// stderr.
    pub stderr: OutputTarget,
    /// A `binary://` logger.
    pub logger: Option<Child>,
}

/// Opens `stdout` and `stderr` as containerd named them.
pub fn open_outputs(
    stdout: &str,
    stderr: &str,
    container_id: &str,
    namespace: &str,
) -> Result<Outputs, IoError> {
    if let Some(rest) = stdout.strip_prefix("binary://") {
        return start_logger(rest, container_id, namespace);
    }
    Ok(Outputs {
        stdout: open_output("stdout", stdout)?,
        stderr: open_output("stderr", stderr)?,
        logger: None,
    })
}

fn open_output(what: &'static str, target: &str) -> Result<OutputTarget, IoError> {
    if target.is_empty() {
        return Ok(OutputTarget::Discard);
    }
    let err = |path: &Path, source| IoError::Open {
        what,
        path: path.to_path_buf(),
        source,
    };
    if let Some(path) = target.strip_prefix("file://") {
        let path = Path::new(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err(path, e))?;
        }
        let f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| err(path, e))?;
        return Ok(OutputTarget::File(f));
    }
    if target.contains("://") {
        return Err(IoError::Uri {
            what,
            uri: target.to_string(),
        });
    }
    // A FIFO whose reader containerd opened before the create call: open
    // without blocking (ENXIO if nobody reads), then write blocking.
    let path = Path::new(target);
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| err(path, e))?;
    set_blocking(&f).map_err(|e| err(path, e))?;
    Ok(OutputTarget::File(f))
}

fn set_blocking(f: &impl AsFd) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let fd = f.as_fd().as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Starts a `binary://PATH?k=v` logger: it reads stdout on descriptor 3
/// and stderr on 4, and closes descriptor 5 once it is ready.
fn start_logger(rest: &str, container_id: &str, namespace: &str) -> Result<Outputs, IoError> {
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let fail = |detail: String| IoError::Logger {
        path: path.to_string(),
        detail,
    };
    let (out_r, out_w) = nix::unistd::pipe().map_err(|e| fail(e.to_string()))?;
    let (err_r, err_w) = nix::unistd::pipe().map_err(|e| fail(e.to_string()))?;
    let (ready_r, ready_w) = nix::unistd::pipe().map_err(|e| fail(e.to_string()))?;
    let mut cmd = Command::new(path);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !v.is_empty() => cmd.arg(format!("-{k}")).arg(v),
            _ => cmd.arg(format!("-{}", pair.trim_end_matches('='))),
        };
    }
    cmd.env("CONTAINER_ID", container_id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec only dup2(2), which is
        // async-signal-safe, on descriptors this process owns.
        unsafe {
            cmd.pre_exec(move || {
                for (i, fd) in fds.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    let child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
    drop((out_r, err_r, ready_w));
    wait_ready(ready_r, Duration::from_secs(10)).map_err(fail)?;
    Ok(Outputs {
        stdout: OutputTarget::File(File::from(out_w)),
        stderr: OutputTarget::File(File::from(err_w)),
        logger: Some(child),
    })
}

fn wait_ready(ready: OwnedFd, limit: Duration) -> Result<(), String> {
    let mut fds = [PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
    let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) => Err(format!("not ready within {limit:?}")),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Opens a stdin FIFO for reading without waiting for its writer.
pub fn open_stdin(path: &str) -> Result<Option<File>, IoError> {
    if path.is_empty() {
        return Ok(None);
    }
    if path.contains("://") {
        return Err(IoError::Uri {
            what: "stdin",
            uri: path.to_string(),
        });
    }
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map(Some)
        .map_err(|source| IoError::Open {
            what: "stdin",
            path: PathBuf::from(path),
            source,
        })
}

/// Copies a stdin FIFO into the guest's stdin stream until the FIFO's
/// writer closes it or `stop` becomes readable (CloseIO); returns the bytes
/// copied.
pub fn pump_stdin(mut fifo: File, mut stream: UnixStream, stop: &OwnedFd) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    loop {
        let mut fds = [
            PollFd::new(fifo.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            break;
        }
        let fifo_ev = fds[0].revents().unwrap_or(PollFlags::empty());
        let stop_ev = fds[1].revents().unwrap_or(PollFlags::empty());
        if fifo_ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            match fifo.read(&mut buf) {
                // A writer came and went: end of input.
                Ok(0) => break,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n as u64;
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        if !stop_ev.is_empty() {
            break;
        }
    }
    sent
}
