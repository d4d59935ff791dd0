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
