//! `edgesite agent`: the node. [`run`] wires the parts together in the order a node needs
//! them:
//!
//! 1. the local cache (`ADIR/cache`), which holds the node's objects from the last run;
//! 2. the node identity ([`crate::join`]): the stored certificate, or a first join with the
//!    token; renewed in the background;
//! 3. the Node registered (capacity, node info, addresses, conditions) and its Lease, and the
//!    node-scoped watches ([`crate::sync`]) feeding the cache;
//! 4. the pod network from the node's `spec.podCIDR` (written before containerd starts, so
//!    its CRI plugin finds it), then containerd (the agent's own, or `--containerd-address`,
//!    waited for with back-off while it does not answer), and the pause image;
//! 5. the pod workers, fed only from the cache; their reports go to the server through a
//!    queue ([`crate::report`]); the Lease is renewed every 10 s and the node status posted
//!    every minute and whenever the server marked the node `Unknown`;
//! 6. the runtime checked every 5 s (CRI `Status`, as kubelet's runtime-state check): while it
//!    fails the node is `Ready=False` (`KubeletNotReady`, "container runtime is down: ...")
//!    with a Warning node event, and the agent keeps running (the pod workers retry, the
//!    managed containerd is restarted by its supervisor) until it answers again.
//!
//! Stopping the agent leaves the containers running; the next start adopts them.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use edgesite_clock::{Clock, SystemClock};
use edgesite_node::{Health, NodeFacts, NodeWriter};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt as _;
use kube::runtime::watcher;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::cache::{Kind, LocalCache};
use crate::cni::PodNetwork;
use crate::containerd::{ContainerdConfig, ManagedContainerd};
use crate::cri::{CriRuntime, Runtime, RuntimeStatus};
use crate::images::ImageImporter;
use crate::images::dir::{ImagesDir, ImportOutcome, confirm_served};
use crate::pod::volumes::HostVolumes;
use crate::pod::{EventType, NodeContext, NodeResources, PodWorkers, WorkerOptions};
use crate::report::{ApiReporter, FIELD_MANAGER, within};

/// What the agent runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The API server, `https://HOST:PORT`.
    pub server: String,
    /// The join token file; needed only for the first join.
    pub token_file: Option<PathBuf>,
    /// The node's name.
    pub node_name: String,
    /// The agent's directory (`ADIR`).
    pub data_dir: PathBuf,
    /// A containerd to use instead of the agent's own.
    pub containerd_address: Option<PathBuf>,
    /// The node's address (`status.addresses` InternalIP, `status.hostIP`).
    pub node_ip: IpAddr,
    /// The host's static busybox, from which the pause image is built.
    pub busybox: PathBuf,
    /// How often the Lease is renewed (kubelet: 10 s).
    pub lease_renew: Duration,
    /// How often the node status is posted without a change (kubelet: 1 min).
    pub status_report: Duration,
    /// How often the runtime's health and the host's pressure are checked (kubelet: 5 s
    /// and 10 s).
    pub runtime_check: Duration,
    /// When memory, disk and process ids count as short (kubelet's `--eviction-hard`).
    pub pressure: crate::pressure::Thresholds,
}

impl AgentConfig {
    /// The defaults for node `node_name` of `server` in `data_dir`.
    pub fn new(
        server: &str,
        node_name: &str,
        data_dir: impl Into<PathBuf>,
        node_ip: IpAddr,
    ) -> Self {
        Self {
            server: server.to_owned(),
            token_file: None,
            node_name: node_name.to_owned(),
            data_dir: data_dir.into(),
            containerd_address: None,
            node_ip,
            busybox: "/bin/busybox".into(),
            lease_renew: Duration::from_secs(10),
            status_report: Duration::from_secs(60),
            runtime_check: Duration::from_secs(5),
            pressure: crate::pressure::Thresholds::default(),
        }
    }
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The join failed for good.
    #[error(transparent)]
    Join(#[from] crate::join::JoinError),
    /// The local cache cannot be used.
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    /// containerd cannot be started or reached.
    #[error(transparent)]
    Containerd(#[from] crate::containerd::Error),
    /// A CRI call failed at start.
    #[error(transparent)]
    Cri(#[from] crate::cri::Error),
    /// The pod network cannot be configured.
    #[error(transparent)]
    Cni(#[from] crate::cni::Error),
    /// The pause image cannot be made.
    #[error(transparent)]
    Images(#[from] crate::images::Error),
    /// Another agent (or its cleanup) uses the directory.
    #[error(
        "another edgesite agent uses {0} (it holds {0}/agent.lock): stop it first, or give this \
         one a --data-dir of its own"
    )]
    DirInUse(PathBuf),
    /// The agent's directory cannot be made.
    #[error("agent directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The exclusive lock on `ADIR/agent.lock`, held while an agent or its cleanup uses the
/// directory: a second agent there would stop the first one's containerd as one left behind.
#[derive(Debug)]
pub struct DirLock {
    _held: nix::fcntl::Flock<std::fs::File>,
}

/// Takes the agent directory's lock (released when the process ends, however it ends);
/// fails at once when another process holds it.
pub fn lock_agent_dir(adir: &std::path::Path) -> Result<DirLock, AgentError> {
    let path = adir.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| AgentError::Io {
            path: path.clone(),
            source,
        })?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(held) => Ok(DirLock { _held: held }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(AgentError::DirInUse(adir.to_owned())),
        Err((_, errno)) => Err(AgentError::Io {
            path,
            source: errno.into(),
        }),
    }
}

/// The node's own facts, read from the host.
pub fn node_facts(config: &AgentConfig, runtime_version: &str, kubelet_version: &str) -> NodeFacts {
    let host = NodeResources::of_host();
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let os_image = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| "Linux".into());
    let uname = nix::sys::utsname::uname().ok();
    let kernel = uname
        .as_ref()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let (_, arch) = crate::oci::platform();
    let storage = nix::sys::statvfs::statvfs(&config.data_dir)
        .map(|s| s.blocks().saturating_mul(s.fragment_size()))
        .unwrap_or(0);
    let capacity = [
        ("cpu".to_owned(), format!("{}m", host.cpu_millis)),
        ("memory".to_owned(), format!("{}", host.memory_bytes)),
        (
            "pods".to_owned(),
            WorkerOptions::default().max_pods.to_string(),
        ),
        ("ephemeral-storage".to_owned(), format!("{storage}")),
    ]
    .into_iter()
    .collect();
    let labels = [
        ("kubernetes.io/hostname", config.node_name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", arch),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let node_info = serde_json::json!({
        "machineID": read("/etc/machine-id"),
        "systemUUID": read("/sys/class/dmi/id/product_uuid"),
        "bootID": read("/proc/sys/kernel/random/boot_id"),
        "kernelVersion": kernel,
        "osImage": os_image,
        "containerRuntimeVersion": runtime_version,
        "kubeletVersion": kubelet_version,
        "kubeProxyVersion": kubelet_version,
        "operatingSystem": "linux",
        "architecture": arch,
    });
    NodeFacts {
        name: config.node_name.clone(),
        labels,
        annotations: Default::default(),
        pod_cidr: None,
        addresses: vec![
            ("InternalIP".into(), config.node_ip.to_string()),
            ("Hostname".into(), config.node_name.clone()),
        ],
        allocatable: Default::default(),
        capacity,
        node_info: match node_info {
            serde_json::Value::Object(m) => m,
            _ => Default::default(),
        },
    }
}

/// The address of the interface the default IPv4 route leaves through
/// (`--node-ip`'s default), from `/proc/net/route` and the interfaces' addresses.
pub fn default_route_ip() -> Option<IpAddr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let iface = routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_owned())
    })?;
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        (a.interface_name == iface)
            .then(|| a.address?.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())))
            .flatten()
    })
}

/// The server's version (`gitVersion` of `/version`), which the node reports as its kubelet
/// version; `None` when it cannot be read.
async fn server_version(client: &kube::Client) -> Option<String> {
    client.apiserver_version().await.ok().map(|v| v.git_version)
}

/// Runs the agent until `shutdown` completes.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let adir = config.data_dir.clone();
    std::fs::create_dir_all(&adir).map_err(|source| AgentError::Io {
        path: adir.clone(),
        source,
    })?;
    let _lock = lock_agent_dir(&adir)?;
    let (cache, mut changes) = LocalCache::open(&adir.join("cache")).await?;

    let identity = Arc::new(
        crate::join::join(
            &config.server,
            config.token_file.as_deref(),
            &config.node_name,
            &adir.join("pki"),
        )
        .await?,
    );
    let renewal = tokio::spawn(identity.clone().run_renewal(clock.clone()));
    let client = identity.client();

    let sync = Arc::new(crate::sync::Sync::new(
        client.clone(),
        cache.clone(),
        &config.node_name,
    ));
    sync.start();

    // Register (in the background when the server is away: the cache is enough to run).
    let writer = NodeWriter::new(&client, FIELD_MANAGER);
    let kubelet_version = server_version(&client)
        .await
        .unwrap_or_else(|| "v0.0.0-edgesite".into());
    let mut facts = node_facts(&config, "containerd://starting", &kubelet_version);
    // Not Ready until the runtime answered, as kubelet registers.
    let unchecked = Health {
        ready: Err((
            "KubeletNotReady".into(),
            "container runtime status check may not have completed yet".into(),
        )),
        ..Health::healthy()
    };
    if let Err(err) = writer.register(&*clock, &facts, &unchecked).await {
        warn!(%err, "cannot register the node now; running from the local cache, retried with the status");
    }

    let pod_cidr = wait_for_pod_cidr(&cache, &config.node_name).await;
    let network = PodNetwork::new(&adir, &pod_cidr)?;
    network.write()?;
    info!(%pod_cidr, bridge = %network.name(), "pod network configured");

    let (managed, runtime, version) = match &config.containerd_address {
        // Someone else's containerd may start after the agent (a unit ordering, a slow
        // boot): wait for it rather than exit.
        Some(socket) => {
            let (runtime, version) = wait_for_runtime(socket).await;
            (None, runtime, version)
        }
        None => {
            let managed = ManagedContainerd::start(ContainerdConfig::new(&adir)).await?;
            let runtime = managed.runtime().clone();
            let version = runtime.version().await?;
            (Some(managed), runtime, version)
        }
    };
    facts = node_facts(
        &config,
        &format!("{}://{}", version.runtime_name, version.runtime_version),
        &kubelet_version,
    );
    let socket = managed
        .as_ref()
        .map(ManagedContainerd::socket)
        .or_else(|| config.containerd_address.clone())
        .unwrap_or_default();
    let build_dir = adir.join("images-build");
    std::fs::create_dir_all(&build_dir).map_err(|source| AgentError::Io {
        path: build_dir.clone(),
        source,
    })?;
    ImageImporter::new(&socket)
        .ensure_pause_image(&runtime, &config.busybox, &build_dir)
        .await?;
    let reporter = ApiReporter::new(&config.node_name, clock.clone());
    // Images dropped into ADIR/images: those there now before any pod starts, later ones
    // within seconds.
    let mut images = ImagesDir::new(adir.join("images"), ImageImporter::new(&socket));
    let mut outcomes = images.import_all_once().await;
    confirm_served(&runtime, &mut outcomes, Duration::from_secs(10)).await;
    log_imports(&outcomes, &reporter);
    let (image_tx, mut image_rx) = tokio::sync::mpsc::channel(16);
    let image_watch = tokio::spawn(images.run(image_tx));
    let image_log = {
        let reporter = reporter.clone();
        tokio::spawn(async move {
            while let Some(outcome) = image_rx.recv().await {
                log_imports(std::slice::from_ref(&outcome), &reporter);
            }
        })
    };

    let node_ctx = NodeContext {
        capacity: NodeResources::of_host(),
        allocatable: NodeResources::of_host(),
        ..NodeContext::new(
            &config.node_name,
            config.node_ip,
            adir.join("pods"),
            None,
            "cluster.local",
        )
    };
    let reports = tokio::spawn(reporter.clone().run(client.clone()));
    let workers = PodWorkers::new(
        Arc::new(runtime.clone()),
        Arc::new(HostVolumes::new(node_ctx.clone())),
        cache.clone(),
        reporter.clone(),
        clock.clone(),
        node_ctx,
        WorkerOptions::default(),
    );

    let (health_tx, health) = watch::channel(unchecked);
    let heartbeat = tokio::spawn(
        Heartbeat {
            writer: writer.clone(),
            clock: clock.clone(),
            facts: facts.clone(),
            cache: cache.clone(),
            runtime: Arc::new(runtime.clone()),
            reporter: reporter.clone(),
            health: health_tx,
            renew: config.lease_renew,
            report: config.status_report,
            runtime_check: config.runtime_check,
            data_dir: adir.clone(),
            thresholds: config.pressure,
        }
        .run(),
    );
    let keeper = {
        let (writer, clock, facts) = (writer.clone(), clock.clone(), facts.clone());
        let by_name =
            watcher::Config::default().fields(&format!("metadata.name={}", config.node_name));
        tokio::spawn(async move {
            edgesite_node::keep_status(writer.nodes().clone(), by_name, |node| {
                let (writer, clock, facts) = (&writer, &clock, &facts);
                let now = health.borrow().clone();
                async move {
                    if let Err(err) = writer.post_status(&**clock, facts, &now, Some(&node)).await {
                        debug!(%err, "status post failed; retried on the next change");
                    }
                }
            })
            .await;
        })
    };

    // Pods the cache had at start, then every change: the cache is the only source.
    let dispatch = async {
        let mut uids: std::collections::HashMap<String, String> = Default::default();
        let mut orphans_checked = false;
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                change = changes.recv() => {
                    let Some(change) = change else { break };
                    match change.kind {
                        Kind::Pod => {
                            match cache.get::<Pod>(&change.key) {
                                Some(pod) => {
                                    if let Some(uid) = pod.uid()
                                        && let Some(old) = uids.insert(change.key.clone(), uid.clone())
                                        && old != uid
                                    {
                                        workers.remove(&old);
                                    }
                                    workers.update(pod);
                                }
                                None => if let Some(uid) = uids.remove(&change.key) {
                                    workers.remove(&uid);
                                },
                            }
                            sync.follow_refs();
                        }
                        Kind::ConfigMap | Kind::Secret => workers.resync_all(),
                        Kind::Node => {}
                    }
                }
                _ = tick.tick() => {
                    // Once the pod list came from the server, sandboxes of pods it no
                    // longer has are orphans.
                    if !orphans_checked && cache.resource_version(Kind::Pod).is_some() {
                        let known: HashSet<String> = uids.values().cloned().collect();
                        match workers.remove_orphans(&known).await {
                            Ok(removed) if !removed.is_empty() => info!(?removed, "removed sandboxes of pods this node no longer has"),
                            Ok(_) => {}
                            Err(err) => debug!(%err, "orphan check failed; retried"),
                        }
                        orphans_checked = true;
                    }
                }
            }
        }
    };
    // Logs, exec, attach and port-forward reach the node through a tunnel it opens itself.
    let tunnel = {
        let identity = identity.clone();
        let tls: crate::streams::tunnel::TlsConfigSource = Arc::new(move || identity.tls_config());
        let ctx = Arc::new(crate::streams::StreamContext {
            runtime: Arc::new(runtime.clone()),
            clock: clock.clone(),
        });
        let config = crate::streams::tunnel::TunnelConfig {
            server_url: config.server.clone(),
            tls,
        };
        tokio::spawn(crate::streams::tunnel::run(
            config,
            ctx,
            std::future::pending(),
        ))
    };
    info!(node = %config.node_name, server = %config.server, "agent running");
    tokio::select! {
        () = shutdown => info!("agent stopping; containers keep running"),
        () = dispatch => warn!("the cache's change feed ended"),
    }
    for t in [
        heartbeat,
        keeper,
        reports,
        renewal,
        image_watch,
        image_log,
        tunnel,
    ] {
        t.abort();
    }
    drop(workers);
    drop(sync);
    if let Some(managed) = managed {
        managed.shutdown().await;
    }
    Ok(())
}

/// Logs each import; a failed one is also a Warning event on the node (`ImageImportFailed`),
/// so `kubectl get events` shows why an image a pod needs is missing.
fn log_imports(outcomes: &[ImportOutcome], reporter: &ApiReporter) {
    for o in outcomes {
        match &o.result {
            Ok(names) => {
                info!(file = %o.file.display(), ?names, ms = o.elapsed.as_millis() as u64, "image imported")
            }
            Err(err) => {
                warn!(file = %o.file.display(), %err, "image file not imported; retried when it changes");
                reporter.node_event(
                    EventType::Warning,
                    "ImageImportFailed",
                    format!(
                        "cannot import the image file {}: {err}; it is retried when the file changes",
                        o.file.display()
                    ),
                );
            }
        }
    }
}

/// The pod CIDR of node `name` as the cache has it, waiting for the server to allocate one.
async fn wait_for_pod_cidr(cache: &LocalCache, name: &str) -> String {
    let mut said = false;
    loop {
        if let Some(cidr) = cache
            .get::<Node>(name)
            .and_then(|n| n.spec.as_ref()?.pod_cidr.clone())
            .filter(|c| !c.is_empty())
        {
            return cidr;
        }
        if !said {
            info!(node = %name, "waiting for the server to allocate the node's pod CIDR");
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The first wait before the agent tries again an external containerd that does not answer
/// at start; it doubles up to [`RUNTIME_WAIT_MAX`].
const RUNTIME_WAIT_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two tries of an external containerd.
const RUNTIME_WAIT_MAX: Duration = Duration::from_secs(30);
/// How often the agent says again that it still waits for an external containerd.
const RUNTIME_WAIT_REMINDER: Duration = Duration::from_secs(60);

/// What the agent logs while it waits for an external containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitNote {
    /// The one line saying what the agent waits for.
    Waiting,
    /// A reminder, at most one per [`RUNTIME_WAIT_REMINDER`].
    StillWaiting,
}

/// The back-off of waiting for an external containerd, and when to say so: one line at the
/// first failure and a reminder now and then, never a line per try.
#[derive(Debug)]
struct RuntimeWait {
    delay: Duration,
    noted_at: Option<Duration>,
}

impl RuntimeWait {
    fn new() -> Self {
        Self {
            delay: RUNTIME_WAIT_FIRST,
            noted_at: None,
        }
    }

    /// A try failed `waited` into the wait: how long to wait before the next one, and what to
    /// log now.
    fn failed(&mut self, waited: Duration) -> (Duration, Option<WaitNote>) {
        let note = match self.noted_at {
            None => Some(WaitNote::Waiting),
            Some(at) if waited >= at + RUNTIME_WAIT_REMINDER => Some(WaitNote::StillWaiting),
            Some(_) => None,
        };
        if note.is_some() {
            self.noted_at = Some(waited);
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(RUNTIME_WAIT_MAX);
        (delay, note)
    }
}

/// A CRI client of the external containerd at `socket` and its version, once it answers
/// `Version`; until then tries again with back-off ([`RuntimeWait`]).
async fn wait_for_runtime(
    socket: &std::path::Path,
) -> (CriRuntime, crate::cri::v1::VersionResponse) {
    let started = tokio::time::Instant::now();
    let mut wait = RuntimeWait::new();
    loop {
        let err = match CriRuntime::connect(socket).await {
            Ok(runtime) => match runtime.version().await {
                Ok(version) => {
                    if wait.noted_at.is_some() {
                        info!(socket = %socket.display(), waited_s = started.elapsed().as_secs(), "the container runtime answers; the agent goes on");
                    }
                    return (runtime, version);
                }
                Err(err) => err,
            },
            Err(err) => err,
        };
        let (delay, note) = wait.failed(started.elapsed());
        match note {
            Some(WaitNote::Waiting) => info!(
                socket = %socket.display(), %err,
                "waiting for the container runtime to answer at --containerd-address; trying again with back-off up to {RUNTIME_WAIT_MAX:?}"
            ),
            Some(WaitNote::StillWaiting) => warn!(
                socket = %socket.display(), waited_s = started.elapsed().as_secs(), %err,
                "the container runtime still does not answer; the agent keeps waiting"
            ),
            None => debug!(%err, ?delay, "the container runtime does not answer yet"),
        }
        tokio::time::sleep(delay).await;
    }
}

/// How long the runtime's `Status` may take before the runtime counts as down.
const RUNTIME_STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one heartbeat write (a Lease renewal, a status post, a registration) may take. The
/// node client has no timeout of its own, and a write that never returns must not hold back
/// the next ones.
const HEARTBEAT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The node's heartbeat: Lease renewals, status posts, and the runtime check that decides
/// the Ready condition.
struct Heartbeat {
    writer: NodeWriter,
    clock: Arc<dyn Clock>,
    facts: NodeFacts,
    cache: Arc<LocalCache>,
    runtime: Arc<dyn RuntimeStatus>,
    reporter: Arc<ApiReporter>,
    /// The node's health as last checked; the status keeper reads it too.
    health: watch::Sender<Health>,
    renew: Duration,
    report: Duration,
    runtime_check: Duration,
    /// The filesystem of this directory is the one disk pressure is judged on.
    data_dir: std::path::PathBuf,
    thresholds: crate::pressure::Thresholds,
}

impl Heartbeat {
    /// Three loops that never wait for one another, as kubelet runs them: the Lease renewed
    /// every `renew`; the runtime and the host's pressure checked every `runtime_check`; the
    /// node status posted every `report`, at once when a check changed the conditions, and
    /// again after `runtime_check` while a post fails. The checks never touch the server, so a
    /// slow or unreachable server cannot keep the node from noticing its runtime is down.
    async fn run(self) {
        let changes = self.health.subscribe();
        tokio::join!(
            self.renew_lease(),
            self.check(),
            self.post_statuses(changes)
        );
    }

    async fn renew_lease(&self) {
        let mut tick = tokio::time::interval(self.renew);
        let mut failing = false;
        loop {
            tick.tick().await;
            let res = within(
                HEARTBEAT_WRITE_TIMEOUT,
                self.writer.renew(&*self.clock, &self.facts.name),
            )
            .await;
            self.handle(res, &mut failing).await;
        }
    }

    async fn check(&self) {
        let mut tick = tokio::time::interval(self.runtime_check);
        let mut runtime_ready = None;
        loop {
            tick.tick().await;
            // Both run each time: a change of either is seen by the status loop through
            // `health`.
            self.check_runtime(&mut runtime_ready).await;
            self.check_pressure();
        }
    }

    async fn post_statuses(&self, mut changes: watch::Receiver<Health>) {
        let mut periodic = tokio::time::interval(self.report);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = periodic.tick() => {}
                changed = changes.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(self.runtime_check), if failing => {}
            }
            changes.borrow_and_update();
            let res = within(HEARTBEAT_WRITE_TIMEOUT, self.post_status()).await;
            self.handle(res, &mut failing).await;
        }
    }

    /// Logs a write's outcome (once per failing spell) and registers the node when the
    /// server has no Node or Lease for it; sets `failing` while writes fail.
    async fn handle(&self, res: Result<(), kube::Error>, failing: &mut bool) {
        match res {
            Ok(()) if *failing => {
                info!("heartbeats reach the server again");
                *failing = false;
            }
            Ok(()) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {
                // The Node or Lease is gone (deleted, or never registered offline): register.
                let health = self.health.borrow().clone();
                let registered = within(
                    HEARTBEAT_WRITE_TIMEOUT,
                    self.writer.register(&*self.clock, &self.facts, &health),
                )
                .await;
                match registered {
                    Ok(_) => *failing = false,
                    Err(err) => {
                        debug!(%err, "registration failed; retried");
                        *failing = true;
                    }
                }
            }
            Err(err) => {
                if !*failing {
                    warn!(%err, "heartbeat failed; the node keeps running its pods and retries");
                }
                *failing = true;
            }
        }
    }

    async fn post_status(&self) -> Result<(), kube::Error> {
        let previous = self.cache.get::<Node>(&self.facts.name);
        let health = self.health.borrow().clone();
        self.writer
            .post_status(&*self.clock, &self.facts, &health, previous.as_deref())
            .await
            .map(|_| ())
    }

    /// Samples the host and updates the pressure conditions, with kubelet's node events on
    /// each change.
    fn check_pressure(&self) {
        let now = self
            .thresholds
            .pressure(&crate::pressure::sample(&self.data_dir));
        let before = {
            let h = self.health.borrow();
            crate::pressure::Pressure {
                memory: h.memory_pressure,
                disk: h.disk_pressure,
                pid: h.pid_pressure,
            }
        };
        if now == before {
            return;
        }
        let name = &self.facts.name;
        for (was, is, on, off) in [
            (
                before.memory,
                now.memory,
                "NodeHasInsufficientMemory",
                "NodeHasSufficientMemory",
            ),
            (
                before.disk,
                now.disk,
                "NodeHasDiskPressure",
                "NodeHasNoDiskPressure",
            ),
            (
                before.pid,
                now.pid,
                "NodeHasInsufficientPID",
                "NodeHasSufficientPID",
            ),
        ] {
            if was != is {
                let reason = if is { on } else { off };
                warn!(reason, "node pressure changed");
                self.reporter.node_event(
                    EventType::Normal,
                    reason,
                    format!("Node {name} status is now: {reason}"),
                );
            }
        }
        self.health.send_modify(|h| {
            h.memory_pressure = now.memory;
            h.disk_pressure = now.disk;
            h.pid_pressure = now.pid;
        });
    }

    /// Checks the runtime and updates the health (which wakes the status loop when the Ready
    /// condition changed). A change of readiness is logged and recorded as node events, as
    /// kubelet records `NodeReady`/`NodeNotReady`. `was` is the readiness last checked (`None`
    /// before the first check), updated here.
    async fn check_runtime(&self, was: &mut Option<bool>) {
        let ready = runtime_health(&*self.runtime)
            .await
            .map_err(|message| ("KubeletNotReady".to_owned(), message));
        debug!(?ready, "container runtime checked");
        let was_ready = was.replace(ready.is_ok());
        self.health.send_if_modified(|h| {
            let changed = h.ready != ready;
            h.ready = ready.clone();
            changed
        });
        let name = &self.facts.name;
        match &ready {
            Err((_, message)) if was_ready != Some(false) => {
                warn!(%message, "the node is NotReady until the container runtime answers again; pods are retried");
                self.reporter.node_event(
                    EventType::Warning,
                    "ContainerRuntimeDown",
                    message.clone(),
                );
                self.reporter.node_event(
                    EventType::Normal,
                    "NodeNotReady",
                    format!("Node {name} status is now: NodeNotReady"),
                );
            }
            Ok(()) if was_ready != Some(true) => {
                if was_ready.is_some() {
                    info!("the container runtime answers again; the node is Ready");
                }
                self.reporter.node_event(
                    EventType::Normal,
                    "NodeReady",
                    format!("Node {name} status is now: NodeReady"),
                );
            }
            _ => {}
        }
    }
}

/// The runtime's health in kubelet's words: `Err(message)` when CRI `Status` fails or a
/// condition the node needs (`RuntimeReady`, `NetworkReady`) is false.
async fn runtime_health(runtime: &dyn RuntimeStatus) -> Result<(), String> {
    let conditions = match tokio::time::timeout(RUNTIME_STATUS_TIMEOUT, runtime.runtime_status())
        .await
    {
        Err(_) => {
            return Err(format!(
                "container runtime is down: CRI Status at {} did not answer within {RUNTIME_STATUS_TIMEOUT:?}",
                runtime.socket().display()
            ));
        }
        Ok(Err(err)) => return Err(format!("container runtime is down: {err}")),
        Ok(Ok(conditions)) => conditions,
    };
    for (kind, what) in [
        ("RuntimeReady", "container runtime not ready"),
        ("NetworkReady", "container runtime network not ready"),
    ] {
        match conditions.iter().find(|c| c.r#type == kind) {
            Some(c) if c.status => {}
            Some(c) => {
                return Err(format!(
                    "{what}: {kind}=false reason:{} message:{}",
                    c.reason, c.message
                ));
            }
            None => return Err(format!("{what}: the runtime reports no {kind} condition")),
        }
    }
    Ok(())
}

/// `edgesite agent --cleanup`: removes everything the agent made on the host — its pods
/// (sandboxes and containers, through its own containerd), the pod network (bridge, address
/// files, masquerade rules), mounts under `adir`, and `adir` itself.
pub async fn cleanup(adir: &std::path::Path) -> Result<(), AgentError> {
    let io = |source| AgentError::Io {
        path: adir.to_owned(),
        source,
    };
    if !adir.exists() {
        return Ok(());
    }
    let _lock = lock_agent_dir(adir)?;
    let config = ContainerdConfig::new(adir);
    if config.dir().exists() {
        match ManagedContainerd::start(config).await {
            Ok(managed) => {
                let rt = managed.runtime().clone();
                for sandbox in rt.list_pod_sandboxes(None).await.unwrap_or_default() {
                    let _ = rt.stop_pod_sandbox(&sandbox.id).await;
                    if let Err(err) = rt.remove_pod_sandbox(&sandbox.id).await {
                        warn!(sandbox = %sandbox.id, %err, "cannot remove a sandbox");
                    }
                }
                managed.shutdown().await;
            }
            Err(err) => {
                warn!(%err, "cannot start containerd to remove the pods; removing files only")
            }
        }
    }
    crate::cni::cleanup(adir)?;
    // Mounts under the directory (tmpfs volumes, containerd's snapshots and shm), deepest
    // first.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let adir_abs = std::fs::canonicalize(adir).map_err(io)?;
    let mut points: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(&adir_abs))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        if let Err(err) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
            warn!(path = %p.display(), %err, "cannot unmount");
        }
    }
    std::fs::remove_dir_all(&adir_abs).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests;
