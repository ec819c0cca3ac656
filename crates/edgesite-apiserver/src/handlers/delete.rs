//! Deletion, as kube-apiserver's generic registry does it: `DeleteOptions` (propagation policy,
//! grace period, preconditions, dry run), graceful deletion of pods bound to a node, the garbage
//! collector's `orphan`/`foregroundDeletion` finalizers, namespace termination and
//! `deletecollection` (the NamespaceLifecycle admission plugin guards namespace deletes).
//!
//! A child module of `resources` (it shares that module's request context and helpers).

use axum::http::StatusCode;
use axum::response::Response;
use edgesite_api::registry::{self, GroupKind, ResourceInfo};
use edgesite_api::status::{ApiError, Cause, success_status_json};
use edgesite_store::{KeyRange, RangeRequest};
use serde_json::{Value, json};

use super::super::guaranteed_update::{Decide, Step, guaranteed_update};
use super::{ApiState, Ctx, Selectors};
use crate::admission::{Attributes, Operation, Reservations};
use crate::storage::{self, decode, meta_str, metadata_mut, set_resource_version};

/// The finalizer that asks the garbage collector to orphan the dependents.
pub const FINALIZER_ORPHAN: &str = "orphan";
/// The finalizer that asks the garbage collector to delete the dependents first.
pub const FINALIZER_FOREGROUND: &str = "foregroundDeletion";
/// The namespace controller's entry in a Namespace's `spec.finalizers`.
pub const FINALIZER_KUBERNETES: &str = "kubernetes";

/// `DeleteOptions.propagationPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Remove the ownerReferences of the dependents (finalizer `orphan`).
    Orphan,
    /// Delete the dependents before the owner (finalizer `foregroundDeletion`).
    Foreground,
    /// Delete the owner now; the garbage collector deletes the dependents afterwards.
    Background,
}

/// What a DELETE asks for, from the body (`DeleteOptions`) and the query.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `gracePeriodSeconds`; negative values count as 1, as upstream.
    pub grace_period: Option<i64>,
    /// `propagationPolicy`, or the legacy `orphanDependents`.
    pub propagation: Option<Propagation>,
    /// `orphanDependents: false` was sent: answer 202 while the object lingers.
    pub orphan_dependents_false: bool,
    /// `preconditions.uid`.
    pub precondition_uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub precondition_rv: Option<String>,
    /// `dryRun: ["All"]`: validate and answer, store nothing.
    pub dry_run: bool,
}

impl DeleteOptions {
    /// Parses DeleteOptions (already decoded to JSON) with the query parameters as fallback.
    fn parse(body: &Value, ctx: &Ctx) -> Result<Self, ApiError> {
        let field = |k: &str| -> Option<Value> {
            match body.get(k) {
                Some(Value::Null) | None => ctx.param(k).map(|s| {
                    if k == "gracePeriodSeconds" {
                        s.parse::<i64>()
                            .map_or(Value::String(s.to_owned()), Value::from)
                    } else if k == "orphanDependents" {
                        s.parse::<bool>()
                            .map_or(Value::String(s.to_owned()), Value::from)
                    } else {
                        Value::String(s.to_owned())
                    }
                }),
                Some(v) => Some(v.clone()),
            }
        };
        let kind = GroupKind::new("meta.k8s.io", "DeleteOptions");
        let mut opts = Self {
            dry_run: ctx.dry_run()
                || body
                    .get("dryRun")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|v| v == "All")),
            precondition_uid: body
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_owned),
            precondition_rv: body
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_owned),
            ..Self::default()
        };
        if let Some(g) = field("gracePeriodSeconds") {
            let g = g
                .as_i64()
                .ok_or_else(|| ApiError::bad_request(format!("invalid gracePeriodSeconds: {g}")))?;
            opts.grace_period = Some(if g < 0 { 1 } else { g });
        }
        let orphan = match field("orphanDependents") {
            None => None,
            Some(Value::Bool(b)) => Some(b),
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "invalid orphanDependents: {v}"
                )));
            }
        };
        let policy = field("propagationPolicy");
        match (orphan, policy) {
            (Some(_), Some(p)) => {
                return Err(ApiError::invalid(
                    kind,
                    "",
                    vec![Cause::invalid(
                        "propagationPolicy",
                        &p,
                        "orphanDependents and deletionPropagation cannot be both set",
                    )],
                ));
            }
            (Some(true), None) => opts.propagation = Some(Propagation::Orphan),
            (Some(false), None) => {
                opts.propagation = Some(Propagation::Background);
                opts.orphan_dependents_false = true;
            }
            (None, Some(p)) => {
                opts.propagation = Some(match p.as_str() {
                    Some("Orphan") => Propagation::Orphan,
                    Some("Foreground") => Propagation::Foreground,
                    Some("Background") => Propagation::Background,
                    _ => {
                        return Err(ApiError::invalid(
                            kind,
                            "",
                            vec![Cause::not_supported(
                                "propagationPolicy",
                                &p,
                                &["Foreground", "Background", "Orphan", "nil"],
                            )],
                        ));
                    }
                });
            }
            (None, None) => {}
        }
        Ok(opts)
    }
}

/// The outcome of deleting one object.
#[derive(Debug, Clone)]
pub struct Deleted {
    /// The object: its last state when removed, its current state when it lingers.
    pub object: Value,
    /// Whether it is gone from the store (false: finalizers or a grace period keep it).
    pub removed: bool,
}

/// Resources whose DELETE answers with the removed object rather than a `Status`
/// (`ReturnDeletedObject` in kube-apiserver's storage for these resources).
fn returns_deleted_object(r: &ResourceInfo) -> bool {
    r.group.is_empty()
        && matches!(
            r.plural,
            "pods" | "services" | "serviceaccounts" | "namespaces"
        )
}

fn is_core(r: &ResourceInfo, plural: &str) -> bool {
    r.group.is_empty() && r.plural == plural
}

/// The garbage collection policy when the request names none: upstream keeps `batch/v1` Jobs
/// orphaning their pods for compatibility; everything else we serve deletes dependents.
fn default_orphans(r: &ResourceInfo) -> bool {
    r.group == "batch" && r.plural == "jobs"
}

fn finalizers(v: &Value) -> Vec<String> {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn set_finalizers(v: &mut Value, list: Vec<String>) {
    if let Some(md) = metadata_mut(v) {
        if list.is_empty() {
            md.remove("finalizers");
        } else {
            md.insert("finalizers".into(), json!(list));
        }
    }
}

/// The finalizers after applying the propagation policy: `Orphan` and `Foreground` add theirs
/// and drop the other, `Background` drops both, no policy keeps what is there (adding `orphan`
/// for resources whose default is to orphan).
fn gc_finalizers(r: &ResourceInfo, current: &[String], policy: Option<Propagation>) -> Vec<String> {
    let has = |f: &str| current.iter().any(|c| c == f);
    let (orphan, foreground) = match policy {
        Some(Propagation::Orphan) => (true, false),
        Some(Propagation::Foreground) => (false, true),
        Some(Propagation::Background) => (false, false),
        None => (
            has(FINALIZER_ORPHAN) || (default_orphans(r) && !has(FINALIZER_FOREGROUND)),
            has(FINALIZER_FOREGROUND),
        ),
    };
    let mut out: Vec<String> = current
        .iter()
        .filter(|f| *f != FINALIZER_ORPHAN && *f != FINALIZER_FOREGROUND)
        .cloned()
        .collect();
    if orphan {
        out.push(FINALIZER_ORPHAN.to_owned());
    }
    if foreground {
        out.push(FINALIZER_FOREGROUND.to_owned());
    }
    out
}

fn spec_finalizers(v: &Value) -> Vec<String> {
    v.pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a Namespace still has `spec.finalizers` (always false for other objects): a
/// namespace marked for deletion is removed only once both lists are empty.
pub(super) fn namespace_spec_finalizers_pending(v: &Value) -> bool {
    v.get("kind").and_then(Value::as_str) == Some("Namespace")
        && v.get("apiVersion").and_then(Value::as_str) == Some("v1")
        && !spec_finalizers(v).is_empty()
}

/// The grace period a pod gets (upstream's pod `CheckGracefulDelete`): the requested one, else
/// `spec.terminationGracePeriodSeconds` (default 30); 0 for pods not bound to a node and pods
/// that already finished.
fn pod_grace_period(pod: &Value, requested: Option<i64>) -> i64 {
    let bound = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if !bound || finished {
        return 0;
    }
    let period = requested.unwrap_or_else(|| {
        pod.pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30)
    });
    period.max(0)
}

fn parse_rfc3339(s: &str) -> Option<i64> {
    // `YYYY-MM-DDTHH:MM:SS[.frac]Z` only, which is all this server writes.
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

enum Plan {
    /// Nothing to write; the object lingers (deletion already pending).
    Pending,
    /// Write this object (deletionTimestamp and/or finalizers changed) and keep it.
    Keep(Value),
    /// Remove it from the store.
    Remove,
}

/// What deleting `current` means, given the options (upstream's `BeforeDelete` and
/// `updateForGracefulDeletionAndFinalizers`, folded into one decision).
fn plan(r: &ResourceInfo, current: &Value, opts: &DeleteOptions, now: i64) -> Plan {
    let mut obj = current.clone();
    let md = current.get("metadata");
    let existing_ts = md
        .and_then(|m| m.get("deletionTimestamp"))
        .and_then(Value::as_str);
    let existing_grace = md
        .and_then(|m| m.get("deletionGracePeriodSeconds"))
        .and_then(Value::as_i64);
    let pod = is_core(r, "pods");

    // Graceful deletion already running: only a shorter grace period changes anything, and
    // finalizers cannot be changed through DeleteOptions meanwhile.
    let mut graceful_period = None;
    if let (Some(ts), Some(g)) = (existing_ts, existing_grace)
        && g > 0
    {
        match opts.grace_period {
            Some(p) if p < g => {
                let start = parse_rfc3339(ts).unwrap_or(now + g) - g;
                graceful_period = Some((p, start + p));
            }
            _ => return Plan::Pending,
        }
    } else if existing_ts.is_none() && pod {
        let p = pod_grace_period(current, opts.grace_period);
        graceful_period = Some((p, now + p));
    }

    let before = finalizers(current);
    let after = gc_finalizers(r, &before, opts.propagation);
    let finalizers_changed = before != after;
    set_finalizers(&mut obj, after.clone());

    if let Some((period, at)) = graceful_period
        && period > 0
    {
        let Some(md) = metadata_mut(&mut obj) else {
            return Plan::Pending;
        };
        md.insert(
            "deletionTimestamp".into(),
            storage::format_rfc3339(at).into(),
        );
        md.insert("deletionGracePeriodSeconds".into(), period.into());
        bump_generation(md);
        return Plan::Keep(obj);
    }
    if after.is_empty() {
        return Plan::Remove;
    }
    // Finalizers keep it: mark it as being deleted (grace 0) if it is not yet.
    let Some(md) = metadata_mut(&mut obj) else {
        return Plan::Pending;
    };
    let marked = md.contains_key("deletionTimestamp")
        && md.get("deletionGracePeriodSeconds").and_then(Value::as_i64) == Some(0);
    if marked && !finalizers_changed {
        return Plan::Pending;
    }
    if !md.contains_key("deletionTimestamp") {
        bump_generation(md);
    }
    md.insert(
        "deletionTimestamp".into(),
        storage::format_rfc3339(now).into(),
    );
    md.insert("deletionGracePeriodSeconds".into(), 0.into());
    if let Some(ts) = existing_ts {
        // Keep the first deletion time.
        md.insert("deletionTimestamp".into(), ts.into());
    }
    Plan::Keep(obj)
}

fn bump_generation(md: &mut serde_json::Map<String, Value>) {
    if let Some(g) = md.get("generation").and_then(Value::as_i64)
        && g > 0
    {
        md.insert("generation".into(), (g + 1).into());
    }
}

fn check_preconditions(
    r: &ResourceInfo,
    name: &str,
    current: &Value,
    opts: &DeleteOptions,
) -> Result<(), ApiError> {
    if let Some(uid) = &opts.precondition_uid {
        let actual = meta_str(current, "uid").unwrap_or_default();
        if uid != actual {
            return Err(ApiError::conflict_with(
                r,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                ),
            ));
        }
    }
    if let Some(rv) = &opts.precondition_rv {
        let actual = meta_str(current, "resourceVersion").unwrap_or_default();
        if rv != actual {
            return Err(ApiError::conflict_with(
                r,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {actual}"
                ),
            ));
        }
    }
    Ok(())
}

/// Namespace deletion (upstream's namespace storage): the first DELETE marks it
/// `Terminating` with a deletion timestamp and leaves it to the namespace controller while
/// `spec.finalizers` is not empty.
fn plan_namespace(current: &Value, opts: &DeleteOptions, now: i64) -> Plan {
    let marked = current.pointer("/metadata/deletionTimestamp").is_some();
    if marked {
        if !spec_finalizers(current).is_empty() {
            return Plan::Pending;
        }
        return if finalizers(current).is_empty() {
            Plan::Remove
        } else {
            Plan::Pending
        };
    }
    let mut obj = current.clone();
    let before = finalizers(current);
    // Namespaces keep orphan/foreground only when asked (no per-resource default).
    let after = match opts.propagation {
        None => before.clone(),
        p => gc_finalizers(&registry_namespaces(), &before, p),
    };
    if spec_finalizers(current).is_empty() && after.is_empty() {
        // Nothing will ever finalize it: remove it now rather than leave it Terminating.
        return Plan::Remove;
    }
    set_finalizers(&mut obj, after);
    if let Some(md) = metadata_mut(&mut obj) {
        md.insert(
            "deletionTimestamp".into(),
            storage::format_rfc3339(now).into(),
        );
    }
    if let Some(o) = obj.as_object_mut() {
        let status = o.entry("status").or_insert_with(|| json!({}));
        if let Some(s) = status.as_object_mut() {
            s.insert("phase".into(), "Terminating".into());
        }
    }
    Plan::Keep(obj)
}

fn registry_namespaces() -> ResourceInfo {
    *registry::builtin("", "v1", "namespaces")
}

/// Deletes one object: the core of DELETE and of each item of `deletecollection`.
pub async fn delete_object(
    state: &ApiState,
    r: &'static ResourceInfo,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Deleted, ApiError> {
    let key = registry::storage_key(r, ns, name).ok_or_else(|| ApiError::not_found(r, name))?;
    let a = Attributes {
        r,
        namespace: ns,
        name,
        operation: Operation::Delete,
        old: None,
        dry_run: opts.dry_run,
        user: None,
    };
    let reserved = state
        .admission
        .validate(&a, None, Reservations::default())
        .await?;
    state.admission.rollback(reserved).await;
    let namespace = is_core(r, "namespaces");
    let now = state.clock.unix_seconds();
    let mut dry_run_removed = false;
    let mut decide = Decide(|current: &Value, _| {
        check_preconditions(r, name, current, opts)?;
        let plan = if namespace {
            plan_namespace(current, opts, now)
        } else {
            plan(r, current, opts, now)
        };
        Ok(match plan {
            Plan::Pending => Step::Answer(current.clone()),
            Plan::Keep(obj) if opts.dry_run => Step::Answer(obj),
            Plan::Keep(obj) => Step::Update(obj),
            Plan::Remove if opts.dry_run => {
                dry_run_removed = true;
                Step::Answer(current.clone())
            }
            Plan::Remove => Step::Delete(current.clone()),
        })
    });
    let outcome = guaranteed_update(state, r, name, &key, &mut decide).await?;
    let mut object = outcome.object;
    if let (false, Some(rev)) = (outcome.removed, outcome.revision) {
        set_resource_version(&mut object, rev);
    }
    Ok(Deleted {
        object,
        removed: outcome.removed || dry_run_removed,
    })
}

/// `DELETE` of one object.
pub(super) async fn delete(
    ctx: &Ctx,
    name: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let raw = super::body::decode_delete_options(content_type, body)?;
    let opts = DeleteOptions::parse(&raw, ctx)?;
    let out = delete_object(&ctx.state, ctx.r, ctx.ns.as_deref(), name, &opts).await?;
    if !out.removed {
        let status = if opts.orphan_dependents_false {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        return Ok(ctx.respond(status, &out.object));
    }
    if returns_deleted_object(ctx.r) {
        return Ok(ctx.respond(StatusCode::OK, &out.object));
    }
    let details = json!({
        "name": name,
        "group": ctx.r.group,
        "kind": ctx.r.plural,
        "uid": meta_str(&out.object, "uid").unwrap_or_default(),
    });
    Ok(super::json_response(
        StatusCode::OK,
        &success_status_json(Some(details)),
    ))
}

/// `DELETE` of a collection: every object matching the label and field selectors (in the
/// namespace of the path, if any) is deleted with the same options; the answer is the list of
/// the objects as deleted (or as they linger while finalizers run).
pub(super) async fn delete_collection(
    ctx: &Ctx,
    content_type: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    if !ctx.r.supports("deletecollection") {
        return Err(ApiError::method_not_allowed(ctx.r, "deletecollection"));
    }
    let raw = super::body::decode_delete_options(content_type, body)?;
    let opts = DeleteOptions::parse(&raw, ctx)?;
    let sel = Selectors::parse(ctx.r, &ctx.query)?;
    let prefix = registry::storage_prefix(ctx.r, ctx.ns.as_deref())
        .ok_or_else(|| ApiError::bad_request("invalid namespace"))?;
    let resp = ctx
        .state
        .storage
        .store
        .range(RangeRequest::new(KeyRange::Prefix(prefix.into_bytes())))
        .await
        .map_err(storage::store_error)?;
    let mut items = Vec::new();
    for kv in &resp.kvs {
        let obj = decode(kv, kv.mod_revision)?;
        if !sel.matches(&obj) {
            continue;
        }
        let name = meta_str(&obj, "name").unwrap_or_default().to_owned();
        let ns = meta_str(&obj, "namespace").map(str::to_owned);
        match delete_object(&ctx.state, ctx.r, ns.as_deref(), &name, &opts).await {
            Ok(d) => items.push(d.object),
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let body = json!({
        "kind": ctx.r.list_kind(),
        "apiVersion": ctx.r.api_version(),
        "metadata": {"resourceVersion": resp.revision.to_string()},
        "items": items,
    });
    Ok(super::json_response(StatusCode::OK, &body))
}

/// Namespaces change `spec.finalizers` only through `finalize`: every other write keeps the
/// current list (upstream's namespace update strategy).
pub(super) fn keep_namespace_finalizers(current: &Value, new: &mut Value) {
    if current.get("kind").and_then(Value::as_str) != Some("Namespace")
        || current.get("apiVersion").and_then(Value::as_str) != Some("v1")
    {
        return;
    }
    let Some(o) = new.as_object_mut() else {
        return;
    };
    let spec = o.entry("spec").or_insert_with(|| json!({}));
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    match current.pointer("/spec/finalizers") {
        Some(list) => {
            spec.insert("finalizers".into(), list.clone());
        }
        None => {
            spec.remove("finalizers");
        }
    }
}

/// `PUT namespaces/{name}/finalize`: the new object is the current one with the sent
/// `spec.finalizers` (nothing else of the body counts).
pub(super) fn finalize_namespace(current: &Value, sent: &Value) -> Value {
    let mut out = current.clone();
    let list = sent
        .pointer("/spec/finalizers")
        .cloned()
        .unwrap_or_else(|| json!([]));
    if let Some(o) = out.as_object_mut() {
        let spec = o.entry("spec").or_insert_with(|| json!({}));
        if let Some(s) = spec.as_object_mut() {
            // An empty list stays explicit: an absent one would be defaulted back to
            // `["kubernetes"]` on write.
            s.insert("finalizers".into(), list);
        }
    }
    if let Some(rv) = meta_str(sent, "resourceVersion").map(str::to_owned)
        && let Some(md) = metadata_mut(&mut out)
    {
        md.insert("resourceVersion".into(), rv.into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-03-01T00:00:00Z.
    const NOW: i64 = 1_709_251_200;

    fn pods() -> &'static ResourceInfo {
        registry::lookup("", "v1", "pods").unwrap()
    }
    fn deployments() -> &'static ResourceInfo {
        registry::lookup("apps", "v1", "deployments").unwrap()
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = 1_709_251_199;
        assert_eq!(parse_rfc3339(&storage::format_rfc3339(t)), Some(t));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:10Z"), Some(10));
    }

    #[test]
    fn gc_finalizers_follow_the_policy() {
        let d = deployments();
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            gc_finalizers(d, &s(&["a"]), Some(Propagation::Orphan)),
            s(&["a", "orphan"])
        );
        assert_eq!(
            gc_finalizers(d, &s(&["orphan"]), Some(Propagation::Foreground)),
            s(&["foregroundDeletion"])
        );
        assert_eq!(
            gc_finalizers(d, &s(&["orphan", "x"]), Some(Propagation::Background)),
            s(&["x"])
        );
        assert_eq!(gc_finalizers(d, &s(&[]), None), s(&[]));
        let jobs = registry::lookup("batch", "v1", "jobs").unwrap();
        assert_eq!(gc_finalizers(jobs, &s(&[]), None), s(&["orphan"]));
    }

    #[test]
    fn bound_pods_are_graceful_unbound_are_not() {
        let unbound = json!({"metadata": {"name": "p"}, "spec": {}});
        assert!(matches!(
            plan(pods(), &unbound, &DeleteOptions::default(), NOW),
            Plan::Remove
        ));
        let bound = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}});
        let Plan::Keep(kept) = plan(pods(), &bound, &DeleteOptions::default(), NOW) else {
            panic!("bound pod deleted at once");
        };
        assert_eq!(kept["metadata"]["deletionGracePeriodSeconds"], 30);
        // Deleting again with the same grace changes nothing; with 0 it goes.
        assert!(matches!(
            plan(pods(), &kept, &DeleteOptions::default(), NOW),
            Plan::Pending
        ));
        let now = DeleteOptions {
            grace_period: Some(0),
            ..DeleteOptions::default()
        };
        assert!(matches!(plan(pods(), &kept, &now, NOW), Plan::Remove));
        // Shortening keeps the start: timestamp moves back by the difference.
        let five = DeleteOptions {
            grace_period: Some(5),
            ..DeleteOptions::default()
        };
        let Plan::Keep(shorter) = plan(pods(), &kept, &five, NOW) else {
            panic!("not shortened");
        };
        let t0 = parse_rfc3339(kept["metadata"]["deletionTimestamp"].as_str().unwrap()).unwrap();
        let t1 = parse_rfc3339(shorter["metadata"]["deletionTimestamp"].as_str().unwrap()).unwrap();
        assert_eq!(t0 - t1, 25);
    }

    #[test]
    fn finalizers_keep_the_object() {
        let obj = json!({"metadata": {"name": "d", "generation": 1}});
        let fg = DeleteOptions {
            propagation: Some(Propagation::Foreground),
            ..DeleteOptions::default()
        };
        let Plan::Keep(kept) = plan(deployments(), &obj, &fg, NOW) else {
            panic!("deleted despite foreground");
        };
        assert_eq!(
            kept["metadata"]["finalizers"],
            json!(["foregroundDeletion"])
        );
        assert_eq!(kept["metadata"]["deletionGracePeriodSeconds"], 0);
        assert_eq!(kept["metadata"]["generation"], 2);
        assert!(matches!(
            plan(deployments(), &kept, &fg, NOW),
            Plan::Pending
        ));
        // Switching to background drops the GC finalizer: now it can go.
        let bg = DeleteOptions {
            propagation: Some(Propagation::Background),
            ..DeleteOptions::default()
        };
        assert!(matches!(plan(deployments(), &kept, &bg, NOW), Plan::Remove));
    }

    #[test]
    fn namespaces_terminate_first() {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        let Plan::Keep(t) = plan_namespace(&ns, &DeleteOptions::default(), NOW) else {
            panic!("namespace removed");
        };
        assert_eq!(t["status"]["phase"], "Terminating");
        assert!(t["metadata"]["deletionTimestamp"].is_string());
        assert!(namespace_spec_finalizers_pending(&t));
        assert!(matches!(
            plan_namespace(&t, &DeleteOptions::default(), NOW),
            Plan::Pending
        ));
        let done = finalize_namespace(&t, &json!({"spec": {"finalizers": []}}));
        assert!(!namespace_spec_finalizers_pending(&done));
        assert!(matches!(
            plan_namespace(&done, &DeleteOptions::default(), NOW),
            Plan::Remove
        ));
    }
}
