//! Server-side apply (`PATCH` with `application/apply-patch+yaml`) and the `managedFields`
//! bookkeeping of every other write. The merge, prune and conflict rules live in
//! `edgesite_api::apply`; this module picks the schema and the manager of a request, runs the
//! apply inside the resource handlers' read-modify-write loop, and turns conflicts into the
//! 409 Status upstream sends.

use std::collections::HashMap;

use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use edgesite_api::apply::{self, ApplyError, ApplySchema, Conflict, FieldManager};
use edgesite_api::registry::{GroupKind, ResourceInfo};
use edgesite_api::status::{ApiError, Cause};
use serde_json::{Value, json};

use super::{Ctx, body, create_object, fv, get_kv, json_response, update_loop};
use crate::handlers::target::Subresource;
use crate::storage::meta_str;

/// The media type of apply patches.
pub(super) const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// Upstream's limit on `fieldManager`.
const MAX_MANAGER_LEN: usize = 128;

/// The manager recorded for a write that is not an apply: the `fieldManager` parameter, else
/// the User-Agent up to its first `/` (`kubectl/v1.32.4 (linux/amd64)` → `kubectl`), as
/// upstream. `None` for apply requests, whose ownership the apply itself computes.
pub(super) fn manager_for(
    method: &Method,
    content_type: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Option<String> {
    if *method == Method::PATCH && content_type == APPLY_PATCH {
        return None;
    }
    if let Some(m) = query.get("fieldManager").filter(|m| !m.is_empty()) {
        return Some(m.clone());
    }
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let prefix = ua.split('/').next().unwrap_or_default();
    Some(prefix.chars().take(MAX_MANAGER_LEN).collect())
}

/// The apply schema of `r`'s kind (the fallback schema for kinds without OpenAPI data).
fn schema_for(r: &ResourceInfo) -> Box<dyn ApplySchema + 'static> {
    apply::for_kind(r.group, r.version, r.kind)
}

fn field_manager<'s>(
    ctx: &Ctx,
    r: &ResourceInfo,
    schema: &'s dyn ApplySchema,
    subresource: Option<Subresource>,
) -> FieldManager<'s> {
    let fm = FieldManager::new(schema)
        .at_time(&ctx.state.clock.rfc3339())
        .ignore_status(r.subresource("status").is_some());
    match subresource {
        Some(sub) => fm.subresource(sub.as_str()),
        None => fm,
    }
}

/// Records managed fields for a create (`obj` is the object about to be created).
pub(super) fn record_create(ctx: &Ctx, obj: &mut Value) {
    let Some(manager) = &ctx.manager else {
        return;
    };
    let schema = schema_for(ctx.r);
    field_manager(ctx, ctx.r, &*schema, None).record_update(None, obj, manager);
}

/// Records managed fields for an update or non-apply patch of `current` into `new`.
pub(super) fn record_update(ctx: &Ctx, current: &Value, new: &mut Value, status_sub: bool) {
    let Some(manager) = &ctx.manager else {
        return;
    };
    let schema = schema_for(ctx.r);
    let sub = status_sub.then_some(Subresource::Status);
    field_manager(ctx, ctx.r, &*schema, sub).record_update(Some(current), new, manager);
}

/// The 409 upstream answers to apply conflicts: reason `Conflict`, the conflict list as the
/// message (kubectl prints it verbatim), one `FieldManagerConflict` cause per field.
fn conflict_response(conflicts: &[Conflict]) -> Response {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            json!({
                "reason": "FieldManagerConflict",
                "message": c.cause_message(),
                "field": c.field(),
            })
        })
        .collect();
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": apply::conflicts_message(conflicts),
        "reason": "Conflict",
        "details": {"causes": causes},
        "code": 409,
    });
    json_response(StatusCode::CONFLICT, &body)
}

fn parse_config(body: &[u8]) -> Result<Value, ApiError> {
    let trimmed = body.trim_ascii_start();
    if trimmed.starts_with(b"{") {
        body::parse_json_object(body)
    } else {
        body::parse_yaml_object(body)
    }
}

/// Serves an apply patch of object `name` (created when absent, answered with 201).
pub(super) async fn apply_patch(
    ctx: &Ctx,
    name: &str,
    subresource: Option<Subresource>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let manager = match ctx.param("fieldManager") {
        Some(m) if !m.is_empty() => m.to_owned(),
        _ => {
            return Err(ApiError::invalid(
                GroupKind::new("meta.k8s.io", "PatchOptions"),
                "",
                vec![Cause::required(
                    "fieldManager",
                    "is required for apply patch",
                )],
            ));
        }
    };
    if manager.chars().count() > MAX_MANAGER_LEN {
        return Err(ApiError::invalid(
            GroupKind::new("meta.k8s.io", "PatchOptions"),
            "",
            vec![Cause::too_long("fieldManager", MAX_MANAGER_LEN)],
        ));
    }
    let force = ctx.flag("force");
    let mut config = parse_config(body)?;
    if config
        .pointer("/metadata/managedFields")
        .is_some_and(|v| !v.is_null())
    {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    let warnings = ctx.validate_fields(fv::Operation::Patch, &mut config)?;
    match meta_str(&config, "name") {
        Some(n) if n != name => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        Some(_) => {}
        None => {
            return Err(ApiError::bad_request(
                "metadata.name is required in an apply configuration",
            ));
        }
    }
    let api_version = ctx.r.api_version();
    for (field, want) in [("apiVersion", api_version.as_str()), ("kind", ctx.r.kind)] {
        match config.get(field).and_then(Value::as_str) {
            Some(got) if got == want => {}
            got => {
                return Err(ApiError::bad_request(format!(
                    "the {field} of the apply configuration ({}) does not match the resource ({want})",
                    got.unwrap_or("none")
                )));
            }
        }
    }
    let schema = schema_for(ctx.r);
    let fm = field_manager(ctx, ctx.r, &*schema, subresource);
    let typed_error = |e: ApplyError| {
        ApiError::bad_request(format!(
            "failed to create typed patch object ({}/{name}; {api_version}, Kind={}): {e}",
            ctx.ns.as_deref().unwrap_or_default(),
            ctx.r.kind
        ))
    };
    for _ in 0..4 {
        match get_kv(ctx, name).await {
            Err(ApiError::NotFound { .. }) if subresource.is_none() => {
                let obj = match fm.apply(None, &config, &manager, force) {
                    Ok(obj) => obj,
                    Err(ApplyError::Conflicts(c)) => return Ok(conflict_response(&c)),
                    Err(e) => return Err(typed_error(e)),
                };
                match create_object(
                    &ctx.state,
                    ctx.r,
                    ctx.ns.as_deref(),
                    obj,
                    ctx.dry_run(),
                    ctx.user.as_ref(),
                )
                .await
                {
                    Ok(created) => {
                        return Ok(fv::with_warnings(
                            ctx.respond(StatusCode::CREATED, &created),
                            &warnings,
                        ));
                    }
                    // Created by someone else meanwhile: apply onto theirs.
                    Err(ApiError::AlreadyExists { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        let mut conflicts: Option<Vec<Conflict>> = None;
        let result = update_loop(ctx, name, subresource.is_some(), |current| {
            match fm.apply(Some(current), &config, &manager, force) {
                Ok(obj) => Ok(obj),
                Err(ApplyError::Conflicts(c)) => {
                    conflicts = Some(c);
                    Err(ApiError::conflict(ctx.r, name))
                }
                Err(e) => Err(typed_error(e)),
            }
        })
        .await;
        return match (result, conflicts) {
            (Ok(updated), _) => Ok(fv::with_warnings(
                ctx.respond(StatusCode::OK, &updated),
                &warnings,
            )),
            (Err(_), Some(c)) => Ok(conflict_response(&c)),
            // Deleted between the read and the apply: create it.
            (Err(ApiError::NotFound { .. }), None) if subresource.is_none() => continue,
            (Err(e), None) => Err(e),
        };
    }
    Err(ApiError::conflict(ctx.r, name))
}
