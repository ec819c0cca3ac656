//! The cluster's key-value store: etcd v3 semantics (global revision, MVCC reads at past
//! revisions, compare-and-swap transactions, watches from a revision, leases, compaction) behind
//! one [`Store`] trait with two backends:
//!
//! - [`embedded::EmbeddedStore`], the default: an MVCC engine on `redb` inside the process, with
//!   group commit and incremental compaction;
//! - [`etcd::EtcdStore`]: a real etcd v3 cluster, the HA path.
//!
//! [`open`] picks one from a datastore URL. Keys and values are opaque bytes here; the API server
//! decides what goes in them.
//!
//! ```no_run
//! # async fn demo() -> edgesite_store::Result<()> {
//! use edgesite_store::{open, Store, DatastoreConfig};
//! let store = open(&DatastoreConfig::embedded("/var/lib/edgesite/db")).await?;
//! let rev = store.create(b"/registry/a", b"1".to_vec(), 0).await?;
//! let kv = store.get(b"/registry/a").await?.expect("just created");
//! assert_eq!(kv.mod_revision, rev);
//! store.update(b"/registry/a", b"2".to_vec(), rev, 0).await?;
//! # Ok(()) }
//! ```
#![warn(clippy::unwrap_used, clippy::expect_used)] // product code returns errors; tests may unwrap

mod error;
mod types;

pub mod embedded;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod watch_cache;

use std::path::PathBuf;

use async_trait::async_trait;
use futures::stream::BoxStream;

pub use error::{Error, Result};
pub use types::*;

use error::key_str;

/// A stream of watch responses; it ends with an `Err` (for example [`Error::Compacted`]) or when
/// the store closes.
pub type WatchStream = BoxStream<'static, Result<WatchResponse>>;

/// The store: etcd v3 semantics over either backend.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Reads a key range at the current or a past revision.
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse>;

    /// Runs a transaction atomically. A transaction that writes gets exactly one new revision,
    /// shared by all of its writes, and returns only once that write is durable.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse>;

    /// Watches a key range. Events come in revision order, each exactly once; a start revision
    /// older than the compaction point fails with [`Error::Compacted`] (immediately or as the
    /// stream's first item).
    async fn watch(&self, req: WatchRequest) -> Result<WatchStream>;

    /// Grants a lease of `ttl_secs` seconds.
    async fn lease_grant(&self, ttl_secs: i64) -> Result<LeaseId>;

    /// Renews a lease to its full TTL.
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<LeaseInfo>;

    /// Revokes a lease now, deleting every key attached to it.
    async fn lease_revoke(&self, id: LeaseId) -> Result<()>;

    /// Tells how long a lease has left.
    async fn lease_time_to_live(&self, id: LeaseId) -> Result<LeaseInfo>;

    /// Discards history older than `revision`: reads and watches before it fail with
    /// [`Error::Compacted`] afterwards; the current state is untouched.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// Revision, compaction point, size on disk and key count.
    async fn status(&self) -> Result<StoreStatus>;

    // ---- conveniences built on the primitives above ----

    /// The current value of one key.
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let resp = self
            .range(RangeRequest::new(KeyRange::Key(key.to_vec())))
            .await?;
        Ok(resp.kvs.into_iter().next())
    }

    /// Creates a key; fails with [`Error::AlreadyExists`] if it exists. Returns the revision.
    async fn create(&self, key: &[u8], value: Vec<u8>, lease: LeaseId) -> Result<Revision> {
        let txn = Txn::new()
            .when(Compare::new(
                key,
                CompareOp::Equal,
                CompareTarget::CreateRevision(0),
            ))
            .and_then(vec![TxnOp::Put {
                key: key.to_vec(),
                value,
                lease,
                prev_kv: false,
            }])
            .or_else(vec![TxnOp::get(key)]);
        let resp = self.txn(txn).await?;
        if resp.succeeded {
            return Ok(resp.revision);
        }
        match first_kv(resp.responses) {
            Some(current) => Err(Error::AlreadyExists {
                key: key_str(key),
                current: Box::new(current),
            }),
            // Deleted again between the compare and the read: report it as the conflict it is.
            None => Err(Error::Conflict {
                key: key_str(key),
                expected: 0,
                current: None,
            }),
        }
    }

    /// Replaces a key's value if its `mod_revision` is still `expected`; otherwise fails with
    /// [`Error::Conflict`] carrying the current state. Returns the new revision.
    async fn update(
        &self,
        key: &[u8],
        value: Vec<u8>,
        expected: Revision,
        lease: LeaseId,
    ) -> Result<Revision> {
        let txn = Txn::new()
            .when(Compare::new(
                key,
                CompareOp::Equal,
                CompareTarget::ModRevision(expected),
            ))
            .and_then(vec![TxnOp::Put {
                key: key.to_vec(),
                value,
                lease,
                prev_kv: false,
            }])
            .or_else(vec![TxnOp::get(key)]);
        let resp = self.txn(txn).await?;
        if resp.succeeded {
            return Ok(resp.revision);
        }
        Err(Error::Conflict {
            key: key_str(key),
            expected,
            current: first_kv(resp.responses).map(Box::new),
        })
    }

    /// Deletes a key if its `mod_revision` is still `expected` (`None`: whatever it is).
    /// Returns the deleted key-value and the revision of the delete.
    async fn delete(&self, key: &[u8], expected: Option<Revision>) -> Result<(KeyValue, Revision)> {
        let mut txn = Txn::new()
            .and_then(vec![TxnOp::Delete {
                range: KeyRange::Key(key.to_vec()),
                prev_kv: true,
            }])
            .or_else(vec![TxnOp::get(key)]);
        txn.compare.push(match expected {
            Some(rev) => Compare::new(key, CompareOp::Equal, CompareTarget::ModRevision(rev)),
            None => Compare::new(key, CompareOp::Greater, CompareTarget::CreateRevision(0)),
        });
        let resp = self.txn(txn).await?;
        if resp.succeeded {
            let revision = resp.revision;
            if let Some(TxnOpResponse::Delete { prev_kvs, .. }) = resp.responses.into_iter().next()
                && let Some(kv) = prev_kvs.into_iter().next()
            {
                return Ok((kv, revision));
            }
            return Err(Error::NotFound { key: key_str(key) });
        }
        match (expected, first_kv(resp.responses)) {
            (_, None) => Err(Error::NotFound { key: key_str(key) }),
            (Some(expected), Some(kv)) => Err(Error::Conflict {
                key: key_str(key),
                expected,
                current: Some(Box::new(kv)),
            }),
            (None, Some(_)) => Err(Error::Conflict {
                key: key_str(key),
                expected: 0,
                current: None,
            }),
        }
    }

    /// Writes a key unconditionally. Returns the revision.
    async fn put(&self, key: &[u8], value: Vec<u8>, lease: LeaseId) -> Result<Revision> {
        let resp = self
            .txn(Txn::new().and_then(vec![TxnOp::Put {
                key: key.to_vec(),
                value,
                lease,
                prev_kv: false,
            }]))
            .await?;
        Ok(resp.revision)
    }

    /// The store's current revision: every write acknowledged before this call is at or
    /// below it. What a consistent read from a cache waits for.
    async fn current_revision(&self) -> Result<Revision> {
        // One key that never exists: the answer's header carries the revision.
        let resp = self
            .range(
                RangeRequest::new(KeyRange::Key(b"/edgesite/revision-probe".to_vec())).count_only(),
            )
            .await?;
        Ok(resp.revision)
    }

    /// Asks every watch that wants progress notifications to send one as soon as it has
    /// passed `revision` (at once if it has), instead of at its next periodic tick; lets a
    /// cache fed by a watch on an idle prefix prove it is current. Returns false when the
    /// backend cannot do that (callers then read the store instead of waiting).
    async fn request_progress(&self, _revision: Revision) -> bool {
        false
    }

    /// The number of live keys under a prefix, at the current revision.
    async fn count(&self, prefix: &[u8]) -> Result<u64> {
        let resp = self
            .range(RangeRequest::new(KeyRange::Prefix(prefix.to_vec())).count_only())
            .await?;
        Ok(resp.count)
    }
}

fn first_kv(responses: Vec<TxnOpResponse>) -> Option<KeyValue> {
    match responses.into_iter().next() {
        Some(TxnOpResponse::Range(r)) => r.kvs.into_iter().next(),
        _ => None,
    }
}

/// Which backend to use and how.
#[derive(Debug, Clone)]
pub enum DatastoreConfig {
    /// The embedded engine, in one file.
    Embedded(embedded::EmbeddedConfig),
    /// A real etcd cluster.
    #[cfg(feature = "etcd")]
    Etcd(etcd::EtcdConfig),
}

impl DatastoreConfig {
    /// The embedded engine at `path`, with default settings.
    pub fn embedded(path: impl Into<PathBuf>) -> Self {
        Self::Embedded(embedded::EmbeddedConfig::new(path))
    }

    /// Parses a datastore URL: `etcd://host:port[,host2:port]` (or `etcds://` for TLS, with
    /// `tls` filled in by the caller) selects etcd; anything else is an error. The embedded
    /// store is chosen by passing no URL at all.
    pub fn from_url(url: &str) -> Result<Self> {
        #[cfg(feature = "etcd")]
        return etcd::EtcdConfig::from_url(url).map(Self::Etcd);
        #[cfg(not(feature = "etcd"))]
        Err(Error::InvalidRequest(format!(
            "cannot use the datastore {url:?}: this build has no etcd backend \
             (build with the `etcd` feature)"
        )))
    }
}

/// Opens the configured store.
pub async fn open(config: &DatastoreConfig) -> Result<std::sync::Arc<dyn Store>> {
    Ok(match config {
        DatastoreConfig::Embedded(c) => {
            std::sync::Arc::new(embedded::EmbeddedStore::open(c.clone()).await?)
        }
        #[cfg(feature = "etcd")]
        DatastoreConfig::Etcd(c) => std::sync::Arc::new(etcd::EtcdStore::connect(c.clone()).await?),
    })
}
