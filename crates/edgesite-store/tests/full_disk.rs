//! A full disk fails writes cleanly: once free space drops to the configured reserve, writes
//! that add data are refused with a clear error, nothing acknowledged is lost, reads and deletes
//! keep working, and writes succeed again once space is freed — without restarting the store.
//!
//! Needs root to mount a small tmpfs; as everywhere in this project, a missing prerequisite fails
//! the test instead of skipping it.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::path::Path;
use std::process::Command;

use edgesite_store::embedded::{EmbeddedConfig, EmbeddedStore};
use edgesite_store::{Error, KeyRange, RangeRequest, Store};

struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    fn mount(dir: &'a Path, size: &str) -> Self {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir)
    }

    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.0)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

/// Writes 16 KiB values under `/fill/` until a write fails (or 160 MiB were written); returns
/// the acknowledged keys with their revisions, and the failure.
async fn fill(store: &EmbeddedStore, value: &[u8]) -> (Vec<(String, i64)>, Option<Error>) {
    let mut acked = Vec::new();
    for i in 0..10_000u32 {
        let key = format!("/fill/{i:05}");
        match store.put(key.as_bytes(), value.to_vec(), 0).await {
            Ok(rev) => acked.push((key, rev)),
            Err(e) => return (acked, Some(e)),
        }
    }
    (acked, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_write_and_keeps_every_acknowledged_one() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(dir.path(), "24m");
    let mut config = EmbeddedConfig::new(dir.path().join("db"));
    config.reserved_disk_bytes = 8 << 20;
    let store = EmbeddedStore::open(config.clone()).await.unwrap();
    let value = vec![7u8; 16 * 1024];
    let (mut acked, failure) = fill(&store, &value).await;
    let failure = failure.expect("the tmpfs must fill up before 160 MiB were written");
    assert!(matches!(failure, Error::Storage(_)), "{failure}");
    assert!(
        failure.to_string().contains("nothing was stored"),
        "{failure}"
    );
    assert!(acked.len() > 10, "only {} writes fit", acked.len());

    // Reads still work and every acknowledged write is there, at the revision acknowledged.
    let all = store
        .range(RangeRequest::new(KeyRange::prefix("/fill/")))
        .await
        .unwrap();
    assert_eq!(all.count as usize, acked.len());
    for (kv, (key, rev)) in all.kvs.iter().zip(&acked) {
        assert_eq!((kv.key.as_slice(), kv.mod_revision), (key.as_bytes(), *rev));
        assert_eq!(kv.value, value);
    }
    let last_rev = acked.last().unwrap().1;
    assert_eq!(store.status().await.unwrap().revision, last_rev);
    // Still refused a moment later (the log and checkpoints did not eat the reserve).
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert!(store.put(b"/more", value.clone(), 0).await.is_err());
    assert_eq!(store.status().await.unwrap().revision, last_rev);
    // Deleting still works, so an operator can make room.
    let (_, del_rev) = store.delete(acked[0].0.as_bytes(), None).await.unwrap();
    assert_eq!(del_rev, last_rev + 1);
    let last_rev = del_rev;
    acked.remove(0);

    // Once there is room again, writes go through, with the next revision: no hole.
    fs.resize("96m");
    let rev = store.put(b"/after", b"ok".to_vec(), 0).await.unwrap();
    assert_eq!(rev, last_rev + 1);
    drop(store);
    let store = EmbeddedStore::open(config).await.unwrap();
    assert_eq!(store.status().await.unwrap().revision, last_rev + 1);
    assert_eq!(store.count(b"/fill/").await.unwrap() as usize, acked.len());
    drop(store);
}

/// Without a reserve the write runs into the end of the disk inside redb or the log: the
/// write still fails cleanly, and once there is room again the store recovers by itself with
/// every acknowledged write and no hole in the revisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_into_the_end_of_the_disk_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(dir.path(), "3m");
    let mut config = EmbeddedConfig::new(dir.path().join("db"));
    config.reserved_disk_bytes = 0;
    let store = EmbeddedStore::open(config.clone()).await.unwrap();
    let value = vec![7u8; 16 * 1024];
    let (acked, failure) = fill(&store, &value).await;
    let failure = failure.expect("the tmpfs must fill up before 160 MiB were written");
    assert!(matches!(failure, Error::Storage(_)), "{failure}");
    assert!(acked.len() > 10, "only {} writes fit", acked.len());
    let last_rev = acked.last().unwrap().1;

    fs.resize("96m");
    // The next write reopens the file if redb gave up on it, replaying the log.
    let rev = store.put(b"/after", b"ok".to_vec(), 0).await.unwrap();
    assert_eq!(rev, last_rev + 1);
    let all = store
        .range(RangeRequest::new(KeyRange::prefix("/fill/")))
        .await
        .unwrap();
    let got: Vec<_> = all
        .kvs
        .iter()
        .map(|kv| (String::from_utf8(kv.key.clone()).unwrap(), kv.mod_revision))
        .collect();
    assert_eq!(got, acked);
    drop(store);
    let store = EmbeddedStore::open(config).await.unwrap();
    assert_eq!(store.status().await.unwrap().revision, last_rev + 1);
    assert_eq!(store.count(b"/fill/").await.unwrap() as usize, acked.len());
}
