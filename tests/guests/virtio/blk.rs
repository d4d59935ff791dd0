//! virtio-blk tests: identity, reads, writes, flush, read-only drives,
//! unsupported requests, and malformed descriptor chains.

use crate::io::{line, put_dec, put_hex, puts};
use crate::virtio::{self, Device, F_NEXT, F_WRITE};

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const F_RO: u64 = 1 << 5;
const F_SEG_MAX: u64 = 1 << 2;
const F_FLUSH: u64 = 1 << 9;
const SPINS: u64 = 20_000_000;

/// Request header, data area and status byte in one allocation.
struct Req {
    hdr: u64,
    data: u64,
    status: u64,
}

fn new_req(kind: u32, sector: u64, data_len: usize) -> Req {
    let mem = virtio::alloc(4096 + data_len);
    let base = mem.as_mut_ptr() as u64;
    // SAFETY: the header lies in the fresh allocation.
    unsafe {
        core::ptr::write_volatile(base as *mut u32, kind);
        core::ptr::write_volatile((base + 4) as *mut u32, 0);
        core::ptr::write_volatile((base + 8) as *mut u64, sector);
        core::ptr::write_volatile((base + 16) as *mut u8, 0xff);
    }
    Req {
        hdr: base,
        status: base + 16,
        data: base + 4096,
    }
}

fn status_of(r: &Req) -> u8 {
    // SAFETY: the status byte lies in the request's allocation.
    unsafe { core::ptr::read_volatile(r.status as *const u8) }
}

fn data_of(r: &Req, len: usize) -> &'static mut [u8] {
    // SAFETY: the data area lies in the request's allocation.
    unsafe { core::slice::from_raw_parts_mut(r.data as *mut u8, len) }
}

fn simple(dev: &mut Device, kind: u32, sector: u64, data: Option<(&[u8], bool)>) -> (u8, u32, Req) {
    let len = data.map_or(0, |d| d.0.len());
    let r = new_req(kind, sector, len);
    let mut chain: [(u64, u32, bool); 3] = [(0, 0, false); 3];
    let mut n = 0;
    chain[n] = (r.hdr, 16, false);
    n += 1;
    if let Some((bytes, device_writes)) = data {
        if !device_writes {
            data_of(&r, len).copy_from_slice(bytes);
        }
        chain[n] = (r.data, len as u32, device_writes);
        n += 1;
    }
    chain[n] = (r.status, 1, true);
    n += 1;
    let used = dev.transfer(0, &chain[..n], SPINS).unwrap_or(u32::MAX);
    (status_of(&r), used, r)
}

fn report(n: usize, what: &str, status: u8, extra: Option<u32>) {
    puts("blk ");
    put_dec(n as u64);
    puts(" ");
    puts(what);
    puts(" status=");
    put_dec(u64::from(status));
    if let Some(fnv) = extra {
        puts(" fnv=");
        put_hex(u64::from(fnv));
    }
    puts("\n");
}

fn open(base: usize) -> Option<Device> {
    match Device::init(base, F_RO | F_FLUSH | F_SEG_MAX, 1) {
        Ok(d) => Some(d),
        Err(e) => {
            puts("blk init failed: ");
            line(e);
            None
        }
    }
}

pub fn pattern(n: usize) -> [u8; 4096] {
    let mut p = [0u8; 4096];
    for (i, b) in p.iter_mut().enumerate() {
        *b = (i * 7 + n * 13 + 1) as u8;
    }
    p
}

pub fn blk_test(bases: &[usize]) {
    let mut n = 0;
    for &base in bases {
        if virtio::probe_id(base) != Some(2) {
            continue;
        }
        let Some(mut dev) = open(base) else { return };
        let cap = u64::from(dev.config32(0)) | (u64::from(dev.config32(4)) << 32);
        let ro = dev.features & F_RO != 0;
        let (st, _, r) = simple(&mut dev, T_GET_ID, 0, Some((&[0u8; 20], true)));
        let id = data_of(&r, 20);
        let id_len = id.iter().position(|&b| b == 0).unwrap_or(20);
        puts("blk ");
        put_dec(n as u64);
        puts(" id=");
        crate::io::put_bytes(&id[..id_len]);
        puts(" cap=");
        put_dec(cap);
        puts(" ro=");
        put_dec(u64::from(ro));
        puts(" idstatus=");
        put_dec(u64::from(st));
        puts("\n");

        let (st, _, r) = simple(&mut dev, T_IN, 0, Some((&[0u8; 4096], true)));
        report(n, "read0", st, Some(crate::io::fnv1a(data_of(&r, 4096))));

        let pat = pattern(n);
        let (st, _, _) = simple(&mut dev, T_OUT, 8, Some((&pat, false)));
        report(n, "write8", st, None);
        let (st, _, _) = simple(&mut dev, T_FLUSH, 0, None);
        report(n, "flush", st, None);
        let (st, _, r) = simple(&mut dev, T_IN, 8, Some((&[0u8; 4096], true)));
        report(n, "read8", st, Some(crate::io::fnv1a(data_of(&r, 4096))));
        let (st, _, _) = simple(&mut dev, 77, 0, None);
        report(n, "unsupported", st, None);
        let (st, _, _) = simple(&mut dev, T_IN, cap - 1, Some((&[0u8; 1024], true)));
        report(n, "beyond", st, None);
        n += 1;
    }
}

/// Writes a pattern to sector 8 of the first drive and flushes it.
pub fn flush_test(bases: &[usize]) {
    for &base in bases {
        if virtio::probe_id(base) != Some(2) {
            continue;
        }
        let Some(mut dev) = open(base) else { return };
        let pat = pattern(0);
        let (st, _, _) = simple(&mut dev, T_OUT, 8, Some((&pat, false)));
        report(0, "write8", st, None);
        let (st, _, _) = simple(&mut dev, T_FLUSH, 0, None);
        report(0, "flush", st, None);
        return;
    }
}

fn hostile_report(name: &str, status: u8, used: Option<(u32, u32)>) {
    puts("hostile ");
    puts(name);
    puts(" status=");
    put_dec(u64::from(status));
    puts(" used=");
    match used {
        Some((_, len)) => put_dec(u64::from(len)),
        None => puts("none"),
    }
    puts("\n");
}

/// Raw chain on queue 0: descriptors (addr, len, flags, next), head index.
fn raw(dev: &mut Device, descs: &[(u64, u32, u16, u16)], head: u16, spins: u64) -> Option<(u32, u32)> {
    let q = dev.queue(0);
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        q.set_desc(i as u16, addr, len, flags, next);
    }
    q.push_avail(head);
    let qi = q.index;
    dev.notify(qi);
    dev.queue(0).poll_used(spins)
}

pub fn hostile_test(bases: &[usize]) {
    let Some(&base) = bases.iter().find(|&&b| virtio::probe_id(b) == Some(2)) else {
        line("hostile: no block device");
        return;
    };
    let Some(mut dev) = open(base) else { return };

    // Data buffer outside guest memory.
    let r = new_req(T_IN, 0, 512);
    let used = raw(
        &mut dev,
        &[(r.hdr, 16, F_NEXT, 1), (0xffff_ffff_0000, 512, F_WRITE | F_NEXT, 2), (r.status, 1, F_WRITE, 0)],
        0,
        SPINS,
    );
    hostile_report("outside-memory", status_of(&r), used);

    // Header in a device-writable descriptor.
    let r = new_req(T_IN, 0, 512);
    let used = raw(&mut dev, &[(r.hdr, 16, F_WRITE | F_NEXT, 1), (r.status, 1, F_WRITE, 0)], 0, SPINS);
    hostile_report("writable-header", status_of(&r), used);

    // Read into a device-readable buffer.
    let r = new_req(T_IN, 0, 512);
    let used = raw(
        &mut dev,
        &[(r.hdr, 16, F_NEXT, 1), (r.data, 512, F_NEXT, 2), (r.status, 1, F_WRITE, 0)],
        0,
        SPINS,
    );
    hostile_report("wrong-direction", status_of(&r), used);

    // A descriptor that loops to itself: the chain ends after the queue size.
    let r = new_req(T_IN, 0, 512);
    let used = raw(&mut dev, &[(r.hdr, 16, F_NEXT, 1), (r.data, 512, F_WRITE | F_NEXT, 1)], 0, SPINS);
    hostile_report("loop", status_of(&r), used);

    // A next index beyond the queue.
    let r = new_req(T_IN, 0, 512);
    let used = raw(&mut dev, &[(r.hdr, 16, F_NEXT, 200)], 0, SPINS);
    hostile_report("bad-next", status_of(&r), used);

    // Zero-length data and status descriptors.
    let r = new_req(T_IN, 0, 512);
    let used = raw(
        &mut dev,
        &[(r.hdr, 16, F_NEXT, 1), (r.data, 0, F_WRITE | F_NEXT, 2), (r.status, 0, F_WRITE, 0)],
        0,
        SPINS,
    );
    hostile_report("zero-length", status_of(&r), used);

    // Oversized transfer (32 MiB, above the per-request cap).
    let big = virtio::alloc(32 << 20);
    let r = new_req(T_IN, 0, 0);
    let used = raw(
        &mut dev,
        &[(r.hdr, 16, F_NEXT, 1), (big.as_ptr() as u64, 32 << 20, F_WRITE | F_NEXT, 2), (r.status, 1, F_WRITE, 0)],
        0,
        SPINS,
    );
    hostile_report("oversized", status_of(&r), used);

    // A chain head index beyond the queue: no completion can come back.
    let used = raw(&mut dev, &[], 300, 200_000);
    hostile_report("bad-head", 0, used);

    // The device still works.
    let (st, _, r) = simple(&mut dev, T_IN, 0, Some((&[0u8; 4096], true)));
    puts("hostile sane status=");
    put_dec(u64::from(st));
    puts(" fnv=");
    put_hex(u64::from(crate::io::fnv1a(data_of(&r, 4096))));
    puts(" devstatus=");
    put_hex(u64::from(dev.status()));
    puts("\n");
}

/// Benchmark: `n` sequential 4 KiB reads from the first drive, between two
/// marker lines the host times.
pub fn bench(bases: &[usize], n: u32) {
    let Some(&base) = bases.iter().find(|&&b| virtio::probe_id(b) == Some(2)) else {
        line("bench: no block device");
        return;
    };
    let Some(mut dev) = open(base) else { return };
    let cap = u64::from(dev.config32(0)) | (u64::from(dev.config32(4)) << 32);
    let r = new_req(T_IN, 0, 4096);
    line("BENCH-START");
    let mut failed = 0u32;
    for i in 0..n {
        let sector = (u64::from(i) * 8) % (cap - 8);
        // SAFETY: the header lies in the request's allocation.
        unsafe {
            core::ptr::write_volatile((r.hdr + 8) as *mut u64, sector);
            core::ptr::write_volatile(r.status as *mut u8, 0xff);
        }
        let used = dev.transfer(0, &[(r.hdr, 16, false), (r.data, 4096, true), (r.status, 1, true)], SPINS);
        if used.is_none() || status_of(&r) != 0 {
            failed += 1;
        }
    }
    puts("BENCH-END n=");
    put_dec(u64::from(n));
    puts(" failed=");
    put_dec(u64::from(failed));
    puts("\n");
}
