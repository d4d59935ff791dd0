//! The entropy device: one queue of device-writable buffers, each filled
//! with random bytes (at most [`MAX_REQUEST_BYTES`] per request).

use std::time::Duration;

use virtio_queue::QueueT;
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::single_queue::ActiveQueue;
use crate::devices::virtio::{
    ActivateContext, ActivateError, VIRTIO_F_VERSION_1, VirtioDevice, device_type,
};
use crate::logger::RateLimiter;

/// Largest number of random bytes served for one request.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
const QUEUE_SIZE: u16 = 256;

/// Errors of the entropy device.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// The virtio-rng device.
pub struct Rng {
    pub(super) activate_evt: EventFd,
    pub(super) active: Option<ActiveQueue>,
    pub(super) queue_registered: bool,
    warn: RateLimiter,
    /// Requests served, for tests and metrics.
    pub requests: u64,
    /// Malformed requests failed.
    pub bad_requests: u64,
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rng")
            .field("active", &self.active.is_some())
            .field("requests", &self.requests)
            .finish_non_exhaustive()
    }
}

fn fill_random(buf: &mut [u8]) -> bool {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n <= 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return false;
        }
        done += n as usize;
    }
    true
}

impl Rng {
    /// A new, inactive device.
    pub fn new() -> Result<Self, RngError> {
        Ok(Rng {
            activate_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(RngError::EventFd)?,
            active: None,
            queue_registered: false,
            warn: RateLimiter::new(10, Duration::from_secs(5)),
            requests: 0,
            bad_requests: 0,
        })
    }

    /// Serves every available request; returns whether any was completed.
    pub fn process_queue(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mut used_any = false;
        let mut buf = Vec::new();
        while let Some(chain) = active.queue.pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            let mut written: u32 = 0;
            let mut bad = false;
            for desc in chain {
                if !desc.is_write_only() {
                    bad = true;
                    break;
                }
                let room = MAX_REQUEST_BYTES - written as usize;
                let len = (desc.len() as usize).min(room);
                if len == 0 {
                    continue;
                }
                buf.resize(len, 0);
                if !fill_random(&mut buf) || active.mem.write_slice(&buf, desc.addr()).is_err() {
                    bad = true;
                    break;
                }
                written += len as u32;
            }
            if bad {
                self.bad_requests += 1;
                written = 0;
                if self.warn.allow() {
                    log::warn!("virtio-rng: malformed request (head {head}) failed");
                }
            }
            self.requests += 1;
            if active.queue.add_used(&active.mem, head, written).is_err() {
                if self.warn.allow() {
                    log::warn!("virtio-rng: cannot return descriptor {head}");
                }
                continue;
            }
            used_any = true;
        }
        if used_any {
            active.notify_used();
        }
        used_any
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.active = Some(ActiveQueue::from_context(ctx)?);
        self.activate_evt.write(1).map_err(ActivateError::EventFd)
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        true
    }
}
