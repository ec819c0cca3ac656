//! EdgeSite's controllers. Each is an ordinary API client (kube-rs) so it can run inside
//! `edgesite server` over the in-process transport or, later, anywhere with a kubeconfig.
//!
//! - [`namespace`]: empties terminating namespaces, then releases their `kubernetes`
//!   finalizer so the API server removes them.
//! - [`garbage_collector`]: deletes objects whose owners are gone, and runs the `orphan` and
//!   `foregroundDeletion` finalizers.
//! - [`scheduler`]: binds pending pods to nodes (filters, scores, binding, events), as
//!   upstream kube-scheduler's default profile does.
//!
//! - [`endpoints`] and [`endpointslice`]: the Endpoints and EndpointSlices of Services with
//!   a selector, following their pods.
//! - [`replicaset`] and [`deployment`]: keep a ReplicaSet's pods at `spec.replicas`, and roll
//!   a Deployment's template out through ReplicaSets (RollingUpdate, Recreate, revisions);
//!   [`workload`] holds what workload controllers share.
//! - [`serviceaccount`] and [`rootca`]: the `default` ServiceAccount and the
//!   `kube-root-ca.crt` ConfigMap in every namespace.
//! - [`job`] and [`cronjob`]: run a Job's pods to completion (counted through the
//!   `batch.kubernetes.io/job-tracking` finalizer), and create Jobs on a CronJob's
//!   schedule ([`cron`] parses and evaluates schedules).
//! - [`daemonset`] and [`statefulset`]: one pod per eligible node, and ordered pods with
//!   stable names, both with rolling updates; [`revision`] keeps their templates as
//!   ControllerRevisions.
//!
//! - [`node_lifecycle`]: marks nodes that stopped heartbeating `Unknown`, taints them
//!   unreachable / not-ready and marks their pods not ready; under the edge policy their pods
//!   are only evicted once the node's autonomy runs out (never by default).
//!
//! [`run_all`] runs every controller until a shutdown signal; [`leader::run_elected`] runs it
//! only while this process holds the controllers' Lease.

pub mod cron;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
mod events;
pub mod garbage_collector;
pub mod job;
pub mod leader;
pub mod namespace;
pub mod node_lifecycle;
pub mod replicaset;
pub mod resources;
pub mod revision;
pub mod rootca;
pub mod scheduler;
pub mod serviceaccount;
pub mod statefulset;
pub mod workload;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tracing::info;

pub use edgesite_clock::{Clock, ManualClock, SystemClock};

/// The user in-process controllers act as (upstream's controller manager identity).
pub const CONTROLLER_USER: &str = "system:kube-controller-manager";

/// Why a controller step failed; failures are retried with back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// An object or answer was not what the controller expected.
    #[error("{0}")]
    Unexpected(String),
}

/// Settings shared by the controllers. `Config::default()` is what `edgesite server` runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where controllers read the time from.
    pub clock: Arc<dyn Clock>,
    /// Longest a workload controller waits before looking again at an object whose state
    /// depends on time passing (minReadySeconds, progress deadlines) or on pods going away;
    /// tests on a [`ManualClock`] shorten it.
    pub workload_recheck: std::time::Duration,
    /// How often the node lifecycle controller checks every node's heartbeats (upstream's
    /// `--node-monitor-period`, 5 s).
    pub node_monitor_period: std::time::Duration,
    /// How long a node may go without a heartbeat before it is marked `Unknown` and tainted
    /// unreachable (upstream's `--node-monitor-grace-period`, 40 s).
    pub node_monitor_grace_period: std::time::Duration,
    /// How long an unreachable or not-ready node keeps its pods before they are evicted;
    /// forever by default (the edge policy). Nodes override it with
    /// [`node_lifecycle::AUTONOMY_ANNOTATION`].
    pub node_autonomy: node_lifecycle::Autonomy,
    /// The Job controller's back-off before replacing failed pods, doubled per failure up to
    /// 6 minutes (upstream's `DefaultJobPodFailureBackOff`, 10 s); tests set it to zero.
    pub job_backoff: std::time::Duration,
    /// The cluster CA certificate (PEM) published as `kube-root-ca.crt` in every namespace;
    /// `None` publishes nothing. `edgesite server` passes its CA.
    pub root_ca_pem: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            workload_recheck: std::time::Duration::from_secs(30),
            node_monitor_period: std::time::Duration::from_secs(5),
            node_monitor_grace_period: std::time::Duration::from_secs(40),
            node_autonomy: node_lifecycle::Autonomy::Forever,
            job_backoff: std::time::Duration::from_secs(10),
            root_ca_pem: None,
        }
    }
}

/// A controller's main loop, as [`run_all`] runs it.
type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs every controller with `client` until `shutdown` completes.
///
/// Leader election seam: with several servers sharing one datastore, the caller acquires the
/// controller lease first and passes "lease lost or shutting down" as `shutdown`.
pub async fn run_all(
    client: kube::Client,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let config = Arc::new(config);
    let tasks: Vec<(&str, Task)> = vec![
        ("namespace", Box::pin(namespace::run(client.clone()))),
        (
            "scheduler",
            Box::pin(scheduler::run(client.clone(), config.clone())),
        ),
        (
            "node-lifecycle",
            Box::pin(node_lifecycle::run(client.clone(), config.clone())),
        ),
        (
            "garbage-collector",
            Box::pin(garbage_collector::run(client.clone())),
        ),
        (
            "replicaset",
            Box::pin(replicaset::run(client.clone(), config.clone())),
        ),
        (
            "deployment",
            Box::pin(deployment::run(client.clone(), config.clone())),
        ),
        (
            "daemonset",
            Box::pin(daemonset::run(client.clone(), config.clone())),
        ),
        (
            "statefulset",
            Box::pin(statefulset::run(client.clone(), config.clone())),
        ),
        ("job", Box::pin(job::run(client.clone(), config.clone()))),
        (
            "cronjob",
            Box::pin(cronjob::run(client.clone(), config.clone())),
        ),
        ("endpoints", Box::pin(endpoints::run(client.clone()))),
        (
            "endpointslice",
            Box::pin(endpointslice::run(client.clone())),
        ),
        (
            "serviceaccount",
            Box::pin(serviceaccount::run(client.clone())),
        ),
        (
            "root-ca-publisher",
            Box::pin(rootca::run(client.clone(), config.root_ca_pem.clone())),
        ),
    ];
    let names: Vec<&str> = tasks.iter().map(|(n, _)| *n).collect();
    info!(controllers = ?names, "starting controllers");
    let _ = &config;
    tokio::select! {
        () = shutdown => info!("controllers stopping"),
        _ = futures::future::join_all(tasks.into_iter().map(|(_, t)| t)) => info!("controllers ended"),
    }
}
