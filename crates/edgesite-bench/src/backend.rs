//! Opening a fresh instance of either backend for one figure, and what the figures read from
//! it beyond the `Store` trait (file size, etcd's pid).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use edgesite_store::embedded::{CompactionPolicy, EmbeddedConfig};
use edgesite_store::{DatastoreConfig, Store};
use edgesite_testkit::EtcdServer;

use crate::ETCD_QUOTA_ARG;

/// Which backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// The embedded MVCC engine on redb.
    Embedded,
    /// A real etcd (started with the testkit's `EtcdServer`).
    Etcd,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Embedded => "embedded",
            Self::Etcd => "etcd",
        })
    }
}

/// How to open an instance; the default is each backend's defaults.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Automatic compaction of the embedded store (`None`: its default policy).
    pub compaction: Option<CompactionPolicy>,
    /// Extra etcd flags, on top of the backend quota.
    pub etcd_args: Vec<String>,
}

/// A fresh, empty store. Fields drop in order: the store, then etcd, then the directory.
#[derive(Debug)]
pub struct Instance {
    pub store: Arc<dyn Store>,
    etcd: Option<EtcdServer>,
    embedded_file: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl Instance {
    pub async fn open(kind: Kind, parent: &Path, opts: &OpenOptions) -> anyhow::Result<Self> {
        match kind {
            Kind::Embedded => {
                let dir = tempfile::Builder::new()
                    .prefix("embedded-")
                    .tempdir_in(parent)
                    .context("creating the embedded store's directory")?;
                let file = dir.path().join("store.redb");
                let mut config = EmbeddedConfig::new(&file);
                if let Some(policy) = opts.compaction {
                    config = config.with_compaction(policy);
                }
                let store = edgesite_store::open(&DatastoreConfig::Embedded(config))
                    .await
                    .context("opening the embedded store")?;
                Ok(Self {
                    store,
                    etcd: None,
                    embedded_file: Some(file),
                    _dir: Some(dir),
                })
            }
            Kind::Etcd => {
                let mut options = EtcdServer::options().arg(ETCD_QUOTA_ARG);
                for arg in &opts.etcd_args {
                    options = options.arg(arg.clone());
                }
                let server = tokio::task::spawn_blocking(move || options.try_start())
                    .await
                    .context("starting etcd")??;
                let config = DatastoreConfig::from_url(&format!("etcd://{}", server.endpoint()))?;
                let store = edgesite_store::open(&config)
                    .await
                    .with_context(|| format!("connecting to etcd at {}", server.endpoint()))?;
                Ok(Self {
                    store,
                    etcd: Some(server),
                    embedded_file: None,
                    _dir: None,
                })
            }
        }
    }

    /// The process id of etcd.
    pub fn etcd_pid(&self) -> Option<u32> {
        self.etcd.as_ref().map(EtcdServer::pid)
    }

    /// Size of the database file: the redb file, or etcd's bbolt file `member/snap/db`.
    pub fn file_size(&self) -> anyhow::Result<u64> {
        let path = match (&self.embedded_file, &self.etcd) {
            (Some(file), _) => file.clone(),
            (None, Some(etcd)) => etcd.dir().join("data/member/snap/db"),
            (None, None) => unreachable!("an instance is one backend or the other"),
        };
        Ok(std::fs::metadata(&path)
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len())
    }

    /// Closes the store, then stops etcd and removes the data.
    pub fn close(self) {
        drop(self);
    }
}
