//! Shared by the queue targets: guest memory filled from the fuzz input and
//! a queue laid over it, as a hostile driver could set one up.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::{ActivateContext, Interrupt};
use vmm_sys_util::eventfd::EventFd;

pub const MEM: usize = 1 << 20;

/// Guest memory whose first bytes are `data`; a 16-entry queue at 0 with the
/// available ring at 0x100 and the used ring at 0x200.
pub fn context(data: &[u8], queues: usize) -> Option<ActivateContext> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).ok()?;
    let n = data.len().min(MEM);
    vm_memory::Bytes::write_slice(&mem, &data[..n], GuestAddress(0)).ok()?;
    let mut qs = Vec::new();
    let mut evts = Vec::new();
    for i in 0..queues as u64 {
        let mut q = Queue::new(16).ok()?;
        q.set_size(16);
        let base = i * 0x1000;
        q.set_desc_table_address(Some(base as u32), Some(0));
        q.set_avail_ring_address(Some((base + 0x100) as u32), Some(0));
        q.set_used_ring_address(Some((base + 0x200) as u32), Some(0));
        q.set_ready(true);
        qs.push(q);
        evts.push(EventFd::new(libc::EFD_NONBLOCK).ok()?);
    }
    Some(ActivateContext {
        mem,
        queues: qs,
        queue_evts: evts,
        interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).ok()?)),
        acked_features: 1 << 32,
    })
}
