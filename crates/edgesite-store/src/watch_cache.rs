//! The watch cache: one store watch per key prefix feeding every client list and watch, as
//! kube-apiserver's "cacher" does, so that a thousand watchers of pods cost the store one watch
//! and a list of pods costs it nothing.
//!
//! A [`WatchCache`] lists its prefix once, then follows one store watch from the list revision
//! on (with `prev_kv` and progress notifications). It keeps:
//!
//! - the current state of every key under the prefix (values are opaque bytes; the API server
//!   decodes them);
//! - a ring buffer of recent events, bounded by [`WatchCacheConfig::max_events`] and
//!   [`WatchCacheConfig::max_age`], from which watches that resume at a recent revision are
//!   replayed and paginated lists are served at a fixed revision;
//! - the cache's revision ([`WatchCache::revision`]): every change under the prefix up to it is
//!   in the cache. Progress notifications of the store advance it when the prefix is idle.
//!
//! How the Kubernetes semantics map onto it (see `reference/k8s-api-compat.md` §2):
//!
//! | request | call |
//! |---|---|
//! | list, `resourceVersion` unset or `"0"` | [`WatchCache::list`] |
//! | list, `resourceVersionMatch=NotOlderThan` | [`WatchCache::list_at_least`] |
//! | list, `resourceVersionMatch=Exact` | [`WatchCache::list_exact`]; on [`WatchCacheError::NeedsStore`] read the store at that revision |
//! | list with `continue` | [`WatchCache::list`] with [`ListOptions::continue_token`] (expired → [`WatchCacheError::Expired`], 410) |
//! | watch, `resourceVersion` unset or `"0"` | [`WatchCache::watch`] with `from: None` (synthetic ADDEDs, then live) |
//! | watch, `resourceVersion=N` | [`WatchCache::watch`] with `from: Some(N)`; [`WatchCacheError::TooOld`] becomes the 410 `ERROR` event |
//!
//! Memory is bounded: the ring buffer by its two limits, each watcher's queue by
//! [`WatchCacheConfig::watcher_queue`]. A watcher that cannot keep up is ended with
//! [`WatchCacheError::Lagged`] instead of being buffered for without bound; its client re-watches
//! (from its last revision, replayed from the ring if still there) or relists, as it would with
//! kube-apiserver. Objects and events share their key-values through [`Arc`]s, so a replay or
//! an initial snapshot copies pointers, not values.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use edgesite_clock::{Clock, SystemClock};
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::{
    Error as StoreError, EventType, KeyRange, KeyValue, RangeRequest, Revision, Store,
    WatchRequest, WatchResponse, WatchStream,
};

/// Everything the watch cache can fail with. Each variant maps onto one Kubernetes answer,
/// noted on it.
#[derive(Debug, thiserror::Error)]
pub enum WatchCacheError {
    /// A watch asked to resume from a revision older than the cache's window (or the cache
    /// had to relist past the watcher's position). Kubernetes: HTTP 200 and one `ERROR` event
    /// with `Status{code: 410, reason: "Expired"}`; the client relists.
    #[error("too old resource version: {requested} ({oldest})")]
    TooOld {
        /// The revision the watch asked for (or had reached).
        requested: Revision,
        /// The oldest revision the cache can resume from now.
        oldest: Revision,
    },
    /// A continue token's revision has left the cache's window. Kubernetes: 410 `Expired`.
    #[error(
        "the provided continue parameter is too old to display a consistent list result ({requested} < {oldest}); start a new list without continue"
    )]
    Expired {
        /// The revision of the list being continued.
        requested: Revision,
        /// The oldest revision the cache can serve.
        oldest: Revision,
    },
    /// An exact-revision read older than the cache's window: the cache cannot serve it, read
    /// the store at that revision instead (which answers `Compacted`, i.e. 410, if it is gone
    /// there too).
    #[error(
        "revision {requested} is older than the watch cache's window ({oldest}); read the store"
    )]
    NeedsStore {
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision the cache can serve.
        oldest: Revision,
    },
    /// The watcher's queue filled up: it was ended so that it cannot hold memory without
    /// bound. Kubernetes: the watch closes; the client re-watches from its last revision.
    #[error("watcher fell behind by more than {capacity} events and was stopped")]
    Lagged {
        /// The watcher's queue capacity.
        capacity: usize,
    },
    /// The cache did not reach a requested revision within
    /// [`WatchCacheConfig::wait_timeout`]. Kubernetes: 504 `Timeout` ("Too large resource
    /// version"), with `Retry-After: 1`.
    #[error("too large resource version: {requested}, current: {current}")]
    NotCaughtUp {
        /// The revision asked for.
        requested: Revision,
        /// The cache's revision when it gave up waiting.
        current: Revision,
    },
    /// A continue token that this cache did not issue or that does not fit the request.
    /// Kubernetes: 400 `BadRequest`.
    #[error("invalid continue token: {0}")]
    InvalidContinue(String),
    /// A request outside the cache's prefix. Kubernetes: a server bug (500).
    #[error("invalid watch cache request: {0}")]
    InvalidRequest(String),
    /// The cache was shut down. Kubernetes: the watch closes; the client retries.
    #[error("watch cache closed")]
    Closed,
    /// The store failed (only while starting; later failures are retried by the cache).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Result of watch cache operations.
pub type Result<T, E = WatchCacheError> = std::result::Result<T, E>;

/// Limits and timings of a [`WatchCache`].
#[derive(Debug, Clone)]
pub struct WatchCacheConfig {
    /// Events kept for resuming watches and continuing lists. kube-apiserver keeps 100 to
    /// ~100 000 depending on load; every event only holds pointers to key-values most of which
    /// the current state shares, so a generous count is cheap.
    pub max_events: usize,
    /// Events older than this are dropped even below `max_events`, so that an idle cache does
    /// not pin old values for ever. Five minutes matches the store's default compaction.
    pub max_age: Duration,
    /// Capacity of each watcher's queue of live events; a watcher whose queue is full is
    /// ended with [`WatchCacheError::Lagged`].
    pub watcher_queue: usize,
    /// How often watchers that asked for bookmarks get one.
    pub bookmark_interval: Duration,
    /// How long a request for a revision the cache has not reached waits before
    /// [`WatchCacheError::NotCaughtUp`] (kube-apiserver waits 3 s).
    pub wait_timeout: Duration,
    /// Longest pause between attempts to re-establish the store watch while the store fails.
    pub max_retry_backoff: Duration,
    /// Where event ages (for `max_age`) and bookmark timing read the time. The cache still
    /// wakes on a tokio timer (at most a second apart) to look at it.
    pub clock: Arc<dyn Clock>,
}

impl WatchCacheConfig {
    /// Sets the clock (tests: a `ManualClock`).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

impl Default for WatchCacheConfig {
    fn default() -> Self {
        Self {
            max_events: 10_000,
            max_age: Duration::from_secs(300),
            watcher_queue: 1_000,
            bookmark_interval: Duration::from_secs(30),
            wait_timeout: Duration::from_secs(3),
            max_retry_backoff: Duration::from_secs(5),
            clock: Arc::new(SystemClock),
        }
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheEventKind {
    /// Created (or, in the initial events of a watch, present).
    Added,
    /// Updated.
    Modified,
    /// Deleted.
    Deleted,
}

/// One change under the cache's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEvent {
    /// Added, modified or deleted.
    pub kind: CacheEventKind,
    /// The key-value after the change; for [`CacheEventKind::Deleted`], the last one before
    /// the deletion (whose `mod_revision` is that of its last write: report
    /// [`CacheEvent::revision`] as the object's resourceVersion, as Kubernetes does for
    /// DELETED events).
    pub kv: Arc<KeyValue>,
    /// The key-value before the change (none for [`CacheEventKind::Added`]), so that the API
    /// server can turn selector transitions into ADDED/DELETED as kube-apiserver does.
    pub prev: Option<Arc<KeyValue>>,
    /// The revision of the change (for initial events: the object's `mod_revision`).
    pub revision: Revision,
}

impl CacheEvent {
    /// The key.
    pub fn key(&self) -> &[u8] {
        &self.kv.key
    }
}

/// One item of a [`CacheWatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// A change (or an initial object).
    Event(CacheEvent),
    /// Every change up to this revision has been delivered (asked for with
    /// [`WatchOptions::bookmarks`]).
    Bookmark(Revision),
    /// The initial events of a `from: None` watch are done; they were the state at this
    /// revision (asked for with [`WatchOptions::initial_events_end`]; the API server sends it
    /// as the BOOKMARK annotated `k8s.io/initial-events-end`).
    InitialEventsEnd(Revision),
}

/// A predicate on events, evaluated in the cache before queueing, so that events a watcher
/// does not want neither cost it queue space nor make it lag.
pub type EventFilter = Arc<dyn Fn(&CacheEvent) -> bool + Send + Sync>;

/// What to watch.
#[derive(Clone, Default)]
pub struct WatchOptions {
    /// `None`: synthetic [`CacheEventKind::Added`] events for every current object, then live
    /// changes (resourceVersion unset or `"0"`). `Some(r)`: every change with revision > `r`,
    /// then live ones.
    pub from: Option<Revision>,
    /// Only keys under this prefix (a full key prefix, e.g. `/registry/core/pods/default/`;
    /// it must lie under the cache's prefix). `None`: the whole cache.
    pub key_prefix: Option<Vec<u8>>,
    /// Only events this accepts.
    pub filter: Option<EventFilter>,
    /// Yield a [`WatchItem::Bookmark`] every [`WatchCacheConfig::bookmark_interval`].
    pub bookmarks: bool,
    /// After the initial events of a `from: None` watch, yield [`WatchItem::InitialEventsEnd`].
    pub initial_events_end: bool,
}

impl std::fmt::Debug for WatchOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchOptions")
            .field("from", &self.from)
            .field(
                "key_prefix",
                &self.key_prefix.as_deref().map(String::from_utf8_lossy),
            )
            .field("filter", &self.filter.is_some())
            .field("bookmarks", &self.bookmarks)
            .field("initial_events_end", &self.initial_events_end)
            .finish()
    }
}

impl WatchOptions {
    /// Initial events for the current state, then live changes.
    pub fn initial() -> Self {
        Self::default()
    }

    /// Changes after revision `r`.
    pub fn from_revision(r: Revision) -> Self {
        Self {
            from: Some(r),
            ..Self::default()
        }
    }

    /// Only keys under `prefix`.
    pub fn under(mut self, prefix: impl Into<Vec<u8>>) -> Self {
        self.key_prefix = Some(prefix.into());
        self
    }

    /// Only events `filter` accepts.
    pub fn with_filter(
        mut self,
        filter: impl Fn(&CacheEvent) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.filter = Some(Arc::new(filter));
        self
    }

    /// Periodic bookmarks.
    pub fn with_bookmarks(mut self) -> Self {
        self.bookmarks = true;
        self
    }

    /// A marker after the initial events.
    pub fn with_initial_events_end(mut self) -> Self {
        self.initial_events_end = true;
        self
    }
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Only keys under this full key prefix (under the cache's prefix); `None`: all.
    pub key_prefix: Option<Vec<u8>>,
    /// At most this many items (0: no limit).
    pub limit: usize,
    /// Continue a previous list: the page after it, at the same revision.
    pub continue_token: Option<String>,
}

/// A page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedList {
    /// The key-values, in key order.
    pub items: Vec<Arc<KeyValue>>,
    /// The revision the whole list (every page of it) is consistent at: the list's
    /// resourceVersion.
    pub revision: Revision,
    /// Token for the next page, when `limit` cut this one short.
    pub continue_token: Option<String>,
}

/// Figures about a cache, for metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchCacheStats {
    /// The cache's revision.
    pub revision: Revision,
    /// The oldest revision a watch can resume from.
    pub oldest: Revision,
    /// Objects held.
    pub objects: usize,
    /// Events in the ring buffer.
    pub events: usize,
    /// Live watchers.
    pub watchers: usize,
    /// Relists after the store watch failed (not counting the first list).
    pub relists: u64,
}

/// The watch cache of one key prefix. Share it in an [`Arc`]; dropping it stops the store
/// watch and ends every watcher with [`WatchCacheError::Closed`].
#[derive(Debug)]
pub struct WatchCache {
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    prefix: Vec<u8>,
    config: WatchCacheConfig,
    state: Mutex<State>,
    /// The cache's revision, for waiters (`list_at_least`, watches from a future revision).
    revision_tx: watch::Sender<Revision>,
}

#[derive(Debug)]
struct State {
    revision: Revision,
    /// A watch from `r >= oldest` can be served from the ring buffer: it holds every event
    /// with a revision above `oldest`.
    oldest: Revision,
    objects: BTreeMap<Vec<u8>, Arc<KeyValue>>,
    events: VecDeque<(CacheEvent, Instant)>,
    watchers: HashMap<u64, Watcher>,
    next_watcher: u64,
    relists: u64,
    closed: bool,
}

type Terminal = Arc<Mutex<Option<WatchCacheError>>>;

struct Watcher {
    tx: mpsc::Sender<WatchItem>,
    key_prefix: Vec<u8>,
    filter: Option<EventFilter>,
    bookmarks: bool,
    /// Why the watch ended, set before its sender is dropped so that the receiver, once it
    /// has drained what was queued, finds it.
    terminal: Terminal,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("key_prefix", &String::from_utf8_lossy(&self.key_prefix))
            .field("bookmarks", &self.bookmarks)
            .finish_non_exhaustive()
    }
}

impl Watcher {
    fn wants(&self, ev: &CacheEvent) -> bool {
        ev.key().starts_with(&self.key_prefix) && self.filter.as_ref().is_none_or(|f| f(ev))
    }

    fn end(self, err: WatchCacheError) {
        *lock(&self.terminal) = Some(err);
        // Dropping `self.tx` closes the queue.
    }
}

/// Locks a mutex, ignoring poisoning: the state is updated in place by code that does not
/// panic midway, and a cache that stopped serving after one panic would be worse.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl WatchCache {
    /// Lists `prefix` and starts following it with one store watch from the list's revision
    /// on. Fails only if that first list or watch fails; later store failures are retried.
    pub async fn start(
        store: Arc<dyn Store>,
        prefix: Vec<u8>,
        config: WatchCacheConfig,
    ) -> Result<WatchCache> {
        let resp = store
            .range(RangeRequest::new(KeyRange::Prefix(prefix.clone())))
            .await?;
        let revision = resp.revision;
        let objects = resp
            .kvs
            .into_iter()
            .map(|kv| (kv.key.clone(), Arc::new(kv)))
            .collect::<BTreeMap<_, _>>();
        let stream = store.watch(store_watch_request(&prefix, revision)).await?;
        tracing::info!(
            prefix = %String::from_utf8_lossy(&prefix),
            revision,
            objects = objects.len(),
            "watch cache started"
        );
        let (revision_tx, _) = watch::channel(revision);
        let inner = Arc::new(Inner {
            store,
            prefix,
            config,
            state: Mutex::new(State {
                revision,
                oldest: revision,
                objects,
                events: VecDeque::new(),
                watchers: HashMap::new(),
                next_watcher: 0,
                relists: 0,
                closed: false,
            }),
            revision_tx,
        });
        let task = tokio::spawn(run(inner.clone(), stream));
        Ok(WatchCache { inner, task })
    }

    /// The prefix this cache follows.
    pub fn prefix(&self) -> &[u8] {
        &self.inner.prefix
    }

    /// The cache's revision: every change under the prefix up to it is in the cache.
    pub fn revision(&self) -> Revision {
        lock(&self.inner.state).revision
    }

    /// Figures about the cache.
    pub fn stats(&self) -> WatchCacheStats {
        let st = lock(&self.inner.state);
        WatchCacheStats {
            revision: st.revision,
            oldest: st.oldest,
            objects: st.objects.len(),
            events: st.events.len(),
            watchers: st.watchers.len(),
            relists: st.relists,
        }
    }

    /// Follows a compaction of the store at `revision`: the cache forgets the events at and
    /// below it, so a watch or a continued list from a revision the store no longer has gets
    /// [`WatchCacheError::TooOld`] / [`WatchCacheError::Expired`] (the client relists), as it
    /// would against the store itself. Live watches are not disturbed. Returns the events
    /// dropped.
    pub fn compacted(&self, revision: Revision) -> usize {
        let mut st = lock(&self.inner.state);
        let revision = revision.min(st.revision);
        let before = st.events.len();
        while st
            .events
            .front()
            .is_some_and(|(ev, _)| ev.revision <= revision)
        {
            st.events.pop_front();
        }
        st.oldest = st.oldest.max(revision);
        before - st.events.len()
    }

    /// A page of the current state (resourceVersion unset or `"0"`), or, with a continue
    /// token, the next page at the token's revision: pages of one list are consistent with
    /// each other for as long as the token's revision is in the cache's window, and fail with
    /// [`WatchCacheError::Expired`] after (kube-apiserver answers continues from etcd at the
    /// same revision and gives 410 once it is compacted; this is the same contract with the
    /// cache's window in place of etcd's history).
    pub async fn list(&self, opts: &ListOptions) -> Result<CachedList> {
        self.list_at(None, opts).await
    }

    /// Like [`WatchCache::list`], but first waits (at most
    /// [`WatchCacheConfig::wait_timeout`]) until the cache has reached `revision`
    /// (`resourceVersionMatch=NotOlderThan`).
    pub async fn list_at_least(
        &self,
        revision: Revision,
        opts: &ListOptions,
    ) -> Result<CachedList> {
        self.wait_for(revision).await?;
        self.list_at(None, opts).await
    }

    /// The state at exactly `revision` (`resourceVersionMatch=Exact`), served from the ring
    /// buffer when the revision is in the window, after waiting for the cache to reach it if
    /// it is ahead. Older than the window: [`WatchCacheError::NeedsStore`] — the caller must
    /// read the store at that revision, the cache cannot serve it.
    pub async fn list_exact(&self, revision: Revision, opts: &ListOptions) -> Result<CachedList> {
        self.list_at(Some(revision), opts).await
    }

    /// Whether an exact read at `revision` needs the store (it is older than the window).
    pub fn needs_store(&self, revision: Revision) -> bool {
        revision < lock(&self.inner.state).oldest
    }

    async fn list_at(&self, exact: Option<Revision>, opts: &ListOptions) -> Result<CachedList> {
        let key_prefix = self.inner.key_prefix(opts.key_prefix.as_deref())?;
        let token = opts
            .continue_token
            .as_deref()
            .map(decode_continue)
            .transpose()?;
        if let Some((_, last)) = &token
            && !last.starts_with(&key_prefix)
        {
            return Err(WatchCacheError::InvalidContinue(
                "the token belongs to a list of other keys".into(),
            ));
        }
        // The token's revision governs a continued list; a token from another server may be
        // ahead of this cache, which then waits as for any revision it has not reached.
        let at = token.as_ref().map(|(rev, _)| *rev).or(exact);
        if let Some(at) = at {
            self.wait_for(at).await?;
        }
        let st = lock(&self.inner.state);
        let at = at.unwrap_or(st.revision);
        if at < st.oldest {
            return Err(match token {
                Some(_) => WatchCacheError::Expired {
                    requested: at,
                    oldest: st.oldest,
                },
                None => WatchCacheError::NeedsStore {
                    requested: at,
                    oldest: st.oldest,
                },
            });
        }
        let after = token.as_ref().map(|(_, last)| last.as_slice());
        let (items, more) = page(&st, at, &key_prefix, after, opts.limit);
        let continue_token = more
            .then(|| items.last().map(|kv| encode_continue(at, &kv.key)))
            .flatten();
        Ok(CachedList {
            items,
            revision: at,
            continue_token,
        })
    }

    /// Watches the cache. `from: Some(r)` with `r` older than the window fails with
    /// [`WatchCacheError::TooOld`]; `r` ahead of the cache waits for it (at most
    /// [`WatchCacheConfig::wait_timeout`], then [`WatchCacheError::NotCaughtUp`]).
    ///
    /// The replay (or the initial objects) and the registration for live events happen in
    /// one critical section with the event feed, so the watch has neither a gap nor a
    /// duplicate at the seam.
    pub async fn watch(&self, opts: WatchOptions) -> Result<CacheWatch> {
        let key_prefix = self.inner.key_prefix(opts.key_prefix.as_deref())?;
        if let Some(from) = opts.from {
            self.wait_for(from).await?;
        }
        let capacity = self.inner.config.watcher_queue.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let terminal: Terminal = Arc::default();
        let watcher = Watcher {
            tx,
            key_prefix,
            filter: opts.filter,
            bookmarks: opts.bookmarks,
            terminal: terminal.clone(),
        };
        let mut st = lock(&self.inner.state);
        if st.closed {
            return Err(WatchCacheError::Closed);
        }
        let mut pending = VecDeque::new();
        match opts.from {
            None => {
                let range = st
                    .objects
                    .range::<[u8], _>((
                        Bound::Included(watcher.key_prefix.as_slice()),
                        Bound::Unbounded,
                    ))
                    .take_while(|(k, _)| k.starts_with(&watcher.key_prefix));
                for kv in range.map(|(_, kv)| kv) {
                    let ev = CacheEvent {
                        kind: CacheEventKind::Added,
                        kv: kv.clone(),
                        prev: None,
                        revision: kv.mod_revision,
                    };
                    if watcher.wants(&ev) {
                        pending.push_back(WatchItem::Event(ev));
                    }
                }
                if opts.initial_events_end {
                    pending.push_back(WatchItem::InitialEventsEnd(st.revision));
                }
            }
            Some(from) => {
                if from < st.oldest {
                    return Err(WatchCacheError::TooOld {
                        requested: from,
                        oldest: st.oldest,
                    });
                }
                // Events are in revision order: skip to the first one after `from`.
                let start = st.events.partition_point(|(ev, _)| ev.revision <= from);
                pending.extend(
                    st.events
                        .range(start..)
                        .filter(|(ev, _)| watcher.wants(ev))
                        .map(|(ev, _)| WatchItem::Event(ev.clone())),
                );
            }
        }
        let id = st.next_watcher;
        st.next_watcher += 1;
        st.watchers.insert(id, watcher);
        let start_revision = st.revision;
        tracing::debug!(
            id,
            from = ?opts.from,
            replayed = pending.len(),
            start_revision,
            "cache watch started"
        );
        Ok(CacheWatch {
            pending,
            rx,
            terminal,
            done: false,
            id,
            start_revision,
            cache: Arc::downgrade(&self.inner),
        })
    }

    /// Waits until the cache has reached `revision`, at most the configured timeout.
    async fn wait_for(&self, revision: Revision) -> Result<()> {
        let mut rx = self.inner.revision_tx.subscribe();
        let waited = tokio::time::timeout(
            self.inner.config.wait_timeout,
            rx.wait_for(|r| *r >= revision),
        )
        .await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(WatchCacheError::Closed),
            Err(_) => Err(WatchCacheError::NotCaughtUp {
                requested: revision,
                current: *self.inner.revision_tx.borrow(),
            }),
        }
    }
}

impl Drop for WatchCache {
    fn drop(&mut self) {
        self.task.abort();
        let mut st = lock(&self.inner.state);
        st.closed = true;
        for (_, w) in st.watchers.drain() {
            w.end(WatchCacheError::Closed);
        }
    }
}

impl Inner {
    /// The full key prefix of a request, checked to lie under the cache's prefix.
    fn key_prefix(&self, sub: Option<&[u8]>) -> Result<Vec<u8>> {
        match sub {
            None => Ok(self.prefix.clone()),
            Some(p) if p.starts_with(&self.prefix) => Ok(p.to_vec()),
            Some(p) => Err(WatchCacheError::InvalidRequest(format!(
                "key prefix {:?} is not under the cache's prefix {:?}",
                String::from_utf8_lossy(p),
                String::from_utf8_lossy(&self.prefix)
            ))),
        }
    }

    fn set_revision(&self, st: &mut State, revision: Revision) {
        if revision > st.revision {
            st.revision = revision;
            self.revision_tx.send_replace(revision);
        }
    }

    /// Applies one store watch response: state, ring buffer, fan-out to watchers.
    fn apply(&self, resp: WatchResponse) {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        if resp.events.is_empty() {
            // A progress notification: nothing under the prefix changed up to it.
            self.set_revision(st, resp.revision);
            return;
        }
        // Events of one transaction share a revision, so duplicates are told by comparing
        // with the revision before this response, not with the previous event.
        let base = st.revision;
        let mut last = base;
        let now = self.config.clock.instant();
        for ev in resp.events {
            let revision = ev.kv.mod_revision;
            if revision <= base || !ev.kv.key.starts_with(&self.prefix) {
                tracing::warn!(
                    revision,
                    base,
                    "watch cache skipped an unexpected store event"
                );
                continue;
            }
            last = revision;
            let old = st.objects.get(&ev.kv.key).cloned();
            let cev = match ev.kind {
                EventType::Put => {
                    let kv = Arc::new(ev.kv);
                    st.objects.insert(kv.key.clone(), kv.clone());
                    CacheEvent {
                        // The cache's own state says whether the key existed; it is exact,
                        // where create_revision == mod_revision would need prev_kv to agree.
                        kind: if old.is_some() {
                            CacheEventKind::Modified
                        } else {
                            CacheEventKind::Added
                        },
                        kv,
                        prev: old,
                        revision,
                    }
                }
                EventType::Delete => {
                    st.objects.remove(&ev.kv.key);
                    let Some(last_kv) = old.or_else(|| ev.prev_kv.map(Arc::new)) else {
                        // Deleting a key the cache never had: nothing to report.
                        continue;
                    };
                    CacheEvent {
                        kind: CacheEventKind::Deleted,
                        kv: last_kv.clone(),
                        prev: Some(last_kv),
                        revision,
                    }
                }
            };
            st.watchers.retain(|id, w| {
                if !w.wants(&cev) {
                    return true;
                }
                match w.tx.try_send(WatchItem::Event(cev.clone())) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::info!(id, revision, "cache watcher lagged; stopping it");
                        *lock(&w.terminal) = Some(WatchCacheError::Lagged {
                            capacity: w.tx.max_capacity(),
                        });
                        false
                    }
                }
            });
            st.events.push_back((cev, now));
        }
        self.evict(st, now);
        self.set_revision(st, last);
    }

    /// Drops events beyond the ring buffer's limits, moving the window's start past them.
    fn evict(&self, st: &mut State, now: Instant) {
        while let Some((ev, at)) = st.events.front() {
            let too_many = st.events.len() > self.config.max_events;
            let too_old = now.saturating_duration_since(*at) > self.config.max_age;
            if !(too_many || too_old) {
                break;
            }
            st.oldest = st.oldest.max(ev.revision);
            st.events.pop_front();
        }
    }

    /// Periodic work: age-based eviction and bookmarks.
    fn tick(&self, bookmarks: bool) {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        self.evict(st, self.config.clock.instant());
        if bookmarks {
            let revision = st.revision;
            for w in st.watchers.values().filter(|w| w.bookmarks) {
                // A bookmark only says how far the watcher is; a full queue skips it rather
                // than counting as lag.
                let _ = w.tx.try_send(WatchItem::Bookmark(revision));
            }
        }
    }

    /// Re-establishes the store watch after it ended with `err`. A transient failure resumes
    /// from the cache's revision, so no watcher notices; `Compacted` (the store no longer has
    /// the events after the cache's revision) relists once and watches from the new list's
    /// revision. Each compaction causes one relist; failures to reach the store are retried
    /// with backoff, never by relisting.
    async fn recover(&self, mut err: StoreError) -> WatchStream {
        let mut backoff = Duration::from_millis(100);
        loop {
            let from = if matches!(err, StoreError::Compacted { .. }) {
                tracing::warn!(
                    prefix = %String::from_utf8_lossy(&self.prefix),
                    error = %err,
                    "watch cache relisting: the store compacted past it"
                );
                match self.relist().await {
                    Ok(revision) => revision,
                    Err(e) => {
                        tracing::warn!(error = %e, "watch cache relist failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.config.max_retry_backoff);
                        continue;
                    }
                }
            } else {
                tracing::warn!(
                    prefix = %String::from_utf8_lossy(&self.prefix),
                    error = %err,
                    "watch cache's store watch failed; resuming it"
                );
                lock(&self.state).revision
            };
            match self
                .store
                .watch(store_watch_request(&self.prefix, from))
                .await
            {
                Ok(stream) => return stream,
                Err(e) => {
                    if !matches!(e, StoreError::Compacted { .. }) {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.config.max_retry_backoff);
                    }
                    err = e;
                }
            }
        }
    }

    /// Replaces the state with a fresh list. Watchers can only go on if the store has not
    /// moved since the cache's revision (then nothing can have been missed); otherwise the
    /// events in between are gone, so every watcher ends with [`WatchCacheError::TooOld`] and
    /// its client relists, as kube-apiserver's cacher ends all watchers when it relists. The
    /// ring buffer is emptied for the same reason, which also expires continue tokens.
    async fn relist(&self) -> crate::Result<Revision> {
        let resp = self
            .store
            .range(RangeRequest::new(KeyRange::Prefix(self.prefix.clone())))
            .await?;
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        st.relists += 1;
        let revision = resp.revision;
        if revision == st.revision {
            tracing::info!(revision, "watch cache relisted; nothing changed");
            return Ok(revision);
        }
        let previous = st.revision;
        st.objects = resp
            .kvs
            .into_iter()
            .map(|kv| (kv.key.clone(), Arc::new(kv)))
            .collect();
        st.events.clear();
        st.oldest = revision;
        let ended = st.watchers.len();
        for (_, w) in st.watchers.drain() {
            w.end(WatchCacheError::TooOld {
                requested: previous,
                oldest: revision,
            });
        }
        tracing::info!(
            previous,
            revision,
            objects = st.objects.len(),
            watchers_ended = ended,
            "watch cache relisted"
        );
        // Set, not raised: a store restored from a backup may be behind; the cache follows it.
        st.revision = revision;
        self.revision_tx.send_replace(revision);
        Ok(revision)
    }
}

/// The store watch the cache follows: from just after `revision`, with previous values (a
/// DELETED event carries the last state) and progress notifications (they advance the cache's
/// revision while the prefix is idle, which bookmarks and `list_at_least` rely on).
fn store_watch_request(prefix: &[u8], revision: Revision) -> WatchRequest {
    WatchRequest::new(KeyRange::Prefix(prefix.to_vec()))
        .from_revision(revision + 1)
        .with_prev_kv()
        .with_progress_notify()
}

/// The cache's task: follows the store watch and does the periodic work.
async fn run(inner: Arc<Inner>, mut stream: WatchStream) {
    let period = inner
        .config
        .bookmark_interval
        .min(Duration::from_secs(1))
        .max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let clock = inner.config.clock.clone();
    let mut last_bookmark = clock.instant();
    loop {
        tokio::select! {
            item = stream.next() => match item {
                Some(Ok(resp)) => inner.apply(resp),
                Some(Err(e)) => stream = inner.recover(e).await,
                None => stream = inner.recover(StoreError::Closed).await,
            },
            _ = ticker.tick() => {
                let now = clock.instant();
                let due = now.saturating_duration_since(last_bookmark) >= inner.config.bookmark_interval;
                if due {
                    last_bookmark = now;
                }
                inner.tick(due);
            }
        }
    }
}

/// One page of the state at revision `at` (in the window), of keys under `key_prefix` after
/// `after`. For a past revision the events after it are undone on the fly: each key they touch
/// takes the value before the oldest of them. Returns the items and whether more follow.
fn page(
    st: &State,
    at: Revision,
    key_prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
) -> (Vec<Arc<KeyValue>>, bool) {
    let lower = match after {
        Some(k) => Bound::Excluded(k),
        None => Bound::Included(key_prefix),
    };
    let in_page = |k: &[u8]| k.starts_with(key_prefix) && after.is_none_or(|a| k > a);
    let mut overlay: BTreeMap<&[u8], Option<&Arc<KeyValue>>> = BTreeMap::new();
    if at < st.revision {
        for (ev, _) in st
            .events
            .iter()
            .rev()
            .take_while(|(ev, _)| ev.revision > at)
        {
            if in_page(ev.key()) {
                let before = match ev.kind {
                    CacheEventKind::Added => None,
                    CacheEventKind::Modified | CacheEventKind::Deleted => ev.prev.as_ref(),
                };
                overlay.insert(ev.key(), before);
            }
        }
    }
    let mut current = st
        .objects
        .range::<[u8], _>((lower, Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(key_prefix))
        .peekable();
    let mut undone = overlay.into_iter().peekable();
    let mut items = Vec::new();
    loop {
        let next = match (current.peek(), undone.peek()) {
            (None, None) => break,
            (Some((k, _)), Some((u, _))) if k.as_slice() == *u => {
                current.next();
                undone.next().and_then(|(_, kv)| kv)
            }
            (Some((k, _)), Some((u, _))) if k.as_slice() > *u => {
                undone.next().and_then(|(_, kv)| kv)
            }
            (Some(_), _) => current.next().map(|(_, kv)| kv),
            (None, Some(_)) => undone.next().and_then(|(_, kv)| kv),
        };
        if let Some(kv) = next {
            if limit > 0 && items.len() == limit {
                return (items, true);
            }
            items.push(kv.clone());
        }
    }
    (items, false)
}

/// Continue tokens: `wc1.<revision>.<hex of the last key>`. Opaque to clients; versioned so a
/// later format can tell old tokens apart.
fn encode_continue(revision: Revision, last_key: &[u8]) -> String {
    let mut s = format!("wc1.{revision}.");
    for b in last_key {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn decode_continue(token: &str) -> Result<(Revision, Vec<u8>)> {
    let bad = |why: &str| WatchCacheError::InvalidContinue(why.to_string());
    let rest = token
        .strip_prefix("wc1.")
        .ok_or_else(|| bad("unknown format"))?;
    let (rev, key) = rest.split_once('.').ok_or_else(|| bad("malformed"))?;
    let rev: Revision = rev.parse().map_err(|_| bad("malformed revision"))?;
    if rev <= 0 || key.len() % 2 != 0 {
        return Err(bad("malformed"));
    }
    let key = (0..key.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&key[i..i + 2], 16))
        .collect::<std::result::Result<Vec<u8>, _>>()
        .map_err(|_| bad("malformed key"))?;
    Ok((rev, key))
}

/// A watch of a [`WatchCache`]: a stream of [`WatchItem`]s that ends with an `Err` when the
/// watch is stopped ([`WatchCacheError::Lagged`], [`WatchCacheError::TooOld`] after a relist,
/// [`WatchCacheError::Closed`]); after that error it yields nothing more. Dropping it
/// unregisters it.
#[derive(Debug)]
pub struct CacheWatch {
    /// The replay or initial events, held here rather than in the bounded queue: their number
    /// is bounded by the ring buffer or the state, which the cache holds anyway (as pointers).
    pending: VecDeque<WatchItem>,
    rx: mpsc::Receiver<WatchItem>,
    terminal: Terminal,
    done: bool,
    id: u64,
    start_revision: Revision,
    cache: Weak<Inner>,
}

impl CacheWatch {
    /// The cache's revision when the watch started: the replayed or initial events bring the
    /// watcher up to it, live events follow.
    pub fn start_revision(&self) -> Revision {
        self.start_revision
    }
}

impl Stream for CacheWatch {
    type Item = Result<WatchItem>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(item) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(item)));
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(Ok(item))),
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(lock(&this.terminal).take().map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for CacheWatch {
    fn drop(&mut self) {
        if let Some(inner) = self.cache.upgrade() {
            lock(&inner.state).watchers.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let t = encode_continue(42, b"/registry/pods/a\xff");
        assert_eq!(
            decode_continue(&t).unwrap(),
            (42, b"/registry/pods/a\xff".to_vec())
        );
        for bad in [
            "",
            "wc1.",
            "wc1.x.00",
            "wc1.5.0",
            "wc1.5.zz",
            "wc2.5.00",
            "wc1.-1.00",
        ] {
            assert!(
                matches!(
                    decode_continue(bad),
                    Err(WatchCacheError::InvalidContinue(_))
                ),
                "{bad:?}"
            );
        }
    }
}
