//! Places virtio devices on the MMIO bus: one 4 KiB window and one
//! interrupt line each, queue notifications as ioeventfds, and the
//! `virtio_mmio.device=` declaration on the kernel command line through
//! which Linux finds them. The manager is also the VM's device registry:
//! every device stays reachable by its configuration name, typed, with its
//! transport, for as long as the VM lives (the event loop holds clones of
//! the same devices as subscribers).

use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use kvm_ioctls::{IoEventAddress, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout;
use crate::devices::Bus;
use crate::devices::bus::lock;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::mmio::{MMIO_WINDOW, MmioTransport, NOTIFY_OFFSET};
use crate::devices::virtio::net::Net;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
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

/// A virtio device of the VM, typed, so that what is specific to its kind
/// (a drive's rate limiter, a device's saved state) can be reached after
/// the start.
#[derive(Clone)]
pub enum DeviceHandle {
    /// virtio-blk.
    Block(Arc<Mutex<Block>>),
    /// virtio-net.
    Net(Arc<Mutex<Net>>),
    /// virtio-vsock.
    Vsock(Arc<Mutex<Vsock>>),
    /// virtio-rng.
    Rng(Arc<Mutex<Rng>>),
    /// virtio-fs (vhost-user front end).
    Fs(Arc<Mutex<Fs>>),
}

impl std::fmt::Debug for DeviceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

impl DeviceHandle {
    /// The kind of device, as the API names it.
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceHandle::Block(_) => "block",
            DeviceHandle::Net(_) => "net",
            DeviceHandle::Vsock(_) => "vsock",
            DeviceHandle::Rng(_) => "rng",
            DeviceHandle::Fs(_) => "fs",
        }
    }

    /// The device as the event loop serves it.
    pub fn subscriber(&self) -> Subscriber {
        match self {
            DeviceHandle::Block(d) => d.clone(),
            DeviceHandle::Net(d) => d.clone(),
            DeviceHandle::Vsock(d) => d.clone(),
            DeviceHandle::Rng(d) => d.clone(),
            DeviceHandle::Fs(d) => d.clone(),
        }
    }

    /// The device as its transport sees it.
    fn virtio(&self) -> Arc<Mutex<dyn VirtioDevice>> {
        match self {
            DeviceHandle::Block(d) => d.clone(),
            DeviceHandle::Net(d) => d.clone(),
            DeviceHandle::Vsock(d) => d.clone(),
            DeviceHandle::Rng(d) => d.clone(),
            DeviceHandle::Fs(d) => d.clone(),
        }
    }
}

/// One device in the registry: what it is, where the guest finds it, and
/// the live objects behind it.
#[derive(Debug, Clone)]
pub struct MmioDevice {
    /// Its name in the configuration: a drive's `drive_id`, an interface's
    /// `iface_id`, a virtio-fs `tag`; `vsock` and `entropy` for the single
    /// devices.
    pub id: String,
    /// The device.
    pub handle: DeviceHandle,
    /// Its virtio-mmio transport (registers, queues, status).
    pub transport: Arc<Mutex<MmioTransport>>,
    /// Base of its MMIO window.
    pub base: u64,
    /// Its interrupt line.
    pub irq: u32,
}

/// What the API reports of one device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceInfo {
    /// Configuration name.
    pub id: String,
    /// Kind (`block`, `net`, `vsock`, `rng`, `fs`).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Base of its MMIO window.
    pub mmio_base: u64,
    /// Interrupt line.
    pub irq: u32,
    /// The device status register (virtio 1.x, 2.1).
    pub status: u32,
    /// Whether the driver activated it (DRIVER_OK, queues handed over).
    pub activated: bool,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// Allocates MMIO windows and IRQs and keeps every device: the registry
/// of the VM's virtio devices, from build to the end of the VM.
#[derive(Default)]
pub struct MmioDeviceManager {
    next_base: u64,
    next_irq: u32,
    devices: Vec<MmioDevice>,
}

impl std::fmt::Debug for MmioDeviceManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioDeviceManager")
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

impl MmioDeviceManager {
    /// An empty manager.
    pub fn new() -> Self {
        MmioDeviceManager {
            next_base: layout::MMIO_DEVICES_START,
            next_irq: FIRST_IRQ,
            devices: Vec::new(),
        }
    }

    /// Adds `device`, named `id`, to the bus, the command line and the
    /// registry.
    pub fn add(
        &mut self,
        vm_fd: &VmFd,
        mem: &GuestMemoryMmap,
        bus: &mut Bus,
        cmdline: &mut Cmdline,
        id: &str,
        device: DeviceHandle,
    ) -> Result<(), DeviceManagerError> {
        if self.next_irq > LAST_IRQ {
            return Err(DeviceManagerError::NoIrq);
        }
        let (base, irq) = (self.next_base, self.next_irq);
        let interrupt = Arc::new(Interrupt::new(vm::irq_line(vm_fd, irq)?));
        let transport = MmioTransport::new(device.virtio(), mem.clone(), interrupt)?;
        for (index, evt) in transport.queue_evts().iter().enumerate() {
            vm_fd
                .register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + NOTIFY_OFFSET),
                    index as u32,
                )
                .map_err(DeviceManagerError::IoEvent)?;
        }
        let transport = Arc::new(Mutex::new(transport));
        bus.insert(transport.clone(), base, MMIO_WINDOW)?;
        cmdline
            .add_virtio_mmio_device(MMIO_WINDOW, GuestAddress(base), irq, None)
            .map_err(|e| DeviceManagerError::Cmdline(e.to_string()))?;
        self.devices.push(MmioDevice {
            id: id.to_string(),
            handle: device,
            transport,
            base,
            irq,
        });
        self.next_base += MMIO_WINDOW;
        self.next_irq += 1;
        Ok(())
    }

    /// Every device, in the order the guest finds them.
    pub fn devices(&self) -> &[MmioDevice] {
        &self.devices
    }

    /// The device named `id`.
    pub fn get(&self, id: &str) -> Option<&MmioDevice> {
        self.devices.iter().find(|d| d.id == id)
    }

    /// What the API reports of every device.
    pub fn info(&self) -> Vec<DeviceInfo> {
        self.devices
            .iter()
            .map(|d| {
                let t = lock(&d.transport);
                DeviceInfo {
                    id: d.id.clone(),
                    kind: d.handle.kind(),
                    mmio_base: d.base,
                    irq: d.irq,
                    status: t.status(),
                    activated: t.activated(),
                    acked_features: t.acked_features(),
                }
            })
            .collect()
    }
}
