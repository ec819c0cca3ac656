//! Reviews: `SelfSubjectAccessReview` (authorization.k8s.io/v1, what `kubectl auth can-i`
//! posts), `SelfSubjectRulesReview` (`kubectl auth can-i --list`), `SubjectAccessReview` and
//! `LocalSubjectAccessReview` (another user's access, for whoever may create them: cluster
//! and namespace admins), and `SelfSubjectReview` (authentication.k8s.io/v1, `kubectl auth
//! whoami`). All are answered from the server's authorizer with `201 Created`; nothing is
//! stored.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use edgesite_api::registry::ResourceInfo;
use edgesite_api::status::{ApiError, Cause};
use serde_json::{Map, Value, json};

use super::resources::check_type;
use super::target::Target;
use super::{ApiState, body, json_response, status_response};
use crate::authn::Identity;
use crate::authz::{Decision, RequestAttributes, ResourceAttributes};

/// Whether `target` is a review resource this module answers (instead of the generic
/// handlers, which would store it).
pub fn is_review(target: &Target) -> bool {
    matches!(
        (target.resource.group, target.resource.plural),
        (
            "authorization.k8s.io",
            "selfsubjectaccessreviews"
                | "selfsubjectrulesreviews"
                | "subjectaccessreviews"
                | "localsubjectaccessreviews"
        ) | ("authentication.k8s.io", "selfsubjectreviews")
    )
}

/// Answers a request on a review resource (see [`is_review`]): `POST` evaluates the review
/// for the requesting user; every other method is 405.
pub async fn handle(state: Arc<ApiState>, target: Target, req: Request) -> Response {
    match handle_inner(&state, &target, req).await {
        Ok(resp) => resp,
        Err(err) => status_response(&err),
    }
}

async fn handle_inner(
    state: &ApiState,
    target: &Target,
    req: Request,
) -> Result<Response, ApiError> {
    let r = target.resource;
    if target.namespace.is_some() != r.namespaced
        || target.name.is_some()
        || target.subresource.is_some()
    {
        return Err(ApiError::not_found(
            r,
            target.name.as_deref().unwrap_or_default(),
        ));
    }
    if req.method() != Method::POST {
        let action = match *req.method() {
            Method::GET => "list",
            Method::DELETE => "deletecollection",
            _ => "this method",
        };
        return Err(ApiError::method_not_allowed(r, action));
    }
    let identity = req
        .extensions()
        .get::<Identity>()
        .cloned()
        .unwrap_or_else(Identity::anonymous);
    let content_type = body::media_type(req.headers());
    let bytes = body::read_body(req.into_body()).await?;
    let mut obj = body::decode_object(&content_type, &bytes)?;
    check_type(r, &mut obj)?;
    let out = match r.plural {
        "selfsubjectaccessreviews" => access_review(state, r, &identity, obj, None)?,
        "subjectaccessreviews" => {
            let subject = subject_of(r, &obj)?;
            access_review(state, r, &subject, obj, None)?
        }
        "localsubjectaccessreviews" => {
            let subject = subject_of(r, &obj)?;
            access_review(state, r, &subject, obj, target.namespace.as_deref())?
        }
        "selfsubjectrulesreviews" => rules_review(state, r, &identity, obj),
        _ => self_subject_review(r, &identity, obj),
    };
    Ok(json_response(StatusCode::CREATED, &out))
}

/// The response metadata: what the client sent (reviews have no name), with
/// `creationTimestamp: null` as upstream serializes an unset time.
fn response_metadata(obj: &Value) -> Value {
    let mut md = obj
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    md.entry("creationTimestamp").or_insert(Value::Null);
    Value::Object(md)
}

fn str_field<'a>(attrs: &'a Map<String, Value>, name: &str) -> &'a str {
    attrs.get(name).and_then(Value::as_str).unwrap_or_default()
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// The user a (Local)SubjectAccessReview asks about: `spec.user`, `spec.groups` (as given:
/// upstream adds no `system:authenticated`), `spec.uid` and `spec.extra`.
fn subject_of(r: &ResourceInfo, obj: &Value) -> Result<Identity, ApiError> {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let user = spec.get("user").and_then(Value::as_str).unwrap_or_default();
    let groups: Vec<String> = spec
        .get("groups")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if user.is_empty() && groups.is_empty() {
        return Err(ApiError::invalid(
            r,
            "",
            vec![Cause::invalid(
                "spec.user",
                &Value::String(String::new()),
                "at least one of user or group must be specified",
            )],
        ));
    }
    let extra = spec
        .get("extra")
        .and_then(|e| serde_json::from_value(e.clone()).ok())
        .unwrap_or_default();
    Ok(Identity {
        user: user.to_owned(),
        uid: spec
            .get("uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        groups,
        extra,
    })
}

/// An access review for `identity`; `local_namespace` is the namespace of a
/// LocalSubjectAccessReview's path, which its `spec.resourceAttributes.namespace` must match
/// (and defaults to).
fn access_review(
    state: &ApiState,
    r: &ResourceInfo,
    identity: &Identity,
    mut obj: Value,
    local_namespace: Option<&str>,
) -> Result<Value, ApiError> {
    if let Some(ns) = local_namespace {
        if obj.pointer("/spec/nonResourceAttributes").is_some() {
            return Err(ApiError::invalid(
                r,
                "",
                vec![Cause::invalid(
                    "spec.nonResourceAttributes",
                    obj.pointer("/spec/nonResourceAttributes")
                        .unwrap_or(&Value::Null),
                    "disallowed on this kind of request",
                )],
            ));
        }
        if let Some(a) = obj
            .pointer_mut("/spec/resourceAttributes")
            .and_then(Value::as_object_mut)
        {
            let given = a
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if given.is_empty() {
                a.insert("namespace".into(), ns.into());
            } else if given != ns {
                return Err(ApiError::bad_request(format!(
                    "spec.resourceAttributes.namespace must match namespace: {given} {ns}"
                )));
            }
        }
    }
    let spec = obj.get("spec").and_then(Value::as_object);
    let resource_attrs = spec
        .and_then(|s| s.get("resourceAttributes"))
        .and_then(Value::as_object);
    let non_resource_attrs = spec
        .and_then(|s| s.get("nonResourceAttributes"))
        .and_then(Value::as_object);
    let invalid = |causes| ApiError::invalid(r, "", causes);
    let (verb, path, resource) = match (resource_attrs, non_resource_attrs) {
        (Some(a), None) => {
            let group = str_field(a, "group");
            let resource = str_field(a, "resource");
            let namespace = str_field(a, "namespace");
            let name = str_field(a, "name");
            let subresource = str_field(a, "subresource");
            let version = non_empty(str_field(a, "version")).unwrap_or_else(|| "v1".to_owned());
            // The URL the request would use; authorizers that look at paths see a plausible one.
            let mut path = if group.is_empty() {
                format!("/api/{version}")
            } else {
                format!("/apis/{group}/{version}")
            };
            if !namespace.is_empty() {
                path.push_str(&format!("/namespaces/{namespace}"));
            }
            for seg in [resource, name, subresource] {
                if !seg.is_empty() {
                    path.push('/');
                    path.push_str(seg);
                }
            }
            (
                str_field(a, "verb").to_owned(),
                path,
                Some(ResourceAttributes {
                    api_group: group.to_owned(),
                    resource: resource.to_owned(),
                    subresource: non_empty(subresource),
                    namespace: non_empty(namespace),
                    name: non_empty(name),
                }),
            )
        }
        (None, Some(a)) => (
            str_field(a, "verb").to_owned(),
            str_field(a, "path").to_owned(),
            None,
        ),
        (Some(_), Some(_)) => {
            return Err(invalid(vec![Cause::invalid(
                "spec.resourceAttributes",
                &Value::String("resourceAttributes".into()),
                "cannot be specified in combination with nonResourceAttributes",
            )]));
        }
        (None, None) => {
            return Err(invalid(vec![Cause::required(
                "spec.resourceAttributes",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )]));
        }
    };
    let attrs = RequestAttributes {
        identity,
        verb,
        path: &path,
        resource,
    };
    let status = match state.authorizer.authorize(&attrs) {
        Decision::Allow => json!({"allowed": true}),
        // "No opinion" carries the authorizers' reason only when they gave one (a missing
        // role); kubectl prints "no" and, with a reason, "no - <reason>".
        Decision::Deny(why) if why.is_empty() => json!({"allowed": false}),
        Decision::Deny(why) => json!({"allowed": false, "reason": why}),
    };
    Ok(json!({
        "kind": r.kind,
        "apiVersion": r.api_version(),
        "metadata": response_metadata(&obj),
        "spec": obj.get("spec").cloned().unwrap_or_else(|| json!({})),
        "status": status,
    }))
}

/// A SelfSubjectRulesReview: every rule the authorizers grant the requester in
/// `spec.namespace`, as `kubectl auth can-i --list` shows them.
fn rules_review(state: &ApiState, r: &ResourceInfo, identity: &Identity, obj: Value) -> Value {
    let namespace = obj
        .pointer("/spec/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let rules = state.authorizer.rules_for(identity, namespace);
    let resource_rules: Vec<Value> = rules
        .resource_rules
        .iter()
        .map(|rule| {
            let mut v = json!({"verbs": rule.verbs});
            for (k, list) in [
                ("apiGroups", &rule.api_groups),
                ("resources", &rule.resources),
                ("resourceNames", &rule.resource_names),
            ] {
                if !list.is_empty() {
                    v[k] = json!(list);
                }
            }
            v
        })
        .collect();
    let non_resource_rules: Vec<Value> = rules
        .non_resource_rules
        .iter()
        .map(|rule| json!({"verbs": rule.verbs, "nonResourceURLs": rule.non_resource_urls}))
        .collect();
    let mut status = json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": rules.incomplete,
    });
    if !rules.errors.is_empty() {
        status["evaluationError"] = Value::String(rules.errors.join(", "));
    }
    json!({
        "kind": r.kind,
        "apiVersion": r.api_version(),
        "metadata": response_metadata(&obj),
        "spec": obj.get("spec").cloned().unwrap_or_else(|| json!({})),
        "status": status,
    })
}

fn self_subject_review(r: &ResourceInfo, identity: &Identity, obj: Value) -> Value {
    let mut user_info = Map::new();
    user_info.insert("username".into(), identity.user.clone().into());
    if !identity.uid.is_empty() {
        user_info.insert("uid".into(), identity.uid.clone().into());
    }
    user_info.insert("groups".into(), json!(identity.groups));
    if !identity.extra.is_empty() {
        user_info.insert("extra".into(), json!(identity.extra));
    }
    json!({
        "kind": r.kind,
        "apiVersion": r.api_version(),
        "metadata": response_metadata(&obj),
        "status": {"userInfo": user_info},
    })
}
