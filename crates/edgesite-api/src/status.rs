//! API errors and their `metav1.Status` form.
//!
//! Clients branch on `reason` and `code`, not on text: kubectl prints `Error from server
//! (<reason>): <message>`, client-go's `IsNotFound`/`IsConflict` read `reason`, retry loops
//! read `code`, and `details` tells which object failed. So each constructor reproduces
//! upstream's reason, code, message text and details exactly (apimachinery
//! `pkg/api/errors/errors.go`), and the HTTP layer only has to send [`ApiError::to_status_json`]
//! with [`ApiError::code`] as the status code.
//!
//! ```
//! use edgesite_api::registry::GroupResource;
//! use edgesite_api::status::ApiError;
//!
//! let err = ApiError::not_found(GroupResource::core("pods"), "x");
//! assert_eq!(err.code(), 404);
//! assert_eq!(err.to_string(), r#"pods "x" not found"#);
//! ```

use serde_json::{Map, Value, json};

use crate::patch::PatchError;
use crate::registry::{GroupKind, GroupResource};
use crate::selector::SelectorError;

/// The optimistic-concurrency message of upstream's `OptimisticLockErrorMsg`; clients such as
/// `kubectl edit` and client-go's `RetryOnConflict` only look at the reason, but humans and
/// tests match this text.
pub const OPTIMISTIC_LOCK_MESSAGE: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// One entry of `details.causes`: which field failed and why (`metav1.StatusCause`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Machine-readable cause, e.g. `FieldValueRequired` (serialised as `reason`).
    pub reason: String,
    /// Human-readable description, without the field path.
    pub message: String,
    /// The field path, e.g. `spec.containers[0].image`; empty when not about one field.
    pub field: String,
}

impl Cause {
    fn new(reason: &str, field: &str, message: String) -> Self {
        Self {
            reason: reason.to_owned(),
            message,
            field: field.to_owned(),
        }
    }

    fn with_detail(mut base: String, detail: &str) -> String {
        if !detail.is_empty() {
            base.push_str(": ");
            base.push_str(detail);
        }
        base
    }

    /// A required field is missing: message `Required value[: detail]`.
    pub fn required(field: &str, detail: &str) -> Self {
        Self::new(
            "FieldValueRequired",
            field,
            Self::with_detail("Required value".into(), detail),
        )
    }

    /// A field has a bad value: message `Invalid value: <value>[: detail]`, the value rendered
    /// as upstream does (strings quoted, numbers and booleans bare).
    pub fn invalid(field: &str, value: &Value, detail: &str) -> Self {
        Self::new(
            "FieldValueInvalid",
            field,
            Self::with_detail(format!("Invalid value: {}", render_value(value)), detail),
        )
    }

    /// A value outside an enumeration: `Unsupported value: <value>: supported values: "a", "b"`.
    pub fn not_supported(field: &str, value: &Value, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        let detail = if list.is_empty() {
            String::new()
        } else {
            format!("supported values: {}", list.join(", "))
        };
        Self::new(
            "FieldValueNotSupported",
            field,
            Self::with_detail(
                format!("Unsupported value: {}", render_value(value)),
                &detail,
            ),
        )
    }

    /// A field with a bad value that upstream prints with Go's `%#v` (maps, lists, structs):
    /// `Invalid value: <rendered>[: detail]`, `rendered` used verbatim, e.g.
    /// `map[string]string{"app":"x"}`.
    pub fn invalid_rendered(field: &str, rendered: &str, detail: &str) -> Self {
        Self::new(
            "FieldValueInvalid",
            field,
            Self::with_detail(format!("Invalid value: {rendered}"), detail),
        )
    }

    /// A reference to something that does not exist (e.g. a volume mount naming no volume):
    /// `Not found: <value>`.
    pub fn not_found(field: &str, value: &Value) -> Self {
        Self::new(
            "FieldValueNotFound",
            field,
            format!("Not found: {}", render_value(value)),
        )
    }

    /// A value repeated in a list that must be unique: `Duplicate value: <value>`.
    pub fn duplicate(field: &str, value: &Value) -> Self {
        Self::new(
            "FieldValueDuplicate",
            field,
            format!("Duplicate value: {}", render_value(value)),
        )
    }

    /// A field that may not be set or changed: `Forbidden[: detail]`.
    pub fn forbidden(field: &str, detail: &str) -> Self {
        Self::new(
            "FieldValueForbidden",
            field,
            Self::with_detail("Forbidden".into(), detail),
        )
    }

    /// A string or list over its length limit: `Too long: may not be more than N bytes`.
    pub fn too_long(field: &str, max: usize) -> Self {
        Self::new(
            "FieldValueTooLong",
            field,
            format!("Too long: may not be more than {max} bytes"),
        )
    }

    /// `field: message`, the form in which causes are joined into the Status message.
    fn field_error(&self) -> String {
        if self.field.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }

    fn to_json(&self) -> Value {
        // Upstream's StatusCause fields are all omitempty.
        let mut m = Map::new();
        for (k, v) in [
            ("reason", &self.reason),
            ("message", &self.message),
            ("field", &self.field),
        ] {
            if !v.is_empty() {
                m.insert(k.into(), Value::String(v.clone()));
            }
        }
        Value::Object(m)
    }
}

/// How upstream's field errors print a bad value: Go `%q` for strings (JSON string quoting
/// matches it for everything but exotic control characters), bare numbers and booleans, JSON
/// for the rest.
fn render_value(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// An error the API server answers with; each variant is one upstream `StatusReason`.
/// `Display` is the Status `message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// 404: the object does not exist.
    #[error("{resource} {name:?} not found")]
    NotFound {
        /// The resource (`pods`, `deployments.apps`).
        resource: GroupResource,
        /// The object name.
        name: String,
    },
    /// 409: create of a name that exists.
    #[error("{resource} {name:?} already exists")]
    AlreadyExists {
        /// The resource.
        resource: GroupResource,
        /// The object name.
        name: String,
    },
    /// 409: a precondition (resourceVersion, uid) or an apply field-manager conflict failed.
    #[error("Operation cannot be fulfilled on {resource} {name:?}: {message}")]
    Conflict {
        /// The resource.
        resource: GroupResource,
        /// The object name.
        name: String,
        /// Why, e.g. [`OPTIMISTIC_LOCK_MESSAGE`].
        message: String,
        /// Per-field causes (server-side apply conflicts).
        causes: Vec<Cause>,
    },
    /// 422: validation failed; `causes` lists each field error.
    #[error("{kind} {name:?} is invalid: {}", join_causes(causes))]
    Invalid {
        /// The kind (`Pod`, `Deployment.apps`), as upstream's NewInvalid names it.
        kind: GroupKind,
        /// The object name.
        name: String,
        /// The field errors (at least one).
        causes: Vec<Cause>,
    },
    /// 422 about the request rather than one object's fields (e.g. a failed JSON-patch
    /// `test`), reason `Invalid` as upstream's generic 422 response has.
    #[error("{0}")]
    Unprocessable(String),
    /// 400: the request is malformed; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no valid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated but not allowed. `name` may be empty (lists, creates).
    #[error(
        "{resource}{} is forbidden: {message}",
        if name.is_empty() { String::new() } else { format!(" {name:?}") }
    )]
    Forbidden {
        /// The resource.
        resource: GroupResource,
        /// The object name, or empty.
        name: String,
        /// Why, e.g. `User "x" cannot list resource "pods" in API group "" in the namespace "d"`.
        message: String,
    },
    /// 405: the verb is not served for this resource.
    #[error("{action} is not supported on resources of kind {:?}", resource.to_string())]
    MethodNotAllowed {
        /// The resource.
        resource: GroupResource,
        /// The attempted action (`create`, `deletecollection`...).
        action: String,
    },
    /// 406: no acceptable response media type.
    #[error("only the following media types are accepted: {}", accepted.join(", "))]
    NotAcceptable {
        /// The media types the server can produce.
        accepted: Vec<String>,
    },
    /// 410 `Expired`: a resourceVersion or continue token is older than retained history.
    #[error("{0}")]
    Expired(String),
    /// 410 `Gone`: the resource is no longer available.
    #[error("{0}")]
    Gone(String),
    /// 413: the request body is too large.
    #[error("Request entity too large: {0}")]
    RequestEntityTooLarge(String),
    /// 415: the request body's content type is not understood.
    #[error(
        "the body of the request was in an unknown format - accepted media types include: {}",
        accepted.join(", ")
    )]
    UnsupportedMediaType {
        /// The media types the server can decode.
        accepted: Vec<String>,
    },
    /// 429: throttled; clients wait `retry_after_seconds` (also sent as `Retry-After`).
    #[error("{message}")]
    TooManyRequests {
        /// Why.
        message: String,
        /// Seconds to wait before retrying.
        retry_after_seconds: u32,
    },
    /// 500: a server bug or backend failure.
    #[error("Internal error occurred: {0}")]
    InternalError(String),
    /// 504: the request did not finish in time.
    #[error("Timeout: {message}")]
    Timeout {
        /// What timed out.
        message: String,
        /// Seconds to wait before retrying, 0 for none.
        retry_after_seconds: u32,
    },
}

fn join_causes(causes: &[Cause]) -> String {
    // utilerrors.NewAggregate: one error bare, several in brackets.
    let parts: Vec<String> = causes.iter().map(Cause::field_error).collect();
    match parts.as_slice() {
        [one] => one.clone(),
        _ => format!("[{}]", parts.join(", ")),
    }
}

impl ApiError {
    /// `<resource> "<name>" not found`.
    pub fn not_found(resource: impl Into<GroupResource>, name: &str) -> Self {
        Self::NotFound {
            resource: resource.into(),
            name: name.to_owned(),
        }
    }

    /// `<resource> "<name>" already exists`.
    pub fn already_exists(resource: impl Into<GroupResource>, name: &str) -> Self {
        Self::AlreadyExists {
            resource: resource.into(),
            name: name.to_owned(),
        }
    }

    /// The stale-resourceVersion conflict: `Operation cannot be fulfilled on <resource>
    /// "<name>": the object has been modified; please apply your changes to the latest version
    /// and try again`.
    pub fn conflict(resource: impl Into<GroupResource>, name: &str) -> Self {
        Self::conflict_with(resource, name, OPTIMISTIC_LOCK_MESSAGE)
    }

    /// A conflict with another reason (e.g. a UID precondition).
    pub fn conflict_with(resource: impl Into<GroupResource>, name: &str, message: &str) -> Self {
        Self::Conflict {
            resource: resource.into(),
            name: name.to_owned(),
            message: message.to_owned(),
            causes: Vec::new(),
        }
    }

    /// `<Kind> "<name>" is invalid: <field errors>`, with one cause per field error.
    pub fn invalid(kind: impl Into<GroupKind>, name: &str, causes: Vec<Cause>) -> Self {
        Self::Invalid {
            kind: kind.into(),
            name: name.to_owned(),
            causes,
        }
    }

    /// A 400 with `message` verbatim.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }

    /// The 401 kube-apiserver sends for failed authentication (message `Unauthorized`).
    pub fn unauthorized() -> Self {
        Self::Unauthorized("Unauthorized".into())
    }

    /// `<resource> ["<name>"] is forbidden: <message>`.
    pub fn forbidden(resource: impl Into<GroupResource>, name: &str, message: &str) -> Self {
        Self::Forbidden {
            resource: resource.into(),
            name: name.to_owned(),
            message: message.to_owned(),
        }
    }

    /// `<action> is not supported on resources of kind "<resource>"`.
    pub fn method_not_allowed(resource: impl Into<GroupResource>, action: &str) -> Self {
        Self::MethodNotAllowed {
            resource: resource.into(),
            action: action.to_owned(),
        }
    }

    /// `only the following media types are accepted: a, b`.
    pub fn not_acceptable(accepted: &[&str]) -> Self {
        Self::NotAcceptable {
            accepted: accepted.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// `the body of the request was in an unknown format - accepted media types include: a, b`.
    pub fn unsupported_media_type(accepted: &[&str]) -> Self {
        Self::UnsupportedMediaType {
            accepted: accepted.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The watch/list 410: `too old resource version: <requested> (<oldest available>)`.
    pub fn too_old_resource_version(requested: u64, oldest: u64) -> Self {
        Self::Expired(format!("too old resource version: {requested} ({oldest})"))
    }

    /// A 410 `Expired` with `message` verbatim (e.g. an expired continue token).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::Expired(message.into())
    }

    /// `Request entity too large: <message>`.
    pub fn request_entity_too_large(message: impl Into<String>) -> Self {
        Self::RequestEntityTooLarge(message.into())
    }

    /// A 429 asking the client to retry after `retry_after_seconds`.
    pub fn too_many_requests(message: impl Into<String>, retry_after_seconds: u32) -> Self {
        Self::TooManyRequests {
            message: message.into(),
            retry_after_seconds,
        }
    }

    /// `Internal error occurred: <message>`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::InternalError(message.into())
    }

    /// `Timeout: <message>`.
    pub fn timeout(message: impl Into<String>, retry_after_seconds: u32) -> Self {
        Self::Timeout {
            message: message.into(),
            retry_after_seconds,
        }
    }

    /// The HTTP status code, also the Status `code`.
    pub fn code(&self) -> u16 {
        match self {
            Self::NotFound { .. } => 404,
            Self::AlreadyExists { .. } | Self::Conflict { .. } => 409,
            Self::Invalid { .. } | Self::Unprocessable(_) => 422,
            Self::BadRequest(_) => 400,
            Self::Unauthorized(_) => 401,
            Self::Forbidden { .. } => 403,
            Self::MethodNotAllowed { .. } => 405,
            Self::NotAcceptable { .. } => 406,
            Self::Expired(_) | Self::Gone(_) => 410,
            Self::RequestEntityTooLarge(_) => 413,
            Self::UnsupportedMediaType { .. } => 415,
            Self::TooManyRequests { .. } => 429,
            Self::InternalError(_) => 500,
            Self::Timeout { .. } => 504,
        }
    }

    /// The Status `reason` (`metav1.StatusReason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "NotFound",
            Self::AlreadyExists { .. } => "AlreadyExists",
            Self::Conflict { .. } => "Conflict",
            Self::Invalid { .. } | Self::Unprocessable(_) => "Invalid",
            Self::BadRequest(_) => "BadRequest",
            Self::Unauthorized(_) => "Unauthorized",
            Self::Forbidden { .. } => "Forbidden",
            Self::MethodNotAllowed { .. } => "MethodNotAllowed",
            Self::NotAcceptable { .. } => "NotAcceptable",
            Self::Expired(_) => "Expired",
            Self::Gone(_) => "Gone",
            Self::RequestEntityTooLarge(_) => "RequestEntityTooLarge",
            Self::UnsupportedMediaType { .. } => "UnsupportedMediaType",
            Self::TooManyRequests { .. } => "TooManyRequests",
            Self::InternalError(_) => "InternalError",
            Self::Timeout { .. } => "Timeout",
        }
    }

    /// Seconds for a `Retry-After` header, when the error asks the client to retry.
    pub fn retry_after_seconds(&self) -> Option<u32> {
        match self {
            Self::TooManyRequests {
                retry_after_seconds,
                ..
            }
            | Self::Timeout {
                retry_after_seconds,
                ..
            } if *retry_after_seconds > 0 => Some(*retry_after_seconds),
            _ => None,
        }
    }

    /// `details`, as upstream fills it: `{name, group, kind, causes, retryAfterSeconds}` with
    /// empty fields omitted; `kind` holds the plural resource for resource errors (upstream
    /// quirk that clients rely on) and the Kind for `Invalid`. `None` when upstream sends none.
    fn details(&self) -> Option<Value> {
        let mut d = Map::new();
        let mut put = |k: &str, v: &str| {
            if !v.is_empty() {
                d.insert(k.into(), Value::String(v.to_owned()));
            }
        };
        let mut causes: &[Cause] = &[];
        let internal_cause;
        match self {
            Self::NotFound { resource, name }
            | Self::AlreadyExists { resource, name }
            | Self::Forbidden { resource, name, .. } => {
                put("name", name);
                put("group", &resource.group);
                put("kind", &resource.resource);
            }
            Self::Conflict {
                resource,
                name,
                causes: c,
                ..
            } => {
                put("name", name);
                put("group", &resource.group);
                put("kind", &resource.resource);
                causes = c;
            }
            Self::MethodNotAllowed { resource, .. } => {
                put("group", &resource.group);
                put("kind", &resource.resource);
            }
            Self::Invalid {
                kind,
                name,
                causes: c,
            } => {
                put("name", name);
                put("group", &kind.group);
                put("kind", &kind.kind);
                causes = c;
            }
            Self::InternalError(message) => {
                internal_cause = [Cause {
                    reason: String::new(),
                    message: message.clone(),
                    field: String::new(),
                }];
                causes = &internal_cause;
            }
            _ => {}
        }
        if !causes.is_empty() {
            d.insert(
                "causes".into(),
                Value::Array(causes.iter().map(Cause::to_json).collect()),
            );
        }
        if let Some(s) = self.retry_after_seconds() {
            d.insert("retryAfterSeconds".into(), json!(s));
        }
        (!d.is_empty()).then_some(Value::Object(d))
    }

    /// The `metav1.Status` body: `{kind:"Status", apiVersion:"v1", metadata:{},
    /// status:"Failure", message, reason, details?, code}`.
    pub fn to_status_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("kind".into(), json!("Status"));
        m.insert("apiVersion".into(), json!("v1"));
        m.insert("metadata".into(), json!({}));
        m.insert("status".into(), json!("Failure"));
        m.insert("message".into(), json!(self.to_string()));
        m.insert("reason".into(), json!(self.reason()));
        if let Some(d) = self.details() {
            m.insert("details".into(), d);
        }
        m.insert("code".into(), json!(self.code()));
        Value::Object(m)
    }
}

/// The `Status{status:"Success"}` body that upstream returns for deletes of collections and
/// for deletes of objects without finalizers when the client asked for a Status.
pub fn success_status_json(details: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("kind".into(), json!("Status"));
    m.insert("apiVersion".into(), json!("v1"));
    m.insert("metadata".into(), json!({}));
    m.insert("status".into(), json!("Success"));
    if let Some(d) = details {
        m.insert("details".into(), d);
    }
    Value::Object(m)
}

/// Patch errors keep the code the patch engine chose: 400 for undecodable patches, 422
/// (reason `Invalid`) for patches that do not apply, 500 for a broken schema.
impl From<PatchError> for ApiError {
    fn from(e: PatchError) -> Self {
        match e.status_code() {
            400 => Self::BadRequest(e.to_string()),
            500 => Self::InternalError(e.to_string()),
            _ => Self::Unprocessable(e.to_string()),
        }
    }
}

/// A bad `labelSelector`/`fieldSelector` query is the client's fault: 400, message verbatim.
impl From<SelectorError> for ApiError {
    fn from(e: SelectorError) -> Self {
        Self::BadRequest(e.to_string())
    }
}

#[cfg(test)]
mod tests;
