//! The KVM VM: creation, in-kernel interrupt controllers and PIT, interrupt
//! lines (irqfds), and detection of the host's KVM flavour.

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
