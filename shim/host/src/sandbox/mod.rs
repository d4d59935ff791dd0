//! Sandboxes: the VM a container (or a Kubernetes pod) runs in, and the
//! one path both front ends take to provision it ([`provision`]): booted
//! (on a launcher thread in the shim, so that it dies with the shim),
//! watched for an unexpected end, and everything it holds on the host
//! recorded ([`record`]) so that one clean-up gives it back, whoever asks.

pub mod boot;
pub mod provision;
pub mod record;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ErrorKind;
use crate::hypervisor::Vm;
use crate::shares::ShareRoot;

pub use boot::BootError;
pub use provision::{
    Booted, ContainerPlan, Placement, RootPlan, VmPlace, boot_sandbox, create_container, join_pod,
    plan, run_create_hooks,
};
pub use record::{CleanupRecord, RecordError, Recorder, clean_up};

/// Errors provisioning a sandbox or a container in it. Each names what
/// failed; [`SandboxError::kind`] says whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The bundle.
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
    /// The root file system image.
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::RootfsError),
    /// Sharing host directories.
    #[error(transparent)]
    Shares(#[from] crate::shares::ShareError),
    /// The network namespace.
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    /// Booting the VM.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The agent.
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    /// A `createRuntime` or `createContainer` hook.
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
    /// Writing the clean-up record.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A host file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// What is asked cannot be done.
    #[error("{0}")]
    Invalid(String),
    /// The pod's VM cannot take the container.
    #[error("pod VM: {0}")]
    Pod(String),
    /// The pod's VM has ended.
    #[error("pod VM: it has ended")]
    PodGone,
    /// The thread that spawns VMs is gone.
    #[error("the VM launcher thread is gone")]
    LauncherGone,
}

impl SandboxError {
    /// The step that failed, where the error itself does not say (`boot
    /// VM`, `hook`, `share`, `network`).
    pub fn step(&self) -> Option<&'static str> {
        match self {
            SandboxError::Boot(_) => Some("boot VM"),
            SandboxError::Hook(_) => Some("hook"),
            SandboxError::Shares(_) => Some("share"),
            SandboxError::Network(_) => Some("network"),
            _ => None,
        }
    }

    /// Whose fault this is.
    pub fn kind(&self) -> ErrorKind {
        use crate::bundle::BundleError;
        use crate::rootfs::RootfsError;
        match self {
            SandboxError::Config(_) | SandboxError::Invalid(_) | SandboxError::Network(_) => {
                ErrorKind::InvalidArgument
            }
            SandboxError::Bundle(BundleError::NotImplemented(_)) => ErrorKind::NotImplemented,
            SandboxError::Bundle(_) => ErrorKind::InvalidArgument,
            SandboxError::Rootfs(RootfsError::NotADirectory(_) | RootfsError::Walk { .. }) => {
                ErrorKind::InvalidArgument
            }
            SandboxError::Shares(crate::shares::ShareError::Name(_)) => ErrorKind::InvalidArgument,
            SandboxError::Pod(_) | SandboxError::PodGone => ErrorKind::FailedPrecondition,
            SandboxError::Agent(e) => e.kind(),
            SandboxError::Boot(BootError::Agent { .. }) => ErrorKind::Unavailable,
            SandboxError::Rootfs(_)
            | SandboxError::Shares(_)
            | SandboxError::Boot(_)
            | SandboxError::Hook(_)
            | SandboxError::Record(_)
            | SandboxError::Io { .. }
            | SandboxError::LauncherGone => ErrorKind::Internal,
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A long-lived thread that spawns the VMs: their processes get
/// `PR_SET_PDEATHSIG` tied to the spawning thread, and the ttrpc server's
/// threads come and go.
#[derive(Debug, Clone)]
pub struct Launcher {
    tx: Sender<Job>,
}

impl Launcher {
    /// Starts the thread.
    pub fn start() -> Launcher {
        let (tx, rx) = channel::<Job>();
        let _ = std::thread::Builder::new()
            .name("vm-launcher".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
                // Keep the VMs alive as long as the process.
                loop {
                    std::thread::park();
                }
            });
        Launcher { tx }
    }

    /// Runs `f` on the launcher thread and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = channel();
        self.tx
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .ok()?;
        rx.recv().ok()
    }
}

/// Spare drives a pod's VM boots with when its roots come as block images:
/// how many such containers may join it. QEMU's microvm wires virtio-mmio
/// devices to 8 interrupt lines; with the vsock device and the sandbox's
/// own root drive, 6 are left, less one per network interface and one for
/// virtio-fs. A pod that shares roots by virtio-fs boots without them.
pub const POD_SLOTS: usize = 6;

/// Size of each spare drive (sparse on the host): the largest root image
/// a joining container may have.
pub const SLOT_BYTES: u64 = 4 << 30;

/// A spare drive of a pod's VM.
#[derive(Debug)]
struct Slot {
    serial: String,
    path: PathBuf,
    used: bool,
}

/// A running VM and the containers in it (a CLI container's, a task's or
/// a pod's).
#[derive(Debug)]
pub struct Sandbox {
    /// The hybrid vsock socket of its agent.
    pub vsock: PathBuf,
    /// The VMM's PID (the PID containerd sees for its tasks).
    pub vmm_pid: u32,
    vm: Mutex<Option<Vm>>,
    dead: AtomicBool,
    slots: Mutex<Vec<Slot>>,
    /// The host directories it shares by virtio-fs, if it has the device.
    pub shares: Option<ShareRoot>,
}

impl Sandbox {
    /// Wraps a booted VM with its spare drives (serial, backing file) and
    /// share root.
    pub fn new(vm: Vm, slots: Vec<(String, PathBuf)>, shares: Option<ShareRoot>) -> Arc<Sandbox> {
        Arc::new(Sandbox {
            vsock: vm.vsock_path().to_path_buf(),
            vmm_pid: vm.pid().unwrap_or(0),
            vm: Mutex::new(Some(vm)),
            dead: AtomicBool::new(false),
            slots: Mutex::new(
                slots
                    .into_iter()
                    .map(|(serial, path)| Slot {
                        serial,
                        path,
                        used: false,
                    })
                    .collect(),
            ),
            shares,
        })
    }

    /// A sandbox with no VM behind it (unit tests of what is decided before
    /// a VM exists).
    #[cfg(test)]
    pub(crate) fn detached_for_tests() -> Sandbox {
        Sandbox {
            vsock: PathBuf::from("/nonexistent/vsock.sock"),
            vmm_pid: 0,
            vm: Mutex::new(None),
            dead: AtomicBool::new(false),
            slots: Mutex::new(Vec::new()),
            shares: None,
        }
    }

    /// Writes the root image `image` into a free spare drive; returns the
    /// drive's serial. A drive is used once (the guest may still cache what
    /// it read from it).
    pub fn fill_slot(&self, image: &Path) -> Result<String, String> {
        let len = std::fs::metadata(image)
            .map_err(|e| format!("{}: {e}", image.display()))?
            .len();
        if len > SLOT_BYTES {
            return Err(format!(
                "root image of {len} bytes is larger than a pod drive ({SLOT_BYTES})"
            ));
        }
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let total = slots.len();
        let slot = slots.iter_mut().find(|s| !s.used).ok_or_else(|| {
            if total == 0 {
                "this pod VM has no spare drives for block roots: it shares roots by virtio-fs \
                 (annotate its sandbox io.husk.rootfs=block to boot it with spare drives)"
                    .to_string()
            } else {
                format!("no spare drive left: this pod VM takes at most {total} containers with block roots")
            }
        })?;
        let mut src =
            std::fs::File::open(image).map_err(|e| format!("{}: {e}", image.display()))?;
        // Into the file the VMM holds open: no truncation, same inode.
        let mut dst = std::fs::OpenOptions::new()
            .write(true)
            .open(&slot.path)
            .map_err(|e| format!("{}: {e}", slot.path.display()))?;
        std::io::copy(&mut src, &mut dst).map_err(|e| format!("{}: {e}", slot.path.display()))?;
        slot.used = true;
        Ok(slot.serial.clone())
    }

    /// Whether the VM has ended.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Watches the VM: once its VMM exits, its helpers are stopped (so the
    /// agent connections end) and `on_death` runs.
    pub fn watch(self: &Arc<Self>, on_death: impl FnOnce() + Send + 'static) {
        let me = Arc::clone(self);
        let _ = std::thread::Builder::new()
            .name("vm-watch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(200));
                    let mut vm = me.vm.lock().unwrap_or_else(|e| e.into_inner());
                    let ended = match vm.as_mut() {
                        Some(v) => v.wait_exit(Duration::ZERO),
                        // Shut down on purpose.
                        None => return,
                    };
                    if ended {
                        vm.take();
                        drop(vm);
                        me.dead.store(true, Ordering::SeqCst);
                        log::warn!("the VM ended unexpectedly");
                        on_death();
                        return;
                    }
                }
            });
    }

    /// Stops the VM.
    pub fn shut_down(&self) {
        let vm = self.vm.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut vm) = vm {
            vm.kill();
        }
        self.dead.store(true, Ordering::SeqCst);
    }
}
