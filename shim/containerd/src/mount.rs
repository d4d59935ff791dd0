//! Mounting the rootfs mounts containerd passes in CreateTaskRequest (an
//! overlay from the overlayfs snapshotter, or a bind mount) on the
//! bundle's `rootfs`, which is then shared with the VM or imaged; and
//! recognising a snapshot that is a block device (devmapper's, or an
//! image file mounted with `loop` as the blockfile snapshotter gives it),
//! which the VM gets as its root drive instead.

use std::path::Path;

use husk_host::rootfs::BlockRoot;
use nix::mount::{MsFlags, mount};

/// A mount as containerd describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// File system type (`overlay`, `bind`, …).
    pub fstype: String,
    /// Source.
    pub source: String,
    /// Options (`ro`, `lowerdir=…`).
    pub options: Vec<String>,
}

/// The block device or image file of `mounts`, if they are one mount of
/// ext4 or erofs whose source is a block device, or a regular file with
/// the `loop` option.
pub fn block_root(mounts: &[MountSpec]) -> Option<BlockRoot> {
    use std::os::unix::fs::FileTypeExt;
    let [m] = mounts else { return None };
    if !matches!(m.fstype.as_str(), "ext4" | "erofs") {
        return None;
    }
    let kind = std::fs::metadata(&m.source).ok()?.file_type();
    let looped = m.options.iter().any(|o| o == "loop");
    if !(kind.is_block_device() || kind.is_file() && looped) {
        return None;
    }
    Some(BlockRoot {
        path: m.source.clone().into(),
        fstype: m.fstype.clone(),
        read_only: m.fstype == "erofs" || m.options.iter().any(|o| o == "ro"),
    })
}

/// Splits options into mount flags and the data string.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            other => {
                data.push(other);
                (MsFlags::empty(), MsFlags::empty())
            }
        };
        flags = (flags | set) - clear;
    }
    (flags, data.join(","))
}

/// Mounts `m` on `target`.
pub fn mount_one(m: &MountSpec, target: &Path) -> Result<(), String> {
    let (mut flags, data) = parse_options(&m.options);
    if m.fstype == "bind" {
        flags |= MsFlags::MS_BIND;
    }
    // One page holds the mount data.
    if data.len() >= 4096 {
        return Err(format!(
            "{} mount options are {} bytes long (the kernel takes 4095)",
            m.fstype,
            data.len()
        ));
    }
    let fail = |e: nix::Error| format!("mount {} on {}: {e}", m.fstype, target.display());
    let source = (!m.source.is_empty()).then_some(m.source.as_str());
    if flags.contains(MsFlags::MS_BIND) {
        let bind = flags & (MsFlags::MS_BIND | MsFlags::MS_REC);
        mount(source, target, None::<&str>, bind, None::<&str>).map_err(fail)?;
        // A bind mount takes its other flags on a remount.
        let rest = flags - MsFlags::MS_REC;
        if rest != MsFlags::MS_BIND {
            mount(
                None::<&str>,
                target,
                None::<&str>,
                rest | MsFlags::MS_REMOUNT,
                None::<&str>,
            )
            .map_err(fail)?;
        }
        return Ok(());
    }
    let fstype = (!m.fstype.is_empty()).then_some(m.fstype.as_str());
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(source, target, fstype, flags, data).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_snapshots_are_recognised() {
        let dir = std::env::temp_dir().join(format!("husk-blockroot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("snap.ext4");
        std::fs::write(&img, b"").unwrap();
        let spec = |fstype: &str, source: &Path, options: &[&str]| MountSpec {
            fstype: fstype.into(),
            source: source.display().to_string(),
            options: options.iter().map(|o| o.to_string()).collect(),
        };
        let r = block_root(&[spec("ext4", &img, &["loop", "rw"])]).unwrap();
        assert_eq!(
            (r.path, r.fstype.as_str(), r.read_only),
            (img.clone(), "ext4", false)
        );
        assert!(
            block_root(&[spec("ext4", &img, &["loop", "ro"])])
                .unwrap()
                .read_only
        );
        // A file without `loop`, another file system, a directory, two
        // mounts: not a block snapshot.
        assert!(block_root(&[spec("ext4", &img, &[])]).is_none());
        assert!(block_root(&[spec("xfs", &img, &["loop"])]).is_none());
        assert!(block_root(&[spec("ext4", &dir, &["loop"])]).is_none());
        assert!(
            block_root(&[spec("ext4", &img, &["loop"]), spec("ext4", &img, &["loop"])]).is_none()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let o: Vec<String> = ["ro", "index=off", "lowerdir=/a:/b", "nosuid", "rbind"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = parse_options(&o);
        assert!(flags.contains(
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_BIND | MsFlags::MS_REC
        ));
        assert_eq!(data, "index=off,lowerdir=/a:/b");
        let (flags, _) = parse_options(&["ro".to_string(), "rw".to_string()]);
        assert!(!flags.contains(MsFlags::MS_RDONLY));
    }
}
