//! The monitor: the host process that is a container's (or exec'd
//! process's) `pid`. It owns the VM (whose processes die with it), relays
//! the caller's stdio to the guest, forwards the signals it receives, and
//! exits with the process's status once its output is flushed.
//!
//! The front end starts it with its own stdio (which become the process's)
//! and a pipe on descriptor 3; the monitor writes `ok` or `error: <line>`
//! there once the container is created (or the exec started) and closes it.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_host::agent::{AgentClient, AgentError, HostEnds, ProcessStdio, StdioPumps};
use husk_host::bundle::Bundle;
use husk_host::config::HuskConfig;
use husk_host::oci::Status;
use husk_host::process::start_time;
use husk_host::sandbox::{self, Placement, Recorder, Sandbox, SandboxError, VmPlace};
use protocol::{Call, ExitInfo};

use crate::state::{ContainerState, StateError, Store};
use crate::tty::{self, TtyError};

/// The descriptor the readiness pipe arrives on.
pub const READY_FD: i32 = 3;

/// Errors before the process runs.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// Provisioning the VM and the container.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// State store.
    #[error(transparent)]
    State(#[from] StateError),
    /// The agent.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The terminal.
    #[error(transparent)]
    Tty(#[from] TtyError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// What the monitor runs.
#[derive(Debug, Clone)]
pub enum Role {
    /// A new container from a bundle.
    Container {
        /// Bundle directory.
        bundle: PathBuf,
    },
    /// Another process in a running container.
    Exec {
        /// The OCI process (JSON file).
        process: PathBuf,
    },
}

/// The monitor's arguments.
#[derive(Debug, Clone)]
pub struct MonitorArgs {
    /// State store.
    pub store: Store,
    /// Container ID.
    pub id: String,
    /// What to run.
    pub role: Role,
    /// Where to send a terminal's master.
    pub console_socket: Option<PathBuf>,
}

/// Runs the monitor; returns the exit status for the process to exit with.
pub fn run(args: &MonitorArgs) -> i32 {
    // SAFETY: descriptor 3 was set up by the front end for us alone.
    let mut ready = unsafe { File::from_raw_fd(READY_FD) };
    // The VM's processes must not inherit it: the front end waits for EOF.
    let _ = nix::fcntl::fcntl(
        ready.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let _ = nix::unistd::setsid();
    block_forwarded_signals();
    let prepared = match args.role {
        Role::Container { ref bundle } => prepare_container(args, bundle),
        Role::Exec { ref process } => prepare_exec(args, process),
    };
    let mut running = match prepared {
        Ok(r) => r,
        Err(e) => {
            let line = e.to_string().replace('\n', " ");
            let _ = writeln!(ready, "error: {line}");
            return 1;
        }
    };
    let _ = ready.write_all(b"ok\n");
    drop(ready);
    running.forward_signals(args);
    let exit = running.wait(args);
    if let Role::Container { .. } = args.role {
        args.store.record_exit(&args.id, exit.status);
    }
    if let Some(sandbox) = running.sandbox.take() {
        sandbox.shut_down();
    }
    exit.status & 0xff
}

/// A process the monitor relays.
struct Running {
    sandbox: Option<Arc<Sandbox>>,
    vsock: PathBuf,
    exec_id: String,
    client: AgentClient,
    pumps: Option<StdioPumps>,
    tty: Option<File>,
}

const FORWARDED: [nix::sys::signal::Signal; 7] = {
    use nix::sys::signal::Signal::*;
    [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH]
};

fn forwarded_set() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set
}

fn block_forwarded_signals() {
    let _ = forwarded_set().thread_block();
}

fn prepare_container(args: &MonitorArgs, bundle_dir: &Path) -> Result<Running, MonitorError> {
    let id = &args.id;
    let t0 = Instant::now();
    let cfg = HuskConfig::load_default().map_err(SandboxError::from)?;
    let bundle = Bundle::load(bundle_dir).map_err(SandboxError::from)?;
    let terminal = bundle.terminal();
    if terminal && args.console_socket.is_none() {
        return Err(MonitorError::Other(
            "process.terminal is set but no --console-socket was given".into(),
        ));
    }
    let dir = args.store.dir(id);
    // Everything acquired is recorded in the container's directory; a
    // failure gives it back, `delete` does after the end.
    let mut rec = Recorder::new(&dir);
    let plan = sandbox::plan(
        &cfg,
        bundle,
        id,
        &dir,
        None,
        Placement::NewVm { pod: false },
    )?;
    let t_image = t0.elapsed();
    let vm_dir = args.store.vm_dir(id);
    let place = VmPlace {
        dir: &dir,
        vm_dir: &vm_dir,
        launcher: None,
    };
    let booted = sandbox::boot_sandbox(&cfg, &plan, false, place, &mut rec)?;
    if booted.rebooted {
        log::debug!("{id}: the VM's vsock never answered: booted a new VM");
    }
    let t_spawned = booted.boot_started.duration_since(t0) + booted.spawned;
    let mut client = booted.client;
    let sandbox = booted.sandbox;
    let vsock = sandbox.vsock.clone();
    let t_ready = t0.elapsed();
    // The guest's own clock: kernel start → agent serving.
    let guest_boot_ms = if log::log_enabled!(log::Level::Debug) {
        match client.call(Call::Version) {
            Ok(protocol::Reply::Version(v)) => v.boot_to_ready_ms,
            _ => 0,
        }
    } else {
        0
    };
    let stdio = ProcessStdio::attach(&vsock, id, "", true, terminal)?;
    sandbox::create_container(&mut client, &plan, booted.root_serial)?;
    let running = start(
        stdio,
        terminal,
        args,
        Some(sandbox),
        vsock.clone(),
        String::new(),
        client,
    )?;
    let me = std::process::id() as i32;
    let state = ContainerState {
        id: id.clone(),
        bundle: plan.bundle.dir.clone(),
        status: Status::Created,
        pid: me,
        pid_start: start_time(me).unwrap_or(0),
        annotations: plan.bundle.annotations.clone(),
        vsock,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        hooks: plan.hooks.clone(),
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    log::debug!(
        id = id.as_str(),
        image_ms = ms(t_image),
        vm_spawned_ms = ms(t_spawned),
        agent_ready_ms = ms(t_ready),
        guest_boot_ms = guest_boot_ms,
        created_ms = ms(t0.elapsed());
        "container created"
    );
    sandbox::run_create_hooks(&plan, &state.oci_json_as(Status::Creating))?;
    args.store.save(&state)?;
    rec.keep();
    Ok(running)
}

fn prepare_exec(args: &MonitorArgs, process_file: &Path) -> Result<Running, MonitorError> {
    let state = args.store.load(&args.id)?;
    let status = state.live_status();
    if status != Status::Running {
        return Err(MonitorError::Other(format!(
            "cannot exec in container {}: it is {status}",
            args.id
        )));
    }
    let text = std::fs::read(process_file)
        .map_err(|e| MonitorError::Other(format!("process {}: {e}", process_file.display())))?;
    let process: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| MonitorError::Other(format!("process {}: {e}", process_file.display())))?;
    let terminal = process["terminal"].as_bool().unwrap_or(false);
    if terminal && args.console_socket.is_none() {
        return Err(MonitorError::Other(
            "process.terminal is set but no --console-socket was given".into(),
        ));
    }
    let exec_id = format!("exec-{}", std::process::id());
    let mut client = AgentClient::connect(&state.vsock)?;
    let stdio = ProcessStdio::attach(&state.vsock, &args.id, &exec_id, true, terminal)?;
    client.call_empty(Call::ExecProcess {
        container_id: args.id.clone(),
        exec_id: exec_id.clone(),
        process,
    })?;
    start(
        stdio,
        terminal,
        args,
        None,
        state.vsock.clone(),
        exec_id,
        client,
    )
}

/// Connects a process's streams to this process's stdio (or a new
/// terminal, sent over the console socket).
fn start(
    stdio: ProcessStdio,
    terminal: bool,
    args: &MonitorArgs,
    sandbox: Option<Arc<Sandbox>>,
    vsock: PathBuf,
    exec_id: String,
    client: AgentClient,
) -> Result<Running, MonitorError> {
    let dup = |fd: i32| -> Result<File, MonitorError> {
        // SAFETY: duplicating one of this process's stdio descriptors.
        let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        if new < 0 {
            return Err(MonitorError::Other(format!(
                "stdio {fd}: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: `new` is a fresh descriptor owned by nothing else.
        Ok(unsafe { File::from_raw_fd(new) })
    };
    let tty = match (terminal, &args.console_socket) {
        (true, Some(socket)) => {
            let slave = tty::open_for_console(socket)?;
            tty::make_controlling(&slave);
            Some(slave)
        }
        _ => None,
    };
    let clone = |f: &File| {
        f.try_clone()
            .map_err(|e| MonitorError::Other(format!("terminal: {e}")))
    };
    let (input, output) = match &tty {
        Some(t) => (clone(t)?, clone(t)?),
        None => (dup(0)?, dup(1)?),
    };
    let stderr: Option<Box<dyn Write + Send>> = if terminal {
        None
    } else {
        Some(Box::new(dup(2)?))
    };
    let pumps = stdio
        .start(HostEnds {
            stdin: Some(input),
            stdin_stop: None,
            stdout: Box::new(output),
            stderr,
        })
        .map_err(|e| MonitorError::Other(format!("stdio: {e}")))?;
    Ok(Running {
        sandbox,
        vsock,
        exec_id,
        client,
        pumps: Some(pumps),
        tty,
    })
}

impl Running {
    /// Forwards the signals this process receives to the guest process;
    /// SIGWINCH becomes a terminal resize.
    fn forward_signals(&self, args: &MonitorArgs) {
        let vsock = self.vsock.clone();
        let id = args.id.clone();
        let exec_id = self.exec_id.clone();
        let tty = self.tty.as_ref().and_then(|t| t.try_clone().ok());
        if let Some(t) = &tty {
            if let Some((rows, cols)) = tty::window_size(t) {
                resize(&vsock, &id, &exec_id, rows, cols);
            }
        }
        let _ = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let set = forwarded_set();
                while let Ok(sig) = set.wait() {
                    if sig == nix::sys::signal::Signal::SIGWINCH {
                        if let Some((rows, cols)) = tty.as_ref().and_then(tty::window_size) {
                            resize(&vsock, &id, &exec_id, rows, cols);
                        }
                        continue;
                    }
                    let Ok(mut c) = AgentClient::connect(&vsock) else {
                        continue;
                    };
                    let call = if exec_id.is_empty() {
                        Call::SignalContainer {
                            id: id.clone(),
                            signal: sig as i32,
                            all: false,
                        }
                    } else {
                        Call::SignalExec {
                            container_id: id.clone(),
                            exec_id: exec_id.clone(),
                            signal: sig as i32,
                        }
                    };
                    let _ = c.call_empty(call);
                }
            });
    }

    /// Waits for the exit and the output; a VM that died counts as killed.
    fn wait(&mut self, args: &MonitorArgs) -> ExitInfo {
        let exit = self
            .client
            .wait(&args.id, &self.exec_id)
            .unwrap_or(ExitInfo {
                status: 128 + libc::SIGKILL,
                stdout_bytes: 0,
                stderr_bytes: 0,
            });
        if let Some(p) = self.pumps.take() {
            p.finish(&exit);
        }
        exit
    }
}

fn resize(vsock: &Path, id: &str, exec_id: &str, rows: u16, cols: u16) {
    if let Ok(mut c) = AgentClient::connect(vsock) {
        let _ = c.call_empty(Call::ResizeTty {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            rows,
            cols,
        });
    }
}
