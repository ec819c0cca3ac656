//! `?watch=true`: a chunked stream of `{"type":..,"object":..}` lines from the watch cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use edgesite_api::registry::{self, ResourceInfo};
use edgesite_api::status::ApiError;
use edgesite_api::table::{TableOptions, table_for};
use edgesite_clock::Clock;
use edgesite_store::watch_cache::{
    CacheEvent, CacheEventKind, CacheWatch, WatchCacheError, WatchItem, WatchOptions,
};
use futures::StreamExt as _;
use serde_json::{Value, json};

use super::ApiState;
use super::resources::Selectors;
use crate::storage::{self, decode};

struct Stream {
    watch: Option<CacheWatch>,
    pending: Option<Value>,
    deadline: Option<tokio::time::Instant>,
    r: &'static ResourceInfo,
    sel: Arc<Selectors>,
    table: bool,
    first: bool,
    /// Ages in table rows are relative to it.
    clock: Arc<dyn Clock>,
}

/// Starts a watch; answers 200 with the event stream (a too-old revision is one ERROR event).
pub async fn watch(
    state: &ApiState,
    r: &'static ResourceInfo,
    ns: Option<&str>,
    query: &HashMap<String, String>,
    table: bool,
) -> Result<Response, ApiError> {
    let sel = Arc::new(Selectors::parse(r, query)?);
    let cache = state.storage.cache(r).await?;
    let prefix = registry::storage_prefix(r, ns)
        .ok_or_else(|| ApiError::bad_request("invalid namespace"))?;
    let flag = |k: &str| matches!(query.get(k).map(String::as_str), Some("true" | "1"));
    let rv = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(s) => Some(
            s.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s}")))?,
        ),
    };
    let send_initial = query.get("sendInitialEvents").map(String::as_str);
    let mut opts = match (rv, send_initial) {
        (None, Some("false")) => WatchOptions::from_revision(cache.revision()),
        (None, _) => WatchOptions::initial(),
        (Some(rv), _) => WatchOptions::from_revision(rv),
    }
    .under(prefix.into_bytes());
    if flag("allowWatchBookmarks") {
        opts = opts.with_bookmarks();
    }
    if send_initial == Some("true") && rv.is_none() {
        opts = opts.with_initial_events_end();
    }
    if !sel.is_everything() {
        let fsel = sel.clone();
        opts = opts.with_filter(move |ev: &CacheEvent| {
            // An unreadable object passes: the watcher gets an ERROR event naming its key.
            let matches = |kv, rv| decode(kv, rv).map_or(true, |o| fsel.matches(&o));
            matches(&ev.kv, ev.revision)
                || ev.prev.as_ref().is_some_and(|p| matches(p, p.mod_revision))
        });
    }
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + Duration::from_secs(t));
    let mut st = Stream {
        watch: None,
        pending: None,
        deadline,
        r,
        sel,
        table,
        first: true,
        clock: state.clock.clone(),
    };
    match cache.watch(opts).await {
        Ok(w) => st.watch = Some(w),
        Err(e @ WatchCacheError::TooOld { .. }) => {
            st.pending = Some(error_event(&storage::cache_error(e)));
        }
        Err(e) => return Err(storage::cache_error(e)),
    }
    let stop = state.shutdown.clone();
    let stream = futures::stream::unfold(st, move |mut st| {
        let mut stop = stop.clone();
        async move {
            loop {
                if let Some(ev) = st.pending.take() {
                    return Some((Ok::<_, std::convert::Infallible>(line(&ev)), st));
                }
                let w = st.watch.as_mut()?;
                let next = tokio::select! {
                    // Shutting down: end the watch so the connection can close.
                    _ = stop.wait_for(|s| *s) => return None,
                    next = async {
                        match st.deadline {
                            Some(d) => tokio::time::timeout_at(d, w.next()).await.ok(),
                            None => Some(w.next().await),
                        }
                    } => next?,
                };
                match next? {
                    Err(e) => {
                        st.watch = None;
                        if matches!(e, WatchCacheError::TooOld { .. }) {
                            st.pending = Some(error_event(&storage::cache_error(e)));
                        }
                    }
                    Ok(item) => {
                        if let Some(line) = st.convert(item) {
                            return Some((Ok(line), st));
                        }
                    }
                }
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn line(ev: &Value) -> Bytes {
    let mut b = serde_json::to_vec(ev).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn error_event(err: &ApiError) -> Value {
    json!({"type": "ERROR", "object": err.to_status_json()})
}

impl Stream {
    fn bookmark(&self, rv: i64, initial_end: bool) -> Value {
        let mut md = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"type": "BOOKMARK", "object": {
            "kind": self.r.kind,
            "apiVersion": self.r.api_version(),
            "metadata": md,
        }})
    }

    /// The event line for `item`, if this watcher gets one.
    fn convert(&mut self, item: WatchItem) -> Option<Bytes> {
        let ev = match item {
            WatchItem::Bookmark(rv) => return Some(line(&self.bookmark(rv, false))),
            WatchItem::InitialEventsEnd(rv) => return Some(line(&self.bookmark(rv, true))),
            WatchItem::Event(ev) => ev,
        };
        if !self.table && self.sel.is_everything() {
            // The common case (informers): the line is written from the stored bytes.
            let kind: &[u8] = match ev.kind {
                CacheEventKind::Added => b"ADDED",
                CacheEventKind::Modified => b"MODIFIED",
                CacheEventKind::Deleted => b"DELETED",
            };
            if let Err(e) = storage::check_readable(&ev.kv) {
                return Some(line(&error_event(&e)));
            }
            let mut out = Vec::with_capacity(ev.kv.value.len() + 96);
            out.extend_from_slice(b"{\"type\":\"");
            out.extend_from_slice(kind);
            out.extend_from_slice(b"\",\"object\":");
            storage::write_object(&mut out, &ev.kv.value, ev.revision);
            out.extend_from_slice(b"}\n");
            return Some(Bytes::from(out));
        }
        let cur = match decode(&ev.kv, ev.revision) {
            Ok(cur) => cur,
            Err(e) => return Some(line(&error_event(&e))),
        };
        let prev = ev.prev.as_ref().and_then(|p| decode(p, ev.revision).ok());
        let cur_ok = self.sel.matches(&cur);
        let prev_ok = prev.as_ref().is_some_and(|p| self.sel.matches(p));
        let (kind, obj) = match ev.kind {
            CacheEventKind::Added if cur_ok => ("ADDED", cur),
            CacheEventKind::Modified if cur_ok && prev_ok => ("MODIFIED", cur),
            CacheEventKind::Modified if cur_ok => ("ADDED", cur),
            CacheEventKind::Modified if prev_ok => ("DELETED", prev.unwrap_or(cur)),
            CacheEventKind::Deleted if cur_ok || prev_ok => ("DELETED", cur),
            _ => return None,
        };
        let obj = if self.table {
            let mut o = TableOptions::at(self.clock.unix_seconds());
            o.no_headers = !self.first;
            o.resource_version = Some(ev.revision.to_string());
            self.first = false;
            table_for(self.r, &[&obj], &o)
        } else {
            obj
        };
        Some(line(&json!({"type": kind, "object": obj})))
    }
}
