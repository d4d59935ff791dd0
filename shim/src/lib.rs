//! The host side of husk, shared by `containerd-shim-husk-v2` and the `husk`
//! CLI: booting a sandbox VM with a hypervisor backend and talking to its
//! agent, and delivering a root file system to it.

pub mod agent;
pub mod cli;
pub mod containerd;
pub mod hypervisor;
pub mod network;
pub mod rootfs;
pub mod runtime;
pub mod shares;
