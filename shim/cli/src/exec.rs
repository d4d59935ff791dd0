//! Starting monitors, and `husk exec`.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command};

use liboci_cli::Exec;
use serde_json::Value;

use husk_host::oci::Status;

use crate::CliError;
use crate::monitor::READY_FD;
use crate::state::Store;

/// Starts a monitor (`husk __monitor …`) with this process's stdio and
/// waits until it reports; returns it once the container (or exec) exists.
pub fn spawn_monitor(store: &Store, args: Vec<OsString>) -> Result<Child, CliError> {
    let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| CliError(format!("pipe: {e}")))?;
    let exe = std::env::current_exe().map_err(|e| CliError(format!("husk executable: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--root")
        .arg(store.root())
        .args(crate::log::child_args())
        .arg("__monitor")
        .args(args);
    let fd = write.as_raw_fd();
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the child between fork and exec; dup2(2) is
    // async-signal-safe and `fd` is open in the child (inherited).
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| CliError(format!("start the monitor: {e}")))?;
    drop(write);
    let mut report = String::new();
    let _ = std::fs::File::from(read).read_to_string(&mut report);
    let report = report.trim();
    if report == "ok" {
        return Ok(child);
    }
    let _ = child.wait();
    Err(CliError(
        report
            .strip_prefix("error: ")
            .unwrap_or(if report.is_empty() {
                "the monitor exited before the container was created"
            } else {
                report
            })
            .to_string(),
    ))
}

/// `--preserve-fds`: host descriptors cannot cross into the VM.
pub fn check_preserve_fds(n: i32) -> Result<(), CliError> {
    if n == 0 {
        Ok(())
    } else {
        Err(CliError(
            "not implemented: --preserve-fds (host descriptors cannot be passed into the VM)"
                .into(),
        ))
    }
}

/// Writes `pid` to the caller's pid file (atomically, as runc does).
pub fn write_pid_file(path: Option<&Path>, pid: u32) -> Result<(), CliError> {
    let Some(path) = path else { return Ok(()) };
    let tmp = path.with_extension("husk-tmp");
    std::fs::write(&tmp, pid.to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| CliError(format!("pid file {}: {e}", path.display())))
}

/// The exit status of a waited-for monitor.
pub fn status_of(child: &mut Child) -> i32 {
    match child.wait() {
        Ok(s) => s.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + s.signal().unwrap_or(0)
        }),
        Err(_) => 1,
    }
}

/// The process for `husk exec`: `--process` as given, or the container's
/// own process with the command, env, cwd, user and terminal of the flags.
fn exec_process(store: &Store, args: &Exec) -> Result<Value, CliError> {
    if let Some(path) = &args.process {
        let text = std::fs::read(path)
            .map_err(|e| CliError(format!("process {}: {e}", path.display())))?;
        return serde_json::from_slice(&text)
            .map_err(|e| CliError(format!("process {}: {e}", path.display())));
    }
    if args.command.is_empty() {
        return Err(CliError(
            "exec: no command given (args or --process)".into(),
        ));
    }
    let state = store.load(&args.container_id)?;
    let text = std::fs::read(state.bundle.join("config.json"))
        .map_err(|e| CliError(format!("bundle of {}: {e}", args.container_id)))?;
    let spec: Value = serde_json::from_slice(&text)?;
    let mut p = spec["process"].clone();
    p["args"] = serde_json::json!(args.command);
    p["terminal"] = Value::Bool(args.tty);
    if let Some(cwd) = &args.cwd {
        p["cwd"] = serde_json::json!(cwd);
    }
    if let Some((uid, gid)) = args.user {
        p["user"] = serde_json::json!({"uid": uid, "gid": gid.unwrap_or(0), "additionalGids": args.additional_gids});
    }
    if !args.env.is_empty() {
        let mut env: Vec<Value> = p["env"].as_array().cloned().unwrap_or_default();
        env.extend(
            args.env
                .iter()
                .map(|(k, v)| Value::String(format!("{k}={v}"))),
        );
        p["env"] = Value::Array(env);
    }
    if args.no_new_privs {
        p["noNewPrivileges"] = Value::Bool(true);
    }
    Ok(p)
}

/// `husk exec`.
pub fn exec(store: &Store, args: Exec) -> Result<i32, CliError> {
    check_preserve_fds(args.preserve_fds)?;
    let state = store.load(&args.container_id)?;
    let status = state.live_status();
    if status != Status::Running {
        return Err(CliError(format!(
            "cannot exec in container {}: it is {status}",
            args.container_id
        )));
    }
    let process = exec_process(store, &args)?;
    let file = store
        .dir(&args.container_id)
        .join(format!("exec-{}.json", std::process::id()));
    std::fs::write(&file, process.to_string())
        .map_err(|e| CliError(format!("{}: {e}", file.display())))?;
    let mut margs: Vec<OsString> = vec!["--process".into(), file.clone().into()];
    if let Some(s) = &args.console_socket {
        margs.push("--console-socket".into());
        margs.push(s.into());
    }
    margs.push(args.container_id.clone().into());
    let spawned = spawn_monitor(store, margs);
    let _ = std::fs::remove_file(&file);
    let mut child = spawned?;
    write_pid_file(args.pid_file.as_deref(), child.id())?;
    if args.detach {
        return Ok(0);
    }
    Ok(status_of(&mut child))
}
