//! Boot-time vCPU state: general registers, segments and control registers
//! for the two entry modes, the boot GDT, page tables, FPU and MSRs.

use kvm_bindings::{Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::layout;

/// Errors while setting up boot-time vCPU state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing the GDT, IDT or page tables to guest memory failed.
    #[error("cannot write boot tables to guest memory at {0:#x}")]
    GuestMemory(u64),
    /// A KVM register ioctl failed.
    #[error("cannot set vCPU {what}: {source}")]
    Kvm {
        /// Which state.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Building the MSR list failed.
    #[error("cannot build MSR list")]
    Msrs,
    /// KVM set fewer MSRs than asked for.
    #[error("KVM set {set} of {wanted} boot MSRs")]
    MsrsPartial {
        /// Number set.
        set: usize,
        /// Number asked for.
        wanted: usize,
    },
}

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, `%ebx` = start info.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, identity paging, `%rsi` = zero page.
    Linux64,
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// A GDT entry from flags, base and limit (the classic encoding).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let bit = |shift: u64| ((entry >> shift) & 1) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granular = bit(55);
    kvm_segment {
        base,
        // The limit is in 4 KiB units when G is set.
        limit: if granular == 1 {
            (limit << 12) | 0xfff
        } else {
            limit
        },
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: granular,
        avl: bit(52),
        padding: 0,
        unusable: if bit(47) == 0 { 1 } else { 0 },
    }
}

/// The boot GDT: null, 64-bit code, 32-bit code, data, TSS.
fn boot_gdt(mode: EntryMode) -> [u64; 4] {
    let code = match mode {
        EntryMode::Linux64 => gdt_entry(0xa09b, 0, 0xfffff),
        EntryMode::Pvh => gdt_entry(0xc09b, 0, 0xfffff),
    };
    [
        gdt_entry(0, 0, 0),
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// Writes the identity page tables (4 GiB with 2 MiB pages) for long-mode entry.
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let w = |addr: u64, val: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(|_| RegsError::GuestMemory(addr))
    };
    w(layout::PML4_START, layout::PDPT_START | 0x3)?;
    for i in 0..4u64 {
        w(
            layout::PDPT_START + i * 8,
            (layout::PD_START + i * 0x1000) | 0x3,
        )?;
    }
    let mut entries = vec![0u8; 4 * 512 * 8];
    for (i, chunk) in entries.chunks_exact_mut(8).enumerate() {
        let val = ((i as u64) << 21) | 0x83;
        chunk.copy_from_slice(&val.to_le_bytes());
    }
    mem.write_slice(&entries, GuestAddress(layout::PD_START))
        .map_err(|_| RegsError::GuestMemory(layout::PD_START))
}

/// Segment and control registers for the entry mode; also writes the GDT,
/// IDT and (for long mode) page tables to guest memory.
pub fn boot_sregs(
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    let gdt = boot_gdt(mode);
    for (i, entry) in gdt.iter().enumerate() {
        let addr = layout::BOOT_GDT_START + (i as u64) * 8;
        mem.write_obj(*entry, GuestAddress(addr))
            .map_err(|_| RegsError::GuestMemory(addr))?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))
        .map_err(|_| RegsError::GuestMemory(layout::BOOT_IDT_START))?;

    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    let tss = segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match mode {
        EntryMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryMode::Linux64 => {
            write_page_tables(mem)?;
            sregs.cr3 = layout::PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
    }
    Ok(sregs)
}

/// General registers at entry.
pub fn boot_regs(mode: EntryMode, entry: GuestAddress) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry.raw_value(),
        ..Default::default()
    };
    match mode {
        EntryMode::Pvh => regs.rbx = layout::PVH_INFO_START,
        EntryMode::Linux64 => {
            regs.rsp = layout::BOOT_STACK_POINTER;
            regs.rbp = layout::BOOT_STACK_POINTER;
            regs.rsi = layout::ZERO_PAGE_START;
        }
    }
    regs
}

/// FPU state at reset (x87 control word 0x37f, MXCSR 0x1f80).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// MSRs written at boot, as a list of (index, value).
pub fn boot_msr_entries() -> Vec<(u32, u64)> {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 0x1;
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
    ]
}

/// Writes the boot MSRs to a vCPU.
pub fn set_boot_msrs(vcpu: &kvm_ioctls::VcpuFd) -> Result<(), RegsError> {
    let entries: Vec<kvm_msr_entry> = boot_msr_entries()
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs)?;
    let set = vcpu.set_msrs(&msrs).map_err(|source| RegsError::Kvm {
        what: "MSRs",
        source,
    })?;
    if set != entries.len() {
        return Err(RegsError::MsrsPartial {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

/// Sets all boot-time registers of one vCPU.
pub fn setup_vcpu_regs(
    vcpu: &kvm_ioctls::VcpuFd,
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    entry: GuestAddress,
) -> Result<(), RegsError> {
    let kvm = |what| move |source| RegsError::Kvm { what, source };
    set_boot_msrs(vcpu)?;
    vcpu.set_regs(&boot_regs(mode, entry))
        .map_err(kvm("registers"))?;
    let sregs = vcpu.get_sregs().map_err(kvm("segment registers"))?;
    vcpu.set_sregs(&boot_sregs(mem, mode, sregs)?)
        .map_err(kvm("segment registers"))?;
    vcpu.set_fpu(&boot_fpu()).map_err(kvm("FPU"))?;
    // The guest memory is the VM's: nothing else to check here.
    debug_assert!(mem.address_in_range(GuestAddress(layout::PD_START)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    #[test]
    fn gdt_encoding() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0, 0xfffff), 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn segments_decode() {
        let code = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(code.selector, 8);
        assert_eq!(
            (code.l, code.db, code.g, code.present, code.s),
            (1, 0, 1, 1, 1)
        );
        assert_eq!(code.type_, 0xb);
        assert_eq!(code.limit, 0xffff_ffff);
        let data = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((data.l, data.db, data.type_), (0, 1, 3));
    }

    #[test]
    fn long_mode_sregs_and_page_tables() {
        let m = mem();
        let s = boot_sregs(&m, EntryMode::Linux64, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr3, layout::PML4_START);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.efer & EFER_LMA, 0);
        assert_eq!(s.cs.l, 1);
        let pml4: u64 = m.read_obj(GuestAddress(layout::PML4_START)).unwrap();
        assert_eq!(pml4, layout::PDPT_START | 3);
        let pdpt3: u64 = m.read_obj(GuestAddress(layout::PDPT_START + 24)).unwrap();
        assert_eq!(pdpt3, (layout::PD_START + 0x3000) | 3);
        let last: u64 = m
            .read_obj(GuestAddress(layout::PD_START + 4 * 4096 - 8))
            .unwrap();
        assert_eq!(last, ((2047u64) << 21) | 0x83);
        let gdt1: u64 = m
            .read_obj(GuestAddress(layout::BOOT_GDT_START + 8))
            .unwrap();
        assert_eq!(gdt1, gdt_entry(0xa09b, 0, 0xfffff));
    }

    #[test]
    fn pvh_sregs() {
        let m = mem();
        let s = boot_sregs(&m, EntryMode::Pvh, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!(s.efer, 0);
        assert_eq!((s.cs.l, s.cs.db), (0, 1));
        let r = boot_regs(EntryMode::Pvh, GuestAddress(0x1234));
        assert_eq!(
            (r.rip, r.rbx, r.rflags),
            (0x1234, layout::PVH_INFO_START, 2)
        );
    }

    #[test]
    fn linux_regs() {
        let r = boot_regs(EntryMode::Linux64, GuestAddress(0x100200));
        assert_eq!(r.rsi, layout::ZERO_PAGE_START);
        assert_eq!(r.rsp, layout::BOOT_STACK_POINTER);
    }
}
