//! The scheduler's picture of the cluster: every node with what the pods placed on it take
//! (requests, host ports, owners, labels for inter-pod affinity). Pods enter it when the watch
//! shows them bound, or earlier when the scheduler *assumes* them on a node, so that decisions
//! made while a binding is still in flight already see the room it takes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr as _;
use std::sync::Arc;

use edgesite_api::quantity::Quantity;
use edgesite_api::selector::LabelSelector;
use k8s_openapi::api::core::v1::{Container, Node, Pod, PodAffinityTerm, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;

/// CPU that a container without a CPU request counts for in scores (upstream's
/// `DefaultMilliCPURequest`); filters count it as zero.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Memory that a container without a memory request counts for in scores (200 MiB).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// Amounts of the resources the scheduler accounts for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in thousandths of a core.
    pub cpu_milli: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage: i64,
    /// Number of pods.
    pub pods: i64,
    /// Extended resources (`example.com/gpu`), in whole units.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// Adds `name: amount` (as found in a resource list).
    fn add_named(&mut self, name: &str, q: &ApiQuantity, sign: i64) {
        let Ok(q) = Quantity::from_str(&q.0) else {
            return;
        };
        match name {
            "cpu" => self.cpu_milli += sign * q.milli_value(),
            "memory" => self.memory += sign * q.value(),
            "ephemeral-storage" => self.ephemeral_storage += sign * q.value(),
            "pods" => self.pods += sign * q.value(),
            // Only extended resources (a domain-qualified name) are accounted; hugepages and
            // the like are out of scope.
            other if other.contains('/') && !other.starts_with("kubernetes.io/") => {
                *self.scalar.entry(other.to_owned()).or_default() += sign * q.value();
            }
            _ => {}
        }
    }

    fn from_list(list: Option<&BTreeMap<String, ApiQuantity>>) -> Self {
        let mut r = Self::default();
        for (name, q) in list.into_iter().flatten() {
            r.add_named(name, q, 1);
        }
        r
    }

    fn add(&mut self, other: &Resources) {
        self.cpu_milli += other.cpu_milli;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        self.pods += other.pods;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    fn sub(&mut self, other: &Resources) {
        self.cpu_milli -= other.cpu_milli;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        self.pods -= other.pods;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// Element-wise maximum.
    fn max_with(&mut self, other: &Resources) {
        self.cpu_milli = self.cpu_milli.max(other.cpu_milli);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

/// A host port a pod's container asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// `hostIP`, `0.0.0.0` when not given.
    pub ip: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The port.
    pub port: i32,
}

impl HostPort {
    /// Whether two host ports cannot be used by pods on the same node: same port and protocol,
    /// and the same address or either one the wildcard.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == "0.0.0.0" || other.ip == "0.0.0.0")
    }
}

/// A required inter-pod (anti-)affinity term, resolved against the namespace of the pod
/// that carries it.
#[derive(Debug, Clone)]
pub struct AffinityTerm {
    /// Which pods the term is about.
    pub selector: LabelSelector,
    /// Namespaces the selected pods must be in; `None` means every namespace.
    pub namespaces: Option<HashSet<String>>,
    /// The node label that defines "the same place".
    pub topology_key: String,
}

impl AffinityTerm {
    /// Resolves `term` for a pod in `namespace`. A `namespaceSelector` of `{}` selects every
    /// namespace; a non-empty one is not supported (namespace labels are not watched) and
    /// adds no namespace, so only `namespaces` (or the pod's own namespace) count.
    pub fn resolve(term: &PodAffinityTerm, namespace: &str) -> Self {
        let selector = match &term.label_selector {
            Some(s) => serde_json::to_value(s)
                .ok()
                .and_then(|v| LabelSelector::from_metav1(&v).ok())
                .unwrap_or_else(LabelSelector::nothing),
            None => LabelSelector::nothing(),
        };
        let all = term.namespace_selector.as_ref().is_some_and(|s| {
            s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
                && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
        });
        let listed: HashSet<String> = term.namespaces.iter().flatten().cloned().collect();
        let namespaces = if all {
            None
        } else if listed.is_empty() && term.namespace_selector.is_none() {
            Some(HashSet::from([namespace.to_owned()]))
        } else {
            Some(listed)
        };
        Self {
            selector,
            namespaces,
            topology_key: term.topology_key.clone(),
        }
    }

    /// Whether the term selects a pod with `labels` in `namespace`.
    pub fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|set| set.contains(namespace))
            && self.selector.matches(labels)
    }
}

/// What the scheduler needs to know of a pod, computed once per pod version.
#[derive(Debug, Clone, Default)]
pub struct PodFacts {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// What the pod takes for fit checks: max(sum of containers and sidecars, each init
    /// container) + overhead, and one `pods`.
    pub requests: Resources,
    /// CPU for scores: like `requests`, with containers without a request counted at
    /// [`DEFAULT_MILLI_CPU_REQUEST`].
    pub nonzero_cpu: i64,
    /// Memory for scores, with [`DEFAULT_MEMORY_REQUEST`] for containers without a request.
    pub nonzero_memory: i64,
    /// Host ports of its containers.
    pub host_ports: Vec<HostPort>,
    /// The uid of its controller (the ownerReference with `controller: true`).
    pub owner: Option<String>,
    /// Its required anti-affinity terms, which constrain pods scheduled after it.
    pub anti_affinity: Vec<AffinityTerm>,
}

fn container_requests(c: &Container) -> (Resources, i64, i64) {
    let req = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    let r = Resources::from_list(req);
    let has = |n: &str| req.is_some_and(|m| m.contains_key(n));
    let cpu = if has("cpu") {
        r.cpu_milli
    } else {
        DEFAULT_MILLI_CPU_REQUEST
    };
    let mem = if has("memory") {
        r.memory
    } else {
        DEFAULT_MEMORY_REQUEST
    };
    (r, cpu, mem)
}

impl PodFacts {
    /// Extracts the facts of `pod`.
    pub fn of(pod: &Pod) -> Self {
        let meta = &pod.metadata;
        let namespace = meta.namespace.clone().unwrap_or_default();
        let mut facts = PodFacts {
            uid: meta.uid.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            owner: meta
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone()),
            ..Default::default()
        };
        if let Some(spec) = &pod.spec {
            let mut sum = Resources::default();
            let (mut cpu, mut mem) = (0_i64, 0_i64);
            for c in &spec.containers {
                let (r, c_cpu, c_mem) = container_requests(c);
                sum.add(&r);
                cpu += c_cpu;
                mem += c_mem;
                for p in c.ports.iter().flatten() {
                    if let Some(port) = p.host_port.filter(|p| *p > 0) {
                        facts.host_ports.push(HostPort {
                            ip: p
                                .host_ip
                                .clone()
                                .filter(|ip| !ip.is_empty())
                                .unwrap_or_else(|| "0.0.0.0".to_owned()),
                            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                            port,
                        });
                    }
                }
            }
            // Sidecars (restartable init containers) run next to the containers; each plain
            // init container runs alone, next to the sidecars started before it.
            let mut sidecars = Resources::default();
            let (mut side_cpu, mut side_mem) = (0_i64, 0_i64);
            let mut init_peak = Resources::default();
            let (mut init_cpu, mut init_mem) = (0_i64, 0_i64);
            for c in spec.init_containers.iter().flatten() {
                let (r, c_cpu, c_mem) = container_requests(c);
                if c.restart_policy.as_deref() == Some("Always") {
                    sidecars.add(&r);
                    side_cpu += c_cpu;
                    side_mem += c_mem;
                    init_peak.max_with(&sidecars);
                    init_cpu = init_cpu.max(side_cpu);
                    init_mem = init_mem.max(side_mem);
                } else {
                    let mut r = r;
                    r.add(&sidecars);
                    init_peak.max_with(&r);
                    init_cpu = init_cpu.max(c_cpu + side_cpu);
                    init_mem = init_mem.max(c_mem + side_mem);
                }
            }
            sum.add(&sidecars);
            sum.max_with(&init_peak);
            cpu = (cpu + side_cpu).max(init_cpu);
            mem = (mem + side_mem).max(init_mem);
            let overhead = Resources::from_list(spec.overhead.as_ref());
            sum.add(&overhead);
            cpu += overhead.cpu_milli;
            mem += overhead.memory;
            sum.pods = 1;
            facts.requests = sum;
            facts.nonzero_cpu = cpu;
            facts.nonzero_memory = mem;
            if let Some(terms) = spec
                .affinity
                .as_ref()
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                })
            {
                facts.anti_affinity = terms
                    .iter()
                    .map(|t| AffinityTerm::resolve(t, &namespace))
                    .collect();
            }
        }
        facts.namespace = namespace;
        facts
    }
}

/// What the scheduler needs to know of a node itself.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeFacts {
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `spec.taints`, plus `node.kubernetes.io/not-ready` or `unreachable` (NoSchedule)
    /// when the Ready condition is not True and the node does not carry that taint already.
    pub taints: Vec<Taint>,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// `status.allocatable`.
    pub allocatable: Resources,
}

/// Taint a node whose Ready condition is False gets, if the node lifecycle has not put it.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Taint a node whose Ready condition is Unknown or missing gets.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";

impl NodeFacts {
    /// Extracts the facts of `node`.
    pub fn of(node: &Node) -> Self {
        let spec = node.spec.as_ref();
        let mut taints = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        let virtual_taint = match edgesite_api::predicates::node_ready_status(node) {
            Some("True") => None,
            Some("False") => Some(TAINT_NOT_READY),
            _ => Some(TAINT_UNREACHABLE),
        };
        if let Some(key) = virtual_taint
            && !taints.iter().any(|t| t.key == key)
        {
            taints.push(Taint {
                key: key.to_owned(),
                effect: "NoSchedule".to_owned(),
                ..Default::default()
            });
        }
        Self {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints,
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            allocatable: Resources::from_list(
                node.status.as_ref().and_then(|s| s.allocatable.as_ref()),
            ),
        }
    }
}

/// A node and what its pods take.
#[derive(Debug, Default)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// The node, or `None` while pods name a node the watch has not shown (or no longer
    /// shows): such a node is never a candidate.
    pub node: Option<NodeFacts>,
    /// Sum of the requests of its pods.
    pub requested: Resources,
    /// Sum of the score requests (CPU) of its pods.
    pub nonzero_cpu: i64,
    /// Sum of the score requests (memory) of its pods.
    pub nonzero_memory: i64,
    /// Host ports in use.
    pub ports: Vec<HostPort>,
    /// How many of its pods each controller owns.
    pub owners: HashMap<String, u32>,
    /// Its pods, by uid.
    pub pods: HashSet<String>,
}

/// A pod the cache accounts on a node.
#[derive(Debug)]
pub struct CachedPod {
    /// The pod.
    pub facts: Arc<PodFacts>,
    /// Where it is (or is assumed to be).
    pub node: String,
    /// Placed by this scheduler and not yet seen bound by the watch.
    pub assumed: bool,
}

/// Nodes and the pods placed on them.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    pods: HashMap<String, CachedPod>,
    present: usize,
    /// Pods with required anti-affinity terms (checked against every incoming pod).
    anti_affinity_pods: HashSet<String>,
}

impl Cache {
    /// Every node slot, including placeholders (`node == None`).
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// How many nodes the watch shows.
    pub fn node_count(&self) -> usize {
        self.present
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    /// Every accounted pod, by uid.
    pub fn pods(&self) -> &HashMap<String, CachedPod> {
        &self.pods
    }

    /// The pods with required anti-affinity terms.
    pub fn anti_affinity_pods(&self) -> impl Iterator<Item = &CachedPod> {
        self.anti_affinity_pods
            .iter()
            .filter_map(|uid| self.pods.get(uid))
    }

    fn slot(&mut self, name: &str) -> usize {
        if let Some(i) = self.index.get(name) {
            return *i;
        }
        self.nodes.push(NodeInfo {
            name: name.to_owned(),
            ..Default::default()
        });
        let i = self.nodes.len() - 1;
        self.index.insert(name.to_owned(), i);
        i
    }

    /// Adds or updates a node; returns whether anything the filters look at changed.
    pub fn upsert_node(&mut self, node: &Node) -> bool {
        let Some(name) = node.metadata.name.as_deref() else {
            return false;
        };
        let facts = NodeFacts::of(node);
        let i = self.slot(name);
        let slot = &mut self.nodes[i];
        if slot.node.as_ref() == Some(&facts) {
            return false;
        }
        if slot.node.is_none() {
            self.present += 1;
        }
        slot.node = Some(facts);
        true
    }

    /// Removes a node (its pods stay accounted on a placeholder until they go).
    pub fn remove_node(&mut self, name: &str) {
        let Some(&i) = self.index.get(name) else {
            return;
        };
        if self.nodes[i].node.take().is_some() {
            self.present -= 1;
        }
        if self.nodes[i].pods.is_empty() {
            self.drop_slot(i);
        }
    }

    fn drop_slot(&mut self, i: usize) {
        let gone = self.nodes.swap_remove(i);
        self.index.remove(&gone.name);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
    }

    /// Names of the nodes the watch shows.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.node.is_some())
            .map(|n| n.name.clone())
            .collect()
    }

    /// Accounts `facts` on `node`, replacing any earlier placement of the same pod.
    pub fn add_pod(&mut self, facts: Arc<PodFacts>, node: &str, assumed: bool) {
        self.remove_pod(&facts.uid);
        let i = self.slot(node);
        let n = &mut self.nodes[i];
        n.requested.add(&facts.requests);
        n.nonzero_cpu += facts.nonzero_cpu;
        n.nonzero_memory += facts.nonzero_memory;
        n.ports.extend(facts.host_ports.iter().cloned());
        if let Some(o) = &facts.owner {
            *n.owners.entry(o.clone()).or_default() += 1;
        }
        n.pods.insert(facts.uid.clone());
        if !facts.anti_affinity.is_empty() {
            self.anti_affinity_pods.insert(facts.uid.clone());
        }
        self.pods.insert(
            facts.uid.clone(),
            CachedPod {
                facts,
                node: node.to_owned(),
                assumed,
            },
        );
    }

    /// Removes the pod `uid`; returns it if it was accounted.
    pub fn remove_pod(&mut self, uid: &str) -> Option<CachedPod> {
        let cached = self.pods.remove(uid)?;
        self.anti_affinity_pods.remove(uid);
        if let Some(&i) = self.index.get(&cached.node) {
            let n = &mut self.nodes[i];
            let f = &cached.facts;
            n.requested.sub(&f.requests);
            n.nonzero_cpu -= f.nonzero_cpu;
            n.nonzero_memory -= f.nonzero_memory;
            for p in &f.host_ports {
                if let Some(at) = n.ports.iter().position(|q| q == p) {
                    n.ports.swap_remove(at);
                }
            }
            if let Some(o) = &f.owner
                && let Some(c) = n.owners.get_mut(o)
            {
                *c -= 1;
                if *c == 0 {
                    n.owners.remove(o);
                }
            }
            n.pods.remove(uid);
            if n.node.is_none() && n.pods.is_empty() {
                self.drop_slot(i);
            }
        }
        Some(cached)
    }

    /// Whether the pod `uid` is accounted and still only assumed.
    pub fn is_assumed(&self, uid: &str) -> bool {
        self.pods.get(uid).is_some_and(|p| p.assumed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": spec}),
        )
        .unwrap()
    }

    #[test]
    fn requests_take_the_larger_of_containers_and_init_containers_plus_overhead() {
        let p = pod(json!({
            "containers": [
                {"name": "a", "image": "i", "resources": {"requests": {"cpu": "250m", "memory": "1Gi"}}},
                {"name": "b", "image": "i"},
            ],
            "initContainers": [
                {"name": "i", "image": "i", "resources": {"requests": {"cpu": "2", "memory": "10Mi"}}},
            ],
            "overhead": {"cpu": "10m"},
        }));
        let f = PodFacts::of(&p);
        assert_eq!(f.requests.cpu_milli, 2010);
        assert_eq!(f.requests.memory, 1 << 30);
        assert_eq!(f.requests.pods, 1);
        // b counts 100m / 200Mi in scores.
        assert_eq!(f.nonzero_cpu, 2010);
        assert_eq!(f.nonzero_memory, (1 << 30) + DEFAULT_MEMORY_REQUEST);
    }

    #[test]
    fn assumed_pods_are_accounted_and_forgotten() {
        let mut cache = Cache::default();
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"},
            "status": {"allocatable": {"cpu": "4"},
                "conditions": [{"type": "Ready", "status": "True"}]}}))
        .unwrap();
        assert!(cache.upsert_node(&node));
        assert!(!cache.upsert_node(&node));
        let f = Arc::new(PodFacts::of(&pod(
            json!({"containers": [{"name": "a", "image": "i",
            "ports": [{"containerPort": 80, "hostPort": 8080}],
            "resources": {"requests": {"cpu": "1"}}}]}),
        )));
        cache.add_pod(f, "n1", true);
        let n = cache.node("n1").unwrap();
        assert_eq!(n.requested.cpu_milli, 1000);
        assert_eq!(n.ports.len(), 1);
        assert!(cache.is_assumed("u"));
        cache.remove_pod("u");
        let n = cache.node("n1").unwrap();
        assert_eq!(n.requested, Resources::default());
        assert!(n.ports.is_empty());
        assert!(n.node.as_ref().unwrap().taints.is_empty());
    }
}
