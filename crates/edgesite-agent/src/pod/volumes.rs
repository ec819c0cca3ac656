//! The pods' volumes on the host, [`HostVolumes`]: each under
//! `<pod dir>/volumes/<plugin>/<name>` as kubelet lays them out (`kubernetes.io~empty-dir`,
//! `~configmap`, `~secret`, `~downward-api`, `~projected`); hostPath volumes are the host's
//! path itself, checked against their `type`.
//!
//! Setting up is two steps: [`plan`] reads the pod and the cached objects into what each
//! volume must be (no IO, so a missing ConfigMap is reported before anything is touched),
//! then the plan is applied on a blocking thread. Secret and projected volumes are tmpfs
//! (their contents never reach the disk), as are `medium: Memory` emptyDirs; configMap,
//! secret, downwardAPI and projected contents go through kubelet's atomic writer, so running
//! setup again follows the objects' changes and rewrites nothing when nothing changed.
//!
//! Not here: fsGroup ownership of volume files (they stay root's, modes as the spec says),
//! emptyDir `sizeLimit` on disk (kubelet enforces it by eviction), projected
//! `serviceAccountToken` and `clusterTrustBundle` sources (skipped with a warning: the
//! service account admission adds a token source to nearly every pod, which must still run),
//! and every network or claim-based volume type (refused as unsupported).

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use edgesite_clock::SystemClock;
use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, KeyToPath, Pod, Volume};
use nix::mount::{MntFlags, MsFlags};

use super::atomic_writer::{self, FileProjection, Payload};
use super::env::metadata_field;
use super::resources::resource_field;
use super::{NodeContext, Objects, PreparedVolume, PreparedVolumes, VolumeError, VolumeManager};

/// Mode of projected files whose volume sets no `defaultMode`.
pub const DEFAULT_MODE: i32 = 0o644;

/// [`VolumeManager`] on the host's filesystem under the node's pods directory.
#[derive(Debug, Clone)]
pub struct HostVolumes {
    node: NodeContext,
}

/// What one volume must be on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePlan {
    /// The volume's name in the pod.
    pub name: String,
    /// What to make.
    pub kind: PlanKind,
}

/// The kinds of volume [`HostVolumes`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanKind {
    /// A directory writable by anyone; on a tmpfs of `size` bytes (unbounded for `None`)
    /// when `memory`.
    EmptyDir {
        /// Where.
        dir: PathBuf,
        /// `medium: Memory`.
        memory: bool,
        /// The tmpfs size.
        size: Option<i64>,
    },
    /// The host's `path`, checked (or created) according to `type_`.
    HostPath {
        /// The host path.
        path: PathBuf,
        /// `DirectoryOrCreate`, `Directory`, `FileOrCreate`, `File`, `Socket`,
        /// `CharDevice`, `BlockDevice` or `""`.
        type_: String,
    },
    /// Files written atomically, read-only in containers.
    Files {
        /// Where.
        dir: PathBuf,
        /// On a tmpfs (secrets).
        tmpfs: bool,
        /// The files.
        payload: Payload,
    },
}

impl HostVolumes {
    /// Volumes under `node.pods_dir`.
    pub fn new(node: NodeContext) -> Self {
        Self { node }
    }
}

fn check_name(what: &str, name: &str) -> Result<(), VolumeError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(VolumeError::Invalid {
            volume: name.to_owned(),
            reason: format!("{what} {name:?} cannot name a directory"),
        });
    }
    Ok(())
}

/// What the volumes of `pod` must be, from the pod and the cached objects.
pub fn plan(
    pod: &Pod,
    objects: &dyn Objects,
    node: &NodeContext,
) -> Result<Vec<VolumePlan>, VolumeError> {
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    check_name("pod uid", uid)?;
    let volumes_dir = node.pod_dir(uid).join("volumes");
    let mut plans = Vec::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        check_name("volume name", &volume.name)?;
        let dir = |plugin: &str| volumes_dir.join(plugin).join(&volume.name);
        let kind = if let Some(e) = &volume.empty_dir {
            let memory = e.medium.as_deref() == Some("Memory");
            let size = match &e.size_limit {
                Some(q) => Some(parse_bytes(&volume.name, &q.0)?),
                None => Some(node.allocatable.memory_bytes).filter(|&b| b > 0),
            };
            PlanKind::EmptyDir {
                dir: dir("kubernetes.io~empty-dir"),
                memory,
                size,
            }
        } else if let Some(h) = &volume.host_path {
            PlanKind::HostPath {
                path: PathBuf::from(&h.path),
                type_: h.type_.clone().unwrap_or_default(),
            }
        } else if let Some(c) = &volume.config_map {
            let mut payload = Payload::new();
            let default_mode = c.default_mode.unwrap_or(DEFAULT_MODE);
            config_map_files(
                pod,
                objects,
                volume,
                &c.name,
                c.items.as_deref(),
                c.optional == Some(true),
                default_mode,
                &mut payload,
            )?;
            PlanKind::Files {
                dir: dir("kubernetes.io~configmap"),
                tmpfs: false,
                payload,
            }
        } else if let Some(s) = &volume.secret {
            let mut payload = Payload::new();
            let default_mode = s.default_mode.unwrap_or(DEFAULT_MODE);
            let name = s.secret_name.clone().unwrap_or_default();
            secret_files(
                pod,
                objects,
                volume,
                &name,
                s.items.as_deref(),
                s.optional == Some(true),
                default_mode,
                &mut payload,
            )?;
            PlanKind::Files {
                dir: dir("kubernetes.io~secret"),
                tmpfs: true,
                payload,
            }
        } else if let Some(d) = &volume.downward_api {
            let mut payload = Payload::new();
            let default_mode = d.default_mode.unwrap_or(DEFAULT_MODE);
            downward_files(
                pod,
                node,
                volume,
                d.items.as_deref(),
                default_mode,
                &mut payload,
            )?;
            PlanKind::Files {
                dir: dir("kubernetes.io~downward-api"),
                tmpfs: false,
                payload,
            }
        } else if let Some(p) = &volume.projected {
            let mut payload = Payload::new();
            let default_mode = p.default_mode.unwrap_or(DEFAULT_MODE);
            for source in p.sources.iter().flatten() {
                if let Some(c) = &source.config_map {
                    config_map_files(
                        pod,
                        objects,
                        volume,
                        &c.name,
                        c.items.as_deref(),
                        c.optional == Some(true),
                        default_mode,
                        &mut payload,
                    )?;
                }
                if let Some(s) = &source.secret {
                    secret_files(
                        pod,
                        objects,
                        volume,
                        &s.name,
                        s.items.as_deref(),
                        s.optional == Some(true),
                        default_mode,
                        &mut payload,
                    )?;
                }
                if let Some(d) = &source.downward_api {
                    downward_files(
                        pod,
                        node,
                        volume,
                        d.items.as_deref(),
                        default_mode,
                        &mut payload,
                    )?;
                }
                if source.service_account_token.is_some() || source.cluster_trust_bundle.is_some() {
                    tracing::warn!(
                        pod = pod.metadata.name.as_deref().unwrap_or(""),
                        volume = %volume.name,
                        "projected serviceAccountToken and clusterTrustBundle sources are not \
                         supported yet: skipped"
                    );
                }
            }
            PlanKind::Files {
                dir: dir("kubernetes.io~projected"),
                tmpfs: true,
                payload,
            }
        } else {
            return Err(VolumeError::Unsupported {
                volume: volume.name.clone(),
                reason: "only emptyDir, hostPath, configMap, secret, downwardAPI and projected \
                         volumes are supported"
                    .into(),
            });
        };
        plans.push(VolumePlan {
            name: volume.name.clone(),
            kind,
        });
    }
    Ok(plans)
}

fn parse_bytes(volume: &str, q: &str) -> Result<i64, VolumeError> {
    q.parse::<edgesite_api::quantity::Quantity>()
        .map(|q| q.value())
        .map_err(|e| VolumeError::Invalid {
            volume: volume.to_owned(),
            reason: format!("sizeLimit {q:?}: {e}"),
        })
}

fn put(
    volume: &Volume,
    payload: &mut Payload,
    path: &str,
    data: Vec<u8>,
    mode: i32,
) -> Result<(), VolumeError> {
    atomic_writer::validate_path(path).map_err(|reason| VolumeError::Invalid {
        volume: volume.name.clone(),
        reason,
    })?;
    let mode = u32::try_from(mode)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| VolumeError::Invalid {
            volume: volume.name.clone(),
            reason: format!("file mode {mode:o} of {path:?} is not between 0 and 0777"),
        })?;
    payload.insert(path.to_owned(), FileProjection { data, mode });
    Ok(())
}

/// The files of `data` (all keys, or the listed `items`) into `payload`.
#[allow(clippy::too_many_arguments)]
fn key_files(
    volume: &Volume,
    kind: &'static str,
    name: &str,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    optional: bool,
    default_mode: i32,
    payload: &mut Payload,
) -> Result<(), VolumeError> {
    match items {
        None => {
            for (k, v) in data {
                put(volume, payload, &k, v, default_mode)?;
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => put(
                        volume,
                        payload,
                        &item.path,
                        v.clone(),
                        item.mode.unwrap_or(default_mode),
                    )?,
                    None if optional => {}
                    None => {
                        return Err(VolumeError::MissingKey {
                            kind,
                            name: name.to_owned(),
                            key: item.key.clone(),
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn config_map_files(
    pod: &Pod,
    objects: &dyn Objects,
    volume: &Volume,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: bool,
    default_mode: i32,
    payload: &mut Payload,
) -> Result<(), VolumeError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let Some(cm) = objects.config_map(ns, name) else {
        if optional {
            return Ok(());
        }
        return Err(VolumeError::Missing {
            kind: "configmap",
            name: name.to_owned(),
        });
    };
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    data.extend(
        cm.binary_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone())),
    );
    key_files(
        volume,
        "configmap",
        name,
        data,
        items,
        optional,
        default_mode,
        payload,
    )
}

#[allow(clippy::too_many_arguments)]
fn secret_files(
    pod: &Pod,
    objects: &dyn Objects,
    volume: &Volume,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: bool,
    default_mode: i32,
    payload: &mut Payload,
) -> Result<(), VolumeError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let Some(secret) = objects.secret(ns, name) else {
        if optional {
            return Ok(());
        }
        return Err(VolumeError::Missing {
            kind: "secret",
            name: name.to_owned(),
        });
    };
    let data = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    key_files(
        volume,
        "secret",
        name,
        data,
        items,
        optional,
        default_mode,
        payload,
    )
}

fn downward_files(
    pod: &Pod,
    node: &NodeContext,
    volume: &Volume,
    items: Option<&[DownwardAPIVolumeFile]>,
    default_mode: i32,
    payload: &mut Payload,
) -> Result<(), VolumeError> {
    let invalid = |reason: String| VolumeError::Invalid {
        volume: volume.name.clone(),
        reason,
    };
    for item in items.into_iter().flatten() {
        let value = if let Some(f) = &item.field_ref {
            metadata_field(pod, &f.field_path).map_err(invalid)?
        } else if let Some(r) = &item.resource_field_ref {
            let container = r.container_name.as_deref().unwrap_or("");
            resource_field(pod, container, &r.resource, r.divisor.as_ref(), node)
                .map_err(invalid)?
        } else {
            return Err(invalid(format!(
                "downwardAPI item {:?} has neither fieldRef nor resourceFieldRef",
                item.path
            )));
        };
        put(
            volume,
            payload,
            &item.path,
            value.into_bytes(),
            item.mode.unwrap_or(default_mode),
        )?;
    }
    Ok(())
}

fn io_err(volume: &str) -> impl Fn(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        volume: volume.to_owned(),
        source,
    }
}

/// Whether `dir` is a mount point: on another filesystem than its parent.
fn is_mount_point(dir: &Path) -> std::io::Result<bool> {
    let Some(parent) = dir.parent() else {
        return Ok(true);
    };
    Ok(std::fs::symlink_metadata(dir)?.dev() != std::fs::symlink_metadata(parent)?.dev())
}

fn mount_tmpfs(dir: &Path, size: Option<i64>, mode: u32) -> std::io::Result<()> {
    if is_mount_point(dir)? {
        return Ok(());
    }
    let mut data = format!("mode={mode:o}");
    if let Some(size) = size {
        data.push_str(&format!(",size={size}"));
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(std::io::Error::from)
}

fn make_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// Makes the planned volumes; idempotent.
pub fn apply(plans: &[VolumePlan]) -> Result<PreparedVolumes, VolumeError> {
    let mut prepared = PreparedVolumes::default();
    for plan in plans {
        let err = io_err(&plan.name);
        let volume = match &plan.kind {
            PlanKind::EmptyDir { dir, memory, size } => {
                make_dir(dir, 0o777).map_err(&err)?;
                if *memory {
                    mount_tmpfs(dir, *size, 0o777).map_err(&err)?;
                }
                PreparedVolume {
                    host_path: dir.clone(),
                    read_only: false,
                }
            }
            PlanKind::HostPath { path, type_ } => {
                check_host_path(&plan.name, path, type_)?;
                PreparedVolume {
                    host_path: path.clone(),
                    read_only: false,
                }
            }
            PlanKind::Files {
                dir,
                tmpfs,
                payload,
            } => {
                make_dir(dir, 0o755).map_err(&err)?;
                if *tmpfs {
                    mount_tmpfs(dir, None, 0o755).map_err(&err)?;
                }
                atomic_writer::write(dir, payload, &SystemClock).map_err(&err)?;
                PreparedVolume {
                    host_path: dir.clone(),
                    read_only: true,
                }
            }
        };
        prepared.paths.insert(plan.name.clone(), volume);
    }
    Ok(prepared)
}

/// Upstream's hostPath type check (`checkTypeInternal`), creating what the `*OrCreate`
/// types create (a 0755 directory with its parents, an empty 0644 file).
pub fn check_host_path(volume: &str, path: &Path, type_: &str) -> Result<(), VolumeError> {
    use std::os::unix::fs::FileTypeExt as _;
    let err = io_err(volume);
    let meta = std::fs::metadata(path).ok();
    let fail = |what: &str| VolumeError::Invalid {
        volume: volume.to_owned(),
        reason: format!(
            "hostPath type check failed: {} is not {what}",
            path.display()
        ),
    };
    let ft = meta.as_ref().map(|m| m.file_type());
    match type_ {
        "" => {}
        "DirectoryOrCreate" if meta.is_none() => {
            std::fs::create_dir_all(path).map_err(&err)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(&err)?;
        }
        "DirectoryOrCreate" | "Directory" => {
            if !ft.is_some_and(|f| f.is_dir()) {
                return Err(fail("a directory"));
            }
        }
        "FileOrCreate" if meta.is_none() => {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(&err)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(&err)?;
        }
        "FileOrCreate" | "File" => {
            if !ft.is_some_and(|f| f.is_file()) {
                return Err(fail("a file"));
            }
        }
        "Socket" => {
            if !ft.is_some_and(|f| f.is_socket()) {
                return Err(fail("a socket file"));
            }
        }
        "CharDevice" => {
            if !ft.is_some_and(|f| f.is_char_device()) {
                return Err(fail("a character device"));
            }
        }
        "BlockDevice" => {
            if !ft.is_some_and(|f| f.is_block_device()) {
                return Err(fail("a block device"));
            }
        }
        other => {
            return Err(VolumeError::Invalid {
                volume: volume.to_owned(),
                reason: format!("unknown hostPath type {other:?}"),
            });
        }
    }
    Ok(())
}

/// The mount points at or under `dir` in this process's mount table, deepest first.
fn mounts_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut found: Vec<PathBuf> = table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1..i + 4)
                .is_some_and(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts everything under the pod's directory (lazily when busy), then removes it without
/// following symlinks; a mount that stays is an error rather than a deletion through it.
pub fn remove_pod_dir(pod_dir: &Path) -> Result<(), VolumeError> {
    let err = io_err("");
    // A pod directory that is itself a symlink is never followed: only the link goes.
    match std::fs::symlink_metadata(pod_dir) {
        Ok(m) if m.file_type().is_symlink() => return std::fs::remove_file(pod_dir).map_err(&err),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(e)),
    }
    let real = pod_dir.canonicalize().map_err(&err)?;
    for mount in mounts_under(&real).map_err(&err)? {
        match nix::mount::umount2(&mount, MntFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
            Err(nix::errno::Errno::EBUSY) => {
                tracing::warn!(path = %mount.display(), "volume busy: detaching it lazily");
                nix::mount::umount2(&mount, MntFlags::MNT_DETACH)
                    .map_err(|e| err(std::io::Error::from(e)))?;
            }
            Err(e) => return Err(err(std::io::Error::from(e))),
        }
    }
    let left = mounts_under(&real).map_err(&err)?;
    if let Some(m) = left.first() {
        return Err(VolumeError::Io {
            volume: String::new(),
            source: std::io::Error::other(format!(
                "{} is still mounted; not removing {}",
                m.display(),
                real.display()
            )),
        });
    }
    // std's remove_dir_all opens each directory relative to its parent without following
    // symlinks, so a link a container planted in an emptyDir removes only the link.
    match std::fs::remove_dir_all(&real) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Runs file-system work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, VolumeError> + Send + 'static,
) -> Result<T, VolumeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| VolumeError::Io {
            volume: String::new(),
            source: std::io::Error::other(e),
        })?
}

#[async_trait::async_trait]
impl VolumeManager for HostVolumes {
    async fn setup(
        &self,
        pod: &Pod,
        objects: &dyn Objects,
    ) -> Result<PreparedVolumes, VolumeError> {
        let plans = plan(pod, objects, &self.node)?;
        blocking(move || apply(&plans)).await
    }

    async fn release(&self, pod_uid: &str) -> Result<(), VolumeError> {
        check_name("pod uid", pod_uid)?;
        let dir = self.node.pod_dir(pod_uid).join("volumes");
        blocking(move || remove_pod_dir(&dir)).await
    }

    async fn teardown(&self, pod_uid: &str) -> Result<(), VolumeError> {
        check_name("pod uid", pod_uid)?;
        let dir = self.node.pod_dir(pod_uid);
        blocking(move || remove_pod_dir(&dir)).await
    }
}

#[cfg(test)]
mod tests;
