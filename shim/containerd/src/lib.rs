//! `containerd-shim-husk-v2`: containerd's runtime v2 shim. One shim
//! process serves a task (or a Kubernetes pod, grouped by the
//! `io.kubernetes.cri.sandbox-id` annotation); each task runs in its own
//! VM, booted and driven through the same library as the `husk` CLI.

mod error;
mod events;
mod io;
mod metrics;
mod mount;
mod process;
mod service;
mod task;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, ExitSignal, Flags, Shim, StartOpts};

use husk_host::sandbox;

pub use containerd_shim::protos::types::mount::Mount;
pub use error::{TaskError, code_of};
pub use process::StdioPaths;
pub use service::Service;
pub use task::{CreateArgs, Tasks};

/// The task service the shim binary serves over ttrpc, without the server:
/// for embedding and tests. Tasks live below `root`; events go to
/// containerd's ttrpc socket at `address`.
pub fn task_service(namespace: &str, root: PathBuf, address: &str) -> Result<Arc<Tasks>, String> {
    let publisher =
        RemotePublisher::new(address).map_err(|e| format!("containerd at {address}: {e}"))?;
    let events = events::Events::start(publisher, namespace.to_string());
    Ok(Arc::new(Tasks::new(
        namespace.to_string(),
        root,
        events,
        ShimExit::default(),
    )))
}

/// containerd's name for this runtime.
pub const RUNTIME_ID: &str = "io.containerd.husk.v2";

/// Annotation naming a container's role in a CRI pod.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// Annotation naming a container's pod sandbox.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// Where task directories (images, VM sockets, cleanup records) live:
/// `<husk root>/containerd` (`$HUSK_ROOT` or `/run/husk`).
pub fn task_root() -> PathBuf {
    husk_host::config::runtime_root(None).join("containerd")
}

/// The shim binary's entry point.
pub fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args
        .iter()
        .skip(1)
        .any(|a| a == "-v" || a == "--version" || a == "-version")
    {
        println!(
            "containerd-shim-husk-v2:\n  Runtime: {RUNTIME_ID}\n  Version: {}\n  Task API: v2",
            env!("CARGO_PKG_VERSION")
        );
        return std::process::ExitCode::SUCCESS;
    }
    let config = Config {
        // The shim waits for its own children (the VMs' processes).
        no_reaper: true,
        no_sub_reaper: true,
        ..Config::default()
    };
    containerd_shim::run::<HuskShim>(RUNTIME_ID, Some(config));
    std::process::ExitCode::SUCCESS
}

/// Tells the shim's main thread to exit.
#[derive(Clone, Default)]
pub struct ShimExit(Arc<ExitSignal>);

impl std::fmt::Debug for ShimExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShimExit")
    }
}

impl ShimExit {
    /// Lets the shim exit.
    pub fn signal(&self) {
        self.0.signal();
    }

    fn wait(&self) {
        self.0.wait();
    }
}

/// The shim process.
#[derive(Debug)]
pub struct HuskShim {
    id: String,
    namespace: String,
    bundle: PathBuf,
    exit: ShimExit,
}

/// The shim that serves `id`: its pod's sandbox for a CRI container.
fn grouping(id: &str, bundle: &Path) -> String {
    match task::pod_role(bundle) {
        task::PodRole::Member(sandbox) => sandbox,
        _ => id.to_string(),
    }
}

impl Shim for HuskShim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        HuskShim {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            bundle,
            exit: ShimExit::default(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let group = grouping(&opts.id, &self.bundle);
        let (_, address) = containerd_shim::spawn(opts, &group, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // The shim is gone (or never served): remove what the task left.
        let dir = task::task_dir(&task_root(), &self.namespace, &self.id);
        sandbox::clean_up(&dir);
        let rootfs = self.bundle.join("rootfs");
        husk_host::shares::unmount(&rootfs);
        remove_dead_socket(&self.bundle);
        let mut resp = DeleteResponse::new();
        resp.exit_status = 128 + libc::SIGKILL as u32;
        resp.exited_at = Some(process::now()).into();
        Ok(resp)
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        let events = events::Events::start(publisher, self.namespace.clone());
        let tasks = task::Tasks::new(
            self.namespace.clone(),
            task_root(),
            events,
            self.exit.clone(),
        );
        Service::new(Arc::new(tasks))
    }
}

/// Removes the shim's socket when no shim answers on it any more (a
/// killed shim leaves it behind).
fn remove_dead_socket(bundle: &Path) {
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let path = address.trim().trim_start_matches("unix://");
    if path.is_empty() || std::os::unix::net::UnixStream::connect(path).is_ok() {
        return;
    }
    let _ = std::fs::remove_file(path);
}
