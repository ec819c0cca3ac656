//! The endpoints controller: for every Service with a selector, a core/v1 `Endpoints` object of
//! the same name listing the pods the selector matches: ready ones in `addresses`, the others
//! in `notReadyAddresses` (unless `publishNotReadyAddresses`), with ports resolved from each
//! pod's containers. The Endpoints goes when its Service does (no ownerReference, as
//! upstream). Services without a selector are left to whoever manages their Endpoints.
//!
//! Also home of [`drive`], the watch-and-queue loop this controller and the EndpointSlice
//! controller share: Services and pods come from the process's shared informers, and a pod
//! event queues only the Services whose selector matched its old or new labels.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;

use edgesite_api::predicates::{is_pod_ready, is_pod_terminal};
use futures::stream::BoxStream;
use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::Error;
use crate::informers::Informers;
use crate::queue::{self, WorkQueue};

/// Upstream's label marking the Endpoints/EndpointSlices of a headless Service.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The annotation of leader-election Endpoints, which this controller never deletes.
const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";
/// Upstream caps an Endpoints object at this many addresses (EndpointSlices have no cap).
pub const MAX_ENDPOINTS_ADDRESSES: usize = 1000;
/// The annotation upstream sets when it had to drop addresses over the cap.
pub const OVER_CAPACITY_ANNOTATION: &str = "endpoints.kubernetes.io/over-capacity";

/// A Service's namespace and name.
pub type ServiceKey = (String, String);

/// What one controller built on [`drive`] does for a Service.
pub(crate) trait ServiceSync: Send + Sync + 'static {
    /// The controller's name, for logs.
    const NAME: &'static str;

    /// Brings the controller's objects for `key` in line with `svc` (`None`: the Service is
    /// gone) and `pods` (every cached pod of the Service's namespace).
    fn sync(
        &self,
        key: &ServiceKey,
        svc: Option<&Service>,
        pods: &[Arc<Pod>],
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Services to sync because something happened to the controller's own objects (deleted
    /// or changed by someone else).
    fn own_events(&self) -> BoxStream<'static, ServiceKey>;

    /// Services to sync once the caches are filled, beyond every cached Service (objects
    /// left over from Services deleted while the controller was not running).
    fn leftovers(&self) -> impl Future<Output = Vec<ServiceKey>> + Send;
}

enum Event {
    Service(watcher::Event<Arc<Service>>),
    Pod(watcher::Event<Arc<Pod>>),
    Own(ServiceKey),
}

/// Runs `sync` for every Service whenever the Service or the pods it selects change, over
/// the shared Service and Pod informers.
pub(crate) async fn drive<S: ServiceSync>(inf: &Informers, sync: S) {
    let svc_events = inf.services.events().map(Event::Service).boxed();
    let pod_events = inf.pods.events().map(Event::Pod).boxed();
    let own = sync.own_events().map(Event::Own).boxed();
    let mut events = futures::stream::select_all([svc_events, pod_events, own]);
    let mut d = Driver {
        services: inf.services.store(),
        pods: inf.pods.store(),
        pod_labels: HashMap::new(),
        queue: WorkQueue::new(),
        services_listed: false,
        pods_listed: false,
        ready: false,
    };
    info!(
        controller = S::NAME,
        "controller watching services and pods"
    );
    loop {
        let next_retry = d.queue.next_due();
        tokio::select! {
            ev = events.next() => match ev {
                Some(ev) => d.on_event(ev),
                None => return,
            },
            () = queue::sleep_until(next_retry) => d.queue.promote_due(Instant::now()),
        }
        while let Some(Some(ev)) = events.next().now_or_never() {
            d.on_event(ev);
        }
        if !d.ready {
            if !(d.services_listed && d.pods_listed) {
                continue;
            }
            d.ready = true;
            d.enqueue_all();
            for key in sync.leftovers().await {
                d.enqueue(key);
            }
        }
        while let Some(key) = d.queue.pop() {
            let svc = d
                .services
                .get(&ObjectRef::new(&key.1).within(&key.0))
                .map(|s| (*s).clone());
            let ns_pods: Vec<Arc<Pod>> = d
                .pods
                .state()
                .into_iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(key.0.as_str()))
                .collect();
            match sync.sync(&key, svc.as_ref(), &ns_pods).await {
                Ok(()) => d.queue.forget(&key),
                Err(err) => {
                    let service = format!("{}/{}", key.0, key.1);
                    let delay = d.queue.retry(key, Instant::now());
                    debug!(controller = S::NAME, %service, %err, ?delay, "sync failed; retrying");
                }
            }
            // Keep the caches current between syncs.
            while let Some(Some(ev)) = events.next().now_or_never() {
                d.on_event(ev);
            }
        }
    }
}

struct Driver {
    services: Store<Service>,
    pods: Store<Pod>,
    /// The labels each pod had when last seen, to find the Services it no longer matches.
    pod_labels: HashMap<(String, String), BTreeMap<String, String>>,
    /// Services to sync, and failed ones waiting for their back-off.
    queue: WorkQueue<ServiceKey>,
    services_listed: bool,
    pods_listed: bool,
    ready: bool,
}

impl Driver {
    fn enqueue(&mut self, key: ServiceKey) {
        self.queue.add(key);
    }

    fn enqueue_all(&mut self) {
        for s in self.services.state() {
            self.enqueue(service_key(&s));
        }
    }

    /// Queues the Services of namespace `ns` whose selector matches any of `label_sets`.
    fn enqueue_selecting(&mut self, ns: &str, label_sets: &[&BTreeMap<String, String>]) {
        let matching: Vec<ServiceKey> = self
            .services
            .state()
            .iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(ns))
            .filter(|s| selector(s).is_some_and(|sel| label_sets.iter().any(|l| selects(sel, l))))
            .map(|s| service_key(s))
            .collect();
        for key in matching {
            self.enqueue(key);
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Own(key) => {
                if self.ready {
                    self.enqueue(key);
                }
            }
            Event::Service(e) => match e {
                watcher::Event::Apply(s) | watcher::Event::Delete(s) => {
                    if self.ready {
                        self.enqueue(service_key(&s));
                    }
                }
                watcher::Event::InitDone => {
                    self.services_listed = true;
                    if self.ready {
                        self.enqueue_all();
                    }
                }
                watcher::Event::Init | watcher::Event::InitApply(_) => {}
            },
            Event::Pod(e) => match e {
                watcher::Event::Apply(p) => {
                    let key = pod_key(&p);
                    let labels = p.labels().clone();
                    let old = self.pod_labels.insert(key.clone(), labels.clone());
                    if self.ready {
                        let mut sets = vec![&labels];
                        if let Some(o) = old.as_ref().filter(|o| **o != labels) {
                            sets.push(o);
                        }
                        self.enqueue_selecting(&key.0, &sets);
                    }
                }
                watcher::Event::InitApply(p) => {
                    self.pod_labels.insert(pod_key(&p), p.labels().clone());
                }
                watcher::Event::Delete(p) => {
                    let key = pod_key(&p);
                    let labels = self
                        .pod_labels
                        .remove(&key)
                        .unwrap_or_else(|| p.labels().clone());
                    if self.ready {
                        self.enqueue_selecting(&key.0, &[&labels]);
                    }
                }
                watcher::Event::Init => {}
                watcher::Event::InitDone => {
                    self.pods_listed = true;
                    // After a relist, drop the labels of pods that went away meanwhile.
                    let live: BTreeSet<(String, String)> =
                        self.pods.state().iter().map(|p| pod_key(p)).collect();
                    self.pod_labels.retain(|k, _| live.contains(k));
                    if self.ready {
                        self.enqueue_all();
                    }
                }
            },
        }
    }
}

/// A Service's namespace and name.
pub fn service_key(s: &Service) -> ServiceKey {
    (s.namespace().unwrap_or_default(), s.name_any())
}

fn pod_key(p: &Pod) -> (String, String) {
    (p.namespace().unwrap_or_default(), p.name_any())
}

/// The Service's selector, if it has a non-empty one and is not an ExternalName Service.
pub fn selector(s: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = s.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|m| !m.is_empty())
}

/// Whether `labels` has every key and value of `sel`.
pub fn selects(sel: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The pod's IP, if it has one and may serve at all: not finished (upstream's
/// `ShouldPodBeInEndpoints`). Terminating pods are decided by the caller.
pub fn serving_ip(p: &Pod) -> Option<&str> {
    if is_pod_terminal(p) {
        return None;
    }
    p.status
        .as_ref()?
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
}

/// Whether the pod is being deleted.
pub fn terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

/// The pods of `pods` that `svc`'s selector matches.
pub fn selected<'a>(svc: &Service, pods: &'a [Arc<Pod>]) -> Vec<&'a Pod> {
    let Some(sel) = selector(svc) else {
        return Vec::new();
    };
    pods.iter()
        .filter(|p| selects(sel, p.labels()))
        .map(|p| p.as_ref())
        .collect()
}

/// The container port a Service port reaches on `pod`: the number of `targetPort` (the port
/// itself when unset), or the container port of that name and protocol. `None` when the name
/// is not found on the pod.
pub fn target_port(port: &ServicePort, pod: &Pod) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let proto = port.protocol.as_deref().unwrap_or("TCP");
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|cp| {
                    cp.name.as_deref() == Some(name.as_str())
                        && cp.protocol.as_deref().unwrap_or("TCP") == proto
                })
                .map(|cp| cp.container_port)
        }
    }
}

/// The `targetRef` of a pod's address.
pub fn pod_ref(p: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".to_owned()),
        namespace: p.metadata.namespace.clone(),
        name: p.metadata.name.clone(),
        uid: p.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

/// The hostname a pod's address carries: its `spec.hostname` when its `spec.subdomain` is
/// the Service's name (upstream's `ShouldSetHostname`).
pub fn hostname(p: &Pod, svc: &Service) -> Option<String> {
    let spec = p.spec.as_ref()?;
    let host = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == svc.metadata.name.as_deref()).then(|| host.to_owned())
}

/// The labels of a Service's Endpoints/EndpointSlices: the Service's own, plus the headless
/// marker for `clusterIP: None`.
pub fn output_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.labels().clone();
    labels.remove(HEADLESS_LABEL);
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        labels.insert(HEADLESS_LABEL.to_owned(), String::new());
    }
    labels
}

/// The subsets of the Endpoints for `svc` over the pods of its namespace, packed as upstream
/// does (pods reaching the same ports share a subset), sorted; at most
/// [`MAX_ENDPOINTS_ADDRESSES`] addresses (the second value tells whether some were dropped).
pub fn desired_subsets(svc: &Service, pods: &[Arc<Pod>]) -> (Vec<EndpointSubset>, bool) {
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let ports: Vec<ServicePort> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    // Port list (as JSON, for ordering) → (ports, ready, not ready).
    type Group = (
        Vec<EndpointPort>,
        Vec<EndpointAddress>,
        Vec<EndpointAddress>,
    );
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for pod in selected(svc, pods) {
        let Some(ip) = serving_ip(pod) else { continue };
        if terminating(pod) && !publish_not_ready {
            continue;
        }
        let mut eps: Vec<EndpointPort> = ports
            .iter()
            .filter_map(|sp| {
                Some(EndpointPort {
                    name: sp.name.clone().filter(|n| !n.is_empty()),
                    port: target_port(sp, pod)?,
                    protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".to_owned())),
                    app_protocol: sp.app_protocol.clone(),
                })
            })
            .collect();
        if eps.is_empty() && !ports.is_empty() {
            continue;
        }
        eps.sort_by(|a, b| (&a.name, a.port).cmp(&(&b.name, b.port)));
        let addr = EndpointAddress {
            ip: ip.to_owned(),
            hostname: hostname(pod, svc),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(pod_ref(pod)),
        };
        let group_key = serde_json::to_string(&eps).unwrap_or_default();
        let g = groups
            .entry(group_key)
            .or_insert_with(|| (eps, Vec::new(), Vec::new()));
        if publish_not_ready || is_pod_ready(pod) {
            g.1.push(addr);
        } else {
            g.2.push(addr);
        }
    }
    let mut budget = MAX_ENDPOINTS_ADDRESSES;
    let mut truncated = false;
    let mut out = Vec::with_capacity(groups.len());
    for (_, (ports, mut ready, mut not_ready)) in groups {
        let by_ip = |a: &EndpointAddress, b: &EndpointAddress| {
            (&a.ip, a.target_ref.as_ref().and_then(|r| r.uid.as_ref()))
                .cmp(&(&b.ip, b.target_ref.as_ref().and_then(|r| r.uid.as_ref())))
        };
        ready.sort_by(by_ip);
        not_ready.sort_by(by_ip);
        for list in [&mut ready, &mut not_ready] {
            if list.len() > budget {
                list.truncate(budget);
                truncated = true;
            }
            budget -= list.len();
        }
        if ready.is_empty() && not_ready.is_empty() {
            continue;
        }
        out.push(EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: (!ports.is_empty()).then_some(ports),
        });
    }
    (out, truncated)
}

/// The endpoints controller (see the module docs).
pub(crate) struct EndpointsSync {
    client: Client,
}

/// Runs the endpoints controller until the returned future is dropped.
pub async fn run(client: Client, inf: &Informers) {
    drive(inf, EndpointsSync { client }).await;
}

impl ServiceSync for EndpointsSync {
    const NAME: &'static str = "endpoints";

    async fn sync(
        &self,
        key: &ServiceKey,
        svc: Option<&Service>,
        pods: &[Arc<Pod>],
    ) -> Result<(), Error> {
        let (ns, name) = key;
        let api: Api<Endpoints> = Api::namespaced(self.client.clone(), ns);
        let Some(svc) = svc else {
            // The Service is gone: so are its Endpoints (a leader-election object excepted).
            if let Some(ep) = api.get_opt(name).await?
                && !ep.annotations().contains_key(LEADER_ANNOTATION)
            {
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => {
                        debug!(namespace = %ns, %name, "deleted endpoints of a deleted service")
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(());
        };
        if selector(svc).is_none() {
            return Ok(());
        }
        let (subsets, truncated) = desired_subsets(svc, pods);
        let labels = output_labels(svc);
        let current = api.get_opt(name).await?;
        let mut annotations = current
            .as_ref()
            .map(|c| c.annotations().clone())
            .unwrap_or_default();
        if truncated {
            annotations.insert(OVER_CAPACITY_ANNOTATION.to_owned(), "truncated".to_owned());
        } else {
            annotations.remove(OVER_CAPACITY_ANNOTATION);
        }
        let want = (!subsets.is_empty()).then_some(subsets);
        match current {
            Some(cur) => {
                let same = cur.subsets.clone().filter(|s| !s.is_empty()) == want
                    && *cur.labels() == labels
                    && *cur.annotations() == annotations;
                if same {
                    return Ok(());
                }
                let mut new = cur;
                new.subsets = want;
                new.metadata.labels = Some(labels);
                new.metadata.annotations = Some(annotations).filter(|a| !a.is_empty());
                api.replace(name, &PostParams::default(), &new).await?;
            }
            None => {
                let new = Endpoints {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(ns.clone()),
                        labels: Some(labels),
                        annotations: Some(annotations).filter(|a| !a.is_empty()),
                        ..ObjectMeta::default()
                    },
                    subsets: want,
                };
                match api.create(&PostParams::default(), &new).await {
                    Ok(_) => {}
                    // A terminating namespace refuses new objects: nothing to do there.
                    Err(kube::Error::Api(s)) if s.code == 403 => {
                        debug!(namespace = %ns, %name, "namespace terminating; no endpoints");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    fn own_events(&self) -> BoxStream<'static, ServiceKey> {
        // Endpoints deleted by someone else are put back.
        watcher(
            Api::<Endpoints>::all(self.client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .filter_map(|e| async move {
            match e {
                Ok(watcher::Event::Delete(ep)) => {
                    Some((ep.namespace().unwrap_or_default(), ep.name_any()))
                }
                _ => None,
            }
        })
        .boxed()
    }

    async fn leftovers(&self) -> Vec<ServiceKey> {
        let api: Api<Endpoints> = Api::all(self.client.clone());
        match api.list(&ListParams::default()).await {
            Ok(list) => list
                .items
                .iter()
                .map(|m| (m.namespace().unwrap_or_default(), m.name_any()))
                .collect(),
            Err(err) => {
                warn!(%err, "cannot list endpoints to find leftovers");
                Vec::new()
            }
        }
    }
}
