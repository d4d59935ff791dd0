//! CPUID as the guest sees it: what KVM supports on this host, with the
//! topology (APIC IDs, processor counts) of this VM and the hypervisor bit.

use kvm_bindings::{CpuId, kvm_cpuid_entry2};

/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: HTT (the logical processor count in EBX is valid).
const LEAF1_EDX_HTT: u32 = 1 << 28;

fn patch_entry(entry: &mut kvm_cpuid_entry2, vcpu_id: u8, vcpu_count: u8) {
    match entry.function {
        0x1 => {
            entry.ebx &= 0x0000_ffff;
            entry.ebx |= u32::from(vcpu_id) << 24;
            entry.ebx |= u32::from(vcpu_count) << 16;
            entry.ecx |= LEAF1_ECX_HYPERVISOR;
            if vcpu_count > 1 {
                entry.edx |= LEAF1_EDX_HTT;
            } else {
                entry.edx &= !LEAF1_EDX_HTT;
            }
        }
        0x4 => {
            // Deterministic cache parameters: cores per package - 1 in EAX[31:26],
            // threads sharing this cache - 1 in EAX[25:14] (one thread per core).
            entry.eax &= 0x3fff;
            entry.eax |= (u32::from(vcpu_count) - 1) << 26;
            let cache_level = (entry.eax >> 5) & 0x7;
            if cache_level >= 3 {
                entry.eax |= (u32::from(vcpu_count) - 1) << 14;
            }
        }
        0xa => {
            // No virtual PMU.
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        0xb | 0x1f => {
            // Extended topology: one thread per core, `vcpu_count` cores.
            entry.edx = u32::from(vcpu_id);
            let cores_shift = u32::BITS - (u32::from(vcpu_count) - 1).leading_zeros();
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = (1 << 8) | entry.index;
                }
                1 => {
                    entry.eax = cores_shift;
                    entry.ebx = u32::from(vcpu_count);
                    entry.ecx = (2 << 8) | entry.index;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index;
                }
            }
        }
        _ => {}
    }
}

/// Adjusts a CPUID table (from `KVM_GET_SUPPORTED_CPUID`) for one vCPU.
pub fn patch_cpuid(cpuid: &mut CpuId, vcpu_id: u8, vcpu_count: u8) {
    for entry in cpuid.as_mut_slice() {
        patch_entry(entry, vcpu_id, vcpu_count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xdead_beef,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_topology() {
        let mut e = entry(1, 0);
        patch_entry(&mut e, 3, 4);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xffff, 0xbeef);
        assert_ne!(e.ecx & LEAF1_ECX_HYPERVISOR, 0);
        let mut e = entry(1, 0);
        patch_entry(&mut e, 0, 1);
        assert_eq!(e.edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn leaf_b_topology() {
        let mut e = entry(0xb, 1);
        patch_entry(&mut e, 2, 3);
        assert_eq!((e.eax, e.ebx, e.edx), (2, 3, 2));
        assert_eq!(e.ecx >> 8, 2);
        let mut e = entry(0xb, 0);
        patch_entry(&mut e, 1, 1);
        assert_eq!((e.eax, e.ebx, e.edx), (0, 1, 1));
    }

    #[test]
    fn pmu_hidden() {
        let mut e = entry(0xa, 0);
        e.eax = 0x0703_0004;
        patch_entry(&mut e, 0, 1);
        assert_eq!((e.eax, e.ebx, e.ecx, e.edx), (0, 0, 0, 0));
    }

    #[test]
    fn patches_table() {
        let mut cpuid = CpuId::from_entries(&[entry(1, 0), entry(0xb, 0)]).unwrap();
        patch_cpuid(&mut cpuid, 1, 2);
        assert_eq!(cpuid.as_slice()[0].ebx >> 24, 1);
        assert_eq!(cpuid.as_slice()[1].edx, 1);
    }
}
