//! Model check of the embedded engine: random sequences of operations run against
//! [`EmbeddedStore`] and against a plain in-memory model of etcd v3's MVCC semantics, and every
//! answer of the store must equal the model's exactly — revisions, key-values with all their
//! fields, counts, `more`, error variants and their fields. Reopening the store from its file is
//! one of the operations, so everything must also survive a restart. At the end of each case the
//! whole history (every readable revision, and a watch replaying from the oldest one) is checked.
//!
//! Real etcd (checked against etcd 3.4) is the reference for the model, with two deliberate
//! departures of the project, which the model follows:
//! - compacting again at the current compaction point is an accepted no-op (etcd refuses it as
//!   compacted; both backends make a repeated compaction idempotent, see the conformance suite);
//! - a delete at exactly the compaction revision stays watchable from there (etcd's compaction
//!   drops that tombstone, so a watch from the compaction revision misses it).
//!
//! `PROPTEST_CASES` sets the number of cases (128 by default; each is up to 60 operations).
//! The tests after the model check are the smallest cases of what it found in the engine.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::Path;
use std::time::Duration;

use edgesite_store::embedded::{CompactionPolicy, EmbeddedConfig, EmbeddedStore};
use edgesite_store::{
    Compare, CompareOp, CompareTarget, Error, EventType, KeyRange, KeyValue, RangeRequest,
    RangeResponse, Revision, Store, StoreStatus, Txn, TxnOp, TxnOpResponse, TxnResponse,
    WatchRequest,
};
use futures::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// The key space: shared prefixes, so that prefix reads and deletes cover several keys.
const KEYS: [&str; 6] = ["a", "a/1", "a/2", "b", "b/1", "c"];
/// Prefixes for reads and range deletes; `""` is the whole key space, `"d"` matches nothing.
const PREFIXES: [&str; 7] = ["", "a", "a/", "a/1", "b", "c", "d"];

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// One change, as a watch must replay it: revision, type, key, value (empty for deletes).
type ModelEvent = (Revision, EventType, Vec<u8>, Vec<u8>);

/// etcd's MVCC store, the obvious way: every version of every key, oldest first.
#[derive(Debug, Clone)]
struct Model {
    /// Per key, its versions in revision order: `Some(kv)` for a put, `None` for a delete.
    versions: BTreeMap<Vec<u8>, Vec<(Revision, Option<KeyValue>)>>,
    /// The current revision (a new store is at 1, as a new etcd).
    revision: Revision,
    /// The compaction point (0 = never compacted).
    compact: Revision,
    /// Every change, in commit order.
    events: Vec<ModelEvent>,
}

impl Model {
    fn new() -> Self {
        Self {
            versions: BTreeMap::new(),
            revision: 1,
            compact: 0,
            events: Vec::new(),
        }
    }

    /// The key as of revision `rev`.
    fn at(&self, key: &[u8], rev: Revision) -> Option<&KeyValue> {
        self.versions
            .get(key)?
            .iter()
            .rev()
            .find(|(r, _)| *r <= rev)?
            .1
            .as_ref()
    }

    /// The key as it is now (including writes of a transaction being applied).
    fn current(&self, key: &[u8]) -> Option<&KeyValue> {
        self.at(key, Revision::MAX)
    }

    fn live_keys(&self) -> u64 {
        self.versions
            .keys()
            .filter(|k| self.current(k).is_some())
            .count() as u64
    }

    /// The answer to `req` read at revision `at`, reported at revision `reported`.
    fn read(&self, req: &RangeRequest, at: Revision, reported: Revision) -> RangeResponse {
        let mut resp = RangeResponse {
            revision: reported,
            ..RangeResponse::default()
        };
        for key in self.versions.keys().filter(|k| req.range.contains(k)) {
            let Some(kv) = self.at(key, at) else { continue };
            resp.count += 1;
            if req.count_only {
                continue;
            }
            if req.limit > 0 && resp.kvs.len() >= req.limit {
                resp.more = true;
                continue;
            }
            let mut kv = kv.clone();
            if req.keys_only {
                kv.value.clear();
            }
            resp.kvs.push(kv);
        }
        resp
    }

    /// A top-level read: etcd's `rangeKeys` checks.
    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Error> {
        match req.revision {
            Some(r) if r > self.revision => Err(Error::FutureRevision {
                requested: r,
                current: self.revision,
            }),
            Some(r) if r > 0 && r < self.compact => Err(Error::Compacted {
                requested: r,
                compact_revision: self.compact,
            }),
            Some(r) if r > 0 => Ok(self.read(req, r, self.revision)),
            _ => Ok(self.read(req, self.revision, self.revision)),
        }
    }

    fn put(&mut self, rev: Revision, key: &[u8], value: &[u8]) -> Option<KeyValue> {
        let prev = self.current(key).cloned();
        let kv = KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(0, |p| p.version) + 1,
            lease: 0,
        };
        self.versions
            .entry(key.to_vec())
            .or_default()
            .push((rev, Some(kv)));
        self.events
            .push((rev, EventType::Put, key.to_vec(), value.to_vec()));
        prev
    }

    /// Deletes the live keys of `range` at `rev`; returns their last versions.
    fn delete(&mut self, rev: Revision, range: &KeyRange) -> Vec<KeyValue> {
        let live: Vec<KeyValue> = self
            .versions
            .keys()
            .filter(|k| range.contains(k))
            .filter_map(|k| self.current(k).cloned())
            .collect();
        for kv in &live {
            self.versions
                .get_mut(&kv.key)
                .expect("live key has versions")
                .push((rev, None));
            self.events
                .push((rev, EventType::Delete, kv.key.clone(), Vec::new()));
        }
        live
    }

    /// A transaction, as etcd runs it: both branches are validated up front (no key put twice,
    /// no key both put and deleted), then the compares pick a branch, the reads of that branch
    /// at past revisions are checked against the revision before the transaction, then the
    /// operations run in order, each seeing the earlier ones' writes. A read reports the
    /// revision the transaction has reached so far.
    fn txn(&mut self, txn: &Txn) -> Result<TxnResponse, Error> {
        for ops in [&txn.success, &txn.failure] {
            if branch_is_invalid(ops) {
                return Err(Error::InvalidRequest(String::new()));
            }
        }
        let succeeded = txn.compare.iter().all(|c| c.evaluate(self.current(&c.key)));
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let begin = self.revision;
        for op in ops {
            if let TxnOp::Range(req) = op
                && let Some(at) = req.revision.filter(|r| *r > 0)
            {
                if at > begin {
                    return Err(Error::FutureRevision {
                        requested: at,
                        current: begin,
                    });
                }
                if at < self.compact {
                    return Err(Error::Compacted {
                        requested: at,
                        compact_revision: self.compact,
                    });
                }
            }
        }
        let new_rev = begin + 1;
        let mut changed = false;
        let mut responses = Vec::new();
        for op in ops {
            match op {
                TxnOp::Range(req) => {
                    let now = if changed { new_rev } else { begin };
                    let at = req.revision.filter(|r| *r > 0).unwrap_or(now);
                    responses.push(TxnOpResponse::Range(self.read(req, at, now)));
                }
                TxnOp::Put {
                    key,
                    value,
                    prev_kv,
                    ..
                } => {
                    let prev = self.put(new_rev, key, value);
                    changed = true;
                    responses.push(TxnOpResponse::Put {
                        prev_kv: if *prev_kv { prev } else { None },
                    });
                }
                TxnOp::Delete { range, prev_kv } => {
                    let deleted = self.delete(new_rev, range);
                    changed |= !deleted.is_empty();
                    responses.push(TxnOpResponse::Delete {
                        deleted: deleted.len() as u64,
                        prev_kvs: if *prev_kv { deleted } else { Vec::new() },
                    });
                }
            }
        }
        if changed {
            self.revision = new_rev;
        }
        Ok(TxnResponse {
            succeeded,
            revision: self.revision,
            responses,
        })
    }

    /// etcd's compaction: at most the current revision, and not below the previous point.
    /// Compacting at the current point again is accepted as a no-op (raw etcd refuses it; the
    /// project makes a repeated compaction idempotent on both backends, see the conformance
    /// suite).
    fn compact(&mut self, rev: Revision) -> Result<(), Error> {
        if rev > self.revision {
            return Err(Error::FutureRevision {
                requested: rev,
                current: self.revision,
            });
        }
        if rev < self.compact {
            return Err(Error::Compacted {
                requested: rev,
                compact_revision: self.compact,
            });
        }
        self.compact = rev;
        Ok(())
    }

    // The conveniences of the `Store` trait, modelled directly on the state rather than through
    // the transactions the trait builds, so that the mapping of outcomes to errors is checked too.

    fn create(&mut self, key: &[u8], value: &[u8]) -> Result<Revision, Error> {
        if let Some(kv) = self.current(key) {
            return Err(Error::AlreadyExists {
                key: key_str(key),
                current: Box::new(kv.clone()),
            });
        }
        self.revision += 1;
        self.put(self.revision, key, value);
        Ok(self.revision)
    }

    fn update(&mut self, key: &[u8], value: &[u8], expected: Revision) -> Result<Revision, Error> {
        let current = self.current(key).cloned();
        if current.as_ref().map_or(0, |kv| kv.mod_revision) != expected {
            return Err(Error::Conflict {
                key: key_str(key),
                expected,
                current: current.map(Box::new),
            });
        }
        // With `expected == 0` on an absent key the compare holds: etcd creates the key.
        self.revision += 1;
        self.put(self.revision, key, value);
        Ok(self.revision)
    }

    fn delete_key(
        &mut self,
        key: &[u8],
        expected: Option<Revision>,
    ) -> Result<(KeyValue, Revision), Error> {
        let Some(current) = self.current(key).cloned() else {
            return Err(Error::NotFound { key: key_str(key) });
        };
        if let Some(expected) = expected
            && current.mod_revision != expected
        {
            return Err(Error::Conflict {
                key: key_str(key),
                expected,
                current: Some(Box::new(current)),
            });
        }
        self.revision += 1;
        self.delete(self.revision, &KeyRange::key(key));
        Ok((current, self.revision))
    }

    fn status(&self) -> (Revision, Revision, u64) {
        (self.revision, self.compact, self.live_keys())
    }
}

/// etcd's `checkIntervals`: a branch may not put a key twice nor put a key it also deletes.
fn branch_is_invalid(ops: &[TxnOp]) -> bool {
    let mut puts: Vec<&[u8]> = Vec::new();
    let mut deletes: Vec<&KeyRange> = Vec::new();
    for op in ops {
        match op {
            TxnOp::Put { key, .. } => {
                if puts.contains(&key.as_slice()) {
                    return true;
                }
                puts.push(key);
            }
            TxnOp::Delete { range, .. } => deletes.push(range),
            TxnOp::Range(_) => {}
        }
    }
    puts.iter().any(|k| deletes.iter().any(|r| r.contains(k)))
}

fn key_str(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Generated operations. Numbers that depend on the state (revisions, versions) are drawn as
// selectors and resolved against the model when the operation runs.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Sel {
    Key(usize),
    Prefix(usize),
}

impl Sel {
    fn range(&self) -> KeyRange {
        match self {
            Self::Key(i) => KeyRange::key(KEYS[*i]),
            Self::Prefix(i) => KeyRange::prefix(PREFIXES[*i]),
        }
    }
}

/// A number compared against a key's field: near the key's current one, or any revision.
#[derive(Debug, Clone)]
enum Num {
    Near(i64),
    Any(u32),
}

#[derive(Debug, Clone)]
enum GenTarget {
    /// `None`: the key's current value.
    Value(Option<u8>),
    Version(Num),
    Create(Num),
    Mod(Num),
}

#[derive(Debug, Clone)]
struct GenCompare {
    key: usize,
    op: u8,
    target: GenTarget,
}

#[derive(Debug, Clone)]
enum GenTxnOp {
    Range {
        sel: Sel,
        /// `Some(x)`: at revision `x % (revision + 2)` (0 = current, revision + 1 = future).
        at: Option<u32>,
        limit: usize,
        count_only: bool,
        keys_only: bool,
    },
    Put {
        key: usize,
        val: u8,
        prev_kv: bool,
    },
    Delete {
        sel: Sel,
        prev_kv: bool,
    },
}

#[derive(Debug, Clone)]
enum Op {
    Put {
        key: usize,
        val: u8,
    },
    Create {
        key: usize,
        val: u8,
    },
    /// A guarded update with the key's current `mod_revision` (`right`) or another one.
    Update {
        key: usize,
        val: u8,
        right: bool,
    },
    /// `None`: unguarded; `Some(right)`: guarded with the right or a wrong `mod_revision`.
    Delete {
        key: usize,
        guard: Option<bool>,
    },
    DeleteRange {
        prefix: usize,
        prev_kv: bool,
    },
    Txn {
        compares: Vec<GenCompare>,
        success: Vec<GenTxnOp>,
        failure: Vec<GenTxnOp>,
    },
    Range {
        sel: Sel,
        limit: usize,
        count_only: bool,
        keys_only: bool,
    },
    /// A read at revision `at % (revision + 3)`: 0 is the current one, the top two are future.
    RangeAt {
        sel: Sel,
        at: u32,
        limit: usize,
        keys_only: bool,
    },
    /// A compaction at revision `1 + at % (revision + 1)`: the top one is future.
    Compact {
        at: u32,
    },
    Reopen,
}

fn sel() -> impl Strategy<Value = Sel> {
    prop_oneof![
        (0..KEYS.len()).prop_map(Sel::Key),
        (0..PREFIXES.len()).prop_map(Sel::Prefix),
    ]
}

fn key() -> impl Strategy<Value = usize> {
    0..KEYS.len()
}

fn val() -> impl Strategy<Value = u8> {
    0u8..4
}

fn num() -> impl Strategy<Value = Num> {
    prop_oneof![
        3 => (-1i64..=1).prop_map(Num::Near),
        1 => any::<u32>().prop_map(Num::Any),
    ]
}

fn compare() -> impl Strategy<Value = GenCompare> {
    let target = prop_oneof![
        prop::option::of(val()).prop_map(GenTarget::Value),
        num().prop_map(GenTarget::Version),
        num().prop_map(GenTarget::Create),
        num().prop_map(GenTarget::Mod),
    ];
    (key(), 0u8..4, target).prop_map(|(key, op, target)| GenCompare { key, op, target })
}

fn txn_op() -> impl Strategy<Value = GenTxnOp> {
    prop_oneof![
        2 => (sel(), prop::option::weighted(0.4, any::<u32>()), 0usize..3, any::<bool>(), any::<bool>())
            .prop_map(|(sel, at, limit, count_only, keys_only)| GenTxnOp::Range {
                sel,
                at,
                limit,
                count_only: count_only && limit == 0,
                keys_only,
            }),
        3 => (key(), val(), any::<bool>())
            .prop_map(|(key, val, prev_kv)| GenTxnOp::Put { key, val, prev_kv }),
        2 => (sel(), any::<bool>()).prop_map(|(sel, prev_kv)| GenTxnOp::Delete { sel, prev_kv }),
    ]
}

/// A branch of up to 4 operations; most are made valid (no key put twice, none both put and
/// deleted) so that transactions mostly run rather than being refused.
fn branch() -> impl Strategy<Value = Vec<GenTxnOp>> {
    (
        prop::collection::vec(txn_op(), 0..=4),
        prop::bool::weighted(0.85),
    )
        .prop_map(|(ops, repair)| {
            if !repair {
                return ops;
            }
            let mut kept: Vec<GenTxnOp> = Vec::new();
            for op in ops {
                let clash = |k: usize| {
                    kept.iter().any(|o| match o {
                        GenTxnOp::Put { key, .. } => *key == k,
                        GenTxnOp::Delete { sel, .. } => sel.range().contains(KEYS[k].as_bytes()),
                        GenTxnOp::Range { .. } => false,
                    })
                };
                let ok = match &op {
                    GenTxnOp::Put { key, .. } => !clash(*key),
                    GenTxnOp::Delete { sel, .. } => !kept.iter().any(|o| {
                        matches!(o, GenTxnOp::Put { key, .. } if sel.range().contains(KEYS[*key].as_bytes()))
                    }),
                    GenTxnOp::Range { .. } => true,
                };
                if ok {
                    kept.push(op);
                }
            }
            kept
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (key(), val()).prop_map(|(key, val)| Op::Put { key, val }),
        2 => (key(), val()).prop_map(|(key, val)| Op::Create { key, val }),
        3 => (key(), val(), prop::bool::weighted(0.7))
            .prop_map(|(key, val, right)| Op::Update { key, val, right }),
        2 => (key(), prop::option::of(prop::bool::weighted(0.7)))
            .prop_map(|(key, guard)| Op::Delete { key, guard }),
        1 => (0..PREFIXES.len(), any::<bool>())
            .prop_map(|(prefix, prev_kv)| Op::DeleteRange { prefix, prev_kv }),
        5 => (prop::collection::vec(compare(), 0..=2), branch(), branch())
            .prop_map(|(compares, success, failure)| Op::Txn { compares, success, failure }),
        3 => (sel(), 0usize..3, any::<bool>(), any::<bool>()).prop_map(
            |(sel, limit, count_only, keys_only)| Op::Range { sel, limit, count_only, keys_only }
        ),
        2 => (sel(), any::<u32>(), 0usize..3, any::<bool>())
            .prop_map(|(sel, at, limit, keys_only)| Op::RangeAt { sel, at, limit, keys_only }),
        1 => any::<u32>().prop_map(|at| Op::Compact { at }),
        1 => Just(Op::Reopen),
    ]
}

fn value(val: u8) -> Vec<u8> {
    format!("v{val}").into_bytes()
}

/// A `mod_revision` that is not the right one.
fn wrong(right: Revision) -> Revision {
    if right > 1 { right - 1 } else { right + 1 }
}

fn resolve_num(n: &Num, field: i64, revision: Revision) -> i64 {
    match n {
        Num::Near(d) => field + d,
        Num::Any(x) => i64::from(*x) % (revision + 2),
    }
}

fn resolve_compare(c: &GenCompare, m: &Model) -> Compare {
    let key = KEYS[c.key];
    let kv = m.current(key.as_bytes());
    let op = [
        CompareOp::Equal,
        CompareOp::NotEqual,
        CompareOp::Greater,
        CompareOp::Less,
    ][usize::from(c.op)];
    let target = match &c.target {
        GenTarget::Value(Some(v)) => CompareTarget::Value(value(*v)),
        GenTarget::Value(None) => {
            CompareTarget::Value(kv.map_or(Vec::new(), |kv| kv.value.clone()))
        }
        GenTarget::Version(n) => {
            CompareTarget::Version(resolve_num(n, kv.map_or(0, |kv| kv.version), m.revision))
        }
        GenTarget::Create(n) => CompareTarget::CreateRevision(resolve_num(
            n,
            kv.map_or(0, |kv| kv.create_revision),
            m.revision,
        )),
        GenTarget::Mod(n) => CompareTarget::ModRevision(resolve_num(
            n,
            kv.map_or(0, |kv| kv.mod_revision),
            m.revision,
        )),
    };
    Compare::new(key, op, target)
}

fn resolve_txn_op(op: &GenTxnOp, m: &Model) -> TxnOp {
    match op {
        GenTxnOp::Range {
            sel,
            at,
            limit,
            count_only,
            keys_only,
        } => TxnOp::Range(RangeRequest {
            range: sel.range(),
            revision: at.map(|x| i64::from(x) % (m.revision + 2)),
            limit: *limit,
            count_only: *count_only,
            keys_only: *keys_only,
        }),
        GenTxnOp::Put { key, val, prev_kv } => TxnOp::Put {
            key: KEYS[*key].as_bytes().to_vec(),
            value: value(*val),
            lease: 0,
            prev_kv: *prev_kv,
        },
        GenTxnOp::Delete { sel, prev_kv } => TxnOp::Delete {
            range: sel.range(),
            prev_kv: *prev_kv,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Running a case
// ---------------------------------------------------------------------------------------------

/// Errors compared by variant and fields; the free text of `InvalidRequest` is not compared.
fn norm<T>(r: Result<T, Error>) -> Result<T, String> {
    r.map_err(|e| match e {
        Error::InvalidRequest(_) => "InvalidRequest(..)".to_string(),
        e => format!("{e:?}"),
    })
}

fn same<T: PartialEq + Debug>(
    step: usize,
    what: &dyn Debug,
    actual: Result<T, Error>,
    expected: Result<T, Error>,
) -> Result<(), TestCaseError> {
    let (actual, expected) = (norm(actual), norm(expected));
    if actual != expected {
        return Err(TestCaseError::fail(format!(
            "step {step}: {what:?}\n  store: {actual:?}\n  model: {expected:?}"
        )));
    }
    Ok(())
}

async fn open(path: &Path) -> EmbeddedStore {
    let cfg = EmbeddedConfig::new(path).with_compaction(CompactionPolicy {
        keep_revisions: None,
        keep_duration: None,
    });
    EmbeddedStore::open(cfg).await.expect("open the store")
}

fn status_tuple(s: StoreStatus) -> (Revision, Revision, u64) {
    (s.revision, s.compact_revision, s.key_count)
}

/// Every readable revision of the whole key space equals the model's.
async fn check_history(step: usize, store: &EmbeddedStore, m: &Model) -> Result<(), TestCaseError> {
    same(
        step,
        &"status",
        store.status().await.map(status_tuple),
        Ok(m.status()),
    )?;
    for rev in m.compact.max(1)..=m.revision {
        let req = RangeRequest::new(KeyRange::prefix("")).at_revision(rev);
        same(step, &req, store.range(req.clone()).await, m.range(&req))?;
    }
    Ok(())
}

/// A watch from the oldest readable revision replays exactly the model's events from there.
async fn check_watch(store: &EmbeddedStore, m: &Model) -> Result<(), TestCaseError> {
    let start = m.compact.max(1);
    let expected: Vec<ModelEvent> = m.events.iter().filter(|e| e.0 >= start).cloned().collect();
    let mut watch = store
        .watch(WatchRequest::new(KeyRange::prefix("")).from_revision(start))
        .await
        .map_err(|e| TestCaseError::fail(format!("watch from {start}: {e}")))?;
    let mut seen: Vec<ModelEvent> = Vec::new();
    while seen.len() < expected.len() {
        let next = tokio::time::timeout(Duration::from_secs(5), watch.next()).await;
        let resp = match next {
            Ok(Some(Ok(resp))) => resp,
            other => {
                return Err(TestCaseError::fail(format!(
                    "watch from {start} stopped after {} of {} events ({other:?})\n  seen: {seen:?}\n  expected: {expected:?}",
                    seen.len(),
                    expected.len()
                )));
            }
        };
        seen.extend(
            resp.events
                .into_iter()
                .map(|e| (e.kv.mod_revision, e.kind, e.kv.key, e.kv.value)),
        );
    }
    prop_assert_eq!(seen, expected, "watch from revision {}", start);
    Ok(())
}

async fn run_case(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    let mut store = open(&path).await;
    let mut m = Model::new();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Put { key, val } => {
                let k = KEYS[*key].as_bytes();
                let expected = m.txn(&Txn::new().and_then(vec![TxnOp::put(k, value(*val))]));
                same(
                    step,
                    op,
                    store.put(k, value(*val), 0).await,
                    expected.map(|r| r.revision),
                )?;
            }
            Op::Create { key, val } => {
                let k = KEYS[*key].as_bytes();
                let expected = m.create(k, &value(*val));
                same(step, op, store.create(k, value(*val), 0).await, expected)?;
            }
            Op::Update { key, val, right } => {
                let k = KEYS[*key].as_bytes();
                let current = m.current(k).map_or(0, |kv| kv.mod_revision);
                let rev = if *right { current } else { wrong(current) };
                let expected = m.update(k, &value(*val), rev);
                let what = (op, rev);
                same(
                    step,
                    &what,
                    store.update(k, value(*val), rev, 0).await,
                    expected,
                )?;
            }
            Op::Delete { key, guard } => {
                let k = KEYS[*key].as_bytes();
                let current = m.current(k).map_or(0, |kv| kv.mod_revision);
                let expected_rev = guard.map(|right| if right { current } else { wrong(current) });
                let expected = m.delete_key(k, expected_rev);
                let what = (op, expected_rev);
                same(step, &what, store.delete(k, expected_rev).await, expected)?;
            }
            Op::DeleteRange { prefix, prev_kv } => {
                let txn = Txn::new().and_then(vec![TxnOp::Delete {
                    range: KeyRange::prefix(PREFIXES[*prefix]),
                    prev_kv: *prev_kv,
                }]);
                let expected = m.txn(&txn);
                same(step, &txn, store.txn(txn.clone()).await, expected)?;
            }
            Op::Txn {
                compares,
                success,
                failure,
            } => {
                let txn = Txn {
                    compare: compares.iter().map(|c| resolve_compare(c, &m)).collect(),
                    success: success.iter().map(|o| resolve_txn_op(o, &m)).collect(),
                    failure: failure.iter().map(|o| resolve_txn_op(o, &m)).collect(),
                };
                let expected = m.txn(&txn);
                same(step, &txn, store.txn(txn.clone()).await, expected)?;
            }
            Op::Range {
                sel,
                limit,
                count_only,
                keys_only,
            } => {
                let req = RangeRequest {
                    range: sel.range(),
                    revision: None,
                    limit: *limit,
                    count_only: *count_only,
                    keys_only: *keys_only,
                };
                same(step, &req, store.range(req.clone()).await, m.range(&req))?;
            }
            Op::RangeAt {
                sel,
                at,
                limit,
                keys_only,
            } => {
                let req = RangeRequest {
                    range: sel.range(),
                    revision: Some(i64::from(*at) % (m.revision + 3)),
                    limit: *limit,
                    count_only: false,
                    keys_only: *keys_only,
                };
                same(step, &req, store.range(req.clone()).await, m.range(&req))?;
            }
            Op::Compact { at } => {
                let rev = 1 + i64::from(*at) % (m.revision + 1);
                let expected = m.compact(rev);
                same(step, &(op, rev), store.compact(rev).await, expected)?;
            }
            Op::Reopen => {
                drop(store);
                store = open(&path).await;
                check_history(step, &store, &m).await?;
            }
        }
        same(
            step,
            &"status",
            store.status().await.map(status_tuple),
            Ok(m.status()),
        )?;
    }
    let end = ops.len();
    check_history(end, &store, &m).await?;
    check_watch(&store, &m).await?;
    // And once more from the file.
    drop(store);
    let store = open(&path).await;
    check_history(end, &store, &m).await?;
    check_watch(&store, &m).await?;
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn embedded_store_matches_the_model() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2000,
        max_shrink_time: 120_000,
        ..Config::default()
    };
    let rt = runtime();
    let started = std::time::Instant::now();
    let mut runner = TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(op(), 1..=60), |ops| {
        rt.block_on(run_case(ops))
    });
    eprintln!(
        "model check: {cases} cases in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, ops)) => {
            panic!("the store differs from the model: {why}\nminimal failing sequence:\n{ops:#?}")
        }
        Err(e) => panic!("{e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Regression tests: what the model check found in the engine, each as the smallest case.
// ---------------------------------------------------------------------------------------------

fn kv(key: &str, value: &str, create: Revision, modified: Revision, version: i64) -> KeyValue {
    KeyValue {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        create_revision: create,
        mod_revision: modified,
        version,
        lease: 0,
    }
}

fn range_resp(resp: &TxnOpResponse) -> &RangeResponse {
    match resp {
        TxnOpResponse::Range(r) => r,
        other => panic!("expected a range response, got {other:?}"),
    }
}

/// A transaction refused because one of its reads asks for a future (or compacted) revision
/// writes nothing — etcd checks those reads before running anything. The engine used to check
/// them as it reached them, after the branch's earlier writes had gone into the write
/// transaction, and left those writes behind: the refused put became visible, with a
/// `mod_revision` beyond the store's revision, and its revision was handed out again.
#[test]
fn a_txn_refused_for_a_future_read_writes_nothing() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("db")).await;
        let r = store.put(b"a", value(1), 0).await.unwrap();
        assert_eq!(r, 2);
        let err = store
            .txn(Txn::new().and_then(vec![
                TxnOp::put("a", value(2)),
                TxnOp::Range(RangeRequest::new(KeyRange::key("a")).at_revision(r + 5)),
            ]))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::FutureRevision {
                    requested: 7,
                    current: 2
                }
            ),
            "{err:?}"
        );
        assert_eq!(store.status().await.unwrap().revision, r);
        assert_eq!(
            store.get(b"a").await.unwrap(),
            Some(kv("a", "v1", r, r, 1)),
            "the refused transaction's put is visible"
        );
        // The next write gets revision 3, once.
        assert_eq!(store.put(b"b", value(0), 0).await.unwrap(), r + 1);
        let at3 = store
            .range(RangeRequest::new(KeyRange::prefix("")).at_revision(r + 1))
            .await
            .unwrap();
        assert_eq!(
            at3.kvs,
            vec![kv("a", "v1", r, r, 1), kv("b", "v0", r + 1, r + 1, 1)]
        );
    });
}

/// The same with a read below the compaction point.
#[test]
fn a_txn_refused_for_a_compacted_read_writes_nothing() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("db")).await;
        store.put(b"a", value(1), 0).await.unwrap();
        let r = store.put(b"a", value(2), 0).await.unwrap();
        store.compact(r).await.unwrap();
        let err = store
            .txn(Txn::new().and_then(vec![
                TxnOp::put("b", value(0)),
                TxnOp::Range(RangeRequest::new(KeyRange::key("a")).at_revision(r - 1)),
            ]))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Compacted { .. }), "{err:?}");
        assert_eq!(store.status().await.unwrap().revision, r);
        assert_eq!(
            store.get(b"b").await.unwrap(),
            None,
            "the refused transaction's put is visible"
        );
    });
}

/// A read inside a transaction reports the revision the transaction has reached (its own
/// once it has written), and a read at the revision before the transaction sees the state
/// before it, not the transaction's own writes — as etcd (and the conformance suite's
/// `txn_ranges_see_the_state_as_of_their_position`) has it. The engine used to report the
/// revision before the transaction, and to serve a read at that revision from the current
/// state.
#[test]
fn reads_in_a_txn_report_and_honour_revisions_as_etcd() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("db")).await;
        let r = store.put(b"a", value(1), 0).await.unwrap();
        let resp = store
            .txn(Txn::new().and_then(vec![
                TxnOp::get("a"),
                TxnOp::put("a", value(2)),
                TxnOp::get("a"),
                TxnOp::Range(RangeRequest::new(KeyRange::key("a")).at_revision(r)),
            ]))
            .await
            .unwrap();
        assert_eq!(resp.revision, r + 1);
        let reads: Vec<(Revision, Vec<KeyValue>)> = [0, 2, 3]
            .iter()
            .map(|&i| {
                let rr = range_resp(&resp.responses[i]);
                (rr.revision, rr.kvs.clone())
            })
            .collect();
        assert_eq!(
            reads,
            vec![
                (r, vec![kv("a", "v1", r, r, 1)]),
                (r + 1, vec![kv("a", "v2", r, r + 1, 2)]),
                (r + 1, vec![kv("a", "v1", r, r, 1)]),
            ]
        );
    });
}

/// etcd checks a transaction's reads at past revisions against the revision before the
/// transaction: a read at the transaction's own (new) revision is a future one, even after a
/// write of the same branch, and the whole transaction is refused.
#[test]
fn a_txn_read_at_its_own_new_revision_is_refused_as_future() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("db")).await;
        let r = store.put(b"a", value(1), 0).await.unwrap();
        let result = store
            .txn(Txn::new().and_then(vec![
                TxnOp::put("a", value(2)),
                TxnOp::Range(RangeRequest::new(KeyRange::key("a")).at_revision(r + 1)),
            ]))
            .await;
        assert!(
            matches!(result, Err(Error::FutureRevision { requested, current })
                if requested == r + 1 && current == r),
            "{result:?}"
        );
        assert_eq!(store.get(b"a").await.unwrap(), Some(kv("a", "v1", r, r, 1)));
    });
}

/// etcd refuses a transaction if *either* branch puts a key twice or puts a key it also
/// deletes ("duplicate key given in txn request"), whichever branch the compares pick. The
/// engine used to check only the branch that runs.
#[test]
fn a_txn_with_an_invalid_branch_is_refused_whichever_branch_runs() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("db")).await;
        let invalid_branches = [
            vec![TxnOp::put("a", value(1)), TxnOp::put("a", value(2))],
            vec![
                TxnOp::put("a/1", value(1)),
                TxnOp::Delete {
                    range: KeyRange::prefix("a"),
                    prev_kv: false,
                },
            ],
        ];
        for invalid in invalid_branches {
            for (success, failure) in [
                (vec![TxnOp::put("b", value(0))], invalid.clone()),
                (invalid.clone(), vec![TxnOp::put("b", value(0))]),
            ] {
                // No compare: the success branch runs.
                let txn = Txn::new().and_then(success).or_else(failure);
                let result = store.txn(txn.clone()).await;
                assert!(
                    matches!(result, Err(Error::InvalidRequest(_))),
                    "{txn:?}: {result:?}"
                );
            }
        }
        assert_eq!(store.status().await.unwrap().revision, 1);
    });
}

/// A dropped store is closed: opening the same file again right away works. The store's
/// `Drop` used to stop the writer without waiting for readers in flight — a watch task
/// replaying history holds its own handle on the database, and with it redb's file lock —
/// so the reopen failed with "in use by another process".
#[test]
fn a_dropped_store_can_be_opened_again_at_once() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut store = open(&path).await;
        // A history long enough that replaying it takes a while: 10 commits of 500 keys.
        for i in 0..10 {
            let ops = (0..500)
                .map(|j| TxnOp::put(format!("k/{i}/{j}"), value(0)))
                .collect();
            store.txn(Txn::new().and_then(ops)).await.unwrap();
        }
        for round in 0..10 {
            let mut watches = Vec::new();
            for _ in 0..4 {
                watches.push(
                    store
                        .watch(WatchRequest::new(KeyRange::prefix("")).from_revision(1))
                        .await
                        .unwrap(),
                );
            }
            tokio::time::sleep(Duration::from_millis(round)).await;
            drop(watches);
            drop(store);
            store = match EmbeddedStore::open(EmbeddedConfig::new(&path)).await {
                Ok(s) => s,
                Err(e) => panic!("round {round}: reopening right after the drop: {e}"),
            };
        }
    });
}
