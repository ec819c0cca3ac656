//! Request and response values of the store, shaped after etcd's v3 API so that both backends
//! (embedded and etcd) speak the same language and the API server never sees which one it uses.

use std::collections::BTreeSet;

use crate::Error;
use crate::error::key_str;

/// A store revision: global, monotonically increasing, one per successful write transaction.
pub type Revision = i64;

/// A lease identifier (`0` means "no lease").
pub type LeaseId = i64;

/// The largest value the store accepts, as etcd's default `--max-request-bytes` allows (1.5 MiB).
pub const MAX_VALUE_BYTES: usize = 1536 * 1024;

/// One key with its value and its MVCC bookkeeping, as etcd's `mvccpb.KeyValue`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty for `keys_only` reads and for delete events).
    pub value: Vec<u8>,
    /// Revision of the write that created the key since it last did not exist.
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// Number of writes since creation (1 after create; reset by delete).
    pub version: i64,
    /// Lease attached to the key, `0` for none.
    pub lease: LeaseId,
}

/// Which keys a read, delete or watch covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    /// Exactly this key.
    Key(Vec<u8>),
    /// Every key that starts with these bytes (an empty prefix is the whole keyspace).
    Prefix(Vec<u8>),
    /// `[start, end)`, as etcd's `key`/`range_end`.
    Range {
        /// First key in the range.
        start: Vec<u8>,
        /// First key past the range; empty (or `"\0"`, etcd's spelling) for "to the end of the
        /// keyspace".
        end: Vec<u8>,
    },
}

impl KeyRange {
    /// The range of one key.
    pub fn key(k: impl Into<Vec<u8>>) -> Self {
        Self::Key(k.into())
    }

    /// The range of every key under a prefix.
    pub fn prefix(p: impl Into<Vec<u8>>) -> Self {
        Self::Prefix(p.into())
    }

    /// Whether `k` lies in the range.
    pub fn contains(&self, k: &[u8]) -> bool {
        match self {
            Self::Key(key) => key.as_slice() == k,
            Self::Prefix(p) => k.starts_with(p),
            Self::Range { start, end } => {
                k >= start.as_slice() && (unbounded_end(end) || k < end.as_slice())
            }
        }
    }

    /// The etcd encoding of the range: `(key, range_end)`, with an empty `range_end` for a
    /// single key and `"\0"` as "to the end of the keyspace".
    pub fn to_etcd(&self) -> (Vec<u8>, Vec<u8>) {
        match self {
            Self::Key(k) => (k.clone(), Vec::new()),
            Self::Prefix(p) if p.is_empty() => (vec![0], vec![0]),
            Self::Prefix(p) => (p.clone(), prefix_end(p)),
            Self::Range { start, end } if unbounded_end(end) => {
                let start = if start.is_empty() {
                    vec![0]
                } else {
                    start.clone()
                };
                (start, vec![0])
            }
            Self::Range { start, end } => (start.clone(), end.clone()),
        }
    }

    /// The first key of the range and the exclusive bound past it (`None` = unbounded).
    pub fn bounds(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match self {
            Self::Key(k) => {
                let mut end = k.clone();
                end.push(0);
                (k.clone(), Some(end))
            }
            Self::Prefix(p) => {
                let end = prefix_end(p);
                (p.clone(), if end == [0] { None } else { Some(end) })
            }
            Self::Range { start, end } if unbounded_end(end) => (start.clone(), None),
            Self::Range { start, end } => (start.clone(), Some(end.clone())),
        }
    }
}

/// Checks the form of one transaction branch (see [`Txn::check`]).
fn check_branch(ops: &[TxnOp]) -> Result<(), Error> {
    let mut put_keys = BTreeSet::new();
    let mut deletes = Vec::new();
    for op in ops {
        match op {
            TxnOp::Put { key, value, .. } => {
                if key.is_empty() {
                    return Err(Error::InvalidRequest("key must not be empty".into()));
                }
                if value.len() > MAX_VALUE_BYTES {
                    return Err(Error::ValueTooLarge {
                        key: key_str(key),
                        size: value.len(),
                        limit: MAX_VALUE_BYTES,
                    });
                }
                if !put_keys.insert(key.as_slice()) {
                    return Err(Error::InvalidRequest(format!(
                        "duplicate key {:?} in one transaction",
                        key_str(key)
                    )));
                }
            }
            TxnOp::Delete { range, .. } => {
                if matches!(range, KeyRange::Key(k) if k.is_empty()) {
                    return Err(Error::InvalidRequest("key must not be empty".into()));
                }
                deletes.push(range);
            }
            TxnOp::Range(_) => {}
        }
    }
    if let Some(key) = put_keys
        .iter()
        .find(|k| deletes.iter().any(|r| r.contains(k)))
    {
        return Err(Error::InvalidRequest(format!(
            "key {:?} is both put and deleted in one transaction",
            key_str(key)
        )));
    }
    Ok(())
}

fn unbounded_end(end: &[u8]) -> bool {
    end.is_empty() || end == [0]
}

/// The smallest key greater than every key with this prefix (`"\0"` when there is none),
/// as etcd's `clientv3.GetPrefixRangeEnd`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A read of a key range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRequest {
    /// The keys to read.
    pub range: KeyRange,
    /// Read at this past revision; `None` = the current one.
    pub revision: Option<Revision>,
    /// At most this many keys (0 = no limit); `count` still counts all of them.
    pub limit: usize,
    /// Return only the count, no key.
    pub count_only: bool,
    /// Return keys without values.
    pub keys_only: bool,
}

impl RangeRequest {
    /// A read of the current state of `range`.
    pub fn new(range: KeyRange) -> Self {
        Self {
            range,
            revision: None,
            limit: 0,
            count_only: false,
            keys_only: false,
        }
    }

    /// Read at a past revision.
    pub fn at_revision(mut self, revision: Revision) -> Self {
        self.revision = Some(revision);
        self
    }

    /// Return at most `limit` keys.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Return only the count.
    pub fn count_only(mut self) -> Self {
        self.count_only = true;
        self
    }

    /// Return keys without values.
    pub fn keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }
}

/// The answer to a [`RangeRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResponse {
    /// The keys, in key order.
    pub kvs: Vec<KeyValue>,
    /// How many keys the range holds (ignoring `limit`).
    pub count: u64,
    /// Whether `limit` cut the answer short.
    pub more: bool,
    /// The store revision the read was served at (the current one for reads at a past revision,
    /// as etcd does).
    pub revision: Revision,
}

/// What a [`Compare`] looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The value bytes.
    Value(Vec<u8>),
    /// The key's version (0 when absent).
    Version(i64),
    /// The key's create revision (0 when absent).
    CreateRevision(Revision),
    /// The key's mod revision (0 when absent).
    ModRevision(Revision),
    /// The attached lease (0 when none or absent).
    Lease(LeaseId),
}

/// How a [`Compare`] relates the key's field to the given one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// Equal.
    Equal,
    /// Not equal.
    NotEqual,
    /// The stored field is greater.
    Greater,
    /// The stored field is less.
    Less,
}

/// One condition of a transaction, on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key compared.
    pub key: Vec<u8>,
    /// The relation.
    pub op: CompareOp,
    /// The field and the value to compare it with.
    pub target: CompareTarget,
}

impl Compare {
    /// A condition on `key`.
    pub fn new(key: impl Into<Vec<u8>>, op: CompareOp, target: CompareTarget) -> Self {
        Self {
            key: key.into(),
            op,
            target,
        }
    }

    /// True when `kv` (the key's current state, `None` when absent) satisfies the condition,
    /// with etcd's rule that an absent key has zero revisions/version and an empty value and
    /// that a value compare against an absent key is false.
    pub fn evaluate(&self, kv: Option<&KeyValue>) -> bool {
        use std::cmp::Ordering;
        let ord: Ordering = match (&self.target, kv) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(v), Some(kv)) => kv.value.as_slice().cmp(v.as_slice()),
            (CompareTarget::Version(v), kv) => kv.map_or(0, |kv| kv.version).cmp(v),
            (CompareTarget::CreateRevision(r), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(r),
            (CompareTarget::ModRevision(r), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(r),
            (CompareTarget::Lease(l), kv) => kv.map_or(0, |kv| kv.lease).cmp(l),
        };
        match self.op {
            CompareOp::Equal => ord == Ordering::Equal,
            CompareOp::NotEqual => ord != Ordering::Equal,
            CompareOp::Greater => ord == Ordering::Greater,
            CompareOp::Less => ord == Ordering::Less,
        }
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Read a range (at the transaction's own point in time).
    Range(RangeRequest),
    /// Write a key.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// Lease to attach, `0` for none.
        lease: LeaseId,
        /// Return the previous key-value.
        prev_kv: bool,
    },
    /// Delete a range of keys.
    Delete {
        /// The keys.
        range: KeyRange,
        /// Return the deleted key-values.
        prev_kv: bool,
    },
}

impl TxnOp {
    /// A put without lease.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
            prev_kv: false,
        }
    }

    /// A delete of one key.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Self::Delete {
            range: KeyRange::Key(key.into()),
            prev_kv: false,
        }
    }

    /// A read of the current value of one key.
    pub fn get(key: impl Into<Vec<u8>>) -> Self {
        Self::Range(RangeRequest::new(KeyRange::Key(key.into())))
    }
}

/// The result of one [`TxnOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResponse {
    /// The result of a read.
    Range(RangeResponse),
    /// The result of a put.
    Put {
        /// The previous key-value, when asked for and present.
        prev_kv: Option<KeyValue>,
    },
    /// The result of a delete.
    Delete {
        /// How many keys were deleted.
        deleted: u64,
        /// The deleted key-values, when asked for.
        prev_kvs: Vec<KeyValue>,
    },
}

/// A transaction: if every compare holds, run `success`, else `failure`, atomically.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Txn {
    /// The conditions (all must hold).
    pub compare: Vec<Compare>,
    /// Run when they hold.
    pub success: Vec<TxnOp>,
    /// Run otherwise.
    pub failure: Vec<TxnOp>,
}

impl Txn {
    /// An empty transaction (always succeeds, does nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a condition.
    pub fn when(mut self, compare: Compare) -> Self {
        self.compare.push(compare);
        self
    }

    /// Sets the success branch.
    pub fn and_then(mut self, ops: Vec<TxnOp>) -> Self {
        self.success = ops;
        self
    }

    /// Sets the failure branch.
    pub fn or_else(mut self, ops: Vec<TxnOp>) -> Self {
        self.failure = ops;
        self
    }

    /// Whether the given branch writes anything.
    pub fn branch_writes(ops: &[TxnOp]) -> bool {
        ops.iter().any(|op| !matches!(op, TxnOp::Range(_)))
    }

    /// Checks the form of both branches, as etcd does before looking at any state: no empty
    /// key, no value over [`MAX_VALUE_BYTES`], no key written twice (two puts, or a put inside a
    /// range the same branch deletes).
    pub fn check(&self) -> Result<(), Error> {
        [&self.success, &self.failure]
            .into_iter()
            .try_for_each(|ops| check_branch(ops))
    }
}

/// The result of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnResponse {
    /// Whether the compares held (and `success` ran).
    pub succeeded: bool,
    /// The store revision after the transaction (its own revision if it wrote).
    pub revision: Revision,
    /// One response per operation of the branch that ran.
    pub responses: Vec<TxnOpResponse>,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created or updated.
    Put,
    /// Deleted (explicitly or by lease expiry).
    Delete,
}

/// One change, as delivered by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventType,
    /// The key after the change; for a delete, the key with its delete `mod_revision` and
    /// everything else zero.
    pub kv: KeyValue,
    /// The key before the change, when the watch asked for it and it existed.
    pub prev_kv: Option<KeyValue>,
}

/// A watch of a key range from a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRequest {
    /// The keys watched.
    pub range: KeyRange,
    /// First revision to deliver; `None` = changes after the current revision.
    pub start_revision: Option<Revision>,
    /// Deliver the previous key-value with each event.
    pub prev_kv: bool,
    /// Deliver empty responses carrying the current revision when the watch is idle (etcd's
    /// progress notifications), so callers can tell how far they are.
    pub progress_notify: bool,
}

impl WatchRequest {
    /// A watch of `range` from now on.
    pub fn new(range: KeyRange) -> Self {
        Self {
            range,
            start_revision: None,
            prev_kv: false,
            progress_notify: false,
        }
    }

    /// Start at this revision (inclusive).
    pub fn from_revision(mut self, rev: Revision) -> Self {
        self.start_revision = Some(rev);
        self
    }

    /// Ask for previous values.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    /// Ask for progress notifications.
    pub fn with_progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }
}

/// A batch of events delivered by a watch, in revision order; an empty batch is a progress
/// notification.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchResponse {
    /// The events, in revision order (several may share a revision when one transaction wrote
    /// several keys).
    pub events: Vec<Event>,
    /// The store revision the response was sent at: every change up to it that matches the watch
    /// has been delivered.
    pub revision: Revision,
}

/// Size and content figures of a store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreStatus {
    /// The current revision.
    pub revision: Revision,
    /// The oldest revision still readable and watchable.
    pub compact_revision: Revision,
    /// Size of the database on disk, in bytes.
    pub db_size_bytes: u64,
    /// Number of live keys.
    pub key_count: u64,
}

/// The answer to a lease keep-alive or time-to-live query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The lease.
    pub id: LeaseId,
    /// The TTL it was granted with, in seconds.
    pub granted_ttl: i64,
    /// Seconds left before it expires.
    pub ttl: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ranges_agree_between_containment_bounds_and_etcd_encoding() {
        let open = KeyRange::Range {
            start: b"b".to_vec(),
            end: Vec::new(),
        };
        assert!(open.contains(b"b") && open.contains(b"zzz") && !open.contains(b"a"));
        assert_eq!(open.bounds(), (b"b".to_vec(), None));
        assert_eq!(open.to_etcd(), (b"b".to_vec(), vec![0]));
        let nul = KeyRange::Range {
            start: b"b".to_vec(),
            end: vec![0],
        };
        assert_eq!(nul.bounds(), open.bounds());
        let closed = KeyRange::Range {
            start: b"b".to_vec(),
            end: b"d".to_vec(),
        };
        assert!(closed.contains(b"c") && !closed.contains(b"d"));
        assert_eq!(closed.to_etcd(), (b"b".to_vec(), b"d".to_vec()));
        assert_eq!(
            KeyRange::prefix("a").to_etcd(),
            (b"a".to_vec(), b"b".to_vec())
        );
        assert_eq!(KeyRange::prefix("").to_etcd(), (vec![0], vec![0]));
        assert_eq!(KeyRange::prefix("").bounds(), (Vec::new(), None));
        assert_eq!(KeyRange::key("k").to_etcd(), (b"k".to_vec(), Vec::new()));
        assert!(KeyRange::key("k").contains(b"k") && !KeyRange::key("k").contains(b"k\0"));
    }

    #[test]
    fn prefix_end_carries_over_0xff() {
        assert_eq!(prefix_end(b"a"), b"b");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn compares_treat_a_missing_key_as_zero() {
        let c = Compare::new("k", CompareOp::Equal, CompareTarget::CreateRevision(0));
        assert!(c.evaluate(None));
        let v = Compare::new(
            "k",
            CompareOp::NotEqual,
            CompareTarget::Value(b"x".to_vec()),
        );
        assert!(
            !v.evaluate(None),
            "a value compare against a missing key is false"
        );
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: b"b".to_vec(),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            lease: 0,
        };
        assert!(
            Compare::new("k", CompareOp::Greater, CompareTarget::Value(b"a".to_vec()))
                .evaluate(Some(&kv))
        );
        assert!(
            Compare::new("k", CompareOp::Less, CompareTarget::ModRevision(6)).evaluate(Some(&kv))
        );
        assert!(
            !Compare::new("k", CompareOp::Equal, CompareTarget::Version(2)).evaluate(Some(&kv))
        );
    }
}
