//! virtio-net test: send an ARP request for the host's address through the
//! TAP and wait for the host kernel's ARP reply.

use crate::io::{put_dec, put_hex, puts};
use crate::virtio::{self, Device, F_WRITE};

const F_MAC: u64 = 1 << 5;
const HDR: usize = 12;
const RX_BUFS: u16 = 8;
const BUF_LEN: u32 = 2048;

fn parse_ip(s: &[u8]) -> Option<[u8; 4]> {
    let mut ip = [0u8; 4];
    let mut parts = s.split(|&c| c == b'.');
    for b in &mut ip {
        let p = parts.next()?;
        let mut v: u32 = 0;
        if p.is_empty() || p.len() > 3 {
            return None;
        }
        for &c in p {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(c - b'0');
        }
        *b = u8::try_from(v).ok()?;
    }
    parts.next().is_none().then_some(ip)
}

fn put_mac(mac: &[u8]) {
    for (i, b) in mac.iter().enumerate() {
        if i > 0 {
            puts(":");
        }
        let hex = b"0123456789abcdef";
        crate::io::putc(hex[usize::from(b >> 4)]);
        crate::io::putc(hex[usize::from(b & 15)]);
    }
}

fn read8(addr: u64) -> u8 {
    // SAFETY: memory owned by this driver.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

pub fn net_test(bases: &[usize], cmd: &[u8]) {
    let Some(&base) = bases.iter().find(|&&b| virtio::probe_id(b) == Some(1)) else {
        crate::io::line("net: no device");
        return;
    };
    let ip = parse_ip(crate::arg(cmd, b"net.ip=")).unwrap_or([0; 4]);
    let peer = parse_ip(crate::arg(cmd, b"net.peer=")).unwrap_or([0; 4]);
    let mut dev = match Device::init(base, F_MAC, 2) {
        Ok(d) => d,
        Err(e) => {
            puts("net init failed: ");
            crate::io::line(e);
            return;
        }
    };
    let mut mac = [0u8; 6];
    for (i, m) in mac.iter_mut().enumerate() {
        *m = read8((base + 0x100 + i) as u64);
    }
    puts("net mac=");
    put_mac(&mac);
    puts(" features=");
    put_hex(dev.features);
    puts("\n");

    // Receive buffers first.
    let rx_area = virtio::alloc(usize::from(RX_BUFS) * BUF_LEN as usize);
    let rx_base = rx_area.as_ptr() as u64;
    {
        let q = dev.queue(0);
        for i in 0..RX_BUFS {
            q.set_desc(i, rx_base + u64::from(i) * u64::from(BUF_LEN), BUF_LEN, F_WRITE, 0);
            q.push_avail(i);
        }
    }
    dev.notify(0);

    // ARP request: who has `peer`? tell `ip`.
    let frame = virtio::alloc(4096);
    let f = &mut frame[..HDR + 42];
    f[HDR..HDR + 6].copy_from_slice(&[0xff; 6]);
    f[HDR + 6..HDR + 12].copy_from_slice(&mac);
    f[HDR + 12..HDR + 14].copy_from_slice(&[0x08, 0x06]);
    let arp = &mut f[HDR + 14..];
    arp[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp[8..14].copy_from_slice(&mac);
    arp[14..18].copy_from_slice(&ip);
    arp[18..24].copy_from_slice(&[0; 6]);
    arp[24..28].copy_from_slice(&peer);
    let sent = dev.transfer(1, &[(frame.as_ptr() as u64, (HDR + 42) as u32, false)], 20_000_000);
    puts("net tx used=");
    put_dec(u64::from(sent.unwrap_or(u32::MAX)));
    puts("\n");

    let mut frames = 0;
    let mut reposted: u16 = 0;
    while frames < 64 {
        let Some((id, len)) = dev.queue(0).poll_used(50_000_000) else {
            crate::io::line("net rx timeout");
            return;
        };
        frames += 1;
        let buf = rx_base + u64::from(id) * u64::from(BUF_LEN);
        let at = |off: usize| read8(buf + off as u64);
        let ethertype = (u16::from(at(HDR + 12)) << 8) | u16::from(at(HDR + 13));
        let oper = (u16::from(at(HDR + 20)) << 8) | u16::from(at(HDR + 21));
        let spa = [at(HDR + 28), at(HDR + 29), at(HDR + 30), at(HDR + 31)];
        if ethertype == 0x0806 && oper == 2 && spa == peer && len as usize >= HDR + 42 {
            let mut sha = [0u8; 6];
            for (i, b) in sha.iter_mut().enumerate() {
                *b = at(HDR + 22 + i);
            }
            puts("net arp-reply sha=");
            put_mac(&sha);
            puts(" len=");
            put_dec(u64::from(len));
            puts("\n");
            return;
        }
        puts("net rx other ethertype=");
        put_hex(u64::from(ethertype));
        puts("\n");
        // Give the buffer back.
        let q = dev.queue(0);
        q.set_desc(id as u16, buf, BUF_LEN, F_WRITE, 0);
        q.push_avail(id as u16);
        reposted += 1;
        dev.notify(0);
    }
    let _ = reposted;
    crate::io::line("net no arp reply");
}
