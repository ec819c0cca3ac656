//! The pod workers: one task per pod, turning the pod the cache holds into sandboxes and
//! containers over the runtime.
//!
//! [`PodWorkers::update`] hands a worker the latest pod (the cache's copy, deletion included);
//! [`PodWorkers::remove`] says the pod is gone. Each worker observes what the runtime holds for
//! its pod (by the `io.kubernetes.pod.uid` label, so an agent restart adopts what runs), makes
//! a [`plan`], carries it out, and reports the status when it changed. A relist of the runtime
//! every second wakes the workers whose containers changed (kubelet's PLEG); back-off ends,
//! probe verdicts and a periodic resync wake them too. A pod with a deletionTimestamp is
//! terminated (preStop, StopContainer with the grace left, sandbox, volumes), its final status
//! reported, then [`Reporter::pod_terminated`] says it may go from the API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use edgesite_clock::Clock;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, ContainerStateTerminated, Pod, PodStatus};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::backoff::Backoff;
use super::config::{container_config, sandbox_config};
use super::plan::{
    self, ANNOTATION_CONTAINER_HASH, ANNOTATION_INIT, Completion, Kill, LABEL_CONTAINER_NAME,
    LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID, Observed, ObservedContainer,
    ObservedSandbox, PlanInput, RunState,
};
use super::probe::{self, ProbeKind, ProbeResults, ProbeTask, Target};
use super::resources::qos_class;
use super::status::{self, Requests, StatusInput, Waiting, time_of_nanos};
use super::{EventType, NodeContext, Objects, Reporter, VolumeError, VolumeManager};
use crate::cri::Runtime;

/// How the workers run.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// How often the runtime is relisted to notice exits (kubelet: 1 s).
    pub relist_period: Duration,
    /// How often each worker syncs without cause (refreshes volumes, retries).
    pub resync_period: Duration,
    /// How soon a failed step (runtime error, missing object) is retried.
    pub retry_period: Duration,
    /// The CRI runtime handler of sandboxes (empty: the default).
    pub runtime_handler: String,
    /// How many pods the node admits (kubelet's `--max-pods`, 110); cpu and memory are
    /// admitted against the node's allocatable.
    pub max_pods: usize,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            relist_period: Duration::from_secs(1),
            resync_period: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            runtime_handler: String::new(),
            max_pods: 110,
        }
    }
}

/// What every worker shares.
#[derive(Debug)]
struct Shared {
    runtime: Arc<dyn Runtime>,
    volumes: Arc<dyn VolumeManager>,
    objects: Arc<dyn Objects>,
    reporter: Arc<dyn Reporter>,
    clock: Arc<dyn Clock>,
    node: NodeContext,
    options: WorkerOptions,
}

impl Shared {
    fn now(&self) -> i64 {
        let d = self
            .clock
            .now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
    }
}

#[derive(Debug, Clone)]
enum Desired {
    Pod(Arc<Pod>),
    Removed,
}

#[derive(Debug)]
enum Entry {
    Running {
        tx: watch::Sender<Desired>,
        poke: Arc<Notify>,
        requests: Requests,
        active: Arc<AtomicBool>,
        task: JoinHandle<()>,
    },
    /// Rejected at admission: nothing runs; kept so later updates do not retry admission.
    Rejected { terminated: bool },
}

type Workers = Arc<Mutex<HashMap<String, Entry>>>;

/// The pod workers of a node.
#[derive(Debug)]
pub struct PodWorkers {
    shared: Arc<Shared>,
    workers: Workers,
    relist: JoinHandle<()>,
}

impl Drop for PodWorkers {
    fn drop(&mut self) {
        // Containers keep running: a new agent adopts them.
        self.relist.abort();
        for entry in lock(&self.workers).values() {
            if let Entry::Running { task, .. } = entry {
                task.abort();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn is_terminal_phase(pod: &Pod) -> Option<Completion> {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => Some(Completion::Succeeded),
        Some("Failed") => Some(Completion::Failed),
        _ => None,
    }
}

impl PodWorkers {
    /// Workers over `runtime`, with the pods' volumes in `volumes`, the objects they reference
    /// in `objects`, reporting to `reporter`; pods are admitted against `node`'s allocatable
    /// and `options.max_pods`. Must be called within a tokio runtime: it starts the relist.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        runtime: Arc<dyn Runtime>,
        volumes: Arc<dyn VolumeManager>,
        objects: Arc<dyn Objects>,
        reporter: Arc<dyn Reporter>,
        clock: Arc<dyn Clock>,
        node: NodeContext,
        options: WorkerOptions,
    ) -> Self {
        let shared = Arc::new(Shared {
            runtime,
            volumes,
            objects,
            reporter,
            clock,
            node,
            options,
        });
        let workers: Workers = Arc::default();
        let relist = tokio::spawn(relist(shared.clone(), workers.clone()));
        Self {
            shared,
            workers,
            relist,
        }
    }

    /// The latest version of a pod bound to this node, from the cache.
    pub fn update(&self, pod: Arc<Pod>) {
        let uid = uid_of(&pod);
        let mut workers = lock(&self.workers);
        match workers.get_mut(&uid) {
            Some(Entry::Running { tx, .. }) => {
                tx.send_replace(Desired::Pod(pod));
                return;
            }
            Some(Entry::Rejected { terminated }) => {
                if pod.metadata.deletion_timestamp.is_some() && !*terminated {
                    *terminated = true;
                    self.shared.reporter.pod_terminated(&pod);
                }
                return;
            }
            None => {}
        }
        let requests = status::pod_requests(pod.spec.as_ref().unwrap_or(&Default::default()));
        let fresh = is_terminal_phase(&pod).is_none() && pod.metadata.deletion_timestamp.is_none();
        if fresh && let Some((reason, message)) = self.misfit(&workers, requests) {
            tracing::info!(pod = ?pod.metadata.name, %reason, "pod rejected at admission");
            self.reject(&pod, &reason, &message);
            workers.insert(uid, Entry::Rejected { terminated: false });
            return;
        }
        let (tx, rx) = watch::channel(Desired::Pod(pod.clone()));
        let poke = Arc::new(Notify::new());
        let active = Arc::new(AtomicBool::new(fresh));
        let worker = Worker::new(self.shared.clone(), pod, active.clone());
        let task = tokio::spawn(worker.run(rx, poke.clone(), self.workers.clone()));
        workers.insert(
            uid,
            Entry::Running {
                tx,
                poke,
                requests,
                active,
                task,
            },
        );
    }

    /// The pod with `uid` is gone from the cache: its containers and sandbox are stopped and
    /// removed (if anything is left), and the worker forgets it.
    pub fn remove(&self, uid: &str) {
        let mut workers = lock(&self.workers);
        match workers.get(uid) {
            Some(Entry::Running { tx, .. }) => {
                tx.send_replace(Desired::Removed);
            }
            Some(Entry::Rejected { .. }) => {
                workers.remove(uid);
            }
            None => {}
        }
    }

    /// Wakes every worker now (a ConfigMap or Secret changed, the runtime came back).
    pub fn resync_all(&self) {
        for entry in lock(&self.workers).values() {
            if let Entry::Running { poke, .. } = entry {
                poke.notify_one();
            }
        }
    }

    /// The uids of the pods the workers have.
    pub fn pods(&self) -> Vec<String> {
        lock(&self.workers).keys().cloned().collect()
    }

    /// Stops and removes every sandbox of a pod not in `known` (pods deleted while the agent
    /// was down): call once the cache is in sync. Returns the uids it cleaned up.
    pub async fn remove_orphans(&self, known: &HashSet<String>) -> crate::cri::Result<Vec<String>> {
        let runtime = &self.shared.runtime;
        let mut gone = Vec::new();
        for s in runtime.list_pod_sandboxes(None).await? {
            let Some(uid) = s.labels.get(LABEL_POD_UID) else {
                continue;
            };
            if known.contains(uid) || lock(&self.workers).contains_key(uid) {
                continue;
            }
            tracing::info!(%uid, sandbox = %s.id, "removing the sandbox of a pod that is gone");
            runtime.stop_pod_sandbox(&s.id).await?;
            runtime.remove_pod_sandbox(&s.id).await?;
            if !gone.contains(uid) {
                gone.push(uid.clone());
            }
        }
        for uid in &gone {
            if let Err(e) = self.shared.volumes.teardown(uid).await {
                tracing::warn!(%uid, error = %e, "tearing down the volumes of a gone pod");
            }
        }
        Ok(gone)
    }

    fn misfit(
        &self,
        workers: &HashMap<String, Entry>,
        wants: Requests,
    ) -> Option<(String, String)> {
        let mut used = Requests::default();
        let mut pods = 0;
        for e in workers.values() {
            if let Entry::Running {
                requests, active, ..
            } = e
                && active.load(Ordering::SeqCst)
            {
                used.cpu_milli += requests.cpu_milli;
                used.memory += requests.memory;
                pods += 1;
            }
        }
        let a = self.shared.node.allocatable;
        let max_pods = self.shared.options.max_pods;
        let over = |name: &str, want: i64, used: i64, cap: i64| {
            (want > 0 && want + used > cap).then(|| {
                (
                    format!("OutOf{name}"),
                    format!(
                        "Pod was rejected: Node didn't have enough resource: {name}, requested: {want}, used: {used}, capacity: {cap}"
                    ),
                )
            })
        };
        if pods + 1 > max_pods {
            return Some((
                "OutOfpods".into(),
                format!(
                    "Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: {pods}, capacity: {}",
                    max_pods
                ),
            ));
        }
        over("cpu", wants.cpu_milli, used.cpu_milli, a.cpu_millis)
            .or_else(|| over("memory", wants.memory, used.memory, a.memory_bytes))
    }

    fn reject(&self, pod: &Pod, reason: &str, message: &str) {
        let now = self.shared.now();
        let status = PodStatus {
            phase: Some("Failed".into()),
            reason: Some(reason.into()),
            message: Some(message.into()),
            host_ip: Some(self.shared.node.node_ip.to_string()),
            host_ips: Some(vec![k8s_openapi::api::core::v1::HostIP {
                ip: self.shared.node.node_ip.to_string(),
            }]),
            start_time: pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.clone())
                .or(Some(time_of_nanos(now))),
            qos_class: Some(qos_class(pod).as_str().to_owned()),
            ..Default::default()
        };
        let reporter = &self.shared.reporter;
        reporter.event(pod, EventType::Warning, reason, None, message.into());
        reporter.pod_status(pod, status);
    }
}

/// Every relist period: what the runtime holds, by pod uid; wakes the workers of the pods
/// whose sandboxes or containers changed state.
async fn relist(shared: Arc<Shared>, workers: Workers) {
    let mut last: HashMap<String, Vec<(String, i32)>> = HashMap::new();
    let mut ticker = tokio::time::interval(shared.options.relist_period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (sandboxes, containers) = match (
            shared.runtime.list_pod_sandboxes(None).await,
            shared.runtime.list_containers(None).await,
        ) {
            (Ok(s), Ok(c)) => (s, c),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "relisting the runtime");
                continue;
            }
        };
        let mut now: HashMap<String, Vec<(String, i32)>> = HashMap::new();
        for s in &sandboxes {
            if let Some(uid) = s.labels.get(LABEL_POD_UID) {
                now.entry(uid.clone())
                    .or_default()
                    .push((s.id.clone(), s.state));
            }
        }
        for c in &containers {
            if let Some(uid) = c.labels.get(LABEL_POD_UID) {
                now.entry(uid.clone())
                    .or_default()
                    .push((c.id.clone(), c.state + 10));
            }
        }
        for v in now.values_mut() {
            v.sort();
        }
        let workers = lock(&workers);
        for (uid, entry) in workers.iter() {
            if now.get(uid) != last.get(uid)
                && let Entry::Running { poke, .. } = entry
            {
                poke.notify_one();
            }
        }
        drop(workers);
        last = now;
    }
}

/// One pod's worker.
#[derive(Debug)]
struct Worker {
    shared: Arc<Shared>,
    pod: Arc<Pod>,
    active: Arc<AtomicBool>,
    backoff: Backoff,
    image_backoff: Backoff,
    restart_counts: HashMap<String, u32>,
    last_terminated: HashMap<String, ContainerStateTerminated>,
    waiting: BTreeMap<String, Waiting>,
    probes: Arc<ProbeResults>,
    probe_tasks: HashMap<(String, ProbeKind), JoinHandle<()>>,
    backoff_events: HashSet<String>,
    start_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    done: Option<Completion>,
    volumes_down: bool,
    terminated: bool,
    last_reported: Option<PodStatus>,
    wake_at: Option<i64>,
    retry: bool,
}

impl Drop for Worker {
    fn drop(&mut self) {
        for t in self.probe_tasks.values() {
            t.abort();
        }
    }
}

fn field_path(init: bool, name: &str) -> Option<String> {
    Some(if init {
        format!("spec.initContainers{{{name}}}")
    } else {
        format!("spec.containers{{{name}}}")
    })
}

/// The grace period of a deletion: deletionGracePeriodSeconds, else the spec's, else 30 s.
pub fn grace_period(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(0)
}

/// Runs a lifecycle hook (exec, httpGet, sleep) within `budget`; `None` for a hook that
/// cannot fail (sleep) or has no handler.
async fn run_hook(
    handler: &k8s_openapi::api::core::v1::LifecycleHandler,
    target: &Target,
    budget: Duration,
) -> Option<probe::Outcome> {
    if let Some(e) = &handler.exec {
        Some(probe::exec(target, e.command.as_deref().unwrap_or_default(), budget).await)
    } else if let Some(h) = &handler.http_get {
        Some(probe::http_get(target, h, budget).await)
    } else if let Some(t) = &handler.tcp_socket {
        Some(probe::tcp(target, t.host.as_deref(), &t.port, budget).await)
    } else if let Some(s) = &handler.sleep {
        let d = Duration::from_secs(u64::try_from(s.seconds).unwrap_or(0)).min(budget);
        tokio::time::sleep(d).await;
        None
    } else {
        None
    }
}

/// Kubelet gives a container at least this long after its preStop hook.
const MIN_GRACE_AFTER_PRESTOP: i64 = 2;

/// Runs the container's preStop hook, then stops it with what is left of `grace` seconds.
async fn kill_container(
    shared: Arc<Shared>,
    pod: Arc<Pod>,
    c: ObservedContainer,
    spec: Option<Container>,
    host: IpAddr,
    grace: i64,
    message: String,
) -> crate::cri::Result<()> {
    let reporter = &shared.reporter;
    let init = spec.is_none()
        && pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|i| i.iter().any(|ic| ic.name == c.name));
    reporter.event(
        &pod,
        EventType::Normal,
        "Killing",
        field_path(init, &c.name),
        message,
    );
    let mut left = grace;
    let pre_stop = spec
        .as_ref()
        .and_then(|s| s.lifecycle.as_ref())
        .and_then(|l| l.pre_stop.clone());
    if let (Some(handler), Some(spec), RunState::Running) = (pre_stop, spec, c.state) {
        let started = tokio::time::Instant::now();
        let budget = Duration::from_secs(u64::try_from(grace).unwrap_or(0));
        let target = Target {
            runtime: shared.runtime.clone(),
            container_id: c.id.clone(),
            container: spec,
            host,
        };
        let outcome = run_hook(&handler, &target, budget).await;
        if let Some(probe::Outcome::Failure(why)) = outcome {
            reporter.event(
                &pod,
                EventType::Warning,
                "FailedPreStopHook",
                field_path(false, &c.name),
                format!("PreStopHook failed: {why}"),
            );
        }
        let spent = i64::try_from(started.elapsed().as_secs()).unwrap_or(i64::MAX);
        left = (grace - spent).max(MIN_GRACE_AFTER_PRESTOP);
    }
    match shared.runtime.stop_container(&c.id, left).await {
        Err(e) if e.code() == Some(tonic::Code::NotFound) => Ok(()),
        other => other,
    }
}

/// Why a termination step failed (it is retried).
#[derive(Debug, thiserror::Error)]
enum TerminateError {
    #[error(transparent)]
    Runtime(#[from] crate::cri::Error),
    #[error("tearing down the volumes: {0}")]
    Volumes(#[from] VolumeError),
}

fn is_not_found(e: &crate::cri::Error) -> bool {
    e.code() == Some(tonic::Code::NotFound)
}

impl Worker {
    fn new(shared: Arc<Shared>, pod: Arc<Pod>, active: Arc<AtomicBool>) -> Self {
        Self {
            shared,
            pod,
            active,
            backoff: Backoff::default(),
            image_backoff: Backoff::default(),
            restart_counts: HashMap::new(),
            last_terminated: HashMap::new(),
            waiting: BTreeMap::new(),
            probes: Arc::default(),
            probe_tasks: HashMap::new(),
            backoff_events: HashSet::new(),
            start_time: None,
            done: None,
            volumes_down: false,
            terminated: false,
            last_reported: None,
            wake_at: None,
            retry: false,
        }
    }

    fn uid(&self) -> String {
        uid_of(&self.pod)
    }

    fn spec_container(&self, name: &str) -> Option<(&Container, bool)> {
        let spec = self.pod.spec.as_ref()?;
        spec.containers
            .iter()
            .find(|c| c.name == name)
            .map(|c| (c, false))
            .or_else(|| {
                spec.init_containers
                    .iter()
                    .flatten()
                    .find(|c| c.name == name)
                    .map(|c| (c, true))
            })
    }

    async fn run(mut self, mut rx: watch::Receiver<Desired>, poke: Arc<Notify>, workers: Workers) {
        loop {
            let desired = rx.borrow_and_update().clone();
            match desired {
                Desired::Removed => {
                    self.terminate(false).await;
                    let uid = self.uid();
                    let mut map = lock(&workers);
                    // Unless the pod came back meanwhile: then it is a new start.
                    if matches!(*rx.borrow(), Desired::Removed) {
                        map.remove(&uid);
                        return;
                    }
                    drop(map);
                    self.terminated = false;
                    self.done = None;
                    self.last_reported = None;
                    self.active.store(true, Ordering::SeqCst);
                    continue;
                }
                Desired::Pod(pod) => {
                    self.pod = pod;
                    if self.pod.metadata.deletion_timestamp.is_some() {
                        if !self.terminated {
                            self.terminate(true).await;
                        }
                    } else if !self.terminated {
                        self.sync().await;
                    }
                }
            }
            let now = self.shared.now();
            let mut wait = self.shared.options.resync_period;
            if self.retry {
                wait = wait.min(self.shared.options.retry_period);
            }
            if let Some(at) = self.wake_at {
                let d = Duration::from_nanos(u64::try_from((at - now).max(0)).unwrap_or(0));
                wait = wait.min(d);
            }
            let probes = self.probes.clone();
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                () = poke.notified() => {}
                () = probes.changed() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn observe(&self) -> crate::cri::Result<Observed> {
        let runtime = &self.shared.runtime;
        let by_uid = HashMap::from([(LABEL_POD_UID.to_string(), self.uid())]);
        let sandboxes = runtime
            .list_pod_sandboxes(Some(cri::PodSandboxFilter {
                label_selector: by_uid.clone(),
                ..Default::default()
            }))
            .await?;
        let mut observed = Observed::default();
        for s in sandboxes {
            observed.sandboxes.push(ObservedSandbox {
                attempt: s.metadata.as_ref().map_or(0, |m| m.attempt),
                ready: s.state == cri::PodSandboxState::SandboxReady as i32,
                created_at: s.created_at,
                ips: Vec::new(),
                id: s.id,
            });
        }
        let latest = observed
            .latest_sandbox()
            .filter(|s| s.ready)
            .map(|s| s.id.clone());
        if let Some(id) = latest {
            match runtime.pod_sandbox_status(&id).await {
                Ok(st) => {
                    if let Some(sb) = observed.sandboxes.iter_mut().find(|s| s.id == id) {
                        let net = st.network.unwrap_or_default();
                        sb.ips = std::iter::once(net.ip)
                            .chain(net.additional_ips.into_iter().map(|i| i.ip))
                            .filter(|ip| !ip.is_empty())
                            .collect();
                        sb.ready = st.state == cri::PodSandboxState::SandboxReady as i32;
                    }
                }
                Err(e) if is_not_found(&e) => observed.sandboxes.retain(|s| s.id != id),
                Err(e) => return Err(e),
            }
        }
        let containers = runtime
            .list_containers(Some(cri::ContainerFilter {
                label_selector: by_uid,
                ..Default::default()
            }))
            .await?;
        for c in containers {
            let st = match runtime.container_status(&c.id).await {
                Ok(st) => st,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(e),
            };
            let state = match cri::ContainerState::try_from(st.state) {
                Ok(cri::ContainerState::ContainerCreated) => RunState::Created,
                Ok(cri::ContainerState::ContainerRunning) => RunState::Running,
                Ok(cri::ContainerState::ContainerExited) => RunState::Exited,
                _ => RunState::Unknown,
            };
            let name = c
                .labels
                .get(LABEL_CONTAINER_NAME)
                .cloned()
                .or_else(|| c.metadata.as_ref().map(|m| m.name.clone()))
                .unwrap_or_default();
            observed.containers.push(ObservedContainer {
                id: c.id.clone(),
                sandbox_id: c.pod_sandbox_id.clone(),
                name,
                attempt: c.metadata.as_ref().map_or(0, |m| m.attempt),
                state,
                created_at: st.created_at,
                started_at: st.started_at,
                finished_at: st.finished_at,
                exit_code: st.exit_code,
                reason: st.reason,
                message: st.message,
                image: st.image.map(|i| i.image).unwrap_or_default(),
                image_ref: st.image_ref,
                hash: c.annotations.get(ANNOTATION_CONTAINER_HASH).cloned(),
            });
        }
        Ok(observed)
    }

    /// Keeps what must survive the runtime's containers: restart counts, last terminations.
    fn remember(&mut self, observed: &Observed) {
        for c in &observed.containers {
            let n = self
                .restart_counts
                .entry(c.name.clone())
                .or_insert(c.attempt);
            *n = (*n).max(c.attempt);
        }
        let names: HashSet<&str> = observed
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        for name in names {
            if let Some(c) = observed
                .latest(name, None)
                .filter(|c| c.state == RunState::Exited)
            {
                self.last_terminated.insert(
                    name.to_string(),
                    ContainerStateTerminated {
                        exit_code: c.exit_code,
                        reason: Some(if !c.reason.is_empty() {
                            c.reason.clone()
                        } else if c.exit_code == 0 {
                            "Completed".into()
                        } else {
                            "Error".into()
                        }),
                        message: Some(c.message.clone()).filter(|m| !m.is_empty()),
                        started_at: (c.started_at > 0).then(|| time_of_nanos(c.started_at)),
                        finished_at: (c.finished_at > 0).then(|| time_of_nanos(c.finished_at)),
                        container_id: Some(format!("{}://{}", status::RUNTIME_NAME, c.id)),
                        signal: None,
                    },
                );
            }
        }
    }

    fn pod_host(&self, observed: &Observed) -> IpAddr {
        observed
            .latest_sandbox()
            .and_then(|s| s.ips.first())
            .and_then(|ip| ip.parse().ok())
            .unwrap_or(self.shared.node.node_ip)
    }

    /// Starts the probes of running containers, stops those of containers that are gone.
    fn manage_probes(&mut self, observed: &Observed) {
        let host = self.pod_host(observed);
        let now = self.shared.now();
        let mut live = HashSet::new();
        for c in observed
            .containers
            .iter()
            .filter(|c| c.state == RunState::Running)
        {
            let Some((spec, false)) = self.spec_container(&c.name) else {
                continue;
            };
            let spec = spec.clone();
            for kind in ProbeKind::ALL {
                if kind.of(&spec).is_none() {
                    continue;
                }
                let key = (c.id.clone(), kind);
                live.insert(key.clone());
                if self.probe_tasks.contains_key(&key) {
                    continue;
                }
                let running_for =
                    Duration::from_nanos(u64::try_from((now - c.started_at).max(0)).unwrap_or(0));
                let task = ProbeTask {
                    kind,
                    target: Target {
                        runtime: self.shared.runtime.clone(),
                        container_id: c.id.clone(),
                        container: spec.clone(),
                        host,
                    },
                    results: self.probes.clone(),
                    reporter: self.shared.reporter.clone(),
                    pod: self.pod.clone(),
                    running_for,
                };
                self.probe_tasks.insert(key, tokio::spawn(task.run()));
            }
        }
        let gone: Vec<_> = self
            .probe_tasks
            .keys()
            .filter(|k| !live.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(t) = self.probe_tasks.remove(&key) {
                t.abort();
            }
            self.probes.forget(&key.0);
        }
    }

    fn stop_probes(&mut self) {
        for (key, t) in self.probe_tasks.drain() {
            t.abort();
            self.probes.forget(&key.0);
        }
    }

    async fn sync(&mut self) {
        self.retry = false;
        self.wake_at = None;
        let now = self.shared.now();
        if self.start_time.is_none() {
            self.start_time = self
                .pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.clone())
                .or_else(|| Some(time_of_nanos(now)));
        }
        let observed = match self.observe().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(pod = ?self.pod.metadata.name, error = %e, "observing the pod's containers");
                self.retry = true;
                return;
            }
        };
        self.remember(&observed);
        if self.done.is_none() {
            self.done = is_terminal_phase(&self.pod);
        }
        if let Some(done) = self.done {
            self.finish(done, &observed).await;
            return;
        }
        self.manage_probes(&observed);
        let mut unhealthy = HashMap::new();
        for c in observed
            .containers
            .iter()
            .filter(|c| c.state == RunState::Running)
        {
            if let Some(why) = self.probes.unhealthy(&c.id, &c.name) {
                unhealthy.insert(c.id.clone(), why);
            }
        }
        let plan = plan::plan(&PlanInput {
            pod: &self.pod,
            observed: &observed,
            backoff: &self.backoff,
            unhealthy: &unhealthy,
            restart_counts: &self.restart_counts,
            now,
        });
        tracing::debug!(pod = ?self.pod.metadata.name, ?plan, "sync");
        let acted = self.execute(&plan, &observed).await;
        let observed = if acted {
            match self.observe().await {
                Ok(o) => o,
                Err(_) => {
                    self.retry = true;
                    observed
                }
            }
        } else {
            observed
        };
        self.remember(&observed);
        self.manage_probes(&observed);
        if let Some(done) = plan.done {
            self.done = Some(done);
            self.finish(done, &observed).await;
            return;
        }
        self.report(&observed, None);
    }

    /// The pod ran to its end: nothing is restarted, the sandbox is stopped, the volumes
    /// go; the containers and their logs stay (their statuses are the pod's, `kubectl logs`
    /// still reads them) until the pod is deleted.
    async fn finish(&mut self, done: Completion, observed: &Observed) {
        self.active.store(false, Ordering::SeqCst);
        self.stop_probes();
        let mut observed = observed.clone();
        let mut changed = false;
        for c in observed.containers.iter().filter(|c| c.is_live()) {
            let spec = self.spec_container(&c.name).map(|(c, _)| c.clone());
            let r = kill_container(
                self.shared.clone(),
                self.pod.clone(),
                c.clone(),
                spec,
                self.shared.node.node_ip,
                grace_period(&self.pod),
                format!("Stopping container {}", c.name),
            )
            .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "stopping a container of a finished pod");
                self.retry = true;
            }
            changed = true;
        }
        for s in observed.sandboxes.iter().filter(|s| s.ready) {
            if let Err(e) = self.shared.runtime.stop_pod_sandbox(&s.id).await {
                tracing::warn!(error = %e, "stopping the sandbox of a finished pod");
                self.retry = true;
            }
            changed = true;
        }
        if changed && let Ok(o) = self.observe().await {
            observed = o;
        }
        if !self.volumes_down {
            match self.shared.volumes.release(&self.uid()).await {
                Ok(()) => self.volumes_down = true,
                Err(e) => {
                    tracing::warn!(error = %e, "tearing down the volumes of a finished pod");
                    self.retry = true;
                }
            }
        }
        self.waiting.clear();
        self.report(&observed, Some(done));
    }

    /// Carries out `plan`; whether anything was done to the runtime.
    async fn execute(&mut self, plan: &plan::Plan, observed: &Observed) -> bool {
        let mut acted = false;
        let now = self.shared.now();
        let grace = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        let host = self.pod_host(observed);
        // Back-off waits, with one BackOff event per exited container.
        let mut waiting = BTreeMap::new();
        for (name, message) in &plan.backing_off {
            waiting.insert(
                name.clone(),
                Waiting::new("CrashLoopBackOff", message.clone()),
            );
            if let Some(c) = observed.latest(name, None)
                && self.backoff_events.insert(c.id.clone())
            {
                let init = self.spec_container(name).is_some_and(|(_, i)| i);
                self.shared.reporter.event(
                    &self.pod,
                    EventType::Warning,
                    "BackOff",
                    field_path(init, name),
                    format!(
                        "Back-off restarting failed container {name} in pod {}_{}({})",
                        self.pod.metadata.name.as_deref().unwrap_or_default(),
                        self.pod.metadata.namespace.as_deref().unwrap_or_default(),
                        self.uid()
                    ),
                );
            }
        }
        if let Some(at) = plan.wake_at {
            self.wake_at = Some(at);
        }

        let mut kills: Vec<Kill> = plan.kill.clone();
        if plan.kill_pod {
            for c in observed.containers.iter().filter(|c| c.is_live()) {
                if !kills.iter().any(|k| k.id == c.id) {
                    kills.push(Kill {
                        id: c.id.clone(),
                        name: c.name.clone(),
                        message: format!("Stopping container {}", c.name),
                    });
                }
            }
        }
        if !kills.is_empty() {
            acted = true;
            let mut set = JoinSet::new();
            for k in kills {
                let Some(c) = observed.containers.iter().find(|c| c.id == k.id).cloned() else {
                    continue;
                };
                let spec = self.spec_container(&c.name).map(|(s, _)| s.clone());
                // A probe may shorten the grace of the kill it causes.
                let failed = [ProbeKind::Liveness, ProbeKind::Startup]
                    .into_iter()
                    .find(|kind| self.probes.get(&c.id, *kind) == Some(false));
                let grace = failed
                    .zip(spec.as_ref())
                    .and_then(|(kind, s)| kind.of(s))
                    .and_then(|p| p.termination_grace_period_seconds)
                    .unwrap_or(grace);
                set.spawn(kill_container(
                    self.shared.clone(),
                    self.pod.clone(),
                    c,
                    spec,
                    host,
                    grace,
                    k.message,
                ));
            }
            while let Some(r) = set.join_next().await {
                if let Ok(Err(e)) = r {
                    tracing::warn!(error = %e, "stopping a container");
                    self.retry = true;
                }
            }
        }
        if plan.kill_pod {
            for s in &observed.sandboxes {
                let rt = &self.shared.runtime;
                let r = match rt.stop_pod_sandbox(&s.id).await {
                    Ok(()) if plan.create_sandbox.is_some() => rt.remove_pod_sandbox(&s.id).await,
                    other => other,
                };
                if let Err(e) = r {
                    tracing::warn!(error = %e, "stopping an old sandbox");
                    self.retry = true;
                }
            }
            acted = true;
        }
        if plan.done.is_some() {
            self.waiting = waiting;
            return acted;
        }

        for id in &plan.remove {
            if self.shared.runtime.remove_container(id).await.is_ok() {
                acted = true;
            }
        }

        // Volumes first: no sandbox or container before they are there. Set up on every
        // sync, so configMap/secret/downwardAPI contents follow their objects while the
        // containers run.
        let idle = plan.start.is_empty() && plan.create_sandbox.is_none();
        let volumes = match self
            .shared
            .volumes
            .setup(&self.pod, &*self.shared.objects)
            .await
        {
            Ok(v) => {
                self.volumes_down = false;
                v
            }
            Err(e) if idle => {
                // What runs keeps running on the volumes it has.
                tracing::warn!(pod = ?self.pod.metadata.name, error = %e, "refreshing volumes");
                self.waiting = waiting;
                return acted;
            }
            Err(e) => {
                self.retry = true;
                let message = e.to_string();
                let reason = match e {
                    VolumeError::Missing { .. } | VolumeError::MissingKey { .. } => {
                        "CreateContainerConfigError"
                    }
                    _ => "ContainerCreating",
                };
                self.shared.reporter.event(
                    &self.pod,
                    EventType::Warning,
                    "FailedMount",
                    None,
                    format!("MountVolume.SetUp failed: {message}"),
                );
                for s in &plan.start {
                    waiting.insert(s.name.clone(), Waiting::new(reason, message.clone()));
                }
                self.waiting = waiting;
                return acted;
            }
        };
        if idle {
            self.waiting = waiting;
            return acted;
        }

        let sandbox_id;
        let mut pod_ip: Option<String> = observed
            .latest_sandbox()
            .filter(|s| s.ready)
            .and_then(|s| s.ips.first().cloned());
        let attempt = plan.create_sandbox.unwrap_or_else(|| {
            observed
                .sandboxes
                .iter()
                .find(|s| Some(&s.id) == plan.sandbox.as_ref())
                .map_or(0, |s| s.attempt)
        });
        let sandbox_cfg = match sandbox_config(&self.pod, &self.shared.node, attempt) {
            Ok(mut cfg) => {
                self.label_sandbox(&mut cfg);
                cfg
            }
            Err(e) => {
                self.retry = true;
                self.shared.reporter.event(
                    &self.pod,
                    EventType::Warning,
                    "FailedCreatePodSandBox",
                    None,
                    format!("Failed to create pod sandbox: {e}"),
                );
                self.waiting = waiting;
                return acted;
            }
        };
        if plan.create_sandbox.is_some() {
            acted = true;
            let handler = self.shared.options.runtime_handler.clone();
            match self
                .shared
                .runtime
                .run_pod_sandbox(sandbox_cfg.clone(), &handler)
                .await
            {
                Ok(id) => {
                    if let Ok(st) = self.shared.runtime.pod_sandbox_status(&id).await {
                        pod_ip = st.network.map(|n| n.ip).filter(|ip| !ip.is_empty());
                    }
                    sandbox_id = id;
                }
                Err(e) => {
                    self.retry = true;
                    self.shared.reporter.event(
                        &self.pod,
                        EventType::Warning,
                        "FailedCreatePodSandBox",
                        None,
                        format!("Failed to create pod sandbox: {e}"),
                    );
                    self.waiting = waiting;
                    return acted;
                }
            }
        } else if let Some(id) = &plan.sandbox {
            sandbox_id = id.clone();
        } else {
            self.waiting = waiting;
            return acted;
        }
        if self.pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            pod_ip = Some(self.shared.node.node_ip.to_string());
        }

        for start in &plan.start {
            let Some((spec, _)) = self.spec_container(&start.name) else {
                continue;
            };
            let spec = spec.clone();
            acted = true;
            if start.after_exit {
                self.backoff.next(&start.name, now);
            }
            if let Err(w) = self
                .start_container(
                    start,
                    &spec,
                    &sandbox_id,
                    &sandbox_cfg,
                    &volumes,
                    pod_ip.as_deref(),
                )
                .await
            {
                self.retry = true;
                waiting.insert(start.name.clone(), w);
            }
        }
        self.waiting = waiting;
        acted
    }

    fn label_sandbox(&self, cfg: &mut cri::PodSandboxConfig) {
        let meta = &self.pod.metadata;
        cfg.labels.insert(LABEL_POD_UID.into(), self.uid());
        cfg.labels
            .insert(LABEL_POD_NAME.into(), meta.name.clone().unwrap_or_default());
        cfg.labels.insert(
            LABEL_POD_NAMESPACE.into(),
            meta.namespace.clone().unwrap_or_default(),
        );
        // A host-network pod must get the node's network even from a configuration that
        // leaves the namespaces unsaid (its hostname is the node's then: runc refuses one).
        if self.pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            let linux = cfg.linux.get_or_insert_with(Default::default);
            let sc = linux.security_context.get_or_insert_with(Default::default);
            if sc.namespace_options.is_none() {
                sc.namespace_options = Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    pid: cri::NamespaceMode::Pod as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                });
                cfg.hostname.clear();
            }
        }
    }

    /// Image check, configuration, CreateContainer, StartContainer; the waiting state when
    /// one of them fails.
    #[allow(clippy::too_many_arguments)]
    async fn start_container(
        &mut self,
        start: &plan::Start,
        spec: &Container,
        sandbox_id: &str,
        sandbox_cfg: &cri::PodSandboxConfig,
        volumes: &super::PreparedVolumes,
        pod_ip: Option<&str>,
    ) -> Result<(), Waiting> {
        let shared = self.shared.clone();
        let reporter = &shared.reporter;
        let pod = self.pod.clone();
        let fp = field_path(start.init, &start.name);
        let image = spec.image.clone().unwrap_or_default();
        let now = shared.now();
        let policy = spec.image_pull_policy.as_deref().unwrap_or(
            if image.ends_with(":latest")
                || !image.rsplit('/').next().unwrap_or("").contains([':', '@'])
            {
                "Always"
            } else {
                "IfNotPresent"
            },
        );

        // Images: this node never pulls; an image is there or it is not.
        if self.image_backoff.in_backoff_since_update(&image, now) {
            let message = format!("Back-off pulling image \"{image}\"");
            reporter.event(&pod, EventType::Normal, "BackOff", fp, message.clone());
            return Err(Waiting::new("ImagePullBackOff", message));
        }
        let present = match shared.runtime.image_status(&image).await {
            Ok(i) => i.is_some(),
            Err(e) => {
                return Err(Waiting::new(
                    "ErrImagePull",
                    format!("checking image \"{image}\": {e}"),
                ));
            }
        };
        if !present {
            let (reason, message) = if policy == "Never" {
                (
                    "ErrImageNeverPull",
                    format!("Container image \"{image}\" is not present with pull policy of Never"),
                )
            } else {
                (
                    "ErrImagePull",
                    format!(
                        "Failed to pull image \"{image}\": the image is not present on this node and this node does not pull from registries (pull policy {policy}); import it into the agent's images directory"
                    ),
                )
            };
            self.image_backoff.next(&image, now);
            reporter.event(
                &pod,
                EventType::Warning,
                "Failed",
                fp.clone(),
                message.clone(),
            );
            reporter.event(
                &pod,
                EventType::Warning,
                "Failed",
                fp,
                format!("Error: {reason}"),
            );
            return Err(Waiting::new(reason, message));
        }
        self.image_backoff.reset(&image);

        let mut config = match container_config(
            &pod,
            spec,
            start.restart_count,
            volumes,
            &*shared.objects,
            &shared.node,
            pod_ip,
        ) {
            Ok(c) => c,
            Err(e) => {
                let message = e.to_string();
                reporter.event(
                    &pod,
                    EventType::Warning,
                    "Failed",
                    fp,
                    format!("Error: {message}"),
                );
                return Err(Waiting::new("CreateContainerConfigError", message));
            }
        };
        reporter.event(
            &pod,
            EventType::Normal,
            "Pulled",
            fp.clone(),
            format!("Container image \"{image}\" already present on machine"),
        );
        let meta = &pod.metadata;
        for (k, v) in [
            (LABEL_POD_UID, self.uid()),
            (LABEL_POD_NAME, meta.name.clone().unwrap_or_default()),
            (
                LABEL_POD_NAMESPACE,
                meta.namespace.clone().unwrap_or_default(),
            ),
            (LABEL_CONTAINER_NAME, spec.name.clone()),
        ] {
            config.labels.insert(k.into(), v);
        }
        config
            .annotations
            .insert(ANNOTATION_CONTAINER_HASH.into(), plan::container_hash(spec));
        config.annotations.insert(
            super::config::ANNOTATION_RESTART_COUNT.into(),
            start.restart_count.to_string(),
        );
        if start.init {
            config
                .annotations
                .insert(ANNOTATION_INIT.into(), "true".into());
        }
        if let Some(m) = config.metadata.as_mut() {
            m.attempt = start.restart_count;
        }
        let id = match shared
            .runtime
            .create_container(sandbox_id, config, sandbox_cfg.clone())
            .await
        {
            Ok(id) => id,
            Err(e) => {
                let message = e.to_string();
                reporter.event(
                    &pod,
                    EventType::Warning,
                    "Failed",
                    fp,
                    format!("Error: {message}"),
                );
                return Err(Waiting::new("CreateContainerError", message));
            }
        };
        reporter.event(
            &pod,
            EventType::Normal,
            "Created",
            fp.clone(),
            format!("Created container: {}", spec.name),
        );
        if let Err(e) = shared.runtime.start_container(&id).await {
            let message = e.to_string();
            reporter.event(
                &pod,
                EventType::Warning,
                "Failed",
                fp,
                format!("Error: {message}"),
            );
            return Err(Waiting::new("RunContainerError", message));
        }
        reporter.event(
            &pod,
            EventType::Normal,
            "Started",
            fp.clone(),
            format!("Started container {}", spec.name),
        );
        // postStart runs before anything else happens to the pod, as kubelet's; when it
        // fails, the container is killed and restarts by its restartPolicy.
        if let Some(handler) = spec.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            let grace = pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30);
            let target = Target {
                runtime: shared.runtime.clone(),
                container_id: id.clone(),
                container: spec.clone(),
                host: pod_ip
                    .and_then(|ip| ip.parse().ok())
                    .unwrap_or(shared.node.node_ip),
            };
            let budget = Duration::from_secs(u64::try_from(grace.max(1)).unwrap_or(30));
            if let Some(probe::Outcome::Failure(why)) = run_hook(handler, &target, budget).await {
                let message = format!("PostStartHook failed: {why}");
                reporter.event(
                    &pod,
                    EventType::Warning,
                    "FailedPostStartHook",
                    fp,
                    message.clone(),
                );
                let r = shared.runtime.stop_container(&id, grace).await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "stopping a container whose postStart failed");
                }
                return Err(Waiting::new("PostStartHookError", message));
            }
        }
        Ok(())
    }

    fn report(&mut self, observed: &Observed, done: Option<Completion>) {
        let spec_of = |name: &str| self.spec_container(name).map(|(c, _)| c.clone());
        let mut probes = HashMap::new();
        for c in observed.containers.iter().filter(|c| c.is_live()) {
            if let Some(spec) = spec_of(&c.name) {
                let started = self.probes.started(&c.id, &spec);
                let ready = self.probes.ready(&c.id, &spec);
                probes.insert(c.id.clone(), (started, ready));
            }
        }
        // Waiting reasons only for containers not running now.
        let waiting: BTreeMap<String, Waiting> = self
            .waiting
            .iter()
            .filter(|(name, _)| observed.latest(name, None).is_none_or(|c| !c.is_live()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut status = status::pod_status(&StatusInput {
            pod: &self.pod,
            observed,
            waiting: &waiting,
            probes: &probes,
            last_terminated: &self.last_terminated,
            restart_counts: &self.restart_counts,
            node_ip: self.shared.node.node_ip,
            start_time: self.start_time.clone(),
            done,
            now: self.shared.now(),
        });
        // Keep the transition times of the conditions we reported last.
        if let (Some(prev), Some(conds)) = (
            self.last_reported
                .as_ref()
                .and_then(|s| s.conditions.as_ref()),
            status.conditions.as_mut(),
        ) {
            for c in conds.iter_mut() {
                if let Some(p) = prev
                    .iter()
                    .find(|p| p.type_ == c.type_ && p.status == c.status)
                {
                    c.last_transition_time = p.last_transition_time.clone();
                }
            }
        }
        // A finished pod keeps the addresses it had (kubelet's too): its sandbox is gone.
        if done.is_some() && status.pod_ip.is_none() {
            let before = self.last_reported.as_ref().or(self.pod.status.as_ref());
            if let Some(before) = before {
                status.pod_ip = before.pod_ip.clone();
                status.pod_ips = before.pod_ips.clone();
            }
        }
        if self.last_reported.as_ref() != Some(&status) {
            self.shared.reporter.pod_status(&self.pod, status.clone());
            self.last_reported = Some(status);
        }
    }

    /// Stops everything of the pod (preStop, grace), removes its sandboxes and volumes;
    /// with `report`, reports the final status and that the pod may go from the API.
    async fn terminate(&mut self, report: bool) {
        self.active.store(false, Ordering::SeqCst);
        self.stop_probes();
        let grace = grace_period(&self.pod);
        let mut delay = Duration::from_secs(1);
        loop {
            match self.try_terminate(grace, report).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(pod = ?self.pod.metadata.name, error = %e, "terminating the pod; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
        self.terminated = true;
    }

    async fn try_terminate(&mut self, grace: i64, report: bool) -> Result<(), TerminateError> {
        let observed = self.observe().await?;
        self.remember(&observed);
        let host = self.pod_host(&observed);
        let mut set = JoinSet::new();
        for c in observed.containers.iter().filter(|c| c.is_live()) {
            let spec = self.spec_container(&c.name).map(|(s, _)| s.clone());
            set.spawn(kill_container(
                self.shared.clone(),
                self.pod.clone(),
                c.clone(),
                spec,
                host,
                grace,
                format!("Stopping container {}", c.name),
            ));
        }
        let mut first_err = None;
        while let Some(r) = set.join_next().await {
            if let Ok(Err(e)) = r {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e.into());
        }
        for s in &observed.sandboxes {
            match self.shared.runtime.stop_pod_sandbox(&s.id).await {
                Err(e) if !is_not_found(&e) => return Err(e.into()),
                _ => {}
            }
        }
        let stopped = self.observe().await?;
        self.remember(&stopped);
        for s in &stopped.sandboxes {
            match self.shared.runtime.remove_pod_sandbox(&s.id).await {
                Err(e) if !is_not_found(&e) => return Err(e.into()),
                _ => {}
            }
        }
        // Containers outside any sandbox we know of (none, normally).
        for c in &stopped.containers {
            match self.shared.runtime.remove_container(&c.id).await {
                Err(e) if !is_not_found(&e) => return Err(e.into()),
                _ => {}
            }
        }
        self.shared.volumes.teardown(&self.uid()).await?;
        if report {
            let done = self.done.or_else(|| {
                let spec = self.pod.spec.clone().unwrap_or_default();
                let all_ok = spec.containers.iter().all(|c| {
                    stopped
                        .latest(&c.name, None)
                        .is_some_and(|o| o.state == RunState::Exited && o.exit_code == 0)
                });
                Some(if all_ok {
                    Completion::Succeeded
                } else {
                    Completion::Failed
                })
            });
            self.waiting.clear();
            let mut final_view = stopped.clone();
            for s in &mut final_view.sandboxes {
                s.ready = false;
            }
            self.report(&final_view, done);
            self.shared.reporter.pod_terminated(&self.pod);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
