//! The jail's directory on the host: made before the program starts (with
//! a place for every file, the program copied in, the device nodes it
//! needs), removed when it has ended.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::JailConfig;

/// A step of making or removing the jail's directory that failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The jail directory is there already.
    #[error(
        "jail {0} exists: another VM has this id, or a jailer before it was killed (remove it)"
    )]
    Exists(PathBuf),
    /// A file system call failed.
    #[error("{what} {shown}: {source}", shown = .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// Something is still mounted in the jail: it is left in place rather
    /// than deleted through the mount.
    #[error("{0} is still mounted: the jail is left in place")]
    Mounted(PathBuf),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FsError {
    let path = path.to_path_buf();
    move |source| FsError::Io { what, path, source }
}

/// Device nodes in every jail: (name, major, minor).
pub const DEVICES: &[(&str, u32, u32)] = &[("kvm", 10, 232), ("net/tun", 10, 200)];

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), FsError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io("chown", path))
}

fn cstring(path: &Path) -> Result<CString, FsError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| FsError::Io {
        what: "use",
        path: path.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

/// Makes `<jail>/root` with the program, empty places for the files (the
/// mounts come later, in the jail's own mount namespace), `/dev/kvm`,
/// `/dev/net/tun` and a `/run` for sockets, owned by the jail's uid.
pub fn create(config: &JailConfig) -> Result<PathBuf, FsError> {
    let jail = config.jail_dir();
    if jail.exists() {
        return Err(FsError::Exists(jail));
    }
    if let Some(parent) = jail.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(io("create", parent))?;
    }
    // Only root enters the jail directory from the host side.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&jail)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => FsError::Exists(jail.clone()),
            _ => io("create", &jail)(e),
        })?;
    let root = jail.join("root");
    let made = fill(config, &root);
    if made.is_err() {
        let _ = remove(&jail);
    }
    made.map(|()| root)
}

fn fill(config: &JailConfig, root: &Path) -> Result<(), FsError> {
    let dir = |path: &Path, mode: u32| -> Result<(), FsError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(io("create", path))
    };
    dir(root, 0o755)?;
    let run = root.join("run");
    dir(&run, 0o700)?;
    chown(&run, config.uid, config.gid)?;

    let exec = root.join(
        config
            .exec_in_jail()
            .strip_prefix("/")
            .unwrap_or(Path::new("vmm")),
    );
    std::fs::copy(&config.exec_file, &exec).map_err(io("copy the program to", &exec))?;
    std::fs::set_permissions(&exec, std::fs::Permissions::from_mode(0o555))
        .map_err(io("chmod", &exec))?;

    for f in &config.files {
        let place = root.join(f.dest.strip_prefix("/").unwrap_or(&f.dest));
        if let Some(parent) = place.parent() {
            dir(parent, 0o755)?;
        }
        if f.src.is_dir() {
            dir(&place, 0o755)?;
        } else {
            std::fs::File::create(&place).map_err(io("create", &place))?;
        }
    }

    for (name, major, minor) in DEVICES {
        let node = root.join("dev").join(name);
        if let Some(parent) = node.parent() {
            dir(parent, 0o755)?;
        }
        let c = cstring(&node)?;
        // SAFETY: mknod(2) with a NUL-terminated path; the result is checked.
        let r = unsafe {
            libc::mknod(
                c.as_ptr(),
                libc::S_IFCHR | 0o600,
                libc::makedev(*major, *minor),
            )
        };
        if r != 0 {
            return Err(io("mknod", &node)(std::io::Error::last_os_error()));
        }
        chown(&node, config.uid, config.gid)?;
    }
    Ok(())
}

/// Whether anything is mounted at or below `dir` in this mount namespace.
fn mounted_below(dir: &Path) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .find(|p| p.starts_with(dir))
}

/// Removes the jail directory, unless something is still mounted in it.
pub fn remove(jail: &Path) -> Result<(), FsError> {
    if let Some(m) = mounted_below(jail) {
        return Err(FsError::Mounted(m));
    }
    match std::fs::remove_dir_all(jail) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", jail)(e)),
    }
}
