//! Sync: node-scoped watches that feed the [`LocalCache`]. The node watches only what it needs,
//! as a node authorizer will allow it: its own Node (by name), the pods bound to it
//! (`spec.nodeName=<node>`) and, by name, each ConfigMap and Secret those pods reference —
//! never a list of a whole namespace.
//!
//! A watch writes every event into the cache before anything acts on it (the cache announces
//! the change afterwards). A list replaces what the cache had for that watch; nothing is
//! removed because the server is unreachable: a failing watch retries with back-off and the
//! cache keeps what it has.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use edgesite_api::pod_refs::{PodRef, RefKind, pod_refs};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt as _, watcher::watcher};
use kube::{Api, Client, ResourceExt as _};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use crate::cache::{Cached, LocalCache, key_of};

/// What one watch keeps in the cache: a list from it replaces either every cached object of
/// its kind, or only one key.
#[derive(Debug, Clone)]
enum Scope {
    /// The watch sees every object of its kind the node has (its pods).
    All,
    /// The watch sees one object, by name.
    Key(String),
}

/// Runs a watch of `api` with `config` into the cache until it is aborted; `what` names it in
/// log lines.
async fn watch_into<K: Cached + std::fmt::Debug>(
    api: Api<K>,
    config: watcher::Config,
    cache: Arc<LocalCache>,
    scope: Scope,
    what: String,
) {
    loop {
        let events = watcher(api.clone(), config.clone()).default_backoff();
        futures::pin_mut!(events);
        let mut listing: Vec<K> = Vec::new();
        let mut failing = false;
        while let Some(ev) = events.next().await {
            let ev = match ev {
                Ok(ev) => {
                    if failing {
                        info!(watch = %what, "watch is back");
                        failing = false;
                    }
                    ev
                }
                Err(err) => {
                    if !failing {
                        warn!(watch = %what, %err, "watch failed; the cache keeps what it has, retrying with back-off");
                        failing = true;
                    } else {
                        debug!(watch = %what, %err, "watch still failing");
                    }
                    continue;
                }
            };
            let stored = match ev {
                Event::Init => {
                    listing.clear();
                    Ok(())
                }
                Event::InitApply(obj) => {
                    listing.push(obj);
                    Ok(())
                }
                Event::InitDone => {
                    let objs = std::mem::take(&mut listing);
                    match &scope {
                        Scope::All => cache.replace(objs, None).await,
                        Scope::Key(key) => match objs.into_iter().next() {
                            Some(obj) => cache.put(obj).await.map(|_| ()),
                            None => cache.remove::<K>(key).await.map(|_| ()),
                        },
                    }
                }
                Event::Apply(obj) => cache.put(obj).await.map(|_| ()),
                Event::Delete(obj) => cache
                    .remove::<K>(&key_of(obj.namespace().as_deref(), &obj.name_any()))
                    .await
                    .map(|_| ()),
            };
            if let Err(err) = stored {
                // The event is lost for this watch: start it again, so that its list brings
                // the cache back to the server's state.
                warn!(watch = %what, %err, "cannot write to the local cache; restarting the watch");
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// The node's watches: its Node, its pods, and the objects its pods reference.
pub struct Sync {
    client: Client,
    cache: Arc<LocalCache>,
    node_name: String,
    refs: Mutex<HashMap<PodRef, AbortHandle>>,
    own: Mutex<Vec<AbortHandle>>,
}

impl std::fmt::Debug for Sync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sync")
            .field("node_name", &self.node_name)
            .field("ref_watches", &self.ref_watches())
            .finish_non_exhaustive()
    }
}

impl Sync {
    /// The watches of node `node_name` into `cache`; none runs before [`Sync::start`].
    pub fn new(client: Client, cache: Arc<LocalCache>, node_name: &str) -> Self {
        Self {
            client,
            cache,
            node_name: node_name.to_owned(),
            refs: Mutex::new(HashMap::new()),
            own: Mutex::new(Vec::new()),
        }
    }

    /// Starts the Node and pod watches, and the watches of what the cached pods reference.
    pub fn start(&self) {
        let node: Api<Node> = Api::all(self.client.clone());
        let by_name =
            watcher::Config::default().fields(&format!("metadata.name={}", self.node_name));
        let pods: Api<Pod> = Api::all(self.client.clone());
        let bound = watcher::Config::default().fields(&format!("spec.nodeName={}", self.node_name));
        let mut own = self.own.lock().unwrap_or_else(|e| e.into_inner());
        own.push(
            tokio::spawn(watch_into(
                node,
                by_name,
                self.cache.clone(),
                Scope::Key(self.node_name.clone()),
                format!("node {}", self.node_name),
            ))
            .abort_handle(),
        );
        own.push(
            tokio::spawn(watch_into(
                pods,
                bound,
                self.cache.clone(),
                Scope::All,
                "pods".to_owned(),
            ))
            .abort_handle(),
        );
        drop(own);
        self.follow_refs();
    }

    /// The ConfigMaps and Secrets the cached pods reference now.
    pub fn wanted_refs(&self) -> BTreeSet<PodRef> {
        self.cache
            .all::<Pod>()
            .iter()
            .flat_map(|p| pod_refs(p))
            .filter(|r| matches!(r.kind, RefKind::ConfigMap | RefKind::Secret))
            .collect()
    }

    /// Watches exactly what the cached pods reference: starts the missing watches, stops the
    /// ones no pod needs any more and drops their objects from the cache. Called after every
    /// change of the cached pods.
    pub fn follow_refs(&self) {
        let wanted = self.wanted_refs();
        let mut running = self.refs.lock().unwrap_or_else(|e| e.into_inner());
        let stale: Vec<PodRef> = running
            .keys()
            .filter(|r| !wanted.contains(*r))
            .cloned()
            .collect();
        for r in stale {
            if let Some(handle) = running.remove(&r) {
                handle.abort();
            }
            let cache = self.cache.clone();
            let key = key_of(Some(&r.namespace), &r.name);
            let kind = r.kind;
            tokio::spawn(async move {
                let res = match kind {
                    RefKind::ConfigMap => cache.remove::<ConfigMap>(&key).await,
                    _ => cache.remove::<Secret>(&key).await,
                };
                if let Err(err) = res {
                    warn!(%key, %err, "cannot drop an object no pod needs from the local cache");
                }
            });
        }
        for r in wanted {
            if running.contains_key(&r) {
                continue;
            }
            let config = watcher::Config::default().fields(&format!("metadata.name={}", r.name));
            let key = key_of(Some(&r.namespace), &r.name);
            let handle = match r.kind {
                RefKind::ConfigMap => tokio::spawn(watch_into(
                    Api::<ConfigMap>::namespaced(self.client.clone(), &r.namespace),
                    config,
                    self.cache.clone(),
                    Scope::Key(key.clone()),
                    format!("configmap {key}"),
                )),
                _ => tokio::spawn(watch_into(
                    Api::<Secret>::namespaced(self.client.clone(), &r.namespace),
                    config,
                    self.cache.clone(),
                    Scope::Key(key.clone()),
                    format!("secret {key}"),
                )),
            };
            running.insert(r, handle.abort_handle());
        }
    }

    /// How many by-name watches run (ConfigMaps and Secrets).
    pub fn ref_watches(&self) -> usize {
        self.refs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for Sync {
    fn drop(&mut self) {
        for h in self
            .own
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            h.abort();
        }
        for (_, h) in self
            .refs
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            h.abort();
        }
    }
}
