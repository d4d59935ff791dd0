//! virtio devices over the virtio-mmio transport (virtio 1.x, modern only).
//!
//! Each device lives in its own directory and is both a [`VirtioDevice`]
//! (served by an [`mmio::MmioTransport`] on vCPU threads) and an
//! event-manager subscriber (served on the VMM thread). The transport
//! activates the device when the driver sets DRIVER_OK; the device then
//! registers its queue eventfds with the event loop (activate, then
//! register). Descriptor chains are walked with virtio-queue; every value
//! that comes from the guest is checked and a bad request fails on its own.

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod single_queue;
pub mod vsock;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Device type IDs (virtio 1.x, 5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Console.
    pub const CONSOLE: u32 = 3;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Socket device.
    pub const VSOCK: u32 = 19;
}

/// Feature bit: the device complies with virtio 1.x.
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error and needs a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// Interrupt status bits.
const INT_USED_RING: u32 = 1;
const INT_CONFIG: u32 = 2;

/// A device's interrupt line and its MMIO interrupt status register.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irq: EventFd,
}

impl Interrupt {
    /// An interrupt signalled through `irq` (an irqfd).
    pub fn new(irq: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            irq,
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        // An irqfd write fails only if the counter would overflow.
        let _ = self.irq.write(1);
    }

    /// Tells the driver that used buffers are available.
    pub fn signal_used_queue(&self) {
        self.raise(INT_USED_RING);
    }

    /// Tells the driver that the configuration (or status) changed.
    pub fn signal_config_change(&self) {
        self.raise(INT_CONFIG);
    }

    /// The interrupt status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver acknowledged the bits in `ack`.
    pub fn ack(&self, ack: u32) {
        self.status.fetch_and(!ack, Ordering::SeqCst);
    }
}

/// What a device gets when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct ActivateContext {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queues as the driver configured them.
    pub queues: Vec<Queue>,
    /// One eventfd per queue, written by KVM when the driver notifies it.
    pub queue_evts: Vec<EventFd>,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// Errors activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up fewer or more queues than the device has.
    #[error("expected {expected} queues, the driver set up {got}")]
    QueueCount {
        /// Queues of the device.
        expected: usize,
        /// Queues configured.
        got: usize,
    },
    /// The device could not wake its event handler.
    #[error("cannot signal the device's event handler: {0}")]
    EventFd(#[source] std::io::Error),
    /// The device's backend failed.
    #[error("device backend failed: {0}")]
    Backend(String),
}

/// A virtio device as the transport sees it.
pub trait VirtioDevice: Send {
    /// virtio device type ([`device_type`]).
    fn device_type(&self) -> u32;
    /// Features the device offers.
    fn avail_features(&self) -> u64;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space (ignored by most devices).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device with the driver's queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops the device after a driver reset; returns false if it cannot.
    fn reset(&mut self) -> bool;
}

/// Reads `data.len()` bytes at `offset` of a configuration space `config`;
/// bytes past its end read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let end = (start + data.len()).min(config.len());
    data[..end - start].copy_from_slice(&config[start..end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [9u8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 100, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn interrupt_status() {
        let i = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        i.signal_used_queue();
        i.signal_config_change();
        assert_eq!(i.status(), 3);
        i.ack(1);
        assert_eq!(i.status(), 2);
        assert_eq!(i.irq.read().unwrap(), 2);
    }
}
