//! virtio-fs: the FUSE exchange Linux's driver starts with, on the request
//! queue: INIT, LOOKUP of a file in the root, OPEN, READ, RELEASE; then a
//! LOOKUP of a name that does not exist. Prints what the back end answered.

use crate::io::{line, put_bytes, put_dec, puts};
use crate::virtio;

const FS_ID: u32 = 26;
const REQUEST_QUEUE: usize = 1;
const SPINS: u64 = 500_000_000;

const FUSE_LOOKUP: u32 = 1;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_RELEASE: u32 = 18;
const FUSE_INIT: u32 = 26;
const ROOT: u64 = 1;
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn get32(b: &[u8], off: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(x)
}

fn get64(b: &[u8], off: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(x)
}

struct Session {
    dev: virtio::Device,
    unique: u64,
}

impl Session {
    /// Sends `opcode` on `node` with `body`; returns (error, reply body)
    /// where the reply body is in a fresh buffer of `out_len` bytes.
    fn call(&mut self, opcode: u32, node: u64, body: &[u8], out_len: usize) -> Option<(i32, &'static [u8])> {
        self.unique += 1;
        let req = virtio::alloc(IN_HEADER + body.len());
        put32(req, 0, (IN_HEADER + body.len()) as u32);
        put32(req, 4, opcode);
        put64(req, 8, self.unique);
        put64(req, 16, node);
        put32(req, 32, 1); // pid
        req[IN_HEADER..IN_HEADER + body.len()].copy_from_slice(body);
        let resp = virtio::alloc(OUT_HEADER + out_len);
        let used = self.dev.transfer(
            REQUEST_QUEUE,
            &[
                (req.as_ptr() as u64, (IN_HEADER + body.len()) as u32, false),
                (resp.as_ptr() as u64, (OUT_HEADER + out_len) as u32, true),
            ],
            SPINS,
        )?;
        let len = (get32(resp, 0) as usize).min(used as usize).min(resp.len());
        if get64(resp, 8) != self.unique || len < OUT_HEADER {
            line("fs reply mismatch");
            return None;
        }
        Some((get32(resp, 4) as i32, &resp[OUT_HEADER..len]))
    }
}

fn report(what: &str, r: &Option<(i32, &[u8])>) -> bool {
    puts("fs ");
    puts(what);
    match r {
        Some((e, _)) => {
            puts(" error=");
            if *e < 0 {
                puts("-");
            }
            put_dec(u64::from(e.unsigned_abs()));
        }
        None => puts(" error=none"),
    }
    r.is_some_and(|(e, _)| e == 0)
}

pub fn fs_test(bases: &[usize], name: &[u8]) {
    let Some(&base) = bases.iter().find(|&&b| virtio::probe_id(b) == Some(FS_ID)) else {
        line("fs: no device");
        return;
    };
    let dev = match virtio::Device::init(base, 0, 2) {
        Ok(d) => d,
        Err(e) => {
            puts("fs init failed: ");
            line(e);
            return;
        }
    };
    let mut tag = [0u8; 36];
    for (i, chunk) in tag.chunks_mut(4).enumerate() {
        chunk.copy_from_slice(&dev.config32(i * 4).to_le_bytes());
    }
    let tag_len = tag.iter().position(|&c| c == 0).unwrap_or(tag.len());
    puts("fs config tag=");
    put_bytes(&tag[..tag_len]);
    puts(" request_queues=");
    put_dec(u64::from(dev.config32(36)));
    puts("\n");
    let mut s = Session { dev, unique: 0 };

    // INIT: protocol 7.31, no flags.
    let mut init = [0u8; 16];
    put32(&mut init, 0, 7);
    put32(&mut init, 4, 31);
    put32(&mut init, 8, 65536);
    let r = s.call(FUSE_INIT, 0, &init, 256);
    let ok = report("init", &r);
    if let Some((_, b)) = r.filter(|_| ok).filter(|(_, b)| b.len() >= 8) {
        puts(" major=");
        put_dec(u64::from(get32(b, 0)));
        puts(" minor=");
        put_dec(u64::from(get32(b, 4)));
    }
    puts("\n");
    if !ok {
        return;
    }

    // LOOKUP name in the root: fuse_entry_out (nodeid at 0, attr.size at 48).
    let mut lookup = [0u8; 256];
    let n = name.len().min(lookup.len() - 1);
    lookup[..n].copy_from_slice(&name[..n]);
    let r = s.call(FUSE_LOOKUP, ROOT, &lookup[..n + 1], 128);
    let ok = report("lookup", &r);
    let (mut node, mut size) = (0, 0);
    if let Some((_, b)) = r.filter(|_| ok).filter(|(_, b)| b.len() >= 56) {
        node = get64(b, 0);
        size = get64(b, 48);
        puts(" size=");
        put_dec(size);
    }
    puts("\n");
    if !ok {
        return;
    }

    // OPEN read-only: fuse_open_out (fh at 0).
    let r = s.call(FUSE_OPEN, node, &[0u8; 8], 16);
    let ok = report("open", &r);
    puts("\n");
    let Some(fh) = r.filter(|_| ok).filter(|(_, b)| b.len() >= 8).map(|(_, b)| get64(b, 0)) else {
        return;
    };

    // READ the whole file (at most 4 KiB).
    let want = size.min(4096) as u32;
    let mut read = [0u8; 40];
    put64(&mut read, 0, fh);
    put32(&mut read, 16, want);
    let r = s.call(FUSE_READ, node, &read, 4096);
    let ok = report("read", &r);
    if let Some((_, data)) = r.filter(|_| ok) {
        puts(" len=");
        put_dec(data.len() as u64);
        puts(" fnv=");
        crate::io::put_hex(u64::from(crate::io::fnv1a(data)));
        puts(" text=");
        let printable = data.iter().take(64).take_while(|&&c| (0x20..0x7f).contains(&c)).count();
        put_bytes(&data[..printable]);
    }
    puts("\n");

    // The back end's completion came back as the device's interrupt (the
    // VMM sets the used-buffer bit when virtiofsd signals its call
    // eventfd); wait for it a bounded while.
    let mut status = 0;
    for _ in 0..50_000_000u64 {
        status = s.dev.take_interrupt();
        if status & 1 != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    puts("fs interrupt used=");
    put_dec(u64::from(status & 1));
    puts("\n");

    let mut release = [0u8; 24];
    put64(&mut release, 0, fh);
    let r = s.call(FUSE_RELEASE, node, &release, 0);
    report("release", &r);
    puts("\n");

    // A name that is not there.
    let r = s.call(FUSE_LOOKUP, ROOT, b"no-such-file\0", 128);
    report("lookup-missing", &r);
    puts("\n");
}
