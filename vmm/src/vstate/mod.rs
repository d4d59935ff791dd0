//! Live KVM state: the VM (memory, interrupt controllers) and its vCPUs.

pub mod memory;
pub mod vcpu;
pub mod vm;
