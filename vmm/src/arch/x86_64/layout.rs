//! The guest physical memory map.
//!
//! ```text
//! 0x0000_0500  GDT used at boot            0x0000_9000  PML4, PDPT, 4 PDs (identity map, 4 GiB)
//! 0x0000_6000  PVH start info              0x0002_0000  kernel command line
//! 0x0000_6040  PVH module list             0x0009_fc00  EBDA: MP table
//! 0x0000_7000  zero page / PVH memory map  0x0010_0000  kernel (high memory)
//! 0x0000_8ff0  boot stack                  top of RAM   initrd, page aligned
//! 0xc000_0000 .. 0x1_0000_0000  MMIO gap: virtio-mmio devices, IOAPIC, LAPIC
//! 0x1_0000_0000 ..              RAM above 3 GiB, if any
//! ```

use vm_memory::GuestAddress;

/// Boot GDT (4 entries).
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (empty).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page tables: PML4, PDPT, then four page directories.
pub const PML4_START: u64 = 0x9000;
/// PDPT.
pub const PDPT_START: u64 = 0xa000;
/// First of four page directories.
pub const PD_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Start of the extended BIOS data area; RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of high memory, where kernels are loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First address handed to virtio-mmio devices.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// IOAPIC base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base.
pub const APIC_START: u64 = 0xfee0_0000;
/// TSS address KVM needs on Intel hosts (three pages inside the gap).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// The RAM regions of a guest of `mem_size` bytes: one region below the
/// MMIO gap and, for guests larger than the gap's start, one above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    if mem_size <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (
                GuestAddress(MMIO_GAP_END),
                (mem_size - MMIO_GAP_START) as usize,
            ),
        ]
    }
}

/// End (exclusive) of RAM below the MMIO gap.
pub fn low_mem_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// The e820 map handed to the guest: `(addr, size, type)`.
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (HIMEM_START, low_mem_end(mem_size) - HIMEM_START, E820_RAM),
    ];
    if mem_size > MMIO_GAP_START {
        map.push((MMIO_GAP_END, mem_size - MMIO_GAP_START, E820_RAM));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_region() {
        let r = ram_regions(128 << 20);
        assert_eq!(r, vec![(GuestAddress(0), 128 << 20)]);
        assert_eq!(
            e820_map(128 << 20),
            vec![
                (0, EBDA_START, 1),
                (HIMEM_START, (128 << 20) - HIMEM_START, 1)
            ]
        );
    }

    #[test]
    fn large_guest_skips_mmio_gap() {
        let size = 4u64 << 30;
        let r = ram_regions(size);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(r[1], (GuestAddress(MMIO_GAP_END), (1usize << 30)));
        let map = e820_map(size);
        assert_eq!(map[1].0 + map[1].1, MMIO_GAP_START);
        assert_eq!(map[2], (MMIO_GAP_END, 1 << 30, 1));
        let total: u64 = map.iter().map(|e| e.1).sum();
        assert_eq!(total, size - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn fixed_areas_do_not_overlap() {
        let areas = [
            (BOOT_GDT_START, 0x20),
            (BOOT_IDT_START, 0x8),
            (PVH_INFO_START, 0x40),
            (PVH_MODLIST_START, 0x20),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPT_START, 0x1000),
            (PD_START, 0x4000),
            (CMDLINE_START, 0x800),
        ];
        for (i, a) in areas.iter().enumerate() {
            assert!(a.0 + a.1 <= EBDA_START);
            for b in &areas[i + 1..] {
                // The zero page and the PVH memory map share a page: only one
                // boot protocol is used at a time.
                if a.0 == b.0 {
                    continue;
                }
                assert!(a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0, "{a:x?} {b:x?}");
            }
        }
        const {
            assert!(
                BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000
            )
        };
    }
}
