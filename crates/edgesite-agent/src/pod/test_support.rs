//! Fixtures of the pod module's unit tests: pods from JSON, a node, cached objects.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};

use super::{NodeContext, NodeResources, Objects};

/// ConfigMaps and Secrets by `namespace/name`, changeable while a test runs.
#[derive(Debug, Default)]
pub struct FakeObjects {
    pub config_maps: Mutex<BTreeMap<String, Arc<ConfigMap>>>,
    pub secrets: Mutex<BTreeMap<String, Arc<Secret>>>,
}

impl FakeObjects {
    pub fn with_config_map(self, ns: &str, name: &str, data: &[(&str, &str)]) -> Self {
        self.put_config_map(ns, name, data);
        self
    }
    pub fn put_config_map(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "data": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        }))
        .unwrap();
        self.config_maps
            .lock()
            .unwrap()
            .insert(format!("{ns}/{name}"), Arc::new(cm));
    }
    pub fn with_secret(self, ns: &str, name: &str, data: &[(&str, &str)]) -> Self {
        let secret = Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            k8s_openapi::ByteString(v.as_bytes().to_vec()),
                        )
                    })
                    .collect(),
            ),
            ..Default::default()
        };
        self.secrets
            .lock()
            .unwrap()
            .insert(format!("{ns}/{name}"), Arc::new(secret));
        self
    }
}

impl Objects for FakeObjects {
    fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        self.config_maps
            .lock()
            .unwrap()
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets
            .lock()
            .unwrap()
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }
}

pub const GI: i64 = 1 << 30;

/// A node of 4 CPUs and 8 GiB (3.5 CPUs and 7 GiB allocatable), pods under `pods_dir`.
pub fn node(pods_dir: &Path) -> NodeContext {
    NodeContext {
        node_name: "node-1".into(),
        node_ip: "192.0.2.10".parse().unwrap(),
        pods_dir: pods_dir.to_path_buf(),
        cluster_dns: Some("10.43.0.10".parse().unwrap()),
        cluster_domain: "cluster.local".into(),
        capacity: NodeResources {
            cpu_millis: 4000,
            memory_bytes: 8 * GI,
        },
        allocatable: NodeResources {
            cpu_millis: 3500,
            memory_bytes: 7 * GI,
        },
        resolv_conf: "/nonexistent/resolv.conf".into(),
        host_hosts_file: "/etc/hosts".into(),
    }
}

/// A pod in namespace `ns` with uid `uid-1` and the given `spec`.
pub fn pod(spec: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "web-1", "namespace": "ns", "uid": "uid-1",
            "labels": {"app": "web", "tier": "front"},
            "annotations": {"note": "say \"hi\""},
        },
        "spec": spec,
    }))
    .unwrap()
}
