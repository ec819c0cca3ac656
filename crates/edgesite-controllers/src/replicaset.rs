//! The ReplicaSet controller: keeps `spec.replicas` active pods matching a ReplicaSet's
//! selector, adopting orphans that match and releasing owned pods that stopped matching, and
//! reports the counts in `status`. Pods are listed from the API server (not a cache) on every
//! pass: the store is strongly consistent, so a pass always sees the pods the previous pass
//! created and a burst of watch events cannot make it create twice — the job upstream's
//! "expectations" do for its informer cache.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt as _};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::informers::Informers;
use crate::queue;
use crate::workload::{
    can_adopt, controller_of, controller_ref, is_pod_active, is_pod_available, is_pod_ready, key,
    now_time, pod_from_template, ready_since, seconds_until_available, selector, selects,
};
use crate::{Config, Error};

/// Most pods one pass creates or deletes (upstream's `burstReplicas`).
const BURST_REPLICAS: usize = 500;

struct Context {
    client: Client,
    config: Arc<Config>,
}

/// Runs the ReplicaSet controller until the returned future is dropped.
pub async fn run(client: Client, config: Arc<Config>, inf: &Informers) {
    let rss: Api<ReplicaSet> = Api::all(client.clone());
    let controller = Controller::new(rss, watcher::Config::default());
    let store = controller.store();
    let ctx = Arc::new(Context { client, config });
    let controller = controller.watches_shared_stream(inf.pods.objects(), move |pod: Arc<Pod>| {
        replica_sets_for_pod(&store, &pod)
    });
    queue::run_controller("replicaset", controller, reconcile, ctx).await;
}

/// The ReplicaSets a pod event concerns: its controller if that is a ReplicaSet, or, for an
/// orphan, every ReplicaSet of its namespace that selects it (a candidate adopter).
fn replica_sets_for_pod(store: &Store<ReplicaSet>, pod: &Pod) -> Vec<ObjectRef<ReplicaSet>> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(owner) = controller_of(&pod.metadata) {
        if owner.kind == "ReplicaSet" && owner.api_version.starts_with("apps/") {
            return vec![ObjectRef::new(&owner.name).within(&ns)];
        }
        return Vec::new();
    }
    store
        .state()
        .iter()
        .filter(|rs| rs.namespace().as_deref() == Some(ns.as_str()))
        .filter(|rs| {
            selector(rs.spec.as_ref().map(|s| &s.selector))
                .is_ok_and(|sel| selects(&sel, &pod.metadata))
        })
        .map(|rs| ObjectRef::from_obj(&**rs))
        .collect()
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = rs.namespace().unwrap_or_default();
    let uid = rs.uid().unwrap_or_default();
    let spec = rs.spec.clone().unwrap_or_default();
    let sel = selector(Some(&spec.selector))?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let deleting = rs.metadata.deletion_timestamp.is_some();

    // Claim: keep owned pods that match, release owned ones that do not, adopt matching
    // orphans. Pods being deleted or finished are neither counted nor claimed.
    let mut owned = Vec::new();
    let mut adoptable = None;
    for pod in pods.list(&ListParams::default()).await?.items {
        if !is_pod_active(&pod) {
            continue;
        }
        let matches = selects(&sel, &pod.metadata);
        match controller_of(&pod.metadata) {
            Some(r) if r.uid == uid => {
                if matches {
                    owned.push(pod);
                } else {
                    release(&pods, &pod, &uid).await;
                }
            }
            Some(_) => {}
            None if matches && !deleting => {
                if adoptable.is_none() {
                    let rss: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
                    adoptable = Some(can_adopt(&rss, &rs.name_any(), &uid).await?);
                }
                if adoptable != Some(true) {
                    continue;
                }
                if let Some(p) = adopt(&pods, &rs, pod).await? {
                    owned.push(p);
                }
            }
            None => {}
        }
    }

    let want = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
    let mut failure = None;
    if !deleting {
        if owned.len() < want {
            let n = (want - owned.len()).min(BURST_REPLICAS);
            if let Some(err) = create_pods(&pods, &rs, &spec, n).await? {
                failure = Some(("FailedCreate", err));
            }
        } else if owned.len() > want {
            let n = (owned.len() - want).min(BURST_REPLICAS);
            if let Some(err) = delete_pods(&pods, &mut owned, n).await {
                failure = Some(("FailedDelete", err));
            }
        }
    }

    // Status reflects the pods this pass found, as upstream's; the pods just created or
    // deleted wake the controller up again.
    let now = ctx.config.clock.unix_seconds();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(owned.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let mut conditions: Vec<ReplicaSetCondition> = rs
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let had_failure = conditions.iter().any(|c| c.type_ == "ReplicaFailure");
    match failure {
        Some((reason, message)) if !had_failure => conditions.push(ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: Some(now_time(ctx.config.clock.as_ref())),
        }),
        None if had_failure => conditions.retain(|c| c.type_ != "ReplicaFailure"),
        _ => {}
    }
    let status = ReplicaSetStatus {
        replicas: count(&|_| true),
        fully_labeled_replicas: Some(count(&|p| {
            let labels = p.labels();
            template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })),
        ready_replicas: Some(count(&is_pod_ready)),
        available_replicas: Some(count(&|p| is_pod_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating_replicas: None,
    };
    if !same_status(rs.status.as_ref(), &status) {
        let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(
            &rs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "replicas": status.replicas,
                "fullyLabeledReplicas": status.fully_labeled_replicas,
                "readyReplicas": status.ready_replicas,
                "availableReplicas": status.available_replicas,
                "observedGeneration": status.observed_generation,
                "conditions": status.conditions,
            }})),
        )
        .await?;
    }

    // A ready pod becomes available once minReadySeconds have passed: look again then.
    let wait = owned
        .iter()
        .filter_map(|p| seconds_until_available(p, min_ready, now))
        .min();
    Ok(match wait {
        Some(secs) => Action::requeue(
            Duration::from_secs(u64::try_from(secs).unwrap_or(1)).min(ctx.config.workload_recheck),
        ),
        None => Action::await_change(),
    })
}

/// Compares statuses the way the server stores them (absent counts are zero).
fn same_status(old: Option<&ReplicaSetStatus>, new: &ReplicaSetStatus) -> bool {
    let Some(old) = old else { return false };
    let n = |v: Option<i32>| v.unwrap_or(0);
    old.replicas == new.replicas
        && n(old.fully_labeled_replicas) == n(new.fully_labeled_replicas)
        && n(old.ready_replicas) == n(new.ready_replicas)
        && n(old.available_replicas) == n(new.available_replicas)
        && old.observed_generation == new.observed_generation
        && old.conditions.as_deref().unwrap_or_default()
            == new.conditions.as_deref().unwrap_or_default()
}

/// Sets the ReplicaSet as the pod's controller; `None` when the pod changed or went away
/// meanwhile (its next event brings it back).
async fn adopt(pods: &Api<Pod>, rs: &ReplicaSet, pod: Pod) -> Result<Option<Pod>, Error> {
    let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
    refs.push(controller_ref(rs)?);
    let patch = json!({"metadata": {
        "ownerReferences": refs,
    }});
    match pods
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(p) => {
            info!(replicaset = %key(rs), pod = %p.name_any(), "adopted pod");
            Ok(Some(p))
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Drops the ReplicaSet's owner reference from a pod that no longer matches its selector.
async fn release(pods: &Api<Pod>, pod: &Pod, uid: &str) {
    let refs: Vec<_> = pod
        .owner_references()
        .iter()
        .filter(|r| r.uid != uid)
        .cloned()
        .collect();
    let patch = json!({"metadata": {
        "ownerReferences": if refs.is_empty() { serde_json::Value::Null } else { json!(refs) },
    }});
    match pods
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => info!(pod = %pod.name_any(), "released pod that no longer matches"),
        Err(err) => debug!(pod = %pod.name_any(), %err, "cannot release pod"),
    }
}

/// Creates `n` pods in batches of 1, 2, 4, … (upstream's slow start: a template that cannot
/// be created fails once, not `n` times); returns the first error's message.
async fn create_pods(
    pods: &Api<Pod>,
    rs: &ReplicaSet,
    spec: &k8s_openapi::api::apps::v1::ReplicaSetSpec,
    n: usize,
) -> Result<Option<String>, Error> {
    let Some(template) = spec.template.as_ref() else {
        return Ok(Some("replica set has no pod template".into()));
    };
    let pod = pod_from_template(
        template,
        controller_ref(rs)?,
        &format!("{}-", rs.name_any()),
    );
    let pp = PostParams::default();
    let (mut done, mut batch) = (0, 1);
    while done < n {
        let size = batch.min(n - done);
        let results = futures::future::join_all((0..size).map(|_| pods.create(&pp, &pod))).await;
        done += size;
        if let Some(err) = results.into_iter().find_map(Result::err) {
            warn!(replicaset = %key(rs), %err, "cannot create pod");
            return Ok(Some(err.to_string()));
        }
        batch *= 2;
    }
    debug!(replicaset = %key(rs), created = n, "created pods");
    Ok(None)
}

/// Deletes the `n` pods least worth keeping: unscheduled before scheduled, pending before
/// running, not ready before ready, ready for less time before longer, more restarts before
/// fewer, younger before older (upstream's ranking, without the co-location rank).
async fn delete_pods(pods: &Api<Pod>, owned: &mut [Pod], n: usize) -> Option<String> {
    owned.sort_by_key(|p| {
        let spec = p.spec.as_ref();
        let status = p.status.as_ref();
        let phase = match status.and_then(|s| s.phase.as_deref()) {
            Some("Unknown") => 1,
            Some("Running") => 2,
            _ => 0,
        };
        let restarts: i32 = status
            .and_then(|s| s.container_statuses.as_ref())
            .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum());
        (
            spec.and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| !n.is_empty()),
            phase,
            is_pod_ready(p),
            Reverse(ready_since(p)),
            Reverse(restarts),
            Reverse(p.creation_timestamp().map(|t| t.0)),
        )
    });
    let dp = DeleteParams::default();
    let results = futures::future::join_all(
        owned[..n]
            .iter()
            .map(|p| pods.delete(p.metadata.name.as_deref().unwrap_or_default(), &dp)),
    )
    .await;
    results.into_iter().find_map(|r| match r {
        Err(kube::Error::Api(s)) if s.code == 404 => None,
        Err(e) => Some(e.to_string()),
        Ok(_) => None,
    })
}
