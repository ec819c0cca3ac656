//! The one error type of the store crate; both backends map their failures onto it so that the
//! API server can turn each into the matching `metav1.Status`.

use crate::types::{KeyValue, LeaseId, Revision};

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A create found the key already there.
    #[error("key {key:?} already exists")]
    AlreadyExists {
        /// The key (lossy UTF-8).
        key: String,
        /// The key's current state.
        current: Box<KeyValue>,
    },
    /// A guarded update or delete found a different `mod_revision` (or no key).
    #[error("key {key:?} was modified concurrently: expected mod_revision {expected}, found {}",
        current.as_ref().map_or("no key".to_string(), |kv| kv.mod_revision.to_string()))]
    Conflict {
        /// The key (lossy UTF-8).
        key: String,
        /// The `mod_revision` the caller expected.
        expected: Revision,
        /// The key's current state (`None` when it does not exist).
        current: Option<Box<KeyValue>>,
    },
    /// The key does not exist.
    #[error("key {key:?} not found")]
    NotFound {
        /// The key (lossy UTF-8).
        key: String,
    },
    /// A read or watch asked for a revision older than the compaction point.
    #[error(
        "required revision {requested} has been compacted (oldest available: {compact_revision})"
    )]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision still available.
        compact_revision: Revision,
    },
    /// A read asked for a revision the store has not reached.
    #[error("required revision {requested} is a future revision (current: {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The current revision.
        current: Revision,
    },
    /// A value exceeds [`crate::MAX_VALUE_BYTES`].
    #[error("value of {size} bytes for key {key:?} exceeds the limit of {limit} bytes")]
    ValueTooLarge {
        /// The key (lossy UTF-8).
        key: String,
        /// The value's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The lease does not exist (never granted, revoked or expired).
    #[error("lease {0:x} not found")]
    LeaseNotFound(LeaseId),
    /// The request itself is malformed (empty key, bad range, zero TTL…).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The database file cannot be used: corrupted, foreign, or of an unknown format version.
    #[error("cannot open store {path}: {reason}")]
    Unusable {
        /// The file.
        path: String,
        /// What is wrong and what to do about it.
        reason: String,
    },
    /// The database file's content is unreadable (damaged, or another program's), as opposed
    /// to [`Error::Unusable`] (in use, unreachable, a newer format): moving it away and
    /// starting empty is a way out, for a cache that can be filled again.
    #[error("cannot open store {path}: {reason}")]
    Damaged {
        /// The file.
        path: String,
        /// What is wrong and what to do about it.
        reason: String,
    },
    /// Writing to disk failed (full disk, I/O error); nothing of the failed write is stored.
    #[error("store write failed, nothing was stored: {0}")]
    Storage(String),
    /// The store is shutting down or its writer has stopped.
    #[error("store is closed")]
    Closed,
    /// The etcd backend could not reach or was refused by etcd.
    #[error("etcd: {0}")]
    Etcd(String),
}

impl Error {
    /// Whether retrying the same request later may succeed (transport trouble, not a refusal).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Etcd(_) | Self::Closed)
    }
}

/// Result of store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Lossy UTF-8 of a key, for messages.
pub(crate) fn key_str(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}
