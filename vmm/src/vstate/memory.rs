//! Guest RAM: anonymous private mappings from vm-memory, registered with KVM.
//! The VMM owns it; devices get shared references.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout;

/// Errors while creating or registering guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap of guest RAM failed.
    #[error("cannot allocate {size_mib} MiB of guest memory: {reason}")]
    Allocate {
        /// Size asked for.
        size_mib: u64,
        /// Why.
        reason: String,
    },
    /// KVM refused a memory slot.
    #[error("cannot register guest memory with KVM: {0}")]
    Register(#[source] kvm_ioctls::Error),
}

/// Allocates guest RAM of `mem_size` bytes in the regions of the layout.
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    GuestMemoryMmap::from_ranges(&layout::ram_regions(mem_size)).map_err(|e| {
        MemoryError::Allocate {
            size_mib: mem_size >> 20,
            reason: e.to_string(),
        }
    })
}

/// Registers every region as one KVM memory slot.
pub fn register_with_kvm(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the host mapping behind `userspace_addr` is owned by `mem`,
        // which the VMM keeps alive for as long as the VM exists; slots do not
        // overlap because the regions of a GuestMemoryMmap do not.
        unsafe { vm.set_user_memory_region(region) }.map_err(MemoryError::Register)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let m = create_guest_memory(32 << 20).unwrap();
        assert_eq!(m.num_regions(), 1);
        assert_eq!(crate::boot::guest_ram_size(&m), 32 << 20);
    }
}
