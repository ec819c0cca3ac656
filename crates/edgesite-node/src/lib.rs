//! What a node tells the cluster about itself, as a kubelet does: its `Node` object
//! (registration, then a status with capacity, addresses, node info and the four kubelet
//! conditions) and its `coordination.k8s.io` Lease in `kube-node-lease`, renewed as the
//! heartbeat. The agent (real nodes) and `edgesite-sim` (hollow nodes) both write their nodes
//! through this crate, so a hollow node exercises the same registration and status code.
//!
//! Nothing here decides *what* a node reports: the caller hands [`NodeFacts`] (what the node
//! is) and [`Health`] (how it is); this crate turns them into the API objects and writes them.
#![warn(clippy::unwrap_used, clippy::expect_used)] // product code returns errors; tests may unwrap
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::UNIX_EPOCH;

use edgesite_clock::Clock;
use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};
use tracing::{debug, info};

/// The namespace of the nodes' Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// The `leaseDurationSeconds` of a node's Lease (kubelet's default).
pub const LEASE_DURATION_SECONDS: i32 = 40;

/// What a node is: the parts of its `Node` that do not change with its health.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFacts {
    /// The node's name.
    pub name: String,
    /// Labels set at registration (`kubernetes.io/hostname`, `kubernetes.io/os`, ...).
    pub labels: BTreeMap<String, String>,
    /// Annotations set at registration.
    pub annotations: BTreeMap<String, String>,
    /// A `spec.podCIDR` the node chooses itself (hollow nodes); `None` lets the server
    /// allocate one.
    pub pod_cidr: Option<String>,
    /// `status.addresses`: (type, address) pairs, `InternalIP` first.
    pub addresses: Vec<(String, String)>,
    /// `status.capacity` (cpu, memory, pods, ephemeral-storage) as quantities.
    pub capacity: BTreeMap<String, String>,
    /// `status.allocatable`; the capacity when empty.
    pub allocatable: BTreeMap<String, String>,
    /// `status.nodeInfo` (machineID, kernelVersion, osImage, containerRuntimeVersion,
    /// kubeletVersion, ...), as JSON.
    pub node_info: serde_json::Map<String, Value>,
}

/// How a node is: its Ready condition and the three pressure conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `Ok` when the node is ready, else the reason and message of `Ready=False`.
    pub ready: Result<(), (String, String)>,
    /// Memory is short (`MemoryPressure=True`).
    pub memory_pressure: bool,
    /// The disk is short (`DiskPressure=True`).
    pub disk_pressure: bool,
    /// Process ids are short (`PIDPressure=True`).
    pub pid_pressure: bool,
}

impl Health {
    /// Ready, and no pressure.
    pub fn healthy() -> Self {
        Self {
            ready: Ok(()),
            memory_pressure: false,
            disk_pressure: false,
            pid_pressure: false,
        }
    }
}

/// `metav1.Time` (seconds) now on `clock`.
pub fn time_now(clock: &dyn Clock) -> String {
    edgesite_api::time::format_rfc3339(clock.unix_seconds())
}

/// `metav1.MicroTime` now on `clock`.
pub fn micro_time_now(clock: &dyn Clock) -> String {
    let d = clock.now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut s = edgesite_api::time::format_rfc3339(d.as_secs() as i64);
    s.pop(); // the `Z`
    s.push_str(&format!(".{:06}Z", d.subsec_micros()));
    s
}

/// The four kubelet conditions for `health` at `now`. A condition whose status is the same
/// as in `previous` keeps its `lastTransitionTime`, as upstream.
pub fn conditions(health: &Health, now: &str, previous: Option<&Node>) -> Vec<Value> {
    // (type, on, reason and message when on, when off), kubelet's words.
    let pressure = |kind: &str, on: bool, yes: (&str, &str), no: (&str, &str)| {
        let (reason, message) = if on { yes } else { no };
        let status = if on { "True" } else { "False" };
        (
            kind.to_owned(),
            status,
            reason.to_owned(),
            message.to_owned(),
        )
    };
    let ready = match &health.ready {
        Ok(()) => (
            "Ready".to_owned(),
            "True",
            "KubeletReady".to_owned(),
            "kubelet is posting ready status".to_owned(),
        ),
        Err((reason, message)) => ("Ready".to_owned(), "False", reason.clone(), message.clone()),
    };
    let all = [
        ready,
        pressure(
            "MemoryPressure",
            health.memory_pressure,
            (
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            ),
            (
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
        ),
        pressure(
            "DiskPressure",
            health.disk_pressure,
            ("KubeletHasDiskPressure", "kubelet has disk pressure"),
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ),
        pressure(
            "PIDPressure",
            health.pid_pressure,
            (
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            ),
            (
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
        ),
    ];
    all.into_iter()
        .map(|(kind, status, reason, message)| {
            let transition = previous
                .and_then(|n| edgesite_api::predicates::node_condition(n, &kind))
                .filter(|c| c.status == status)
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| edgesite_api::time::format_rfc3339(t.0.as_second()))
                .unwrap_or_else(|| now.to_owned());
            json!({
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": transition,
            })
        })
        .collect()
}

/// The `status` of the node `facts` describes, healthy as `health` says, at `now`.
pub fn status(facts: &NodeFacts, health: &Health, now: &str, previous: Option<&Node>) -> Value {
    let allocatable = if facts.allocatable.is_empty() {
        &facts.capacity
    } else {
        &facts.allocatable
    };
    let addresses: Vec<Value> = facts
        .addresses
        .iter()
        .map(|(kind, address)| json!({"type": kind, "address": address}))
        .collect();
    json!({
        "capacity": facts.capacity,
        "allocatable": allocatable,
        "addresses": addresses,
        "conditions": conditions(health, now, previous),
        "nodeInfo": facts.node_info,
    })
}

/// Writes a node's Node and Lease for the field manager it was made with.
#[derive(Debug, Clone)]
pub struct NodeWriter {
    nodes: Api<Node>,
    leases: Api<Lease>,
    params: PatchParams,
}

impl NodeWriter {
    /// A writer through `client` whose writes are owned by `field_manager`.
    pub fn new(client: &Client, field_manager: &str) -> Self {
        Self {
            nodes: Api::all(client.clone()),
            leases: Api::namespaced(client.clone(), LEASE_NAMESPACE),
            params: PatchParams {
                field_manager: Some(field_manager.to_owned()),
                ..PatchParams::default()
            },
        }
    }

    /// The Nodes API the writer uses.
    pub fn nodes(&self) -> &Api<Node> {
        &self.nodes
    }

    /// Creates the node (or takes over an existing one of the same name), posts its status
    /// and creates (or renews) its Lease, owned by the Node so that it goes with it. Returns
    /// the Node as the server has it after the status.
    pub async fn register(
        &self,
        clock: &dyn Clock,
        facts: &NodeFacts,
        health: &Health,
    ) -> Result<Node, kube::Error> {
        let mut spec = serde_json::Map::new();
        if let Some(cidr) = &facts.pod_cidr {
            spec.insert("podCIDR".into(), json!(cidr));
            spec.insert("podCIDRs".into(), json!([cidr]));
        }
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": facts.name,
                "labels": facts.labels,
                "annotations": facts.annotations,
            },
            "spec": spec,
        }))
        .map_err(kube::Error::SerdeError)?;
        let existing = match self.nodes.create(&PostParams::default(), &node).await {
            Ok(created) => created,
            Err(kube::Error::Api(e)) if e.code == 409 => self.nodes.get(&facts.name).await?,
            Err(e) => return Err(e),
        };
        let node = self
            .post_status(clock, facts, health, Some(&existing))
            .await?;
        let lease: Lease = serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": facts.name,
                "ownerReferences": [{
                    "apiVersion": "v1",
                    "kind": "Node",
                    "name": facts.name,
                    "uid": node.uid().unwrap_or_default(),
                }],
            },
            "spec": {
                "holderIdentity": facts.name,
                "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                "renewTime": micro_time_now(clock),
            },
        }))
        .map_err(kube::Error::SerdeError)?;
        match self.leases.create(&PostParams::default(), &lease).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => self.renew(clock, &facts.name).await?,
            Err(e) => return Err(e),
        }
        Ok(node)
    }

    /// Posts the node's status (a merge patch of the status subresource); `previous` keeps
    /// the conditions' transition times.
    pub async fn post_status(
        &self,
        clock: &dyn Clock,
        facts: &NodeFacts,
        health: &Health,
        previous: Option<&Node>,
    ) -> Result<Node, kube::Error> {
        let now = time_now(clock);
        let body = json!({"status": status(facts, health, &now, previous)});
        self.nodes
            .patch_status(&facts.name, &self.params, &Patch::Merge(&body))
            .await
    }

    /// Renews the Lease of node `name`: the heartbeat.
    pub async fn renew(&self, clock: &dyn Clock, name: &str) -> Result<(), kube::Error> {
        let patch = json!({"spec": {"holderIdentity": name, "renewTime": micro_time_now(clock)}});
        self.leases
            .patch(name, &self.params, &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }
}

/// Whether `node`'s Ready condition is the server's doing rather than the node's own report:
/// `Unknown` or absent (after a partition the node lifecycle controller marks a silent node
/// `Unknown`, and a kubelet heard again re-posts its status at once; the Lease alone does not
/// bring `Ready` back). `True` and `False` are what a node reports itself.
pub fn needs_repost(node: &Node) -> bool {
    !matches!(
        edgesite_api::predicates::node_ready_status(node),
        Some("True" | "False")
    )
}

/// Watches the nodes `config` selects and calls `repost` with each one whose Ready the
/// server changed ([`needs_repost`]), until the watch ends.
pub async fn keep_status<F, Fut>(nodes: Api<Node>, config: watcher::Config, mut repost: F)
where
    F: FnMut(Node) -> Fut,
    Fut: Future<Output = ()>,
{
    let events = watcher(nodes, config).default_backoff().applied_objects();
    futures::pin_mut!(events);
    while let Some(ev) = events.next().await {
        match ev {
            Ok(node) if needs_repost(&node) => {
                info!(node = %node.name_any(), "the server marked the node Unknown; posting status again");
                repost(node).await;
            }
            Ok(_) => {}
            Err(err) => debug!(%err, "node watch failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_with(conditions: Value) -> Node {
        serde_json::from_value(
            json!({"metadata": {"name": "n"}, "status": {"conditions": conditions}}),
        )
        .unwrap()
    }

    #[test]
    fn conditions_read_as_kubelets_and_keep_transition_times_of_unchanged_ones() {
        let now = "2026-12-07T10:00:00Z";
        let before = node_with(json!([
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-01T00:00:00Z"},
            {"type": "MemoryPressure", "status": "False", "lastTransitionTime": "2026-12-02T00:00:00Z"},
        ]));
        let mut health = Health::healthy();
        health.memory_pressure = true;
        let conds = conditions(&health, now, Some(&before));
        let by = |t: &str| conds.iter().find(|c| c["type"] == t).unwrap().clone();
        assert_eq!(by("Ready")["lastTransitionTime"], "2026-12-01T00:00:00Z");
        assert_eq!(by("Ready")["reason"], "KubeletReady");
        assert_eq!(by("MemoryPressure")["status"], "True");
        assert_eq!(by("MemoryPressure")["lastTransitionTime"], now);
        assert_eq!(
            by("MemoryPressure")["reason"],
            "KubeletHasInsufficientMemory"
        );
        assert_eq!(
            by("MemoryPressure")["message"],
            "kubelet has insufficient memory available"
        );
        assert_eq!(
            by("DiskPressure")["message"],
            "kubelet has no disk pressure"
        );
        assert_eq!(
            by("PIDPressure")["message"],
            "kubelet has sufficient PID available"
        );
        assert_eq!(by("PIDPressure")["reason"], "KubeletHasSufficientPID");
        assert!(conds.iter().all(|c| c["lastHeartbeatTime"] == now));

        health.ready = Err((
            "ContainerRuntimeDown".into(),
            "containerd is not answering".into(),
        ));
        let conds = conditions(&health, now, Some(&before));
        assert_eq!(conds[0]["status"], "False");
        assert_eq!(conds[0]["reason"], "ContainerRuntimeDown");
        assert_eq!(conds[0]["lastTransitionTime"], now);
    }

    #[test]
    fn only_unknown_or_missing_ready_is_reposted() {
        let with = |s: &str| node_with(json!([{"type": "Ready", "status": s}]));
        assert!(needs_repost(&with("Unknown")));
        assert!(needs_repost(&node_with(json!([]))));
        assert!(!needs_repost(&with("True")));
        assert!(!needs_repost(&with("False")));
    }

    #[test]
    fn micro_time_has_six_digits() {
        let clock = edgesite_clock::clock::ManualClock::new();
        let t = micro_time_now(&clock);
        assert!(t.ends_with('Z'));
        let frac = t.rsplit('.').next().unwrap();
        assert_eq!(frac.len(), 7, "{t}");
    }
}
