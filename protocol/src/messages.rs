//! The calls and their answers.

use serde::{Deserialize, Serialize};

/// A call from the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Chosen by the host; echoed in the response.
    pub id: u64,
    /// What to do.
    pub call: Call,
}

/// The calls the agent serves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Call {
    /// Protocol version and agent identity; the first call on a connection.
    Version,
    /// Liveness.
    Ping,
    /// Sets the guest's wall clock.
    SetTime {
        /// Seconds since the Unix epoch.
        secs: i64,
        /// Nanoseconds within the second.
        nanos: u32,
    },
    /// Guest-wide settings of the sandbox (pod); once, before containers.
    CreateSandbox(SandboxConfig),
    /// Syncs file systems and powers the guest off.
    Shutdown,
    /// Creates a container from an OCI runtime-spec `config.json` on a root
    /// file system from a block device; its process does not run yet. Attach
    /// its stdio streams (on [`crate::STDIO_PORT`]) before this call.
    CreateContainer {
        /// Container ID.
        id: String,
        /// The OCI runtime spec (`config.json`); `root.path` and
        /// `linux.cgroupsPath` are replaced by the agent's own.
        spec: serde_json::Value,
        /// Where the root file system comes from.
        rootfs: Storage,
    },
    /// Runs the container's process.
    StartContainer {
        /// Container ID.
        id: String,
    },
    /// Waits for the container's process to exit (no host-side timeout).
    WaitContainer {
        /// Container ID.
        id: String,
    },
    /// Sends a signal to the container's process (`all`: to every process
    /// of the container).
    SignalContainer {
        /// Container ID.
        id: String,
        /// Signal number.
        signal: i32,
        /// Signal every process in the container's cgroup.
        #[serde(default)]
        all: bool,
    },
    /// Removes a stopped (or never started) container.
    RemoveContainer {
        /// Container ID.
        id: String,
    },
    /// Runs another process in a running container. Attach its stdio
    /// streams (with `exec_id`) before this call.
    ExecProcess {
        /// Container ID.
        container_id: String,
        /// Name of this process, unique in the container.
        exec_id: String,
        /// The OCI `process` object (args, env, cwd, user, terminal, …).
        process: serde_json::Value,
    },
    /// Waits for an exec'd process to exit (no host-side timeout).
    WaitExec {
        /// Container ID.
        container_id: String,
        /// The process.
        exec_id: String,
    },
    /// Sends a signal to an exec'd process.
    SignalExec {
        /// Container ID.
        container_id: String,
        /// The process.
        exec_id: String,
        /// Signal number.
        signal: i32,
    },
    /// Sets the window size of a process's terminal.
    ResizeTty {
        /// Container ID.
        container_id: String,
        /// The process (empty for the container's own).
        #[serde(default)]
        exec_id: String,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Closes a process's stdin (end of input).
    CloseStdin {
        /// Container ID.
        container_id: String,
        /// The process (empty for the container's own).
        #[serde(default)]
        exec_id: String,
        /// Close only after this many bytes of the stdin stream have been
        /// delivered to the process (the host's count of what it wrote), so
        /// that data still in flight is not cut off; absent: close now.
        #[serde(default)]
        after_bytes: Option<u64>,
    },
    /// Freezes every process of a container (cgroup freezer).
    PauseContainer {
        /// Container ID.
        id: String,
    },
    /// Thaws a paused container.
    ResumeContainer {
        /// Container ID.
        id: String,
    },
    /// Writes a small file under the guest's `/run/husk/files/`, for the
    /// host to name as the source of a bind mount in a container's spec
    /// (e.g. the `/etc/hosts` a container engine prepared on the host).
    WriteFile {
        /// Relative path below `/run/husk/files/`: components of
        /// `[A-Za-z0-9_.-]`, no `..`.
        path: String,
        /// Contents, at most [`crate::MAX_FILE`] bytes.
        data: Vec<u8>,
        /// Permission bits.
        #[serde(default = "default_file_mode")]
        mode: u32,
    },
    /// The processes of a container (guest PIDs).
    ListProcesses {
        /// Container ID.
        id: String,
    },
    /// cgroup v2 statistics of a container.
    Stats {
        /// Container ID.
        id: String,
    },
    /// Changes a container's cgroup v2 resources.
    UpdateResources {
        /// Container ID.
        id: String,
        /// An OCI `linux.resources` object.
        resources: serde_json::Value,
    },
    /// Waits for the next OOM kill with a sequence number above `after`
    /// (no host-side timeout; start with 0).
    WaitOomEvent {
        /// Last sequence number seen.
        #[serde(default)]
        after: u64,
    },
    /// Memory of the guest and the agent.
    GuestStats,
}

fn default_file_mode() -> u32 {
    0o644
}

/// Guest-wide settings of a sandbox.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Host name of the guest (and of containers that share its UTS).
    #[serde(default)]
    pub hostname: String,
    /// Name servers written to the guest's `/etc/resolv.conf`.
    #[serde(default)]
    pub dns_servers: Vec<String>,
    /// Search domains.
    #[serde(default)]
    pub dns_searches: Vec<String>,
    /// resolv.conf options.
    #[serde(default)]
    pub dns_options: Vec<String>,
    /// Guest-wide sysctls (`net.ipv4.ip_forward` = `1`).
    #[serde(default)]
    pub sysctls: std::collections::BTreeMap<String, String>,
    /// The guest's interfaces and routes (empty: loopback only).
    #[serde(default)]
    pub network: crate::network::NetworkConfig,
    /// Tag of the VM's virtio-fs device, mounted at
    /// [`crate::SHARED_FS_DIR`]: host directories shared with the guest
    /// (bind mounts, volumes, root file systems) are below it.
    #[serde(default)]
    pub shared_fs: Option<String>,
}

/// A file system for the guest to mount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// Where it comes from.
    pub source: StorageSource,
    /// File system type (`ext4`, `erofs`; `virtiofs` for a shared
    /// directory).
    pub fstype: String,
    /// Give the container a writable layer: an overlay whose upper
    /// directory is on guest tmpfs over the read-only source. Without it a
    /// block source is read-only and a shared directory is written in
    /// place (on the host, as runc would).
    #[serde(default)]
    pub overlay: bool,
    /// A block source without `overlay` is mounted read-write and is the
    /// root in place (a snapshotter's writable device).
    #[serde(default)]
    pub writable: bool,
}

/// The device or share holding a file system.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StorageSource {
    /// A virtio-blk drive, by its serial (drive ID).
    Block {
        /// The serial.
        serial: String,
    },
    /// A directory of the sandbox's shared file system
    /// ([`SandboxConfig::shared_fs`]).
    VirtioFs {
        /// Relative to [`crate::SHARED_FS_DIR`]; see [`crate::is_share_path`].
        path: String,
    },
}

/// Which stream a stdio connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdioStream {
    /// Host to process.
    Stdin,
    /// Process to host (a terminal's output too).
    Stdout,
    /// Process to host.
    Stderr,
}

/// First frame of a stdio connection; raw bytes follow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdioAttach {
    /// Container ID.
    pub container_id: String,
    /// For an exec'd process, its `exec_id`; empty for the container's own.
    #[serde(default)]
    pub exec_id: String,
    /// Stream.
    pub stream: StdioStream,
}

/// Identity of the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionInfo {
    /// [`crate::PROTOCOL_VERSION`] of the agent.
    pub protocol: u32,
    /// Agent build version.
    pub agent_version: String,
    /// Milliseconds from kernel start to the agent serving (CLOCK_BOOTTIME).
    pub boot_to_ready_ms: u64,
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// Answer to [`Call::Version`].
    Version(VersionInfo),
    /// Answer to calls without data.
    Empty,
    /// Answer to [`Call::WaitContainer`] and [`Call::WaitExec`].
    Exit(ExitInfo),
    /// Answer to [`Call::ListProcesses`].
    Processes {
        /// Guest PIDs.
        pids: Vec<i32>,
    },
    /// Answer to [`Call::Stats`].
    Stats(ContainerStats),
    /// Answer to [`Call::WaitOomEvent`].
    OomEvent(OomEvent),
    /// Answer to [`Call::GuestStats`].
    GuestStats(GuestStats),
}

/// How a process ended, and how much output it left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitInfo {
    /// Exit code, or 128 + signal number.
    pub status: i32,
    /// Bytes written to the stdout stream (a terminal's output included).
    pub stdout_bytes: u64,
    /// Bytes written to the stderr stream.
    pub stderr_bytes: u64,
}

/// cgroup v2 figures of a container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerStats {
    /// CPU time, microseconds (`cpu.stat usage_usec`).
    pub cpu_usage_usec: u64,
    /// User CPU time, microseconds.
    pub cpu_user_usec: u64,
    /// System CPU time, microseconds.
    pub cpu_system_usec: u64,
    /// Periods throttled by `cpu.max`.
    pub cpu_throttled_periods: u64,
    /// Time throttled, microseconds.
    pub cpu_throttled_usec: u64,
    /// `memory.current`, bytes.
    pub memory_usage: u64,
    /// `memory.max`, bytes (`None`: unlimited).
    pub memory_limit: Option<u64>,
    /// `memory.events oom_kill`.
    pub memory_oom_kills: u64,
    /// `memory.stat` (anon, file, …), bytes or counts.
    pub memory_stat: std::collections::BTreeMap<String, u64>,
    /// `pids.current`.
    pub pids_current: u64,
    /// `pids.max` (`None`: unlimited).
    pub pids_limit: Option<u64>,
    /// `io.stat`, one entry per device.
    pub io: Vec<IoStat>,
}

/// One device's line of `io.stat`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoStat {
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Read operations.
    pub read_ios: u64,
    /// Write operations.
    pub write_ios: u64,
}

/// A container's process was killed by the OOM killer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OomEvent {
    /// Increasing sequence number (pass it as `after` for the next).
    pub seq: u64,
    /// The container.
    pub container_id: String,
}

/// Memory of the guest and of the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestStats {
    /// Resident set of the agent, KiB.
    pub agent_rss_kib: u64,
    /// `MemTotal`, KiB.
    pub mem_total_kib: u64,
    /// `MemAvailable`, KiB.
    pub mem_available_kib: u64,
}

/// Error classes, for mapping to containerd's and runc's errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed.
    InvalidArgument,
    /// No such container or process.
    NotFound,
    /// Valid but not in the current state.
    FailedPrecondition,
    /// The agent does not implement this call yet.
    NotImplemented,
    /// Anything else.
    Internal,
}

/// A failed call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorReply {
    /// Class.
    pub code: ErrorCode,
    /// One line naming what was wrong.
    pub message: String,
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// The request's id (0 when the request could not be decoded).
    pub id: u64,
    /// Result.
    pub result: Result<Reply, ErrorReply>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape() {
        let r = Request {
            id: 1,
            call: Call::SetTime { secs: 10, nanos: 5 },
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"id":1,"call":{"op":"set_time","secs":10,"nanos":5}}"#
        );
        let unknown = r#"{"id":1,"call":{"op":"format_disk"}}"#;
        assert!(serde_json::from_str::<Request>(unknown).is_err());
        let extra = r#"{"id":1,"call":{"op":"ping"},"x":1}"#;
        assert!(serde_json::from_str::<Request>(extra).is_err());
    }

    #[test]
    fn responses() {
        let ok = Response {
            id: 2,
            result: Ok(Reply::Empty),
        };
        let back: Response = serde_json::from_str(&serde_json::to_string(&ok).unwrap()).unwrap();
        assert_eq!(back, ok);
        let err = Response {
            id: 3,
            result: Err(ErrorReply {
                code: ErrorCode::NotImplemented,
                message: "not implemented: exec".into(),
            }),
        };
        let back: Response = serde_json::from_str(&serde_json::to_string(&err).unwrap()).unwrap();
        assert_eq!(back, err);
    }
}
