//! One stream connection between a guest port and a host Unix socket, with
//! the spec's credit accounting in both directions.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::packet::PacketHeader;

/// Receive buffer the host side advertises per connection: the most guest
/// data that may wait here for a slow host peer.
pub const BUF_ALLOC: u32 = 128 * 1024;

/// Life-cycle of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// The host client asked to connect; the guest has not answered yet.
    AwaitingResponse,
    /// Data flows.
    Established,
    /// The host peer will send no more (it shut down its writing side or
    /// closed); the guest was told with SHUTDOWN(SEND). Guest data still
    /// flows to the host until the guest is done too.
    HostClosed,
}

/// A connection.
#[derive(Debug)]
pub struct Connection {
    /// The host end.
    pub stream: UnixStream,
    /// Port on the host side.
    pub local_port: u32,
    /// Port on the guest side.
    pub peer_port: u32,
    /// State.
    pub state: ConnState,
    /// Guest data not yet written to the host peer (at most [`BUF_ALLOC`]).
    pub to_host: Vec<u8>,
    /// Guest bytes written to the host peer.
    pub fwd_cnt: u32,
    /// `fwd_cnt` last told to the guest.
    pub fwd_cnt_sent: u32,
    /// Bytes received from the guest (written or waiting).
    pub recv_cnt: u32,
    /// The guest's receive buffer.
    pub peer_buf_alloc: u32,
    /// Bytes the guest has consumed.
    pub peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    pub rx_cnt: u32,
    /// The host peer may have data (cleared on WouldBlock).
    pub readable: bool,
    /// Host bytes received before the connection was established.
    pub prefix: Vec<u8>,
    /// The guest will send no more data: shut the host write side down once
    /// `to_host` is written.
    pub guest_done_sending: bool,
    /// The guest will receive no more data.
    pub guest_done_receiving: bool,
    /// Interest registered with epoll.
    pub interest: EventSet,
}

impl Connection {
    /// A new connection in `state`.
    pub fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: ConnState) -> Self {
        Connection {
            stream,
            local_port,
            peer_port,
            state,
            to_host: Vec::new(),
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            recv_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            readable: false,
            prefix: Vec::new(),
            guest_done_sending: false,
            guest_done_receiving: false,
            interest: EventSet::IN,
        }
    }

    /// Takes the guest's credit information from any packet.
    pub fn update_peer_credit(&mut self, h: &PacketHeader) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// Bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the guest sent more than it was allowed to.
    pub fn would_overflow(&self, len: u32) -> bool {
        self.to_host.len() as u64 + u64::from(len) > u64::from(BUF_ALLOC)
    }

    /// Queues guest data for the host peer and writes what it can.
    pub fn push_to_host(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.recv_cnt = self.recv_cnt.wrapping_add(data.len() as u32);
        self.to_host.extend_from_slice(data);
        self.flush_to_host()
    }

    /// Writes pending guest data to the host peer.
    pub fn flush_to_host(&mut self) -> std::io::Result<()> {
        let mut written = 0;
        while written < self.to_host.len() {
            match self.stream.write(&self.to_host[written..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.to_host.drain(..written);
        self.fwd_cnt = self.fwd_cnt.wrapping_add(written as u32);
        if self.to_host.is_empty() && self.guest_done_sending {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    /// Whether the connection is over for the guest: it sends no more, and
    /// it receives no more or the host sends no more. What is left of the
    /// guest's data may still be on its way to the host.
    pub fn finished_for_guest(&self) -> bool {
        self.guest_done_sending
            && (self.guest_done_receiving || self.state == ConnState::HostClosed)
    }

    /// Whether the guest should be told that buffer space was freed: when
    /// its view of our free space fell below half.
    pub fn wants_credit_update(&self) -> bool {
        let unacked = self.recv_cnt.wrapping_sub(self.fwd_cnt_sent);
        self.fwd_cnt != self.fwd_cnt_sent && unacked > BUF_ALLOC / 2
    }

    /// Reads host data for the guest: from the pre-connection prefix first.
    pub fn read_for_guest(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.prefix.is_empty() {
            let n = buf.len().min(self.prefix.len());
            buf[..n].copy_from_slice(&self.prefix[..n]);
            self.prefix.drain(..n);
            return Ok(n);
        }
        self.stream.read(buf)
    }

    /// The epoll interest this connection needs now.
    pub fn desired_interest(&self, rx_starved: bool) -> EventSet {
        let mut set = EventSet::empty();
        if self.state == ConnState::Established
            && self.peer_credit() > 0
            && !rx_starved
            && !self.guest_done_receiving
        {
            set |= EventSet::IN;
        }
        if !self.to_host.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Connection::new(a, 1, 2, ConnState::Established), b)
    }

    #[test]
    fn credit_accounting() {
        let (mut c, _peer) = conn();
        assert_eq!(c.peer_credit(), 0);
        c.update_peer_credit(&PacketHeader {
            buf_alloc: 1000,
            fwd_cnt: 0,
            ..Default::default()
        });
        assert_eq!(c.peer_credit(), 1000);
        c.rx_cnt = 600;
        assert_eq!(c.peer_credit(), 400);
        c.rx_cnt = 1600;
        assert_eq!(c.peer_credit(), 0);
        // Counters wrap.
        c.rx_cnt = 5;
        c.peer_fwd_cnt = u32::MAX - 4;
        assert_eq!(c.peer_credit(), 990);
    }

    #[test]
    fn data_reaches_host_and_credit_updates() {
        let (mut c, mut peer) = conn();
        c.push_to_host(b"hello").unwrap();
        let mut buf = [0u8; 5];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(c.fwd_cnt, 5);
        assert!(!c.wants_credit_update());
        let big = vec![7u8; (BUF_ALLOC / 2 + 1) as usize];
        c.push_to_host(&big).unwrap();
        assert!(c.wants_credit_update());
        assert!(c.would_overflow(BUF_ALLOC + 1));
        assert!(!c.would_overflow(0));
    }
}
