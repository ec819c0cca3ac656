use super::*;
use crate::pod::plan::{ObservedSandbox, RunState};
use serde_json::json;

const S: i64 = 1_000_000_000;

#[test]
fn requests_are_the_larger_of_the_containers_sum_and_each_init_container_plus_overhead() {
    let s: PodSpec = serde_json::from_value(json!({
        "containers": [
            {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
            {"name": "b", "resources": {"requests": {"cpu": "250m"}}},
        ],
        "initContainers": [
            {"name": "i", "resources": {"requests": {"cpu": "1", "memory": "16Mi"}}},
        ],
        "overhead": {"cpu": "10m", "memory": "1Mi"},
    }))
    .unwrap();
    assert_eq!(
        pod_requests(&s),
        Requests {
            cpu_milli: 1010,
            memory: (64 << 20) + (1 << 20),
        }
    );
}

fn running_pod() -> (Pod, Observed) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {"containers": [{"name": "a", "image": "img"}]},
    }))
    .unwrap();
    let observed = Observed {
        sandboxes: vec![ObservedSandbox {
            id: "s".into(),
            attempt: 0,
            ready: true,
            created_at: S,
            ips: vec!["10.42.0.3".into(), "fd00::3".into()],
        }],
        containers: vec![ObservedContainer {
            id: "c".into(),
            sandbox_id: "s".into(),
            name: "a".into(),
            attempt: 2,
            state: RunState::Running,
            created_at: 10 * S,
            started_at: 11 * S,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            image: "img".into(),
            image_ref: "sha256:abc".into(),
            hash: None,
        }],
    };
    (pod, observed)
}

fn status_of(pod: &Pod, observed: &Observed, ready: bool, now: i64) -> PodStatus {
    let probes = HashMap::from([("c".to_string(), (true, ready))]);
    pod_status(&StatusInput {
        pod,
        observed,
        waiting: &BTreeMap::new(),
        probes: &probes,
        last_terminated: &HashMap::new(),
        restart_counts: &HashMap::new(),
        node_ip: "192.0.2.1".parse().unwrap(),
        start_time: Some(time_of_nanos(S)),
        done: None,
        now,
    })
}

#[test]
fn a_running_pod_has_its_ips_ids_and_conditions() {
    let (pod, observed) = running_pod();
    let s = status_of(&pod, &observed, true, 100 * S);
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(s.pod_ip.as_deref(), Some("10.42.0.3"));
    let ips: Vec<_> = s.pod_ips.unwrap().into_iter().map(|i| i.ip).collect();
    assert_eq!(ips, ["10.42.0.3", "fd00::3"]);
    assert_eq!(s.host_ip.as_deref(), Some("192.0.2.1"));
    let c = &s.container_statuses.unwrap()[0];
    assert_eq!(c.container_id.as_deref(), Some("containerd://c"));
    assert_eq!(c.image_id, "sha256:abc");
    assert_eq!(c.restart_count, 2);
    assert_eq!(
        c.state
            .as_ref()
            .unwrap()
            .running
            .as_ref()
            .unwrap()
            .started_at,
        Some(time_of_nanos(11 * S))
    );
    let kinds: Vec<_> = s
        .conditions
        .unwrap()
        .into_iter()
        .map(|c| format!("{}={}", c.type_, c.status))
        .collect();
    assert_eq!(
        kinds,
        [
            "PodReadyToStartContainers=True",
            "Initialized=True",
            "ContainersReady=True",
            "Ready=True",
            "PodScheduled=True"
        ]
    );
}

#[test]
fn a_condition_keeps_its_transition_time_until_its_status_changes() {
    let (mut pod, observed) = running_pod();
    let first = status_of(&pod, &observed, true, 100 * S);
    pod.status = Some(first.clone());
    let ready_time = |s: &PodStatus| {
        s.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .last_transition_time
            .clone()
    };
    let same = status_of(&pod, &observed, true, 200 * S);
    assert_eq!(ready_time(&same), Some(time_of_nanos(100 * S)));
    let flipped = status_of(&pod, &observed, false, 300 * S);
    assert_eq!(ready_time(&flipped), Some(time_of_nanos(300 * S)));
}

#[test]
fn a_host_network_pod_has_the_node_address_as_its_ip() {
    let (mut pod, observed) = running_pod();
    pod.spec.as_mut().unwrap().host_network = Some(true);
    let s = status_of(&pod, &observed, true, S);
    assert_eq!(s.pod_ip.as_deref(), Some("192.0.2.1"));
}

#[test]
fn a_backing_off_container_waits_with_its_last_exit_as_last_state() {
    let (pod, mut observed) = running_pod();
    let c = &mut observed.containers[0];
    c.state = RunState::Exited;
    c.exit_code = 2;
    c.finished_at = 20 * S;
    let waiting = BTreeMap::from([(
        "a".to_string(),
        Waiting::new("CrashLoopBackOff", "back-off 20s"),
    )]);
    let s = pod_status(&StatusInput {
        pod: &pod,
        observed: &observed,
        waiting: &waiting,
        probes: &HashMap::new(),
        last_terminated: &HashMap::new(),
        restart_counts: &HashMap::new(),
        node_ip: "192.0.2.1".parse().unwrap(),
        start_time: None,
        done: None,
        now: 30 * S,
    });
    let c = &s.container_statuses.as_ref().unwrap()[0];
    let w = c.state.as_ref().unwrap().waiting.as_ref().unwrap();
    assert_eq!(w.reason.as_deref(), Some("CrashLoopBackOff"));
    let t = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (2, Some("Error")));
    assert_eq!(t.finished_at, Some(time_of_nanos(20 * S)));
    assert!(!c.ready);
    // A restarting container counts as stopped: the pod is Running, not Pending.
    assert_eq!(s.phase.as_deref(), Some("Running"));
}
