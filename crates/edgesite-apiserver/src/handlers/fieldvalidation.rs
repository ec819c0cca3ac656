//! Server-side field validation (the `fieldValidation` query parameter of create, update and
//! patch): fields the OpenAPI schema of the kind does not know are rejected (`Strict`), dropped
//! with a `Warning` header each (`Warn`, the default, as upstream) or dropped silently
//! (`Ignore`). They are always dropped before storing, as kube-apiserver does when it decodes a
//! body into its typed objects. Duplicate fields are not detected: bodies are decoded into JSON
//! values, which keep the last occurrence.

use axum::http::HeaderValue;
use axum::response::Response;
use edgesite_api::openapi::OpenApi;
use edgesite_api::registry::{GroupKind, ResourceInfo};
use edgesite_api::status::{ApiError, Cause};
use serde_json::Value;

/// The `fieldValidation` directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Directive {
    /// Drop unknown fields silently.
    Ignore,
    /// Drop unknown fields and warn about each.
    Warn,
    /// Reject the request.
    Strict,
}

/// Which request the body came with: it names the options type in errors and decides the
/// wording of the strict error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Operation {
    /// POST of a new object.
    Create,
    /// PUT of a whole object.
    Update,
    /// PATCH: the patched object is checked.
    Patch,
}

impl Operation {
    fn options_kind(self) -> &'static str {
        match self {
            Operation::Create => "CreateOptions",
            Operation::Update => "UpdateOptions",
            Operation::Patch => "PatchOptions",
        }
    }
}

impl Directive {
    /// Parses the query parameter; absent or empty means `Warn`, as upstream.
    pub(super) fn parse(value: Option<&str>, op: Operation) -> Result<Self, ApiError> {
        match value.unwrap_or("") {
            "" | "Warn" => Ok(Directive::Warn),
            "Ignore" => Ok(Directive::Ignore),
            "Strict" => Ok(Directive::Strict),
            other => Err(ApiError::invalid(
                GroupKind::new("meta.k8s.io", op.options_kind()),
                "",
                vec![Cause::not_supported(
                    "fieldValidation",
                    &Value::String(other.to_owned()),
                    &["Ignore", "Strict", "Warn"],
                )],
            )),
        }
    }
}

/// Checks `obj`, an object of `r` from a request, against the schema of its kind: removes the
/// fields the schema does not know and returns the warnings to send, or the error `Strict`
/// asks for. Kinds without a schema pass unchanged.
pub(super) fn validate(
    r: &ResourceInfo,
    directive: Directive,
    op: Operation,
    obj: &mut Value,
) -> Result<Vec<String>, ApiError> {
    let api = OpenApi::get();
    let unknown: Vec<String> = match directive {
        Directive::Strict => api.unknown_fields(r.group, r.version, r.kind, obj),
        _ => api.prune_unknown_fields(r.group, r.version, r.kind, obj),
    };
    let messages: Vec<String> = unknown
        .iter()
        .map(|path| format!("unknown field {path:?}"))
        .collect();
    match directive {
        Directive::Strict if !messages.is_empty() => {
            let strict = format!("strict decoding error: {}", messages.join(", "));
            Err(ApiError::bad_request(match op {
                // The create and update handlers wrap decoding errors with the body's type.
                Operation::Create | Operation::Update => {
                    let (kind, version) = body_kind_version(obj, r);
                    format!(
                        "{kind} in version {version:?} cannot be handled as a {}: {strict}",
                        r.kind
                    )
                }
                Operation::Patch => strict,
            }))
        }
        Directive::Warn => Ok(messages),
        _ => Ok(Vec::new()),
    }
}

/// The kind and version the body claims, defaulting to the resource's.
fn body_kind_version<'a>(obj: &'a Value, r: &'a ResourceInfo) -> (&'a str, &'a str) {
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .unwrap_or(r.kind);
    let version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .map(|v| v.rsplit('/').next().unwrap_or(v))
        .unwrap_or(r.version);
    (kind, version)
}

/// Adds one `Warning: 299 - "…"` header per warning to `resp`, quoting as RFC 7234 asks.
pub(super) fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let quoted = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{quoted}\"")) {
            resp.headers_mut().append("warning", v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use edgesite_api::registry;
    use serde_json::json;

    use super::*;

    fn deploy() -> &'static ResourceInfo {
        registry::lookup("apps", "v1", "deployments").unwrap()
    }

    #[test]
    fn directive_defaults_to_warn_and_rejects_unknown_values() {
        assert_eq!(
            Directive::parse(None, Operation::Create).unwrap(),
            Directive::Warn
        );
        assert_eq!(
            Directive::parse(Some("Strict"), Operation::Patch).unwrap(),
            Directive::Strict
        );
        let err = Directive::parse(Some("strict"), Operation::Update).unwrap_err();
        assert_eq!(err.code(), 422);
        let status = err.to_status_json();
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .starts_with("UpdateOptions.meta.k8s.io"),
            "{status}"
        );
    }

    #[test]
    fn strict_wording_depends_on_the_operation() {
        let mut obj =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"a": 1, "b": 2}});
        let err = validate(deploy(), Directive::Strict, Operation::Create, &mut obj).unwrap_err();
        assert_eq!(
            err.to_status_json()["message"],
            "Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding \
             error: unknown field \"spec.a\", unknown field \"spec.b\""
        );
        let err = validate(deploy(), Directive::Strict, Operation::Patch, &mut obj).unwrap_err();
        assert_eq!(
            err.to_status_json()["message"],
            "strict decoding error: unknown field \"spec.a\", unknown field \"spec.b\""
        );
    }

    #[test]
    fn warn_and_ignore_prune() {
        let mut obj = json!({"spec": {"a": 1, "replicas": 1}});
        let warnings = validate(deploy(), Directive::Warn, Operation::Update, &mut obj).unwrap();
        assert_eq!(warnings, ["unknown field \"spec.a\""]);
        assert_eq!(obj, json!({"spec": {"replicas": 1}}));
        let mut obj = json!({"spec": {"a": 1}});
        assert!(
            validate(deploy(), Directive::Ignore, Operation::Update, &mut obj)
                .unwrap()
                .is_empty()
        );
        assert_eq!(obj, json!({"spec": {}}));
        let resp = with_warnings(Response::new(axum::body::Body::empty()), &warnings);
        assert_eq!(
            resp.headers()["warning"],
            "299 - \"unknown field \\\"spec.a\\\"\""
        );
    }
}
