//! A CRI client for the tests and benchmarks: the Kubernetes CRI v1 gRPC
//! API (the `k8s-cri` crate's generated tonic client) spoken to
//! containerd's socket, as the kubelet speaks it, from synchronous code
//! through a current-thread tokio runtime.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
pub use k8s_cri::v1 as api;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// A failed CRI call: the gRPC status code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriError {
    /// The status code.
    pub code: tonic::Code,
    /// The status message.
    pub message: String,
}

impl CriError {
    /// The status message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for CriError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl From<tonic::Status> for CriError {
    fn from(s: tonic::Status) -> CriError {
        CriError {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

fn missing(what: &str) -> CriError {
    CriError {
        code: tonic::Code::Internal,
        message: format!("reply without {what}"),
    }
}

/// What a CRI call returns: its reply, or the status it failed with.
pub type CriResult<T> = Result<T, CriError>;

/// The longest any one CRI call may take before it fails with
/// `Cancelled`/`DeadlineExceeded`.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(240);

/// A connected CRI runtime-service client.
#[derive(Debug)]
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
}

impl Cri {
    /// Connects to the CRI served on `socket`. Panics if it cannot.
    pub fn connect(socket: &Path) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let path = socket.to_path_buf();
        let channel = rt
            .block_on(async move {
                // The URI is required and ignored: the connector dials the
                // socket.
                Endpoint::try_from("http://[::]:0")
                    .expect("endpoint")
                    .connect_timeout(Duration::from_secs(10))
                    // No call may hang a test: containerd answers every
                    // one well within this, VM boots under TCG included.
                    .timeout(CALL_TIMEOUT)
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path: PathBuf = path.clone();
                        async move {
                            let s = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(s))
                        }
                    }))
                    .await
            })
            .unwrap_or_else(|e| panic!("cannot connect to the CRI at {}: {e}", socket.display()));
        Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel),
        }
    }

    /// `Version`: the runtime's name and version.
    pub fn version(&mut self) -> CriResult<api::VersionResponse> {
        let req = api::VersionRequest {
            version: "v1".into(),
        };
        let r = self.rt.block_on(self.runtime.version(req))?;
        Ok(r.into_inner())
    }

    /// `RunPodSandbox` with runtime handler `handler`; returns the pod's ID.
    pub fn run_pod(&mut self, config: &api::PodSandboxConfig, handler: &str) -> CriResult<String> {
        let req = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        let r = self.rt.block_on(self.runtime.run_pod_sandbox(req))?;
        Ok(r.into_inner().pod_sandbox_id)
    }

    /// `PodSandboxStatus`.
    pub fn pod_status(&mut self, pod: &str) -> CriResult<api::PodSandboxStatus> {
        let req = api::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        };
        let r = self.rt.block_on(self.runtime.pod_sandbox_status(req))?;
        r.into_inner().status.ok_or_else(|| missing("a pod status"))
    }

    /// `StopPodSandbox`.
    pub fn stop_pod(&mut self, pod: &str) -> CriResult<()> {
        let req = api::StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        self.rt.block_on(self.runtime.stop_pod_sandbox(req))?;
        Ok(())
    }

    /// `RemovePodSandbox`.
    pub fn remove_pod(&mut self, pod: &str) -> CriResult<()> {
        let req = api::RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        self.rt.block_on(self.runtime.remove_pod_sandbox(req))?;
        Ok(())
    }

    /// `CreateContainer` in pod `pod` (created from `pod_config`); returns
    /// the container's ID.
    pub fn create_container(
        &mut self,
        pod: &str,
        pod_config: &api::PodSandboxConfig,
        config: api::ContainerConfig,
    ) -> CriResult<String> {
        let req = api::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        let r = self.rt.block_on(self.runtime.create_container(req))?;
        Ok(r.into_inner().container_id)
    }

    /// `StartContainer`.
    pub fn start_container(&mut self, id: &str) -> CriResult<()> {
        let req = api::StartContainerRequest {
            container_id: id.into(),
        };
        self.rt.block_on(self.runtime.start_container(req))?;
        Ok(())
    }

    /// `ContainerStatus`.
    pub fn container_status(&mut self, id: &str) -> CriResult<api::ContainerStatus> {
        let req = api::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        let r = self.rt.block_on(self.runtime.container_status(req))?;
        r.into_inner()
            .status
            .ok_or_else(|| missing("a container status"))
    }

    /// `ExecSync` of `cmd` in container `id`, allowed `timeout` seconds.
    pub fn exec_sync(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> CriResult<api::ExecSyncResponse> {
        let req = api::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        };
        let r = self.rt.block_on(self.runtime.exec_sync(req))?;
        Ok(r.into_inner())
    }

    /// `ContainerStats`.
    pub fn container_stats(&mut self, id: &str) -> CriResult<api::ContainerStats> {
        let req = api::ContainerStatsRequest {
            container_id: id.into(),
        };
        let r = self.rt.block_on(self.runtime.container_stats(req))?;
        r.into_inner().stats.ok_or_else(|| missing("stats"))
    }

    /// `UpdateContainerResources` with new Linux limits.
    pub fn update_resources(
        &mut self,
        id: &str,
        linux: api::LinuxContainerResources,
    ) -> CriResult<()> {
        let req = api::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(linux),
            ..Default::default()
        };
        self.rt
            .block_on(self.runtime.update_container_resources(req))?;
        Ok(())
    }

    /// `StopContainer`, killing after `timeout` seconds.
    pub fn stop_container(&mut self, id: &str, timeout: i64) -> CriResult<()> {
        let req = api::StopContainerRequest {
            container_id: id.into(),
            timeout,
        };
        self.rt.block_on(self.runtime.stop_container(req))?;
        Ok(())
    }

    /// `RemoveContainer`.
    pub fn remove_container(&mut self, id: &str) -> CriResult<()> {
        let req = api::RemoveContainerRequest {
            container_id: id.into(),
        };
        self.rt.block_on(self.runtime.remove_container(req))?;
        Ok(())
    }

    /// `ListPodSandbox`: the IDs of every pod the runtime knows.
    pub fn pod_ids(&mut self) -> CriResult<Vec<String>> {
        let req = api::ListPodSandboxRequest { filter: None };
        let r = self.rt.block_on(self.runtime.list_pod_sandbox(req))?;
        Ok(r.into_inner().items.into_iter().map(|p| p.id).collect())
    }
}

/// A pod on the node's network (as `hostNetwork: true`: no CNI set-up)
/// named `name`, its container logs in `log_dir`.
pub fn pod_config(name: &str, log_dir: &Path) -> api::PodSandboxConfig {
    let node = api::NamespaceMode::Node as i32;
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}-{}", std::process::id()),
            namespace: "husk-test".into(),
            attempt: 0,
        }),
        log_directory: log_dir.display().to_string(),
        linux: Some(api::LinuxPodSandboxConfig {
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: node,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container named `name` of image `image` running `command`, its log
/// at `<pod log directory>/<name>.log`.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}
