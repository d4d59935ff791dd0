//! Reaping as PID 1, with the exit status of the processes the agent waits
//! for. Every thread blocks SIGCHLD; the reaper thread takes it with
//! sigwait. Code that waits for its own children (libcontainer waits for its
//! intermediate process) holds [`Reaper::hold`] so the reaper does not take
//! them first.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

/// Exit statuses of reaped processes, by pid.
#[derive(Debug, Default)]
pub struct Reaper {
    exits: Mutex<HashMap<i32, i32>>,
    changed: Condvar,
    hold: Mutex<()>,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

/// The process-wide reaper.
pub fn reaper() -> &'static Reaper {
    REAPER.get_or_init(Reaper::default)
}

fn sigchld_set() -> libc::sigset_t {
    // SAFETY: the set is initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        set
    }
}

/// Decodes a wait status: exit code, or 128 + signal.
pub fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

impl Reaper {
    /// Blocks SIGCHLD in this thread (call before starting other threads) and
    /// starts the reaper thread.
    pub fn start(&'static self) -> std::io::Result<()> {
        let set = sigchld_set();
        // SAFETY: `set` is a valid sigset.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || {
                loop {
                    let mut sig = 0;
                    // SAFETY: `set` and `sig` are valid for the call.
                    unsafe { libc::sigwait(&set, &mut sig) };
                    self.reap();
                }
            })?;
        Ok(())
    }

    fn reap(&self) {
        let _held = self.hold.lock().unwrap_or_else(|e| e.into_inner());
        let mut any = false;
        loop {
            let mut status = 0;
            // SAFETY: `status` is a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            let mut exits = self.exits.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded: entries are removed by `wait`; unknown orphans are
            // few, and dropped when the map grows large.
            if exits.len() > 4096 {
                exits.clear();
            }
            exits.insert(pid, exit_code(status));
            any = true;
        }
        if any {
            self.changed.notify_all();
        }
    }

    /// Keeps the reaper away while the caller waits for its own children.
    pub fn hold(&self) -> MutexGuard<'_, ()> {
        self.hold.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for `pid` to exit and returns its exit code.
    pub fn wait(&self, pid: i32) -> i32 {
        let mut exits = self.exits.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(code) = exits.remove(&pid) {
                return code;
            }
            exits = self.changed.wait(exits).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(9), 137);
        assert_eq!(exit_code(15), 143);
    }
}
