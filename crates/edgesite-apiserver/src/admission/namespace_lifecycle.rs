//! NamespaceLifecycle: objects are created only in namespaces that exist and are not
//! terminating, and the namespaces the cluster needs (`default`, `kube-system`,
//! `kube-public`) cannot be deleted.

use std::sync::Arc;

use async_trait::async_trait;
use edgesite_api::registry::{self, ResourceInfo};
use edgesite_api::status::ApiError;
use edgesite_store::Store;
use serde_json::Value;

use super::{AdmissionPlugin, Attributes, Operation, Reservations};
use crate::storage;

/// Namespaces that cannot be deleted (upstream's immortal namespaces).
const IMMORTAL_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// Checks namespaces of creates and deletes of namespaces.
#[derive(Debug)]
pub struct NamespaceLifecycle {
    store: Arc<dyn Store>,
}

impl NamespaceLifecycle {
    /// The plugin, reading namespaces from `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    async fn namespace(&self, nsr: &ResourceInfo, ns: &str) -> Result<Option<Value>, ApiError> {
        let Some(key) = registry::storage_key(nsr, None, ns) else {
            return Ok(None);
        };
        let kv = self
            .store
            .get(key.as_bytes())
            .await
            .map_err(storage::store_error)?;
        kv.map(|kv| storage::decode(&kv, kv.mod_revision))
            .transpose()
    }
}

fn namespaces() -> Result<&'static ResourceInfo, ApiError> {
    registry::lookup("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces are not registered"))
}

fn is_namespaces(r: &ResourceInfo) -> bool {
    r.group.is_empty() && r.plural == "namespaces"
}

/// Whether a create of `name` of `r` in namespace `ns` (stored as `namespace`) may go ahead:
/// 404 `namespaces "x" not found` without one, 403 while it terminates.
fn check_create(
    nsr: &ResourceInfo,
    r: &ResourceInfo,
    ns: &str,
    name: &str,
    namespace: Option<&Value>,
) -> Result<(), ApiError> {
    let Some(obj) = namespace else {
        return Err(ApiError::not_found(nsr, ns));
    };
    let terminating = obj.pointer("/metadata/deletionTimestamp").is_some()
        || obj.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating");
    if terminating {
        return Err(ApiError::forbidden(
            r,
            name,
            &format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ),
        ));
    }
    Ok(())
}

/// Whether namespace `name` may be deleted.
fn check_delete(r: &ResourceInfo, name: &str) -> Result<(), ApiError> {
    if IMMORTAL_NAMESPACES.contains(&name) {
        return Err(ApiError::forbidden(
            r,
            name,
            "this namespace may not be deleted",
        ));
    }
    Ok(())
}

#[async_trait]
impl AdmissionPlugin for NamespaceLifecycle {
    fn name(&self) -> &'static str {
        "NamespaceLifecycle"
    }

    async fn admit(
        &self,
        a: &Attributes<'_>,
        _obj: &mut Value,
        _reserved: &mut Reservations,
    ) -> Result<(), ApiError> {
        let (Operation::Create, true, Some(ns)) = (a.operation, a.r.namespaced, a.namespace) else {
            return Ok(());
        };
        let nsr = namespaces()?;
        let namespace = self.namespace(nsr, ns).await?;
        check_create(nsr, a.r, ns, a.name, namespace.as_ref())
    }

    async fn validate(&self, a: &Attributes<'_>, _obj: Option<&Value>) -> Result<(), ApiError> {
        if a.operation == Operation::Delete && is_namespaces(a.r) {
            return check_delete(a.r, a.name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn creates_need_a_live_namespace() {
        let nsr = namespaces().unwrap();
        let pods = registry::lookup("", "v1", "pods").unwrap();
        let err = check_create(nsr, pods, "gone", "p", None).unwrap_err();
        assert_eq!(err.code(), 404);
        assert!(
            err.to_string().contains("namespaces \"gone\" not found"),
            "{err}"
        );
        let active = json!({"metadata": {"name": "a"}, "status": {"phase": "Active"}});
        assert!(check_create(nsr, pods, "a", "p", Some(&active)).is_ok());
        let marked =
            json!({"metadata": {"name": "a", "deletionTimestamp": "2024-01-01T00:00:00Z"}});
        let phase = json!({"metadata": {"name": "a"}, "status": {"phase": "Terminating"}});
        for ns in [marked, phase] {
            let err = check_create(nsr, pods, "a", "p", Some(&ns)).unwrap_err();
            assert_eq!(err.code(), 403);
            assert!(err.to_string().contains("being terminated"), "{err}");
        }
    }

    #[test]
    fn immortal_namespaces_cannot_be_deleted() {
        let nsr = namespaces().unwrap();
        for name in IMMORTAL_NAMESPACES {
            assert_eq!(check_delete(nsr, name).unwrap_err().code(), 403);
        }
        assert!(check_delete(nsr, "kube-node-lease").is_ok());
        assert!(check_delete(nsr, "team-a").is_ok());
    }
}
