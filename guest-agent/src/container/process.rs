//! A process the agent started (a container's own, or an exec'd one): its
//! stdio control, and its exit recorded by a collector thread once the
//! process was reaped and its output flushed to the host.

use std::sync::{Arc, Condvar, Mutex};

use protocol::{ErrorReply, ExitInfo};

use super::io::{Control, Output};
use crate::reaper::reaper;

/// A started process.
pub struct Process {
    pub pid: i32,
    pub control: Control,
    exit: Mutex<Option<ExitInfo>>,
    exited: Condvar,
}

impl Process {
    /// Tracks `pid`; a thread records its exit once `output` is flushed.
    pub fn track(pid: i32, control: Control, output: Output) -> Result<Arc<Process>, ErrorReply> {
        let p = Arc::new(Process {
            pid,
            control,
            exit: Mutex::new(None),
            exited: Condvar::new(),
        });
        let collector = Arc::clone(&p);
        std::thread::Builder::new()
            .name("collector".into())
            .spawn(move || {
                let status = reaper().wait(pid);
                // The output pipes reach EOF when the last holder exits;
                // the exit is reported only after the host has it all.
                let (stdout_bytes, stderr_bytes) = output.finish();
                let mut e = collector.exit.lock().unwrap_or_else(|e| e.into_inner());
                *e = Some(ExitInfo {
                    status,
                    stdout_bytes,
                    stderr_bytes,
                });
                collector.exited.notify_all();
            })
            .map_err(|e| {
                super::err(
                    protocol::ErrorCode::Internal,
                    format!("collector thread: {e}"),
                )
            })?;
        Ok(p)
    }

    /// The exit, if recorded.
    pub fn exit(&self) -> Option<ExitInfo> {
        *self.exit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the exit.
    pub fn wait(&self) -> ExitInfo {
        let mut e = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(x) = *e {
                return x;
            }
            e = self.exited.wait(e).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Sends `signal` to the process (not after its exit was recorded).
    pub fn signal(&self, signal: i32) -> Result<(), ErrorReply> {
        if self.exit().is_some() {
            return Err(super::err(
                protocol::ErrorCode::FailedPrecondition,
                format!("process {} has exited", self.pid),
            ));
        }
        // SAFETY: kill(2) takes no pointers.
        if unsafe { libc::kill(self.pid, signal) } != 0 {
            return Err(super::err(
                protocol::ErrorCode::InvalidArgument,
                format!("signal {signal}: {}", std::io::Error::last_os_error()),
            ));
        }
        Ok(())
    }
}
