//! The CronJob controller (batch/v1): creates a Job from `spec.jobTemplate` at each time the
//! schedule fires, named `<cronjob>-<scheduled time in minutes since the epoch>` and
//! annotated with `batch.kubernetes.io/cronjob-scheduled-timestamp`, honouring
//! `concurrencyPolicy` (Allow, Forbid, Replace), `startingDeadlineSeconds` and `suspend`;
//! prunes finished Jobs beyond the history limits; reports `status.active`,
//! `lastScheduleTime` and `lastSuccessfulTime`.
//!
//! As upstream, only the most recent missed time runs (after downtime a CronJob starts at most
//! one Job), and a Forbid CronJob whose Job is still running does not advance
//! `lastScheduleTime`, so the skipped time may still start late if it is within
//! `startingDeadlineSeconds`. Time comes from `Config::clock`; a CronJob is looked at again
//! at its next scheduled time (at most `Config::workload_recheck` later, for manual clocks).
//! Schedules and time zones are in [`crate::cron`] (UTC and `Etc/GMT±N` zones only).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt as _};
use tracing::{debug, info};

use crate::cron::{Schedule, TimeZone};
use crate::job::{finished_condition, record_event};
use crate::queue;
use crate::workload::{controller_ref, is_controlled_by, key};
use crate::{Config, Error};

/// The annotation on a CronJob's Job with the time it was scheduled for (RFC 3339, in the
/// CronJob's time zone).
pub const SCHEDULED_TIMESTAMP_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// More missed times than this earn a warning event (upstream's figure).
const TOO_MANY_MISSED: u64 = 100;

/// The component events are reported as.
const COMPONENT: &str = "cronjob-controller";

struct Context {
    client: Client,
    config: Arc<Config>,
}

impl Context {
    /// Records a core/v1 Event about `cj` (best effort).
    async fn event(&self, cj: &CronJob, type_: &str, reason: &str, message: &str) {
        record_event(
            &self.client,
            &*self.config.clock,
            COMPONENT,
            cj,
            type_,
            reason,
            message,
        )
        .await;
    }
}

/// Runs the CronJob controller until the returned future is dropped.
pub async fn run(client: Client, config: Arc<Config>) {
    let cronjobs: Api<CronJob> = Api::all(client.clone());
    let jobs: Api<Job> = Api::all(client.clone());
    let ctx = Arc::new(Context { client, config });
    let controller = Controller::new(cronjobs, watcher::Config::default())
        .owns(jobs, watcher::Config::default());
    queue::run_controller("cronjob", controller, reconcile, ctx).await;
}

/// The time `scheduled` the schedule fired last at or before `now`, how many times it fired
/// since `earliest`, and the next time after `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missed {
    /// The most recent time the schedule fired, if any since `earliest`.
    pub most_recent: Option<i64>,
    /// How many times it fired in `(earliest, now]` (a lower bound past a few thousand).
    pub count: u64,
    /// The next time it fires after `now`.
    pub next: Option<i64>,
}

/// Upstream's `mostRecentScheduleTime`: the schedule's firings in `(earliest, now]`.
pub fn missed_times(schedule: &Schedule, tz: TimeZone, earliest: i64, now: i64) -> Missed {
    let mut out = Missed {
        most_recent: None,
        count: 0,
        next: None,
    };
    let Some(first) = schedule.next_after(earliest, tz) else {
        return out;
    };
    if first > now {
        out.next = Some(first);
        return out;
    }
    let mut t = first;
    let mut count: u64 = 1;
    let mut jumped = false;
    loop {
        match schedule.next_after(t, tz) {
            Some(n) if n <= now => {
                t = n;
                count += 1;
            }
            next => {
                out.next = next;
                break;
            }
        }
        // A CronJob that has not run for ages: skip ahead instead of walking every firing.
        if count == 1000 && !jumped && now - t > t - first {
            jumped = true;
            let skip_from = now - (t - first);
            if let Some(n) = schedule.next_after(skip_from, tz).filter(|n| *n <= now) {
                // Roughly the same rate over the skipped stretch.
                let per = (t - first) / 999;
                count += u64::try_from((skip_from - t) / per.max(1)).unwrap_or(0);
                t = n;
            }
        }
    }
    out.most_recent = Some(t);
    out.count = count;
    out
}

fn unix(t: &Time) -> i64 {
    t.0.as_second()
}

fn time(secs: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap_or_default())
}

/// The name of the Job for the time `scheduled` (upstream: minutes since the epoch).
pub fn job_name(cronjob: &str, scheduled: i64) -> String {
    format!("{cronjob}-{}", scheduled.div_euclid(60))
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".to_owned()),
        kind: Some("Job".to_owned()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

/// An Event to record: type, reason, message.
type Note = (&'static str, &'static str, String);

/// The status the CronJob's Jobs imply (`active` follows the unfinished ones,
/// `lastSuccessfulTime` the newest completion), and the completions to report.
fn track_jobs(old: &CronJobStatus, jobs: &[Job]) -> (CronJobStatus, Vec<Note>) {
    let mut st = old.clone();
    let mut notes = Vec::new();
    let mut active: Vec<ObjectReference> = Vec::new();
    for j in jobs {
        let Some(ty) = finished_condition(j) else {
            active.push(job_ref(j));
            continue;
        };
        let was_active = old
            .active
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|r| r.uid == j.metadata.uid);
        if was_active {
            notes.push((
                "Normal",
                "SawCompletedJob",
                format!("Saw completed job: {}, condition: {ty}", j.name_any()),
            ));
        }
        if ty == "Complete"
            && let Some(done) = j.status.as_ref().and_then(|s| s.completion_time.clone())
            && st
                .last_successful_time
                .as_ref()
                .is_none_or(|t| unix(t) < unix(&done))
        {
            st.last_successful_time = Some(done);
        }
    }
    st.active = (!active.is_empty()).then_some(active);
    (st, notes)
}

/// What a pass does about the schedule, decided by [`plan`].
#[derive(Debug, Default, PartialEq)]
struct Plan {
    /// Events to record.
    notes: Vec<Note>,
    /// The scheduled time to start a Job for, and the zone its name and annotation use.
    start: Option<(i64, TimeZone)>,
    /// Running Jobs to delete first (`concurrencyPolicy: Replace`).
    replace: Vec<ObjectReference>,
    /// The status to write (the started Job is added once created).
    status: CronJobStatus,
    /// The next scheduled time, to look again then; `None` waits for a change.
    next: Option<i64>,
}

/// Decides whether a scheduled time came that needs a Job, from the CronJob, the status its
/// Jobs imply and "now" (no IO).
fn plan(cj: &CronJob, spec: &CronJobSpec, status: CronJobStatus, now: i64) -> Plan {
    let mut plan = Plan {
        status,
        ..Plan::default()
    };
    if spec.suspend == Some(true) {
        return plan;
    }
    let schedule = match Schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(err) => {
            let message = format!("invalid schedule: {}: {err}", spec.schedule);
            plan.notes.push(("Warning", "InvalidSchedule", message));
            return plan;
        }
    };
    let tz = match TimeZone::parse(spec.time_zone.as_deref()) {
        Ok(tz) => tz,
        Err(err) => {
            let message = format!("invalid timeZone: {:?}: {err}", spec.time_zone.as_deref());
            plan.notes.push(("Warning", "UnknownTimeZone", message));
            return plan;
        }
    };
    let created = cj.metadata.creation_timestamp.as_ref().map_or(now, unix);
    let mut earliest = plan
        .status
        .last_schedule_time
        .as_ref()
        .map_or(created, unix);
    if let Some(sds) = spec.starting_deadline_seconds {
        earliest = earliest.max(now - sds);
    }
    let missed = missed_times(&schedule, tz, earliest, now);
    plan.next = missed.next;
    let Some(scheduled) = missed.most_recent else {
        return plan;
    };
    if missed.count > TOO_MANY_MISSED {
        plan.notes.push(("Warning", "TooManyMissedTimes", format!(
            "too many missed start times: {}. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
            missed.count
        )));
    }
    let name = job_name(&cj.name_any(), scheduled);
    let running = plan.status.active.clone().unwrap_or_default();
    if running
        .iter()
        .any(|r| r.name.as_deref() == Some(name.as_str()))
    {
        // Created by a pass whose status write did not land.
        let st = &mut plan.status;
        if st
            .last_schedule_time
            .as_ref()
            .is_none_or(|t| unix(t) < scheduled)
        {
            st.last_schedule_time = Some(time(scheduled));
        }
        return plan;
    }
    if let Some(sds) = spec.starting_deadline_seconds
        && scheduled + sds < now
    {
        let message = format!(
            "Missed scheduled time to start a job: {}",
            tz.format_rfc3339(scheduled)
        );
        plan.notes.push(("Warning", "MissSchedule", message));
        return plan;
    }
    match spec.concurrency_policy.as_deref().unwrap_or("Allow") {
        // lastScheduleTime stays: the time may still run once the active Job finishes.
        "Forbid" if !running.is_empty() => {
            plan.notes.push(("Normal", "JobAlreadyActive", "Not starting job because prior execution is running and concurrency policy is Forbid".to_owned()));
            return plan;
        }
        "Replace" => {
            plan.replace = running;
            plan.status.active = None;
        }
        _ => {}
    }
    plan.start = Some((scheduled, tz));
    plan
}

/// The requeue for the next scheduled time `next` (Unix seconds), looking again at least
/// every `recheck`.
fn requeue(next: Option<i64>, now: std::time::SystemTime, recheck: Duration) -> Action {
    let Some(next) = next else {
        return Action::await_change();
    };
    let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(next).unwrap_or(0));
    // A little past the minute, so the next pass sees it arrived.
    let wait = at
        .duration_since(now)
        .unwrap_or_default()
        .saturating_add(Duration::from_millis(100));
    Action::requeue(wait.min(recheck))
}

async fn reconcile(cached: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let cronjobs: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    // Observe: the CronJob as stored now (not the cache's copy) and its Jobs.
    let Some(cj) = cronjobs.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    let Some(uid) = cj.uid() else {
        return Ok(Action::await_change());
    };
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = cj.spec.clone().unwrap_or_default();
    let mut jobs: Vec<Job> = jobs_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|j| is_controlled_by(&j.metadata, &uid))
        .collect();
    let old = cj.status.clone().unwrap_or_default();
    let (st, notes) = track_jobs(&old, &jobs);
    for (type_, reason, message) in &notes {
        ctx.event(&cj, type_, reason, message).await;
    }
    prune_history(&ctx, &cj, &jobs_api, &mut jobs, &spec).await?;

    // Decide, then execute.
    let plan = plan(&cj, &spec, st, ctx.config.clock.unix_seconds());
    for (type_, reason, message) in &plan.notes {
        ctx.event(&cj, type_, reason, message).await;
    }
    let mut st = plan.status.clone();
    if let Some((scheduled, tz)) = plan.start {
        for r in &plan.replace {
            let Some(jname) = r.name.as_deref() else {
                continue;
            };
            delete_job(&jobs_api, jname, r.uid.clone()).await?;
            let message = format!("Deleted job {jname}");
            ctx.event(&cj, "Normal", "SuccessfulDelete", &message).await;
        }
        if let Some(j) = start_job(&ctx, &jobs_api, &cj, &uid, scheduled, tz).await?
            && finished_condition(&j).is_none()
        {
            st.active.get_or_insert_with(Vec::new).push(job_ref(&j));
        }
        st.last_schedule_time = Some(time(scheduled));
    }
    write_status(&cronjobs, &cj, &old, &st).await?;
    let now = ctx.config.clock.now();
    Ok(requeue(plan.next, now, ctx.config.workload_recheck))
}

/// Creates the Job for `scheduled`; the Job when it exists (also when an earlier pass
/// created it and its status write did not land).
async fn start_job(
    ctx: &Context,
    jobs_api: &Api<Job>,
    cj: &CronJob,
    uid: &str,
    scheduled: i64,
    tz: TimeZone,
) -> Result<Option<Job>, Error> {
    let job_name = job_name(&cj.name_any(), scheduled);
    let job = new_job(cj, &job_name, scheduled, tz)?;
    match jobs_api.create(&PostParams::default(), &job).await {
        Ok(j) => {
            info!(cronjob = %key(cj), job = %job_name, "job created for its scheduled time");
            let message = format!("Created job {job_name}");
            ctx.event(cj, "Normal", "SuccessfulCreate", &message).await;
            Ok(Some(j))
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(jobs_api
            .get_opt(&job_name)
            .await?
            .filter(|j| is_controlled_by(&j.metadata, uid))),
        Err(e) => {
            let message = format!("Error creating job: {e}");
            ctx.event(cj, "Warning", "FailedCreate", &message).await;
            Err(e.into())
        }
    }
}

/// The Job for the time `scheduled`: the template's metadata and spec, owned by the CronJob.
fn new_job(cj: &CronJob, name: &str, scheduled: i64, tz: TimeZone) -> Result<Job, Error> {
    let template = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let tm = template.metadata.unwrap_or_default();
    let mut annotations = tm.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP_ANNOTATION.to_owned(),
        tz.format_rfc3339(scheduled),
    );
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: cj.namespace(),
            labels: tm.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref(cj)?]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    })
}

async fn delete_job(jobs: &Api<Job>, name: &str, uid: Option<String>) -> Result<(), Error> {
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match jobs.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Deletes the oldest finished Jobs beyond `successfulJobsHistoryLimit` and
/// `failedJobsHistoryLimit`.
async fn prune_history(
    ctx: &Context,
    cj: &CronJob,
    jobs_api: &Api<Job>,
    jobs: &mut [Job],
    spec: &k8s_openapi::api::batch::v1::CronJobSpec,
) -> Result<(), Error> {
    // Oldest first: by start time (unstarted last), then name, as upstream sorts.
    jobs.sort_by(|a, b| {
        let start = |j: &Job| {
            j.status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map_or(i64::MAX, unix)
        };
        start(a)
            .cmp(&start(b))
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    for (ty, limit) in [
        ("Complete", spec.successful_jobs_history_limit),
        ("Failed", spec.failed_jobs_history_limit),
    ] {
        let Some(limit) = limit else { continue };
        let done: Vec<&Job> = jobs
            .iter()
            .filter(|j| {
                finished_condition(j) == Some(ty) && j.metadata.deletion_timestamp.is_none()
            })
            .collect();
        let extra = done
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        for j in done.into_iter().take(extra) {
            delete_job(jobs_api, &j.name_any(), j.uid()).await?;
            debug!(cronjob = %key(cj), job = %j.name_any(), "old job pruned");
            ctx.event(
                cj,
                "Normal",
                "SuccessfulDelete",
                &format!("Deleted job {}", j.name_any()),
            )
            .await;
        }
    }
    Ok(())
}

async fn write_status(
    cronjobs: &Api<CronJob>,
    cj: &CronJob,
    old: &CronJobStatus,
    new: &CronJobStatus,
) -> Result<(), Error> {
    if old == new {
        return Ok(());
    }
    let mut obj = cj.clone();
    obj.status = Some(new.clone());
    cronjobs
        .replace_status(&cj.name_any(), &PostParams::default(), &obj)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgesite_api::table::parse_rfc3339;

    fn t(s: &str) -> i64 {
        parse_rfc3339(s).unwrap()
    }

    #[test]
    fn most_recent_missed_time() {
        let every_minute = Schedule::parse("* * * * *").unwrap();
        let m = missed_times(
            &every_minute,
            TimeZone::UTC,
            t("2026-11-26T12:00:30Z"),
            t("2026-11-26T12:03:10Z"),
        );
        assert_eq!(m.most_recent, Some(t("2026-11-26T12:03:00Z")));
        assert_eq!(m.count, 3);
        assert_eq!(m.next, Some(t("2026-11-26T12:04:00Z")));

        let m = missed_times(
            &every_minute,
            TimeZone::UTC,
            t("2026-11-26T12:00:00Z"),
            t("2026-11-26T12:00:59Z"),
        );
        assert_eq!(m.most_recent, None);
        assert_eq!(m.next, Some(t("2026-11-26T12:01:00Z")));

        // A year of minutes: skipped ahead, still the right most recent time.
        let m = missed_times(
            &every_minute,
            TimeZone::UTC,
            t("2025-11-26T12:00:00Z"),
            t("2026-11-26T12:00:10Z"),
        );
        assert_eq!(m.most_recent, Some(t("2026-11-26T12:00:00Z")));
        assert!(m.count > 500_000, "{}", m.count);
    }

    #[test]
    fn job_names_count_minutes() {
        assert_eq!(
            job_name("nightly", t("2026-11-26T12:00:00Z")),
            "nightly-29928240"
        );
    }
    fn cronjob(spec: serde_json::Value, status: serde_json::Value) -> CronJob {
        let mut spec = spec;
        spec["jobTemplate"] =
            serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}});
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cj", "namespace": "default", "uid": "u1",
                "creationTimestamp": "2026-11-26T11:00:00Z"},
            "spec": spec,
            "status": status,
        }))
        .unwrap()
    }

    fn active(name: &str) -> serde_json::Value {
        serde_json::json!({"active": [{"name": name, "uid": format!("{name}-uid")}]})
    }

    /// Name, spec, status, the time a Job starts for, Jobs replaced, events' reasons.
    type Case = (
        &'static str,
        serde_json::Value,
        serde_json::Value,
        Option<i64>,
        usize,
        Vec<&'static str>,
    );

    #[test]
    fn plans_start_skip_or_replace_jobs_as_the_spec_says() {
        let now = t("2026-11-26T12:03:10Z");
        let at = |s| t(s);
        let due = job_name("cj", at("2026-11-26T12:03:00Z"));
        let cases: Vec<Case> = vec![
            (
                "a due time starts a job",
                serde_json::json!({"schedule": "* * * * *"}),
                serde_json::json!({}),
                Some(at("2026-11-26T12:03:00Z")),
                0,
                vec![],
            ),
            (
                "too many missed times are reported, the latest runs",
                serde_json::json!({"schedule": "* * * * *"}),
                serde_json::json!({"lastScheduleTime": "2026-11-26T09:00:00Z"}),
                Some(at("2026-11-26T12:03:00Z")),
                0,
                vec!["TooManyMissedTimes"],
            ),
            (
                "suspended: nothing",
                serde_json::json!({"schedule": "* * * * *", "suspend": true}),
                serde_json::json!({}),
                None,
                0,
                vec![],
            ),
            (
                "an invalid schedule is reported",
                serde_json::json!({"schedule": "61 * * * *"}),
                serde_json::json!({}),
                None,
                0,
                vec!["InvalidSchedule"],
            ),
            (
                "an unknown time zone is reported",
                serde_json::json!({"schedule": "* * * * *", "timeZone": "Mars/Olympus"}),
                serde_json::json!({}),
                None,
                0,
                vec!["UnknownTimeZone"],
            ),
            (
                "nothing due since the last time",
                serde_json::json!({"schedule": "* * * * *"}),
                serde_json::json!({"lastScheduleTime": "2026-11-26T12:03:00Z"}),
                None,
                0,
                vec![],
            ),
            (
                "a job for the time already runs",
                serde_json::json!({"schedule": "* * * * *"}),
                active(&due),
                None,
                0,
                vec![],
            ),
            (
                "Forbid waits for the running job",
                serde_json::json!({"schedule": "* * * * *", "concurrencyPolicy": "Forbid",
                "startingDeadlineSeconds": 30}),
                active("old"),
                None,
                0,
                vec!["JobAlreadyActive"],
            ),
            (
                "Replace deletes the running job",
                serde_json::json!({"schedule": "* * * * *", "concurrencyPolicy": "Replace",
                "startingDeadlineSeconds": 30}),
                active("old"),
                Some(at("2026-11-26T12:03:00Z")),
                1,
                vec![],
            ),
            (
                "Allow runs them side by side",
                serde_json::json!({"schedule": "* * * * *", "startingDeadlineSeconds": 30}),
                active("old"),
                Some(at("2026-11-26T12:03:00Z")),
                0,
                vec![],
            ),
        ];
        for (name, spec, status, started, replaced, reasons) in cases {
            let cj = cronjob(spec, status);
            let spec = cj.spec.clone().unwrap();
            let p = plan(&cj, &spec, cj.status.clone().unwrap_or_default(), now);
            assert_eq!(p.start.map(|(s, _)| s), started, "{name}: start");
            assert_eq!(p.replace.len(), replaced, "{name}: replaced");
            assert_eq!(
                p.notes.iter().map(|n| n.1).collect::<Vec<_>>(),
                reasons,
                "{name}: events"
            );
            if replaced > 0 {
                assert_eq!(p.status.active, None, "{name}: replaced jobs leave active");
            }
        }
    }

    #[test]
    fn tracking_follows_unfinished_jobs_and_reports_completions() {
        let job = |name: &str, done: Option<&str>| -> Job {
            let mut j =
                serde_json::json!({"metadata": {"name": name, "uid": format!("{name}-uid")}});
            if let Some(at) = done {
                j["status"] = serde_json::json!({"completionTime": at,
                    "conditions": [{"type": "Complete", "status": "True"}]});
            }
            serde_json::from_value(j).unwrap()
        };
        let old: CronJobStatus = serde_json::from_value(active("a")).unwrap();
        let jobs = [job("a", Some("2026-11-26T12:01:00Z")), job("b", None)];
        let (st, notes) = track_jobs(&old, &jobs);
        let names: Vec<_> = st
            .active
            .unwrap()
            .iter()
            .map(|r| r.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["b"]);
        assert_eq!(
            st.last_successful_time.map(|t| unix(&t)),
            Some(t("2026-11-26T12:01:00Z"))
        );
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].1, "SawCompletedJob");
    }

    #[test]
    fn requeues_a_little_after_the_next_time_within_the_recheck() {
        let now = UNIX_EPOCH + Duration::from_secs(100);
        let recheck = Duration::from_secs(30);
        assert_eq!(requeue(None, now, recheck), Action::await_change());
        assert_eq!(
            requeue(Some(110), now, recheck),
            Action::requeue(Duration::from_millis(10_100))
        );
        assert_eq!(requeue(Some(1000), now, recheck), Action::requeue(recheck));
    }
}
