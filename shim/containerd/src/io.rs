//! A process's stdio as containerd hands it over: paths of FIFOs (the
//! usual case), `file://` URIs, or `binary://` URIs naming a logging
//! program; connected to the agent's stdio streams.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// How long an output FIFO may wait for its reader to open it.
const FIFO_READER_WAIT: Duration = Duration::from_secs(10);

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
    // A FIFO whose reader containerd (or ctr) opens, possibly still while
    // the call is on its way: open without blocking, trying again while
    // nobody reads (ENXIO) for a while, then write blocking.
    let path = Path::new(target);
    let deadline = std::time::Instant::now() + FIFO_READER_WAIT;
    let f = loop {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => break f,
            Err(e)
                if e.raw_os_error() == Some(libc::ENXIO)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(err(path, e)),
        }
    };
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
    let (out_r, out_w) = cloexec_pipe().map_err(|e| fail(e.to_string()))?;
    let (err_r, err_w) = cloexec_pipe().map_err(|e| fail(e.to_string()))?;
    let (ready_r, ready_w) = cloexec_pipe().map_err(|e| fail(e.to_string()))?;
    let mut cmd = Command::new(path);
    // Each query parameter becomes two arguments, key then value, as
    // containerd's own shims pass them.
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        cmd.arg(percent_decode(k)).arg(percent_decode(v));
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

/// A pipe whose ends no child inherits (`dup2` onto a child's descriptor
/// clears the flag for that one copy only).
pub fn cloexec_pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
}

/// Decodes `%XX` escapes (and `+` as a space) of a URI query part.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parts_are_decoded() {
        assert_eq!(percent_decode("a%2Fb+c%zz%4"), "a/b c%zz%4");
        assert_eq!(percent_decode("/tmp/log"), "/tmp/log");
    }
}
