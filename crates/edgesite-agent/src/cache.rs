//! The node's local cache (the proposal's metamanager): every object the node acts on — its
//! Node, its pods and the ConfigMaps and Secrets they reference — kept on disk in the
//! project's embedded store engine and in memory, written to disk *before* anyone acts on it.
//! The pod workers read only this cache; the network only feeds it (see [`crate::sync`]), so
//! an agent that starts without its server finds its pods here.
//!
//! Objects are stored as the JSON the server sent, with their `resourceVersion`; the
//! resourceVersion of each resource's last list or watch event is kept too, to resume from.
//! The store directory is readable by root only (Secrets are in it).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use edgesite_store::embedded::{CompactionPolicy, EmbeddedConfig, EmbeddedStore};
use edgesite_store::{KeyRange, RangeRequest, Store as _, Txn, TxnOp};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use k8s_openapi::serde::Serialize;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::ResourceExt as _;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::pod::Objects;

/// The kinds the cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The node's own Node.
    Node,
    /// Pods bound to the node.
    Pod,
    /// ConfigMaps the node's pods reference.
    ConfigMap,
    /// Secrets the node's pods reference.
    Secret,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 4] = [Kind::Node, Kind::Pod, Kind::ConfigMap, Kind::Secret];

    /// The resource name, also the key prefix on disk.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::Pod => "pods",
            Kind::ConfigMap => "configmaps",
            Kind::Secret => "secrets",
        }
    }
}

/// What changed in the cache: `key` is `namespace/name` (`name` for the Node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The kind of the object.
    pub kind: Kind,
    /// Its key.
    pub key: String,
}

/// Why the cache cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The store refused.
    #[error("local cache {path}: {source}")]
    Store {
        /// The store file.
        path: PathBuf,
        /// The error.
        #[source]
        source: edgesite_store::Error,
    },
    /// The directory could not be made private.
    #[error("local cache directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

type Table<K> = RwLock<BTreeMap<String, Arc<K>>>;

/// The local cache. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct LocalCache {
    path: PathBuf,
    store: EmbeddedStore,
    nodes: Table<Node>,
    pods: Table<Pod>,
    config_maps: Table<ConfigMap>,
    secrets: Table<Secret>,
    versions: RwLock<BTreeMap<Kind, String>>,
    changes: mpsc::UnboundedSender<Change>,
}

/// The key of an object in its table: `namespace/name`, or `name` for cluster objects.
pub fn key_of(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_owned(),
    }
}

fn disk_key(kind: Kind, key: &str) -> Vec<u8> {
    format!("/{}/{key}", kind.resource()).into_bytes()
}

fn version_key(kind: Kind) -> Vec<u8> {
    format!("/meta/{}/resourceVersion", kind.resource()).into_bytes()
}

impl LocalCache {
    /// Opens (or creates) the cache in `dir` (`ADIR/cache`) and loads what it holds. Returns
    /// the cache and the receiver of its [`Change`]s, starting with one per loaded object.
    ///
    /// A cache file the store cannot open is moved aside (`state.redb.damaged`) with a log
    /// line and a fresh one is made: the server fills it again.
    pub async fn open(
        dir: &Path,
    ) -> Result<(Arc<Self>, mpsc::UnboundedReceiver<Change>), CacheError> {
        let io = |source| CacheError::Io {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        let path = dir.join("state.redb");
        let config = || {
            let mut c = EmbeddedConfig::new(&path).with_compaction(CompactionPolicy {
                keep_revisions: Some(1000),
                keep_duration: Some(Duration::from_secs(60)),
            });
            // A node's cache is small: keep the page cache small too.
            c.cache_size_bytes = 2 << 20;
            c.reserved_disk_bytes = 16 << 20;
            c
        };
        let store = match EmbeddedStore::open(config()).await {
            Ok(store) => store,
            Err(err @ edgesite_store::Error::Damaged { .. }) => {
                let aside = dir.join("state.redb.damaged");
                warn!(path = %path.display(), %err, aside = %aside.display(),
                      "the local cache is damaged; moving it aside and starting empty (the server fills it again)");
                std::fs::rename(&path, &aside).map_err(io)?;
                let wal = dir.join("state.redb.wal");
                if wal.exists() {
                    std::fs::rename(&wal, dir.join("state.redb.wal.damaged")).map_err(io)?;
                }
                EmbeddedStore::open(config())
                    .await
                    .map_err(|source| CacheError::Store {
                        path: path.clone(),
                        source,
                    })?
            }
            Err(source) => return Err(CacheError::Store { path, source }),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let cache = Arc::new(Self {
            path,
            store,
            nodes: Table::default(),
            pods: Table::default(),
            config_maps: Table::default(),
            secrets: Table::default(),
            versions: RwLock::default(),
            changes: tx,
        });
        cache.load().await?;
        Ok((cache, rx))
    }

    fn store_error(&self, source: edgesite_store::Error) -> CacheError {
        CacheError::Store {
            path: self.path.clone(),
            source,
        }
    }

    async fn load(&self) -> Result<(), CacheError> {
        let mut counts = Vec::new();
        for kind in Kind::ALL {
            let prefix = format!("/{}/", kind.resource()).into_bytes();
            let resp = self
                .store
                .range(RangeRequest::new(KeyRange::Prefix(prefix.clone())))
                .await
                .map_err(|e| self.store_error(e))?;
            let mut loaded = 0;
            for kv in resp.kvs {
                let key = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
                let ok = match kind {
                    Kind::Node => load_into(&self.nodes, &key, &kv.value),
                    Kind::Pod => load_into(&self.pods, &key, &kv.value),
                    Kind::ConfigMap => load_into(&self.config_maps, &key, &kv.value),
                    Kind::Secret => load_into(&self.secrets, &key, &kv.value),
                };
                if ok {
                    loaded += 1;
                    let _ = self.changes.send(Change { kind, key });
                } else {
                    warn!(kind = kind.resource(), %key, "a cached object cannot be read; dropping it (the server sends it again)");
                }
            }
            if let Some(kv) = self
                .store
                .get(&version_key(kind))
                .await
                .map_err(|e| self.store_error(e))?
            {
                write(&self.versions).insert(kind, String::from_utf8_lossy(&kv.value).into_owned());
            }
            counts.push(format!("{} {}", loaded, kind.resource()));
        }
        info!(path = %self.path.display(), loaded = %counts.join(", "), "local cache opened");
        Ok(())
    }

    fn table<K: Cached>(&self) -> &Table<K> {
        K::table(self)
    }

    /// Stores `obj` (on disk first) unless the cache has it at the same resourceVersion;
    /// returns whether it changed.
    pub async fn put<K: Cached>(&self, obj: K) -> Result<bool, CacheError> {
        let key = key_of(obj.namespace().as_deref(), &obj.name_any());
        if let Some(old) = read(self.table::<K>()).get(&key)
            && old.resource_version().is_some()
            && old.resource_version() == obj.resource_version()
        {
            return Ok(false);
        }
        let bytes = serde_json::to_vec(&obj).unwrap_or_default();
        self.store
            .put(&disk_key(K::KIND, &key), bytes, 0)
            .await
            .map_err(|e| self.store_error(e))?;
        write(self.table::<K>()).insert(key.clone(), Arc::new(obj));
        let _ = self.changes.send(Change { kind: K::KIND, key });
        Ok(true)
    }

    /// Removes the object `key` of kind `K`; returns whether it was there.
    pub async fn remove<K: Cached>(&self, key: &str) -> Result<bool, CacheError> {
        if !read(self.table::<K>()).contains_key(key) {
            return Ok(false);
        }
        self.store
            .txn(Txn::new().and_then(vec![TxnOp::Delete {
                range: KeyRange::Key(disk_key(K::KIND, key)),
                prev_kv: false,
            }]))
            .await
            .map_err(|e| self.store_error(e))?;
        write(self.table::<K>()).remove(key);
        let _ = self.changes.send(Change {
            kind: K::KIND,
            key: key.to_owned(),
        });
        Ok(true)
    }

    /// Makes the cached objects of kind `K` exactly `objs` (a full list from the server):
    /// stores the new and changed ones, removes the ones the list no longer has, and records
    /// `resource_version` as the list's.
    pub async fn replace<K: Cached>(
        &self,
        objs: Vec<K>,
        resource_version: Option<&str>,
    ) -> Result<(), CacheError> {
        let keep: std::collections::BTreeSet<String> = objs
            .iter()
            .map(|o| key_of(o.namespace().as_deref(), &o.name_any()))
            .collect();
        let gone: Vec<String> = read(self.table::<K>())
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for obj in objs {
            self.put(obj).await?;
        }
        for key in gone {
            self.remove::<K>(&key).await?;
        }
        if let Some(rv) = resource_version {
            self.set_resource_version(K::KIND, rv).await?;
        }
        Ok(())
    }

    /// Records the resourceVersion the cache of `kind` is current to.
    pub async fn set_resource_version(&self, kind: Kind, rv: &str) -> Result<(), CacheError> {
        if read(&self.versions).get(&kind).map(String::as_str) == Some(rv) {
            return Ok(());
        }
        self.store
            .put(&version_key(kind), rv.as_bytes().to_vec(), 0)
            .await
            .map_err(|e| self.store_error(e))?;
        write(&self.versions).insert(kind, rv.to_owned());
        Ok(())
    }

    /// The resourceVersion the cache of `kind` was last current to.
    pub fn resource_version(&self, kind: Kind) -> Option<String> {
        read(&self.versions).get(&kind).cloned()
    }

    /// The object `key` of kind `K`.
    pub fn get<K: Cached>(&self, key: &str) -> Option<Arc<K>> {
        read(self.table::<K>()).get(key).cloned()
    }

    /// Every cached object of kind `K`.
    pub fn all<K: Cached>(&self) -> Vec<Arc<K>> {
        read(self.table::<K>()).values().cloned().collect()
    }
}

impl Objects for LocalCache {
    fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        self.get(&key_of(Some(namespace), name))
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.get(&key_of(Some(namespace), name))
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

fn load_into<K: DeserializeOwned>(table: &Table<K>, key: &str, bytes: &[u8]) -> bool {
    match serde_json::from_slice::<K>(bytes) {
        Ok(obj) => {
            write(table).insert(key.to_owned(), Arc::new(obj));
            true
        }
        Err(_) => false,
    }
}

/// A type the cache holds.
pub trait Cached:
    kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Send + Sync + 'static
{
    /// Its kind.
    const KIND: Kind;
    /// Its table in `cache`.
    fn table(cache: &LocalCache) -> &Table<Self>;
}

impl Cached for Node {
    const KIND: Kind = Kind::Node;
    fn table(cache: &LocalCache) -> &Table<Self> {
        &cache.nodes
    }
}

impl Cached for Pod {
    const KIND: Kind = Kind::Pod;
    fn table(cache: &LocalCache) -> &Table<Self> {
        &cache.pods
    }
}

impl Cached for ConfigMap {
    const KIND: Kind = Kind::ConfigMap;
    fn table(cache: &LocalCache) -> &Table<Self> {
        &cache.config_maps
    }
}

impl Cached for Secret {
    const KIND: Kind = Kind::Secret;
    fn table(cache: &LocalCache) -> &Table<Self> {
        &cache.secrets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str, rv: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<Change>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(c) = rx.try_recv() {
            out.push(format!("{}:{}", c.kind.resource(), c.key));
        }
        out
    }

    #[tokio::test]
    async fn objects_survive_a_reopen_with_their_resource_versions() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("cache");
        {
            let (cache, mut rx) = LocalCache::open(&cache_dir).await.unwrap();
            assert!(cache.put(pod("a", "5")).await.unwrap());
            assert!(
                !cache.put(pod("a", "5")).await.unwrap(),
                "same version: no change"
            );
            assert!(cache.put(pod("a", "6")).await.unwrap());
            cache.put(pod("b", "7")).await.unwrap();
            let mut secret = Secret::default();
            secret.metadata.name = Some("s".into());
            secret.metadata.namespace = Some("default".into());
            secret.metadata.resource_version = Some("3".into());
            cache.put(secret).await.unwrap();
            cache.set_resource_version(Kind::Pod, "7").await.unwrap();
            assert_eq!(
                drain(&mut rx),
                [
                    "pods:default/a",
                    "pods:default/a",
                    "pods:default/b",
                    "secrets:default/s"
                ]
            );
        }
        let mode = std::fs::metadata(&cache_dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "secrets are in it: root only");
        let (cache, mut rx) = LocalCache::open(&cache_dir).await.unwrap();
        let a: Arc<Pod> = cache.get("default/a").unwrap();
        assert_eq!(a.resource_version().as_deref(), Some("6"));
        assert!(cache.secret("default", "s").is_some());
        assert_eq!(cache.resource_version(Kind::Pod).as_deref(), Some("7"));
        let mut loaded = drain(&mut rx);
        loaded.sort();
        assert_eq!(
            loaded,
            ["pods:default/a", "pods:default/b", "secrets:default/s"]
        );
    }

    #[tokio::test]
    async fn a_list_replaces_the_cached_objects_of_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, mut rx) = LocalCache::open(dir.path()).await.unwrap();
        cache.put(pod("a", "1")).await.unwrap();
        cache.put(pod("b", "2")).await.unwrap();
        drain(&mut rx);
        cache
            .replace(vec![pod("b", "2"), pod("c", "3")], Some("9"))
            .await
            .unwrap();
        let mut changes = drain(&mut rx);
        changes.sort();
        assert_eq!(changes, ["pods:default/a", "pods:default/c"]);
        let names: Vec<String> = cache.all::<Pod>().iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(cache.resource_version(Kind::Pod).as_deref(), Some("9"));
        assert!(cache.remove::<Pod>("default/b").await.unwrap());
        assert!(!cache.remove::<Pod>("default/b").await.unwrap());
    }

    #[tokio::test]
    async fn a_damaged_cache_file_is_moved_aside_and_the_cache_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("state.redb"),
            b"not a database at all, just junk",
        )
        .unwrap();
        let (cache, _rx) = LocalCache::open(dir.path()).await.unwrap();
        assert!(cache.all::<Pod>().is_empty());
        assert!(dir.path().join("state.redb.damaged").exists());
        cache.put(pod("a", "1")).await.unwrap();
    }

    #[tokio::test]
    async fn a_cache_in_use_is_an_error_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, _rx) = LocalCache::open(dir.path()).await.unwrap();
        cache.put(pod("a", "1")).await.unwrap();
        let err = LocalCache::open(dir.path()).await.unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        assert!(!dir.path().join("state.redb.damaged").exists());
        assert!(cache.get::<Pod>("default/a").is_some());
    }
}
