//! Containers in the guest: root file system from a virtio-blk device,
//! namespaces, mounts and cgroups set up by libcontainer from the OCI spec,
//! stdio through pipes copied to the host's stream connections, exit status
//! reported only after the output was flushed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use protocol::{ErrorCode, ErrorReply, StdioStream, Storage};

use crate::reaper::reaper;

const BUNDLES: &str = "/run/husk/containers";
const STATE: &str = "/run/husk/state";

struct Entry {
    container: Container,
    pid: i32,
    bundle: PathBuf,
    copiers: Vec<JoinHandle<()>>,
    exit: Option<i32>,
    execs: HashMap<String, Exec>,
}

/// A process exec'd into a container.
struct Exec {
    pid: i32,
    copiers: Vec<JoinHandle<()>>,
    exit: Option<i32>,
}

/// Most exec'd processes remembered per container.
const MAX_EXECS: usize = 1024;

type Registry = Mutex<HashMap<String, Arc<Mutex<Entry>>>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Default::default)
}

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        code,
        message: message.into(),
    }
}

fn get(id: &str) -> Result<Arc<Mutex<Entry>>, ErrorReply> {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(id)
        .cloned()
        .ok_or_else(|| err(ErrorCode::NotFound, format!("no container {id:?}")))
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !id.starts_with('.')
}

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

fn mount_rootfs(storage: &Storage, target: &Path) -> Result<(), ErrorReply> {
    let dev = device_by_serial(&storage.block_serial).ok_or_else(|| {
        err(
            ErrorCode::NotFound,
            format!("no block device with serial {:?}", storage.block_serial),
        )
    })?;
    if !matches!(storage.fstype.as_str(), "ext4" | "erofs") {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("rootfs fstype {:?} is not ext4 or erofs", storage.fstype),
        ));
    }
    std::fs::create_dir_all(target).map_err(|e| {
        err(
            ErrorCode::Internal,
            format!("mkdir {}: {e}", target.display()),
        )
    })?;
    let c = |s: &str| std::ffi::CString::new(s).unwrap_or_default();
    let (src, tgt, fs) = (
        c(&dev.to_string_lossy()),
        c(&target.to_string_lossy()),
        c(&storage.fstype),
    );
    let flags = if storage.read_only {
        libc::MS_RDONLY
    } else {
        0
    };
    // SAFETY: valid NUL-terminated strings; no data argument.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fs.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(err(
            ErrorCode::Internal,
            format!(
                "mount {} on {}: {}",
                dev.display(),
                target.display(),
                std::io::Error::last_os_error()
            ),
        ));
    }
    Ok(())
}

fn umount(target: &Path) {
    let t = std::ffi::CString::new(target.to_string_lossy().as_bytes()).unwrap_or_default();
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
}

fn pipe() -> Result<(OwnedFd, OwnedFd), ErrorReply> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(err(
            ErrorCode::Internal,
            format!("pipe: {}", std::io::Error::last_os_error()),
        ));
    }
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Copies `from` to `to` until EOF (or drops the data when there is no `to`).
fn copier(mut from: File, mut to: Option<File>) -> Option<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("stdio".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Some(t) = to.as_mut() {
                            if t.write_all(&buf[..n]).is_err() {
                                to = None;
                            }
                        }
                    }
                }
            }
            if let Some(t) = to.as_mut() {
                let _ = t.flush();
            }
        })
        .ok()
}

/// What is waiting in a pipe, without blocking (at most 4 KiB).
fn drain_nonblocking(mut f: File) -> String {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut buf = vec![0u8; 4096];
    let n = f.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// An error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Creates container `id`; its process waits for [`start`]. On failure the
/// stdio streams attached for it are closed.
pub fn create(id: &str, spec: serde_json::Value, rootfs: &Storage) -> Result<(), ErrorReply> {
    let result = create_container(id, spec, rootfs);
    if result.is_err() {
        crate::stdio::forget(id);
    }
    result
}

fn create_container(
    id: &str,
    mut spec: serde_json::Value,
    rootfs: &Storage,
) -> Result<(), ErrorReply> {
    if !valid_id(id) {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("invalid container id {id:?}"),
        ));
    }
    if registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(id)
    {
        return Err(err(
            ErrorCode::FailedPrecondition,
            format!("container {id:?} exists"),
        ));
    }
    if !spec.is_object() || spec.get("process").is_none() {
        return Err(err(
            ErrorCode::InvalidArgument,
            "spec: not an OCI config with a process",
        ));
    }
    let bundle = Path::new(BUNDLES).join(id);
    let rootfs_dir = bundle.join("rootfs");
    mount_rootfs(rootfs, &rootfs_dir)?;
    let readonly = spec
        .pointer("/root/readonly")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    spec["root"] = serde_json::json!({"path": "rootfs", "readonly": readonly});
    let cleanup = |e: ErrorReply| {
        umount(&rootfs_dir);
        let _ = std::fs::remove_dir_all(&bundle);
        e
    };
    std::fs::write(bundle.join("config.json"), spec.to_string())
        .map_err(|e| cleanup(err(ErrorCode::Internal, format!("config.json: {e}"))))?;

    let (fds, host) = stdio_pipes().map_err(cleanup)?;
    let _ = std::fs::create_dir_all(STATE);
    let built = {
        // libcontainer waits for its own intermediate process.
        let _hold = reaper().hold();
        ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(STATE)
            .map(|b| {
                b.with_stdin(fds.stdin)
                    .with_stdout(fds.stdout)
                    .with_stderr(fds.stderr)
                    .as_init(&bundle)
                    .with_systemd(false)
                    .with_detach(true)
                    // The guest's root is the initramfs, where pivot_root(2)
                    // is refused: move the root and chroot instead.
                    .with_no_pivot(true)
            })
            .and_then(|b| b.build())
    };
    let container = match built {
        Ok(c) => c,
        Err(e) => {
            return Err(cleanup(err(
                ErrorCode::Internal,
                format!(
                    "create container: {} [{}]",
                    chain(&e),
                    host.failure_report()
                ),
            )));
        }
    };
    let pid = container
        .pid()
        .map(|p| p.as_raw())
        .ok_or_else(|| cleanup(err(ErrorCode::Internal, "container has no process")))?;

    let copiers = host.connect(id, "");
    registry().lock().unwrap_or_else(|e| e.into_inner()).insert(
        id.to_string(),
        Arc::new(Mutex::new(Entry {
            container,
            pid,
            bundle,
            copiers,
            exit: None,
            execs: HashMap::new(),
        })),
    );
    Ok(())
}

/// Runs the container's process.
pub fn start(id: &str) -> Result<(), ErrorReply> {
    let entry = get(id)?;
    let mut e = entry.lock().unwrap_or_else(|e| e.into_inner());
    e.container
        .start()
        .map_err(|x| err(ErrorCode::FailedPrecondition, format!("start {id}: {x}")))
}

/// Waits for the process to exit and its output to reach the host.
pub fn wait(id: &str) -> Result<i32, ErrorReply> {
    let entry = get(id)?;
    let pid = {
        let e = entry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(code) = e.exit {
            return Ok(code);
        }
        e.pid
    };
    let code = reaper().wait(pid);
    let mut e = entry.lock().unwrap_or_else(|e| e.into_inner());
    for c in e.copiers.drain(..) {
        let _ = c.join();
    }
    e.exit = Some(code);
    Ok(code)
}

/// Sends `signal` to the container's process.
pub fn signal(id: &str, signal: i32) -> Result<(), ErrorReply> {
    let entry = get(id)?;
    let sig = Signal::try_from(signal).map_err(|_| {
        err(
            ErrorCode::InvalidArgument,
            format!("invalid signal {signal}"),
        )
    })?;
    let mut e = entry.lock().unwrap_or_else(|e| e.into_inner());
    e.container
        .kill(sig, false)
        .map_err(|x| err(ErrorCode::FailedPrecondition, format!("signal {id}: {x}")))
}

/// The process's ends of its stdio pipes.
struct ProcessFds {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

/// The agent's ends of a process's stdio pipes.
struct HostEnds {
    stdin: File,
    stdout: File,
    stderr: File,
}

impl HostEnds {
    /// Connects the pipes to the host streams attached for (`id`,
    /// `exec_id`); returns the output copy threads.
    fn connect(self, id: &str, exec_id: &str) -> Vec<JoinHandle<()>> {
        let mut copiers = Vec::new();
        copiers.extend(copier(
            self.stdout,
            crate::stdio::take(id, exec_id, StdioStream::Stdout),
        ));
        copiers.extend(copier(
            self.stderr,
            crate::stdio::take(id, exec_id, StdioStream::Stderr),
        ));
        // Host input to the process; closing the connection closes stdin.
        if let Some(conn) = crate::stdio::take(id, exec_id, StdioStream::Stdin) {
            let _ = copier(conn, Some(self.stdin));
        }
        copiers
    }

    /// What the set-up process wrote to stderr before it failed.
    fn failure_report(self) -> String {
        let detail = drain_nonblocking(self.stderr);
        let said: Vec<&str> = detail
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        said.join(" | ")
    }
}

/// Pipes for a process's stdin, stdout and stderr.
fn stdio_pipes() -> Result<(ProcessFds, HostEnds), ErrorReply> {
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (in_r, in_w) = pipe()?;
    Ok((
        ProcessFds {
            stdin: in_r,
            stdout: out_w,
            stderr: err_w,
        },
        HostEnds {
            stdin: File::from(in_w),
            stdout: File::from(out_r),
            stderr: File::from(err_r),
        },
    ))
}

/// Runs a process in running container `id`.
pub fn exec(
    id: &str,
    exec_id: &str,
    args: Vec<String>,
    env: Vec<String>,
    cwd: Option<String>,
) -> Result<(), ErrorReply> {
    if !valid_id(exec_id) {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("invalid exec id {exec_id:?}"),
        ));
    }
    if args.is_empty() {
        return Err(err(ErrorCode::InvalidArgument, "exec: args are empty"));
    }
    let entry = get(id)?;
    {
        let e = entry.lock().unwrap_or_else(|e| e.into_inner());
        if e.exit.is_some() || reaper().peek(e.pid).is_some() {
            return Err(err(
                ErrorCode::FailedPrecondition,
                format!("container {id} is not running"),
            ));
        }
        if e.execs.contains_key(exec_id) || e.execs.len() >= MAX_EXECS {
            return Err(err(
                ErrorCode::FailedPrecondition,
                format!("exec {exec_id:?} exists in {id}"),
            ));
        }
    }
    let env: HashMap<String, String> = env
        .iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let (fds, host) = stdio_pipes()?;
    let built = {
        let _hold = reaper().hold();
        ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(STATE)
            .map(|b| {
                b.with_stdin(fds.stdin)
                    .with_stdout(fds.stdout)
                    .with_stderr(fds.stderr)
                    .as_tenant()
                    .with_container_args(args)
                    .with_env(env)
                    .with_cwd(cwd)
                    .with_detach(true)
            })
            .and_then(|b| b.build())
    };
    let pid = match built {
        Ok(pid) => pid.as_raw(),
        Err(e) => {
            return Err(err(
                ErrorCode::Internal,
                format!("exec in {id}: {} [{}]", chain(&e), host.failure_report()),
            ));
        }
    };
    let copiers = host.connect(id, exec_id);
    entry
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .execs
        .insert(
            exec_id.to_string(),
            Exec {
                pid,
                copiers,
                exit: None,
            },
        );
    Ok(())
}

/// Waits for an exec'd process to exit and its output to reach the host.
pub fn wait_exec(id: &str, exec_id: &str) -> Result<i32, ErrorReply> {
    let entry = get(id)?;
    let pid = {
        let e = entry.lock().unwrap_or_else(|e| e.into_inner());
        let x = e
            .execs
            .get(exec_id)
            .ok_or_else(|| err(ErrorCode::NotFound, format!("no exec {exec_id:?} in {id}")))?;
        if let Some(code) = x.exit {
            return Ok(code);
        }
        x.pid
    };
    let code = reaper().wait(pid);
    let mut e = entry.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(x) = e.execs.get_mut(exec_id) {
        for c in x.copiers.drain(..) {
            let _ = c.join();
        }
        x.exit = Some(code);
    }
    Ok(code)
}

/// Removes a container whose process has exited (or never started).
pub fn remove(id: &str) -> Result<(), ErrorReply> {
    let entry = get(id)?;
    {
        let mut e = entry.lock().unwrap_or_else(|e| e.into_inner());
        if e.exit.is_none() && reaper().peek(e.pid).is_none() {
            let started = e.container.status() != libcontainer::container::ContainerStatus::Created;
            if started {
                return Err(err(
                    ErrorCode::FailedPrecondition,
                    format!("container {id} is running"),
                ));
            }
        }
        let _ = e.container.delete(true);
        umount(&e.bundle.join("rootfs"));
        let _ = std::fs::remove_dir_all(&e.bundle);
    }
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(id);
    crate::stdio::forget(id);
    Ok(())
}
