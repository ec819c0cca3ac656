//! The garbage collector: watches every resource (through the shared informers where there
//! is one), keeps a graph of `ownerReferences` keyed by
//! uid, and
//! - deletes an object once none of its owners exists any more (an owner whose uid no longer
//!   matches counts as gone), in the background; owners that still exist are kept and the
//!   dangling references are dropped;
//! - runs the `foregroundDeletion` finalizer: deletes the dependents of an owner that carries it
//!   and removes it once no dependent with `blockOwnerDeletion` is left;
//! - runs the `orphan` finalizer: removes the owner's reference from every dependent, then the
//!   finalizer.
//!
//! Absence is always confirmed with a live GET (or a DELETED event) before anything is deleted,
//! so a graph that is still filling up after a restart never causes a deletion.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use edgesite_api::registry::{self, ResourceInfo};
use futures::stream::BoxStream;
use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Client;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::core::DynamicObject;
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::Error;
use crate::informers::{Informer, Informers, Watched, map_event};
use crate::queue::{self, WorkQueue};
use crate::resources::{dynamic_api, watchable};

/// The finalizer that asks for the dependents to be orphaned.
pub const FINALIZER_ORPHAN: &str = "orphan";
/// The finalizer that asks for the dependents to be deleted first.
pub const FINALIZER_FOREGROUND: &str = "foregroundDeletion";

/// One object in the graph: what the collector needs to know about it.
#[derive(Debug, Clone)]
struct Node {
    r: &'static ResourceInfo,
    namespace: Option<String>,
    name: String,
    uid: String,
    resource_version: String,
    owners: Vec<OwnerReference>,
    finalizers: Vec<String>,
    deleting: bool,
}

impl Node {
    fn from_object(r: &'static ResourceInfo, obj: &DynamicObject) -> Option<Self> {
        let md = &obj.metadata;
        Some(Self {
            r,
            namespace: md.namespace.clone(),
            name: md.name.clone()?,
            uid: md.uid.clone()?,
            resource_version: md.resource_version.clone().unwrap_or_default(),
            owners: md.owner_references.clone().unwrap_or_default(),
            finalizers: md.finalizers.clone().unwrap_or_default(),
            deleting: md.deletion_timestamp.is_some(),
        })
    }

    fn has_finalizer(&self, f: &str) -> bool {
        self.finalizers.iter().any(|x| x == f)
    }

    /// Being deleted in the foreground: its dependents go first.
    fn deleting_dependents(&self) -> bool {
        self.deleting && self.has_finalizer(FINALIZER_FOREGROUND)
    }
}

/// The owner graph: objects by uid and, for each owner uid, the uids of its dependents.
#[derive(Debug, Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, BTreeSet<String>>,
}

impl Graph {
    /// Adds or replaces a node; returns the uids to look at again.
    fn upsert(&mut self, node: Node) -> Vec<String> {
        let uid = node.uid.clone();
        let mut dirty = Vec::new();
        let old_owners: Vec<String> = self
            .nodes
            .get(&uid)
            .map(|n| n.owners.iter().map(|o| o.uid.clone()).collect())
            .unwrap_or_default();
        for o in &old_owners {
            if !node.owners.iter().any(|n| &n.uid == o) {
                self.unlink(o, &uid);
                dirty.push(o.clone());
            }
        }
        for o in &node.owners {
            self.dependents
                .entry(o.uid.clone())
                .or_default()
                .insert(uid.clone());
            // An owner waiting for its dependents may be unblocked by this change.
            if self.nodes.get(&o.uid).is_some_and(|n| n.deleting) {
                dirty.push(o.uid.clone());
            }
        }
        if !node.owners.is_empty() || node.deleting {
            dirty.push(uid.clone());
        }
        self.nodes.insert(uid, node);
        dirty
    }

    /// Removes a node; returns the uids to look at again (its owners and dependents).
    fn remove(&mut self, uid: &str) -> Vec<String> {
        let Some(node) = self.nodes.remove(uid) else {
            return Vec::new();
        };
        let mut dirty = Vec::new();
        for o in &node.owners {
            self.unlink(&o.uid, uid);
            dirty.push(o.uid.clone());
        }
        if let Some(deps) = self.dependents.get(uid) {
            dirty.extend(deps.iter().cloned());
        }
        dirty
    }

    fn unlink(&mut self, owner: &str, dependent: &str) {
        if let Some(set) = self.dependents.get_mut(owner) {
            set.remove(dependent);
            if set.is_empty() {
                self.dependents.remove(owner);
            }
        }
    }

    /// The known dependents of `uid`.
    #[cfg(test)]
    fn dependents_of(&self, uid: &str) -> Vec<Node> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.nodes.get(d).cloned())
            .collect()
    }

    fn has_dependents(&self, uid: &str) -> bool {
        self.dependents
            .get(uid)
            .is_some_and(|s| s.iter().any(|d| self.nodes.contains_key(d)))
    }

    /// How to delete `node` on behalf of an owner deleted in the foreground: its own
    /// dependents must go first too. The graph can lag behind just-created dependents, so
    /// anything but a pod (pods own nothing in practice) is deleted in the foreground as well;
    /// the finalizer then costs one verification pass when there is nothing to wait for.
    fn cascade_policy(&self, node: &Node) -> PropagationPolicy {
        let pod = node.r.group.is_empty() && node.r.plural == "pods";
        if self.has_dependents(&node.uid) || !pod {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        }
    }
}

enum OwnerState {
    Present,
    DeletingDependents,
    Absent,
}

struct Collector {
    client: Client,
    graph: Graph,
    /// Per resource (by index) during a relist: the uids seen so far.
    relisting: HashMap<usize, HashSet<String>>,
    /// Owner uids confirmed gone (uids are never reused).
    absent: HashSet<String>,
    /// Object uids to look at, and failed ones waiting for their back-off.
    queue: WorkQueue<String>,
}

/// Runs the garbage collector until the returned future is dropped. The resources `inf`
/// shares (pods, nodes, namespaces, services) come from its informers; every other one from
/// a watch of its own.
pub async fn run(client: Client, inf: &Informers) {
    let resources: Vec<&'static ResourceInfo> = watchable().collect();
    let streams = resources.iter().enumerate().map(|(i, r)| {
        let events = match (r.group, r.plural) {
            ("", "pods") => shared(&inf.pods),
            ("", "nodes") => shared(&inf.nodes),
            ("", "namespaces") => shared(&inf.namespaces),
            ("", "services") => shared(&inf.services),
            _ => watcher(dynamic_api(&client, r, None), watcher::Config::default())
                .default_backoff()
                .boxed(),
        };
        events.map(move |e| (i, e)).boxed()
    });
    let mut events = futures::stream::select_all(streams);
    let mut gc = Collector {
        client,
        graph: Graph::default(),
        relisting: HashMap::new(),
        absent: HashSet::new(),
        queue: WorkQueue::new(),
    };
    info!(resources = resources.len(), "garbage collector watching");
    loop {
        let next_retry = gc.queue.next_due();
        tokio::select! {
            ev = events.next() => match ev {
                Some((i, ev)) => gc.on_event(i, resources[i], ev),
                None => return,
            },
            () = queue::sleep_until(next_retry) => gc.queue.promote_due(Instant::now()),
        }
        // Fold in whatever else is already waiting before making API calls.
        while let Some(Some((i, ev))) = events.next().now_or_never() {
            gc.on_event(i, resources[i], ev);
        }
        gc.work().await;
    }
}

type WatchEvents = BoxStream<'static, Result<watcher::Event<DynamicObject>, watcher::Error>>;

/// The events of a shared informer, as a metadata-only watch would give them: the graph reads
/// nothing but metadata.
fn shared<K: Watched>(informer: &Informer<K>) -> WatchEvents {
    let meta = |k: Arc<K>| DynamicObject {
        types: None,
        metadata: k.meta().clone(),
        data: Value::Null,
    };
    informer
        .events()
        .map(move |ev| Ok(map_event(ev, meta)))
        .boxed()
}

impl Collector {
    fn on_event(
        &mut self,
        idx: usize,
        r: &'static ResourceInfo,
        ev: Result<watcher::Event<DynamicObject>, watcher::Error>,
    ) {
        let ev = match ev {
            Ok(ev) => ev,
            Err(err) => {
                debug!(resource = r.plural, %err, "watch failed; retrying");
                return;
            }
        };
        let dirty = match ev {
            watcher::Event::Apply(obj) => match Node::from_object(r, &obj) {
                Some(n) => self.graph.upsert(n),
                None => Vec::new(),
            },
            watcher::Event::InitApply(obj) => match Node::from_object(r, &obj) {
                Some(n) => {
                    if let Some(seen) = self.relisting.get_mut(&idx) {
                        seen.insert(n.uid.clone());
                    }
                    self.graph.upsert(n)
                }
                None => Vec::new(),
            },
            watcher::Event::Delete(obj) => match obj.metadata.uid {
                Some(uid) => {
                    self.absent.insert(uid.clone());
                    self.graph.remove(&uid)
                }
                None => Vec::new(),
            },
            watcher::Event::Init => {
                self.relisting.insert(idx, HashSet::new());
                Vec::new()
            }
            watcher::Event::InitDone => {
                // Objects of this resource not seen in the relist were deleted meanwhile.
                let seen = self.relisting.remove(&idx).unwrap_or_default();
                let gone: Vec<String> = self
                    .graph
                    .nodes
                    .values()
                    .filter(|n| std::ptr::eq(n.r, r) && !seen.contains(&n.uid))
                    .map(|n| n.uid.clone())
                    .collect();
                let mut dirty = Vec::new();
                for uid in gone {
                    self.absent.insert(uid.clone());
                    dirty.extend(self.graph.remove(&uid));
                }
                dirty
            }
        };
        for uid in dirty {
            self.enqueue(uid);
        }
    }

    fn enqueue(&mut self, uid: String) {
        self.queue.add(uid);
    }

    async fn work(&mut self) {
        while let Some(uid) = self.queue.pop() {
            match self.process(&uid).await {
                Ok(()) => self.queue.forget(&uid),
                Err(err) => {
                    let backoff = self.queue.retry(uid.clone(), Instant::now());
                    debug!(%uid, %err, ?backoff, "garbage collection step failed; retrying");
                }
            }
        }
    }

    async fn process(&mut self, uid: &str) -> Result<(), Error> {
        let Some(node) = self.graph.nodes.get(uid).cloned() else {
            return Ok(());
        };
        if node.deleting {
            if node.has_finalizer(FINALIZER_ORPHAN) {
                return self.orphan_dependents(&node).await;
            }
            if node.has_finalizer(FINALIZER_FOREGROUND) {
                return self.delete_dependents_first(&node).await;
            }
            return Ok(());
        }
        if node.owners.is_empty() {
            return Ok(());
        }
        self.attempt_to_delete(&node).await
    }

    /// Deletes `node` when none of its owners is left; drops references to vanished owners
    /// when some still exist.
    async fn attempt_to_delete(&mut self, node: &Node) -> Result<(), Error> {
        let mut solid = 0;
        let mut dangling = Vec::new();
        let mut waiting = Vec::new();
        for o in &node.owners {
            match self.owner_state(node, o).await? {
                OwnerState::Present => solid += 1,
                OwnerState::DeletingDependents => waiting.push(o.uid.clone()),
                OwnerState::Absent => dangling.push(o.uid.clone()),
            }
        }
        if solid > 0 {
            if dangling.is_empty() && waiting.is_empty() {
                return Ok(());
            }
            // Keep the object for its live owners; stop blocking owners that wait for it.
            let refs: Vec<OwnerReference> = node
                .owners
                .iter()
                .filter(|o| !dangling.contains(&o.uid))
                .cloned()
                .map(|mut o| {
                    if waiting.contains(&o.uid) {
                        o.block_owner_deletion = Some(false);
                    }
                    o
                })
                .collect();
            debug!(object = %node.name, dangling = dangling.len(), "dropping owner references");
            return self.patch_owner_references(node, &refs).await;
        }
        // The graph's copy may predate a change to the owners (our own orphaning patch, say):
        // decide again on the live object, and delete only that exact version.
        let api = dynamic_api(&self.client, node.r, node.namespace.as_deref());
        let Some(live) = api.get_opt(&node.name).await? else {
            return Ok(());
        };
        let Some(live) = Node::from_object(node.r, &live) else {
            return Ok(());
        };
        if live.uid != node.uid {
            return Ok(());
        }
        if live.owners != node.owners {
            return Box::pin(self.attempt_to_delete(&live)).await;
        }
        let node = &live;
        let policy = if node.has_finalizer(FINALIZER_ORPHAN) {
            PropagationPolicy::Orphan
        } else if !waiting.is_empty() {
            self.graph.cascade_policy(node)
        } else {
            PropagationPolicy::Background
        };
        info!(
            resource = node.r.plural,
            namespace = node.namespace.as_deref().unwrap_or(""),
            name = %node.name,
            ?policy,
            "deleting object whose owners are gone"
        );
        self.delete(node, policy, Some(&node.resource_version))
            .await
    }

    async fn owner_state(&mut self, node: &Node, o: &OwnerReference) -> Result<OwnerState, Error> {
        if self.absent.contains(&o.uid) {
            return Ok(OwnerState::Absent);
        }
        if let Some(owner) = self.graph.nodes.get(&o.uid) {
            return Ok(if owner.deleting_dependents() {
                OwnerState::DeletingDependents
            } else {
                OwnerState::Present
            });
        }
        // Not (yet) in the graph: ask the server.
        let Some(r) = registry::by_api_version_kind(&o.api_version, &o.kind) else {
            // A kind this server does not serve cannot be checked: keep the dependent.
            return Ok(OwnerState::Present);
        };
        let ns = match (r.namespaced, node.namespace.as_deref()) {
            (true, Some(ns)) => Some(ns),
            // A cluster-scoped object cannot be owned by a namespaced one.
            (true, None) => return Ok(OwnerState::Absent),
            (false, _) => None,
        };
        let found = dynamic_api(&self.client, r, ns).get_opt(&o.name).await?;
        match found.as_ref().and_then(|obj| Node::from_object(r, obj)) {
            Some(owner) if owner.uid == o.uid => Ok(if owner.deleting_dependents() {
                OwnerState::DeletingDependents
            } else {
                OwnerState::Present
            }),
            _ => {
                self.absent.insert(o.uid.clone());
                Ok(OwnerState::Absent)
            }
        }
    }

    /// The dependents of `owner` as the server has them now. The graph may lag behind a
    /// dependent created just before its owner was deleted (each resource has its own watch),
    /// and finishing a finalizer on a stale view would orphan or keep the wrong objects; these
    /// finalizers are rare, so they pay for one list per resource.
    async fn live_dependents(&self, owner: &Node) -> Result<Vec<Node>, Error> {
        let mut out = Vec::new();
        for r in watchable() {
            if owner.r.namespaced && !r.namespaced {
                continue;
            }
            let ns = if owner.r.namespaced {
                owner.namespace.as_deref()
            } else {
                None
            };
            let list = dynamic_api(&self.client, r, ns)
                .list(&kube::api::ListParams::default())
                .await?;
            out.extend(
                list.items
                    .iter()
                    .filter(|o| {
                        o.metadata
                            .owner_references
                            .as_ref()
                            .is_some_and(|refs| refs.iter().any(|x| x.uid == owner.uid))
                    })
                    .filter_map(|o| Node::from_object(r, o)),
            );
        }
        Ok(out)
    }

    /// The `orphan` finalizer: drop the owner from every dependent, then the finalizer.
    async fn orphan_dependents(&mut self, owner: &Node) -> Result<(), Error> {
        for d in self.live_dependents(owner).await? {
            let refs: Vec<OwnerReference> = d
                .owners
                .iter()
                .filter(|o| o.uid != owner.uid)
                .cloned()
                .collect();
            self.patch_owner_references(&d, &refs).await?;
        }
        self.remove_finalizer(owner, FINALIZER_ORPHAN).await
    }

    /// The `foregroundDeletion` finalizer: delete the dependents, then drop the finalizer once
    /// none that blocks the owner is left.
    async fn delete_dependents_first(&mut self, owner: &Node) -> Result<(), Error> {
        let mut blocking = 0;
        for d in self.live_dependents(owner).await? {
            if d.owners
                .iter()
                .any(|o| o.uid == owner.uid && o.block_owner_deletion == Some(true))
            {
                blocking += 1;
            }
            if !d.deleting {
                let policy = self.graph.cascade_policy(&d);
                self.delete(&d, policy, None).await?;
            }
        }
        if blocking == 0 {
            self.remove_finalizer(owner, FINALIZER_FOREGROUND).await?;
        }
        Ok(())
    }

    /// Deletes `node` (that uid; and that `version` if given) with `policy`.
    async fn delete(
        &self,
        node: &Node,
        policy: PropagationPolicy,
        version: Option<&str>,
    ) -> Result<(), Error> {
        let dp = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions {
                uid: Some(node.uid.clone()),
                resource_version: version.map(str::to_owned),
            }),
            ..DeleteParams::default()
        };
        let api = dynamic_api(&self.client, node.r, node.namespace.as_deref());
        match api.delete(&node.name, &dp).await {
            Ok(_) => Ok(()),
            // Gone already, or replaced by a newer object of the same name.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Merge patch guarded by the graph's resourceVersion (a stale graph gets a 409 and a retry).
    async fn patch_metadata(&self, node: &Node, field: &str, value: Value) -> Result<(), Error> {
        let patch = json!({"metadata": {"resourceVersion": node.resource_version, field: value}});
        let api = dynamic_api(&self.client, node.r, node.namespace.as_deref());
        match api
            .patch(&node.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn patch_owner_references(
        &self,
        node: &Node,
        refs: &[OwnerReference],
    ) -> Result<(), Error> {
        let value = if refs.is_empty() {
            Value::Null
        } else {
            serde_json::to_value(refs).map_err(|e| Error::Unexpected(e.to_string()))?
        };
        self.patch_metadata(node, "ownerReferences", value).await
    }

    async fn remove_finalizer(&self, node: &Node, finalizer: &str) -> Result<(), Error> {
        let rest: Vec<&String> = node.finalizers.iter().filter(|f| *f != finalizer).collect();
        let value = if rest.is_empty() {
            Value::Null
        } else {
            json!(rest)
        };
        debug!(object = %node.name, finalizer, "removing finalizer");
        self.patch_metadata(node, "finalizers", value).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(uid: &str, owners: &[&str]) -> Node {
        Node {
            r: registry::lookup("", "v1", "pods").unwrap(),
            namespace: Some("default".into()),
            name: uid.into(),
            uid: uid.into(),
            resource_version: "1".into(),
            owners: owners
                .iter()
                .map(|o| OwnerReference {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    name: (*o).into(),
                    uid: (*o).into(),
                    ..OwnerReference::default()
                })
                .collect(),
            finalizers: Vec::new(),
            deleting: false,
        }
    }

    #[test]
    fn graph_tracks_dependents() {
        let mut g = Graph::default();
        assert!(g.upsert(node("owner", &[])).is_empty());
        assert_eq!(g.upsert(node("a", &["owner"])), vec!["a".to_owned()]);
        g.upsert(node("b", &["owner"]));
        assert!(g.has_dependents("owner"));
        assert_eq!(g.dependents_of("owner").len(), 2);
        // Removing the owner makes both dependents dirty.
        let mut dirty = g.remove("owner");
        dirty.sort();
        assert_eq!(dirty, vec!["a".to_owned(), "b".to_owned()]);
        // Dropping the reference unlinks and marks the old owner.
        let dirty = g.upsert(node("a", &[]));
        assert_eq!(dirty, vec!["owner".to_owned()]);
        assert_eq!(
            g.dependents_of("owner").len(),
            1,
            "only b still points at it"
        );
        g.remove("b");
        assert!(!g.dependents.contains_key("owner"));
    }
}
