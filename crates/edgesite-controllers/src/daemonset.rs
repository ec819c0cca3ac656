//! The DaemonSet controller: one pod per eligible node. Eligibility (nodeSelector, required
//! node affinity, taints against the pod's tolerations plus the daemon defaults) is decided
//! here; each pod is then pinned with a required `metadata.name` node-affinity term so the
//! scheduler binds it. Pods on nodes that are gone or no longer eligible are deleted. Updates
//! roll out node by node within `maxUnavailable` / `maxSurge` (or wait for deletions with
//! `OnDelete`); every template is kept as a ControllerRevision (see [`crate::revision`]).
//!
//! Pods are listed from the API server on every pass (no informer cache), so a pass always
//! sees the effect of the previous one and no "expectations" bookkeeping is needed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, PodTemplateSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ListParams;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use serde_json::json;
use tracing::{debug, info, warn};

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
pub async fn run(client: Client, config: Arc<Config>) {
    let (nodes, writer) = reflector::store::<Node>();
    let node_changes = node_changes(reflector::reflector(
        writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()).default_backoff(),
    ));
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        nodes,
    });
    Controller::new(
        Api::<DaemonSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Pod>::all(client), watcher::Config::default())
    .reconcile_all_on(node_changes)
    .with_config(controller::Config::default().debounce(DEBOUNCE))
    .run(reconcile, error_policy, ctx)
    .for_each(|res| async move {
        if let Err(err) = res {
            debug!(%err, "daemonset reconcile");
        }
    })
    .await;
}

/// Node events that can change where daemons run: a node added or removed, or its labels or
/// taints changed (heartbeats and status updates are dropped).
fn node_changes(
    events: impl futures::Stream<Item = Result<watcher::Event<Node>, watcher::Error>> + Send + 'static,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    let mut seen: HashMap<String, String> = HashMap::new();
    events.filter_map(move |ev| {
        let fire = match ev {
            Ok(watcher::Event::Apply(n)) => {
                let print = fingerprint(&n);
                seen.insert(n.name_any(), print.clone()) != Some(print)
            }
            Ok(watcher::Event::InitApply(n)) => {
                seen.insert(n.name_any(), fingerprint(&n));
                false
            }
            Ok(watcher::Event::Delete(n)) => {
                seen.remove(&n.name_any());
                true
            }
            Ok(watcher::Event::InitDone) => true,
            Ok(watcher::Event::Init) | Err(_) => false,
        };
        futures::future::ready(fire.then_some(()))
    })
}

fn fingerprint(n: &Node) -> String {
    let taints = n.spec.as_ref().and_then(|s| s.taints.as_ref());
    json!([n.labels(), taints]).to_string()
}

fn error_policy(ds: Arc<DaemonSet>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(daemonset = %ds.name_any(), %err, "daemonset sync failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

/// `value` scaled against `total` (percentages round up), or `default` when unset or invalid.
fn scaled(value: Option<&IntOrString>, total: i32, default: i32) -> i32 {
    value
        .and_then(|v| workload::scaled_value(v, total, true).ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// Node eligibility.

/// Whether a toleration tolerates a taint (upstream's `ToleratesTaint`).
pub(crate) fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref()
        && !e.is_empty()
        && e != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        // An empty term matches nothing.
        return false;
    }
    let labels = node.labels();
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let v = (r.key == "metadata.name").then(|| node.metadata.name.as_deref().unwrap_or(""));
            requirement_matches(r, v)
        })
}

/// Whether the node passes the pod's nodeSelector and required node affinity.
pub(crate) fn node_matches(spec: &PodSpec, node: &Node) -> bool {
    let labels = node.labels();
    if let Some(sel) = &spec.node_selector
        && !sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        Some(sel) => sel
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node)),
        None => true,
    }
}

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
    if !node_matches(spec, node) {
        return (false, false);
    }
    let tolerations = tolerations_with_defaults(spec);
    let untolerated = |effect: &str| {
        node.spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .any(|taint| taint.effect == effect && !tolerations.iter().any(|t| tolerates(t, taint)))
    };
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
    let pod_spec = template.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = ctx.config.clock.unix_seconds();

    // Revisions: the current template's, and the collision count it needed.
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

    // Pods by node.
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels_from(&selector))
        .await?
        .items
        .into_iter()
        .filter(|p| owner.controls(&p.metadata))
        .collect();
    let mut by_node: BTreeMap<String, NodePods> = BTreeMap::new();
    // Our pods that name no node cannot be placed: replace them.
    let mut unplaced = Vec::new();
    for p in pods {
        let Some(node) = pod_node(&p) else {
            unplaced.push(p);
            continue;
        };
        let e = by_node.entry(node).or_default();
        if p.metadata.deletion_timestamp.is_some() {
            e.terminating += 1;
        } else if matches!(phase(&p), "Failed" | "Succeeded") {
            e.finished.push(p);
        } else {
            e.active.push(p);
        }
    }
    let nodes: BTreeMap<String, Arc<Node>> = ctx
        .nodes
        .state()
        .into_iter()
        .map(|n| (n.name_any(), n))
        .collect();

    let strategy = spec.update_strategy.as_ref();
    let rolling =
        strategy.is_none_or(|s| s.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate");
    let is_new = |p: &Pod| p.labels().get(REVISION_HASH_LABEL) == Some(&hash);

    let mut create: Vec<String> = Vec::new();
    let mut delete: Vec<Pod> = unplaced;
    let mut eligible: BTreeSet<String> = BTreeSet::new();
    let (mut desired, mut misscheduled) = (0, 0);
    for (node_name, node) in &nodes {
        let (run, keep) = should_run(&pod_spec, node);
        let entry = by_node.get(node_name);
        let has_pods = entry.is_some_and(|e| !e.active.is_empty() || e.terminating > 0);
        if run {
            desired += 1;
            eligible.insert(node_name.clone());
        } else if entry.is_some_and(|e| !e.active.is_empty()) {
            misscheduled += 1;
        }
        if let Some(e) = entry {
            delete.extend(e.finished.iter().cloned());
        }
        if run && !has_pods {
            create.push(node_name.clone());
        }
        if let Some(e) = entry {
            if !keep {
                delete.extend(e.active.iter().cloned());
            } else if e.active.len() > 1 {
                // Keep one pod: during a surge the old and the new, otherwise the oldest.
                let surging = rolling
                    && e.active.len() == 2
                    && e.active.iter().any(&is_new)
                    && e.active.iter().any(|p| !is_new(p));
                if !surging {
                    let mut active = e.active.clone();
                    active.sort_by_key(|p| {
                        (
                            !is_new(p),
                            p.metadata.creation_timestamp.clone().map(|t| t.0),
                        )
                    });
                    delete.extend(active.into_iter().skip(1));
                }
            }
        }
    }
    // Pods on nodes that are gone.
    for (node_name, e) in &by_node {
        if !nodes.contains_key(node_name) {
            delete.extend(e.active.iter().cloned());
            delete.extend(e.finished.iter().cloned());
        }
    }

    // Rolling update over the eligible nodes that keep their pods.
    let mut requeue = Requeue::default();
    if rolling && create.is_empty() && delete.is_empty() {
        let ru = strategy.and_then(|s| s.rolling_update.as_ref());
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
        let available = |p: &Pod| workload::is_pod_available(p, min_ready, now);
        let mut unavailable = 0;
        let mut surging = 0;
        let mut old_available: Vec<Pod> = Vec::new();
        let mut surge_candidates: Vec<String> = Vec::new();
        for node_name in &eligible {
            let Some(e) = by_node.get(node_name) else {
                unavailable += 1;
                continue;
            };
            if e.active.is_empty() {
                unavailable += 1;
                continue;
            }
            let new = e.active.iter().find(|p| is_new(p));
            let old = e.active.iter().find(|p| !is_new(p));
            for p in &e.active {
                requeue.pod(p, min_ready, now);
            }
            match (old, new) {
                (None, Some(n)) => {
                    if !available(n) {
                        unavailable += 1;
                    }
                }
                (Some(o), None) => {
                    if !available(o) {
                        // An old pod that is not serving anyway goes at once.
                        unavailable += 1;
                        delete.push(o.clone());
                    } else if max_surge > 0 {
                        surge_candidates.push(node_name.clone());
                    } else {
                        old_available.push(o.clone());
                    }
                }
                (Some(o), Some(n)) => {
                    surging += 1;
                    if available(n) {
                        delete.push(o.clone());
                    } else if !available(o) {
                        unavailable += 1;
                    }
                }
                (None, None) => {}
            }
        }
        if max_surge > 0 {
            let room = usize::try_from((max_surge - surging).max(0)).unwrap_or(0);
            create.extend(surge_candidates.into_iter().take(room));
        } else {
            let room = usize::try_from((max_unavailable - unavailable).max(0)).unwrap_or(0);
            delete.extend(old_available.into_iter().take(room));
        }
    }

    // Act.
    let new_pods: Vec<Pod> = create
        .iter()
        .map(|node| new_pod(&ds, &owner, template, &hash, node))
        .collect();
    create_pods(&pods_api, new_pods).await?;
    delete_pods(&pods_api, delete.clone()).await?;
    if !create.is_empty() || !delete.is_empty() {
        info!(daemonset = %format!("{ns}/{name}"), created = create.len(), deleted = delete.len(), "daemon pods synced");
    }

    // Status, from what this pass found (the next pass corrects it after changes).
    let mut current_scheduled = 0;
    let (mut ready, mut available, mut updated) = (0, 0, 0);
    for node_name in &eligible {
        let Some(e) = by_node.get(node_name).filter(|e| !e.active.is_empty()) else {
            continue;
        };
        current_scheduled += 1;
        let pick = e.active.iter().find(|p| is_new(p)).unwrap_or(&e.active[0]);
        if is_new(pick) {
            updated += 1;
        }
        if workload::is_pod_ready(pick) {
            ready += 1;
            if workload::is_pod_available(pick, min_ready, now) {
                available += 1;
            }
        }
    }
    let status = DaemonSetStatus {
        collision_count: (collisions > 0).then_some(collisions),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
        current_number_scheduled: current_scheduled,
        desired_number_scheduled: desired,
        number_available: Some(available),
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_unavailable: Some(desired - available),
        observed_generation: ds.metadata.generation,
        updated_number_scheduled: Some(updated),
    };
    workload::patch_status_if_changed(client, ds.as_ref(), ds.status.as_ref(), &status).await?;

    // History.
    let mut live: HashSet<String> = HashSet::new();
    live.insert(current.name_any());
    for e in by_node.values() {
        for p in &e.active {
            if let Some(h) = p.labels().get(REVISION_HASH_LABEL) {
                live.insert(format!("{name}-{h}"));
            }
        }
    }
    revision::prune(
        client,
        &ns,
        &revisions,
        &live,
        spec.revision_history_limit.unwrap_or(10),
    )
    .await?;
    Ok(requeue.action())
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

    #[test]
    fn percentages_round_up() {
        assert_eq!(scaled(Some(&IntOrString::String("10%".into())), 5, 1), 1);
        assert_eq!(scaled(Some(&IntOrString::String("50%".into())), 5, 1), 3);
        assert_eq!(scaled(Some(&IntOrString::Int(2)), 5, 1), 2);
        assert_eq!(scaled(None, 5, 1), 1);
    }
}
