//! The pods' volumes on the host, [`HostVolumes`].

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;

use super::{NodeContext, Objects, PreparedVolumes, VolumeError, VolumeManager};

/// [`VolumeManager`] on the host's filesystem under the node's pods directory.
#[derive(Debug, Clone)]
pub struct HostVolumes {
    node: NodeContext,
}

impl HostVolumes {
    /// Volumes under `node.pods_dir`.
    pub fn new(node: NodeContext) -> Self {
        Self { node }
    }

    fn volumes_dir(&self, uid: &str) -> PathBuf {
        self.node.pod_dir(uid).join("volumes")
    }
}

#[async_trait::async_trait]
impl VolumeManager for HostVolumes {
    async fn setup(
        &self,
        pod: &Pod,
        objects: &dyn Objects,
    ) -> Result<PreparedVolumes, VolumeError> {
        let _ = (self.volumes_dir(""), pod, objects);
        Ok(PreparedVolumes::default())
    }

    async fn teardown(&self, pod_uid: &str) -> Result<(), VolumeError> {
        let _ = pod_uid;
        Ok(())
    }
}
