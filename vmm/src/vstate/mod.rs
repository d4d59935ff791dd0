//! Live KVM state: the KVM VM and its helpers ([`vm`]), guest memory, the
//! vCPUs, how a VM ends ([`exit`]), and the live microVM that holds them
//! all ([`microvm::Vm`]).

pub mod exit;
pub mod memory;
pub mod microvm;
pub mod vcpu;
pub mod vm;
