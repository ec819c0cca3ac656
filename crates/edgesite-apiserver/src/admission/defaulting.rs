//! Defaulting: the fields upstream's defaulters fill in (`edgesite_api::validation`'s
//! defaults), on creates and on updates of the main resource. Status writes keep the stored
//! spec, so they are not defaulted again.

use async_trait::async_trait;
use edgesite_api::status::ApiError;
use edgesite_api::validation;
use serde_json::Value;

use super::{AdmissionPlugin, Attributes, Operation, Reservations};

/// Fills in defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct Defaulting;

/// Defaults `obj` for the request `a`.
fn default(a: &Attributes<'_>, obj: &mut Value) {
    match (a.operation, a.old) {
        (Operation::Create, _) => validation::default_object(a.r, obj),
        (Operation::Update, Some(old)) => validation::default_update(a.r, old, obj),
        _ => {}
    }
}

#[async_trait]
impl AdmissionPlugin for Defaulting {
    fn name(&self) -> &'static str {
        "Defaulting"
    }

    async fn admit(
        &self,
        a: &Attributes<'_>,
        obj: &mut Value,
        _reserved: &mut Reservations,
    ) -> Result<(), ApiError> {
        default(a, obj);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use edgesite_api::registry;
    use serde_json::json;

    use super::*;

    fn attrs(operation: Operation, old: Option<&Value>) -> Attributes<'_> {
        Attributes {
            r: registry::lookup("", "v1", "pods").unwrap(),
            namespace: Some("default"),
            name: "p",
            operation,
            old,
            dry_run: false,
            user: None,
        }
    }

    #[test]
    fn creates_and_updates_are_defaulted_status_writes_are_not() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let mut created = pod.clone();
        default(&attrs(Operation::Create, None), &mut created);
        assert_eq!(created["spec"]["restartPolicy"], "Always");
        let mut updated = pod.clone();
        default(&attrs(Operation::Update, Some(&created)), &mut updated);
        assert_eq!(updated["spec"]["restartPolicy"], "Always");
        let mut status = pod.clone();
        default(&attrs(Operation::UpdateStatus, Some(&created)), &mut status);
        assert_eq!(status, pod);
    }
}
