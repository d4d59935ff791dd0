//! The monitor: the host process that is a container's (or exec'd
//! process's) `pid`. It owns the VM (whose processes die with it), relays
//! the caller's stdio to the guest, forwards the signals it receives, and
//! exits with the process's status once its output is flushed.
//!
//! The front end starts it with its own stdio (which become the process's)
//! and a pipe on descriptor 3; the monitor writes `ok` or `error: <line>`
//! there once the container is created (or the exec started) and closes it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::network::NetworkConfig;
use protocol::{Call, ExitInfo, SandboxConfig, StdioStream};

use super::boot::{BootError, Booted, boot_vm, check_file, make_vm_dir};
use super::bundle::{Bundle, BundleError, guest_mounts, write_guest_files};
use super::config::{ConfigError, HuskConfig, sizing};
use super::hooks::{self, HookError, HookKind};
use super::log;
use super::state::{ContainerState, StateError, Status, Store, start_time};
use super::tty::{self, TtyError};
use crate::agent::{AgentClient, AgentError, OutputPump, attach};
use crate::hypervisor::{Drive, HypervisorError, Vm, VmSpec};
use crate::rootfs::{Delivery, RootfsError, build_image};
use crate::shares::{self, ShareGuard, ShareRoot};

/// The descriptor the readiness pipe arrives on.
pub const READY_FD: i32 = 3;

/// Errors before the process runs.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The bundle.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// State store.
    #[error(transparent)]
    State(#[from] StateError),
    /// The root image.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// The VM.
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    /// The agent.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The terminal.
    #[error(transparent)]
    Tty(#[from] TtyError),
    /// A `createRuntime` or `createContainer` hook.
    #[error(transparent)]
    Hook(#[from] HookError),
    /// Booting the VM.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The container's network.
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    /// Sharing host directories failed.
    #[error(transparent)]
    Shares(#[from] crate::shares::ShareError),
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
    if let Some(mut vm) = running.vm.take() {
        vm.kill();
    }
    exit.status & 0xff
}

/// A process the monitor relays.
struct Running {
    vm: Option<Vm>,
    vsock: PathBuf,
    exec_id: String,
    client: AgentClient,
    out: Option<OutputPump>,
    err: Option<OutputPump>,
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
    let t0 = std::time::Instant::now();
    let cfg = HuskConfig::load_default()?;
    let bundle = Bundle::load(bundle_dir)?;
    check_file("kernel", &cfg.kernel)?;
    check_file("initramfs", &cfg.initramfs)?;
    let terminal = bundle.terminal();
    if terminal && args.console_socket.is_none() {
        return Err(MonitorError::Other(
            "process.terminal is set but no --console-socket was given".into(),
        ));
    }
    let size = sizing(
        &cfg,
        bundle.cpu(),
        bundle.memory_limit(),
        &bundle.annotations,
    )?;
    let mut spec = bundle.spec.clone();
    // Hooks are host programs: they run here, never in the guest.
    let hooks = spec
        .as_object_mut()
        .and_then(|o| o.remove("hooks"))
        .unwrap_or_default();
    let mounts = guest_mounts(&mut spec, id)?;
    let dir = args.store.dir(id);
    let mut binds = mounts.shares;
    let delivery = size.rootfs.resolve();
    if delivery == Delivery::VirtioFs {
        binds.push(shares::rootfs_bind(
            id,
            &bundle.rootfs,
            bundle.root_readonly(),
        ));
    }
    let shares = if binds.is_empty() {
        ShareGuard::default()
    } else {
        ShareGuard::create(&dir.join("shared"), &binds)?
    };
    let image = match delivery {
        Delivery::Auto | Delivery::Block => Some(build_image(
            &bundle.rootfs,
            &dir.join(format!("rootfs.{}", cfg.rootfs_format)),
            cfg.rootfs_format,
        )?),
        Delivery::VirtioFs => None,
    };
    let t_image = t0.elapsed();
    let vm_dir = args.store.vm_dir(id);
    make_vm_dir(&vm_dir)?;
    let (network, net_config) = match &bundle.netns {
        Some(netns) => {
            let (a, c) = crate::network::Attachment::create(netns)?;
            (Some(a), c)
        }
        None => (None, NetworkConfig::default()),
    };
    let nics = network
        .as_ref()
        .map(|a| a.nics(&net_config))
        .unwrap_or_default();
    let network = crate::network::ReleaseGuard::new(network);
    let vm_spec = VmSpec {
        kernel: cfg.kernel.clone(),
        initrd: cfg.initramfs.clone(),
        vcpus: size.vcpus,
        memory_mib: size.memory_mib,
        drives: image
            .iter()
            .map(|image| Drive {
                id: "rootfs".into(),
                path: image.path.clone(),
                read_only: true,
            })
            .collect(),
        netns: bundle.netns.clone(),
        nics,
        shared_dir: shares.root().map(ShareRoot::root),
        extra_cmdline: String::new(),
    };
    let Booted {
        vm,
        mut client,
        spawned,
        rebooted,
    } = boot_vm(size.hypervisor.resolve(), &vm_dir, &vm_spec)?;
    if rebooted {
        log::debug(
            "the VM's vsock never answered: booted a new VM",
            serde_json::json!({ "id": id }),
        );
    }
    let t_spawned = t_image + spawned;
    let vm_processes: Vec<(i32, u64)> = vm
        .pids()
        .into_iter()
        .filter_map(|p| {
            let p = p as i32;
            start_time(p).map(|t| (p, t))
        })
        .collect();
    let vsock = vm.vsock_path().to_path_buf();
    let t_ready = t0.elapsed();
    // The guest's own clock: kernel start → agent serving.
    let guest_boot_ms = if log::debug_enabled() {
        match client.call(Call::Version) {
            Ok(protocol::Reply::Version(v)) => v.boot_to_ready_ms,
            _ => 0,
        }
    } else {
        0
    };
    client.call_empty(Call::CreateSandbox(SandboxConfig {
        hostname: spec["hostname"].as_str().unwrap_or_default().to_string(),
        network: net_config,
        shared_fs: shares.root().map(|_| shares::TAG.to_string()),
        ..SandboxConfig::default()
    }))?;
    write_guest_files(&mut client, mounts.files)?;
    let streams = Streams::attach(&vsock, id, "", terminal)?;
    let rootfs = match &image {
        Some(image) => image.storage("rootfs".into()),
        None => shares::rootfs_storage(id, bundle.root_readonly()),
    };
    client.call_empty(Call::CreateContainer {
        id: id.clone(),
        spec,
        rootfs,
    })?;
    let running = streams.start(args, Some(vm), vsock.clone(), String::new(), client)?;
    let me = std::process::id() as i32;
    let state = ContainerState {
        id: id.clone(),
        bundle: bundle.dir.clone(),
        status: Status::Created,
        pid: me,
        pid_start: start_time(me).unwrap_or(0),
        annotations: bundle.annotations.clone(),
        vsock,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        hooks,
        vm_processes,
        network: None,
        shares: None,
    };
    if log::debug_enabled() {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        log::debug(
            "container created",
            serde_json::json!({
                "id": id,
                "image_ms": ms(t_image),
                "vm_spawned_ms": ms(t_spawned),
                "agent_ready_ms": ms(t_ready),
                "guest_boot_ms": guest_boot_ms,
                "created_ms": ms(t0.elapsed()),
            }),
        );
    }
    let creating = state.oci_json_as(Status::Creating);
    hooks::run(&state.hooks, HookKind::CreateRuntime, &creating)?;
    hooks::run(&state.hooks, HookKind::CreateContainer, &creating)?;
    let state = ContainerState {
        network: network.keep(),
        shares: shares.keep(),
        ..state
    };
    args.store.save(&state)?;
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
    let streams = Streams::attach(&state.vsock, &args.id, &exec_id, terminal)?;
    client.call_empty(Call::ExecProcess {
        container_id: args.id.clone(),
        exec_id: exec_id.clone(),
        process,
    })?;
    streams.start(args, None, state.vsock.clone(), exec_id, client)
}

/// The guest streams of one process, attached before it is created.
struct Streams {
    stdin: std::os::unix::net::UnixStream,
    stdout: std::os::unix::net::UnixStream,
    stderr: Option<std::os::unix::net::UnixStream>,
}

impl Streams {
    fn attach(
        vsock: &Path,
        id: &str,
        exec_id: &str,
        terminal: bool,
    ) -> Result<Streams, AgentError> {
        Ok(Streams {
            stdin: attach(vsock, id, exec_id, StdioStream::Stdin)?,
            stdout: attach(vsock, id, exec_id, StdioStream::Stdout)?,
            stderr: if terminal {
                None
            } else {
                Some(attach(vsock, id, exec_id, StdioStream::Stderr)?)
            },
        })
    }

    /// Connects the streams to this process's stdio (or a new terminal).
    fn start(
        self,
        args: &MonitorArgs,
        vm: Option<Vm>,
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
        let tty = match (&self.stderr, &args.console_socket) {
            (None, Some(socket)) => {
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
        let out = OutputPump::start(self.stdout, Box::new(output))
            .map_err(|e| MonitorError::Other(format!("stdout: {e}")))?;
        let err = match self.stderr {
            Some(s) => Some(
                OutputPump::start(s, Box::new(dup(2)?))
                    .map_err(|e| MonitorError::Other(format!("stderr: {e}")))?,
            ),
            None => None,
        };
        input_pump(
            input,
            self.stdin,
            vsock.clone(),
            args.id.clone(),
            exec_id.clone(),
        );
        Ok(Running {
            vm,
            vsock,
            exec_id,
            client,
            out: Some(out),
            err,
            tty,
        })
    }
}

/// Copies `input` into the guest's stdin stream; at its end, closes the
/// process's stdin once everything written has arrived.
fn input_pump(
    mut input: File,
    mut stream: std::os::unix::net::UnixStream,
    vsock: PathBuf,
    id: String,
    exec_id: String,
) {
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut sent = 0u64;
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
                sent += n as u64;
            }
            if let Ok(mut c) = AgentClient::connect(&vsock) {
                let _ = c.call_empty(Call::CloseStdin {
                    container_id: id,
                    exec_id,
                    after_bytes: Some(sent),
                });
            }
        });
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
        let grace = Duration::from_secs(10);
        if let Some(p) = self.out.take() {
            p.finish(exit.stdout_bytes, grace);
        }
        if let Some(p) = self.err.take() {
            p.finish(exit.stderr_bytes, grace);
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
