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
pub const PROTOCOL_VERSION: u32 = 5;

/// Largest file [`Call::WriteFile`] takes.
pub const MAX_FILE: usize = 128 * 1024;

/// vsock port the agent listens on for control calls.
pub const AGENT_CONTROL_PORT: u32 = 1024;

/// vsock port for container stdio streams (one connection per stream).
pub const STDIO_PORT: u32 = 1025;

// vsock ports below 1024 are reserved for privileged services.
const _: () = assert!(AGENT_CONTROL_PORT >= 1024);
