//! Volumes on a temporary pods directory. They mount tmpfs, so they need root: without it
//! they fail (never skip).

use std::os::unix::fs::PermissionsExt as _;

use super::*;
use crate::pod::test_support::{FakeObjects, node, pod};
use serde_json::json;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the volume tests mount tmpfs: run them as root"
    );
}

/// A pods directory whose mounts are undone when the test ends, also when it fails.
struct Fixture {
    dir: tempfile::TempDir,
    volumes: HostVolumes,
}

impl Fixture {
    fn new() -> Self {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let node = node(dir.path());
        Fixture {
            volumes: HostVolumes::new(node),
            dir,
        }
    }
    fn vol(&self, plugin: &str, name: &str) -> PathBuf {
        self.dir
            .path()
            .join("uid-1/volumes")
            .join(plugin)
            .join(name)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                let _ = remove_pod_dir(&e.path());
            }
        }
    }
}

fn volumes_pod(volumes: serde_json::Value) -> Pod {
    pod(
        json!({"containers": [{"name": "c", "resources": {"limits": {"memory": "64Mi"}}}], "volumes": volumes}),
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn is_tmpfs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).unwrap().filesystem_type() == nix::sys::statfs::TMPFS_MAGIC
}

#[tokio::test]
async fn config_map_items_paths_and_modes() {
    let f = Fixture::new();
    let objects =
        FakeObjects::default().with_config_map("ns", "cfg", &[("a", "A"), ("b", "B"), ("c", "C")]);
    let p = volumes_pod(json!([
        {"name": "all", "configMap": {"name": "cfg"}},
        {"name": "some", "configMap": {"name": "cfg", "defaultMode": 0o440, "items": [
            {"key": "a", "path": "dir/a.txt", "mode": 0o400},
            {"key": "b", "path": "b"},
        ]}},
    ]));
    let prepared = f.volumes.setup(&p, &objects).await.unwrap();
    let all = f.vol("kubernetes.io~configmap", "all");
    let some = f.vol("kubernetes.io~configmap", "some");
    assert_eq!(
        prepared.paths["all"],
        PreparedVolume {
            host_path: all.clone(),
            read_only: true
        }
    );
    for (k, v) in [("a", "A"), ("b", "B"), ("c", "C")] {
        assert_eq!(read(&all.join(k)), v);
        assert_eq!(mode(&all.join(k)), 0o644);
        assert_eq!(
            std::fs::read_link(all.join(k)).unwrap(),
            Path::new("..data").join(k)
        );
    }
    assert_eq!(read(&some.join("dir/a.txt")), "A");
    assert_eq!(mode(&some.join("dir/a.txt")), 0o400);
    assert_eq!(mode(&some.join("b")), 0o440);
    assert!(std::fs::symlink_metadata(some.join("c")).is_err());
    assert!(!is_tmpfs(&all), "configMaps live on disk as kubelet's");
    let meta = std::fs::metadata(some.join("b")).unwrap();
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
}

#[tokio::test]
async fn a_changed_config_map_reaches_the_files_atomically_and_an_unchanged_one_is_not_rewritten() {
    let f = Fixture::new();
    let objects = FakeObjects::default().with_config_map("ns", "cfg", &[("a", "1"), ("gone", "x")]);
    let p = volumes_pod(json!([{"name": "cfg", "configMap": {"name": "cfg"}}]));
    f.volumes.setup(&p, &objects).await.unwrap();
    let dir = f.vol("kubernetes.io~configmap", "cfg");
    let first = std::fs::read_link(dir.join("..data")).unwrap();
    let first_inode = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(dir.join("a")).unwrap().ino()
    };

    f.volumes.setup(&p, &objects).await.unwrap();
    assert_eq!(
        std::fs::read_link(dir.join("..data")).unwrap(),
        first,
        "rewritten without a change"
    );
    {
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(std::fs::metadata(dir.join("a")).unwrap().ino(), first_inode);
    }

    objects.put_config_map("ns", "cfg", &[("a", "2"), ("new", "n")]);
    f.volumes.setup(&p, &objects).await.unwrap();
    let second = std::fs::read_link(dir.join("..data")).unwrap();
    assert_ne!(second, first);
    assert_eq!(read(&dir.join("a")), "2");
    assert_eq!(read(&dir.join("new")), "n");
    assert!(
        std::fs::symlink_metadata(dir.join("gone")).is_err(),
        "a removed key stays visible"
    );
    assert!(!dir.join(&first).exists(), "the old version is left behind");
}

#[tokio::test]
async fn secrets_and_projected_volumes_are_on_tmpfs() {
    let f = Fixture::new();
    let objects = FakeObjects::default()
        .with_secret("ns", "creds", &[("password", "s3cret")])
        .with_config_map("ns", "kube-root-ca.crt", &[("ca.crt", "CA")]);
    let p = volumes_pod(json!([
        {"name": "s", "secret": {"secretName": "creds", "defaultMode": 0o400}},
        {"name": "api", "projected": {"defaultMode": 0o420, "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"secret": {"name": "creds", "items": [{"key": "password", "path": "pw", "mode": 0o600}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
        ]}},
    ]));
    let prepared = f.volumes.setup(&p, &objects).await.unwrap();
    let s = f.vol("kubernetes.io~secret", "s");
    assert!(is_tmpfs(&s));
    assert_eq!(read(&s.join("password")), "s3cret");
    assert_eq!(mode(&s.join("password")), 0o400);
    assert!(prepared.paths["s"].read_only);
    let api = f.vol("kubernetes.io~projected", "api");
    assert!(is_tmpfs(&api));
    assert_eq!(read(&api.join("ca.crt")), "CA");
    assert_eq!(mode(&api.join("ca.crt")), 0o420);
    assert_eq!(read(&api.join("pw")), "s3cret");
    assert_eq!(mode(&api.join("pw")), 0o600);
    assert_eq!(read(&api.join("namespace")), "ns");
    assert!(std::fs::symlink_metadata(api.join("token")).is_err());
    // Setup again does not stack a second tmpfs.
    f.volumes.setup(&p, &objects).await.unwrap();
    let root = f.dir.path().canonicalize().unwrap();
    assert_eq!(mounts_under(&root).unwrap().len(), 2);
}

#[tokio::test]
async fn empty_dirs_on_disk_and_in_memory() {
    let f = Fixture::new();
    let p = volumes_pod(json!([
        {"name": "scratch", "emptyDir": {}},
        {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]));
    let prepared = f.volumes.setup(&p, &FakeObjects::default()).await.unwrap();
    let scratch = f.vol("kubernetes.io~empty-dir", "scratch");
    assert_eq!(
        prepared.paths["scratch"],
        PreparedVolume {
            host_path: scratch.clone(),
            read_only: false
        }
    );
    assert_eq!(mode(&scratch), 0o777);
    assert!(!is_tmpfs(&scratch));
    let mem = f.vol("kubernetes.io~empty-dir", "mem");
    assert!(is_tmpfs(&mem));
    assert_eq!(mode(&mem), 0o777);
    let st = nix::sys::statfs::statfs(&mem).unwrap();
    let bytes = st.blocks() as u64 * st.block_size() as u64;
    assert_eq!(bytes, 64 << 20, "tmpfs size");
    std::fs::write(mem.join("kept"), "x").unwrap();
    f.volumes.setup(&p, &FakeObjects::default()).await.unwrap();
    assert_eq!(
        read(&mem.join("kept")),
        "x",
        "setup again must not remount over the data"
    );
}

#[tokio::test]
async fn downward_api_files_hold_labels_annotations_and_resources() {
    let f = Fixture::new();
    let p = volumes_pod(json!([{"name": "info", "downwardAPI": {"items": [
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
        {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
        {"path": "app", "fieldRef": {"fieldPath": "metadata.labels['app']"}},
        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o400},
        {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}},
    ]}}]));
    f.volumes.setup(&p, &FakeObjects::default()).await.unwrap();
    let d = f.vol("kubernetes.io~downward-api", "info");
    assert_eq!(read(&d.join("labels")), "app=\"web\"\ntier=\"front\"");
    assert_eq!(read(&d.join("annotations")), "note=\"say \\\"hi\\\"\"");
    assert_eq!(read(&d.join("app")), "web");
    assert_eq!(read(&d.join("name")), "web-1");
    assert_eq!(mode(&d.join("name")), 0o400);
    assert_eq!(read(&d.join("mem")), "64");

    let mut p2 = p.clone();
    p2.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("tier".into(), "back".into());
    f.volumes.setup(&p2, &FakeObjects::default()).await.unwrap();
    assert_eq!(read(&d.join("labels")), "app=\"web\"\ntier=\"back\"");
}

#[tokio::test]
async fn missing_objects_and_keys_are_reported_and_optional_ones_are_empty() {
    let f = Fixture::new();
    let objects = FakeObjects::default().with_config_map("ns", "cfg", &[("a", "A")]);
    let err = f
        .volumes
        .setup(
            &volumes_pod(json!([{"name": "v", "configMap": {"name": "nope"}}])),
            &objects,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VolumeError::Missing { kind: "configmap", name } if name == "nope"),
        "{err:?}"
    );
    let err = f
        .volumes
        .setup(
            &volumes_pod(json!([{"name": "v", "secret": {"secretName": "nope"}}])),
            &objects,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VolumeError::Missing { kind: "secret", .. }),
        "{err:?}"
    );
    let err = f
        .volumes
        .setup(&volumes_pod(json!([{"name": "v", "configMap": {"name": "cfg", "items": [{"key": "zz", "path": "z"}]}}])), &objects)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VolumeError::MissingKey { key, .. } if key == "zz"),
        "{err:?}"
    );
    assert!(
        !f.dir.path().join("uid-1").exists(),
        "nothing is made before the plan is complete"
    );

    let p = volumes_pod(json!([
        {"name": "v", "configMap": {"name": "nope", "optional": true}},
        {"name": "w", "configMap": {"name": "cfg", "optional": true, "items": [{"key": "zz", "path": "z"}, {"key": "a", "path": "a"}]}},
    ]));
    f.volumes.setup(&p, &objects).await.unwrap();
    let v = f.vol("kubernetes.io~configmap", "v");
    assert!(v.join("..data").exists());
    assert_eq!(read(&f.vol("kubernetes.io~configmap", "w").join("a")), "A");

    let err = f
        .volumes
        .setup(
            &volumes_pod(json!([{"name": "v", "persistentVolumeClaim": {"claimName": "c"}}])),
            &objects,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, VolumeError::Unsupported { .. }), "{err:?}");
    let err = f
        .volumes
        .setup(&volumes_pod(json!([{"name": "v", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "../../etc/x"}]}}])), &objects)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("must not contain '..'"), "{err}");
}

#[test]
fn host_path_types_are_checked_and_created_as_upstream() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("dir")).unwrap();
    std::fs::write(d.join("file"), "").unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
    let ok = [
        ("dir", "Directory"),
        ("dir", "DirectoryOrCreate"),
        ("file", "File"),
        ("file", "FileOrCreate"),
        ("sock", "Socket"),
        ("anything-missing", ""),
        ("file", ""),
    ];
    for (path, t) in ok {
        check_host_path("v", &d.join(path), t).unwrap_or_else(|e| panic!("{path} {t}: {e}"));
    }
    check_host_path("v", Path::new("/dev/null"), "CharDevice").unwrap();
    let bad = [
        ("file", "Directory", "is not a directory"),
        ("file", "DirectoryOrCreate", "is not a directory"),
        ("missing", "Directory", "is not a directory"),
        ("dir", "File", "is not a file"),
        ("dir", "FileOrCreate", "is not a file"),
        ("missing", "File", "is not a file"),
        ("file", "Socket", "is not a socket file"),
        ("file", "CharDevice", "is not a character device"),
        ("file", "BlockDevice", "is not a block device"),
        ("file", "Bogus", "unknown hostPath type"),
    ];
    for (path, t, want) in bad {
        let err = check_host_path("v", &d.join(path), t)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hostPath type check failed") || t == "Bogus",
            "{err}"
        );
        assert!(err.contains(want), "{path} {t}: {err}");
    }
    check_host_path("v", &d.join("new/deep/dir"), "DirectoryOrCreate").unwrap();
    assert!(d.join("new/deep/dir").is_dir());
    assert_eq!(mode(&d.join("new/deep/dir")), 0o755);
    check_host_path("v", &d.join("dir/new-file"), "FileOrCreate").unwrap();
    assert!(d.join("dir/new-file").is_file());
    assert_eq!(mode(&d.join("dir/new-file")), 0o644);
}

#[tokio::test]
async fn teardown_unmounts_removes_is_idempotent_and_never_follows_symlinks() {
    let f = Fixture::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), "keep me").unwrap();
    let objects = FakeObjects::default().with_secret("ns", "creds", &[("k", "v")]);
    let p = volumes_pod(json!([
        {"name": "scratch", "emptyDir": {}},
        {"name": "mem", "emptyDir": {"medium": "Memory"}},
        {"name": "s", "secret": {"secretName": "creds"}},
    ]));
    f.volumes.setup(&p, &objects).await.unwrap();
    // What a container could plant in its writable volumes.
    let scratch = f.vol("kubernetes.io~empty-dir", "scratch");
    std::os::unix::fs::symlink(outside.path(), scratch.join("evil-dir")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("precious"), scratch.join("evil-file")).unwrap();
    let mem = f.vol("kubernetes.io~empty-dir", "mem");
    std::os::unix::fs::symlink(outside.path(), mem.join("evil")).unwrap();
    // A busy tmpfs: a directory handle open in it.
    let busy = std::fs::File::open(&mem).unwrap();

    let root = f.dir.path().canonicalize().unwrap();
    assert_eq!(mounts_under(&root).unwrap().len(), 2);
    f.volumes.teardown("uid-1").await.unwrap();
    drop(busy);
    assert!(!f.dir.path().join("uid-1").exists());
    assert!(
        mounts_under(&root).unwrap().is_empty(),
        "tmpfs left mounted"
    );
    assert_eq!(read(&outside.path().join("precious")), "keep me");
    f.volumes.teardown("uid-1").await.unwrap();
    f.volumes.teardown("never-existed").await.unwrap();
    for bad in ["", "..", ".", "../uid-1", "a/b"] {
        assert!(f.volumes.teardown(bad).await.is_err(), "{bad:?}");
    }

    // A pod directory that is a symlink: the link goes, its target stays.
    std::os::unix::fs::symlink(outside.path(), f.dir.path().join("uid-2")).unwrap();
    f.volumes.teardown("uid-2").await.unwrap();
    assert!(std::fs::symlink_metadata(f.dir.path().join("uid-2")).is_err());
    assert_eq!(read(&outside.path().join("precious")), "keep me");
}

#[test]
fn mountinfo_escapes_are_undone() {
    assert_eq!(unescape_mountinfo("/a\\040b/c\\134d"), "/a b/c\\d");
    assert_eq!(unescape_mountinfo("/plain"), "/plain");
    assert_eq!(unescape_mountinfo("/end\\04"), "/end\\04");
}

#[tokio::test]
async fn release_removes_the_volumes_of_a_finished_pod_and_keeps_its_logs() {
    let f = Fixture::new();
    let p = volumes_pod(json!([
        {"name": "scratch", "emptyDir": {}},
        {"name": "mem", "emptyDir": {"medium": "Memory"}},
    ]));
    f.volumes.setup(&p, &FakeObjects::default()).await.unwrap();
    let logs = f.dir.path().join("uid-1").join("logs").join("app");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("0.log"), "the last words\n").unwrap();
    let root = f.dir.path().canonicalize().unwrap();
    assert_eq!(mounts_under(&root).unwrap().len(), 1);

    f.volumes.release("uid-1").await.unwrap();
    assert!(!f.dir.path().join("uid-1").join("volumes").exists());
    assert!(
        mounts_under(&root).unwrap().is_empty(),
        "tmpfs left mounted"
    );
    assert_eq!(read(&logs.join("0.log")), "the last words\n");
    f.volumes.release("uid-1").await.unwrap();
    assert!(f.volumes.release("../uid-1").await.is_err());

    f.volumes.teardown("uid-1").await.unwrap();
    assert!(!f.dir.path().join("uid-1").exists());
}
