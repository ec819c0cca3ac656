//! The single writer of the embedded engine. Every change goes through one thread that drains
//! all queued requests into one redb write transaction, logs them with one fsync to the
//! write-ahead log ([`super::wal`]) and commits (group commit): throughput grows with
//! concurrency while each caller is answered only once its write is durable. redb itself is
//! made durable at checkpoints. The writer also runs compaction, a bounded step per commit, so
//! that reclaiming space never stalls writes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use redb::{Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::oneshot;

use super::codec::{
    HISTORY, LATEST, LEASE_KEYS, LEASES, META, META_COMPACT, META_COMPACTED_UPTO, META_NEXT_LEASE,
    META_WAL_SEQ, Meta, REVISIONS, TOMBSTONE, Version, encode_put, rev_i, rev_u,
};
use super::read::{range_at, range_current};
use super::wal::{Record, RecordBuilder, Request, Wal};
use super::{Batch, CompactionPolicy, Shared, storage_err};
use crate::error::key_str;
use crate::types::{
    Event, EventType, KeyRange, KeyValue, LeaseId, Revision, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use crate::{Error, Result};

/// A request to the writer; each carries the channel its answer goes back on.
#[derive(Debug)]
pub(crate) enum Command {
    Txn(Txn, oneshot::Sender<Result<TxnResponse>>),
    LeaseGrant(i64, oneshot::Sender<Result<LeaseId>>),
    /// Revoke a lease; without a reply channel it is an expiry found by the lease timer.
    LeaseRevoke(LeaseId, Option<oneshot::Sender<Result<()>>>),
    Compact(Revision, oneshot::Sender<Result<()>>),
    /// Finish what is queued before this, then stop.
    Shutdown,
}

/// Most requests folded into one commit.
const MAX_BATCH: usize = 1024;
/// Most value bytes folded into one commit.
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Change-log entries physically compacted per commit that also carries client writes.
const COMPACT_STEP_BUSY: usize = 512;
/// Change-log entries physically compacted per commit when the writer is idle.
const COMPACT_STEP_IDLE: usize = 8192;
/// Longest time between checkpoints (durable redb commits) while writes come in; it bounds the
/// log, and so the replay after a crash.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);
/// Largest log before a checkpoint is forced.
const MAX_WAL_BYTES: u64 = 16 << 20;

/// The writer's own state; what readers need is published through [`Shared`] after each commit.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    /// `None` only while a reopen failed; the next batch tries again.
    db: Option<Arc<redb::Database>>,
    rx: Receiver<Command>,
    state: State,
    policy: CompactionPolicy,
    config: super::EmbeddedConfig,
    /// A commit failed: the database must be reopened before the next one.
    reopen: bool,
    /// Set by `apply_batch` when redb itself failed (rather than the log).
    poisoned: bool,
    /// Counters as last committed, to write only those that changed.
    saved: Saved,
    wal: Wal,
    /// Sequence number of the last committed batch.
    seq: u64,
    /// Batches committed to redb without sync since the last checkpoint (they are in the log).
    dirty: bool,
    last_checkpoint: Instant,
    /// (when, revision) samples for time-based automatic compaction.
    samples: VecDeque<(Instant, Revision)>,
}

/// The open tables of one write transaction.
struct Tables<'t> {
    latest: Table<'t, &'static [u8], &'static [u8]>,
    history: Table<'t, (&'static [u8], u64), &'static [u8]>,
    revisions: Table<'t, (u64, u32), &'static [u8]>,
    leases: Table<'t, u64, i64>,
    lease_keys: Table<'t, (u64, &'static [u8]), ()>,
    meta: Table<'t, &'static str, u64>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self> {
        Ok(Self {
            latest: txn.open_table(LATEST).map_err(storage_err)?,
            history: txn.open_table(HISTORY).map_err(storage_err)?,
            revisions: txn.open_table(REVISIONS).map_err(storage_err)?,
            leases: txn.open_table(LEASES).map_err(storage_err)?,
            lease_keys: txn.open_table(LEASE_KEYS).map_err(storage_err)?,
            meta: txn.open_table(META).map_err(storage_err)?,
        })
    }

    fn latest_meta(&self, key: &[u8]) -> Result<Option<Meta>> {
        Ok(self
            .latest
            .get(key)
            .map_err(storage_err)?
            .map(|g| Meta::decode(g.value())))
    }

    fn latest_kv(&self, key: &[u8], with_value: bool) -> Result<Option<KeyValue>> {
        let Some(meta) = self.latest_meta(key)? else {
            return Ok(None);
        };
        let value = if with_value {
            let g = self
                .history
                .get((key, rev_u(meta.mod_revision)))
                .map_err(storage_err)?;
            match g.as_ref().map(|g| Version::decode(g.value())) {
                Some(Version::Put(_, v)) => v.to_vec(),
                _ => {
                    return Err(Error::Storage(format!(
                        "history of {:?} is missing its current version: the database is damaged",
                        key_str(key)
                    )));
                }
            }
        } else {
            Vec::new()
        };
        Ok(Some(meta.into_kv(key.to_vec(), value)))
    }
}

#[derive(Debug, Clone, Copy)]
struct Saved {
    compact: Revision,
    next_lease: u64,
}

/// What one command yields, answered once the commit is known to have succeeded or failed.
enum Outcome {
    Txn(oneshot::Sender<Result<TxnResponse>>, Result<TxnResponse>),
    LeaseGranted(oneshot::Sender<Result<LeaseId>>, Result<(LeaseId, i64)>),
    LeaseRevoked(Option<oneshot::Sender<Result<()>>>, LeaseId, Result<()>),
    Compacted(oneshot::Sender<Result<()>>, Result<()>),
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        db: Arc<redb::Database>,
        rx: Receiver<Command>,
        start: &super::Recovered,
        config: super::EmbeddedConfig,
        wal: Wal,
    ) -> Self {
        let started = config.clock.instant();
        Self {
            shared,
            db: Some(db),
            rx,
            state: State {
                revision: start.revision,
                compact: start.compact,
                compacted_upto: start.compacted_upto,
                next_lease: start.next_lease,
            },
            policy: config.compaction,
            config,
            reopen: false,
            poisoned: false,
            saved: Saved {
                compact: start.compact,
                next_lease: start.next_lease,
            },
            samples: VecDeque::new(),
            wal,
            seq: start.wal_seq,
            dirty: false,
            last_checkpoint: started,
        }
    }

    /// The store clock's current instant ([`super::EmbeddedConfig::clock`]).
    fn now(&self) -> Instant {
        self.config.clock.instant()
    }

    /// How long ago `t` was, on the store's clock.
    fn since(&self, t: Instant) -> Duration {
        self.now().saturating_duration_since(t)
    }

    fn checkpoint_due(&self) -> bool {
        self.dirty
            && (self.since(self.last_checkpoint) >= CHECKPOINT_INTERVAL
                || self.wal.len() >= MAX_WAL_BYTES)
    }

    /// Runs until every sender is gone.
    pub(crate) fn run(mut self) {
        // `None`: sample at once.
        let mut last_sample: Option<Instant> = None;
        loop {
            let pending_compaction = self.state.compacted_upto < self.state.compact;
            let wait = if pending_compaction {
                Duration::ZERO
            } else if self.dirty {
                CHECKPOINT_INTERVAL.saturating_sub(self.since(self.last_checkpoint))
            } else {
                Duration::from_millis(500)
            };
            let mut batch = Vec::new();
            let mut shutdown = false;
            match self.rx.recv_timeout(wait) {
                Ok(Command::Shutdown) | Err(RecvTimeoutError::Disconnected) => shutdown = true,
                Ok(cmd) => batch.push(cmd),
                Err(RecvTimeoutError::Timeout) => {}
            }
            if !batch.is_empty() {
                let mut bytes = 0;
                while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                    match self.rx.try_recv() {
                        Ok(Command::Shutdown) => {
                            shutdown = true;
                            break;
                        }
                        Ok(cmd) => {
                            bytes += command_bytes(&cmd);
                            batch.push(cmd);
                        }
                        Err(_) => break,
                    }
                }
            }
            if shutdown {
                if !batch.is_empty() || self.dirty {
                    self.commit_batch(batch, 0, true);
                }
                if !self.dirty {
                    // Everything is in a durable checkpoint: a cleanly closed store leaves
                    // an empty log.
                    let _ = self.wal.discard();
                }
                return;
            }
            if last_sample.is_none_or(|t| self.since(t) >= Duration::from_secs(1)) {
                last_sample = Some(self.now());
                self.sample_and_plan_compaction();
            } else if self.policy.keep_revisions.is_some() {
                self.plan_revision_compaction();
            }
            let checkpoint = self.checkpoint_due();
            if batch.is_empty() && self.state.compacted_upto >= self.state.compact && !checkpoint {
                continue;
            }
            let step = if batch.is_empty() {
                COMPACT_STEP_IDLE
            } else {
                COMPACT_STEP_BUSY
            };
            // A batch without requests (idle compaction) is not logged, so it is made durable
            // at once.
            let checkpoint = checkpoint || batch.is_empty();
            self.commit_batch(batch, step, checkpoint);
        }
    }

    /// Records the current revision for time-based compaction and moves the compaction point
    /// forward if the policy says so.
    fn sample_and_plan_compaction(&mut self) {
        let now = self.now();
        self.samples.push_back((now, self.state.revision));
        if let Some(keep) = self.policy.keep_duration {
            let mut target = None;
            while let Some(&(t, rev)) = self.samples.front() {
                if now.duration_since(t) >= keep {
                    target = Some(rev);
                    self.samples.pop_front();
                } else {
                    break;
                }
            }
            if let Some(rev) = target {
                self.raise_compaction(rev);
            }
        } else {
            self.samples.clear();
        }
        self.plan_revision_compaction();
    }

    fn plan_revision_compaction(&mut self) {
        if let Some(keep) = self.policy.keep_revisions {
            let keep = keep.max(1) as i64;
            // Move in steps of an eighth of the window so that compaction runs in batches.
            let slack = (keep / 8).max(1);
            if self.state.revision - self.state.compact >= keep + slack {
                self.raise_compaction(self.state.revision - keep);
            }
        }
    }

    /// Moves the logical compaction point; it is persisted with the next commit.
    fn raise_compaction(&mut self, rev: Revision) {
        if rev > self.state.compact && rev <= self.state.revision {
            self.state.compact = rev;
        }
    }

    fn commit_batch(&mut self, batch: Vec<Command>, compact_step: usize, checkpoint: bool) {
        let rev_before = self.state.revision;
        let compact_before = (self.state.compact, self.state.compacted_upto);
        let next_lease_before = self.state.next_lease;
        let mut events = Vec::new();
        let result = self.apply_batch(batch, compact_step, checkpoint, &mut events);
        match result {
            Ok(outcomes) => {
                self.seq += 1;
                if checkpoint {
                    self.last_checkpoint = self.now();
                    self.dirty = false;
                    if let Err(e) = self.wal.reset() {
                        // Harmless: replay skips what the checkpoint holds.
                        tracing::warn!(error = %e, "cannot empty the write-ahead log");
                    }
                } else {
                    self.dirty = true;
                }
                self.saved = Saved {
                    compact: self.state.compact,
                    next_lease: self.state.next_lease,
                };
                self.publish(rev_before, events);
                for outcome in outcomes {
                    self.answer(outcome);
                }
            }
            Err((err, outcomes)) => {
                tracing::error!(error = %err, "store commit failed; the batch is discarded");
                // redb refuses every write on an instance whose commit failed; an aborted
                // transaction (a refused log append) leaves it usable.
                self.reopen = self.reopen || self.poisoned;
                self.poisoned = false;
                self.state.revision = rev_before;
                (self.state.compact, self.state.compacted_upto) = compact_before;
                self.state.next_lease = next_lease_before;
                let msg = err.to_string();
                for outcome in outcomes {
                    fail(outcome, &msg);
                }
            }
        }
    }

    /// Whether the disk is too full to take more data, and what to tell callers. The reserve
    /// keeps room for checkpoints, log replay and compaction, so that writes are refused
    /// cleanly before redb or the log run into the end of the disk; deletes still go through.
    fn low_space(&self, batch: &[Command]) -> Option<String> {
        let dir = self.config.path.parent()?;
        let dir = if dir.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            dir
        };
        let st = nix::sys::statvfs::statvfs(dir).ok()?;
        // Both are u64 on 64-bit Linux but narrower on 32-bit targets (edge boxes are often ARM).
        #[allow(clippy::useless_conversion)]
        let free = u64::from(st.blocks_available()) * u64::from(st.fragment_size());
        let incoming: u64 = batch.iter().map(|c| command_bytes(c) as u64 * 2).sum();
        let reserve = self.config.reserved_disk_bytes;
        (free < reserve + incoming).then(|| {
            format!(
                "disk full: {} KiB free on {}, and {} KiB are kept in reserve; free some space (deleting keys and compacting still works)",
                free / 1024,
                dir.display(),
                reserve / 1024
            )
        })
    }

    /// Applies a batch in one write transaction and commits it. On failure, returns the error
    /// and the outcomes (whose answers must then be replaced by the failure).
    #[allow(clippy::type_complexity)]
    fn apply_batch(
        &mut self,
        batch: Vec<Command>,
        compact_step: usize,
        checkpoint: bool,
        events: &mut Vec<Event>,
    ) -> Result<Vec<Outcome>, (Error, Vec<Outcome>)> {
        let mut outcomes = Vec::with_capacity(batch.len());
        if self.reopen || self.db.is_none() {
            match self.shared.reopen(self.db.take(), &self.config) {
                Ok((db, recovered)) => {
                    tracing::info!("store reopened after a failed write");
                    // Reopening replayed the log into a checkpoint and emptied it.
                    self.db = Some(db);
                    self.reopen = false;
                    self.state = State::from(&recovered);
                    self.seq = recovered.wal_seq;
                    self.saved = Saved {
                        compact: recovered.compact,
                        next_lease: recovered.next_lease,
                    };
                    self.dirty = false;
                    let _ = self.wal.reset();
                }
                Err(e) => {
                    let outcomes = batch.into_iter().map(pending_outcome).collect();
                    return Err((e, outcomes));
                }
            }
        }
        let Some(db) = &self.db else {
            unreachable!("a missing database was reopened above");
        };
        let mut wtxn = match db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                self.poisoned = true;
                let err = storage_err(e);
                let outcomes = batch.into_iter().map(pending_outcome).collect();
                return Err((err, outcomes));
            }
        };
        // A checkpoint saves the allocator state too (quick repair), so that a restart after a
        // crash does not walk the whole file. Other commits are not synced: the log holds them.
        wtxn.set_quick_repair(checkpoint);
        let durability = if checkpoint {
            Durability::Immediate
        } else {
            Durability::None
        };
        if let Err(e) = wtxn.set_durability(durability) {
            let outcomes = batch.into_iter().map(pending_outcome).collect();
            return Err((Error::Storage(e.to_string()), outcomes));
        }
        let low_space = self.low_space(&batch);
        let seq = self.seq + 1;
        let mut record = (!checkpoint).then(|| RecordBuilder::new(seq, self.state.compact));
        let applied = (|| -> Result<()> {
            let mut t = Tables::open(&wtxn)?;
            let mut batch = batch.into_iter();
            while let Some(cmd) = batch.next() {
                let cmd = match (&low_space, cmd) {
                    (Some(msg), cmd) if adds_data(&cmd) => {
                        outcomes.push(not_run(cmd, || Error::Storage(msg.clone())));
                        continue;
                    }
                    (_, cmd) => cmd,
                };
                if let (Some(record), Some(req)) = (record.as_mut(), request_of(&cmd)) {
                    record.push(&req);
                }
                match self.state.apply(&mut t, cmd, events) {
                    Ok(outcome) => outcomes.push(outcome),
                    Err((e, outcome)) => {
                        outcomes.push(outcome);
                        outcomes.extend(batch.by_ref().map(pending_outcome));
                        return Err(e);
                    }
                }
            }
            // The revision needs no counter (see `read::snapshot_revisions`); the others change
            // rarely, and an untouched table costs the commit nothing.
            if self.state.next_lease != self.saved.next_lease {
                t.meta
                    .insert(META_NEXT_LEASE, self.state.next_lease)
                    .map_err(storage_err)?;
            }
            if self.state.compact != self.saved.compact {
                t.meta
                    .insert(META_COMPACT, rev_u(self.state.compact))
                    .map_err(storage_err)?;
            }
            if self.state.compacted_upto < self.state.compact {
                self.state.compacted_upto = compact_step_apply(
                    &mut t,
                    self.state.compacted_upto,
                    self.state.compact,
                    compact_step,
                )?;
                t.meta
                    .insert(META_COMPACTED_UPTO, rev_u(self.state.compacted_upto))
                    .map_err(storage_err)?;
            }
            t.meta.insert(META_WAL_SEQ, seq).map_err(storage_err)?;
            Ok(())
        })();
        if let Err(e) = applied {
            // A failure inside redb (not a refusal, which is an answer) poisons the instance.
            self.poisoned = true;
            let _ = wtxn.abort();
            return Err((e, outcomes));
        }
        let wal_len = self.wal.len();
        if let Some(record) = record {
            // The compaction step is fixed now; the record carries it so replay does the same.
            let bytes = record.finish(u32::try_from(compact_step).unwrap_or(u32::MAX));
            if let Err(e) = self.wal.append(&bytes) {
                let _ = wtxn.abort();
                let err = Error::Storage(format!(
                    "cannot write the write-ahead log {}: {e}",
                    self.wal.path().display()
                ));
                return Err((err, outcomes));
            }
        }
        match wtxn.commit() {
            Ok(()) => Ok(outcomes),
            Err(e) => {
                self.poisoned = true;
                // Not acknowledged, so it must not come back on replay either.
                let _ = self.wal.truncate(wal_len);
                Err((storage_err(e), outcomes))
            }
        }
    }

    /// Makes a committed batch visible: revision, events to watchers, lease table.
    fn publish(&mut self, rev_before: Revision, events: Vec<Event>) {
        self.shared
            .compact_revision
            .store(self.state.compact, Ordering::Release);
        self.shared
            .revision
            .store(self.state.revision, Ordering::Release);
        if !events.is_empty() {
            let _ = self.shared.events.send(Arc::new(Batch {
                events,
                revision: self.state.revision,
            }));
        }
        debug_assert!(self.state.revision >= rev_before);
    }

    fn answer(&self, outcome: Outcome) {
        match outcome {
            Outcome::Txn(reply, r) => {
                let _ = reply.send(r);
            }
            Outcome::LeaseGranted(reply, r) => {
                if let Ok((id, ttl)) = r {
                    self.shared.leases.granted(id, ttl);
                }
                let _ = reply.send(r.map(|(id, _)| id));
            }
            Outcome::LeaseRevoked(reply, id, r) => {
                if matches!(r, Ok(()) | Err(Error::LeaseNotFound(_))) {
                    self.shared.leases.revoked(id);
                }
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            Outcome::Compacted(reply, r) => {
                let _ = reply.send(r);
            }
        }
    }
}

/// The counters that applying requests advances; replaying the log rebuilds them exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct State {
    pub revision: Revision,
    pub compact: Revision,
    pub compacted_upto: Revision,
    pub next_lease: u64,
}

impl State {
    /// Applies one command. A refusal (bad request, failed precondition) is an `Ok` outcome
    /// carrying the error; an `Err` is a storage failure that aborts the batch.
    // The `Err` is rare and moved once, up to the batch loop: boxing it buys nothing.
    #[allow(clippy::result_large_err)]
    fn apply(
        &mut self,
        t: &mut Tables<'_>,
        cmd: Command,
        events: &mut Vec<Event>,
    ) -> Result<Outcome, (Error, Outcome)> {
        match cmd {
            Command::Txn(txn, reply) => match self.apply_txn(t, txn, events) {
                Ok(r) => Ok(Outcome::Txn(reply, r)),
                Err(e) => Err((e, Outcome::Txn(reply, Err(Error::Closed)))),
            },
            Command::LeaseGrant(ttl, reply) => {
                if ttl <= 0 {
                    return Ok(Outcome::LeaseGranted(
                        reply,
                        Err(Error::InvalidRequest(format!(
                            "lease TTL must be positive, got {ttl}"
                        ))),
                    ));
                }
                let id = self.next_lease;
                match t.leases.insert(id, ttl) {
                    Ok(_) => {
                        self.next_lease += 1;
                        Ok(Outcome::LeaseGranted(reply, Ok((id as LeaseId, ttl))))
                    }
                    Err(e) => Err((
                        storage_err(e),
                        Outcome::LeaseGranted(reply, Err(Error::Closed)),
                    )),
                }
            }
            Command::LeaseRevoke(id, reply) => match self.revoke(t, id, events) {
                Ok(r) => Ok(Outcome::LeaseRevoked(reply, id, r)),
                Err(e) => Err((e, Outcome::LeaseRevoked(reply, id, Err(Error::Closed)))),
            },
            Command::Shutdown => unreachable!("the run loop handles shutdown"),
            Command::Compact(rev, reply) => {
                let r = if rev > self.revision {
                    Err(Error::FutureRevision {
                        requested: rev,
                        current: self.revision,
                    })
                } else if rev < self.compact {
                    Err(Error::Compacted {
                        requested: rev,
                        compact_revision: self.compact,
                    })
                } else {
                    self.compact = rev;
                    Ok(())
                };
                Ok(Outcome::Compacted(reply, r))
            }
        }
    }

    fn apply_txn(
        &mut self,
        t: &mut Tables<'_>,
        txn: Txn,
        events: &mut Vec<Event>,
    ) -> Result<Result<TxnResponse>> {
        let mut succeeded = true;
        for cmp in &txn.compare {
            let with_value = matches!(cmp.target, crate::types::CompareTarget::Value(_));
            let kv = t.latest_kv(&cmp.key, with_value)?;
            if !cmp.evaluate(kv.as_ref()) {
                succeeded = false;
                break;
            }
        }
        // The form of both branches was checked before the request was queued (`Txn::check`);
        // what depends on the state (leases, read revisions) is checked here, on the branch that
        // runs, before anything is written.
        let ops = if succeeded { txn.success } else { txn.failure };
        if let Err(e) = validate_against_state(t, &ops, self.revision, self.compact)? {
            return Ok(Err(e));
        }
        let new_rev = self.revision + 1;
        let mut sub = 0u32;
        let mut changed = false;
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                TxnOp::Range(req) => {
                    // A read after a write of the same branch sees it, at the branch's revision.
                    let current = if changed { new_rev } else { self.revision };
                    // Revisions were checked by `validate_ops` against the revision before the
                    // transaction.
                    let resp = match req.revision.filter(|r| *r > 0 && *r != current) {
                        None => range_current(&t.latest, &t.history, &req, current)?,
                        Some(at) => range_at(&t.history, &req, at, current)?,
                    };
                    responses.push(TxnOpResponse::Range(resp));
                }
                TxnOp::Put {
                    key,
                    value,
                    lease,
                    prev_kv,
                } => {
                    let prev = t.latest_kv(&key, true)?;
                    let meta = Meta {
                        create_revision: prev.as_ref().map_or(new_rev, |p| p.create_revision),
                        mod_revision: new_rev,
                        version: prev.as_ref().map_or(0, |p| p.version) + 1,
                        lease,
                    };
                    t.latest
                        .insert(key.as_slice(), meta.encode().as_slice())
                        .map_err(storage_err)?;
                    t.history
                        .insert(
                            (key.as_slice(), rev_u(new_rev)),
                            encode_put(&meta, &value).as_slice(),
                        )
                        .map_err(storage_err)?;
                    t.revisions
                        .insert((rev_u(new_rev), sub), key.as_slice())
                        .map_err(storage_err)?;
                    sub += 1;
                    let old_lease = prev.as_ref().map_or(0, |p| p.lease);
                    if old_lease != 0 && old_lease != lease {
                        t.lease_keys
                            .remove((rev_u(old_lease), key.as_slice()))
                            .map_err(storage_err)?;
                    }
                    if lease != 0 {
                        t.lease_keys
                            .insert((rev_u(lease), key.as_slice()), ())
                            .map_err(storage_err)?;
                    }
                    changed = true;
                    responses.push(TxnOpResponse::Put {
                        prev_kv: if prev_kv { prev.clone() } else { None },
                    });
                    events.push(Event {
                        kind: EventType::Put,
                        kv: meta.into_kv(key, value),
                        prev_kv: prev,
                    });
                }
                TxnOp::Delete { range, prev_kv } => {
                    let keys = keys_in(&t.latest, &range)?;
                    let mut prev_kvs = Vec::new();
                    for key in &keys {
                        let prev = delete_key(t, key, new_rev, sub, events)?;
                        sub += 1;
                        if prev_kv {
                            prev_kvs.extend(prev);
                        }
                    }
                    changed |= !keys.is_empty();
                    responses.push(TxnOpResponse::Delete {
                        deleted: keys.len() as u64,
                        prev_kvs,
                    });
                }
            }
        }
        if changed {
            self.revision = new_rev;
        }
        Ok(Ok(TxnResponse {
            succeeded,
            revision: self.revision,
            responses,
        }))
    }

    /// Deletes the keys of a lease and the lease itself, all at one revision.
    fn revoke(
        &mut self,
        t: &mut Tables<'_>,
        id: LeaseId,
        events: &mut Vec<Event>,
    ) -> Result<Result<()>> {
        let lid = rev_u(id);
        if t.leases.get(lid).map_err(storage_err)?.is_none() {
            return Ok(Err(Error::LeaseNotFound(id)));
        }
        let mut keys = Vec::new();
        for entry in t
            .lease_keys
            .range((lid, &[][..])..(lid + 1, &[][..]))
            .map_err(storage_err)?
        {
            let (k, _) = entry.map_err(storage_err)?;
            keys.push(k.value().1.to_vec());
        }
        let new_rev = self.revision + 1;
        for (sub, key) in keys.iter().enumerate() {
            delete_key(t, key, new_rev, sub as u32, events)?;
        }
        if !keys.is_empty() {
            self.revision = new_rev;
        }
        t.leases.remove(lid).map_err(storage_err)?;
        Ok(Ok(()))
    }
}

/// Checks what a branch refers to: leases that exist, read revisions that are readable (against
/// the revision before the transaction).
fn validate_against_state(
    t: &Tables<'_>,
    ops: &[TxnOp],
    revision: Revision,
    compact: Revision,
) -> Result<Result<()>> {
    for op in ops {
        match op {
            TxnOp::Put { lease, .. } => {
                if *lease != 0 && t.leases.get(rev_u(*lease)).map_err(storage_err)?.is_none() {
                    return Ok(Err(Error::LeaseNotFound(*lease)));
                }
            }
            TxnOp::Range(req) => match req.revision {
                Some(at) if at > revision => {
                    return Ok(Err(Error::FutureRevision {
                        requested: at,
                        current: revision,
                    }));
                }
                Some(at) if at > 0 && at < compact => {
                    return Ok(Err(Error::Compacted {
                        requested: at,
                        compact_revision: compact,
                    }));
                }
                _ => {}
            },
            TxnOp::Delete { .. } => {}
        }
    }
    Ok(Ok(()))
}

fn keys_in(
    latest: &Table<'_, &'static [u8], &'static [u8]>,
    range: &KeyRange,
) -> Result<Vec<Vec<u8>>> {
    let (start, end) = range.bounds();
    let iter = match &end {
        Some(end) => latest.range::<&[u8]>(start.as_slice()..end.as_slice()),
        None => latest.range::<&[u8]>(start.as_slice()..),
    }
    .map_err(storage_err)?;
    let mut keys = Vec::new();
    for entry in iter {
        let (k, _) = entry.map_err(storage_err)?;
        keys.push(k.value().to_vec());
    }
    Ok(keys)
}

/// Deletes one live key at `rev`, recording the tombstone and the event; returns its last value.
fn delete_key(
    t: &mut Tables<'_>,
    key: &[u8],
    rev: Revision,
    sub: u32,
    events: &mut Vec<Event>,
) -> Result<Option<KeyValue>> {
    let prev = t.latest_kv(key, true)?;
    t.latest.remove(key).map_err(storage_err)?;
    t.history
        .insert((key, rev_u(rev)), TOMBSTONE.as_slice())
        .map_err(storage_err)?;
    t.revisions
        .insert((rev_u(rev), sub), key)
        .map_err(storage_err)?;
    if let Some(p) = &prev
        && p.lease != 0
    {
        t.lease_keys
            .remove((rev_u(p.lease), key))
            .map_err(storage_err)?;
    }
    events.push(Event {
        kind: EventType::Delete,
        kv: KeyValue {
            key: key.to_vec(),
            mod_revision: rev,
            ..KeyValue::default()
        },
        prev_kv: prev.clone(),
    });
    Ok(prev)
}

/// Physically removes history that compaction made unreachable: for up to `budget` change-log
/// entries below `compact`, the versions they superseded, themselves when superseded at or
/// below `compact`, and tombstones that nothing reads any more. Returns the new progress mark.
fn compact_step_apply(
    t: &mut Tables<'_>,
    upto: Revision,
    compact: Revision,
    budget: usize,
) -> Result<Revision> {
    let mut todo: Vec<(u64, u32, Vec<u8>)> = Vec::with_capacity(budget.min(4096));
    for entry in t
        .revisions
        .range((rev_u(upto), 0u32)..(rev_u(compact), 0u32))
        .map_err(storage_err)?
    {
        if todo.len() >= budget {
            break;
        }
        let (k, key) = entry.map_err(storage_err)?;
        let (rev, sub) = k.value();
        todo.push((rev, sub, key.value().to_vec()));
    }
    let done = todo.len() < budget;
    let compact_u = rev_u(compact);
    let mut last = rev_u(upto);
    for (rev, sub, key) in todo {
        last = rev;
        // Everything older than this version is superseded by it, and it is at or below the
        // compaction point, so no read can reach those.
        t.history
            .retain_in((key.as_slice(), 0u64)..(key.as_slice(), rev), |_, _| false)
            .map_err(storage_err)?;
        let superseded = t
            .history
            .range((key.as_slice(), rev + 1)..=(key.as_slice(), compact_u))
            .map_err(storage_err)?
            .next()
            .is_some();
        let tombstone = t
            .history
            .get((key.as_slice(), rev))
            .map_err(storage_err)?
            .is_some_and(|g| matches!(Version::decode(g.value()), Version::Tombstone));
        if superseded || tombstone {
            t.history
                .remove((key.as_slice(), rev))
                .map_err(storage_err)?;
        }
        t.revisions.remove((rev, sub)).map_err(storage_err)?;
    }
    Ok(if done { compact } else { rev_i(last) })
}

fn command_bytes(cmd: &Command) -> usize {
    match cmd {
        Command::Txn(txn, _) => txn
            .success
            .iter()
            .chain(&txn.failure)
            .map(|op| match op {
                TxnOp::Put { key, value, .. } => key.len() + value.len(),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// The outcome of a command that did not run: its batch failed (`Error::Closed` stands in until
/// the batch's error replaces it), or it was refused before running.
fn not_run(cmd: Command, err: impl Fn() -> Error) -> Outcome {
    match cmd {
        Command::Txn(_, reply) => Outcome::Txn(reply, Err(err())),
        Command::LeaseGrant(_, reply) => Outcome::LeaseGranted(reply, Err(err())),
        Command::LeaseRevoke(id, reply) => Outcome::LeaseRevoked(reply, id, Err(err())),
        Command::Compact(_, reply) => Outcome::Compacted(reply, Err(err())),
        Command::Shutdown => unreachable!("the run loop handles shutdown"),
    }
}

/// The slot of a command whose batch failed before it ran.
fn pending_outcome(cmd: Command) -> Outcome {
    not_run(cmd, || Error::Closed)
}

/// Answers a command of a failed batch with the failure.
fn fail(outcome: Outcome, msg: &str) {
    let err = || Error::Storage(msg.to_string());
    match outcome {
        Outcome::Txn(reply, _) => {
            let _ = reply.send(Err(err()));
        }
        Outcome::LeaseGranted(reply, _) => {
            let _ = reply.send(Err(err()));
        }
        Outcome::LeaseRevoked(reply, _, _) => {
            if let Some(reply) = reply {
                let _ = reply.send(Err(err()));
            }
        }
        Outcome::Compacted(reply, _) => {
            let _ = reply.send(Err(err()));
        }
    }
}

/// The request a command logs (shutdown is not one).
fn request_of(cmd: &Command) -> Option<Request> {
    Some(match cmd {
        Command::Txn(txn, _) => Request::Txn(txn.clone()),
        Command::LeaseGrant(ttl, _) => Request::LeaseGrant(*ttl),
        Command::LeaseRevoke(id, _) => Request::LeaseRevoke(*id),
        Command::Compact(rev, _) => Request::Compact(*rev),
        Command::Shutdown => return None,
    })
}

impl Request {
    /// The command that applies this request again, with nobody waiting for the answer.
    fn into_command(self) -> Command {
        match self {
            Request::Txn(txn) => Command::Txn(txn, oneshot::channel().0),
            Request::LeaseGrant(ttl) => Command::LeaseGrant(ttl, oneshot::channel().0),
            Request::LeaseRevoke(id) => Command::LeaseRevoke(id, None),
            Request::Compact(rev) => Command::Compact(rev, oneshot::channel().0),
        }
    }
}

impl From<&super::Recovered> for State {
    fn from(r: &super::Recovered) -> Self {
        Self {
            revision: r.revision,
            compact: r.compact,
            compacted_upto: r.compacted_upto,
            next_lease: r.next_lease,
        }
    }
}

/// Re-applies logged batches after the last checkpoint, in order, with the code that applied
/// them first, and makes the result durable.
pub(crate) fn replay(
    db: &redb::Database,
    start: &super::Recovered,
    records: &[Record],
) -> Result<()> {
    let mut wtxn = db.begin_write().map_err(storage_err)?;
    wtxn.set_quick_repair(true);
    wtxn.set_durability(Durability::Immediate)
        .map_err(|e| Error::Storage(e.to_string()))?;
    {
        let mut t = Tables::open(&wtxn)?;
        let mut state = State::from(start);
        let mut events = Vec::new();
        for record in records {
            state.compact = record.compact;
            for req in record.requests.iter().cloned() {
                state
                    .apply(&mut t, req.into_command(), &mut events)
                    .map_err(|(e, _)| e)?;
                events.clear();
            }
            if state.compacted_upto < state.compact {
                state.compacted_upto = compact_step_apply(
                    &mut t,
                    state.compacted_upto,
                    state.compact,
                    record.compact_step as usize,
                )?;
            }
        }
        let seq = records.last().map_or(start.wal_seq, |r| r.seq);
        for (name, value) in [
            (META_NEXT_LEASE, state.next_lease),
            (META_COMPACT, rev_u(state.compact)),
            (META_COMPACTED_UPTO, rev_u(state.compacted_upto)),
            (META_WAL_SEQ, seq),
        ] {
            t.meta.insert(name, value).map_err(storage_err)?;
        }
    }
    wtxn.commit().map_err(storage_err)
}

/// Whether a command would store new data (refused when the disk is nearly full).
fn adds_data(cmd: &Command) -> bool {
    match cmd {
        Command::Txn(txn, _) => txn
            .success
            .iter()
            .chain(&txn.failure)
            .any(|op| matches!(op, TxnOp::Put { .. })),
        Command::LeaseGrant(..) => true,
        _ => false,
    }
}
