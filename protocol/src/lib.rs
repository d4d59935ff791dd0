//! The host–agent protocol of husk, shared unchanged by the shim and the
//! guest agent. The message set and wire format are defined with the guest
//! agent; until then this crate holds only the constants both ends agree on.

/// Protocol version checked on connect.
pub const PROTOCOL_VERSION: u32 = 0;

/// vsock port the agent listens on for control calls.
pub const AGENT_CONTROL_PORT: u32 = 1024;

// vsock ports below 1024 are reserved for privileged services.
const _: () = assert!(AGENT_CONTROL_PORT >= 1024);
