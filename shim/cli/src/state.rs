//! Containers' state on the host: one directory per container under the
//! runtime root (`--root`, default `/run/husk`), holding `state.json`, the
//! clean-up record of what the container holds on the host
//! (`record.json`, see `husk_host::sandbox::record`), the rootfs image,
//! and the exit status once the container stopped; the VM's sockets and
//! logs are in a short-named directory beside it.
//!
//! The container's `pid` is its monitor, a host process that lives exactly
//! as long as the container's process in the guest. Whether a container is
//! stopped is read from that process (guarded against PID reuse by its
//! start time), never trusted from the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use husk_host::config::runtime_root;
use husk_host::ids::{InvalidId, check_id, short_name};
use husk_host::oci::{self, Status};
use husk_host::process::start_time;
use serde::{Deserialize, Serialize};

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No such container.
    #[error("container {0} does not exist")]
    NotFound(String),
    /// The ID is taken.
    #[error("container {0} already exists")]
    Exists(String),
    /// The ID is not acceptable.
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// Reading or writing the state failed.
    #[error("state of {id}: {source}")]
    Io {
        /// Container.
        id: String,
        /// Cause.
        source: std::io::Error,
    },
    /// `state.json` is unreadable.
    #[error("state of {id}: {message}")]
    Corrupt {
        /// Container.
        id: String,
        /// What is wrong.
        message: String,
    },
}

/// What `state.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerState {
    /// Container ID.
    pub id: String,
    /// Absolute bundle path.
    pub bundle: PathBuf,
    /// Status while the monitor lives.
    pub status: Status,
    /// The monitor's PID.
    pub pid: i32,
    /// The monitor's start time (clock ticks after boot, `/proc/PID/stat`).
    pub pid_start: u64,
    /// The spec's annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The VM's hybrid vsock socket.
    pub vsock: PathBuf,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// The spec's `hooks` (null when none), for the hooks that run after
    /// `create`.
    #[serde(default)]
    pub hooks: serde_json::Value,
}

/// The state directory of containers.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl ContainerState {
    /// The status, with a dead monitor meaning stopped.
    pub fn live_status(&self) -> Status {
        if self.monitor_alive() {
            self.status
        } else {
            Status::Stopped
        }
    }

    /// Whether the monitor still runs.
    pub fn monitor_alive(&self) -> bool {
        self.pid > 0 && start_time(self.pid) == Some(self.pid_start)
    }

    /// The state as `runc state` prints it.
    pub fn oci_json(&self) -> serde_json::Value {
        self.oci_json_as(self.live_status())
    }

    /// The state with `status`, as hooks receive it.
    pub fn oci_json_as(&self, status: Status) -> serde_json::Value {
        oci::state_json(&self.id, status, self.pid, &self.bundle, &self.annotations)
    }
}

impl Store {
    /// The store at `root`, else `$HUSK_ROOT`, else [`DEFAULT_ROOT`]
    /// (created when needed). The variable serves callers that do not pass
    /// `--root` on every call (podman 4.3 omits its runtime flags from
    /// `delete`).
    pub fn new(root: Option<&Path>) -> Store {
        Store {
            root: runtime_root(root),
        }
    }

    /// The runtime root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of container `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// The directory of the VM of container `id`: its sockets live there,
    /// so it is short (`ROOT/.vm/HASH`), whatever the length of the ID
    /// (podman's and containerd's are 64 characters).
    pub fn vm_dir(&self, id: &str) -> PathBuf {
        self.root.join(".vm").join(short_name(id))
    }

    /// Claims `id`: creates its directory; fails if it exists.
    pub fn claim(&self, id: &str) -> Result<PathBuf, StateError> {
        check_id(id)?;
        let io = |source| StateError::Io {
            id: id.to_string(),
            source,
        };
        std::fs::create_dir_all(&self.root).map_err(io)?;
        let dir = self.dir(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StateError::Exists(id.to_string()))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Writes `state.json` atomically.
    pub fn save(&self, state: &ContainerState) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            id: state.id.clone(),
            source,
        };
        let dir = self.dir(&state.id);
        let tmp = dir.join(format!("state.json.{}", std::process::id()));
        let text = serde_json::to_vec_pretty(state).map_err(|e| io(e.into()))?;
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, dir.join("state.json")).map_err(io)
    }

    /// Reads the state of `id`.
    pub fn load(&self, id: &str) -> Result<ContainerState, StateError> {
        check_id(id)?;
        let path = self.dir(id).join("state.json");
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_string()));
            }
            Err(source) => {
                return Err(StateError::Io {
                    id: id.to_string(),
                    source,
                });
            }
        };
        serde_json::from_slice(&text).map_err(|e| StateError::Corrupt {
            id: id.to_string(),
            message: e.to_string(),
        })
    }

    /// Changes the recorded status of `id`.
    pub fn set_status(&self, id: &str, status: Status) -> Result<ContainerState, StateError> {
        let mut s = self.load(id)?;
        s.status = status;
        self.save(&s)?;
        Ok(s)
    }

    /// Every container's ID, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("state.json").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        ids
    }

    /// Removes the directories of `id` (state and VM).
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        check_id(id)?;
        let _ = std::fs::remove_dir_all(self.vm_dir(id));
        // Nothing bound from the host may be entered by the removal.
        match husk_host::shares::remove_state_dir(&self.dir(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io {
                id: id.to_string(),
                source,
            }),
        }
    }

    /// Records the exit status (by the monitor).
    pub fn record_exit(&self, id: &str, status: i32) {
        let _ = std::fs::write(self.dir(id).join("exit"), format!("{status}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_round_trip_and_stopped_without_monitor() {
        let root = std::env::temp_dir().join(format!("husk-store-{}", std::process::id()));
        let store = Store::new(Some(&root));
        store.claim("c1").unwrap();
        assert!(matches!(store.claim("c1"), Err(StateError::Exists(_))));
        let long = "f".repeat(64);
        let vm = store.vm_dir(&long);
        assert_eq!(vm.parent().unwrap(), root.join(".vm"));
        assert_eq!(vm.file_name().unwrap().len(), 16);
        assert_eq!(vm, store.vm_dir(&long));
        assert_ne!(vm, store.vm_dir("c1"));
        let me = std::process::id() as i32;
        let mut s = ContainerState {
            id: "c1".into(),
            bundle: "/b".into(),
            status: Status::Created,
            pid: me,
            pid_start: start_time(me).unwrap(),
            annotations: HashMap::new(),
            vsock: "/v".into(),
            created: 0,
            hooks: serde_json::Value::Null,
        };
        store.save(&s).unwrap();
        assert_eq!(store.load("c1").unwrap(), s);
        assert_eq!(store.load("c1").unwrap().live_status(), Status::Created);
        assert_eq!(
            store.set_status("c1", Status::Running).unwrap().status,
            Status::Running
        );
        assert_eq!(store.ids(), ["c1"]);
        s.pid_start += 1;
        assert_eq!(s.live_status(), Status::Stopped);
        assert_eq!(s.oci_json()["pid"], 0);
        assert!(matches!(store.load("nope"), Err(StateError::NotFound(_))));
        store.remove("c1").unwrap();
        assert!(store.ids().is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
