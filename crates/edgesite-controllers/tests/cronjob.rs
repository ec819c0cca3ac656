//! The CronJob controller against the real in-process API server on a manual clock, with
//! hollow nodes running the Jobs' pods: a Job appears when the clock passes the scheduled
//! minute, Forbid skips while a Job runs and Replace replaces it, history limits prune old
//! Jobs, suspend holds, time zones shape the scheduled timestamp.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use edgesite_api::table::parse_rfc3339;
use edgesite_controllers::{Clock as _, ManualClock};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};

mod support;
use support::batch::{config, has_condition};
use support::{Cluster, eventually};

/// A CronJob whose Jobs run one pod on hollow node `node` for `run` seconds.
fn cronjob(name: &str, node: &str, run: &str, spec: Value) -> Result<CronJob> {
    let mut v = json!({
        "metadata": {"name": name},
        "spec": {
            "schedule": "* * * * *",
            "jobTemplate": {
                "metadata": {"labels": {"made-by": name}, "annotations": {"note": "from-template"}},
                "spec": {"template": {
                    "metadata": {"annotations": {"sim.edgesite.io/run-seconds": run}},
                    "spec": {"restartPolicy": "Never", "nodeName": node,
                             "containers": [{"name": "c", "image": "busybox"}]},
                }},
            },
        },
    });
    if let (Some(s), Value::Object(extra)) = (v["spec"].as_object_mut(), spec) {
        s.extend(extra);
    }
    Ok(serde_json::from_value(v)?)
}

async fn jobs_of(client: &Client, cronjob: &str) -> Result<Vec<Job>> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let mut list = jobs
        .list(&ListParams::default().labels(&format!("made-by={cronjob}")))
        .await?
        .items;
    list.retain(|j| j.metadata.deletion_timestamp.is_none());
    list.sort_by_key(|j| j.name_any());
    Ok(list)
}

async fn has_event(client: &Client, object: &str, reason: &str) -> Result<bool> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .any(|e| {
            e.involved_object.name.as_deref() == Some(object) && e.reason.as_deref() == Some(reason)
        }))
}

/// Moves the clock to just past the next minute boundary after both its time and the real
/// time (the API server stamps creation times from the real clock, and a schedule starts
/// from a CronJob's creation).
fn next_minute(clock: &ManualClock) -> i64 {
    let now = clock.unix_seconds();
    let real = edgesite_controllers::SystemClock.unix_seconds();
    let next = (now.max(real) / 60 + 1) * 60;
    clock.advance(Duration::from_secs(u64::try_from(next - now + 1).unwrap()));
    next
}

#[tokio::test]
async fn cronjob_creates_a_job_at_the_scheduled_minute() -> Result<()> {
    let clock = Arc::new(ManualClock::new());
    let c = Cluster::start_with(config(clock.clone())).await?;
    let nodes = c.hollow_nodes(1, "cron", Duration::from_secs(5)).await?;
    let cjs: Api<CronJob> = Api::namespaced(c.client.clone(), "default");
    let pp = PostParams::default();
    let cj = cjs
        .create(&pp, &cronjob("tick", "cron-0", "0.2", json!({}))?)
        .await?;
    cjs.create(
        &pp,
        &cronjob("eastern", "cron-0", "0.2", json!({"timeZone": "Etc/GMT+5"}))?,
    )
    .await?;
    cjs.create(
        &pp,
        &cronjob("paused", "cron-0", "0.2", json!({"suspend": true}))?,
    )
    .await?;
    cjs.create(
        &pp,
        &cronjob(
            "nowhere",
            "cron-0",
            "0.2",
            json!({"timeZone": "Mars/Olympus"}),
        )?,
    )
    .await?;

    // Before the minute passes on the controllers' clock, nothing runs.
    eventually(10, "nowhere's time zone refused", || {
        has_event(&c.client, "nowhere", "UnknownTimeZone")
    })
    .await?;
    ensure!(jobs_of(&c.client, "tick").await?.is_empty());

    let minute = next_minute(&clock);
    let want = format!("tick-{}", minute / 60);
    eventually(10, "tick's job for the minute", || async {
        Ok(jobs_of(&c.client, "tick").await?.len() == 1)
    })
    .await?;
    let job = jobs_of(&c.client, "tick").await?.remove(0);
    ensure!(job.name_any() == want, "{} != {want}", job.name_any());
    let stamp = job
        .annotations()
        .get("batch.kubernetes.io/cronjob-scheduled-timestamp")
        .context("scheduled timestamp")?;
    ensure!(
        parse_rfc3339(stamp) == Some(minute) && stamp.ends_with('Z'),
        "{stamp}"
    );
    ensure!(job.annotations().get("note").map(String::as_str) == Some("from-template"));
    let owner = &job.owner_references()[0];
    ensure!(owner.kind == "CronJob" && Some(&owner.uid) == cj.uid().as_ref());
    ensure!(owner.controller == Some(true));

    eventually(10, "eastern's job, stamped in its zone", || async {
        Ok(jobs_of(&c.client, "eastern")
            .await?
            .first()
            .is_some_and(|j| {
                j.annotations()
                    .get("batch.kubernetes.io/cronjob-scheduled-timestamp")
                    .is_some_and(|s| s.ends_with("-05:00") && parse_rfc3339(s) == Some(minute))
            }))
    })
    .await?;

    // The job runs to completion; the status follows.
    eventually(20, "tick's status after the job completed", || async {
        let st = cjs.get("tick").await?.status.unwrap_or_default();
        Ok(st.active.unwrap_or_default().is_empty()
            && st.last_schedule_time.map(|t| t.0.as_second()) == Some(minute)
            && st.last_successful_time.is_some())
    })
    .await?;
    ensure!(has_condition(
        &jobs_of(&c.client, "tick").await?[0],
        "Complete"
    ));
    ensure!(has_event(&c.client, "tick", "SuccessfulCreate").await?);
    ensure!(has_event(&c.client, "tick", "SawCompletedJob").await?);
    ensure!(
        jobs_of(&c.client, "paused").await?.is_empty(),
        "suspended cronjob ran"
    );
    ensure!(jobs_of(&c.client, "nowhere").await?.is_empty());

    // Resuming runs the most recent time missed while suspended (as upstream, without a
    // startingDeadlineSeconds), then the schedule goes on.
    cjs.patch(
        "paused",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await?;
    let missed = format!("paused-{}", minute / 60);
    eventually(10, "paused runs the missed minute once resumed", || async {
        let jobs = jobs_of(&c.client, "paused").await?;
        Ok(jobs.len() == 1 && jobs[0].name_any() == missed)
    })
    .await?;
    let next = next_minute(&clock);
    eventually(10, "paused's job for the next minute", || async {
        let jobs = jobs_of(&c.client, "paused").await?;
        Ok(jobs
            .iter()
            .any(|j| j.name_any() == format!("paused-{}", next / 60)))
    })
    .await?;
    nodes.stop().await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn forbid_skips_while_a_job_runs_and_replace_replaces_it() -> Result<()> {
    let clock = Arc::new(ManualClock::new());
    let c = Cluster::start_with(config(clock.clone())).await?;
    let nodes = c.hollow_nodes(1, "conc", Duration::from_secs(5)).await?;
    let cjs: Api<CronJob> = Api::namespaced(c.client.clone(), "default");
    cjs.create(
        &PostParams::default(),
        &cronjob(
            "single",
            "conc-0",
            "3600",
            json!({"concurrencyPolicy": "Forbid"}),
        )?,
    )
    .await?;
    let first = next_minute(&clock);
    eventually(10, "the first job", || async {
        Ok(jobs_of(&c.client, "single").await?.len() == 1)
    })
    .await?;
    next_minute(&clock);
    eventually(10, "Forbid reported", || {
        has_event(&c.client, "single", "JobAlreadyActive")
    })
    .await?;
    let jobs = jobs_of(&c.client, "single").await?;
    ensure!(jobs.len() == 1, "a second job started under Forbid");
    ensure!(jobs[0].name_any() == format!("single-{}", first / 60));
    let st = cjs.get("single").await?.status.context("status")?;
    ensure!(st.active.map(|a| a.len()) == Some(1));
    ensure!(st.last_schedule_time.map(|t| t.0.as_second()) == Some(first));

    // Replace: the running job goes, the new one takes its place.
    cjs.patch(
        "single",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"concurrencyPolicy": "Replace"}})),
    )
    .await?;
    let third = next_minute(&clock);
    let want = format!("single-{}", third / 60);
    eventually(10, "the job replaced", || async {
        let jobs = jobs_of(&c.client, "single").await?;
        let st = cjs.get("single").await?.status.unwrap_or_default();
        let active: Vec<String> = st
            .active
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| r.name)
            .collect();
        Ok(jobs.len() == 1 && jobs[0].name_any() == want && active == [want.clone()])
    })
    .await?;
    nodes.stop().await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn history_limits_prune_finished_jobs() -> Result<()> {
    let clock = Arc::new(ManualClock::new());
    let c = Cluster::start_with(config(clock.clone())).await?;
    let nodes = c.hollow_nodes(1, "hist", Duration::from_secs(5)).await?;
    let cjs: Api<CronJob> = Api::namespaced(c.client.clone(), "default");
    cjs.create(
        &PostParams::default(),
        &cronjob(
            "kept",
            "hist-0",
            "0.1",
            json!({"successfulJobsHistoryLimit": 2}),
        )?,
    )
    .await?;
    let mut names = Vec::new();
    for round in 1..=4 {
        let minute = next_minute(&clock);
        names.push(format!("kept-{}", minute / 60));
        let want = names.clone();
        eventually(20, &format!("round {round} completes"), || async {
            let jobs = jobs_of(&c.client, "kept").await?;
            let last = jobs.iter().find(|j| j.name_any() == *want.last().unwrap());
            Ok(last.is_some_and(|j| has_condition(j, "Complete"))
                && cjs
                    .get("kept")
                    .await?
                    .status
                    .and_then(|s| s.active)
                    .is_none_or(|a| a.is_empty()))
        })
        .await?;
    }
    eventually(10, "only the two newest jobs kept", || async {
        let jobs: Vec<String> = jobs_of(&c.client, "kept")
            .await?
            .iter()
            .map(|j| j.name_any())
            .collect();
        Ok(jobs == names[2..])
    })
    .await?;
    nodes.stop().await;
    c.stop().await;
    Ok(())
}
