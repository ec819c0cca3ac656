//! The worker over the recording fake runtime, on paused tokio time: every timing below is
//! the worker's own (back-off, probe periods, grace), not the test's patience.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus};
use serde_json::json;

use super::*;
use crate::pod::NodeResources;
use crate::pod::fake::{
    Behaviour, Call, FakeObjects, FakeRuntime, FakeVolumes, Log, RecordingReporter, TokioClock,
};

const IMAGE: &str = "edgesite.io/app:1";
const UID: &str = "uid-1";

struct Harness {
    rt: Arc<FakeRuntime>,
    reporter: Arc<RecordingReporter>,
    objects: Arc<FakeObjects>,
    workers: PodWorkers,
}

fn node() -> NodeContext {
    NodeContext::new(
        "n1",
        "192.0.2.10".parse().unwrap(),
        "/nonexistent/pods",
        None,
        "cluster.local",
    )
}

fn harness_with(allocatable: NodeResources) -> Harness {
    let clock = Arc::new(TokioClock::new());
    let log: Log = Arc::default();
    let rt = Arc::new(FakeRuntime::new(clock.clone(), log.clone(), &[IMAGE]));
    let volumes = Arc::new(FakeVolumes::new(log, &clock));
    let objects = Arc::new(FakeObjects::default());
    let reporter = Arc::new(RecordingReporter::default());
    let workers = PodWorkers::new(
        rt.clone(),
        volumes,
        objects.clone(),
        reporter.clone(),
        clock,
        NodeContext {
            allocatable,
            ..node()
        },
        WorkerOptions::default(),
    );
    Harness {
        rt,
        reporter,
        objects,
        workers,
    }
}

fn harness() -> Harness {
    harness_with(NodeResources {
        cpu_millis: 4000,
        memory_bytes: 8 << 30,
    })
}

/// A pod named `p` with uid [`UID`] and `spec` (containers default to [`IMAGE`]).
fn pod_with(uid: &str, mut spec: serde_json::Value) -> Arc<Pod> {
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(|c| c.as_array_mut()) {
            for c in cs {
                if c.get("image").is_none() {
                    c["image"] = json!(IMAGE);
                }
            }
        }
    }
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": uid},
            "spec": spec,
        }))
        .unwrap(),
    )
}

fn pod(spec: serde_json::Value) -> Arc<Pod> {
    pod_with(UID, spec)
}

fn deleted(pod: &Pod, grace: i64) -> Arc<Pod> {
    let mut p = pod.clone();
    p.metadata.deletion_timestamp = Some(time_of_nanos(0));
    p.metadata.deletion_grace_period_seconds = Some(grace);
    Arc::new(p)
}

async fn pass(secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

fn container<'a>(status: &'a PodStatus, name: &str) -> &'a ContainerStatus {
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no status of {name} in {status:?}"))
}

fn waiting_reason(status: &PodStatus, name: &str) -> Option<String> {
    container(status, name)
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.clone())
}

fn condition(status: &PodStatus, kind: &str) -> String {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

fn starts(h: &Harness, name: &str) -> Vec<Duration> {
    h.rt.timed_calls()
        .into_iter()
        .filter(|(_, c)| *c == Call::StartContainer(name.into()))
        .map(|(t, _)| t)
        .collect()
}

impl Harness {
    fn last(&self) -> PodStatus {
        self.reporter.last().expect("a status was reported")
    }
}

#[tokio::test(start_paused = true)]
async fn a_pod_gets_a_sandbox_then_its_containers_and_reports_running() {
    let h = harness();
    h.workers.update(pod(
        json!({"containers": [{"name": "app"}, {"name": "side"}]}),
    ));
    pass(2).await;
    let calls: Vec<_> = h.rt.calls();
    // Volumes are set up before anything else, and refreshed on later syncs.
    assert_eq!(
        calls[..6],
        [
            Call::SetupVolumes,
            Call::RunPodSandbox(0),
            Call::CreateContainer("app".into(), 0),
            Call::StartContainer("app".into()),
            Call::CreateContainer("side".into(), 0),
            Call::StartContainer("side".into()),
        ]
    );
    assert!(
        calls[6..].iter().all(|c| *c == Call::SetupVolumes),
        "{calls:?}"
    );
    let s = h.last();
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(s.pod_ip.as_deref(), Some("10.42.0.7"));
    assert_eq!(s.host_ip.as_deref(), Some("192.0.2.10"));
    assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
    assert!(s.start_time.is_some());
    for kind in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert_eq!(condition(&s, kind), "True", "{kind} in {s:?}");
    }
    let app = container(&s, "app");
    assert!(app.ready);
    assert_eq!(app.started, Some(true));
    assert_eq!(app.restart_count, 0);
    assert_eq!(app.image, IMAGE);
    assert_eq!(app.image_id, "sha256:feed");
    assert!(
        app.container_id
            .as_deref()
            .unwrap()
            .starts_with("containerd://"),
        "{app:?}"
    );
    assert!(app.state.as_ref().unwrap().running.is_some());
    let events = h.reporter.events();
    let app_events: Vec<_> = events
        .iter()
        .filter(|e| e.field_path.as_deref() == Some("spec.containers{app}"))
        .map(|e| (e.reason.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        app_events,
        [
            (
                "Pulled",
                "Container image \"edgesite.io/app:1\" already present on machine"
            ),
            ("Created", "Created container: app"),
            ("Started", "Started container app"),
        ]
    );

    // Nothing changes: nothing is reported again, nothing is called again.
    let (reported, calls) = (h.reporter.statuses().len(), h.rt.calls().len());
    pass(120).await;
    assert_eq!(h.reporter.statuses().len(), reported);
    let later: Vec<_> = h.rt.calls()[calls..]
        .iter()
        .filter(|c| **c != Call::SetupVolumes)
        .cloned()
        .collect();
    assert!(later.is_empty(), "{later:?}");
}

#[tokio::test(start_paused = true)]
async fn crash_loop_back_off_doubles_from_ten_seconds_to_five_minutes_and_starts_over_after_ten_minutes()
 {
    let h = harness();
    let fail_fast = Behaviour {
        run_for: Some(Duration::from_secs(1)),
        exit_code: 1,
        start_error: None,
    };
    h.rt.behave("app", fail_fast.clone());
    h.workers
        .update(pod(json!({"containers": [{"name": "app"}]})));
    // 1 + 10 + 20 + 40 + 80 + 160 + 300 + 300 s of waiting, plus a second of running each.
    pass(930).await;
    let t = starts(&h, "app");
    assert_eq!(t.len(), 9, "{t:?}");
    let waits: Vec<u64> = t.windows(2).map(|w| (w[1] - w[0]).as_secs() - 1).collect();
    // The first restart waits for the relist to notice the exit (at most 1 s), then each
    // waits its back-off exactly.
    assert!(waits[0] <= 1, "{waits:?}");
    assert_eq!(&waits[1..], [10, 20, 40, 80, 160, 300, 300], "{waits:?}");

    // Between restarts: CrashLoopBackOff, with the last exit as lastState.
    pass(30).await;
    let s = h.last();
    assert_eq!(
        waiting_reason(&s, "app").as_deref(),
        Some("CrashLoopBackOff")
    );
    let app = container(&s, "app");
    let msg = app
        .state
        .as_ref()
        .unwrap()
        .waiting
        .as_ref()
        .unwrap()
        .message
        .clone();
    assert_eq!(
        msg.as_deref(),
        Some("back-off 300s restarting failed container=app pod=p_default(uid-1)")
    );
    assert_eq!(app.restart_count, 8);
    let last = app
        .last_state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .unwrap();
    assert_eq!(last.exit_code, 1);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&s, "Ready"), "False");
    assert!(h.reporter.reasons().iter().any(|r| r == "BackOff"));

    // The next run lasts 11 minutes: its exit restarts at once, and the back-off is 10 s
    // again after it.
    h.rt.behave(
        "app",
        Behaviour {
            run_for: Some(Duration::from_secs(660)),
            ..fail_fast.clone()
        },
    );
    pass(300).await;
    let long = *starts(&h, "app").last().unwrap();
    h.rt.behave("app", fail_fast);
    pass(700).await;
    let t = starts(&h, "app");
    let after: Vec<u64> = t
        .iter()
        .filter(|s| **s > long)
        .map(|s| s.as_secs())
        .collect();
    assert!(after.len() >= 2, "{t:?}");
    let quick = after[0] - long.as_secs() - 660;
    assert!(
        quick <= 1,
        "restart after the long run took {quick} s: {t:?}"
    );
    assert_eq!(after[1] - after[0] - 1, 10, "{t:?}");
}

#[tokio::test(start_paused = true)]
async fn init_containers_run_one_by_one_before_the_containers() {
    let h = harness();
    for name in ["a", "b"] {
        h.rt.behave(
            name,
            Behaviour {
                run_for: Some(Duration::from_secs(5)),
                ..Default::default()
            },
        );
    }
    h.workers.update(pod(json!({
        "initContainers": [{"name": "a"}, {"name": "b"}],
        "containers": [{"name": "app"}],
    })));
    pass(3).await;
    let s = h.last();
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert_eq!(condition(&s, "Initialized"), "False");
    assert_eq!(
        waiting_reason(&s, "app").as_deref(),
        Some("PodInitializing")
    );
    assert_eq!(waiting_reason(&s, "b").as_deref(), Some("PodInitializing"));
    pass(20).await;
    let order: Vec<_> =
        h.rt.calls()
            .into_iter()
            .filter(|c| matches!(c, Call::StartContainer(_)))
            .collect();
    assert_eq!(
        order,
        ["a", "b", "app"].map(|n| Call::StartContainer(n.into()))
    );
    let t_a = starts(&h, "a")[0];
    let t_b = starts(&h, "b")[0];
    assert!(
        t_b >= t_a + Duration::from_secs(5),
        "b started before a ended"
    );
    let s = h.last();
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&s, "Initialized"), "True");
    let a = container(&s, "a");
    let done = a.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(done.reason.as_deref(), Some("Completed"));
    assert_eq!(s.init_container_statuses.as_ref().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failing_init_container_backs_off_under_always_and_fails_the_pod_under_never() {
    let h = harness();
    h.rt.behave(
        "init",
        Behaviour {
            run_for: Some(Duration::from_secs(1)),
            exit_code: 2,
            start_error: None,
        },
    );
    h.workers.update(pod(json!({
        "initContainers": [{"name": "init"}],
        "containers": [{"name": "app"}],
    })));
    h.workers.update(pod_with(
        "uid-never",
        json!({
            "restartPolicy": "Never",
            "initContainers": [{"name": "init"}],
            "containers": [{"name": "app"}],
        }),
    ));
    pass(40).await;
    assert!(
        !h.rt
            .calls()
            .contains(&Call::CreateContainer("app".into(), 0)),
        "app started although init failed"
    );
    let statuses = h.reporter.statuses();
    let failed = statuses
        .iter()
        .find(|s| s.phase.as_deref() == Some("Failed"))
        .expect("the Never pod failed");
    let init = container(failed, "init");
    assert_eq!(
        init.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        2
    );
    // The Always pod restarts init with back-off and stays Pending.
    let always: Vec<_> = statuses
        .iter()
        .filter(|s| waiting_reason(s, "init").as_deref() == Some("CrashLoopBackOff"))
        .collect();
    let last = always.last().expect("init backs off");
    assert_eq!(last.phase.as_deref(), Some("Pending"));
    assert!(container(last, "init").restart_count >= 2, "{last:?}");
    // Only the Never pod's sandbox was stopped.
    let stops =
        h.rt.calls()
            .into_iter()
            .filter(|c| matches!(c, Call::StopPodSandbox(_)))
            .count();
    assert_eq!(stops, 1);
}

fn exec_probe(cmd: &str, period: i32, failures: i32) -> serde_json::Value {
    json!({"exec": {"command": [cmd]}, "periodSeconds": period, "failureThreshold": failures})
}

#[tokio::test(start_paused = true)]
async fn a_failing_liveness_probe_kills_the_container_with_grace_and_restarts_it() {
    let h = harness();
    h.workers.update(pod(json!({
        "terminationGracePeriodSeconds": 17,
        "containers": [{"name": "app", "livenessProbe": exec_probe("alive", 10, 3)}],
    })));
    let short = harness();
    short.workers.update(pod_with(
        "uid-short",
        json!({
            "terminationGracePeriodSeconds": 17,
            "containers": [{"name": "quick", "livenessProbe": {
                "exec": {"command": ["alive"]}, "periodSeconds": 10, "failureThreshold": 3,
                "terminationGracePeriodSeconds": 3,
            }}],
        }),
    ));
    short.rt.exec_exits("quick", "alive", 1);
    pass(25).await;
    assert_eq!(container(&h.last(), "app").restart_count, 0);
    h.rt.exec_exits("app", "alive", 1);
    pass(40).await;
    let calls = h.rt.calls();
    let stop = calls
        .iter()
        .position(|c| *c == Call::StopContainer("app".into(), 17))
        .expect("the container was stopped with the pod's grace");
    let recreate = calls
        .iter()
        .position(|c| *c == Call::CreateContainer("app".into(), 1))
        .expect("the container was created again");
    assert!(stop < recreate);
    // The probe's own grace wins over the pod's for the kill it causes.
    let quick = short.rt.calls();
    assert!(
        quick.contains(&Call::StopContainer("quick".into(), 3)),
        "{quick:?}"
    );
    let reasons = h.reporter.reasons();
    let unhealthy = reasons.iter().filter(|r| *r == "Unhealthy").count();
    assert!(unhealthy >= 3, "{reasons:?}");
    let killing = h
        .reporter
        .events()
        .into_iter()
        .find(|e| e.reason == "Killing")
        .unwrap();
    assert_eq!(
        killing.message,
        "Container app failed liveness probe, will be restarted"
    );
    let first_kill = reasons.iter().position(|r| r == "Killing").unwrap();
    let first_unhealthy = reasons.iter().position(|r| r == "Unhealthy").unwrap();
    assert!(first_unhealthy < first_kill);
    let s = h.last();
    let app = container(&s, "app");
    assert_eq!(app.restart_count, 1);
    assert!(app.state.as_ref().unwrap().running.is_some());
    let last = app
        .last_state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .unwrap();
    assert_eq!(last.exit_code, 143);
}

#[tokio::test(start_paused = true)]
async fn readiness_drives_ready_and_the_pod_conditions() {
    let h = harness();
    h.workers.update(pod(json!({
        "containers": [{"name": "app", "readinessProbe": {
            "exec": {"command": ["ready"]}, "initialDelaySeconds": 2, "periodSeconds": 5,
            "failureThreshold": 2,
        }}],
    })));
    pass(1).await;
    let s = h.last();
    assert!(!container(&s, "app").ready, "ready before its probe passed");
    assert_eq!(condition(&s, "Ready"), "False");
    pass(2).await;
    let ready_at = h.last();
    assert!(container(&ready_at, "app").ready);
    assert_eq!(condition(&ready_at, "Ready"), "True");
    assert_eq!(condition(&ready_at, "ContainersReady"), "True");
    h.rt.exec_exits("app", "ready", 1);
    pass(12).await;
    let s = h.last();
    assert!(!container(&s, "app").ready);
    assert_eq!(condition(&s, "Ready"), "False");
    let ready = s
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
    // Not ready is not dead: no restart.
    assert_eq!(container(&s, "app").restart_count, 0);
    h.rt.exec_exits("app", "ready", 0);
    pass(6).await;
    let s = h.last();
    assert_eq!(condition(&s, "Ready"), "True");
    // PodScheduled never changed: its transition time stayed.
    let scheduled = |s: &PodStatus| {
        s.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled")
            .unwrap()
            .last_transition_time
            .clone()
    };
    assert_eq!(scheduled(&s), scheduled(&ready_at));
}

#[tokio::test(start_paused = true)]
async fn the_startup_probe_holds_liveness_and_readiness_until_it_passes() {
    let h = harness();
    h.rt.exec_exits("app", "started", 1);
    h.workers.update(pod(json!({
        "containers": [{
            "name": "app",
            "startupProbe": exec_probe("started", 5, 20),
            "livenessProbe": exec_probe("alive", 5, 3),
            "readinessProbe": exec_probe("ready", 5, 3),
        }],
    })));
    pass(30).await;
    let execs: Vec<_> =
        h.rt.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::ExecSync(_, cmd) => Some(cmd.join(" ")),
                _ => None,
            })
            .collect();
    assert!(execs.iter().all(|c| c == "started"), "{execs:?}");
    assert!(execs.len() >= 5, "{execs:?}");
    let app = container(&h.last(), "app").clone();
    assert_eq!(app.started, Some(false));
    assert!(!app.ready);
    h.rt.exec_exits("app", "started", 0);
    pass(12).await;
    let app = container(&h.last(), "app").clone();
    assert_eq!(app.started, Some(true));
    assert!(app.ready);
    let calls = h.rt.calls();
    assert!(calls.contains(&Call::ExecSync("app".into(), vec!["alive".into()])));
    assert_eq!(app.restart_count, 0);
}

#[tokio::test(start_paused = true)]
async fn a_startup_probe_that_never_passes_restarts_the_container() {
    let h = harness();
    h.rt.exec_exits("app", "started", 1);
    h.workers.update(pod(json!({
        "containers": [{"name": "app", "startupProbe": exec_probe("started", 5, 3)}],
    })));
    // Probes at 0, 5 and 10 s fail: killed at 10 s.
    pass(12).await;
    let killing = h
        .reporter
        .events()
        .into_iter()
        .find(|e| e.reason == "Killing")
        .expect("killed");
    assert_eq!(
        killing.message,
        "Container app failed startup probe, will be restarted"
    );
    assert_eq!(container(&h.last(), "app").restart_count, 1);
}

#[tokio::test(start_paused = true)]
async fn deletion_runs_pre_stop_then_stops_with_the_grace_left_then_the_sandbox_then_volumes() {
    let h = harness();
    let p = pod(json!({
        "containers": [
            {"name": "app", "lifecycle": {"preStop": {"exec": {"command": ["drain"]}}}},
            {"name": "side"},
        ],
    }));
    h.workers.update(p.clone());
    pass(3).await;
    h.workers.update(deleted(&p, 20));
    pass(3).await;
    let calls = h.rt.calls();
    let at = |c: &Call| {
        calls
            .iter()
            .position(|x| x == c)
            .unwrap_or_else(|| panic!("no {c:?} in {calls:?}"))
    };
    let pre_stop = at(&Call::ExecSync("app".into(), vec!["drain".into()]));
    let stop_app = at(&Call::StopContainer("app".into(), 20));
    let stop_side = at(&Call::StopContainer("side".into(), 20));
    let sandbox_id = calls
        .iter()
        .find_map(|c| match c {
            Call::StopPodSandbox(id) => Some(id.clone()),
            _ => None,
        })
        .unwrap();
    let stop_sandbox = at(&Call::StopPodSandbox(sandbox_id.clone()));
    let remove_sandbox = at(&Call::RemovePodSandbox(sandbox_id));
    let teardown = at(&Call::TeardownVolumes);
    assert!(pre_stop < stop_app, "{calls:?}");
    assert!(
        stop_app < stop_sandbox && stop_side < stop_sandbox,
        "{calls:?}"
    );
    assert!(
        stop_sandbox < remove_sandbox && remove_sandbox < teardown,
        "{calls:?}"
    );
    assert_eq!(teardown, calls.len() - 1, "{calls:?}");
    assert_eq!(h.rt.counts(), (0, 0));

    let s = h.last();
    assert_eq!(s.phase.as_deref(), Some("Failed"));
    for name in ["app", "side"] {
        let t = container(&s, name)
            .state
            .as_ref()
            .unwrap()
            .terminated
            .clone();
        assert_eq!(t.unwrap().exit_code, 143, "{name}");
        assert!(!container(&s, name).ready);
    }
    assert_eq!(condition(&s, "Ready"), "False");
    assert_eq!(
        s.pod_ip.as_deref(),
        Some("10.42.0.7"),
        "the final status keeps the IP"
    );
    assert_eq!(h.reporter.terminated(), [UID]);
    let killing = h
        .reporter
        .events()
        .into_iter()
        .filter(|e| e.reason == "Killing")
        .count();
    assert_eq!(killing, 2);

    // The API deletes it, the cache drops it: nothing more happens.
    let n = calls.len();
    h.workers.remove(UID);
    pass(3).await;
    let after: Vec<_> = h.rt.calls()[n..].to_vec();
    assert!(
        after.iter().all(|c| *c == Call::TeardownVolumes),
        "{after:?}"
    );
    assert!(h.workers.pods().is_empty());
    assert_eq!(h.reporter.terminated(), [UID]);
}

#[tokio::test(start_paused = true)]
async fn the_spec_grace_applies_when_the_deletion_names_none_and_30_s_when_neither_does() {
    let p = pod(json!({"terminationGracePeriodSeconds": 45, "containers": [{"name": "app"}]}));
    assert_eq!(grace_period(&p), 45);
    let mut d = (*deleted(&p, 5)).clone();
    assert_eq!(grace_period(&d), 5);
    d.metadata.deletion_grace_period_seconds = None;
    assert_eq!(grace_period(&d), 45);
    assert_eq!(grace_period(&pod(json!({"containers": []}))), 30);
}

#[tokio::test(start_paused = true)]
async fn a_missing_config_map_is_create_container_config_error_until_it_appears() {
    let h = harness();
    h.workers.update(pod(json!({
        "containers": [{"name": "app"}],
        "volumes": [{"name": "cfg", "configMap": {"name": "settings"}}],
    })));
    pass(10).await;
    let s = h.last();
    assert_eq!(
        waiting_reason(&s, "app").as_deref(),
        Some("CreateContainerConfigError")
    );
    let msg = container(&s, "app")
        .state
        .as_ref()
        .unwrap()
        .waiting
        .as_ref()
        .unwrap()
        .message
        .clone();
    assert_eq!(msg.as_deref(), Some("configmap \"settings\" not found"));
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert!(
        !h.rt
            .calls()
            .iter()
            .any(|c| matches!(c, Call::RunPodSandbox(_)))
    );
    h.objects.add_config_map("default", "settings");
    pass(3).await;
    let s = h.last();
    assert_eq!(s.phase.as_deref(), Some("Running"), "{s:?}");
    assert!(
        container(&s, "app")
            .state
            .as_ref()
            .unwrap()
            .running
            .is_some()
    );
}

#[tokio::test(start_paused = true)]
async fn containers_a_previous_agent_left_running_are_adopted_not_recreated() {
    let h = harness();
    let p = pod(json!({"containers": [{"name": "app"}]}));
    let spec_c = p.spec.as_ref().unwrap().containers[0].clone();
    let labels = |extra: &[(&str, &str)]| {
        let mut l: std::collections::HashMap<String, String> = [
            (LABEL_POD_UID, UID),
            (LABEL_POD_NAME, "p"),
            (LABEL_POD_NAMESPACE, "default"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        l.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        l
    };
    h.rt.preexisting(
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "p".into(),
                uid: UID.into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            labels: labels(&[]),
            ..Default::default()
        },
        vec![cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 3,
            }),
            image: Some(cri::ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            labels: labels(&[(LABEL_CONTAINER_NAME, "app")]),
            annotations: [(
                ANNOTATION_CONTAINER_HASH.to_string(),
                plan::container_hash(&spec_c),
            )]
            .into(),
            ..Default::default()
        }],
    );
    h.workers.update(p);
    pass(5).await;
    assert!(
        h.rt.calls().iter().all(|c| *c == Call::SetupVolumes),
        "{:?}",
        h.rt.calls()
    );
    let s = h.last();
    assert_eq!(s.phase.as_deref(), Some("Running"));
    let app = container(&s, "app");
    assert_eq!(app.restart_count, 3);
    assert!(app.ready);
}

#[tokio::test(start_paused = true)]
async fn a_pod_the_node_cannot_fit_fails_with_out_of_cpu_and_runs_nothing() {
    let h = harness_with(NodeResources {
        cpu_millis: 1000,
        memory_bytes: 1 << 30,
    });
    let wants = |cpu: &str| json!({"containers": [{"name": "app", "resources": {"requests": {"cpu": cpu}}}]});
    h.workers.update(pod_with("uid-a", wants("600m")));
    pass(2).await;
    let runs = h.rt.calls().len();
    h.workers.update(pod_with("uid-b", wants("500m")));
    pass(2).await;
    assert_eq!(h.rt.calls().len(), runs, "{:?}", h.rt.calls());
    let s = h.last();
    assert_eq!(s.phase.as_deref(), Some("Failed"));
    assert_eq!(s.reason.as_deref(), Some("OutOfcpu"));
    assert_eq!(
        s.message.as_deref(),
        Some(
            "Pod was rejected: Node didn't have enough resource: cpu, requested: 500, used: 600, capacity: 1000"
        )
    );
    assert!(h.reporter.reasons().contains(&"OutOfcpu".to_string()));
    // Deleting the rejected pod only lets the API remove it.
    h.workers
        .update(deleted(&pod_with("uid-b", wants("500m")), 30));
    assert_eq!(h.reporter.terminated(), ["uid-b"]);
}

#[tokio::test(start_paused = true)]
async fn a_missing_image_is_err_image_pull_then_image_pull_back_off() {
    let h = harness();
    h.workers.update(pod(
        json!({"containers": [{"name": "app", "image": "elsewhere.io/x:2"}]}),
    ));
    pass(1).await;
    let s = h.last();
    assert_eq!(waiting_reason(&s, "app").as_deref(), Some("ErrImagePull"));
    let msg = container(&s, "app")
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap()
        .message
        .unwrap();
    assert!(msg.contains("does not pull from registries"), "{msg}");
    pass(5).await;
    assert_eq!(
        waiting_reason(&h.last(), "app").as_deref(),
        Some("ImagePullBackOff")
    );
    assert!(
        !h.rt
            .calls()
            .iter()
            .any(|c| matches!(c, Call::CreateContainer(..)))
    );
    h.rt.add_image("elsewhere.io/x:2");
    pass(30).await;
    assert_eq!(h.last().phase.as_deref(), Some("Running"));
}

#[tokio::test(start_paused = true)]
async fn a_start_error_is_run_container_error_then_crash_loop_back_off() {
    let h = harness();
    h.rt.behave(
        "app",
        Behaviour {
            start_error: Some("exec: \"nope\": executable file not found in $PATH".into()),
            ..Default::default()
        },
    );
    h.workers.update(pod(
        json!({"containers": [{"name": "app", "command": ["nope"]}]}),
    ));
    pass(1).await;
    let reasons: Vec<_> = h
        .reporter
        .statuses()
        .iter()
        .filter_map(|s| waiting_reason(s, "app"))
        .collect();
    assert_eq!(
        reasons.first().map(String::as_str),
        Some("RunContainerError")
    );
    pass(30).await;
    let s = h.last();
    assert_eq!(
        waiting_reason(&s, "app").as_deref(),
        Some("CrashLoopBackOff")
    );
    let last = container(&s, "app")
        .last_state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(last.exit_code, 128);
    assert_eq!(last.reason.as_deref(), Some("StartError"));
    assert!(
        h.reporter
            .events()
            .iter()
            .any(|e| e.reason == "Failed" && e.message.contains("executable file not found")),
        "{:?}",
        h.reporter.events()
    );
}

#[tokio::test(start_paused = true)]
async fn a_pod_whose_containers_all_exit_zero_under_never_succeeds_and_keeps_its_statuses() {
    let h = harness();
    h.rt.behave(
        "job",
        Behaviour {
            run_for: Some(Duration::from_secs(3)),
            ..Default::default()
        },
    );
    h.workers.update(pod(json!({
        "restartPolicy": "Never",
        "containers": [{"name": "job"}, {"name": "helper"}],
    })));
    pass(10).await;
    assert_eq!(h.last().phase.as_deref(), Some("Running"));
    h.rt.exit("helper", 0);
    pass(60).await;
    let s = h.last();
    assert_eq!(s.phase.as_deref(), Some("Succeeded"));
    let t = container(&s, "job")
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    assert_eq!(starts(&h, "job").len(), 1);
    let calls = h.rt.calls();
    assert!(calls.iter().any(|c| matches!(c, Call::StopPodSandbox(_))));
    assert!(calls.contains(&Call::ReleaseVolumes));
    assert!(
        !calls.contains(&Call::TeardownVolumes),
        "the logs stay while the pod does"
    );
    // The exited container stays for its status (the GC removes it later).
    assert_eq!(h.rt.counts(), (1, 2), "{:?}", h.rt.calls());
    assert_eq!(condition(&s, "Ready"), "False");
}

#[tokio::test(start_paused = true)]
async fn a_pod_gone_from_the_cache_is_killed_and_forgotten_without_a_final_status() {
    let h = harness();
    h.workers
        .update(pod(json!({"containers": [{"name": "app"}]})));
    pass(2).await;
    let reported = h.reporter.statuses().len();
    h.workers.remove(UID);
    pass(2).await;
    assert_eq!(h.rt.counts(), (0, 0));
    assert_eq!(h.reporter.statuses().len(), reported);
    assert!(h.reporter.terminated().is_empty());
    assert!(h.workers.pods().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_runtime_outage_is_retried_and_changes_nothing_that_runs() {
    let h = harness();
    h.workers
        .update(pod(json!({"containers": [{"name": "app"}]})));
    pass(2).await;
    let running = h.last();
    h.rt.set_down(true);
    pass(30).await;
    h.rt.set_down(false);
    pass(15).await;
    assert_eq!(starts(&h, "app").len(), 1);
    assert_eq!(h.last(), running);
}

#[tokio::test(start_paused = true)]
async fn sandboxes_of_pods_the_cache_no_longer_has_are_removed_as_orphans() {
    let h = harness();
    let labels =
        |uid: &str| std::collections::HashMap::from([(LABEL_POD_UID.to_string(), uid.to_string())]);
    let sandbox = |uid: &str| cri::PodSandboxConfig {
        labels: labels(uid),
        ..Default::default()
    };
    let c = |uid: &str| cri::ContainerConfig {
        labels: labels(uid),
        ..Default::default()
    };
    h.rt.preexisting(sandbox("ghost"), vec![c("ghost")]);
    h.rt.preexisting(sandbox("kept"), vec![c("kept")]);
    h.workers
        .update(pod(json!({"containers": [{"name": "app"}]})));
    pass(2).await;
    let known = HashSet::from(["kept".to_string()]);
    let gone = h.workers.remove_orphans(&known).await.unwrap();
    assert_eq!(gone, ["ghost"]);
    // The kept one and the worker's own pod stay.
    assert_eq!(h.rt.counts(), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn volumes_are_refreshed_while_the_pod_runs() {
    let h = harness();
    h.workers
        .update(pod(json!({"containers": [{"name": "app"}]})));
    pass(1).await;
    let setups = || {
        h.rt.calls()
            .iter()
            .filter(|c| **c == Call::SetupVolumes)
            .count()
    };
    let first = setups();
    // Resyncs every 10 s; the nudge below falls between two of them.
    pass(35).await;
    assert!(setups() >= first + 2, "{}", setups());
    h.workers.resync_all();
    let before = setups();
    tokio::task::yield_now().await;
    pass(0).await;
    assert_eq!(setups(), before + 1);
}

#[tokio::test(start_paused = true)]
async fn a_pod_that_comes_back_after_removal_starts_again() {
    let h = harness();
    let p = pod(json!({"containers": [{"name": "app"}]}));
    h.workers.update(p.clone());
    pass(2).await;
    h.workers.remove(UID);
    h.workers.update(p);
    pass(3).await;
    assert_eq!(h.workers.pods(), [UID]);
    assert_eq!(h.last().phase.as_deref(), Some("Running"));
    assert_eq!(h.rt.counts(), (1, 1));
}
