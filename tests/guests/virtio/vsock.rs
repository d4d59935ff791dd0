//! virtio-vsock tests: an echo server on guest ports (zero-copy: echoed data
//! is sent straight from the receive buffer it arrived in), a guest-initiated
//! connection to the host, and malformed packets the device must survive.

use crate::io::{line, put_dec, puts};
use crate::virtio::{self, Device, F_WRITE};

const HDR: usize = 44;
const BUF_DATA: u32 = 16 * 1024;
const BUF_LEN: u32 = HDR as u32 + BUF_DATA;
const NBUF: u16 = 48;
const GUEST_BUF_ALLOC: u32 = 16 * 1024;
const MAX_CONNS: usize = 24;
const HOST_CID: u64 = 2;

const REQUEST: u16 = 1;
const RESPONSE: u16 = 2;
const RST: u16 = 3;
const SHUTDOWN: u16 = 4;
const RW: u16 = 5;
const CREDIT_UPDATE: u16 = 6;
const CREDIT_REQUEST: u16 = 7;

#[derive(Clone, Copy, Default)]
struct Pkt {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    ty: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

fn rd(addr: u64, n: usize) -> u64 {
    let mut v = 0u64;
    for i in 0..n {
        // SAFETY: memory owned by this driver.
        let b = unsafe { core::ptr::read_volatile((addr + i as u64) as *const u8) };
        v |= u64::from(b) << (8 * i);
    }
    v
}

fn wr(addr: u64, n: usize, v: u64) {
    for i in 0..n {
        // SAFETY: memory owned by this driver.
        unsafe { core::ptr::write_volatile((addr + i as u64) as *mut u8, (v >> (8 * i)) as u8) };
    }
}

impl Pkt {
    fn decode(a: u64) -> Pkt {
        Pkt {
            src_cid: rd(a, 8),
            dst_cid: rd(a + 8, 8),
            src_port: rd(a + 16, 4) as u32,
            dst_port: rd(a + 20, 4) as u32,
            len: rd(a + 24, 4) as u32,
            ty: rd(a + 28, 2) as u16,
            op: rd(a + 30, 2) as u16,
            flags: rd(a + 32, 4) as u32,
            buf_alloc: rd(a + 36, 4) as u32,
            fwd_cnt: rd(a + 40, 4) as u32,
        }
    }

    fn encode(&self, a: u64) {
        wr(a, 8, self.src_cid);
        wr(a + 8, 8, self.dst_cid);
        wr(a + 16, 4, u64::from(self.src_port));
        wr(a + 20, 4, u64::from(self.dst_port));
        wr(a + 24, 4, u64::from(self.len));
        wr(a + 28, 2, u64::from(self.ty));
        wr(a + 30, 2, u64::from(self.op));
        wr(a + 32, 4, u64::from(self.flags));
        wr(a + 36, 4, u64::from(self.buf_alloc));
        wr(a + 40, 4, u64::from(self.fwd_cnt));
    }
}

/// Most receive buffers held for one connection's pending echo.
const MAX_HELD: usize = 32;

#[derive(Clone, Copy, Default)]
struct Conn {
    used: bool,
    /// Receive buffers whose data is not echoed yet: (id, offset, len).
    held: [(u16, u32, u32); MAX_HELD],
    nheld: usize,
    local: u32,
    peer: u32,
    fwd: u32,
    fwd_sent: u32,
    tx_cnt: u32,
    peer_alloc: u32,
    peer_fwd: u32,
}

impl Conn {
    fn credit(&self) -> u32 {
        self.peer_alloc.saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd))
    }
}

struct Vs {
    dev: Device,
    cid: u64,
    rx_base: u64,
    hdr: u64,
    conns: [Conn; MAX_CONNS],
}

impl Vs {
    fn open(bases: &[usize]) -> Option<Vs> {
        let &base = bases.iter().find(|&&b| virtio::probe_id(b) == Some(19))?;
        let dev = match Device::init(base, 0, 3) {
            Ok(d) => d,
            Err(e) => {
                puts("vsock init failed: ");
                line(e);
                return None;
            }
        };
        let cid = u64::from(dev.config32(0)) | (u64::from(dev.config32(4)) << 32);
        let rx = virtio::alloc(usize::from(NBUF) * BUF_LEN as usize);
        let hdr = virtio::alloc(4096).as_ptr() as u64;
        let mut vs = Vs {
            dev,
            cid,
            rx_base: rx.as_ptr() as u64,
            hdr,
            conns: [Conn::default(); MAX_CONNS],
        };
        for i in 0..NBUF {
            vs.repost(i);
        }
        vs.dev.notify(0);
        Some(vs)
    }

    fn buf(&self, id: u16) -> u64 {
        self.rx_base + u64::from(id) * u64::from(BUF_LEN)
    }

    fn repost(&mut self, id: u16) {
        let addr = self.buf(id);
        let q = self.dev.queue(0);
        q.set_desc(id, addr, BUF_LEN, F_WRITE, 0);
        q.push_avail(id);
    }

    /// Sends a header, with `len` bytes of payload at `data`.
    fn send(&mut self, p: Pkt, data: u64) {
        p.encode(self.hdr);
        let mut chain = [(self.hdr, HDR as u32, false), (data, p.len, false)];
        let n = if p.len > 0 { 2 } else { 1 };
        if n == 2 {
            chain[1] = (data, p.len, false);
        }
        // Transmit descriptors live in the transmit queue's own table.
        let _ = self.dev.transfer(1, &chain[..n], 50_000_000);
    }

    fn reply(&mut self, c: &Conn, op: u16, len: u32, flags: u32) -> Pkt {
        Pkt {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port: c.local,
            dst_port: c.peer,
            len,
            ty: 1,
            op,
            flags,
            buf_alloc: GUEST_BUF_ALLOC,
            fwd_cnt: c.fwd,
        }
    }

    fn recv(&mut self, spins: u64) -> Option<(u16, Pkt)> {
        let (id, _len) = self.dev.queue(0).poll_used(spins)?;
        let id = id as u16;
        Some((id, Pkt::decode(self.buf(id))))
    }

    fn find(&self, p: &Pkt) -> Option<usize> {
        self.conns
            .iter()
            .position(|c| c.used && c.local == p.dst_port && c.peer == p.src_port)
    }

    /// Sends held data of connection `i` while credit lasts; reposts the
    /// buffers that are done.
    fn flush(&mut self, i: usize) {
        while self.conns[i].nheld > 0 {
            let (id, off, len) = self.conns[i].held[0];
            let credit = self.conns[i].credit();
            if credit == 0 {
                return;
            }
            let n = credit.min(len - off);
            let c = self.conns[i];
            let r = self.reply(&c, RW, n, 0);
            let data = self.buf(id) + HDR as u64 + u64::from(off);
            self.send(r, data);
            let c = &mut self.conns[i];
            c.tx_cnt = c.tx_cnt.wrapping_add(n);
            c.fwd = c.fwd.wrapping_add(n);
            if off + n < len {
                c.held[0].1 = off + n;
                continue;
            }
            c.held.copy_within(1..c.nheld, 0);
            c.nheld -= 1;
            self.repost(id);
            if self.conns[i].fwd.wrapping_sub(self.conns[i].fwd_sent) >= GUEST_BUF_ALLOC / 2 {
                self.control(i, CREDIT_UPDATE, 0);
            }
        }
    }

    /// Frees connection `i` and its held buffers.
    fn release(&mut self, i: usize) {
        for k in 0..self.conns[i].nheld {
            let id = self.conns[i].held[k].0;
            self.repost(id);
        }
        self.conns[i] = Conn::default();
    }

    fn control(&mut self, i: usize, op: u16, flags: u32) {
        let c = self.conns[i];
        let p = self.reply(&c, op, 0, flags);
        self.conns[i].fwd_sent = c.fwd;
        self.send(p, 0);
    }
}

/// Echo server on `port` (and an RST-on-first-data listener on `port + 1`)
/// until `conns` connections have ended.
pub fn echo(bases: &[usize], port: u32, conns: u32) {
    let Some(mut vs) = Vs::open(bases) else {
        line("vsock: no device");
        return;
    };
    puts("vsock listening cid=");
    put_dec(vs.cid);
    puts("\n");
    let mut served = 0;
    let mut echoed: u64 = 0;
    while served < conns {
        let Some((id, p)) = vs.recv(2_000_000_000) else {
            line("vsock timeout");
            return;
        };
        let known = vs.find(&p);
        if let Some(i) = known {
            vs.conns[i].peer_alloc = p.buf_alloc;
            vs.conns[i].peer_fwd = p.fwd_cnt;
        }
        match (p.op, known) {
            (REQUEST, None) if p.dst_port == port || p.dst_port == port + 1 => {
                if let Some(i) = vs.conns.iter().position(|c| !c.used) {
                    vs.conns[i] = Conn {
                        used: true,
                        local: p.dst_port,
                        peer: p.src_port,
                        peer_alloc: p.buf_alloc,
                        peer_fwd: p.fwd_cnt,
                        ..Conn::default()
                    };
                    vs.control(i, RESPONSE, 0);
                }
            }
            (REQUEST, _) => {
                let c = Conn {
                    local: p.dst_port,
                    peer: p.src_port,
                    ..Conn::default()
                };
                let r = vs.reply(&c, RST, 0, 0);
                vs.send(r, 0);
            }
            (RW, Some(i)) if vs.conns[i].local == port + 1 => {
                // The reset listener: close mid-stream from the guest side.
                vs.control(i, RST, 0);
                vs.release(i);
                served += 1;
            }
            (RW, Some(i)) => {
                // Echo straight from this receive buffer, as credit allows;
                // the buffer is reposted once all of it was sent.
                let n = vs.conns[i].nheld;
                if n == MAX_HELD {
                    vs.control(i, RST, 0);
                    vs.conns[i].used = false;
                    served += 1;
                } else {
                    vs.conns[i].held[n] = (id, 0, p.len);
                    vs.conns[i].nheld = n + 1;
                    echoed += u64::from(p.len);
                    vs.flush(i);
                    vs.dev.notify(0);
                    continue;
                }
            }
            (CREDIT_REQUEST, Some(i)) => vs.control(i, CREDIT_UPDATE, 0),
            (CREDIT_UPDATE, Some(i)) => vs.flush(i),
            (SHUTDOWN, Some(i)) => {
                vs.control(i, RST, 0);
                vs.release(i);
                served += 1;
            }
            (RST, Some(i)) => {
                vs.release(i);
                served += 1;
            }
            _ => {}
        }
        vs.repost(id);
        vs.dev.notify(0);
    }
    puts("vsock echo done conns=");
    put_dec(u64::from(served));
    puts(" bytes=");
    put_dec(echoed);
    puts("\n");
}

/// Sends malformed packets, then connects to host `port`, says hello and
/// prints the reply.
pub fn connect(bases: &[usize], port: u32) {
    let Some(mut vs) = Vs::open(bases) else {
        line("vsock: no device");
        return;
    };
    let mut c = Conn {
        used: true,
        local: 4000,
        peer: port,
        ..Conn::default()
    };
    // Hostile packets the device must drop: wrong source CID, bad type,
    // unknown op, oversized length, truncated payload.
    let mut bad = vs.reply(&c, REQUEST, 0, 0);
    bad.src_cid = 99;
    vs.send(bad, 0);
    let mut bad = vs.reply(&c, REQUEST, 0, 0);
    bad.ty = 7;
    vs.send(bad, 0);
    let mut bad = vs.reply(&c, 0x77, 0, 0);
    bad.op = 0x77;
    vs.send(bad, 0);
    let mut bad = vs.reply(&c, RW, 0, 0);
    bad.len = 1 << 30;
    bad.encode(vs.hdr);
    let _ = vs.dev.transfer(1, &[(vs.hdr, HDR as u32, false)], 50_000_000);
    let mut bad = vs.reply(&c, RW, 0, 0);
    bad.len = 100;
    bad.encode(vs.hdr);
    let _ = vs.dev.transfer(1, &[(vs.hdr, HDR as u32, false)], 50_000_000);
    // A device-writable transmit descriptor.
    let _ = vs.dev.transfer(1, &[(vs.hdr, HDR as u32, true)], 50_000_000);
    // RW on a connection that does not exist: the device resets it.
    let ghost_conn = Conn {
        local: 4001,
        peer: port,
        ..Conn::default()
    };
    let ghost = vs.reply(&ghost_conn, RW, 0, 0);
    vs.send(ghost, 0);
    line("vsock hostile sent");

    let req = vs.reply(&c, REQUEST, 0, 0);
    vs.send(req, 0);
    let msg = b"hello from the guest\n";
    let msgbuf = virtio::alloc(4096);
    msgbuf[..msg.len()].copy_from_slice(msg);
    let mut connected = false;
    for _ in 0..64 {
        let Some((id, p)) = vs.recv(2_000_000_000) else {
            line("vsock timeout");
            return;
        };
        c.peer_alloc = p.buf_alloc;
        c.peer_fwd = p.fwd_cnt;
        let mine = p.dst_port == c.local && p.src_port == c.peer;
        match p.op {
            RESPONSE if mine => {
                connected = true;
                line("vsock connected");
                let r = vs.reply(&c, RW, msg.len() as u32, 0);
                vs.send(r, msgbuf.as_ptr() as u64);
                c.tx_cnt += msg.len() as u32;
            }
            RW if mine => {
                let data = vs.buf(id) + HDR as u64;
                puts("vsock reply=");
                for k in 0..u64::from(p.len) {
                    let b = rd(data + k, 1) as u8;
                    if b != b'\n' {
                        crate::io::putc(b);
                    }
                }
                puts("\n");
                c.fwd += p.len;
                let s = vs.reply(&c, SHUTDOWN, 0, 3);
                vs.send(s, 0);
            }
            RST if mine => {
                puts("vsock rst connected=");
                put_dec(u64::from(connected));
                puts("\n");
                return;
            }
            RST if p.dst_port == 4001 => line("vsock ghost reset"),
            RST => line("vsock rst for another port"),
            _ => {}
        }
        vs.repost(id);
        vs.dev.notify(0);
    }
}
