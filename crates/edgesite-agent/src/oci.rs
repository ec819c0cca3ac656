//! OCI image-layout tarballs built from host files, so a node needs no registry: the agent's own
//! pause image, and the test images of the testkit. One uncompressed layer, deterministic bytes
//! (fixed mtimes and owners), so the same inputs always give the same digests.
//!
//! This module has no IO beyond reading the host files it is given and writing the tarball; it is
//! compiled without the `runtime` feature, which is how the testkit uses it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Media type of an OCI image index (`index.json`).
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of an OCI image manifest.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image config.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an uncompressed layer.
pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// The annotation OCI tools read the image's reference from.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation `ctr images import` takes the full image name from.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// The name of the agent's pause image (the CRI plugin's `sandbox_image`).
pub const PAUSE_IMAGE: &str = "edgesite.io/pause:1";

/// Where busybox-static (Debian `busybox-static`) installs its binary.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host file to put into the image cannot be read.
    #[error(
        "cannot read {path} for the image {image}: {source} (is the package that ships it installed? busybox is in `busybox-static`)"
    )]
    ReadSource {
        /// The image being built.
        image: String,
        /// The host file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The tarball cannot be written.
    #[error("cannot write the OCI tarball {path}: {source}")]
    Write {
        /// The tarball.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A path inside the image is not relative and normal (`bin/sh`, not `/bin/../sh`).
    #[error("the image path {0:?} must be relative and without `..`")]
    BadPath(String),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
enum Entry {
    File { data: Vec<u8>, mode: u32 },
    Symlink { target: String },
    Dir,
}

/// An image of one layer, described file by file, then written as an OCI image-layout tarball
/// that `ctr images import` understands.
///
/// ```no_run
/// use edgesite_agent::oci::ImageBuilder;
/// let image = ImageBuilder::new("edgesite.io/busybox:1")
///     .host_file("bin/busybox", "/bin/busybox", 0o755)?
///     .symlink("bin/sh", "busybox")
///     .entrypoint(["/bin/busybox"])
///     .write(std::path::Path::new("/tmp/busybox.tar"))?;
/// println!("{}", image.manifest_digest);
/// # Ok::<(), edgesite_agent::oci::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    name: String,
    entries: BTreeMap<String, Entry>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
}

/// What [`ImageBuilder::write`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// The image name, as in the annotations.
    pub name: String,
    /// The tarball.
    pub path: PathBuf,
    /// `sha256:…` of the manifest.
    pub manifest_digest: String,
    /// `sha256:…` of the config: the image id containerd and CRI report.
    pub config_digest: String,
    /// `sha256:…` of the (uncompressed) layer, also its `diff_id`.
    pub layer_digest: String,
}

impl ImageBuilder {
    /// An empty image named `name` (`edgesite.io/pause:1`), with `PATH` set to the usual
    /// directories.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            entries: BTreeMap::new(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        }
    }

    /// Adds a file with these bytes at `path` (relative, `bin/busybox`).
    pub fn file(mut self, path: &str, data: Vec<u8>, mode: u32) -> Result<Self> {
        let path = clean(path)?;
        self.parents(&path);
        self.entries.insert(path, Entry::File { data, mode });
        Ok(self)
    }

    /// Adds a copy of the host file `source` at `path`.
    pub fn host_file(self, path: &str, source: impl AsRef<Path>, mode: u32) -> Result<Self> {
        let source = source.as_ref();
        let data = std::fs::read(source).map_err(|e| Error::ReadSource {
            image: self.name.clone(),
            path: source.to_path_buf(),
            source: e,
        })?;
        self.file(path, data, mode)
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    ///
    /// # Panics
    ///
    /// When `path` is not relative and normal: link paths are written by the caller's code.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        #[allow(clippy::expect_used)] // a programming error, not an input error
        let path = clean(path).expect("symlink paths are literals of the caller");
        self.parents(&path);
        self.entries.insert(
            path,
            Entry::Symlink {
                target: target.into(),
            },
        );
        self
    }

    /// Sets the entrypoint.
    pub fn entrypoint<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.entrypoint = args.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the default arguments (`Cmd`).
    pub fn cmd<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.cmd = args.into_iter().map(Into::into).collect();
        self
    }

    fn parents(&mut self, path: &str) {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let dir = &path[..at + i];
            self.entries.entry(dir.to_string()).or_insert(Entry::Dir);
            at += i + 1;
        }
    }

    /// The layer: a tar of the entries in path order, owned by root, mtime 0.
    fn layer(&self) -> io::Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            let mut header = tar::Header::new_ustar();
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            match entry {
                Entry::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_size(0);
                    tar.append_data(&mut header, format!("{path}/"), io::empty())?;
                }
                Entry::File { data, mode } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    tar.append_data(&mut header, path, data.as_slice())?;
                }
                Entry::Symlink { target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    tar.append_link(&mut header, path, target)?;
                }
            }
        }
        tar.into_inner()
    }

    /// The layer and the config blob, with their digests.
    fn layer_and_config(&self) -> io::Result<(Vec<u8>, String, Vec<u8>, String)> {
        let layer = self.layer()?;
        let layer_digest = digest(&layer);
        let (os, architecture) = platform();
        let mut config = json!({
            "architecture": architecture,
            "os": os,
            "config": { "Env": self.env },
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
            "history": [{ "created_by": "edgesite-agent oci::ImageBuilder" }],
        });
        if !self.entrypoint.is_empty() {
            config["config"]["Entrypoint"] = json!(self.entrypoint);
        }
        if !self.cmd.is_empty() {
            config["config"]["Cmd"] = json!(self.cmd);
        }
        let config = to_bytes(&config);
        let config_digest = digest(&config);
        Ok((layer, layer_digest, config, config_digest))
    }

    /// Writes the image as a docker-archive tarball, the format of `docker save`:
    /// `manifest.json` (with the name in `RepoTags`), the config as `<hex>.json` and the layer
    /// as `<hex>/layer.tar`. The returned manifest digest is empty (the archive has none).
    pub fn write_docker_archive(&self, path: &Path) -> Result<BuiltImage> {
        let write_err = |e| Error::Write {
            path: path.to_path_buf(),
            source: e,
        };
        let (layer, layer_digest, config, config_digest) =
            self.layer_and_config().map_err(write_err)?;
        let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
        let config_name = format!("{}.json", hex(&config_digest));
        let layer_name = format!("{}/layer.tar", hex(&layer_digest));
        let manifest = to_bytes(&json!([{
            "Config": config_name,
            "RepoTags": [self.name],
            "Layers": [layer_name],
        }]));
        write_tar(
            path,
            &[
                (config_name.as_str(), config.as_slice()),
                (layer_name.as_str(), layer.as_slice()),
                ("manifest.json", manifest.as_slice()),
            ],
        )
        .map_err(write_err)?;
        Ok(BuiltImage {
            name: self.name.clone(),
            path: path.to_path_buf(),
            manifest_digest: String::new(),
            config_digest,
            layer_digest,
        })
    }

    /// Writes the OCI image-layout tarball (`oci-layout`, `index.json`, `blobs/sha256/…`) to
    /// `path`.
    pub fn write(&self, path: &Path) -> Result<BuiltImage> {
        let write_err = |e| Error::Write {
            path: path.to_path_buf(),
            source: e,
        };
        let (layer, layer_digest, config, config_digest) =
            self.layer_and_config().map_err(write_err)?;
        let (os, architecture) = platform();
        let manifest = to_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": descriptor(MEDIA_TYPE_CONFIG, &config_digest, config.len()),
            "layers": [descriptor(MEDIA_TYPE_LAYER, &layer_digest, layer.len())],
        }));
        let manifest_digest = digest(&manifest);
        let mut manifest_desc = descriptor(MEDIA_TYPE_MANIFEST, &manifest_digest, manifest.len());
        manifest_desc["annotations"] = json!({
            ANNOTATION_REF_NAME: self.name,
            ANNOTATION_CONTAINERD_NAME: self.name,
        });
        manifest_desc["platform"] = json!({ "os": os, "architecture": architecture });
        let index = to_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_INDEX,
            "manifests": [manifest_desc],
        }));

        let blobs: Vec<(String, &Vec<u8>)> = [
            (&layer_digest, &layer),
            (&config_digest, &config),
            (&manifest_digest, &manifest),
        ]
        .into_iter()
        .map(|(d, data)| (blob_path(d), data))
        .collect();
        let mut files: Vec<(&str, &[u8])> = vec![
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json", index.as_slice()),
        ];
        files.extend(blobs.iter().map(|(n, d)| (n.as_str(), d.as_slice())));
        write_tar(path, &files).map_err(write_err)?;
        Ok(BuiltImage {
            name: self.name.clone(),
            path: path.to_path_buf(),
            manifest_digest,
            config_digest,
            layer_digest,
        })
    }
}

/// Writes a tarball of these files (mode 0644, mtime 0, in this order) to `path`.
fn write_tar(path: &Path, files: &[(&str, &[u8])]) -> io::Result<()> {
    let file = File::create(path)?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    for (name, data) in files {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(0);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        tar.append_data(&mut header, name, *data)?;
    }
    tar.into_inner()?.flush()
}

/// The agent's pause image: the host's static busybox, sleeping for ever as the sandbox's
/// PID 1 (it only has to hold the pod's namespaces open).
pub fn pause_image(busybox: &Path) -> Result<ImageBuilder> {
    Ok(ImageBuilder::new(PAUSE_IMAGE)
        .host_file("bin/busybox", busybox, 0o755)?
        .entrypoint(["/bin/busybox", "sleep", "2147483647"]))
}

/// A busybox image named `name`: the host's static busybox at `/bin/busybox`, with `/bin/sh`
/// linked to it, entrypoint `/bin/busybox`, default command `sh`.
pub fn busybox_image(name: &str, busybox: &Path) -> Result<ImageBuilder> {
    let mut image = ImageBuilder::new(name)
        .host_file("bin/busybox", busybox, 0o755)?
        .symlink("bin/sh", "busybox");
    for applet in busybox_applets(busybox) {
        image = image.symlink(&applet, "/bin/busybox");
    }
    Ok(image.entrypoint(["/bin/busybox"]).cmd(["sh"]))
}

/// Where busybox installs its applets (`bin/cat`, `usr/bin/wget`, ...), as its
/// `--list-full` says, so `kubectl exec POD -- cat FILE` finds them; none when it cannot say.
fn busybox_applets(busybox: &Path) -> Vec<String> {
    let Ok(out) = std::process::Command::new(busybox)
        .arg("--list-full")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !matches!(*l, "bin/busybox" | "bin/sh"))
        .filter_map(|l| clean(l).ok())
        .collect()
}

fn clean(path: &str) -> Result<String> {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty()
        || trimmed.starts_with('/')
        || trimmed
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(Error::BadPath(path.to_string()));
    }
    Ok(trimmed.to_string())
}

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> Value {
    json!({ "mediaType": media_type, "digest": digest, "size": size })
}

fn to_bytes(value: &Value) -> Vec<u8> {
    // Serializing a `Value` cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// The OCI `os` and `architecture` of this build.
pub fn platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    (std::env::consts::OS, arch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read_tar(path: &Path) -> BTreeMap<String, (tar::EntryType, Vec<u8>, Option<String>)> {
        let mut out = BTreeMap::new();
        let mut archive = tar::Archive::new(File::open(path).unwrap());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let kind = entry.header().entry_type();
            let link = entry
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.insert(name, (kind, data, link));
        }
        out
    }

    fn read_tar_bytes(data: &[u8]) -> BTreeMap<String, (tar::EntryType, Vec<u8>, Option<String>)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layer.tar");
        std::fs::write(&path, data).unwrap();
        read_tar(&path)
    }

    #[test]
    fn layout_links_index_manifest_config_and_layer_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("img.tar");
        let built = ImageBuilder::new("edgesite.io/test:1")
            .file("bin/tool", b"#!binary".to_vec(), 0o755)
            .unwrap()
            .symlink("bin/sh", "tool")
            .entrypoint(["/bin/tool", "run"])
            .write(&out)
            .unwrap();
        let files = read_tar(&out);
        assert_eq!(
            files["oci-layout"].1,
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()
        );
        // Every blob is stored under its own sha256.
        for (name, (_, data, _)) in &files {
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                assert_eq!(digest(data), format!("sha256:{hex}"), "{name}");
            }
        }
        let index: Value = serde_json::from_slice(&files["index.json"].1).unwrap();
        assert_eq!(index["mediaType"], MEDIA_TYPE_INDEX);
        let m = &index["manifests"][0];
        assert_eq!(m["digest"], built.manifest_digest);
        assert_eq!(m["annotations"][ANNOTATION_REF_NAME], "edgesite.io/test:1");
        assert_eq!(
            m["annotations"][ANNOTATION_CONTAINERD_NAME],
            "edgesite.io/test:1"
        );
        let blob = |d: &str| &files[&blob_path(d)].1;
        assert_eq!(m["size"], blob(&built.manifest_digest).len());
        let manifest: Value = serde_json::from_slice(blob(&built.manifest_digest)).unwrap();
        assert_eq!(manifest["config"]["digest"], built.config_digest);
        assert_eq!(manifest["layers"][0]["digest"], built.layer_digest);
        assert_eq!(manifest["layers"][0]["mediaType"], MEDIA_TYPE_LAYER);
        let config: Value = serde_json::from_slice(blob(&built.config_digest)).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], built.layer_digest);
        assert_eq!(config["config"]["Entrypoint"], json!(["/bin/tool", "run"]));
        assert_eq!(config["architecture"], platform().1);

        let layer = read_tar_bytes(blob(&built.layer_digest));
        assert_eq!(layer["bin/"].0, tar::EntryType::Directory);
        assert_eq!(layer["bin/tool"].1, b"#!binary".to_vec());
        assert_eq!(layer["bin/sh"].2.as_deref(), Some("tool"));
    }

    #[test]
    fn same_inputs_give_the_same_digests() {
        let dir = tempfile::tempdir().unwrap();
        let build = |n: &str| {
            ImageBuilder::new("edgesite.io/x:1")
                .file("a/b/c", vec![1, 2, 3], 0o644)
                .unwrap()
                .write(&dir.path().join(n))
                .unwrap()
        };
        let (a, b) = (build("a.tar"), build("b.tar"));
        assert_eq!(a.manifest_digest, b.manifest_digest);
        assert_eq!(
            std::fs::read(&a.path).unwrap(),
            std::fs::read(&b.path).unwrap()
        );
    }

    #[test]
    fn the_busybox_image_links_every_applet_to_busybox() {
        let image = busybox_image("edgesite.io/busybox:1", Path::new(HOST_BUSYBOX)).unwrap();
        let link = |p: &str| match image.entries.get(p) {
            Some(Entry::Symlink { target }) => Some(target.clone()),
            _ => None,
        };
        assert_eq!(link("bin/sh").as_deref(), Some("busybox"));
        for applet in ["bin/cat", "bin/sleep", "usr/sbin/httpd", "usr/bin/nc"] {
            assert_eq!(link(applet).as_deref(), Some("/bin/busybox"), "{applet}");
        }
        assert!(matches!(
            image.entries.get("bin/busybox"),
            Some(Entry::File { .. })
        ));
    }

    #[test]
    fn a_missing_host_file_names_the_package() {
        let err = pause_image(Path::new("/nonexistent/busybox")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent/busybox"), "{text}");
        assert!(text.contains("busybox-static"), "{text}");
    }

    #[test]
    fn image_paths_must_be_relative_and_normal() {
        for bad in ["/bin/sh", "a/../b", "", "a//b"] {
            assert!(
                matches!(
                    ImageBuilder::new("x").file(bad, vec![], 0o644),
                    Err(Error::BadPath(_))
                ),
                "{bad}"
            );
        }
    }
}
