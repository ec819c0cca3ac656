//! Hollow nodes: simulated nodes for scale tests, as kubemark and KWOK do. Each registers a
//! `Node` that reports `Ready` with some capacity, renews its `coordination.k8s.io` Lease in
//! `kube-node-lease` every heartbeat, reports the pods bound to it as `Running` and `Ready`
//! (with a made-up pod IP) without running any container, and finishes the deletion of its pods
//! (a delete with grace period 0, as a kubelet does once the containers are gone).
//!
//! It talks to the API server like any client, through kube-rs. It is a test tool: a real
//! node's code path never goes through it.
//!
//! # Pods that finish
//!
//! A pod with `restartPolicy: Always` (the default) runs until it is deleted. A pod with
//! `restartPolicy: Never` or `OnFailure` runs for a simulated time and then its containers
//! "exit", steered by two annotations on the pod (read when it starts):
//!
//! - [`RUN_SECONDS_ANNOTATION`] (`sim.edgesite.io/run-seconds`, default `1`, fractions
//!   allowed): how long the containers run.
//! - [`EXIT_CODE_ANNOTATION`] (`sim.edgesite.io/exit-code`, default `0`): the exit code.
//!
//! Exit code 0 ends the pod `Succeeded` (containers `terminated` with reason `Completed`,
//! conditions `Ready`/`ContainersReady` False with reason `PodCompleted`). A non-zero code N
//! ends a `Never` pod `Failed` (reason `Error`, exit code N). An `OnFailure` pod never ends
//! `Failed`: as a kubelet restarts the container in place, the pod stays `Running`, each
//! container's `restartCount` goes up by one with `lastState.terminated` carrying exit code N,
//! and the next run fails the same way after the same time (no crash-loop back-off is
//! simulated). A pod that is being deleted is not finished, only removed.
#![warn(clippy::unwrap_used, clippy::expect_used)] // product code returns errors; tests may unwrap

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgesite_api::predicates::{is_pod_ready, is_pod_terminal};
use edgesite_clock::{Clock, SystemClock};
use edgesite_node::{Health, NodeFacts, NodeWriter, time_now};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// The field manager of everything the simulator writes.
pub const FIELD_MANAGER: &str = "edgesite-sim";

/// The kubelet version hollow nodes report.
pub const KUBELET_VERSION: &str = "v1.32.4-hollow";

/// Pod annotation: how many seconds (fractions allowed) the containers of a pod with
/// `restartPolicy: Never` or `OnFailure` run before they exit; default 1.
pub const RUN_SECONDS_ANNOTATION: &str = "sim.edgesite.io/run-seconds";

/// Pod annotation: the exit code of the containers of a pod that finishes; default 0.
pub const EXIT_CODE_ANNOTATION: &str = "sim.edgesite.io/exit-code";

/// How long the containers of a finishing pod run without [`RUN_SECONDS_ANNOTATION`].
pub const DEFAULT_RUN: Duration = Duration::from_secs(1);

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How many nodes.
    pub nodes: usize,
    /// Node names are `{prefix}-{i}`.
    pub prefix: String,
    /// How often each node renews its Lease (a kubelet: 10 s).
    pub heartbeat: Duration,
    /// How many pod status updates may be in flight at once.
    pub concurrency: usize,
    /// Where the times the nodes report (heartbeats, lease renewals, container start and
    /// finish) come from. Timers (heartbeat cadence, run lengths) stay on tokio's clock.
    pub clock: Arc<dyn Clock>,
}

impl SimConfig {
    /// `nodes` hollow nodes named `{prefix}-{i}`, heartbeating every 10 s.
    pub fn new(nodes: usize, prefix: impl Into<String>) -> Self {
        Self {
            nodes,
            prefix: prefix.into(),
            heartbeat: Duration::from_secs(10),
            concurrency: 32,
            clock: Arc::new(SystemClock),
        }
    }

    /// The name of node `i`.
    pub fn node_name(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }
}

/// Why the simulator stopped.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A node or its Lease could not be registered.
    #[error("cannot register hollow node {node}: {source}")]
    Register {
        /// The node.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Registers the nodes, then heartbeats and serves their pods until `shutdown` completes.
pub async fn run(
    client: Client,
    config: SimConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SimError> {
    let names: Vec<String> = (0..config.nodes).map(|i| config.node_name(i)).collect();
    let clock = config.clock;
    let writer = NodeWriter::new(&client, FIELD_MANAGER);
    for (i, name) in names.iter().enumerate() {
        writer
            .register(&*clock, &hollow_facts(name, i), &Health::healthy())
            .await
            .map(|_| ())
            .map_err(|source| SimError::Register {
                node: name.clone(),
                source,
            })?;
    }
    info!(nodes = names.len(), prefix = %config.prefix, "hollow nodes registered");
    let ours: Arc<HashSet<String>> = Arc::new(names.iter().cloned().collect());
    let heartbeats = heartbeat_loop(writer.clone(), clock.clone(), names, config.heartbeat);
    let statuses = status_keeper(writer, clock.clone(), ours.clone(), config.prefix);
    let pods = pod_loop(client, clock, ours, config.concurrency.max(1));
    tokio::select! {
        () = shutdown => info!("hollow nodes stopping"),
        () = heartbeats => warn!("the heartbeat loop ended"),
        () = statuses => warn!("the status loop ended"),
        () = pods => warn!("the pod loop ended"),
    }
    Ok(())
}

/// Unix time now on `clock`, in seconds.
fn now(clock: &dyn Clock) -> i64 {
    clock.unix_seconds()
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// The node's made-up InternalIP and the first three octets of its pod addresses.
fn node_addresses(index: usize) -> (String, String) {
    let (hi, lo) = (index / 250, index % 250);
    (
        format!("10.{}.{}.1", 100 + hi % 100, lo),
        format!("10.{}.{}", 200 + hi % 50, lo),
    )
}

/// What hollow node `index` called `name` is.
fn hollow_facts(name: &str, index: usize) -> NodeFacts {
    let (ip, pod_net) = node_addresses(index);
    let capacity: BTreeMap<String, String> = [
        ("cpu", "8"),
        ("memory", "32Gi"),
        ("pods", "110"),
        ("ephemeral-storage", "100Gi"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let labels = [
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("edgesite.io/hollow", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let node_info = json!({
        "machineID": format!("hollow-{index}"),
        "systemUUID": format!("hollow-{index}"),
        "bootID": format!("hollow-{index}"),
        "kernelVersion": "hollow",
        "osImage": "EdgeSite hollow node",
        "containerRuntimeVersion": "hollow://0",
        "kubeletVersion": KUBELET_VERSION,
        "kubeProxyVersion": KUBELET_VERSION,
        "operatingSystem": "linux",
        "architecture": "amd64",
    });
    NodeFacts {
        name: name.to_owned(),
        labels,
        annotations: [(
            "edgesite.io/pod-network".to_owned(),
            format!("{pod_net}.0/24"),
        )]
        .into(),
        pod_cidr: Some(format!("{pod_net}.0/24")),
        addresses: vec![
            ("InternalIP".into(), ip),
            ("Hostname".into(), name.to_owned()),
        ],
        allocatable: capacity.clone(),
        capacity,
        node_info: match node_info {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        },
    }
}

/// Puts the hollow nodes' conditions back as soon as the server changed them (see
/// [`edgesite_node::needs_repost`]).
async fn status_keeper(
    writer: NodeWriter,
    clock: Arc<dyn Clock>,
    ours: Arc<HashSet<String>>,
    prefix: String,
) {
    let config = watcher::Config::default().labels("edgesite.io/hollow=true");
    edgesite_node::keep_status(writer.nodes().clone(), config, |node| {
        let (writer, clock, ours, prefix) = (&writer, &clock, &ours, &prefix);
        async move {
            let name = node.name_any();
            let Some(index) = name
                .strip_prefix(&format!("{prefix}-"))
                .and_then(|i| i.parse::<usize>().ok())
                .filter(|_| ours.contains(&name))
            else {
                return;
            };
            let facts = hollow_facts(&name, index);
            if let Err(err) = writer
                .post_status(&**clock, &facts, &Health::healthy(), Some(&node))
                .await
            {
                debug!(node = %name, %err, "status post failed; retried on the next change");
            }
        }
    })
    .await;
}

/// Renews every node's Lease each `every`, spread over the interval.
async fn heartbeat_loop(
    writer: NodeWriter,
    clock: Arc<dyn Clock>,
    names: Vec<String>,
    every: Duration,
) {
    let gap = every / u32::try_from(names.len().max(1)).unwrap_or(u32::MAX);
    // A fixed cadence: the time a renewal takes does not stretch the round.
    let mut tick = tokio::time::interval(gap.max(Duration::from_micros(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        for name in &names {
            tick.tick().await;
            if let Err(err) = writer.renew(&*clock, name).await {
                debug!(node = %name, %err, "lease renewal failed; retried next round");
            }
        }
    }
}

/// What the pod loop shares between its events and the timers of finishing pods.
#[derive(Debug)]
struct PodServer {
    /// Pods across all namespaces.
    pods: Api<Pod>,
    /// The hollow nodes' names.
    ours: Arc<HashSet<String>>,
    /// Hands out pod addresses.
    ips: AtomicU32,
    /// Uids of the pods whose containers have a pending exit.
    timed: Mutex<HashSet<String>>,
    /// Where pending exits are queued.
    runs: mpsc::UnboundedSender<Run>,
    /// How many exits may be reported at once.
    concurrency: usize,
    /// Where reported times come from.
    clock: Arc<dyn Clock>,
}

/// A pending container exit: the pod `namespace/name` with `uid` finishes at `due`.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Run {
    due: tokio::time::Instant,
    namespace: String,
    name: String,
    uid: String,
}

impl PodServer {
    fn api(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.pods.clone().into_client(), ns)
    }

    /// Queues the exit of `pod`'s containers `after` from now, unless one is queued already.
    fn time(&self, pod: &Pod, after: Duration) {
        let Some(uid) = pod.uid() else { return };
        let fresh = self
            .timed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.clone());
        if fresh {
            let _ = self.runs.send(Run {
                due: tokio::time::Instant::now() + after,
                namespace: pod.namespace().unwrap_or_default(),
                name: pod.name_any(),
                uid,
            });
        }
    }

    fn untime(&self, uid: &str) {
        self.timed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }
}

/// Follows the pods bound to the hollow nodes: reports new ones running and ready, finishes
/// the ones that run to completion, and finishes the deletion of the ones being deleted.
async fn pod_loop(
    client: Client,
    clock: Arc<dyn Clock>,
    ours: Arc<HashSet<String>>,
    concurrency: usize,
) {
    let (runs, queued) = mpsc::unbounded_channel();
    let server = Arc::new(PodServer {
        pods: Api::all(client),
        ours,
        ips: AtomicU32::new(0),
        timed: Mutex::new(HashSet::new()),
        runs,
        concurrency,
        clock,
    });
    let config = watcher::Config::default().fields("spec.nodeName!=");
    let stream = watcher(server.pods.clone(), config)
        .default_backoff()
        .applied_objects();
    let served = stream.try_for_each_concurrent(concurrency, |pod| {
        let server = server.clone();
        async move {
            if let Err(err) = serve_pod(&server, &pod).await {
                debug!(pod = %pod.name_any(), %err, "pod update failed; retried on its next event");
            }
            Ok(())
        }
    });
    tokio::select! {
        res = served => if let Err(err) = res {
            warn!(%err, "the pod watch ended");
        },
        () = exit_loop(server.clone(), queued) => {}
    }
}

/// The restart policy of `pod` runs its containers to completion (`Never`, `OnFailure`).
fn runs_to_completion(pod: &Pod) -> bool {
    matches!(
        pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()),
        Some("Never" | "OnFailure")
    )
}

/// How long `pod`'s containers run ([`RUN_SECONDS_ANNOTATION`]).
fn run_time(pod: &Pod) -> Duration {
    pod.annotations()
        .get(RUN_SECONDS_ANNOTATION)
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .unwrap_or(DEFAULT_RUN)
}

/// The exit code of `pod`'s containers ([`EXIT_CODE_ANNOTATION`]).
fn exit_code(pod: &Pod) -> i32 {
    pod.annotations()
        .get(EXIT_CODE_ANNOTATION)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// When the running containers of `pod` started (Unix seconds), if it says.
fn started_at(pod: &Pod) -> Option<i64> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let running = statuses.first()?.state.as_ref()?.running.as_ref()?;
    Some(running.started_at.as_ref()?.0.as_second())
}

async fn serve_pod(server: &PodServer, pod: &Pod) -> Result<(), kube::Error> {
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
        return Ok(());
    };
    if !server.ours.contains(node) {
        return Ok(());
    }
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let api = server.api(&ns);
    if pod.metadata.deletion_timestamp.is_some() {
        // The containers are "stopped": finish the deletion, as a kubelet does.
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        return match api.delete(&name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e),
        };
    }
    if is_pod_terminal(pod) {
        return Ok(());
    }
    let finite = runs_to_completion(pod);
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    if running && is_pod_ready(pod) {
        if finite {
            // Seen again (e.g. after the simulator restarted): exit when the run is over.
            let elapsed = started_at(pod)
                .map(|t| u64::try_from(now(&*server.clock) - t).unwrap_or(0))
                .unwrap_or(0);
            server.time(
                pod,
                run_time(pod).saturating_sub(Duration::from_secs(elapsed)),
            );
        }
        return Ok(());
    }
    let index: usize = node
        .rsplit('-')
        .next()
        .and_then(|i| i.parse().ok())
        .unwrap_or(0);
    let (host_ip, pod_net) = node_addresses(index);
    let pod_ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_else(|| {
            format!(
                "{pod_net}.{}",
                2 + server.ips.fetch_add(1, Ordering::Relaxed) % 250
            )
        });
    let now = time_now(&*server.clock);
    let containers: Vec<Value> = container_statuses(pod, |_| {
        json!({"ready": true, "started": true, "restartCount": 0,
               "state": {"running": {"startedAt": now}}})
    });
    let cond = |kind: &str| json!({"type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    // The resourceVersion makes a patch from an old event (the pod may have finished since)
    // a conflict instead of bringing a finished pod back to life.
    let patch = json!({"metadata": {"resourceVersion": pod.resource_version()}, "status": {
        "phase": "Running",
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": now,
        "conditions": [
            cond("PodReadyToStartContainers"),
            cond("Initialized"),
            cond("Ready"),
            cond("ContainersReady"),
            cond("PodScheduled"),
        ],
        "containerStatuses": containers,
    }});
    match api
        .patch_status(&name, &patch_params(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            if finite {
                server.time(pod, run_time(pod));
            }
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// One status per container of `pod`: its identity merged with what `state` gives for it.
fn container_statuses(pod: &Pod, state: impl Fn(&str) -> Value) -> Vec<Value> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    pod.spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let image = c.image.clone().unwrap_or_default();
            let mut v = json!({
                "name": c.name,
                "image": image,
                "imageID": format!("hollow://{image}"),
                "containerID": format!("hollow://{ns}/{name}/{}", c.name),
            });
            if let (Value::Object(m), Value::Object(extra)) = (&mut v, state(&c.name)) {
                m.extend(extra);
            }
            v
        })
        .collect()
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Ends the runs of finishing pods as they fall due.
async fn exit_loop(server: Arc<PodServer>, mut queued: mpsc::UnboundedReceiver<Run>) {
    let mut due: BinaryHeap<Reverse<Run>> = BinaryHeap::new();
    loop {
        let next = due.peek().map(|r| r.0.due);
        tokio::select! {
            run = queued.recv() => match run {
                Some(run) => due.push(Reverse(run)),
                None => return,
            },
            () = sleep_until(next) => {
                let now = tokio::time::Instant::now();
                let mut ready = Vec::new();
                while due.peek().is_some_and(|r| r.0.due <= now) {
                    let Some(Reverse(run)) = due.pop() else { break };
                    ready.push(run);
                }
                // Many pods finish together (a Job's parallel pods): report them concurrently.
                let reported: Vec<_> = futures::stream::iter(ready)
                    .map(|run| {
                        let server = server.clone();
                        async move {
                            let res = exit(&server, &run).await;
                            (run, res)
                        }
                    })
                    .buffer_unordered(server.concurrency)
                    .collect()
                    .await;
                for (run, res) in reported {
                    match res {
                        Ok(Some(again)) => due.push(Reverse(Run {
                            due: tokio::time::Instant::now() + again,
                            ..run
                        })),
                        Ok(None) => server.untime(&run.uid),
                        Err(err) => {
                            // Retried shortly: the pod stays "running" until it is reported.
                            debug!(pod = %run.name, %err, "cannot report the containers' exit");
                            due.push(Reverse(Run {
                                due: now + Duration::from_millis(500),
                                ..run
                            }));
                        }
                    }
                }
            }
        }
    }
}

/// Reports the exit of `run`'s containers. Returns when the next run of a restarted
/// (`OnFailure`) pod ends, or `None` once the pod is done with (finished, gone, deleting).
async fn exit(server: &PodServer, run: &Run) -> Result<Option<Duration>, kube::Error> {
    let api = server.api(&run.namespace);
    let Some(pod) = api.get_opt(&run.name).await? else {
        return Ok(None);
    };
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if pod.uid().as_deref() != Some(run.uid.as_str())
        || pod.metadata.deletion_timestamp.is_some()
        || phase != Some("Running")
    {
        return Ok(None);
    }
    let code = exit_code(&pod);
    let on_failure =
        pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) == Some("OnFailure");
    let now = time_now(&*server.clock);
    let started = |c: &str| -> Value {
        pod.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|s| s.name == c))
            .and_then(|s| s.state.as_ref()?.running.as_ref()?.started_at.clone())
            .map(|t| json!(t))
            .unwrap_or_else(|| json!(now))
    };
    let restarts = |c: &str| -> i32 {
        pod.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|s| s.name == c))
            .map_or(0, |s| s.restart_count)
    };
    let reason = if code == 0 { "Completed" } else { "Error" };
    let (patch, again) = if code != 0 && on_failure {
        // The kubelet restarts the container in place; the pod keeps running.
        let containers = container_statuses(&pod, |c| {
            json!({"ready": true, "started": true, "restartCount": restarts(c) + 1,
                "state": {"running": {"startedAt": now}},
                "lastState": {"terminated": {"exitCode": code, "reason": reason,
                    "startedAt": started(c), "finishedAt": now}}})
        });
        (
            json!({"status": {"containerStatuses": containers}}),
            Some(run_time(&pod)),
        )
    } else {
        let containers = container_statuses(&pod, |c| {
            json!({"ready": false, "started": false, "restartCount": restarts(c),
                "state": {"terminated": {"exitCode": code, "reason": reason,
                    "startedAt": started(c), "finishedAt": now}}})
        });
        let cond = |kind: &str, status: &str, reason: Option<&str>| {
            let mut c = json!({"type": kind, "status": status,
                   "lastProbeTime": null, "lastTransitionTime": now});
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            c
        };
        let done = Some("PodCompleted");
        let phase = if code == 0 { "Succeeded" } else { "Failed" };
        (
            json!({"status": {
                "phase": phase,
                "conditions": [
                    cond("PodReadyToStartContainers", "False", None),
                    cond("Initialized", "True", None),
                    cond("Ready", "False", done),
                    cond("ContainersReady", "False", done),
                    cond("PodScheduled", "True", None),
                ],
                "containerStatuses": containers,
            }}),
            None,
        )
    };
    let mut patch = patch;
    patch["metadata"] = json!({"resourceVersion": pod.resource_version()});
    match api
        .patch_status(&run.name, &patch_params(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(again),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_addresses() {
        assert_eq!(node_addresses(0), ("10.100.0.1".into(), "10.200.0".into()));
        assert_eq!(
            node_addresses(251),
            ("10.101.1.1".into(), "10.201.1".into())
        );
        let c = SimConfig::new(3, "hollow");
        assert_eq!(c.node_name(2), "hollow-2");
    }

    #[test]
    fn reported_times_come_from_the_configured_clock() {
        let clock = edgesite_clock::ManualClock::new();
        let secs = now(&clock);
        assert_eq!(now(&clock), secs);
        clock.advance(Duration::from_secs(90));
        assert_eq!(now(&clock), secs + 90);
        assert_eq!(
            time_now(&clock),
            edgesite_api::time::format_rfc3339(secs + 90)
        );
    }
}
