//! A minimal cpio "newc" writer for test initramfs images (no external
//! tools needed).

/// One entry of the archive.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A directory.
    Dir(String),
    /// A regular file with mode bits and contents.
    File(String, u32, Vec<u8>),
    /// A symbolic link (path, target).
    Symlink(String, String),
    /// A character device (path, major, minor).
    CharDev(String, u32, u32),
}

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, size: usize, name: &str) {
    header_dev(out, ino, mode, size, name, (0, 0));
}

fn header_dev(out: &mut Vec<u8>, ino: u32, mode: u32, size: usize, name: &str, rdev: (u32, u32)) {
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        size as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        (name.len() + 1) as u32,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

fn data(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// Builds an uncompressed newc archive.
pub fn build(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        match e {
            Entry::Dir(name) => header(&mut out, ino, 0o040755, 0, name),
            Entry::File(name, mode, bytes) => {
                header(&mut out, ino, 0o100000 | mode, bytes.len(), name);
                data(&mut out, bytes);
            }
            Entry::Symlink(name, target) => {
                header(&mut out, ino, 0o120777, target.len(), name);
                data(&mut out, target.as_bytes());
            }
            Entry::CharDev(name, major, minor) => {
                header_dev(&mut out, ino, 0o020600, 0, name, (*major, *minor));
            }
        }
    }
    header(&mut out, 0, 0, 0, "TRAILER!!!");
    out
}

/// An initramfs with Debian's busybox-static at /bin/busybox and `init` as
/// the /init script.
pub fn busybox_initramfs(init: &str) -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox missing: apt-get install busybox-static");
    build(&[
        Entry::Dir("bin".into()),
        Entry::Dir("dev".into()),
        Entry::CharDev("dev/console".into(), 5, 1),
        Entry::Dir("proc".into()),
        Entry::Dir("sys".into()),
        Entry::Dir("tmp".into()),
        Entry::Dir("mnt".into()),
        Entry::File("bin/busybox".into(), 0o755, busybox),
        Entry::Symlink("bin/sh".into(), "busybox".into()),
        Entry::File("init".into(), 0o755, init.as_bytes().to_vec()),
    ])
}

/// An initramfs holding only `/dev/console` and the tiny static test init
/// (prints `HUSK-INIT-RAN`, then restarts the machine).
pub fn tiny_initramfs() -> Vec<u8> {
    let init = std::fs::read(env!("HUSK_TEST_INIT")).expect("test init");
    build(&[
        Entry::Dir("dev".into()),
        Entry::CharDev("dev/console".into(), 5, 1),
        Entry::File("init".into(), 0o755, init),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let a = build(&[Entry::File("x".into(), 0o644, b"hello".to_vec())]);
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        let s = String::from_utf8_lossy(&a);
        assert!(s.contains("x\0"));
        assert!(s.contains("hello"));
        assert!(s.contains("TRAILER!!!"));
        // Header fields are 8 hex digits: the file size 5.
        assert_eq!(&a[6 + 6 * 8..6 + 7 * 8], b"00000005");
    }
}
