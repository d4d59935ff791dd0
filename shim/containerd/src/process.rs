//! One process of a task (the container's own or an exec'd one): its
//! stdio, its status, and the thread that waits for its exit.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Condvar, Mutex};

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::types::task::Status;
use husk_host::agent::{AgentError, HostEnds, ProcessStdio, StdioPumps};
use protocol::ExitInfo;

use crate::io::{IoError, Outputs, open_outputs, open_stdin};

/// The stdio containerd named for a process.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    /// stdin FIFO (empty: none).
    pub stdin: String,
    /// stdout FIFO or URI.
    pub stdout: String,
    /// stderr FIFO or URI.
    pub stderr: String,
    /// Terminal mode: stdout carries the terminal, no stderr.
    pub terminal: bool,
}

#[derive(Debug)]
struct ProcState {
    status: Status,
    exit_status: u32,
    exited_at: Option<Timestamp>,
}

/// A process of a task.
#[derive(Debug)]
pub struct Process {
    /// Container ID.
    pub container_id: String,
    /// Exec ID (empty for the container's own process).
    pub exec_id: String,
    /// Its stdio.
    pub stdio: StdioPaths,
    /// The exec'd process's OCI `process` (empty for the container's).
    pub spec: serde_json::Value,
    /// The PID containerd sees: the VM's VMM process.
    pub pid: u32,
    state: Mutex<ProcState>,
    cv: Condvar,
    /// Write end of the stdin pump's stop pipe (dropped by CloseIO).
    stdin_stop: Mutex<Option<OwnedFd>>,
    /// The output copies, until the waiter takes them.
    pumps: Mutex<Option<Pumps>>,
}

/// A process's streams, attached before it is created: the guest's and
/// containerd's ends.
#[derive(Debug)]
pub struct Attached {
    guest: ProcessStdio,
    stdin: Option<std::fs::File>,
    outputs: Outputs,
}

/// The running copies of a process's stdio.
#[derive(Debug, Default)]
pub struct Pumps {
    stdio: StdioPumps,
    logger: Option<std::process::Child>,
}

/// Errors connecting a process's stdio.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// The host side.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The agent's streams.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// A copying thread.
    #[error("stdio: {0}")]
    Thread(std::io::Error),
}

impl Process {
    /// A new process in state CREATED.
    pub fn new(
        container_id: &str,
        exec_id: &str,
        stdio: StdioPaths,
        spec: serde_json::Value,
        pid: u32,
    ) -> Process {
        Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stdio,
            spec,
            pid,
            state: Mutex::new(ProcState {
                status: Status::CREATED,
                exit_status: 0,
                exited_at: None,
            }),
            cv: Condvar::new(),
            stdin_stop: Mutex::new(None),
            pumps: Mutex::new(None),
        }
    }

    /// Keeps the output copies for the waiter.
    pub fn set_pumps(&self, pumps: Pumps) {
        *self.pumps.lock().unwrap_or_else(|e| e.into_inner()) = Some(pumps);
    }

    /// Takes the output copies.
    pub fn take_pumps(&self) -> Option<Pumps> {
        self.pumps.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProcState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.lock().status
    }

    /// Sets the status of a process that has not exited.
    pub fn set_status(&self, status: Status) {
        let mut s = self.lock();
        if s.status != Status::STOPPED {
            s.status = status;
        }
    }

    /// Exit status and time (zero and none while it runs).
    pub fn exit(&self) -> (u32, Option<Timestamp>) {
        let s = self.lock();
        (s.exit_status, s.exited_at.clone())
    }

    /// Records the exit; true for the first caller only.
    pub fn finish(&self, status: u32) -> bool {
        let mut s = self.lock();
        if s.status == Status::STOPPED {
            return false;
        }
        s.status = Status::STOPPED;
        s.exit_status = status;
        s.exited_at = Some(now());
        self.cv.notify_all();
        true
    }

    /// Waits for the exit.
    pub fn wait(&self) -> (u32, Timestamp) {
        let mut s = self.lock();
        while s.status != Status::STOPPED {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        (s.exit_status, s.exited_at.clone().unwrap_or_else(now))
    }

    /// Opens the process's stdio and attaches the agent's streams for it.
    pub fn attach(&self, vsock: &Path, namespace: &str) -> Result<Attached, StdioError> {
        let outputs = open_outputs(
            &self.stdio.stdout,
            &self.stdio.stderr,
            &self.container_id,
            namespace,
        )?;
        let stdin = open_stdin(&self.stdio.stdin)?;
        let guest = ProcessStdio::attach(
            vsock,
            &self.container_id,
            &self.exec_id,
            stdin.is_some(),
            self.stdio.terminal,
        )?;
        Ok(Attached {
            guest,
            stdin,
            outputs,
        })
    }

    /// Starts copying stdio between containerd and the agent.
    pub fn start_pumps(&self, attached: Attached) -> Result<Pumps, StdioError> {
        let Attached {
            guest,
            stdin,
            outputs,
        } = attached;
        let stdin_stop = match stdin {
            Some(_) => {
                let (stop_r, stop_w) =
                    crate::io::cloexec_pipe().map_err(|e| StdioError::Thread(e.into()))?;
                *self.stdin_stop.lock().unwrap_or_else(|e| e.into_inner()) = Some(stop_w);
                Some(stop_r)
            }
            None => None,
        };
        let stdio = guest
            .start(HostEnds {
                stdin,
                stdin_stop,
                stdout: outputs.stdout.into_sink(),
                stderr: Some(outputs.stderr.into_sink()),
            })
            .map_err(StdioError::Thread)?;
        Ok(Pumps {
            stdio,
            logger: outputs.logger,
        })
    }

    /// Closes stdin once what containerd wrote has been passed on.
    pub fn close_stdin(&self) {
        self.stdin_stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

impl Pumps {
    /// Waits for the output the exit reply counts, then stops copying.
    pub fn finish(mut self, exit: &ExitInfo) {
        std::mem::take(&mut self.stdio).finish(exit);
        if let Some(mut l) = self.logger.take() {
            // Its pipes are closed now; it ends on its own.
            std::thread::spawn(move || {
                let _ = l.wait();
            });
        }
    }
}

/// The current time as a protobuf timestamp.
pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut t = Timestamp::new();
    t.seconds = d.as_secs() as i64;
    t.nanos = d.subsec_nanos() as i32;
    t
}
