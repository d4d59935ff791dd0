//! The calls and their answers.

use serde::{Deserialize, Serialize};

/// A call from the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Chosen by the host; echoed in the response.
    pub id: u64,
    /// What to do.
    pub call: Call,
}

/// The calls the agent serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Syncs file systems and powers the guest off.
    Shutdown,
    /// Creates a container from an OCI runtime-spec `config.json` on a root
    /// file system from a block device; its process does not run yet. Attach
    /// its stdio streams (on [`crate::STDIO_PORT`]) before this call.
    CreateContainer {
        /// Container ID.
        id: String,
        /// The OCI runtime spec (`config.json`); `root.path` is replaced.
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
    /// Sends a signal to the container's process.
    SignalContainer {
        /// Container ID.
        id: String,
        /// Signal number.
        signal: i32,
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
        /// Command and arguments.
        args: Vec<String>,
        /// Environment (`NAME=value`).
        #[serde(default)]
        env: Vec<String>,
        /// Working directory.
        #[serde(default)]
        cwd: Option<String>,
    },
    /// Waits for an exec'd process to exit (no host-side timeout).
    WaitExec {
        /// Container ID.
        container_id: String,
        /// The process.
        exec_id: String,
    },
}

/// A file system for the guest to mount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// Serial (drive ID) of the virtio-blk device holding it.
    pub block_serial: String,
    /// File system type (`ext4`, `erofs`).
    pub fstype: String,
    /// Mount read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// Which stream a stdio connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdioStream {
    /// Host to process.
    Stdin,
    /// Process to host.
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
    /// Answer to [`Call::WaitContainer`].
    Exit {
        /// Exit code, or 128 + signal number.
        status: i32,
    },
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
