//! The offline images directory (`ADIR/images/`): image tarballs dropped there are imported
//! into containerd's `k8s.io` namespace at start and within seconds of being added, so an
//! air-gapped site needs no registry.
//!
//! - Formats: OCI image-layout and docker-archive (`docker save`) tarballs, `.tar`, `.tar.gz` /
//!   `.tgz` (through `gzip -dc`) and `.tar.zst` (through `zstd -dc`). `ctr images import` of
//!   containerd 1.6.20 reads only uncompressed tars (a `.tar.gz` given to it fails with
//!   `archive/tar: invalid tar header`), so compressed files are decompressed into its stdin.
//! - Names: `ctr -n k8s.io images import --all-platforms` names the images itself
//!   (`io.containerd.image.name`, then the OCI `org.opencontainers.image.ref.name` annotation,
//!   docker `RepoTags`); the CRI plugin labels them `io.cri-containerd.image=managed` and serves
//!   them under those names, and images with names are roots for containerd's garbage collector.
//! - A file still being copied is not imported half-way: a file is imported only once its size
//!   and mtime are the same on two polls in a row; names starting with `.` or ending in `.tmp`
//!   or `.part` are ignored (the usual names of a copy in progress).
//! - Re-imports are no-ops: what was imported (file name, size, mtime, sha256 of the content,
//!   the images, or the error) is kept in `ADIR/images/.imported`; an unchanged file is not
//!   imported again, also across restarts, and a file whose mtime changed but whose content did
//!   not (`touch`) is not either. A corrupt file gives one [`ImportOutcome`] with the error and
//!   is not retried until it changes. Files stay where they are.
//! - Idle cost: one `readdir` and one `stat` per file every poll (2 s).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{CRI_NAMESPACE, Error, ImageImporter};

/// How often the directory is looked at.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The file, inside the images directory, where what was imported is remembered.
pub const STATE_FILE: &str = ".imported";

/// What importing one file gave.
#[derive(Debug)]
pub struct ImportOutcome {
    /// The tarball.
    pub file: PathBuf,
    /// The images it held, as `ctr` named them, or why it could not be imported.
    pub result: Result<Vec<String>, Error>,
    /// How long the import took (decompression and `ctr` included).
    pub elapsed: Duration,
}

/// How a file is decompressed on its way into `ctr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `.tar`.
    None,
    /// `.tar.gz`, `.tgz`.
    Gzip,
    /// `.tar.zst`.
    Zstd,
}

impl Compression {
    /// The compression of a file named `name`, `None` (the outer option) when the file is not
    /// an image tarball the directory imports (other extensions, hidden files, partial copies).
    pub fn of(name: &str) -> Option<Self> {
        if name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".part") {
            return None;
        }
        if name.ends_with(".tar") {
            Some(Self::None)
        } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some(Self::Gzip)
        } else if name.ends_with(".tar.zst") {
            Some(Self::Zstd)
        } else {
            None
        }
    }

    fn decompressor(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::None => None,
            Self::Gzip => Some(("gzip", "gzip")),
            Self::Zstd => Some(("zstd", "zstd")),
        }
    }
}

/// A file as one poll saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Its size in bytes.
    pub size: u64,
    /// Its mtime, in nanoseconds since the epoch.
    pub mtime_ns: u128,
}

/// What the state file keeps for one imported (or failed) file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    seen: Seen,
    digest: String,
    images: Vec<String>,
    error: Option<String>,
}

/// The stability rule, without IO: a file is ready once it was seen with the same size and
/// mtime on two polls in a row, and differs from what was last imported from it.
#[derive(Debug, Default)]
pub struct Stability {
    last: HashMap<String, Seen>,
}

impl Stability {
    /// Feeds one poll's view of the directory (name → how it looked); returns the names that
    /// are stable now and for which `done` (what was imported from that name) says something
    /// else. Files gone from the directory are forgotten.
    pub fn poll(
        &mut self,
        now: &BTreeMap<String, Seen>,
        done: impl Fn(&str) -> Option<Seen>,
    ) -> Vec<String> {
        let ready = now
            .iter()
            .filter(|(name, seen)| self.last.get(*name) == Some(seen))
            .filter(|(name, seen)| done(name) != Some(**seen))
            .map(|(name, _)| name.clone())
            .collect();
        self.last = now.iter().map(|(n, s)| (n.clone(), *s)).collect();
        ready
    }
}

/// The offline images directory: a watcher importing the tarballs dropped there.
#[derive(Debug)]
pub struct ImagesDir {
    dir: PathBuf,
    importer: ImageImporter,
    poll_interval: Duration,
    stability: Stability,
    records: BTreeMap<String, Record>,
    imports: u64,
}

impl ImagesDir {
    /// The watcher of `dir` (`ADIR/images`, created when missing) importing into the containerd
    /// `importer` talks to; reads what earlier runs imported from `dir/.imported`.
    pub fn new(dir: impl Into<PathBuf>, importer: ImageImporter) -> Self {
        let dir = dir.into();
        let records = load_state(&dir.join(STATE_FILE));
        Self {
            dir,
            importer,
            poll_interval: POLL_INTERVAL,
            stability: Stability::default(),
            records,
            imports: 0,
        }
    }

    /// Polls every `interval` instead of [`POLL_INTERVAL`].
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many times this watcher ran `ctr images import`.
    pub fn imports(&self) -> u64 {
        self.imports
    }

    /// At start, before pods start: imports every stable tarball in the directory (two looks
    /// a quarter of the poll interval apart, so a file being copied right now is left to
    /// [`run`](Self::run)), one after the other; returns what each import gave.
    pub async fn import_all_once(&mut self) -> Vec<ImportOutcome> {
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot create the images directory");
        }
        let mut outcomes = self.poll().await;
        tokio::time::sleep(self.poll_interval / 4).await;
        outcomes.extend(self.poll().await);
        outcomes
    }

    /// Watches the directory for ever, importing new and changed tarballs and sending each
    /// outcome to `events` (for the node's Events); ends when `events` is closed.
    pub async fn run(mut self, events: mpsc::Sender<ImportOutcome>) {
        loop {
            for outcome in self.poll().await {
                if events.send(outcome).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.poll_interval) => {}
                () = events.closed() => return,
            }
        }
    }

    /// One look at the directory: imports the files that are ready.
    pub async fn poll(&mut self) -> Vec<ImportOutcome> {
        let now = scan(&self.dir);
        let records = &self.records;
        let ready = self
            .stability
            .poll(&now, |name| records.get(name).map(|r| r.seen));
        let mut outcomes = Vec::new();
        for name in ready {
            let Some(seen) = now.get(&name).copied() else {
                continue;
            };
            if let Some(outcome) = self.import_file(&name, seen).await {
                outcomes.push(outcome);
            }
        }
        outcomes
    }

    async fn import_file(&mut self, name: &str, seen: Seen) -> Option<ImportOutcome> {
        let path = self.dir.join(name);
        let compression = Compression::of(name)?;
        let started = tokio::time::Instant::now();
        let digest = match file_digest(&path).await {
            Ok(d) => d,
            Err(e) => {
                // Gone or unreadable between the stat and now: look again next poll.
                tracing::debug!(file = %path.display(), error = %e, "cannot read image tarball");
                return None;
            }
        };
        if let Some(record) = self.records.get_mut(name)
            && record.digest == digest
        {
            // Touched but not changed: nothing to import.
            record.seen = seen;
            self.save_state();
            return None;
        }
        self.imports += 1;
        let result = self.importer.import_stream(&path, compression).await;
        let elapsed = started.elapsed();
        let (images, error) = match &result {
            Ok(images) => {
                tracing::info!(file = %path.display(), images = ?images, elapsed_ms = elapsed.as_millis() as u64, "imported image tarball");
                (images.clone(), None)
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot import image tarball; not retried until the file changes");
                (Vec::new(), Some(e.to_string()))
            }
        };
        self.records.insert(
            name.to_string(),
            Record {
                seen,
                digest,
                images,
                error,
            },
        );
        self.save_state();
        Some(ImportOutcome {
            file: path,
            result,
            elapsed,
        })
    }

    fn save_state(&self) {
        let records: serde_json::Map<String, Value> = self
            .records
            .iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    json!({
                        "size": r.seen.size,
                        "mtimeNs": r.seen.mtime_ns.to_string(),
                        "digest": r.digest,
                        "images": r.images,
                        "error": r.error,
                    }),
                )
            })
            .collect();
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let data = serde_json::to_vec_pretty(&Value::Object(records)).unwrap_or_default();
        if let Err(e) = std::fs::write(&tmp, data).and_then(|()| std::fs::rename(&tmp, &path)) {
            tracing::warn!(file = %path.display(), error = %e, "cannot save which images were imported");
        }
    }
}

impl ImageImporter {
    /// Imports every image of the tarball at `path` (decompressed as `compression` says) into
    /// the `k8s.io` namespace; returns their names as `ctr` printed them.
    pub async fn import_stream(
        &self,
        path: &Path,
        compression: Compression,
    ) -> Result<Vec<String>, Error> {
        let ctr_err = |source| Error::Ctr {
            ctr: self.ctr.clone(),
            tarball: path.to_path_buf(),
            source,
        };
        let mut ctr = tokio::process::Command::new(&self.ctr);
        ctr.arg("--address")
            .arg(&self.socket)
            .args(["-n", CRI_NAMESPACE, "images", "import", "--all-platforms"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut decompressor = None;
        match compression.decompressor() {
            None => {
                ctr.arg(path).stdin(Stdio::null());
            }
            Some((binary, package)) => {
                let mut child = tokio::process::Command::new(binary)
                    .arg("-dc")
                    .arg(path)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|source| Error::Decompress {
                        tarball: path.to_path_buf(),
                        message: format!(
                            "cannot run {binary}: {source} (it comes with the Debian package `{package}`)"
                        ),
                    })?;
                let stdout: Stdio = child
                    .stdout
                    .take()
                    .and_then(|s| s.try_into().ok())
                    .unwrap_or_else(Stdio::null);
                ctr.arg("-").stdin(stdout);
                decompressor = Some((binary, child));
            }
        }
        let output = ctr.spawn().map_err(ctr_err)?.wait_with_output().await;
        if let Some((binary, child)) = decompressor {
            let out = child.wait_with_output().await.map_err(ctr_err)?;
            if !out.status.success() {
                return Err(Error::Decompress {
                    tarball: path.to_path_buf(),
                    message: format!(
                        "{binary} -dc failed with {}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                });
            }
        }
        let output = output.map_err(ctr_err)?;
        if !output.status.success() {
            return Err(Error::Import {
                socket: self.socket.clone(),
                tarball: path.to_path_buf(),
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(imported_names(&String::from_utf8_lossy(&output.stdout)))
    }
}

/// Waits (up to `timeout`) until CRI `ImageStatus` reports every image the successful
/// `outcomes` imported — the CRI plugin learns of imports from containerd's events, so a pod
/// started right after an import could otherwise miss the image and try to pull it — and
/// turns an outcome whose image CRI never reports into [`Error::NotVisible`]. Used at start,
/// after [`ImagesDir::import_all_once`], before pods start.
pub async fn confirm_served(
    runtime: &dyn crate::cri::Runtime,
    outcomes: &mut [ImportOutcome],
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    for outcome in outcomes.iter_mut() {
        let Ok(names) = &outcome.result else { continue };
        let mut missing = None;
        for name in names {
            loop {
                match runtime.image_status(name).await {
                    Ok(Some(_)) => break,
                    Ok(None) | Err(_) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok(None) | Err(_) => {
                        missing = Some(name.clone());
                        break;
                    }
                }
            }
            if missing.is_some() {
                break;
            }
        }
        if let Some(name) = missing {
            tracing::warn!(file = %outcome.file.display(), image = %name, "imported image is not served by CRI");
            outcome.result = Err(Error::NotVisible {
                name,
                tarball: outcome.file.clone(),
            });
        }
    }
}

/// The names in `ctr images import`'s output (`unpacking NAME (sha256:…)...done`).
pub fn imported_names(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("unpacking "))
        .filter_map(|l| l.split(" (").next())
        .map(str::to_string)
        .collect()
}

/// The image tarballs in `dir` and how they look now.
fn scan(dir: &Path) -> BTreeMap<String, Seen> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Compression::of(&name)?;
            let meta = std::fs::metadata(e.path()).ok()?;
            if !meta.is_file() {
                return None;
            }
            let mtime_ns = meta
                .modified()
                .ok()?
                .duration_since(UNIX_EPOCH)
                .ok()?
                .as_nanos();
            Some((
                name,
                Seen {
                    size: meta.len(),
                    mtime_ns,
                },
            ))
        })
        .collect()
}

async fn file_digest(path: &Path) -> std::io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(path)?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
        }
        let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!("sha256:{hex}"))
    })
    .await
    .map_err(std::io::Error::other)?
}

fn load_state(path: &Path) -> BTreeMap<String, Record> {
    let Ok(data) = std::fs::read(path) else {
        return BTreeMap::new();
    };
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&data) else {
        tracing::warn!(file = %path.display(), "ignoring an unreadable images state file");
        return BTreeMap::new();
    };
    map.into_iter()
        .filter_map(|(name, v)| {
            let record = Record {
                seen: Seen {
                    size: v["size"].as_u64()?,
                    mtime_ns: v["mtimeNs"].as_str()?.parse().ok()?,
                },
                digest: v["digest"].as_str()?.to_string(),
                images: v["images"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                error: v["error"].as_str().map(str::to_string),
            };
            Some((name, record))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(size: u64, mtime_ns: u128) -> Seen {
        Seen { size, mtime_ns }
    }

    fn view(files: &[(&str, Seen)]) -> BTreeMap<String, Seen> {
        files.iter().map(|(n, s)| (n.to_string(), *s)).collect()
    }

    #[test]
    fn a_file_is_ready_only_when_unchanged_across_two_polls() {
        let mut s = Stability::default();
        let none = |_: &str| None;
        assert!(s.poll(&view(&[("a.tar", seen(10, 1))]), none).is_empty());
        // Still growing.
        assert!(s.poll(&view(&[("a.tar", seen(20, 2))]), none).is_empty());
        // Same size, newer mtime (rewritten in place).
        assert!(s.poll(&view(&[("a.tar", seen(20, 3))]), none).is_empty());
        assert_eq!(s.poll(&view(&[("a.tar", seen(20, 3))]), none), ["a.tar"]);
    }

    #[test]
    fn imported_files_are_not_ready_again_until_they_change() {
        let mut s = Stability::default();
        let done = |n: &str| (n == "a.tar").then_some(seen(20, 3));
        let v = view(&[("a.tar", seen(20, 3)), ("b.tar", seen(5, 1))]);
        assert!(s.poll(&v, done).is_empty());
        assert_eq!(s.poll(&v, done), ["b.tar"]);
        let changed = view(&[("a.tar", seen(21, 4)), ("b.tar", seen(5, 1))]);
        assert_eq!(s.poll(&changed, done), ["b.tar"]);
        assert_eq!(s.poll(&changed, done), ["a.tar", "b.tar"]);
    }

    #[test]
    fn a_file_that_went_away_and_came_back_waits_again() {
        let mut s = Stability::default();
        let none = |_: &str| None;
        let v = view(&[("a.tar", seen(1, 1))]);
        assert!(s.poll(&v, none).is_empty());
        assert!(s.poll(&view(&[]), none).is_empty());
        assert!(s.poll(&v, none).is_empty());
        assert_eq!(s.poll(&v, none), ["a.tar"]);
    }

    #[test]
    fn names_select_the_compression_and_skip_partial_copies() {
        assert_eq!(Compression::of("a.tar"), Some(Compression::None));
        assert_eq!(Compression::of("a.oci.tar.gz"), Some(Compression::Gzip));
        assert_eq!(Compression::of("a.tgz"), Some(Compression::Gzip));
        assert_eq!(Compression::of("a.tar.zst"), Some(Compression::Zstd));
        for skipped in [
            ".a.tar",
            "a.tar.part",
            "a.tar.tmp",
            "a.zip",
            ".imported",
            "a",
        ] {
            assert_eq!(Compression::of(skipped), None, "{skipped}");
        }
    }

    #[test]
    fn ctr_output_gives_the_image_names() {
        let out =
            "unpacking example.com/a:1 (sha256:59fa)...done\nunpacking b:2 (sha256:1)...done\n";
        assert_eq!(imported_names(out), ["example.com/a:1", "b:2"]);
    }

    #[test]
    fn the_state_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut images = ImagesDir::new(dir.path(), ImageImporter::new("/nonexistent.sock"));
        images.records.insert(
            "a.tar".into(),
            Record {
                seen: seen(7, u128::from(u64::MAX) + 5),
                digest: "sha256:00".into(),
                images: vec!["x:1".into()],
                error: None,
            },
        );
        images.records.insert(
            "b.tar".into(),
            Record {
                seen: seen(1, 2),
                digest: "sha256:01".into(),
                images: vec![],
                error: Some("bad".into()),
            },
        );
        images.save_state();
        let again = ImagesDir::new(dir.path(), ImageImporter::new("/nonexistent.sock"));
        assert_eq!(again.records, images.records);
    }
}
