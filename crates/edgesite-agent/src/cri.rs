//! The container runtime as the agent sees it: the [`Runtime`] trait (the CRI v1 calls the pod
//! workers need), and [`CriRuntime`], its one real implementation, CRI v1 gRPC over containerd's
//! unix socket. Messages are the CRI's own (`k8s_cri::v1`), so nothing is lost in translation;
//! the trait only removes the request/response envelopes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1;

/// How long one CRI call may take before it fails, as kubelet's `--runtime-request-timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How long connecting to the socket may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a CRI call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing answers on the socket (containerd not started, crashed, or a wrong path).
    #[error("containerd at {socket} is not answering: {source}")]
    Connect {
        /// The CRI socket.
        socket: PathBuf,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The runtime answered the call with an error.
    #[error("CRI {call} at {socket} failed ({code:?}): {message}")]
    Call {
        /// The CRI method, `RunPodSandbox`.
        call: &'static str,
        /// The CRI socket.
        socket: PathBuf,
        /// The gRPC status code.
        code: tonic::Code,
        /// The runtime's message.
        message: String,
    },
    /// The runtime answered without a field the CRI says it must fill.
    #[error("CRI {call} at {socket} answered without {field}")]
    Incomplete {
        /// The CRI method.
        call: &'static str,
        /// The CRI socket.
        socket: PathBuf,
        /// The missing field.
        field: &'static str,
    },
}

impl Error {
    /// The gRPC code when the runtime answered with an error (`NotFound` for an unknown id).
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Call { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The CRI calls the agent makes. Ids are the runtime's (sandbox and container ids, image ids
/// or references); filters are the CRI's, `None` for everything.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + std::fmt::Debug {
    /// The runtime's name and versions.
    async fn version(&self) -> Result<cri::VersionResponse>;
    /// Creates and starts a pod sandbox; returns its id. `runtime_handler` empty for the
    /// default.
    async fn run_pod_sandbox(
        &self,
        config: cri::PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String>;
    /// Stops a sandbox and its containers (idempotent).
    async fn stop_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<()>;
    /// Removes a stopped sandbox and its containers (idempotent).
    async fn remove_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<()>;
    /// The status of a sandbox.
    async fn pod_sandbox_status(&self, pod_sandbox_id: &str) -> Result<cri::PodSandboxStatus>;
    /// The sandboxes matching `filter`.
    async fn list_pod_sandboxes(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>>;
    /// Creates a container in a sandbox; returns its id. `sandbox_config` is the one the
    /// sandbox was run with.
    async fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: cri::PodSandboxConfig,
    ) -> Result<String>;
    /// Starts a created container.
    async fn start_container(&self, container_id: &str) -> Result<()>;
    /// Stops a container, killing it after `timeout` seconds of grace.
    async fn stop_container(&self, container_id: &str, timeout: i64) -> Result<()>;
    /// Removes a container (idempotent).
    async fn remove_container(&self, container_id: &str) -> Result<()>;
    /// The status of a container.
    async fn container_status(&self, container_id: &str) -> Result<cri::ContainerStatus>;
    /// The containers matching `filter`.
    async fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>>;
    /// Runs `cmd` in a running container and waits for it (probes, preStop hooks); the
    /// runtime kills it after `timeout` (zero: no limit). The command's exit code is in the
    /// answer, a failure to run it at all is an error.
    async fn exec_sync(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<cri::ExecSyncResponse>;
    /// The image `image` (a reference or an id), `None` when it is not present.
    async fn image_status(&self, image: &str) -> Result<Option<cri::Image>>;
    /// The images matching `filter`.
    async fn list_images(&self, filter: Option<cri::ImageFilter>) -> Result<Vec<cri::Image>>;
}

/// [`Runtime`] over CRI v1 gRPC on a unix socket (containerd's `containerd.sock`). Cheap to
/// clone: clones share one HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct CriRuntime {
    socket: PathBuf,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl CriRuntime {
    /// Connects to the CRI socket at `socket`, failing when nothing answers within
    /// [`CONNECT_TIMEOUT`]. Calls time out after [`DEFAULT_REQUEST_TIMEOUT`].
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with_timeout(socket, DEFAULT_REQUEST_TIMEOUT).await
    }

    /// As [`CriRuntime::connect`], with calls timing out after `request_timeout`.
    pub async fn connect_with_timeout(
        socket: impl AsRef<Path>,
        request_timeout: Duration,
    ) -> Result<Self> {
        let socket = socket.as_ref().to_path_buf();
        let path = socket.clone();
        // The URI is a placeholder: the connector ignores it and dials the socket.
        let channel = Endpoint::from_static("http://cri.invalid")
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(request_timeout)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|source| Error::Connect {
                socket: socket.clone(),
                source,
            })?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            socket,
        })
    }

    /// The runtime's conditions (CRI `Status`: `RuntimeReady`, `NetworkReady`), which the
    /// node's Ready condition follows as kubelet's runtime-state check does.
    pub async fn runtime_status(&self) -> Result<Vec<cri::RuntimeCondition>> {
        let req = cri::StatusRequest { verbose: false };
        let resp = self.runtime.clone().status(req).await;
        let resp = resp.map_err(self.failed("Status"))?.into_inner();
        Ok(resp.status.map(|s| s.conditions).unwrap_or_default())
    }

    /// The CRI socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn failed(&self, call: &'static str) -> impl FnOnce(tonic::Status) -> Error + '_ {
        move |status| Error::Call {
            call,
            socket: self.socket.clone(),
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    fn incomplete(&self, call: &'static str, field: &'static str) -> Error {
        Error::Incomplete {
            call,
            socket: self.socket.clone(),
            field,
        }
    }
}

/// What the node's heartbeat asks the runtime: its conditions (CRI `Status`). Apart from
/// [`Runtime`], so the heartbeat is tested with a runtime that goes down on demand.
#[async_trait::async_trait]
pub trait RuntimeStatus: Send + Sync + std::fmt::Debug {
    /// The runtime's conditions (`RuntimeReady`, `NetworkReady`).
    async fn runtime_status(&self) -> Result<Vec<cri::RuntimeCondition>>;
    /// Where the runtime is reached, for messages.
    fn socket(&self) -> &Path;
}

#[async_trait::async_trait]
impl RuntimeStatus for CriRuntime {
    async fn runtime_status(&self) -> Result<Vec<cri::RuntimeCondition>> {
        CriRuntime::runtime_status(self).await
    }

    fn socket(&self) -> &Path {
        CriRuntime::socket(self)
    }
}

#[async_trait::async_trait]
impl Runtime for CriRuntime {
    async fn version(&self) -> Result<cri::VersionResponse> {
        let req = cri::VersionRequest {
            version: "v1".into(),
        };
        let resp = self.runtime.clone().version(req).await;
        Ok(resp.map_err(self.failed("Version"))?.into_inner())
    }

    async fn run_pod_sandbox(
        &self,
        config: cri::PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String> {
        let req = cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: runtime_handler.into(),
        };
        let resp = self.runtime.clone().run_pod_sandbox(req).await;
        Ok(resp
            .map_err(self.failed("RunPodSandbox"))?
            .into_inner()
            .pod_sandbox_id)
    }

    async fn stop_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<()> {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_sandbox_id.into(),
        };
        let resp = self.runtime.clone().stop_pod_sandbox(req).await;
        resp.map_err(self.failed("StopPodSandbox"))?;
        Ok(())
    }

    async fn remove_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<()> {
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_sandbox_id.into(),
        };
        let resp = self.runtime.clone().remove_pod_sandbox(req).await;
        resp.map_err(self.failed("RemovePodSandbox"))?;
        Ok(())
    }

    async fn pod_sandbox_status(&self, pod_sandbox_id: &str) -> Result<cri::PodSandboxStatus> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_sandbox_id.into(),
            verbose: false,
        };
        let resp = self.runtime.clone().pod_sandbox_status(req).await;
        resp.map_err(self.failed("PodSandboxStatus"))?
            .into_inner()
            .status
            .ok_or_else(|| self.incomplete("PodSandboxStatus", "status"))
    }

    async fn list_pod_sandboxes(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>> {
        let req = cri::ListPodSandboxRequest { filter };
        let resp = self.runtime.clone().list_pod_sandbox(req).await;
        Ok(resp
            .map_err(self.failed("ListPodSandbox"))?
            .into_inner()
            .items)
    }

    async fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: cri::PodSandboxConfig,
    ) -> Result<String> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod_sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        let resp = self.runtime.clone().create_container(req).await;
        Ok(resp
            .map_err(self.failed("CreateContainer"))?
            .into_inner()
            .container_id)
    }

    async fn start_container(&self, container_id: &str) -> Result<()> {
        let req = cri::StartContainerRequest {
            container_id: container_id.into(),
        };
        let resp = self.runtime.clone().start_container(req).await;
        resp.map_err(self.failed("StartContainer"))?;
        Ok(())
    }

    async fn stop_container(&self, container_id: &str, timeout: i64) -> Result<()> {
        let req = cri::StopContainerRequest {
            container_id: container_id.into(),
            timeout,
        };
        let resp = self.runtime.clone().stop_container(req).await;
        resp.map_err(self.failed("StopContainer"))?;
        Ok(())
    }

    async fn remove_container(&self, container_id: &str) -> Result<()> {
        let req = cri::RemoveContainerRequest {
            container_id: container_id.into(),
        };
        let resp = self.runtime.clone().remove_container(req).await;
        resp.map_err(self.failed("RemoveContainer"))?;
        Ok(())
    }

    async fn container_status(&self, container_id: &str) -> Result<cri::ContainerStatus> {
        let req = cri::ContainerStatusRequest {
            container_id: container_id.into(),
            verbose: false,
        };
        let resp = self.runtime.clone().container_status(req).await;
        resp.map_err(self.failed("ContainerStatus"))?
            .into_inner()
            .status
            .ok_or_else(|| self.incomplete("ContainerStatus", "status"))
    }

    async fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>> {
        let req = cri::ListContainersRequest { filter };
        let resp = self.runtime.clone().list_containers(req).await;
        Ok(resp
            .map_err(self.failed("ListContainers"))?
            .into_inner()
            .containers)
    }

    async fn exec_sync(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<cri::ExecSyncResponse> {
        // The CRI counts whole seconds; a sub-second timeout must not become "no limit".
        let secs = i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX);
        let secs = if secs == 0 && !timeout.is_zero() {
            1
        } else {
            secs
        };
        let req = cri::ExecSyncRequest {
            container_id: container_id.into(),
            cmd,
            timeout: secs,
        };
        let mut request = tonic::Request::new(req);
        // The call itself may take as long as the command, plus a margin for the runtime.
        if !timeout.is_zero() {
            request.set_timeout(timeout + Duration::from_secs(5));
        }
        let resp = self.runtime.clone().exec_sync(request).await;
        Ok(resp.map_err(self.failed("ExecSync"))?.into_inner())
    }

    async fn image_status(&self, image: &str) -> Result<Option<cri::Image>> {
        let req = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        let resp = self.images.clone().image_status(req).await;
        Ok(resp.map_err(self.failed("ImageStatus"))?.into_inner().image)
    }

    async fn list_images(&self, filter: Option<cri::ImageFilter>) -> Result<Vec<cri::Image>> {
        let req = cri::ListImagesRequest { filter };
        let resp = self.images.clone().list_images(req).await;
        Ok(resp.map_err(self.failed("ListImages"))?.into_inner().images)
    }
}

/// The CRI streaming calls behind `kubectl exec`, `attach` and `port-forward`: each returns the
/// URL of the runtime's own streaming server (loopback) for one session; [`exec_sync`] runs a
/// command to completion (probes, and the direct baseline of the stream figures).
///
/// [`exec_sync`]: StreamingRuntime::exec_sync
#[async_trait::async_trait]
pub trait StreamingRuntime: Runtime {
    /// `Exec`: the streaming URL of a command in a container.
    async fn exec(&self, req: cri::ExecRequest) -> Result<String>;
    /// `Attach`: the streaming URL of a container's console.
    async fn attach(&self, req: cri::AttachRequest) -> Result<String>;
    /// `PortForward`: the streaming URL for connections to a sandbox's ports.
    async fn port_forward(&self, req: cri::PortForwardRequest) -> Result<String>;
}

#[async_trait::async_trait]
impl StreamingRuntime for CriRuntime {
    async fn exec(&self, req: cri::ExecRequest) -> Result<String> {
        let resp = self.runtime.clone().exec(req).await;
        Ok(resp.map_err(self.failed("Exec"))?.into_inner().url)
    }

    async fn attach(&self, req: cri::AttachRequest) -> Result<String> {
        let resp = self.runtime.clone().attach(req).await;
        Ok(resp.map_err(self.failed("Attach"))?.into_inner().url)
    }

    async fn port_forward(&self, req: cri::PortForwardRequest) -> Result<String> {
        let resp = self.runtime.clone().port_forward(req).await;
        Ok(resp.map_err(self.failed("PortForward"))?.into_inner().url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_nobody_listens_on_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("missing.sock");
        let err = CriRuntime::connect(&socket).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "containerd at {} is not answering",
                socket.display()
            )),
            "{text}"
        );
    }
}
