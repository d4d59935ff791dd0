//! The KVM VM: creation, in-kernel interrupt controllers and PIT, interrupt
//! lines (irqfds), detection of the host's KVM flavour, and [`Vm`], the
//! live VM that [`crate::builder`] builds: memory, devices (the registry),
//! vCPU threads and run state.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout;
use crate::boot::EntryPoint;
use crate::device_manager::MmioDeviceManager;
use crate::devices::legacy::i8042::I8042Device;
use crate::devices::legacy::serial::SerialDevice;
use crate::vstate::vcpu::{ExitReason, ExitSignal, VcpuError, VcpuEvent, VcpuHandle, VcpuResponse};

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

/// Live state of a running VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum VmRunState {
    /// vCPUs run guest code.
    Running,
    /// vCPUs are paused.
    Paused,
    /// The guest has stopped.
    Exited,
}

/// A built VM: the KVM objects, memory, devices and vCPU threads.
pub struct Vm {
    /// Host KVM flavour.
    pub host: HostKvm,
    /// Guest memory (kept alive for KVM's slots).
    pub memory: GuestMemoryMmap,
    /// COM1.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The keyboard controller.
    pub i8042: Arc<Mutex<I8042Device>>,
    /// Where the VM's end is reported.
    pub exit: Arc<ExitSignal>,
    /// Set when the guest printed a kernel panic.
    pub panicked: Arc<AtomicBool>,
    /// vCPU threads.
    pub vcpus: Vec<VcpuHandle>,
    /// Run state.
    pub state: VmRunState,
    /// Entry point used.
    pub entry: EntryPoint,
    /// The virtio devices (the device registry).
    pub devices: MmioDeviceManager,
    // Dropped last: the VM fd and /dev/kvm.
    pub(crate) vm_fd: Arc<VmFd>,
    pub(crate) _kvm: Kvm,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("host", &self.host)
            .field("state", &self.state)
            .field("entry", &self.entry)
            .field("vcpus", &self.vcpus.len())
            .field("devices", &self.devices.devices().len())
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Sends `event` to every vCPU, then checks each answered `expected`
    /// (or that it had already stopped); an error names the vCPU.
    fn all_vcpus(&self, event: VcpuEvent, expected: VcpuResponse) -> Result<(), VcpuError> {
        for v in &self.vcpus {
            v.send(event)?;
        }
        for v in &self.vcpus {
            match v.response()? {
                VcpuResponse::Exited => {}
                got if got == expected => {}
                got => {
                    return Err(VcpuError::Unexpected {
                        id: v.id(),
                        sent: event,
                        got,
                    });
                }
            }
        }
        Ok(())
    }

    /// Resumes every vCPU.
    pub fn resume(&mut self) -> Result<(), VcpuError> {
        self.all_vcpus(VcpuEvent::Resume, VcpuResponse::Resumed)?;
        self.state = VmRunState::Running;
        Ok(())
    }

    /// Pauses every vCPU.
    pub fn pause(&mut self) -> Result<(), VcpuError> {
        self.all_vcpus(VcpuEvent::Pause, VcpuResponse::Paused)?;
        self.state = VmRunState::Paused;
        Ok(())
    }

    /// Ends every vCPU thread.
    pub fn shut_down(&mut self) {
        for v in &mut self.vcpus {
            v.finish();
        }
        self.state = VmRunState::Exited;
    }

    /// The final exit reason, mapping a reset after a printed panic to a panic.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        let reason = self.exit.reason()?;
        if reason.is_clean() && self.panicked.load(std::sync::atomic::Ordering::SeqCst) {
            return Some(ExitReason::GuestPanic);
        }
        Some(reason)
    }

    /// The KVM VM.
    pub fn fd(&self) -> &VmFd {
        &self.vm_fd
    }

    /// The entry point address.
    pub fn entry_addr(&self) -> GuestAddress {
        self.entry.addr
    }
}
