//! Engine-specific behaviour; the semantics shared with etcd are in `tests/conformance.rs`.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::time::Duration;

use futures::StreamExt;

use super::*;
use crate::types::{EventType, KeyRange};

async fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
    EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("db")))
        .await
        .unwrap()
}

#[tokio::test]
async fn writes_survive_reopen_with_revision_and_leases() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let lease = store.lease_grant(60).await.unwrap();
    let r1 = store.create(b"/a", b"1".to_vec(), 0).await.unwrap();
    let r2 = store.put(b"/b", b"2".to_vec(), lease).await.unwrap();
    assert_eq!((r1, r2), (2, 3));
    drop(store);
    let store = open(&dir).await;
    let st = store.status().await.unwrap();
    assert_eq!(st.revision, 3);
    assert_eq!(st.key_count, 2);
    let b = store.get(b"/b").await.unwrap().unwrap();
    assert_eq!(
        (b.value.as_slice(), b.lease, b.mod_revision),
        (&b"2"[..], lease, 3)
    );
    assert_eq!(
        store.lease_time_to_live(lease).await.unwrap().granted_ttl,
        60
    );
    // A new lease never reuses an id handed out before the restart.
    assert_ne!(store.lease_grant(5).await.unwrap(), lease);
    store.lease_revoke(lease).await.unwrap();
    assert!(store.get(b"/b").await.unwrap().is_none());
}

#[tokio::test]
async fn refuses_foreign_and_damaged_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-db");
    std::fs::write(
        &path,
        b"hello, I am a text file and not a database at all\n".repeat(100),
    )
    .unwrap();
    let err = EmbeddedStore::open(EmbeddedConfig::new(&path))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("not an EdgeSite store"), "{err}");
    // The refused file is left as it was.
    assert!(
        std::fs::read(&path)
            .unwrap()
            .starts_with(b"hello, I am a text file")
    );

    // A redb database of another program.
    let other = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&other).unwrap();
        let t = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<'_, &str, u64> = redb::TableDefinition::new("x");
            t.open_table(def).unwrap().insert("k", 1).unwrap();
        }
        t.commit().unwrap();
    }
    let err = EmbeddedStore::open(EmbeddedConfig::new(&other))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("another program"), "{err}");
}

#[tokio::test]
async fn second_open_of_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _store = open(&dir).await;
    let err = EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("db")))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
}

#[tokio::test]
async fn compaction_removes_superseded_history_and_keeps_current_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    for i in 0..2000u32 {
        store
            .put(
                format!("/k{}", i % 10).as_bytes(),
                i.to_be_bytes().to_vec(),
                0,
            )
            .await
            .unwrap();
    }
    store.delete(b"/k0", None).await.unwrap();
    let rev = store.status().await.unwrap().revision;
    store.compact(rev).await.unwrap();
    // Physical compaction runs in the background; wait until the history holds only the live
    // versions.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (hist, revs) = store
            .shared
            .read(|t| {
                use redb::ReadableTableMetadata;
                Ok((
                    t.open_table(HISTORY).unwrap().len().unwrap(),
                    t.open_table(REVISIONS).unwrap().len().unwrap(),
                ))
            })
            .unwrap();
        // Nine live keys, plus the tombstone of /k0 at the compaction revision itself, which
        // stays readable (and watchable) there.
        if hist == 10 && revs == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "history {hist}, change log {revs}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = store
        .range(RangeRequest::new(KeyRange::prefix("/")))
        .await
        .unwrap();
    assert_eq!(all.count, 9);
    assert_eq!(all.kvs[0].key, b"/k1");
    assert_eq!(all.kvs[0].value, 1991u32.to_be_bytes());
    assert_eq!(all.kvs[0].version, 200);
}

#[tokio::test]
async fn automatic_compaction_keeps_the_configured_window() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EmbeddedConfig::new(dir.path().join("db")).with_compaction(CompactionPolicy {
        keep_revisions: Some(100),
        keep_duration: None,
    });
    let store = EmbeddedStore::open(cfg).await.unwrap();
    for i in 0..1000u32 {
        store.put(b"/k", i.to_be_bytes().to_vec(), 0).await.unwrap();
    }
    let st = store.status().await.unwrap();
    assert!(
        st.compact_revision >= st.revision - 100 - 100 / 8 - 1,
        "{st:?}"
    );
    assert!(st.compact_revision <= st.revision - 100, "{st:?}");
    let old = store
        .range(RangeRequest::new(KeyRange::key("/k")).at_revision(st.revision - 50))
        .await
        .unwrap();
    assert_eq!(old.kvs[0].mod_revision, st.revision - 50);
    let err = store
        .range(RangeRequest::new(KeyRange::key("/k")).at_revision(st.compact_revision - 1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Compacted { .. }), "{err}");
}

#[tokio::test]
async fn a_slow_watcher_catches_up_from_disk_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let mut w = store
        .watch(WatchRequest::new(KeyRange::prefix("/w/")))
        .await
        .unwrap();
    // Far more batches than the live channel holds, while the watcher does not read.
    for i in 0..3000u32 {
        store
            .put(format!("/w/{}", i % 7).as_bytes(), vec![1], 0)
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 3000 {
        let resp = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.extend(resp.events.iter().map(|e| (e.kind, e.kv.mod_revision)));
    }
    let expected: Vec<_> = (2..3002).map(|r| (EventType::Put, r)).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn writes_after_the_last_checkpoint_come_back_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let mut acked = Vec::new();
    for i in 0..20u32 {
        let key = format!("/wal/{i:02}");
        acked.push((
            key.clone(),
            store
                .put(key.as_bytes(), vec![i as u8; 100], 0)
                .await
                .unwrap(),
        ));
    }
    // What a process killed right now leaves on disk: the files as they are (the page cache
    // survives the process), with redb's last checkpoint older than these writes.
    let crash = tempfile::tempdir().unwrap();
    let wal = wal::Wal::path_for(&dir.path().join("db"));
    let wal_len = std::fs::metadata(&wal).unwrap().len();
    std::fs::copy(dir.path().join("db"), crash.path().join("db")).unwrap();
    std::fs::copy(&wal, wal::Wal::path_for(&crash.path().join("db"))).unwrap();
    assert!(
        wal_len > 0,
        "the writes must still be in the log, not yet checkpointed"
    );
    assert!(!wal::read(&wal).unwrap().is_empty());

    let recovered = open(&crash).await;
    let all = recovered
        .range(RangeRequest::new(KeyRange::prefix("/wal/")))
        .await
        .unwrap();
    let got: Vec<_> = all
        .kvs
        .iter()
        .map(|kv| (String::from_utf8(kv.key.clone()).unwrap(), kv.mod_revision))
        .collect();
    assert_eq!(got, acked);
    assert_eq!(all.kvs[19].value, vec![19u8; 100]);
    // The next write continues the revisions, and the log was folded into a checkpoint.
    let next = recovered.put(b"/wal/next", vec![1], 0).await.unwrap();
    assert_eq!(next, acked.last().unwrap().1 + 1);
    drop(recovered);
    assert_eq!(
        std::fs::metadata(wal::Wal::path_for(&crash.path().join("db")))
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn refuses_a_damaged_file_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    for i in 0..100u32 {
        store
            .put(format!("/d/{i}").as_bytes(), vec![9; 512], 0)
            .await
            .unwrap();
    }
    drop(store);
    let path = dir.path().join("db");
    let mut bytes = std::fs::read(&path).unwrap();
    // Scramble the header (both commit slots) past redb's magic number.
    for b in &mut bytes[16..1024] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = EmbeddedStore::open(EmbeddedConfig::new(&path))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("damaged"), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "a refused file is not modified"
    );
}

#[tokio::test]
async fn leases_run_on_the_store_clock_not_the_wall_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(edgesite_clock::ManualClock::new());
    let config = EmbeddedConfig::new(dir.path().join("db")).with_clock(clock.clone());
    let store = EmbeddedStore::open(config).await.unwrap();
    let lease = store.lease_grant(10).await.unwrap();
    store.put(b"/leased", b"v".to_vec(), lease).await.unwrap();
    let ttl = async || store.lease_time_to_live(lease).await.unwrap().ttl;

    // Real time longer than the lease timer's one-second wake-up moves nothing.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(ttl().await, 10);
    clock.advance(Duration::from_secs(4));
    assert_eq!(ttl().await, 6);
    assert_eq!(store.lease_keep_alive(lease).await.unwrap().ttl, 10);
    assert_eq!(ttl().await, 10);
    clock.advance(Duration::from_secs(9));
    assert_eq!(ttl().await, 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(store.get(b"/leased").await.unwrap().is_some());

    // Past the deadline, the timer revokes the lease (and its key) within about a second.
    clock.advance(Duration::from_secs(2));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.get(b"/leased").await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the lease did not expire"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(
        store.lease_time_to_live(lease).await,
        Err(Error::LeaseNotFound(id)) if id == lease
    ));
}
