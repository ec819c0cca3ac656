//! The DaemonSet controller: one pod per eligible node. Eligibility (nodeSelector, required
//! node affinity, taints against the pod's tolerations plus the daemon defaults) is decided
//! here; each pod is then pinned with a required `metadata.name` node-affinity term so the
//! scheduler binds it. Pods on nodes that are gone or no longer eligible are deleted. Updates
//! roll out node by node within `maxUnavailable` / `maxSurge` (or wait for deletions with
//! `OnDelete`); every template is kept as a ControllerRevision (see [`crate::revision`]).
//!
//! Pods are listed from the API server on every pass (the shared pod informer only triggers
//! passes), so a pass always sees the effect of the previous one and no "expectations"
//! bookkeeping is needed. A pass observes (revision, pods, nodes), decides with the pure
//! `plan`, then executes the plan.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use edgesite_api::predicates::{first_untolerated, pod_matches_node};
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, PodTemplateSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ListParams;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt as _};
use serde_json::json;
use tracing::info;

use crate::informers::Informers;
use crate::queue;
use crate::revision::{self, REVISION_HASH_LABEL, RevisionOwner};
use crate::workload::{Requeue, create_pods, delete_pods, phase};
use crate::{Config, Error, workload};

/// The pod label carrying the DaemonSet generation the pod was made from.
pub const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";

/// Events for one DaemonSet closer together than this are handled by one pass: a rollout on
/// many nodes brings a burst of pod events, and every pass lists all of the set's pods.
const DEBOUNCE: Duration = Duration::from_millis(100);

struct Context {
    client: Client,
    config: Arc<Config>,
    nodes: Store<Node>,
}

/// Runs the DaemonSet controller until the returned future is dropped.
pub async fn run(client: Client, config: Arc<Config>, inf: &Informers) {
    let node_changes = node_changes(inf.nodes.events());
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        nodes: inf.nodes.store(),
    });
    let controller = Controller::new(Api::<DaemonSet>::all(client), watcher::Config::default())
        .owns_shared_stream(inf.pods.objects())
        .reconcile_all_on(node_changes)
        .with_config(controller::Config::default().debounce(DEBOUNCE));
    queue::run_controller("daemonset", controller, reconcile, ctx).await;
}

/// Node events that can change where daemons run: a node added or removed, or its labels or
/// taints changed (heartbeats and status updates are dropped).
fn node_changes(
    events: impl futures::Stream<Item = watcher::Event<Arc<Node>>> + Send + 'static,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    let mut seen: HashMap<String, String> = HashMap::new();
    events.filter_map(move |ev| {
        let fire = match ev {
            watcher::Event::Apply(n) => {
                let print = fingerprint(&n);
                seen.insert(n.name_any(), print.clone()) != Some(print)
            }
            watcher::Event::InitApply(n) => {
                seen.insert(n.name_any(), fingerprint(&n));
                false
            }
            watcher::Event::Delete(n) => {
                seen.remove(&n.name_any());
                true
            }
            watcher::Event::InitDone => true,
            watcher::Event::Init => false,
        };
        futures::future::ready(fire.then_some(()))
    })
}

fn fingerprint(n: &Node) -> String {
    let taints = n.spec.as_ref().and_then(|s| s.taints.as_ref());
    json!([n.labels(), taints]).to_string()
}

/// `value` scaled against `total` (percentages round up), or `default` when unset or invalid.
fn scaled(value: Option<&IntOrString>, total: i32, default: i32) -> i32 {
    value
        .and_then(|v| workload::scaled_value(v, total, true).ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// Node eligibility.

/// The tolerations every daemon pod gets, as upstream adds them.
fn default_tolerations(host_network: bool) -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Toleration::default()
    };
    let mut out = vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        out.push(t("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    out
}

/// The template's tolerations plus the daemon defaults it does not already carry.
fn tolerations_with_defaults(spec: &PodSpec) -> Vec<Toleration> {
    let mut out = spec.tolerations.clone().unwrap_or_default();
    for d in default_tolerations(spec.host_network == Some(true)) {
        if !out
            .iter()
            .any(|t| t.key == d.key && t.effect == d.effect && t.operator == d.operator)
        {
            out.push(d);
        }
    }
    out
}

/// Whether a daemon pod should be created on `node` (`.0`) and whether one already there may
/// keep running (`.1`): selector or affinity mismatch rules out both; an untolerated
/// NoSchedule taint only the first; an untolerated NoExecute taint both.
pub(crate) fn should_run(spec: &PodSpec, node: &Node) -> (bool, bool) {
    if !pod_matches_node(spec, node.labels(), &node.name_any()) {
        return (false, false);
    }
    let tolerations = tolerations_with_defaults(spec);
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let untolerated = |effect: &str| first_untolerated(taints, &tolerations, &[effect]).is_some();
    let no_execute = untolerated("NoExecute");
    (!no_execute && !untolerated("NoSchedule"), !no_execute)
}

/// The node a daemon pod is bound or pinned to.
fn pod_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

// ---------------------------------------------------------------------------------------------
// The sync pass.

/// The daemon pod for `node`, made from `template`.
fn new_pod(
    ds: &DaemonSet,
    owner: &RevisionOwner,
    template: &PodTemplateSpec,
    hash: &str,
    node: &str,
) -> Pod {
    let mut pod = workload::pod_from_template(
        template,
        owner.reference.clone(),
        &format!("{}-", owner.name()),
    );
    pod.metadata.namespace = Some(owner.namespace.clone());
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(REVISION_HASH_LABEL.into(), hash.into());
    labels.insert(
        TEMPLATE_GENERATION_LABEL.into(),
        ds.metadata.generation.unwrap_or(0).to_string(),
    );
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    spec.tolerations = Some(tolerations_with_defaults(spec));
    // Replaces any required terms: the controller already checked the node against them.
    let pin = NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
            ..NodeSelectorTerm::default()
        }],
    };
    spec.affinity
        .get_or_insert_with(Affinity::default)
        .node_affinity
        .get_or_insert_with(NodeAffinity::default)
        .required_during_scheduling_ignored_during_execution = Some(pin);
    pod
}

/// What one node looks like to a pass.
#[derive(Debug, Default)]
struct NodePods {
    /// Pods not being deleted and not finished.
    active: Vec<Pod>,
    /// Pods being deleted.
    terminating: usize,
    /// Finished pods (to delete and replace).
    finished: Vec<Pod>,
}

/// What a pass observed of one DaemonSet: the input of [`plan`].
struct Observed<'a> {
    ds: &'a DaemonSet,
    spec: &'a DaemonSetSpec,
    /// The current revision's hash, and the collision count it needed.
    hash: &'a str,
    collisions: i32,
    /// The set's pods.
    pods: Vec<Pod>,
    /// Every node, by name.
    nodes: BTreeMap<String, Arc<Node>>,
    /// The controllers' clock, in Unix seconds.
    now: i64,
}

impl Observed<'_> {
    fn is_new(&self, p: &Pod) -> bool {
        p.labels().get(REVISION_HASH_LABEL).map(String::as_str) == Some(self.hash)
    }

    fn rolling(&self) -> bool {
        self.spec
            .update_strategy
            .as_ref()
            .is_none_or(|s| s.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate")
    }

    fn available(&self, p: &Pod) -> bool {
        workload::is_pod_available(p, self.spec.min_ready_seconds.unwrap_or(0), self.now)
    }
}

/// What a pass does, decided by [`plan`] from what it observed.
#[derive(Debug)]
struct Plan {
    /// Nodes to create a daemon pod on.
    create: Vec<String>,
    /// Pods to delete.
    delete: Vec<Pod>,
    /// The status to write (unless it is already the set's).
    status: DaemonSetStatus,
    /// The revision hashes pods still run, which history pruning keeps.
    live_hashes: BTreeSet<String>,
    /// When to look again (a pod about to become available).
    requeue: Requeue,
}

/// Where daemons must run and which pods must go, before any rolling update.
#[derive(Debug, Default)]
struct Placement {
    create: Vec<String>,
    delete: Vec<Pod>,
    /// Nodes that should run a daemon.
    eligible: BTreeSet<String>,
    misscheduled: i32,
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    ctx.nodes
        .wait_until_ready()
        .await
        .map_err(|e| Error::Unexpected(format!("node cache: {e}")))?;
    let client = &ctx.client;
    let name = ds.name_any();
    let ns = ds.namespace().unwrap_or_default();
    let spec = ds
        .spec
        .as_ref()
        .ok_or_else(|| Error::Unexpected(format!("daemonset {ns}/{name} has no spec")))?;
    let Some(selector) = workload::pod_selector("daemonset", &ns, &name, &spec.selector)? else {
        return Ok(Action::await_change());
    };
    let owner = RevisionOwner::of(ds.as_ref())?;
    let template = &spec.template;

    // Observe: the current template's revision, the set's pods and the nodes.
    let mut revisions = revision::list(client, &owner, &selector).await?;
    let mut collisions = ds
        .status
        .as_ref()
        .and_then(|s| s.collision_count)
        .unwrap_or(0);
    let current =
        revision::ensure(client, &owner, template, &mut revisions, &mut collisions).await?;
    let hash = current
        .labels()
        .get(REVISION_HASH_LABEL)
        .cloned()
        .unwrap_or_else(|| revision::hash_template(template, Some(collisions)));
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels_from(&selector))
        .await?
        .items
        .into_iter()
        .filter(|p| owner.controls(&p.metadata))
        .collect();
    let nodes = ctx
        .nodes
        .state()
        .into_iter()
        .map(|n| (n.name_any(), n))
        .collect();
    let observed = Observed {
        ds: &ds,
        spec,
        hash: &hash,
        collisions,
        pods,
        nodes,
        now: ctx.config.clock.unix_seconds(),
    };

    let plan = plan(&observed);

    // Execute.
    let new_pods: Vec<Pod> = plan
        .create
        .iter()
        .map(|node| new_pod(&ds, &owner, template, &hash, node))
        .collect();
    create_pods(&pods_api, new_pods).await?;
    delete_pods(&pods_api, plan.delete.clone()).await?;
    if !plan.create.is_empty() || !plan.delete.is_empty() {
        info!(daemonset = %format!("{ns}/{name}"), created = plan.create.len(), deleted = plan.delete.len(), "daemon pods synced");
    }
    workload::patch_status_if_changed(client, ds.as_ref(), ds.status.as_ref(), &plan.status)
        .await?;
    let mut live: HashSet<String> = HashSet::new();
    live.insert(current.name_any());
    live.extend(plan.live_hashes.iter().map(|h| format!("{name}-{h}")));
    revision::prune(
        client,
        &ns,
        &revisions,
        &live,
        spec.revision_history_limit.unwrap_or(10),
    )
    .await?;
    Ok(plan.requeue.action())
}

/// Decides a pass: which nodes get a pod, which pods go, and the status, from what the pass
/// observed (no IO).
fn plan(o: &Observed<'_>) -> Plan {
    let (by_node, unplaced) = group_by_node(&o.pods);
    let mut placement = place(o, &by_node);
    // Our pods that name no node cannot be placed: replace them.
    placement.delete.extend(unplaced);
    let desired = count(placement.eligible.len());
    let mut requeue = Requeue::default();
    if o.rolling() && placement.create.is_empty() && placement.delete.is_empty() {
        roll(o, &by_node, &mut placement, desired, &mut requeue);
    }
    let status = status(o, &by_node, &placement, desired);
    let live_hashes = by_node
        .values()
        .flat_map(|e| &e.active)
        .filter_map(|p| p.labels().get(REVISION_HASH_LABEL).cloned())
        .collect();
    Plan {
        create: placement.create,
        delete: placement.delete,
        status,
        live_hashes,
        requeue,
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The set's pods by the node they are on, and those that name no node.
fn group_by_node(pods: &[Pod]) -> (BTreeMap<String, NodePods>, Vec<Pod>) {
    let mut by_node: BTreeMap<String, NodePods> = BTreeMap::new();
    let mut unplaced = Vec::new();
    for p in pods {
        let Some(node) = pod_node(p) else {
            unplaced.push(p.clone());
            continue;
        };
        let e = by_node.entry(node).or_default();
        if p.metadata.deletion_timestamp.is_some() {
            e.terminating += 1;
        } else if matches!(phase(p), "Failed" | "Succeeded") {
            e.finished.push(p.clone());
        } else {
            e.active.push(p.clone());
        }
    }
    (by_node, unplaced)
}

/// Which nodes need a pod and which pods must go: finished pods, pods on nodes that are gone
/// or that no longer keep them, and duplicates.
fn place(o: &Observed<'_>, by_node: &BTreeMap<String, NodePods>) -> Placement {
    let pod_spec = o.spec.template.spec.clone().unwrap_or_default();
    let mut p = Placement::default();
    for (node_name, node) in &o.nodes {
        let (run, keep) = should_run(&pod_spec, node);
        let entry = by_node.get(node_name);
        let has_pods = entry.is_some_and(|e| !e.active.is_empty() || e.terminating > 0);
        if run {
            p.eligible.insert(node_name.clone());
        } else if entry.is_some_and(|e| !e.active.is_empty()) {
            p.misscheduled += 1;
        }
        if run && !has_pods {
            p.create.push(node_name.clone());
        }
        let Some(e) = entry else { continue };
        p.delete.extend(e.finished.iter().cloned());
        if !keep {
            p.delete.extend(e.active.iter().cloned());
        } else if e.active.len() > 1 {
            // Keep one pod: during a surge the old and the new, otherwise the newest
            // revision's oldest.
            let surging = o.rolling()
                && e.active.len() == 2
                && e.active.iter().any(|p| o.is_new(p))
                && e.active.iter().any(|p| !o.is_new(p));
            if !surging {
                let mut active = e.active.clone();
                active.sort_by_key(|p| {
                    (
                        !o.is_new(p),
                        p.metadata.creation_timestamp.clone().map(|t| t.0),
                    )
                });
                p.delete.extend(active.into_iter().skip(1));
            }
        }
    }
    // Pods on nodes that are gone.
    for (node_name, e) in by_node {
        if !o.nodes.contains_key(node_name) {
            p.delete.extend(e.active.iter().cloned());
            p.delete.extend(e.finished.iter().cloned());
        }
    }
    p
}

/// The rolling update over the eligible nodes: old pods replaced within `maxUnavailable`, or
/// new ones surged next to them within `maxSurge`.
fn roll(
    o: &Observed<'_>,
    by_node: &BTreeMap<String, NodePods>,
    p: &mut Placement,
    desired: i32,
    requeue: &mut Requeue,
) {
    let ru = o
        .spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let mut max_surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), desired, 0);
    let mut max_unavailable = scaled(ru.and_then(|r| r.max_unavailable.as_ref()), desired, 1);
    if max_surge <= 0 && max_unavailable <= 0 {
        max_unavailable = 1;
    }
    if max_surge > 0 {
        max_unavailable = 0;
    } else {
        max_surge = 0;
    }
    let min_ready = o.spec.min_ready_seconds.unwrap_or(0);
    let (mut unavailable, mut surging) = (0, 0);
    let mut old_available: Vec<Pod> = Vec::new();
    let mut surge_candidates: Vec<String> = Vec::new();
    for node_name in &p.eligible {
        let Some(e) = by_node.get(node_name).filter(|e| !e.active.is_empty()) else {
            unavailable += 1;
            continue;
        };
        for pod in &e.active {
            requeue.pod(pod, min_ready, o.now);
        }
        let new = e.active.iter().find(|p| o.is_new(p));
        let old = e.active.iter().find(|p| !o.is_new(p));
        match (old, new) {
            (None, Some(n)) if !o.available(n) => unavailable += 1,
            (None, _) => {}
            // An old pod that is not serving anyway goes at once.
            (Some(old), None) if !o.available(old) => {
                unavailable += 1;
                p.delete.push(old.clone());
            }
            (Some(_), None) if max_surge > 0 => surge_candidates.push(node_name.clone()),
            (Some(old), None) => old_available.push(old.clone()),
            (Some(old), Some(n)) => {
                surging += 1;
                if o.available(n) {
                    p.delete.push(old.clone());
                } else if !o.available(old) {
                    unavailable += 1;
                }
            }
        }
    }
    if max_surge > 0 {
        let room = usize::try_from((max_surge - surging).max(0)).unwrap_or(0);
        p.create.extend(surge_candidates.into_iter().take(room));
    } else {
        let room = usize::try_from((max_unavailable - unavailable).max(0)).unwrap_or(0);
        p.delete.extend(old_available.into_iter().take(room));
    }
}

/// The status, from what this pass found (the next pass corrects it after changes).
fn status(
    o: &Observed<'_>,
    by_node: &BTreeMap<String, NodePods>,
    p: &Placement,
    desired: i32,
) -> DaemonSetStatus {
    let (mut scheduled, mut ready, mut available, mut updated) = (0, 0, 0, 0);
    for node_name in &p.eligible {
        let Some(e) = by_node.get(node_name) else {
            continue;
        };
        let Some(first) = e.active.first() else {
            continue;
        };
        scheduled += 1;
        let pick = e.active.iter().find(|p| o.is_new(p)).unwrap_or(first);
        if o.is_new(pick) {
            updated += 1;
        }
        if workload::is_pod_ready(pick) {
            ready += 1;
            if o.available(pick) {
                available += 1;
            }
        }
    }
    DaemonSetStatus {
        collision_count: (o.collisions > 0).then_some(o.collisions),
        conditions: o.ds.status.as_ref().and_then(|s| s.conditions.clone()),
        current_number_scheduled: scheduled,
        desired_number_scheduled: desired,
        number_available: Some(available),
        number_misscheduled: p.misscheduled,
        number_ready: ready,
        number_unavailable: Some(desired - available),
        observed_generation: o.ds.metadata.generation,
        updated_number_scheduled: Some(updated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": labels},
            "spec": {"taints": taints},
        }))
        .unwrap()
    }

    fn spec(v: serde_json::Value) -> PodSpec {
        let mut v = v;
        v["containers"] = json!([{"name": "c"}]);
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn eligibility_follows_selectors_affinity_and_taints() {
        let plain = node(json!({"zone": "a", "gen": "5"}), json!([]));
        assert_eq!(should_run(&spec(json!({})), &plain), (true, true));
        assert_eq!(
            should_run(&spec(json!({"nodeSelector": {"zone": "b"}})), &plain),
            (false, false)
        );
        let affinity = |op: &str, values: serde_json::Value| {
            spec(
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gen", "operator": op, "values": values}]}]}}}}),
            )
        };
        assert!(should_run(&affinity("Gt", json!(["4"])), &plain).0);
        assert!(!should_run(&affinity("Lt", json!(["4"])), &plain).0);
        assert!(should_run(&affinity("In", json!(["5", "6"])), &plain).0);
        assert!(!should_run(&affinity("NotIn", json!(["5"])), &plain).0);

        let no_schedule = node(
            json!({}),
            json!([{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]),
        );
        assert_eq!(should_run(&spec(json!({})), &no_schedule), (false, true));
        let tolerate =
            spec(json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "x"}]}));
        assert_eq!(should_run(&tolerate, &no_schedule), (true, true));
        let no_execute = node(
            json!({}),
            json!([{"key": "dedicated", "effect": "NoExecute"}]),
        );
        assert_eq!(should_run(&spec(json!({})), &no_execute), (false, false));
        // Cordoned and not-ready nodes are tolerated by the daemon defaults.
        let cordoned = node(
            json!({}),
            json!([
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]),
        );
        assert_eq!(should_run(&spec(json!({})), &cordoned), (true, true));
        let net = node(
            json!({}),
            json!([{"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}]),
        );
        assert!(!should_run(&spec(json!({})), &net).0);
        assert!(should_run(&spec(json!({"hostNetwork": true})), &net).0);
    }

    fn ds(strategy: serde_json::Value) -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "d", "namespace": "default", "generation": 2},
            "spec": {
                "selector": {"matchLabels": {"app": "d"}},
                "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c"}]}},
                "updateStrategy": strategy,
            },
        }))
        .unwrap()
    }

    fn named_node(name: &str, taints: serde_json::Value) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"taints": taints}}))
                .unwrap(),
        )
    }

    /// A daemon pod on `node` of revision `hash`; `ready` makes it Ready (and available).
    fn daemon(name: &str, node: &str, hash: &str, phase: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "d", REVISION_HASH_LABEL: hash}},
            "spec": {"nodeName": node, "containers": [{"name": "c"}]},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        }))
        .unwrap()
    }

    struct Case {
        name: &'static str,
        strategy: serde_json::Value,
        nodes: Vec<Arc<Node>>,
        pods: Vec<Pod>,
        create: &'static [&'static str],
        delete: &'static [&'static str],
        /// desired, scheduled, misscheduled, ready, updated
        counts: (i32, i32, i32, i32, i32),
    }

    #[test]
    fn plans_follow_nodes_pods_and_the_update_strategy() {
        let rolling = |surge: i32, unavailable: i32| json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}});
        let n = |name| named_node(name, json!([]));
        let cases = [
            Case {
                name: "a pod per eligible node",
                strategy: rolling(0, 1),
                nodes: vec![n("n1"), n("n2")],
                pods: vec![daemon("p1", "n1", "new", "Running", true)],
                create: &["n2"],
                delete: &[],
                counts: (2, 1, 0, 1, 1),
            },
            Case {
                name: "pods on gone nodes, without a node and finished are deleted",
                strategy: rolling(0, 1),
                nodes: vec![n("n1")],
                pods: vec![
                    daemon("gone", "n9", "new", "Running", true),
                    daemon("done", "n1", "new", "Succeeded", false),
                    daemon("nowhere", "", "new", "Pending", false),
                ],
                create: &["n1"],
                delete: &["done", "gone", "nowhere"],
                counts: (1, 0, 0, 0, 0),
            },
            Case {
                name: "an untolerated NoExecute taint evicts the daemon",
                strategy: rolling(0, 1),
                nodes: vec![named_node(
                    "n1",
                    json!([{"key": "k", "effect": "NoExecute"}]),
                )],
                pods: vec![daemon("p1", "n1", "new", "Running", true)],
                create: &[],
                delete: &["p1"],
                counts: (0, 0, 1, 0, 0),
            },
            Case {
                name: "duplicates keep the newest revision",
                strategy: json!({"type": "OnDelete"}),
                nodes: vec![n("n1")],
                pods: vec![
                    daemon("old", "n1", "old", "Running", true),
                    daemon("new", "n1", "new", "Running", true),
                ],
                create: &[],
                delete: &["old"],
                counts: (1, 1, 0, 1, 1),
            },
            Case {
                name: "maxUnavailable replaces that many available old pods",
                strategy: rolling(0, 1),
                nodes: vec![n("n1"), n("n2")],
                pods: vec![
                    daemon("a", "n1", "old", "Running", true),
                    daemon("b", "n2", "old", "Running", true),
                ],
                create: &[],
                delete: &["a"],
                counts: (2, 2, 0, 2, 0),
            },
            Case {
                name: "an unavailable old pod goes at once and uses the budget",
                strategy: rolling(0, 1),
                nodes: vec![n("n1"), n("n2")],
                pods: vec![
                    daemon("a", "n1", "old", "Running", true),
                    daemon("b", "n2", "old", "Running", false),
                ],
                create: &[],
                delete: &["b"],
                counts: (2, 2, 0, 1, 0),
            },
            Case {
                name: "maxSurge starts new pods next to old ones",
                strategy: rolling(1, 0),
                nodes: vec![n("n1"), n("n2")],
                pods: vec![
                    daemon("a", "n1", "old", "Running", true),
                    daemon("b", "n2", "old", "Running", true),
                ],
                create: &["n1"],
                delete: &[],
                counts: (2, 2, 0, 2, 0),
            },
            Case {
                name: "a surged pod that is available retires the old one",
                strategy: rolling(1, 0),
                nodes: vec![n("n1")],
                pods: vec![
                    daemon("a", "n1", "old", "Running", true),
                    daemon("a2", "n1", "new", "Running", true),
                ],
                create: &[],
                delete: &["a"],
                counts: (1, 1, 0, 1, 1),
            },
            Case {
                name: "OnDelete leaves old pods alone",
                strategy: json!({"type": "OnDelete"}),
                nodes: vec![n("n1")],
                pods: vec![daemon("a", "n1", "old", "Running", true)],
                create: &[],
                delete: &[],
                counts: (1, 1, 0, 1, 0),
            },
        ];
        for c in cases {
            let ds = ds(c.strategy);
            let o = Observed {
                ds: &ds,
                spec: ds.spec.as_ref().unwrap(),
                hash: "new",
                collisions: 0,
                pods: c.pods,
                nodes: c.nodes.into_iter().map(|n| (n.name_any(), n)).collect(),
                now: 1_767_225_600 + 60,
            };
            let p = plan(&o);
            let mut deleted: Vec<String> = p.delete.iter().map(|p| p.name_any()).collect();
            deleted.sort();
            assert_eq!(p.create, c.create, "{}: create", c.name);
            assert_eq!(deleted, c.delete, "{}: delete", c.name);
            let s = &p.status;
            assert_eq!(
                (
                    s.desired_number_scheduled,
                    s.current_number_scheduled,
                    s.number_misscheduled,
                    s.number_ready,
                    s.updated_number_scheduled.unwrap_or(0)
                ),
                c.counts,
                "{}: status",
                c.name
            );
            assert_eq!(s.observed_generation, Some(2), "{}", c.name);
        }
    }

    #[test]
    fn percentages_round_up() {
        assert_eq!(scaled(Some(&IntOrString::String("10%".into())), 5, 1), 1);
        assert_eq!(scaled(Some(&IntOrString::String("50%".into())), 5, 1), 3);
        assert_eq!(scaled(Some(&IntOrString::Int(2)), 5, 1), 2);
        assert_eq!(scaled(None, 5, 1), 1);
    }
}
