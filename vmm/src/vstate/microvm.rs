//! The live microVM that [`crate::builder`] builds: the KVM VM, guest
//! memory, the device registry, the legacy devices, the vCPU threads and the
//! run state.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::boot::EntryPoint;
use crate::device_manager::MmioDeviceManager;
use crate::devices::legacy::i8042::I8042Device;
use crate::devices::legacy::serial::SerialDevice;
use crate::vstate::exit::{ExitReason, ExitSignal};
use crate::vstate::vcpu::{VcpuError, VcpuEvent, VcpuHandle, VcpuResponse};
use crate::vstate::vm::HostKvm;

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
