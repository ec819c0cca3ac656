//! The CRI configurations of a pod: [`sandbox_config`] and [`container_config`], pure
//! functions of the pod, the node and what the cache holds.

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};

use super::{NodeContext, Objects, PreparedVolumes};

/// Why a container cannot be configured: its waiting reason is `CreateContainerConfigError`
/// (upstream's reason for all of these), with this error's text as the message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A ConfigMap or Secret an env var or envFrom needs is not in the cache (yet).
    #[error("{kind} \"{name}\" not found")]
    Missing {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A key an env var names is not in the object.
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    MissingKey {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// The object's namespace.
        namespace: String,
        /// The object's name.
        name: String,
        /// The key.
        key: String,
    },
    /// Anything else the spec asks that cannot be configured.
    #[error("{0}")]
    Invalid(String),
}

/// The sandbox configuration of `pod`; `attempt` counts sandboxes made for it before.
pub fn sandbox_config(
    pod: &Pod,
    node: &NodeContext,
    attempt: u32,
) -> Result<cri::PodSandboxConfig, ConfigError> {
    let meta = &pod.metadata;
    let uid = meta.uid.clone().unwrap_or_default();
    Ok(cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: meta.name.clone().unwrap_or_default(),
            uid: uid.clone(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            attempt,
        }),
        log_directory: node.pod_log_dir(&uid).display().to_string(),
        ..Default::default()
    })
}

/// The configuration of `container` of `pod`; `pod_ip` for the downward API.
#[allow(clippy::too_many_arguments)]
pub fn container_config(
    pod: &Pod,
    container: &Container,
    restart_count: u32,
    volumes: &PreparedVolumes,
    objects: &dyn Objects,
    node: &NodeContext,
    pod_ip: Option<&str>,
) -> Result<cri::ContainerConfig, ConfigError> {
    let _ = (pod, volumes, objects, node, pod_ip);
    Ok(cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: container.name.clone(),
            attempt: restart_count,
        }),
        image: Some(cri::ImageSpec {
            image: container.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: container.command.clone().unwrap_or_default(),
        args: container.args.clone().unwrap_or_default(),
        log_path: format!("{}/{}.log", container.name, restart_count),
        ..Default::default()
    })
}
