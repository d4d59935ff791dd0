//! One process's standard streams between the host and the guest: the
//! three stdio connections to the agent (attached before the process is
//! created, so that none of its output is lost), the threads that copy
//! them, and the end of stdin, passed on once everything written has
//! arrived. Both front ends use it; they differ only in the host ends
//! (this process's stdio or a terminal for the CLI, containerd's FIFOs for
//! the shim).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use protocol::{Call, ExitInfo, StdioStream};

use super::{AgentClient, AgentError, attach};

/// How long the output copies may take, after the exit, to deliver what
/// the exit reply counts.
pub const OUTPUT_GRACE: Duration = Duration::from_secs(10);

/// The guest ends of one process's stdio, attached before it is created.
#[derive(Debug)]
pub struct ProcessStdio {
    vsock: PathBuf,
    container_id: String,
    exec_id: String,
    stdin: Option<UnixStream>,
    stdout: UnixStream,
    stderr: Option<UnixStream>,
}

/// The host ends a process's streams are copied to and from.
pub struct HostEnds {
    /// What the process reads (none: its stdin is closed at once).
    pub stdin: Option<File>,
    /// Readable once the host's stdin is to be closed early (containerd's
    /// CloseIO), whatever is still unread.
    pub stdin_stop: Option<OwnedFd>,
    /// Where its stdout (a terminal's output too) goes.
    pub stdout: Box<dyn Write + Send>,
    /// Where its stderr goes (none with a terminal).
    pub stderr: Option<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for HostEnds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostEnds")
            .field("stdin", &self.stdin)
            .finish_non_exhaustive()
    }
}

/// The running output copies of a process.
#[derive(Debug, Default)]
pub struct StdioPumps {
    out: Option<OutputPump>,
    err: Option<OutputPump>,
}

impl ProcessStdio {
    /// Attaches the streams of process `exec_id` (empty: the container's
    /// own) of `container_id` through the hybrid vsock socket `vsock`:
    /// stdin when `stdin`, stdout, and stderr unless it has a `terminal`.
    pub fn attach(
        vsock: &Path,
        container_id: &str,
        exec_id: &str,
        stdin: bool,
        terminal: bool,
    ) -> Result<ProcessStdio, AgentError> {
        let one = |stream| attach(vsock, container_id, exec_id, stream);
        Ok(ProcessStdio {
            vsock: vsock.to_path_buf(),
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stdin: if stdin {
                Some(one(StdioStream::Stdin)?)
            } else {
                None
            },
            stdout: one(StdioStream::Stdout)?,
            stderr: if terminal {
                None
            } else {
                Some(one(StdioStream::Stderr)?)
            },
        })
    }

    /// Starts copying between the guest's streams and `ends`.
    pub fn start(self, ends: HostEnds) -> std::io::Result<StdioPumps> {
        let out = Some(OutputPump::start(self.stdout, ends.stdout)?);
        let err = match (self.stderr, ends.stderr) {
            (Some(s), Some(sink)) => Some(OutputPump::start(s, sink)?),
            (Some(s), None) => Some(OutputPump::start(s, Box::new(std::io::sink()))?),
            (None, _) => None,
        };
        if let (Some(stream), Some(input)) = (self.stdin, ends.stdin) {
            let (vsock, id, exec_id) = (self.vsock, self.container_id, self.exec_id);
            let stop = ends.stdin_stop;
            std::thread::Builder::new()
                .name("stdin".into())
                .spawn(move || {
                    let sent = pump_stdin(input, stream, stop.as_ref());
                    // The guest closes the process's stdin once `sent`
                    // bytes have arrived.
                    if let Ok(mut c) = AgentClient::connect(&vsock) {
                        let _ = c.call_empty(Call::CloseStdin {
                            container_id: id,
                            exec_id,
                            after_bytes: Some(sent),
                        });
                    }
                })?;
        }
        Ok(StdioPumps { out, err })
    }
}

impl StdioPumps {
    /// Waits for the output the exit reply counts (at most
    /// [`OUTPUT_GRACE`]), then stops copying.
    pub fn finish(mut self, exit: &ExitInfo) {
        if let Some(p) = self.out.take() {
            p.finish(exit.stdout_bytes, OUTPUT_GRACE);
        }
        if let Some(p) = self.err.take() {
            p.finish(exit.stderr_bytes, OUTPUT_GRACE);
        }
    }
}

/// Copies `input` into the guest's stdin `stream` until `input` ends, the
/// stream breaks or `stop` becomes readable; returns the bytes passed on.
pub fn pump_stdin(mut input: File, mut stream: UnixStream, stop: Option<&OwnedFd>) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    loop {
        let mut fds = vec![PollFd::new(input.as_fd(), PollFlags::POLLIN)];
        if let Some(s) = stop {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
        }
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            break;
        }
        let input_ev = fds[0].revents().unwrap_or(PollFlags::empty());
        let stopped = fds
            .get(1)
            .is_some_and(|f| !f.revents().unwrap_or(PollFlags::empty()).is_empty());
        if input_ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            match input.read(&mut buf) {
                // The end of input (for a FIFO: a writer came and went).
                Ok(0) => break,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n as u64;
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        if stopped {
            break;
        }
    }
    sent
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_is_copied_to_its_end_or_until_stopped() {
        let (r, mut w) = std::io::pipe().unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        w.write_all(b"hello").unwrap();
        drop(w);
        let input = File::from(OwnedFd::from(r));
        assert_eq!(pump_stdin(input, a, None), 5);
        let mut got = String::new();
        b.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello");

        // A writer that never closes: the stop pipe ends the copy.
        let (r, _w) = std::io::pipe().unwrap();
        let (stop_r, stop_w) = std::io::pipe().unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            pump_stdin(
                File::from(OwnedFd::from(r)),
                a,
                Some(&OwnedFd::from(stop_r)),
            )
        });
        drop(stop_w);
        assert_eq!(t.join().unwrap(), 0);
    }

    #[test]
    fn output_stops_at_the_counted_bytes() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let sink = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let pump = OutputPump::start(a, Box::new(Shared(sink.clone()))).unwrap();
        b.write_all(b"0123456789").unwrap();
        // The stream stays open (as a guest's may): the count ends it.
        assert_eq!(pump.finish(10, Duration::from_secs(5)), 10);
        assert_eq!(&*sink.lock().unwrap(), b"0123456789");
    }
}
