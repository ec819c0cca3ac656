//! System test of the pod workers against a real containerd (needs root, containerd, runc and
//! busybox-static; a missing one fails the test with the package to install).
//!
//! A host-network pod looping on `sleep` reaches Running through the workers and a graceful
//! deletion stops it, removes its sandbox and reports it terminated; a container running
//! `false` goes to CrashLoopBackOff with a growing restart count; a failing liveness probe
//! restarts a container with its last state kept. Nothing is left behind.
#![allow(clippy::disallowed_methods)] // a system test: it waits for and times real processes

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgesite_agent::cri::Runtime;
use edgesite_agent::pod::volumes::HostVolumes;
use edgesite_agent::pod::{
    EventType, NodeContext, NodeResources, Objects, PodWorkers, Reporter, WorkerOptions,
};
use edgesite_testkit::{TestContainerd, busybox_image};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodStatus, Secret};
use serde_json::json;

const BUSYBOX: &str = "edgesite.io/busybox:1";

#[derive(Debug, Default)]
struct Recorder {
    statuses: Mutex<Vec<PodStatus>>,
    events: Mutex<Vec<(String, String)>>,
    terminated: Mutex<Vec<String>>,
}

impl Reporter for Recorder {
    fn pod_status(&self, _: &Pod, status: PodStatus) {
        self.statuses.lock().unwrap().push(status);
    }
    fn event(&self, _: &Pod, _: EventType, reason: &str, _: Option<String>, message: String) {
        self.events.lock().unwrap().push((reason.into(), message));
    }
    fn pod_terminated(&self, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.terminated.lock().unwrap().push(uid);
    }
}

impl Recorder {
    fn last(&self) -> Option<PodStatus> {
        self.statuses.lock().unwrap().last().cloned()
    }
}

#[derive(Debug)]
struct NoObjects;

impl Objects for NoObjects {
    fn config_map(&self, _: &str, _: &str) -> Option<Arc<ConfigMap>> {
        None
    }
    fn secret(&self, _: &str, _: &str) -> Option<Arc<Secret>> {
        None
    }
}

struct Node {
    ctd: TestContainerd,
    reporter: Arc<Recorder>,
    workers: PodWorkers,
}

async fn node() -> Node {
    let ctd = TestContainerd::start().await;
    ctd.import_pause_image().await;
    let tarball = busybox_image(&ctd.dir().join("images"), BUSYBOX);
    ctd.import(&tarball, BUSYBOX).await;
    let node = NodeContext {
        allocatable: NodeResources {
            cpu_millis: 2000,
            memory_bytes: 2 << 30,
        },
        ..NodeContext::new(
            "n1",
            "127.0.0.1".parse().unwrap(),
            ctd.dir().join("pods"),
            None,
            "cluster.local",
        )
    };
    let reporter = Arc::new(Recorder::default());
    let workers = PodWorkers::new(
        Arc::new(ctd.runtime().clone()),
        Arc::new(HostVolumes::new(node.clone())),
        Arc::new(NoObjects),
        reporter.clone(),
        Arc::new(edgesite_clock::SystemClock),
        node,
        WorkerOptions::default(),
    );
    Node {
        ctd,
        reporter,
        workers,
    }
}

fn pod(uid: &str, args: &[&str]) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": uid, "namespace": "default", "uid": uid},
        "spec": {
            "hostNetwork": true,
            "containers": [{
                "name": "main",
                "image": BUSYBOX,
                "imagePullPolicy": "IfNotPresent",
                "command": ["/bin/busybox"],
                "args": args,
            }],
        },
    }))
    .unwrap()
}

async fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// The sleeping pod with hooks and a probe that all go through CRI ExecSync: postStart makes a
/// file, readiness waits for it, preStop exits 3 (so its failure shows as an event).
fn hooked_pod(uid: &str) -> Pod {
    // A pod's process is PID 1 of its own namespace, where SIGTERM without a handler does
    // nothing: trap it, as a well-behaved server does.
    let mut p = pod(
        uid,
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 1; done",
        ],
    );
    let c = &mut p.spec.as_mut().unwrap().containers[0];
    let exec = |cmd: &[&str]| json!({"exec": {"command": cmd}});
    *c = serde_json::from_value({
        let mut v = serde_json::to_value(&*c).unwrap();
        v["lifecycle"] = json!({
            "postStart": exec(&["/bin/busybox", "touch", "/started"]),
            "preStop": exec(&["/bin/busybox", "sh", "-c", "exit 3"]),
        });
        v["readinessProbe"] = json!({
            "exec": {"command": ["/bin/busybox", "test", "-f", "/started"]},
            "periodSeconds": 1,
        });
        v
    })
    .unwrap();
    p
}

fn main_state(s: &PodStatus) -> k8s_openapi::api::core::v1::ContainerStatus {
    s.container_statuses.clone().unwrap_or_default()[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_pod_runs_and_a_graceful_deletion_stops_and_removes_it() {
    let n = node().await;
    let p = hooked_pod("uid-sleep");
    n.workers.update(Arc::new(p.clone()));
    let took = wait_for("Running", Duration::from_secs(60), || {
        n.reporter
            .last()
            .is_some_and(|s| s.phase.as_deref() == Some("Running"))
    })
    .await;
    eprintln!("pod update → status Running through the worker: {took:?}");
    let took = wait_for("Ready", Duration::from_secs(30), || {
        n.reporter.last().is_some_and(|s| main_state(&s).ready)
    })
    .await;
    eprintln!("Running → Ready by an exec readiness probe (period 1 s): {took:?}");
    let s = n.reporter.last().unwrap();
    assert_eq!(s.pod_ip.as_deref(), Some("127.0.0.1"), "{s:?}");
    let main = main_state(&s);
    assert!(main.ready, "{main:?}");
    let id = main.container_id.clone().unwrap();
    let id = id.strip_prefix("containerd://").unwrap().to_string();
    let cs = n.ctd.runtime().container_status(&id).await.unwrap();
    assert_eq!(
        cs.state,
        edgesite_agent::cri::v1::ContainerState::ContainerRunning as i32
    );
    assert!(!main.image_id.is_empty(), "{main:?}");

    let mut gone = p.clone();
    gone.metadata.deletion_timestamp = Some(s.start_time.clone().unwrap());
    gone.metadata.deletion_grace_period_seconds = Some(10);
    n.workers.update(Arc::new(gone));
    let took = wait_for("terminated", Duration::from_secs(40), || {
        !n.reporter.terminated.lock().unwrap().is_empty()
    })
    .await;
    eprintln!("graceful deletion → terminated: {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "SIGTERM did not stop the pod: {took:?}"
    );
    let s = n.reporter.last().unwrap();
    let main = main_state(&s);
    let t = main.state.unwrap().terminated.expect("terminated");
    assert_eq!(t.exit_code, 0, "the trap did not run: {t:?}");
    assert_eq!(s.phase.as_deref(), Some("Succeeded"), "{s:?}");
    let runtime = n.ctd.runtime();
    assert!(runtime.list_pod_sandboxes(None).await.unwrap().is_empty());
    assert!(runtime.list_containers(None).await.unwrap().is_empty());
    let events = n.reporter.events.lock().unwrap().clone();
    let reasons: Vec<&str> = events.iter().map(|(r, _)| r.as_str()).collect();
    for want in ["Pulled", "Created", "Started", "Killing"] {
        assert!(reasons.contains(&want), "{want} not in {reasons:?}");
    }
    let pre_stop = events
        .iter()
        .find(|(r, _)| r == "FailedPreStopHook")
        .expect("the preStop hook ran (and exited 3)");
    assert!(pre_stop.1.contains("exited with 3"), "{pre_stop:?}");
    assert!(!reasons.contains(&"FailedPostStartHook"), "{events:?}");
    n.workers.remove("uid-sleep");
    drop(n.workers);
    let left = n.ctd.stop().await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_running_false_goes_to_crash_loop_back_off_with_growing_restarts() {
    let n = node().await;
    n.workers.update(Arc::new(pod("uid-false", &["false"])));
    let seen_backoff = Arc::new(Mutex::new(HashSet::new()));
    let took = wait_for("restartCount 2", Duration::from_secs(60), || {
        let s = n.reporter.statuses.lock().unwrap().clone();
        for st in &s {
            let main = main_state(st);
            if let Some(w) = main.state.and_then(|s| s.waiting) {
                seen_backoff
                    .lock()
                    .unwrap()
                    .insert(w.reason.unwrap_or_default());
            }
        }
        s.last().is_some_and(|st| main_state(st).restart_count >= 2)
    })
    .await;
    eprintln!("`false` → restartCount 2: {took:?}");
    // The first restart is at once, the second after 10 s of back-off.
    assert!(took >= Duration::from_secs(10), "{took:?}");
    assert!(
        seen_backoff.lock().unwrap().contains("CrashLoopBackOff"),
        "{:?}",
        seen_backoff.lock().unwrap()
    );
    let s = n.reporter.last().unwrap();
    let main = main_state(&s);
    let last = main
        .last_state
        .and_then(|l| l.terminated)
        .expect("lastState terminated");
    assert_eq!(last.exit_code, 1, "{last:?}");
    let events = n.reporter.events.lock().unwrap().clone();
    assert!(events.iter().any(|(r, _)| r == "BackOff"), "{events:?}");

    n.workers.remove("uid-false");
    wait_for("removed", Duration::from_secs(30), || {
        n.workers.pods().is_empty()
    })
    .await;
    assert!(
        n.ctd
            .runtime()
            .list_pod_sandboxes(None)
            .await
            .unwrap()
            .is_empty()
    );
    drop(n.workers);
    let left = n.ctd.stop().await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_liveness_probe_restarts_the_container_with_its_last_state() {
    let n = node().await;
    let mut p = pod(
        "uid-live",
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; touch /alive; while true; do sleep 1; done",
        ],
    );
    let c = &mut p.spec.as_mut().unwrap().containers[0];
    c.liveness_probe = Some(
        serde_json::from_value(json!({
            "exec": {"command": ["/bin/busybox", "test", "-f", "/alive"]},
            "initialDelaySeconds": 1,
            "periodSeconds": 1,
            "failureThreshold": 2,
        }))
        .unwrap(),
    );
    p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(5);
    n.workers.update(Arc::new(p));
    wait_for("Running", Duration::from_secs(60), || {
        n.reporter
            .last()
            .is_some_and(|s| s.phase.as_deref() == Some("Running"))
    })
    .await;
    let first = main_state(&n.reporter.last().unwrap());
    let id = first.container_id.unwrap();
    let id = id.strip_prefix("containerd://").unwrap();
    // Healthy for a few periods: no restart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(main_state(&n.reporter.last().unwrap()).restart_count, 0);
    let rm = n
        .ctd
        .runtime()
        .exec_sync(
            id,
            vec!["/bin/busybox".into(), "rm".into(), "/alive".into()],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(rm.exit_code, 0, "{rm:?}");
    let took = wait_for("restarted", Duration::from_secs(30), || {
        n.reporter.last().is_some_and(|s| {
            let m = main_state(&s);
            m.restart_count == 1 && m.state.is_some_and(|st| st.running.is_some())
        })
    })
    .await;
    eprintln!("liveness failure (period 1 s, threshold 2) → running again: {took:?}");
    let s = n.reporter.last().unwrap();
    let m = main_state(&s);
    let last = m.last_state.and_then(|l| l.terminated).expect("lastState");
    assert_eq!(
        last.exit_code, 0,
        "the trap ran on the liveness kill: {last:?}"
    );
    assert_ne!(
        m.container_id.as_deref().unwrap(),
        format!("containerd://{id}")
    );
    let events = n.reporter.events.lock().unwrap().clone();
    let unhealthy = events.iter().position(|(r, _)| r == "Unhealthy").unwrap();
    let killing = events
        .iter()
        .position(|(r, m)| r == "Killing" && m.contains("failed liveness probe"))
        .expect("a Killing event for the liveness failure");
    assert!(unhealthy < killing, "{events:?}");
    n.workers.remove("uid-live");
    wait_for("removed", Duration::from_secs(30), || {
        n.workers.pods().is_empty()
    })
    .await;
    drop(n.workers);
    let left = n.ctd.stop().await;
    assert!(left.is_empty(), "{left:?}");
}
