//! Hollow nodes: simulated nodes for scale tests, as kubemark and KWOK do. Each registers a
//! `Node` that reports `Ready` with some capacity, renews its `coordination.k8s.io` Lease in
//! `kube-node-lease` every heartbeat, reports the pods bound to it as `Running` and `Ready`
//! (with a made-up pod IP) without running any container, and finishes the deletion of its pods
//! (a delete with grace period 0, as a kubelet does once the containers are gone).
//!
//! It talks to the API server like any client, through kube-rs. It is a test tool: a real
//! node's code path never goes through it.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

/// The field manager of everything the simulator writes.
pub const FIELD_MANAGER: &str = "edgesite-sim";

/// The kubelet version hollow nodes report.
pub const KUBELET_VERSION: &str = "v1.32.4-hollow";

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
}

impl SimConfig {
    /// `nodes` hollow nodes named `{prefix}-{i}`, heartbeating every 10 s.
    pub fn new(nodes: usize, prefix: impl Into<String>) -> Self {
        Self {
            nodes,
            prefix: prefix.into(),
            heartbeat: Duration::from_secs(10),
            concurrency: 32,
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
    for (i, name) in names.iter().enumerate() {
        register(&client, name, i)
            .await
            .map_err(|source| SimError::Register {
                node: name.clone(),
                source,
            })?;
    }
    info!(nodes = names.len(), prefix = %config.prefix, "hollow nodes registered");
    let ours: Arc<HashSet<String>> = Arc::new(names.iter().cloned().collect());
    let heartbeats = heartbeat_loop(client.clone(), names, config.heartbeat);
    let pods = pod_loop(client, ours, config.concurrency.max(1));
    tokio::select! {
        () = shutdown => info!("hollow nodes stopping"),
        () = heartbeats => warn!("the heartbeat loop ended"),
        () = pods => warn!("the pod loop ended"),
    }
    Ok(())
}

/// Unix time now, in seconds and microseconds.
fn now() -> (i64, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_micros())
}

/// `metav1.Time` (seconds) now.
fn time_now() -> String {
    format_rfc3339(now().0, None)
}

/// `metav1.MicroTime` now.
fn micro_time_now() -> String {
    let (secs, micros) = now();
    format_rfc3339(secs, Some(micros))
}

fn format_rfc3339(secs: i64, micros: Option<u32>) -> String {
    let mut s = edgesite_api::time::format_rfc3339(secs);
    if let Some(u) = micros {
        s.pop(); // the `Z`
        s.push_str(&format!(".{u:06}Z"));
    }
    s
}

/// The node's made-up InternalIP and the first three octets of its pod addresses.
fn node_addresses(index: usize) -> (String, String) {
    let (hi, lo) = (index / 250, index % 250);
    (
        format!("10.{}.{}.1", 100 + hi % 100, lo),
        format!("10.{}.{}", 200 + hi % 50, lo),
    )
}

/// Creates the node (or takes over an existing one of the same name), marks it Ready and
/// creates its Lease.
async fn register(client: &Client, name: &str, index: usize) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let (ip, pod_net) = node_addresses(index);
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "edgesite.io/hollow": "true",
            },
            "annotations": {"edgesite.io/pod-network": format!("{pod_net}.0/24")},
        },
        "spec": {"podCIDR": format!("{pod_net}.0/24")},
    }))
    .map_err(kube::Error::SerdeError)?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e),
    }
    let now = time_now();
    let capacity =
        json!({"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    let status = json!({"status": {
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": [
            {"type": "InternalIP", "address": ip},
            {"type": "Hostname", "address": name},
        ],
        "conditions": [
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status", &now),
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available", &now),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure", &now),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available", &now),
        ],
        "nodeInfo": {
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
        },
    }});
    nodes
        .patch_status(name, &patch_params(), &Patch::Merge(&status))
        .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": 40,
            "renewTime": micro_time_now(),
        },
    }))
    .map_err(kube::Error::SerdeError)?;
    match leases.create(&PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => renew(&leases, name).await,
        Err(e) => Err(e),
    }
}

fn condition(kind: &str, status: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    })
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

async fn renew(leases: &Api<Lease>, name: &str) -> Result<(), kube::Error> {
    let patch = json!({"spec": {"holderIdentity": name, "renewTime": micro_time_now()}});
    leases
        .patch(name, &patch_params(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// Renews every node's Lease each `every`, spread over the interval.
async fn heartbeat_loop(client: Client, names: Vec<String>, every: Duration) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let gap = every / u32::try_from(names.len().max(1)).unwrap_or(u32::MAX);
    // A fixed cadence: the time a renewal takes does not stretch the round.
    let mut tick = tokio::time::interval(gap.max(Duration::from_micros(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        for name in &names {
            tick.tick().await;
            if let Err(err) = renew(&leases, name).await {
                debug!(node = %name, %err, "lease renewal failed; retried next round");
            }
        }
    }
}

/// Follows the pods bound to the hollow nodes: reports new ones running and ready, and
/// finishes the deletion of the ones being deleted.
async fn pod_loop(client: Client, ours: Arc<HashSet<String>>, concurrency: usize) {
    let pods: Api<Pod> = Api::all(client);
    let ips = Arc::new(AtomicU32::new(0));
    let config = watcher::Config::default().fields("spec.nodeName!=");
    let stream = watcher(pods.clone(), config)
        .default_backoff()
        .applied_objects();
    let served = stream.try_for_each_concurrent(concurrency, |pod| {
        let (pods, ours, ips) = (pods.clone(), ours.clone(), ips.clone());
        async move {
            if let Err(err) = serve_pod(&pods, &ours, &ips, &pod).await {
                debug!(pod = %pod.name_any(), %err, "pod update failed; retried on its next event");
            }
            Ok(())
        }
    });
    if let Err(err) = served.await {
        warn!(%err, "the pod watch ended");
    }
}

async fn serve_pod(
    pods: &Api<Pod>,
    ours: &HashSet<String>,
    ips: &AtomicU32,
    pod: &Pod,
) -> Result<(), kube::Error> {
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
        return Ok(());
    };
    if !ours.contains(node) {
        return Ok(());
    }
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(pods.clone().into_client(), &ns);
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
    let status = pod.status.as_ref();
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if running && ready {
        return Ok(());
    }
    let index: usize = node
        .rsplit('-')
        .next()
        .and_then(|i| i.parse().ok())
        .unwrap_or(0);
    let (host_ip, pod_net) = node_addresses(index);
    let pod_ip = status.and_then(|s| s.pod_ip.clone()).unwrap_or_else(|| {
        format!(
            "{pod_net}.{}",
            2 + ips.fetch_add(1, Ordering::Relaxed) % 250
        )
    });
    let now = time_now();
    let containers: Vec<Value> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let image = c.image.clone().unwrap_or_default();
            json!({
                "name": c.name,
                "image": image,
                "imageID": format!("hollow://{image}"),
                "containerID": format!("hollow://{ns}/{name}/{}", c.name),
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            })
        })
        .collect();
    let cond = |kind: &str| json!({"type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    let patch = json!({"status": {
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
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_addresses() {
        assert_eq!(format_rfc3339(0, None), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_rfc3339(1_709_251_199, Some(42)),
            "2024-02-29T23:59:59.000042Z"
        );
        assert_eq!(node_addresses(0), ("10.100.0.1".into(), "10.200.0".into()));
        assert_eq!(
            node_addresses(251),
            ("10.101.1.1".into(), "10.201.1".into())
        );
        let c = SimConfig::new(3, "hollow");
        assert_eq!(c.node_name(2), "hollow-2");
    }
}
