//! A small polling virtio-mmio (version 2) driver: the same negotiation,
//! split-queue layout and notification order as Linux's driver, without
//! interrupts.

use crate::io;

pub const QSIZE: u16 = 64;
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const VERSION_1: u64 = 1 << 32;

const DESC_OFF: usize = 0;
const AVAIL_OFF: usize = 1024;
const USED_OFF: usize = 2048;

#[repr(C, align(4096))]
pub struct Page(pub [u8; 4096]);

const DMA_BYTES: usize = 56 << 20;

#[repr(C, align(4096))]
struct Dma([u8; DMA_BYTES]);

static mut DMA: Dma = Dma([0; DMA_BYTES]);
static mut DMA_NEXT: usize = 0;

/// Allocates `len` bytes of zeroed, page-aligned guest memory (never freed).
pub fn alloc(len: usize) -> &'static mut [u8] {
    let len = (len + 4095) & !4095;
    // SAFETY: single-threaded guest; each allocation is a fresh, disjoint
    // part of the static DMA area.
    unsafe {
        let next = DMA_NEXT;
        if next + len > DMA_BYTES {
            io::line("guest: out of DMA memory");
            io::reset();
        }
        DMA_NEXT = next + len;
        let base = (&raw mut DMA).cast::<u8>().add(next);
        core::slice::from_raw_parts_mut(base, len)
    }
}

fn rd32(addr: usize) -> u32 {
    // SAFETY: an MMIO register or memory owned by this driver.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn wr32(addr: usize, v: u32) {
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

fn rd16(addr: usize) -> u16 {
    // SAFETY: memory owned by this driver.
    unsafe { core::ptr::read_volatile(addr as *const u16) }
}

fn wr16(addr: usize, v: u16) {
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(addr as *mut u16, v) }
}

fn fence() {
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

/// One split virtqueue.
pub struct Queue {
    pub index: u32,
    pub area: usize,
    pub size: u16,
    avail_idx: u16,
    last_used: u16,
}

impl Queue {
    pub fn set_desc(&mut self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.area + DESC_OFF + usize::from(i) * 16;
        // SAFETY: the descriptor table lies in this queue's own page.
        unsafe {
            core::ptr::write_volatile(d as *mut u64, addr);
        }
        wr32(d + 8, len);
        wr16(d + 12, flags);
        wr16(d + 14, next);
    }

    /// Publishes a chain head (any index, even an invalid one).
    pub fn push_avail(&mut self, head: u16) {
        let slot = usize::from(self.avail_idx % self.size);
        wr16(self.area + AVAIL_OFF + 4 + slot * 2, head);
        fence();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        wr16(self.area + AVAIL_OFF + 2, self.avail_idx);
        fence();
    }

    /// Waits for the next used element: (id, len).
    pub fn poll_used(&mut self, spins: u64) -> Option<(u32, u32)> {
        for _ in 0..spins {
            let idx = rd16(self.area + USED_OFF + 2);
            if idx != self.last_used {
                fence();
                let slot = usize::from(self.last_used % self.size);
                let e = self.area + USED_OFF + 4 + slot * 8;
                let id = rd32(e);
                let len = rd32(e + 4);
                self.last_used = self.last_used.wrapping_add(1);
                return Some((id, len));
            }
            core::hint::spin_loop();
        }
        None
    }

    /// Publishes the used-event-free avail state as-is (for hostile tests).
    pub fn raw_set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        wr16(self.area + AVAIL_OFF + 2, idx);
        fence();
    }
}

/// A negotiated device.
pub struct Device {
    pub base: usize,
    pub device_id: u32,
    pub features: u64,
    pub queues: [Option<Queue>; 4],
}

pub fn probe_id(base: usize) -> Option<u32> {
    if rd32(base) != 0x7472_6976 || rd32(base + 4) != 2 {
        return None;
    }
    Some(rd32(base + 8))
}

impl Device {
    /// Resets and negotiates `wanted` features (VERSION_1 is required) and
    /// sets up `nqueues` queues; returns the device or why it failed.
    pub fn init(base: usize, wanted: u64, nqueues: usize) -> Result<Device, &'static str> {
        let device_id = probe_id(base).ok_or("not a virtio-mmio v2 device")?;
        wr32(base + 0x70, 0);
        wr32(base + 0x70, 1);
        wr32(base + 0x70, 1 | 2);
        wr32(base + 0x14, 0);
        let lo = u64::from(rd32(base + 0x10));
        wr32(base + 0x14, 1);
        let hi = u64::from(rd32(base + 0x10));
        let offered = lo | (hi << 32);
        if offered & VERSION_1 == 0 {
            return Err("device does not offer VERSION_1");
        }
        let features = offered & (wanted | VERSION_1);
        wr32(base + 0x24, 0);
        wr32(base + 0x20, features as u32);
        wr32(base + 0x24, 1);
        wr32(base + 0x20, (features >> 32) as u32);
        wr32(base + 0x70, 1 | 2 | 8);
        if rd32(base + 0x70) & 8 == 0 {
            return Err("FEATURES_OK refused");
        }
        let mut queues: [Option<Queue>; 4] = [None, None, None, None];
        for (i, slot) in queues.iter_mut().enumerate().take(nqueues) {
            wr32(base + 0x30, i as u32);
            let max = rd32(base + 0x34) as u16;
            if max == 0 {
                return Err("queue not available");
            }
            let size = QSIZE.min(max);
            let area = alloc(4096).as_mut_ptr() as usize;
            wr32(base + 0x38, u32::from(size));
            let (d, a, u) = (area + DESC_OFF, area + AVAIL_OFF, area + USED_OFF);
            wr32(base + 0x80, d as u32);
            wr32(base + 0x84, (d as u64 >> 32) as u32);
            wr32(base + 0x90, a as u32);
            wr32(base + 0x94, (a as u64 >> 32) as u32);
            wr32(base + 0xa0, u as u32);
            wr32(base + 0xa4, (u as u64 >> 32) as u32);
            wr32(base + 0x44, 1);
            *slot = Some(Queue {
                index: i as u32,
                area,
                size,
                avail_idx: 0,
                last_used: 0,
            });
        }
        wr32(base + 0x70, 1 | 2 | 8 | 4);
        if rd32(base + 0x70) & 0x40 != 0 {
            return Err("device needs reset after DRIVER_OK");
        }
        Ok(Device {
            base,
            device_id,
            features,
            queues,
        })
    }

    pub fn queue(&mut self, i: usize) -> &mut Queue {
        match self.queues[i].as_mut() {
            Some(q) => q,
            None => {
                io::line("guest: no such queue");
                io::reset()
            }
        }
    }

    pub fn notify(&self, q: u32) {
        fence();
        wr32(self.base + 0x50, q);
    }

    pub fn config32(&self, off: usize) -> u32 {
        rd32(self.base + 0x100 + off)
    }

    /// Reads and acknowledges the interrupt status register.
    pub fn take_interrupt(&self) -> u32 {
        let v = rd32(self.base + 0x60);
        wr32(self.base + 0x64, v);
        v
    }

    pub fn status(&self) -> u32 {
        rd32(self.base + 0x70)
    }

    /// Submits a chain of (addr, len, device-writable) buffers on queue `q`
    /// and waits for it; returns the used length.
    pub fn transfer(&mut self, q: usize, bufs: &[(u64, u32, bool)], spins: u64) -> Option<u32> {
        let qi;
        {
            let queue = self.queue(q);
            for (i, &(addr, len, write)) in bufs.iter().enumerate() {
                let last = i + 1 == bufs.len();
                let mut flags = if write { F_WRITE } else { 0 };
                if !last {
                    flags |= F_NEXT;
                }
                queue.set_desc(i as u16, addr, len, flags, (i + 1) as u16);
            }
            queue.push_avail(0);
            qi = queue.index;
        }
        self.notify(qi);
        self.queue(q).poll_used(spins).map(|(_, len)| len)
    }
}
