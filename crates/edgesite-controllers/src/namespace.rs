//! The namespace controller: for a namespace with a `deletionTimestamp` that still carries the
//! `kubernetes` entry in `spec.finalizers`, delete every namespaced object in it (one
//! `deletecollection` per resource, background propagation), wait until none is left, then
//! drop `kubernetes` through the `finalize` subresource so the API server removes the
//! namespace. Progress is reported in `status.conditions` as upstream does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use edgesite_api::registry::ResourceInfo;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::Error;
use crate::informers::Informers;
use crate::queue;
use crate::resources::{dynamic_api, namespaced_deletable};
use crate::{Clock, Config};

/// The finalizer this controller owns in `spec.finalizers`.
pub const FINALIZER: &str = "kubernetes";

/// How soon a namespace whose content is still going away is looked at again.
const RECHECK: Duration = Duration::from_millis(250);

struct Context {
    client: Client,
    clock: Arc<dyn Clock>,
}

/// Runs the namespace controller until the returned future is dropped.
pub async fn run(client: Client, config: Arc<Config>, inf: &Informers) {
    let ctx = Arc::new(Context {
        client,
        clock: config.clock.clone(),
    });
    let controller =
        Controller::for_shared_stream(inf.namespaces.objects(), inf.namespaces.store());
    queue::run_controller("namespace", controller, reconcile, ctx).await;
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let finalizers = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let outcome = delete_content(&ctx.client, &name).await;
    let done = outcome.failures.is_empty() && outcome.remaining.is_empty();
    if !done {
        // Conditions are informative: a failure to write them must not stop the deletion.
        if let Err(err) = report(&ctx.client, ctx.clock.as_ref(), &ns, &outcome).await {
            debug!(namespace = %name, %err, "cannot update namespace conditions");
        }
        if let Some(first) = outcome.failures.first() {
            warn!(namespace = %name, error = %first, "cannot delete namespace content");
        }
        return Ok(Action::requeue(RECHECK));
    }
    finalize(&ctx.client, &name).await?;
    info!(namespace = %name, "namespace content deleted, finalized");
    Ok(Action::await_change())
}

/// What one pass over a namespace's content found.
#[derive(Debug, Default)]
struct Outcome {
    /// Objects left, per resource (`pods.` / `deployments.apps`).
    remaining: BTreeMap<String, usize>,
    /// Finalizers still on the objects left, with how many objects carry each.
    finalizers: BTreeMap<String, usize>,
    /// Errors deleting content.
    failures: Vec<String>,
}

fn group_resource_label(r: &ResourceInfo) -> String {
    // Upstream prints `resource.group`, which leaves a trailing dot for the core group.
    format!("{}.{}", r.plural, r.group)
}

/// Deletes every namespaced object in `ns` and counts what is left.
async fn delete_content(client: &Client, ns: &str) -> Outcome {
    let mut out = Outcome::default();
    for r in namespaced_deletable() {
        let api = dynamic_api(client, r, Some(ns));
        let listed = match api.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(err) => {
                out.failures.push(format!("{}: {err}", r.plural));
                continue;
            }
        };
        if listed.items.is_empty() {
            continue;
        }
        let mut items = listed.items;
        if items
            .iter()
            .any(|o| o.metadata.deletion_timestamp.is_none())
        {
            if let Err(err) = api
                .delete_collection(&DeleteParams::background(), &ListParams::default())
                .await
            {
                out.failures.push(format!("{}: {err}", r.plural));
            }
            items = match api.list(&ListParams::default()).await {
                Ok(l) => l.items,
                Err(err) => {
                    out.failures.push(format!("{}: {err}", r.plural));
                    continue;
                }
            };
        }
        if items.is_empty() {
            continue;
        }
        out.remaining.insert(group_resource_label(r), items.len());
        for o in &items {
            for f in o.finalizers() {
                *out.finalizers.entry(f.clone()).or_default() += 1;
            }
        }
    }
    out
}

/// Writes upstream's five deletion conditions to `status.conditions`.
async fn report(
    client: &Client,
    clock: &dyn Clock,
    ns: &Namespace,
    o: &Outcome,
) -> Result<(), Error> {
    let name = ns.name_any();
    // Whole seconds, as metav1.Time serializes.
    let ts = clock.rfc3339();
    let cond = |ty: &str, on: bool, reason_on: &str, reason_off: &str, message: String| {
        json!({
            "type": ty,
            "status": if on { "True" } else { "False" },
            "lastTransitionTime": ts,
            "reason": if on { reason_on } else { reason_off },
            "message": message,
        })
    };
    let remaining = o
        .remaining
        .iter()
        .map(|(r, n)| format!("{r} has {n} resource instances"))
        .collect::<Vec<_>>()
        .join(", ");
    let finalizers = o
        .finalizers
        .iter()
        .map(|(f, n)| format!("{f} in {n} resource instances"))
        .collect::<Vec<_>>()
        .join(", ");
    let conditions = vec![
        cond(
            "NamespaceDeletionDiscoveryFailure",
            false,
            "DiscoveryFailed",
            "ResourcesDiscovered",
            "All resources successfully discovered".into(),
        ),
        cond(
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "GroupVersionParsingFailed",
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".into(),
        ),
        cond(
            "NamespaceDeletionContentFailure",
            !o.failures.is_empty(),
            "ContentDeletionFailed",
            "ContentDeleted",
            if o.failures.is_empty() {
                "All content successfully deleted, may be waiting on finalization".into()
            } else {
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    o.failures.len(),
                    o.failures.join(", ")
                )
            },
        ),
        cond(
            "NamespaceContentRemaining",
            !o.remaining.is_empty(),
            "SomeResourcesRemain",
            "ContentRemoved",
            if o.remaining.is_empty() {
                "All content successfully removed".into()
            } else {
                format!("Some resources are remaining: {remaining}")
            },
        ),
        cond(
            "NamespaceFinalizersRemaining",
            !o.finalizers.is_empty(),
            "SomeFinalizersRemain",
            "ContentHasNoFinalizers",
            if o.finalizers.is_empty() {
                "All content-preserving finalizers finished".into()
            } else {
                format!("Some content in the namespace has finalizers remaining: {finalizers}")
            },
        ),
    ];
    // Write only when something changed (a write wakes this controller up again), and keep
    // the transition time of conditions that did not change.
    let existing = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut changed = false;
    let conditions: Vec<Value> = conditions
        .into_iter()
        .map(|mut c| {
            let same = existing.iter().find(|e| {
                c["type"] == e.type_.as_str()
                    && c["status"] == e.status.as_str()
                    && c["reason"].as_str() == e.reason.as_deref()
                    && c["message"].as_str() == e.message.as_deref()
            });
            match same.and_then(|e| e.last_transition_time.as_ref()) {
                Some(t) => c["lastTransitionTime"] = json!(t),
                None => changed = true,
            }
            c
        })
        .collect();
    if !changed {
        return Ok(());
    }
    let api: Api<Namespace> = Api::all(client.clone());
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": conditions}})),
    )
    .await?;
    Ok(())
}

/// Removes [`FINALIZER`] from `spec.finalizers` through `PUT namespaces/{name}/finalize`
/// (retrying on conflicts); the server removes the namespace once no finalizer is left.
async fn finalize(client: &Client, name: &str) -> Result<(), Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    for _ in 0..5 {
        let mut ns = match api.get(name).await {
            Ok(ns) => ns,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let spec = ns.spec.get_or_insert_with(Default::default);
        let list = spec.finalizers.get_or_insert_with(Vec::new);
        list.retain(|f| f != FINALIZER);
        match api
            .replace_subresource("finalize", name, &PostParams::default(), &ns)
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Unexpected(format!(
        "namespace {name}: finalize kept conflicting"
    )))
}
