//! The `scale` subresource of deployments, replicasets and statefulsets: an `autoscaling/v1`
//! `Scale` view of the parent's `spec.replicas`, `status.replicas` and label selector. `GET`
//! reads it; `PUT` and `PATCH` (JSON, merge or strategic merge patch of the `Scale`) change
//! only the parent's `spec.replicas`, guarded by the read's revision.

use axum::http::{Method, StatusCode};
use edgesite_api::patch::{self, KnownMergeKeys};
use edgesite_api::registry::{self, ResourceInfo};
use edgesite_api::selector::LabelSelector;
use edgesite_api::status::{ApiError, Cause, OPTIMISTIC_LOCK_MESSAGE};
use edgesite_api::table::{IncludeObject, TableOptions, human_duration, parse_rfc3339};
use serde_json::{Value, json};

use super::guaranteed_update::{Decide, Step, guaranteed_update};
use super::{ApiState, body};
use crate::storage::{self, decode, meta_str, metadata_mut, set_resource_version};

/// A `scale` request on the object `name` of `r`.
pub(super) struct ScaleRequest<'a> {
    /// The parent resource (it has a `scale` subresource).
    pub r: &'static ResourceInfo,
    /// The namespace of the path.
    pub ns: Option<&'a str>,
    /// The parent object's name.
    pub name: &'a str,
    /// The request method.
    pub method: &'a Method,
    /// The request's content type, without parameters, lower case.
    pub content_type: &'a str,
    /// The request body.
    pub body: &'a [u8],
    /// `dryRun=All`.
    pub dry_run: bool,
    /// Answer with a `Table` (the client asked for `as=Table`) built with these options.
    pub table: Option<TableOptions>,
}

/// Serves a `scale` request: the status code and the `Scale` (or its `Table`) to answer with.
pub(super) async fn handle(
    state: &ApiState,
    req: ScaleRequest<'_>,
) -> Result<(StatusCode, Value), ApiError> {
    let table = req.table.clone();
    let (status, scale) = handle_scale(state, req).await?;
    Ok(match table {
        Some(o) => (status, scale_table(&scale, &o)),
        None => (status, scale),
    })
}

async fn handle_scale(
    state: &ApiState,
    req: ScaleRequest<'_>,
) -> Result<(StatusCode, Value), ApiError> {
    let key = registry::storage_key(req.r, req.ns, req.name)
        .ok_or_else(|| ApiError::not_found(req.r, req.name))?;
    let store = &state.storage.store;
    enum Change {
        Replace(Value),
        Json,
        Merge(Value),
        Strategic(Value),
    }
    let change = match *req.method {
        Method::GET => None,
        Method::PUT => Some(Change::Replace(body::decode_object(
            req.content_type,
            req.body,
        )?)),
        Method::PATCH => {
            let parse = || {
                serde_json::from_slice::<Value>(req.body)
                    .map_err(|e| ApiError::bad_request(format!("invalid patch: {e}")))
            };
            Some(match req.content_type {
                "application/json-patch+json" => Change::Json,
                "application/merge-patch+json" => Change::Merge(parse()?),
                "application/strategic-merge-patch+json" => Change::Strategic(parse()?),
                _ => {
                    return Err(ApiError::unsupported_media_type(&[
                        "application/json-patch+json",
                        "application/merge-patch+json",
                        "application/strategic-merge-patch+json",
                    ]));
                }
            })
        }
        _ => return Err(ApiError::method_not_allowed(req.r, "this method")),
    };
    let Some(change) = change else {
        let kv = store
            .get(key.as_bytes())
            .await
            .map_err(storage::store_error)?
            .ok_or_else(|| ApiError::not_found(req.r, req.name))?;
        return Ok((StatusCode::OK, scale_of(&decode(&kv, kv.mod_revision)?)));
    };
    let mut decide = Decide(|current: &Value, rev| {
        let wanted = match &change {
            Change::Replace(v) => v.clone(),
            Change::Json => patch::json_patch(&scale_of(current), req.body)?,
            Change::Merge(p) => patch::merge_patch(&scale_of(current), p)?,
            Change::Strategic(p) => {
                patch::strategic_merge_patch(&scale_of(current), p, &KnownMergeKeys)?
            }
        };
        rescale(&req, current, rev, &wanted)
    });
    let outcome = guaranteed_update(state, req.r, req.name, &key, &mut decide).await?;
    let mut updated = outcome.object;
    if let Some(rev) = outcome.revision {
        set_resource_version(&mut updated, rev);
    }
    Ok((StatusCode::OK, scale_of(&updated)))
}

/// The parent `current` (read at `rev`) with the `spec.replicas` of the `wanted` Scale.
fn rescale(
    req: &ScaleRequest<'_>,
    current: &Value,
    rev: i64,
    wanted: &Value,
) -> Result<Step, ApiError> {
    check_scale(wanted)?;
    if let Some(rv) = meta_str(wanted, "resourceVersion")
        && !rv.is_empty()
        && rv != rev.to_string()
    {
        return Err(ApiError::conflict_with(
            req.r,
            req.name,
            OPTIMISTIC_LOCK_MESSAGE,
        ));
    }
    let replicas = match wanted.pointer("/spec/replicas") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| invalid(req.name, "spec.replicas", v, "must be an integer"))?,
    };
    if replicas < 0 {
        return Err(invalid(
            req.name,
            "spec.replicas",
            &json!(replicas),
            "must be greater than or equal to 0",
        ));
    }
    let unchanged =
        current.pointer("/spec/replicas").and_then(Value::as_i64) == Some(i64::from(replicas));
    let mut updated = current.clone();
    if let Some(m) = updated.as_object_mut() {
        let spec = m.entry("spec").or_insert_with(|| json!({}));
        if !spec.is_object() {
            *spec = json!({});
        }
        if let Some(spec) = spec.as_object_mut() {
            spec.insert("replicas".into(), replicas.into());
        }
    }
    if unchanged || req.dry_run {
        return Ok(Step::Answer(updated));
    }
    if let Some(md) = metadata_mut(&mut updated) {
        let generation = md.get("generation").and_then(Value::as_i64).unwrap_or(1);
        md.insert("generation".into(), (generation + 1).into());
    }
    Ok(Step::Update(updated))
}

/// The `Table` of one `Scale`: upstream's columns Name, Desired, Available and Age.
pub fn scale_table(scale: &Value, o: &TableOptions) -> Value {
    let column = |name: &str, ty: &str, description: &str| json!({"name": name, "type": ty, "format": "", "description": description, "priority": 0});
    let age = meta_str(scale, "creationTimestamp")
        .and_then(parse_rfc3339)
        .map_or_else(|| "<unknown>".to_owned(), |t| human_duration(o.now - t));
    let mut row = json!({"cells": [
        meta_str(scale, "name").unwrap_or_default(),
        scale.pointer("/spec/replicas").cloned().unwrap_or(json!(0)),
        scale.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
        age,
    ]});
    match o.include_object {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": scale.get("metadata").cloned().unwrap_or_else(|| json!({})),
            });
        }
        IncludeObject::Object => row["object"] = scale.clone(),
    }
    let mut table = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "rows": [row],
    });
    if let Some(rv) = meta_str(scale, "resourceVersion") {
        table["metadata"]["resourceVersion"] = rv.into();
    }
    if !o.no_headers {
        table["columnDefinitions"] = json!([
            column("Name", "string", "The name of the scaled object."),
            column("Desired", "integer", "The desired number of replicas."),
            column("Available", "integer", "The observed number of replicas."),
            column("Age", "string", "Time since the scaled object was created."),
        ]);
    }
    table
}

fn invalid(name: &str, field: &str, value: &Value, detail: &str) -> ApiError {
    let kind = registry::GroupKind::new("autoscaling", "Scale");
    ApiError::invalid(kind, name, vec![Cause::invalid(field, value, detail)])
}

/// `apiVersion`/`kind`, when given, must be `autoscaling/v1` `Scale`.
fn check_scale(v: &Value) -> Result<(), ApiError> {
    if !v.is_object() {
        return Err(ApiError::bad_request("the Scale must be a JSON object"));
    }
    for (field, want) in [("apiVersion", "autoscaling/v1"), ("kind", "Scale")] {
        match v.get(field).and_then(Value::as_str) {
            None | Some("") => {}
            Some(got) if got == want => {}
            Some(got) => {
                return Err(ApiError::bad_request(format!(
                    "the {field} of the provided object ({got}) does not match the subresource ({want})"
                )));
            }
        }
    }
    Ok(())
}

/// The `autoscaling/v1` `Scale` of a deployment, replicaset or statefulset.
pub fn scale_of(obj: &Value) -> Value {
    let md = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let mut meta = serde_json::Map::new();
    for f in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = md.get(f) {
            meta.insert(f.into(), v.clone());
        }
    }
    // An absent `spec.replicas` defaults to 1 for every resource with a scale subresource.
    let spec_replicas = obj
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let status_replicas = obj
        .pointer("/status/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let selector = obj
        .pointer("/spec/selector")
        .map(|s| {
            LabelSelector::from_metav1(s)
                .map(|s| s.to_string())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let mut status = json!({"replicas": status_replicas});
    if !selector.is_empty() {
        status["selector"] = selector.into();
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": meta,
        "spec": {"replicas": spec_replicas},
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_view_of_a_deployment() {
        let d = json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u", "resourceVersion": "7", "labels": {"a": "b"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web", "tier": "x"}}},
            "status": {"replicas": 1},
        });
        let s = scale_of(&d);
        assert_eq!(s["kind"], "Scale");
        assert_eq!(s["apiVersion"], "autoscaling/v1");
        assert_eq!(s["metadata"]["resourceVersion"], "7");
        assert!(s["metadata"].get("labels").is_none());
        assert_eq!(s["spec"]["replicas"], 2);
        assert_eq!(s["status"]["replicas"], 1);
        assert_eq!(s["status"]["selector"], "app=web,tier=x");
        let bare = scale_of(&json!({"metadata": {"name": "x"}}));
        assert_eq!(bare["spec"]["replicas"], 1);
        assert_eq!(bare["status"], json!({"replicas": 0}));
    }

    #[test]
    fn scale_table_columns() {
        let s = scale_of(&json!({
            "metadata": {"name": "web", "creationTimestamp": "1970-01-01T00:00:00Z", "resourceVersion": "3"},
            "spec": {"replicas": 3},
            "status": {"replicas": 2},
        }));
        let t = scale_table(&s, &TableOptions::at(120));
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["metadata"]["resourceVersion"], "3");
        let names: Vec<_> = t["columnDefinitions"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(names, ["Name", "Desired", "Available", "Age"]);
        assert_eq!(t["rows"][0]["cells"], json!(["web", 3, 2, "2m"]));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn scale_type_is_checked() {
        assert!(check_scale(&json!({"kind": "Scale", "apiVersion": "autoscaling/v1"})).is_ok());
        assert!(check_scale(&json!({"spec": {"replicas": 1}})).is_ok());
        assert!(check_scale(&json!({"kind": "Deployment"})).is_err());
    }
}
