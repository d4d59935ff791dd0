//! The Intel MultiProcessor table (MP spec 1.4) in the EBDA, through which
//! the guest finds its processors, the IOAPIC and the ISA interrupt routing.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// More vCPUs than the table can describe.
    #[error("too many vCPUs for the MP table: {0}")]
    TooManyCpus(u8),
    /// The table does not fit below the end of the EBDA.
    #[error("MP table does not fit in the EBDA")]
    TooLarge,
    /// Writing guest memory failed.
    #[error("cannot write the MP table to guest memory")]
    GuestMemory,
}

const APIC_VERSION: u8 = 0x14;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const IRQ_COUNT: u8 = 16;
/// Highest vCPU count the table is built for (the IOAPIC takes the next ID).
pub const MAX_CPUS: u8 = 254;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// Builds the MP floating pointer followed by the configuration table, as
/// placed at `base`.
pub fn build(base: u64, num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus + 1;
    let table_addr = base + 16;

    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        // Processor entry (20 bytes).
        entries.push(0);
        entries.push(cpu);
        entries.push(APIC_VERSION);
        entries.push(0x1 | if cpu == 0 { 0x2 } else { 0 }); // enabled, BSP
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    // Bus entry: ISA, bus 0.
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    // IOAPIC entry.
    entries.extend_from_slice(&[2, ioapic_id, APIC_VERSION, 1]);
    entries.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    count += 1;
    // I/O interrupt entries: ISA IRQ n -> IOAPIC pin n (INT, conforming).
    for irq in 0..IRQ_COUNT {
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: ExtINT on LINT0, NMI on LINT1 of every local APIC.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = 44 + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"HUSK    "); // OEM ID
    table.extend_from_slice(b"000000000000"); // product ID
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(layout::APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.push(0); // extended checksum
    table.push(0); // reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table).wrapping_neg();

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4); // spec revision
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0u8; 5]); // features: configuration table present
    fp[10] = checksum(&fp).wrapping_neg();

    let mut out = fp;
    out.extend_from_slice(&table);
    if base + out.len() as u64 > layout::HIMEM_START {
        return Err(MptableError::TooLarge);
    }
    Ok(out)
}

/// Writes the MP table into the EBDA.
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(layout::EBDA_START, num_cpus)?;
    mem.write_slice(&bytes, GuestAddress(layout::EBDA_START))
        .map_err(|_| MptableError::GuestMemory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn processors(bytes: &[u8]) -> usize {
        let table = &bytes[16..];
        let count = u16::from_le_bytes([table[34], table[35]]);
        let mut off = 44;
        let mut cpus = 0;
        for _ in 0..count {
            if table[off] == 0 {
                cpus += 1;
                off += 20;
            } else {
                off += 8;
            }
        }
        assert_eq!(off, table.len());
        cpus
    }

    #[test]
    fn checksums_and_counts() {
        for n in [1u8, 2, 8, MAX_CPUS] {
            let bytes = build(layout::EBDA_START, n).unwrap();
            assert_eq!(&bytes[0..4], b"_MP_");
            assert_eq!(checksum(&bytes[..16]), 0);
            let table = &bytes[16..];
            assert_eq!(&table[0..4], b"PCMP");
            assert_eq!(checksum(table), 0);
            assert_eq!(processors(&bytes), n as usize);
            let ptr = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
            assert_eq!(u64::from(ptr), layout::EBDA_START + 16);
        }
    }

    #[test]
    fn bounds() {
        assert!(build(layout::EBDA_START, 0).is_err());
        assert!(build(layout::EBDA_START, 255).is_err());
    }

    #[test]
    fn writes_to_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        setup_mptable(&mem, 2).unwrap();
        let sig: u32 = mem.read_obj(GuestAddress(layout::EBDA_START)).unwrap();
        assert_eq!(&sig.to_le_bytes(), b"_MP_");
    }
}
