//! containerd's task API (`containerd.task.v2.Task` over ttrpc) on top of
//! [`Tasks`].

use std::sync::Arc;

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use containerd_shim::protos::shim::shim::CheckpointTaskRequest;
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{Task, TtrpcContext};
use protocol::{Call, Reply};

use super::error::TaskError;
use super::metrics;
use super::process::StdioPaths;
use super::task::{CreateArgs, Tasks};

/// The task service of one shim.
#[derive(Debug)]
pub struct Service {
    tasks: Arc<Tasks>,
}

impl Service {
    /// Serves `tasks`.
    pub fn new(tasks: Arc<Tasks>) -> Service {
        Service { tasks }
    }
}

type Res<T> = ttrpc::Result<T>;

fn log_err<T>(call: &str, id: &str, r: Result<T, TaskError>) -> Res<T> {
    r.map_err(|e| {
        log::warn!("{call} {id}: {e}");
        e.into()
    })
}

/// The JSON object containerd packs in an `Any` for a Go type that is not
/// a protobuf message (an OCI `Process` or `LinuxResources`).
fn json_any(
    any: Option<&containerd_shim::protos::protobuf::well_known_types::any::Any>,
    what: &str,
) -> Result<serde_json::Value, TaskError> {
    let any = any.ok_or_else(|| TaskError::invalid(format!("{what}: missing")))?;
    let v: serde_json::Value = serde_json::from_slice(&any.value)
        .map_err(|e| TaskError::invalid(format!("{what}: {e}")))?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(TaskError::invalid(format!("{what}: not a JSON object")))
    }
}

impl Task for Service {
    fn create(&self, _ctx: &TtrpcContext, req: CreateTaskRequest) -> Res<CreateTaskResponse> {
        if !req.checkpoint.is_empty() {
            return Err(
                TaskError::NotImplemented("restoring a task from a checkpoint".into()).into(),
            );
        }
        let args = CreateArgs {
            id: req.id.clone(),
            bundle: req.bundle,
            rootfs: req.rootfs,
            stdio: StdioPaths {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                terminal: req.terminal,
            },
        };
        let pid = log_err("create", &req.id, self.tasks.create(args))?;
        let mut resp = CreateTaskResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> Res<StartResponse> {
        let pid = log_err("start", &req.id, self.tasks.start(&req.id, &req.exec_id))?;
        let mut resp = StartResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> Res<StateResponse> {
        let c = self.tasks.container(&req.id)?;
        let p = self.tasks.process(&req.id, &req.exec_id)?;
        let (exit_status, exited_at) = p.exit();
        let mut resp = StateResponse::new();
        resp.id = req.id;
        resp.exec_id = req.exec_id;
        resp.bundle = c.bundle.clone();
        resp.pid = p.pid;
        resp.status = p.status().into();
        resp.stdin = p.stdio.stdin.clone();
        resp.stdout = p.stdio.stdout.clone();
        resp.stderr = p.stdio.stderr.clone();
        resp.terminal = p.stdio.terminal;
        resp.exit_status = exit_status;
        resp.exited_at = exited_at.into();
        Ok(resp)
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> Res<DeleteResponse> {
        let (pid, status, at) =
            log_err("delete", &req.id, self.tasks.delete(&req.id, &req.exec_id))?;
        let mut resp = DeleteResponse::new();
        resp.pid = pid;
        resp.exit_status = status;
        resp.exited_at = Some(at).into();
        Ok(resp)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> Res<PidsResponse> {
        let reply = self
            .tasks
            .call(&req.id, Call::ListProcesses { id: req.id.clone() })?;
        let Reply::Processes { pids } = reply else {
            return Err(TaskError::internal(format!("agent answered {reply:?} to pids")).into());
        };
        let mut resp = PidsResponse::new();
        for pid in pids.into_iter().take(65_536) {
            let Ok(pid) = u32::try_from(pid) else {
                continue;
            };
            let mut info = ProcessInfo::new();
            info.pid = pid;
            resp.processes.push(info);
        }
        Ok(resp)
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> Res<Empty> {
        log_err("pause", &req.id, self.tasks.pause(&req.id, true))?;
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> Res<Empty> {
        log_err("resume", &req.id, self.tasks.pause(&req.id, false))?;
        Ok(Empty::new())
    }

    fn checkpoint(&self, _ctx: &TtrpcContext, req: CheckpointTaskRequest) -> Res<Empty> {
        self.tasks.container(&req.id)?;
        Err(TaskError::NotImplemented("checkpoint".into()).into())
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> Res<Empty> {
        log_err(
            "kill",
            &req.id,
            self.tasks.kill(&req.id, &req.exec_id, req.signal, req.all),
        )?;
        Ok(Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> Res<Empty> {
        let spec = json_any(
            req.spec.as_ref(),
            &format!("exec {}: process spec", req.exec_id),
        )?;
        let stdio = StdioPaths {
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            terminal: req.terminal,
        };
        log_err(
            "exec",
            &req.id,
            self.tasks.add_exec(&req.id, &req.exec_id, stdio, spec),
        )?;
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> Res<Empty> {
        let rows = u16::try_from(req.height).unwrap_or(u16::MAX);
        let cols = u16::try_from(req.width).unwrap_or(u16::MAX);
        self.tasks.call(
            &req.id,
            Call::ResizeTty {
                container_id: req.id.clone(),
                exec_id: req.exec_id,
                rows,
                cols,
            },
        )?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> Res<Empty> {
        let p = self.tasks.process(&req.id, &req.exec_id)?;
        if req.stdin {
            p.close_stdin();
        }
        Ok(Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> Res<Empty> {
        let resources = json_any(
            req.resources.as_ref(),
            &format!("update {}: resources", req.id),
        )?;
        log_err(
            "update",
            &req.id,
            self.tasks
                .call(
                    &req.id,
                    Call::UpdateResources {
                        id: req.id.clone(),
                        resources,
                    },
                )
                .map(|_| ()),
        )?;
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> Res<WaitResponse> {
        let p = self.tasks.process(&req.id, &req.exec_id)?;
        let (status, at) = p.wait();
        let mut resp = WaitResponse::new();
        resp.exit_status = status;
        resp.exited_at = Some(at).into();
        Ok(resp)
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> Res<StatsResponse> {
        let reply = self
            .tasks
            .call(&req.id, Call::Stats { id: req.id.clone() })?;
        let Reply::Stats(stats) = reply else {
            return Err(TaskError::internal(format!("agent answered {reply:?} to stats")).into());
        };
        let mut resp = StatsResponse::new();
        resp.stats = Some(metrics::to_any(&stats).map_err(TaskError::internal)?).into();
        Ok(resp)
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> Res<ConnectResponse> {
        let c = self.tasks.container(&req.id)?;
        let mut resp = ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = c.sandbox.vmm_pid;
        resp.version = env!("CARGO_PKG_VERSION").to_string();
        Ok(resp)
    }

    fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> Res<Empty> {
        if req.now || self.tasks.count() == 0 {
            self.tasks.shut_down_all();
            self.tasks.exit.signal();
        }
        Ok(Empty::new())
    }
}
