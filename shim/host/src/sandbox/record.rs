//! What a sandbox or container holds on the host, written down as it is
//! acquired (`record.json` in its state directory) so that one function
//! can give it all back: after a normal end, after a failed create, and
//! after the front end itself was killed (`husk delete --force`,
//! `containerd-shim-husk-v2 delete`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::network::Attachment;
use crate::process::{kill_and_wait, with_group_members};
use crate::shares::ShareRoot;

/// The record's file name in a state directory.
pub const RECORD_FILE: &str = "record.json";

/// How long the recorded processes get to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Everything on the host that must go when a container or its VM does.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupRecord {
    /// The VM's processes as (PID, start time): the VMM and its helpers.
    #[serde(default)]
    pub vm_processes: Vec<(i32, u64)>,
    /// Where the rootfs mounts (containerd's) were mounted.
    #[serde(default)]
    pub rootfs_mount: Option<PathBuf>,
    /// The TAPs joined in the network namespace.
    #[serde(default)]
    pub network: Option<Attachment>,
    /// The share root of a VM this container owns.
    #[serde(default)]
    pub shares: Option<ShareRoot>,
    /// What this container bound below its pod VM's share root: the root
    /// and the container's name below it.
    #[serde(default)]
    pub share_binds: Option<(ShareRoot, String)>,
}

/// Errors writing a record.
#[derive(Debug, thiserror::Error)]
#[error("cleanup record in {dir}: {source}")]
pub struct RecordError {
    /// The state directory.
    pub dir: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

impl CleanupRecord {
    /// The record in state directory `dir`; empty when there is none (or
    /// it cannot be read: then there is nothing known to give back).
    pub fn load(dir: &Path) -> CleanupRecord {
        std::fs::read(dir.join(RECORD_FILE))
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok())
            .unwrap_or_default()
    }

    /// Writes the record into `dir` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), RecordError> {
        let err = |source| RecordError {
            dir: dir.to_path_buf(),
            source,
        };
        let tmp = dir.join(format!("{RECORD_FILE}.tmp"));
        let text = serde_json::to_vec(self).map_err(|e| err(e.into()))?;
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, dir.join(RECORD_FILE)).map_err(err)
    }

    /// Gives back everything recorded: kills the VM's processes (those
    /// still with the recorded start time, and the members of the process
    /// groups they lead) and waits for them, removes the TAPs, unbinds the
    /// shares, unmounts the rootfs. Idempotent.
    pub fn release(&self) {
        kill_and_wait(&with_group_members(&self.vm_processes), KILL_WAIT);
        if let Some(net) = &self.network {
            net.release();
        }
        if let Some((root, name)) = &self.share_binds {
            root.unbind(name);
        }
        if let Some(root) = &self.shares {
            root.release();
        }
        if let Some(m) = &self.rootfs_mount {
            crate::shares::unmount(m);
        }
    }
}

/// Gives back what state directory `dir` records, then removes the
/// directory (never entering a mount: nothing bound from the host is
/// touched).
pub fn clean_up(dir: &Path) {
    CleanupRecord::load(dir).release();
    if let Err(e) = crate::shares::remove_state_dir(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            log::warn!("state directory {}: {e}", dir.display());
        }
    }
}

/// A record kept in a state directory as resources are acquired: each
/// change is saved before the caller goes on, so that a crash at any point
/// leaves a record of everything that exists. Unless [`Recorder::keep`] is
/// called, dropping it gives everything back (a failed create).
#[derive(Debug)]
pub struct Recorder {
    dir: PathBuf,
    record: CleanupRecord,
    armed: bool,
}

impl Recorder {
    /// A new, empty record for state directory `dir` (which exists).
    pub fn new(dir: &Path) -> Recorder {
        Recorder {
            dir: dir.to_path_buf(),
            record: CleanupRecord::default(),
            armed: true,
        }
    }

    /// Changes the record and saves it.
    pub fn update(&mut self, change: impl FnOnce(&mut CleanupRecord)) -> Result<(), RecordError> {
        change(&mut self.record);
        self.record.save(&self.dir)
    }

    /// What is recorded so far.
    pub fn record(&self) -> &CleanupRecord {
        &self.record
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The create succeeded: what is recorded stays (and stays on disk for
    /// the final clean-up).
    pub fn keep(mut self) -> CleanupRecord {
        self.armed = false;
        std::mem::take(&mut self.record)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.armed {
            self.record.release();
            let _ = std::fs::remove_file(self.dir.join(RECORD_FILE));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("husk-record-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_dropped_recorder_gives_back_what_it_recorded() {
        let dir = scratch("drop");
        let mut child = sleeper();
        let pid = child.id() as i32;
        let start = crate::process::start_time(pid).unwrap();
        {
            let mut r = Recorder::new(&dir);
            r.update(|rec| rec.vm_processes.push((pid, start))).unwrap();
            assert_eq!(CleanupRecord::load(&dir).vm_processes, vec![(pid, start)]);
        }
        let _ = child.wait();
        assert_eq!(crate::process::start_time(pid), None);
        assert!(!dir.join(RECORD_FILE).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_kept_record_stays_for_clean_up() {
        let dir = scratch("keep");
        let mut child = sleeper();
        let pid = child.id() as i32;
        let start = crate::process::start_time(pid).unwrap();
        let mut r = Recorder::new(&dir);
        r.update(|rec| rec.vm_processes.push((pid, start))).unwrap();
        let kept = r.keep();
        assert_eq!(kept.vm_processes.len(), 1);
        assert!(crate::process::start_time(pid).is_some());
        clean_up(&dir);
        let _ = child.wait();
        assert_eq!(crate::process::start_time(pid), None);
        assert!(!dir.exists());
        // Cleaning up again finds nothing and fails on nothing.
        clean_up(&dir);
    }

    #[test]
    fn a_missing_or_broken_record_is_empty() {
        let dir = scratch("broken");
        assert_eq!(CleanupRecord::load(&dir), CleanupRecord::default());
        std::fs::write(dir.join(RECORD_FILE), b"{not json").unwrap();
        assert_eq!(CleanupRecord::load(&dir), CleanupRecord::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
