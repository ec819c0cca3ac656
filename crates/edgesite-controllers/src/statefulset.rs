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

use k8s_openapi::api::apps::v1::{
    ControllerRevision, StatefulSet, StatefulSetSpec, StatefulSetStatus,
};
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec};
use kube::api::ListParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt as _};
use tracing::info;

use crate::informers::Informers;
use crate::queue;
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
pub async fn run(client: Client, config: Arc<Config>, inf: &Informers) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
    });
    let controller = Controller::new(Api::<StatefulSet>::all(client), watcher::Config::default())
        .owns_shared_stream(inf.pods.objects());
    queue::run_controller("statefulset", controller, reconcile, ctx).await;
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

/// The revisions a pass works with: the template's (update) and the one the set was at
/// (current), with the collision count the update's name needed.
struct Revisions {
    all: Vec<ControllerRevision>,
    update: ControllerRevision,
    current: ControllerRevision,
    current_template: PodTemplateSpec,
    collisions: i32,
}

async fn revisions(
    client: &Client,
    owner: &RevisionOwner,
    sts: &StatefulSet,
    spec: &StatefulSetSpec,
    selector: &kube::core::Selector,
) -> Result<Revisions, Error> {
    let status = sts.status.clone().unwrap_or_default();
    let mut all = revision::list(client, owner, selector).await?;
    let mut collisions = status.collision_count.unwrap_or(0);
    let update = revision::ensure(client, owner, &spec.template, &mut all, &mut collisions).await?;
    let current: ControllerRevision = status
        .current_revision
        .as_ref()
        .and_then(|c| all.iter().find(|r| r.name_any() == *c))
        .cloned()
        .unwrap_or_else(|| update.clone());
    let current_template = revision::template_of(&current).unwrap_or_else(|| spec.template.clone());
    Ok(Revisions {
        all,
        update,
        current,
        current_template,
        collisions,
    })
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

    // Observe: revisions and the set's pods.
    let revs = revisions(client, &owner, &sts, spec, &selector).await?;
    let (update_name, current_name) = (revs.update.name_any(), revs.current.name_any());
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels_from(&selector))
        .await?
        .items
        .into_iter()
        .filter(|p| owner.controls(&p.metadata))
        .collect();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = ctx.config.clock.unix_seconds();
    let healthy = |p: &Pod| {
        p.metadata.deletion_timestamp.is_none()
            && phase(p) == "Running"
            && workload::is_pod_available(p, min_ready, now)
    };
    // Decide (the input borrows a closure, so it does not live across the awaits).
    let (plan, status) = {
        let input = PlanInput::new(
            &sts,
            &owner,
            &pods,
            (&update_name, &spec.template),
            (&current_name, &revs.current_template),
            &healthy,
        );
        let plan = plan(&input);
        let status = status_of(&input, &pods, &plan, revs.collisions, min_ready, now);
        (plan, status)
    };

    // Execute.
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
    workload::patch_status_if_changed(client, sts.as_ref(), sts.status.as_ref(), &status).await?;

    // History: keep the current and update revisions and any a pod runs.
    let mut live: HashSet<String> = HashSet::from([current_name, update_name]);
    live.extend(status.current_revision.clone());
    live.extend(pods.iter().filter_map(revision_of).map(str::to_owned));
    revision::prune(
        client,
        &ns,
        &revs.all,
        &live,
        spec.revision_history_limit.unwrap_or(10),
    )
    .await?;
    let mut requeue = Requeue::default();
    for p in &pods {
        requeue.pod(p, min_ready, now);
    }
    Ok(requeue.action())
}

/// The status, from the pods this pass found. The update is complete once every pod runs
/// it and is ready and the plan has nothing left to do: it becomes current.
fn status_of(
    i: &PlanInput<'_>,
    pods: &[Pod],
    plan: &Plan,
    collisions: i32,
    min_ready: i32,
    now: i64,
) -> StatefulSetStatus {
    let (current_name, update_name) = (i.current.0, i.update.0);
    let (mut counted, mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0, 0);
    for p in pods {
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
        if p.metadata.deletion_timestamp.is_none() {
            if revision_of(p) == Some(current_name) {
                current += 1;
            }
            if revision_of(p) == Some(update_name) {
                updated += 1;
            }
        }
    }
    let replicas = i.end - i.start;
    let complete = plan.create.is_empty()
        && plan.delete.is_empty()
        && updated == replicas
        && ready == replicas
        && counted == replicas;
    StatefulSetStatus {
        observed_generation: i.sts.metadata.generation,
        collision_count: (collisions > 0).then_some(collisions),
        conditions: i.sts.status.as_ref().and_then(|s| s.conditions.clone()),
        current_revision: Some(if complete { update_name } else { current_name }.to_owned()),
        update_revision: Some(update_name.to_owned()),
        replicas: counted,
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        current_replicas: Some(if complete { updated } else { current }),
        updated_replicas: Some(updated),
    }
}

/// What [`plan`] decides from.
struct PlanInput<'a> {
    sts: &'a StatefulSet,
    owner: &'a RevisionOwner,
    /// The set's pods by ordinal.
    by_ordinal: BTreeMap<i32, Pod>,
    /// The ordinals wanted: `[start, end)`; the pods outside are condemned.
    start: i32,
    end: i32,
    /// `OrderedReady`: one step at a time, each waiting for the lower ordinals.
    monotonic: bool,
    rolling: bool,
    partition: i32,
    update: (&'a str, &'a PodTemplateSpec),
    current: (&'a str, &'a PodTemplateSpec),
    healthy: &'a dyn Fn(&Pod) -> bool,
}

impl<'a> PlanInput<'a> {
    fn new(
        sts: &'a StatefulSet,
        owner: &'a RevisionOwner,
        pods: &[Pod],
        update: (&'a str, &'a PodTemplateSpec),
        current: (&'a str, &'a PodTemplateSpec),
        healthy: &'a dyn Fn(&Pod) -> bool,
    ) -> Self {
        let name = sts.name_any();
        let spec = sts.spec.clone().unwrap_or_default();
        let start = spec
            .ordinals
            .as_ref()
            .and_then(|o| o.start)
            .unwrap_or(0)
            .max(0);
        let strategy = spec.update_strategy.as_ref();
        Self {
            sts,
            owner,
            by_ordinal: pods
                .iter()
                .filter_map(|p| Some((ordinal_of(&name, &p.name_any())?, p.clone())))
                .collect(),
            start,
            end: start.saturating_add(spec.replicas.unwrap_or(1).max(0)),
            monotonic: spec.pod_management_policy.as_deref() != Some("Parallel"),
            rolling: strategy
                .is_none_or(|s| s.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate"),
            partition: strategy
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.partition)
                .unwrap_or(0)
                .max(0),
            update,
            current,
            healthy,
        }
    }
}

fn terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

/// Decides one pass: create missing pods, replace finished ones, remove condemned ones, and
/// roll the update, stopping at the first step that must wait when ordered.
fn plan(i: &PlanInput<'_>) -> Plan {
    let mut plan = Plan::default();
    if plan_replicas(i, &mut plan) || !plan.create.is_empty() || !plan.delete.is_empty() {
        return plan;
    }
    if plan_condemned(i, &mut plan) {
        return plan;
    }
    if i.rolling {
        plan_rolling_update(i, &mut plan);
    }
    plan
}

/// The wanted replicas in ascending order: missing ones created, finished ones replaced.
/// True when an ordered set must wait.
fn plan_replicas(i: &PlanInput<'_>, plan: &mut Plan) -> bool {
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
                return true;
            }
            continue;
        };
        if terminating(pod) {
            if i.monotonic {
                return true;
            }
            continue;
        }
        if matches!(phase(pod), "Failed" | "Succeeded") {
            plan.delete.push(pod.clone());
            if i.monotonic {
                return true;
            }
            continue;
        }
        if i.monotonic && !(i.healthy)(pod) {
            return true;
        }
    }
    false
}

/// Condemned pods, highest ordinal first (one at a time, once the others are healthy, when
/// ordered). True when there were any: the update waits for them.
fn plan_condemned(i: &PlanInput<'_>, plan: &mut Plan) -> bool {
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
                return true;
            }
            continue;
        }
        if i.monotonic {
            let others_healthy = i
                .by_ordinal
                .values()
                .all(|p| p.metadata.uid == pod.metadata.uid || (i.healthy)(p));
            if others_healthy || !(i.healthy)(pod) {
                plan.delete.push((*pod).clone());
            }
            return true;
        }
        plan.delete.push((*pod).clone());
    }
    !condemned.is_empty()
}

/// The rolling update: highest ordinal first, one pod at a time, down to the partition.
fn plan_rolling_update(i: &PlanInput<'_>, plan: &mut Plan) {
    let floor = i.start.saturating_add(i.partition);
    for ordinal in (floor.max(i.start)..i.end).rev() {
        let Some(pod) = i.by_ordinal.get(&ordinal) else {
            return;
        };
        if revision_of(pod) != Some(i.update.0) && !terminating(pod) {
            plan.delete.push(pod.clone());
            return;
        }
        if !(i.healthy)(pod) {
            return;
        }
    }
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
    fn set(replicas: i32, policy: &str, strategy: serde_json::Value) -> StatefulSet {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1", "generation": 3},
            "spec": {
                "replicas": replicas,
                "podManagementPolicy": policy,
                "updateStrategy": strategy,
                "serviceName": "web",
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c"}]}},
            },
        }))
        .unwrap()
    }

    /// `web-<ordinal>` of revision `rev` in `phase` ("Gone" for one being deleted).
    fn member(ordinal: i32, rev: &str, phase: &str) -> Pod {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("web-{ordinal}"), "uid": format!("p{ordinal}"),
                "labels": {"app": "web", REVISION_HASH_LABEL: rev}},
            "status": {"phase": phase},
        }))
        .unwrap();
        if phase == "Gone" {
            pod.metadata.deletion_timestamp =
                Some(workload::now_time(&edgesite_clock::SystemClock));
        }
        pod
    }

    /// Name, replicas, pod management policy, update strategy, pods, created, deleted.
    type Case = (
        &'static str,
        i32,
        &'static str,
        serde_json::Value,
        Vec<Pod>,
        &'static [&'static str],
        &'static [&'static str],
    );

    #[test]
    fn plans_step_through_ordinals_condemned_pods_and_updates() {
        let rolling = |partition: i32| serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"partition": partition}});
        let cases: Vec<Case> = vec![
            (
                "ordered: one pod at a time",
                3,
                "OrderedReady",
                rolling(0),
                vec![],
                &["web-0"],
                &[],
            ),
            (
                "ordered: waits for a pod that is not running",
                3,
                "OrderedReady",
                rolling(0),
                vec![member(0, "new", "Pending")],
                &[],
                &[],
            ),
            (
                "ordered: the next ordinal once the lower are healthy",
                3,
                "OrderedReady",
                rolling(0),
                vec![member(0, "new", "Running")],
                &["web-1"],
                &[],
            ),
            (
                "parallel: all at once",
                3,
                "Parallel",
                rolling(0),
                vec![],
                &["web-0", "web-1", "web-2"],
                &[],
            ),
            (
                "a finished pod is replaced",
                1,
                "OrderedReady",
                rolling(0),
                vec![member(0, "new", "Failed")],
                &[],
                &["web-0"],
            ),
            (
                "condemned pods go from the highest ordinal",
                1,
                "OrderedReady",
                rolling(0),
                vec![
                    member(0, "new", "Running"),
                    member(1, "new", "Running"),
                    member(2, "new", "Running"),
                ],
                &[],
                &["web-2"],
            ),
            (
                "parallel: every condemned pod at once",
                1,
                "Parallel",
                rolling(0),
                vec![
                    member(0, "new", "Running"),
                    member(1, "new", "Running"),
                    member(2, "new", "Running"),
                ],
                &[],
                &["web-2", "web-1"],
            ),
            (
                "the update starts at the highest ordinal",
                2,
                "OrderedReady",
                rolling(0),
                vec![member(0, "old", "Running"), member(1, "old", "Running")],
                &[],
                &["web-1"],
            ),
            (
                "the update waits for a pod being replaced",
                2,
                "OrderedReady",
                rolling(0),
                vec![member(0, "old", "Running"), member(1, "new", "Gone")],
                &[],
                &[],
            ),
            (
                "the update stops at the partition",
                2,
                "OrderedReady",
                rolling(1),
                vec![member(0, "old", "Running"), member(1, "new", "Running")],
                &[],
                &[],
            ),
            (
                "OnDelete leaves old pods alone",
                2,
                "OrderedReady",
                serde_json::json!({"type": "OnDelete"}),
                vec![member(0, "old", "Running"), member(1, "old", "Running")],
                &[],
                &[],
            ),
        ];
        let template = PodTemplateSpec::default();
        let healthy = |p: &Pod| !terminating(p) && phase(p) == "Running";
        for (name, replicas, policy, strategy, pods, created, deleted) in cases {
            let sts = set(replicas, policy, strategy);
            let owner = RevisionOwner::of(&sts).unwrap();
            let input = PlanInput::new(
                &sts,
                &owner,
                &pods,
                ("new", &template),
                ("old", &template),
                &healthy,
            );
            let p = plan(&input);
            let names = |ps: &[Pod]| ps.iter().map(|p| p.name_any()).collect::<Vec<_>>();
            assert_eq!(names(&p.create), created, "{name}: created");
            assert_eq!(names(&p.delete), deleted, "{name}: deleted");
        }
    }

    #[test]
    fn the_update_revision_becomes_current_once_every_pod_runs_it_ready() {
        let sts = set(
            2,
            "OrderedReady",
            serde_json::json!({"type": "RollingUpdate"}),
        );
        let owner = RevisionOwner::of(&sts).unwrap();
        let template = PodTemplateSpec::default();
        let healthy = |_: &Pod| true;
        let ready = |ordinal: i32, rev: &str| {
            let mut p = member(ordinal, rev, "Running");
            p.status = serde_json::from_value(serde_json::json!({"phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}]}))
            .unwrap();
            p
        };
        let pods = vec![ready(0, "new"), ready(1, "new")];
        let input = PlanInput::new(
            &sts,
            &owner,
            &pods,
            ("new", &template),
            ("old", &template),
            &healthy,
        );
        let s = status_of(&input, &pods, &Plan::default(), 0, 0, 0);
        assert_eq!(s.current_revision.as_deref(), Some("new"));
        assert_eq!(
            (
                s.replicas,
                s.ready_replicas,
                s.updated_replicas,
                s.current_replicas
            ),
            (2, Some(2), Some(2), Some(2))
        );
        assert_eq!(s.observed_generation, Some(3));
        let pods = vec![ready(0, "old"), ready(1, "new")];
        let input = PlanInput::new(
            &sts,
            &owner,
            &pods,
            ("new", &template),
            ("old", &template),
            &healthy,
        );
        let s = status_of(&input, &pods, &Plan::default(), 1, 0, 0);
        assert_eq!(s.current_revision.as_deref(), Some("old"));
        assert_eq!(
            (s.current_replicas, s.updated_replicas, s.collision_count),
            (Some(1), Some(1), Some(1))
        );
    }
}
