//! Guest RAM: anonymous private mappings from vm-memory, or shared
//! mappings of one memfd when a vhost-user back end must map it too;
//! registered with KVM. The VMM owns it; devices get shared references.

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

/// Allocates guest RAM of `mem_size` bytes in the regions of the layout;
/// `shared`: in one memfd (each region at its own offset), which vhost-user
/// back ends are given to map.
pub fn create_guest_memory(mem_size: u64, shared: bool) -> Result<GuestMemoryMmap, MemoryError> {
    let fail = |reason: String| MemoryError::Allocate {
        size_mib: mem_size >> 20,
        reason,
    };
    let ranges = layout::ram_regions(mem_size);
    if !shared {
        return GuestMemoryMmap::from_ranges(&ranges).map_err(|e| fail(e.to_string()));
    }
    let file = memfd(mem_size).map_err(|e| fail(format!("memfd: {e}")))?;
    let mut offset = 0u64;
    let mut with_files = Vec::with_capacity(ranges.len());
    for (addr, len) in ranges {
        let f = file.try_clone().map_err(|e| fail(format!("memfd: {e}")))?;
        with_files.push((addr, len, Some(vm_memory::FileOffset::new(f, offset))));
        offset += len as u64;
    }
    GuestMemoryMmap::from_ranges_with_files(&with_files).map_err(|e| fail(e.to_string()))
}

/// An anonymous memory file of `size` bytes.
fn memfd(size: u64) -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: a valid NUL-terminated name and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"husk-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
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
        let m = create_guest_memory(32 << 20, false).unwrap();
        assert_eq!(m.num_regions(), 1);
        assert_eq!(crate::boot::guest_ram_size(&m), 32 << 20);
        let r = kvm_regions(&m);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].slot, r[0].guest_phys_addr, r[0].memory_size),
            (0, 0, 32 << 20)
        );
    }

    #[test]
    fn shared_memory_is_one_memfd_with_each_region_at_its_offset() {
        use vm_memory::{Bytes, GuestAddress};
        // Above the 32-bit gap: two regions.
        let size = 4u64 << 30;
        let m = create_guest_memory(size, true).unwrap();
        assert_eq!(m.num_regions(), 2);
        let mut expected = 0;
        for r in m.iter() {
            let fo = r.file_offset().expect("file-backed");
            assert_eq!(fo.start(), expected);
            expected += r.len();
        }
        assert_eq!(expected, size);
        m.write_obj(0x5a5a_u16, GuestAddress(0x1000)).unwrap();
        assert_eq!(m.read_obj::<u16>(GuestAddress(0x1000)).unwrap(), 0x5a5a);
    }
}
