//! The node lifecycle controller (upstream's Lease-based node-lifecycle controller, with the
//! taint-based eviction folded in), under EdgeSite's edge policy.
//!
//! A node's health is judged on *this* server's clock: the controller notes when it last saw
//! the node's Lease in `kube-node-lease` renewed, or the `Ready` condition's heartbeat change,
//! and never compares the node's own timestamps with its clock (edge clocks drift). After
//! [`Config::node_monitor_grace_period`] without a heartbeat the node's conditions become
//! `Unknown`; the `Ready` condition decides the `node.kubernetes.io/unreachable` /
//! `not-ready` taints (`NoSchedule` and `NoExecute`), and the pods on an `Unknown` node are
//! marked not ready so Services stop sending them traffic.
//!
//! Edge policy: a node that stops heartbeating at the edge is usually cut off, not dead, so its
//! pods are not evicted (and hence not recreated elsewhere) unless the node's autonomy runs
//! out — [`Config::node_autonomy`], overridden per node by [`AUTONOMY_ANNOTATION`]. The rules
//! are in [`eviction_delay`]; `docs/edge-partitions.md` explains them to users.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgesite_api::predicates::{
    TolerationTime, node_condition, node_ready_status, toleration_time,
};
use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::{Config, Error};

/// Node annotation that overrides the cluster's autonomy for one node: a duration such as
/// `10m` or `1h30m`, or `forever`.
pub const AUTONOMY_ANNOTATION: &str = "edgesite.io/autonomy-duration";
/// The taint of a node whose kubelet stopped reporting (`Ready` is `Unknown`).
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a node whose kubelet reports it not ready (`Ready` is `False`).
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The `NoSchedule` taints of a node whose kubelet reports a pressure condition `True`
/// (upstream's TaintNodesByCondition), by condition.
pub const PRESSURE_TAINTS: [(&str, &str); 3] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
];
/// Where kubelets renew their heartbeat Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The conditions a kubelet owns and this controller turns `Unknown` when it goes silent.
const KUBELET_CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];
/// The event source, as upstream's controller reports itself.
const COMPONENT: &str = "node-controller";
/// The event source of evictions (upstream split taint eviction into its own controller).
const EVICTION_COMPONENT: &str = "taint-eviction-controller";
const FIELD_MANAGER: &str = "edgesite-node-lifecycle";

/// How long an unreachable or not-ready node keeps its pods before they are evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Autonomy {
    /// Never evict: the pods wait for the node to come back (the edge default).
    #[default]
    Forever,
    /// Evict once the node has been unreachable or not ready this long.
    For(Duration),
}

impl FromStr for Autonomy {
    type Err = ParseDurationError;

    /// `forever`, or a Go-style duration (`90s`, `10m`, `1h30m`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("forever") {
            Ok(Self::Forever)
        } else {
            parse_duration(s).map(Self::For)
        }
    }
}

impl fmt::Display for Autonomy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Forever => f.write_str("forever"),
            Self::For(d) => write!(f, "{}", format_duration(*d)),
        }
    }
}

/// A duration string that is not of Go's `time.ParseDuration` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {0:?}: expected a number with a unit (ms, s, m, h), e.g. 40s, 10m or 1h30m"
)]
pub struct ParseDurationError(pub String);

/// Parses a Go-style duration (`kube-controller-manager` flags use them): one or more
/// `<number><unit>` parts with units `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`, fractions allowed
/// (`1.5h`); a bare `0` is zero. Negative durations are refused.
pub fn parse_duration(s: &str) -> Result<Duration, ParseDurationError> {
    let err = || ParseDurationError(s.to_owned());
    let text = s.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(err());
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let number: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    Duration::try_from_secs_f64(total).map_err(|_| err())
}

/// Formats a duration the way [`parse_duration`] reads it back (`1h30m`, `40s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    if d.subsec_nanos() != 0 && d.as_secs() == 0 {
        return format!("{}ms", d.as_millis());
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || d.subsec_millis() > 0 {
        if d.subsec_millis() > 0 {
            out.push_str(&format!("{s}.{:03}s", d.subsec_millis()));
        } else {
            out.push_str(&format!("{s}s"));
        }
    }
    out
}

/// The autonomy that applies to `node`: its [`AUTONOMY_ANNOTATION`], else the cluster's.
/// An annotation that does not parse is ignored (with a warning) in favour of the cluster's.
pub fn node_autonomy(node: &Node, cluster: Autonomy) -> Autonomy {
    let Some(value) = node.annotations().get(AUTONOMY_ANNOTATION) else {
        return cluster;
    };
    match value.parse() {
        Ok(a) => a,
        Err(err) => {
            warn!(node = %node.name_any(), %err, "ignoring the {AUTONOMY_ANNOTATION} annotation");
            cluster
        }
    }
}

/// How long after `taint` was added the pod may stay on its node; `None` means for ever.
///
/// The rule: with autonomy `forever` nothing is evicted. Otherwise a pod is evicted once the
/// node has carried the `NoExecute` taint for its autonomy *and* for as long as the pod itself
/// tolerates it: a matching toleration without `tolerationSeconds` keeps it for ever (so
/// DaemonSet pods stay), a shorter `tolerationSeconds` does not cut the autonomy short, a
/// longer one extends it (as upstream honours it). A pod owned by a DaemonSet is never evicted
/// whatever its tolerations say, and neither is a static (mirror) pod.
pub fn eviction_delay(pod: &Pod, taint: &Taint, autonomy: Autonomy) -> Option<Duration> {
    let Autonomy::For(autonomy) = autonomy else {
        return None;
    };
    let daemon = pod
        .owner_references()
        .iter()
        .any(|o| o.kind == "DaemonSet" && o.controller == Some(true));
    let mirror = pod
        .annotations()
        .contains_key("kubernetes.io/config.mirror");
    if daemon || mirror {
        return None;
    }
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    match toleration_time(tolerations, taint) {
        TolerationTime::Forever => None,
        TolerationTime::Seconds(secs) => Some(autonomy.max(Duration::from_secs(secs))),
        TolerationTime::None => Some(autonomy),
    }
}

/// What the controller remembers about a node's heartbeats.
#[derive(Debug, Clone)]
struct Health {
    /// When (on our clock) a heartbeat was last seen.
    probe: SystemTime,
    /// The Lease's last seen `renewTime`.
    lease_renew: Option<String>,
    /// The `Ready` condition's last seen `lastHeartbeatTime`.
    heartbeat: Option<Time>,
}

/// The controller's state: the nodes as last seen and their heartbeats.
struct NodeLifecycle {
    client: Client,
    config: Arc<Config>,
    nodes: HashMap<String, Node>,
    health: HashMap<String, Health>,
    /// Nodes seen during a watch restart, to drop the ones that disappeared meanwhile.
    relisted: Option<HashSet<String>>,
}

/// Runs the node lifecycle controller until the returned future is dropped.
pub async fn run(client: Client, config: Arc<Config>, inf: &crate::informers::Informers) {
    let leases = watcher(
        Api::<Lease>::namespaced(client.clone(), NODE_LEASE_NAMESPACE),
        watcher::Config::default(),
    )
    .default_backoff();
    let nodes = inf.nodes.events();
    let mut tick = tokio::time::interval(config.node_monitor_period.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ctl = NodeLifecycle {
        client,
        config,
        nodes: HashMap::new(),
        health: HashMap::new(),
        relisted: None,
    };
    futures::pin_mut!(leases, nodes);
    loop {
        tokio::select! {
            Some(ev) = leases.next() => match ev {
                Ok(ev) => ctl.on_lease(ev).await,
                Err(err) => debug!(%err, "node lease watch"),
            },
            Some(ev) = nodes.next() => ctl.on_node(crate::informers::owned(ev)).await,
            _ = tick.tick() => ctl.monitor().await,
        }
    }
}

impl NodeLifecycle {
    fn now(&self) -> SystemTime {
        self.config.clock.now()
    }

    async fn on_lease(&mut self, ev: watcher::Event<Lease>) {
        let lease = match ev {
            watcher::Event::Apply(l) | watcher::Event::InitApply(l) => l,
            _ => return,
        };
        let name = lease.name_any();
        let renew = lease
            .spec
            .as_ref()
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0.to_string());
        let now = self.now();
        let changed = match self.health.get_mut(&name) {
            Some(h) if h.lease_renew == renew => false,
            Some(h) => {
                h.lease_renew = renew;
                h.probe = now;
                true
            }
            None => {
                self.health.insert(
                    name.clone(),
                    Health {
                        probe: now,
                        lease_renew: renew,
                        heartbeat: None,
                    },
                );
                true
            }
        };
        if changed && self.nodes.contains_key(&name) {
            self.reconcile(&name, false).await;
        }
    }

    async fn on_node(&mut self, ev: watcher::Event<Node>) {
        match ev {
            watcher::Event::Init => self.relisted = Some(HashSet::new()),
            watcher::Event::InitDone => {
                if let Some(seen) = self.relisted.take() {
                    self.nodes.retain(|n, _| seen.contains(n));
                    self.health.retain(|n, _| seen.contains(n));
                }
            }
            watcher::Event::Delete(node) => {
                let name = node.name_any();
                self.nodes.remove(&name);
                self.health.remove(&name);
            }
            watcher::Event::Apply(node) | watcher::Event::InitApply(node) => {
                let name = node.name_any();
                if let Some(seen) = self.relisted.as_mut() {
                    seen.insert(name.clone());
                }
                self.observe(&node);
                self.nodes.insert(name.clone(), node);
                self.reconcile(&name, false).await;
            }
        }
    }

    /// Notes a heartbeat if the node's `Ready` heartbeat time changed since last seen.
    fn observe(&mut self, node: &Node) {
        let heartbeat = node_condition(node, "Ready").and_then(|c| c.last_heartbeat_time.clone());
        let now = self.now();
        match self.health.get_mut(&node.name_any()) {
            Some(h) if h.heartbeat == heartbeat => {}
            Some(h) => {
                h.heartbeat = heartbeat;
                h.probe = now;
            }
            None => {
                self.health.insert(
                    node.name_any(),
                    Health {
                        probe: now,
                        lease_renew: None,
                        heartbeat,
                    },
                );
            }
        }
    }

    /// One pass over every node (each `node_monitor_period`).
    async fn monitor(&mut self) {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            self.reconcile(&name, true).await;
        }
    }

    /// Brings one node's conditions and taints in line with its heartbeats and, with
    /// `pods`, handles the pods of an unhealthy node.
    async fn reconcile(&mut self, name: &str, pods: bool) {
        if let Err(err) = self.try_reconcile(name, pods).await {
            debug!(node = %name, %err, "node lifecycle: retrying on the next pass");
        }
    }

    async fn try_reconcile(&mut self, name: &str, pods: bool) -> Result<(), Error> {
        let now = self.now();
        let Some(health) = self.health.get(name) else {
            return Ok(());
        };
        let silent = now.duration_since(health.probe).unwrap_or_default();
        if silent > self.config.node_monitor_grace_period
            && let Some(node) = self.nodes.get(name)
            && let Some(conditions) = unknown_conditions(node, now)
        {
            let updated = self.patch_conditions(node, conditions).await?;
            warn!(node = %name, silent_for = ?silent, "node stopped posting status: conditions Unknown");
            self.node_event(
                &updated,
                "Normal",
                "NodeNotReady",
                &format!("Node {name} status is now: NodeNotReady"),
            )
            .await;
            self.nodes.insert(name.to_owned(), updated);
        }
        let Some(node) = self.nodes.get(name) else {
            return Ok(());
        };
        if let Some(taints) = wanted_taints(node, now) {
            let updated = self.patch_taints(node, taints).await?;
            info!(node = %name, ready = ?node_ready_status(&updated), "node taints updated");
            self.nodes.insert(name.to_owned(), updated);
        }
        let Some(node) = self.nodes.get(name).cloned() else {
            return Ok(());
        };
        if pods && matches!(node_ready_status(&node), Some("Unknown" | "False")) {
            self.handle_pods(&node, now).await?;
        }
        Ok(())
    }

    async fn patch_conditions(&self, node: &Node, conditions: Vec<Value>) -> Result<Node, Error> {
        let api: Api<Node> = Api::all(self.client.clone());
        let patch = json!({
            "metadata": {"resourceVersion": node.resource_version()},
            "status": {"conditions": conditions},
        });
        Ok(api
            .patch_status(&node.name_any(), &patch_params(), &Patch::Merge(&patch))
            .await?)
    }

    async fn patch_taints(&self, node: &Node, taints: Vec<Taint>) -> Result<Node, Error> {
        let api: Api<Node> = Api::all(self.client.clone());
        let taints = if taints.is_empty() {
            Value::Null
        } else {
            serde_json::to_value(&taints).map_err(|e| Error::Unexpected(e.to_string()))?
        };
        let patch = json!({
            "metadata": {"resourceVersion": node.resource_version()},
            "spec": {"taints": taints},
        });
        Ok(api
            .patch(&node.name_any(), &patch_params(), &Patch::Merge(&patch))
            .await?)
    }

    /// Marks the pods of an `Unknown` node not ready and evicts the ones whose time is up.
    async fn handle_pods(&self, node: &Node, now: SystemTime) -> Result<(), Error> {
        let name = node.name_any();
        let pods: Api<Pod> = Api::all(self.client.clone());
        let list = pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={name}")))
            .await?;
        let unknown = node_ready_status(node) == Some("Unknown");
        let autonomy = node_autonomy(node, self.config.node_autonomy);
        let no_execute = node_taints(node)
            .into_iter()
            .find(|t| t.effect == "NoExecute" && is_managed_taint(&t.key));
        for pod in &list.items {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Some(taint) = &no_execute
                && let Some(delay) = eviction_delay(pod, taint, autonomy)
            {
                let since = taint
                    .time_added
                    .as_ref()
                    .map(|t| SystemTime::from(t.0))
                    .unwrap_or(now);
                if now.duration_since(since).unwrap_or_default() >= delay {
                    if let Err(err) = self.evict(pod, &name, now).await {
                        debug!(pod = %pod.name_any(), %err, "eviction failed; retried on the next pass");
                    }
                    continue;
                }
            }
            if unknown
                && let Some(conditions) = not_ready_conditions(pod, now)
                && let Err(err) = self.mark_not_ready(pod, conditions).await
            {
                debug!(pod = %pod.name_any(), %err, "cannot mark the pod not ready; retried on the next pass");
            }
        }
        Ok(())
    }

    async fn mark_not_ready(&self, pod: &Pod, conditions: Vec<Value>) -> Result<(), Error> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let patch = json!({
            "metadata": {"resourceVersion": pod.resource_version()},
            "status": {"conditions": conditions},
        });
        api.patch_status(&pod.name_any(), &patch_params(), &Patch::Merge(&patch))
            .await?;
        debug!(pod = %pod.name_any(), "pod on an unreachable node marked not ready");
        self.pod_event(
            pod,
            "Warning",
            "NodeNotReady",
            "Node is not ready",
            COMPONENT,
        )
        .await;
        Ok(())
    }

    /// Upstream's taint-manager eviction: a `DisruptionTarget` condition, then an ordinary
    /// delete (the pod's grace period applies; the node finishes it when it comes back).
    async fn evict(&self, pod: &Pod, node: &str, now: SystemTime) -> Result<(), Error> {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let mut conditions: Vec<Value> = pod_conditions(pod)
            .into_iter()
            .filter(|c| c.get("type").and_then(Value::as_str) != Some("DisruptionTarget"))
            .collect();
        conditions.push(json!({
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "DeletionByTaintManager",
            "message": "Taint manager: deleting due to NoExecute taint",
            "lastTransitionTime": rfc3339(now),
        }));
        let patch = json!({"status": {"conditions": conditions}});
        if let Err(err) = api
            .patch_status(&name, &patch_params(), &Patch::Merge(&patch))
            .await
        {
            debug!(pod = %name, %err, "cannot add the DisruptionTarget condition");
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        warn!(pod = %format!("{ns}/{name}"), %node, "autonomy of the node ran out: pod evicted");
        self.pod_event(
            pod,
            "Normal",
            "TaintManagerEviction",
            &format!("Marking for deletion Pod {ns}/{name}"),
            EVICTION_COMPONENT,
        )
        .await;
        Ok(())
    }

    async fn pod_event(&self, pod: &Pod, kind: &str, reason: &str, message: &str, component: &str) {
        let ns = pod.namespace().unwrap_or_default();
        let involved = crate::events::involved(pod);
        self.event(
            &ns,
            &pod.name_any(),
            involved,
            kind,
            reason,
            message,
            component,
        )
        .await;
    }

    async fn node_event(&self, node: &Node, kind: &str, reason: &str, message: &str) {
        let name = node.name_any();
        // Upstream records node events in `default` with the node's name as the uid.
        let involved = json!({"apiVersion": "v1", "kind": "Node", "name": name, "uid": name});
        self.event("default", &name, involved, kind, reason, message, COMPONENT)
            .await;
    }

    #[allow(clippy::too_many_arguments)]
    async fn event(
        &self,
        ns: &str,
        object: &str,
        involved: Value,
        kind: &str,
        reason: &str,
        message: &str,
        component: &str,
    ) {
        let ev = crate::events::Event {
            namespace: ns,
            object,
            involved,
            type_: kind,
            reason,
            message,
            component,
        };
        crate::events::record(&self.client, self.config.clock.as_ref(), ev).await;
    }
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// `metav1.Time` (whole seconds) for `t`.
fn time(t: SystemTime) -> Time {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn rfc3339(t: SystemTime) -> String {
    time(t).0.to_string()
}

fn node_taints(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
}

fn is_managed_taint(key: &str) -> bool {
    key == TAINT_UNREACHABLE
        || key == TAINT_NOT_READY
        || PRESSURE_TAINTS.iter().any(|(_, k)| *k == key)
}

/// The conditions of a node whose kubelet went silent, if any still needs changing: each
/// kubelet condition `Unknown` (heartbeat times kept, so this write is not a heartbeat).
fn unknown_conditions(node: &Node, now: SystemTime) -> Option<Vec<Value>> {
    let existing: Vec<NodeCondition> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut changed = false;
    let mut out: Vec<Value> = Vec::new();
    for c in &existing {
        let mut c = c.clone();
        if KUBELET_CONDITIONS.contains(&c.type_.as_str()) && c.status != "Unknown" {
            c.status = "Unknown".to_owned();
            c.reason = Some("NodeStatusUnknown".to_owned());
            c.message = Some("Kubelet stopped posting node status.".to_owned());
            c.last_transition_time = Some(time(now));
            changed = true;
        }
        out.push(serde_json::to_value(&c).ok()?);
    }
    for kind in KUBELET_CONDITIONS {
        if !existing.iter().any(|c| c.type_ == kind) {
            let created = node.metadata.creation_timestamp.clone();
            let c = NodeCondition {
                type_: kind.to_owned(),
                status: "Unknown".to_owned(),
                reason: Some("NodeStatusNeverUpdated".to_owned()),
                message: Some("Kubelet never posted node status.".to_owned()),
                last_heartbeat_time: created,
                last_transition_time: Some(time(now)),
            };
            out.push(serde_json::to_value(&c).ok()?);
            changed = true;
        }
    }
    changed.then_some(out)
}

/// The node's taints with the unreachable / not-ready pair matching its `Ready` condition and
/// a `NoSchedule` taint per pressure condition that is `True`, if that differs from what it
/// carries. Other taints are kept as they are, and so is the time a kept taint was added. A
/// node that never reported `Ready` is left alone.
fn wanted_taints(node: &Node, now: SystemTime) -> Option<Vec<Taint>> {
    let current = node_taints(node);
    let ready_key = match node_ready_status(node)? {
        "Unknown" => Some(TAINT_UNREACHABLE),
        "False" => Some(TAINT_NOT_READY),
        _ => None,
    };
    let mut wanted: Vec<(&str, &str)> = ready_key
        .map(|k| vec![(k, "NoSchedule"), (k, "NoExecute")])
        .unwrap_or_default();
    // While the node is unreachable its pressure conditions are Unknown: no pressure taint.
    for (condition, key) in PRESSURE_TAINTS {
        if edgesite_api::predicates::node_condition(node, condition)
            .is_some_and(|c| c.status == "True")
        {
            wanted.push((key, "NoSchedule"));
        }
    }
    let mut out: Vec<Taint> = current
        .iter()
        .filter(|t| {
            !is_managed_taint(&t.key) || wanted.contains(&(t.key.as_str(), t.effect.as_str()))
        })
        .cloned()
        .collect();
    for (key, effect) in wanted {
        if !out.iter().any(|t| t.key == key && t.effect == effect) {
            out.push(Taint {
                key: key.to_owned(),
                effect: effect.to_owned(),
                time_added: Some(time(now)),
                value: None,
            });
        }
    }
    (out != current).then_some(out)
}

fn pod_conditions(pod: &Pod) -> Vec<Value> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|cs| {
            cs.iter()
                .filter_map(|c| serde_json::to_value(c).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The pod's conditions with `Ready` turned `False` (upstream's `MarkPodsNotReady`), if it is
/// not already.
fn not_ready_conditions(pod: &Pod, now: SystemTime) -> Option<Vec<Value>> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let ready = conditions.iter().find(|c| c.type_ == "Ready")?;
    if ready.status == "False" {
        return None;
    }
    let mut out = Vec::with_capacity(conditions.len());
    for c in conditions {
        let mut c = c.clone();
        if c.type_ == "Ready" {
            c.status = "False".to_owned();
            c.last_transition_time = Some(time(now));
        }
        out.push(serde_json::to_value(&c).ok()?);
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests wait and measure in real time
mod tests {
    use super::*;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn unreachable() -> Taint {
        Taint {
            key: TAINT_UNREACHABLE.into(),
            effect: "NoExecute".into(),
            time_added: None,
            value: None,
        }
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("40s"), Ok(Duration::from_secs(40)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "40", "s", "-5s", "5x", "1h 2m", "1..5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!("forever".parse(), Ok(Autonomy::Forever));
        assert_eq!(" 2m".parse(), Ok(Autonomy::For(Duration::from_secs(120))));
        for d in ["40s", "10m", "1h30m", "250ms", "1h0m5s"] {
            let parsed = parse_duration(d).unwrap();
            assert_eq!(parse_duration(&format_duration(parsed)), Ok(parsed), "{d}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(Autonomy::Forever.to_string(), "forever");
    }

    #[test]
    fn eviction_delay_follows_the_documented_rule() {
        let minute = Autonomy::For(Duration::from_secs(60));
        let plain = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
        assert_eq!(
            eviction_delay(&plain, &unreachable(), Autonomy::Forever),
            None
        );
        assert_eq!(
            eviction_delay(&plain, &unreachable(), minute),
            Some(Duration::from_secs(60))
        );
        let tol = |secs: Value| {
            pod(
                json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": [
                    {"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": secs},
                    {"key": "other", "operator": "Exists", "effect": "NoExecute"},
                ]}}),
            )
        };
        // Shorter than the autonomy: the autonomy wins; longer: the toleration wins.
        assert_eq!(
            eviction_delay(&tol(json!(10)), &unreachable(), minute),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            eviction_delay(&tol(json!(300)), &unreachable(), minute),
            Some(Duration::from_secs(300))
        );
        // Tolerated for ever.
        assert_eq!(
            eviction_delay(&tol(Value::Null), &unreachable(), minute),
            None
        );
        let all = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [],
            "tolerations": [{"operator": "Exists"}]}}));
        assert_eq!(eviction_delay(&all, &unreachable(), minute), None);
        // A toleration of the other taint or another effect does not count.
        let other = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [],
            "tolerations": [{"key": TAINT_NOT_READY, "operator": "Exists"},
                            {"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoSchedule"}]}}));
        assert_eq!(
            eviction_delay(&other, &unreachable(), minute),
            Some(Duration::from_secs(60))
        );
        let ds = pod(
            json!({"metadata": {"name": "p", "ownerReferences": [{"apiVersion": "apps/v1",
            "kind": "DaemonSet", "name": "d", "uid": "u", "controller": true}]},
            "spec": {"containers": []}}),
        );
        assert_eq!(eviction_delay(&ds, &unreachable(), minute), None);
    }

    #[test]
    fn taints_follow_the_ready_condition() {
        let now = SystemTime::now();
        let node = |ready: &str, taints: Value| -> Node {
            serde_json::from_value(json!({"metadata": {"name": "n"},
                "spec": {"taints": taints},
                "status": {"conditions": [{"type": "Ready", "status": ready}]}}))
            .unwrap()
        };
        let keys = |ts: Vec<Taint>| -> Vec<(String, String)> {
            ts.into_iter().map(|t| (t.key, t.effect)).collect()
        };
        let t = wanted_taints(
            &node("Unknown", json!([{"key": "a", "effect": "NoSchedule"}])),
            now,
        )
        .unwrap();
        assert_eq!(
            keys(t),
            vec![
                ("a".into(), "NoSchedule".into()),
                (TAINT_UNREACHABLE.into(), "NoSchedule".into()),
                (TAINT_UNREACHABLE.into(), "NoExecute".into())
            ]
        );
        let tainted = json!([{"key": TAINT_UNREACHABLE, "effect": "NoSchedule"},
                             {"key": TAINT_UNREACHABLE, "effect": "NoExecute"}]);
        assert!(wanted_taints(&node("Unknown", tainted.clone()), now).is_none());
        let swapped = wanted_taints(&node("False", tainted.clone()), now).unwrap();
        assert!(swapped.iter().all(|t| t.key == TAINT_NOT_READY));
        assert_eq!(swapped.len(), 2);
        assert_eq!(wanted_taints(&node("True", tainted), now), Some(vec![]));
        assert!(wanted_taints(&node("True", Value::Null), now).is_none());
    }

    #[test]
    fn pressure_conditions_taint_no_schedule_and_untaint_when_gone() {
        let now = SystemTime::now();
        let node = |disk: &str, pid: &str, taints: Value| -> Node {
            serde_json::from_value(json!({"metadata": {"name": "n"},
                "spec": {"taints": taints},
                "status": {"conditions": [
                    {"type": "Ready", "status": "True"},
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "DiskPressure", "status": disk},
                    {"type": "PIDPressure", "status": pid}]}}))
            .unwrap()
        };
        let keys = |ts: Vec<Taint>| -> Vec<(String, String)> {
            ts.into_iter().map(|t| (t.key, t.effect)).collect()
        };
        let disk = (
            "node.kubernetes.io/disk-pressure".to_owned(),
            "NoSchedule".to_owned(),
        );
        let pid = (
            "node.kubernetes.io/pid-pressure".to_owned(),
            "NoSchedule".to_owned(),
        );
        assert_eq!(
            keys(wanted_taints(&node("True", "False", Value::Null), now).unwrap()),
            vec![disk.clone()]
        );
        assert_eq!(
            keys(wanted_taints(&node("True", "True", Value::Null), now).unwrap()),
            vec![disk.clone(), pid]
        );
        let tainted = json!([{"key": "node.kubernetes.io/disk-pressure", "effect": "NoSchedule"},
                             {"key": "mine", "effect": "NoSchedule"}]);
        assert!(wanted_taints(&node("True", "False", tainted.clone()), now).is_none());
        assert_eq!(
            keys(wanted_taints(&node("False", "False", tainted.clone()), now).unwrap()),
            vec![("mine".into(), "NoSchedule".into())]
        );
        // Unknown pressure (a silent node) is no pressure taint.
        assert_eq!(
            keys(wanted_taints(&node("Unknown", "Unknown", tainted), now).unwrap()),
            vec![("mine".into(), "NoSchedule".into())]
        );
    }

    #[test]
    fn silent_node_conditions_become_unknown_keeping_heartbeats() {
        let now = SystemTime::now();
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n"},
            "status": {"conditions": [
                {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:00Z"},
                {"type": "NetworkUnavailable", "status": "False"}]}}))
        .unwrap();
        let cs = unknown_conditions(&node, now).unwrap();
        assert_eq!(cs.len(), 5);
        assert_eq!(cs[0]["status"], "Unknown");
        assert_eq!(cs[0]["reason"], "NodeStatusUnknown");
        assert_eq!(cs[0]["message"], "Kubelet stopped posting node status.");
        assert_eq!(cs[0]["lastHeartbeatTime"], "2026-01-01T00:00:00Z");
        assert_eq!(cs[1]["status"], "False", "not a kubelet condition");
        assert_eq!(cs[2]["reason"], "NodeStatusNeverUpdated");
        let mut updated = node.clone();
        updated.status.as_mut().unwrap().conditions = Some(
            cs.into_iter()
                .map(|c| serde_json::from_value(c).unwrap())
                .collect(),
        );
        assert!(unknown_conditions(&updated, now).is_none());
    }
}
