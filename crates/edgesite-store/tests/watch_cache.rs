//! Tests of the watch cache ([`edgesite_store::watch_cache`]) over the embedded store and, for
//! the key cases, a real etcd (`etcd::` tests; they need the `etcd` binary, as the conformance
//! suite does).
//!
//! The store is wrapped in [`CountingStore`], which delegates to the real one, counts `range`
//! and `watch` calls (to prove one store watch serves every watcher, and one compaction costs
//! one relist) and can hold or kill the latest store watch stream (to force a relist at a
//! chosen point). Nothing sleeps for correctness: waits are on streams or on the cache's
//! revision, under deadlines.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use edgesite_store::embedded::{EmbeddedConfig, EmbeddedStore};
use edgesite_store::etcd::{EtcdConfig, EtcdStore};
use edgesite_store::watch_cache::{
    CacheEventKind, CacheWatch, ListOptions, WatchCache, WatchCacheConfig, WatchCacheError,
    WatchItem, WatchOptions,
};
use edgesite_store::{
    Error, EventType, KeyRange, KeyValue, LeaseId, LeaseInfo, RangeRequest, RangeResponse, Result,
    Revision, Store, StoreStatus, Txn, TxnResponse, WatchRequest, WatchStream,
};
use edgesite_testkit::EtcdServer;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);
const PODS: &[u8] = b"/registry/core/pods/";

// ------------------------------------------------------------------------------------------
// Counting store
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctl {
    Run,
    Hold,
    Kill,
}

/// Delegates to a real store, counting calls and controlling the latest watch stream.
#[derive(Debug)]
struct CountingStore {
    inner: Arc<dyn Store>,
    ranges: AtomicUsize,
    watches: AtomicUsize,
    latest: Mutex<Option<watch::Sender<Ctl>>>,
}

impl CountingStore {
    fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            ranges: AtomicUsize::new(0),
            watches: AtomicUsize::new(0),
            latest: Mutex::new(None),
        })
    }

    fn ranges(&self) -> usize {
        self.ranges.load(Ordering::SeqCst)
    }

    fn watches(&self) -> usize {
        self.watches.load(Ordering::SeqCst)
    }

    /// Stops delivering the latest stream's items (they stay in the real store's stream).
    fn hold(&self) {
        self.control(Ctl::Hold);
    }

    /// Ends the latest stream with `Compacted`, as a store that compacted past it would.
    fn kill(&self) {
        self.control(Ctl::Kill);
    }

    fn control(&self, ctl: Ctl) {
        let latest = self.latest.lock().unwrap();
        latest.as_ref().expect("a watch is open").send_replace(ctl);
    }
}

#[async_trait]
impl Store for CountingStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.ranges.fetch_add(1, Ordering::SeqCst);
        self.inner.range(req).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.inner.txn(txn).await
    }
    async fn watch(&self, req: WatchRequest) -> Result<WatchStream> {
        self.watches.fetch_add(1, Ordering::SeqCst);
        let start = req.start_revision.unwrap_or(0);
        let inner = self.inner.watch(req).await?;
        let (tx, rx) = watch::channel(Ctl::Run);
        *self.latest.lock().unwrap() = Some(tx);
        let stream = futures::stream::unfold(
            (inner, rx, false),
            move |(mut inner, mut ctl, done)| async move {
                if done {
                    return None;
                }
                loop {
                    let state = *ctl.borrow_and_update();
                    match state {
                        Ctl::Kill => {
                            let err = Error::Compacted {
                                requested: start,
                                compact_revision: start + 1,
                            };
                            return Some((Err(err), (inner, ctl, true)));
                        }
                        Ctl::Hold => {
                            if ctl.changed().await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        }
                        Ctl::Run => tokio::select! {
                            item = inner.next() => {
                                return item.map(|i| (i, (inner, ctl, false)));
                            }
                            _ = ctl.changed() => {}
                        },
                    }
                }
            },
        );
        Ok(stream.boxed())
    }
    async fn lease_grant(&self, ttl_secs: i64) -> Result<LeaseId> {
        self.inner.lease_grant(ttl_secs).await
    }
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<LeaseInfo> {
        self.inner.lease_keep_alive(id).await
    }
    async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        self.inner.lease_revoke(id).await
    }
    async fn lease_time_to_live(&self, id: LeaseId) -> Result<LeaseInfo> {
        self.inner.lease_time_to_live(id).await
    }
    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision).await
    }
    async fn status(&self) -> Result<StoreStatus> {
        self.inner.status().await
    }
}

// ------------------------------------------------------------------------------------------
// Fixtures and helpers
// ------------------------------------------------------------------------------------------

enum Backing {
    Embedded(#[allow(dead_code)] tempfile::TempDir),
    Etcd(#[allow(dead_code)] EtcdServer),
}

struct Fixture {
    store: Arc<dyn Store>,
    counting: Arc<CountingStore>,
    _backing: Backing,
}

impl Fixture {
    async fn embedded() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EmbeddedConfig::new(dir.path().join("db"));
        config.progress_notify_interval = Duration::from_millis(100);
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(config).await.unwrap());
        Self::with(store, Backing::Embedded(dir))
    }

    async fn etcd() -> Self {
        let server = EtcdServer::start();
        let config = EtcdConfig::from_url(&format!("etcd://{}", server.endpoint())).unwrap();
        let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(config).await.unwrap());
        Self::with(store, Backing::Etcd(server))
    }

    fn with(store: Arc<dyn Store>, backing: Backing) -> Self {
        Self {
            counting: CountingStore::new(store.clone()),
            store,
            _backing: backing,
        }
    }

    async fn cache(&self, config: WatchCacheConfig) -> WatchCache {
        WatchCache::start(self.counting.clone(), PODS.to_vec(), config)
            .await
            .unwrap()
    }
}

fn key(ns: &str, name: &str) -> Vec<u8> {
    [PODS, format!("{ns}/{name}").as_bytes()].concat()
}

fn ns_prefix(ns: &str) -> Vec<u8> {
    [PODS, format!("{ns}/").as_bytes()].concat()
}

/// Waits until the cache has reached `rev` (each `list_at_least` waits up to the cache's own
/// timeout; the test's deadline bounds the whole).
async fn wait_revision(cache: &WatchCache, rev: Revision) {
    timeout(WAIT, async {
        loop {
            match cache.list_at_least(rev, &ListOptions::default()).await {
                Ok(_) => return,
                Err(WatchCacheError::NotCaughtUp { .. }) => {}
                Err(e) => panic!("waiting for revision {rev}: {e}"),
            }
        }
    })
    .await
    .expect("cache did not catch up");
}

async fn next_item(w: &mut CacheWatch) -> Result<WatchItem, WatchCacheError> {
    timeout(WAIT, w.next())
        .await
        .expect("timed out waiting for a watch item")
        .expect("watch ended without an error")
}

/// A watch event reduced to what both the cache and the store agree on.
type Seen = (Vec<u8>, Revision, bool /* deleted */);

/// Reads events (skipping bookmarks) until one at revision `upto` or later has been seen.
async fn collect_until(w: &mut CacheWatch, upto: Revision) -> Vec<Seen> {
    let mut seen = Vec::new();
    loop {
        match next_item(w).await.expect("watch failed") {
            WatchItem::Event(ev) => {
                let done = ev.revision >= upto;
                seen.push((
                    ev.key().to_vec(),
                    ev.revision,
                    ev.kind == CacheEventKind::Deleted,
                ));
                if done {
                    return seen;
                }
            }
            WatchItem::Bookmark(_) | WatchItem::InitialEventsEnd(_) => {}
        }
    }
}

/// What the store itself reports under `prefix` in `(from, upto]`.
async fn store_events(
    store: &Arc<dyn Store>,
    prefix: &[u8],
    from: Revision,
    upto: Revision,
) -> Vec<Seen> {
    let mut s = store
        .watch(WatchRequest::new(KeyRange::prefix(prefix)).from_revision(from + 1))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.last().is_none_or(|(_, r, _): &Seen| *r < upto) {
        let resp = timeout(WAIT, s.next()).await.unwrap().unwrap().unwrap();
        for e in resp.events {
            seen.push((e.kv.key, e.kv.mod_revision, e.kind == EventType::Delete));
        }
    }
    seen
}

async fn store_range(store: &Arc<dyn Store>, prefix: &[u8], at: Option<Revision>) -> Vec<KeyValue> {
    let mut req = RangeRequest::new(KeyRange::prefix(prefix));
    req.revision = at;
    store.range(req).await.unwrap().kvs
}

fn plain(items: &[Arc<KeyValue>]) -> Vec<KeyValue> {
    items.iter().map(|kv| (**kv).clone()).collect()
}

/// Writes a mix of creates, updates and deletes in two namespaces; returns the last revision.
async fn churn(store: &Arc<dyn Store>, tag: &str, n: usize) -> Revision {
    let mut last = 0;
    for i in 0..n {
        let ns = if i % 2 == 0 { "a" } else { "b" };
        let k = key(ns, &format!("{tag}-{}", i % 7));
        last = store
            .put(&k, format!("{tag}:{i}").into_bytes(), 0)
            .await
            .unwrap();
        if i % 5 == 4 {
            last = store.delete(&k, None).await.unwrap().1;
        }
    }
    last
}

// ------------------------------------------------------------------------------------------
// Cases, run on both backends
// ------------------------------------------------------------------------------------------

async fn list_equals_store_range(f: Fixture) {
    churn(&f.store, "pre", 30).await;
    // Something outside the prefix must never show up.
    f.store
        .put(b"/registry/core/podsx/a", b"no".to_vec(), 0)
        .await
        .unwrap();
    let cache = f.cache(WatchCacheConfig::default()).await;
    let rev = churn(&f.store, "live", 40).await;
    wait_revision(&cache, rev).await;

    let all = cache.list(&ListOptions::default()).await.unwrap();
    assert_eq!(all.revision, rev);
    assert_eq!(plain(&all.items), store_range(&f.store, PODS, None).await);
    let ns = ListOptions {
        key_prefix: Some(ns_prefix("a")),
        ..ListOptions::default()
    };
    let in_a = cache.list(&ns).await.unwrap();
    assert_eq!(
        plain(&in_a.items),
        store_range(&f.store, &ns_prefix("a"), None).await
    );
    assert!(!in_a.items.is_empty());

    // Paging: pages at one revision, unchanged by writes made between pages.
    let mut opts = ListOptions {
        limit: 3,
        ..ListOptions::default()
    };
    let mut paged = Vec::new();
    let mut first = true;
    loop {
        let page = cache.list(&opts).await.unwrap();
        assert_eq!(page.revision, rev);
        assert!(page.items.len() <= 3);
        paged.extend(plain(&page.items));
        if first {
            first = false;
            let later = churn(&f.store, "between", 20).await;
            wait_revision(&cache, later).await;
        }
        match page.continue_token {
            Some(t) => opts.continue_token = Some(t),
            None => break,
        }
    }
    assert_eq!(paged, store_range(&f.store, PODS, Some(rev)).await);

    // An exact read inside the window is the store's state at that revision.
    let exact = cache.list_exact(rev, &ns).await.unwrap();
    assert_eq!(
        plain(&exact.items),
        store_range(&f.store, &ns_prefix("a"), Some(rev)).await
    );
    assert_eq!(f.counting.ranges(), 1, "lists are served by the cache");
}

async fn hundred_watchers_one_store_watch(f: Fixture) {
    let cache = Arc::new(f.cache(WatchCacheConfig::default()).await);
    let start = cache.revision();
    let mut watchers = Vec::new();
    for i in 0..100 {
        let opts = if i % 2 == 0 {
            WatchOptions::initial()
        } else {
            WatchOptions::from_revision(start)
        };
        watchers.push(cache.watch(opts).await.unwrap());
    }
    let writers = (0..4).map(|w| {
        let store = f.store.clone();
        tokio::spawn(async move { churn(&store, &format!("w{w}"), 50).await })
    });
    let mut last = 0;
    for w in writers {
        last = last.max(w.await.unwrap());
    }
    let truth = store_events(&f.store, PODS, start, last).await;
    assert!(truth.len() >= 200);
    let readers = watchers
        .into_iter()
        .map(|mut w| tokio::spawn(async move { collect_until(&mut w, last).await }));
    for r in readers {
        assert_eq!(r.await.unwrap(), truth, "a watcher saw a different history");
    }
    assert_eq!(
        f.counting.watches(),
        1,
        "one store watch serves every watcher"
    );
    assert_eq!(cache.stats().watchers, 0, "dropped watchers unregister");
}

async fn replay_from_window_then_live(f: Fixture) {
    let cache = f.cache(WatchCacheConfig::default()).await;
    let base = cache.revision();
    let mid = churn(&f.store, "one", 20).await;
    let r1 = churn(&f.store, "two", 20).await;
    wait_revision(&cache, r1).await;
    let mut w = cache.watch(WatchOptions::from_revision(mid)).await.unwrap();
    assert_eq!(w.start_revision(), r1);
    let r2 = churn(&f.store, "three", 20).await;
    let seen = collect_until(&mut w, r2).await;
    assert_eq!(
        seen,
        store_events(&f.store, PODS, mid, r2).await,
        "gap or duplicate at the seam"
    );
    // From the very start of the window too.
    let mut w = cache
        .watch(WatchOptions::from_revision(base))
        .await
        .unwrap();
    assert_eq!(
        collect_until(&mut w, r2).await,
        store_events(&f.store, PODS, base, r2).await
    );
}

async fn compaction_forces_one_relist(f: Fixture) {
    let cache = f.cache(WatchCacheConfig::default()).await;
    let r0 = churn(&f.store, "pre", 10).await;
    wait_revision(&cache, r0).await;
    let mut live = cache.watch(WatchOptions::initial()).await.unwrap();
    let mut resumed = cache.watch(WatchOptions::from_revision(r0)).await.unwrap();
    assert_eq!(f.counting.ranges(), 1);

    // The store watch is killed with nothing new in the store: the relist finds the same
    // revision, so watchers go on untouched.
    f.counting.kill();
    timeout(WAIT, async {
        while f.counting.watches() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(f.counting.ranges(), 2, "one relist");
    let r1 = f.store.put(&key("a", "x"), b"1".to_vec(), 0).await.unwrap();
    assert_eq!(
        collect_until(&mut resumed, r1).await,
        vec![(key("a", "x"), r1, false)]
    );

    // Now the cache misses writes, the store compacts them away, and the watch fails.
    wait_revision(&cache, r1).await;
    f.counting.hold();
    let r2 = churn(&f.store, "missed", 10).await;
    f.store.compact(r2).await.unwrap();
    f.counting.kill();
    // Watchers are told their position is gone (after what they had queued).
    loop {
        match next_item(&mut live).await {
            Ok(_) => {}
            Err(WatchCacheError::TooOld { requested, oldest }) => {
                assert_eq!((requested, oldest), (r1, r2));
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(live.next().await.is_none(), "nothing after the error");
    assert_eq!(f.counting.ranges(), 3, "exactly one more relist");
    assert_eq!(cache.stats().relists, 2);
    let all = cache.list(&ListOptions::default()).await.unwrap();
    assert_eq!(all.revision, r2);
    assert_eq!(plain(&all.items), store_range(&f.store, PODS, None).await);
    assert!(matches!(
        cache.watch(WatchOptions::from_revision(r1)).await,
        Err(WatchCacheError::TooOld { requested, oldest }) if requested == r1 && oldest == r2
    ));
    // And live again.
    let mut fresh = cache.watch(WatchOptions::from_revision(r2)).await.unwrap();
    let r3 = f.store.put(&key("b", "y"), b"2".to_vec(), 0).await.unwrap();
    assert_eq!(
        collect_until(&mut fresh, r3).await,
        vec![(key("b", "y"), r3, false)]
    );
    assert_eq!(f.counting.ranges(), 3);
}

macro_rules! both_backends {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Fixture::embedded().await).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Fixture::etcd().await).await;
                }
            )*
        }
    };
}

both_backends!(
    list_equals_store_range,
    hundred_watchers_one_store_watch,
    replay_from_window_then_live,
    compaction_forces_one_relist,
);

// ------------------------------------------------------------------------------------------
// Embedded-only cases
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_old_revisions_and_expired_continues() {
    let f = Fixture::embedded().await;
    let cache = f
        .cache(WatchCacheConfig {
            max_events: 5,
            ..WatchCacheConfig::default()
        })
        .await;
    let start = cache.revision();
    f.store.put(&key("a", "1"), b"1".to_vec(), 0).await.unwrap();
    let r = f.store.put(&key("a", "2"), b"1".to_vec(), 0).await.unwrap();
    wait_revision(&cache, r).await;
    let page = cache
        .list(&ListOptions {
            limit: 1,
            ..ListOptions::default()
        })
        .await;
    let token = page.unwrap().continue_token;
    let last = churn(&f.store, "x", 20).await;
    wait_revision(&cache, last).await;
    let stats = cache.stats();
    assert_eq!(stats.events, 5);
    match cache.watch(WatchOptions::from_revision(start)).await {
        Err(WatchCacheError::TooOld { requested, oldest }) => {
            assert_eq!((requested, oldest), (start, stats.oldest));
        }
        other => panic!("expected TooOld, got {other:?}"),
    }
    let old = ListOptions {
        continue_token: token,
        ..ListOptions::default()
    };
    assert!(matches!(
        cache.list(&old).await,
        Err(WatchCacheError::Expired { .. })
    ));
    assert!(matches!(
        cache.list_exact(start, &ListOptions::default()).await,
        Err(WatchCacheError::NeedsStore { .. })
    ));
    assert!(cache.needs_store(start));
    // The oldest revision itself is still served.
    let mut w = cache
        .watch(WatchOptions::from_revision(stats.oldest))
        .await
        .unwrap();
    assert_eq!(collect_until(&mut w, last).await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_compaction_moves_the_window_but_spares_live_watches() {
    let f = Fixture::embedded().await;
    let cache = f.cache(WatchCacheConfig::default()).await;
    let before = f.store.put(&key("a", "1"), b"1".to_vec(), 0).await.unwrap();
    wait_revision(&cache, before).await;
    let mut live = cache
        .watch(WatchOptions::from_revision(before))
        .await
        .unwrap();
    let last = churn(&f.store, "x", 12).await;
    wait_revision(&cache, last).await;
    let window = cache.stats().events;
    assert!(window >= 12, "{window} events in the window");

    f.store.compact(last).await.unwrap();
    assert_eq!(cache.compacted(last), window);
    let stats = cache.stats();
    assert_eq!((stats.events, stats.oldest), (0, last));
    // Resuming from before the compaction is too old, from the compaction point is fine.
    assert!(matches!(
        cache.watch(WatchOptions::from_revision(before)).await,
        Err(WatchCacheError::TooOld { oldest, .. }) if oldest == last
    ));
    let mut resumed = cache
        .watch(WatchOptions::from_revision(last))
        .await
        .unwrap();
    // The live watch still gets everything it was owed (all but the first put, which it
    // started after), then goes on.
    assert_eq!(collect_until(&mut live, last).await.len(), window - 1);
    let next = f.store.put(&key("b", "2"), b"2".to_vec(), 0).await.unwrap();
    assert_eq!(collect_until(&mut live, next).await.len(), 1);
    assert_eq!(collect_until(&mut resumed, next).await.len(), 1);
    // A compaction the cache has not reached yet never moves the window past its revision.
    assert_eq!(cache.compacted(next + 100), 1);
    assert!(cache.stats().oldest <= cache.revision());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_events_then_live_with_sub_prefix_and_filter() {
    let f = Fixture::embedded().await;
    for (ns, name) in [("a", "1"), ("a", "2"), ("b", "1")] {
        f.store
            .put(&key(ns, name), name.as_bytes().to_vec(), 0)
            .await
            .unwrap();
    }
    let cache = f.cache(WatchCacheConfig::default()).await;
    let mut w = cache
        .watch(
            WatchOptions::initial()
                .under(ns_prefix("a"))
                .with_initial_events_end(),
        )
        .await
        .unwrap();
    let mut odd = cache
        .watch(WatchOptions::initial().with_filter(|ev| ev.kv.value != b"2"))
        .await
        .unwrap();
    for name in ["1", "2"] {
        match next_item(&mut w).await.unwrap() {
            WatchItem::Event(ev) => {
                assert_eq!(ev.kind, CacheEventKind::Added);
                assert_eq!(ev.key(), key("a", name));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        next_item(&mut w).await.unwrap(),
        WatchItem::InitialEventsEnd(cache.revision())
    );
    f.store.put(&key("b", "2"), b"x".to_vec(), 0).await.unwrap();
    let modified = f.store.put(&key("a", "1"), b"y".to_vec(), 0).await.unwrap();
    let (_, rev) = f.store.delete(&key("a", "2"), None).await.unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        if let WatchItem::Event(ev) = next_item(&mut w).await.unwrap() {
            assert!(ev.key().starts_with(&ns_prefix("a")));
            if ev.kind == CacheEventKind::Deleted {
                assert_eq!(ev.revision, rev);
                assert_eq!(&*ev.kv.value, b"2", "DELETED carries the last value");
            }
            if ev.kind == CacheEventKind::Modified {
                assert_eq!(ev.prev.as_ref().unwrap().value, b"1");
            }
            kinds.push(ev.kind);
        }
    }
    assert_eq!(kinds, [CacheEventKind::Modified, CacheEventKind::Deleted]);
    let mut seen = collect_until(&mut odd, modified).await;
    // The next event the filtered watcher gets is the one after the (filtered) delete.
    let after = f.store.put(&key("a", "3"), b"3".to_vec(), 0).await.unwrap();
    assert!(after > rev);
    seen.extend(collect_until(&mut odd, after).await);
    // Initial a/1, b/1 (a/2 filtered), then b/2 added, a/1 modified; a/2's delete carries
    // value "2" and is filtered.
    let keys: Vec<_> = seen.iter().map(|(k, _, _)| k.clone()).collect();
    assert_eq!(keys[..2], [key("a", "1"), key("b", "1")]);
    assert_eq!(keys[2..], [key("b", "2"), key("a", "1"), key("a", "3")]);
    assert!(matches!(
        cache
            .watch(WatchOptions::initial().under(b"/registry/other/".to_vec()))
            .await,
        Err(WatchCacheError::InvalidRequest(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_lags_alone() {
    let f = Fixture::embedded().await;
    let cache = f
        .cache(WatchCacheConfig {
            watcher_queue: 8,
            ..WatchCacheConfig::default()
        })
        .await;
    let start = cache.revision();
    let mut slow = cache
        .watch(WatchOptions::from_revision(start))
        .await
        .unwrap();
    let mut fast = cache
        .watch(WatchOptions::from_revision(start))
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while let Some(item) = fast.next().await {
            item.expect("the fast watcher must not fail");
            n += 1;
            if n == 40 {
                return n;
            }
        }
        n
    });
    for i in 0..40 {
        // One write at a time, so the fast reader is never more than a few events behind.
        let rev = f
            .store
            .put(&key("a", &i.to_string()), b"v".to_vec(), 0)
            .await
            .unwrap();
        wait_revision(&cache, rev).await;
    }
    assert_eq!(timeout(WAIT, reader).await.unwrap().unwrap(), 40);
    let mut got = 0;
    let err = loop {
        match next_item(&mut slow).await {
            Ok(_) => got += 1,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, WatchCacheError::Lagged { capacity: 8 }),
        "{err}"
    );
    assert_eq!(got, 8, "the slow watcher keeps what was queued, then fails");
    assert_eq!(cache.stats().watchers, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_and_freshness_follow_progress_of_an_idle_prefix() {
    let f = Fixture::embedded().await;
    let cache = f
        .cache(WatchCacheConfig {
            bookmark_interval: Duration::from_millis(50),
            wait_timeout: Duration::from_millis(300),
            ..WatchCacheConfig::default()
        })
        .await;
    let mut w = cache
        .watch(WatchOptions::initial().with_bookmarks())
        .await
        .unwrap();
    // Writes elsewhere move the store's revision; the cache learns it from progress
    // notifications, not from events.
    let other = f
        .store
        .put(b"/registry/core/nodes/n", b"n".to_vec(), 0)
        .await
        .unwrap();
    let list = timeout(WAIT, async {
        loop {
            match cache.list_at_least(other, &ListOptions::default()).await {
                Ok(list) => return list,
                Err(WatchCacheError::NotCaughtUp { .. }) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .unwrap();
    assert!(list.revision >= other && list.items.is_empty());
    timeout(WAIT, async {
        loop {
            if let WatchItem::Bookmark(r) = w.next().await.unwrap().unwrap()
                && r >= other
            {
                return;
            }
        }
    })
    .await
    .unwrap();
    assert!(matches!(
        cache.list_at_least(other + 1000, &ListOptions::default()).await,
        Err(WatchCacheError::NotCaughtUp { requested, .. }) if requested == other + 1000
    ));
    assert!(matches!(
        cache
            .list(&ListOptions {
                continue_token: Some("garbage".into()),
                ..ListOptions::default()
            })
            .await,
        Err(WatchCacheError::InvalidContinue(_))
    ));
    drop(cache);
    loop {
        match timeout(WAIT, w.next()).await.unwrap() {
            Some(Ok(_)) => {}
            Some(Err(WatchCacheError::Closed)) => break,
            other => panic!("expected Closed, got {other:?}"),
        }
    }
}
