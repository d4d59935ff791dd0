//! The tasks of one shim: creating a container in a new VM, starting,
//! signalling and deleting its processes, and the threads that wait for
//! them. Every call returns a [`TaskError`]; a bad answer from the guest
//! fails that call only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::topics::{
    TASK_CREATE_EVENT_TOPIC, TASK_DELETE_EVENT_TOPIC, TASK_EXEC_ADDED_EVENT_TOPIC,
    TASK_EXEC_STARTED_EVENT_TOPIC, TASK_EXIT_EVENT_TOPIC, TASK_OOM_EVENT_TOPIC,
    TASK_PAUSED_EVENT_TOPIC, TASK_RESUMED_EVENT_TOPIC, TASK_START_EVENT_TOPIC,
};
use containerd_shim::protos::types::mount::Mount;
use containerd_shim::protos::types::task::Status;
use husk_host::agent::AgentClient;
use husk_host::bundle::Bundle;
use husk_host::config::HuskConfig;
use husk_host::hooks::{self, HookKind};
use husk_host::ids::{check_id, short_name};
use husk_host::oci::{self, Status as OciStatus};
use husk_host::sandbox::{
    self, Launcher, Placement, Recorder, Sandbox, SandboxError, VmPlace, clean_up,
};
use husk_host::shares::unmount;
use protocol::{Call, ExitInfo, Reply};

use crate::error::TaskError;
use crate::events::Events;
use crate::mount::{MountSpec, block_root, mount_one};
use crate::process::{Process, StdioPaths};

/// A container and its processes.
#[derive(Debug)]
pub struct Container {
    /// Container ID.
    pub id: String,
    /// Bundle directory.
    pub bundle: String,
    /// Its VM.
    pub sandbox: Arc<Sandbox>,
    /// Its own process.
    pub init: Arc<Process>,
    /// Exec'd processes by exec ID.
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// The host directory of its image and VM.
    pub dir: PathBuf,
    /// Where its rootfs mounts are mounted (if containerd passed any).
    pub rootfs_mount: Option<PathBuf>,
    /// Its spec's hooks (host programs).
    pub hooks: serde_json::Value,
    /// Its annotations (for hooks' state).
    pub annotations: HashMap<String, String>,
    /// Where its time went, logged at delete.
    pub timings: Mutex<Timings>,
    /// Whether the VM is this container's (a task, or a pod's sandbox)
    /// rather than its pod's.
    pub owns_vm: bool,
}

/// A container's place in a Kubernetes pod (CRI annotations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodRole {
    /// Not in a pod: a VM of its own.
    Alone,
    /// The pod's sandbox: creates the pod's VM.
    Sandbox(String),
    /// A container of the pod with this sandbox ID: joins its VM.
    Member(String),
}

/// The pod role the CRI annotations in a bundle's `config.json` give.
pub fn pod_role(bundle: &Path) -> PodRole {
    let spec: serde_json::Value = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .unwrap_or_default();
    let ann = &spec["annotations"];
    let sandbox = ann[crate::SANDBOX_ID]
        .as_str()
        .unwrap_or_default()
        .to_string();
    match ann[crate::CONTAINER_TYPE].as_str() {
        Some("sandbox") => PodRole::Sandbox(sandbox),
        Some("container") if !sandbox.is_empty() => PodRole::Member(sandbox),
        _ => PodRole::Alone,
    }
}

/// Where a task's time went (milliseconds): host-side work (what the
/// shim controls) against the guest's boot.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Timings {
    /// Create: rootfs mounts, image, VM processes spawned.
    pub host_prepare_ms: f64,
    /// Create: VM spawned → agent answering.
    pub guest_boot_ms: f64,
    /// Create: agent answering → container created, less the guest's
    /// create call.
    pub host_create_ms: f64,
    /// Create: the guest creating the container (mounts, namespaces).
    pub guest_create_ms: f64,
    /// The Start call.
    pub start_ms: f64,
    /// The Delete call (VM stopped, mounts and files removed).
    pub delete_ms: f64,
}

/// Most TaskOOM events one VM may cause per second; the guest decides how
/// many it reports.
const OOM_EVENTS_PER_SECOND: u32 = 10;

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The shared state of the task service.
#[derive(Debug)]
pub struct Tasks {
    /// containerd namespace.
    pub namespace: String,
    /// Where task directories live.
    pub root: PathBuf,
    /// Event channel.
    pub events: Events,
    /// Tells the shim to exit.
    pub exit: crate::ShimExit,
    launcher: Launcher,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Pod VMs by sandbox ID.
    pods: Mutex<HashMap<String, Arc<Sandbox>>>,
}

/// What containerd asked to create.
#[derive(Debug, Clone)]
pub struct CreateArgs {
    /// Container ID.
    pub id: String,
    /// Bundle directory.
    pub bundle: String,
    /// Root file system mounts.
    pub rootfs: Vec<Mount>,
    /// stdio.
    pub stdio: StdioPaths,
}

/// The task directory of `id` in `namespace` below `root`: short, so the
/// VM's sockets fit in sun_path whatever the ID's length.
pub fn task_dir(root: &Path, namespace: &str, id: &str) -> PathBuf {
    root.join(short_name(&format!("{namespace}/{id}")))
}

/// Undoes a half-done create when dropped.
struct Undo {
    dir: PathBuf,
    sandbox: Option<Arc<Sandbox>>,
    armed: bool,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if self.armed {
            if let Some(s) = &self.sandbox {
                s.shut_down();
            }
            // The record was given back already (its recorder is dropped
            // before this guard): only the directory is left.
            clean_up(&self.dir);
        }
    }
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::CREATED => "created",
        Status::RUNNING => "running",
        Status::STOPPED => "stopped",
        Status::PAUSED => "paused",
        Status::PAUSING => "pausing",
        Status::UNKNOWN => "unknown",
    }
}

impl Tasks {
    /// An empty task table.
    pub fn new(namespace: String, root: PathBuf, events: Events, exit: crate::ShimExit) -> Tasks {
        Tasks {
            namespace,
            root,
            events,
            exit,
            launcher: Launcher::start(),
            containers: Mutex::new(HashMap::new()),
            pods: Mutex::new(HashMap::new()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The container `id`.
    pub fn container(&self, id: &str) -> Result<Arc<Container>, TaskError> {
        self.table()
            .get(id)
            .cloned()
            .ok_or_else(|| TaskError::not_found(format!("task {id}")))
    }

    /// How many containers the shim serves.
    pub fn count(&self) -> usize {
        self.table().len()
    }

    /// The process `exec_id` (empty: the container's own) of `id`.
    pub fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>, TaskError> {
        let c = self.container(id)?;
        if exec_id.is_empty() {
            return Ok(Arc::clone(&c.init));
        }
        c.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| TaskError::not_found(format!("process {exec_id} of task {id}")))
    }

    /// Creates a container: in a VM of its own, as a pod's sandbox (whose
    /// VM the pod's other containers join), or in its pod's VM.
    pub fn create(self: &Arc<Self>, args: CreateArgs) -> Result<u32, TaskError> {
        let t0 = Instant::now();
        check_id(&args.id).map_err(|e| TaskError::invalid(e.to_string()))?;
        if self.table().contains_key(&args.id) {
            return Err(TaskError::AlreadyExists(format!("task {}", args.id)));
        }
        let dir = task_dir(&self.root, &self.namespace, &args.id);
        // What a killed shim left there (binds included) goes first.
        clean_up(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| TaskError::internal(format!("{}: {e}", dir.display())))?;
        let mut undo = Undo {
            dir: dir.clone(),
            sandbox: None,
            armed: true,
        };
        // Declared after `undo`, so dropped first: what is recorded is given
        // back before the directory goes.
        let mut rec = Recorder::new(&dir);
        let bundle_dir = PathBuf::from(&args.bundle);
        let role = pod_role(&bundle_dir);
        let specs: Vec<MountSpec> = args
            .rootfs
            .iter()
            .map(|m| MountSpec {
                fstype: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        // A snapshot that is a block device becomes the VM's root drive
        // (in a VM of its own: a pod's drives are fixed at boot).
        let block = match role {
            PodRole::Member(_) => None,
            _ => block_root(&specs),
        };
        if block.is_none() && !specs.is_empty() {
            let target = bundle_dir.join("rootfs");
            std::fs::create_dir_all(&target)
                .map_err(|e| TaskError::internal(format!("{}: {e}", target.display())))?;
            rec.update(|r| r.rootfs_mount = Some(target.clone()))
                .map_err(SandboxError::from)?;
            for spec in &specs {
                mount_one(spec, &target)
                    .map_err(|e| TaskError::internal(format!("rootfs: {e}")))?;
            }
        }
        let bundle = match role {
            PodRole::Alone => Bundle::load(&bundle_dir),
            _ => Bundle::load_in_pod(&bundle_dir),
        }
        .map_err(SandboxError::from)?;
        let pod_vm = match &role {
            PodRole::Member(sandbox) => Some(
                self.pods
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(sandbox)
                    .cloned()
                    .ok_or_else(|| {
                        TaskError::not_found(format!("pod sandbox {sandbox} (in this shim)"))
                    })?,
            ),
            _ => None,
        };
        let cfg = HuskConfig::load_default().map_err(SandboxError::from)?;
        let placement = match &pod_vm {
            Some(vm) => Placement::Pod(vm),
            None => Placement::NewVm {
                pod: matches!(role, PodRole::Sandbox(_)),
            },
        };
        let plan = sandbox::plan(&cfg, bundle, &args.id, &dir, block, placement)?;
        let mut t_boot = t0.elapsed();
        let mut spawned = std::time::Duration::ZERO;
        let (sandbox, mut client, serial, owns_vm) = match pod_vm {
            Some(vm) => {
                let (client, serial) = sandbox::join_pod(&vm, &plan, &mut rec)?;
                (vm, client, serial, false)
            }
            None => {
                let vm_dir = dir.join("vm");
                let place = VmPlace {
                    dir: &dir,
                    vm_dir: &vm_dir,
                    launcher: Some(&self.launcher),
                };
                let pod = matches!(role, PodRole::Sandbox(_));
                let booted = sandbox::boot_sandbox(&cfg, &plan, pod, place, &mut rec)?;
                t_boot = booted.boot_started.duration_since(t0);
                spawned = booted.spawned;
                if booted.rebooted {
                    log::warn!(
                        "{}: the VM's vsock never answered: booted a new VM",
                        args.id
                    );
                }
                undo.sandbox = Some(Arc::clone(&booted.sandbox));
                (booted.sandbox, booted.client, booted.root_serial, true)
            }
        };
        let t_ready = t0.elapsed();
        let mut timings = Timings {
            host_prepare_ms: ms(t_boot + spawned),
            guest_boot_ms: ms(t_ready.saturating_sub(t_boot + spawned)),
            ..Timings::default()
        };
        let init = Arc::new(Process::new(
            &args.id,
            "",
            args.stdio.clone(),
            serde_json::Value::Null,
            sandbox.vmm_pid,
        ));
        let attached = init
            .attach(&sandbox.vsock, &self.namespace)
            .map_err(|e| TaskError::invalid(e.to_string()))?;
        let guest_create = sandbox::create_container(&mut client, &plan, serial)
            .map_err(|e| TaskError::from(e).context("create container"))?;
        timings.guest_create_ms = ms(guest_create);
        let pumps = init.start_pumps(attached).map_err(TaskError::internal)?;
        init.set_pumps(pumps);
        timings.host_create_ms = ms(t0.elapsed() - t_ready) - timings.guest_create_ms;
        let container = Arc::new(Container {
            id: args.id.clone(),
            bundle: args.bundle.clone(),
            sandbox: Arc::clone(&sandbox),
            init: Arc::clone(&init),
            execs: Mutex::new(HashMap::new()),
            dir,
            rootfs_mount: rec.record().rootfs_mount.clone(),
            hooks: plan.hooks.clone(),
            annotations: plan.bundle.annotations.clone(),
            timings: Mutex::new(timings),
            owns_vm,
        });
        sandbox::run_create_hooks(&plan, &container.oci_state(OciStatus::Creating))?;
        rec.keep();
        undo.armed = false;
        self.table().insert(args.id.clone(), Arc::clone(&container));
        if owns_vm {
            self.watch(&container);
        }
        if let PodRole::Sandbox(_) = role {
            self.pods
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(args.id.clone(), Arc::clone(&sandbox));
        }
        let mut ev = TaskCreate::new();
        ev.container_id = args.id.clone();
        ev.bundle = args.bundle;
        ev.rootfs = args.rootfs;
        let mut io = TaskIO::new();
        io.stdin = args.stdio.stdin;
        io.stdout = args.stdio.stdout;
        io.stderr = args.stdio.stderr;
        io.terminal = args.stdio.terminal;
        ev.io = Some(io).into();
        ev.pid = sandbox.vmm_pid;
        self.events.send(TASK_CREATE_EVENT_TOPIC, ev);
        Ok(sandbox.vmm_pid)
    }

    /// Watches the VM of a new container and its OOM kills.
    fn watch(self: &Arc<Self>, c: &Arc<Container>) {
        let me = Arc::clone(self);
        let vm = Arc::clone(&c.sandbox);
        c.sandbox.watch(move || {
            // Processes that never started will never be waited for.
            let in_vm: Vec<Arc<Container>> = me
                .table()
                .values()
                .filter(|c| Arc::ptr_eq(&c.sandbox, &vm))
                .cloned()
                .collect();
            for c in in_vm {
                let mut all = vec![Arc::clone(&c.init)];
                all.extend(
                    c.execs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .values()
                        .cloned(),
                );
                for p in all {
                    if p.status() == Status::CREATED {
                        me.exited(&p, 128 + libc::SIGKILL as u32);
                    }
                }
            }
        });
        let me = Arc::clone(self);
        let vm = Arc::clone(&c.sandbox);
        let _ = std::thread::Builder::new()
            .name("oom".into())
            .spawn(move || me.relay_oom_events(&vm));
    }

    /// Publishes the OOM kills the guest of `vm` reports, for its own
    /// containers only, at most [`OOM_EVENTS_PER_SECOND`]. Ends with the VM.
    fn relay_oom_events(&self, vm: &Arc<Sandbox>) {
        let Ok(mut client) = AgentClient::connect(&vm.vsock) else {
            return;
        };
        let mut after = 0;
        let mut window = (Instant::now(), 0u32);
        while let Ok(Reply::OomEvent(e)) = client.call(Call::WaitOomEvent { after }) {
            if e.seq <= after {
                log::warn!("the guest's OOM events went backwards: stopped listening");
                return;
            }
            after = e.seq;
            let ours = self
                .table()
                .get(&e.container_id)
                .is_some_and(|c| Arc::ptr_eq(&c.sandbox, vm));
            if !ours {
                continue;
            }
            if window.0.elapsed() >= std::time::Duration::from_secs(1) {
                window = (Instant::now(), 0);
            }
            window.1 += 1;
            if window.1 > OOM_EVENTS_PER_SECOND {
                continue;
            }
            let mut ev = TaskOOM::new();
            ev.container_id = e.container_id;
            self.events.send(TASK_OOM_EVENT_TOPIC, ev);
        }
    }

    /// Records an exit and publishes TaskExit (once).
    fn exited(&self, p: &Process, status: u32) {
        if !p.finish(status) {
            return;
        }
        let (status, at) = p.exit();
        let mut ev = TaskExit::new();
        ev.container_id = p.container_id.clone();
        ev.id = if p.exec_id.is_empty() {
            p.container_id.clone()
        } else {
            p.exec_id.clone()
        };
        ev.pid = p.pid;
        ev.exit_status = status;
        ev.exited_at = at.into();
        self.events.send(TASK_EXIT_EVENT_TOPIC, ev);
    }

    /// Starts a process; returns its PID.
    pub fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32, TaskError> {
        let t0 = Instant::now();
        let c = self.container(id)?;
        let p = self.process(id, exec_id)?;
        if p.status() != Status::CREATED {
            return Err(TaskError::precondition(format!(
                "process {}: it is {}",
                if exec_id.is_empty() { id } else { exec_id },
                status_name(p.status())
            )));
        }
        if c.sandbox.is_dead() {
            return Err(TaskError::precondition(format!(
                "task {id}: its VM has ended"
            )));
        }
        let mut client = AgentClient::connect(&c.sandbox.vsock)?;
        if exec_id.is_empty() {
            client.call_empty(Call::StartContainer { id: id.to_string() })?;
            p.set_status(Status::RUNNING);
            let mut ev = TaskStart::new();
            ev.container_id = id.to_string();
            ev.pid = p.pid;
            self.events.send(TASK_START_EVENT_TOPIC, ev);
            c.timings.lock().unwrap_or_else(|e| e.into_inner()).start_ms = ms(t0.elapsed());
            hooks::run_warning(
                &c.hooks,
                HookKind::Poststart,
                &c.oci_state(OciStatus::Running),
            );
        } else {
            if c.init.status() != Status::RUNNING {
                return Err(TaskError::precondition(format!(
                    "task {id}: it is {}",
                    status_name(c.init.status())
                )));
            }
            let attached = p
                .attach(&c.sandbox.vsock, &self.namespace)
                .map_err(|e| TaskError::invalid(e.to_string()))?;
            client
                .call_empty(Call::ExecProcess {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    process: p.spec.clone(),
                })
                .map_err(|e| TaskError::from(e).context("exec"))?;
            let pumps = p.start_pumps(attached).map_err(TaskError::internal)?;
            p.set_pumps(pumps);
            p.set_status(Status::RUNNING);
            let mut ev = TaskExecStarted::new();
            ev.container_id = id.to_string();
            ev.exec_id = exec_id.to_string();
            ev.pid = p.pid;
            self.events.send(TASK_EXEC_STARTED_EVENT_TOPIC, ev);
        }
        self.spawn_waiter(&c, &p);
        Ok(p.pid)
    }

    fn spawn_waiter(self: &Arc<Self>, c: &Container, p: &Arc<Process>) {
        let me = Arc::clone(self);
        let p = Arc::clone(p);
        let vsock = c.sandbox.vsock.clone();
        let _ = std::thread::Builder::new()
            .name("wait".into())
            .spawn(move || {
                let exit = AgentClient::connect(&vsock)
                    .and_then(|mut client| client.wait(&p.container_id, &p.exec_id))
                    .unwrap_or(ExitInfo {
                        // The VM died under it.
                        status: 128 + libc::SIGKILL,
                        stdout_bytes: 0,
                        stderr_bytes: 0,
                    });
                if let Some(pumps) = p.take_pumps() {
                    pumps.finish(&exit);
                }
                me.exited(&p, exit.status.clamp(0, 255) as u32);
            });
    }

    /// Registers an exec'd process (it runs at Start).
    pub fn add_exec(
        &self,
        id: &str,
        exec_id: &str,
        stdio: StdioPaths,
        spec: serde_json::Value,
    ) -> Result<(), TaskError> {
        let c = self.container(id)?;
        check_id(exec_id).map_err(|e| TaskError::invalid(format!("exec id: {e}")))?;
        if !spec.is_object() || spec["args"].as_array().is_none_or(|a| a.is_empty()) {
            return Err(TaskError::invalid(format!(
                "exec {exec_id}: the process spec has no args"
            )));
        }
        if c.init.status() != Status::RUNNING {
            return Err(TaskError::precondition(format!(
                "task {id}: it is {}",
                status_name(c.init.status())
            )));
        }
        let mut execs = c.execs.lock().unwrap_or_else(|e| e.into_inner());
        if execs.contains_key(exec_id) {
            return Err(TaskError::AlreadyExists(format!("exec {exec_id}")));
        }
        let p = Arc::new(Process::new(id, exec_id, stdio, spec, c.sandbox.vmm_pid));
        execs.insert(exec_id.to_string(), p);
        drop(execs);
        let mut ev = TaskExecAdded::new();
        ev.container_id = id.to_string();
        ev.exec_id = exec_id.to_string();
        self.events.send(TASK_EXEC_ADDED_EVENT_TOPIC, ev);
        Ok(())
    }

    /// Sends `signal` to a process (`all`: every process of the container).
    pub fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<(), TaskError> {
        let c = self.container(id)?;
        let p = self.process(id, exec_id)?;
        let signal = i32::try_from(signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| TaskError::invalid(format!("signal {signal}: out of range")))?;
        match p.status() {
            Status::STOPPED => {
                return Err(TaskError::not_found(format!(
                    "process {}: already finished",
                    if exec_id.is_empty() { id } else { exec_id }
                )));
            }
            // Never started: it ends without running.
            Status::CREATED => {
                self.exited(&p, 128 + signal as u32);
                return Ok(());
            }
            _ => {}
        }
        let mut client = AgentClient::connect(&c.sandbox.vsock)?;
        let call = if exec_id.is_empty() {
            Call::SignalContainer {
                id: id.to_string(),
                signal,
                all,
            }
        } else {
            Call::SignalExec {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                signal,
            }
        };
        client.call_empty(call)?;
        Ok(())
    }

    /// Deletes a process; the container's own takes the container and,
    /// when it owns it, the VM with it.
    pub fn delete(&self, id: &str, exec_id: &str) -> Result<(u32, u32, Timestamp), TaskError> {
        let t0 = Instant::now();
        let c = self.container(id)?;
        let p = self.process(id, exec_id)?;
        match p.status() {
            Status::STOPPED => {}
            Status::CREATED => self.exited(&p, 128 + libc::SIGKILL as u32),
            other => {
                return Err(TaskError::precondition(format!(
                    "process {}: cannot delete, it is {}",
                    if exec_id.is_empty() { id } else { exec_id },
                    status_name(other)
                )));
            }
        }
        let (status, at) = p.wait();
        if !exec_id.is_empty() {
            c.execs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(exec_id);
            return Ok((p.pid, status, at));
        }
        if !c.sandbox.is_dead() {
            if let Ok(mut client) = AgentClient::connect(&c.sandbox.vsock) {
                if let Err(e) = client.call_empty(Call::RemoveContainer { id: id.to_string() }) {
                    log::warn!("remove container {id} in the guest: {e}");
                }
            }
        }
        if c.owns_vm {
            c.sandbox.shut_down();
            self.pods
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
        }
        if let Some(m) = &c.rootfs_mount {
            unmount(m);
        }
        clean_up(&c.dir);
        self.table().remove(id);
        let mut ev = TaskDelete::new();
        ev.container_id = id.to_string();
        ev.id = id.to_string();
        ev.pid = p.pid;
        ev.exit_status = status;
        ev.exited_at = Some(at.clone()).into();
        self.events.send(TASK_DELETE_EVENT_TOPIC, ev);
        hooks::run_warning(
            &c.hooks,
            HookKind::Poststop,
            &c.oci_state(OciStatus::Stopped),
        );
        let mut t = *c.timings.lock().unwrap_or_else(|e| e.into_inner());
        t.delete_ms = ms(t0.elapsed());
        log::info!(
            "task timings {}",
            serde_json::json!({ "id": id, "timings": t })
        );
        Ok((p.pid, status, at))
    }

    /// Freezes or thaws a container.
    pub fn pause(&self, id: &str, pause: bool) -> Result<(), TaskError> {
        let c = self.container(id)?;
        let want = if pause {
            Status::RUNNING
        } else {
            Status::PAUSED
        };
        if c.init.status() != want {
            return Err(TaskError::precondition(format!(
                "task {id}: it is {}",
                status_name(c.init.status())
            )));
        }
        let mut client = AgentClient::connect(&c.sandbox.vsock)?;
        if pause {
            client.call_empty(Call::PauseContainer { id: id.to_string() })?;
            c.init.set_status(Status::PAUSED);
            let mut ev = TaskPaused::new();
            ev.container_id = id.to_string();
            self.events.send(TASK_PAUSED_EVENT_TOPIC, ev);
        } else {
            client.call_empty(Call::ResumeContainer { id: id.to_string() })?;
            c.init.set_status(Status::RUNNING);
            let mut ev = TaskResumed::new();
            ev.container_id = id.to_string();
            self.events.send(TASK_RESUMED_EVENT_TOPIC, ev);
        }
        Ok(())
    }

    /// A call to the agent of container `id`'s VM.
    pub fn call(&self, id: &str, call: Call) -> Result<Reply, TaskError> {
        let c = self.container(id)?;
        if c.sandbox.is_dead() {
            return Err(TaskError::precondition(format!(
                "task {id}: its VM has ended"
            )));
        }
        Ok(AgentClient::connect(&c.sandbox.vsock)?.call(call)?)
    }

    /// Stops every VM (the shim is going away).
    pub fn shut_down_all(&self) {
        for c in self.table().values() {
            c.sandbox.shut_down();
        }
    }
}

impl Container {
    /// The OCI state for hooks.
    pub fn oci_state(&self, status: OciStatus) -> serde_json::Value {
        oci::state_json(
            &self.id,
            status,
            self.sandbox.vmm_pid as i32,
            Path::new(&self.bundle),
            &self.annotations,
        )
    }
}
