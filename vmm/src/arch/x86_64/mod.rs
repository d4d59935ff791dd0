//! x86_64: guest memory layout, boot-time register state, CPUID, MP table.

pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
