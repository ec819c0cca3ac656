//! Kubeconfig files: the admin's `DATA_DIR/admin.kubeconfig`, and any other client identity.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::fsutil::{PRIVATE_MODE, write_atomic};
use crate::pki::{ClusterPki, IssuedCert};

/// Name of the cluster and of the context in generated kubeconfigs.
pub const CLUSTER_NAME: &str = "edgesite";
/// Name of the admin user in the admin kubeconfig.
pub const ADMIN_USER_NAME: &str = "admin";
/// File name of the admin kubeconfig in the data directory.
pub const ADMIN_KUBECONFIG: &str = "admin.kubeconfig";

/// Why a kubeconfig could not be written.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    /// Serialising to YAML failed.
    #[error("cannot serialise kubeconfig: {0}")]
    Serialize(#[from] serde_saphyr::SerializeError),
    /// Writing the file failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The kubeconfig file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// A kubeconfig with one cluster, one user and one context (the subset of client-go's
/// `clientcmd/api/v1.Config` that EdgeSite writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kubeconfig {
    /// Always `v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Always `Config`.
    pub kind: String,
    /// The clusters.
    pub clusters: Vec<NamedCluster>,
    /// The users (credentials).
    pub users: Vec<NamedUser>,
    /// The contexts (cluster + user).
    pub contexts: Vec<NamedContext>,
    /// The context used by default.
    #[serde(rename = "current-context")]
    pub current_context: String,
}

/// A named cluster entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedCluster {
    /// The entry's name.
    pub name: String,
    /// Where and how to reach the cluster.
    pub cluster: Cluster,
}

/// How to reach a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// The API server's URL, `https://host:port`.
    pub server: String,
    /// The cluster CA certificate, base64 of its PEM.
    #[serde(rename = "certificate-authority-data")]
    pub certificate_authority_data: String,
}

/// A named user entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedUser {
    /// The entry's name.
    pub name: String,
    /// The credentials.
    pub user: User,
}

/// Client-certificate credentials.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The client certificate, base64 of its PEM.
    #[serde(rename = "client-certificate-data")]
    pub client_certificate_data: String,
    /// The client key, base64 of its PEM.
    #[serde(rename = "client-key-data")]
    pub client_key_data: String,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("client_certificate_data", &self.client_certificate_data)
            .field("client_key_data", &"<redacted>")
            .finish()
    }
}

/// A named context entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedContext {
    /// The entry's name.
    pub name: String,
    /// The cluster and user it combines.
    pub context: Context,
}

/// A context: which cluster with which user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// Name of a cluster entry.
    pub cluster: String,
    /// Name of a user entry.
    pub user: String,
}

impl Kubeconfig {
    /// A kubeconfig for `server` trusting `ca_pem`, authenticating as `user_name` with the
    /// client certificate `cert`. Cluster and context are both named `edgesite`.
    pub fn for_client_cert(server: &str, ca_pem: &str, user_name: &str, cert: &IssuedCert) -> Self {
        Self {
            api_version: "v1".to_owned(),
            kind: "Config".to_owned(),
            clusters: vec![NamedCluster {
                name: CLUSTER_NAME.to_owned(),
                cluster: Cluster {
                    server: server.to_owned(),
                    certificate_authority_data: BASE64.encode(ca_pem),
                },
            }],
            users: vec![NamedUser {
                name: user_name.to_owned(),
                user: User {
                    client_certificate_data: BASE64.encode(&cert.cert_pem),
                    client_key_data: BASE64.encode(&cert.key_pem),
                },
            }],
            contexts: vec![NamedContext {
                name: CLUSTER_NAME.to_owned(),
                context: Context {
                    cluster: CLUSTER_NAME.to_owned(),
                    user: user_name.to_owned(),
                },
            }],
            current_context: CLUSTER_NAME.to_owned(),
        }
    }

    /// The kubeconfig as YAML.
    pub fn to_yaml(&self) -> Result<String, KubeconfigError> {
        // Plain scalars: a long base64 string as `>-` block is valid but unusual in kubeconfigs.
        let mut options = serde_saphyr::SerializerOptions::default();
        options.prefer_block_scalars = false;
        Ok(serde_saphyr::to_string_with_options(self, options)?)
    }

    /// Writes the kubeconfig as YAML to `path`, atomically and with mode 0600 (it holds a private
    /// key). An existing file with the same content is left alone.
    pub fn write(&self, path: &Path) -> Result<(), KubeconfigError> {
        let yaml = self.to_yaml()?;
        if fs::read(path).is_ok_and(|old| old == yaml.as_bytes()) {
            return Ok(());
        }
        write_atomic(path, yaml.as_bytes(), PRIVATE_MODE).map_err(|source| KubeconfigError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

/// The admin kubeconfig's path: `data_dir/admin.kubeconfig`.
pub fn admin_kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_KUBECONFIG)
}

/// Writes `data_dir/admin.kubeconfig`: cluster `edgesite` at `server` (`https://host:port`),
/// user `admin` with the PKI's admin client certificate, context `edgesite` (current). Returns
/// its path.
pub fn write_admin_kubeconfig(
    data_dir: &Path,
    pki: &ClusterPki,
    server: &str,
) -> Result<PathBuf, KubeconfigError> {
    let path = admin_kubeconfig_path(data_dir);
    Kubeconfig::for_client_cert(
        server,
        pki.ca_cert_pem(),
        ADMIN_USER_NAME,
        &pki.admin_cert(),
    )
    .write(&path)?;
    Ok(path)
}
