//! Watches of the embedded engine. Each watch is a task that subscribes to the writer's
//! committed batches *before* reading history, so that the seam between replay and live events
//! has no gap; events at or below what was replayed are skipped, so it has no duplicate either.
//! A watcher that falls behind the live channel replays the missed revisions from disk instead
//! of holding memory for it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use tokio::sync::{broadcast, mpsc};

use super::codec::{HISTORY, META, REVISIONS};
use super::{Batch, Shared, read, storage_err};
use crate::types::{Event, Revision, WatchRequest, WatchResponse};
use crate::{Error, Result, WatchStream};

/// Events read from disk per step of a replay.
const REPLAY_CHUNK: usize = 1000;

pub(crate) fn start(shared: Arc<Shared>, req: WatchRequest) -> Result<WatchStream> {
    // Subscribe first: every commit after this point reaches the receiver.
    let live = shared.events.subscribe();
    let current = shared.revision.load(Ordering::Acquire);
    let next = match req.start_revision {
        Some(r) if r > 0 => r,
        _ => current + 1,
    };
    let compact = shared.compact_revision.load(Ordering::Acquire);
    if next < compact {
        return Err(Error::Compacted {
            requested: next,
            compact_revision: compact,
        });
    }
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(run(shared, req, next, live, tx));
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
}

type Out = mpsc::Sender<Result<WatchResponse>>;

async fn run(
    shared: Arc<Shared>,
    req: WatchRequest,
    mut next: Revision,
    mut live: broadcast::Receiver<Arc<Batch>>,
    tx: Out,
) {
    let mut closed = shared.closed.subscribe();
    if *closed.borrow_and_update() {
        return;
    }
    let mut progress = tokio::time::interval(shared.progress_interval);
    progress.reset();
    // A revision someone waits for this watch to confirm (0: none).
    let mut requests = shared.progress_requests.subscribe();
    requests.borrow_and_update();
    let mut wanted: Revision = 0;
    'catch_up: loop {
        // Replay from disk until the snapshot's revision.
        loop {
            match replay_step(&shared, &req, next) {
                Ok((events, upto, snapshot)) => {
                    if !events.is_empty()
                        && tx
                            .send(Ok(WatchResponse {
                                events,
                                revision: upto,
                            }))
                            .await
                            .is_err()
                    {
                        return;
                    }
                    // A start past the snapshot stays where it was asked to be.
                    next = next.max(upto + 1);
                    if upto >= snapshot {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
        // Then follow the writer.
        loop {
            if wanted > 0 && next > wanted {
                wanted = 0;
                let notice = WatchResponse {
                    events: Vec::new(),
                    revision: next - 1,
                };
                if tx.send(Ok(notice)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                batch = live.recv() => match batch {
                    Ok(batch) => {
                        if !forward(&req, &batch, &mut next, &mut progress, &tx).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue 'catch_up,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                Ok(()) = requests.changed(), if req.progress_notify => {
                    wanted = wanted.max(*requests.borrow_and_update());
                    // Take in what was already published before answering.
                    loop {
                        match live.try_recv() {
                            Ok(batch) => {
                                if !forward(&req, &batch, &mut next, &mut progress, &tx).await {
                                    return;
                                }
                            }
                            Err(broadcast::error::TryRecvError::Lagged(_)) => continue 'catch_up,
                            Err(broadcast::error::TryRecvError::Closed) => return,
                            Err(broadcast::error::TryRecvError::Empty) => break,
                        }
                    }
                }
                _ = progress.tick(), if req.progress_notify => {
                    let notice = WatchResponse { events: Vec::new(), revision: next - 1 };
                    if tx.send(Ok(notice)).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
                _ = closed.changed() => return,
            }
        }
    }
}

/// Sends the events of a live batch this watch wants and moves `next` past it; false once
/// the receiver is gone.
async fn forward(
    req: &WatchRequest,
    batch: &Batch,
    next: &mut Revision,
    progress: &mut tokio::time::Interval,
    tx: &Out,
) -> bool {
    if batch.revision < *next {
        return true;
    }
    let events = select_events(req, &batch.events, *next);
    *next = batch.revision + 1;
    if events.is_empty() {
        return true;
    }
    progress.reset();
    tx.send(Ok(WatchResponse {
        events,
        revision: batch.revision,
    }))
    .await
    .is_ok()
}

/// One chunk of replay from `next`: the events, the last revision covered, and the revision of
/// the snapshot read (replay is done once the covered revision reaches it).
fn replay_step(
    shared: &Shared,
    req: &WatchRequest,
    next: Revision,
) -> Result<(Vec<Event>, Revision, Revision)> {
    shared.read(|txn| {
        let meta = txn.open_table(META).map_err(storage_err)?;
        let revisions = txn.open_table(REVISIONS).map_err(storage_err)?;
        let (snapshot, compact) = read::snapshot_revisions(&meta, &revisions)?;
        if next < compact {
            return Err(Error::Compacted {
                requested: next,
                compact_revision: compact,
            });
        }
        if next > snapshot {
            return Ok((Vec::new(), snapshot, snapshot));
        }
        let history = txn.open_table(HISTORY).map_err(storage_err)?;
        let (events, upto) = read::replay(
            &revisions,
            &history,
            &req.range,
            next,
            snapshot,
            req.prev_kv,
            REPLAY_CHUNK,
        )?;
        Ok((events, upto, snapshot))
    })
}

/// The events of a live batch that this watch wants, from revision `next` on.
fn select_events(req: &WatchRequest, events: &[Event], next: Revision) -> Vec<Event> {
    events
        .iter()
        .filter(|e| e.kv.mod_revision >= next && req.range.contains(&e.kv.key))
        .map(|e| Event {
            kind: e.kind,
            kv: e.kv.clone(),
            prev_kv: if req.prev_kv { e.prev_kv.clone() } else { None },
        })
        .collect()
}
