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

/// The KVM memory slots for `mem`: one per region.
pub fn kvm_regions(mem: &GuestMemoryMmap) -> Vec<kvm_userspace_memory_region> {
    mem.iter()
        .enumerate()
        .map(|(slot, region)| kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        })
        .collect()
}

/// Registers every region as one KVM memory slot.
///
/// # Safety
///
/// The host mappings named by `regions` must stay mapped for as long as the
/// VM exists (the caller keeps the `GuestMemoryMmap` they came from alive).
pub unsafe fn register_with_kvm(
    vm: &VmFd,
    regions: &[kvm_userspace_memory_region],
) -> Result<(), MemoryError> {
    for region in regions {
        // SAFETY: the caller guarantees the mappings outlive the VM; slots do
        // not overlap because the regions of a GuestMemoryMmap do not.
        unsafe { vm.set_user_memory_region(*region) }.map_err(MemoryError::Register)?;
    }
    Ok(())
}

/// Registers the slots on a helper thread: on some hosts (PVM) one
/// `KVM_SET_USER_MEMORY_REGION` takes milliseconds, which can overlap with
/// loading the kernel and creating vCPUs. Join before the first `KVM_RUN`.
///
/// # Safety
///
/// As for [`register_with_kvm`].
pub unsafe fn register_with_kvm_in_background(
    vm: std::sync::Arc<VmFd>,
    regions: Vec<kvm_userspace_memory_region>,
) -> std::thread::JoinHandle<Result<(), MemoryError>> {
    std::thread::spawn(move || {
        // SAFETY: forwarded from the caller.
        unsafe { register_with_kvm(&vm, &regions) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let m = create_guest_memory(32 << 20).unwrap();
        assert_eq!(m.num_regions(), 1);
        assert_eq!(crate::boot::guest_ram_size(&m), 32 << 20);
        let r = kvm_regions(&m);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].slot, r[0].guest_phys_addr, r[0].memory_size),
            (0, 0, 32 << 20)
        );
    }
}
