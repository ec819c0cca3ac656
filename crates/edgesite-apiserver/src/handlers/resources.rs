//! Generic resource handlers over raw JSON for every resource of the registry: get, list,
//! watch, create, update, patch, delete and the `status` subresource.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Query, Request};
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use edgesite_api::openapi::OpenApi;
use edgesite_api::patch::{self, KnownMergeKeys};
use edgesite_api::registry::{self, ResourceInfo};
use edgesite_api::selector::{FieldSelector, LabelSelector};
use edgesite_api::status::{ApiError, Cause, OPTIMISTIC_LOCK_MESSAGE};
use edgesite_api::table::{IncludeObject, TableOptions, table_for};
use edgesite_store::watch_cache::{ListOptions, WatchCacheError};
use edgesite_store::{Error as StoreError, KeyRange, KeyValue, RangeRequest};
use serde_json::{Map, Value, json};

use super::fieldvalidation as fv;
use super::guaranteed_update::{Attempt, Step, TryUpdate, guaranteed_update};
use super::target::{Subresource, Target, Verb};
use super::{ApiState, body, json_bytes_response, json_response, status_response};
use crate::admission::{Attributes, Operation};
use crate::storage::{self, decode, encode, meta_str, metadata_mut, set_resource_version};

#[path = "delete.rs"]
pub mod delete;

#[path = "apply.rs"]
mod apply;

/// Serves one resource request (after authentication and authorization).
pub async fn handle(state: Arc<ApiState>, target: Target, req: Request) -> Response {
    if super::reviews::is_review(&target) {
        return super::reviews::handle(state, target, req).await;
    }
    match handle_inner(state, target, req).await {
        Ok(resp) => resp,
        Err(err) => status_response(&err),
    }
}

struct Ctx {
    state: Arc<ApiState>,
    r: &'static ResourceInfo,
    ns: Option<String>,
    query: HashMap<String, String>,
    table: bool,
    /// Who `managedFields` credits for this write (`None`: an apply, which records itself).
    manager: Option<String>,
    /// Who asks (admission's RBAC escalation check needs it).
    user: Option<crate::authn::Identity>,
}

impl Ctx {
    fn key(&self, name: &str) -> Result<String, ApiError> {
        registry::storage_key(self.r, self.ns.as_deref(), name)
            .ok_or_else(|| ApiError::not_found(self.r, name))
    }

    fn param(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.param(k), Some("true" | "1"))
    }

    fn dry_run(&self) -> bool {
        self.param("dryRun") == Some("All")
    }

    /// Field validation of a request body per the `fieldValidation` parameter: the warnings
    /// to send, with unknown fields pruned from `obj`.
    fn validate_fields(&self, op: fv::Operation, obj: &mut Value) -> Result<Vec<String>, ApiError> {
        let directive = fv::Directive::parse(self.param("fieldValidation"), op)?;
        fv::validate(self.r, directive, op, obj)
    }

    fn table_options(&self) -> TableOptions {
        let mut o = TableOptions::at(self.state.clock.unix_seconds());
        if let Some(i) = self.param("includeObject").and_then(IncludeObject::parse) {
            o.include_object = i;
        }
        o
    }

    fn respond(&self, status: StatusCode, obj: &Value) -> Response {
        if self.table {
            let mut o = self.table_options();
            o.resource_version = meta_str(obj, "resourceVersion").map(str::to_owned);
            return json_response(status, &table_for(self.r, &[obj], &o));
        }
        json_response(status, obj)
    }
}

async fn handle_inner(
    state: Arc<ApiState>,
    target: Target,
    req: Request,
) -> Result<Response, ApiError> {
    let Query(query) = Query::<HashMap<String, String>>::try_from_uri(req.uri())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let table = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("as=Table"));
    let content_type = body::media_type(req.headers());
    let method = req.method().clone();
    let manager = apply::manager_for(&method, &content_type, &query, req.headers());
    let user = req.extensions().get::<crate::authn::Identity>().cloned();
    let ctx = Ctx {
        state,
        r: target.resource,
        ns: target.namespace.clone(),
        query,
        table,
        manager,
        user,
    };
    let body = body::read_body(req.into_body()).await?;
    let w = Write {
        content_type: &content_type,
        body: &body,
    };
    match target.subresource {
        Some(Subresource::Scale) => return scale(&ctx, &target, &method, w).await,
        Some(sub @ (Subresource::Binding | Subresource::Eviction))
            if super::pods::is_pod_action(ctx.r, sub) =>
        {
            return pod_action(&ctx, &target, sub, &method, w).await;
        }
        Some(Subresource::Finalize) if method != Method::PUT => {
            return Err(ApiError::method_not_allowed(ctx.r, "this method"));
        }
        _ => {}
    }
    if !ctx.r.namespaced && ctx.ns.is_some() {
        return Err(ApiError::not_found(
            ctx.r,
            target.name.as_deref().unwrap_or(""),
        ));
    }
    // HEAD and the methods no verb stands for are not served; a watch of one name is a get
    // (clients watch one object through a list with a `metadata.name` field selector).
    let verb = match Verb::of(&method, target.name.is_some(), ctx.flag("watch")) {
        _ if method == Method::HEAD => None,
        Some(Verb::Watch) if target.name.is_some() => Some(Verb::Get),
        v => v,
    };
    let sub = target.subresource;
    match (verb, target.name.as_deref()) {
        (Some(Verb::Watch), None) => {
            super::watch::watch(&ctx.state, ctx.r, ctx.ns.as_deref(), &ctx.query, ctx.table).await
        }
        (Some(Verb::List), None) => list(&ctx).await,
        (Some(Verb::Get), Some(name)) => get(&ctx, name).await,
        (Some(Verb::Create), None) => create(&ctx, w).await,
        (Some(Verb::Create), Some(_)) => Err(ApiError::method_not_allowed(ctx.r, "create")),
        (Some(Verb::Update), Some(name)) => update(&ctx, name, sub, w).await,
        (Some(Verb::Patch), Some(name)) => patch(&ctx, name, sub, w).await,
        (Some(Verb::Delete), Some(name)) if sub.is_none() => {
            delete::delete(&ctx, name, w.content_type, w.body).await
        }
        (Some(Verb::DeleteCollection), None) => {
            delete::delete_collection(&ctx, w.content_type, w.body).await
        }
        _ => Err(ApiError::method_not_allowed(ctx.r, "this method")),
    }
}

/// A request's body and its media type.
#[derive(Clone, Copy)]
struct Write<'a> {
    content_type: &'a str,
    body: &'a [u8],
}

/// `scale`: read or write a workload's replica count through an `autoscaling/v1` Scale.
async fn scale(
    ctx: &Ctx,
    target: &Target,
    method: &Method,
    w: Write<'_>,
) -> Result<Response, ApiError> {
    let req = super::scale::ScaleRequest {
        r: ctx.r,
        ns: ctx.ns.as_deref(),
        name: target.name.as_deref().unwrap_or_default(),
        method,
        content_type: w.content_type,
        body: w.body,
        dry_run: ctx.dry_run(),
        table: ctx.table.then(|| ctx.table_options()),
    };
    let (status, scale) = super::scale::handle(&ctx.state, req).await?;
    Ok(json_response(status, &scale))
}

/// `binding` and `eviction` of a pod.
async fn pod_action(
    ctx: &Ctx,
    target: &Target,
    subresource: Subresource,
    method: &Method,
    w: Write<'_>,
) -> Result<Response, ApiError> {
    let action = super::pods::PodAction {
        subresource,
        namespace: ctx.ns.as_deref().unwrap_or_default(),
        name: target.name.as_deref().unwrap_or_default(),
        method,
        content_type: w.content_type,
        body: w.body,
        dry_run: ctx.dry_run(),
    };
    super::pods::handle(&ctx.state, action).await
}

/// GET of one object, read from the store (one key, so always current).
async fn get(ctx: &Ctx, name: &str) -> Result<Response, ApiError> {
    let kv = get_kv(ctx, name).await?;
    let obj = decode(&kv, kv.mod_revision)?;
    Ok(ctx.respond(StatusCode::OK, &obj))
}

/// POST to a collection.
async fn create(ctx: &Ctx, w: Write<'_>) -> Result<Response, ApiError> {
    if ctx.r.namespaced && ctx.ns.is_none() {
        return Err(ApiError::method_not_allowed(ctx.r, "create"));
    }
    let mut obj = body::decode_object(w.content_type, w.body)?;
    let warnings = ctx.validate_fields(fv::Operation::Create, &mut obj)?;
    apply::record_create(ctx, &mut obj);
    let created = create_object(
        &ctx.state,
        ctx.r,
        ctx.ns.as_deref(),
        obj,
        ctx.dry_run(),
        ctx.user.as_ref(),
    )
    .await?;
    Ok(fv::with_warnings(
        ctx.respond(StatusCode::CREATED, &created),
        &warnings,
    ))
}

/// PUT of an object, its `status` or a namespace's `finalize`.
async fn update(
    ctx: &Ctx,
    name: &str,
    sub: Option<Subresource>,
    w: Write<'_>,
) -> Result<Response, ApiError> {
    let mut obj = body::decode_object(w.content_type, w.body)?;
    let warnings = ctx.validate_fields(fv::Operation::Update, &mut obj)?;
    check_type(ctx.r, &mut obj)?;
    check_namespace(ctx.r, ctx.ns.as_deref(), &mut obj)?;
    match meta_str(&obj, "name") {
        Some(n) if !n.is_empty() && n != name => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        _ => {
            if let Some(m) = metadata_mut(&mut obj) {
                m.insert("name".into(), name.into());
            }
        }
    }
    let updated = if sub == Some(Subresource::Finalize) {
        update_loop(ctx, name, false, |current| {
            Ok(delete::finalize_namespace(current, &obj))
        })
        .await?
    } else {
        update_loop(ctx, name, sub.is_some(), |current| {
            let mut new = obj.clone();
            delete::keep_namespace_finalizers(current, &mut new);
            Ok(new)
        })
        .await?
    };
    Ok(fv::with_warnings(
        ctx.respond(StatusCode::OK, &updated),
        &warnings,
    ))
}

/// The patch formats besides server-side apply.
enum PatchKind {
    Json,
    Merge,
    Strategic,
}

/// PATCH of an object or its `status`: a JSON, merge or strategic merge patch, or an apply.
async fn patch(
    ctx: &Ctx,
    name: &str,
    sub: Option<Subresource>,
    w: Write<'_>,
) -> Result<Response, ApiError> {
    let kind = match w.content_type {
        apply::APPLY_PATCH => return apply::apply_patch(ctx, name, sub, w.body).await,
        "application/json-patch+json" => PatchKind::Json,
        "application/merge-patch+json" => PatchKind::Merge,
        "application/strategic-merge-patch+json" => PatchKind::Strategic,
        _ => {
            return Err(ApiError::unsupported_media_type(&[
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
                apply::APPLY_PATCH,
            ]));
        }
    };
    let parsed: Option<Value> = match kind {
        PatchKind::Json => None,
        _ => Some(
            serde_json::from_slice(w.body)
                .map_err(|e| ApiError::bad_request(format!("invalid patch: {e}")))?,
        ),
    };
    let schema = OpenApi::get().kind_schema(ctx.r.group, ctx.r.version, ctx.r.kind);
    let mut warnings = Vec::new();
    let updated = update_loop(ctx, name, sub.is_some(), |current| {
        let mut out = match (&kind, &parsed, &schema) {
            (PatchKind::Json, _, _) => patch::json_patch(current, w.body)?,
            (PatchKind::Merge, Some(p), _) => patch::merge_patch(current, p)?,
            (_, Some(p), Some(s)) => patch::strategic_merge_patch(current, p, s)?,
            (_, Some(p), None) => patch::strategic_merge_patch(current, p, &KnownMergeKeys)?,
            _ => return Err(ApiError::internal("no patch")),
        };
        warnings = ctx.validate_fields(fv::Operation::Patch, &mut out)?;
        check_type(ctx.r, &mut out)?;
        delete::keep_namespace_finalizers(current, &mut out);
        if meta_str(&out, "name") != meta_str(current, "name") {
            return Err(ApiError::bad_request(
                "the name of an object cannot be patched",
            ));
        }
        Ok(out)
    })
    .await?;
    Ok(fv::with_warnings(
        ctx.respond(StatusCode::OK, &updated),
        &warnings,
    ))
}

/// `apiVersion` and `kind` must match the resource (filled in when absent).
pub(super) fn check_type(r: &ResourceInfo, obj: &mut Value) -> Result<(), ApiError> {
    let api_version = r.api_version();
    let m = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the object must be a JSON object"))?;
    for (field, want) in [("apiVersion", api_version.as_str()), ("kind", r.kind)] {
        match m.get(field).and_then(Value::as_str) {
            None | Some("") => {
                m.insert(field.into(), want.into());
            }
            Some(got) if got == want => {}
            Some(got) => {
                return Err(ApiError::bad_request(format!(
                    "the {field} of the provided object ({got}) does not match the resource ({want})"
                )));
            }
        }
    }
    Ok(())
}

fn check_namespace(r: &ResourceInfo, ns: Option<&str>, obj: &mut Value) -> Result<(), ApiError> {
    let md = metadata_mut(obj).ok_or_else(|| ApiError::bad_request("no metadata"))?;
    if r.namespaced {
        let ns = ns.unwrap_or_default();
        match md.get("namespace").and_then(Value::as_str) {
            Some(given) if !given.is_empty() && given != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {
                md.insert("namespace".into(), ns.into());
            }
        }
    } else {
        md.remove("namespace");
    }
    Ok(())
}

/// Creates `obj` as a new object of `r` (in `ns` for namespaced resources): the create
/// handler's core, also used to seed the cluster.
pub async fn create_object(
    state: &ApiState,
    r: &'static ResourceInfo,
    ns: Option<&str>,
    mut obj: Value,
    dry_run: bool,
    user: Option<&crate::authn::Identity>,
) -> Result<Value, ApiError> {
    check_type(r, &mut obj)?;
    check_namespace(r, ns, &mut obj)?;
    let given = meta_str(&obj, "name").unwrap_or_default().to_owned();
    let generate = meta_str(&obj, "generateName")
        .unwrap_or_default()
        .to_owned();
    if given.is_empty() && generate.is_empty() {
        return Err(ApiError::invalid(
            r,
            "",
            vec![Cause::required(
                "metadata.name",
                "name or generateName is required",
            )],
        ));
    }
    {
        let md = metadata_mut(&mut obj).ok_or_else(|| ApiError::bad_request("no metadata"))?;
        md.remove("resourceVersion");
        md.remove("deletionTimestamp");
        md.remove("deletionGracePeriodSeconds");
        md.insert("uid".into(), storage::new_uid().into());
        md.insert("creationTimestamp".into(), state.clock.rfc3339().into());
        md.insert("generation".into(), 1.into());
    }
    let attempts = if given.is_empty() { 8 } else { 1 };
    for _ in 0..attempts {
        let name = if given.is_empty() {
            format!("{generate}{}", storage::random_suffix(5))
        } else {
            given.clone()
        };
        match create_named(state, r, ns, &name, obj.clone(), dry_run, user).await {
            Err(StoreError::AlreadyExists { .. }) if given.is_empty() => continue,
            Err(StoreError::AlreadyExists { .. }) => {
                return Err(ApiError::already_exists(r, &name));
            }
            Err(e) => return Err(storage::store_error(e)),
            Ok(created) => return created,
        }
    }
    Err(ApiError::already_exists(r, &generate))
}

/// One attempt of [`create_object`] under `name`: admission, then the store's create. The
/// outer error is the store's (the caller picks another generated name on `AlreadyExists`).
async fn create_named(
    state: &ApiState,
    r: &'static ResourceInfo,
    ns: Option<&str>,
    name: &str,
    mut obj: Value,
    dry_run: bool,
    user: Option<&crate::authn::Identity>,
) -> Result<Result<Value, ApiError>, StoreError> {
    // Admitted once named (errors carry the name, Job labels use it).
    if let Some(md) = metadata_mut(&mut obj) {
        md.insert("name".into(), name.into());
    }
    let a = Attributes {
        r,
        namespace: ns,
        name,
        operation: Operation::Create,
        old: None,
        dry_run,
        user,
    };
    let admitted = async {
        let reserved = state.admission.admit(&a, &mut obj).await?;
        state.admission.validate(&a, Some(&obj), reserved).await
    };
    let reserved = match admitted.await {
        Ok(reserved) => reserved,
        Err(e) => return Ok(Err(e)),
    };
    if dry_run {
        return Ok(Ok(obj));
    }
    let Some(key) = registry::storage_key(r, ns, name) else {
        state.admission.rollback(reserved).await;
        return Ok(Err(ApiError::bad_request(format!("invalid name {name:?}"))));
    };
    let created = state
        .storage
        .store
        .create(key.as_bytes(), encode(&obj), 0)
        .await;
    match created {
        Ok(rev) => {
            set_resource_version(&mut obj, rev);
            Ok(Ok(obj))
        }
        Err(e) => {
            state.admission.rollback(reserved).await;
            Err(e)
        }
    }
}

async fn get_kv(ctx: &Ctx, name: &str) -> Result<KeyValue, ApiError> {
    let key = ctx.key(name)?;
    ctx.state
        .storage
        .store
        .get(key.as_bytes())
        .await
        .map_err(storage::store_error)?
        .ok_or_else(|| ApiError::not_found(ctx.r, name))
}

fn has_status_subresource(r: &ResourceInfo) -> bool {
    r.subresource("status").is_some()
}

fn without_meta_status(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// The object to store when `new` replaces `current`.
fn prepare_update(r: &ResourceInfo, current: &Value, mut new: Value, status_sub: bool) -> Value {
    if status_sub {
        let mut out = current.clone();
        if let Some(m) = out.as_object_mut() {
            match new.get("status") {
                Some(s) => {
                    m.insert("status".into(), s.clone());
                }
                None => {
                    m.remove("status");
                }
            }
        }
        // Status writers are recorded in managedFields too (an apply computed them already).
        if let Some(mf) = new.pointer("/metadata/managedFields")
            && let Some(md) = metadata_mut(&mut out)
        {
            md.insert("managedFields".into(), mf.clone());
        }
        return out;
    }
    if has_status_subresource(r)
        && let Some(m) = new.as_object_mut()
    {
        match current.get("status") {
            Some(s) => {
                m.insert("status".into(), s.clone());
            }
            None => {
                m.remove("status");
            }
        }
    }
    let cur_md = current.get("metadata").and_then(Value::as_object);
    if let Some(md) = metadata_mut(&mut new) {
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "name",
            "namespace",
        ] {
            match cur_md.and_then(|c| c.get(f)) {
                Some(v) => {
                    md.insert(f.into(), v.clone());
                }
                None => {
                    md.remove(f);
                }
            }
        }
    }
    new
}

/// `metadata.generation` of `new` replacing `current`: one more when anything but metadata
/// and status changed (after admission, so that defaults filled in are no change).
fn set_generation(current: &Value, new: &mut Value) {
    let changed = without_meta_status(current) != without_meta_status(new);
    let generation = current
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    if let Some(md) = metadata_mut(new) {
        let generation = if changed { generation + 1 } else { generation };
        md.insert("generation".into(), generation.into());
    }
}

fn finalizers_empty(v: &Value) -> bool {
    v.get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
}

/// An update of object `name`: `compute` makes the new object from the current one, then
/// admission and the write follow, retried on conflicts ([`guaranteed_update`]); a stale
/// `metadata.resourceVersion` in the computed object is a 409. An object marked for deletion
/// whose finalizers are all gone is removed instead.
async fn update_loop(
    ctx: &Ctx,
    name: &str,
    status_sub: bool,
    mut compute: impl FnMut(&Value) -> Result<Value, ApiError> + Send,
) -> Result<Value, ApiError> {
    let key = ctx.key(name)?;
    let operation = if status_sub {
        Operation::UpdateStatus
    } else {
        Operation::Update
    };
    let mut update = AdmittedUpdate {
        ctx,
        name,
        operation,
        compute: &mut compute,
    };
    let outcome = guaranteed_update(&ctx.state, ctx.r, name, &key, &mut update).await?;
    let mut object = outcome.object;
    if let Some(rev) = outcome.revision {
        set_resource_version(&mut object, rev);
    }
    Ok(object)
}

/// One attempt of [`update_loop`]: the computed object, admitted.
struct AdmittedUpdate<'a, F> {
    ctx: &'a Ctx,
    name: &'a str,
    operation: Operation,
    compute: &'a mut F,
}

#[async_trait::async_trait]
impl<F> TryUpdate for AdmittedUpdate<'_, F>
where
    F: FnMut(&Value) -> Result<Value, ApiError> + Send,
{
    async fn attempt(&mut self, current: &Value, rev: i64) -> Result<Attempt, ApiError> {
        let new = (self.compute)(current)?;
        if let Some(rv) = meta_str(&new, "resourceVersion")
            && !rv.is_empty()
            && rv != rev.to_string()
        {
            return Err(ApiError::conflict_with(
                self.ctx.r,
                self.name,
                OPTIMISTIC_LOCK_MESSAGE,
            ));
        }
        let a = Attributes {
            r: self.ctx.r,
            namespace: self.ctx.ns.as_deref(),
            name: self.name,
            operation: self.operation,
            old: Some(current),
            dry_run: self.ctx.dry_run(),
            user: self.ctx.user.as_ref(),
        };
        admit_update(self.ctx, &a, current, new, rev).await
    }
}

/// Admission and the registry's update rules for `new` replacing `current` (read at `rev`):
/// what to write.
async fn admit_update(
    ctx: &Ctx,
    a: &Attributes<'_>,
    current: &Value,
    new: Value,
    rev: i64,
) -> Result<Attempt, ApiError> {
    let status_sub = a.operation == Operation::UpdateStatus;
    let mut prepared = prepare_update(ctx.r, current, new, status_sub);
    let reserved = ctx.state.admission.admit(a, &mut prepared).await?;
    if !status_sub {
        set_generation(current, &mut prepared);
    }
    apply::record_update(ctx, current, &mut prepared, status_sub);
    let reserved = ctx
        .state
        .admission
        .validate(a, Some(&prepared), reserved)
        .await?;
    let step = if ctx.dry_run() {
        set_resource_version(&mut prepared, rev);
        Step::Answer(prepared)
    } else if is_finalized(&prepared) {
        Step::Delete(prepared)
    } else {
        Step::Update(prepared)
    };
    Ok(Attempt { step, reserved })
}

/// Whether `obj` is marked for deletion and nothing holds it any more.
fn is_finalized(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
        && finalizers_empty(obj)
        && !delete::namespace_spec_finalizers_pending(obj)
}

/// Label and field selectors of a list or watch.
#[derive(Debug, Clone)]
pub struct Selectors {
    r: &'static ResourceInfo,
    label: LabelSelector,
    field: FieldSelector,
}

impl Selectors {
    /// Parses `labelSelector` and `fieldSelector` for resource `r`; a field `r` cannot be
    /// selected by (see [`registry::selectable_fields`]) is a 400
    /// `field label not supported: <field>`.
    pub fn parse(
        r: &'static ResourceInfo,
        query: &HashMap<String, String>,
    ) -> Result<Self, ApiError> {
        let label = match query.get("labelSelector") {
            Some(s) => LabelSelector::parse(s)?,
            None => LabelSelector::everything(),
        };
        let field = match query.get("fieldSelector") {
            Some(s) => FieldSelector::parse(s)?,
            None => FieldSelector::everything(),
        };
        field.check_fields(|f| registry::is_selectable_field(r, f))?;
        Ok(Self { r, label, field })
    }

    /// Whether both select everything (then no object needs to be looked into).
    pub fn is_everything(&self) -> bool {
        self.label.is_everything() && self.field.requirements().is_empty()
    }

    /// Whether `obj` matches both.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels: BTreeMap<String, String> = obj
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        self.label.matches(&labels)
            && self
                .field
                .matches_with(|f| registry::selectable_field_value(self.r, obj, f))
    }
}

async fn list(ctx: &Ctx) -> Result<Response, ApiError> {
    let sel = Selectors::parse(ctx.r, &ctx.query)?;
    let cache = ctx.state.storage.cache(ctx.r).await?;
    let key_prefix = registry::storage_prefix(ctx.r, ctx.ns.as_deref())
        .ok_or_else(|| ApiError::bad_request("invalid namespace"))?;
    let limit: usize = match ctx.param("limit") {
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    // resourceVersion unset: a consistent read, which must see every write made before it
    // (controllers count what they created from it); served from the cache once the cache has
    // caught up with the store's current revision. "0": whatever the cache holds.
    let rv: Option<i64> = match ctx.param("resourceVersion") {
        Some("0") => None,
        None | Some("") if ctx.param("continue").is_none_or(str::is_empty) => {
            let store = &ctx.state.storage.store;
            let current = store
                .current_revision()
                .await
                .map_err(storage::store_error)?;
            if cache.revision() < current && !store.request_progress(current).await {
                // The cache cannot be asked to prove it is current: read the store.
                return list_from_store(ctx, &sel, &key_prefix, current).await;
            }
            Some(current)
        }
        None | Some("") => None,
        Some(s) => Some(
            s.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s}")))?,
        ),
    };
    let exact = ctx.param("resourceVersionMatch") == Some("Exact");
    let mut opts = ListOptions {
        key_prefix: Some(key_prefix.clone().into_bytes()),
        limit,
        continue_token: ctx
            .param("continue")
            .filter(|c| !c.is_empty())
            .map(str::to_owned),
    };
    // Objects are only parsed when a selector needs to look into them; the answer is written
    // from the stored bytes.
    let everything = sel.is_everything();
    let mut items: Vec<Arc<KeyValue>> = Vec::new();
    let (revision, cont) = loop {
        let page = match (rv, exact, &opts.continue_token) {
            (Some(rv), true, None) => match cache.list_exact(rv, &opts).await {
                Err(WatchCacheError::NeedsStore { .. }) => {
                    return list_from_store(ctx, &sel, &key_prefix, rv).await;
                }
                other => other,
            },
            (Some(rv), false, None) => cache.list_at_least(rv, &opts).await,
            _ => cache.list(&opts).await,
        }
        .map_err(storage::cache_error)?;
        for kv in page.items {
            if everything || sel.matches(&decode(&kv, kv.mod_revision)?) {
                items.push(kv);
            }
        }
        match page.continue_token {
            Some(c) if limit > 0 && items.len() < limit => {
                opts.continue_token = Some(c);
                opts.limit = limit - items.len();
            }
            c => break (page.revision, c),
        }
    };
    list_response(ctx, items, revision, cont)
}

async fn list_from_store(
    ctx: &Ctx,
    sel: &Selectors,
    prefix: &str,
    rv: i64,
) -> Result<Response, ApiError> {
    let resp = ctx
        .state
        .storage
        .store
        .range(RangeRequest::new(KeyRange::Prefix(prefix.as_bytes().to_vec())).at_revision(rv))
        .await
        .map_err(storage::store_error)?;
    let mut items = Vec::with_capacity(resp.kvs.len());
    for kv in resp.kvs {
        if sel.is_everything() || sel.matches(&decode(&kv, kv.mod_revision)?) {
            items.push(Arc::new(kv));
        }
    }
    list_response(ctx, items, rv, None)
}

fn list_response(
    ctx: &Ctx,
    items: Vec<Arc<KeyValue>>,
    revision: i64,
    cont: Option<String>,
) -> Result<Response, ApiError> {
    if ctx.table {
        let mut o = ctx.table_options();
        o.resource_version = Some(revision.to_string());
        o.continue_token = cont;
        let objs = items
            .iter()
            .map(|kv| decode(kv, kv.mod_revision))
            .collect::<Result<Vec<Value>, ApiError>>()?;
        let refs: Vec<&Value> = objs.iter().collect();
        return Ok(json_response(StatusCode::OK, &table_for(ctx.r, &refs, &o)));
    }
    for kv in &items {
        storage::check_readable(kv)?;
    }
    let mut metadata = Map::new();
    metadata.insert("resourceVersion".into(), revision.to_string().into());
    if let Some(c) = cont {
        metadata.insert("continue".into(), c.into());
    }
    let head = json!({
        "kind": ctx.r.list_kind(),
        "apiVersion": ctx.r.api_version(),
        "metadata": metadata,
    });
    let mut head = serde_json::to_vec(&head).unwrap_or_default();
    head.pop(); // the closing brace: the items follow
    head.extend_from_slice(b",\"items\":[");
    if items.len() <= LIST_CHUNK {
        let size: usize = items.iter().map(|kv| kv.value.len() + 40).sum();
        head.reserve(size + 2);
        write_items(&mut head, &items, 0);
        head.extend_from_slice(b"]}");
        return Ok(json_bytes_response(StatusCode::OK, head));
    }
    // A long list is streamed in chunks as it is written: the first bytes leave at once and
    // the server never holds the whole answer (10k pods are ~36 MiB of JSON).
    let items: Arc<[Arc<KeyValue>]> = items.into();
    let n = items.len();
    let chunks = (0..n).step_by(LIST_CHUNK).map(move |start| {
        let part = &items[start..(start + LIST_CHUNK).min(n)];
        let size: usize = part.iter().map(|kv| kv.value.len() + 40).sum();
        let mut out = Vec::with_capacity(size + 2);
        write_items(&mut out, part, start);
        if start + LIST_CHUNK >= n {
            out.extend_from_slice(b"]}");
        }
        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(out))
    });
    let body =
        futures::stream::iter(std::iter::once(Ok(axum::body::Bytes::from(head))).chain(chunks));
    let mut resp = Response::new(axum::body::Body::from_stream(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Items per chunk of a streamed list.
const LIST_CHUNK: usize = 256;

/// Appends the JSON of `items`, comma-separated; `first_index` is the position of the first
/// of them in the whole list (every item after the list's first is preceded by a comma).
fn write_items(out: &mut Vec<u8>, items: &[Arc<KeyValue>], first_index: usize) {
    for (i, kv) in items.iter().enumerate() {
        if first_index + i > 0 {
            out.push(b',');
        }
        storage::write_object(out, &kv.value, kv.mod_revision);
    }
}

/// Creates the built-in namespaces and the `default/kubernetes` Service if absent.
pub async fn seed(state: &ApiState, secure_port: u16) -> Result<(), ApiError> {
    let ns = registry::builtin("", "v1", "namespaces");
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let obj = json!({"metadata": {"name": name}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        match create_object(state, ns, None, obj, false, None).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let svc = registry::builtin("", "v1", "services");
    // Another server sharing the datastore may have seeded it (and holds its IP) already.
    let key = registry::storage_key(svc, Some("default"), "kubernetes")
        .ok_or_else(|| ApiError::InternalError("no storage key for default/kubernetes".into()))?;
    let existing = state
        .storage
        .store
        .get(key.as_bytes())
        .await
        .map_err(storage::store_error)?;
    if existing.is_some() {
        return Ok(());
    }
    let first_ip = state.services.cidr().first_host().to_string();
    let obj = json!({
        "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": first_ip,
            "clusterIPs": [first_ip],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
            "sessionAffinity": "None",
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": secure_port}],
        },
        "status": {"loadBalancer": {}},
    });
    match create_object(state, svc, Some("default"), obj, false, None).await {
        Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
