//! The host side of husk, shared by its two front ends (the `husk` CLI and
//! `containerd-shim-husk-v2`): reading a bundle and the configuration,
//! booting a sandbox VM with a hypervisor backend, provisioning containers
//! in it ([`sandbox`], the one path both front ends take), talking to its
//! agent, and cleaning up after it.
//!
//! Layers, each depending only on those below it:
//! - [`process`], [`ids`]: process supervision and IDs (nothing of husk's);
//! - [`agent`], [`network`], [`shares`], [`rootfs`], [`config`],
//!   [`bundle`], [`hooks`], [`oci`]: one concern each;
//! - [`hypervisor`]: the VMM backends (uses `process` and `network`);
//! - [`sandbox`]: provisioning and clean-up, on top of all of them.

pub mod agent;
pub mod bundle;
pub mod config;
pub mod hooks;
pub mod hypervisor;
pub mod ids;
pub mod network;
pub mod oci;
pub mod process;
pub mod rootfs;
pub mod sandbox;
pub mod shares;

/// Whose fault an error is, for the front ends' codes (containerd's ttrpc
/// codes, the CLI's message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// What was asked is wrong (the spec, an annotation, a path).
    InvalidArgument,
    /// Something named does not exist.
    NotFound,
    /// Right request, wrong state (a full pod, an ended VM).
    FailedPrecondition,
    /// The guest did not answer.
    Unavailable,
    /// What was asked is not done by husk (yet).
    NotImplemented,
    /// The host failed.
    Internal,
}
