//! Test doubles of the pod workers' side effects: a recording [`FakeRuntime`] whose containers
//! exit when a test says (on tokio's paused clock), [`FakeVolumes`], [`FakeObjects`], a
//! [`RecordingReporter`] and [`TokioClock`], a wall clock that follows tokio's time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodStatus, Secret};

use super::{EventType, Objects, PreparedVolumes, Reporter, VolumeError, VolumeManager};
use crate::cri::{Error, Result, Runtime};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A wall clock that moves with tokio's (paused) time, from 2026-12-07T12:00:00Z.
#[derive(Debug)]
pub struct TokioClock {
    base: SystemTime,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock standing at its base time now.
    pub fn new() -> Self {
        Self {
            base: UNIX_EPOCH + Duration::from_secs(1_796_644_800),
            start: tokio::time::Instant::now(),
        }
    }
}

impl edgesite_clock::Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.base + (tokio::time::Instant::now() - self.start)
    }
    fn instant(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// One call the workers made, in order, runtime and volumes alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// RunPodSandbox with the sandbox's attempt.
    RunPodSandbox(u32),
    /// StopPodSandbox.
    StopPodSandbox(String),
    /// RemovePodSandbox.
    RemovePodSandbox(String),
    /// CreateContainer of a container name and attempt.
    CreateContainer(String, u32),
    /// StartContainer of a container name.
    StartContainer(String),
    /// StopContainer of a container name with its timeout.
    StopContainer(String, i64),
    /// RemoveContainer of a container name.
    RemoveContainer(String),
    /// ExecSync in a container name.
    ExecSync(String, Vec<String>),
    /// VolumeManager::setup.
    SetupVolumes,
    /// VolumeManager::teardown.
    TeardownVolumes,
    /// The volumes of a finished pod were released (logs kept).
    ReleaseVolumes,
}

/// The shared call log.
pub type Log = Arc<Mutex<Vec<(Duration, Call)>>>;

/// How the containers of one name behave once started.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Exit after running this long (`None`: run until stopped).
    pub run_for: Option<Duration>,
    /// The exit code then.
    pub exit_code: i32,
    /// StartContainer fails with this message (the container is marked exited 128, as
    /// containerd does).
    pub start_error: Option<String>,
}

#[derive(Debug, Clone)]
struct FakeSandbox {
    config: cri::PodSandboxConfig,
    ready: bool,
    created_at: i64,
}

#[derive(Debug, Clone)]
struct FakeContainer {
    sandbox: String,
    config: cri::ContainerConfig,
    state: cri::ContainerState,
    created_at: i64,
    started_at: i64,
    finished_at: i64,
    exit_code: i32,
    reason: String,
    message: String,
    exits_at: Option<(i64, i32)>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    sandboxes: BTreeMap<String, FakeSandbox>,
    containers: BTreeMap<String, FakeContainer>,
    images: HashSet<String>,
    behaviour: HashMap<String, Behaviour>,
    exec: HashMap<String, i32>,
    down: bool,
}

/// A runtime that records calls and runs nothing.
#[derive(Debug)]
pub struct FakeRuntime {
    clock: Arc<TokioClock>,
    state: Mutex<State>,
    log: Log,
}

fn nanos(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()).unwrap_or(0)
}

fn not_found(call: &'static str) -> Error {
    Error::Call {
        call,
        socket: "fake".into(),
        code: tonic::Code::NotFound,
        message: "not found".into(),
    }
}

fn matches(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl FakeRuntime {
    /// A runtime with `images` present, logging to `log`.
    pub fn new(clock: Arc<TokioClock>, log: Log, images: &[&str]) -> Self {
        let state = State {
            images: images.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        Self {
            clock,
            state: Mutex::new(state),
            log,
        }
    }

    fn now(&self) -> i64 {
        nanos(edgesite_clock::Clock::now(&*self.clock))
    }

    fn record(&self, call: Call) {
        let at = tokio::time::Instant::now() - self.clock.start;
        lock(&self.log).push((at, call));
    }

    /// Containers of `name` behave so from their next start.
    pub fn behave(&self, name: &str, b: Behaviour) {
        lock(&self.state).behaviour.insert(name.into(), b);
    }

    /// Exec of `cmd` (its words joined by spaces) in containers of `name` exits with `code`
    /// from now on (0 when never said).
    pub fn exec_exits(&self, name: &str, cmd: &str, code: i32) {
        lock(&self.state).exec.insert(format!("{name} {cmd}"), code);
    }

    /// Adds an image.
    pub fn add_image(&self, image: &str) {
        lock(&self.state).images.insert(image.into());
    }

    /// Every call fails while down.
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
    }

    /// Makes the running container `name` exit with `code` now.
    pub fn exit(&self, name: &str, code: i32) {
        let now = self.now();
        let mut st = lock(&self.state);
        for c in st.containers.values_mut() {
            if c.state == cri::ContainerState::ContainerRunning && cname(&c.config) == name {
                c.exits_at = Some((now, code));
            }
        }
    }

    /// Creates a ready sandbox and running containers behind the workers' back (what a
    /// previous agent left), labelled as the workers label theirs.
    pub fn preexisting(
        &self,
        sandbox: cri::PodSandboxConfig,
        containers: Vec<cri::ContainerConfig>,
    ) {
        let now = self.now();
        let mut st = lock(&self.state);
        st.next += 1;
        let sid = format!("sb{}", st.next);
        st.sandboxes.insert(
            sid.clone(),
            FakeSandbox {
                config: sandbox,
                ready: true,
                created_at: now,
            },
        );
        for config in containers {
            st.next += 1;
            let id = format!("c{}", st.next);
            st.containers.insert(
                id,
                FakeContainer {
                    sandbox: sid.clone(),
                    config,
                    state: cri::ContainerState::ContainerRunning,
                    created_at: now,
                    started_at: now,
                    finished_at: 0,
                    exit_code: 0,
                    reason: String::new(),
                    message: String::new(),
                    exits_at: None,
                },
            );
        }
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.log).iter().map(|(_, c)| c.clone()).collect()
    }

    /// The calls so far with when they were made.
    pub fn timed_calls(&self) -> Vec<(Duration, Call)> {
        lock(&self.log).clone()
    }

    /// How many containers and sandboxes exist.
    pub fn counts(&self) -> (usize, usize) {
        let st = lock(&self.state);
        (st.sandboxes.len(), st.containers.len())
    }

    fn refresh(&self, st: &mut State) {
        for c in st.containers.values_mut() {
            if c.state == cri::ContainerState::ContainerRunning
                && let Some((at, code)) = c.exits_at
                && at <= self.now()
            {
                c.state = cri::ContainerState::ContainerExited;
                c.finished_at = at;
                c.exit_code = code;
                c.reason = if code == 0 { "Completed" } else { "Error" }.into();
            }
        }
    }

    fn check(&self, st: &State, call: &'static str) -> Result<()> {
        if st.down {
            return Err(Error::Call {
                call,
                socket: "fake".into(),
                code: tonic::Code::Unavailable,
                message: "runtime down".into(),
            });
        }
        Ok(())
    }
}

fn cname(c: &cri::ContainerConfig) -> String {
    c.metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    async fn version(&self) -> Result<cri::VersionResponse> {
        Ok(cri::VersionResponse {
            runtime_name: "fake".into(),
            ..Default::default()
        })
    }

    async fn run_pod_sandbox(&self, config: cri::PodSandboxConfig, _: &str) -> Result<String> {
        let now = self.now();
        let mut st = lock(&self.state);
        self.check(&st, "RunPodSandbox")?;
        st.next += 1;
        let id = format!("sb{}", st.next);
        let attempt = config.metadata.as_ref().map_or(0, |m| m.attempt);
        st.sandboxes.insert(
            id.clone(),
            FakeSandbox {
                config,
                ready: true,
                created_at: now,
            },
        );
        drop(st);
        self.record(Call::RunPodSandbox(attempt));
        Ok(id)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let now = self.now();
        let mut st = lock(&self.state);
        self.check(&st, "StopPodSandbox")?;
        self.refresh(&mut st);
        if let Some(s) = st.sandboxes.get_mut(id) {
            s.ready = false;
        }
        for c in st.containers.values_mut().filter(|c| c.sandbox == id) {
            if c.state == cri::ContainerState::ContainerRunning {
                c.state = cri::ContainerState::ContainerExited;
                c.finished_at = now;
                c.exit_code = 137;
                c.reason = "Error".into();
            }
        }
        drop(st);
        self.record(Call::StopPodSandbox(id.into()));
        Ok(())
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut st = lock(&self.state);
        self.check(&st, "RemovePodSandbox")?;
        st.sandboxes.remove(id);
        st.containers.retain(|_, c| c.sandbox != id);
        drop(st);
        self.record(Call::RemovePodSandbox(id.into()));
        Ok(())
    }

    async fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus> {
        let st = lock(&self.state);
        self.check(&st, "PodSandboxStatus")?;
        let s = st
            .sandboxes
            .get(id)
            .ok_or_else(|| not_found("PodSandboxStatus"))?;
        Ok(cri::PodSandboxStatus {
            id: id.into(),
            metadata: s.config.metadata.clone(),
            state: if s.ready {
                cri::PodSandboxState::SandboxReady
            } else {
                cri::PodSandboxState::SandboxNotready
            } as i32,
            created_at: s.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: "10.42.0.7".into(),
                additional_ips: Vec::new(),
            }),
            labels: s.config.labels.clone(),
            ..Default::default()
        })
    }

    async fn list_pod_sandboxes(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>> {
        let st = lock(&self.state);
        self.check(&st, "ListPodSandbox")?;
        let f = filter.unwrap_or_default();
        Ok(st
            .sandboxes
            .iter()
            .filter(|(_, s)| matches(&s.config.labels, &f.label_selector))
            .map(|(id, s)| cri::PodSandbox {
                id: id.clone(),
                metadata: s.config.metadata.clone(),
                state: if s.ready {
                    cri::PodSandboxState::SandboxReady
                } else {
                    cri::PodSandboxState::SandboxNotready
                } as i32,
                created_at: s.created_at,
                labels: s.config.labels.clone(),
                ..Default::default()
            })
            .collect())
    }

    async fn create_container(
        &self,
        sandbox: &str,
        config: cri::ContainerConfig,
        _: cri::PodSandboxConfig,
    ) -> Result<String> {
        let now = self.now();
        let mut st = lock(&self.state);
        self.check(&st, "CreateContainer")?;
        if !st.sandboxes.contains_key(sandbox) {
            return Err(not_found("CreateContainer"));
        }
        st.next += 1;
        let id = format!("c{}", st.next);
        let (name, attempt) = config
            .metadata
            .as_ref()
            .map_or((String::new(), 0), |m| (m.name.clone(), m.attempt));
        st.containers.insert(
            id.clone(),
            FakeContainer {
                sandbox: sandbox.into(),
                config,
                state: cri::ContainerState::ContainerCreated,
                created_at: now,
                started_at: 0,
                finished_at: 0,
                exit_code: 0,
                reason: String::new(),
                message: String::new(),
                exits_at: None,
            },
        );
        drop(st);
        self.record(Call::CreateContainer(name, attempt));
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        let now = self.now();
        let mut st = lock(&self.state);
        self.check(&st, "StartContainer")?;
        let name = st
            .containers
            .get(id)
            .map(|c| cname(&c.config))
            .ok_or_else(|| not_found("StartContainer"))?;
        let b = st.behaviour.get(&name).cloned().unwrap_or_default();
        let c = st
            .containers
            .get_mut(id)
            .ok_or_else(|| not_found("StartContainer"))?;
        if let Some(msg) = b.start_error {
            c.state = cri::ContainerState::ContainerExited;
            c.exit_code = 128;
            c.finished_at = now;
            c.reason = "StartError".into();
            c.message = msg.clone();
            drop(st);
            self.record(Call::StartContainer(name));
            return Err(Error::Call {
                call: "StartContainer",
                socket: "fake".into(),
                code: tonic::Code::Unknown,
                message: msg,
            });
        }
        c.state = cri::ContainerState::ContainerRunning;
        c.started_at = now;
        c.exits_at = b
            .run_for
            .map(|d| (now + i64::try_from(d.as_nanos()).unwrap_or(0), b.exit_code));
        drop(st);
        self.record(Call::StartContainer(name));
        Ok(())
    }

    async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let now = self.now();
        let mut st = lock(&self.state);
        self.check(&st, "StopContainer")?;
        self.refresh(&mut st);
        let c = st
            .containers
            .get_mut(id)
            .ok_or_else(|| not_found("StopContainer"))?;
        let name = cname(&c.config);
        if c.state == cri::ContainerState::ContainerRunning {
            c.state = cri::ContainerState::ContainerExited;
            c.finished_at = now;
            c.exit_code = 143;
            c.reason = "Error".into();
        }
        drop(st);
        self.record(Call::StopContainer(name, timeout));
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        let mut st = lock(&self.state);
        self.check(&st, "RemoveContainer")?;
        let name = st.containers.remove(id).map(|c| cname(&c.config));
        drop(st);
        if let Some(name) = name {
            self.record(Call::RemoveContainer(name));
        }
        Ok(())
    }

    async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus> {
        let mut st = lock(&self.state);
        self.check(&st, "ContainerStatus")?;
        self.refresh(&mut st);
        let c = st
            .containers
            .get(id)
            .ok_or_else(|| not_found("ContainerStatus"))?;
        Ok(cri::ContainerStatus {
            id: id.into(),
            metadata: c.config.metadata.clone(),
            state: c.state as i32,
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            exit_code: c.exit_code,
            image: c.config.image.clone(),
            image_ref: "sha256:feed".into(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            ..Default::default()
        })
    }

    async fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>> {
        let mut st = lock(&self.state);
        self.check(&st, "ListContainers")?;
        self.refresh(&mut st);
        let f = filter.unwrap_or_default();
        Ok(st
            .containers
            .iter()
            .filter(|(_, c)| matches(&c.config.labels, &f.label_selector))
            .map(|(id, c)| cri::Container {
                id: id.clone(),
                pod_sandbox_id: c.sandbox.clone(),
                metadata: c.config.metadata.clone(),
                image: c.config.image.clone(),
                state: c.state as i32,
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                ..Default::default()
            })
            .collect())
    }

    async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        _: Duration,
    ) -> Result<cri::ExecSyncResponse> {
        let mut st = lock(&self.state);
        self.check(&st, "ExecSync")?;
        self.refresh(&mut st);
        let c = st.containers.get(id).ok_or_else(|| not_found("ExecSync"))?;
        let name = cname(&c.config);
        let code = st
            .exec
            .get(&format!("{name} {}", cmd.join(" ")))
            .copied()
            .unwrap_or(0);
        drop(st);
        self.record(Call::ExecSync(name, cmd));
        Ok(cri::ExecSyncResponse {
            stdout: if code == 0 {
                Vec::new()
            } else {
                b"unhealthy".to_vec()
            },
            stderr: Vec::new(),
            exit_code: code,
        })
    }

    async fn image_status(&self, image: &str) -> Result<Option<cri::Image>> {
        let st = lock(&self.state);
        self.check(&st, "ImageStatus")?;
        Ok(st.images.contains(image).then(|| cri::Image {
            id: "sha256:feed".into(),
            repo_tags: vec![image.into()],
            ..Default::default()
        }))
    }

    async fn list_images(&self, _: Option<cri::ImageFilter>) -> Result<Vec<cri::Image>> {
        Ok(Vec::new())
    }
}

/// ConfigMaps and Secrets a test puts in.
#[derive(Debug, Default)]
pub struct FakeObjects {
    config_maps: Mutex<HashMap<(String, String), Arc<ConfigMap>>>,
}

impl FakeObjects {
    /// Adds a ConfigMap.
    pub fn add_config_map(&self, namespace: &str, name: &str) {
        let cm = ConfigMap {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        lock(&self.config_maps).insert((namespace.into(), name.into()), Arc::new(cm));
    }
}

impl Objects for FakeObjects {
    fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        lock(&self.config_maps)
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
    fn secret(&self, _: &str, _: &str) -> Option<Arc<Secret>> {
        None
    }
}

/// Volumes that exist when the ConfigMaps of configMap volumes do; records into the log.
#[derive(Debug)]
pub struct FakeVolumes {
    log: Log,
    start: tokio::time::Instant,
}

impl FakeVolumes {
    /// Volumes logging to `log`.
    pub fn new(log: Log, clock: &TokioClock) -> Self {
        Self {
            log,
            start: clock.start,
        }
    }
    fn record(&self, call: Call) {
        lock(&self.log).push((tokio::time::Instant::now() - self.start, call));
    }
}

#[async_trait::async_trait]
impl VolumeManager for FakeVolumes {
    async fn setup(
        &self,
        pod: &Pod,
        objects: &dyn Objects,
    ) -> Result<PreparedVolumes, VolumeError> {
        self.record(Call::SetupVolumes);
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            if let Some(cm) = &v.config_map
                && objects.config_map(&ns, &cm.name).is_none()
            {
                return Err(VolumeError::Missing {
                    kind: "configmap",
                    name: cm.name.clone(),
                });
            }
        }
        Ok(PreparedVolumes::default())
    }

    async fn release(&self, _: &str) -> Result<(), VolumeError> {
        self.record(Call::ReleaseVolumes);
        Ok(())
    }

    async fn teardown(&self, _: &str) -> Result<(), VolumeError> {
        self.record(Call::TeardownVolumes);
        Ok(())
    }
}

/// One event a worker reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Normal or Warning.
    pub kind: EventType,
    /// The reason.
    pub reason: String,
    /// The field path.
    pub field_path: Option<String>,
    /// The message.
    pub message: String,
}

/// Records what the workers report.
#[derive(Debug, Default)]
pub struct RecordingReporter {
    statuses: Mutex<Vec<(Duration, PodStatus)>>,
    events: Mutex<Vec<(Duration, Event)>>,
    terminated: Mutex<Vec<String>>,
    start: Mutex<Option<tokio::time::Instant>>,
}

impl RecordingReporter {
    fn since(&self) -> Duration {
        let mut s = lock(&self.start);
        let start = *s.get_or_insert_with(tokio::time::Instant::now);
        tokio::time::Instant::now() - start
    }
    /// Every status reported, in order.
    pub fn statuses(&self) -> Vec<PodStatus> {
        lock(&self.statuses)
            .iter()
            .map(|(_, s)| s.clone())
            .collect()
    }
    /// The last status reported.
    pub fn last(&self) -> Option<PodStatus> {
        lock(&self.statuses).last().map(|(_, s)| s.clone())
    }
    /// Every event reported.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.events).iter().map(|(_, e)| e.clone()).collect()
    }
    /// The reasons of the events, in order.
    pub fn reasons(&self) -> Vec<String> {
        self.events().into_iter().map(|e| e.reason).collect()
    }
    /// Pods reported terminated.
    pub fn terminated(&self) -> Vec<String> {
        lock(&self.terminated).clone()
    }
}

impl Reporter for RecordingReporter {
    fn pod_status(&self, _: &Pod, status: PodStatus) {
        let at = self.since();
        lock(&self.statuses).push((at, status));
    }
    fn event(
        &self,
        _: &Pod,
        kind: EventType,
        reason: &str,
        field_path: Option<String>,
        message: String,
    ) {
        let at = self.since();
        lock(&self.events).push((
            at,
            Event {
                kind,
                reason: reason.into(),
                field_path,
                message,
            },
        ));
    }
    fn pod_terminated(&self, pod: &Pod) {
        lock(&self.terminated).push(pod.metadata.uid.clone().unwrap_or_default());
    }
}
