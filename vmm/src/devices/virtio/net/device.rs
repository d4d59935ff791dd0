//! The network device: two queues (receive 0, transmit 1), MAC in the
//! configuration space, frames moved between the queues and the TAP.

use std::sync::Arc;
use std::time::Duration;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::tap::{TUN_F_CSUM, TUN_F_TSO_ECN, TUN_F_TSO4, TUN_F_TSO6, Tap, TapError};
use crate::config::{NetworkInterfaceConfig, RateLimiterConfig};
use crate::devices::virtio::{
    ActivateContext, ActivateError, Interrupt, VIRTIO_F_VERSION_1, VirtioDevice, device_type,
    read_config_bytes,
};
use crate::logger::RateLimiter;

const QUEUE_SIZE: u16 = 256;
/// Largest frame handled, vnet header included (64 KiB TSO frame + header).
pub const MAX_FRAME: usize = 65_562;
const VNET_HDR_LEN: usize = 12;

const VIRTIO_NET_F_CSUM: u32 = 0;
const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
const VIRTIO_NET_F_MAC: u32 = 5;
const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
const VIRTIO_NET_F_GUEST_ECN: u32 = 9;
const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
const VIRTIO_NET_F_HOST_ECN: u32 = 13;

/// Errors creating a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TAP could not be opened.
    #[error("network interface {iface}: {source}")]
    Tap {
        /// `iface_id`.
        iface: String,
        /// Underlying error.
        #[source]
        source: TapError,
    },
    /// The MAC address is malformed.
    #[error("network interface {0}: guest_mac must look like 06:00:00:00:00:01")]
    Mac(String),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// A rate limiter could not be set up.
    #[error("network interface {iface}: {source}")]
    RateLimiter {
        /// Interface name.
        iface: String,
        /// Underlying error.
        #[source]
        source: crate::rate_limiter::RateLimiterError,
    },
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub(super) struct Active {
    pub(super) mem: GuestMemoryMmap,
    pub(super) rx: Queue,
    pub(super) tx: Queue,
    pub(super) rx_evt: EventFd,
    pub(super) tx_evt: EventFd,
    pub(super) interrupt: Arc<Interrupt>,
}

/// Counters of one network device.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Frames sent to the TAP.
    pub tx_frames: u64,
    /// Frames dropped (too large, malformed, TAP errors).
    pub dropped: u64,
}

/// A virtio-net device.
pub struct Net {
    pub(super) iface: String,
    pub(super) tap: Tap,
    mac: Option<[u8; 6]>,
    config: Vec<u8>,
    pub(super) activate_evt: EventFd,
    pub(super) active: Option<Active>,
    pub(super) registered: bool,
    /// Whether the TAP is watched for readability (off while the guest has
    /// no receive buffers).
    pub(super) tap_watched: bool,
    /// The length of the frame in `rx_frame` that waits for a receive
    /// buffer or the receive limiter.
    pending: Option<usize>,
    /// The frame read from the TAP last (kept while it is pending).
    rx_frame: Vec<u8>,
    /// The frame being sent; apart from `rx_frame`, so that sending never
    /// overwrites a received frame that waits.
    tx_frame: Vec<u8>,
    warn: RateLimiter,
    /// Counters.
    pub counters: NetCounters,
    /// Limits on frames to the guest (`rx_rate_limiter`).
    pub(super) rx_limiter: crate::rate_limiter::RateLimiter,
    /// Limits on frames from the guest (`tx_rate_limiter`).
    pub(super) tx_limiter: crate::rate_limiter::RateLimiter,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("iface", &self.iface)
            .field("tap", &self.tap.name())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Net {
    /// Opens the TAP of `cfg` and sets up its rate limiters.
    pub fn new(cfg: &NetworkInterfaceConfig) -> Result<Self, NetError> {
        let iface = cfg.iface_id.as_str();
        let limiter = |c: &Option<RateLimiterConfig>| {
            crate::rate_limiter::RateLimiter::new(c.as_ref()).map_err(|source| {
                NetError::RateLimiter {
                    iface: iface.to_string(),
                    source,
                }
            })
        };
        let rx_limiter = limiter(&cfg.rx_rate_limiter)?;
        let tx_limiter = limiter(&cfg.tx_rate_limiter)?;
        let (host_dev_name, mac) = (cfg.host_dev_name.as_str(), cfg.guest_mac.as_deref());
        let mac = match mac {
            Some(m) => Some(parse_mac(m).ok_or_else(|| NetError::Mac(iface.to_string()))?),
            None => None,
        };
        let tap = Tap::open(host_dev_name).map_err(|source| NetError::Tap {
            iface: iface.to_string(),
            source,
        })?;
        let config = mac.map(|m| m.to_vec()).unwrap_or_default();
        Ok(Net {
            iface: iface.to_string(),
            tap,
            mac,
            config,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(NetError::EventFd)?,
            active: None,
            registered: false,
            tap_watched: false,
            pending: None,
            rx_frame: vec![0; MAX_FRAME],
            tx_frame: vec![0; MAX_FRAME],
            warn: RateLimiter::new(10, Duration::from_secs(5)),
            counters: NetCounters::default(),
            rx_limiter,
            tx_limiter,
        })
    }

    fn notify(active: &mut Active, rx: bool) {
        let q = if rx { &mut active.rx } else { &mut active.tx };
        if !matches!(q.needs_notification(&active.mem), Ok(false)) {
            active.interrupt.signal_used_queue();
        }
    }

    /// Replaces the rate limits given (`PATCH /network-interfaces/{id}`;
    /// `None` leaves one as it is).
    pub fn update_rate_limiters(
        &mut self,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) {
        if let Some(rx) = rx {
            self.rx_limiter.update(Some(rx));
        }
        if let Some(tx) = tx {
            self.tx_limiter.update(Some(tx));
        }
    }

    /// How many frames had to wait for a rate limiter (receive, transmit).
    pub fn throttled(&self) -> (u64, u64) {
        (self.rx_limiter.throttled(), self.tx_limiter.throttled())
    }

    /// Moves frames from the TAP into receive buffers. Returns false when
    /// the guest ran out of receive buffers or the receive limiter makes
    /// frames wait (stop watching the TAP until either changes).
    pub fn process_rx(&mut self) -> bool {
        let Some(mut active) = self.active.take() else {
            return false;
        };
        let mut delivered = false;
        let mut have_buffers = true;
        while !self.rx_limiter.is_blocked() {
            let len = match self.pending.take() {
                Some(len) => len,
                None => match self.tap.read_frame(&mut self.rx_frame) {
                    Ok(len) => len,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        if self.warn.allow() {
                            log::warn!("virtio-net {}: TAP read failed: {e}", self.iface);
                        }
                        break;
                    }
                },
            };
            if len < VNET_HDR_LEN {
                self.counters.dropped += 1;
                continue;
            }
            // A buffer first, then the limiter: a frame that waits for
            // buffers must not be paid for twice.
            let Some(chain) = active.rx.pop_descriptor_chain(&active.mem) else {
                self.pending = Some(len);
                have_buffers = false;
                break;
            };
            if !self.rx_limiter.consume((len - VNET_HDR_LEN) as u64) {
                // Delivered when the limiter's timer fires.
                active.rx.go_to_previous_position();
                self.pending = Some(len);
                break;
            }
            let head = chain.head_index();
            let mut written = 0usize;
            let mut ok = true;
            for desc in chain {
                if written == len {
                    break;
                }
                if !desc.is_write_only() {
                    ok = false;
                    break;
                }
                let n = (desc.len() as usize).min(len - written);
                if active
                    .mem
                    .write_slice(&self.rx_frame[written..written + n], desc.addr())
                    .is_err()
                {
                    ok = false;
                    break;
                }
                written += n;
            }
            if !ok || written < len {
                // Malformed or too small: the frame is dropped, the buffer
                // returned empty.
                self.counters.dropped += 1;
                if self.warn.allow() {
                    log::warn!(
                        "virtio-net {}: receive buffer {head} unusable for a {len}-byte frame",
                        self.iface
                    );
                }
                written = 0;
            } else {
                self.counters.rx_frames += 1;
            }
            if active
                .rx
                .add_used(&active.mem, head, written as u32)
                .is_err()
            {
                if self.warn.allow() {
                    log::warn!("virtio-net {}: cannot return descriptor {head}", self.iface);
                }
                continue;
            }
            delivered = true;
        }
        if delivered {
            Self::notify(&mut active, true);
        }
        self.active = Some(active);
        have_buffers && !self.rx_limiter.is_blocked()
    }

    /// Sends every frame the guest queued for transmission.
    pub fn process_tx(&mut self) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mut used_any = false;
        let mut frame = std::mem::take(&mut self.tx_frame);
        while !self.tx_limiter.is_blocked() {
            let Some(chain) = active.tx.pop_descriptor_chain(&active.mem) else {
                break;
            };
            let head = chain.head_index();
            let mut len = 0usize;
            let mut ok = true;
            for desc in chain {
                let n = desc.len() as usize;
                if desc.is_write_only() || len + n > MAX_FRAME {
                    ok = false;
                    break;
                }
                if active
                    .mem
                    .read_slice(&mut frame[len..len + n], desc.addr())
                    .is_err()
                {
                    ok = false;
                    break;
                }
                len += n;
            }
            if ok && len >= VNET_HDR_LEN && !self.tx_limiter.consume((len - VNET_HDR_LEN) as u64) {
                // Sent when the limiter's timer fires.
                active.tx.go_to_previous_position();
                break;
            }
            if ok && len >= VNET_HDR_LEN {
                match self.tap.write_frame(&frame[..len]) {
                    Ok(_) => self.counters.tx_frames += 1,
                    Err(e) => {
                        self.counters.dropped += 1;
                        if self.warn.allow() {
                            log::warn!("virtio-net {}: TAP write failed: {e}", self.iface);
                        }
                    }
                }
            } else {
                self.counters.dropped += 1;
                if self.warn.allow() {
                    log::warn!("virtio-net {}: malformed transmit chain {head}", self.iface);
                }
            }
            if active.tx.add_used(&active.mem, head, 0).is_err() {
                continue;
            }
            used_any = true;
        }
        self.tx_frame = frame;
        if used_any {
            Self::notify(&mut active, false);
        }
        self.active = Some(active);
    }

    fn tap_offloads(features: u64) -> u32 {
        let has = |bit: u32| features & (1u64 << bit) != 0;
        let mut flags = 0;
        if has(VIRTIO_NET_F_GUEST_CSUM) {
            flags |= TUN_F_CSUM;
            if has(VIRTIO_NET_F_GUEST_TSO4) {
                flags |= TUN_F_TSO4;
            }
            if has(VIRTIO_NET_F_GUEST_TSO6) {
                flags |= TUN_F_TSO6;
            }
            if has(VIRTIO_NET_F_GUEST_ECN) {
                flags |= TUN_F_TSO_ECN;
            }
        }
        flags
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn avail_features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_NET_F_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_TSO4)
            | (1 << VIRTIO_NET_F_GUEST_TSO6)
            | (1 << VIRTIO_NET_F_GUEST_ECN)
            | (1 << VIRTIO_NET_F_HOST_TSO4)
            | (1 << VIRTIO_NET_F_HOST_TSO6)
            | (1 << VIRTIO_NET_F_HOST_ECN);
        if self.mac.is_some() {
            f |= 1 << VIRTIO_NET_F_MAC;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 2 || ctx.queue_evts.len() != 2 {
            return Err(ActivateError::QueueCount {
                expected: 2,
                got: ctx.queues.len(),
            });
        }
        self.tap
            .set_offload(Self::tap_offloads(ctx.acked_features))
            .map_err(|e| ActivateError::Backend(e.to_string()))?;
        let tx = ctx.queues.remove(1);
        let rx = ctx.queues.remove(0);
        let tx_evt = ctx.queue_evts.remove(1);
        let rx_evt = ctx.queue_evts.remove(0);
        self.pending = None;
        self.active = Some(Active {
            mem: ctx.mem,
            rx,
            tx,
            rx_evt,
            tx_evt,
            interrupt: ctx.interrupt,
        });
        self.activate_evt.write(1).map_err(ActivateError::EventFd)
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.pending = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("06:00:ac:10:00:02"),
            Some([6, 0, 0xac, 0x10, 0, 2])
        );
        assert_eq!(parse_mac("06:00:ac:10:00"), None);
        assert_eq!(parse_mac("06:00:ac:10:00:02:03"), None);
        assert_eq!(parse_mac("6:0:ac:10:0:2"), None);
        assert_eq!(parse_mac("zz:00:ac:10:00:02"), None);
    }

    #[test]
    fn offloads_follow_features() {
        assert_eq!(Net::tap_offloads(0), 0);
        let all = (1 << VIRTIO_NET_F_GUEST_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_TSO4)
            | (1 << VIRTIO_NET_F_GUEST_TSO6);
        assert_eq!(Net::tap_offloads(all), TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
        // TSO without checksum offload is not enabled.
        assert_eq!(Net::tap_offloads(1 << VIRTIO_NET_F_GUEST_TSO4), 0);
    }
}
