//! Validation: upstream's per-kind validation (`edgesite_api::validation`) of the final
//! object, as the last plugin, so it sees what every mutating plugin did. A failure is the
//! 422 `Invalid` Status with one cause per field.

use async_trait::async_trait;
use edgesite_api::status::ApiError;
use edgesite_api::validation;
use serde_json::Value;

use super::{AdmissionPlugin, Attributes, Operation};

/// Validates objects.
#[derive(Debug, Clone, Copy, Default)]
pub struct Validation;

/// The 422 for `obj` in request `a`, if it is invalid.
fn check(a: &Attributes<'_>, obj: &Value) -> Result<(), ApiError> {
    let causes = match (a.operation, a.old) {
        (Operation::Create, _) => validation::validate_create(a.r, obj),
        (Operation::Update, Some(old)) => validation::validate_update(a.r, old, obj),
        (Operation::UpdateStatus, Some(old)) => validation::validate_status_update(a.r, old, obj),
        _ => Vec::new(),
    };
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(a.r, a.name, causes))
    }
}

#[async_trait]
impl AdmissionPlugin for Validation {
    fn name(&self) -> &'static str {
        "Validation"
    }

    async fn validate(&self, a: &Attributes<'_>, obj: Option<&Value>) -> Result<(), ApiError> {
        match obj {
            Some(obj) => check(a, obj),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use edgesite_api::registry;
    use serde_json::json;

    use super::*;

    fn attrs(operation: Operation, old: Option<&Value>) -> Attributes<'_> {
        Attributes {
            r: registry::lookup("", "v1", "configmaps").unwrap(),
            namespace: Some("default"),
            name: "Bad_Name",
            operation,
            old,
            dry_run: false,
            user: None,
        }
    }

    #[test]
    fn invalid_objects_are_a_422_naming_the_object() {
        let bad = json!({"metadata": {"name": "Bad_Name", "namespace": "default"}});
        let err = check(&attrs(Operation::Create, None), &bad).unwrap_err();
        assert_eq!(err.code(), 422);
        assert!(err.to_string().contains("Bad_Name"), "{err}");
        let good = json!({"metadata": {"name": "good", "namespace": "default"}});
        assert!(check(&attrs(Operation::Create, None), &good).is_ok());
        // Deletes carry no object to validate.
        assert!(check(&attrs(Operation::Delete, Some(&good)), &good).is_ok());
    }
}
