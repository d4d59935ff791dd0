//! The virtio-fs device: configuration space and vhost-user set-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use crate::config::FS_TAG_LEN;
use crate::devices::virtio::{
    ActivateContext, ActivateError, Interrupt, VIRTIO_F_VERSION_1, VirtioDevice,
};

/// virtio device type of a file system device (virtio 1.2, 5.11).
const DEVICE_TYPE_FS: u32 = 26;
/// The high-priority queue and one request queue.
pub const NUM_QUEUES: usize = 2;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;

/// Errors of a virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The back end's socket could not be reached.
    #[error("virtio-fs {tag}: cannot connect to {}: {cause}", socket.display())]
    Connect {
        /// The device's tag.
        tag: String,
        /// The socket.
        socket: PathBuf,
        /// Why.
        cause: String,
    },
    /// The back end refused or failed a set-up message.
    #[error("virtio-fs {tag}: back end: {what}: {cause}")]
    Backend {
        /// The device's tag.
        tag: String,
        /// The message.
        what: &'static str,
        /// Why.
        cause: String,
    },
    /// The tag does not fit the configuration space.
    #[error("virtio-fs tag {0:?} is empty or longer than 36 bytes")]
    Tag(String),
    /// An eventfd could not be created.
    #[error("virtio-fs: cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// A virtio-fs device backed by a vhost-user daemon.
pub struct Fs {
    tag: String,
    config: [u8; FS_TAG_LEN + 4],
    frontend: Frontend,
    /// What the back end offers (virtio and vhost-user transport bits).
    backend_features: u64,
    /// Protocol features agreed on, if the back end has them at all.
    protocol: Option<VhostUserProtocolFeatures>,
    pub(super) activate_evt: EventFd,
    /// One call eventfd per queue, signalled by the back end.
    pub(super) calls: Vec<EventFd>,
    /// The interrupt, once active.
    pub(super) interrupt: Option<Arc<Interrupt>>,
    /// The kick eventfds (KVM's ioeventfds), kept open while active.
    kicks: Vec<EventFd>,
    pub(super) registered: bool,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("tag", &self.tag)
            .field("active", &self.interrupt.is_some())
            .finish_non_exhaustive()
    }
}

impl Fs {
    /// Connects to the back end on `socket` and agrees on features; the
    /// queues are handed over when the driver activates the device.
    pub fn new(tag: &str, socket: &Path) -> Result<Fs, FsError> {
        if tag.is_empty() || tag.len() > FS_TAG_LEN {
            return Err(FsError::Tag(tag.to_string()));
        }
        let backend = |what: &'static str| {
            let tag = tag.to_string();
            move |e: vhost::Error| FsError::Backend {
                tag,
                what,
                cause: e.to_string(),
            }
        };
        let mut frontend =
            Frontend::connect(socket, NUM_QUEUES as u64).map_err(|e| FsError::Connect {
                tag: tag.to_string(),
                socket: socket.to_path_buf(),
                cause: e.to_string(),
            })?;
        frontend.set_owner().map_err(backend("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(backend("GET_FEATURES"))?;
        let protocol = if backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0
        {
            let theirs = frontend
                .get_protocol_features()
                .map_err(backend("GET_PROTOCOL_FEATURES"))?;
            // Nothing beyond the base protocol is used.
            let ours = theirs & VhostUserProtocolFeatures::empty();
            frontend
                .set_protocol_features(ours)
                .map_err(backend("SET_PROTOCOL_FEATURES"))?;
            Some(ours)
        } else {
            None
        };
        let mut config = [0u8; FS_TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[FS_TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        let calls = (0..NUM_QUEUES)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(FsError::EventFd)?;
        Ok(Fs {
            tag: tag.to_string(),
            config,
            frontend,
            backend_features,
            protocol,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::EventFd)?,
            calls,
            interrupt: None,
            kicks: Vec::new(),
            registered: false,
        })
    }

    /// The device's tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Hands guest memory and the queues over to the back end.
    fn hand_over(&mut self, ctx: &ActivateContext) -> Result<(), String> {
        let fail = |what: &'static str| move |e: vhost::Error| format!("{what}: {e}");
        let transport = self.backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        self.frontend
            .set_features(ctx.acked_features | transport)
            .map_err(fail("SET_FEATURES"))?;
        let regions = ctx
            .mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("guest memory is not shared with the back end: {e}"))?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(fail("SET_MEM_TABLE"))?;
        for (i, (queue, kick)) in ctx.queues.iter().zip(&ctx.queue_evts).enumerate() {
            // A queue the driver did not enable has no rings to hand over.
            if !queue.ready() {
                continue;
            }
            // The back end takes ring addresses in the VMM's address space.
            let host = |addr: u64, what: &str| {
                ctx.mem
                    .get_host_address(GuestAddress(addr))
                    .map(|p| p as u64)
                    .map_err(|e| format!("queue {i} {what} at {addr:#x}: {e}"))
            };
            let rings = VringConfigData {
                queue_max_size: queue.max_size(),
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: host(queue.desc_table(), "descriptor table")?,
                used_ring_addr: host(queue.used_ring(), "used ring")?,
                avail_ring_addr: host(queue.avail_ring(), "available ring")?,
                log_addr: None,
            };
            self.frontend
                .set_vring_num(i, queue.size())
                .map_err(fail("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(i, &rings)
                .map_err(fail("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(i, queue.next_avail())
                .map_err(fail("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(i, &self.calls[i])
                .map_err(fail("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(i, kick)
                .map_err(fail("SET_VRING_KICK"))?;
            if self.protocol.is_some() {
                self.frontend
                    .set_vring_enable(i, true)
                    .map_err(fail("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE_FS
    }

    fn avail_features(&self) -> u64 {
        // The back end speaks virtio 1.x; no optional ring features.
        self.backend_features & (1u64 << VIRTIO_F_VERSION_1)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != NUM_QUEUES || ctx.queue_evts.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                got: ctx.queues.len(),
            });
        }
        self.hand_over(&ctx)
            .map_err(|e| ActivateError::Backend(format!("virtio-fs {}: {e}", self.tag)))?;
        self.interrupt = Some(Arc::clone(&ctx.interrupt));
        self.kicks = ctx.queue_evts;
        self.activate_evt.write(1).map_err(ActivateError::EventFd)?;
        Ok(())
    }

    fn reset(&mut self) -> bool {
        // The back end keeps its rings until it is told otherwise; a reset
        // driver gets a device that needs a reset.
        false
    }
}
