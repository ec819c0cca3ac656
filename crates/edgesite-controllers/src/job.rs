//! The Job controller (batch/v1): runs a Job's pods to completion — up to `parallelism` at
//! once until `completions` succeed — and reports progress in `status`.
//!
//! Finished pods are counted with upstream's finalizer protocol: every pod carries the
//! `batch.kubernetes.io/job-tracking` finalizer; a pod seen finished (or deleted before it
//! succeeded, which counts as a failure) has its uid recorded in
//! `status.uncountedTerminatedPods` first, then loses the finalizer, then moves into
//! `status.succeeded`/`failed`. A pod is therefore counted exactly once even when it is
//! deleted right after it finishes.
//!
//! A Job fails (`FailureTarget`, then `Failed` once its pods are gone) when more pods failed
//! than `backoffLimit` (with `restartPolicy: OnFailure`, container restarts count too) or it
//! ran longer than `activeDeadlineSeconds`; it succeeds (`SuccessCriteriaMet`, then
//! `Complete`) when `completions` pods succeeded, or — without `completions` — once one pod
//! succeeded and none is left running. `suspend` deletes the running pods and holds new ones;
//! `ttlSecondsAfterFinished` deletes a finished Job (background propagation). Both completion
//! modes are supported: `Indexed` Jobs give each pod a completion index (annotation, label,
//! `JOB_COMPLETION_INDEX` env, hostname) and succeed when every index has succeeded.
//!
//! All time decisions read `Config::clock`. Pods are listed from the API server on every pass;
//! a list can lag behind this controller's own writes, so the pods it released or created are
//! remembered until a list shows them (upstream's "expectations") — without that a released
//! pod listed with its old finalizer would be counted twice. Not done: `podFailurePolicy`,
//! `successPolicy`, `backoffLimitPerIndex`, adopting orphan pods of a `manualSelector` Job.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt as _};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::informers::Informers;
use crate::queue;
use crate::workload::{
    controller_of, controller_ref, is_controlled_by, is_pod_active, is_pod_ready, is_pod_terminal,
    key, now_time, pod_from_template, selector, selects,
};
use crate::{Config, Error};

/// The finalizer that keeps a Job's pod until the Job counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";

/// The annotation (and label) giving an Indexed Job's pod its completion index.
pub const COMPLETION_INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";

/// The label with the uid of the Job a pod belongs to.
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";

/// The label with the name of the Job a pod belongs to.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// Longest back-off before replacing failed pods (upstream's `MaxJobPodFailureBackOff`).
const MAX_BACKOFF: Duration = Duration::from_secs(360);

/// Most pods one pass creates (upstream's `MaxPodCreateDeletePerSync`).
const MAX_CREATE: usize = 500;

/// How many pod creations or finalizer removals are in flight at once.
const CREATE_CONCURRENCY: usize = 16;

/// The in-memory failure history of a Job, for the back-off before replacing failed pods.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    /// The failed count when it last went up.
    failed: i32,
    /// When (clock seconds) it last went up.
    at: i64,
}

struct Context {
    client: Client,
    config: Arc<Config>,
    backoff: Mutex<HashMap<String, Backoff>>,
    /// Upstream's "expectations": pods this controller released (finalizer removed) or
    /// created, by pod uid, with when. A list of pods may lag behind these writes; until it
    /// shows them, a released pod must not be counted again and a created one counts as
    /// active. Entries go once seen, or after [`EXPECTATIONS_TIMEOUT`].
    released: Mutex<HashMap<String, std::time::Instant>>,
    created: Mutex<HashMap<String, (String, std::time::Instant)>>,
}

/// How long an unobserved expectation is kept (upstream's `ExpectationsTimeout`).
const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs the Job controller until the returned future is dropped.
pub async fn run(client: Client, config: Arc<Config>, inf: &Informers) {
    let jobs: Api<Job> = Api::all(client.clone());
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        backoff: Mutex::new(HashMap::new()),
        released: Mutex::new(HashMap::new()),
        created: Mutex::new(HashMap::new()),
    });
    let controller =
        Controller::new(jobs, watcher::Config::default()).owns_shared_stream(inf.pods.objects());
    tokio::join!(
        queue::run_controller("job", controller, reconcile, ctx),
        release_orphans(client, inf.pods.objects())
    );
}

/// Removes the tracking finalizer from finished or deleted pods whose Job is gone (the Job's
/// own pass handles the pods of Jobs that exist).
async fn release_orphans(
    client: Client,
    pods: impl futures::Stream<Item = Arc<Pod>> + Send + 'static,
) {
    let done = pods.for_each_concurrent(8, |pod| {
        let client = client.clone();
        async move {
            if !has_tracking_finalizer(&pod)
                || (pod.metadata.deletion_timestamp.is_none() && !is_pod_terminal(&pod))
            {
                return;
            }
            let Some(owner) = controller_of(&pod.metadata).filter(|o| o.kind == "Job") else {
                return;
            };
            let ns = pod.namespace().unwrap_or_default();
            let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
            match jobs.get_opt(&owner.name).await {
                Ok(Some(job)) if job.uid().as_deref() == Some(owner.uid.as_str()) => {}
                Ok(_) => {
                    if let Err(err) = remove_finalizer(&client, &pod).await {
                        debug!(pod = %key(&*pod), %err, "cannot release an orphan job pod");
                    }
                }
                Err(err) => debug!(pod = %key(&*pod), %err, "cannot look up the pod's job"),
            }
        }
    });
    done.await;
}

fn has_tracking_finalizer(pod: &Pod) -> bool {
    pod.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// Upstream's `isPodFailed`: failed, or deleted before it succeeded (an orphan or a pod the
/// controller removed never gets to report a phase).
fn counts_as_failed(pod: &Pod) -> bool {
    phase(pod) == Some("Failed")
        || (pod.metadata.deletion_timestamp.is_some() && phase(pod) != Some("Succeeded"))
}

/// Drops [`TRACKING_FINALIZER`] from `pod`. The patch carries the pod's resourceVersion, so
/// a concurrent change of the list is a conflict instead of a lost update.
async fn remove_finalizer(client: &Client, pod: &Pod) -> Result<(), kube::Error> {
    if !has_tracking_finalizer(pod) {
        return Ok(());
    }
    let rest: Vec<&String> = pod
        .finalizers()
        .iter()
        .filter(|f| *f != TRACKING_FINALIZER)
        .collect();
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let patch = json!({"metadata": {
        "finalizers": rest,
        "resourceVersion": pod.resource_version(),
    }});
    match api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Records an event about `job` as the job controller.
async fn event(ctx: &Context, job: &Job, kind: &str, reason: &str, message: &str) {
    record_event(
        &ctx.client,
        &*ctx.config.clock,
        "job-controller",
        job,
        kind,
        reason,
        message,
    )
    .await;
}

/// `Complete` or `Failed` if `job` finished.
pub(crate) fn finished_condition(job: &Job) -> Option<&'static str> {
    let st = job.status.as_ref()?;
    ["Complete", "Failed"]
        .into_iter()
        .find(|ty| condition_true(st, ty).is_some())
}

/// Records a core/v1 Event about `obj` (best effort: a failure is only logged).
pub(crate) async fn record_event<K>(
    client: &Client,
    clock: &dyn crate::Clock,
    component: &str,
    obj: &K,
    kind: &str,
    reason: &str,
    message: &str,
) where
    K: kube::Resource<DynamicType = ()>,
{
    let ns = obj.namespace().unwrap_or_else(|| "default".to_owned());
    let ev = crate::events::Event {
        namespace: &ns,
        object: &obj.name_any(),
        involved: crate::events::involved(obj),
        type_: kind,
        reason,
        message,
        component,
    };
    crate::events::record(client, clock, ev).await;
}

fn condition_true(status: &JobStatus, ty: &str) -> Option<JobCondition> {
    status
        .conditions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|c| c.type_ == ty && c.status == "True")
        .cloned()
}

/// Sets condition `ty` to `status`; the transition time moves only when the status changes.
fn set_condition(
    status: &mut JobStatus,
    ty: &str,
    value: &str,
    reason: &str,
    message: &str,
    now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) {
    let conds = status.conditions.get_or_insert_with(Vec::new);
    let new = JobCondition {
        type_: ty.to_owned(),
        status: value.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    };
    match conds.iter_mut().find(|c| c.type_ == ty) {
        Some(c) if c.status == value => {
            if c.reason.as_deref() != Some(reason) || c.message.as_deref() != Some(message) {
                c.reason = new.reason;
                c.message = new.message;
                c.last_probe_time = new.last_probe_time;
            }
        }
        Some(c) => *c = new,
        None => conds.push(new),
    }
}

/// When a finished Job finished (clock seconds): its completion time, or when its terminal
/// condition was set.
fn finished_at(status: &JobStatus) -> Option<(String, i64)> {
    for ty in ["Complete", "Failed"] {
        if let Some(c) = condition_true(status, ty) {
            let at = status
                .completion_time
                .as_ref()
                .or(c.last_transition_time.as_ref())
                .map(|t| t.0.as_second());
            return at.map(|t| (ty.to_owned(), t));
        }
    }
    None
}

async fn reconcile(cached: Arc<Job>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    // The cache may lag behind this controller's own status writes, and the counters must
    // never be computed from an old status: read the Job itself.
    let Some(job) = jobs.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    let Some(uid) = job.uid() else {
        return Ok(Action::await_change());
    };
    let now = ctx.config.clock.unix_seconds();
    let pods = job_pods(&ctx.client, &job, &uid).await?;
    let status = job.status.clone().unwrap_or_default();

    if job.metadata.deletion_timestamp.is_some() {
        release_all(&ctx.client, &pods).await?;
        return Ok(Action::await_change());
    }
    if let Some((_, at)) = finished_at(&status) {
        release_all(&ctx.client, &pods).await?;
        if let Ok(mut b) = ctx.backoff.lock() {
            b.remove(&uid);
        }
        return ttl(&ctx, &jobs, &job, &uid, at, now).await;
    }
    sync(&ctx, &jobs, &job, &uid, pods, status, now).await
}

/// The pods of `job`: selected by it and controlled by it.
async fn job_pods(client: &Client, job: &Job, uid: &str) -> Result<Vec<Pod>, Error> {
    let ns = job.namespace().unwrap_or_default();
    let spec = job.spec.as_ref();
    let sel = selector(spec.and_then(|s| s.selector.as_ref()))?;
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // The generated selector is the uid label: let the server filter by it.
    let generated = spec
        .and_then(|s| s.selector.as_ref())
        .and_then(|s| s.match_labels.as_ref())
        .and_then(|l| l.get(CONTROLLER_UID_LABEL))
        .is_some_and(|v| v == uid);
    let lp = if generated {
        ListParams::default().labels(&format!("{CONTROLLER_UID_LABEL}={uid}"))
    } else {
        ListParams::default()
    };
    Ok(api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|p| is_controlled_by(&p.metadata, uid) && selects(&sel, &p.metadata))
        .collect())
}

/// Releases every pod of a finished or deleted Job.
async fn release_all(client: &Client, pods: &[Pod]) -> Result<(), Error> {
    for p in pods.iter().filter(|p| has_tracking_finalizer(p)) {
        remove_finalizer(client, p).await?;
    }
    Ok(())
}

/// Deletes a finished Job once its `ttlSecondsAfterFinished` passed.
async fn ttl(
    ctx: &Context,
    jobs: &Api<Job>,
    job: &Job,
    uid: &str,
    finished: i64,
    now: i64,
) -> Result<Action, Error> {
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return Ok(Action::await_change());
    };
    let expires = finished.saturating_add(i64::from(ttl));
    if now < expires {
        let wait = Duration::from_secs(u64::try_from(expires - now).unwrap_or(0));
        return Ok(Action::requeue(wait.min(ctx.config.workload_recheck)));
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match jobs.delete(&job.name_any(), &dp).await {
        Ok(_) => info!(job = %key(job), ttl, "finished job deleted after its TTL"),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

/// What one pass makes of a running Job's pods.
struct Census {
    /// Not finished and not being deleted.
    active: Vec<Pod>,
    /// Being deleted, not finished.
    terminating: i32,
    /// Uids of pods newly seen succeeded / failed, still carrying the finalizer.
    new_succeeded: BTreeSet<String>,
    new_failed: BTreeSet<String>,
    /// Indexed Jobs: the completion indexes that succeeded (already counted or new).
    succeeded_indexes: BTreeSet<i32>,
}

fn census(pods: &[Pod], uncounted: &Uncounted, indexed: Option<i32>) -> Census {
    let mut c = Census {
        active: Vec::new(),
        terminating: 0,
        new_succeeded: BTreeSet::new(),
        new_failed: BTreeSet::new(),
        succeeded_indexes: BTreeSet::new(),
    };
    for p in pods {
        let uid = p.uid().unwrap_or_default();
        if is_pod_active(p) {
            c.active.push(p.clone());
        } else if p.metadata.deletion_timestamp.is_some() && !is_pod_terminal(p) {
            c.terminating += 1;
        }
        if phase(p) == Some("Succeeded")
            && let (Some(n), Some(i)) = (indexed, completion_index(p))
            && i < n
        {
            c.succeeded_indexes.insert(i);
        }
        if !has_tracking_finalizer(p) || uncounted.contains(&uid) {
            continue;
        }
        if phase(p) == Some("Succeeded") {
            c.new_succeeded.insert(uid);
        } else if counts_as_failed(p) {
            c.new_failed.insert(uid);
        }
    }
    c
}

/// `status.uncountedTerminatedPods` as sets.
#[derive(Debug, Default, Clone, PartialEq)]
struct Uncounted {
    succeeded: BTreeSet<String>,
    failed: BTreeSet<String>,
}

impl Uncounted {
    fn from_status(st: &JobStatus) -> Self {
        let u = st.uncounted_terminated_pods.clone().unwrap_or_default();
        Self {
            succeeded: u.succeeded.unwrap_or_default().into_iter().collect(),
            failed: u.failed.unwrap_or_default().into_iter().collect(),
        }
    }

    fn contains(&self, uid: &str) -> bool {
        self.succeeded.contains(uid) || self.failed.contains(uid)
    }

    fn is_empty(&self) -> bool {
        self.succeeded.is_empty() && self.failed.is_empty()
    }

    fn to_status(&self) -> UncountedTerminatedPods {
        let list = |s: &BTreeSet<String>| (!s.is_empty()).then(|| s.iter().cloned().collect());
        UncountedTerminatedPods {
            succeeded: list(&self.succeeded),
            failed: list(&self.failed),
        }
    }
}

fn completion_index(pod: &Pod) -> Option<i32> {
    pod.annotations()
        .get(COMPLETION_INDEX_ANNOTATION)
        .and_then(|v| v.parse().ok())
        .filter(|i: &i32| *i >= 0)
}

/// The container restarts of `pods` still running or pending (an `OnFailure` Job's failures).
fn restarts(pods: &[Pod]) -> i32 {
    pods.iter()
        .filter(|p| matches!(phase(p), Some("Running" | "Pending")))
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum()
}

/// The failure back-off before creating pods again: `base × 2^(failures-1)`, capped.
fn backoff_delay(base: Duration, failures: i32) -> Duration {
    if failures <= 0 || base.is_zero() {
        return Duration::ZERO;
    }
    let exp = u32::try_from(failures - 1).unwrap_or(0).min(16);
    base.saturating_mul(1 << exp).min(MAX_BACKOFF)
}

/// What one pass saw of a Job: its spec and last status, the pods that still run (listed
/// or just created), the counts so far and the time.
struct Observed<'a> {
    spec: &'a JobSpec,
    /// `Some(completions)` for an Indexed Job.
    indexed: Option<i32>,
    old: &'a JobStatus,
    active: Vec<Pod>,
    /// Succeeded and failed pods, counted or about to be.
    succeeded: i32,
    failed: i32,
    /// Indexed Jobs: the completion indexes that succeeded.
    succeeded_indexes: &'a BTreeSet<i32>,
    /// Clock seconds, and the same instant as an API time.
    now: i64,
    now_t: Time,
    /// What is left of the failure back-off before pods may be created again.
    backoff_wait: Duration,
}

/// `Some(completions)` for an Indexed Job, whose pods each have a completion index.
fn indexed_completions(spec: &JobSpec) -> Option<i32> {
    (spec.completion_mode.as_deref() == Some("Indexed")).then(|| spec.completions.unwrap_or(0))
}

/// What a pass does about a Job before it counts pods: the status with its new conditions,
/// the events, the pods to delete and to create, and when to look again.
#[derive(Debug)]
struct Plan {
    status: JobStatus,
    /// `FailureTarget` or `SuccessCriteriaMet` once decided: the Job is finishing.
    finishing: Option<JobCondition>,
    /// Events as `(type, reason, message)`, sent before the pod changes.
    events: Vec<(&'static str, String, String)>,
    /// The pods that remain active once `delete` is done.
    active: Vec<Pod>,
    delete: Vec<Pod>,
    /// Whether the deleted pods count as failed (the Job failed) or are let go uncounted
    /// (a suspension or a lower parallelism), as upstream.
    delete_counts_as_failed: bool,
    /// How many pods to create and, for an Indexed Job, their completion indexes.
    create: Option<(usize, Option<Vec<i32>>)>,
    requeue: Option<Duration>,
}

impl Plan {
    fn requeue_at(&mut self, d: Duration) {
        self.requeue = Some(self.requeue.map_or(d, |x| x.min(d)));
    }
}

/// The decisions of one pass, without IO: whether the Job is finishing (back-off limit,
/// deadline, completions), suspended or resumed, and how many pods to add or remove.
fn plan(o: Observed<'_>) -> Plan {
    let spec = o.spec;
    let indexed = o.indexed;
    let suspended = spec.suspend == Some(true);
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    let now_t = &o.now_t;
    let mut p = Plan {
        status: o.old.clone(),
        finishing: None,
        events: Vec::new(),
        active: o.active,
        delete: Vec::new(),
        delete_counts_as_failed: false,
        create: None,
        requeue: None,
    };
    let st = &mut p.status;

    // startTime: set when the Job first runs, reset when it is resumed.
    if st.start_time.is_none() && !suspended {
        st.start_time = Some(now_t.clone());
    }

    // A decision already taken (interim condition) stands.
    let finishing = |st: &JobStatus| {
        condition_true(st, "FailureTarget").or_else(|| condition_true(st, "SuccessCriteriaMet"))
    };
    p.finishing = finishing(o.old);
    if p.finishing.is_none() {
        let past_restarts = on_failure && {
            let r = restarts(&p.active);
            if backoff_limit == 0 {
                r > 0
            } else {
                r >= backoff_limit
            }
        };
        let deadline = spec.active_deadline_seconds.and_then(|ads| {
            let start = p.status.start_time.as_ref()?.0.as_second();
            Some(start.saturating_add(ads))
        });
        let complete = match indexed {
            Some(n) => count(o.succeeded_indexes.len()) >= n,
            None => match spec.completions {
                Some(n) => o.succeeded >= n && p.active.is_empty(),
                None => o.succeeded > 0 && p.active.is_empty(),
            },
        };
        let st = &mut p.status;
        if o.failed > backoff_limit || past_restarts {
            set_condition(
                st,
                "FailureTarget",
                "True",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
                now_t,
            );
        } else if !suspended && deadline.is_some_and(|d| o.now >= d) {
            set_condition(
                st,
                "FailureTarget",
                "True",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
                now_t,
            );
        } else if complete {
            set_condition(
                st,
                "SuccessCriteriaMet",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now_t,
            );
        } else if let Some(d) = deadline.filter(|_| !suspended) {
            p.requeue_at(Duration::from_secs(u64::try_from(d - o.now).unwrap_or(0)));
        }
        p.finishing = finishing(&p.status);
        if let Some(c) = &p.finishing
            && c.type_ == "FailureTarget"
        {
            let reason = c.reason.clone().unwrap_or_default();
            let message = c.message.clone().unwrap_or_default();
            p.events.push(("Warning", reason, message));
        }
    }

    let was_suspended = condition_true(o.old, "Suspended").is_some();
    if p.finishing.is_some() {
        // Whatever still runs is stopped; it counts as failed once it is gone.
        p.delete = std::mem::take(&mut p.active);
        p.delete_counts_as_failed = true;
    } else if suspended {
        if !was_suspended {
            p.events
                .push(("Normal", "Suspended".into(), "Job suspended".into()));
        }
        p.delete = std::mem::take(&mut p.active);
        set_condition(
            &mut p.status,
            "Suspended",
            "True",
            "JobSuspended",
            "Job suspended",
            now_t,
        );
    } else {
        if was_suspended {
            p.events
                .push(("Normal", "Resumed".into(), "Job resumed".into()));
            set_condition(
                &mut p.status,
                "Suspended",
                "False",
                "JobResumed",
                "Job resumed",
                now_t,
            );
            // The active deadline counts from the resume.
            p.status.start_time = Some(now_t.clone());
        }
        let want = match (indexed, spec.completions) {
            (Some(_), _) => parallelism,
            (None, Some(n)) => (n - o.succeeded).clamp(0, parallelism),
            (None, None) if o.succeeded > 0 => count(p.active.len()),
            (None, None) => parallelism,
        };
        let have = count(p.active.len());
        if have > want {
            // Not ready first, then the newest.
            p.active.sort_by_key(|p| {
                (
                    is_pod_ready(p),
                    std::cmp::Reverse(p.metadata.creation_timestamp.clone().map(|t| t.0)),
                )
            });
            p.delete = p
                .active
                .drain(..usize::try_from(have - want).unwrap_or(0))
                .collect();
        } else if have < want {
            if o.backoff_wait.is_zero() {
                let indexes =
                    indexed.map(|n| free_indexes(n, o.succeeded_indexes, &p.active, want - have));
                let n = usize::try_from(want - have).unwrap_or(0).min(MAX_CREATE);
                p.create = Some((n, indexes));
            } else {
                p.requeue_at(o.backoff_wait);
            }
        }
    }
    p
}

async fn sync(
    ctx: &Context,
    jobs: &Api<Job>,
    job: &Job,
    uid: &str,
    pods: Vec<Pod>,
    old: JobStatus,
    now: i64,
) -> Result<Action, Error> {
    let spec = job.spec.clone().unwrap_or_default();
    let now_t = now_time(&*ctx.config.clock);
    let indexed = indexed_completions(&spec);
    let mut uncounted = Uncounted::from_status(&old);
    let (pods, unseen_created) = apply_expectations(ctx, uid, pods);
    let census = census(&pods, &uncounted, indexed);
    let succeeded = old.succeeded.unwrap_or(0)
        + count(uncounted.succeeded.len())
        + count(census.new_succeeded.len());
    let failed =
        old.failed.unwrap_or(0) + count(uncounted.failed.len()) + count(census.new_failed.len());
    let mut active = census.active;
    active.extend(unseen_created);
    let plan = plan(Observed {
        spec: &spec,
        indexed,
        old: &old,
        active,
        succeeded,
        failed,
        succeeded_indexes: &census.succeeded_indexes,
        now,
        now_t: now_t.clone(),
        backoff_wait: failure_backoff(ctx, uid, failed, now),
    });
    if let Some(c) = &plan.finishing
        && condition_true(&old, &c.type_).is_none()
    {
        info!(job = %key(job), condition = %c.type_, reason = ?c.reason, "job finishing");
    }
    for (kind, reason, message) in &plan.events {
        event(ctx, job, kind, reason, message).await;
    }
    let mut st = plan.status;
    let mut active = plan.active;
    let terminating = census.terminating
        + delete_pods(ctx, job, &plan.delete, plan.delete_counts_as_failed).await?;
    if let Some((n, indexes)) = plan.create {
        active.extend(create_pods(ctx, job, uid, n, indexes).await?);
    }

    st.active = Some(count(active.len()));
    st.ready = Some(count(active.iter().filter(|p| is_pod_ready(p)).count()));
    st.terminating = Some(terminating);
    if let Some(n) = indexed {
        st.completed_indexes = Some(format_indexes(&census.succeeded_indexes, n));
    }

    // 1. Record the newly finished pods before they lose their finalizer.
    uncounted
        .succeeded
        .extend(census.new_succeeded.iter().cloned());
    uncounted.failed.extend(census.new_failed.iter().cloned());
    st.uncounted_terminated_pods = Some(uncounted.to_status());
    let current = write_status(jobs, job, &st).await?;

    // 2. Release them, 3. and count them.
    if !uncounted.is_empty() {
        release_counted(ctx, &pods, &uncounted).await?;
        st.succeeded = Some(st.succeeded.unwrap_or(0) + count(uncounted.succeeded.len()));
        st.failed = Some(st.failed.unwrap_or(0) + count(uncounted.failed.len()));
        uncounted = Uncounted::default();
        st.uncounted_terminated_pods = Some(uncounted.to_status());
    }
    st.succeeded.get_or_insert(0);
    st.failed.get_or_insert(0);

    // 4. The terminal condition, once nothing runs or terminates any more.
    if let Some(c) = &plan.finishing
        && active.is_empty()
        && terminating == 0
    {
        let reason = c.reason.clone().unwrap_or_default();
        let message = c.message.clone().unwrap_or_default();
        if c.type_ == "SuccessCriteriaMet" {
            set_condition(&mut st, "Complete", "True", &reason, &message, &now_t);
            st.completion_time = Some(now_t.clone());
            info!(job = %key(job), succeeded = ?st.succeeded, "job complete");
            event(ctx, job, "Normal", "Completed", "Job completed").await;
        } else {
            set_condition(&mut st, "Failed", "True", &reason, &message, &now_t);
            info!(job = %key(job), %reason, "job failed");
        }
    }
    write_status(jobs, &current, &st).await?;

    if finished_at(&st).is_some() {
        // The TTL pass runs on the status event.
        return Ok(Action::await_change());
    }
    Ok(match plan.requeue {
        Some(d) => Action::requeue(d.min(ctx.config.workload_recheck)),
        None => Action::await_change(),
    })
}

/// Removes the tracking finalizer of the `pods` recorded in `uncounted`, remembering each
/// release until a list shows it.
async fn release_counted(ctx: &Context, pods: &[Pod], uncounted: &Uncounted) -> Result<(), Error> {
    let release: Vec<Pod> = pods
        .iter()
        .filter(|p| has_tracking_finalizer(p) && uncounted.contains(&p.uid().unwrap_or_default()))
        .cloned()
        .collect();
    let results: Vec<Result<(), kube::Error>> = futures::stream::iter(release)
        .map(|p| {
            let client = ctx.client.clone();
            async move {
                remove_finalizer(&client, &p).await?;
                if let (Some(uid), Ok(mut r)) = (p.uid(), ctx.released.lock()) {
                    r.insert(uid, ctx.config.clock.instant());
                }
                Ok(())
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect::<Result<(), _>>()?;
    Ok(())
}

/// Reconciles a list of a Job's pods with what this controller wrote: a pod it released
/// but still listed with the finalizer is shown without it (so it is not counted twice), and
/// pods it created that the list does not show yet are returned apart (they are active).
fn apply_expectations(ctx: &Context, job_uid: &str, mut pods: Vec<Pod>) -> (Vec<Pod>, Vec<Pod>) {
    let listed: std::collections::HashSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
    if let Ok(mut released) = ctx.released.lock() {
        let now = ctx.config.clock.instant();
        released.retain(|_, at| now.saturating_duration_since(*at) < EXPECTATIONS_TIMEOUT);
        for p in &mut pods {
            let Some(uid) = p.uid() else { continue };
            if !released.contains_key(&uid) {
                continue;
            }
            if has_tracking_finalizer(p) {
                // The list is older than the release.
                p.metadata
                    .finalizers
                    .get_or_insert_with(Vec::new)
                    .retain(|f| f != TRACKING_FINALIZER);
            } else {
                released.remove(&uid);
            }
        }
    }
    let mut unseen = Vec::new();
    if let Ok(mut created) = ctx.created.lock() {
        let now = ctx.config.clock.instant();
        created.retain(|pod_uid, (owner, at)| {
            if listed.contains(pod_uid)
                || now.saturating_duration_since(*at) >= EXPECTATIONS_TIMEOUT
            {
                return false;
            }
            if owner == job_uid {
                unseen.push(Pod {
                    metadata: kube::api::ObjectMeta {
                        uid: Some(pod_uid.clone()),
                        ..Default::default()
                    },
                    ..Pod::default()
                });
            }
            true
        });
    }
    (pods, unseen)
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// How long to wait before replacing failed pods, recording a new failure if `failed` grew.
fn failure_backoff(ctx: &Context, uid: &str, failed: i32, now: i64) -> Duration {
    let Ok(mut map) = ctx.backoff.lock() else {
        return Duration::ZERO;
    };
    if failed == 0 {
        map.remove(uid);
        return Duration::ZERO;
    }
    let b = map
        .entry(uid.to_owned())
        .or_insert(Backoff { failed, at: now });
    if failed > b.failed {
        *b = Backoff { failed, at: now };
    }
    let delay = backoff_delay(ctx.config.job_backoff, b.failed);
    let elapsed = Duration::from_secs(u64::try_from(now - b.at).unwrap_or(0));
    delay.saturating_sub(elapsed)
}

/// Writes `new` as the status of `job` (as last read or written) if it differs; returns the
/// Job as it now is. The write carries `job`'s resourceVersion: a conflict means another pass
/// moved on, and this one is retried.
async fn write_status(jobs: &Api<Job>, job: &Job, new: &JobStatus) -> Result<Job, Error> {
    if job.status.as_ref() == Some(new) {
        return Ok(job.clone());
    }
    let mut obj = job.clone();
    obj.status = Some(new.clone());
    Ok(jobs
        .replace_status(&obj.name_any(), &PostParams::default(), &obj)
        .await?)
}

/// Deletes `pods`; returns how many are now terminating. Pods stopped because the Job
/// failed keep their finalizer and are counted as failed once gone; pods stopped for a
/// suspension or a lower parallelism lose it first and are not counted (as upstream).
async fn delete_pods(
    ctx: &Context,
    job: &Job,
    pods: &[Pod],
    count_as_failed: bool,
) -> Result<i32, Error> {
    let mut deleted = 0;
    // A pod known only from this controller's own create (not listed yet) has no name here.
    for p in pods.iter().filter(|p| p.metadata.name.is_some()) {
        if !count_as_failed {
            remove_finalizer(&ctx.client, p).await?;
        }
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: p.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&p.name_any(), &dp).await {
            Ok(_) => {
                debug!(pod = %key(p), "job pod deleted");
                event(
                    ctx,
                    job,
                    "Normal",
                    "SuccessfulDelete",
                    &format!("Deleted pod: {}", p.name_any()),
                )
                .await;
                deleted += 1;
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deleted)
}

/// Creates `n` pods for `job`; for an Indexed Job, one per given completion index.
async fn create_pods(
    ctx: &Context,
    job: &Job,
    uid: &str,
    n: usize,
    indexes: Option<Vec<i32>>,
) -> Result<Vec<Pod>, Error> {
    let spec = job.spec.clone().unwrap_or_default();
    let name = job.name_any();
    let owner = controller_ref(job)?;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let slots: Vec<Option<i32>> = match indexes {
        Some(ix) => ix.into_iter().take(n).map(Some).collect(),
        None => vec![None; n],
    };
    let mut made = Vec::new();
    for index in slots {
        let generate = match index {
            Some(i) => format!("{name}-{i}-"),
            None => format!("{name}-"),
        };
        let mut pod = pod_from_template(&spec.template, owner.clone(), &generate);
        pod.metadata
            .finalizers
            .get_or_insert_with(Vec::new)
            .push(TRACKING_FINALIZER.to_owned());
        let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
        // A generated selector put these on the template already; keep them for manual ones.
        labels
            .entry(CONTROLLER_UID_LABEL.to_owned())
            .or_insert_with(|| uid.to_owned());
        labels
            .entry(JOB_NAME_LABEL.to_owned())
            .or_insert_with(|| name.clone());
        if let Some(i) = index {
            labels.insert(COMPLETION_INDEX_ANNOTATION.to_owned(), i.to_string());
            pod.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(COMPLETION_INDEX_ANNOTATION.to_owned(), i.to_string());
            if let Some(ps) = pod.spec.as_mut() {
                if ps.hostname.is_none() {
                    ps.hostname = Some(format!("{name}-{i}"));
                }
                for c in ps
                    .containers
                    .iter_mut()
                    .chain(ps.init_containers.iter_mut().flatten())
                {
                    c.env.get_or_insert_with(Vec::new).push(EnvVar {
                        name: "JOB_COMPLETION_INDEX".to_owned(),
                        value_from: Some(serde_json::from_value(json!({"fieldRef": {
                            "fieldPath": format!("metadata.labels['{COMPLETION_INDEX_ANNOTATION}']")
                        }})).map_err(|e| Error::Unexpected(e.to_string()))?),
                        value: None,
                    });
                }
            }
        }
        made.push(pod);
    }
    // Created a few at a time, as upstream's slow-start batches do concurrently.
    let results: Vec<Result<Pod, kube::Error>> = futures::stream::iter(made)
        .map(|pod| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &pod).await }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect()
        .await;
    let mut created = Vec::new();
    let mut failure = None;
    for r in results {
        match r {
            Ok(p) => {
                debug!(pod = %key(&p), job = %key(job), "job pod created");
                if let (Some(pod_uid), Ok(mut c)) = (p.uid(), ctx.created.lock()) {
                    c.insert(pod_uid, (uid.to_owned(), ctx.config.clock.instant()));
                }
                event(
                    ctx,
                    job,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("Created pod: {}", p.name_any()),
                )
                .await;
                created.push(p);
            }
            // The namespace is going away, or the template cannot make a pod: the pass is
            // retried with back-off.
            Err(e) => failure = Some(e),
        }
    }
    match failure {
        Some(e) if created.is_empty() => Err(e.into()),
        Some(e) => {
            warn!(job = %key(job), err = %e, "some job pods could not be created");
            Ok(created)
        }
        None => Ok(created),
    }
}

/// The completion indexes of an Indexed Job that neither succeeded nor run, lowest first.
fn free_indexes(n: i32, succeeded: &BTreeSet<i32>, active: &[Pod], want: i32) -> Vec<i32> {
    let running: BTreeSet<i32> = active.iter().filter_map(completion_index).collect();
    (0..n)
        .filter(|i| !succeeded.contains(i) && !running.contains(i))
        .take(usize::try_from(want).unwrap_or(0))
        .collect()
}

/// `status.completedIndexes`: ranges as upstream writes them (`1,3-5,7`).
fn format_indexes(set: &BTreeSet<i32>, n: i32) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().filter(|i| *i < n).peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn running(name: &str, ready: bool, created: i64) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": name,
                         "creationTimestamp": time(created)},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    /// One plan: `spec` and `status` as JSON, the active pods, succeeded and failed counts,
    /// the back-off left (seconds), at clock second 1000.
    fn plan_of(
        spec: serde_json::Value,
        status: serde_json::Value,
        active: Vec<Pod>,
        (succeeded, failed): (i32, i32),
        backoff: u64,
    ) -> Plan {
        let mut spec = spec;
        spec["template"] = json!({"spec": {"containers": [], "restartPolicy": "Never"}});
        let spec: JobSpec = serde_json::from_value(spec).unwrap();
        let old: JobStatus = serde_json::from_value(status).unwrap();
        let done = BTreeSet::new();
        plan(Observed {
            spec: &spec,
            indexed: indexed_completions(&spec),
            old: &old,
            active,
            succeeded,
            failed,
            succeeded_indexes: &done,
            now: 1000,
            now_t: time(1000),
            backoff_wait: Duration::from_secs(backoff),
        })
    }

    fn names(pods: &[Pod]) -> Vec<String> {
        pods.iter().map(kube::ResourceExt::name_any).collect()
    }

    fn conditions(p: &Plan) -> Vec<(String, String, String)> {
        p.status
            .conditions
            .iter()
            .flatten()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    #[test]
    fn plan_starts_finishes_and_scales_as_upstream() {
        struct Case {
            what: &'static str,
            spec: serde_json::Value,
            status: serde_json::Value,
            active: Vec<Pod>,
            counts: (i32, i32),
            backoff: u64,
            create: Option<usize>,
            delete: &'static [&'static str],
            counts_as_failed: bool,
            conditions: &'static [(&'static str, &'static str, &'static str)],
            events: &'static [&'static str],
            requeue: Option<u64>,
        }
        let base = |what| Case {
            what,
            spec: json!({"parallelism": 2, "completions": 3}),
            status: json!({}),
            active: vec![],
            counts: (0, 0),
            backoff: 0,
            create: None,
            delete: &[],
            counts_as_failed: false,
            conditions: &[],
            events: &[],
            requeue: None,
        };
        let started = json!({"startTime": time(900)});
        let cases = [
            Case {
                create: Some(2),
                ..base("a new Job starts parallelism pods")
            },
            Case {
                counts: (2, 0),
                active: vec![running("a", true, 1)],
                status: started.clone(),
                ..base("one completion left, one running: nothing to add")
            },
            Case {
                counts: (2, 0),
                status: started.clone(),
                create: Some(1),
                ..base("never more than the completions left")
            },
            Case {
                counts: (3, 0),
                status: started.clone(),
                conditions: &[("SuccessCriteriaMet", "True", "CompletionsReached")],
                ..base("completions reached")
            },
            Case {
                counts: (0, 7),
                active: vec![running("a", true, 1)],
                status: started.clone(),
                delete: &["a"],
                counts_as_failed: true,
                conditions: &[("FailureTarget", "True", "BackoffLimitExceeded")],
                events: &["BackoffLimitExceeded"],
                ..base("more failures than the default back-off limit of 6")
            },
            Case {
                spec: json!({"parallelism": 1, "activeDeadlineSeconds": 50}),
                status: started.clone(),
                active: vec![running("a", true, 1)],
                delete: &["a"],
                counts_as_failed: true,
                conditions: &[("FailureTarget", "True", "DeadlineExceeded")],
                events: &["DeadlineExceeded"],
                ..base("past the active deadline")
            },
            Case {
                spec: json!({"parallelism": 1, "activeDeadlineSeconds": 300}),
                status: started.clone(),
                active: vec![running("a", true, 1)],
                requeue: Some(200),
                ..base("before the deadline: look again when it comes")
            },
            Case {
                spec: json!({"parallelism": 2, "suspend": true}),
                status: started.clone(),
                active: vec![running("a", true, 1), running("b", true, 2)],
                delete: &["a", "b"],
                conditions: &[("Suspended", "True", "JobSuspended")],
                events: &["Suspended"],
                ..base("suspending stops the pods uncounted")
            },
            Case {
                spec: json!({"parallelism": 1}),
                status: json!({"startTime": time(10), "conditions": [
                    {"type": "Suspended", "status": "True", "reason": "JobSuspended"}]}),
                create: Some(1),
                conditions: &[("Suspended", "False", "JobResumed")],
                events: &["Resumed"],
                ..base("resuming starts pods again")
            },
            Case {
                spec: json!({"parallelism": 1, "completions": 5}),
                status: started.clone(),
                active: vec![
                    running("old-ready", true, 1),
                    running("new-ready", true, 3),
                    running("not-ready", false, 2),
                ],
                delete: &["not-ready", "new-ready"],
                ..base("a lower parallelism removes the not ready, then the newest")
            },
            Case {
                status: started.clone(),
                counts: (0, 2),
                backoff: 40,
                requeue: Some(40),
                ..base("failures hold new pods for the back-off")
            },
            Case {
                status: json!({"startTime": time(900), "conditions": [
                    {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"}]}),
                active: vec![running("a", true, 1)],
                delete: &["a"],
                counts_as_failed: true,
                conditions: &[("FailureTarget", "True", "BackoffLimitExceeded")],
                ..base("a decision already taken stands, without a second event")
            },
        ];
        for c in cases {
            let p = plan_of(c.spec, c.status, c.active, c.counts, c.backoff);
            assert_eq!(p.create.as_ref().map(|(n, _)| *n), c.create, "{}", c.what);
            assert_eq!(names(&p.delete), c.delete, "{}", c.what);
            if !c.delete.is_empty() {
                assert_eq!(p.delete_counts_as_failed, c.counts_as_failed, "{}", c.what);
            }
            let want: Vec<_> = c
                .conditions
                .iter()
                .map(|(t, s, r)| ((*t).to_owned(), (*s).to_owned(), (*r).to_owned()))
                .collect();
            assert_eq!(conditions(&p), want, "{}", c.what);
            let events: Vec<&str> = p.events.iter().map(|(_, r, _)| r.as_str()).collect();
            assert_eq!(events, c.events, "{}", c.what);
            assert_eq!(p.requeue, c.requeue.map(Duration::from_secs), "{}", c.what);
            assert!(p.status.start_time.is_some(), "{}", c.what);
        }
    }

    #[test]
    fn indexed_plan_creates_the_free_indexes() {
        let spec: JobSpec = serde_json::from_value(json!({
            "parallelism": 2, "completions": 4, "completionMode": "Indexed",
            "template": {"spec": {"containers": []}}}))
        .unwrap();
        let done: BTreeSet<i32> = [0].into_iter().collect();
        let p = plan(Observed {
            spec: &spec,
            indexed: indexed_completions(&spec),
            old: &JobStatus::default(),
            active: vec![],
            succeeded: 1,
            failed: 0,
            succeeded_indexes: &done,
            now: 1000,
            now_t: time(1000),
            backoff_wait: Duration::ZERO,
        });
        assert_eq!(p.create, Some((2, Some(vec![1, 2]))));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_secs(10);
        assert_eq!(backoff_delay(base, 0), Duration::ZERO);
        assert_eq!(backoff_delay(base, 1), Duration::from_secs(10));
        assert_eq!(backoff_delay(base, 3), Duration::from_secs(40));
        assert_eq!(backoff_delay(base, 30), MAX_BACKOFF);
        assert_eq!(backoff_delay(Duration::ZERO, 3), Duration::ZERO);
    }

    #[test]
    fn completed_indexes_are_ranges() {
        let s: BTreeSet<i32> = [0, 1, 2, 4, 6, 7, 9].into_iter().collect();
        assert_eq!(format_indexes(&s, 9), "0-2,4,6-7");
        assert_eq!(format_indexes(&BTreeSet::new(), 3), "");
    }

    #[test]
    fn free_indexes_skip_done_and_running() {
        let done: BTreeSet<i32> = [0, 2].into_iter().collect();
        let running: Pod = serde_json::from_value(json!({"metadata": {
            "annotations": {COMPLETION_INDEX_ANNOTATION: "1"}}}))
        .unwrap();
        assert_eq!(free_indexes(5, &done, &[running], 5), vec![3, 4]);
    }
}
