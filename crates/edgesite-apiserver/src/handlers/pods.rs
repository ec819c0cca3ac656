//! The pod subresources that act on a pod rather than read or replace it: `binding` (the
//! scheduler assigns the pod to a node) and `eviction` (a delete that disruption policies may
//! refuse; `kubectl drain` uses it). Both answer `201` with a Success `Status`, as upstream.

use axum::http::{Method, StatusCode};
use axum::response::Response;
use edgesite_api::registry::{self, ResourceInfo};
use edgesite_api::status::{ApiError, Cause, success_status_json};
use serde_json::{Value, json};

use super::guaranteed_update::{Decide, Step, guaranteed_update};
use super::resources::delete::{DeleteOptions, delete_object};
use super::target::Subresource;
use super::{ApiState, body, json_response};
use crate::storage::{meta_str, metadata_mut};

/// Whether `sub` of `r` is one of the pod actions served here.
pub fn is_pod_action(r: &ResourceInfo, sub: Subresource) -> bool {
    r.group.is_empty()
        && r.plural == "pods"
        && matches!(sub, Subresource::Binding | Subresource::Eviction)
}

/// One pod action request.
#[derive(Debug)]
pub struct PodAction<'a> {
    /// `binding` or `eviction`.
    pub subresource: Subresource,
    /// The pod's namespace.
    pub namespace: &'a str,
    /// The pod's name.
    pub name: &'a str,
    /// The request method (only POST is served).
    pub method: &'a Method,
    /// The request's media type.
    pub content_type: &'a str,
    /// The request body.
    pub body: &'a [u8],
    /// `dryRun=All` in the query.
    pub dry_run: bool,
}

/// Serves a pod action.
pub async fn handle(state: &ApiState, a: PodAction<'_>) -> Result<Response, ApiError> {
    let pods = registry::lookup("", "v1", "pods")
        .ok_or_else(|| ApiError::internal("pods are not registered"))?;
    if a.method != Method::POST {
        return Err(ApiError::method_not_allowed(pods, "this method"));
    }
    let obj = body::decode_object(a.content_type, a.body)?;
    let (kinds, what): (&[(&str, &str)], &str) = match a.subresource {
        Subresource::Binding => (&[("v1", "Binding")], "Binding"),
        _ => (
            &[("policy/v1", "Eviction"), ("policy/v1beta1", "Eviction")],
            "Eviction",
        ),
    };
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    if !kinds.iter().any(|(v, k)| {
        (api_version.is_empty() || api_version == *v) && (kind.is_empty() || kind == *k)
    }) {
        return Err(ApiError::bad_request(format!(
            "the body must be a {what}, not {api_version}/{kind}"
        )));
    }
    if let Some(n) = meta_str(&obj, "name")
        && !n.is_empty()
        && n != a.name
    {
        return Err(ApiError::bad_request(format!(
            "name in URL does not match name in {what} object"
        )));
    }
    if a.subresource == Subresource::Binding {
        bind(state, pods, &a, &obj).await?;
    } else {
        evict(state, pods, &a, &obj).await?;
    }
    let mut status = success_status_json(None);
    status["code"] = json!(201);
    Ok(json_response(StatusCode::CREATED, &status))
}

/// Sets `spec.nodeName` of an unassigned pod, adds the binding's annotations and the
/// `PodScheduled` condition; `409` if the pod is assigned already or being deleted.
async fn bind(
    state: &ApiState,
    pods: &'static ResourceInfo,
    a: &PodAction<'_>,
    binding: &Value,
) -> Result<(), ApiError> {
    let target_kind = binding.pointer("/target/kind").and_then(Value::as_str);
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !matches!(target_kind, None | Some("") | Some("Node")) {
        return Err(ApiError::invalid(
            pods,
            a.name,
            vec![Cause::not_supported(
                "target.kind",
                &json!(target_kind),
                &["Node"],
            )],
        ));
    }
    if node.is_empty() {
        return Err(ApiError::invalid(
            pods,
            a.name,
            vec![Cause::required("target.name", "")],
        ));
    }
    let key = registry::storage_key(pods, Some(a.namespace), a.name)
        .ok_or_else(|| ApiError::not_found(pods, a.name))?;
    let now = state.clock.rfc3339();
    let mut decide = Decide(|current: &Value, _| {
        let mut pod = current.clone();
        assign(pods, a.name, &mut pod, node, binding)?;
        set_scheduled_condition(&mut pod, &now);
        Ok(if a.dry_run {
            Step::Answer(pod)
        } else {
            Step::Update(pod)
        })
    });
    guaranteed_update(state, pods, a.name, &key, &mut decide).await?;
    Ok(())
}

/// Sets `spec.nodeName` of `pod` to `node` with the binding's annotations; `409` if the pod
/// is assigned already or being deleted.
fn assign(
    pods: &ResourceInfo,
    name: &str,
    pod: &mut Value,
    node: &str,
    binding: &Value,
) -> Result<(), ApiError> {
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(ApiError::conflict_with(
            pods,
            name,
            &format!("pod {name} is being deleted, cannot be assigned to a host"),
        ));
    }
    let assigned = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !assigned.is_empty() {
        return Err(ApiError::conflict_with(
            pods,
            name,
            &format!("pod {name} is already assigned to node {assigned:?}"),
        ));
    }
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Err(ApiError::bad_request("the pod has no spec"));
    };
    spec.insert("nodeName".into(), node.into());
    if let Some(Value::Object(annotations)) = binding.pointer("/metadata/annotations")
        && !annotations.is_empty()
        && let Some(md) = metadata_mut(pod)
    {
        let into = md
            .entry("annotations")
            .or_insert_with(|| json!({}))
            .as_object_mut();
        if let Some(into) = into {
            for (k, v) in annotations {
                into.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(())
}

/// Adds (or sets) the `PodScheduled=True` condition.
fn set_scheduled_condition(pod: &mut Value, now: &str) {
    let Some(obj) = pod.as_object_mut() else {
        return;
    };
    let status = obj.entry("status").or_insert_with(|| json!({}));
    let Some(status) = status.as_object_mut() else {
        return;
    };
    let conditions = status.entry("conditions").or_insert_with(|| json!([]));
    let Some(list) = conditions.as_array_mut() else {
        return;
    };
    let cond = json!({
        "type": "PodScheduled",
        "status": "True",
        "lastProbeTime": null,
        "lastTransitionTime": now,
    });
    match list
        .iter_mut()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("PodScheduled"))
    {
        Some(c) => *c = cond,
        None => list.push(cond),
    }
}

/// Deletes the pod with the eviction's DeleteOptions. There are no PodDisruptionBudgets yet,
/// so an eviction is never refused (upstream answers 429 when a budget would be broken).
async fn evict(
    state: &ApiState,
    pods: &'static ResourceInfo,
    a: &PodAction<'_>,
    eviction: &Value,
) -> Result<(), ApiError> {
    let o = eviction.get("deleteOptions").cloned().unwrap_or(json!({}));
    let opts = DeleteOptions {
        grace_period: o.get("gracePeriodSeconds").and_then(Value::as_i64),
        precondition_uid: o
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_owned),
        precondition_rv: o
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_owned),
        dry_run: a.dry_run
            || o.get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|d| d.iter().any(|v| v == "All")),
        ..DeleteOptions::default()
    };
    delete_object(state, pods, Some(a.namespace), a.name, &opts).await?;
    Ok(())
}
