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
//! - [`clusterrole_aggregation`]: fills the rules of aggregated ClusterRoles (`admin`,
//!   `edit`, `view`) from the ClusterRoles their selectors match.
//! - [`node_lifecycle`]: marks nodes that stopped heartbeating `Unknown`, taints them
//!   unreachable / not-ready and marks their pods not ready; under the edge policy their pods
//!   are only evicted once the node's autonomy runs out (never by default).
//!
//! [`run_all`] runs every controller until a shutdown signal; [`leader::run_elected`] runs it
//! only while this process holds the controllers' Lease.
#![warn(clippy::unwrap_used, clippy::expect_used)] // product code returns errors; tests may unwrap

pub mod clusterrole_aggregation;
pub mod cron;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
mod events;
pub mod garbage_collector;
pub mod informers;
pub mod job;
pub mod leader;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod queue;
pub mod replicaset;
pub mod resources;
pub mod revision;
pub mod rootca;
pub mod scheduler;
pub mod serviceaccount;
pub mod statefulset;
pub mod workload;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::queue::Backoff;

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
    /// The network nodes' pod CIDRs are allocated from (a `/24` each); `None` allocates
    /// none.
    pub cluster_cidr: Option<node_ipam::ClusterCidr>,
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
            cluster_cidr: None,
        }
    }
}

/// A controller's main loop, as [`run_all`] runs it.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Makes a controller's main loop, again after it panicked.
pub type TaskFactory = Box<dyn Fn() -> Task + Send + Sync>;

/// The first wait before restarting a controller that panicked or ended, doubled per
/// restart up to [`RESTART_MAX`].
const RESTART_BASE: Duration = Duration::from_millis(500);
/// The longest wait before restarting a controller.
const RESTART_MAX: Duration = Duration::from_secs(60);
/// A controller that ran this long before it failed starts its back-off afresh.
const RESTART_RESET: Duration = Duration::from_secs(60);

/// Runs every controller with `client` until `shutdown` completes.
///
/// The shared informers ([`informers::Informers`]) run next to the controllers. Each runs
/// on its own task: one that panics is logged with its name and the panic's message, and
/// started again after a back-off, while the others keep going.
///
/// Leader election seam: with several servers sharing one datastore, the caller acquires the
/// controller lease first and passes "lease lost or shutting down" as `shutdown`.
pub async fn run_all(
    client: kube::Client,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let config = Arc::new(config);
    let inf = informers::Informers::new(&client);
    let mut tasks = inf.watches();
    tasks.extend(controllers(&client, &config, &inf));
    let names: Vec<&str> = tasks.iter().map(|(n, _)| *n).collect();
    info!(controllers = ?names, "starting controllers");
    supervise(tasks, Backoff::new(RESTART_BASE, RESTART_MAX), shutdown).await;
    info!("controllers stopping");
}

/// Every controller, by name, over the shared informers.
fn controllers(
    client: &kube::Client,
    config: &Arc<Config>,
    inf: &informers::Informers,
) -> Vec<(&'static str, TaskFactory)> {
    macro_rules! task {
        ($name:literal, |$c:ident, $cfg:ident, $i:ident| $body:expr) => {{
            let ($c, $cfg, $i) = (client.clone(), config.clone(), inf.clone());
            let make: TaskFactory = Box::new(move || {
                let ($c, $cfg, $i) = ($c.clone(), $cfg.clone(), $i.clone());
                let _ = (&$c, &$cfg, &$i);
                Box::pin(async move { $body.await })
            });
            ($name, make)
        }};
    }
    vec![
        task!("namespace", |c, cfg, i| namespace::run(c, cfg, &i)),
        task!("scheduler", |c, cfg, i| scheduler::run_shared(c, cfg, &i)),
        task!("node-lifecycle", |c, cfg, i| node_lifecycle::run(
            c, cfg, &i
        )),
        task!("garbage-collector", |c, _cfg, i| garbage_collector::run(
            c, &i
        )),
        task!("replicaset", |c, cfg, i| replicaset::run(c, cfg, &i)),
        task!("deployment", |c, cfg, _i| deployment::run(c, cfg)),
        task!("daemonset", |c, cfg, i| daemonset::run(c, cfg, &i)),
        task!("statefulset", |c, cfg, i| statefulset::run(c, cfg, &i)),
        task!("job", |c, cfg, i| job::run(c, cfg, &i)),
        task!("cronjob", |c, cfg, _i| cronjob::run(c, cfg)),
        task!("endpoints", |c, _cfg, i| endpoints::run(c, &i)),
        task!("endpointslice", |c, _cfg, i| endpointslice::run(c, &i)),
        task!("serviceaccount", |c, _cfg, i| serviceaccount::run(c, &i)),
        task!("clusterrole-aggregation", |c, _cfg, _i| {
            clusterrole_aggregation::run(c)
        }),
        task!("node-ipam", |c, cfg, i| async move {
            match cfg.cluster_cidr {
                Some(cidr) => node_ipam::run(c, cidr, &i).await,
                None => info!("no cluster CIDR configured: nodes get no pod CIDR"),
            }
        }),
        task!("root-ca-publisher", |c, cfg, i| rootca::run(
            c,
            cfg.root_ca_pem.clone(),
            &i
        )),
    ]
}

/// Runs `tasks` in a [`JoinSet`] until `shutdown` (or until all have returned), restarting
/// one that panics after its back-off; dropping the set on shutdown aborts them all.
async fn supervise(
    tasks: Vec<(&'static str, TaskFactory)>,
    backoff: Backoff<&'static str>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let tasks: Vec<(&'static str, Arc<TaskFactory>)> =
        tasks.into_iter().map(|(n, f)| (n, Arc::new(f))).collect();
    let mut set: JoinSet<()> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, (usize, tokio::time::Instant)> = HashMap::new();
    for (i, (_, make)) in tasks.iter().enumerate() {
        let id = set.spawn(make()).id();
        running.insert(id, (i, tokio::time::Instant::now()));
    }
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (id, outcome) = tokio::select! {
            () = &mut shutdown => return,
            joined = set.join_next_with_id() => match joined {
                Some(Ok((id, ()))) => (id, None),
                Some(Err(err)) => (err.id(), Some(err)),
                None => return,
            },
        };
        let Some((i, started)) = running.remove(&id) else {
            continue;
        };
        let (name, make) = &tasks[i];
        let Some(err) = outcome else {
            // Only a controller with nothing to do returns (the root CA publisher without a CA).
            info!(controller = name, "controller ended");
            continue;
        };
        if started.elapsed() >= RESTART_RESET {
            backoff.forget(name);
        }
        let delay = backoff.failed(name);
        if err.is_panic() {
            let message = panic_message(err.into_panic());
            error!(controller = name, panic = %message, ?delay, "controller panicked; restarting");
        } else {
            warn!(controller = name, %err, ?delay, "controller cancelled; restarting");
        }
        let make = make.clone();
        let id = set
            .spawn(async move {
                tokio::time::sleep(delay).await;
                make().await;
            })
            .id();
        running.insert(id, (i, tokio::time::Instant::now()));
    }
}

/// The message a panic was raised with.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or_else(|| "(no message)".to_owned(), |s| (*s).to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(runs: &Arc<AtomicUsize>, panic_first: bool) -> TaskFactory {
        let runs = runs.clone();
        Box::new(move || {
            let runs = runs.clone();
            Box::pin(async move {
                let n = runs.fetch_add(1, Ordering::SeqCst);
                if panic_first && n == 0 {
                    panic!("injected failure");
                }
                futures::future::pending::<()>().await;
            })
        })
    }

    #[tokio::test]
    async fn a_panicking_controller_is_restarted_and_the_others_keep_running() {
        let flaky = Arc::new(AtomicUsize::new(0));
        let steady = Arc::new(AtomicUsize::new(0));
        let ticks = Arc::new(AtomicUsize::new(0));
        let ticking = {
            let ticks = ticks.clone();
            let make: TaskFactory = Box::new(move || {
                let ticks = ticks.clone();
                Box::pin(async move {
                    loop {
                        ticks.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                })
            });
            make
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(supervise(
            vec![
                ("flaky", counting(&flaky, true)),
                ("steady", counting(&steady, false)),
                ("ticking", ticking),
            ],
            Backoff::new(Duration::from_millis(10), Duration::from_millis(100)),
            async move {
                let _ = stop_rx.await;
            },
        ));
        for _ in 0..500 {
            if flaky.load(Ordering::SeqCst) >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            flaky.load(Ordering::SeqCst),
            2,
            "restarted once after its panic"
        );
        assert_eq!(
            steady.load(Ordering::SeqCst),
            1,
            "the others were not restarted"
        );
        let before = ticks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            ticks.load(Ordering::SeqCst) > before,
            "the others kept working"
        );
        let _ = stop_tx.send(());
        run.await.unwrap();
    }

    #[test]
    fn panic_messages_are_read_from_either_payload() {
        assert_eq!(panic_message(Box::new("static")), "static");
        assert_eq!(panic_message(Box::new(String::from("owned"))), "owned");
        assert_eq!(panic_message(Box::new(3)), "(no message)");
    }
}
