//! On-disk layout of the embedded engine: the redb tables and the byte encoding of their records.
//!
//! - `latest`:  key → [`Meta`] of the live version (no value): the current state, for fast
//!   current reads and counts;
//! - `history`: (key, revision) → flag + [`Meta`] fields + value: every retained version,
//!   tombstones included; the current version is the last entry of each key;
//! - `revisions`: (revision, sub) → key: the change log in commit order, for watch replay and
//!   for compaction;
//! - `leases`: id → granted TTL; `lease_keys`: (lease, key) → (): keys to delete on expiry;
//! - `meta`: named counters (format version, revision, compaction points, lease id counter).

use redb::TableDefinition;

use crate::types::{KeyValue, LeaseId, Revision};

pub(crate) const LATEST: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("latest");
pub(crate) const HISTORY: TableDefinition<'_, (&[u8], u64), &[u8]> =
    TableDefinition::new("history");
pub(crate) const REVISIONS: TableDefinition<'_, (u64, u32), &[u8]> =
    TableDefinition::new("revisions");
pub(crate) const LEASES: TableDefinition<'_, u64, i64> = TableDefinition::new("leases");
pub(crate) const LEASE_KEYS: TableDefinition<'_, (u64, &[u8]), ()> =
    TableDefinition::new("lease_keys");
pub(crate) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// Format version written at creation; a file with another one is refused.
pub(crate) const FORMAT_VERSION: u64 = 1;
/// Name of the format marker in `meta`, which also tells our files from other redb files.
pub(crate) const META_FORMAT: &str = "edgesite.store.format";
pub(crate) const META_REVISION: &str = "revision";
/// Reads and watches below this revision fail as compacted.
pub(crate) const META_COMPACT: &str = "compact_revision";
/// Physical compaction has removed superseded history below this revision.
pub(crate) const META_COMPACTED_UPTO: &str = "compacted_upto";
pub(crate) const META_NEXT_LEASE: &str = "next_lease";
/// Sequence number of the last batch committed; the write-ahead log is replayed after it.
pub(crate) const META_WAL_SEQ: &str = "wal_seq";

/// The bookkeeping of one key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Meta {
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: i64,
    pub lease: LeaseId,
}

impl Meta {
    pub(crate) const LEN: usize = 32;

    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0..8].copy_from_slice(&self.create_revision.to_be_bytes());
        out[8..16].copy_from_slice(&self.mod_revision.to_be_bytes());
        out[16..24].copy_from_slice(&self.version.to_be_bytes());
        out[24..32].copy_from_slice(&self.lease.to_be_bytes());
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Self {
        let at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            i64::from_be_bytes(a)
        };
        Self {
            create_revision: at(0),
            mod_revision: at(8),
            version: at(16),
            lease: at(24),
        }
    }

    pub(crate) fn into_kv(self, key: Vec<u8>, value: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

const FLAG_PUT: u8 = 0;
const FLAG_TOMBSTONE: u8 = 1;

/// One entry of `history`: a put (meta + value) or a delete (tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Version<'a> {
    Put(Meta, &'a [u8]),
    Tombstone,
}

impl<'a> Version<'a> {
    pub(crate) fn decode(b: &'a [u8]) -> Self {
        if b.first() == Some(&FLAG_TOMBSTONE) {
            return Self::Tombstone;
        }
        Self::Put(Meta::decode(&b[1..1 + Meta::LEN]), &b[1 + Meta::LEN..])
    }
}

pub(crate) fn encode_put(meta: &Meta, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + Meta::LEN + value.len());
    out.push(FLAG_PUT);
    out.extend_from_slice(&meta.encode());
    out.extend_from_slice(value);
    out
}

pub(crate) const TOMBSTONE: [u8; 1] = [FLAG_TOMBSTONE];

/// Revisions are non-negative; the tables store them as u64 so that they sort as numbers.
pub(crate) fn rev_u(r: Revision) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

pub(crate) fn rev_i(r: u64) -> Revision {
    Revision::try_from(r).unwrap_or(Revision::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips() {
        let m = Meta {
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            lease: 0x7fff_0000_0000_0001,
        };
        assert_eq!(Meta::decode(&m.encode()), m);
    }

    #[test]
    fn versions_round_trip() {
        let m = Meta {
            create_revision: 1,
            mod_revision: 2,
            version: 2,
            lease: 0,
        };
        let put = encode_put(&m, b"hello");
        assert_eq!(Version::decode(&put), Version::Put(m, b"hello"));
        assert_eq!(Version::decode(&encode_put(&m, b"")), Version::Put(m, b""));
        assert_eq!(Version::decode(&TOMBSTONE), Version::Tombstone);
    }
}
