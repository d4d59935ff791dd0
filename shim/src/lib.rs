//! Shared library of the `husk` OCI CLI and `containerd-shim-husk-v2`.

/// The one-line error both front ends print until the container runtime exists.
pub fn not_implemented(front_end: &str) -> String {
    format!(
        "{front_end}: not implemented: running containers needs the guest agent \
         (protocol version {})",
        protocol::PROTOCOL_VERSION
    )
}
