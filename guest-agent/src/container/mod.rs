//! Containers in the guest: root file system from a virtio-blk drive under
//! an overlay, namespaces, mounts, cgroups, capabilities and seccomp set up
//! by libcontainer from the OCI spec, stdio through pipes or a terminal
//! copied to the host's stream connections, exit status reported only after
//! the output was flushed.

mod io;
mod process;
mod rootfs;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use protocol::{ErrorCode, ErrorReply, ExitInfo, Storage};

use self::process::Process;
use self::rootfs::RootfsMounts;
pub use self::rootfs::mount;
use crate::cgroup;
use crate::reaper::reaper;

const BUNDLES: &str = "/run/husk/containers";
const STATE: &str = "/run/husk/state";

/// Most exec'd processes remembered per container.
const MAX_EXECS: usize = 1024;

/// Most containers in one guest.
const MAX_CONTAINERS: usize = 256;

struct Entry {
    container: Container,
    bundle: PathBuf,
    mounts: RootfsMounts,
    init: Arc<Process>,
    started: bool,
    execs: HashMap<String, Arc<Process>>,
    _oom: Option<cgroup::OomWatch>,
}

type Registry = Mutex<HashMap<String, Arc<Mutex<Entry>>>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Default::default)
}

pub(crate) fn err(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
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

fn lock(entry: &Mutex<Entry>) -> std::sync::MutexGuard<'_, Entry> {
    entry.lock().unwrap_or_else(|e| e.into_inner())
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !id.starts_with('.')
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

fn terminal(process: &serde_json::Value) -> bool {
    process
        .get("terminal")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false)
}

/// Creates container `id`; its process waits for [`start`]. On failure the
/// stdio streams attached for it are closed and nothing is left mounted.
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
    storage: &Storage,
) -> Result<(), ErrorReply> {
    if !valid_id(id) {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("invalid container id {id:?}"),
        ));
    }
    {
        let reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        if reg.contains_key(id) {
            return Err(err(
                ErrorCode::FailedPrecondition,
                format!("container {id:?} exists"),
            ));
        }
        if reg.len() >= MAX_CONTAINERS {
            return Err(err(
                ErrorCode::FailedPrecondition,
                format!("at most {MAX_CONTAINERS} containers in one guest"),
            ));
        }
    }
    let Some(process) = spec.get("process").filter(|p| p.is_object()) else {
        return Err(err(
            ErrorCode::InvalidArgument,
            "spec: not an OCI config with a process",
        ));
    };
    let tty = terminal(process);
    let readonly = spec
        .pointer("/root/readonly")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    spec["root"] = serde_json::json!({"path": "rootfs", "readonly": readonly});
    // The agent owns the guest's cgroup tree: every container at /husk/<id>.
    if !spec.get("linux").is_some_and(serde_json::Value::is_object) {
        spec["linux"] = serde_json::json!({});
    }
    spec["linux"]["cgroupsPath"] = serde_json::json!(cgroup::path(id));

    let bundle = Path::new(BUNDLES).join(id);
    let mounts = rootfs::mount_rootfs(storage, &bundle)?;
    let cleanup = |e: ErrorReply| {
        mounts.unmount();
        let _ = std::fs::remove_dir_all(&bundle);
        e
    };
    std::fs::write(bundle.join("config.json"), spec.to_string())
        .map_err(|e| cleanup(err(ErrorCode::Internal, format!("config.json: {e}"))))?;

    let (fds, prepared) = io::prepare(tty).map_err(cleanup)?;
    let _ = std::fs::create_dir_all(STATE);
    let built = {
        // libcontainer waits for its own intermediate process.
        let _hold = reaper().hold();
        builder(id, fds, &prepared)
            .map(|b| {
                b.as_init(&bundle)
                    .with_systemd(false)
                    .with_detach(true)
                    // The guest's root is the initramfs, where pivot_root(2)
                    // is refused: move the root and chroot instead.
                    .with_no_pivot(true)
            })
            .and_then(|b| b.build())
    };
    let mut container = match built {
        Ok(c) => c,
        Err(e) => {
            return Err(cleanup(err(
                ErrorCode::Internal,
                format!(
                    "create container: {} [{}]",
                    chain(&e),
                    prepared.failure_report()
                ),
            )));
        }
    };
    let discard = |container: &mut Container, e: ErrorReply| {
        let _ = container.delete(true);
        cleanup(e)
    };
    let Some(pid) = container.pid().map(|p| p.as_raw()) else {
        return Err(discard(
            &mut container,
            err(ErrorCode::Internal, "container has no process"),
        ));
    };
    let (control, output) = match prepared.connect(id, "") {
        Ok(x) => x,
        Err(e) => return Err(discard(&mut container, e)),
    };
    let init = match Process::track(pid, control, output) {
        Ok(p) => p,
        Err(e) => return Err(discard(&mut container, e)),
    };
    let oom = match cgroup::watch_oom(id) {
        Ok(w) => Some(w),
        Err(e) => {
            crate::log(&format!("no OOM events for {id}: {}", e.message));
            None
        }
    };
    registry().lock().unwrap_or_else(|e| e.into_inner()).insert(
        id.to_string(),
        Arc::new(Mutex::new(Entry {
            container,
            bundle,
            mounts,
            init,
            started: false,
            execs: HashMap::new(),
            _oom: oom,
        })),
    );
    Ok(())
}

/// Runs the container's process.
pub fn start(id: &str) -> Result<(), ErrorReply> {
    let entry = get(id)?;
    let mut e = lock(&entry);
    if e.started {
        return Err(err(
            ErrorCode::FailedPrecondition,
            format!("container {id} was started"),
        ));
    }
    e.container
        .start()
        .map_err(|x| err(ErrorCode::FailedPrecondition, format!("start {id}: {x}")))?;
    e.started = true;
    Ok(())
}

/// The container's own process, or exec'd process `exec_id`.
fn process(id: &str, exec_id: &str) -> Result<Arc<Process>, ErrorReply> {
    let entry = get(id)?;
    let e = lock(&entry);
    if exec_id.is_empty() {
        return Ok(Arc::clone(&e.init));
    }
    e.execs
        .get(exec_id)
        .cloned()
        .ok_or_else(|| err(ErrorCode::NotFound, format!("no exec {exec_id:?} in {id}")))
}

/// Waits for a process to exit and its output to reach the host.
pub fn wait(id: &str, exec_id: &str) -> Result<ExitInfo, ErrorReply> {
    Ok(process(id, exec_id)?.wait())
}

/// Sends `signal` to the container's process, or to all its processes.
pub fn signal(id: &str, signal: i32, all: bool) -> Result<(), ErrorReply> {
    let entry = get(id)?;
    let sig = Signal::try_from(signal).map_err(|_| {
        err(
            ErrorCode::InvalidArgument,
            format!("invalid signal {signal}"),
        )
    })?;
    let mut e = lock(&entry);
    if e.init.exit().is_some() {
        return Err(err(
            ErrorCode::FailedPrecondition,
            format!("container {id} is not running"),
        ));
    }
    e.container
        .kill(sig, all)
        .map_err(|x| err(ErrorCode::FailedPrecondition, format!("signal {id}: {x}")))
}

/// Freezes (`pause`) or thaws a running container.
pub fn freeze(id: &str, pause: bool) -> Result<(), ErrorReply> {
    let entry = get(id)?;
    let mut e = lock(&entry);
    if !e.started || e.init.exit().is_some() {
        return Err(err(
            ErrorCode::FailedPrecondition,
            format!("container {id} is not running"),
        ));
    }
    let result = if pause {
        e.container.pause()
    } else {
        e.container.resume()
    };
    let what = if pause { "pause" } else { "resume" };
    result.map_err(|x| err(ErrorCode::FailedPrecondition, format!("{what} {id}: {x}")))
}

/// Sends `signal` to exec'd process `exec_id`.
pub fn signal_exec(id: &str, exec_id: &str, signal: i32) -> Result<(), ErrorReply> {
    if exec_id.is_empty() {
        return Err(err(
            ErrorCode::InvalidArgument,
            "signal_exec: empty exec_id",
        ));
    }
    process(id, exec_id)?.signal(signal)
}

/// Sets the window size of a process's terminal.
pub fn resize(id: &str, exec_id: &str, rows: u16, cols: u16) -> Result<(), ErrorReply> {
    process(id, exec_id)?.control.resize(rows, cols)
}

/// Ends a process's input.
pub fn close_stdin(id: &str, exec_id: &str, after_bytes: Option<u64>) -> Result<(), ErrorReply> {
    process(id, exec_id)?.control.close_stdin(after_bytes);
    Ok(())
}

/// The container's processes (guest PIDs).
pub fn processes(id: &str) -> Result<Vec<i32>, ErrorReply> {
    get(id)?;
    cgroup::pids(id)
}

/// A libcontainer builder for a process of container `id` with the given
/// stdio (and console socket, for a terminal).
fn builder(
    id: &str,
    fds: io::ProcessFds,
    prepared: &io::Prepared,
) -> Result<ContainerBuilder, libcontainer::error::LibcontainerError> {
    Ok(
        ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(STATE)?
            .with_stdin(fds.stdin)
            .with_stdout(fds.stdout)
            .with_stderr(fds.stderr)
            .with_console_socket(prepared.console_path()),
    )
}

/// Runs a process (an OCI `process` object) in running container `id`.
pub fn exec(id: &str, exec_id: &str, process: serde_json::Value) -> Result<(), ErrorReply> {
    let result = exec_process(id, exec_id, process);
    if result.is_err() {
        crate::stdio::forget_process(id, exec_id);
    }
    result
}

fn exec_process(id: &str, exec_id: &str, process: serde_json::Value) -> Result<(), ErrorReply> {
    if !valid_id(exec_id) {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("invalid exec id {exec_id:?}"),
        ));
    }
    let args_ok = process
        .get("args")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|a| !a.is_empty() && a.iter().all(serde_json::Value::is_string));
    if !process.is_object() || !args_ok {
        return Err(err(
            ErrorCode::InvalidArgument,
            "exec: process is not an OCI process with args",
        ));
    }
    if let Err(e) = serde_json::from_value::<oci_spec::runtime::Process>(process.clone()) {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("exec: invalid OCI process: {e}"),
        ));
    }
    let tty = terminal(&process);
    let entry = get(id)?;
    let process_file = {
        let e = lock(&entry);
        if !e.started || e.init.exit().is_some() {
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
        let dir = e.bundle.join("execs");
        let _ = std::fs::create_dir_all(&dir);
        dir.join(format!("{exec_id}.json"))
    };
    std::fs::write(&process_file, process.to_string())
        .map_err(|e| err(ErrorCode::Internal, format!("process.json: {e}")))?;
    let (fds, prepared) = io::prepare(tty)?;
    let built = {
        let _hold = reaper().hold();
        builder(id, fds, &prepared)
            .map(|b| {
                b.as_tenant()
                    .with_process(Some(&process_file))
                    .with_detach(true)
            })
            .and_then(|b| b.build())
    };
    let _ = std::fs::remove_file(&process_file);
    let pid = match built {
        Ok(pid) => pid.as_raw(),
        Err(e) => {
            return Err(err(
                ErrorCode::Internal,
                format!(
                    "exec in {id}: {} [{}]",
                    chain(&e),
                    prepared.failure_report()
                ),
            ));
        }
    };
    let (control, output) = match prepared.connect(id, exec_id) {
        Ok(x) => x,
        Err(e) => {
            // SAFETY: kill(2) takes no pointers; the process is ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return Err(e);
        }
    };
    let p = Process::track(pid, control, output)?;
    lock(&entry).execs.insert(exec_id.to_string(), p);
    Ok(())
}

/// Removes a container whose process has exited (or never started).
pub fn remove(id: &str) -> Result<(), ErrorReply> {
    let entry = get(id)?;
    {
        let mut e = lock(&entry);
        if e.started && e.init.exit().is_none() {
            return Err(err(
                ErrorCode::FailedPrecondition,
                format!("container {id} is running"),
            ));
        }
        let _ = e.container.delete(true);
        e.mounts.unmount();
        let _ = std::fs::remove_dir_all(&e.bundle);
    }
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(id);
    crate::stdio::forget(id);
    Ok(())
}

/// Checks that container `id` exists.
pub fn exists(id: &str) -> Result<(), ErrorReply> {
    get(id).map(|_| ())
}
