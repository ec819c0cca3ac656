//! Object storage for the resource handlers: one [`WatchCache`] per resource prefix (started
//! lazily), the stored form of objects (JSON without `metadata.resourceVersion`, which is the
//! key's `mod_revision` on read; unreadable bytes are an error naming the key) and small
//! helpers (uids, random suffixes).

use std::collections::HashMap;
use std::sync::Arc;

use edgesite_api::registry::{self, ResourceInfo};
use edgesite_api::status::ApiError;
use edgesite_store::watch_cache::{WatchCache, WatchCacheConfig, WatchCacheError};
use edgesite_store::{KeyValue, Revision, Store};
use serde_json::{Map, Value};
use tokio::sync::Mutex;

/// The store plus one watch cache per resource.
#[derive(Debug)]
pub struct Storage {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Started caches by key prefix. Looked up without awaiting: a request never queues
    /// behind another for a cache that is already running.
    caches: std::sync::RwLock<HashMap<String, Arc<WatchCache>>>,
    /// Serializes the start of caches (one store watch per prefix).
    starting: Mutex<()>,
}

impl Storage {
    /// Storage over `store`; caches start on first use.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            caches: std::sync::RwLock::new(HashMap::new()),
            starting: Mutex::new(()),
        }
    }

    /// The started watch caches, by key prefix (`/registry/core/pods/`...): for metrics.
    pub async fn started_caches(&self) -> Vec<(String, Arc<WatchCache>)> {
        let caches = self.caches.read().unwrap_or_else(|e| e.into_inner());
        caches.iter().map(|(p, c)| (p.clone(), c.clone())).collect()
    }

    /// Compacts the store at `revision` and makes every watch cache forget the events it
    /// dropped, so that clients resuming from a compacted resourceVersion get 410 Expired and
    /// relist, exactly as they would against the store alone.
    pub async fn compact(&self, revision: Revision) -> Result<(), ApiError> {
        self.store.compact(revision).await.map_err(store_error)?;
        for (_, cache) in self.started_caches().await {
            cache.compacted(revision);
        }
        Ok(())
    }

    /// The watch cache of `r` (all namespaces), started on first use.
    pub async fn cache(&self, r: &ResourceInfo) -> Result<Arc<WatchCache>, ApiError> {
        let prefix = registry::storage_prefix(r, None)
            .ok_or_else(|| ApiError::internal("no storage prefix"))?;
        if let Some(c) = self.started(&prefix) {
            return Ok(c);
        }
        let _starting = self.starting.lock().await;
        if let Some(c) = self.started(&prefix) {
            return Ok(c);
        }
        let cache = WatchCache::start(
            self.store.clone(),
            prefix.clone().into_bytes(),
            WatchCacheConfig::default(),
        )
        .await
        .map_err(cache_error)?;
        let cache = Arc::new(cache);
        self.caches
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(prefix, cache.clone());
        Ok(cache)
    }

    fn started(&self, prefix: &str) -> Option<Arc<WatchCache>> {
        let caches = self.caches.read().unwrap_or_else(|e| e.into_inner());
        caches.get(prefix).cloned()
    }
}

/// The Kubernetes answer for a watch cache failure.
pub fn cache_error(e: WatchCacheError) -> ApiError {
    match e {
        WatchCacheError::TooOld { requested, oldest } => {
            ApiError::too_old_resource_version(requested as u64, oldest as u64)
        }
        WatchCacheError::Expired { .. } => ApiError::expired(e.to_string()),
        WatchCacheError::NotCaughtUp { .. } => ApiError::timeout(e.to_string(), 1),
        WatchCacheError::InvalidContinue(_) => ApiError::bad_request(e.to_string()),
        WatchCacheError::Store(s) => store_error(s),
        other => ApiError::internal(other.to_string()),
    }
}

/// The Kubernetes answer for a store failure not handled by the caller.
pub fn store_error(e: edgesite_store::Error) -> ApiError {
    match e {
        edgesite_store::Error::Compacted { .. } => ApiError::expired(e.to_string()),
        other => ApiError::internal(other.to_string()),
    }
}

/// Decodes a stored key-value: the JSON object with `metadata.resourceVersion` set to `rv`.
/// Bytes that are not a JSON object are a 500 naming the key: answering `{}` instead would
/// hand clients an object without a name, and controllers would act on it.
pub fn decode(kv: &KeyValue, rv: Revision) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_slice(&kv.value).map_err(|e| corrupt(kv, &e))?;
    if !v.is_object() {
        return Err(corrupt(kv, &"not a JSON object"));
    }
    set_resource_version(&mut v, rv);
    Ok(v)
}

/// Checks that [`write_object`] can write `kv` as an object (the answer of a list is written
/// without parsing, so this is asked before any of it is sent): objects in [`encode`]'s layout
/// pass at once, others are parsed.
pub fn check_readable(kv: &KeyValue) -> Result<(), ApiError> {
    if kv.value.starts_with(STORED_PREFIX) {
        return Ok(());
    }
    decode(kv, kv.mod_revision).map(drop)
}

fn corrupt(kv: &KeyValue, why: &dyn std::fmt::Display) -> ApiError {
    ApiError::internal(format!(
        "the object stored under key {:?} cannot be decoded ({why}): restore it from a backup \
         or delete the key",
        String::from_utf8_lossy(&kv.key)
    ))
}

/// Sets `metadata.resourceVersion`.
pub fn set_resource_version(v: &mut Value, rv: Revision) {
    if let Some(m) = metadata_mut(v) {
        m.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

/// The start of every object [`encode`] writes: `metadata` comes first, so that reads can
/// put the resourceVersion in without parsing the object ([`write_object`]).
const STORED_PREFIX: &[u8] = b"{\"metadata\":{";

/// The stored bytes of `v`: JSON without `metadata.resourceVersion`, with `metadata` as the
/// first member (see [`write_object`]).
pub fn encode(v: &Value) -> Vec<u8> {
    let Some(obj) = v.as_object() else {
        return serde_json::to_vec(v).unwrap_or_default();
    };
    let mut out = Vec::with_capacity(512);
    out.push(b'{');
    let mut first = true;
    let mut member = |out: &mut Vec<u8>, k: &str, val: &dyn Fn(&mut Vec<u8>)| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        // Keys and values are serialized by serde_json, so escaping is its own.
        let _ = serde_json::to_writer(&mut *out, k);
        out.push(b':');
        val(out);
    };
    match obj.get("metadata") {
        Some(Value::Object(md)) => member(&mut out, "metadata", &|out| {
            out.push(b'{');
            let mut first_md = true;
            for (k, v) in md.iter().filter(|(k, _)| *k != "resourceVersion") {
                if !std::mem::take(&mut first_md) {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                let _ = serde_json::to_writer(&mut *out, v);
            }
            out.push(b'}');
        }),
        Some(other) => member(&mut out, "metadata", &|out| {
            let _ = serde_json::to_writer(&mut *out, other);
        }),
        None => {}
    }
    for (k, v) in obj.iter().filter(|(k, _)| *k != "metadata") {
        member(&mut out, k, &|out| {
            let _ = serde_json::to_writer(&mut *out, v);
        });
    }
    out.push(b'}');
    out
}

/// Appends the JSON of a stored object with `metadata.resourceVersion` set to `rv`, as
/// [`decode`] then serializing would, but without parsing when the bytes have the layout
/// [`encode`] writes (objects stored by older versions are parsed).
pub fn write_object(out: &mut Vec<u8>, stored: &[u8], rv: Revision) {
    if let Some(rest) = stored.strip_prefix(STORED_PREFIX) {
        out.extend_from_slice(STORED_PREFIX);
        out.extend_from_slice(b"\"resourceVersion\":\"");
        out.extend_from_slice(rv.to_string().as_bytes());
        out.push(b'"');
        if !rest.starts_with(b"}") {
            out.push(b',');
        }
        out.extend_from_slice(rest);
        return;
    }
    // Unreadable bytes were refused by `check_readable` before the answer began.
    let mut v: Value = serde_json::from_slice(stored).unwrap_or_else(|_| Value::Object(Map::new()));
    set_resource_version(&mut v, rv);
    let _ = serde_json::to_writer(out, &v);
}

/// `metadata` as a mutable map, created if missing (`None` when `v` is not an object).
pub fn metadata_mut(v: &mut Value) -> Option<&mut Map<String, Value>> {
    let obj = v.as_object_mut()?;
    let md = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !md.is_object() {
        *md = Value::Object(Map::new());
    }
    md.as_object_mut()
}

/// A string field of `metadata`.
pub fn meta_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get("metadata")?.get(field)?.as_str()
}

/// A random version-4 UUID (object UIDs).
pub use edgesite_clock::random::uuid_v4 as new_uid;

/// `n` random characters of upstream's alphabet (generateName suffixes).
pub use edgesite_clock::random::name_suffix as random_suffix;

pub use edgesite_api::time::format_rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_and_uid() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_eq!(random_suffix(5).len(), 5);
    }

    fn kv(value: Vec<u8>) -> KeyValue {
        KeyValue {
            key: b"/registry/core/configmaps/default/a".to_vec(),
            value,
            create_revision: 1,
            mod_revision: 7,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn stored_objects_put_metadata_first_and_read_back_without_parsing() {
        let cases = [
            serde_json::json!({"kind": "ConfigMap", "apiVersion": "v1",
                "data": {"k\"ey": "v\n\u{1F600}", "metadata": "{\"metadata\":{"},
                "metadata": {"name": "a", "resourceVersion": "3", "labels": {"x": "y"}}}),
            serde_json::json!({"kind": "ConfigMap", "metadata": {"resourceVersion": "3"}}),
            serde_json::json!({"kind": "ConfigMap", "metadata": {}}),
            serde_json::json!({"kind": "ConfigMap"}),
            serde_json::json!({"metadata": 5, "z": [1, 2]}),
        ];
        for obj in cases {
            let stored = encode(&obj);
            let parsed: Value = serde_json::from_slice(&stored).unwrap();
            let mut without = obj.clone();
            if let Some(m) = without.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            assert_eq!(parsed, without, "{}", String::from_utf8_lossy(&stored));
            let mut out = Vec::new();
            write_object(&mut out, &stored, 7);
            let read: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(
                read,
                decode(&kv(stored), 7).unwrap(),
                "{}",
                String::from_utf8_lossy(&out)
            );
        }
        // Objects stored in the older layout (serde_json's key order) are parsed.
        let legacy = br#"{"apiVersion":"v1","metadata":{"name":"a"}}"#.to_vec();
        let mut out = Vec::new();
        write_object(&mut out, &legacy, 9);
        let read: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(read["metadata"]["resourceVersion"], "9");
        assert_eq!(read["metadata"]["name"], "a");
    }

    #[test]
    fn unreadable_bytes_are_an_error_naming_the_key() {
        for bad in [&b"not json"[..], b"[1,2]", b"{\"metadata\":", b""] {
            let err = decode(&kv(bad.to_vec()), 7).unwrap_err();
            assert_eq!(err.code(), 500);
            assert!(
                err.to_string()
                    .contains("/registry/core/configmaps/default/a"),
                "{err}"
            );
            assert!(check_readable(&kv(bad.to_vec())).is_err() || bad.starts_with(STORED_PREFIX));
        }
        assert!(check_readable(&kv(encode(&serde_json::json!({"metadata": {}})))).is_ok());
    }
}
