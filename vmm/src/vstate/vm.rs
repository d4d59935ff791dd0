//! The KVM VM: creation, in-kernel interrupt controllers and PIT, the MSR
//! filter, interrupt lines (irqfds), and detection of the host's KVM
//! flavour.

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout;

/// Errors while creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// The KVM API version is not 12.
    #[error("unsupported KVM API version {0}")]
    ApiVersion(i32),
    /// A KVM capability husk-vmm needs is missing.
    #[error("KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    /// A VM ioctl failed.
    #[error("cannot {what}: {source}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// The flavour of KVM on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostKvm {
    /// Hardware-assisted (VMX or SVM).
    Hardware,
    /// PVM: paravirtualised KVM without VMX/SVM; unenlightened guest code
    /// runs in KVM's instruction emulator.
    Pvm,
}

impl HostKvm {
    /// Detects the flavour from sysfs.
    pub fn detect() -> HostKvm {
        if std::path::Path::new("/sys/module/kvm_pvm").exists() {
            HostKvm::Pvm
        } else {
            HostKvm::Hardware
        }
    }
}

/// Opens /dev/kvm and checks what husk-vmm relies on.
pub fn open_kvm() -> Result<Kvm, VmError> {
    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(VmError::ApiVersion(version));
    }
    use kvm_ioctls::Cap;
    for (cap, name) in [
        (Cap::Irqchip, "IRQCHIP"),
        (Cap::Ioeventfd, "IOEVENTFD"),
        (Cap::Irqfd, "IRQFD"),
        (Cap::UserMemory, "USER_MEMORY"),
        (Cap::ImmediateExit, "IMMEDIATE_EXIT"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// Creates the VM with its in-kernel IOAPIC/PIC/LAPICs and PIT.
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    let kvm_err = |what| move |source| VmError::Kvm { what, source };
    let vm = kvm.create_vm().map_err(kvm_err("create the VM"))?;
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(kvm_err("set the TSS address"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("create the interrupt controller"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("create the PIT"))?;
    Ok(vm)
}

/// The guest-visible performance-monitoring MSRs: AMD's legacy K7
/// counters (which a Linux guest on AMD probes whatever CPUID says), AMD's
/// core and global counters, Intel's architectural counters. `(first MSR,
/// count)`.
const PMU_MSRS: [(u32, u32); 7] = [
    (0xc001_0000, 8),  // K7 PERF_CTL0-3, PERF_CTR0-3
    (0xc001_0200, 12), // F15h core PERF_CTL/CTR 0-5
    (0xc000_0300, 4),  // PerfMonV2 global status/control
    (0x0000_00c1, 8),  // IA32_PMC0-7
    (0x0000_0186, 8),  // IA32_PERFEVTSEL0-7
    (0x0000_0309, 3),  // IA32_FIXED_CTR0-2
    (0x0000_038d, 4),  // IA32_FIXED_CTR_CTRL, PERF_GLOBAL_STATUS/CTRL/OVF_CTRL
];

/// Denies the guest every performance-monitoring MSR: husk's guests have no
/// virtual PMU (CPUID leaf 0xA is empty), so a read or write of one raises
/// #GP in the guest, as on hardware without them, and Linux settles for
/// software events. Without the filter KVM accepts and drops the writes and
/// logs each VM's probe in the host's kernel log. Hosts whose KVM cannot
/// filter MSRs keep KVM's behaviour.
pub fn hide_pmu_msrs(kvm: &Kvm, vm: &VmFd) -> Result<(), VmError> {
    use kvm_ioctls::{Cap, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags};
    if !kvm.check_extension(Cap::X86MsrFilter) {
        log::debug!("KVM cannot filter MSRs: the guest's PMU probe reaches KVM");
        return Ok(());
    }
    // A clear bit denies the MSR; one byte covers the longest range.
    let deny = [0u8; 2];
    let ranges: Vec<MsrFilterRange<'_>> = PMU_MSRS
        .iter()
        .map(|&(base, msr_count)| MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base,
            msr_count,
            bitmap: &deny,
        })
        .collect();
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges)
        .map_err(|source| VmError::Kvm {
            what: "set the MSR filter",
            source,
        })
}

/// Creates an eventfd wired to interrupt line `gsi`.
pub fn irq_line(vm: &VmFd, gsi: u32) -> Result<EventFd, VmError> {
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
    vm.register_irqfd(&evt, gsi)
        .map_err(|source| VmError::Kvm {
            what: "register an irqfd",
            source,
        })?;
    Ok(evt)
}
