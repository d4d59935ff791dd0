//! The host side of husk, shared by `containerd-shim-husk-v2` and the `husk`
//! CLI: booting a sandbox VM with a hypervisor backend and talking to its
//! agent, and delivering a root file system to it.

pub mod agent;
pub mod cli;
pub mod hypervisor;
pub mod rootfs;
pub mod runtime;

/// The one-line error both front ends print until the container runtime exists.
pub fn not_implemented(front_end: &str) -> String {
    format!(
        "{front_end}: not implemented: the OCI lifecycle over the agent \
         (protocol version {})",
        protocol::PROTOCOL_VERSION
    )
}
