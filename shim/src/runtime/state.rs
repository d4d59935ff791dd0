//! Containers' state on the host: one directory per container under the
//! runtime root (`--root`, default `/run/husk`), holding `state.json`, the
//! VM's sockets and logs, the rootfs image, and the exit status once the
//! container stopped.
//!
//! The container's `pid` is its monitor, a host process that lives exactly
//! as long as the container's process in the guest. Whether a container is
//! stopped is read from that process (guarded against PID reuse by its
//! start time), never trusted from the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default runtime root.
pub const DEFAULT_ROOT: &str = "/run/husk";

/// The environment variable naming the root when `--root` is not given.
pub const ROOT_ENV: &str = "HUSK_ROOT";

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
    #[error(
        "invalid container id {0:?}: use 1-128 characters of [A-Za-z0-9_.-], not starting with '.'"
    )]
    InvalidId(String),
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

/// The OCI status of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being created (what `createRuntime` and `createContainer` hooks see).
    Creating,
    /// Created, process not started.
    Created,
    /// Running.
    Running,
    /// Frozen.
    Paused,
    /// The process exited.
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
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
    /// The VM's processes as (PID, start time): they die with the monitor
    /// (`PR_SET_PDEATHSIG`), and `delete` waits until they have.
    #[serde(default)]
    pub vm_processes: Vec<(i32, u64)>,
    /// The TAPs joined in the container's network namespace, removed at
    /// `delete`.
    #[serde(default)]
    pub network: Option<crate::network::Attachment>,
    /// The host directories shared with the VM, unbound at `delete`.
    #[serde(default)]
    pub shares: Option<crate::shares::ShareRoot>,
}

/// The state directory of containers.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Checks a container ID.
pub fn check_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(StateError::InvalidId(id.to_string()))
    }
}

/// A short, stable file name for `key` (16 hex digits of its FNV-1a hash,
/// which unlike std's hasher does not change between builds), for
/// directories that hold Unix sockets and so must keep paths short.
pub fn short_name(key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// What `/proc/PID/stat` says of a process: whether it is a zombie, its
/// process group and its start time.
struct ProcStat {
    dead: bool,
    group: i32,
    start: u64,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the
    // last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // `rest` starts at field 3 (state); pgrp is field 5, starttime 22.
    let state = fields.first()?;
    Some(ProcStat {
        dead: *state == "Z" || *state == "X",
        group: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Start time of process `pid` (field 22 of `/proc/PID/stat`), if it lives.
pub fn start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).filter(|s| !s.dead).map(|s| s.start)
}

/// `processes` (PID and start time) with the living members of the process
/// groups they lead (virtiofsd's sandboxed server is a child in its
/// group), so that stopping a VM waits for those too. A group counts when
/// its leader is the recorded process, or is gone: a PID that is still some
/// group's ID is not given to a new process.
pub fn with_group_members(processes: &[(i32, u64)]) -> Vec<(i32, u64)> {
    let leaders: Vec<i32> = processes
        .iter()
        .filter(|&&(pid, start)| pid > 0 && proc_stat(pid).is_none_or(|s| s.start == start))
        .map(|&(pid, _)| pid)
        .collect();
    let mut all = processes.to_vec();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Some(s) = proc_stat(pid) else { continue };
        if !s.dead && leaders.contains(&s.group) && !all.iter().any(|&(p, _)| p == pid) {
            all.push((pid, s.start));
        }
    }
    all
}

/// Sends SIGKILL to those of `processes` that still run (start time
/// checked, so a reused PID is left alone) and waits, at most `limit`,
/// until none does; true if none does.
pub fn kill_and_wait(processes: &[(i32, u64)], limit: Duration) -> bool {
    let alive = |&(pid, start): &(i32, u64)| pid > 0 && start_time(pid) == Some(start);
    for p in processes.iter().filter(|p| alive(p)) {
        // SAFETY: kill(2) on a PID whose start time matches the recorded
        // one: our own process, not a reused PID.
        unsafe { libc::kill(p.0, libc::SIGKILL) };
    }
    let deadline = std::time::Instant::now() + limit;
    loop {
        if !processes.iter().any(alive) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
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
        let pid = if status == Status::Stopped {
            0
        } else {
            self.pid
        };
        serde_json::json!({
            "ociVersion": "1.0.2",
            "id": self.id,
            "status": status.to_string(),
            "pid": pid,
            "bundle": self.bundle,
            "annotations": self.annotations,
        })
    }
}

impl Store {
    /// The store at `root`, else `$HUSK_ROOT`, else [`DEFAULT_ROOT`]
    /// (created when needed). The variable serves callers that do not pass
    /// `--root` on every call (podman 4.3 omits its runtime flags from
    /// `delete`).
    pub fn new(root: Option<&Path>) -> Store {
        let root = match root {
            Some(r) => r.to_path_buf(),
            None => std::env::var_os(ROOT_ENV)
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from(DEFAULT_ROOT), PathBuf::from),
        };
        Store { root }
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
        match crate::shares::remove_state_dir(&self.dir(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io {
                id: id.to_string(),
                source,
            }),
        }
    }

    /// The exit status the monitor recorded, if any.
    pub fn exit_status(&self, id: &str) -> Option<i32> {
        std::fs::read_to_string(self.dir(id).join("exit"))
            .ok()?
            .trim()
            .parse()
            .ok()
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
    fn ids_are_checked() {
        for ok in ["a", "c1", "abc-DEF_1.2", &"f".repeat(128)] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "a/b", "..", "a b", &"f".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn this_process_has_a_start_time_and_dead_ones_do_not() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert_eq!(start_time(i32::MAX), None);
    }

    #[test]
    fn stopping_a_group_leader_stops_its_group() {
        use std::os::unix::process::CommandExt;
        // A leader whose child would outlive it, as virtiofsd's does.
        let mut leader = std::process::Command::new("sh")
            .args(["-c", "sleep 300 & echo $!; wait"])
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(leader.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let child: i32 = line.trim().parse().unwrap();
        let pid = leader.id() as i32;
        let all = with_group_members(&[(pid, start_time(pid).unwrap())]);
        assert!(all.iter().any(|&(p, _)| p == child), "{all:?}");
        // Only the group's processes: not this one.
        let me = std::process::id() as i32;
        assert!(all.iter().all(|&(p, _)| p != me), "{all:?}");
        assert!(kill_and_wait(&all, Duration::from_secs(5)));
        let _ = leader.wait();
        assert_eq!(start_time(child), None);
        // Nothing left: waiting again is immediate.
        assert!(kill_and_wait(&all, Duration::ZERO));
    }

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
            vm_processes: Vec::new(),
            network: None,
            shares: None,
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
