//! Pods on this node: what the pod workers need to turn a [`Pod`] from the local cache into
//! sandboxes and containers, and how they report back.
//!
//! - [`worker`]: one worker per pod, the state machine (sandbox, init containers, containers,
//!   restarts with back-off, probes, graceful termination) over a [`Runtime`], with
//!   [`plan`] (what to do, a pure function of the pod and the runtime's view), [`backoff`]
//!   (CrashLoopBackOff and ImagePullBackOff) and [`probe`] (probes and lifecycle hooks);
//! - [`status`]: the pod status a worker computes from what the runtime reports;
//! - [`config`]: the CRI sandbox and container configurations of a pod (command, env,
//!   mounts, resources, security context), with [`env`](mod@env) (environment, `$(VAR)` expansion,
//!   downward API fields) and [`resources`] (QoS class, CPU shares/quota, memory limit, OOM
//!   score);
//! - [`volumes`]: the pod's volumes on the host (emptyDir, hostPath, configMap, secret,
//!   downwardAPI, projected), behind [`VolumeManager`].
//!
//! The workers read only what they are handed: the pod from the local cache and the objects
//! it references through [`Objects`]; they never call the API server. What they learn goes
//! out through [`Reporter`].
//!
//! [`Runtime`]: crate::cri::Runtime

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodStatus, Secret};

pub use resources::NodeResources;

mod atomic_writer;
pub mod backoff;
pub mod config;
pub mod env;
#[cfg(test)]
pub(crate) mod fake;
pub mod plan;
pub mod probe;
pub mod resources;
pub mod status;
#[cfg(test)]
mod test_support;
pub mod volumes;
pub mod worker;

pub use worker::{PodWorkers, WorkerOptions};

/// The ConfigMaps and Secrets pods reference, as the node's local cache holds them.
pub trait Objects: Send + Sync + std::fmt::Debug {
    /// The ConfigMap `namespace/name`, `None` when the cache does not have it (yet).
    fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>>;
    /// The Secret `namespace/name`, `None` when the cache does not have it (yet).
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>>;
}

/// Kind of a pod event, as `core/v1` Event `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// `Normal`.
    Normal,
    /// `Warning`.
    Warning,
}

impl EventType {
    /// The Event `type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Where the pod workers send what they learn. The agent writes it to the API server (status
/// subresource, events), queueing it while the server is unreachable.
pub trait Reporter: Send + Sync + std::fmt::Debug {
    /// The latest status of `pod` (identified by its namespace, name and uid). A later call
    /// supersedes an earlier one.
    fn pod_status(&self, pod: &Pod, status: PodStatus);
    /// An event about `pod`; `field_path` as upstream (`spec.containers{name}`), `None` for
    /// the pod itself.
    fn event(
        &self,
        pod: &Pod,
        kind: EventType,
        reason: &str,
        field_path: Option<String>,
        message: String,
    );
    /// `pod` (which has a deletionTimestamp) is terminated on this node: its containers
    /// and sandbox are gone and its final status was reported before this call. The pod may
    /// now be deleted from the API (kubelet deletes it with grace period 0).
    fn pod_terminated(&self, pod: &Pod);
}

/// What the node tells its pods and containers about itself.
#[derive(Debug, Clone)]
pub struct NodeContext {
    /// The node's name (`spec.nodeName`, downward API `spec.nodeName`).
    pub node_name: String,
    /// The node's address (`status.hostIP`).
    pub node_ip: IpAddr,
    /// Where pod directories live on the host: `ADIR/pods/<uid>/...` (volumes, logs).
    pub pods_dir: PathBuf,
    /// The nameserver pods with `dnsPolicy: ClusterFirst` get, when the node runs DNS.
    pub cluster_dns: Option<IpAddr>,
    /// The cluster domain, `cluster.local`.
    pub cluster_domain: String,
    /// The node's capacity: memory for the OOM score of Burstable containers.
    pub capacity: NodeResources,
    /// What pods may use: the downward API's value of an unset limit, the default size of
    /// a memory-backed emptyDir.
    pub allocatable: NodeResources,
    /// The resolv.conf pods with `dnsPolicy: Default` copy (and ClusterFirst ones without
    /// cluster DNS), `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// The hosts file host-network pods see as `/etc/hosts`, `/etc/hosts`.
    pub host_hosts_file: PathBuf,
}

impl NodeContext {
    /// A node context without resource figures (zero: Burstable OOM scores at their
    /// maximum, unset limits reported as 0) reading the host's `/etc/resolv.conf` and
    /// `/etc/hosts`; set [`NodeContext::capacity`] and [`NodeContext::allocatable`] (for
    /// example to [`NodeResources::of_host`]) for real numbers.
    pub fn new(
        node_name: impl Into<String>,
        node_ip: IpAddr,
        pods_dir: impl Into<PathBuf>,
        cluster_dns: Option<IpAddr>,
        cluster_domain: impl Into<String>,
    ) -> Self {
        NodeContext {
            node_name: node_name.into(),
            node_ip,
            pods_dir: pods_dir.into(),
            cluster_dns,
            cluster_domain: cluster_domain.into(),
            capacity: NodeResources::default(),
            allocatable: NodeResources::default(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            host_hosts_file: PathBuf::from("/etc/hosts"),
        }
    }
    /// The host directory of the pod with `uid`.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir.join(uid)
    }
    /// The CRI log directory of the pod with `uid` (`log_directory` of its sandbox).
    pub fn pod_log_dir(&self, uid: &str) -> PathBuf {
        self.pod_dir(uid).join("logs")
    }
    /// The `/etc/hosts` file kubelet-style managed for the pod with `uid`.
    pub fn pod_etc_hosts(&self, uid: &str) -> PathBuf {
        self.pod_dir(uid).join("etc-hosts")
    }
}

/// The volumes of one pod as they are on the host: volume name → host path, and whether the
/// volume is read-only by nature (configMap, secret, downwardAPI, projected).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreparedVolumes {
    /// Volume name → its directory (or file, for a hostPath file) on the host.
    pub paths: BTreeMap<String, PreparedVolume>,
}

/// One prepared volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedVolume {
    /// Where it is on the host.
    pub host_path: PathBuf,
    /// Mounted read-only whatever the volumeMount says (configMap, secret, downwardAPI,
    /// projected), as kubelet does.
    pub read_only: bool,
}

/// Why a pod's volumes cannot be set up (yet).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A ConfigMap or Secret the pod needs is not in the cache (yet); retried when it comes.
    #[error("{kind} \"{name}\" not found")]
    Missing {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A key an `items` entry names is not in the object.
    #[error("configuration key \"{key}\" not found in {kind} \"{name}\"")]
    MissingKey {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// The object's name.
        name: String,
        /// The key.
        key: String,
    },
    /// The spec asks for something the host does not satisfy (a hostPath of the wrong type,
    /// a path escaping the volume).
    #[error("volume {volume}: {reason}")]
    Invalid {
        /// The volume name.
        volume: String,
        /// What is wrong, upstream's words where there are some.
        reason: String,
    },
    /// The spec asks for something this node does not do.
    #[error("volume {volume}: {reason}")]
    Unsupported {
        /// The volume name.
        volume: String,
        /// What is not supported.
        reason: String,
    },
    /// The host refused.
    #[error("volume {volume}: {source}")]
    Io {
        /// The volume name.
        volume: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The pods' volumes on the host: set up before the containers start, refreshed while they
/// run (configMap/secret/downwardAPI/projected contents follow their objects), torn down
/// when the pod is gone.
#[async_trait::async_trait]
pub trait VolumeManager: Send + Sync + std::fmt::Debug {
    /// Creates (or refreshes: idempotent) the volumes of `pod`.
    async fn setup(&self, pod: &Pod, objects: &dyn Objects)
    -> Result<PreparedVolumes, VolumeError>;
    /// Unmounts and removes the volumes of a pod that ran to its end, keeping its container
    /// logs (`kubectl logs` of a finished pod) until [`VolumeManager::teardown`]; idempotent.
    async fn release(&self, pod_uid: &str) -> Result<(), VolumeError>;
    /// Removes everything of the pod with `uid`: volumes (unmounting tmpfs), logs, files;
    /// idempotent.
    async fn teardown(&self, pod_uid: &str) -> Result<(), VolumeError>;
}
