//! Places virtio devices on the MMIO bus: one 4 KiB window and one
//! interrupt line each, queue notifications as ioeventfds, and the
//! `virtio_mmio.device=` declaration on the kernel command line through
//! which Linux finds them.

use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use kvm_ioctls::{IoEventAddress, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout;
use crate::devices::Bus;
use crate::devices::virtio::mmio::{MMIO_WINDOW, MmioTransport, NOTIFY_OFFSET};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::vstate::vm;

/// First interrupt line handed to virtio devices (0-4 are the PIT, keyboard,
/// cascade and COM ports).
pub const FIRST_IRQ: u32 = 5;
/// Last IOAPIC pin.
pub const LAST_IRQ: u32 = 23;

/// Errors while adding a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    /// No interrupt lines are left.
    #[error("too many devices: no interrupt line left")]
    NoIrq,
    /// The interrupt line could not be wired.
    #[error(transparent)]
    Irq(#[from] vm::VmError),
    /// The transport could not be created.
    #[error(transparent)]
    Transport(#[from] crate::devices::virtio::mmio::MmioError),
    /// KVM refused an ioeventfd.
    #[error("cannot register a queue notification: {0}")]
    IoEvent(#[source] kvm_ioctls::Error),
    /// The bus refused the window.
    #[error(transparent)]
    Bus(#[from] crate::devices::BusError),
    /// The command line is full.
    #[error("cannot declare the device on the kernel command line: {0}")]
    Cmdline(String),
}

/// A device subscriber for the event loop.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Allocates MMIO windows and IRQs and keeps what the event loop must serve.
#[derive(Default)]
pub struct MmioDeviceManager {
    next_base: u64,
    next_irq: u32,
    /// Devices to add to the event loop.
    pub subscribers: Vec<Subscriber>,
    /// `(base, irq)` of each device, in order.
    pub slots: Vec<(u64, u32)>,
}

impl std::fmt::Debug for MmioDeviceManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioDeviceManager")
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

impl MmioDeviceManager {
    /// An empty manager.
    pub fn new() -> Self {
        MmioDeviceManager {
            next_base: layout::MMIO_DEVICES_START,
            next_irq: FIRST_IRQ,
            subscribers: Vec::new(),
            slots: Vec::new(),
        }
    }

    /// Adds `device` to the bus and the command line.
    pub fn add<D>(
        &mut self,
        vm_fd: &VmFd,
        mem: &GuestMemoryMmap,
        bus: &mut Bus,
        cmdline: &mut Cmdline,
        device: Arc<Mutex<D>>,
    ) -> Result<(), DeviceManagerError>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        if self.next_irq > LAST_IRQ {
            return Err(DeviceManagerError::NoIrq);
        }
        let (base, irq) = (self.next_base, self.next_irq);
        let interrupt = Arc::new(Interrupt::new(vm::irq_line(vm_fd, irq)?));
        let transport = MmioTransport::new(device.clone(), mem.clone(), interrupt)?;
        for (index, evt) in transport.queue_evts().iter().enumerate() {
            vm_fd
                .register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + NOTIFY_OFFSET),
                    index as u32,
                )
                .map_err(DeviceManagerError::IoEvent)?;
        }
        bus.insert(Arc::new(Mutex::new(transport)), base, MMIO_WINDOW)?;
        cmdline
            .add_virtio_mmio_device(MMIO_WINDOW, GuestAddress(base), irq, None)
            .map_err(|e| DeviceManagerError::Cmdline(e.to_string()))?;
        self.subscribers.push(device);
        self.slots.push((base, irq));
        self.next_base += MMIO_WINDOW;
        self.next_irq += 1;
        Ok(())
    }
}
