//! Reads over the engine's tables, written once for both read-only snapshots and the writer's own
//! transaction (which must see its earlier writes), hence generic over `ReadableTable`.

use redb::ReadableTable;

use super::codec::{Meta, Version, rev_i, rev_u};
use super::storage_err;
use crate::Result;
use crate::types::{Event, EventType, KeyRange, KeyValue, RangeRequest, RangeResponse, Revision};

/// `latest` as seen by a read snapshot or by the writer's transaction.
pub(crate) trait LatestTable: ReadableTable<&'static [u8], &'static [u8]> {}
impl<T: ReadableTable<&'static [u8], &'static [u8]>> LatestTable for T {}
/// `history`, likewise.
pub(crate) trait HistoryTable: ReadableTable<(&'static [u8], u64), &'static [u8]> {}
impl<T: ReadableTable<(&'static [u8], u64), &'static [u8]>> HistoryTable for T {}
/// `revisions`, likewise.
pub(crate) trait RevisionsTable: ReadableTable<(u64, u32), &'static [u8]> {}
impl<T: ReadableTable<(u64, u32), &'static [u8]>> RevisionsTable for T {}

/// Reads a range at the current revision from `latest`, with values from `history`.
pub(crate) fn range_current(
    latest: &impl LatestTable,
    history: &impl HistoryTable,
    req: &RangeRequest,
    revision: Revision,
) -> Result<RangeResponse> {
    let (start, end) = req.range.bounds();
    let iter = match &end {
        Some(end) => latest.range::<&[u8]>(start.as_slice()..end.as_slice()),
        None => latest.range::<&[u8]>(start.as_slice()..),
    }
    .map_err(storage_err)?;
    let mut resp = RangeResponse {
        revision,
        ..RangeResponse::default()
    };
    for entry in iter {
        let (k, m) = entry.map_err(storage_err)?;
        resp.count += 1;
        if req.count_only {
            continue;
        }
        if req.limit > 0 && resp.kvs.len() >= req.limit {
            resp.more = true;
            continue;
        }
        let meta = Meta::decode(m.value());
        let key = k.value().to_vec();
        let value = if req.keys_only {
            Vec::new()
        } else {
            value_of(history, &key, meta.mod_revision)?
        };
        resp.kvs.push(meta.into_kv(key, value));
    }
    Ok(resp)
}

fn value_of(history: &impl HistoryTable, key: &[u8], rev: Revision) -> Result<Vec<u8>> {
    let guard = history.get((key, rev_u(rev))).map_err(storage_err)?;
    match guard.as_ref().map(|g| Version::decode(g.value())) {
        Some(Version::Put(_, v)) => Ok(v.to_vec()),
        // `latest` and `history` are written in one transaction; a miss means a damaged file.
        _ => Err(crate::Error::Storage(format!(
            "history entry of {:?} at revision {rev} is missing: the database is damaged",
            String::from_utf8_lossy(key)
        ))),
    }
}

/// Reads a range as it was at a past revision `at`, from `history`.
pub(crate) fn range_at(
    history: &impl HistoryTable,
    req: &RangeRequest,
    at: Revision,
    revision: Revision,
) -> Result<RangeResponse> {
    let (start, end) = req.range.bounds();
    let iter = match &end {
        Some(end) => history.range((start.as_slice(), 0u64)..(end.as_slice(), 0u64)),
        None => history.range((start.as_slice(), 0u64)..),
    }
    .map_err(storage_err)?;
    let at = rev_u(at);
    let mut resp = RangeResponse {
        revision,
        ..RangeResponse::default()
    };
    let mut cur_key: Option<Vec<u8>> = None;
    let mut best: Option<(Meta, Vec<u8>)> = None;
    let flush = |key: Option<Vec<u8>>, best: Option<(Meta, Vec<u8>)>, resp: &mut RangeResponse| {
        if let (Some(key), Some((meta, value))) = (key, best) {
            resp.count += 1;
            if req.count_only {
                return;
            }
            if req.limit > 0 && resp.kvs.len() >= req.limit {
                resp.more = true;
                return;
            }
            let value = if req.keys_only { Vec::new() } else { value };
            resp.kvs.push(meta.into_kv(key, value));
        }
    };
    for entry in iter {
        let (k, v) = entry.map_err(storage_err)?;
        let (key, rev) = k.value();
        if cur_key.as_deref() != Some(key) {
            flush(cur_key.take(), best.take(), &mut resp);
            cur_key = Some(key.to_vec());
        }
        if rev <= at {
            best = match Version::decode(v.value()) {
                Version::Put(meta, value) => Some((meta, value.to_vec())),
                Version::Tombstone => None,
            };
        }
    }
    flush(cur_key, best, &mut resp);
    Ok(resp)
}

/// The version of `key` written at exactly `rev`, as a watch event (previous version included
/// when asked for and still retained).
pub(crate) fn event_at(
    history: &impl HistoryTable,
    key: &[u8],
    rev: u64,
    with_prev: bool,
) -> Result<Event> {
    let guard = history.get((key, rev)).map_err(storage_err)?;
    let (kind, kv) = match guard.as_ref().map(|g| Version::decode(g.value())) {
        Some(Version::Put(meta, value)) => {
            (EventType::Put, meta.into_kv(key.to_vec(), value.to_vec()))
        }
        Some(Version::Tombstone) | None => (
            EventType::Delete,
            KeyValue {
                key: key.to_vec(),
                mod_revision: rev_i(rev),
                ..KeyValue::default()
            },
        ),
    };
    let prev_kv = if with_prev {
        version_before(history, key, rev)?
    } else {
        None
    };
    Ok(Event { kind, kv, prev_kv })
}

/// The live version of `key` just before revision `rev`, if any.
pub(crate) fn version_before(
    history: &impl HistoryTable,
    key: &[u8],
    rev: u64,
) -> Result<Option<KeyValue>> {
    let mut iter = history
        .range((key, 0u64)..(key, rev))
        .map_err(storage_err)?;
    match iter.next_back() {
        Some(entry) => {
            let (_, v) = entry.map_err(storage_err)?;
            Ok(match Version::decode(v.value()) {
                Version::Put(meta, value) => Some(meta.into_kv(key.to_vec(), value.to_vec())),
                Version::Tombstone => None,
            })
        }
        None => Ok(None),
    }
}

/// Events of revisions `from..=to` whose key is in `range`, in order, stopping at a revision
/// boundary once `max_events` are gathered. Returns the events and the last revision covered.
pub(crate) fn replay(
    revisions: &impl RevisionsTable,
    history: &impl HistoryTable,
    range: &KeyRange,
    from: Revision,
    to: Revision,
    with_prev: bool,
    max_events: usize,
) -> Result<(Vec<Event>, Revision)> {
    let mut events = Vec::new();
    let mut last = from - 1;
    let iter = revisions
        .range((rev_u(from), 0u32)..=(rev_u(to), u32::MAX))
        .map_err(storage_err)?;
    for entry in iter {
        let (k, key) = entry.map_err(storage_err)?;
        let (rev, _) = k.value();
        let rev_signed = rev_i(rev);
        if rev_signed != last && events.len() >= max_events {
            return Ok((events, last));
        }
        last = rev_signed;
        let key = key.value();
        if range.contains(key) {
            events.push(event_at(history, key, rev, with_prev)?);
        }
    }
    Ok((events, to))
}

/// Reads a named counter of `meta`.
pub(crate) fn meta_get(
    meta: &impl ReadableTable<&'static str, u64>,
    name: &str,
) -> Result<Option<u64>> {
    Ok(meta.get(name).map_err(storage_err)?.map(|g| g.value()))
}

/// The number of live keys.
pub(crate) fn key_count(latest: &impl LatestTable) -> Result<u64> {
    latest.len().map_err(storage_err)
}

/// The revision and the compaction point a snapshot was taken at. The revision is the newest
/// entry of the change log (every revision writes at least one, and compaction never removes the
/// newest), so commits need not rewrite a counter; `meta` holds the starting revision of a store
/// that has none yet.
pub(crate) fn snapshot_revisions(
    meta: &impl ReadableTable<&'static str, u64>,
    revisions: &impl RevisionsTable,
) -> Result<(Revision, Revision)> {
    let base = meta_get(meta, super::codec::META_REVISION)?.unwrap_or(0);
    let last = match revisions.last().map_err(storage_err)? {
        Some((k, _)) => k.value().0,
        None => 0,
    };
    let compact = meta_get(meta, super::codec::META_COMPACT)?.unwrap_or(0);
    Ok((rev_i(base.max(last)), rev_i(compact)))
}
