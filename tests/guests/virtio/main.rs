//! husk virtio test guest: a freestanding no_std program that drives
//! husk-vmm's virtio-mmio devices the way Linux's drivers do (strict
//! negotiation, split queues, notifications), but polling, and prints what
//! it observed for the integration tests to check. The test to run comes
//! from `test=` on the command line; devices come from the
//! `virtio_mmio.device=` entries the VMM put there.
//!
//! Built by tests/build.rs with rustc directly (no SSE: a PVM host emulates
//! every instruction of this guest).

#![no_std]
#![no_main]

mod blk;
mod entry;
mod fs;
mod io;
mod net;
mod virtio;
mod vsock;

use io::{line, put_bytes, put_dec, put_hex, puts};

/// The command line (NUL-terminated C string in guest memory).
fn cmdline(start_info: u64) -> &'static [u8] {
    // SAFETY: start_info points to the hvm_start_info the VMM wrote; its
    // cmdline_paddr (offset 24) points to a NUL-terminated string in RAM.
    unsafe {
        let p = core::ptr::read_volatile((start_info + 24) as *const u64) as *const u8;
        if p.is_null() {
            return &[];
        }
        let mut n = 0;
        while *p.add(n) != 0 && n < 4096 {
            n += 1;
        }
        core::slice::from_raw_parts(p, n)
    }
}

fn parse_dec(s: &[u8]) -> Option<u32> {
    if s.is_empty() {
        return None;
    }
    let mut v: u32 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u32::from(c - b'0'))?;
    }
    Some(v)
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    let s = s.strip_prefix(b"0x")?;
    let mut v: u64 = 0;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = v.checked_mul(16)?.checked_add(u64::from(d))?;
    }
    Some(v)
}

/// Bases of the `virtio_mmio.device=<size>@<base>:<irq>` entries.
pub fn devices(cmd: &[u8], out: &mut [usize; 16]) -> usize {
    let mut n = 0;
    for word in cmd.split(|&c| c == b' ') {
        if let Some(rest) = word.strip_prefix(b"virtio_mmio.device=") {
            let Some(at) = rest.iter().position(|&c| c == b'@') else { continue };
            let rest = &rest[at + 1..];
            let end = rest.iter().position(|&c| c == b':').unwrap_or(rest.len());
            if let Some(base) = parse_hex(&rest[..end]) {
                if n < out.len() {
                    out[n] = base as usize;
                    n += 1;
                }
            }
        }
    }
    n
}

pub fn arg<'a>(cmd: &'a [u8], key: &[u8]) -> &'a [u8] {
    for word in cmd.split(|&c| c == b' ') {
        if let Some(v) = word.strip_prefix(key) {
            return v;
        }
    }
    &[]
}

fn rng_test(bases: &[usize]) {
    for &base in bases {
        if virtio::probe_id(base) != Some(4) {
            continue;
        }
        let mut dev = match virtio::Device::init(base, 0, 1) {
            Ok(d) => d,
            Err(e) => {
                puts("rng init failed: ");
                line(e);
                return;
            }
        };
        for round in 0..2 {
            let buf = virtio::alloc(4096);
            let len = dev.transfer(0, &[(buf.as_ptr() as u64, 64, true)], 5_000_000);
            puts("rng round=");
            put_dec(round);
            puts(" len=");
            put_dec(u64::from(len.unwrap_or(u32::MAX)));
            puts(" fnv=");
            put_hex(u64::from(io::fnv1a(&buf[..64])));
            puts("\n");
        }
        // A device-readable buffer is a malformed request: nothing is written.
        let buf = virtio::alloc(4096);
        let len = dev.transfer(0, &[(buf.as_ptr() as u64, 64, false)], 5_000_000);
        puts("rng readonly len=");
        put_dec(u64::from(len.unwrap_or(u32::MAX)));
        puts("\n");
        // Larger than the per-request cap: capped.
        let big = virtio::alloc(256 * 1024);
        let len = dev.transfer(0, &[(big.as_ptr() as u64, 256 * 1024, true)], 50_000_000);
        puts("rng big len=");
        put_dec(u64::from(len.unwrap_or(u32::MAX)));
        puts("\n");
        return;
    }
    line("rng: no device");
}

#[unsafe(no_mangle)]
pub extern "C" fn rust_main(start_info: u64) -> ! {
    let cmd = cmdline(start_info);
    line("VIRTIO-GUEST start");
    let mut bases = [0usize; 16];
    let n = devices(cmd, &mut bases);
    let bases = &bases[..n];
    for &b in bases {
        puts("dev ");
        put_hex(b as u64);
        puts(" id=");
        put_dec(u64::from(virtio::probe_id(b).unwrap_or(0)));
        puts("\n");
    }
    let test = arg(cmd, b"test=");
    match test {
        b"rng" => rng_test(bases),
        b"fs" => fs::fs_test(bases, arg(cmd, b"fs.file=")),
        b"blk" => blk::blk_test(bases),
        b"hostile" => blk::hostile_test(bases),
        b"net" => net::net_test(bases, cmd),
        b"blk-bench" => blk::bench(bases, parse_dec(arg(cmd, b"bench.n=")).unwrap_or(1000)),
        b"vsock-echo" => {
            let port = parse_dec(arg(cmd, b"vsock.port=")).unwrap_or(1234);
            let conns = parse_dec(arg(cmd, b"vsock.conns=")).unwrap_or(1);
            vsock::echo(bases, port, conns);
        }
        b"vsock-connect" => vsock::connect(bases, parse_dec(arg(cmd, b"vsock.port=")).unwrap_or(5000)),
        b"flush" => {
            blk::flush_test(bases);
            line("FLUSHED");
            io::halt();
        }
        _ => {
            puts("unknown test: ");
            put_bytes(test);
            puts("\n");
        }
    }
    line("VIRTIO-GUEST-DONE");
    io::reset()
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    line("VIRTIO-GUEST panic");
    io::reset()
}

// The compiler may call these; no libc here. Byte loops with volatile
// accesses so that they are not turned back into calls to themselves.

/// # Safety
/// Standard C semantics.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller guarantees both ranges are valid.
        unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i))) };
    }
    dst
}

/// # Safety
/// Standard C semantics.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) < (src as usize) {
        for i in 0..n {
            // SAFETY: the caller guarantees both ranges are valid.
            unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i))) };
        }
    } else {
        for i in (0..n).rev() {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i))) };
        }
    }
    dst
}

/// # Safety
/// Standard C semantics.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller guarantees the range is valid.
        unsafe { core::ptr::write_volatile(dst.add(i), c as u8) };
    }
    dst
}

/// # Safety
/// Standard C semantics.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller guarantees both ranges are valid.
        let (x, y) = unsafe { (core::ptr::read_volatile(a.add(i)), core::ptr::read_volatile(b.add(i))) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// Standard C semantics.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: forwarded.
    unsafe { memcmp(a, b, n) }
}

/// Referenced by the precompiled `core`; never called with panic=abort.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
