//! PLACEHOLDER while the engine is written (not to be committed).
use crate::*;
use async_trait::async_trait;
use std::path::PathBuf;

/// Settings of the embedded engine.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// The database file.
    pub path: PathBuf,
}
impl EtcdConfig {
    /// Defaults at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}
/// The embedded store.
#[derive(Debug)]
pub struct EtcdStore;
impl EtcdStore {
    /// Opens it.
    pub async fn connect(_c: EtcdConfig) -> Result<Self> {
        todo!()
    }
}
#[async_trait]
impl Store for EtcdStore {
    async fn range(&self, _req: RangeRequest) -> Result<RangeResponse> {
        todo!()
    }
    async fn txn(&self, _txn: Txn) -> Result<TxnResponse> {
        todo!()
    }
    async fn watch(&self, _req: WatchRequest) -> Result<WatchStream> {
        todo!()
    }
    async fn lease_grant(&self, _ttl_secs: i64) -> Result<LeaseId> {
        todo!()
    }
    async fn lease_keep_alive(&self, _id: LeaseId) -> Result<LeaseInfo> {
        todo!()
    }
    async fn lease_revoke(&self, _id: LeaseId) -> Result<()> {
        todo!()
    }
    async fn lease_time_to_live(&self, _id: LeaseId) -> Result<LeaseInfo> {
        todo!()
    }
    async fn compact(&self, _revision: Revision) -> Result<()> {
        todo!()
    }
    async fn status(&self) -> Result<StoreStatus> {
        todo!()
    }
}
impl EtcdConfig {
    /// Parses a URL.
    pub fn from_url(_url: &str) -> Result<Self> {
        todo!()
    }
}
