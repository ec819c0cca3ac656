//! Conformance suite of the [`Store`] trait: one set of cases, run against both backends.
//!
//! Every case is a plain `async fn(Arc<dyn Store>)` below (or `async fn(Fixture)` for the one
//! that closes and reopens the store); the `conformance!` macro at the end instantiates each of
//! them twice, as `embedded::<case>` (an [`EmbeddedStore`] in a fresh temporary directory) and
//! `etcd::<case>` (an [`EtcdStore`] on a fresh, real etcd started by `edgesite-testkit`, one
//! server per test: nextest runs every test in its own process anyway, and a fresh server keeps
//! revision numbering and compaction pristine for about half a second of start-up). Real etcd
//! is the reference: where the two backends could differ, the cases assert what etcd does (the
//! one deliberate exception, a repeated compaction at the same revision, is noted at its case).
//! To add a case, write the function and add its name to the `conformance!` list.
//!
//! Running:
//!
//! ```text
//! cargo nextest run -p edgesite-store --test conformance                    # both backends
//! cargo nextest run -p edgesite-store -E 'test(/etcd::/)'                   # etcd only
//! cargo nextest run -p edgesite-store -E 'test(/embedded::/)'               # embedded only
//! cargo nextest run -p edgesite-store -E 'test(/::watch_/)'                 # one family
//! ```
//!
//! The etcd cases need the `etcd` binary (Debian's `etcd-server` package, installed by
//! `scripts/setup`); without it they fail, they never skip. The test etcd runs with
//! `--max-request-bytes` of 2 MiB so that a value of exactly [`MAX_VALUE_BYTES`] fits in one
//! request, as it does for the embedded store; durability settings are etcd's defaults.
//!
//! Nothing here sleeps to wait for something to happen: waits poll or read a watch under a
//! deadline. The only sleeps are in the lease keep-alive case, where wall-clock time passing is
//! what is tested.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use edgesite_store::embedded::{EmbeddedConfig, EmbeddedStore};
use edgesite_store::etcd::{EtcdConfig, EtcdStore};
use edgesite_store::{
    Compare, CompareOp, CompareTarget, Error, Event, EventType, KeyRange, KeyValue, LeaseId,
    MAX_VALUE_BYTES, RangeRequest, RangeResponse, Revision, Store, Txn, TxnOp, TxnOpResponse,
    WatchRequest, WatchStream,
};
use edgesite_testkit::{EtcdOptions, EtcdServer};
use futures::StreamExt;
use tokio::time::Instant;

/// How long any single wait for an event may take before the test fails.
const WAIT: Duration = Duration::from_secs(15);

/// The TTL of leases meant to expire during a test. etcd rounds any TTL up to its minimum,
/// `ceil(1.5 × election timeout)` = 2 s with default settings, so 2 s is what both backends
/// grant exactly.
const SHORT_TTL: i64 = 2;

/// How long a short lease may take to expire and have its keys deleted (TTL plus the expiry
/// checker's period plus slack for a loaded machine).
const EXPIRY_WAIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------------------
// Fixtures
// ------------------------------------------------------------------------------------------

/// A store and what backs it (its directory or its etcd server).
struct Fixture {
    store: Option<Arc<dyn Store>>,
    backing: Backing,
}

enum Backing {
    Embedded(tempfile::TempDir),
    Etcd(EtcdServer),
}

impl Fixture {
    async fn embedded() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut fixture = Self {
            store: None,
            backing: Backing::Embedded(dir),
        };
        fixture.open().await;
        fixture
    }

    async fn etcd() -> Self {
        let server = EtcdOptions::new()
            .arg(format!("--max-request-bytes={}", 2 * 1024 * 1024))
            .start();
        let mut fixture = Self {
            store: None,
            backing: Backing::Etcd(server),
        };
        fixture.open().await;
        fixture
    }

    async fn open(&mut self) {
        let store: Arc<dyn Store> = match &self.backing {
            Backing::Embedded(dir) => Arc::new(
                EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("db")))
                    .await
                    .expect("opening the embedded store"),
            ),
            Backing::Etcd(server) => {
                let config = EtcdConfig::from_url(&format!("etcd://{}", server.endpoint()))
                    .expect("parsing the test etcd's URL");
                Arc::new(
                    EtcdStore::connect(config)
                        .await
                        .expect("connecting to the test etcd"),
                )
            }
        };
        self.store = Some(store);
    }

    fn store(&self) -> Arc<dyn Store> {
        self.store.clone().expect("store is open")
    }

    /// Closes the store (which must not be shared any more) and opens it again on the same
    /// backing: the same file, or a new connection to the same etcd.
    async fn reopen(&mut self) {
        let store = self.store.take().expect("store is open");
        assert_eq!(
            Arc::strong_count(&store),
            1,
            "the store is still shared: it would not close"
        );
        drop(store);
        self.open().await;
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // The store goes before what backs it.
        self.store.take();
    }
}

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// A key-value with every field given.
fn kv(key: &str, value: &str, create: Revision, modr: Revision, version: i64) -> KeyValue {
    KeyValue {
        key: b(key),
        value: b(value),
        create_revision: create,
        mod_revision: modr,
        version,
        lease: 0,
    }
}

fn with_lease(mut kv: KeyValue, lease: LeaseId) -> KeyValue {
    kv.lease = lease;
    kv
}

fn put_event(kv: KeyValue) -> Event {
    Event {
        kind: EventType::Put,
        kv,
        prev_kv: None,
    }
}

/// A delete event as etcd sends it: the key and the delete's revision, everything else zero.
fn delete_event(key: &str, rev: Revision) -> Event {
    Event {
        kind: EventType::Delete,
        kv: KeyValue {
            key: b(key),
            mod_revision: rev,
            ..KeyValue::default()
        },
        prev_kv: None,
    }
}

fn with_prev(mut ev: Event, prev: KeyValue) -> Event {
    ev.prev_kv = Some(prev);
    ev
}

async fn put(s: &dyn Store, key: &str, value: &str) -> Revision {
    s.put(key.as_bytes(), b(value), 0)
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"))
}

async fn get(s: &dyn Store, key: &str) -> Option<KeyValue> {
    s.get(key.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
}

async fn del(s: &dyn Store, key: &str) -> Revision {
    s.delete(key.as_bytes(), None)
        .await
        .unwrap_or_else(|e| panic!("delete {key}: {e}"))
        .1
}

async fn range(s: &dyn Store, req: RangeRequest) -> RangeResponse {
    s.range(req.clone())
        .await
        .unwrap_or_else(|e| panic!("range {req:?}: {e}"))
}

async fn current_revision(s: &dyn Store) -> Revision {
    s.status().await.expect("status").revision
}

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

fn event_key(ev: &Event) -> String {
    String::from_utf8_lossy(&ev.kv.key).into_owned()
}

async fn watch(s: &dyn Store, req: WatchRequest) -> WatchStream {
    s.watch(req.clone())
        .await
        .unwrap_or_else(|e| panic!("watch {req:?}: {e}"))
}

/// Reads watch responses until at least `n` events have arrived (returning all of them, which
/// may be more when the last response carried several), failing after [`WAIT`]. Checks that
/// each response's revision covers its events and skips progress notifications.
async fn next_events(stream: &mut WatchStream, n: usize) -> Vec<Event> {
    next_events_within(stream, n, WAIT).await
}

async fn next_events_within(stream: &mut WatchStream, n: usize, wait: Duration) -> Vec<Event> {
    let deadline = Instant::now() + wait;
    let mut events = Vec::new();
    while events.len() < n {
        let item = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(item) => item,
            Err(_) => panic!(
                "timed out after {wait:?} waiting for {n} watch events; got {}: {events:#?}",
                events.len()
            ),
        };
        let resp = match item {
            Some(Ok(resp)) => resp,
            Some(Err(e)) => panic!("watch failed after {} events: {e}", events.len()),
            None => panic!("watch ended after {} events: {events:#?}", events.len()),
        };
        for ev in &resp.events {
            assert!(
                resp.revision >= ev.kv.mod_revision,
                "watch response at revision {} carries an event of revision {}",
                resp.revision,
                ev.kv.mod_revision
            );
        }
        events.extend(resp.events);
    }
    events
}

/// Writes `sentinel` and checks that the next event of `stream` is that write: nothing
/// unexpected (a duplicate, a stray key) was pending before it.
async fn assert_next_event_is_sentinel(s: &dyn Store, stream: &mut WatchStream, sentinel: &str) {
    let rev = put(s, sentinel, "sentinel").await;
    let events = next_events(stream, 1).await;
    assert_eq!(
        events,
        vec![put_event(kv(sentinel, "sentinel", rev, rev, 1))],
        "expected only the sentinel write at revision {rev}"
    );
}

/// The keys of the events of `stream` up to the first event at revision `end` (included).
async fn keys_until(stream: &mut WatchStream, end: Revision) -> Vec<String> {
    let mut events = Vec::new();
    while events
        .last()
        .is_none_or(|e: &Event| e.kv.mod_revision != end)
    {
        events.extend(next_events(stream, 1).await);
    }
    events.iter().map(event_key).collect()
}

fn txn_put(key: &str, value: &str) -> TxnOp {
    TxnOp::put(b(key), b(value))
}

fn txn_range_kvs(resp: &TxnOpResponse) -> Vec<KeyValue> {
    match resp {
        TxnOpResponse::Range(r) => r.kvs.clone(),
        other => panic!("expected a range response, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------
// Revisions
// ------------------------------------------------------------------------------------------

async fn revision_increases_by_exactly_one_per_write_txn(s: Arc<dyn Store>) {
    let s = &*s;
    let r0 = current_revision(s).await;
    assert_eq!(put(s, "/a", "1").await, r0 + 1);
    assert_eq!(put(s, "/b", "1").await, r0 + 2);
    assert_eq!(s.create(b"/c", b("1"), 0).await.unwrap(), r0 + 3);
    assert_eq!(s.update(b"/c", b("2"), r0 + 3, 0).await.unwrap(), r0 + 4);
    assert_eq!(del(s, "/b").await, r0 + 5);
    assert_eq!(current_revision(s).await, r0 + 5);
    let resp = s
        .txn(Txn::new().and_then(vec![TxnOp::get(b("/a"))]))
        .await
        .unwrap();
    assert_eq!(
        resp.revision,
        r0 + 5,
        "a read-only transaction reports the current revision"
    );
}

async fn writes_of_one_txn_share_one_revision(s: Arc<dyn Store>) {
    let s = &*s;
    put(s, "/old", "x").await;
    let r0 = current_revision(s).await;
    let resp = s
        .txn(Txn::new().and_then(vec![
            txn_put("/x", "1"),
            txn_put("/y", "2"),
            TxnOp::delete(b("/old")),
            txn_put("/z", "3"),
        ]))
        .await
        .unwrap();
    assert!(resp.succeeded);
    assert_eq!(resp.revision, r0 + 1);
    assert_eq!(current_revision(s).await, r0 + 1);
    for (key, value) in [("/x", "1"), ("/y", "2"), ("/z", "3")] {
        assert_eq!(get(s, key).await, Some(kv(key, value, r0 + 1, r0 + 1, 1)));
    }
    assert_eq!(get(s, "/old").await, None);
    assert_eq!(put(s, "/x", "again").await, r0 + 2);
}

async fn read_only_and_failed_txns_do_not_bump_revision(s: Arc<dyn Store>) {
    let s = &*s;
    let r1 = put(s, "/k", "v").await;
    let r0 = current_revision(s).await;
    assert_eq!(r0, r1);

    get(s, "/k").await;
    range(s, RangeRequest::new(KeyRange::prefix(b("/")))).await;
    s.count(b"/").await.unwrap();
    let read_only = s
        .txn(Txn::new().and_then(vec![TxnOp::get(b("/k")), TxnOp::get(b("/missing"))]))
        .await
        .unwrap();
    assert!(read_only.succeeded);
    assert_eq!(read_only.revision, r0);

    // Compare fails: the success branch (a write) does not run, the failure branch only reads.
    let failed = s
        .txn(
            Txn::new()
                .when(Compare::new(
                    b("/k"),
                    CompareOp::Equal,
                    CompareTarget::Value(b("other")),
                ))
                .and_then(vec![txn_put("/k", "changed"), txn_put("/new", "1")])
                .or_else(vec![TxnOp::get(b("/k"))]),
        )
        .await
        .unwrap();
    assert!(!failed.succeeded);
    assert_eq!(failed.revision, r0);
    assert_eq!(failed.responses.len(), 1);
    assert_eq!(
        txn_range_kvs(&failed.responses[0]),
        vec![kv("/k", "v", r1, r1, 1)]
    );

    // An empty transaction.
    let empty = s.txn(Txn::new()).await.unwrap();
    assert!(empty.succeeded);
    assert_eq!(empty.revision, r0);
    assert!(empty.responses.is_empty());

    // Refused writes.
    assert!(matches!(
        s.create(b"/k", b("again"), 0).await,
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        s.update(b"/k", b("again"), r1 + 100, 0).await,
        Err(Error::Conflict { .. })
    ));

    assert_eq!(get(s, "/k").await, Some(kv("/k", "v", r1, r1, 1)));
    assert_eq!(get(s, "/new").await, None);
    assert_eq!(current_revision(s).await, r0);
}

/// etcd does not spend a revision on a delete that removes nothing.
async fn deleting_nothing_does_not_bump_revision(s: Arc<dyn Store>) {
    let s = &*s;
    put(s, "/present", "1").await;
    let r0 = current_revision(s).await;
    let resp = s
        .txn(Txn::new().and_then(vec![
            TxnOp::Delete {
                range: KeyRange::prefix(b("/absent/")),
                prev_kv: true,
            },
            TxnOp::delete(b("/absent")),
        ]))
        .await
        .unwrap();
    assert!(resp.succeeded);
    assert_eq!(resp.revision, r0);
    assert_eq!(
        resp.responses,
        vec![
            TxnOpResponse::Delete {
                deleted: 0,
                prev_kvs: vec![]
            },
            TxnOpResponse::Delete {
                deleted: 0,
                prev_kvs: vec![]
            },
        ]
    );
    assert_eq!(current_revision(s).await, r0);
}

async fn create_mod_revision_and_version_track_each_key(s: Arc<dyn Store>) {
    let s = &*s;
    let c1 = s.create(b"/k", b("v1"), 0).await.unwrap();
    assert_eq!(get(s, "/k").await, Some(kv("/k", "v1", c1, c1, 1)));
    let other = put(s, "/other", "o").await;
    let m2 = put(s, "/k", "v2").await;
    assert_eq!(get(s, "/k").await, Some(kv("/k", "v2", c1, m2, 2)));
    let m3 = s.update(b"/k", b("v3"), m2, 0).await.unwrap();
    assert_eq!(get(s, "/k").await, Some(kv("/k", "v3", c1, m3, 3)));

    let (deleted, d) = s.delete(b"/k", Some(m3)).await.unwrap();
    assert_eq!(deleted, kv("/k", "v3", c1, m3, 3));
    assert_eq!(d, m3 + 1);
    assert_eq!(get(s, "/k").await, None);

    // Recreated: a new generation with its own create revision and version 1.
    let c2 = put(s, "/k", "w1").await;
    assert_eq!(get(s, "/k").await, Some(kv("/k", "w1", c2, c2, 1)));
    let m = put(s, "/k", "w2").await;
    assert_eq!(get(s, "/k").await, Some(kv("/k", "w2", c2, m, 2)));

    // The other key was never touched.
    assert_eq!(
        get(s, "/other").await,
        Some(kv("/other", "o", other, other, 1))
    );
}

// ------------------------------------------------------------------------------------------
// Range
// ------------------------------------------------------------------------------------------

async fn range_single_key_returns_exactly_that_key(s: Arc<dyn Store>) {
    let s = &*s;
    let r1 = put(s, "/a", "1").await;
    put(s, "/a/child", "2").await;
    let r3 = put(s, "/ab", "3").await;

    let resp = range(s, RangeRequest::new(KeyRange::key(b("/a")))).await;
    assert_eq!(
        resp,
        RangeResponse {
            kvs: vec![kv("/a", "1", r1, r1, 1)],
            count: 1,
            more: false,
            revision: r3,
        }
    );

    let missing = range(s, RangeRequest::new(KeyRange::key(b("/missing")))).await;
    assert_eq!(
        missing,
        RangeResponse {
            kvs: vec![],
            count: 0,
            more: false,
            revision: r3,
        }
    );
    assert_eq!(get(s, "/missing").await, None);
}

async fn range_prefix_returns_keys_in_order_without_neighbours(s: Arc<dyn Store>) {
    let s = &*s;
    let mut revs = BTreeMap::new();
    for key in [
        "/p/3",
        "/p",
        "/p/1",
        "/q/1",
        "/p0",
        "/p/2",
        "/o/9",
        "/p/1/deep",
    ] {
        revs.insert(key, put(s, key, &format!("value of {key}")).await);
    }
    let resp = range(s, RangeRequest::new(KeyRange::prefix(b("/p/")))).await;
    let expected: Vec<KeyValue> = ["/p/1", "/p/1/deep", "/p/2", "/p/3"]
        .into_iter()
        .map(|k| kv(k, &format!("value of {k}"), revs[k], revs[k], 1))
        .collect();
    assert_eq!(resp.kvs, expected);
    assert_eq!(resp.count, 4);
    assert!(!resp.more);
    assert_eq!(resp.revision, current_revision(s).await);
}

async fn range_explicit_bounds_are_half_open(s: Arc<dyn Store>) {
    let s = &*s;
    for key in ["a", "b", "ba", "c", "d"] {
        put(s, key, key).await;
    }
    let resp = range(
        s,
        RangeRequest::new(KeyRange::Range {
            start: b("b"),
            end: b("d"),
        }),
    )
    .await;
    assert_eq!(keys(&resp.kvs), ["b", "ba", "c"]);
    assert_eq!(resp.count, 3);

    let resp = range(
        s,
        RangeRequest::new(KeyRange::Range {
            start: b("a"),
            end: b("b"),
        }),
    )
    .await;
    assert_eq!(keys(&resp.kvs), ["a"]);
}

async fn range_empty_prefix_covers_the_whole_keyspace(s: Arc<dyn Store>) {
    let s = &*s;
    let odd_keys: Vec<Vec<u8>> = vec![
        b"\x00first".to_vec(),
        b"/registry/pods/x".to_vec(),
        b"zzz".to_vec(),
        b"\xff".to_vec(),
        b"\xff\xff\x01".to_vec(),
    ];
    for key in &odd_keys {
        s.put(key, b("v"), 0).await.unwrap();
    }
    let resp = range(s, RangeRequest::new(KeyRange::prefix(Vec::<u8>::new()))).await;
    let got: Vec<Vec<u8>> = resp.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(got, odd_keys, "every key, in byte order");
    assert_eq!(resp.count, 5);
    assert_eq!(s.count(b"").await.unwrap(), 5);

    // A prefix of 0xff bytes has no upper bound either.
    let resp = range(s, RangeRequest::new(KeyRange::prefix(b"\xff".to_vec()))).await;
    let got: Vec<Vec<u8>> = resp.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(got, vec![b"\xff".to_vec(), b"\xff\xff\x01".to_vec()]);
}

async fn range_limit_truncates_sets_more_and_counts_all(s: Arc<dyn Store>) {
    let s = &*s;
    for i in 1..=5 {
        put(s, &format!("/l/{i}"), &i.to_string()).await;
    }
    put(s, "/m/outside", "x").await;
    let prefix = || RangeRequest::new(KeyRange::prefix(b("/l/")));

    let resp = range(s, prefix().with_limit(2)).await;
    assert_eq!(keys(&resp.kvs), ["/l/1", "/l/2"]);
    assert!(resp.more);
    assert_eq!(resp.count, 5);

    let resp = range(s, prefix().with_limit(4)).await;
    assert_eq!(keys(&resp.kvs), ["/l/1", "/l/2", "/l/3", "/l/4"]);
    assert!(resp.more);
    assert_eq!(resp.count, 5);

    let resp = range(s, prefix().with_limit(5)).await;
    assert_eq!(resp.kvs.len(), 5);
    assert!(!resp.more, "limit equal to the count is not cut short");
    assert_eq!(resp.count, 5);

    let resp = range(s, prefix().with_limit(50)).await;
    assert_eq!(resp.kvs.len(), 5);
    assert!(!resp.more);

    // Paging by hand, as the API server's list continuation does.
    let resp = range(
        s,
        RangeRequest::new(KeyRange::Range {
            start: b("/l/3"),
            end: b("/l0"),
        })
        .with_limit(2),
    )
    .await;
    assert_eq!(keys(&resp.kvs), ["/l/3", "/l/4"]);
    assert!(resp.more);
    assert_eq!(resp.count, 3);
}

async fn range_count_only_returns_the_count_without_kvs(s: Arc<dyn Store>) {
    let s = &*s;
    for key in ["/c/1", "/c/2", "/c/3", "/d/1"] {
        put(s, key, "v").await;
    }
    let resp = range(
        s,
        RangeRequest::new(KeyRange::prefix(b("/c/"))).count_only(),
    )
    .await;
    assert_eq!(resp.kvs, vec![]);
    assert_eq!(resp.count, 3);
    assert!(!resp.more);
    assert_eq!(resp.revision, current_revision(s).await);
    assert_eq!(s.count(b"/c/").await.unwrap(), 3);
    assert_eq!(s.count(b"/nothing/").await.unwrap(), 0);
    assert_eq!(s.count(b"").await.unwrap(), 4);
}

async fn range_keys_only_returns_empty_values(s: Arc<dyn Store>) {
    let s = &*s;
    let r1 = put(s, "/k/1", "one").await;
    let r2 = put(s, "/k/2", "two").await;
    let r3 = put(s, "/k/2", "two again").await;
    let resp = range(s, RangeRequest::new(KeyRange::prefix(b("/k/"))).keys_only()).await;
    assert_eq!(
        resp.kvs,
        vec![kv("/k/1", "", r1, r1, 1), kv("/k/2", "", r2, r3, 2)]
    );
    assert_eq!(resp.count, 2);
}

async fn range_at_past_revision_sees_history(s: Arc<dyn Store>) {
    let s = &*s;
    let before = put(s, "/other", "x").await;
    let r1 = put(s, "/a", "1").await;
    let r2 = put(s, "/a", "2").await;
    let r3 = put(s, "/b", "1").await;
    let r4 = del(s, "/a").await;
    let r5 = put(s, "/b", "2").await;

    let at = |rev: Revision, range: KeyRange| RangeRequest::new(range).at_revision(rev);
    let key_a = || KeyRange::key(b("/a"));

    let resp = range(s, at(before, key_a())).await;
    assert_eq!(resp.kvs, vec![], "/a did not exist yet");
    assert_eq!(resp.count, 0);
    assert_eq!(
        resp.revision, r5,
        "reads at a past revision report the current one"
    );

    let resp = range(s, at(r1, key_a())).await;
    assert_eq!(resp.kvs, vec![kv("/a", "1", r1, r1, 1)]);
    assert_eq!(resp.revision, r5);
    assert_eq!(
        range(s, at(r2, key_a())).await.kvs,
        vec![kv("/a", "2", r1, r2, 2)]
    );

    let resp = range(s, at(r3, KeyRange::prefix(b("/")))).await;
    assert_eq!(
        resp.kvs,
        vec![
            kv("/a", "2", r1, r2, 2),
            kv("/b", "1", r3, r3, 1),
            kv("/other", "x", before, before, 1),
        ]
    );
    assert_eq!(resp.count, 3);

    let resp = range(s, at(r4, KeyRange::prefix(b("/")))).await;
    assert_eq!(keys(&resp.kvs), ["/b", "/other"], "/a is deleted at {r4}");
    assert_eq!(
        range(s, at(r4, KeyRange::prefix(b("/"))).count_only())
            .await
            .count,
        2
    );

    // Limit and count at a past revision.
    let resp = range(s, at(r3, KeyRange::prefix(b("/"))).with_limit(1)).await;
    assert_eq!(resp.kvs, vec![kv("/a", "2", r1, r2, 2)]);
    assert!(resp.more);
    assert_eq!(resp.count, 3);

    // The current revision, named explicitly, is the present.
    let resp = range(s, at(r5, KeyRange::prefix(b("/")))).await;
    assert_eq!(
        resp.kvs,
        vec![
            kv("/b", "2", r3, r5, 2),
            kv("/other", "x", before, before, 1)
        ]
    );
}

async fn range_at_future_revision_fails(s: Arc<dyn Store>) {
    let s = &*s;
    let r = put(s, "/a", "1").await;
    let err = s
        .range(RangeRequest::new(KeyRange::key(b("/a"))).at_revision(r + 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::FutureRevision { requested, .. } if requested == r + 1),
        "{err:?}"
    );
    let err = s
        .range(RangeRequest::new(KeyRange::prefix(b("/"))).at_revision(r + 1000))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::FutureRevision { requested, .. } if requested == r + 1000),
        "{err:?}"
    );
    assert_eq!(
        range(s, RangeRequest::new(KeyRange::key(b("/a"))).at_revision(r))
            .await
            .kvs,
        vec![kv("/a", "1", r, r, 1)]
    );
}

// ------------------------------------------------------------------------------------------
// create / update / delete / put
// ------------------------------------------------------------------------------------------

async fn create_fails_with_already_exists_carrying_the_current_kv(s: Arc<dyn Store>) {
    let s = &*s;
    let r1 = s.create(b"/c", b("first"), 0).await.unwrap();
    let r2 = put(s, "/c", "second").await;
    let err = s.create(b"/c", b("third"), 0).await.unwrap_err();
    match err {
        Error::AlreadyExists { key, current } => {
            assert_eq!(key, "/c");
            assert_eq!(*current, kv("/c", "second", r1, r2, 2));
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(get(s, "/c").await, Some(kv("/c", "second", r1, r2, 2)));
    assert_eq!(current_revision(s).await, r2);

    // After a delete the key can be created again.
    let d = del(s, "/c").await;
    let r3 = s.create(b"/c", b("fourth"), 0).await.unwrap();
    assert_eq!(r3, d + 1);
    assert_eq!(get(s, "/c").await, Some(kv("/c", "fourth", r3, r3, 1)));
}

async fn update_succeeds_only_at_the_expected_mod_revision(s: Arc<dyn Store>) {
    let s = &*s;
    let r1 = s.create(b"/u", b("v1"), 0).await.unwrap();
    let r2 = s.update(b"/u", b("v2"), r1, 0).await.unwrap();
    assert_eq!(r2, r1 + 1);
    assert_eq!(get(s, "/u").await, Some(kv("/u", "v2", r1, r2, 2)));

    // Stale expectation: Conflict carrying the current state, nothing written.
    let err = s.update(b"/u", b("stale"), r1, 0).await.unwrap_err();
    match err {
        Error::Conflict {
            key,
            expected,
            current,
        } => {
            assert_eq!(key, "/u");
            assert_eq!(expected, r1);
            assert_eq!(current.as_deref(), Some(&kv("/u", "v2", r1, r2, 2)));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(current_revision(s).await, r2);

    // A missing key: Conflict without a current state.
    let err = s.update(b"/missing", b("x"), r1, 0).await.unwrap_err();
    assert!(
        matches!(&err, Error::Conflict { key, expected, current: None } if key == "/missing" && *expected == r1),
        "{err:?}"
    );
    assert_eq!(get(s, "/missing").await, None);
    assert_eq!(current_revision(s).await, r2);
}

async fn delete_guarded_by_mod_revision(s: Arc<dyn Store>) {
    let s = &*s;
    let r1 = s.create(b"/d", b("v1"), 0).await.unwrap();
    let r2 = put(s, "/d", "v2").await;

    let err = s.delete(b"/d", Some(r1)).await.unwrap_err();
    match err {
        Error::Conflict {
            key,
            expected,
            current,
        } => {
            assert_eq!(key, "/d");
            assert_eq!(expected, r1);
            assert_eq!(current.as_deref(), Some(&kv("/d", "v2", r1, r2, 2)));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(get(s, "/d").await, Some(kv("/d", "v2", r1, r2, 2)));
    assert_eq!(current_revision(s).await, r2);

    let (prev, rev) = s.delete(b"/d", Some(r2)).await.unwrap();
    assert_eq!(prev, kv("/d", "v2", r1, r2, 2));
    assert_eq!(rev, r2 + 1);
    assert_eq!(get(s, "/d").await, None);
    assert_eq!(current_revision(s).await, r2 + 1);
}

async fn delete_unguarded_and_of_missing_keys(s: Arc<dyn Store>) {
    let s = &*s;
    let r1 = put(s, "/d", "v").await;
    let (prev, rev) = s.delete(b"/d", None).await.unwrap();
    assert_eq!(prev, kv("/d", "v", r1, r1, 1));
    assert_eq!(rev, r1 + 1);

    let err = s.delete(b"/d", None).await.unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { key } if key == "/d"),
        "{err:?}"
    );
    let err = s.delete(b"/d", Some(r1)).await.unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { key } if key == "/d"),
        "{err:?}"
    );
    let err = s.delete(b"/never", Some(7)).await.unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { key } if key == "/never"),
        "{err:?}"
    );
    assert_eq!(current_revision(s).await, r1 + 1);
}

async fn put_creates_then_overwrites(s: Arc<dyn Store>) {
    let s = &*s;
    let r1 = put(s, "/p", "1").await;
    let r2 = put(s, "/p", "2").await;
    assert_eq!(r2, r1 + 1);
    assert_eq!(get(s, "/p").await, Some(kv("/p", "2", r1, r2, 2)));
    // An empty value is a value.
    let r3 = put(s, "/p", "").await;
    assert_eq!(get(s, "/p").await, Some(kv("/p", "", r1, r3, 3)));
}

async fn concurrent_creates_updates_and_deletes_have_exactly_one_winner(s: Arc<dyn Store>) {
    const RIVALS: usize = 8;
    let race = |op: &'static str, expected: Revision| {
        let tasks: Vec<_> = (0..RIVALS)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let value = format!("{op} by {i}");
                    let r = match op {
                        "create" => s.create(b"/race", b(&value), 0).await.map(|r| (r, None)),
                        "update" => s
                            .update(b"/race", b(&value), expected, 0)
                            .await
                            .map(|r| (r, None)),
                        _ => s
                            .delete(b"/race", Some(expected))
                            .await
                            .map(|(kv, r)| (r, Some(kv))),
                    };
                    (value, r)
                })
            })
            .collect();
        async move {
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        }
    };

    // Create: one winner, every loser sees the winner's key.
    let results = race("create", 0).await;
    let winners: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let (value, Ok((created, _))) = winners[0] else {
        unreachable!()
    };
    let created = *created;
    let current = kv("/race", value, created, created, 1);
    for (_, r) in &results {
        match r {
            Ok(_) => {}
            Err(Error::AlreadyExists { current: c, .. }) => assert_eq!(**c, current),
            Err(e) => panic!("a losing create failed with {e:?}"),
        }
    }

    // Update at the same expected revision: one winner, losers see its write.
    let results = race("update", created).await;
    let winners: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let (value, Ok((updated, _))) = winners[0] else {
        unreachable!()
    };
    let updated = *updated;
    assert_eq!(updated, created + 1);
    let current = kv("/race", value, created, updated, 2);
    for (_, r) in &results {
        match r {
            Ok(_) => {}
            Err(Error::Conflict {
                expected,
                current: c,
                ..
            }) => {
                assert_eq!(*expected, created);
                assert_eq!(c.as_deref(), Some(&current));
            }
            Err(e) => panic!("a losing update failed with {e:?}"),
        }
    }

    // Guarded delete: one winner, gets the deleted key; losers find it gone.
    let results = race("delete", updated).await;
    let winners: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let Ok((deleted_at, prev)) = &winners[0].1 else {
        unreachable!()
    };
    assert_eq!(*deleted_at, updated + 1);
    assert_eq!(prev.as_ref(), Some(&current));
    for (_, r) in &results {
        match r {
            Ok(_) | Err(Error::NotFound { .. }) => {}
            Err(e) => panic!("a losing delete failed with {e:?}"),
        }
    }
    assert_eq!(current_revision(&*s).await, updated + 1);
}

async fn empty_key_is_an_invalid_request(s: Arc<dyn Store>) {
    let s = &*s;
    let r0 = current_revision(s).await;
    let err = s.put(b"", b("v"), 0).await.unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
    let err = s.create(b"", b("v"), 0).await.unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
    assert_eq!(current_revision(s).await, r0);
    assert_eq!(s.count(b"").await.unwrap(), 0);
}

// ------------------------------------------------------------------------------------------
// Transactions
// ------------------------------------------------------------------------------------------

async fn txn_compares_every_target_with_every_op(s: Arc<dyn Store>) {
    let s = &*s;
    let lease = s.lease_grant(60).await.unwrap();
    let c = put(s, "/k", "b-value").await;
    let m = s.put(b"/k", b("m-value"), lease).await.unwrap();
    // "/k": value "m-value", create c, mod m, version 2, lease `lease`; "/absent" does not exist.
    use CompareOp::{Equal, Greater, Less, NotEqual};
    use CompareTarget::{CreateRevision, Lease, ModRevision, Value, Version};
    let cases: Vec<(&str, CompareOp, CompareTarget, bool)> = vec![
        ("/k", Equal, Value(b("m-value")), true),
        ("/k", Equal, Value(b("other")), false),
        ("/k", NotEqual, Value(b("other")), true),
        ("/k", NotEqual, Value(b("m-value")), false),
        ("/k", Greater, Value(b("a")), true),
        ("/k", Greater, Value(b("z")), false),
        ("/k", Less, Value(b("z")), true),
        ("/k", Less, Value(b("m-value")), false),
        ("/k", Equal, Version(2), true),
        ("/k", Equal, Version(1), false),
        ("/k", NotEqual, Version(1), true),
        ("/k", Greater, Version(1), true),
        ("/k", Greater, Version(2), false),
        ("/k", Less, Version(3), true),
        ("/k", Less, Version(2), false),
        ("/k", Equal, CreateRevision(c), true),
        ("/k", Equal, CreateRevision(m), false),
        ("/k", NotEqual, CreateRevision(0), true),
        ("/k", Greater, CreateRevision(c - 1), true),
        ("/k", Less, CreateRevision(c), false),
        ("/k", Equal, ModRevision(m), true),
        ("/k", Equal, ModRevision(c), false),
        ("/k", NotEqual, ModRevision(c), true),
        ("/k", Greater, ModRevision(c), true),
        ("/k", Less, ModRevision(m + 1), true),
        ("/k", Less, ModRevision(m), false),
        ("/k", Equal, Lease(lease), true),
        ("/k", Equal, Lease(0), false),
        ("/k", NotEqual, Lease(0), true),
        ("/k", Greater, Lease(0), true),
        // An absent key has zero revisions, version and lease, and fails every value compare.
        ("/absent", Equal, Version(0), true),
        ("/absent", Equal, CreateRevision(0), true),
        ("/absent", Equal, ModRevision(0), true),
        ("/absent", Less, ModRevision(1), true),
        ("/absent", Greater, Version(0), false),
        ("/absent", Equal, Lease(0), true),
        ("/absent", Equal, Value(vec![]), false),
        ("/absent", NotEqual, Value(b("x")), false),
        ("/absent", Less, Value(b("x")), false),
    ];
    let r0 = current_revision(s).await;
    for (key, op, target, expected) in cases {
        let resp = s
            .txn(
                Txn::new()
                    .when(Compare::new(b(key), op, target.clone()))
                    .and_then(vec![TxnOp::get(b("/k"))])
                    .or_else(vec![TxnOp::get(b("/absent")), TxnOp::get(b("/absent"))]),
            )
            .await
            .unwrap();
        assert_eq!(
            resp.succeeded, expected,
            "compare {key} {op:?} {target:?} should be {expected}"
        );
        assert_eq!(
            resp.responses.len(),
            if expected { 1 } else { 2 },
            "branch that ran"
        );
        assert_eq!(resp.revision, r0);
    }

    // Several compares: all must hold.
    let all = |second: CompareTarget| {
        Txn::new()
            .when(Compare::new(b("/k"), Equal, Version(2)))
            .when(Compare::new(b("/k"), Equal, second))
    };
    assert!(s.txn(all(ModRevision(m))).await.unwrap().succeeded);
    assert!(!s.txn(all(ModRevision(c))).await.unwrap().succeeded);
}

async fn txn_runs_the_else_branch_when_a_compare_fails(s: Arc<dyn Store>) {
    let s = &*s;
    let r1 = put(s, "/k", "v").await;
    let resp = s
        .txn(
            Txn::new()
                .when(Compare::new(
                    b("/k"),
                    CompareOp::Equal,
                    CompareTarget::ModRevision(r1),
                ))
                .when(Compare::new(
                    b("/k"),
                    CompareOp::Equal,
                    CompareTarget::Value(b("wrong")),
                ))
                .and_then(vec![txn_put("/then", "1")])
                .or_else(vec![
                    txn_put("/else", "1"),
                    TxnOp::get(b("/k")),
                    TxnOp::Put {
                        key: b("/k"),
                        value: b("from else"),
                        lease: 0,
                        prev_kv: true,
                    },
                ]),
        )
        .await
        .unwrap();
    assert!(!resp.succeeded);
    assert_eq!(resp.revision, r1 + 1, "the else branch wrote");
    assert_eq!(resp.responses.len(), 3);
    assert_eq!(resp.responses[0], TxnOpResponse::Put { prev_kv: None });
    assert_eq!(
        txn_range_kvs(&resp.responses[1]),
        vec![kv("/k", "v", r1, r1, 1)]
    );
    assert_eq!(
        resp.responses[2],
        TxnOpResponse::Put {
            prev_kv: Some(kv("/k", "v", r1, r1, 1))
        }
    );
    assert_eq!(get(s, "/then").await, None);
    assert_eq!(
        get(s, "/else").await,
        Some(kv("/else", "1", r1 + 1, r1 + 1, 1))
    );
    assert_eq!(
        get(s, "/k").await,
        Some(kv("/k", "from else", r1, r1 + 1, 2))
    );
}

/// Reads inside a transaction see the state as the transaction has made it so far (etcd reads
/// its own writes within a transaction).
async fn txn_ranges_see_the_state_as_of_their_position(s: Arc<dyn Store>) {
    let s = &*s;
    let r1 = put(s, "/k", "old").await;
    put(s, "/p/1", "1").await;
    let resp = s
        .txn(Txn::new().and_then(vec![
            TxnOp::get(b("/k")),
            txn_put("/k", "new"),
            TxnOp::get(b("/k")),
            TxnOp::Range(RangeRequest::new(KeyRange::prefix(b("/p/"))).count_only()),
            txn_put("/p/2", "2"),
            TxnOp::Range(RangeRequest::new(KeyRange::prefix(b("/p/")))),
        ]))
        .await
        .unwrap();
    assert!(resp.succeeded);
    let rev = resp.revision;
    assert_eq!(rev, r1 + 2);
    assert_eq!(resp.responses.len(), 6);
    assert_eq!(
        txn_range_kvs(&resp.responses[0]),
        vec![kv("/k", "old", r1, r1, 1)]
    );
    assert_eq!(resp.responses[1], TxnOpResponse::Put { prev_kv: None });
    assert_eq!(
        txn_range_kvs(&resp.responses[2]),
        vec![kv("/k", "new", r1, rev, 2)]
    );
    match &resp.responses[3] {
        TxnOpResponse::Range(r) => {
            assert_eq!(r.count, 1);
            assert_eq!(r.kvs, vec![]);
        }
        other => panic!("expected a range response, got {other:?}"),
    }
    assert_eq!(keys(&txn_range_kvs(&resp.responses[5])), ["/p/1", "/p/2"]);
    // Each read reports the revision it was served at, as etcd does: the store's revision
    // before the transaction's first write, the transaction's own revision after it.
    let served_at: Vec<Revision> = [0, 2, 3, 5]
        .iter()
        .map(|&i| match &resp.responses[i] {
            TxnOpResponse::Range(r) => r.revision,
            other => panic!("expected a range response, got {other:?}"),
        })
        .collect();
    assert_eq!(served_at, [r1 + 1, rev, rev, rev]);
}

async fn txn_delete_range_returns_prev_kvs(s: Arc<dyn Store>) {
    let s = &*s;
    let mut revs = BTreeMap::new();
    for key in ["/p/2", "/p/1", "/p/3", "/q", "/p"] {
        revs.insert(key, put(s, key, key).await);
    }
    let resp = s
        .txn(Txn::new().and_then(vec![TxnOp::Delete {
            range: KeyRange::prefix(b("/p/")),
            prev_kv: true,
        }]))
        .await
        .unwrap();
    let rev = resp.revision;
    assert_eq!(rev, revs["/p"] + 1);
    assert_eq!(
        resp.responses,
        vec![TxnOpResponse::Delete {
            deleted: 3,
            prev_kvs: ["/p/1", "/p/2", "/p/3"]
                .into_iter()
                .map(|k| kv(k, k, revs[k], revs[k], 1))
                .collect(),
        }]
    );
    assert_eq!(s.count(b"/p/").await.unwrap(), 0);
    assert_eq!(
        keys(
            &range(s, RangeRequest::new(KeyRange::prefix(b("/"))))
                .await
                .kvs
        ),
        ["/p", "/q"]
    );

    // Without prev_kv only the count comes back; an explicit range deletes [start, end).
    let resp = s
        .txn(Txn::new().and_then(vec![TxnOp::Delete {
            range: KeyRange::Range {
                start: b("/p"),
                end: b("/q"),
            },
            prev_kv: false,
        }]))
        .await
        .unwrap();
    assert_eq!(resp.revision, rev + 1);
    assert_eq!(
        resp.responses,
        vec![TxnOpResponse::Delete {
            deleted: 1,
            prev_kvs: vec![]
        }]
    );
    assert_eq!(
        keys(
            &range(s, RangeRequest::new(KeyRange::prefix(b("/"))))
                .await
                .kvs
        ),
        ["/q"]
    );
}

async fn txn_put_with_prev_kv_returns_the_previous_kv(s: Arc<dyn Store>) {
    let s = &*s;
    let r1 = put(s, "/a", "1").await;
    let prev_put = |key: &str, value: &str, prev_kv: bool| TxnOp::Put {
        key: b(key),
        value: b(value),
        lease: 0,
        prev_kv,
    };
    let resp = s
        .txn(Txn::new().and_then(vec![prev_put("/a", "2", true), prev_put("/new", "1", true)]))
        .await
        .unwrap();
    assert_eq!(
        resp.responses,
        vec![
            TxnOpResponse::Put {
                prev_kv: Some(kv("/a", "1", r1, r1, 1))
            },
            TxnOpResponse::Put { prev_kv: None },
        ]
    );
    let resp = s
        .txn(Txn::new().and_then(vec![prev_put("/a", "3", false)]))
        .await
        .unwrap();
    assert_eq!(resp.responses, vec![TxnOpResponse::Put { prev_kv: None }]);
    assert_eq!(get(s, "/a").await, Some(kv("/a", "3", r1, r1 + 2, 3)));
}

// ------------------------------------------------------------------------------------------
// Watch
// ------------------------------------------------------------------------------------------

async fn watch_from_now_delivers_only_later_changes(s: Arc<dyn Store>) {
    let s = &*s;
    let r0 = put(s, "/w/a", "before").await;
    let mut stream = watch(s, WatchRequest::new(KeyRange::prefix(b("/w/")))).await;
    let r1 = put(s, "/w/a", "after").await;
    let r2 = put(s, "/w/b", "new").await;
    let r3 = del(s, "/w/a").await;
    let events = next_events(&mut stream, 3).await;
    assert_eq!(
        events,
        vec![
            put_event(kv("/w/a", "after", r0, r1, 2)),
            put_event(kv("/w/b", "new", r2, r2, 1)),
            delete_event("/w/a", r3),
        ]
    );
    assert_next_event_is_sentinel(s, &mut stream, "/w/sentinel").await;
}

async fn watch_from_past_revision_replays_then_continues_live(s: Arc<dyn Store>) {
    let s = &*s;
    let r1 = put(s, "/w/a", "1").await;
    let r2 = put(s, "/w/b", "1").await;
    let r3 = put(s, "/w/a", "2").await;
    let r4 = del(s, "/w/b").await;
    let r5 = put(s, "/w/c", "1").await;

    let mut stream = watch(
        s,
        WatchRequest::new(KeyRange::prefix(b("/w/"))).from_revision(r2),
    )
    .await;
    // Live writes racing the replay: the seam must have neither a gap nor a duplicate.
    let mut live = Vec::new();
    for i in 0..20 {
        let key = format!("/w/live/{}", i % 3);
        let rev = put(s, &key, &i.to_string()).await;
        live.push((key, i.to_string(), rev));
    }
    let events = next_events(&mut stream, 4 + live.len()).await;
    let mut expected = vec![
        put_event(kv("/w/b", "1", r2, r2, 1)),
        put_event(kv("/w/a", "2", r1, r3, 2)),
        delete_event("/w/b", r4),
        put_event(kv("/w/c", "1", r5, r5, 1)),
    ];
    let mut first_rev: BTreeMap<String, (Revision, i64)> = BTreeMap::new();
    for (key, value, rev) in &live {
        let entry = first_rev.entry(key.clone()).or_insert((*rev, 0));
        entry.1 += 1;
        expected.push(put_event(kv(key, value, entry.0, *rev, entry.1)));
    }
    assert_eq!(events, expected);
    let revs: Vec<Revision> = events.iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(revs, (r2..=r5 + 20).collect::<Vec<_>>());
    assert_next_event_is_sentinel(s, &mut stream, "/w/sentinel").await;
}

async fn watch_filters_by_key_prefix_and_range(s: Arc<dyn Store>) {
    let s = &*s;
    let mut by_key = watch(s, WatchRequest::new(KeyRange::key(b("/f/a")))).await;
    let mut by_prefix = watch(s, WatchRequest::new(KeyRange::prefix(b("/f/a")))).await;
    let mut by_range = watch(
        s,
        WatchRequest::new(KeyRange::Range {
            start: b("/f/b"),
            end: b("/f/d"),
        }),
    )
    .await;
    let mut everything = watch(s, WatchRequest::new(KeyRange::prefix(Vec::<u8>::new()))).await;

    let written = [
        "/f/a", "/f/ab", "/f/a/x", "/f/b", "/f/c", "/f/d", "/g/a", "/f",
    ];
    for key in written {
        put(s, key, "v").await;
    }
    // One closing write inside every watched range, so each stream's last event is known.
    let end = s
        .txn(Txn::new().and_then(vec![txn_put("/f/a", "end"), txn_put("/f/c", "end")]))
        .await
        .unwrap()
        .revision;

    assert_eq!(keys_until(&mut by_key, end).await, ["/f/a", "/f/a"]);
    assert_eq!(
        keys_until(&mut by_prefix, end).await,
        ["/f/a", "/f/ab", "/f/a/x", "/f/a"]
    );
    assert_eq!(
        keys_until(&mut by_range, end).await,
        ["/f/b", "/f/c", "/f/c"]
    );
    let mut all: Vec<String> = written.iter().map(|k| k.to_string()).collect();
    all.extend(["/f/a".to_string(), "/f/c".to_string()]);
    assert_eq!(keys_until(&mut everything, end).await, all);
}

async fn watch_prev_kv_on_puts_and_deletes(s: Arc<dyn Store>) {
    let s = &*s;
    let start = current_revision(s).await + 1;
    let mut with = watch(
        s,
        WatchRequest::new(KeyRange::prefix(b("/v/"))).with_prev_kv(),
    )
    .await;
    let mut without = watch(s, WatchRequest::new(KeyRange::prefix(b("/v/")))).await;
    let r1 = put(s, "/v/a", "1").await;
    let r2 = put(s, "/v/a", "2").await;
    let r3 = del(s, "/v/a").await;
    let r4 = put(s, "/v/a", "3").await;

    let plain = vec![
        put_event(kv("/v/a", "1", r1, r1, 1)),
        put_event(kv("/v/a", "2", r1, r2, 2)),
        delete_event("/v/a", r3),
        put_event(kv("/v/a", "3", r4, r4, 1)),
    ];
    let expected = vec![
        plain[0].clone(),
        with_prev(plain[1].clone(), kv("/v/a", "1", r1, r1, 1)),
        with_prev(plain[2].clone(), kv("/v/a", "2", r1, r2, 2)),
        plain[3].clone(),
    ];
    assert_eq!(next_events(&mut with, 4).await, expected);
    assert_eq!(next_events(&mut without, 4).await, plain);

    // The same from history.
    let mut replay = watch(
        s,
        WatchRequest::new(KeyRange::prefix(b("/v/")))
            .from_revision(start)
            .with_prev_kv(),
    )
    .await;
    assert_eq!(next_events(&mut replay, 4).await, expected);
}

async fn watch_events_of_one_txn_share_a_revision_in_op_order(s: Arc<dyn Store>) {
    let s = &*s;
    put(s, "/t/d", "old").await;
    put(s, "/t/e1", "old").await;
    let r1 = put(s, "/t/e2", "old").await;
    let mut live = watch(s, WatchRequest::new(KeyRange::prefix(b("/t/")))).await;
    let rev = s
        .txn(Txn::new().and_then(vec![
            txn_put("/t/c", "1"),
            txn_put("/t/a", "2"),
            TxnOp::delete(b("/t/d")),
            TxnOp::Delete {
                range: KeyRange::prefix(b("/t/e")),
                prev_kv: false,
            },
            txn_put("/t/b", "3"),
        ]))
        .await
        .unwrap()
        .revision;
    assert_eq!(rev, r1 + 1);
    let expected = vec![
        put_event(kv("/t/c", "1", rev, rev, 1)),
        put_event(kv("/t/a", "2", rev, rev, 1)),
        delete_event("/t/d", rev),
        delete_event("/t/e1", rev),
        delete_event("/t/e2", rev),
        put_event(kv("/t/b", "3", rev, rev, 1)),
    ];
    assert_eq!(next_events(&mut live, 6).await, expected);
    let mut replay = watch(
        s,
        WatchRequest::new(KeyRange::prefix(b("/t/"))).from_revision(rev),
    )
    .await;
    assert_eq!(next_events(&mut replay, 6).await, expected);
}

async fn watch_sees_every_revision_of_concurrent_writers_exactly_once(s: Arc<dyn Store>) {
    const WRITERS: usize = 4;
    const WRITES: usize = 25;
    let r0 = current_revision(&*s).await;
    let mut stream = watch(&*s, WatchRequest::new(KeyRange::prefix(b("/cw/")))).await;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            for i in 0..WRITES {
                // Each writer has its own key and also hits a shared one.
                let key = if i % 2 == 0 {
                    format!("/cw/{w}")
                } else {
                    "/cw/shared".to_string()
                };
                let value = format!("{w}-{i}");
                let rev = s.put(key.as_bytes(), b(&value), 0).await.unwrap();
                done.push((rev, key, value));
            }
            done
        }));
    }
    let mut writes: BTreeMap<Revision, (String, String)> = BTreeMap::new();
    for task in tasks {
        for (rev, key, value) in task.await.unwrap() {
            assert!(
                writes.insert(rev, (key, value)).is_none(),
                "revision {rev} given twice"
            );
        }
    }
    let total = WRITERS * WRITES;
    let all_revs: Vec<Revision> = writes.keys().copied().collect();
    assert_eq!(all_revs, (r0 + 1..=r0 + total as i64).collect::<Vec<_>>());

    let events = next_events(&mut stream, total).await;
    let seen: Vec<(Revision, String, String)> = events
        .iter()
        .map(|e| {
            assert_eq!(e.kind, EventType::Put);
            (
                e.kv.mod_revision,
                event_key(e),
                String::from_utf8_lossy(&e.kv.value).into_owned(),
            )
        })
        .collect();
    let wanted: Vec<(Revision, String, String)> = writes
        .into_iter()
        .map(|(rev, (key, value))| (rev, key, value))
        .collect();
    assert_eq!(seen, wanted);
    assert_next_event_is_sentinel(&*s, &mut stream, "/cw/sentinel").await;
}

async fn watch_resumes_from_last_revision_without_loss_or_duplicate(s: Arc<dyn Store>) {
    let s = &*s;
    let mut stream = watch(s, WatchRequest::new(KeyRange::prefix(b("/r/")))).await;
    let mut written = Vec::new();
    for i in 0..5 {
        let rev = put(s, &format!("/r/{i}"), "first").await;
        written.push(put_event(kv(&format!("/r/{i}"), "first", rev, rev, 1)));
    }
    let seen = next_events(&mut stream, 3).await;
    assert_eq!(seen[..], written[..seen.len()]);
    let last = seen.last().unwrap().kv.mod_revision;
    drop(stream);

    for i in 0..5 {
        let key = format!("/r/{i}");
        let create = written[i].kv.create_revision;
        let rev = put(s, &key, "second").await;
        written.push(put_event(kv(&key, "second", create, rev, 2)));
    }
    let mut resumed = watch(
        s,
        WatchRequest::new(KeyRange::prefix(b("/r/"))).from_revision(last + 1),
    )
    .await;
    let remainder = &written[seen.len()..];
    assert_eq!(next_events(&mut resumed, remainder.len()).await, remainder);
    assert_next_event_is_sentinel(s, &mut resumed, "/r/sentinel").await;
}

async fn watch_from_compacted_revision_fails_compacted(s: Arc<dyn Store>) {
    let s = &*s;
    let r1 = put(s, "/wc/a", "1").await;
    put(s, "/wc/a", "2").await;
    let r3 = put(s, "/wc/b", "1").await;
    let r4 = put(s, "/wc/a", "3").await;
    s.compact(r3).await.unwrap();

    let err = match s
        .watch(WatchRequest::new(KeyRange::prefix(b("/wc/"))).from_revision(r1))
        .await
    {
        Err(e) => e,
        Ok(mut stream) => match tokio::time::timeout(WAIT, stream.next()).await {
            Ok(Some(Err(e))) => e,
            other => panic!("expected Compacted as the first watch item, got {other:?}"),
        },
    };
    assert!(
        matches!(err, Error::Compacted { requested, compact_revision } if requested == r1 && compact_revision == r3),
        "{err:?}"
    );

    // From the compaction point itself, history is still there.
    let mut stream = watch(
        s,
        WatchRequest::new(KeyRange::prefix(b("/wc/"))).from_revision(r3),
    )
    .await;
    assert_eq!(
        next_events(&mut stream, 2).await,
        vec![
            put_event(kv("/wc/b", "1", r3, r3, 1)),
            put_event(kv("/wc/a", "3", r1, r4, 3)),
        ]
    );
}

/// A watch starting at a revision not reached yet waits for it (what a client resuming from
/// the current revision + 1 does).
async fn watch_from_a_future_revision_starts_there(s: Arc<dyn Store>) {
    let s = &*s;
    let cur = current_revision(s).await;
    let mut next = watch(
        s,
        WatchRequest::new(KeyRange::prefix(b("/fw/"))).from_revision(cur + 1),
    )
    .await;
    let mut later = watch(
        s,
        WatchRequest::new(KeyRange::prefix(b("/fw/"))).from_revision(cur + 3),
    )
    .await;
    let r1 = put(s, "/fw/a", "1").await;
    let r2 = put(s, "/fw/b", "1").await;
    let r3 = put(s, "/fw/a", "2").await;
    assert_eq!((r1, r2, r3), (cur + 1, cur + 2, cur + 3));
    assert_eq!(
        next_events(&mut next, 3).await,
        vec![
            put_event(kv("/fw/a", "1", r1, r1, 1)),
            put_event(kv("/fw/b", "1", r2, r2, 1)),
            put_event(kv("/fw/a", "2", r1, r3, 2)),
        ]
    );
    assert_eq!(
        next_events(&mut later, 1).await,
        vec![put_event(kv("/fw/a", "2", r1, r3, 2))]
    );
    assert_next_event_is_sentinel(s, &mut later, "/fw/sentinel").await;
}

/// A replay of a long history while writers keep writing: the hand-over from history to live
/// events has neither a gap nor a duplicate.
async fn watch_replaying_long_history_under_concurrent_writes_has_no_seam(s: Arc<dyn Store>) {
    const HISTORY: usize = 300;
    const LIVE: usize = 200;
    let first = current_revision(&*s).await + 1;
    for i in 0..HISTORY {
        put(&*s, &format!("/seam/h/{}", i % 7), &i.to_string()).await;
    }
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..LIVE {
                put(&*s, &format!("/seam/l/{}", i % 5), &i.to_string()).await;
            }
        })
    };
    let mut stream = watch(
        &*s,
        WatchRequest::new(KeyRange::prefix(b("/seam/"))).from_revision(first),
    )
    .await;
    let events = next_events(&mut stream, HISTORY + LIVE).await;
    writer.await.unwrap();
    let revs: Vec<Revision> = events.iter().map(|e| e.kv.mod_revision).collect();
    let wanted: Vec<Revision> = (first..first + (HISTORY + LIVE) as i64).collect();
    assert_eq!(revs, wanted);
    for (i, e) in events.iter().enumerate() {
        let (key, value) = if i < HISTORY {
            (format!("/seam/h/{}", i % 7), i.to_string())
        } else {
            (
                format!("/seam/l/{}", (i - HISTORY) % 5),
                (i - HISTORY).to_string(),
            )
        };
        assert_eq!(
            (event_key(e), e.kv.value.clone()),
            (key, b(&value)),
            "event {i}"
        );
    }
    assert_next_event_is_sentinel(&*s, &mut stream, "/seam/sentinel").await;
}

/// A watcher that does not read while many events pile up still gets every one of them, in
/// order (or its stream ends with an error; it never silently skips).
async fn watch_slow_consumer_still_receives_every_event(s: Arc<dyn Store>) {
    const TXNS: usize = 150;
    const KEYS: usize = 10;
    let s = &*s;
    let first = current_revision(s).await + 1;
    let mut stream = watch(s, WatchRequest::new(KeyRange::prefix(b("/slow/")))).await;
    for t in 0..TXNS {
        let ops = (0..KEYS)
            .map(|k| txn_put(&format!("/slow/{k:02}"), &format!("{t}")))
            .collect();
        let rev = s.txn(Txn::new().and_then(ops)).await.unwrap().revision;
        assert_eq!(rev, first + t as i64);
    }
    let events = next_events(&mut stream, TXNS * KEYS).await;
    assert_eq!(events.len(), TXNS * KEYS);
    for (i, e) in events.iter().enumerate() {
        let (t, k) = (i / KEYS, i % KEYS);
        let rev = first + t as i64;
        assert_eq!(
            e,
            &put_event(kv(
                &format!("/slow/{k:02}"),
                &t.to_string(),
                first,
                rev,
                t as i64 + 1
            )),
            "event {i}"
        );
    }
    assert_next_event_is_sentinel(s, &mut stream, "/slow/sentinel").await;
}

/// Progress notifications are optional; asking for them must not disturb event delivery, and
/// any that come carry a revision no older than what was delivered before.
async fn watch_with_progress_notify_still_delivers_events(s: Arc<dyn Store>) {
    let s = &*s;
    let mut stream = watch(
        s,
        WatchRequest::new(KeyRange::prefix(b("/pn/"))).with_progress_notify(),
    )
    .await;
    let mut expected = Vec::new();
    for i in 0..3 {
        let key = format!("/pn/{i}");
        let rev = put(s, &key, "v").await;
        expected.push(put_event(kv(&key, "v", rev, rev, 1)));
    }
    let deadline = Instant::now() + WAIT;
    let mut events = Vec::new();
    let mut last_rev = 0;
    while events.len() < expected.len() {
        let resp = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("timed out waiting for events")
            .expect("watch ended")
            .expect("watch failed");
        assert!(resp.revision >= last_rev, "response revisions went back");
        last_rev = resp.revision;
        events.extend(resp.events);
    }
    assert_eq!(events, expected);
}

/// `current_revision` names the last write; a watch on an idle prefix confirms a requested
/// revision at once when the backend takes progress requests (long before its periodic
/// notification), which is what lets a cache serve consistent lists.
async fn requested_progress_confirms_an_idle_prefix(s: Arc<dyn Store>) {
    let s = &*s;
    let mut stream = watch(
        s,
        WatchRequest::new(KeyRange::prefix(b("/idle/"))).with_progress_notify(),
    )
    .await;
    let rev = put(s, "/busy/a", "v").await;
    assert_eq!(s.current_revision().await.unwrap(), rev);
    if !s.request_progress(rev).await {
        return; // The backend declines: its callers read the store instead.
    }
    let resp = tokio::time::timeout(Duration::from_secs(1), stream.next())
        .await
        .expect("no progress notification within 1 s of the request")
        .expect("watch ended")
        .expect("watch failed");
    assert!(resp.events.is_empty(), "{resp:?}");
    assert!(resp.revision >= rev, "{} < {rev}", resp.revision);
}

// ------------------------------------------------------------------------------------------
// Leases
// ------------------------------------------------------------------------------------------

async fn lease_grant_and_time_to_live(s: Arc<dyn Store>) {
    let s = &*s;
    let id = s.lease_grant(30).await.unwrap();
    assert_ne!(id, 0);
    let info = s.lease_time_to_live(id).await.unwrap();
    assert_eq!(info.id, id);
    assert_eq!(info.granted_ttl, 30);
    assert!(
        (25..=30).contains(&info.ttl),
        "ttl {} of a fresh 30 s lease",
        info.ttl
    );

    let other = s.lease_grant(30).await.unwrap();
    assert_ne!(other, id, "lease ids are unique");

    // Keys carry their lease.
    let r = s.put(b"/l/a", b("v"), id).await.unwrap();
    assert_eq!(
        get(s, "/l/a").await,
        Some(with_lease(kv("/l/a", "v", r, r, 1), id))
    );
    let r2 = s.create(b"/l/b", b("v"), other).await.unwrap();
    assert_eq!(
        get(s, "/l/b").await,
        Some(with_lease(kv("/l/b", "v", r2, r2, 1), other))
    );
    // A put without a lease detaches the key.
    let r3 = put(s, "/l/a", "w").await;
    assert_eq!(get(s, "/l/a").await, Some(kv("/l/a", "w", r, r3, 2)));
}

async fn keys_of_an_expired_lease_are_deleted_and_watchers_told(s: Arc<dyn Store>) {
    let s = &*s;
    let id = s.lease_grant(SHORT_TTL).await.unwrap();
    let ra = s.put(b"/e/a", b("1"), id).await.unwrap();
    let rb = s.put(b"/e/b", b("2"), id).await.unwrap();
    let rc = put(s, "/e/c", "3").await;
    assert_eq!(
        get(s, "/e/a").await,
        Some(with_lease(kv("/e/a", "1", ra, ra, 1), id))
    );
    // From the next revision rather than "now": the expiry is seen even if it comes first.
    let mut stream = watch(
        s,
        WatchRequest::new(KeyRange::prefix(b("/e/")))
            .from_revision(rc + 1)
            .with_prev_kv(),
    )
    .await;

    let mut events = next_events_within(&mut stream, 2, EXPIRY_WAIT).await;
    events.sort_by(|x, y| x.kv.key.cmp(&y.kv.key));
    let rev = events[0].kv.mod_revision;
    assert_eq!(rev, rc + 1, "the expiry deletes both keys in one revision");
    assert_eq!(
        events,
        vec![
            with_prev(
                delete_event("/e/a", rev),
                with_lease(kv("/e/a", "1", ra, ra, 1), id)
            ),
            with_prev(
                delete_event("/e/b", rev),
                with_lease(kv("/e/b", "2", rb, rb, 1), id)
            ),
        ]
    );
    assert_eq!(get(s, "/e/a").await, None);
    assert_eq!(get(s, "/e/b").await, None);
    assert_eq!(get(s, "/e/c").await, Some(kv("/e/c", "3", rc, rc, 1)));
    assert_eq!(current_revision(s).await, rev);
    assert_eq!(s.status().await.unwrap().key_count, 1);

    let err = s.lease_time_to_live(id).await.unwrap_err();
    assert!(matches!(err, Error::LeaseNotFound(l) if l == id), "{err:?}");
    let err = s.lease_keep_alive(id).await.unwrap_err();
    assert!(matches!(err, Error::LeaseNotFound(l) if l == id), "{err:?}");
    let err = s.put(b"/e/d", b("x"), id).await.unwrap_err();
    assert!(matches!(err, Error::LeaseNotFound(l) if l == id), "{err:?}");
}

/// Wall-clock time passing is what this case is about, so it sleeps between keep-alives.
async fn lease_keep_alive_extends_it(s: Arc<dyn Store>) {
    let s = &*s;
    let id = s.lease_grant(SHORT_TTL).await.unwrap();
    let r = s.put(b"/ka/a", b("v"), id).await.unwrap();
    let mut stream = watch(
        s,
        WatchRequest::new(KeyRange::prefix(b("/ka/"))).from_revision(r + 1),
    )
    .await;

    // Keep it alive for well over twice its TTL.
    let until = Instant::now() + Duration::from_secs(2 * SHORT_TTL as u64 + 2);
    while Instant::now() < until {
        let info = s.lease_keep_alive(id).await.unwrap();
        assert_eq!(
            info,
            edgesite_store::LeaseInfo {
                id,
                granted_ttl: SHORT_TTL,
                ttl: SHORT_TTL
            }
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(
        get(s, "/ka/a").await,
        Some(with_lease(kv("/ka/a", "v", r, r, 1), id))
    );
    let info = s.lease_time_to_live(id).await.unwrap();
    assert_eq!((info.id, info.granted_ttl), (id, SHORT_TTL));
    assert!((0..=SHORT_TTL).contains(&info.ttl), "ttl {}", info.ttl);

    // Left alone, it expires.
    let events = next_events_within(&mut stream, 1, EXPIRY_WAIT).await;
    assert_eq!(events, vec![delete_event("/ka/a", r + 1)]);
    assert_eq!(get(s, "/ka/a").await, None);
}

async fn lease_revoke_deletes_attached_keys_at_once(s: Arc<dyn Store>) {
    let s = &*s;
    let id = s.lease_grant(60).await.unwrap();
    s.put(b"/rv/a", b("1"), id).await.unwrap();
    s.put(b"/rv/b", b("2"), id).await.unwrap();
    let rc = put(s, "/rv/c", "3").await;
    let mut stream = watch(s, WatchRequest::new(KeyRange::prefix(b("/rv/")))).await;

    s.lease_revoke(id).await.unwrap();
    let rev = rc + 1;
    assert_eq!(get(s, "/rv/a").await, None);
    assert_eq!(get(s, "/rv/b").await, None);
    assert_eq!(get(s, "/rv/c").await, Some(kv("/rv/c", "3", rc, rc, 1)));
    assert_eq!(
        current_revision(s).await,
        rev,
        "one revision for all of the lease's keys"
    );

    let mut events = next_events(&mut stream, 2).await;
    events.sort_by(|x, y| x.kv.key.cmp(&y.kv.key));
    assert_eq!(
        events,
        vec![delete_event("/rv/a", rev), delete_event("/rv/b", rev)]
    );

    let err = s.lease_time_to_live(id).await.unwrap_err();
    assert!(matches!(err, Error::LeaseNotFound(l) if l == id), "{err:?}");
    let err = s.lease_revoke(id).await.unwrap_err();
    assert!(matches!(err, Error::LeaseNotFound(l) if l == id), "{err:?}");

    // Revoking a lease with no key writes nothing.
    let empty = s.lease_grant(60).await.unwrap();
    s.lease_revoke(empty).await.unwrap();
    assert_eq!(current_revision(s).await, rev);
}

/// A key re-put without the lease, moved to another lease, or deleted and recreated, no longer
/// belongs to the lease: revoking it leaves the key alone.
async fn revoking_a_lease_spares_keys_that_left_it(s: Arc<dyn Store>) {
    let s = &*s;
    let old = s.lease_grant(60).await.unwrap();
    let new = s.lease_grant(60).await.unwrap();
    let ca = s.put(b"/lv/a", b("1"), old).await.unwrap();
    let cb = s.put(b"/lv/b", b("1"), old).await.unwrap();
    s.put(b"/lv/c", b("1"), old).await.unwrap();
    let ma = put(s, "/lv/a", "2").await;
    let mb = s.put(b"/lv/b", b("2"), new).await.unwrap();
    del(s, "/lv/c").await;
    let cc = put(s, "/lv/c", "again").await;

    s.lease_revoke(old).await.unwrap();
    assert_eq!(
        current_revision(s).await,
        cc,
        "the revoked lease had no key left"
    );
    assert_eq!(get(s, "/lv/a").await, Some(kv("/lv/a", "2", ca, ma, 2)));
    assert_eq!(
        get(s, "/lv/b").await,
        Some(with_lease(kv("/lv/b", "2", cb, mb, 2), new))
    );
    assert_eq!(get(s, "/lv/c").await, Some(kv("/lv/c", "again", cc, cc, 1)));

    s.lease_revoke(new).await.unwrap();
    assert_eq!(get(s, "/lv/b").await, None);
    assert_eq!(current_revision(s).await, cc + 1);
    assert_eq!(s.count(b"/lv/").await.unwrap(), 2);
}

/// A lease must live for some time: a zero or negative TTL is refused.
async fn lease_grant_with_non_positive_ttl_is_invalid(s: Arc<dyn Store>) {
    let s = &*s;
    for ttl in [0, -1] {
        let err = s.lease_grant(ttl).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidRequest(_)),
            "ttl {ttl}: {err:?}"
        );
    }
}

async fn unknown_lease_is_lease_not_found(s: Arc<dyn Store>) {
    let s = &*s;
    let unknown: LeaseId = 0x7e57_0000_1234;
    let r0 = current_revision(s).await;
    let err = s.lease_keep_alive(unknown).await.unwrap_err();
    assert!(
        matches!(err, Error::LeaseNotFound(l) if l == unknown),
        "{err:?}"
    );
    let err = s.lease_time_to_live(unknown).await.unwrap_err();
    assert!(
        matches!(err, Error::LeaseNotFound(l) if l == unknown),
        "{err:?}"
    );
    let err = s.lease_revoke(unknown).await.unwrap_err();
    assert!(
        matches!(err, Error::LeaseNotFound(l) if l == unknown),
        "{err:?}"
    );
    let err = s.put(b"/x", b("v"), unknown).await.unwrap_err();
    assert!(
        matches!(err, Error::LeaseNotFound(l) if l == unknown),
        "{err:?}"
    );
    let err = s.create(b"/y", b("v"), unknown).await.unwrap_err();
    assert!(
        matches!(err, Error::LeaseNotFound(l) if l == unknown),
        "{err:?}"
    );
    assert_eq!(get(s, "/x").await, None);
    assert_eq!(get(s, "/y").await, None);
    assert_eq!(current_revision(s).await, r0);
}

// ------------------------------------------------------------------------------------------
// Compaction
// ------------------------------------------------------------------------------------------

async fn compaction_discards_history_below_the_point_only(s: Arc<dyn Store>) {
    let s = &*s;
    let mut stream = watch(s, WatchRequest::new(KeyRange::prefix(b("/c/")))).await;
    let old_c = put(s, "/c/old", "x").await;
    let old_d = del(s, "/c/old").await;
    let mut revs = Vec::new();
    for i in 1..=6 {
        revs.push(put(s, "/c/a", &format!("v{i}")).await);
    }
    let gone_c = put(s, "/c/gone", "x").await;
    let gone_d = del(s, "/c/gone").await;
    let last = put(s, "/c/b", "1").await;
    let point = revs[3]; // "/c/a" = v4 there
    assert!(old_d < point && point < gone_c);

    s.compact(point).await.unwrap();
    assert_eq!(s.status().await.unwrap().compact_revision, point);

    for rev in [revs[0], revs[1], revs[2]] {
        let err = s
            .range(RangeRequest::new(KeyRange::key(b("/c/a"))).at_revision(rev))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Compacted { requested, compact_revision }
                if requested == rev && compact_revision == point),
            "read at {rev} after compacting at {point}: {err:?}"
        );
    }
    let at = |rev| RangeRequest::new(KeyRange::key(b("/c/a"))).at_revision(rev);
    assert_eq!(
        range(s, at(point)).await.kvs,
        vec![kv("/c/a", "v4", revs[0], point, 4)]
    );
    assert_eq!(
        range(s, at(revs[4])).await.kvs,
        vec![kv("/c/a", "v5", revs[0], revs[4], 5)]
    );
    assert_eq!(
        range(
            s,
            RangeRequest::new(KeyRange::key(b("/c/gone"))).at_revision(gone_c)
        )
        .await
        .kvs,
        vec![kv("/c/gone", "x", gone_c, gone_c, 1)]
    );
    assert_eq!(
        range(
            s,
            RangeRequest::new(KeyRange::key(b("/c/gone"))).at_revision(gone_d)
        )
        .await
        .kvs,
        vec![]
    );

    // A key deleted before the point is absent there and has no history left.
    assert_eq!(
        range(
            s,
            RangeRequest::new(KeyRange::key(b("/c/old"))).at_revision(point)
        )
        .await
        .kvs,
        vec![]
    );

    // The present is untouched, versions included.
    assert_eq!(
        get(s, "/c/a").await,
        Some(kv("/c/a", "v6", revs[0], revs[5], 6))
    );
    assert_eq!(get(s, "/c/b").await, Some(kv("/c/b", "1", last, last, 1)));
    assert_eq!(get(s, "/c/gone").await, None);
    let status = s.status().await.unwrap();
    assert_eq!(status.revision, last);
    assert_eq!(status.key_count, 2);

    // Writing on continues the numbering; a key deleted before the point starts afresh.
    assert_eq!(put(s, "/c/a", "v7").await, last + 1);
    assert_eq!(
        get(s, "/c/a").await,
        Some(kv("/c/a", "v7", revs[0], last + 1, 7))
    );
    assert_eq!(put(s, "/c/old", "new").await, last + 2);
    assert_eq!(
        get(s, "/c/old").await,
        Some(kv("/c/old", "new", last + 2, last + 2, 1))
    );

    // A watch opened before the compaction saw everything and goes on.
    let events = next_events(&mut stream, (last + 2 - old_c + 1) as usize).await;
    let revs_seen: Vec<Revision> = events.iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(revs_seen, (old_c..=last + 2).collect::<Vec<_>>());
}

/// Compacting below the compaction point fails; compacting at it again is accepted as a no-op
/// (raw etcd refuses that too, but both backends make a repeated compaction idempotent, which
/// is what a retrying compactor needs).
async fn compacting_below_the_compaction_point_fails_compacted(s: Arc<dyn Store>) {
    let s = &*s;
    let mut revs = Vec::new();
    for i in 0..6 {
        revs.push(put(s, "/k", &i.to_string()).await);
    }
    s.compact(revs[3]).await.unwrap();
    for rev in [revs[0], revs[2]] {
        let err = s.compact(rev).await.unwrap_err();
        assert!(
            matches!(err, Error::Compacted { requested, compact_revision }
                if requested == rev && compact_revision == revs[3]),
            "compact({rev}) after compact({}): {err:?}",
            revs[3]
        );
    }
    assert_eq!(s.status().await.unwrap().compact_revision, revs[3]);
    s.compact(revs[3]).await.unwrap();
    assert_eq!(s.status().await.unwrap().compact_revision, revs[3]);
    assert_eq!(current_revision(s).await, revs[5]);
    s.compact(revs[5]).await.unwrap();
    assert_eq!(s.status().await.unwrap().compact_revision, revs[5]);
    assert_eq!(get(s, "/k").await, Some(kv("/k", "5", revs[0], revs[5], 6)));
}

async fn compacting_to_a_future_revision_fails(s: Arc<dyn Store>) {
    let s = &*s;
    let r = put(s, "/k", "v").await;
    let err = s.compact(r + 1).await.unwrap_err();
    assert!(
        matches!(err, Error::FutureRevision { requested, .. } if requested == r + 1),
        "{err:?}"
    );
    // The current revision itself can be compacted to.
    s.compact(r).await.unwrap();
    assert_eq!(s.status().await.unwrap().compact_revision, r);
    assert_eq!(get(s, "/k").await, Some(kv("/k", "v", r, r, 1)));
}

// ------------------------------------------------------------------------------------------
// Value size
// ------------------------------------------------------------------------------------------

async fn value_of_max_size_is_stored_and_one_byte_more_refused(s: Arc<dyn Store>) {
    let s = &*s;
    let r0 = current_revision(s).await;
    let too_big = vec![b'x'; MAX_VALUE_BYTES + 1];
    let refused = |e: Error| {
        assert!(
            matches!(&e, Error::ValueTooLarge { key, size, limit }
                if key == "/big" && *size == MAX_VALUE_BYTES + 1 && *limit == MAX_VALUE_BYTES),
            "{e:?}"
        );
    };
    refused(s.put(b"/big", too_big.clone(), 0).await.unwrap_err());
    refused(s.create(b"/big", too_big.clone(), 0).await.unwrap_err());
    refused(
        s.txn(Txn::new().and_then(vec![
            txn_put("/small", "fine"),
            TxnOp::put(b("/big"), too_big.clone()),
        ]))
        .await
        .unwrap_err(),
    );
    assert_eq!(get(s, "/big").await, None);
    assert_eq!(
        get(s, "/small").await,
        None,
        "the whole transaction was refused"
    );
    assert_eq!(current_revision(s).await, r0);

    let max: Vec<u8> = (0..MAX_VALUE_BYTES).map(|i| (i % 251) as u8).collect();
    let r = s.put(b"/big", max.clone(), 0).await.unwrap();
    let got = get(s, "/big").await.expect("stored");
    assert_eq!(got.value.len(), MAX_VALUE_BYTES);
    assert!(got.value == max, "value read back differs");
    assert_eq!(
        (got.create_revision, got.mod_revision, got.version),
        (r, r, 1)
    );
    refused(s.update(b"/big", too_big, r, 0).await.unwrap_err());
    assert_eq!(current_revision(s).await, r);
}

/// Several values of the maximum size together: reads and watches are not limited to one
/// value's worth of bytes (a list of big objects must come back whole).
async fn large_values_can_be_listed_and_watched_together(s: Arc<dyn Store>) {
    const N: usize = 4;
    let s = &*s;
    let value = |i: usize| -> Vec<u8> {
        (0..MAX_VALUE_BYTES)
            .map(|j| ((i * 31 + j) % 253) as u8)
            .collect()
    };
    let first = current_revision(s).await + 1;
    let mut live = watch(
        s,
        WatchRequest::new(KeyRange::prefix(b("/big/"))).with_prev_kv(),
    )
    .await;
    let mut revs = Vec::new();
    for i in 0..N {
        revs.push(
            s.put(format!("/big/{i}").as_bytes(), value(i), 0)
                .await
                .unwrap(),
        );
    }
    let resp = range(s, RangeRequest::new(KeyRange::prefix(b("/big/")))).await;
    assert_eq!(resp.count, N as u64);
    assert_eq!(resp.kvs.len(), N);
    for (i, got) in resp.kvs.iter().enumerate() {
        assert_eq!(got.key, format!("/big/{i}").into_bytes());
        assert!(got.value == value(i), "value {i} read back differs");
        assert_eq!(got.mod_revision, revs[i]);
    }

    let check = |events: Vec<Event>| {
        assert_eq!(events.len(), N);
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.kv.mod_revision, revs[i]);
            assert!(e.kv.value == value(i), "event {i} carries another value");
        }
    };
    check(next_events(&mut live, N).await);
    // From history: all of them may come in one response.
    let mut replay = watch(
        s,
        WatchRequest::new(KeyRange::prefix(b("/big/"))).from_revision(first),
    )
    .await;
    check(next_events(&mut replay, N).await);

    // Overwrites with prev_kv: each event carries two big values.
    let r = s.put(b"/big/0", value(9), 0).await.unwrap();
    let events = next_events(&mut live, 1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kv.mod_revision, r);
    assert!(events[0].kv.value == value(9));
    assert!(
        events[0]
            .prev_kv
            .as_ref()
            .is_some_and(|p| p.value == value(0))
    );
}

// ------------------------------------------------------------------------------------------
// Status
// ------------------------------------------------------------------------------------------

async fn status_reports_revision_key_count_and_size(s: Arc<dyn Store>) {
    let s = &*s;
    let empty = s.status().await.unwrap();
    assert_eq!(empty.key_count, 0);
    for key in ["/s/1", "/s/2", "/s/3", "/t/1"] {
        put(s, key, "v").await;
    }
    put(s, "/s/1", "again").await;
    let last = del(s, "/s/2").await;
    let status = s.status().await.unwrap();
    assert_eq!(status.revision, last);
    assert_eq!(status.revision, empty.revision + 6);
    assert_eq!(status.key_count, 3);
    assert!(status.db_size_bytes > 0, "{status:?}");
}

// ------------------------------------------------------------------------------------------
// Reopening
// ------------------------------------------------------------------------------------------

/// Everything written is still there after the store is closed and opened again (for etcd: a
/// new connection): keys, history after the compaction point, the compaction point itself,
/// leases with their keys, and the revision numbering.
async fn state_survives_reopening_the_store(mut fx: Fixture) {
    let s = fx.store();
    let lease = s.lease_grant(60).await.unwrap();
    let first = put(&*s, "/ro/a", "1").await;
    put(&*s, "/ro/a", "2").await;
    let point = put(&*s, "/ro/gone", "x").await;
    s.put(b"/ro/leased", b("l"), lease).await.unwrap();
    del(&*s, "/ro/gone").await;
    let last = s
        .txn(Txn::new().and_then(vec![txn_put("/ro/b", "1"), txn_put("/ro/a", "3")]))
        .await
        .unwrap()
        .revision;
    s.compact(point).await.unwrap();

    let before_status = s.status().await.unwrap();
    let all = || RangeRequest::new(KeyRange::prefix(b("/ro/")));
    let before_all = range(&*s, all()).await;
    let before_past = range(&*s, all().at_revision(point)).await;
    let mut replay = watch(
        &*s,
        WatchRequest::new(KeyRange::prefix(b("/ro/"))).from_revision(point),
    )
    .await;
    let before_events = next_events(&mut replay, (last - point + 2) as usize).await;
    drop(replay);
    drop(s);

    fx.reopen().await;
    let s = fx.store();
    let status = s.status().await.unwrap();
    assert_eq!(status.revision, last);
    assert_eq!(status.compact_revision, point);
    assert_eq!(status.key_count, before_status.key_count);
    assert_eq!(range(&*s, all()).await, before_all);
    assert_eq!(range(&*s, all().at_revision(point)).await, before_past);
    let err = s.range(all().at_revision(first)).await.unwrap_err();
    assert!(
        matches!(err, Error::Compacted { requested, .. } if requested == first),
        "{err:?}"
    );
    let mut replay = watch(
        &*s,
        WatchRequest::new(KeyRange::prefix(b("/ro/"))).from_revision(point),
    )
    .await;
    assert_eq!(
        next_events(&mut replay, before_events.len()).await,
        before_events
    );

    let info = s.lease_time_to_live(lease).await.unwrap();
    assert_eq!((info.id, info.granted_ttl), (lease, 60));
    assert!((1..=60).contains(&info.ttl), "ttl {}", info.ttl);
    assert_eq!(get(&*s, "/ro/leased").await.map(|kv| kv.lease), Some(lease));
    assert_eq!(put(&*s, "/ro/c", "after").await, last + 1);
    s.lease_revoke(lease).await.unwrap();
    assert_eq!(get(&*s, "/ro/leased").await, None);
    assert_eq!(current_revision(&*s).await, last + 2);
}

// ------------------------------------------------------------------------------------------
// Instantiation for both backends
// ------------------------------------------------------------------------------------------

/// Generates `embedded::<case>` and `etcd::<case>` for every case.
/// Generates `embedded::<case>` and `etcd::<case>` for every case: `store` cases take the
/// store, `fixture` cases the whole fixture (to reopen the store).
macro_rules! conformance {
    (store: [$($case:ident),* $(,)?], fixture: [$($fcase:ident),* $(,)?] $(,)?) => {
        conformance!(@backend embedded, [$($case),*], [$($fcase),*]);
        conformance!(@backend etcd, [$($case),*], [$($fcase),*]);
    };
    (@backend $backend:ident, [$($case:ident),*], [$($fcase:ident),*]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = super::Fixture::$backend().await;
                    super::$case(fixture.store()).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $fcase() {
                    super::$fcase(super::Fixture::$backend().await).await;
                }
            )*
        }
    };
}

conformance!(
    store: [
    // revisions
    revision_increases_by_exactly_one_per_write_txn,
    writes_of_one_txn_share_one_revision,
    read_only_and_failed_txns_do_not_bump_revision,
    deleting_nothing_does_not_bump_revision,
    create_mod_revision_and_version_track_each_key,
    // range
    range_single_key_returns_exactly_that_key,
    range_prefix_returns_keys_in_order_without_neighbours,
    range_explicit_bounds_are_half_open,
    range_empty_prefix_covers_the_whole_keyspace,
    range_limit_truncates_sets_more_and_counts_all,
    range_count_only_returns_the_count_without_kvs,
    range_keys_only_returns_empty_values,
    range_at_past_revision_sees_history,
    range_at_future_revision_fails,
    // create / update / delete / put
    create_fails_with_already_exists_carrying_the_current_kv,
    update_succeeds_only_at_the_expected_mod_revision,
    delete_guarded_by_mod_revision,
    delete_unguarded_and_of_missing_keys,
    put_creates_then_overwrites,
    concurrent_creates_updates_and_deletes_have_exactly_one_winner,
    empty_key_is_an_invalid_request,
    // transactions
    txn_compares_every_target_with_every_op,
    txn_runs_the_else_branch_when_a_compare_fails,
    txn_ranges_see_the_state_as_of_their_position,
    txn_delete_range_returns_prev_kvs,
    txn_put_with_prev_kv_returns_the_previous_kv,
    // watch
    watch_from_now_delivers_only_later_changes,
    watch_from_past_revision_replays_then_continues_live,
    watch_filters_by_key_prefix_and_range,
    watch_prev_kv_on_puts_and_deletes,
    watch_events_of_one_txn_share_a_revision_in_op_order,
    watch_sees_every_revision_of_concurrent_writers_exactly_once,
    watch_resumes_from_last_revision_without_loss_or_duplicate,
    watch_from_compacted_revision_fails_compacted,
    watch_from_a_future_revision_starts_there,
    watch_replaying_long_history_under_concurrent_writes_has_no_seam,
    watch_slow_consumer_still_receives_every_event,
    watch_with_progress_notify_still_delivers_events,
    requested_progress_confirms_an_idle_prefix,
    // leases
    lease_grant_and_time_to_live,
    keys_of_an_expired_lease_are_deleted_and_watchers_told,
    lease_keep_alive_extends_it,
    lease_revoke_deletes_attached_keys_at_once,
    revoking_a_lease_spares_keys_that_left_it,
    lease_grant_with_non_positive_ttl_is_invalid,
    unknown_lease_is_lease_not_found,
    // compaction
    compaction_discards_history_below_the_point_only,
    compacting_below_the_compaction_point_fails_compacted,
    compacting_to_a_future_revision_fails,
    // value size
    value_of_max_size_is_stored_and_one_byte_more_refused,
    large_values_can_be_listed_and_watched_together,
    // status
    status_reports_revision_key_count_and_size,
    ],
    fixture: [state_survives_reopening_the_store],
);
