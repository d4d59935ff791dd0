//! The host–agent protocol of husk, shared unchanged by the shim and the
//! guest agent.
//!
//! Wire format (docs/PROTOCOL.md): each message is a frame of a 4-byte
//! big-endian length followed by that many bytes of JSON; frames are at most
//! [`MAX_FRAME`] bytes. The host sends [`Request`]s, the agent answers each
//! with a [`Response`] carrying the same `id`. The first call on a
//! connection is [`Call::Version`]; the host refuses an agent whose
//! [`PROTOCOL_VERSION`] differs.

mod codec;
mod messages;
pub mod network;

pub use codec::{CodecError, MAX_FRAME, read_frame, read_message, write_message};
pub use messages::{
    Call, ContainerStats, ErrorCode, ErrorReply, ExitInfo, GuestStats, IoStat, OomEvent, Reply,
    Request, Response, SandboxConfig, StdioAttach, StdioStream, Storage, StorageSource,
    VersionInfo,
};

/// Protocol version checked on connect.
pub const PROTOCOL_VERSION: u32 = 6;

/// Where the agent mounts the sandbox's shared file system (virtio-fs).
pub const SHARED_FS_DIR: &str = "/run/husk/shared";

/// Longest path below [`SHARED_FS_DIR`].
pub const MAX_SHARE_PATH: usize = 1024;

/// Whether `path` names something below [`SHARED_FS_DIR`]: relative, at
/// most [`MAX_SHARE_PATH`] bytes, no empty, `.` or `..` component, no NUL.
pub fn is_share_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_SHARE_PATH
        && !path.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Largest file [`Call::WriteFile`] takes.
pub const MAX_FILE: usize = 128 * 1024;

/// vsock port the agent listens on for control calls.
pub const AGENT_CONTROL_PORT: u32 = 1024;

/// How the agent's line on the console starts once it serves
/// (`husk-agent ready in N ms (protocol V)`). A hint for the host about
/// when to start connecting, never proof of anything.
pub const AGENT_READY_LINE: &str = "husk-agent ready";

/// vsock port for container stdio streams (one connection per stream).
pub const STDIO_PORT: u32 = 1025;

// vsock ports below 1024 are reserved for privileged services.
const _: () = assert!(AGENT_CONTROL_PORT >= 1024);

#[cfg(test)]
mod tests {
    #[test]
    fn share_paths() {
        for good in ["c1/0", "c1/rootfs", "a.b/..c"] {
            assert!(super::is_share_path(good), "{good}");
        }
        for bad in ["", "/c1", "c1/../x", "c1//x", "./c1", "c1/", "..", "a\0b"] {
            assert!(!super::is_share_path(bad), "{bad:?}");
        }
        assert!(!super::is_share_path(
            &"a".repeat(super::MAX_SHARE_PATH + 1)
        ));
    }
}
