//! Scheduling and workload predicates over typed `k8s-openapi` objects: taints against
//! tolerations, node selectors and node affinity, pod readiness, availability and phase. The one
//! implementation the scheduler, the DaemonSet controller, node lifecycle and the endpoints and
//! workload controllers share; no IO, and anything that depends on time takes "now".

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeCondition, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, Taint, Toleration,
};

#[cfg(test)]
mod tests;

// ---------------------------------------------------------------------------------------------
// Taints and tolerations.

/// Whether `toleration` tolerates `taint`, as upstream's `Toleration.ToleratesTaint`: an empty
/// effect matches every effect, an empty key matches every key (validation allows that only with
/// `Exists`), and the operator defaults to `Equal`, which compares values.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref()
        && !effect.is_empty()
        && effect != taint.effect
    {
        return false;
    }
    if let Some(key) = toleration.key.as_deref()
        && !key.is_empty()
        && key != taint.key
    {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("") {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        "Exists" => true,
        _ => false,
    }
}

/// Whether any of `tolerations` tolerates `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

/// The first of `taints` whose effect is one of `effects` and which no toleration tolerates
/// (upstream's `FindMatchingUntoleratedTaint`); `None` when the pod tolerates them all.
pub fn first_untolerated<'a>(
    taints: &'a [Taint],
    tolerations: &[Toleration],
    effects: &[&str],
) -> Option<&'a Taint> {
    taints
        .iter()
        .find(|t| effects.contains(&t.effect.as_str()) && !tolerated(tolerations, t))
}

/// How many `PreferNoSchedule` taints the tolerations leave untolerated (the scheduler's
/// TaintToleration score); only tolerations with an empty or `PreferNoSchedule` effect count.
pub fn untolerated_prefer_no_schedule(taints: &[Taint], tolerations: &[Toleration]) -> usize {
    let relevant: Vec<&Toleration> = tolerations
        .iter()
        .filter(|t| matches!(t.effect.as_deref(), None | Some("" | "PreferNoSchedule")))
        .collect();
    taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule")
        .filter(|t| !relevant.iter().any(|tol| tolerates(tol, t)))
        .count()
}

/// How long a pod may stay on a node carrying a `NoExecute` taint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TolerationTime {
    /// No toleration matches: the taint evicts at once.
    None,
    /// A matching toleration has no `tolerationSeconds`: the pod stays for ever.
    Forever,
    /// The shortest `tolerationSeconds` of the matching tolerations (negative counts as 0).
    Seconds(u64),
}

/// The time the pod's tolerations grant it on a node with `taint` (upstream node lifecycle's
/// `getMinTolerationTime` over the tolerations that match).
pub fn toleration_time(tolerations: &[Toleration], taint: &Taint) -> TolerationTime {
    let mut shortest: Option<u64> = None;
    for t in tolerations.iter().filter(|t| tolerates(t, taint)) {
        let Some(secs) = t.toleration_seconds else {
            return TolerationTime::Forever;
        };
        let secs = u64::try_from(secs).unwrap_or(0);
        shortest = Some(shortest.map_or(secs, |s| s.min(secs)));
    }
    shortest.map_or(TolerationTime::None, TolerationTime::Seconds)
}

// ---------------------------------------------------------------------------------------------
// Node selector and node affinity.

/// Whether `labels` carries every key and value of `spec.nodeSelector` (absent: matches).
pub fn node_selector_matches(
    selector: Option<&BTreeMap<String, String>>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Whether one requirement of `matchExpressions` holds for a node's label value. A requirement
/// upstream cannot build into a selector (In/NotIn without values, Exists/DoesNotExist with
/// values, Gt/Lt without exactly one integer, unknown operator) holds for no node.
fn expression_holds(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => !values.is_empty() && value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => !values.is_empty() && value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => values.is_empty() && value.is_some(),
        "DoesNotExist" => values.is_empty() && value.is_none(),
        op @ ("Gt" | "Lt") => {
            let [bound] = values else {
                return false;
            };
            let (Ok(bound), Some(Ok(have))) =
                (bound.parse::<i64>(), value.map(|v| v.parse::<i64>()))
            else {
                return false;
            };
            if op == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => false,
    }
}

/// Whether one requirement of `matchFields` holds for the node named `name`: upstream supports
/// only `metadata.name` with `In` or `NotIn` and exactly one value.
fn field_holds(r: &NodeSelectorRequirement, name: &str) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let [want] = values else {
        return false;
    };
    if r.key != "metadata.name" {
        return false;
    }
    match r.operator.as_str() {
        "In" => want == name,
        "NotIn" => want != name,
        _ => false,
    }
}

/// Whether a node selector term matches the node with `labels` named `name`: every requirement
/// holds, and the term has at least one (an empty term matches nothing).
pub fn term_matches(
    term: &NodeSelectorTerm,
    labels: &BTreeMap<String, String>,
    name: &str,
) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| expression_holds(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| field_holds(r, name))
}

/// Whether any of the terms matches (the terms are ORed; no terms match nothing).
pub fn terms_match(
    terms: &[NodeSelectorTerm],
    labels: &BTreeMap<String, String>,
    name: &str,
) -> bool {
    terms.iter().any(|t| term_matches(t, labels, name))
}

/// The pod's required node-affinity terms, if it has a required node affinity at all.
pub fn required_node_affinity_terms(spec: &PodSpec) -> Option<&[NodeSelectorTerm]> {
    spec.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|s| s.node_selector_terms.as_slice())
}

/// Whether the node passes the pod's `nodeSelector` and its required node affinity (upstream's
/// `GetRequiredNodeAffinity(pod).Match(node)`).
pub fn pod_matches_node(spec: &PodSpec, labels: &BTreeMap<String, String>, name: &str) -> bool {
    node_selector_matches(spec.node_selector.as_ref(), labels)
        && required_node_affinity_terms(spec).is_none_or(|terms| terms_match(terms, labels, name))
}

// ---------------------------------------------------------------------------------------------
// Node conditions.

/// The node's first condition of type `kind` (`Ready`, `MemoryPressure`...), if it has one.
pub fn node_condition<'a>(node: &'a Node, kind: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_deref()?
        .iter()
        .find(|c| c.type_ == kind)
}

/// The status of the node's `Ready` condition (`True`, `False`, `Unknown`), if it has one.
pub fn node_ready_status(node: &Node) -> Option<&str> {
    node_condition(node, "Ready").map(|c| c.status.as_str())
}

// ---------------------------------------------------------------------------------------------
// Pod readiness, availability and phase.

/// When the pod's `Ready` condition last became true (Unix seconds; `i64::MIN` when it has no
/// transition time), if the first `Ready` condition is true now.
pub fn ready_since(pod: &Pod) -> Option<i64> {
    let cond = pod
        .status
        .as_ref()?
        .conditions
        .as_deref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    if cond.status != "True" {
        return None;
    }
    Some(
        cond.last_transition_time
            .as_ref()
            .map_or(i64::MIN, |t| t.0.as_second()),
    )
}

/// Whether the pod's `Ready` condition is `True` (upstream's `IsPodReady`).
pub fn is_pod_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Whether the pod has been ready for at least `min_ready_seconds` at `now` (Unix seconds).
pub fn is_pod_available(pod: &Pod, min_ready_seconds: i32, now: i64) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(since) => since.saturating_add(i64::from(min_ready_seconds)) <= now,
    }
}

/// Seconds until a ready pod becomes available, if it is ready but not yet available.
pub fn seconds_until_available(pod: &Pod, min_ready_seconds: i32, now: i64) -> Option<i64> {
    let since = ready_since(pod)?;
    let at = since.saturating_add(i64::from(min_ready_seconds));
    (min_ready_seconds > 0 && at > now).then_some(at - now)
}

/// Whether the pod has finished: phase `Succeeded` or `Failed`.
pub fn is_pod_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether the pod still counts as a replica: neither being deleted nor finished (upstream's
/// `IsPodActive`).
pub fn is_pod_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !is_pod_terminal(pod)
}
