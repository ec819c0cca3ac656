//! System test of the offline images directory against a real containerd (needs root,
//! containerd, busybox-static, gzip and zstd; a missing one fails the test).
//!
//! Tarballs of every format dropped into the directory are imported and served by CRI under the
//! names containerd's import gives them; a corrupt one is an error outcome that stops nothing
//! and is not retried; a restart imports nothing again; a changed file is imported again; a
//! file still being written is imported only once complete; a file added while the watcher
//! runs is imported within seconds.
#![allow(clippy::disallowed_methods)] // a system test: it waits for real processes

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use edgesite_agent::cri::Runtime;
use edgesite_agent::images::dir::{POLL_INTERVAL, confirm_served};
use edgesite_agent::images::{ImageImporter, ImagesDir, ImportOutcome};
use edgesite_agent::oci;
use edgesite_testkit::TestContainerd;
use edgesite_testkit::containerd::host_busybox;

fn compress(path: &Path, tool: &str, ext: &str) -> PathBuf {
    let out = PathBuf::from(format!("{}{ext}", path.display()));
    let status = Command::new(tool)
        .args(["-c", "-q"])
        .arg(path)
        .stdout(std::fs::File::create(&out).unwrap())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e} (install the Debian package `{tool}`)"));
    assert!(status.success(), "{tool} failed");
    std::fs::remove_file(path).unwrap();
    out
}

fn by_file(outcomes: &[ImportOutcome], file: &str) -> Vec<String> {
    let matching: Vec<_> = outcomes
        .iter()
        .filter(|o| o.file.file_name().unwrap() == file)
        .collect();
    assert_eq!(matching.len(), 1, "{file}: {outcomes:?}");
    match &matching[0].result {
        Ok(images) => images.clone(),
        Err(e) => panic!("{file} was not imported: {e}"),
    }
}

async fn assert_served(ctd: &TestContainerd, name: &str) {
    let image = ctd
        .runtime()
        .image_status(name)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("CRI does not report {name}"));
    assert!(image.repo_tags.iter().any(|t| t == name), "{image:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarballs_of_every_format_are_imported_once_and_a_corrupt_one_stops_nothing() {
    let ctd = TestContainerd::start().await;
    let dir = ctd.dir().join("images");
    std::fs::create_dir_all(&dir).unwrap();
    let busybox = host_busybox();
    let build = |name: &str| oci::busybox_image(name, &busybox).unwrap();

    build("edgesite.io/plain:1")
        .write(&dir.join("plain.tar"))
        .unwrap();
    let gz = dir.join("gz.tar");
    build("edgesite.io/gz:1").write(&gz).unwrap();
    compress(&gz, "gzip", ".gz");
    let zst = dir.join("zst.tar");
    build("edgesite.io/zst:1").write(&zst).unwrap();
    compress(&zst, "zstd", ".zst");
    build("example.com/docker/busybox:2")
        .write_docker_archive(&dir.join("docker.tar"))
        .unwrap();
    std::fs::write(dir.join("corrupt.tar"), b"this is not a tarball").unwrap();
    std::fs::write(dir.join("corrupt.tar.gz"), b"nor is this gzip").unwrap();
    std::fs::write(dir.join("notes.txt"), b"not an image").unwrap();
    build("edgesite.io/partial:1")
        .write(&dir.join("partial.tar.part"))
        .unwrap();

    let importer = ImageImporter::new(ctd.socket());
    let mut images = ImagesDir::new(&dir, importer.clone());
    let mut outcomes = images.import_all_once().await;
    confirm_served(ctd.runtime(), &mut outcomes, Duration::from_secs(10)).await;
    assert_eq!(outcomes.len(), 6, "{outcomes:?}");
    assert_eq!(by_file(&outcomes, "plain.tar"), ["edgesite.io/plain:1"]);
    assert_eq!(by_file(&outcomes, "gz.tar.gz"), ["edgesite.io/gz:1"]);
    assert_eq!(by_file(&outcomes, "zst.tar.zst"), ["edgesite.io/zst:1"]);
    assert_eq!(
        by_file(&outcomes, "docker.tar"),
        ["example.com/docker/busybox:2"]
    );
    for file in ["corrupt.tar", "corrupt.tar.gz"] {
        let corrupt = outcomes.iter().find(|o| o.file.ends_with(file)).unwrap();
        assert!(corrupt.result.is_err(), "{corrupt:?}");
    }
    for name in [
        "edgesite.io/plain:1",
        "edgesite.io/gz:1",
        "edgesite.io/zst:1",
        "example.com/docker/busybox:2",
    ] {
        assert_served(&ctd, name).await;
    }
    assert!(
        ctd.runtime()
            .image_status("edgesite.io/partial:1")
            .await
            .unwrap()
            .is_none()
    );
    for o in outcomes.iter().filter(|o| o.result.is_ok()) {
        eprintln!(
            "figure: busybox image import from {} ({} bytes, sha256 + decompression + ctr): {} ms",
            o.file.file_name().unwrap().to_string_lossy(),
            std::fs::metadata(&o.file).unwrap().len(),
            o.elapsed.as_millis()
        );
    }
    assert_eq!(images.imports(), 6);
    // Files stay where they are; the corrupt one is not retried.
    assert!(dir.join("plain.tar").is_file() && dir.join("corrupt.tar").is_file());
    for _ in 0..3 {
        assert!(images.poll().await.is_empty());
    }
    assert_eq!(images.imports(), 6);

    // A restart with unchanged files imports nothing; neither does a `touch`.
    let mut again = ImagesDir::new(&dir, importer.clone());
    assert!(again.import_all_once().await.is_empty());
    assert_eq!(again.imports(), 0);
    let touched = Command::new("touch")
        .arg("-d")
        .arg("2020-01-01")
        .arg(dir.join("plain.tar"))
        .status()
        .unwrap();
    assert!(touched.success());
    assert!(again.import_all_once().await.is_empty());
    assert_eq!(again.imports(), 0);

    // A changed file is imported again, and so is a corrupt one once it is fixed.
    build("edgesite.io/plain:2")
        .write(&dir.join("plain.tar"))
        .unwrap();
    build("edgesite.io/fixed:1")
        .write(&dir.join("corrupt.tar"))
        .unwrap();
    let mut outcomes = again.import_all_once().await;
    confirm_served(ctd.runtime(), &mut outcomes, Duration::from_secs(10)).await;
    assert_eq!(by_file(&outcomes, "plain.tar"), ["edgesite.io/plain:2"]);
    assert_eq!(by_file(&outcomes, "corrupt.tar"), ["edgesite.io/fixed:1"]);
    assert_eq!(again.imports(), 2);
    assert_served(&ctd, "edgesite.io/plain:2").await;
    assert_served(&ctd, "edgesite.io/fixed:1").await;
    assert!(ctd.stop().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_being_copied_waits_and_a_new_file_is_imported_within_seconds() {
    let ctd = TestContainerd::start().await;
    let dir = ctd.dir().join("images");
    std::fs::create_dir_all(&dir).unwrap();
    let busybox = host_busybox();
    let build = |name: &str| oci::busybox_image(name, &busybox).unwrap();
    let importer = ImageImporter::new(ctd.socket());

    // Written in two halves, one poll apart: imported only once complete.
    let whole = ctd.dir().join("whole.tar");
    build("edgesite.io/slow:1").write(&whole).unwrap();
    let bytes = std::fs::read(&whole).unwrap();
    let (first, second) = bytes.split_at(bytes.len() / 2);
    let target = dir.join("slow.tar");
    std::fs::write(&target, first).unwrap();
    let mut images = ImagesDir::new(&dir, importer.clone());
    assert!(images.poll().await.is_empty(), "imported on first sight");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&target)
            .unwrap();
        f.write_all(second).unwrap();
    }
    assert!(images.poll().await.is_empty(), "imported while growing");
    assert_eq!(images.imports(), 0);
    let mut outcomes = images.poll().await;
    confirm_served(ctd.runtime(), &mut outcomes, Duration::from_secs(10)).await;
    assert_eq!(by_file(&outcomes, "slow.tar"), ["edgesite.io/slow:1"]);
    assert_served(&ctd, "edgesite.io/slow:1").await;

    // The watcher, at its default poll interval, imports a file dropped in while it runs
    // and reports it.
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let watcher = tokio::spawn(ImagesDir::new(&dir, importer).run(tx));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let staged = ctd.dir().join("new.tar.tmp");
    build("edgesite.io/new:1").write(&staged).unwrap();
    let gz = compress(&staged, "gzip", ".gz");
    std::fs::rename(&gz, dir.join("new.tar.gz")).unwrap();
    let outcome = tokio::time::timeout(POLL_INTERVAL * 4, rx.recv())
        .await
        .expect("the new file was not imported within 4 polls")
        .unwrap();
    let mut outcomes = [outcome];
    confirm_served(ctd.runtime(), &mut outcomes, Duration::from_secs(10)).await;
    assert_eq!(by_file(&outcomes, "new.tar.gz"), ["edgesite.io/new:1"]);
    eprintln!(
        "figure: dropped file → imported: {} ms (poll every {} ms)",
        started.elapsed().as_millis(),
        POLL_INTERVAL.as_millis()
    );
    assert_served(&ctd, "edgesite.io/new:1").await;
    drop(rx);
    tokio::time::timeout(POLL_INTERVAL * 2, watcher)
        .await
        .expect("the watcher ends when its channel closes")
        .unwrap();
    assert!(ctd.stop().await.is_empty());
}
