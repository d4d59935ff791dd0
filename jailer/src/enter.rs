//! The child's side: from a root process in a new PID namespace to the
//! confined program. Runs between `fork` and `execve` in a single-threaded
//! process; a failure is reported to the parent through a pipe.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::config::JailConfig;

/// Environment variables passed to the program; everything else is
/// dropped.
const KEEP_ENV: &[&str] = &["HUSK_VMM_LOG", "RUST_BACKTRACE"];

fn c(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{}: NUL in path", path.display()))
}

fn check(r: libc::c_int, what: impl FnOnce() -> String) -> Result<(), String> {
    if r == 0 {
        Ok(())
    } else {
        Err(format!("{}: {}", what(), std::io::Error::last_os_error()))
    }
}

/// A bind mount, or a change of flags (`src` `None`).
fn mount(src: Option<&Path>, target: &Path, flags: libc::c_ulong) -> Result<(), String> {
    let src_c = src.map(c).transpose()?;
    let target_c = c(target)?;
    // SAFETY: mount(2) with NUL-terminated strings (or null) that outlive the
    // call, no file system type and no data; the result is checked.
    let r = unsafe {
        libc::mount(
            src_c.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target_c.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    check(r, || format!("mount {}", target.display()))
}

/// Everything the child needs, prepared by the parent before `fork`.
#[derive(Debug)]
pub struct Plan<'a> {
    /// The jail.
    pub config: &'a JailConfig,
    /// `<jail>/root` on the host.
    pub root: PathBuf,
    /// The network namespace to join.
    pub netns: Option<OwnedFd>,
}

/// Confines the calling process and runs the program; returns only on
/// failure, with what failed.
pub fn confine_and_exec(plan: &Plan<'_>) -> String {
    match confine(plan) {
        Ok(()) => exec(plan.config),
        Err(e) => e,
    }
}

fn confine(plan: &Plan<'_>) -> Result<(), String> {
    let config = plan.config;
    // SAFETY: prctl(2) with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    check(r, || "set the parent-death signal".into())?;
    if let Some(ns) = &plan.netns {
        // SAFETY: setns(2) on a descriptor this process owns.
        let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        check(r, || "join the network namespace".into())?;
    }

    // A mount namespace of its own, with nothing propagating back.
    // SAFETY: unshare(2) with a flag.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) }, || {
        "new mount namespace".into()
    })?;
    mount(None, Path::new("/"), libc::MS_REC | libc::MS_PRIVATE)?;
    let root = &plan.root;
    mount(Some(root), root, libc::MS_BIND | libc::MS_REC)?;
    for f in &config.files {
        let place = root.join(f.dest.strip_prefix("/").unwrap_or(&f.dest));
        mount(Some(&f.src), &place, libc::MS_BIND)?;
        let mut flags =
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if !f.writable {
            flags |= libc::MS_RDONLY;
        }
        mount(None, &place, flags)?;
    }
    mount(
        None,
        root,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID,
    )?;

    // The jail's root becomes "/"; the host's file system goes away.
    let root_c = c(root)?;
    // SAFETY: chdir(2) with a NUL-terminated path.
    check(unsafe { libc::chdir(root_c.as_ptr()) }, || {
        format!("chdir {}", root.display())
    })?;
    let dot = c(Path::new("."))?;
    // SAFETY: pivot_root(2) by system call number (no libc wrapper), with
    // NUL-terminated paths; new and old root are both the current directory.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    check(r as libc::c_int, || "pivot_root".into())?;
    // SAFETY: umount2(2) of the old root, stacked on ".".
    let r = unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) };
    check(r, || "detach the host's root".into())?;
    let slash = c(Path::new("/"))?;
    // SAFETY: chdir(2) with a NUL-terminated path.
    check(unsafe { libc::chdir(slash.as_ptr()) }, || "chdir /".into())?;

    limit(libc::RLIMIT_NOFILE, config.max_open_files, "open files")?;
    limit(libc::RLIMIT_CORE, 0, "core size")?;
    if let Some(size) = config.max_file_size {
        limit(libc::RLIMIT_FSIZE, size, "file size")?;
    }

    // No capability can come back, then the unprivileged ids.
    for cap in 0..64 {
        // SAFETY: prctl(2) with integer arguments; EINVAL past the last one.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) && cap > 0 {
                break;
            }
            return Err(format!(
                "drop capability {cap} from the bounding set: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    // SAFETY: setgroups(2) with an empty list.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }, || {
        "drop supplementary groups".into()
    })?;
    let (uid, gid) = (config.uid, config.gid);
    // SAFETY: setresgid(2)/setresuid(2) with plain ids; after setresuid to
    // a non-zero uid the process has no capabilities left.
    check(unsafe { libc::setresgid(gid, gid, gid) }, || {
        format!("setresgid {gid}")
    })?;
    // SAFETY: as above.
    check(unsafe { libc::setresuid(uid, uid, uid) }, || {
        format!("setresuid {uid}")
    })?;
    // SAFETY: prctl(2) with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(r, || "set no_new_privs".into())?;
    // Sockets and files the program makes are its own alone.
    // SAFETY: umask(2) cannot fail.
    unsafe { libc::umask(0o077) };
    // The parent blocked the signals it forwards; the program starts with
    // none blocked.
    // SAFETY: an empty signal set, initialised before use.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
    Ok(())
}

/// Lowers (never raises) a resource limit.
fn limit(resource: libc::__rlimit_resource_t, value: u64, what: &str) -> Result<(), String> {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) into a local.
    check(unsafe { libc::getrlimit(resource, &mut cur) }, || {
        format!("read the {what} limit")
    })?;
    let value = value.min(cur.rlim_max);
    let new = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit(2) from a local.
    check(unsafe { libc::setrlimit(resource, &new) }, || {
        format!("set the {what} limit to {value}")
    })
}

fn exec(config: &JailConfig) -> String {
    let prog = match c(&config.exec_in_jail()) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut argv: Vec<CString> = vec![prog.clone()];
    for a in &config.args {
        match CString::new(a.as_bytes()) {
            Ok(a) => argv.push(a),
            Err(_) => return format!("argument {a:?} has a NUL byte"),
        }
    }
    let env: Vec<CString> = KEEP_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}")))
        .filter_map(|kv| CString::new(kv).ok())
        .collect();
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_p.push(std::ptr::null());
    // SAFETY: execve(2) with NUL-terminated strings and null-terminated
    // arrays that outlive the call; it returns only on failure.
    unsafe { libc::execve(prog.as_ptr(), argv_p.as_ptr(), env_p.as_ptr()) };
    format!(
        "execute {} in the jail: {}",
        config.exec_in_jail().display(),
        std::io::Error::last_os_error()
    )
}
