//! Root file system delivery by block image: the host turns a bundle's
//! rootfs directory into a read-only file system image that the VM gets as
//! a virtio-blk drive; the agent mounts it under an overlay whose upper
//! layer is on tmpfs, so the container can write.
//!
//! Two formats: EROFS (`mkfs.erofs`, read-only by design, compact
//! metadata) and ext4 (`mkfs.ext4 -d`, no journal). `bench-agent-boot`
//! measures which is faster to build and to start a container from.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

/// Errors building a root file system image.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The rootfs directory is missing or not a directory.
    #[error("rootfs {0}: not a directory")]
    NotADirectory(PathBuf),
    /// Walking the tree failed.
    #[error("rootfs {path}: {source}")]
    Walk {
        /// The entry that could not be read.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The image tool could not be run (not installed?).
    #[error("{tool}: {source} (is {package} installed?)")]
    Tool {
        /// The program.
        tool: &'static str,
        /// Its Debian package.
        package: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The image tool failed.
    #[error("{tool} failed on {tree}: {detail}")]
    Failed {
        /// The program.
        tool: &'static str,
        /// The rootfs directory.
        tree: PathBuf,
        /// What the tool printed on stderr (last line).
        detail: String,
    },
    /// An unknown format name.
    #[error("unknown rootfs image format {0:?} (expected erofs or ext4)")]
    UnknownFormat(String),
    /// An unknown delivery name.
    #[error("unknown rootfs delivery {0:?} (expected auto, block or virtio-fs)")]
    UnknownDelivery(String),
}

/// The file system of a rootfs image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageFormat {
    /// EROFS, uncompressed.
    #[default]
    Erofs,
    /// ext4 without a journal.
    Ext4,
}

impl ImageFormat {
    /// The `fstype` the agent mounts it with.
    pub fn fstype(self) -> &'static str {
        match self {
            ImageFormat::Erofs => "erofs",
            ImageFormat::Ext4 => "ext4",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.fstype())
    }
}

impl FromStr for ImageFormat {
    type Err = RootfsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "erofs" => Ok(ImageFormat::Erofs),
            "ext4" => Ok(ImageFormat::Ext4),
            other => Err(RootfsError::UnknownFormat(other.to_string())),
        }
    }
}

/// How a container's root file system reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// virtio-fs where `virtiofsd` is installed, a block image otherwise:
    /// no image to build at create (faster starts, more so for large
    /// trees; `bench-fs` measures it), and the container writes its tree
    /// in place as with runc.
    #[default]
    Auto,
    /// A read-only image built from the tree at create, as a virtio-blk
    /// drive, under a guest tmpfs overlay.
    Block,
    /// The tree itself, shared by virtio-fs and written in place.
    VirtioFs,
}

impl Delivery {
    /// The delivery to use on this host: `Auto` is virtio-fs when
    /// `virtiofsd` is installed, a block image otherwise.
    pub fn resolve(self) -> Delivery {
        match self {
            Delivery::Auto if crate::hypervisor::virtiofs_available() => Delivery::VirtioFs,
            Delivery::Auto => Delivery::Block,
            d => d,
        }
    }
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Delivery::Auto => "auto",
            Delivery::Block => "block",
            Delivery::VirtioFs => "virtio-fs",
        })
    }
}

impl FromStr for Delivery {
    type Err = RootfsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Delivery::Auto),
            "block" => Ok(Delivery::Block),
            "virtio-fs" => Ok(Delivery::VirtioFs),
            other => Err(RootfsError::UnknownDelivery(other.to_string())),
        }
    }
}

/// A snapshot that is a file system on a block device or image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRoot {
    /// The device or image file.
    pub path: std::path::PathBuf,
    /// Its file system (`ext4` or `erofs`: what the guest kernel mounts).
    pub fstype: String,
    /// Mounted read-only (`ro`).
    pub read_only: bool,
}

/// A built image.
#[derive(Debug, Clone)]
pub struct RootfsImage {
    /// The image file.
    pub path: PathBuf,
    /// Its file system.
    pub format: ImageFormat,
    /// Its size in bytes.
    pub bytes: u64,
}

impl RootfsImage {
    /// How the agent finds this image on the drive with `serial`: under a
    /// writable tmpfs layer.
    pub fn storage(&self, serial: String) -> protocol::Storage {
        protocol::Storage {
            source: protocol::StorageSource::Block { serial },
            fstype: self.format.fstype().into(),
            overlay: true,
            writable: false,
        }
    }
}

/// What a tree holds: bytes in 4 KiB blocks and the number of inodes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TreeSize {
    /// Data of regular files and symlink targets, rounded up to 4 KiB each.
    pub block_bytes: u64,
    /// Files, directories, links and special files, the root included.
    pub inodes: u64,
}

/// Measures `tree` without following symlinks.
pub fn tree_size(tree: &Path) -> Result<TreeSize, RootfsError> {
    let walk = |path: &Path, e| RootfsError::Walk {
        path: path.to_path_buf(),
        source: e,
    };
    let mut size = TreeSize::default();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        size.inodes += 1;
        size.block_bytes += 4096;
        for entry in std::fs::read_dir(&dir).map_err(|e| walk(&dir, e))? {
            let entry = entry.map_err(|e| walk(&dir, e))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(|e| walk(&path, e))?;
            if meta.is_dir() {
                stack.push(path);
            } else {
                size.inodes += 1;
                size.block_bytes += meta.size().div_ceil(4096) * 4096;
            }
        }
    }
    Ok(size)
}

/// Builds a read-only image of `tree` at `out` (replaced if it exists).
/// File owners, modes and device nodes are kept as they are in the tree.
pub fn build_image(
    tree: &Path,
    out: &Path,
    format: ImageFormat,
) -> Result<RootfsImage, RootfsError> {
    if !tree.is_dir() {
        return Err(RootfsError::NotADirectory(tree.to_path_buf()));
    }
    let _ = std::fs::remove_file(out);
    let mut cmd = match format {
        ImageFormat::Erofs => {
            let mut c = Command::new("mkfs.erofs");
            c.arg("--quiet").arg("-T0").arg(out).arg(tree);
            c
        }
        ImageFormat::Ext4 => {
            let size = tree_size(tree)?;
            // Data plus inode tables and directory/extent metadata, with
            // slack for ext4's own structures.
            let inodes = size.inodes + 64;
            let bytes = (size.block_bytes + inodes * 256) * 5 / 4 + (8 << 20);
            let mut c = Command::new("mkfs.ext4");
            c.args(["-q", "-F", "-b", "4096", "-m", "0", "-O", "^has_journal"])
                .arg("-N")
                .arg(inodes.to_string())
                .arg("-d")
                .arg(tree)
                .arg(out)
                .arg(format!("{}k", bytes.div_ceil(4096) * 4));
            c
        }
    };
    let (tool, package) = match format {
        ImageFormat::Erofs => ("mkfs.erofs", "erofs-utils"),
        ImageFormat::Ext4 => ("mkfs.ext4", "e2fsprogs"),
    };
    let output = cmd.output().map_err(|source| RootfsError::Tool {
        tool,
        package,
        source,
    })?;
    if !output.status.success() {
        let _ = std::fs::remove_file(out);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let detail = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message")
            .trim()
            .to_string();
        return Err(RootfsError::Failed {
            tool,
            tree: tree.to_path_buf(),
            detail,
        });
    }
    let bytes = std::fs::metadata(out)
        .map_err(|e| RootfsError::Walk {
            path: out.to_path_buf(),
            source: e,
        })?
        .len();
    Ok(RootfsImage {
        path: out.to_path_buf(),
        format,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("husk-rootfs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("bin/hello"), vec![7u8; 5000]).unwrap();
        std::os::unix::fs::symlink("hello", dir.join("bin/link")).unwrap();
        dir
    }

    #[test]
    fn sizes_count_blocks_and_inodes() {
        let dir = tree("size");
        let s = tree_size(&dir).unwrap();
        // root + bin dirs, the file, the link.
        assert_eq!(s.inodes, 4);
        assert_eq!(s.block_bytes, 4096 * 2 + 8192 + 4096);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn formats_parse_and_bad_input_is_named() {
        assert_eq!("erofs".parse::<ImageFormat>().unwrap(), ImageFormat::Erofs);
        assert_eq!("ext4".parse::<ImageFormat>().unwrap(), ImageFormat::Ext4);
        let e = "xfs".parse::<ImageFormat>().unwrap_err();
        assert!(e.to_string().contains("\"xfs\""), "{e}");
        let missing = Path::new("/nonexistent/rootfs");
        let e = build_image(missing, Path::new("/tmp/x.img"), ImageFormat::Ext4).unwrap_err();
        assert_eq!(e.to_string(), "rootfs /nonexistent/rootfs: not a directory");
    }

    #[test]
    fn builds_both_formats() {
        let dir = tree("build");
        for format in [ImageFormat::Erofs, ImageFormat::Ext4] {
            let out = dir.with_extension(format.fstype());
            let img = build_image(&dir, &out, format).unwrap_or_else(|e| panic!("{format}: {e}"));
            assert!(img.bytes > 0 && img.path == out);
            std::fs::remove_file(&out).unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
