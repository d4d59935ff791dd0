//! The vsock device: three queues (receive 0, transmit 1, event 2), the
//! guest CID in the configuration space, packets moved between the queues
//! and the muxer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use event_manager::EventOps;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::HOST_CID;
use super::muxer::Muxer;
use super::packet::{HEADER_LEN, MAX_PAYLOAD, PacketHeader};
use crate::devices::virtio::{
    ActivateContext, ActivateError, Interrupt, VIRTIO_F_VERSION_1, VirtioDevice, device_type,
    read_config_bytes,
};
use crate::logger::RateLimiter;

const QUEUE_SIZE: u16 = 256;

/// Errors creating a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved.
    #[error("vsock.guest_cid must be at least 3, got {0}")]
    Cid(u64),
    /// The socket path already exists.
    #[error("vsock.uds_path {0} already exists")]
    Exists(PathBuf),
    /// Binding the socket failed.
    #[error("cannot bind vsock.uds_path {path}: {source}")]
    Bind {
        /// Path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

pub(super) struct Active {
    pub(super) mem: GuestMemoryMmap,
    pub(super) rx: Queue,
    pub(super) tx: Queue,
    pub(super) ev: Queue,
    pub(super) evts: Vec<EventFd>,
    pub(super) interrupt: Arc<Interrupt>,
}

/// A virtio-vsock device.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    config: [u8; 8],
    pub(super) muxer: Muxer,
    pub(super) activate_evt: EventFd,
    pub(super) active: Option<Active>,
    pub(super) registered: bool,
    buf: Vec<u8>,
    warn: RateLimiter,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("muxer", &self.muxer)
            .finish_non_exhaustive()
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

impl Vsock {
    /// Binds `uds_path` for guest `guest_cid`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        if guest_cid < 3 || guest_cid > u64::from(u32::MAX) {
            return Err(VsockError::Cid(guest_cid));
        }
        if uds_path.exists() {
            return Err(VsockError::Exists(uds_path.to_path_buf()));
        }
        let listener = crate::uds::bind_ready(uds_path).map_err(|source| VsockError::Bind {
            path: uds_path.to_path_buf(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| VsockError::Bind {
                path: uds_path.to_path_buf(),
                source,
            })?;
        Ok(Vsock {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            config: guest_cid.to_le_bytes(),
            muxer: Muxer::new(guest_cid, uds_path.to_path_buf(), listener),
            activate_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd)?,
            active: None,
            registered: false,
            buf: vec![0; HEADER_LEN + MAX_PAYLOAD as usize],
            warn: RateLimiter::new(10, Duration::from_secs(5)),
        })
    }

    /// Moves packets from the muxer into receive buffers.
    pub fn process_rx(&mut self, ops: &mut EventOps) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used_any = false;
        loop {
            if !self.muxer.has_pending() {
                break;
            }
            let Some(chain) = active.rx.pop_descriptor_chain(&active.mem) else {
                self.muxer.rx_starved = true;
                break;
            };
            let head = chain.head_index();
            let descs: Vec<_> = chain.collect();
            let writable = descs.iter().all(|d| d.is_write_only());
            let capacity: usize = descs.iter().map(|d| d.len() as usize).sum();
            if !writable || capacity < HEADER_LEN {
                if self.warn.allow() {
                    log::warn!("vsock: unusable receive buffer {head}");
                }
                let _ = active.rx.add_used(&active.mem, head, 0);
                used_any = true;
                continue;
            }
            let (hdr_buf, data_buf) = self.buf.split_at_mut(HEADER_LEN);
            let Some((h, len)) = self.muxer.next_packet(capacity - HEADER_LEN, data_buf, ops)
            else {
                active.rx.go_to_previous_position();
                break;
            };
            hdr_buf.copy_from_slice(&h.encode());
            let total = HEADER_LEN + len;
            let mut done = 0;
            let mut ok = true;
            for d in &descs {
                if done == total {
                    break;
                }
                let n = (d.len() as usize).min(total - done);
                if active
                    .mem
                    .write_slice(&self.buf[done..done + n], d.addr())
                    .is_err()
                {
                    ok = false;
                    break;
                }
                done += n;
            }
            let used = if ok { total as u32 } else { 0 };
            if active.rx.add_used(&active.mem, head, used).is_err() && self.warn.allow() {
                log::warn!("vsock: cannot return receive buffer {head}");
            }
            used_any = true;
        }
        if used_any && !matches!(active.rx.needs_notification(&active.mem), Ok(false)) {
            active.interrupt.signal_used_queue();
        }
        self.muxer.refresh_all(ops);
    }

    /// Handles every packet the guest queued.
    pub fn process_tx(&mut self, ops: &mut EventOps) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used_any = false;
        while let Some(chain) = active.tx.pop_descriptor_chain(&active.mem) {
            let head = chain.head_index();
            let mut len = 0usize;
            let mut ok = true;
            for d in chain {
                let n = d.len() as usize;
                if d.is_write_only() || len + n > self.buf.len() {
                    ok = false;
                    break;
                }
                if active
                    .mem
                    .read_slice(&mut self.buf[len..len + n], d.addr())
                    .is_err()
                {
                    ok = false;
                    break;
                }
                len += n;
            }
            let parsed = if ok {
                PacketHeader::decode(&self.buf[..len]).map_err(|e| e.to_string())
            } else {
                Err("malformed descriptor chain".to_string())
            };
            match parsed {
                Ok(h) if HEADER_LEN + h.len as usize > len => {
                    if self.warn.allow() {
                        log::warn!("vsock: packet shorter than its length field");
                    }
                }
                Ok(h) if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID => {
                    if self.warn.allow() {
                        log::warn!(
                            "vsock: packet from CID {} to CID {} dropped",
                            h.src_cid,
                            h.dst_cid
                        );
                    }
                }
                Ok(h) => {
                    let payload = &self.buf[HEADER_LEN..HEADER_LEN + h.len as usize];
                    self.muxer.guest_packet(&h, payload, ops);
                }
                Err(e) => {
                    if self.warn.allow() {
                        log::warn!("vsock: transmit request {head} dropped: {e}");
                    }
                }
            }
            if active.tx.add_used(&active.mem, head, 0).is_err() && self.warn.allow() {
                log::warn!("vsock: cannot return transmit buffer {head}");
            }
            used_any = true;
        }
        if used_any && !matches!(active.tx.needs_notification(&active.mem), Ok(false)) {
            active.interrupt.signal_used_queue();
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 3 || ctx.queue_evts.len() != 3 {
            return Err(ActivateError::QueueCount {
                expected: 3,
                got: ctx.queues.len(),
            });
        }
        let ev = ctx.queues.remove(2);
        let tx = ctx.queues.remove(1);
        let rx = ctx.queues.remove(0);
        self.active = Some(Active {
            mem: ctx.mem,
            rx,
            tx,
            ev,
            evts: ctx.queue_evts,
            interrupt: ctx.interrupt,
        });
        self.activate_evt.write(1).map_err(ActivateError::EventFd)
    }

    fn reset(&mut self) -> bool {
        // Connections are dropped on the event loop (it owns their
        // registrations) when the activate event sees no active device.
        self.active = None;
        let _ = self.activate_evt.write(1);
        true
    }
}
