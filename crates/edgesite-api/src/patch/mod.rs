//! The three PATCH engines of the Kubernetes API, over raw JSON: RFC 6902 JSON patch
//! (`application/json-patch+json`), RFC 7386 merge patch (`application/merge-patch+json`) and
//! strategic merge patch (`application/strategic-merge-patch+json`). The API server picks one by
//! content type; choosing the schema for strategic merge patch is its job, not this module's.

mod schema;
mod strategic;
#[cfg(test)]
mod tests;

pub use schema::{KnownMergeKeys, NoSchema, PatchMeta, PatchSchema, PatchStrategy};
pub use strategic::strategic_merge_patch;

use serde_json::Value;

/// Why a patch could not be applied. Messages name the place in the object and are meant to be
/// returned to the client as the `message` of a `metav1.Status`; [`PatchError::status_code`]
/// gives the HTTP code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// The body is not valid JSON.
    #[error("the patch body is not valid JSON: {0}")]
    InvalidJson(String),
    /// The body is JSON but not a list of RFC 6902 operations.
    #[error("the JSON patch is not a valid list of operations: {0}")]
    InvalidJsonPatch(String),
    /// A JSON patch `test` operation found a different value.
    #[error("JSON patch operation {index} (test {path}) failed: the value did not match")]
    TestFailed {
        /// Index of the operation in the patch, from 0.
        index: usize,
        /// The JSON pointer the operation tested.
        path: String,
    },
    /// A JSON patch operation other than `test` could not be applied (missing path, bad index…).
    #[error("JSON patch operation {index} ({op} {path}) failed: {reason}")]
    OperationFailed {
        /// Index of the operation in the patch, from 0.
        index: usize,
        /// The operation name (`add`, `remove`, …).
        op: &'static str,
        /// The JSON pointer of the operation.
        path: String,
        /// What went wrong, from the JSON patch engine.
        reason: String,
    },
    /// A merge patch or strategic merge patch must be a JSON object (a list is rejected, as the
    /// API server does, because it would replace the whole object).
    #[error("the patch must be a JSON object, not {0}")]
    PatchNotAnObject(&'static str),
    /// The object being patched is not a JSON object.
    #[error("the object to patch must be a JSON object, not {0}")]
    TargetNotAnObject(&'static str),
    /// `$patch` has a value other than `replace`, `delete` or `merge`.
    #[error(
        "{path}: unknown patch directive \"$patch\": {value} (expected replace, delete or merge)"
    )]
    UnknownDirective {
        /// Where in the patch the directive was found.
        path: String,
        /// The value found, as JSON.
        value: String,
    },
    /// A key shaped like a directive (`$something/field`) that is not one.
    #[error(
        "{path}: unknown directive key \"{key}\" (known: $setElementOrder/<field>, \
         $deleteFromPrimitiveList/<field>, $retainKeys, $patch)"
    )]
    UnknownDirectiveKey {
        /// Where in the patch the key was found.
        path: String,
        /// The key.
        key: String,
    },
    /// `$patch: merge` inside a list item, which upstream does not support either.
    #[error("{path}: \"$patch: merge\" cannot be used in a list item")]
    MergeDirectiveInList {
        /// The list.
        path: String,
    },
    /// An item of a list merged by key lacks the key.
    #[error("{path}: list item {item} does not contain the merge key \"{key}\"")]
    MissingMergeKey {
        /// The list.
        path: String,
        /// The merge key the schema declares.
        key: String,
        /// The item, as JSON.
        item: String,
    },
    /// A list of objects has the merge strategy but the schema gives no merge key.
    #[error("{path}: cannot merge a list of objects without a merge key")]
    NoMergeKey {
        /// The list.
        path: String,
    },
    /// A merge list holds lists; strategic merge patch has no meaning for them.
    #[error("{path}: lists of lists cannot be merged")]
    ListOfLists {
        /// The list.
        path: String,
    },
    /// A merge list mixes JSON types (objects and strings, numbers and strings…).
    #[error("{path}: the items of a merged list must all have the same JSON type")]
    MixedListTypes {
        /// The list.
        path: String,
    },
    /// `$retainKeys` is not a list, or the patch sets a field it does not list.
    #[error("{path}: invalid $retainKeys: {reason}")]
    InvalidRetainKeys {
        /// The object holding the directive.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// `$setElementOrder/<field>` is malformed or disagrees with the patch list.
    #[error("{path}: invalid $setElementOrder/{field}: {reason}")]
    InvalidSetElementOrder {
        /// The object holding the directive.
        path: String,
        /// The list field it orders.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// `$deleteFromPrimitiveList/<field>` is not a list of values.
    #[error("{path}: invalid $deleteFromPrimitiveList/{field}: {reason}")]
    InvalidDeleteFromPrimitiveList {
        /// The object holding the directive.
        path: String,
        /// The list field it deletes from.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The schema carries patch metadata this module cannot interpret: a server-side bug, not
    /// the client's.
    #[error("invalid patch metadata in the schema: {0}")]
    InvalidSchema(String),
}

impl PatchError {
    /// The HTTP status for this error: 400 (BadRequest) when the body itself is malformed, 422
    /// (Invalid) when a well-formed patch cannot be applied to this object. This follows the
    /// API server, which answers 400 for undecodable bodies and bad directive formats (`$retainKeys` included) and 422
    /// for failed `test` operations, missing paths and lists of lists.
    /// A broken schema is the server's fault: 500.
    pub fn status_code(&self) -> u16 {
        match self {
            Self::InvalidJson(_)
            | Self::InvalidJsonPatch(_)
            | Self::PatchNotAnObject(_)
            | Self::UnknownDirective { .. }
            | Self::UnknownDirectiveKey { .. }
            | Self::MergeDirectiveInList { .. }
            | Self::InvalidSetElementOrder { .. }
            | Self::InvalidRetainKeys { .. }
            | Self::InvalidDeleteFromPrimitiveList { .. } => 400,
            Self::InvalidSchema(_) => 500,
            _ => 422,
        }
    }
}

/// Applies an RFC 6902 JSON patch (the raw request body) to `target` and returns the result;
/// `target` is left untouched, so a failed patch has no partial effect.
///
/// Differs from the bare RFC in one point, as the API server (evanphx/json-patch) does: a `test`
/// of the value `null` succeeds when the path is absent but its parent object exists. kube-rs's
/// finalizer helper relies on it (`test /metadata/finalizers == null`, then `add`), because the
/// server omits empty fields.
pub fn json_patch(target: &Value, patch: &[u8]) -> Result<Value, PatchError> {
    let ops: Value =
        serde_json::from_slice(patch).map_err(|e| PatchError::InvalidJson(e.to_string()))?;
    if !ops.is_array() {
        return Err(PatchError::InvalidJsonPatch(format!(
            "expected a list of operations, got {}",
            json_type(&ops)
        )));
    }
    let ops: json_patch::Patch =
        serde_json::from_value(ops).map_err(|e| PatchError::InvalidJsonPatch(e.to_string()))?;

    let mut doc = target.clone();
    for (index, op) in ops.0.iter().enumerate() {
        if let json_patch::PatchOperation::Test(test) = op
            && test.value.is_null()
            && absent_with_object_parent(&doc, test.path.as_str())
        {
            continue;
        }
        // One operation at a time so that the test above sees the document as it is at that
        // point; atomicity comes from working on a copy.
        json_patch::patch_unsafe(&mut doc, std::slice::from_ref(op)).map_err(|e| {
            let path = op.path().as_str().to_owned();
            match e.kind {
                json_patch::PatchErrorKind::TestFailed => PatchError::TestFailed { index, path },
                kind => PatchError::OperationFailed {
                    index,
                    op: op_name(op),
                    path,
                    reason: kind.to_string(),
                },
            }
        })?;
    }
    Ok(doc)
}

/// Applies an RFC 7386 JSON merge patch to `target`: objects merge recursively, `null` deletes,
/// everything else (lists included) replaces. Both must be JSON objects, since the result must
/// still be a Kubernetes object.
pub fn merge_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    if !target.is_object() {
        return Err(PatchError::TargetNotAnObject(json_type(target)));
    }
    if !patch.is_object() {
        return Err(PatchError::PatchNotAnObject(json_type(patch)));
    }
    let mut doc = target.clone();
    json_patch::merge(&mut doc, patch);
    Ok(doc)
}

/// True when `pointer` names a missing member of an existing object.
fn absent_with_object_parent(doc: &Value, pointer: &str) -> bool {
    if doc.pointer(pointer).is_some() {
        return false;
    }
    match pointer.rsplit_once('/') {
        Some((parent, _)) => doc.pointer(parent).is_some_and(Value::is_object),
        None => false,
    }
}

fn op_name(op: &json_patch::PatchOperation) -> &'static str {
    use json_patch::PatchOperation as Op;
    match op {
        Op::Add(_) => "add",
        Op::Remove(_) => "remove",
        Op::Replace(_) => "replace",
        Op::Move(_) => "move",
        Op::Copy(_) => "copy",
        Op::Test(_) => "test",
    }
}

/// The JSON type of `v`, for error messages.
pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
