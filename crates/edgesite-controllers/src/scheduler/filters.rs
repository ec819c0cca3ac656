//! Filters: whether a pod may run on a node at all. Each failing check gives a [`Reason`]
//! whose text is the one upstream kube-scheduler prints in `FailedScheduling`, so users and
//! tools that parse it see the same summary.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use edgesite_api::predicates::{
    first_untolerated, node_selector_matches, required_node_affinity_terms, terms_match, tolerated,
};
use k8s_openapi::api::core::v1::{
    NodeSelectorTerm, Pod, PreferredSchedulingTerm, Taint, Toleration,
};

use super::cache::{AffinityTerm, Cache, NodeFacts, NodeInfo, PodFacts};

/// The taint a cordoned node is treated as carrying.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// Why a node cannot take a pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The node is cordoned.
    Unschedulable,
    /// nodeSelector or required node affinity does not match.
    NodeAffinity,
    /// A NoSchedule/NoExecute taint without a matching toleration.
    Taint {
        /// Taint key.
        key: String,
        /// Taint value.
        value: String,
    },
    /// Not enough of a resource (`cpu`, `memory`, ...).
    Insufficient(String),
    /// The node's `pods` allocatable is used up.
    TooManyPods,
    /// A requested host port is taken.
    Ports,
    /// Required pod affinity is not met.
    PodAffinity,
    /// The pod's required anti-affinity matches a pod there.
    PodAntiAffinity,
    /// A pod there has anti-affinity against this pod.
    ExistingAntiAffinity,
}

impl Reason {
    /// Whether evicting lower-priority pods could make the node fit (upstream's
    /// `Unschedulable` as opposed to `UnschedulableAndUnresolvable`).
    pub fn resolvable(&self) -> bool {
        matches!(
            self,
            Reason::Insufficient(_)
                | Reason::TooManyPods
                | Reason::Ports
                | Reason::PodAntiAffinity
                | Reason::ExistingAntiAffinity
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::NodeAffinity => {
                f.write_str("node(s) didn't match Pod's node affinity/selector")
            }
            Reason::Taint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Reason::Insufficient(r) => write!(f, "Insufficient {r}"),
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::Ports => {
                f.write_str("node(s) didn't have free ports for the requested pod ports")
            }
            Reason::PodAffinity => f.write_str("node(s) didn't match pod affinity rules"),
            Reason::PodAntiAffinity => f.write_str("node(s) didn't match pod anti-affinity rules"),
            Reason::ExistingAntiAffinity => {
                f.write_str("node(s) didn't satisfy existing pods anti-affinity rules")
            }
        }
    }
}

/// Counts of pods matched by the incoming pod's inter-pod terms, per topology domain.
#[derive(Debug, Default)]
pub struct InterPodState {
    /// Required affinity terms of the incoming pod.
    affinity: Vec<AffinityTerm>,
    /// Per affinity term: matching pods per topology value.
    affinity_counts: Vec<HashMap<String, u32>>,
    /// Whether no existing pod matches any affinity term and the pod matches all of them
    /// itself (the first pod of a group may go anywhere).
    affinity_self_start: bool,
    /// Required anti-affinity terms of the incoming pod.
    anti: Vec<AffinityTerm>,
    /// Per anti-affinity term: topology values holding a matching pod.
    anti_domains: Vec<HashSet<String>>,
    /// (topology key, value) pairs where an existing pod's anti-affinity forbids this pod.
    existing_anti: HashSet<(String, String)>,
}

impl InterPodState {
    /// Scans the cache for the pods that bear on `pod`'s terms; cheap when nothing uses
    /// inter-pod affinity.
    fn compute(pod: &Pod, facts: &PodFacts, cache: &Cache) -> Self {
        let mut s = InterPodState::default();
        let label_of = |node: &str, key: &str| -> Option<String> {
            cache
                .node(node)
                .and_then(|n| n.node.as_ref())
                .and_then(|n| n.labels.get(key).cloned())
        };
        for existing in cache.anti_affinity_pods() {
            for t in &existing.facts.anti_affinity {
                if t.matches(&facts.namespace, &facts.labels)
                    && let Some(v) = label_of(&existing.node, &t.topology_key)
                {
                    s.existing_anti.insert((t.topology_key.clone(), v));
                }
            }
        }
        let Some(pa) = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else {
            return s;
        };
        s.affinity = pa
            .pod_affinity
            .as_ref()
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|ts| {
                ts.iter()
                    .map(|t| AffinityTerm::resolve(t, &facts.namespace))
                    .collect()
            })
            .unwrap_or_default();
        s.anti = facts.anti_affinity.clone();
        if s.affinity.is_empty() && s.anti.is_empty() {
            return s;
        }
        s.affinity_counts = vec![HashMap::new(); s.affinity.len()];
        s.anti_domains = vec![HashSet::new(); s.anti.len()];
        let mut any_match = false;
        for existing in cache.pods().values() {
            let f = &existing.facts;
            for (i, t) in s.affinity.iter().enumerate() {
                if t.matches(&f.namespace, &f.labels) {
                    any_match = true;
                    if let Some(v) = label_of(&existing.node, &t.topology_key) {
                        *s.affinity_counts[i].entry(v).or_default() += 1;
                    }
                }
            }
            for (i, t) in s.anti.iter().enumerate() {
                if t.matches(&f.namespace, &f.labels)
                    && let Some(v) = label_of(&existing.node, &t.topology_key)
                {
                    s.anti_domains[i].insert(v);
                }
            }
        }
        s.affinity_self_start = !any_match
            && s.affinity
                .iter()
                .all(|t| t.matches(&facts.namespace, &facts.labels));
        s
    }

    /// Upstream's order: the pod's affinity, its anti-affinity, then the existing pods'.
    fn check(&self, node: &NodeFacts) -> Option<Reason> {
        for (i, t) in self.affinity.iter().enumerate() {
            let Some(v) = node.labels.get(&t.topology_key) else {
                return Some(Reason::PodAffinity);
            };
            if !self.affinity_self_start && !self.affinity_counts[i].contains_key(v) {
                return Some(Reason::PodAffinity);
            }
        }
        for (i, t) in self.anti.iter().enumerate() {
            if let Some(v) = node.labels.get(&t.topology_key)
                && self.anti_domains[i].contains(v)
            {
                return Some(Reason::PodAntiAffinity);
            }
        }
        for (key, value) in &self.existing_anti {
            if node.labels.get(key) == Some(value) {
                return Some(Reason::ExistingAntiAffinity);
            }
        }
        None
    }
}

/// A pending pod, prepared once per scheduling attempt for checking against many nodes.
#[derive(Debug)]
pub struct Candidate<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// Its facts.
    pub facts: PodFacts,
    /// `spec.tolerations`.
    pub tolerations: &'a [Toleration],
    node_selector: Option<&'a BTreeMap<String, String>>,
    required_terms: Option<&'a [NodeSelectorTerm]>,
    /// Preferred node affinity terms (scored).
    pub preferred: &'a [PreferredSchedulingTerm],
    inter_pod: InterPodState,
}

impl<'a> Candidate<'a> {
    /// Prepares `pod` against the current `cache`.
    pub fn new(pod: &'a Pod, cache: &Cache) -> Self {
        let facts = PodFacts::of(pod);
        let spec = pod.spec.as_ref();
        let node_affinity = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref());
        let inter_pod = InterPodState::compute(pod, &facts, cache);
        Self {
            pod,
            tolerations: spec
                .and_then(|s| s.tolerations.as_deref())
                .unwrap_or_default(),
            node_selector: spec.and_then(|s| s.node_selector.as_ref()),
            required_terms: spec.and_then(required_node_affinity_terms),
            preferred: node_affinity
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_deref()
                })
                .unwrap_or_default(),
            inter_pod,
            facts,
        }
    }

    /// Checks the node; on failure pushes the reasons (several only for resources).
    pub fn check(&self, info: &NodeInfo, reasons: &mut Vec<Reason>) -> bool {
        let Some(node) = info.node.as_ref() else {
            return false;
        };
        if node.unschedulable {
            let cordon = Taint {
                key: TAINT_UNSCHEDULABLE.to_owned(),
                effect: "NoSchedule".to_owned(),
                ..Default::default()
            };
            if !tolerated(self.tolerations, &cordon) {
                reasons.push(Reason::Unschedulable);
                return false;
            }
        }
        if !self.node_affinity_matches(node, &info.name) {
            reasons.push(Reason::NodeAffinity);
            return false;
        }
        if let Some(taint) =
            first_untolerated(&node.taints, self.tolerations, &["NoSchedule", "NoExecute"])
        {
            reasons.push(Reason::Taint {
                key: taint.key.clone(),
                value: taint.value.clone().unwrap_or_default(),
            });
            return false;
        }
        if !self.fits(info, node, reasons) {
            return false;
        }
        if !self.facts.host_ports.is_empty()
            && self
                .facts
                .host_ports
                .iter()
                .any(|p| info.ports.iter().any(|q| p.conflicts(q)))
        {
            reasons.push(Reason::Ports);
            return false;
        }
        if let Some(r) = self.inter_pod.check(node) {
            reasons.push(r);
            return false;
        }
        true
    }

    fn node_affinity_matches(&self, node: &NodeFacts, name: &str) -> bool {
        node_selector_matches(self.node_selector, &node.labels)
            && self
                .required_terms
                .is_none_or(|terms| terms_match(terms, &node.labels, name))
    }

    fn fits(&self, info: &NodeInfo, node: &NodeFacts, reasons: &mut Vec<Reason>) -> bool {
        let want = &self.facts.requests;
        let have = &node.allocatable;
        let used = &info.requested;
        let before = reasons.len();
        if used.pods + 1 > have.pods {
            reasons.push(Reason::TooManyPods);
        }
        let short = |w: i64, u: i64, h: i64| w > 0 && w > h - u;
        if short(want.cpu_milli, used.cpu_milli, have.cpu_milli) {
            reasons.push(Reason::Insufficient("cpu".to_owned()));
        }
        if short(want.memory, used.memory, have.memory) {
            reasons.push(Reason::Insufficient("memory".to_owned()));
        }
        if short(
            want.ephemeral_storage,
            used.ephemeral_storage,
            have.ephemeral_storage,
        ) {
            reasons.push(Reason::Insufficient("ephemeral-storage".to_owned()));
        }
        for (name, w) in &want.scalar {
            let h = have.scalar.get(name).copied().unwrap_or(0);
            let u = used.scalar.get(name).copied().unwrap_or(0);
            if short(*w, u, h) {
                reasons.push(Reason::Insufficient(name.clone()));
            }
        }
        reasons.len() == before
    }
}

/// The upstream-style summary of why no node fits, e.g. `0/3 nodes are available: 1 node(s)
/// had untolerated taint {node-role: x}, 2 Insufficient cpu. preemption: 0/3 nodes are
/// available: 1 No preemption victims found for incoming pod, 2 Preemption is not helpful for
/// scheduling.` (this scheduler does not preempt, so every resolvable node is reported as
/// having no victims).
pub fn failure_message(
    total_nodes: usize,
    reasons: &HashMap<Reason, usize>,
    resolvable: usize,
    unresolvable: usize,
) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    let mut msg = format!("0/{total_nodes} nodes are available:");
    if !parts.is_empty() {
        msg.push_str(&format!(" {}.", parts.join(", ")));
    }
    let mut pre: Vec<String> = Vec::new();
    if resolvable > 0 {
        pre.push(format!(
            "{resolvable} No preemption victims found for incoming pod"
        ));
    }
    if unresolvable > 0 {
        pre.push(format!(
            "{unresolvable} Preemption is not helpful for scheduling"
        ));
    }
    pre.sort();
    msg.push_str(&format!(
        " preemption: 0/{total_nodes} nodes are available:"
    ));
    if !pre.is_empty() {
        msg.push_str(&format!(" {}.", pre.join(", ")));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resources_report_every_shortage_and_the_pod_count() {
        use super::super::cache::Cache;
        use k8s_openapi::api::core::v1::Node;
        use std::sync::Arc;
        let mut cache = Cache::default();
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n"},
            "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "2",
                "example.com/gpu": "1"},
                "conditions": [{"type": "Ready", "status": "True"}]}}))
        .unwrap();
        cache.upsert_node(&node);
        let pod = |name: &str, req: serde_json::Value| -> Pod {
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "d", "uid": name},
                "spec": {"containers": [{"name": "c", "image": "i",
                    "resources": {"requests": req}}]}}),
            )
            .unwrap()
        };
        let first = pod(
            "a",
            json!({"cpu": "600m", "memory": "600Mi", "example.com/gpu": "1"}),
        );
        let c = Candidate::new(&first, &cache);
        let mut reasons = Vec::new();
        assert!(c.check(cache.node("n").unwrap(), &mut reasons));
        cache.add_pod(Arc::new(c.facts), "n", true);
        let second = pod(
            "b",
            json!({"cpu": "600m", "memory": "600Mi", "example.com/gpu": "1"}),
        );
        let c = Candidate::new(&second, &cache);
        assert!(!c.check(cache.node("n").unwrap(), &mut reasons));
        assert_eq!(
            reasons,
            [
                Reason::Insufficient("cpu".into()),
                Reason::Insufficient("memory".into()),
                Reason::Insufficient("example.com/gpu".into()),
            ]
        );
        assert!(reasons[0].resolvable());
        // Best-effort pods fit until the pod count is used up.
        let third = pod("c", json!({}));
        let c = Candidate::new(&third, &cache);
        reasons.clear();
        assert!(c.check(cache.node("n").unwrap(), &mut reasons));
        cache.add_pod(Arc::new(c.facts), "n", false);
        let fourth = pod("d", json!({}));
        let c = Candidate::new(&fourth, &cache);
        assert!(!c.check(cache.node("n").unwrap(), &mut reasons));
        assert_eq!(reasons, [Reason::TooManyPods]);
    }

    #[test]
    fn failure_message_has_the_upstream_shape() {
        let reasons = HashMap::from([
            (
                Reason::Taint {
                    key: "node-role".into(),
                    value: "x".into(),
                },
                1,
            ),
            (Reason::Insufficient("cpu".into()), 2),
        ]);
        assert_eq!(
            failure_message(3, &reasons, 2, 1),
            "0/3 nodes are available: 1 node(s) had untolerated taint {node-role: x}, \
             2 Insufficient cpu. preemption: 0/3 nodes are available: 1 Preemption is not \
             helpful for scheduling, 2 No preemption victims found for incoming pod."
        );
    }
}
