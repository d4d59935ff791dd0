//! A container's root file system: the image from a virtio-blk drive,
//! mounted read-only, under an overlay whose upper layer is on tmpfs so the
//! container can write (unless it asked for a read-only root).

use std::ffi::CString;
use std::path::{Path, PathBuf};

use protocol::{ErrorCode, ErrorReply, Storage, StorageSource};

use super::err;

/// Largest writable layer of one container (tmpfs, in guest memory).
const UPPER_SIZE: &str = "size=50%";

/// The block device whose virtio serial is `serial`.
fn device_by_serial(serial: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir("/sys/block").ok()?;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Ok(s) = std::fs::read_to_string(e.path().join("serial")) else {
            continue;
        };
        if s.trim_end_matches(['\n', '\0']) == serial {
            return Some(Path::new("/dev").join(name));
        }
    }
    None
}

/// Drops the guest's cached blocks of `dev`: a pod's spare drive gets its
/// image written by the host after the guest booted (and read its first
/// sectors looking for partitions), so what is cached may be stale.
fn flush_buffers(dev: &Path) {
    use std::os::fd::AsRawFd;
    /// `BLKFLSBUF`, `_IO(0x12, 97)`.
    const BLKFLSBUF: libc::c_ulong = 0x1261;
    if let Ok(f) = std::fs::File::open(dev) {
        // SAFETY: BLKFLSBUF takes no argument; `f` is an open block device.
        unsafe { libc::ioctl(f.as_raw_fd(), BLKFLSBUF, 0) };
    }
}

fn cstr(s: &str) -> Result<CString, ErrorReply> {
    CString::new(s).map_err(|_| err(ErrorCode::InvalidArgument, format!("NUL in {s:?}")))
}

/// mount(2) with errors naming what was mounted where.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), ErrorReply> {
    let (src, tgt, fs) = (
        cstr(source)?,
        cstr(&target.to_string_lossy())?,
        cstr(fstype)?,
    );
    let data = data.map(cstr).transpose()?;
    let data_ptr = data
        .as_ref()
        .map_or(std::ptr::null(), |d| d.as_ptr().cast::<libc::c_void>());
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let r = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), flags, data_ptr) };
    if r != 0 {
        return Err(err(
            ErrorCode::Internal,
            format!(
                "mount {fstype} {source} on {}: {}",
                target.display(),
                std::io::Error::last_os_error()
            ),
        ));
    }
    Ok(())
}

/// Detaches the mount on `target`, if any.
pub fn umount(target: &Path) {
    if let Ok(t) = CString::new(target.to_string_lossy().as_bytes()) {
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
    }
}

fn mkdir(dir: &Path) -> Result<(), ErrorReply> {
    std::fs::create_dir_all(dir)
        .map_err(|e| err(ErrorCode::Internal, format!("mkdir {}: {e}", dir.display())))
}

/// The mounts under a bundle, innermost last.
pub struct RootfsMounts {
    bundle: PathBuf,
}

impl RootfsMounts {
    /// Undoes every mount (idempotent).
    pub fn unmount(&self) {
        for d in ["rootfs", "scratch", "image"] {
            umount(&self.bundle.join(d));
        }
    }
}

/// Mounts `storage` for a container in `bundle`: the image read-only at
/// `image/`, and `rootfs/` as an overlay of it (or a bind of it without
/// `overlay`: read-only, or the device read-write with `writable`).
pub fn mount_rootfs(storage: &Storage, bundle: &Path) -> Result<RootfsMounts, ErrorReply> {
    let serial = match &storage.source {
        StorageSource::Block { serial } => serial,
        StorageSource::VirtioFs { path } => return mount_shared_rootfs(path, storage, bundle),
    };
    if !matches!(storage.fstype.as_str(), "ext4" | "erofs") {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("rootfs fstype {:?} is not ext4 or erofs", storage.fstype),
        ));
    }
    let dev = device_by_serial(serial).ok_or_else(|| {
        err(
            ErrorCode::NotFound,
            format!("no block device with serial {serial:?}"),
        )
    })?;
    let writable = storage.writable && !storage.overlay;
    if writable && storage.fstype == "erofs" {
        return Err(err(
            ErrorCode::InvalidArgument,
            "rootfs: erofs cannot be mounted writable",
        ));
    }
    flush_buffers(&dev);
    let image = bundle.join("image");
    mkdir(&image)?;
    // A writable root is the container's own tree (device nodes made in
    // it work, as on the host); a read-only image is neither.
    let flags = if writable {
        0
    } else {
        libc::MS_RDONLY | libc::MS_NODEV
    };
    mount_layers(bundle, storage.overlay, writable, || {
        mount(&dev.to_string_lossy(), &image, &storage.fstype, flags, None)
    })
}

/// Mounts a directory of the shared file system as the root: in place
/// (written on the host) or, with `overlay`, under a guest tmpfs layer.
fn mount_shared_rootfs(
    path: &str,
    storage: &Storage,
    bundle: &Path,
) -> Result<RootfsMounts, ErrorReply> {
    if !protocol::is_share_path(path) {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("rootfs: invalid shared path {path:?}"),
        ));
    }
    if storage.fstype != "virtiofs" {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!(
                "rootfs fstype {:?} of a shared directory is not virtiofs",
                storage.fstype
            ),
        ));
    }
    let source = Path::new(protocol::SHARED_FS_DIR).join(path);
    if !source.is_dir() {
        return Err(err(
            ErrorCode::NotFound,
            format!("rootfs: no shared directory {path:?}"),
        ));
    }
    let source = source.to_string_lossy().into_owned();
    let image = bundle.join("image");
    mkdir(&image)?;
    if storage.overlay {
        mount_layers(bundle, true, false, || {
            mount(&source, &image, "", libc::MS_BIND | libc::MS_REC, None)
        })
    } else {
        let rootfs = bundle.join("rootfs");
        mkdir(&rootfs)?;
        let mounts = RootfsMounts {
            bundle: bundle.to_path_buf(),
        };
        // The share is `nodev`; a root is the container's own tree, where a
        // spec without a /dev tmpfs has its device nodes made (as runc
        // makes them), so its bind drops that flag. The guest's device
        // cgroup still decides what the container may open.
        mount(&source, &rootfs, "", libc::MS_BIND | libc::MS_REC, None)
            .and_then(|()| mount("", &rootfs, "", libc::MS_BIND | libc::MS_REMOUNT, None))
            .inspect_err(|_| {
                mounts.unmount();
            })?;
        Ok(mounts)
    }
}

/// Mounts the image with `mount_image` at `image/`, then `rootfs/` as an
/// overlay of it on a tmpfs upper layer (or, without `overlay`, a bind of
/// it, read-only unless `writable`); undoes everything on failure.
fn mount_layers(
    bundle: &Path,
    overlay: bool,
    writable: bool,
    mount_image: impl FnOnce() -> Result<(), ErrorReply>,
) -> Result<RootfsMounts, ErrorReply> {
    let mounts = RootfsMounts {
        bundle: bundle.to_path_buf(),
    };
    let image = bundle.join("image");
    let rootfs = bundle.join("rootfs");
    mkdir(&rootfs)?;
    let result = (|| {
        mount_image()?;
        if overlay {
            let scratch = bundle.join("scratch");
            mkdir(&scratch)?;
            mount("tmpfs", &scratch, "tmpfs", libc::MS_NODEV, Some(UPPER_SIZE))?;
            mkdir(&scratch.join("upper"))?;
            mkdir(&scratch.join("work"))?;
            let data = format!(
                "lowerdir={},upperdir={},workdir={}",
                image.display(),
                scratch.join("upper").display(),
                scratch.join("work").display()
            );
            mount("overlay", &rootfs, "overlay", 0, Some(&data))
        } else {
            let ro = if writable { 0 } else { libc::MS_RDONLY };
            mount(
                &image.to_string_lossy(),
                &rootfs,
                "",
                libc::MS_BIND | ro,
                None,
            )
        }
    })();
    match result {
        Ok(()) => Ok(mounts),
        Err(e) => {
            mounts.unmount();
            Err(e)
        }
    }
}
