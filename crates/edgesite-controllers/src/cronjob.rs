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

use futures::StreamExt as _;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt as _};
use tracing::{debug, info, warn};

use crate::cron::{Schedule, TimeZone};
use crate::job::{finished_condition, record_event};
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
    Controller::new(cronjobs, watcher::Config::default())
        .owns(jobs, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(err) = res {
                debug!(%err, "cronjob reconcile");
            }
        })
        .await;
}

fn error_policy(cj: Arc<CronJob>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(cronjob = %key(&*cj), %err, "cronjob sync failed; retrying");
    Action::requeue(Duration::from_secs(1))
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

#[allow(clippy::too_many_lines)]
async fn reconcile(cached: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let cronjobs: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
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
    let clock = &ctx.config.clock;
    let now = clock.unix_seconds();
    let mut jobs: Vec<Job> = jobs_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|j| is_controlled_by(&j.metadata, &uid))
        .collect();
    let old = cj.status.clone().unwrap_or_default();
    let mut st = old.clone();

    // status.active follows the unfinished Jobs; lastSuccessfulTime the newest completion.
    let mut active: Vec<ObjectReference> = Vec::new();
    for j in &jobs {
        match finished_condition(j) {
            None => active.push(job_ref(j)),
            Some(ty) => {
                let was_active = old
                    .active
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|r| r.uid == j.metadata.uid);
                if was_active {
                    ctx.event(
                        &cj,
                        "Normal",
                        "SawCompletedJob",
                        &format!("Saw completed job: {}, condition: {ty}", j.name_any()),
                    )
                    .await;
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
        }
    }
    st.active = (!active.is_empty()).then_some(active);

    prune_history(&ctx, &cj, &jobs_api, &mut jobs, &spec).await?;

    if spec.suspend == Some(true) {
        write_status(&cronjobs, &cj, &old, &st).await?;
        return Ok(Action::await_change());
    }
    let schedule = match Schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(err) => {
            ctx.event(
                &cj,
                "Warning",
                "InvalidSchedule",
                &format!("invalid schedule: {}: {err}", spec.schedule),
            )
            .await;
            write_status(&cronjobs, &cj, &old, &st).await?;
            return Ok(Action::await_change());
        }
    };
    let tz = match TimeZone::parse(spec.time_zone.as_deref()) {
        Ok(tz) => tz,
        Err(err) => {
            ctx.event(
                &cj,
                "Warning",
                "UnknownTimeZone",
                &format!("invalid timeZone: {:?}: {err}", spec.time_zone.as_deref()),
            )
            .await;
            write_status(&cronjobs, &cj, &old, &st).await?;
            return Ok(Action::await_change());
        }
    };

    let created = cj.metadata.creation_timestamp.as_ref().map_or(now, unix);
    let mut earliest = st.last_schedule_time.as_ref().map_or(created, unix);
    if let Some(sds) = spec.starting_deadline_seconds {
        earliest = earliest.max(now - sds);
    }
    let missed = missed_times(&schedule, tz, earliest, now);
    let requeue = |next: Option<i64>| -> Action {
        let Some(next) = next else {
            return Action::await_change();
        };
        let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(next).unwrap_or(0));
        // A little past the minute, so the next pass sees it arrived.
        let wait = at
            .duration_since(clock.now())
            .unwrap_or_default()
            .saturating_add(Duration::from_millis(100));
        Action::requeue(wait.min(ctx.config.workload_recheck))
    };
    let Some(scheduled) = missed.most_recent else {
        write_status(&cronjobs, &cj, &old, &st).await?;
        return Ok(requeue(missed.next));
    };
    if missed.count > TOO_MANY_MISSED {
        ctx.event(&cj,
            "Warning",
            "TooManyMissedTimes",
            &format!(
                "too many missed start times: {}. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
                missed.count
            ),
        )
        .await;
    }
    let job_name = job_name(&name, scheduled);
    let already = st
        .active
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|r| r.name.as_deref() == Some(job_name.as_str()));
    if already {
        // Created by a pass whose status write did not land.
        if st
            .last_schedule_time
            .as_ref()
            .is_none_or(|t| unix(t) < scheduled)
        {
            st.last_schedule_time = Some(time(scheduled));
        }
        write_status(&cronjobs, &cj, &old, &st).await?;
        return Ok(requeue(missed.next));
    }
    if let Some(sds) = spec.starting_deadline_seconds
        && scheduled + sds < now
    {
        ctx.event(
            &cj,
            "Warning",
            "MissSchedule",
            &format!(
                "Missed scheduled time to start a job: {}",
                tz.format_rfc3339(scheduled)
            ),
        )
        .await;
        write_status(&cronjobs, &cj, &old, &st).await?;
        return Ok(requeue(missed.next));
    }
    let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
    let running = st.active.clone().unwrap_or_default();
    if policy == "Forbid" && !running.is_empty() {
        // lastScheduleTime stays: the time may still run once the active Job finishes.
        debug!(cronjob = %key(&cj), "not starting a job: the previous one still runs (Forbid)");
        ctx.event(
            &cj,
            "Normal",
            "JobAlreadyActive",
            "Not starting job because prior execution is running and concurrency policy is Forbid",
        )
        .await;
        write_status(&cronjobs, &cj, &old, &st).await?;
        return Ok(requeue(missed.next));
    }
    if policy == "Replace" {
        for r in &running {
            let Some(jname) = r.name.as_deref() else {
                continue;
            };
            delete_job(&jobs_api, jname, r.uid.clone()).await?;
            ctx.event(
                &cj,
                "Normal",
                "SuccessfulDelete",
                &format!("Deleted job {jname}"),
            )
            .await;
        }
        st.active = None;
    }

    let job = new_job(&cj, &job_name, scheduled, tz)?;
    let made = match jobs_api.create(&PostParams::default(), &job).await {
        Ok(j) => {
            info!(cronjob = %key(&cj), job = %job_name, "job created for its scheduled time");
            ctx.event(
                &cj,
                "Normal",
                "SuccessfulCreate",
                &format!("Created job {job_name}"),
            )
            .await;
            Some(j)
        }
        // Created by an earlier pass whose status write did not land.
        Err(kube::Error::Api(e)) if e.code == 409 => jobs_api
            .get_opt(&job_name)
            .await?
            .filter(|j| is_controlled_by(&j.metadata, &uid)),
        Err(e) => {
            ctx.event(
                &cj,
                "Warning",
                "FailedCreate",
                &format!("Error creating job: {e}"),
            )
            .await;
            return Err(e.into());
        }
    };
    if let Some(j) = made
        && finished_condition(&j).is_none()
    {
        st.active.get_or_insert_with(Vec::new).push(job_ref(&j));
    }
    st.last_schedule_time = Some(time(scheduled));
    write_status(&cronjobs, &cj, &old, &st).await?;
    Ok(requeue(missed.next))
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
}
