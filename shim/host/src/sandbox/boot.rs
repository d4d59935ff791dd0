//! Booting a sandbox VM and reaching its agent (step 2 of the provisioning
//! path, [`super::provision`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::agent::{AgentClient, AgentError};
use crate::hypervisor::{Backend, HypervisorError, Vm, VmSpec};

/// How long a booting guest may take to answer.
pub const BOOT_LIMIT: Duration = Duration::from_secs(120);

/// The longest VM directory: sun_path holds 108 bytes and the longest
/// socket name is `vsock.sock` plus a port suffix.
pub const MAX_VM_DIR: usize = 80;

/// Errors booting a sandbox VM.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The VM could not start.
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    /// The agent never answered (with the guest console's last line).
    #[error("{source}; guest console: {console}")]
    Agent {
        /// Why.
        source: AgentError,
        /// The last line the guest printed.
        console: String,
    },
    /// The VM's directory.
    #[error("{path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The VM's directory path does not fit a Unix socket address.
    #[error("{0}: too long for the VM's Unix sockets")]
    DirTooLong(PathBuf),
    /// A file the configuration names is missing.
    #[error(
        "{what} {path}: not found (set `{what}` in the husk config file, /etc/husk/config.toml or $HUSK_CONFIG)"
    )]
    Missing {
        /// `kernel` or `initramfs`.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
}

/// Checks that a file the configuration names exists.
pub fn check_file(what: &'static str, path: &Path) -> Result<(), BootError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(BootError::Missing {
            what,
            path: path.to_path_buf(),
        })
    }
}

/// Creates the VM directory `dir`, checking its length.
pub fn make_vm_dir(dir: &Path) -> Result<(), BootError> {
    if dir.as_os_str().len() > MAX_VM_DIR {
        return Err(BootError::DirTooLong(dir.to_path_buf()));
    }
    std::fs::create_dir_all(dir).map_err(|source| BootError::Dir {
        path: dir.to_path_buf(),
        source,
    })
}

/// A booted VM with its agent answering.
#[derive(Debug)]
pub struct BootedVm {
    /// The VM.
    pub vm: Vm,
    /// A connection to its agent.
    pub client: AgentClient,
    /// When the VM's processes had been spawned (from the start of boot).
    pub spawned: Duration,
    /// A first VM's vsock never answered and this is a second one.
    pub rebooted: bool,
}

/// Boots `spec` with its sockets in `dir` and connects to its agent. A VM
/// whose vsock device never answers (seen now and then with
/// vhost-device-vsock under load) is replaced by a fresh one, once.
pub fn boot_vm(backend: Backend, dir: &Path, spec: &VmSpec) -> Result<BootedVm, BootError> {
    let t0 = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut vm = Vm::boot(backend, dir, spec)?;
        let spawned = t0.elapsed();
        if backend == Backend::Qemu {
            wait_ready_line(&mut vm, BOOT_LIMIT);
        }
        match AgentClient::connect_when_ready(vm.vsock_path(), BOOT_LIMIT) {
            Ok(client) => {
                return Ok(BootedVm {
                    vm,
                    client,
                    spawned,
                    rebooted: attempt > 1,
                });
            }
            Err(AgentError::NoAnswer { .. }) if attempt == 1 => {
                vm.kill();
                // The old sockets must not pass for the new VM's.
                let _ = std::fs::remove_dir_all(dir);
                make_vm_dir(dir)?;
            }
            Err(source) => {
                // What the guest said last tells why it never served.
                let console = std::fs::read_to_string(vm.console_path()).unwrap_or_default();
                let last = console
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("(nothing)");
                return Err(BootError::Agent {
                    source,
                    console: last.trim().chars().take(200).collect(),
                });
            }
        }
    }
}

/// Waits, at most `limit`, until the guest's console shows the agent's
/// ready line or the VMM exits. vhost-device-vsock (the QEMU backend's
/// vsock) can leave a `CONNECT` made before the guest's driver is up
/// unanswered, and every later one with it (seen with QEMU on KVM, where
/// the host connects while the guest still boots); so on QEMU the first
/// `CONNECT` waits for this line. The line is guest-written: it only says
/// when to start, the handshake and `Version` still decide.
fn wait_ready_line(vm: &mut Vm, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut seen = ReadyLine::default();
    while Instant::now() < deadline && !vm.wait_exit(Duration::ZERO) {
        if seen.scan(vm.console_path()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a growing console log from where it left off, looking for
/// [`protocol::AGENT_READY_LINE`].
#[derive(Debug, Default)]
struct ReadyLine {
    offset: u64,
    tail: Vec<u8>,
}

impl ReadyLine {
    /// True once the line has appeared in `console`.
    fn scan(&mut self, console: &Path) -> bool {
        use std::io::{Read, Seek, SeekFrom};
        let needle = protocol::AGENT_READY_LINE.as_bytes();
        let Ok(mut f) = std::fs::File::open(console) else {
            return false;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = match f.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            self.offset += n as u64;
            self.tail.extend_from_slice(&chunk[..n]);
            if self.tail.windows(needle.len()).any(|w| w == needle) {
                return true;
            }
            // Keep only what could begin the line in the next chunk.
            let keep = self.tail.len().min(needle.len() - 1);
            self.tail.drain(..self.tail.len() - keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("husk-ready-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("console.log")
    }

    #[test]
    fn the_ready_line_is_found_across_reads() {
        let console = console("across");
        let mut seen = ReadyLine::default();
        assert!(!seen.scan(&console), "no console yet");
        std::fs::write(&console, "booting\nhusk-age").unwrap();
        assert!(!seen.scan(&console));
        let mut text = std::fs::read(&console).unwrap();
        text.extend_from_slice(b"nt ready in 12 ms (protocol 6)\n");
        std::fs::write(&console, text).unwrap();
        assert!(seen.scan(&console));
        let _ = std::fs::remove_dir_all(console.parent().unwrap());
    }

    #[test]
    fn a_long_console_without_the_line_keeps_a_short_tail() {
        let console = console("long");
        std::fs::write(&console, vec![b'x'; 100_000]).unwrap();
        let mut seen = ReadyLine::default();
        assert!(!seen.scan(&console));
        assert_eq!(seen.offset, 100_000);
        assert!(seen.tail.len() < protocol::AGENT_READY_LINE.len());
        let _ = std::fs::remove_dir_all(console.parent().unwrap());
    }
}
