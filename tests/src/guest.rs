//! The test guests and their serial report.

use std::path::PathBuf;

/// The PVH ELF test guest.
pub fn pvh() -> PathBuf {
    PathBuf::from(env!("HUSK_TEST_GUEST_PVH"))
}

/// The bzImage test guest (Linux 64-bit boot protocol).
pub fn bzimage() -> PathBuf {
    PathBuf::from(env!("HUSK_TEST_GUEST_BZIMAGE"))
}

/// The virtio test guest (no_std Rust with polling virtio-mmio drivers).
pub fn virtio() -> PathBuf {
    PathBuf::from(env!("HUSK_VIRTIO_GUEST"))
}

/// Line the virtio guest prints when its test is done.
pub const VIRTIO_DONE: &str = "VIRTIO-GUEST-DONE";

/// The value of `key=` on the first line starting with `prefix`.
pub fn field<'a>(output: &'a str, prefix: &str, key: &str) -> Option<&'a str> {
    let line = output.lines().find(|l| l.starts_with(prefix))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// Parses a `0x…` number as the guests print them.
pub fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// Line the guest prints when its checks are done.
pub const MARKER: &str = "HUSK-TEST-GUEST-OK";

/// What the test guest reported.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// "pvh" or "linux".
    pub boot: String,
    /// Command line as the guest read it.
    pub cmdline: String,
    /// e820 entries (addr, size, type).
    pub e820: Vec<(u64, u64, u32)>,
    /// Initrd (addr, size, FNV-1a 32 of its bytes).
    pub initrd: (u64, u64, u32),
    /// Processors in the MP table.
    pub cpus: u32,
    /// CPUID leaf 1 (ECX, EBX) on the boot vCPU.
    pub cpuid1: (u32, u32),
    /// Whether the completion marker was printed.
    pub complete: bool,
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or(u64::MAX)
}

/// Parses the serial output of a test guest.
pub fn parse(output: &str) -> Report {
    let mut r = Report::default();
    for line in output.lines() {
        if let Some(v) = line.strip_prefix("HUSK-TEST-GUEST boot=") {
            r.boot = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("cmdline=") {
            r.cmdline = v.to_string();
        } else if let Some(v) = line.strip_prefix("e820 ") {
            let f: Vec<&str> = v.split_whitespace().collect();
            if f.len() == 3 {
                r.e820
                    .push((hex(f[0]), hex(f[1]), f[2].parse().unwrap_or(0)));
            }
        } else if let Some(v) = line.strip_prefix("initrd ") {
            let f: Vec<&str> = v.split_whitespace().collect();
            if f.len() == 3 {
                let fnv = f[2].trim_start_matches("fnv=");
                r.initrd = (hex(f[0]), hex(f[1]), hex(fnv) as u32);
            }
        } else if let Some(v) = line.strip_prefix("cpuid ") {
            let f: Vec<&str> = v.split_whitespace().collect();
            if f.len() == 2 {
                r.cpuid1 = (hex(f[0]) as u32, hex(f[1]) as u32);
            }
        } else if let Some(v) = line.strip_prefix("cpus=") {
            r.cpus = v.trim().parse().unwrap_or(0);
        } else if line.trim() == MARKER {
            r.complete = true;
        }
    }
    r
}

/// FNV-1a (32-bit), as the guest computes over the initrd.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_report() {
        let r = parse(
            "HUSK-TEST-GUEST boot=pvh\ncmdline=a b\ne820 0x0 0x9fc00 1\ninitrd 0x10 0x20 fnv=0xabc\ncpus=2\ncpuid 0x80000000 0x20800\nHUSK-TEST-GUEST-OK\n",
        );
        assert_eq!(r.boot, "pvh");
        assert_eq!(r.cmdline, "a b");
        assert_eq!(r.e820, vec![(0, 0x9fc00, 1)]);
        assert_eq!(r.initrd, (0x10, 0x20, 0xabc));
        assert_eq!(r.cpus, 2);
        assert_eq!(r.cpuid1, (0x8000_0000, 0x20800));
        assert!(r.complete);
    }

    #[test]
    fn fnv_known_value() {
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
    }
}
