//! A full disk fails writes cleanly: the failed write is refused with a storage error, nothing
//! acknowledged is lost, reads keep working, and writes succeed again once space is freed —
//! without restarting the store.
//!
//! Needs root to mount a small tmpfs; as everywhere in this project, a missing prerequisite fails
//! the test instead of skipping it.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_write_and_keeps_every_acknowledged_one() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(dir.path(), "3m");
    let store = EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("db")))
        .await
        .unwrap();
    let value = vec![7u8; 16 * 1024];
    let mut acked = Vec::new();
    let mut failure = None;
    for i in 0..10_000u32 {
        let key = format!("/fill/{i:05}");
        match store.put(key.as_bytes(), value.clone(), 0).await {
            Ok(rev) => acked.push((key, rev)),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("3 MiB must fill up before 160 MiB were written");
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

    // Once there is room again, writes go through, with the next revision: no hole.
    fs.resize("64m");
    let rev = store.put(b"/after", b"ok".to_vec(), 0).await.unwrap();
    assert_eq!(rev, last_rev + 1);
    drop(store);
    let store = EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("db")))
        .await
        .unwrap();
    assert_eq!(store.status().await.unwrap().revision, last_rev + 1);
    assert_eq!(store.count(b"/fill/").await.unwrap() as usize, acked.len());
    drop(store);
}
