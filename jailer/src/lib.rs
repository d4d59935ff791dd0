//! husk-jailer: runs one program (husk-vmm) confined.
//!
//! The privileged set-up is done here, before the program runs, and apart
//! from its run loop:
//! 1. check the configuration (ids, files and who may read or write them,
//!    a static program, limits);
//! 2. make the jail's cgroup (cpu, memory, pids) and its directory
//!    `<base>/<program>/<id>/root`: the program copied in, a place for each
//!    file, `/dev/kvm` and `/dev/net/tun` owned by the jail's uid, `/run`
//!    (0700) for sockets;
//! 3. fork into a new PID namespace; the child joins the cgroup and the
//!    network namespace, makes a mount namespace of its own, bind-mounts
//!    each file (read-only unless asked), pivots into the jail's root and
//!    detaches the host's, lowers its rlimits, empties its capability
//!    bounding set, takes the unprivileged uid and gid, sets
//!    `no_new_privs` and umask 077, and executes the program with a
//!    minimal environment;
//! 4. the parent forwards SIGTERM, SIGINT, SIGHUP and SIGQUIT as SIGKILL
//!    (the program is its namespace's init, which ignores signals it does
//!    not handle), waits, removes the jail and the cgroup, and exits with
//!    the program's status (128 + signal when a signal ended it).
//!
//! If the jailer itself dies the kernel kills the program
//! (`PR_SET_PDEATHSIG`); its jail is then left for the operator to remove,
//! and a new jail with the same id is refused until then.

pub mod cgroup;
pub mod config;
mod enter;
pub mod fs;

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};

pub use config::{ConfigError, JailConfig, JailFile, Limits};

/// Why the jailer could not run the program.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The cgroup could not be made.
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    /// The jail's directory could not be made.
    #[error(transparent)]
    Fs(#[from] fs::FsError),
    /// A process-level step failed (pipe, fork, namespaces).
    #[error("{0}: {1}")]
    Sys(&'static str, std::io::Error),
    /// The child could not confine itself or start the program.
    #[error("{0}")]
    Child(String),
}

fn sys(what: &'static str) -> JailError {
    JailError::Sys(what, std::io::Error::last_os_error())
}

/// Signals forwarded to the program (as SIGKILL).
const FORWARDED: &[libc::c_int] = &[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

/// Runs `config`'s program in its jail until it ends; returns its exit
/// status (128 + signal number if a signal ended it).
pub fn run(config: &JailConfig) -> Result<i32, JailError> {
    config.validate()?;
    let netns = match &config.netns {
        Some(path) => Some(OwnedFd::from(std::fs::File::open(path).map_err(|e| {
            JailError::Config(ConfigError::Netns(path.clone(), e.to_string()))
        })?)),
        None => None,
    };
    let cgroup = cgroup::Cgroup::create(&config.cgroup_parent, &config.id, &config.limits)?;
    let root = match fs::create(config) {
        Ok(root) => root,
        Err(e) => {
            cgroup.remove();
            return Err(e.into());
        }
    };
    let result = spawn_and_wait(config, &cgroup, root, netns);
    // The program has ended: its mount namespace, and every mount in the
    // jail, went with it.
    cgroup.remove();
    let removed = fs::remove(&config.jail_dir());
    match (result, removed) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.into()),
        (Ok(status), Ok(())) => Ok(status),
    }
}

fn spawn_and_wait(
    config: &JailConfig,
    cgroup: &cgroup::Cgroup,
    root: std::path::PathBuf,
    netns: Option<OwnedFd>,
) -> Result<i32, JailError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) into a local array; the result is checked.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(sys("pipe"));
    }
    // SAFETY: pipe2 returned two new descriptors this process now owns.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };

    // Block the forwarded signals (and SIGCHLD) so that they are taken by
    // sigwaitinfo below; the child unblocks them before it executes.
    // SAFETY: a signal set initialised before use.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&mut set, s);
        }
        set
    };
    // SAFETY: sigprocmask(2) with a valid set.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    // SAFETY: unshare(2) with a flag: children go into a new PID namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(sys("new PID namespace"));
    }
    let plan = enter::Plan {
        config,
        root,
        netns,
    };
    // SAFETY: fork(2) in a single-threaded process; the child only runs
    // `confine_and_exec` and exits.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(sys("fork"));
    }
    if child == 0 {
        drop(reader);
        let failed = match cgroup.join() {
            Ok(()) => enter::confine_and_exec(&plan),
            Err(e) => e.to_string(),
        };
        let mut w = std::fs::File::from(writer);
        let _ = std::io::Write::write_all(&mut w, failed.as_bytes());
        // SAFETY: _exit(2) ends the child without running the parent's
        // destructors.
        unsafe { libc::_exit(1) };
    }
    drop(writer);
    drop(plan);
    // The pipe closes on a successful execve (close-on-exec) or carries
    // what failed.
    let mut failed = String::new();
    let _ = std::fs::File::from(reader).read_to_string(&mut failed);
    if !failed.is_empty() {
        let _ = wait_for(child, &set, false);
        return Err(JailError::Child(failed));
    }
    wait_for(child, &set, true)
}

/// Waits for `child`, forwarding signals as SIGKILL when `forward`.
fn wait_for(child: libc::pid_t, set: &libc::sigset_t, forward: bool) -> Result<i32, JailError> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) for our child with a local status.
        let r = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
        if r == child {
            if libc::WIFEXITED(status) {
                return Ok(libc::WEXITSTATUS(status));
            }
            if libc::WIFSIGNALED(status) {
                return Ok(128 + libc::WTERMSIG(status));
            }
            continue;
        }
        if r < 0 {
            return Err(sys("wait for the program"));
        }
        // SAFETY: a zeroed siginfo_t is valid output space.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: sigwaitinfo(2) on blocked signals, into a local.
        let sig = unsafe { libc::sigwaitinfo(set, &mut info) };
        if forward && FORWARDED.contains(&sig) {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(child, libc::SIGKILL) };
        }
    }
}
