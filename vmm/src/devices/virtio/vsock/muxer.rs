//! Connections between guest ports and host Unix sockets: the listener for
//! host-initiated connections and their `CONNECT <port>` handshake, outgoing
//! connections to `<uds_path>_<port>`, control packets waiting for the
//! guest, and round-robin selection of the next data packet.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use event_manager::{EventOps, Events};
use vmm_sys_util::epoll::EventSet;

use super::HOST_CID;
use super::connection::{BUF_ALLOC, ConnState, Connection};
use super::packet::{MAX_PAYLOAD, PacketHeader, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, op};
use crate::logger::RateLimiter;

/// Event token of a connection's stream.
pub const STREAM: u32 = 10;
/// Event token of a host client still in its handshake.
pub const HANDSHAKE: u32 = 11;

/// Most connections (established or not) at once.
pub const MAX_CONNECTIONS: usize = 512;
/// Longest `CONNECT <port>\n` line.
const MAX_HANDSHAKE: usize = 32;
/// First port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

type Key = (u32, u32); // (local port, guest port)

struct Handshake {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// All connections of one vsock device.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: BTreeMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    /// Connections the guest is done with whose last guest data is still
    /// being written to the host peer.
    draining: HashMap<RawFd, Connection>,
    handshakes: HashMap<RawFd, Handshake>,
    control: VecDeque<PacketHeader>,
    next_local_port: u32,
    last_served: Option<Key>,
    /// The guest has no receive buffers: stop reading host sockets.
    pub rx_starved: bool,
    warn: RateLimiter,
}

impl std::fmt::Debug for Muxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer")
            .field("uds_path", &self.uds_path)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl Muxer {
    /// A muxer serving `listener` (bound at `uds_path`).
    pub fn new(guest_cid: u64, uds_path: PathBuf, listener: UnixListener) -> Self {
        Muxer {
            guest_cid,
            uds_path,
            listener,
            conns: BTreeMap::new(),
            by_fd: HashMap::new(),
            draining: HashMap::new(),
            handshakes: HashMap::new(),
            control: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            last_served: None,
            rx_starved: false,
            warn: RateLimiter::new(10, Duration::from_secs(5)),
        }
    }

    /// The listening socket.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    fn header(&self, local_port: u32, peer_port: u32, op: u16, fwd_cnt: u32) -> PacketHeader {
        header(self.guest_cid, local_port, peer_port, op, fwd_cnt)
    }

    fn queue_control(&mut self, key: Key, op: u16, flags: u32) {
        let fwd = self.conns.get(&key).map_or(0, |c| c.fwd_cnt);
        let mut h = self.header(key.0, key.1, op, fwd);
        h.flags = flags;
        if let Some(c) = self.conns.get_mut(&key) {
            c.fwd_cnt_sent = c.fwd_cnt;
        }
        self.control.push_back(h);
    }

    fn remove(&mut self, key: Key, ops: &mut EventOps) {
        if let Some(c) = self.conns.remove(&key) {
            let fd = c.stream.as_raw_fd();
            self.by_fd.remove(&fd);
            let _ = ops.remove(Events::with_data_raw(fd, STREAM, c.interest));
        }
    }

    fn reset(&mut self, key: Key, ops: &mut EventOps) {
        self.queue_control(key, op::RST, 0);
        self.remove(key, ops);
    }

    /// Ends a connection the guest is done with: the guest gets its RST at
    /// once; the host peer gets the guest's last data, then EOF.
    fn finish(&mut self, key: Key, ops: &mut EventOps) {
        self.queue_control(key, op::RST, 0);
        let Some(mut c) = self.conns.remove(&key) else {
            return;
        };
        let fd = c.stream.as_raw_fd();
        self.by_fd.remove(&fd);
        if c.flush_to_host().is_ok() && !c.to_host.is_empty() {
            let want = EventSet::OUT;
            if ops.modify(Events::with_data_raw(fd, STREAM, want)).is_ok() {
                c.interest = want;
                self.draining.insert(fd, c);
                return;
            }
        }
        let _ = ops.remove(Events::with_data_raw(fd, STREAM, c.interest));
    }

    /// Writes more of a finished connection's last data; drops it when all
    /// is written or the host peer is gone.
    fn drain(&mut self, fd: RawFd, ops: &mut EventOps) {
        let Some(c) = self.draining.get_mut(&fd) else {
            return;
        };
        if c.flush_to_host().is_ok() && !c.to_host.is_empty() {
            return;
        }
        if let Some(c) = self.draining.remove(&fd) {
            let _ = ops.remove(Events::with_data_raw(fd, STREAM, c.interest));
        }
    }

    /// Connections that count against [`MAX_CONNECTIONS`].
    fn open_connections(&self) -> usize {
        self.conns.len() + self.handshakes.len() + self.draining.len()
    }

    fn add_conn(&mut self, conn: Connection, ops: &mut EventOps) {
        let key = (conn.local_port, conn.peer_port);
        let fd = conn.stream.as_raw_fd();
        let interest = conn.interest;
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        if let Err(e) = ops.add(Events::with_data_raw(fd, STREAM, interest)) {
            log::error!("vsock: cannot watch a connection: {e:?}");
        }
    }

    /// Brings a connection's epoll interest up to date.
    fn refresh(&mut self, key: Key, ops: &mut EventOps) {
        let starved = self.rx_starved;
        if let Some(c) = self.conns.get_mut(&key) {
            let want = c.desired_interest(starved);
            if want != c.interest {
                let fd = c.stream.as_raw_fd();
                if ops.modify(Events::with_data_raw(fd, STREAM, want)).is_ok() {
                    c.interest = want;
                }
            }
        }
    }

    /// Re-evaluates every connection (after the guest posted receive buffers).
    pub fn refresh_all(&mut self, ops: &mut EventOps) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for k in keys {
            self.refresh(k, ops);
        }
    }

    /// Accepts host clients waiting on the listener.
    pub fn accept(&mut self, ops: &mut EventOps) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.open_connections() >= MAX_CONNECTIONS {
                        if self.warn.allow() {
                            log::warn!("vsock: connection limit reached; refusing a host client");
                        }
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    if ops
                        .add(Events::with_data_raw(fd, HANDSHAKE, EventSet::IN))
                        .is_ok()
                    {
                        self.handshakes.insert(
                            fd,
                            Handshake {
                                stream,
                                buf: Vec::new(),
                            },
                        );
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    if self.warn.allow() {
                        log::warn!("vsock: accept failed: {e}");
                    }
                    break;
                }
            }
        }
    }

    fn drop_handshake(&mut self, fd: RawFd, ops: &mut EventOps) {
        if self.handshakes.remove(&fd).is_some() {
            let _ = ops.remove(Events::with_data_raw(fd, HANDSHAKE, EventSet::IN));
        }
    }

    /// Reads a host client's `CONNECT <port>\n` line.
    pub fn handshake_event(&mut self, fd: RawFd, ops: &mut EventOps) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut chunk = [0u8; 64];
        let n = match hs.stream.read(&mut chunk) {
            Ok(0) => {
                self.drop_handshake(fd, ops);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => {
                self.drop_handshake(fd, ops);
                return;
            }
        };
        hs.buf.extend_from_slice(&chunk[..n]);
        let Some(nl) = hs.buf.iter().position(|&b| b == b'\n') else {
            if hs.buf.len() > MAX_HANDSHAKE {
                self.drop_handshake(fd, ops);
            }
            return;
        };
        let port = std::str::from_utf8(&hs.buf[..nl])
            .ok()
            .and_then(|l| l.trim_end_matches('\r').strip_prefix("CONNECT "))
            .and_then(|p| p.trim().parse::<u32>().ok());
        let prefix = hs.buf[nl + 1..].to_vec();
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        let _ = ops.remove(Events::with_data_raw(fd, HANDSHAKE, EventSet::IN));
        let Some(peer_port) = port else {
            // Not a valid handshake: close without answering.
            return;
        };
        let local_port = self.alloc_local_port(peer_port);
        let mut conn = Connection::new(
            hs.stream,
            local_port,
            peer_port,
            ConnState::AwaitingResponse,
        );
        conn.prefix = prefix;
        conn.interest = EventSet::empty();
        self.add_conn(conn, ops);
        self.queue_control((local_port, peer_port), op::REQUEST, 0);
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(p, peer_port)) {
                return p;
            }
        }
    }

    /// Readiness of a connection's host socket.
    pub fn stream_event(&mut self, fd: RawFd, set: EventSet, ops: &mut EventOps) {
        let Some(&key) = self.by_fd.get(&fd) else {
            self.drain(fd, ops);
            return;
        };
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if set.contains(EventSet::OUT) {
            if c.flush_to_host().is_err() {
                self.reset(key, ops);
                return;
            }
            if c.wants_credit_update() {
                self.queue_control(key, op::CREDIT_UPDATE, 0);
            }
        }
        if let Some(c) = self.conns.get_mut(&key) {
            if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP) {
                c.readable = true;
            }
        }
        self.refresh(key, ops);
    }

    /// Handles one packet from the guest (its payload already read).
    pub fn guest_packet(&mut self, h: &PacketHeader, payload: &[u8], ops: &mut EventOps) {
        let key = (h.dst_port, h.src_port);
        if h.op == op::REQUEST {
            self.guest_connect(h, ops);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if h.op != op::RST {
                // Nothing known about this connection: reset it.
                let mut r = self.header(h.dst_port, h.src_port, op::RST, 0);
                r.buf_alloc = 0;
                self.control.push_back(r);
            }
            return;
        };
        c.update_peer_credit(h);
        match h.op {
            op::RESPONSE => {
                if c.state != ConnState::AwaitingResponse {
                    self.reset(key, ops);
                    return;
                }
                c.state = ConnState::Established;
                // A fresh socket has room for this short line; a blocking
                // write keeps it out of the guest data accounting.
                let ok = format!("OK {}\n", c.local_port);
                let written = c.stream.set_nonblocking(false).is_ok()
                    && std::io::Write::write_all(&mut c.stream, ok.as_bytes()).is_ok()
                    && c.stream.set_nonblocking(true).is_ok();
                if !written {
                    self.reset(key, ops);
                    return;
                }
                c.readable = true;
            }
            op::RW => {
                if c.state == ConnState::AwaitingResponse || c.guest_done_sending {
                    self.reset(key, ops);
                    return;
                }
                if c.would_overflow(h.len) {
                    if self.warn.allow() {
                        log::warn!(
                            "vsock: guest port {} exceeded its credit; reset",
                            h.src_port
                        );
                    }
                    self.reset(key, ops);
                    return;
                }
                if c.push_to_host(payload).is_err() {
                    self.reset(key, ops);
                    return;
                }
                if c.wants_credit_update() {
                    self.queue_control(key, op::CREDIT_UPDATE, 0);
                }
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => self.queue_control(key, op::CREDIT_UPDATE, 0),
            op::SHUTDOWN => {
                c.guest_done_receiving |= h.flags & SHUTDOWN_RCV != 0;
                if h.flags & SHUTDOWN_SEND != 0 {
                    c.guest_done_sending = true;
                    if c.flush_to_host().is_err() {
                        self.reset(key, ops);
                        return;
                    }
                }
                if c.finished_for_guest() {
                    self.finish(key, ops);
                    return;
                }
            }
            op::RST => {
                self.remove(key, ops);
                return;
            }
            _ => {}
        }
        self.refresh(key, ops);
    }

    fn guest_connect(&mut self, h: &PacketHeader, ops: &mut EventOps) {
        let key = (h.dst_port, h.src_port);
        if self.conns.contains_key(&key) || self.open_connections() >= MAX_CONNECTIONS {
            self.reset(key, ops);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", h.dst_port));
        let stream = match UnixStream::connect(&path) {
            Ok(s) if s.set_nonblocking(true).is_ok() => s,
            _ => {
                let r = self.header(h.dst_port, h.src_port, op::RST, 0);
                self.control.push_back(r);
                return;
            }
        };
        let mut conn = Connection::new(stream, h.dst_port, h.src_port, ConnState::Established);
        conn.update_peer_credit(h);
        conn.interest = conn.desired_interest(self.rx_starved);
        self.add_conn(conn, ops);
        self.queue_control(key, op::RESPONSE, 0);
    }

    /// Whether a packet is waiting for the guest.
    pub fn has_pending(&self) -> bool {
        !self.control.is_empty()
            || self.conns.values().any(|c| {
                c.state == ConnState::Established
                    && c.readable
                    && !c.guest_done_receiving
                    && c.peer_credit() > 0
            })
    }

    /// The next packet for the guest, with at most `max_payload` bytes of
    /// data written to `buf`.
    pub fn next_packet(
        &mut self,
        max_payload: usize,
        buf: &mut [u8],
        ops: &mut EventOps,
    ) -> Option<(PacketHeader, usize)> {
        if let Some(h) = self.control.pop_front() {
            return Some((h, 0));
        }
        // Round robin over connections, starting after the last one served.
        let start = self.last_served;
        let keys: Vec<Key> = match start {
            Some(k) => self
                .conns
                .range((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded))
                .chain(self.conns.range(..=k))
                .map(|(k, _)| *k)
                .collect(),
            None => self.conns.keys().copied().collect(),
        };
        for key in keys {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            if c.state != ConnState::Established || !c.readable || c.guest_done_receiving {
                continue;
            }
            let credit = c.peer_credit() as usize;
            let n = max_payload
                .min(credit)
                .min(MAX_PAYLOAD as usize)
                .min(buf.len());
            if n == 0 {
                continue;
            }
            match c.read_for_guest(&mut buf[..n]) {
                Ok(0) => {
                    // The host peer sends no more (half-close or close):
                    // the guest reads EOF and may still send. A host peer
                    // that closed altogether shows when a write fails.
                    c.state = ConnState::HostClosed;
                    c.readable = false;
                    self.last_served = Some(key);
                    let mut h = header(self.guest_cid, key.0, key.1, op::SHUTDOWN, c.fwd_cnt);
                    h.flags = SHUTDOWN_SEND;
                    if c.finished_for_guest() {
                        // The RST follows the SHUTDOWN.
                        self.finish(key, ops);
                    } else {
                        self.refresh(key, ops);
                    }
                    return Some((h, 0));
                }
                Ok(read) => {
                    c.rx_cnt = c.rx_cnt.wrapping_add(read as u32);
                    c.fwd_cnt_sent = c.fwd_cnt;
                    let mut h = header(self.guest_cid, key.0, key.1, op::RW, c.fwd_cnt);
                    h.len = read as u32;
                    self.last_served = Some(key);
                    self.refresh(key, ops);
                    return Some((h, read));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    c.readable = false;
                    self.refresh(key, ops);
                }
                Err(_) => {
                    self.reset(key, ops);
                    self.last_served = Some(key);
                    return self.control.pop_back().map(|h| (h, 0));
                }
            }
        }
        None
    }

    /// Drops every connection (device reset).
    pub fn clear(&mut self, ops: &mut EventOps) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for k in keys {
            self.remove(k, ops);
        }
        for (fd, c) in self.draining.drain() {
            let _ = ops.remove(Events::with_data_raw(fd, STREAM, c.interest));
        }
        let fds: Vec<RawFd> = self.handshakes.keys().copied().collect();
        for fd in fds {
            self.drop_handshake(fd, ops);
        }
        self.control.clear();
    }
}

/// A host-to-guest header.
fn header(guest_cid: u64, local_port: u32, peer_port: u32, op: u16, fwd_cnt: u32) -> PacketHeader {
    PacketHeader {
        src_cid: HOST_CID,
        dst_cid: guest_cid,
        src_port: local_port,
        dst_port: peer_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: BUF_ALLOC,
        fwd_cnt,
    }
}
