//! What a jail is made of: checked once, before anything is created.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// A configuration the jailer refuses, with what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The id is empty, too long or has characters other than
    /// `[A-Za-z0-9_-]`.
    #[error("--id {0:?}: use 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'")]
    Id(String),
    /// uid or gid 0.
    #[error("--{0} 0: the VMM must not run as root; give an unprivileged {0}")]
    Root(&'static str),
    /// The program to run is missing or not a regular executable file.
    #[error("--exec-file {0}: {1}")]
    ExecFile(PathBuf, String),
    /// A file to bring into the jail is missing or unusable.
    #[error("{flag} {shown}: {why}", shown = .src.display())]
    File {
        /// `--file` or `--rw-file`.
        flag: &'static str,
        /// The file on the host.
        src: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A destination inside the jail is not a plain absolute path, or is
    /// taken twice.
    #[error(
        "{0}: the place in the jail must be an absolute path without '..', used once, outside /dev"
    )]
    Dest(String),
    /// A limit is zero or out of range.
    #[error("{0}")]
    Limit(String),
    /// The network namespace to join does not exist.
    #[error("--netns {0}: {1}")]
    Netns(PathBuf, String),
}

/// A host file made visible inside the jail (bind-mounted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailFile {
    /// Where it is on the host.
    pub src: PathBuf,
    /// Where the VMM sees it (absolute, inside the jail's root).
    pub dest: PathBuf,
    /// Whether the VMM may write it.
    pub writable: bool,
}

/// cgroup limits of the jail.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    /// CPU time as a number of CPUs (`cpu.max` / CFS quota).
    pub cpus: Option<f64>,
    /// Memory in bytes (`memory.max` / `memory.limit_in_bytes`).
    pub memory_bytes: Option<u64>,
    /// Tasks (`pids.max`).
    pub pids: Option<u64>,
}

/// One jail, as the command line gives it.
#[derive(Clone, Debug)]
pub struct JailConfig {
    /// The VM's id: names the jail directory and the cgroup.
    pub id: String,
    /// The program run in the jail (copied in).
    pub exec_file: PathBuf,
    /// Arguments given to it.
    pub args: Vec<String>,
    /// Unprivileged uid and gid the program runs as.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// Jails are made in `<base>/<program name>/<id>/root`.
    pub base_dir: PathBuf,
    /// Host files bind-mounted into the jail.
    pub files: Vec<JailFile>,
    /// A network namespace to join (a path such as `/var/run/netns/NAME`).
    pub netns: Option<PathBuf>,
    /// The cgroup the jail's cgroup is made under.
    pub cgroup_parent: String,
    /// cgroup limits.
    pub limits: Limits,
    /// `RLIMIT_NOFILE` of the program.
    pub max_open_files: u64,
    /// `RLIMIT_FSIZE` of the program (largest file it may write), if set.
    pub max_file_size: Option<u64>,
}

impl JailConfig {
    /// The jail directory: `<base>/<program name>/<id>`.
    pub fn jail_dir(&self) -> PathBuf {
        let name = self
            .exec_file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "vmm".into());
        self.base_dir.join(name).join(&self.id)
    }

    /// Where the program is inside the jail.
    pub fn exec_in_jail(&self) -> PathBuf {
        Path::new("/").join(self.exec_file.file_name().unwrap_or_default())
    }

    /// Checks everything that can be checked before the jail is made.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(ConfigError::Id(self.id.clone()));
        }
        if self.uid == 0 {
            return Err(ConfigError::Root("uid"));
        }
        if self.gid == 0 {
            return Err(ConfigError::Root("gid"));
        }
        check_exec(&self.exec_file)?;
        let mut seen = vec![self.exec_in_jail()];
        for f in &self.files {
            check_dest(&f.dest)?;
            if seen.contains(&f.dest) {
                return Err(ConfigError::Dest(f.dest.display().to_string()));
            }
            seen.push(f.dest.clone());
            check_source(f, self.uid, self.gid)?;
        }
        if let Some(ns) = &self.netns {
            std::fs::metadata(ns).map_err(|e| ConfigError::Netns(ns.clone(), e.to_string()))?;
        }
        if let Some(c) = self.limits.cpus {
            if !(c.is_finite() && (0.01..=1024.0).contains(&c)) {
                return Err(ConfigError::Limit(format!(
                    "--cpus {c}: give a number of CPUs from 0.01 to 1024"
                )));
            }
        }
        if self.limits.memory_bytes == Some(0) {
            return Err(ConfigError::Limit(
                "--memory-mib 0: give the memory the VMM may use".into(),
            ));
        }
        if self.limits.pids == Some(0) {
            return Err(ConfigError::Limit(
                "--pids-max 0: the VMM needs a task per thread".into(),
            ));
        }
        if self.max_open_files < 16 {
            return Err(ConfigError::Limit(format!(
                "--max-open-files {}: the VMM needs at least 16",
                self.max_open_files
            )));
        }
        let parent_ok = !self.cgroup_parent.is_empty()
            && Path::new(&self.cgroup_parent)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !parent_ok {
            return Err(ConfigError::Limit(format!(
                "--cgroup-parent {:?}: give a relative cgroup path without '..'",
                self.cgroup_parent
            )));
        }
        Ok(())
    }
}

/// Parses `SRC[:DEST]`; without DEST the file keeps its name at the root.
pub fn parse_file(spec: &str, writable: bool) -> JailFile {
    let (src, dest) = match spec.split_once(':') {
        Some((s, d)) => (PathBuf::from(s), PathBuf::from(d)),
        None => {
            let src = PathBuf::from(spec);
            let name = src.file_name().unwrap_or_default().to_owned();
            (src, Path::new("/").join(name))
        }
    };
    JailFile {
        src,
        dest,
        writable,
    }
}

fn check_dest(dest: &Path) -> Result<(), ConfigError> {
    let bad = || ConfigError::Dest(dest.display().to_string());
    if !dest.is_absolute() || dest.starts_with("/dev") {
        return Err(bad());
    }
    let mut normal = 0;
    for c in dest.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(_) => normal += 1,
            _ => return Err(bad()),
        }
    }
    if normal == 0 {
        return Err(bad());
    }
    Ok(())
}

/// Whether `uid`/`gid` get `bit` (4 read, 2 write) on a file with `meta`.
fn allowed(meta: &std::fs::Metadata, uid: u32, gid: u32, bit: u32) -> bool {
    let mode = meta.mode();
    if meta.uid() == uid {
        mode & (bit << 6) != 0
    } else if meta.gid() == gid {
        mode & (bit << 3) != 0
    } else {
        mode & bit != 0
    }
}

fn check_source(f: &JailFile, uid: u32, gid: u32) -> Result<(), ConfigError> {
    let flag = if f.writable { "--rw-file" } else { "--file" };
    let err = |why: String| ConfigError::File {
        flag,
        src: f.src.clone(),
        why,
    };
    let meta = std::fs::metadata(&f.src).map_err(|e| err(e.to_string()))?;
    if !(meta.is_file() || meta.file_type().is_dir()) {
        return Err(err("not a regular file or directory".into()));
    }
    if !allowed(&meta, uid, gid, 4) {
        return Err(err(format!(
            "not readable by uid {uid} gid {gid}: give the jail's uid access"
        )));
    }
    if f.writable && !allowed(&meta, uid, gid, 2) {
        return Err(err(format!(
            "not writable by uid {uid} gid {gid}: chown it to the jail's uid"
        )));
    }
    Ok(())
}

fn check_exec(path: &Path) -> Result<(), ConfigError> {
    let err = |why: String| ConfigError::ExecFile(path.to_path_buf(), why);
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(err("not an executable file".into()));
    }
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if has_interpreter(&bytes).map_err(|e| err(e.into()))? {
        return Err(err(
            "dynamically linked: the jail holds only the VM's files, so the program must be \
             static (build it with -C target-feature=+crt-static)"
                .into(),
        ));
    }
    Ok(())
}

/// Whether a 64-bit little-endian ELF file asks for a program interpreter
/// (a dynamic loader).
pub fn has_interpreter(elf: &[u8]) -> Result<bool, &'static str> {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    if elf.get(..4) != Some(b"\x7fELF".as_slice())
        || elf.get(4) != Some(&2)
        || elf.get(5) != Some(&1)
    {
        return Err("not a 64-bit little-endian ELF program");
    }
    let bad = "a truncated ELF header";
    let phoff = u64_at(0x20).ok_or(bad)?;
    let phentsize = u16_at(0x36).ok_or(bad)? as usize;
    let phnum = u16_at(0x38).ok_or(bad)? as usize;
    let phoff = usize::try_from(phoff).map_err(|_| bad)?;
    for i in 0..phnum {
        let at = phoff
            .checked_add(i.checked_mul(phentsize).ok_or(bad)?)
            .ok_or(bad)?;
        if u32_at(at).ok_or("a truncated program header")? == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_specs() {
        assert_eq!(
            parse_file("/a/vmlinux", false),
            JailFile {
                src: "/a/vmlinux".into(),
                dest: "/vmlinux".into(),
                writable: false
            }
        );
        let f = parse_file("/a/disk.img:/drives/root.img", true);
        assert_eq!(f.dest, PathBuf::from("/drives/root.img"));
        assert!(f.writable);
    }

    #[test]
    fn destinations() {
        assert!(check_dest(Path::new("/vmlinux")).is_ok());
        assert!(check_dest(Path::new("/a/b")).is_ok());
        for bad in ["vmlinux", "/", "/a/../b", "/dev/kvm", "/dev"] {
            assert!(check_dest(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn elf_interpreter() {
        let own = std::fs::read("/proc/self/exe").unwrap();
        // Test binaries are linked dynamically.
        assert_eq!(has_interpreter(&own), Ok(true));
        assert!(has_interpreter(b"#!/bin/sh\n").is_err());
        assert!(has_interpreter(&own[..40]).is_err());
    }
}
