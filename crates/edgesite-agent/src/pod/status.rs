//! The pod status a worker reports, a pure function of the pod, what the runtime holds, the
//! probes' verdicts and why containers wait ([`pod_status`]); the pod's QoS class
//! ([`super::resources::qos_class`]) and its requests ([`pod_requests`]) for the node's fit check.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::str::FromStr;

use edgesite_api::quantity::Quantity;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::plan::{Completion, Observed, ObservedContainer, RunState};

/// The runtime's name in container ids (`containerd://<id>`).
pub const RUNTIME_NAME: &str = "containerd";

/// Why a container waits, as its `state.waiting`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// `CrashLoopBackOff`, `CreateContainerConfigError`, `ErrImagePull`, ...
    pub reason: String,
    /// The detail.
    pub message: String,
}

impl Waiting {
    /// A waiting reason with its message.
    pub fn new(reason: &str, message: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// A `metav1.Time` of `nanos` since the epoch (seconds precision, as the API keeps it).
pub fn time_of_nanos(nanos: i64) -> Time {
    Time(Timestamp::from_second(nanos.div_euclid(1_000_000_000)).unwrap_or_default())
}

/// What [`pod_status`] looks at.
#[derive(Debug)]
pub struct StatusInput<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// What the runtime holds for it.
    pub observed: &'a Observed,
    /// Containers that wait, and why (back-off, configuration, image, start errors).
    pub waiting: &'a BTreeMap<String, Waiting>,
    /// `(started, ready)` of running containers, by container id.
    pub probes: &'a HashMap<String, (bool, bool)>,
    /// The last termination of each container, for containers the runtime no longer has.
    pub last_terminated: &'a HashMap<String, ContainerStateTerminated>,
    /// The highest restart count seen per container name.
    pub restart_counts: &'a HashMap<String, u32>,
    /// The node's address.
    pub node_ip: IpAddr,
    /// When the node first took the pod on.
    pub start_time: Option<Time>,
    /// The pod will run nothing more, and how it ended.
    pub done: Option<Completion>,
    /// Now, ns since the epoch.
    pub now: i64,
}

fn terminated_of(c: &ObservedContainer) -> ContainerStateTerminated {
    let reason = if !c.reason.is_empty() {
        c.reason.clone()
    } else if c.exit_code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    ContainerStateTerminated {
        exit_code: c.exit_code,
        reason: Some(reason),
        message: Some(c.message.clone()).filter(|m| !m.is_empty()),
        started_at: (c.started_at > 0).then(|| time_of_nanos(c.started_at)),
        finished_at: (c.finished_at > 0).then(|| time_of_nanos(c.finished_at)),
        container_id: Some(format!("{RUNTIME_NAME}://{}", c.id)),
        signal: None,
    }
}

fn waiting_state(w: &Waiting) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(w.reason.clone()),
            message: Some(w.message.clone()).filter(|m| !m.is_empty()),
        }),
        ..Default::default()
    }
}

/// The status of `spec_c`; `default_wait` when it has never been created.
fn container_status(
    input: &StatusInput<'_>,
    spec_c: &Container,
    default_wait: &str,
) -> ContainerStatus {
    let name = &spec_c.name;
    let latest = input.observed.latest(name, None);
    let previous = input
        .observed
        .previous(name)
        .filter(|p| p.state == RunState::Exited)
        .map(terminated_of)
        .or_else(|| {
            // The runtime no longer has the one before (a new sandbox replaced it).
            input
                .last_terminated
                .get(name)
                .filter(|t| {
                    latest.is_none_or(|l| {
                        t.container_id.as_deref() != Some(&format!("{RUNTIME_NAME}://{}", l.id))
                    })
                })
                .cloned()
        });
    let waiting = input.waiting.get(name);
    let mut status = ContainerStatus {
        name: name.clone(),
        image: spec_c.image.clone().unwrap_or_default(),
        image_id: String::new(),
        restart_count: i32::try_from(
            latest
                .map(|c| c.attempt)
                .or_else(|| input.restart_counts.get(name).copied())
                .unwrap_or(0),
        )
        .unwrap_or(i32::MAX),
        ..Default::default()
    };
    let terminated_state = |t: ContainerStateTerminated| ContainerState {
        terminated: Some(t),
        ..Default::default()
    };
    let Some(c) = latest else {
        status.state = Some(waiting_state(
            waiting.unwrap_or(&Waiting::new(default_wait, "")),
        ));
        status.last_state = previous.map(terminated_state);
        status.started = Some(false);
        return status;
    };
    status.container_id = Some(format!("{RUNTIME_NAME}://{}", c.id));
    status.image_id = c.image_ref.clone();
    match c.state {
        RunState::Running | RunState::Unknown => {
            let (started, ready) = input.probes.get(&c.id).copied().unwrap_or((true, true));
            status.state = Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: (c.started_at > 0).then(|| time_of_nanos(c.started_at)),
                }),
                ..Default::default()
            });
            status.ready = ready;
            status.started = Some(started);
            status.last_state = previous.map(terminated_state);
        }
        RunState::Exited => {
            let t = terminated_of(c);
            match waiting {
                Some(w) => {
                    status.state = Some(waiting_state(w));
                    status.last_state = Some(terminated_state(t));
                }
                None => {
                    status.state = Some(terminated_state(t));
                    status.last_state = previous.map(terminated_state);
                }
            }
            status.started = Some(false);
        }
        RunState::Created => {
            status.state = Some(waiting_state(
                waiting.unwrap_or(&Waiting::new("ContainerCreating", "")),
            ));
            status.last_state = previous.map(terminated_state);
            status.started = Some(false);
        }
    }
    if status
        .last_state
        .as_ref()
        .is_some_and(|s| s.terminated.is_none())
    {
        status.last_state = None;
    }
    status
}

fn condition(
    previous: &[PodCondition],
    now: i64,
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == kind && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| time_of_nanos(now));
    PodCondition {
        type_: kind.into(),
        status: status.into(),
        reason: reason.map(str::to_string),
        message,
        last_transition_time: Some(since),
        last_probe_time: None,
        observed_generation: None,
    }
}

/// The phase, as kubelet's `getPhase`.
fn phase(
    spec: &PodSpec,
    inits: &[ContainerStatus],
    containers: &[ContainerStatus],
    done: Option<Completion>,
) -> &'static str {
    match done {
        Some(Completion::Succeeded) => return "Succeeded",
        Some(Completion::Failed) => return "Failed",
        None => {}
    }
    let terminated_ok = |s: &ContainerStatus| {
        s.state
            .as_ref()
            .and_then(|st| st.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0)
    };
    if inits.iter().any(|s| !terminated_ok(s)) {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in containers {
        let st = s.state.clone().unwrap_or_default();
        if st.running.is_some() {
            running += 1;
        } else if let Some(t) = &st.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s
            .last_state
            .as_ref()
            .is_some_and(|l| l.terminated.is_some())
        {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    let policy = super::plan::restart_policy(spec);
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        if policy == "Always" {
            "Running"
        } else if stopped == succeeded {
            "Succeeded"
        } else if policy == "Never" {
            "Failed"
        } else {
            "Running"
        }
    } else {
        "Pending"
    }
}

/// The status of the pod in `input`.
pub fn pod_status(input: &StatusInput<'_>) -> PodStatus {
    let pod = input.pod;
    let default_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    let inits_spec = spec.init_containers.as_deref().unwrap_or_default();
    let init_statuses: Vec<ContainerStatus> = inits_spec
        .iter()
        .map(|c| container_status(input, c, "PodInitializing"))
        .collect();
    let initialized = init_statuses.iter().all(|s| {
        s.state
            .as_ref()
            .and_then(|st| st.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0)
    });
    let wait = if initialized {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(input, c, wait))
        .collect();
    let phase = phase(spec, &init_statuses, &statuses, input.done);

    let previous = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let completed = phase == "Succeeded";
    let mut conditions = Vec::new();
    let sandbox_ready = input.observed.latest_sandbox().is_some_and(|s| s.ready);
    conditions.push(condition(
        &previous,
        input.now,
        "PodReadyToStartContainers",
        sandbox_ready,
        None,
        None,
    ));
    let incomplete: Vec<&str> = init_statuses
        .iter()
        .filter(|s| {
            s.state
                .as_ref()
                .and_then(|st| st.terminated.as_ref())
                .is_none_or(|t| t.exit_code != 0)
        })
        .map(|s| s.name.as_str())
        .collect();
    conditions.push(if incomplete.is_empty() {
        condition(
            &previous,
            input.now,
            "Initialized",
            true,
            completed.then_some("PodCompleted"),
            None,
        )
    } else {
        condition(
            &previous,
            input.now,
            "Initialized",
            false,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            )),
        )
    });
    let unready: Vec<&str> = statuses
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let gates_missing: Vec<&str> = spec
        .readiness_gates
        .iter()
        .flatten()
        .map(|g| g.condition_type.as_str())
        .filter(|t| !previous.iter().any(|c| c.type_ == *t && c.status == "True"))
        .collect();
    let (reason, message) = if completed {
        (Some("PodCompleted"), None)
    } else if unready.is_empty() {
        (None, None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let containers_ready = unready.is_empty() && !completed;
    conditions.push(condition(
        &previous,
        input.now,
        "ContainersReady",
        containers_ready,
        reason,
        message.clone(),
    ));
    let (ready, reason, message) = if containers_ready && !gates_missing.is_empty() {
        (
            false,
            Some("ReadinessGatesNotReady"),
            Some(format!(
                "corresponding condition of pod readiness gate \"{}\" does not exist.",
                gates_missing[0]
            )),
        )
    } else {
        (containers_ready, reason, message)
    };
    conditions.push(condition(
        &previous, input.now, "Ready", ready, reason, message,
    ));
    conditions.push(condition(
        &previous,
        input.now,
        "PodScheduled",
        true,
        None,
        None,
    ));
    // Conditions others own (readiness gates, DisruptionTarget) stay as they are.
    for c in &previous {
        if !conditions.iter().any(|n| n.type_ == c.type_) {
            conditions.push(c.clone());
        }
    }

    let pod_ips: Vec<String> = if spec.host_network == Some(true) {
        vec![input.node_ip.to_string()]
    } else {
        input
            .observed
            .latest_sandbox()
            .filter(|s| s.ready)
            .map(|s| s.ips.clone())
            .unwrap_or_default()
    };
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: Some(input.node_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: input.node_ip.to_string(),
        }]),
        pod_ip: pod_ips.first().cloned(),
        pod_ips: (!pod_ips.is_empty())
            .then(|| pod_ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
        start_time: input.start_time.clone(),
        container_statuses: Some(statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        qos_class: Some(super::resources::qos_class(pod).as_str().into()),
        ..Default::default()
    }
}

/// What a pod takes of the node: cpu in millicores and memory in bytes, the larger of its
/// containers' sum and each init container, plus the pod overhead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// Millicores.
    pub cpu_milli: i64,
    /// Bytes.
    pub memory: i64,
}

fn container_requests(c: &Container) -> Requests {
    let list = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    let get = |name: &str| {
        list.and_then(|l| l.get(name))
            .and_then(|q| Quantity::from_str(&q.0).ok())
    };
    Requests {
        cpu_milli: get("cpu").map_or(0, |q| q.milli_value()),
        memory: get("memory").map_or(0, |q| q.value()),
    }
}

/// The requests of a pod, as the scheduler and kubelet's admission count them.
pub fn pod_requests(spec: &PodSpec) -> Requests {
    let mut sum = Requests::default();
    for c in &spec.containers {
        let r = container_requests(c);
        sum.cpu_milli += r.cpu_milli;
        sum.memory += r.memory;
    }
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c);
        sum.cpu_milli = sum.cpu_milli.max(r.cpu_milli);
        sum.memory = sum.memory.max(r.memory);
    }
    if let Some(o) = &spec.overhead {
        let get = |n: &str| o.get(n).and_then(|q| Quantity::from_str(&q.0).ok());
        sum.cpu_milli += get("cpu").map_or(0, |q| q.milli_value());
        sum.memory += get("memory").map_or(0, |q| q.value());
    }
    sum
}

#[cfg(test)]
mod tests;
