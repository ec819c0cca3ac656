//! The StatefulSet controller: pods with stable names `<set>-<ordinal>` (hostname = pod name,
//! subdomain = `serviceName`), created in ordinal order and each only once the lower ones are
//! Running and Ready with `OrderedReady` (all at once with `Parallel`), removed from the
//! highest ordinal down, recreated under the same name when deleted or finished, and updated
//! in reverse ordinal order down to `partition` (or only when deleted, with `OnDelete`).
//! Templates are kept as ControllerRevisions; pods name theirs in `controller-revision-hash`.
//!
//! Not done: `volumeClaimTemplates` (the API server has no PersistentVolumeClaims yet), the
//! alpha `maxUnavailable`, and adopting or releasing pods whose labels stop or start matching.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec};
use kube::api::ListParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt as _};
use tracing::{debug, info, warn};

use crate::revision::{self, REVISION_HASH_LABEL, RevisionOwner};
use crate::workload::{Requeue, create_pods, delete_pods, phase};
use crate::{Config, Error, workload};

/// The pod label carrying the pod's own name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The pod label carrying the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

struct Context {
    client: Client,
    config: Arc<Config>,
}

/// Runs the StatefulSet controller until the returned future is dropped.
pub async fn run(client: Client, config: Arc<Config>) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
    });
    Controller::new(
        Api::<StatefulSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Pod>::all(client), watcher::Config::default())
    .run(reconcile, error_policy, ctx)
    .for_each(|res| async move {
        if let Err(err) = res {
            debug!(%err, "statefulset reconcile");
        }
    })
    .await;
}

fn error_policy(sts: Arc<StatefulSet>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(statefulset = %sts.name_any(), %err, "statefulset sync failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

/// The ordinal in a pod name `<set>-<ordinal>`.
fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let rest = pod.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok()
}

/// The revision a pod was made from.
fn revision_of(pod: &Pod) -> Option<&str> {
    pod.labels().get(REVISION_HASH_LABEL).map(String::as_str)
}

/// The pod with `ordinal`, made from `template` of revision `revision`.
fn new_pod(
    sts: &StatefulSet,
    owner: &RevisionOwner,
    template: &PodTemplateSpec,
    revision: &str,
    ordinal: i32,
) -> Pod {
    let name = format!("{}-{ordinal}", owner.name());
    let mut pod = workload::pod_from_template(template, owner.reference.clone(), "");
    pod.metadata.generate_name = None;
    pod.metadata.name = Some(name.clone());
    pod.metadata.namespace = Some(owner.namespace.clone());
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_HASH_LABEL.into(), revision.into());
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    spec.hostname = Some(name);
    if let Some(service) = sts
        .spec
        .as_ref()
        .map(|s| s.service_name.clone().unwrap_or_default())
        .filter(|s| !s.is_empty())
    {
        spec.subdomain = Some(service);
    }
    pod
}

/// What a pass decided to do.
#[derive(Debug, Default)]
struct Plan {
    create: Vec<Pod>,
    delete: Vec<Pod>,
}

async fn reconcile(sts: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    if sts.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let client = &ctx.client;
    let name = sts.name_any();
    let ns = sts.namespace().unwrap_or_default();
    let spec = sts
        .spec
        .as_ref()
        .ok_or_else(|| Error::Unexpected(format!("statefulset {ns}/{name} has no spec")))?;
    let Some(selector) = workload::pod_selector("statefulset", &ns, &name, &spec.selector)? else {
        return Ok(Action::await_change());
    };
    let owner = RevisionOwner::of(sts.as_ref())?;
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let monotonic = spec.pod_management_policy.as_deref() != Some("Parallel");
    let strategy = spec.update_strategy.as_ref();
    let rolling =
        strategy.is_none_or(|s| s.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate");
    let partition = strategy
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = ctx.config.clock.unix_seconds();
    let status = sts.status.clone().unwrap_or_default();

    // Revisions: the template's (update), and the one the set was at (current).
    let mut revisions = revision::list(client, &owner, &selector).await?;
    let mut collisions = status.collision_count.unwrap_or(0);
    let update_rev = revision::ensure(
        client,
        &owner,
        &spec.template,
        &mut revisions,
        &mut collisions,
    )
    .await?;
    let update_name = update_rev.name_any();
    let current_rev: ControllerRevision = status
        .current_revision
        .as_ref()
        .and_then(|c| revisions.iter().find(|r| r.name_any() == *c))
        .cloned()
        .unwrap_or_else(|| update_rev.clone());
    let current_name = current_rev.name_any();
    let current_template =
        revision::template_of(&current_rev).unwrap_or_else(|| spec.template.clone());

    // Pods by ordinal; the ones outside [start, start + replicas) are condemned.
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels_from(&selector))
        .await?
        .items
        .into_iter()
        .filter(|p| owner.controls(&p.metadata))
        .collect();
    let mut by_ordinal: BTreeMap<i32, Pod> = BTreeMap::new();
    for p in &pods {
        if let Some(o) = ordinal_of(&name, &p.name_any()) {
            by_ordinal.insert(o, p.clone());
        }
    }
    let end = start.saturating_add(replicas);
    let terminating = |p: &Pod| p.metadata.deletion_timestamp.is_some();
    let healthy = |p: &Pod| {
        !terminating(p) && phase(p) == "Running" && workload::is_pod_available(p, min_ready, now)
    };

    let mut requeue = Requeue::default();
    for p in &pods {
        requeue.pod(p, min_ready, now);
    }
    let plan = plan(&PlanInput {
        sts: &sts,
        owner: &owner,
        by_ordinal: &by_ordinal,
        start,
        end,
        monotonic,
        rolling,
        partition,
        update: (&update_name, &spec.template),
        current: (&current_name, &current_template),
        healthy: &healthy,
    });

    create_pods_tolerating_conflicts(&pods_api, plan.create.clone()).await?;
    delete_pods(&pods_api, plan.delete.clone()).await?;
    if !plan.create.is_empty() || !plan.delete.is_empty() {
        info!(
            statefulset = %format!("{ns}/{name}"),
            created = ?plan.create.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
            deleted = ?plan.delete.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
            "stateful pods synced"
        );
    }

    // Status, from the pods this pass found.
    let mut s = StatefulSetStatus {
        observed_generation: sts.metadata.generation,
        collision_count: (collisions > 0).then_some(collisions),
        conditions: status.conditions.clone(),
        current_revision: Some(current_name.clone()),
        update_revision: Some(update_name.clone()),
        ..StatefulSetStatus::default()
    };
    let (mut counted, mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0, 0);
    for p in &pods {
        if phase(p).is_empty() {
            continue;
        }
        counted += 1;
        if phase(p) == "Running" && workload::is_pod_ready(p) {
            ready += 1;
            if workload::is_pod_available(p, min_ready, now) {
                available += 1;
            }
        }
        if !terminating(p) {
            if revision_of(p) == Some(current_name.as_str()) {
                current += 1;
            }
            if revision_of(p) == Some(update_name.as_str()) {
                updated += 1;
            }
        }
    }
    s.replicas = counted;
    s.ready_replicas = Some(ready);
    s.available_replicas = Some(available);
    s.current_replicas = Some(current);
    s.updated_replicas = Some(updated);
    // The update is complete once every pod runs it and is ready: it becomes current.
    if plan.create.is_empty()
        && plan.delete.is_empty()
        && updated == replicas
        && ready == replicas
        && counted == replicas
    {
        s.current_revision = Some(update_name.clone());
        s.current_replicas = Some(updated);
    }
    workload::patch_status_if_changed(client, sts.as_ref(), sts.status.as_ref(), &s).await?;

    // History: keep the current and update revisions and any a pod runs.
    let mut live: HashSet<String> = HashSet::new();
    live.insert(current_name);
    live.insert(update_name);
    if let Some(c) = &s.current_revision {
        live.insert(c.clone());
    }
    for p in &pods {
        if let Some(r) = revision_of(p) {
            live.insert(r.to_owned());
        }
    }
    revision::prune(
        client,
        &ns,
        &revisions,
        &live,
        spec.revision_history_limit.unwrap_or(10),
    )
    .await?;
    Ok(requeue.action())
}

struct PlanInput<'a> {
    sts: &'a StatefulSet,
    owner: &'a RevisionOwner,
    by_ordinal: &'a BTreeMap<i32, Pod>,
    start: i32,
    end: i32,
    monotonic: bool,
    rolling: bool,
    partition: i32,
    update: (&'a str, &'a PodTemplateSpec),
    current: (&'a str, &'a PodTemplateSpec),
    healthy: &'a dyn Fn(&Pod) -> bool,
}

/// Decides one pass: create missing pods, replace finished ones, remove condemned ones, and
/// roll the update, stopping at the first step that must wait when ordered.
fn plan(i: &PlanInput<'_>) -> Plan {
    let mut plan = Plan::default();
    let terminating = |p: &Pod| p.metadata.deletion_timestamp.is_some();
    let finished = |p: &Pod| matches!(phase(p), "Failed" | "Succeeded");

    // Replicas in ascending order.
    for ordinal in i.start..i.end {
        let Some(pod) = i.by_ordinal.get(&ordinal) else {
            // Below the partition a recreated pod keeps the current revision.
            let (rev, template) = if i.rolling && ordinal < i.start.saturating_add(i.partition) {
                i.current
            } else {
                i.update
            };
            plan.create
                .push(new_pod(i.sts, i.owner, template, rev, ordinal));
            if i.monotonic {
                return plan;
            }
            continue;
        };
        if terminating(pod) {
            if i.monotonic {
                return plan;
            }
            continue;
        }
        if finished(pod) {
            plan.delete.push(pod.clone());
            if i.monotonic {
                return plan;
            }
            continue;
        }
        if i.monotonic && !(i.healthy)(pod) {
            return plan;
        }
    }
    if !plan.create.is_empty() || !plan.delete.is_empty() {
        return plan;
    }

    // Condemned pods, highest ordinal first.
    let condemned: Vec<&Pod> = i
        .by_ordinal
        .iter()
        .rev()
        .filter(|(o, _)| **o < i.start || **o >= i.end)
        .map(|(_, p)| p)
        .collect();
    for pod in &condemned {
        if terminating(pod) {
            if i.monotonic {
                return plan;
            }
            continue;
        }
        if i.monotonic {
            // Only when every other pod is healthy, one at a time.
            let others_healthy = i
                .by_ordinal
                .values()
                .all(|p| p.metadata.uid == pod.metadata.uid || (i.healthy)(p));
            if !others_healthy && (i.healthy)(pod) {
                return plan;
            }
            plan.delete.push((*pod).clone());
            return plan;
        }
        plan.delete.push((*pod).clone());
    }
    if !plan.delete.is_empty() || !condemned.is_empty() {
        return plan;
    }

    // Rolling update: highest ordinal first, one pod at a time, down to the partition.
    if i.rolling {
        let floor = i.start.saturating_add(i.partition);
        for ordinal in (i.start..i.end).rev() {
            if ordinal < floor {
                break;
            }
            let Some(pod) = i.by_ordinal.get(&ordinal) else {
                return plan;
            };
            if revision_of(pod) != Some(i.update.0) && !terminating(pod) {
                plan.delete.push(pod.clone());
                return plan;
            }
            if !(i.healthy)(pod) {
                return plan;
            }
        }
    }
    plan
}

/// Creates `pods`; a name still taken by a pod on its way out is retried on the next pass.
async fn create_pods_tolerating_conflicts(api: &Api<Pod>, pods: Vec<Pod>) -> Result<(), Error> {
    match create_pods(api, pods).await {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_come_from_names() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-012"), None);
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webby-1"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
    }
}
