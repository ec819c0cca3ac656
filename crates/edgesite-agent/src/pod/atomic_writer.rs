//! kubelet's atomic writer (`pkg/volume/util/atomic_writer.go`) for configMap, secret,
//! downwardAPI and projected volumes: the files of one version live in a timestamped
//! directory `..2026_12_07_15_04_05.<random>`, `..data` is a symlink to the current one and
//! every top-level name is a symlink through `..data`. A new version is written aside and
//! switched to by renaming a new `..data` over the old, so a reader sees the old files or the
//! new ones, never a mix. Writing what is already there changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path};

use edgesite_clock::Clock;

/// The symlink to the current version's directory.
pub const DATA_DIR: &str = "..data";
const DATA_DIR_TMP: &str = "..data_tmp";

/// One file of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    /// Its content.
    pub data: Vec<u8>,
    /// Its permission bits.
    pub mode: u32,
}

/// Relative path → file.
pub type Payload = BTreeMap<String, FileProjection>;

/// Checks a payload path as upstream: relative, no `..` element, not starting with `..`
/// (the writer's own names).
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("invalid path: must not be empty".into());
    }
    if path.len() > 4096 {
        return Err(format!(
            "invalid path: must be less than or equal to 4096 characters: {path:?}"
        ));
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(format!("invalid path: must be relative path: {path}"));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("invalid path: must not contain '..': {path}"));
    }
    if path.starts_with("..") {
        return Err(format!("invalid path: must not start with '..': {path}"));
    }
    Ok(())
}

fn top_level(path: &str) -> &str {
    path.split('/')
        .find(|c| !c.is_empty() && *c != ".")
        .unwrap_or(path)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Makes `target` hold exactly `payload`; `Ok(true)` when it wrote a new version,
/// `Ok(false)` when the current one already matched.
pub fn write(target: &Path, payload: &Payload, clock: &dyn Clock) -> io::Result<bool> {
    for path in payload.keys() {
        validate_path(path).map_err(invalid)?;
    }
    std::fs::create_dir_all(target)?;
    let data_link = target.join(DATA_DIR);
    let old_dir = std::fs::read_link(&data_link)
        .ok()
        .and_then(|l| l.to_str().map(str::to_owned))
        .filter(|l| l.starts_with("..") && !l.contains('/'));
    let old_files = match &old_dir {
        Some(d) => read_tree(&target.join(d)).unwrap_or_default(),
        None => Payload::new(),
    };
    if old_dir.is_some() && &old_files == payload {
        link_visible(target, payload)?;
        return Ok(false);
    }

    let new_name = format!(
        "..{}.{}",
        timestamp(clock),
        edgesite_clock::random::name_suffix(9)
    );
    let new_dir = target.join(&new_name);
    std::fs::create_dir(&new_dir)?;
    std::fs::set_permissions(&new_dir, std::fs::Permissions::from_mode(0o755))?;
    for (path, file) in payload {
        let dest = new_dir.join(path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dest)?;
        f.write_all(&file.data)?;
        f.sync_all()?;
        // Explicitly: the mode bits must not depend on the agent's umask.
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(file.mode & 0o7777))?;
    }

    let tmp_link = target.join(DATA_DIR_TMP);
    match std::fs::remove_file(&tmp_link) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(&new_name, &tmp_link)?;
    std::fs::rename(&tmp_link, &data_link)?;

    link_visible(target, payload)?;
    let keep: BTreeSet<&str> = payload.keys().map(|p| top_level(p)).collect();
    for old in old_files.keys().map(|p| top_level(p)) {
        if keep.contains(old) {
            continue;
        }
        let link = target.join(old);
        if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(&link)?;
        }
    }
    // The previous version, and any left by a write that crashed half-way.
    for entry in std::fs::read_dir(target)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("..")
            && name != DATA_DIR
            && name != new_name
            && entry.file_type()?.is_dir()
        {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(true)
}

/// `..data/<name>` symlinks for the payload's top-level names that lack one.
fn link_visible(target: &Path, payload: &Payload) -> io::Result<()> {
    let names: BTreeSet<&str> = payload.keys().map(|p| top_level(p)).collect();
    for name in names {
        let link = target.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA_DIR).join(name), &link)?;
        }
    }
    Ok(())
}

/// The regular files under `dir` (not following symlinks) as a payload.
fn read_tree(dir: &Path) -> io::Result<Payload> {
    fn walk(root: &Path, dir: &Path, out: &mut Payload) -> io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                walk(root, &path, out)?;
            } else if meta.is_file() {
                let rel = path
                    .strip_prefix(root)
                    .map_err(|e| invalid(e.to_string()))?
                    .to_string_lossy()
                    .into_owned();
                out.insert(
                    rel,
                    FileProjection {
                        data: std::fs::read(&path)?,
                        mode: meta.permissions().mode() & 0o7777,
                    },
                );
            }
        }
        Ok(())
    }
    let mut out = Payload::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// `2026_12_07_15_04_05`, upstream's layout of the version directory's time.
fn timestamp(clock: &dyn Clock) -> String {
    edgesite_api::time::format_rfc3339(clock.unix_seconds())
        .trim_end_matches('Z')
        .replace(['-', 'T', ':'], "_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgesite_clock::SystemClock;

    fn file(data: &str, mode: u32) -> FileProjection {
        FileProjection {
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn paths_are_validated_as_upstream() {
        assert!(validate_path("a").is_ok());
        assert!(validate_path("a/b/c.txt").is_ok());
        assert!(validate_path("a..b").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "..data", "..x/y"] {
            assert!(validate_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn writes_swap_the_data_link_and_keep_unchanged_payloads() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("vol");
        let v1 = Payload::from([
            ("a".to_owned(), file("1", 0o644)),
            ("sub/b".to_owned(), file("2", 0o400)),
        ]);
        assert!(write(&target, &v1, &SystemClock).unwrap());
        let first = std::fs::read_link(target.join(DATA_DIR)).unwrap();
        let name = first.to_str().unwrap();
        assert!(name.starts_with("..20"), "{name}");
        assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(target.join("sub/b")).unwrap(), "2");
        assert_eq!(
            std::fs::read_link(target.join("sub")).unwrap(),
            Path::new("..data/sub")
        );
        let mode = std::fs::metadata(target.join("sub/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o400);

        assert!(
            !write(&target, &v1, &SystemClock).unwrap(),
            "rewrote an unchanged payload"
        );
        assert_eq!(std::fs::read_link(target.join(DATA_DIR)).unwrap(), first);

        let v2 = Payload::from([("c".to_owned(), file("3", 0o644))]);
        assert!(write(&target, &v2, &SystemClock).unwrap());
        let second = std::fs::read_link(target.join(DATA_DIR)).unwrap();
        assert_ne!(second, first);
        assert_eq!(std::fs::read_to_string(target.join("c")).unwrap(), "3");
        assert!(
            std::fs::symlink_metadata(target.join("a")).is_err(),
            "old name left"
        );
        assert!(
            std::fs::symlink_metadata(target.join("sub")).is_err(),
            "old name left"
        );
        assert!(!target.join(&first).exists(), "old version left");
        let names: Vec<_> = std::fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }
}
