//! Host directories shared with a guest by virtio-fs.
//!
//! Each VM that shares anything exports one host directory, its share
//! root, through one virtio-fs device tagged [`TAG`] (served by
//! `virtiofsd`); the guest agent mounts it at [`protocol::SHARED_FS_DIR`].
//! What a container shares (bind-mounted host directories, a root file
//! system) is bind-mounted below the root, at `<container>/<name>`, so that
//! containers added to a pod later share through the same device. The root
//! is a shared mount, so binds made after `virtiofsd` started (in its own
//! mount namespace, a slave of ours) reach it. Nothing is copied: a secret
//! in a bound directory stays where it is on the host.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

/// The virtio-fs tag of a VM's share root.
pub const TAG: &str = "husk";

/// Errors sharing host directories.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// A mount operation failed.
    #[error("{op} {path}: {source}")]
    Mount {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        source: nix::Error,
    },
    /// A directory or placeholder could not be made.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A name below the root is not a plain relative path.
    #[error("invalid share name {0:?}")]
    Name(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ShareError + '_ {
    move |source| ShareError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn mount_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> ShareError + 'a {
    move |source| ShareError::Mount {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A host directory bound below a share root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareBind {
    /// Path below the root (and below [`protocol::SHARED_FS_DIR`] in the
    /// guest).
    pub name: String,
    /// The host directory or file.
    pub source: PathBuf,
    /// Bound read-only on the host, so that the guest cannot write through
    /// virtiofsd whatever it does.
    pub read_only: bool,
    /// Mounts below `source` come along (`rbind`).
    pub recursive: bool,
}

/// A VM's share root: `<dir>/root` is exported; mount points are made in
/// `<dir>/base`; read-only binds are prepared in `<dir>/stage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareRoot {
    /// The directory holding the root.
    pub dir: PathBuf,
}

impl ShareRoot {
    /// Creates the share root in `dir` (which must not exist yet or be
    /// empty). The root is a read-only bind of `<dir>/base`, where husk
    /// makes the mount points: the guest can write only inside what is
    /// bound read-write below it.
    pub fn create(dir: &Path) -> Result<ShareRoot, ShareError> {
        let share = ShareRoot {
            dir: dir.to_path_buf(),
        };
        let (base, root) = (share.base(), share.root());
        for d in [&base, &root, &share.stage()] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        let stage = share.stage();
        // The stage is a private mount of its own: binds made there are
        // seen nowhere else, whatever the propagation of the file system
        // holding it. The root is read-only, in a peer group of its own
        // (private first: a bind on a shared file system, such as /run on
        // systemd hosts, joins that file system's group, and its binds
        // would show up in `base` and in every copy of /run), whose only
        // other members are virtiofsd's slaves.
        let made = bind_mount(&stage, &stage, MsFlags::empty())
            .and_then(|()| set_flags(&stage, MsFlags::MS_PRIVATE, "make private"))
            .and_then(|()| bind_mount(&base, &root, MsFlags::empty()))
            .and_then(|()| {
                set_flags(
                    &root,
                    MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                    "remount read-only",
                )
            })
            .and_then(|()| set_flags(&root, MsFlags::MS_PRIVATE, "make private"))
            .and_then(|()| set_flags(&root, MsFlags::MS_SHARED, "make shared"));
        if let Err(e) = made {
            share.release();
            return Err(e);
        }
        Ok(share)
    }

    /// The exported directory.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn base(&self) -> PathBuf {
        self.dir.join("base")
    }

    fn stage(&self) -> PathBuf {
        self.dir.join("stage")
    }

    /// Binds `b.source` at `b.name` below the root; the guest sees it at
    /// [`protocol::SHARED_FS_DIR`]`/<name>`.
    pub fn bind(&self, b: &ShareBind) -> Result<(), ShareError> {
        if !protocol::is_share_path(&b.name) {
            return Err(ShareError::Name(b.name.clone()));
        }
        let target = self.root().join(&b.name);
        let is_dir = std::fs::metadata(&b.source)
            .map_err(io(&b.source))?
            .is_dir();
        placeholder(&self.base().join(&b.name), is_dir)?;
        let flags = if b.recursive {
            MsFlags::MS_REC
        } else {
            MsFlags::empty()
        };
        if !b.read_only {
            return bind_mount(&b.source, &target, flags);
        }
        // A read-only flag set by remounting does not propagate to
        // virtiofsd's namespace: the bind is made read-only aside first,
        // then bound into the root, whose copies keep the flag.
        let stage = self.stage().join(b.name.replace('/', "_"));
        placeholder(&stage, is_dir)?;
        let result = bind_mount(&b.source, &stage, flags)
            .and_then(|()| make_read_only(&stage, b.recursive))
            .and_then(|()| bind_mount(&stage, &target, flags));
        unmount(&stage);
        let _ = remove_placeholders(&stage);
        result
    }

    /// Unbinds everything at and below `name` and removes the mount
    /// points husk made for it.
    pub fn unbind(&self, name: &str) {
        if !protocol::is_share_path(name) {
            return;
        }
        let target = self.root().join(name);
        let base = self.base().join(name);
        unmount(&target);
        unmount(&base);
        if mount_points_below(&target).is_empty() {
            let _ = remove_tree(&base);
        }
    }

    /// Unmounts everything and removes the directory, unless something
    /// stays mounted (then the directory stays too: removing it would
    /// reach into a host directory).
    pub fn release(&self) {
        unmount(&self.dir);
        if let Err(e) = remove_placeholders(&self.dir) {
            log::warn!("share root {}: {e}", self.dir.display());
        }
    }
}

/// The bind of container `id`'s root file system `rootfs`, read-only on
/// the host for a spec's read-only root.
pub fn rootfs_bind(id: &str, rootfs: &Path, read_only: bool) -> ShareBind {
    ShareBind {
        name: format!("{id}/rootfs"),
        source: rootfs.to_path_buf(),
        read_only,
        recursive: true,
    }
}

/// How the agent finds container `id`'s root file system bound with
/// [`rootfs_bind`]: written in place, as runc writes a bundle's rootfs;
/// a read-only one under a guest tmpfs layer, where the spec's mount
/// points are made (the guest then makes the root read-only).
pub fn rootfs_storage(id: &str, read_only: bool) -> protocol::Storage {
    protocol::Storage {
        source: protocol::StorageSource::VirtioFs {
            path: format!("{id}/rootfs"),
        },
        fstype: "virtiofs".into(),
        overlay: read_only,
        writable: false,
    }
}

/// Makes the mount at `path` read-only; with `recursive`, every mount
/// below it too (`mount_setattr(2)`, Linux 5.12; refused on older
/// kernels), so that no submount of a read-only `rbind` stays writable.
fn make_read_only(path: &Path, recursive: bool) -> Result<(), ShareError> {
    use std::os::unix::ffi::OsStrExt;
    if recursive {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| ShareError::Name(path.display().to_string()))?;
        let attr = libc::mount_attr {
            attr_set: libc::MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: a valid NUL-terminated path and a mount_attr of the size
        // passed, both alive for the call; the result is checked.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                c.as_ptr(),
                libc::AT_RECURSIVE as libc::c_uint,
                &raw const attr,
                std::mem::size_of::<libc::mount_attr>(),
            )
        };
        if r == 0 {
            return Ok(());
        }
        // Without mount_setattr (before Linux 5.12) submounts would stay
        // writable: refused rather than half done.
        return Err(ShareError::Mount {
            op: "make read-only recursively",
            path: path.to_path_buf(),
            source: nix::Error::last(),
        });
    }
    // A bind remount sets every flag anew: keep those the source has.
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
    if let Ok(st) = nix::sys::statvfs::statvfs(path) {
        use nix::sys::statvfs::FsFlags;
        for (has, keep) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        ] {
            if st.flags().contains(has) {
                flags |= keep;
            }
        }
    }
    set_flags(path, flags, "remount read-only")
}

/// Binds `source` on `target` (`extra`: `MS_REC` for a recursive bind).
fn bind_mount(source: &Path, target: &Path, extra: MsFlags) -> Result<(), ShareError> {
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | extra,
        None::<&str>,
    )
    .map_err(mount_err("bind", target))
}

/// Changes the flags or propagation of the mount at `path`.
fn set_flags(path: &Path, flags: MsFlags, op: &'static str) -> Result<(), ShareError> {
    nix::mount::mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
        .map_err(mount_err(op, path))
}

/// Makes an empty directory or file at `path` to bind onto.
fn placeholder(path: &Path, dir: bool) -> Result<(), ShareError> {
    if dir {
        return std::fs::create_dir_all(path).map_err(io(path));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map(drop)
        .map_err(io(path))
}

/// Removes `path` if nothing is mounted at or below it: directories and
/// empty files (what [`placeholder`] makes), never a file with data.
fn remove_placeholders(path: &Path) -> Result<(), std::io::Error> {
    if !mount_points_below(path).is_empty() {
        return Err(std::io::Error::other("still mounted"));
    }
    remove_tree(path)
}

fn remove_tree(path: &Path) -> Result<(), std::io::Error> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        if is_mount_root(path) {
            return Err(std::io::Error::other(format!(
                "{}: still a mount point",
                path.display()
            )));
        }
        for entry in std::fs::read_dir(path)? {
            remove_tree(&entry?.path())?;
        }
        std::fs::remove_dir(path)
    } else if meta.is_file() && meta.len() == 0 {
        std::fs::remove_file(path)
    } else {
        Err(std::io::Error::other(format!(
            "{}: not a placeholder",
            path.display()
        )))
    }
}

/// Whether `path` is the root of a mount (`statx`'s
/// `STATX_ATTR_MOUNT_ROOT`, or the mount table on kernels without it; true
/// when it cannot be told, so that callers stay out).
fn is_mount_root(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return true;
    };
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: a valid NUL-terminated path and a statx buffer of the right
    // type; the result is checked before the buffer is read.
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_TYPE,
            stx.as_mut_ptr(),
        )
    };
    if r != 0 {
        return true;
    }
    // SAFETY: statx succeeded and filled the buffer.
    let stx = unsafe { stx.assume_init() };
    let bit = libc::STATX_ATTR_MOUNT_ROOT as u64;
    if stx.stx_attributes_mask & bit == 0 {
        // Before Linux 5.8: the mount table says.
        let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        return mount_points_below(path)
            .iter()
            .any(|m| Path::new(m) == resolved);
    }
    stx.stx_attributes & bit != 0
}

/// Removes the state directory `dir` and everything in it, after
/// unmounting what is mounted below it; it never enters a mount (checked
/// by the kernel's mount-root attribute, not by path text), so a bind of a
/// host directory left behind is reported, never emptied.
pub fn remove_state_dir(dir: &Path) -> std::io::Result<()> {
    unmount(dir);
    remove_within(dir)
}

fn remove_within(path: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return std::fs::remove_file(path);
    }
    if is_mount_root(path) {
        return Err(std::io::Error::other(format!(
            "{}: still a mount point",
            path.display()
        )));
    }
    let mut first_error = None;
    for entry in std::fs::read_dir(path)? {
        if let Err(e) = entry.and_then(|e| remove_within(&e.path())) {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => std::fs::remove_dir(path),
    }
}

/// The mount points at or below `target`, deepest first. `target` is
/// resolved first: mountinfo names mount points by their real paths.
fn mount_points_below(target: &Path) -> Vec<String> {
    let resolved = std::fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
    let target = resolved.as_path();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let below = format!("{}/", target.display());
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter(|m| Path::new(m) == target || m.starts_with(&below))
        .collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.len()));
    points.dedup();
    points
}

/// Unmounts `target` and whatever is mounted below it.
pub fn unmount(target: &Path) {
    for m in mount_points_below(target) {
        // Stacked mounts on one point come off one at a time.
        while nix::mount::umount2(m.as_str(), MntFlags::MNT_DETACH).is_ok() {}
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unmounts and removes a test's scratch directory, also when the test
    /// fails half-way.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            unmount(&self.0);
            if mount_points_below(&self.0).is_empty() {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn mounted(path: &Path) -> bool {
        !mount_points_below(path).is_empty()
    }

    #[test]
    fn binds_are_read_only_when_asked_and_go_without_touching_the_source() {
        // SAFETY: geteuid(2) cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let base = std::env::temp_dir().join(format!("husk-share-test-{}", std::process::id()));
        let _scratch = Scratch(base.clone());
        let src = base.join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("data"), b"keep me").unwrap();
        std::fs::write(base.join("file"), b"a file").unwrap();
        // A mount inside the source: a read-only rbind makes it read-only
        // too.
        std::fs::create_dir_all(src.join("sub")).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &src.join("sub"),
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
        let share = ShareRoot::create(&base.join("share")).unwrap();
        let bind = |name: &str, source: PathBuf, read_only| ShareBind {
            name: name.into(),
            source,
            read_only,
            recursive: true,
        };
        share.bind(&bind("c1/0", src.clone(), false)).unwrap();
        share.bind(&bind("c1/1", src.clone(), true)).unwrap();
        share.bind(&bind("c2/0", base.join("file"), true)).unwrap();
        let root = share.root();
        assert_eq!(std::fs::read(root.join("c1/0/data")).unwrap(), b"keep me");
        std::fs::write(root.join("c1/0/new"), b"x").unwrap();
        let e = std::fs::write(root.join("c1/1/other"), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        let e = std::fs::write(root.join("c1/1/sub/other"), b"x").unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EROFS),
            "a submount stayed writable"
        );
        std::fs::write(root.join("c1/0/sub/rw"), b"x").unwrap();
        assert_eq!(std::fs::read(root.join("c2/0")).unwrap(), b"a file");
        // Only the stage's own private mount is left there.
        assert_eq!(
            mount_points_below(&share.stage()).len(),
            1,
            "staging binds are gone"
        );
        let e = std::fs::write(root.join("stray"), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "the root is read-only");
        assert!(share.bind(&bind("../x", src.clone(), false)).is_err());
        share.unbind("c1");
        assert!(!root.join("c1").exists());
        assert!(root.join("c2/0").exists());
        share.release();
        unmount(&src.join("sub"));
        assert!(!base.join("share").exists());
        assert!(!mounted(&base));
        assert_eq!(std::fs::read(src.join("data")).unwrap(), b"keep me");
        assert_eq!(std::fs::read(src.join("new")).unwrap(), b"x");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn state_removal_never_enters_a_mount() {
        // SAFETY: geteuid(2) cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let base = std::env::temp_dir().join(format!("husk-state-test-{}", std::process::id()));
        let _scratch = Scratch(base.clone());
        let data = base.join("volume");
        let state = base.join("state");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("keep"), b"user data").unwrap();
        std::fs::create_dir_all(state.join("shared/x")).unwrap();
        std::fs::write(state.join("state.json"), b"{}").unwrap();
        let bind = |target: &Path| {
            nix::mount::mount(
                Some(&data),
                target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .unwrap()
        };
        bind(&state.join("shared/x"));
        // The walk alone refuses to enter the bind and leaves it whole.
        assert!(remove_within(&state).is_err());
        assert_eq!(std::fs::read(data.join("keep")).unwrap(), b"user data");
        // Through a symlinked root (/var/run for /run; mountinfo has real
        // paths), the state goes and the volume stays.
        std::os::unix::fs::symlink(&base, base.join("link")).unwrap();
        std::fs::create_dir_all(state.join("shared/x")).unwrap();
        if mount_points_below(&state.join("shared/x")).is_empty() {
            bind(&state.join("shared/x"));
        }
        remove_state_dir(&base.join("link/state")).unwrap();
        assert!(!state.exists());
        assert_eq!(std::fs::read(data.join("keep")).unwrap(), b"user data");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
