//! What a pod worker observes of its pod in the runtime ([`Observed`]), and the pure
//! [`plan`] of what to do about it, as kubelet's `computePodActions`: a new sandbox when none
//! is ready (killing what ran in the old one), init containers one by one, then every regular
//! container, restarts by restartPolicy and back-off, restarts of unhealthy containers, and
//! when the pod is done.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use sha2::{Digest, Sha256};

use super::backoff::Backoff;

pub use super::config::{LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID};
/// Annotation of containers: the hash of the container spec they were made from.
pub const ANNOTATION_CONTAINER_HASH: &str = "io.kubernetes.container.hash";
/// Annotation of containers: whether it is an init container (`true`).
pub const ANNOTATION_INIT: &str = "edgesite.io/init-container";

/// A container's state in the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Created, never started (or its start failed).
    Created,
    /// Running.
    Running,
    /// Exited.
    Exited,
    /// The runtime does not know.
    Unknown,
}

/// One sandbox of the pod, as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedSandbox {
    /// The runtime's id.
    pub id: String,
    /// How many sandboxes were made for the pod before it.
    pub attempt: u32,
    /// Whether it is ready (running).
    pub ready: bool,
    /// Creation time, ns since the epoch.
    pub created_at: i64,
    /// Its IPs, the first is `status.podIP`.
    pub ips: Vec<String>,
}

/// One container of the pod, as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedContainer {
    /// The runtime's id.
    pub id: String,
    /// The sandbox it is in.
    pub sandbox_id: String,
    /// The name in the pod spec.
    pub name: String,
    /// Its restart count when it was created.
    pub attempt: u32,
    /// Its state.
    pub state: RunState,
    /// Creation, start and exit times, ns since the epoch (0 when not yet).
    pub created_at: i64,
    /// See `created_at`.
    pub started_at: i64,
    /// See `created_at`.
    pub finished_at: i64,
    /// The exit code once exited.
    pub exit_code: i32,
    /// The runtime's reason (`Completed`, `Error`, `OOMKilled`, `StartError`).
    pub reason: String,
    /// The runtime's message.
    pub message: String,
    /// The image it runs, as the spec named it.
    pub image: String,
    /// The image's id (digest) in the runtime.
    pub image_ref: String,
    /// The hash of the container spec it was made from.
    pub hash: Option<String>,
}

impl ObservedContainer {
    /// Whether it is running or about to (created).
    pub fn is_live(&self) -> bool {
        matches!(self.state, RunState::Running | RunState::Unknown)
    }
}

/// Everything the runtime holds for one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Its sandboxes.
    pub sandboxes: Vec<ObservedSandbox>,
    /// Its containers, in all its sandboxes.
    pub containers: Vec<ObservedContainer>,
}

impl Observed {
    /// The newest sandbox.
    pub fn latest_sandbox(&self) -> Option<&ObservedSandbox> {
        self.sandboxes
            .iter()
            .max_by_key(|s| (s.created_at, s.attempt))
    }

    /// The newest container named `name`, in sandbox `sandbox` when given.
    pub fn latest(&self, name: &str, sandbox: Option<&str>) -> Option<&ObservedContainer> {
        self.containers
            .iter()
            .filter(|c| c.name == name && sandbox.is_none_or(|s| c.sandbox_id == s))
            .max_by_key(|c| (c.attempt, c.created_at))
    }

    /// The container before the newest one named `name` (its `lastState`).
    pub fn previous(&self, name: &str) -> Option<&ObservedContainer> {
        let mut all: Vec<_> = self.containers.iter().filter(|c| c.name == name).collect();
        all.sort_by_key(|c| std::cmp::Reverse((c.attempt, c.created_at)));
        all.get(1).copied()
    }
}

/// A container to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kill {
    /// Its runtime id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Why (the `Killing` event's message).
    pub message: String,
}

/// A container to create and start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// Its name in the spec.
    pub name: String,
    /// An init container.
    pub init: bool,
    /// Its restart count (the CRI attempt).
    pub restart_count: u32,
    /// It restarts an exited container: the back-off moves on.
    pub after_exit: bool,
}

/// How a pod that will run nothing more ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Every container exited 0.
    Succeeded,
    /// A container failed and will not be restarted.
    Failed,
}

/// What to do for a pod, given what the runtime holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Stop every container and sandbox of the pod first (a new sandbox replaces them).
    pub kill_pod: bool,
    /// Make a new sandbox with this attempt number.
    pub create_sandbox: Option<u32>,
    /// The ready sandbox to start containers in, when no new one is made.
    pub sandbox: Option<String>,
    /// Containers to stop.
    pub kill: Vec<Kill>,
    /// Containers to start, in order.
    pub start: Vec<Start>,
    /// Containers waiting out their restart back-off: name → the message.
    pub backing_off: BTreeMap<String, String>,
    /// When the next back-off ends (ns).
    pub wake_at: Option<i64>,
    /// The pod will run nothing more.
    pub done: Option<Completion>,
    /// Exited containers to remove (older than the newest two of each name).
    pub remove: Vec<String>,
}

/// What [`plan`] looks at besides the runtime.
#[derive(Debug)]
pub struct PlanInput<'a> {
    /// The pod, as the cache holds it.
    pub pod: &'a Pod,
    /// The runtime's view.
    pub observed: &'a Observed,
    /// The restart back-off of its containers.
    pub backoff: &'a Backoff,
    /// Running containers that failed their liveness or startup probe: id → why.
    pub unhealthy: &'a HashMap<String, String>,
    /// The highest restart count seen per container name (survives removed containers).
    pub restart_counts: &'a HashMap<String, u32>,
    /// Now, ns since the epoch.
    pub now: i64,
}

/// The pod's restartPolicy (`Always` by default).
pub fn restart_policy(spec: &PodSpec) -> &str {
    spec.restart_policy.as_deref().unwrap_or("Always")
}

/// Whether a container that exited with `exit_code` restarts under `policy`.
pub fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// The hash of a container spec, to restart containers whose spec changed.
pub fn container_hash(container: &Container) -> String {
    let json = serde_json::to_vec(container).unwrap_or_default();
    let digest = Sha256::digest(&json);
    edgesite_api::join::hex(&digest[..8])
}

fn next_count(input: &PlanInput<'_>, name: &str) -> u32 {
    let seen = input
        .observed
        .containers
        .iter()
        .filter(|c| c.name == name)
        .map(|c| c.attempt)
        .chain(input.restart_counts.get(name).copied())
        .max();
    seen.map_or(0, |n| n + 1)
}

fn back_off_message(name: &str, input: &PlanInput<'_>) -> String {
    let secs = input.backoff.current(name).map_or(0, |d| d.as_secs());
    let pod = &input.pod.metadata;
    format!(
        "back-off {}s restarting failed container={name} pod={}_{}({})",
        secs,
        pod.name.as_deref().unwrap_or_default(),
        pod.namespace.as_deref().unwrap_or_default(),
        pod.uid.as_deref().unwrap_or_default()
    )
}

impl Plan {
    fn wake(&mut self, at: i64) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    /// Restarts `c` (exited, or created and never started) unless it is backing off.
    fn restart(&mut self, input: &PlanInput<'_>, c: &ObservedContainer, init: bool) {
        let event = if c.finished_at > 0 {
            c.finished_at
        } else {
            c.created_at
        };
        if let Some(at) = input.backoff.retry_at(&c.name, event, input.now) {
            self.backing_off
                .insert(c.name.clone(), back_off_message(&c.name, input));
            self.wake(at);
        } else {
            self.start.push(Start {
                name: c.name.clone(),
                init,
                restart_count: next_count(input, &c.name),
                after_exit: true,
            });
        }
    }
}

/// How the regular containers of the newest sandbox ended, when none will run again.
fn completion_of(spec: &PodSpec, observed: &Observed, sandbox: Option<&str>) -> Option<Completion> {
    let policy = restart_policy(spec);
    let mut failed = false;
    for c in &spec.containers {
        let latest = observed.latest(&c.name, sandbox)?;
        if latest.state != RunState::Exited || should_restart(policy, latest.exit_code) {
            return None;
        }
        failed |= latest.exit_code != 0;
    }
    Some(if failed {
        Completion::Failed
    } else {
        Completion::Succeeded
    })
}

/// What to do for the pod in `input`.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut plan = Plan::default();
    let default_spec = PodSpec::default();
    let spec = input.pod.spec.as_ref().unwrap_or(&default_spec);
    let policy = restart_policy(spec);
    let observed = input.observed;
    plan.remove = garbage(observed);

    let latest = observed.latest_sandbox();
    let ready = observed.sandboxes.iter().filter(|s| s.ready).count();
    let current = latest.filter(|s| s.ready && ready == 1);

    let Some(sandbox) = current else {
        // No (single) ready sandbox. A pod that already ran to its end stays ended; kubelet
        // does not give a Never pod whose containers ran a new sandbox.
        let ran = !observed.containers.is_empty();
        let done = completion_of(spec, observed, latest.map(|s| s.id.as_str()))
            .or((policy == "Never" && ran).then_some(Completion::Failed));
        if let Some(done) = done {
            plan.done = Some(done);
            plan.kill_pod = observed.sandboxes.iter().any(|s| s.ready)
                || observed.containers.iter().any(|c| c.is_live());
            return plan;
        }
        plan.kill_pod = !observed.sandboxes.is_empty() || !observed.containers.is_empty();
        plan.create_sandbox = Some(latest.map_or(0, |s| s.attempt + 1));
        let first: Vec<_> = match spec.init_containers.as_deref() {
            Some([first, ..]) => vec![(first, true)],
            _ => spec.containers.iter().map(|c| (c, false)).collect(),
        };
        for (c, init) in first {
            plan.start.push(Start {
                name: c.name.clone(),
                init,
                restart_count: next_count(input, &c.name),
                after_exit: false,
            });
        }
        return plan;
    };
    plan.sandbox = Some(sandbox.id.clone());

    // Containers that have no business running: in an old sandbox, or gone from the spec.
    let inits = spec.init_containers.as_deref().unwrap_or_default();
    let known = |name: &str| {
        spec.containers.iter().any(|c| c.name == name) || inits.iter().any(|c| c.name == name)
    };
    for c in observed.containers.iter().filter(|c| c.is_live()) {
        if c.sandbox_id != sandbox.id || !known(&c.name) {
            plan.kill.push(Kill {
                id: c.id.clone(),
                name: c.name.clone(),
                message: format!("Stopping container {}", c.name),
            });
        }
    }

    for ic in inits {
        match observed.latest(&ic.name, Some(&sandbox.id)) {
            None => {
                plan.start.push(Start {
                    name: ic.name.clone(),
                    init: true,
                    restart_count: next_count(input, &ic.name),
                    after_exit: false,
                });
                return plan;
            }
            Some(c) if c.is_live() => return plan,
            Some(c) if c.state == RunState::Exited && c.exit_code == 0 => continue,
            Some(c) => {
                if policy == "Never" {
                    plan.done = Some(Completion::Failed);
                    plan.kill_pod = true;
                } else {
                    plan.restart(input, c, true);
                }
                return plan;
            }
        }
    }

    let mut will_run = false;
    for spec_c in &spec.containers {
        let Some(c) = observed.latest(&spec_c.name, Some(&sandbox.id)) else {
            plan.start.push(Start {
                name: spec_c.name.clone(),
                init: false,
                restart_count: next_count(input, &spec_c.name),
                after_exit: false,
            });
            will_run = true;
            continue;
        };
        match c.state {
            RunState::Running | RunState::Unknown => {
                will_run = true;
                let changed = c
                    .hash
                    .as_deref()
                    .is_some_and(|h| h != container_hash(spec_c));
                let why = match input.unhealthy.get(&c.id) {
                    Some(why) => Some(why.clone()),
                    None if changed => Some(format!(
                        "Container {} definition changed, will be restarted",
                        c.name
                    )),
                    None => None,
                };
                if let Some(message) = why {
                    plan.kill.push(Kill {
                        id: c.id.clone(),
                        name: c.name.clone(),
                        message,
                    });
                    if policy != "Never" || changed {
                        plan.start.push(Start {
                            name: c.name.clone(),
                            init: false,
                            restart_count: next_count(input, &c.name),
                            after_exit: false,
                        });
                    }
                }
            }
            RunState::Created => {
                will_run = true;
                plan.restart(input, c, false);
            }
            RunState::Exited => {
                if should_restart(policy, c.exit_code) {
                    will_run = true;
                    plan.restart(input, c, false);
                }
            }
        }
    }
    if !will_run && policy != "Always" {
        plan.done = completion_of(spec, observed, Some(&sandbox.id));
        plan.kill_pod = plan.done.is_some();
    }
    plan
}

/// Exited containers beyond the newest two of each name: kubelet keeps the current one and
/// the one before it (`lastState`, `logs --previous`).
fn garbage(observed: &Observed) -> Vec<String> {
    let mut by_name: BTreeMap<&str, Vec<&ObservedContainer>> = BTreeMap::new();
    for c in &observed.containers {
        by_name.entry(&c.name).or_default().push(c);
    }
    let mut out = Vec::new();
    for list in by_name.values_mut() {
        list.sort_by_key(|c| std::cmp::Reverse((c.attempt, c.created_at)));
        out.extend(
            list.iter()
                .skip(2)
                .filter(|c| c.state == RunState::Exited)
                .map(|c| c.id.clone()),
        );
    }
    out
}

#[cfg(test)]
mod tests;
