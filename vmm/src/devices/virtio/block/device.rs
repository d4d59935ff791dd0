//! The block device: configuration space, the file backend and request
//! execution.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::request::{ID_BYTES, Request, RequestType, SECTOR_SIZE};
use crate::config::DriveConfig;
use crate::devices::virtio::single_queue::ActiveQueue;
use crate::devices::virtio::{
    ActivateContext, ActivateError, VIRTIO_F_VERSION_1, VirtioDevice, device_type,
    read_config_bytes,
};
use crate::logger::RateLimiter;

const QUEUE_SIZE: u16 = 256;
const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
const VIRTIO_BLK_F_RO: u32 = 5;
const VIRTIO_BLK_F_FLUSH: u32 = 9;

const VIRTIO_BLK_S_OK: u8 = 0;
const VIRTIO_BLK_S_IOERR: u8 = 1;
const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Errors setting up a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The backing file could not be opened.
    #[error("drive {id}: cannot open {path}: {source}")]
    Open {
        /// Drive ID.
        id: String,
        /// Path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The backing file is not a regular file or block device.
    #[error("drive {id}: {path} is not a regular file or block device")]
    NotAFile {
        /// Drive ID.
        id: String,
        /// Path.
        path: PathBuf,
    },
    /// The size could not be read.
    #[error("drive {id}: cannot read the size of {path}: {source}")]
    Size {
        /// Drive ID.
        id: String,
        /// Path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// The rate limiter could not be set up.
    #[error("drive {id}: {source}")]
    RateLimiter {
        /// Drive ID.
        id: String,
        /// Underlying error.
        #[source]
        source: crate::rate_limiter::RateLimiterError,
    },
}

/// Counters of one block device.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockCounters {
    /// Requests completed with OK.
    pub ok: u64,
    /// Requests failed (malformed, I/O error, read-only).
    pub failed: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Flushes.
    pub flushes: u64,
}

/// A virtio-blk device.
pub struct Block {
    id: String,
    file: File,
    read_only: bool,
    capacity_sectors: u64,
    config: Vec<u8>,
    pub(super) activate_evt: EventFd,
    pub(super) active: Option<ActiveQueue>,
    pub(super) queue_registered: bool,
    warn: RateLimiter,
    buf: Vec<u8>,
    /// Counters.
    pub counters: BlockCounters,
    /// Bandwidth and request limits (`rate_limiter` of the drive).
    pub(super) limiter: crate::rate_limiter::RateLimiter,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("id", &self.id)
            .field("read_only", &self.read_only)
            .field("capacity_sectors", &self.capacity_sectors)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn file_size(file: &File, path: &Path, id: &str) -> Result<u64, BlockError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = file.metadata().map_err(|source| BlockError::Size {
        id: id.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    let ft = meta.file_type();
    if ft.is_file() {
        Ok(meta.len())
    } else if ft.is_block_device() {
        use std::io::Seek;
        let mut f = file;
        f.seek(std::io::SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                id: id.to_string(),
                path: path.to_path_buf(),
                source,
            })
    } else {
        Err(BlockError::NotAFile {
            id: id.to_string(),
            path: path.to_path_buf(),
        })
    }
}

impl Block {
    /// Opens the drive's backing file.
    pub fn new(cfg: &DriveConfig) -> Result<Self, BlockError> {
        let path = &cfg.path_on_host;
        let file = OpenOptions::new()
            .read(true)
            .write(!cfg.is_read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                id: cfg.drive_id.clone(),
                path: path.clone(),
                source,
            })?;
        let size = file_size(&file, path, &cfg.drive_id)?;
        let capacity_sectors = size / SECTOR_SIZE;
        if size % SECTOR_SIZE != 0 {
            log::warn!(
                "drive {}: size {size} is not a multiple of {SECTOR_SIZE}; the tail is not visible",
                cfg.drive_id
            );
        }
        // Configuration space: capacity (le64), size_max (le32), seg_max (le32).
        let mut config = Vec::with_capacity(16);
        config.extend_from_slice(&capacity_sectors.to_le_bytes());
        config.extend_from_slice(&0u32.to_le_bytes());
        config.extend_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        Ok(Block {
            id: cfg.drive_id.clone(),
            file,
            read_only: cfg.is_read_only,
            capacity_sectors,
            config,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(BlockError::EventFd)?,
            active: None,
            queue_registered: false,
            warn: RateLimiter::new(10, Duration::from_secs(5)),
            buf: Vec::new(),
            counters: BlockCounters::default(),
            limiter: crate::rate_limiter::RateLimiter::new(cfg.rate_limiter.as_ref()).map_err(
                |source| BlockError::RateLimiter {
                    id: cfg.drive_id.clone(),
                    source,
                },
            )?,
        })
    }

    /// The drive ID.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Replaces the rate limits (`PATCH /drives/{id}`); what waited under
    /// the old ones is served on the event loop.
    pub fn update_rate_limiter(&mut self, config: Option<&crate::config::RateLimiterConfig>) {
        self.limiter.update(config);
    }

    /// How many requests had to wait for the rate limiter.
    pub fn throttled(&self) -> u64 {
        self.limiter.throttled()
    }

    fn execute(&mut self, req: &Request, mem: &GuestMemoryMmap) -> (u8, u32) {
        // Parsing bounds the sectors of reads and writes by the capacity;
        // other requests ignore the field, which holds whatever the guest
        // wrote (so no overflow on it).
        let mut offset = req.sector.saturating_mul(SECTOR_SIZE);
        match req.kind {
            RequestType::In => {
                let mut written = 0u32;
                for &(addr, len) in &req.data {
                    self.buf.resize(len as usize, 0);
                    if self.file.read_exact_at(&mut self.buf, offset).is_err()
                        || mem.write_slice(&self.buf, addr).is_err()
                    {
                        return (VIRTIO_BLK_S_IOERR, written);
                    }
                    offset += u64::from(len);
                    written += len;
                }
                self.counters.read_bytes += u64::from(written);
                (VIRTIO_BLK_S_OK, written)
            }
            RequestType::Out => {
                if self.read_only {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                for &(addr, len) in &req.data {
                    self.buf.resize(len as usize, 0);
                    if mem.read_slice(&mut self.buf, addr).is_err()
                        || self.file.write_all_at(&self.buf, offset).is_err()
                    {
                        return (VIRTIO_BLK_S_IOERR, 0);
                    }
                    offset += u64::from(len);
                }
                self.counters.write_bytes += req.data_len;
                (VIRTIO_BLK_S_OK, 0)
            }
            RequestType::Flush => {
                self.counters.flushes += 1;
                if self.read_only || self.file.sync_all().is_ok() {
                    (VIRTIO_BLK_S_OK, 0)
                } else {
                    (VIRTIO_BLK_S_IOERR, 0)
                }
            }
            RequestType::GetId => {
                let mut id = [0u8; ID_BYTES as usize];
                let n = self.id.len().min(id.len());
                id[..n].copy_from_slice(&self.id.as_bytes()[..n]);
                match req.data.first() {
                    Some(&(addr, _)) if mem.write_slice(&id, addr).is_ok() => {
                        (VIRTIO_BLK_S_OK, ID_BYTES)
                    }
                    _ => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            RequestType::Unsupported(_) => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    }

    /// Serves every available request; returns whether any was completed.
    pub fn process_queue(&mut self) -> bool {
        let Some(mut active) = self.active.take() else {
            return false;
        };
        let mut used_any = false;
        while !self.limiter.is_blocked() {
            let Some(chain) = active.queue.pop_descriptor_chain(&active.mem) else {
                break;
            };
            let head = chain.head_index();
            let (status, status_addr, len) =
                match Request::parse(chain, &active.mem, self.capacity_sectors) {
                    Ok(req) => {
                        if !self.limiter.consume(req.data_len) {
                            // Served when the limiter's timer fires.
                            active.queue.go_to_previous_position();
                            break;
                        }
                        let (status, len) = self.execute(&req, &active.mem);
                        (status, Some(req.status), len)
                    }
                    Err((e, status_only)) => {
                        if self.warn.allow() {
                            log::warn!("virtio-blk {}: request {head} failed: {e}", self.id);
                        }
                        (VIRTIO_BLK_S_IOERR, status_only.0, 0)
                    }
                };
            if status == VIRTIO_BLK_S_OK {
                self.counters.ok += 1;
            } else {
                self.counters.failed += 1;
            }
            let mut used_len = len;
            if let Some(addr) = status_addr {
                if active.mem.write_obj(status, addr).is_ok() {
                    used_len += 1;
                }
            }
            if active.queue.add_used(&active.mem, head, used_len).is_err() {
                if self.warn.allow() {
                    log::warn!("virtio-blk {}: cannot return descriptor {head}", self.id);
                }
                continue;
            }
            used_any = true;
        }
        if used_any {
            active.notify_used();
        }
        self.active = Some(active);
        used_any
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn avail_features(&self) -> u64 {
        let mut f =
            (1u64 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX);
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
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
