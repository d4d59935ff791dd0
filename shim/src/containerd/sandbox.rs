//! The VM of a task (or of a Kubernetes pod): booted on the shim's
//! launcher thread so that it dies with the shim, watched for an
//! unexpected end, and recorded on disk so that `delete` can clean up
//! after a shim that was killed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::hypervisor::Vm;
use crate::runtime::state::{kill_and_wait, with_group_members};
use crate::shares::ShareRoot;

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

/// A running VM and the containers in it.
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

/// What a task left on the host, for `containerd-shim-husk-v2 delete`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The VM's processes as (PID, start time).
    #[serde(default)]
    pub vm_processes: Vec<(i32, u64)>,
    /// Where the rootfs mounts were mounted.
    #[serde(default)]
    pub rootfs_mount: Option<PathBuf>,
    /// The TAPs joined in the pod's (or task's) network namespace.
    #[serde(default)]
    pub network: Option<crate::network::Attachment>,
    /// The share root of the VM this task owns.
    #[serde(default)]
    pub shares: Option<ShareRoot>,
    /// What this task bound below its pod VM's share root: the root and
    /// the task's name below it.
    #[serde(default)]
    pub share_binds: Option<(ShareRoot, String)>,
}

/// The record's file in a task directory.
pub fn record_path(dir: &Path) -> PathBuf {
    dir.join("record.json")
}

/// Writes the record.
pub fn save_record(dir: &Path, record: &Record) -> std::io::Result<()> {
    let tmp = dir.join("record.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(record)?)?;
    std::fs::rename(tmp, record_path(dir))
}

/// Removes what a task left: kills its VM's processes (those still with
/// the recorded start time), removes its TAPs, unmounts its rootfs, removes
/// its directory.
pub fn clean_up(dir: &Path) {
    let record: Record = std::fs::read(record_path(dir))
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .unwrap_or_default();
    kill_recorded(&record.vm_processes);
    if let Some(net) = &record.network {
        net.release();
    }
    if let Some((root, name)) = &record.share_binds {
        root.unbind(name);
    }
    if let Some(root) = &record.shares {
        root.release();
    }
    if let Some(m) = &record.rootfs_mount {
        unmount(m);
    }
    // Nothing bound from the host may be entered by the removal.
    if let Err(e) = crate::shares::remove_state_dir(dir) {
        log::warn!("task directory {}: {e}", dir.display());
    }
}

/// Kills the recorded processes, and the members of the process groups
/// they lead, and waits (a little) until they are gone.
pub fn kill_recorded(processes: &[(i32, u64)]) {
    kill_and_wait(&with_group_members(processes), Duration::from_secs(2));
}

pub use crate::shares::unmount;
