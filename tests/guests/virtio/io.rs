//! Port I/O, the serial console and small formatting helpers (no core::fmt,
//! to keep the code to plain integer instructions).

pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O to the emulated devices of the test VM.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack)) }
}

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port I/O to the emulated devices of the test VM.
    unsafe { core::arch::asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack)) }
    v
}

pub fn putc(c: u8) {
    outb(0x3f8, c);
}

pub fn puts(s: &str) {
    for b in s.bytes() {
        putc(b);
    }
}

pub fn put_bytes(s: &[u8]) {
    for &b in s {
        putc(b);
    }
}

pub fn put_hex(v: u64) {
    puts("0x");
    let mut started = false;
    for i in (0..16).rev() {
        let d = ((v >> (i * 4)) & 0xf) as u8;
        if d != 0 || started || i == 0 {
            started = true;
            putc(if d < 10 { b'0' + d } else { b'a' + d - 10 });
        }
    }
}

pub fn put_dec(mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put_bytes(&buf[i..]);
}

pub fn line(s: &str) {
    puts(s);
    putc(b'\n');
}

/// FNV-1a (32-bit) as the tests compute it.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Resets the machine through the i8042 (husk-vmm ends with status 0).
pub fn reset() -> ! {
    outb(0x64, 0xfe);
    // QEMU's isa-debug-exit, for runs under a peer VMM.
    outb(0xf4, 0);
    loop {
        // SAFETY: halting with interrupts off only stops this vCPU.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) }
    }
}

/// Stops here until the VMM is killed.
pub fn halt() -> ! {
    loop {
        // SAFETY: as above.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) }
    }
}
