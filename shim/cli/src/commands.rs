//! The lifecycle commands.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use liboci_cli::{CommonCmd, Create, Delete, Kill, StandardCmd};
use protocol::{Call, Reply};

use husk_host::agent::{AgentClient, AgentError};
use husk_host::hooks::{self, HookKind};
use husk_host::oci::Status;
use husk_host::process::kill_and_wait;
use husk_host::sandbox::CleanupRecord;

use crate::CliError;
use crate::console::OwnConsole;
use crate::exec::{check_preserve_fds, exec, spawn_monitor, status_of, write_pid_file};
use crate::state::{ContainerState, StateError, Store};

/// `create`, `start`, `state`, `kill`, `delete`.
pub fn standard(store: &Store, cmd: StandardCmd) -> Result<i32, CliError> {
    match cmd {
        StandardCmd::Create(args) => {
            create(store, &args)?;
            Ok(0)
        }
        StandardCmd::Start(args) => {
            start(store, &args.container_id)?;
            Ok(0)
        }
        StandardCmd::State(args) => {
            let s = store.load(&args.container_id)?;
            println!("{}", serde_json::to_string_pretty(&s.oci_json())?);
            Ok(0)
        }
        StandardCmd::Kill(args) => kill(store, &args).map(|()| 0),
        StandardCmd::Delete(args) => delete(store, &args).map(|()| 0),
    }
}

/// The other runc commands.
pub fn common(store: &Store, cmd: CommonCmd) -> Result<i32, CliError> {
    match cmd {
        CommonCmd::Run(args) => {
            // A terminal process in the foreground without a console
            // socket uses this process's terminal, as with runc.
            let mut own =
                if !args.detach && args.console_socket.is_none() && wants_terminal(&args.bundle) {
                    Some(OwnConsole::listen(store.root())?)
                } else {
                    None
                };
            let create_args = Create {
                bundle: args.bundle.clone(),
                console_socket: own
                    .as_ref()
                    .map(|o| o.path().to_path_buf())
                    .or_else(|| args.console_socket.clone()),
                pid_file: args.pid_file.clone(),
                no_pivot: args.no_pivot,
                no_new_keyring: args.no_new_keyring,
                preserve_fds: args.preserve_fds,
                container_id: args.container_id.clone(),
            };
            let mut monitor = create(store, &create_args)?;
            let relay = match own.as_mut().map(OwnConsole::attach).transpose() {
                Ok(r) => r,
                Err(e) => {
                    let _ = force_delete(store, &args.container_id);
                    return Err(e);
                }
            };
            if let Err(e) = start(store, &args.container_id) {
                let _ = force_delete(store, &args.container_id);
                return Err(e);
            }
            if args.detach {
                return Ok(0);
            }
            let status = status_of(&mut monitor);
            if let Some(r) = relay {
                r.finish();
            }
            if !args.keep {
                let _ = force_delete(store, &args.container_id);
            }
            Ok(status)
        }
        CommonCmd::Exec(args) => exec(store, args),
        CommonCmd::Ps(args) => {
            let (_, mut c) = connect(store, &args.container_id)?;
            let pids = match c.call(Call::ListProcesses {
                id: args.container_id.clone(),
            })? {
                Reply::Processes { pids } => pids,
                other => return Err(CliError(format!("unexpected answer {other:?}"))),
            };
            if args.format == "json" {
                println!("{}", serde_json::to_string(&pids)?);
            } else {
                println!("PID");
                for p in pids {
                    println!("{p}");
                }
            }
            Ok(0)
        }
        CommonCmd::List(args) => {
            let states: Vec<ContainerState> = store
                .ids()
                .iter()
                .filter_map(|id| store.load(id).ok())
                .collect();
            if args.quiet {
                for s in &states {
                    println!("{}", s.id);
                }
            } else if args.format == "json" {
                let all: Vec<serde_json::Value> =
                    states.iter().map(ContainerState::oci_json).collect();
                println!("{}", serde_json::to_string(&all)?);
            } else {
                println!("{:<20} {:<8} {:<8} BUNDLE", "ID", "PID", "STATUS");
                for s in &states {
                    let j = s.oci_json();
                    println!(
                        "{:<20} {:<8} {:<8} {}",
                        s.id,
                        j["pid"],
                        s.live_status(),
                        s.bundle.display()
                    );
                }
            }
            Ok(0)
        }
        CommonCmd::Pause(args) => freeze(store, &args.container_id, true).map(|()| 0),
        CommonCmd::Resume(args) => freeze(store, &args.container_id, false).map(|()| 0),
        CommonCmd::Events(args) => {
            let interval = Duration::from_secs(u64::from(args.interval.max(1)));
            loop {
                let (_, mut c) = connect(store, &args.container_id)?;
                let stats = c.call(Call::Stats {
                    id: args.container_id.clone(),
                })?;
                let data = match stats {
                    Reply::Stats(s) => serde_json::to_value(s)?,
                    other => return Err(CliError(format!("unexpected answer {other:?}"))),
                };
                println!(
                    "{}",
                    serde_json::json!({"type": "stats", "id": args.container_id, "data": data})
                );
                if args.stats {
                    return Ok(0);
                }
                std::thread::sleep(interval);
            }
        }
        CommonCmd::Update(args) => {
            let mut resources = match &args.resources {
                Some(p) if p.as_os_str() == "-" => serde_json::from_reader(std::io::stdin())?,
                Some(p) => serde_json::from_slice(
                    &std::fs::read(p).map_err(|e| CliError(format!("{}: {e}", p.display())))?,
                )?,
                None => serde_json::json!({}),
            };
            // The flags override the file's values.
            let flags: [(&str, &str, Option<serde_json::Value>); 6] = [
                ("memory", "limit", args.memory.map(Into::into)),
                ("memory", "swap", args.memory_swap.map(Into::into)),
                ("cpu", "quota", args.cpu_quota.map(Into::into)),
                ("cpu", "period", args.cpu_period.map(Into::into)),
                ("cpu", "shares", args.cpu_share.map(Into::into)),
                ("pids", "limit", args.pids_limit.map(Into::into)),
            ];
            for (group, key, value) in flags {
                if let Some(v) = value {
                    resources[group][key] = v;
                }
            }
            let (_, mut c) = connect(store, &args.container_id)?;
            c.call_empty(Call::UpdateResources {
                id: args.container_id.clone(),
                resources,
            })?;
            Ok(0)
        }
        CommonCmd::Features(_) => {
            let features = serde_json::json!({
                "ociVersionMin": "1.0.0",
                "ociVersionMax": "1.2.0",
                "hooks": HookKind::ALL.map(HookKind::key),
                "mountOptions": ["ro", "rw", "bind", "rbind", "nosuid", "nodev", "noexec"],
                "linux": {
                    "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
                    "cgroup": {"v1": false, "v2": true, "systemd": false},
                    "seccomp": {"enabled": true},
                },
                "annotations": {"io.husk.vcpus": "vCPUs of the VM", "io.husk.memory_mib": "memory of the VM (MiB)", "io.husk.hypervisor": "auto, husk-vmm or qemu"}
            });
            println!("{}", serde_json::to_string_pretty(&features)?);
            Ok(0)
        }
        CommonCmd::Spec(args) => {
            let dir = args.bundle.unwrap_or_else(|| ".".into());
            let path = dir.join("config.json");
            if path.exists() {
                return Err(CliError(format!("{}: already exists", path.display())));
            }
            let mut spec = if args.rootless {
                // SAFETY: getuid/getgid cannot fail.
                let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
                oci_spec::runtime::Spec::rootless(uid, gid)
            } else {
                oci_spec::runtime::Spec::default()
            };
            spec.set_hostname(Some("husk".into()));
            std::fs::write(&path, serde_json::to_string_pretty(&spec)?)
                .map_err(|e| CliError(format!("{}: {e}", path.display())))?;
            Ok(0)
        }
        CommonCmd::Checkpointt(_) => Err(CliError("not implemented: checkpoint".into())),
    }
}

/// Whether the bundle's process asks for a terminal (errors in the bundle
/// are for `create` to report).
fn wants_terminal(bundle: &std::path::Path) -> bool {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
        .is_some_and(|s| s["process"]["terminal"].as_bool() == Some(true))
}

/// Creates the container: claims the ID, starts its monitor and waits
/// until the container exists in the VM. A failure leaves nothing behind.
fn create(store: &Store, args: &Create) -> Result<std::process::Child, CliError> {
    check_preserve_fds(args.preserve_fds)?;
    store.claim(&args.container_id)?;
    let mut margs: Vec<OsString> = vec!["--bundle".into(), args.bundle.clone().into()];
    if let Some(s) = &args.console_socket {
        margs.push("--console-socket".into());
        margs.push(s.into());
    }
    margs.push(args.container_id.clone().into());
    let child = match spawn_monitor(store, margs) {
        Ok(c) => c,
        Err(e) => {
            let _ = store.remove(&args.container_id);
            return Err(e);
        }
    };
    if let Err(e) = write_pid_file(args.pid_file.as_deref(), child.id()) {
        let _ = force_delete(store, &args.container_id);
        return Err(e);
    }
    Ok(child)
}

fn connect(store: &Store, id: &str) -> Result<(ContainerState, AgentClient), CliError> {
    let state = store.load(id)?;
    if state.live_status() == Status::Stopped {
        return Err(CliError(format!("container {id} is not running")));
    }
    let client = AgentClient::connect(&state.vsock)?;
    Ok((state, client))
}

fn start(store: &Store, id: &str) -> Result<(), CliError> {
    let state = store.load(id)?;
    let status = state.live_status();
    if status != Status::Created {
        return Err(CliError(format!(
            "cannot start container {id}: it is {status}"
        )));
    }
    let created = state.oci_json_as(Status::Created);
    let pre = hooks::run(&state.hooks, HookKind::Prestart, &created)
        .and_then(|()| hooks::run(&state.hooks, HookKind::StartContainer, &created));
    if let Err(e) = pre {
        // The user process never runs: the container stops.
        stop_monitor(store, &state);
        return Err(e.into());
    }
    let mut c = AgentClient::connect(&state.vsock)?;
    c.call_empty(Call::StartContainer { id: id.to_string() })?;
    let running = store.set_status(id, Status::Running)?;
    hooks::run_warning(
        &running.hooks,
        HookKind::Poststart,
        &running.oci_json_as(Status::Running),
    );
    Ok(())
}

/// A signal by name (`TERM`, `SIGTERM`) or number.
fn parse_signal(s: &str) -> Result<i32, CliError> {
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map(|_| n)
            .map_err(|_| CliError(format!("invalid signal {s:?}")));
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| CliError(format!("invalid signal {s:?}")))
}

fn kill(store: &Store, args: &Kill) -> Result<(), CliError> {
    let signal = parse_signal(&args.signal)?;
    let id = &args.container_id;
    let (_, mut c) = connect(store, id)?;
    let sent = c.call_empty(Call::SignalContainer {
        id: id.clone(),
        signal,
        all: args.all,
    });
    match sent {
        Ok(()) => Ok(()),
        // The signal can end the container, and its VM with it, before
        // the agent's answer leaves the guest: the connection closes, and
        // the kill did what it was asked.
        Err(AgentError::Codec(_) | AgentError::Io(_)) if stopped_within(store, id, KILL_SETTLE) => {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// How long `kill` waits for a container whose agent connection closed
/// to be recorded as stopped.
const KILL_SETTLE: Duration = Duration::from_secs(5);

/// Whether container `id` is (or within `limit` becomes) stopped.
fn stopped_within(store: &Store, id: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match store.load(id) {
            Ok(s) if s.live_status() == Status::Stopped => return true,
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return false,
        }
    }
}

fn freeze(store: &Store, id: &str, pause: bool) -> Result<(), CliError> {
    let (state, mut c) = connect(store, id)?;
    let status = state.live_status();
    let (want, call, to) = if pause {
        (
            Status::Running,
            Call::PauseContainer { id: id.into() },
            Status::Paused,
        )
    } else {
        (
            Status::Paused,
            Call::ResumeContainer { id: id.into() },
            Status::Running,
        )
    };
    if status != want {
        let what = if pause { "pause" } else { "resume" };
        return Err(CliError(format!(
            "cannot {what} container {id}: it is {status}"
        )));
    }
    c.call_empty(call)?;
    store.set_status(id, to)?;
    Ok(())
}

fn delete(store: &Store, args: &Delete) -> Result<(), CliError> {
    let id = &args.container_id;
    let state = match store.load(id) {
        Ok(s) => s,
        Err(StateError::NotFound(_)) if args.force => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let status = state.live_status();
    if !args.force && matches!(status, Status::Running | Status::Paused) {
        return Err(CliError(format!(
            "cannot delete container {id} that is not stopped: it is {status}"
        )));
    }
    force_delete(store, id)
}

/// Ends the monitor (and with it the VM), gives back what the container
/// held on the host, runs the `poststop` hooks and removes the state.
fn force_delete(store: &Store, id: &str) -> Result<(), CliError> {
    if let Ok(state) = store.load(id) {
        stop_monitor(store, &state);
        hooks::run_warning(
            &state.hooks,
            HookKind::Poststop,
            &state.oci_json_as(Status::Stopped),
        );
    }
    store.remove(id)?;
    Ok(())
}

/// Kills a container's monitor, then gives back what its record holds:
/// the VM's processes (which die with the monitor anyway) and those of the
/// groups they lead, its TAPs and shares.
fn stop_monitor(store: &Store, state: &ContainerState) {
    kill_and_wait(&[(state.pid, state.pid_start)], Duration::from_secs(10));
    CleanupRecord::load(&store.dir(&state.id)).release();
}
