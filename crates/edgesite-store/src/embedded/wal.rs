//! The write-ahead log of the embedded engine. A durable redb commit costs two fsyncs of many
//! scattered pages; appending a batch's requests to this log costs one fsync of one sequential
//! write. So the writer appends each batch here (and acknowledges it once that is on disk),
//! commits it to redb without syncing, and makes redb durable only every so often (a
//! checkpoint), after which the log starts over. After a crash, the store opens at redb's last
//! checkpoint and re-applies the logged batches after it, in order, with the same code that
//! applied them the first time — so replay cannot disagree with what was acknowledged.
//!
//! Record: `len: u32 | crc32(payload): u32 | payload`, payload =
//! `seq: u64 | compact: i64 | compact_step: u32 | n: u32 | n × request`. A record that is cut
//! short or fails its checksum ends the log (it was never acknowledged); so does a sequence
//! number that does not follow the previous one (the rest of a log that was started over).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::types::{
    Compare, CompareOp, CompareTarget, KeyRange, LeaseId, RangeRequest, Revision, Txn, TxnOp,
};

/// A request as logged: what the writer applied, without its reply channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    Txn(Txn),
    LeaseGrant(i64),
    LeaseRevoke(LeaseId),
    Compact(Revision),
}

/// One logged batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// Position of the batch in the writer's sequence.
    pub seq: u64,
    /// The logical compaction point when the batch started (automatic compaction moves it
    /// between batches).
    pub compact: Revision,
    /// How many change-log entries the batch compacted physically.
    pub compact_step: u32,
    pub requests: Vec<Request>,
}

/// The log file, open for appending.
#[derive(Debug)]
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    len: u64,
}

impl Wal {
    /// Where the log of the store at `db` lives.
    pub(crate) fn path_for(db: &Path) -> PathBuf {
        let mut name = db.file_name().unwrap_or_default().to_os_string();
        name.push(".wal");
        db.with_file_name(name)
    }

    /// Opens the log, emptied: call after its records have been applied.
    pub(crate) fn open_empty(path: PathBuf) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        let mut wal = Self { file, path, len: 0 };
        wal.reset()?;
        Ok(wal)
    }

    /// Bytes in the log.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends a record and waits until it is on disk. On failure the log is cut back to
    /// where it was, so that a batch that was not acknowledged is not replayed either.
    pub(crate) fn append(&mut self, record: &[u8]) -> std::io::Result<()> {
        let res = (|| {
            self.file.seek(SeekFrom::Start(self.len))?;
            self.file.write_all(record)?;
            self.file.sync_data()
        })();
        match res {
            Ok(()) => {
                self.len += record.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                let _ = self.file.sync_data();
                Err(e)
            }
        }
    }

    /// Cuts the log back to `len` bytes (dropping a record whose batch failed to commit).
    pub(crate) fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_data()?;
        self.len = len;
        Ok(())
    }

    /// Starts the log over, once redb holds everything in it durably. The file keeps its
    /// blocks: later appends overwrite them, so their `fdatasync` writes data only, where
    /// growing the file would also commit the file system's journal for the new size each
    /// time. What lies past the new records is harmless: those records are no newer than the
    /// checkpoint (skipped on replay), and their sequence numbers do not follow the new ones
    /// (reading stops there); a zeroed or torn region fails its length or checksum.
    pub(crate) fn reset(&mut self) -> std::io::Result<()> {
        self.len = 0;
        Ok(())
    }

    /// Empties the file, when the store closes with everything checkpointed.
    pub(crate) fn discard(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.len = 0;
        Ok(())
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every complete record of the log at `path` (none if it does not exist).
pub(crate) fn read(path: &Path) -> std::io::Result<Vec<Record>> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    let mut records: Vec<Record> = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap_or_default());
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(record) = decode_record(payload) else {
            break;
        };
        if records
            .last()
            .is_some_and(|prev| record.seq != prev.seq + 1)
        {
            break;
        }
        records.push(record);
        at += 8 + len;
    }
    Ok(records)
}

/// Builds the bytes of one record, request by request.
#[derive(Debug)]
pub(crate) struct RecordBuilder {
    buf: Vec<u8>,
    n: u32,
}

impl RecordBuilder {
    pub(crate) fn new(seq: u64, compact: Revision) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[0u8; 8]); // len + crc, filled in by `finish`
        buf.extend_from_slice(&seq.to_le_bytes());
        buf.extend_from_slice(&compact.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes()); // compact_step
        buf.extend_from_slice(&0u32.to_le_bytes()); // n
        Self { buf, n: 0 }
    }

    pub(crate) fn push(&mut self, req: &Request) {
        self.n += 1;
        let b = &mut self.buf;
        match req {
            Request::Txn(txn) => {
                b.push(0);
                put_u32(b, txn.compare.len());
                for c in &txn.compare {
                    put_bytes(b, &c.key);
                    b.push(match c.op {
                        CompareOp::Equal => 0,
                        CompareOp::NotEqual => 1,
                        CompareOp::Greater => 2,
                        CompareOp::Less => 3,
                    });
                    match &c.target {
                        CompareTarget::Value(v) => {
                            b.push(0);
                            put_bytes(b, v);
                        }
                        CompareTarget::Version(n) => put_tagged(b, 1, *n),
                        CompareTarget::CreateRevision(n) => put_tagged(b, 2, *n),
                        CompareTarget::ModRevision(n) => put_tagged(b, 3, *n),
                        CompareTarget::Lease(n) => put_tagged(b, 4, *n),
                    }
                }
                for ops in [&txn.success, &txn.failure] {
                    put_u32(b, ops.len());
                    for op in ops {
                        put_op(b, op);
                    }
                }
            }
            Request::LeaseGrant(ttl) => put_tagged(b, 1, *ttl),
            Request::LeaseRevoke(id) => put_tagged(b, 2, *id),
            Request::Compact(rev) => put_tagged(b, 3, *rev),
        }
    }

    /// The record's bytes, ready to append.
    pub(crate) fn finish(mut self, compact_step: u32) -> Vec<u8> {
        self.buf[24..28].copy_from_slice(&compact_step.to_le_bytes());
        self.buf[28..32].copy_from_slice(&self.n.to_le_bytes());
        let len = (self.buf.len() - 8) as u32;
        let crc = crc32fast::hash(&self.buf[8..]);
        self.buf[0..4].copy_from_slice(&len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

fn put_u32(b: &mut Vec<u8>, n: usize) {
    b.extend_from_slice(&(n as u32).to_le_bytes());
}

fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    put_u32(b, v.len());
    b.extend_from_slice(v);
}

fn put_tagged(b: &mut Vec<u8>, tag: u8, n: i64) {
    b.push(tag);
    b.extend_from_slice(&n.to_le_bytes());
}

fn put_range(b: &mut Vec<u8>, r: &KeyRange) {
    match r {
        KeyRange::Key(k) => {
            b.push(0);
            put_bytes(b, k);
        }
        KeyRange::Prefix(p) => {
            b.push(1);
            put_bytes(b, p);
        }
        KeyRange::Range { start, end } => {
            b.push(2);
            put_bytes(b, start);
            put_bytes(b, end);
        }
    }
}

fn put_op(b: &mut Vec<u8>, op: &TxnOp) {
    match op {
        TxnOp::Range(req) => {
            b.push(0);
            put_range(b, &req.range);
            b.extend_from_slice(&req.revision.unwrap_or(0).to_le_bytes());
            b.extend_from_slice(&(req.limit as u64).to_le_bytes());
            b.push(u8::from(req.count_only) | (u8::from(req.keys_only) << 1));
        }
        TxnOp::Put {
            key,
            value,
            lease,
            prev_kv,
        } => {
            b.push(1);
            put_bytes(b, key);
            put_bytes(b, value);
            b.extend_from_slice(&lease.to_le_bytes());
            b.push(u8::from(*prev_kv));
        }
        TxnOp::Delete { range, prev_kv } => {
            b.push(2);
            put_range(b, range);
            b.push(u8::from(*prev_kv));
        }
    }
}

/// Reads values off a payload; every read is bounds-checked and a short payload yields `None`.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        self.take(n).map(<[u8]>::to_vec)
    }
    fn range(&mut self) -> Option<KeyRange> {
        Some(match self.u8()? {
            0 => KeyRange::Key(self.bytes()?),
            1 => KeyRange::Prefix(self.bytes()?),
            2 => KeyRange::Range {
                start: self.bytes()?,
                end: self.bytes()?,
            },
            _ => return None,
        })
    }
    fn op(&mut self) -> Option<TxnOp> {
        Some(match self.u8()? {
            0 => {
                let range = self.range()?;
                let revision = self.i64()?;
                let limit = self.u64()? as usize;
                let flags = self.u8()?;
                TxnOp::Range(RangeRequest {
                    range,
                    revision: (revision != 0).then_some(revision),
                    limit,
                    count_only: flags & 1 != 0,
                    keys_only: flags & 2 != 0,
                })
            }
            1 => TxnOp::Put {
                key: self.bytes()?,
                value: self.bytes()?,
                lease: self.i64()?,
                prev_kv: self.u8()? != 0,
            },
            2 => TxnOp::Delete {
                range: self.range()?,
                prev_kv: self.u8()? != 0,
            },
            _ => return None,
        })
    }
    fn ops(&mut self) -> Option<Vec<TxnOp>> {
        let n = self.u32()?;
        (0..n).map(|_| self.op()).collect()
    }
}

fn decode_record(payload: &[u8]) -> Option<Record> {
    let mut r = Reader(payload);
    let seq = r.u64()?;
    let compact = r.i64()?;
    let compact_step = r.u32()?;
    let n = r.u32()?;
    let mut requests = Vec::new();
    for _ in 0..n {
        requests.push(match r.u8()? {
            0 => {
                let ncmp = r.u32()?;
                let mut compare = Vec::new();
                for _ in 0..ncmp {
                    let key = r.bytes()?;
                    let op = match r.u8()? {
                        0 => CompareOp::Equal,
                        1 => CompareOp::NotEqual,
                        2 => CompareOp::Greater,
                        3 => CompareOp::Less,
                        _ => return None,
                    };
                    let target = match r.u8()? {
                        0 => CompareTarget::Value(r.bytes()?),
                        1 => CompareTarget::Version(r.i64()?),
                        2 => CompareTarget::CreateRevision(r.i64()?),
                        3 => CompareTarget::ModRevision(r.i64()?),
                        4 => CompareTarget::Lease(r.i64()?),
                        _ => return None,
                    };
                    compare.push(Compare { key, op, target });
                }
                let success = r.ops()?;
                let failure = r.ops()?;
                Request::Txn(Txn {
                    compare,
                    success,
                    failure,
                })
            }
            1 => Request::LeaseGrant(r.i64()?),
            2 => Request::LeaseRevoke(r.i64()?),
            3 => Request::Compact(r.i64()?),
            _ => return None,
        });
    }
    r.0.is_empty().then_some(Record {
        seq,
        compact,
        compact_step,
        requests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64) -> (Record, Vec<u8>) {
        let txn = Txn::new()
            .when(Compare::new(
                "a",
                CompareOp::Greater,
                CompareTarget::Value(b"x".to_vec()),
            ))
            .when(Compare::new(
                "b",
                CompareOp::Less,
                CompareTarget::ModRevision(9),
            ))
            .and_then(vec![
                TxnOp::Put {
                    key: b"a".to_vec(),
                    value: vec![0, 1, 2],
                    lease: 7,
                    prev_kv: true,
                },
                TxnOp::Range(
                    RangeRequest::new(KeyRange::prefix("a"))
                        .at_revision(3)
                        .with_limit(2),
                ),
            ])
            .or_else(vec![TxnOp::Delete {
                range: KeyRange::Range {
                    start: b"c".to_vec(),
                    end: Vec::new(),
                },
                prev_kv: false,
            }]);
        let requests = vec![
            Request::Txn(txn),
            Request::LeaseGrant(10),
            Request::LeaseRevoke(4),
            Request::Compact(12),
        ];
        let mut b = RecordBuilder::new(seq, 5);
        for r in &requests {
            b.push(r);
        }
        let bytes = b.finish(3);
        (
            Record {
                seq,
                compact: 5,
                compact_step: 3,
                requests,
            },
            bytes,
        )
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.wal");
        let mut wal = Wal::open_empty(path.clone()).unwrap();
        let (r1, b1) = sample(1);
        let (r2, b2) = sample(2);
        wal.append(&b1).unwrap();
        wal.append(&b2).unwrap();
        assert_eq!(read(&path).unwrap(), vec![r1.clone(), r2]);
        // A record cut short by a crash, or damaged, is not read; nor is anything after it.
        let (_, b3) = sample(3);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&b3[..b3.len() - 1]).unwrap();
        assert_eq!(read(&path).unwrap().len(), 2);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[b1.len() + 20] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap(), vec![r1]);
    }

    #[test]
    fn a_sequence_break_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.wal");
        let mut wal = Wal::open_empty(path.clone()).unwrap();
        wal.append(&sample(7).1).unwrap();
        wal.append(&sample(9).1).unwrap();
        assert_eq!(read(&path).unwrap().len(), 1);
        assert_eq!(Wal::path_for(Path::new("/d/db")), Path::new("/d/db.wal"));
    }

    #[test]
    fn a_restarted_log_reuses_its_blocks_and_never_reads_the_old_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.wal");
        let mut wal = Wal::open_empty(path.clone()).unwrap();
        for seq in 1..=5 {
            wal.append(&sample(seq).1).unwrap();
        }
        let size = std::fs::metadata(&path).unwrap().len();
        // A checkpoint: the file keeps its size, new records overwrite the old ones from the
        // start, and reading stops where the old generation's records begin.
        wal.reset().unwrap();
        let (r6, b6) = sample(6);
        wal.append(&b6).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        assert_eq!(read(&path).unwrap(), vec![r6]);
        // Right after a checkpoint, before any new record, only old records are there: they
        // are all at or below the checkpoint, which replay skips.
        wal.reset().unwrap();
        assert!(read(&path).unwrap().iter().all(|r| r.seq <= 6));
        // Zeroed space (a file extended by the file system) ends the log too.
        wal.discard().unwrap();
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        assert!(read(&path).unwrap().is_empty());
    }
}
