//! The OCI container runtime on the host, shared by the `husk` CLI (and,
//! later, the containerd shim): configuration, bundles, the state store,
//! and the monitor process that owns a container's VM.

pub mod boot;
pub mod bundle;
pub mod config;
pub mod hooks;
pub mod log;
pub mod monitor;
pub mod state;
pub mod tty;
