//! The Job controller against the real in-process API server, with hollow nodes running the
//! pods (their run time and exit code steered by the simulator's annotations): completions
//! and parallelism, the back-off limit, suspend, the active deadline and the TTL after
//! finishing on a manual clock, Indexed completion, and `kubectl wait --for=condition=complete`.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use edgesite_controllers::ManualClock;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};

mod support;
use support::batch::{config, has_condition};
use support::kubectl::Kubectl;
use support::{Cluster, eventually};

/// A Job whose pods run on hollow node `node` with the simulator `annotations`.
fn job(name: &str, node: &str, spec: Value, annotations: Value, policy: &str) -> Result<Job> {
    let mut v = json!({
        "metadata": {"name": name},
        "spec": {"template": {
            "metadata": {"annotations": annotations, "labels": {"app": name}},
            "spec": {"restartPolicy": policy, "nodeName": node,
                     "containers": [{"name": "work", "image": "busybox"}]},
        }},
    });
    if let (Some(s), Value::Object(extra)) = (v["spec"].as_object_mut(), spec) {
        s.extend(extra);
    }
    Ok(serde_json::from_value(v)?)
}

fn run_for(secs: &str) -> Value {
    json!({"sim.edgesite.io/run-seconds": secs})
}

fn conditions(j: &Job) -> Vec<(String, String, String)> {
    j.status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.type_, c.status, c.reason.unwrap_or_default()))
        .collect()
}

async fn job_pods(client: &Client, ns: &str, name: &str) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    Ok(pods
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}")))
        .await?
        .items)
}

fn running(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

#[tokio::test]
async fn job_runs_its_completions_at_most_parallelism_at_a_time() -> Result<()> {
    let c = Cluster::start_with(config(Arc::new(ManualClock::new()))).await?;
    let nodes = c.hollow_nodes(1, "jobs", Duration::from_secs(5)).await?;
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    let j = jobs
        .create(
            &PostParams::default(),
            &job(
                "three",
                "jobs-0",
                json!({"completions": 3, "parallelism": 2}),
                run_for("0.3"),
                "Never",
            )?,
        )
        .await?;
    let uid = j.uid().context("uid")?;

    // Most pods seen running at once, and every pod seen.
    let seen = std::sync::Mutex::new((0usize, std::collections::BTreeSet::new()));
    eventually(30, "job three complete", || async {
        let pods = job_pods(&c.client, "default", "three").await?;
        {
            let mut seen = seen.lock().unwrap();
            seen.0 = seen.0.max(pods.iter().filter(|p| running(p)).count());
            seen.1.extend(pods.iter().map(|p| p.name_any()));
        }
        let j = jobs.get("three").await?;
        let active = j.status.as_ref().and_then(|s| s.active).unwrap_or(0);
        ensure!(active <= 2, "status.active {active} above parallelism");
        Ok(has_condition(&j, "Complete"))
    })
    .await?;
    let (max_running, seen_pods) = seen.into_inner().unwrap();
    ensure!(max_running <= 2, "{max_running} pods ran at once");
    ensure!(seen_pods.len() == 3, "pods made: {seen_pods:?}");

    let j = jobs.get("three").await?;
    let st = j.status.clone().context("status")?;
    ensure!(st.succeeded == Some(3), "succeeded {:?}", st.succeeded);
    ensure!(st.failed.unwrap_or(0) == 0);
    ensure!(st.active.unwrap_or(0) == 0);
    ensure!(st.start_time.is_some() && st.completion_time.is_some());
    let u = st.uncounted_terminated_pods.unwrap_or_default();
    ensure!(u.succeeded.unwrap_or_default().is_empty() && u.failed.unwrap_or_default().is_empty());
    // 1.31+ order: SuccessCriteriaMet, then Complete.
    let conds = conditions(&j);
    let pos = |t: &str| conds.iter().position(|(ty, s, _)| ty == t && s == "True");
    ensure!(
        pos("SuccessCriteriaMet").is_some() && pos("SuccessCriteriaMet") < pos("Complete"),
        "conditions {conds:?}"
    );
    ensure!(conds.iter().all(|(_, _, r)| r == "CompletionsReached"));

    // The pods: labelled and owned as upstream, counted, and released from the finalizer.
    let pods = job_pods(&c.client, "default", "three").await?;
    ensure!(pods.len() == 3);
    for p in &pods {
        let l = p.labels();
        ensure!(l.get("batch.kubernetes.io/controller-uid") == Some(&uid));
        ensure!(l.get("controller-uid") == Some(&uid));
        ensure!(l.get("job-name").map(String::as_str) == Some("three"));
        ensure!(l.get("app").map(String::as_str) == Some("three"));
        let owner = &p.owner_references()[0];
        ensure!(owner.kind == "Job" && owner.uid == uid && owner.controller == Some(true));
        ensure!(
            p.finalizers().is_empty(),
            "finalizers left: {:?}",
            p.finalizers()
        );
        ensure!(p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"));
    }
    // What `kubectl describe job` shows.
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(c.client.clone(), "default");
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.involved_object.uid.as_deref() == Some(uid.as_str()))
        .filter_map(|e| e.reason)
        .collect();
    ensure!(
        reasons.iter().filter(|r| *r == "SuccessfulCreate").count() == 3
            && reasons.iter().any(|r| r == "Completed"),
        "events {reasons:?}"
    );
    nodes.stop().await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn failing_pods_exceed_the_backoff_limit() -> Result<()> {
    let c = Cluster::start_with(config(Arc::new(ManualClock::new()))).await?;
    let nodes = c.hollow_nodes(1, "fail", Duration::from_secs(5)).await?;
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job(
            "doomed",
            "fail-0",
            json!({"backoffLimit": 2}),
            json!({"sim.edgesite.io/run-seconds": "0.1", "sim.edgesite.io/exit-code": "3"}),
            "Never",
        )?,
    )
    .await?;
    eventually(30, "job doomed failed", || async {
        Ok(has_condition(&jobs.get("doomed").await?, "Failed"))
    })
    .await?;
    let j = jobs.get("doomed").await?;
    let st = j.status.clone().context("status")?;
    // backoffLimit 2: the third failure fails the Job.
    let pods = job_pods(&c.client, "default", "doomed").await?;
    let seen: Vec<(String, Option<String>)> = pods
        .iter()
        .map(|p| {
            (
                p.name_any(),
                p.status.as_ref().and_then(|s| s.phase.clone()),
            )
        })
        .collect();
    ensure!(
        st.failed == Some(3),
        "failed {:?}; pods {seen:?}; {st:?}",
        st.failed
    );
    ensure!(st.succeeded.unwrap_or(0) == 0 && st.active.unwrap_or(0) == 0);
    ensure!(st.completion_time.is_none());
    let conds = conditions(&j);
    for ty in ["FailureTarget", "Failed"] {
        ensure!(
            conds
                .iter()
                .any(|(t, s, r)| t == ty && s == "True" && r == "BackoffLimitExceeded"),
            "{ty} missing: {conds:?}"
        );
    }
    ensure!(!has_condition(&j, "Complete"));
    // No pod is created after the Job failed.
    let pods = job_pods(&c.client, "default", "doomed").await?;
    ensure!(pods.len() == 3, "{} pods", pods.len());

    // OnFailure: the containers restart in place; restarts count against the limit.
    jobs.create(
        &PostParams::default(),
        &job(
            "restarting",
            "fail-0",
            json!({"backoffLimit": 2}),
            json!({"sim.edgesite.io/run-seconds": "0.1", "sim.edgesite.io/exit-code": "1"}),
            "OnFailure",
        )?,
    )
    .await?;
    eventually(30, "job restarting failed", || async {
        let j = jobs.get("restarting").await?;
        Ok(conditions(&j)
            .iter()
            .any(|(t, s, r)| t == "Failed" && s == "True" && r == "BackoffLimitExceeded"))
    })
    .await?;
    eventually(10, "the restarting pod is gone", || async {
        Ok(job_pods(&c.client, "default", "restarting")
            .await?
            .iter()
            .all(|p| !running(p)))
    })
    .await?;
    nodes.stop().await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn suspended_job_runs_nothing_until_resumed() -> Result<()> {
    let c = Cluster::start_with(config(Arc::new(ManualClock::new()))).await?;
    let nodes = c.hollow_nodes(1, "susp", Duration::from_secs(5)).await?;
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job(
            "held",
            "susp-0",
            json!({"suspend": true, "completions": 2, "parallelism": 2}),
            run_for("0.2"),
            "Never",
        )?,
    )
    .await?;
    eventually(10, "job held reports Suspended", || async {
        let j = jobs.get("held").await?;
        Ok(conditions(&j)
            .iter()
            .any(|(t, s, r)| t == "Suspended" && s == "True" && r == "JobSuspended"))
    })
    .await?;
    let j = jobs.get("held").await?;
    ensure!(
        j.status
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .is_none()
    );
    ensure!(job_pods(&c.client, "default", "held").await?.is_empty());

    jobs.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await?;
    eventually(30, "job held completes once resumed", || async {
        Ok(has_condition(&jobs.get("held").await?, "Complete"))
    })
    .await?;
    let j = jobs.get("held").await?;
    ensure!(
        conditions(&j)
            .iter()
            .any(|(t, s, r)| t == "Suspended" && s == "False" && r == "JobResumed"),
        "{:?}",
        conditions(&j)
    );
    ensure!(j.status.and_then(|s| s.succeeded) == Some(2));

    // Suspending a running Job stops its pods.
    jobs.create(
        &PostParams::default(),
        &job(
            "long",
            "susp-0",
            json!({"parallelism": 2, "completions": 4}),
            run_for("3600"),
            "Never",
        )?,
    )
    .await?;
    eventually(10, "job long runs two pods", || async {
        let j = jobs.get("long").await?;
        Ok(j.status.and_then(|s| s.ready) == Some(2))
    })
    .await?;
    jobs.patch(
        "long",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": true}})),
    )
    .await?;
    eventually(10, "job long's pods are stopped", || async {
        let j = jobs.get("long").await?;
        Ok(has_condition(&j, "Suspended")
            && j.status.and_then(|s| s.active) == Some(0)
            && job_pods(&c.client, "default", "long").await?.is_empty())
    })
    .await?;
    // Pods stopped by a suspension are not failures.
    let st = jobs.get("long").await?.status.context("status")?;
    ensure!(st.failed == Some(0) && st.succeeded == Some(0), "{st:?}");
    nodes.stop().await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn finished_job_is_deleted_after_its_ttl() -> Result<()> {
    let clock = Arc::new(ManualClock::new());
    let c = Cluster::start_with(config(clock.clone())).await?;
    let nodes = c.hollow_nodes(1, "ttl", Duration::from_secs(5)).await?;
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job(
            "brief",
            "ttl-0",
            json!({"ttlSecondsAfterFinished": 3600}),
            run_for("0.1"),
            "Never",
        )?,
    )
    .await?;
    eventually(30, "job brief complete", || async {
        Ok(has_condition(&jobs.get("brief").await?, "Complete"))
    })
    .await?;
    // Real time passes, the clock does not: the Job stays.
    clock.advance(Duration::from_secs(3590));
    tokio::time::sleep(Duration::from_millis(400)).await;
    ensure!(
        jobs.get_opt("brief").await?.is_some(),
        "deleted before its TTL"
    );
    clock.advance(Duration::from_secs(11));
    eventually(10, "job brief and its pod deleted", || async {
        Ok(jobs.get_opt("brief").await?.is_none()
            && job_pods(&c.client, "default", "brief").await?.is_empty())
    })
    .await?;
    nodes.stop().await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn job_past_its_active_deadline_fails() -> Result<()> {
    let clock = Arc::new(ManualClock::new());
    let c = Cluster::start_with(config(clock.clone())).await?;
    let nodes = c.hollow_nodes(1, "late", Duration::from_secs(5)).await?;
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job(
            "slow",
            "late-0",
            json!({"activeDeadlineSeconds": 60, "parallelism": 2, "completions": 2}),
            run_for("3600"),
            "Never",
        )?,
    )
    .await?;
    eventually(10, "job slow runs", || async {
        Ok(jobs.get("slow").await?.status.and_then(|s| s.ready) == Some(2))
    })
    .await?;
    clock.advance(Duration::from_secs(61));
    eventually(10, "job slow failed with DeadlineExceeded", || async {
        let j = jobs.get("slow").await?;
        Ok(conditions(&j)
            .iter()
            .any(|(t, s, r)| t == "Failed" && s == "True" && r == "DeadlineExceeded"))
    })
    .await?;
    eventually(10, "its pods are gone", || async {
        Ok(job_pods(&c.client, "default", "slow").await?.is_empty())
    })
    .await?;
    let st = jobs.get("slow").await?.status.context("status")?;
    ensure!(st.active == Some(0) && st.failed == Some(2), "{st:?}");
    nodes.stop().await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn indexed_job_completes_every_index() -> Result<()> {
    let c = Cluster::start_with(config(Arc::new(ManualClock::new()))).await?;
    let nodes = c.hollow_nodes(1, "idx", Duration::from_secs(5)).await?;
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    jobs.create(
        &PostParams::default(),
        &job(
            "indexed",
            "idx-0",
            json!({"completionMode": "Indexed", "completions": 4, "parallelism": 2}),
            run_for("0.2"),
            "Never",
        )?,
    )
    .await?;
    eventually(30, "job indexed complete", || async {
        Ok(has_condition(&jobs.get("indexed").await?, "Complete"))
    })
    .await?;
    let st = jobs.get("indexed").await?.status.context("status")?;
    ensure!(st.completed_indexes.as_deref() == Some("0-3"), "{st:?}");
    ensure!(st.succeeded == Some(4));
    let pods = job_pods(&c.client, "default", "indexed").await?;
    let mut indexes: Vec<String> = pods
        .iter()
        .map(|p| {
            p.annotations()
                .get("batch.kubernetes.io/job-completion-index")
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    indexes.sort();
    ensure!(indexes == ["0", "1", "2", "3"], "{indexes:?}");
    let p = pods
        .iter()
        .find(|p| p.name_any().starts_with("indexed-2-"))
        .context("pod of index 2")?;
    let spec = p.spec.clone().context("spec")?;
    ensure!(spec.hostname.as_deref() == Some("indexed-2"));
    ensure!(
        spec.containers[0]
            .env
            .clone()
            .unwrap_or_default()
            .iter()
            .any(|e| e.name == "JOB_COMPLETION_INDEX")
    );
    nodes.stop().await;
    c.stop().await;
    Ok(())
}

/// `kubectl create job` then `kubectl wait --for=condition=complete` (the scheduler places
/// the pod on a hollow node, which runs it for the default second).
#[tokio::test]
async fn kubectl_waits_for_a_job_to_complete() -> Result<()> {
    let c = Cluster::start_with(config(Arc::new(ManualClock::new()))).await?;
    let kubectl = Kubectl::new(&c)?;
    let nodes = c.hollow_nodes(2, "kc", Duration::from_secs(5)).await?;
    kubectl
        .ok(&["create", "job", "once", "--image=busybox", "--", "true"])
        .await?;
    kubectl
        .ok(&[
            "wait",
            "--for=condition=complete",
            "job/once",
            "--timeout=60s",
        ])
        .await?;
    let out = kubectl
        .ok(&["get", "job", "once", "-o", "jsonpath={.status.succeeded}"])
        .await?;
    ensure!(out == "1");
    nodes.stop().await;
    c.stop().await;
    Ok(())
}

/// Pods keep the tracking finalizer while they run; deleting the Job (background or
/// foreground) still removes them: the controller releases the pods of a Job that is gone
/// or going.
#[tokio::test]
async fn deleting_a_job_removes_its_tracked_pods() -> Result<()> {
    let c = Cluster::start_with(config(Arc::new(ManualClock::new()))).await?;
    let nodes = c.hollow_nodes(1, "del", Duration::from_secs(5)).await?;
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), "default");
    for name in ["bg", "fg"] {
        jobs.create(
            &PostParams::default(),
            &job(
                name,
                "del-0",
                json!({"parallelism": 2, "completions": 2}),
                run_for("3600"),
                "Never",
            )?,
        )
        .await?;
    }
    eventually(10, "both jobs run two pods", || async {
        let mut ready = 0;
        for name in ["bg", "fg"] {
            ready += jobs
                .get(name)
                .await?
                .status
                .and_then(|s| s.ready)
                .unwrap_or(0);
        }
        Ok(ready == 4)
    })
    .await?;
    let pods = job_pods(&c.client, "default", "bg").await?;
    ensure!(
        pods.iter().all(|p| p
            .finalizers()
            .iter()
            .any(|f| f == "batch.kubernetes.io/job-tracking")),
        "running pods carry the tracking finalizer"
    );
    jobs.delete("bg", &kube::api::DeleteParams::background())
        .await?;
    jobs.delete("fg", &kube::api::DeleteParams::foreground())
        .await?;
    eventually(20, "both jobs and all their pods gone", || async {
        Ok(jobs.get_opt("bg").await?.is_none()
            && jobs.get_opt("fg").await?.is_none()
            && job_pods(&c.client, "default", "bg").await?.is_empty()
            && job_pods(&c.client, "default", "fg").await?.is_empty())
    })
    .await?;
    nodes.stop().await;
    c.stop().await;
    Ok(())
}
