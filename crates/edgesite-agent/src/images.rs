//! Images on the node without a registry: the agent's pause image built from the host's
//! busybox, and OCI tarballs imported into containerd's `k8s.io` namespace (the one the CRI
//! plugin serves) with `ctr`; [`dir`] watches the offline images directory `ADIR/images/`.

use std::path::{Path, PathBuf};

use crate::cri::{self, Runtime};
use crate::oci;

pub mod dir;
pub use dir::{ImagesDir, ImportOutcome};

/// The containerd namespace of the CRI plugin.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// Why an image could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image could not be built.
    #[error(transparent)]
    Build(#[from] oci::Error),
    /// `ctr` is missing or could not run.
    #[error(
        "cannot run {ctr} to import {tarball}: {source} (ctr comes with the Debian package `containerd`)"
    )]
    Ctr {
        /// The `ctr` binary.
        ctr: PathBuf,
        /// The tarball.
        tarball: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `ctr images import` failed.
    #[error(
        "`ctr --address {socket} -n k8s.io images import --all-platforms {tarball}` failed with {status}: {stderr}"
    )]
    Import {
        /// The containerd socket.
        socket: PathBuf,
        /// The tarball.
        tarball: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A compressed tarball could not be decompressed.
    #[error("cannot decompress {tarball}: {message}")]
    Decompress {
        /// The tarball.
        tarball: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The import succeeded but CRI does not report the image.
    #[error("{name} was imported from {tarball} but CRI ImageStatus does not report it")]
    NotVisible {
        /// The image name.
        name: String,
        /// The tarball.
        tarball: PathBuf,
    },
    /// A CRI call failed.
    #[error(transparent)]
    Cri(#[from] cri::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Imports OCI image tarballs into one containerd.
#[derive(Debug, Clone)]
pub struct ImageImporter {
    ctr: PathBuf,
    socket: PathBuf,
}

impl ImageImporter {
    /// An importer for the containerd listening on `socket`, with `ctr` from `PATH` (else
    /// `/usr/bin/ctr`).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        let ctr = std::env::var_os("PATH")
            .and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join("ctr"))
                    .find(|p| p.is_file())
            })
            .unwrap_or_else(|| "/usr/bin/ctr".into());
        Self {
            ctr,
            socket: socket.into(),
        }
    }

    /// Imports `tarball` into the `k8s.io` namespace (unpacked for the default snapshotter),
    /// then checks CRI reports `name`; returns its CRI image.
    pub async fn import(
        &self,
        runtime: &dyn Runtime,
        tarball: &Path,
        name: &str,
    ) -> Result<cri::v1::Image> {
        let output = tokio::process::Command::new(&self.ctr)
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", CRI_NAMESPACE, "images", "import", "--all-platforms"])
            .arg(tarball)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| Error::Ctr {
                ctr: self.ctr.clone(),
                tarball: tarball.to_path_buf(),
                source,
            })?;
        if !output.status.success() {
            return Err(Error::Import {
                socket: self.socket.clone(),
                tarball: tarball.to_path_buf(),
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        tracing::debug!(image = name, tarball = %tarball.display(), "imported image");
        runtime
            .image_status(name)
            .await?
            .ok_or_else(|| Error::NotVisible {
                name: name.to_string(),
                tarball: tarball.to_path_buf(),
            })
    }

    /// Builds the agent's pause image ([`oci::PAUSE_IMAGE`]) from `busybox` (the host's static
    /// busybox) into `dir` and imports it.
    pub async fn ensure_pause_image(
        &self,
        runtime: &dyn Runtime,
        busybox: &Path,
        dir: &Path,
    ) -> Result<cri::v1::Image> {
        if let Some(image) = runtime.image_status(oci::PAUSE_IMAGE).await? {
            return Ok(image);
        }
        let tarball = dir.join("pause.oci.tar");
        oci::pause_image(busybox)?.write(&tarball)?;
        self.import(runtime, &tarball, oci::PAUSE_IMAGE).await
    }
}
