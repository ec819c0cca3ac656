//! The embedded engine: an MVCC key-value store with etcd v3 semantics on one `redb` file.
//!
//! Readers use redb's MVCC snapshots directly and never wait for the writer. Every change goes
//! through one writer thread (`writer.rs`) that folds concurrent requests into one durable commit,
//! logged to a write-ahead log (`wal.rs`) and checkpointed into redb.
//! Watchers are fed live from the writer's committed batches and fall back to the on-disk change
//! log when they start in the past or fall behind (`watch.rs`). Leases live on disk; their
//! deadlines live in memory and restart at full TTL when the store opens, as etcd does.
//! Every deadline and timer reads [`EmbeddedConfig::clock`], so tests move lease expiry,
//! checkpoints and time-based compaction by hand.

mod codec;
mod read;
mod wal;
mod watch;
mod writer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use edgesite_clock::{Clock, SystemClock};
use redb::{Database, ReadTransaction, ReadableDatabase, TableError};
use tokio::sync::{broadcast, oneshot};

use crate::types::{
    Event, LeaseId, LeaseInfo, RangeRequest, RangeResponse, Revision, StoreStatus, Txn,
    TxnResponse, WatchRequest,
};
use crate::{Error, Result, Store, WatchStream};
use codec::{
    FORMAT_VERSION, HISTORY, LATEST, LEASE_KEYS, LEASES, META, META_COMPACT, META_COMPACTED_UPTO,
    META_FORMAT, META_NEXT_LEASE, META_REVISION, META_WAL_SEQ, REVISIONS, rev_i,
};
use writer::{Command, Writer};

/// When history is discarded automatically. History older than *either* window is compacted;
/// with neither set, only explicit [`Store::compact`] calls discard history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Keep at most this many revisions of history.
    pub keep_revisions: Option<u64>,
    /// Keep history for at most this long.
    pub keep_duration: Option<Duration>,
}

impl Default for CompactionPolicy {
    /// Five minutes, as kube-apiserver compacts etcd, and at most 100 000 revisions so that a
    /// burst of writes cannot grow the file without bound in the meantime.
    fn default() -> Self {
        Self {
            keep_revisions: Some(100_000),
            keep_duration: Some(Duration::from_secs(300)),
        }
    }
}

/// Batches of events kept in memory for live watchers.
const EVENT_RING_BATCHES: usize = 128;

/// Settings of the embedded engine.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// The database file (created with its parent directories if missing).
    pub path: PathBuf,
    /// Automatic compaction.
    pub compaction: CompactionPolicy,
    /// Memory for redb's page cache, in bytes.
    pub cache_size_bytes: usize,
    /// How often an idle watch that asked for progress notifications gets one.
    pub progress_notify_interval: Duration,
    /// Free disk space kept in reserve: writes that add data are refused (with a clear
    /// error, nothing stored) once less is left, so that the store never runs into the end of
    /// the disk in the middle of a commit.
    pub reserved_disk_bytes: u64,
    /// Where lease deadlines, checkpoint timers and time-based compaction read the time.
    pub clock: Arc<dyn Clock>,
}

impl EmbeddedConfig {
    /// Default settings for a store at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            compaction: CompactionPolicy::default(),
            cache_size_bytes: 32 << 20,
            progress_notify_interval: Duration::from_secs(5),
            reserved_disk_bytes: 64 << 20,
            clock: Arc::new(SystemClock),
        }
    }

    /// Sets the automatic compaction policy.
    pub fn with_compaction(mut self, policy: CompactionPolicy) -> Self {
        self.compaction = policy;
        self
    }

    /// Sets the clock (tests: a `ManualClock`).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

/// A batch of events committed together, as sent to watchers.
#[derive(Debug)]
pub(crate) struct Batch {
    /// Events in revision order, each with its previous value.
    pub events: Vec<Event>,
    /// The store revision after the batch.
    pub revision: Revision,
}

/// What the writer, readers, watchers and the lease timer share.
#[derive(Debug)]
pub(crate) struct Shared {
    db: RwLock<Option<Arc<Database>>>,
    /// Last committed revision.
    pub revision: AtomicI64,
    /// Oldest readable revision.
    pub compact_revision: AtomicI64,
    pub events: broadcast::Sender<Arc<Batch>>,
    pub leases: Leases,
    /// Flips to true when the store closes; long-running tasks end on it.
    pub closed: tokio::sync::watch::Sender<bool>,
    pub path: PathBuf,
    pub progress_interval: Duration,
    /// The highest revision a caller asked watches to confirm they have reached
    /// ([`Store::request_progress`]).
    pub progress_requests: tokio::sync::watch::Sender<Revision>,
}

impl Shared {
    /// The database, unless the store has closed.
    pub(crate) fn db(&self) -> Result<Arc<Database>> {
        let slot = self.db.read().map_err(|_| Error::Closed)?;
        match &*slot {
            Some(db) => Ok(db.clone()),
            None if *self.closed.borrow() => Err(Error::Closed),
            None => Err(Error::Storage(
                "the store is being reopened after a failed write and cannot be read until that succeeds (is the disk full?)".into(),
            )),
        }
    }

    /// Closes and reopens the database file after a failed write: redb refuses all further
    /// writes on an instance that saw an I/O error, and the file itself is consistent at its
    /// last commit. Readers wait on the lock for the few milliseconds this takes.
    pub(crate) fn reopen(
        &self,
        old: Option<Arc<Database>>,
        cfg: &EmbeddedConfig,
    ) -> Result<(Arc<Database>, Recovered)> {
        let mut slot = self.db.write().map_err(|_| Error::Closed)?;
        slot.take();
        if let Some(old) = old {
            release(old);
        }
        let (db, recovered) = open_db(cfg)?;
        let db = Arc::new(db);
        *slot = Some(db.clone());
        Ok((db, recovered))
    }

    /// Runs `f` on a fresh read snapshot.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&ReadTransaction) -> Result<T>) -> Result<T> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(storage_err)?;
        f(&txn)
    }
}

/// Drops the last handle on the database once reads in flight (which hold their own) are done,
/// so that the file lock is released by the time this returns; gives up after at least 10 s.
/// It counts polls instead of reading the store's clock: it waits for other threads in real
/// time, and a manual clock would never reach a deadline.
fn release(db: Arc<Database>) {
    for _ in 0..10_000 {
        if Arc::strong_count(&db) <= 1 {
            return;
        }
        edgesite_clock::block_for(Duration::from_millis(1));
    }
}

/// Deadlines of the live leases. The writer owns the lease table on disk; this is its
/// in-memory shadow, consulted by keep-alives and by the expiry timer.
#[derive(Debug)]
pub(crate) struct Leases {
    inner: Mutex<HashMap<LeaseId, LeaseState>>,
    changed: tokio::sync::Notify,
    clock: Arc<dyn Clock>,
}

#[derive(Debug, Clone, Copy)]
struct LeaseState {
    ttl: i64,
    deadline: Instant,
    /// When the expiry was last handed to the writer (re-sent if the writer failed it).
    revoke_sent: Option<Instant>,
}

impl Leases {
    fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Mutex::new(HashMap::new()),
            changed: tokio::sync::Notify::new(),
            clock,
        }
    }

    /// The instant deadlines are measured against.
    fn now(&self) -> Instant {
        self.clock.instant()
    }

    pub(crate) fn granted(&self, id: LeaseId, ttl: i64) {
        let deadline = self.now() + secs(ttl);
        self.lock().insert(
            id,
            LeaseState {
                ttl,
                deadline,
                revoke_sent: None,
            },
        );
        self.changed.notify_one();
    }

    pub(crate) fn revoked(&self, id: LeaseId) {
        self.lock().remove(&id);
    }

    fn keep_alive(&self, id: LeaseId) -> Result<LeaseInfo> {
        let mut map = self.lock();
        let state = map.get_mut(&id).ok_or(Error::LeaseNotFound(id))?;
        if state.revoke_sent.is_some() {
            return Err(Error::LeaseNotFound(id));
        }
        state.deadline = self.now() + secs(state.ttl);
        Ok(LeaseInfo {
            id,
            granted_ttl: state.ttl,
            ttl: state.ttl,
        })
    }

    fn time_to_live(&self, id: LeaseId) -> Result<LeaseInfo> {
        let now = self.now();
        let map = self.lock();
        let state = map.get(&id).ok_or(Error::LeaseNotFound(id))?;
        let left = state.deadline.saturating_duration_since(now);
        Ok(LeaseInfo {
            id,
            granted_ttl: state.ttl,
            ttl: left.as_secs_f64().ceil() as i64,
        })
    }

    /// Leases past their deadline whose expiry has not been handed to the writer recently,
    /// and the next deadline to wake up for.
    fn take_expired(&self, now: Instant) -> (Vec<LeaseId>, Option<Instant>) {
        let mut map = self.lock();
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        for (id, state) in map.iter_mut() {
            let resend = state
                .revoke_sent
                .is_none_or(|t| now.duration_since(t) > Duration::from_secs(5));
            if state.deadline <= now && resend {
                state.revoke_sent = Some(now);
                expired.push(*id);
            } else if state.revoke_sent.is_none() {
                next = Some(next.map_or(state.deadline, |n| n.min(state.deadline)));
            }
        }
        (expired, next)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseId, LeaseState>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

/// Counters read back from the file at open.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recovered {
    pub revision: Revision,
    pub compact: Revision,
    pub compacted_upto: Revision,
    pub next_lease: u64,
    pub leases: Vec<(LeaseId, i64)>,
    /// The last batch in the database; the write-ahead log continues after it.
    pub wal_seq: u64,
}

/// The embedded store. Cheap to share behind an `Arc`; closing happens on drop, after the
/// writer has finished its current commit.
#[derive(Debug)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    tx: Sender<Command>,
    writer: Option<JoinHandle<()>>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store. Refuses, with [`Error::Unusable`], a file that is not an
    /// EdgeSite store, is damaged, or is in use by another process.
    pub async fn open(config: EmbeddedConfig) -> Result<Self> {
        let cfg = config.clone();
        let opened = tokio::task::spawn_blocking(move || open_db(&cfg)).await;
        let (db, recovered) = match opened {
            Ok(r) => r?,
            Err(e) => {
                return Err(damaged(
                    &config.path,
                    format!(
                        "the file is damaged (reading it failed: {e}); restore it from a backup or move it away to start empty"
                    ),
                ));
            }
        };
        let db = Arc::new(db);
        // Recent batches for live watchers; one that falls further behind catches up from
        // disk. Each batch holds its values, so the ring is kept short.
        let (events, _) = broadcast::channel(EVENT_RING_BATCHES);
        let (closed, _) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db.clone())),
            revision: AtomicI64::new(recovered.revision),
            compact_revision: AtomicI64::new(recovered.compact),
            events,
            leases: Leases::new(config.clock.clone()),
            closed,
            path: config.path.clone(),
            progress_interval: config.progress_notify_interval,
            progress_requests: tokio::sync::watch::Sender::new(0),
        });
        for (id, ttl) in &recovered.leases {
            shared.leases.granted(*id, *ttl);
        }
        let wal = wal::Wal::open_empty(wal::Wal::path_for(&config.path)).map_err(|e| {
            unusable(
                &config.path,
                format!("cannot open its write-ahead log: {e}"),
            )
        })?;
        let (tx, rx) = channel();
        let writer = Writer::new(shared.clone(), db, rx, &recovered, config.clone(), wal);
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| Error::Storage(format!("cannot start the store writer: {e}")))?;
        tokio::spawn(lease_timer(shared.clone(), tx.clone()));
        tracing::info!(
            path = %config.path.display(),
            revision = recovered.revision,
            "embedded store open"
        );
        Ok(Self {
            shared,
            tx,
            writer: Some(handle),
        })
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Shutdown);
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
        let db = self.shared.db.write().ok().and_then(|mut slot| slot.take());
        self.shared.closed.send_replace(true);
        if let Some(db) = db {
            release(db);
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.shared.read(|txn| {
            let meta = txn.open_table(META).map_err(storage_err)?;
            let revisions = txn.open_table(REVISIONS).map_err(storage_err)?;
            let (revision, compact) = read::snapshot_revisions(&meta, &revisions)?;
            let latest = txn.open_table(LATEST).map_err(storage_err)?;
            let history = txn.open_table(HISTORY).map_err(storage_err)?;
            match req.revision.filter(|r| *r > 0 && *r != revision) {
                None => read::range_current(&latest, &history, &req, revision),
                Some(at) if at > revision => Err(Error::FutureRevision {
                    requested: at,
                    current: revision,
                }),
                Some(at) if at < compact => Err(Error::Compacted {
                    requested: at,
                    compact_revision: compact,
                }),
                Some(at) => read::range_at(&history, &req, at, revision),
            }
        })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        // A malformed transaction is refused whichever branch would run, as etcd does, and
        // before it travels to the writer.
        txn.check()?;
        self.call(|reply| Command::Txn(txn, reply)).await
    }

    async fn watch(&self, req: WatchRequest) -> Result<WatchStream> {
        watch::start(self.shared.clone(), req)
    }

    async fn lease_grant(&self, ttl_secs: i64) -> Result<LeaseId> {
        self.call(|reply| Command::LeaseGrant(ttl_secs, reply))
            .await
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<LeaseInfo> {
        self.shared.leases.keep_alive(id)
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        self.call(|reply| Command::LeaseRevoke(id, Some(reply)))
            .await
    }

    async fn lease_time_to_live(&self, id: LeaseId) -> Result<LeaseInfo> {
        self.shared.leases.time_to_live(id)
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.call(|reply| Command::Compact(revision, reply)).await
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.shared.revision.load(Ordering::Acquire))
    }

    async fn request_progress(&self, revision: Revision) -> bool {
        self.shared
            .progress_requests
            .send_modify(|r| *r = (*r).max(revision));
        true
    }

    async fn status(&self) -> Result<StoreStatus> {
        let key_count = self.shared.read(|txn| {
            let latest = txn.open_table(LATEST).map_err(storage_err)?;
            read::key_count(&latest)
        })?;
        let db_size_bytes = std::fs::metadata(&self.shared.path)
            .map(|m| m.len())
            .map_err(|e| Error::Storage(e.to_string()))?;
        Ok(StoreStatus {
            revision: self.shared.revision.load(Ordering::Acquire),
            compact_revision: self.shared.compact_revision.load(Ordering::Acquire),
            db_size_bytes,
            key_count,
        })
    }
}

/// Hands expired leases to the writer; wakes at the earliest deadline, and at least every
/// second so that a clock moved by hand is noticed.
async fn lease_timer(shared: Arc<Shared>, tx: Sender<Command>) {
    let mut closed = shared.closed.subscribe();
    while !*closed.borrow_and_update() {
        let now = shared.leases.now();
        let (expired, next) = shared.leases.take_expired(now);
        for id in expired {
            tracing::debug!(lease = id, "lease expired");
            if tx.send(Command::LeaseRevoke(id, None)).is_err() {
                return;
            }
        }
        let wait = next
            .map(|n| n.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.leases.changed.notified() => {}
            _ = closed.changed() => return,
        }
    }
}

fn open_db(cfg: &EmbeddedConfig) -> Result<(Database, Recovered)> {
    let path = &cfg.path;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| unusable(path, format!("cannot create its directory: {e}")))?;
    }
    let existing = std::fs::metadata(path)
        .map(|m| m.len() > 0)
        .unwrap_or(false);
    let mut builder = redb::Builder::new();
    builder.set_cache_size(cfg.cache_size_bytes);
    let db = if existing {
        builder.open(path)
    } else {
        builder.create(path)
    }
    .map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => unusable(
            path,
            "it is in use by another process (is another edgesite running on this data dir?)"
                .into(),
        ),
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() != std::io::ErrorKind::InvalidData =>
        {
            unusable(path, format!("I/O error: {io}"))
        }
        other => damaged(
            path,
            format!(
                "it is not an EdgeSite store or it is damaged ({other}); restore it from a backup or move it away to start empty"
            ),
        ),
    })?;
    let recovered = read_recovered(&db, path)?;
    let wal_path = wal::Wal::path_for(path);
    let recovered = match recovered {
        Some(r) => r,
        None => {
            // A log beside a new database belongs to a database that is gone.
            let _ = std::fs::remove_file(&wal_path);
            initialize(&db)?
        }
    };
    let records = wal::read(&wal_path)
        .map_err(|e| damaged(path, format!("cannot read its write-ahead log: {e}")))?;
    let pending: Vec<_> = records
        .into_iter()
        .filter(|r| r.seq > recovered.wal_seq)
        .collect();
    if let Some(first) = pending.first()
        && first.seq != recovered.wal_seq + 1
    {
        return Err(damaged(
            path,
            format!(
                "its write-ahead log {} does not continue it (next batch {}, log starts at {}); it belongs to another copy of the database",
                wal_path.display(),
                recovered.wal_seq + 1,
                first.seq
            ),
        ));
    }
    let recovered = if pending.is_empty() {
        recovered
    } else {
        tracing::info!(batches = pending.len(), "replaying the write-ahead log");
        writer::replay(&db, &recovered, &pending)?;
        read_recovered(&db, path)?
            .ok_or_else(|| Error::Storage("store vanished during replay".into()))?
    };
    Ok((db, recovered))
}

/// The counters of an existing store (`None` for an empty redb file), refusing files that are
/// not EdgeSite stores of this format.
fn read_recovered(db: &Database, path: &std::path::Path) -> Result<Option<Recovered>> {
    let txn = db.begin_read().map_err(storage_err)?;
    match txn.open_table(META) {
        Ok(meta) => {
            let format = read::meta_get(&meta, META_FORMAT)?;
            match format {
                Some(FORMAT_VERSION) => {}
                Some(v) => {
                    return Err(unusable(
                        path,
                        format!(
                            "it has store format {v}, this edgesite reads format {FORMAT_VERSION}"
                        ),
                    ));
                }
                None => {
                    return Err(damaged(
                        path,
                        "it is a redb database of another program, not an EdgeSite store".into(),
                    ));
                }
            }
            let get = |name| -> Result<u64> { Ok(read::meta_get(&meta, name)?.unwrap_or(0)) };
            let leases_table = txn.open_table(LEASES).map_err(storage_err)?;
            let mut leases = Vec::new();
            for entry in redb::ReadableTable::iter(&leases_table).map_err(storage_err)? {
                let (id, ttl) = entry.map_err(storage_err)?;
                leases.push((rev_i(id.value()), ttl.value()));
            }
            let revisions = txn.open_table(REVISIONS).map_err(storage_err)?;
            let (revision, compact) = read::snapshot_revisions(&meta, &revisions)?;
            Ok(Some(Recovered {
                revision,
                compact,
                compacted_upto: rev_i(get(META_COMPACTED_UPTO)?),
                next_lease: get(META_NEXT_LEASE)?.max(1),
                leases,
                wal_seq: get(META_WAL_SEQ)?,
            }))
        }
        Err(TableError::TableDoesNotExist(_)) => {
            if txn.list_tables().map_err(storage_err)?.next().is_some() {
                return Err(damaged(
                    path,
                    "it is a redb database of another program, not an EdgeSite store".into(),
                ));
            }
            Ok(None)
        }
        Err(e) => Err(storage_err(e)),
    }
}

/// Lays out a new store: empty tables and revision 1, as a new etcd starts.
fn initialize(db: &Database) -> Result<Recovered> {
    let txn = db.begin_write().map_err(storage_err)?;
    {
        txn.open_table(LATEST).map_err(storage_err)?;
        txn.open_table(HISTORY).map_err(storage_err)?;
        txn.open_table(REVISIONS).map_err(storage_err)?;
        txn.open_table(LEASES).map_err(storage_err)?;
        txn.open_table(LEASE_KEYS).map_err(storage_err)?;
        let mut meta = txn.open_table(META).map_err(storage_err)?;
        for (name, value) in [
            (META_FORMAT, FORMAT_VERSION),
            (META_REVISION, 1),
            (META_COMPACT, 0),
            (META_COMPACTED_UPTO, 0),
            (META_NEXT_LEASE, 1),
            (META_WAL_SEQ, 0),
        ] {
            meta.insert(name, value).map_err(storage_err)?;
        }
    }
    txn.commit().map_err(storage_err)?;
    Ok(Recovered {
        revision: 1,
        next_lease: 1,
        ..Recovered::default()
    })
}

fn unusable(path: &std::path::Path, reason: String) -> Error {
    Error::Unusable {
        path: path.display().to_string(),
        reason,
    }
}

/// [`Error::Unusable`] for a file whose content cannot be read.
fn damaged(path: &std::path::Path, reason: String) -> Error {
    Error::Damaged {
        path: path.display().to_string(),
        reason,
    }
}

/// Maps any redb failure to [`Error::Storage`].
pub(crate) fn storage_err(e: impl Into<redb::Error>) -> Error {
    Error::Storage(e.into().to_string())
}

#[cfg(test)]
mod tests;
