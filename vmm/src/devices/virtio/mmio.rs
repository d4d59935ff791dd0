//! The virtio-mmio transport, version 2 (virtio 1.x, 4.2): registers,
//! feature negotiation, the device status state machine, queue set-up,
//! interrupt status and acknowledgement. Queue notifications arrive on
//! ioeventfds registered with KVM (offset 0x50, one per queue, matched on
//! the queue index), so a notify does not stop the vCPU in user space.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateContext, Interrupt, VIRTIO_F_VERSION_1, VirtioDevice, status};
use crate::devices::BusDevice;
use crate::devices::bus::lock;
use crate::logger::RateLimiter;

/// Size of one device's MMIO window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// Offset of the queue notify register.
pub const NOTIFY_OFFSET: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4b53_5548; // "HUSK"
const CONFIG_OFFSET: u64 = 0x100;

/// One virtio-mmio device slot.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
    warn: RateLimiter,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("status", &self.status)
            .field("acked_features", &self.acked_features)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

/// Errors creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// A queue could not be created.
    #[error("invalid queue size {0}")]
    QueueSize(u16),
    /// An eventfd could not be created.
    #[error("cannot create a queue eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

impl MmioTransport {
    /// A transport for `device`, signalling `interrupt`.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, MmioError> {
        let sizes = lock(&device).queue_max_sizes().to_vec();
        let mut queues = Vec::with_capacity(sizes.len());
        let mut queue_evts = Vec::with_capacity(sizes.len());
        for size in sizes {
            queues.push(Queue::new(size).map_err(|_| MmioError::QueueSize(size))?);
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK).map_err(MmioError::EventFd)?);
        }
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_evts,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
            warn: RateLimiter::new(10, std::time::Duration::from_secs(5)),
        })
    }

    /// The queue eventfds, in queue order, to register as ioeventfds.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The current device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device runs with the driver's queues.
    pub fn activated(&self) -> bool {
        self.activated
    }

    /// Features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn queue_config_allowed(&self) -> bool {
        self.status & status::FEATURES_OK != 0 && self.status & status::DRIVER_OK == 0
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if !self.queue_config_allowed() {
            if self.warn.allow() {
                log::warn!("virtio-mmio: queue set-up outside FEATURES_OK..DRIVER_OK ignored");
            }
            return;
        }
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn reset(&mut self) {
        if self.activated && !lock(&self.device).reset() {
            // The device cannot be stopped: leave it to the VM's end.
            if self.warn.allow() {
                log::warn!("virtio-mmio: device does not support reset");
            }
            self.status |= status::DEVICE_NEEDS_RESET;
            return;
        }
        self.activated = false;
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt.ack(u32::MAX);
    }

    fn activate(&mut self) {
        let valid = self
            .queues
            .iter()
            .all(|q| !q.ready() || q.is_valid(&self.mem));
        if !valid {
            self.fail("a queue is set up outside guest memory or misaligned");
            return;
        }
        let mut queue_evts = Vec::with_capacity(self.queue_evts.len());
        for e in &self.queue_evts {
            match e.try_clone() {
                Ok(c) => queue_evts.push(c),
                Err(_) => {
                    self.fail("cannot duplicate a queue eventfd");
                    return;
                }
            }
        }
        let mut queues = Vec::with_capacity(self.queues.len());
        for q in &self.queues {
            match Queue::try_from(q.state()) {
                Ok(copy) => queues.push(copy),
                Err(_) => {
                    self.fail("invalid queue configuration");
                    return;
                }
            }
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_evts,
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
        };
        let result = lock(&self.device).activate(ctx);
        match result {
            Ok(()) => self.activated = true,
            Err(e) => self.fail(&e.to_string()),
        }
    }

    fn fail(&mut self, why: &str) {
        if self.warn.allow() {
            log::warn!("virtio-mmio: device activation failed: {why}");
        }
        self.status |= status::DEVICE_NEEDS_RESET;
        self.interrupt.signal_config_change();
    }

    fn write_status(&mut self, val: u32) {
        if val == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // Bits may only be added, in order, except FAILED.
        if val & old != old {
            if self.warn.allow() {
                log::warn!("virtio-mmio: status {old:#x} -> {val:#x} clears bits; ignored");
            }
            return;
        }
        let added = val & !old;
        let allowed = match added & !status::FAILED {
            0 => true,
            status::ACKNOWLEDGE => old == 0,
            status::DRIVER => old & status::ACKNOWLEDGE != 0,
            status::FEATURES_OK => old & status::DRIVER != 0,
            status::DRIVER_OK => old & status::FEATURES_OK != 0,
            _ => false,
        };
        if !allowed {
            if self.warn.allow() {
                log::warn!("virtio-mmio: status {old:#x} -> {val:#x} out of order; ignored");
            }
            return;
        }
        if added & status::FEATURES_OK != 0 {
            let offered = lock(&self.device).avail_features();
            let version_1 = self.acked_features & (1u64 << VIRTIO_F_VERSION_1) != 0;
            if self.acked_features & !offered != 0 || !version_1 {
                // Leave FEATURES_OK clear: the driver sees the refusal.
                self.status = val & !status::FEATURES_OK;
                return;
            }
        }
        self.status = val;
        if added & status::DRIVER_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => lock(&self.device).device_type(),
            0x00c => VENDOR_ID,
            0x010 => {
                let features = lock(&self.device).avail_features();
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            0x034 => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            0x044 => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            0x060 => self.interrupt.status(),
            0x070 => self.status,
            // No shared memory regions: length reads as all ones.
            0x0b0 | 0x0b4 => u32::MAX,
            0x0fc => self.config_generation,
            _ => {
                if self.warn.allow() {
                    log::warn!("virtio-mmio: read of unknown register {offset:#x}");
                }
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, val: u32) {
        match offset {
            0x014 => self.device_features_sel = val,
            0x020 => {
                if self.status & status::DRIVER == 0 || self.status & status::FEATURES_OK != 0 {
                    if self.warn.allow() {
                        log::warn!("virtio-mmio: driver features written outside negotiation");
                    }
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(val)
                    }
                    1 => {
                        self.acked_features =
                            (self.acked_features & 0xffff_ffff) | (u64::from(val) << 32)
                    }
                    _ => {}
                }
            }
            0x024 => self.driver_features_sel = val,
            0x030 => self.queue_sel = val,
            0x038 => self.with_queue(|q| {
                // Invalid sizes (zero, not a power of two, too large) are
                // refused by virtio-queue and leave the size unchanged.
                let _ = q.try_set_size(val as u16);
            }),
            0x044 => self.with_queue(|q| q.set_ready(val == 1)),
            NOTIFY_OFFSET => {
                // Notifies normally go to the ioeventfd; one that reaches us
                // (before registration) is forwarded the same way.
                if let Some(e) = self.queue_evts.get(val as usize) {
                    let _ = e.write(1);
                }
            }
            0x064 => self.interrupt.ack(val),
            0x070 => self.write_status(val),
            0x080 => self.with_queue(|q| q.set_desc_table_address(Some(val), None)),
            0x084 => self.with_queue(|q| q.set_desc_table_address(None, Some(val))),
            0x090 => self.with_queue(|q| q.set_avail_ring_address(Some(val), None)),
            0x094 => self.with_queue(|q| q.set_avail_ring_address(None, Some(val))),
            0x0a0 => self.with_queue(|q| q.set_used_ring_address(Some(val), None)),
            0x0a4 => self.with_queue(|q| q.set_used_ring_address(None, Some(val))),
            0x0ac => {}
            _ => {
                if self.warn.allow() {
                    log::warn!("virtio-mmio: write to unknown register {offset:#x}");
                }
            }
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            if self.warn.allow() {
                log::warn!(
                    "virtio-mmio: {}-byte read at {offset:#x} ignored",
                    data.len()
                );
            }
            data.fill(0xff);
            return;
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            if self.status & status::DRIVER != 0 {
                lock(&self.device).write_config(offset - CONFIG_OFFSET, data);
                self.config_generation = self.config_generation.wrapping_add(1);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            if self.warn.allow() {
                log::warn!(
                    "virtio-mmio: {}-byte write at {offset:#x} ignored",
                    data.len()
                );
            }
            return;
        };
        if offset % 4 != 0 {
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vm_memory::GuestAddress;

    struct Dummy {
        sizes: Vec<u16>,
        activations: Arc<AtomicUsize>,
        config: [u8; 8],
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn avail_features(&self) -> u64 {
            (1 << VIRTIO_F_VERSION_1) | 0b101
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&self.config, offset, data);
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), super::super::ActivateError> {
            assert_eq!(ctx.queues.len(), self.sizes.len());
            self.activations.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn reset(&mut self) -> bool {
            true
        }
    }

    fn transport() -> (MmioTransport, Arc<AtomicUsize>) {
        let activations = Arc::new(AtomicUsize::new(0));
        let dev = Arc::new(Mutex::new(Dummy {
            sizes: vec![16, 8],
            activations: activations.clone(),
            config: [1, 2, 3, 4, 5, 6, 7, 8],
        }));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        (MmioTransport::new(dev, mem, irq).unwrap(), activations)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport, features_hi: u32) {
        w(t, 0x70, status::ACKNOWLEDGE);
        w(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
        w(t, 0x24, 0);
        w(t, 0x20, 0b1);
        w(t, 0x24, 1);
        w(t, 0x20, features_hi);
        w(
            t,
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }

    fn setup_queue(t: &mut MmioTransport, sel: u32, size: u32, base: u32) {
        w(t, 0x30, sel);
        w(t, 0x38, size);
        w(t, 0x80, base);
        w(t, 0x90, base + 0x1000);
        w(t, 0xa0, base + 0x2000);
        w(t, 0x44, 1);
    }

    #[test]
    fn identification() {
        let (mut t, _) = transport();
        assert_eq!(r(&mut t, 0), MAGIC);
        assert_eq!(r(&mut t, 4), 2);
        assert_eq!(r(&mut t, 8), 42);
        w(&mut t, 0x14, 1);
        assert_eq!(r(&mut t, 0x10), 1);
        w(&mut t, 0x14, 0);
        assert_eq!(r(&mut t, 0x10), 0b101);
        w(&mut t, 0x30, 1);
        assert_eq!(r(&mut t, 0x34), 8);
        w(&mut t, 0x30, 7);
        assert_eq!(r(&mut t, 0x34), 0);
        let mut b = [0u8; 2];
        t.read(0x102, &mut b);
        assert_eq!(b, [3, 4]);
    }

    #[test]
    fn full_negotiation_activates() {
        let (mut t, act) = transport();
        negotiate(&mut t, 1);
        assert_ne!(t.status() & status::FEATURES_OK, 0);
        setup_queue(&mut t, 0, 16, 0x10000);
        setup_queue(&mut t, 1, 8, 0x20000);
        w(&mut t, 0x70, 0xf);
        assert_eq!(act.load(Ordering::SeqCst), 1);
        assert_eq!(t.status(), 0xf);
        // Queue set-up after DRIVER_OK is ignored.
        w(&mut t, 0x30, 0);
        w(&mut t, 0x38, 2);
        // Reset then renegotiate.
        w(&mut t, 0x70, 0);
        assert_eq!(t.status(), 0);
        negotiate(&mut t, 1);
        setup_queue(&mut t, 0, 16, 0x10000);
        w(&mut t, 0x70, 0xf);
        assert_eq!(act.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let (mut t, act) = transport();
        negotiate(&mut t, 0);
        assert_eq!(t.status() & status::FEATURES_OK, 0);
        w(&mut t, 0x70, 0xf);
        assert_eq!(act.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn unoffered_features_are_refused() {
        let (mut t, _) = transport();
        w(&mut t, 0x70, 1);
        w(&mut t, 0x70, 3);
        w(&mut t, 0x24, 0);
        w(&mut t, 0x20, 0b10);
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 1);
        w(&mut t, 0x70, 0xb);
        assert_eq!(t.status() & status::FEATURES_OK, 0);
    }

    #[test]
    fn out_of_order_status_is_ignored() {
        let (mut t, act) = transport();
        w(&mut t, 0x70, status::DRIVER_OK);
        assert_eq!(t.status(), 0);
        w(&mut t, 0x70, status::ACKNOWLEDGE);
        w(&mut t, 0x70, status::ACKNOWLEDGE | status::FEATURES_OK);
        assert_eq!(t.status(), status::ACKNOWLEDGE);
        assert_eq!(act.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn queue_outside_memory_fails_activation() {
        let (mut t, act) = transport();
        negotiate(&mut t, 1);
        setup_queue(&mut t, 0, 16, 0xfff0_0000);
        w(&mut t, 0x70, 0xf);
        assert_eq!(act.load(Ordering::SeqCst), 0);
        assert_ne!(t.status() & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(r(&mut t, 0x60) & 2, 2);
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let (mut t, _) = transport();
        let mut b = [0u8; 2];
        t.read(0x70, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        t.write(0x70, &[1, 0]);
        t.write(0x71, &[1, 0, 0, 0]);
        assert_eq!(t.status(), 0);
        assert_eq!(r(&mut t, 0x0f0), 0);
        w(&mut t, 0x0f0, 5);
        w(&mut t, 0x50, 99); // notify of a queue that does not exist
        // Bad queue sizes leave the queue as it was.
        negotiate(&mut t, 1);
        w(&mut t, 0x30, 0);
        w(&mut t, 0x38, 3);
        w(&mut t, 0x38, 0);
        w(&mut t, 0x38, 4096);
    }
}
