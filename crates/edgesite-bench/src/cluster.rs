//! The cluster figures of issue 4 in `docs/benchmarks.md`, measured on the release binaries run
//! as separate processes: `edgesite server` (API server, scheduler and every controller) and
//! `edgesite sim` (the hollow nodes), so that the nodes' own cost is not counted in the
//! server's. The bench talks to the server with kube-rs over TLS using the server's admin
//! kubeconfig, like any client.
//!
//! - `cluster-rollout`: time from creating a Deployment with 100 replicas to the Deployment
//!   reporting all 100 ready on 100 hollow nodes (median of several runs).
//! - `cluster-idle`: the server's RSS and CPU (% of one core, from `/proc`) with 1000 hollow
//!   nodes renewing their Leases every 10 s.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, ResourceExt as _};

use crate::machine;
use crate::server::{Goal, Unit, build_release_binary, cpu_seconds, figure, mb, note};

/// How long the server may take to write its kubeconfig.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the hollow nodes may take to register and show Ready.
const NODES_TIMEOUT: Duration = Duration::from_secs(180);
/// How long one rollout may take before the run counts as failed.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(180);
/// The namespace of the rollout runs.
const NAMESPACE: &str = "default";

/// Which cluster figures to measure, and how.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Fewer runs and a shorter CPU window.
    pub quick: bool,
    /// Deployment of 100 replicas to all Ready on 100 hollow nodes.
    pub rollout: bool,
    /// Server RSS and CPU with 1000 hollow nodes heartbeating every 10 s.
    pub idle: bool,
    /// The `edgesite` binary; `None`: build it with `cargo build --release -p edgesite`.
    pub edgesite_bin: Option<PathBuf>,
}

/// The counts of one run.
#[derive(Debug, Clone)]
struct Counts {
    rollout_nodes: usize,
    replicas: usize,
    rollout_runs: usize,
    idle_nodes: usize,
    heartbeat_secs: u64,
    idle_settle: Duration,
    idle_window: Duration,
    /// Pods run on the idle nodes afterwards (in Deployments of 1000 replicas), for the
    /// "RSS with nodes and pods" figure.
    loaded_pods: usize,
}

impl Counts {
    fn new(quick: bool) -> Self {
        Self {
            rollout_nodes: 100,
            replicas: 100,
            rollout_runs: if quick { 3 } else { 5 },
            idle_nodes: 1000,
            heartbeat_secs: 10,
            idle_settle: Duration::from_secs(if quick { 10 } else { 20 }),
            idle_window: Duration::from_secs(if quick { 20 } else { 60 }),
            loaded_pods: if quick { 2000 } else { 10_000 },
        }
    }
}

/// What a cluster run reports back to the caller.
#[derive(Debug)]
pub struct Outcome {
    /// Measurements that failed (each printed as `error: …` on stderr).
    pub failures: usize,
}

/// Runs the planned figures with data directories under `base`.
pub async fn run(plan: &Plan, base: &Path, progress: &dyn Fn(String)) -> Outcome {
    let counts = Counts::new(plan.quick);
    let mut failures = 0;
    let mut fail = |what: &str, e: &anyhow::Error| {
        failures += 1;
        eprintln!("error: cluster {what}: {e:#}");
    };
    println!();
    println!(
        "EdgeSite cluster benchmark: release edgesite server (scheduler + controllers) and \
         edgesite sim (hollow nodes) as separate processes"
    );
    if cfg!(debug_assertions) {
        println!("WARNING: the bench itself is a debug build (use --release)");
    }
    let bin = match &plan.edgesite_bin {
        Some(bin) => Ok(bin.clone()),
        None => {
            progress("cluster: cargo build --release -p edgesite".into());
            build_release_binary()
        }
    };
    let bin = match bin.and_then(|b| {
        b.canonicalize()
            .with_context(|| format!("no edgesite binary at {}", b.display()))
    }) {
        Ok(b) => b,
        Err(e) => {
            fail("binary", &e);
            return Outcome { failures };
        }
    };
    println!("binary    {}", bin.display());
    println!();
    if plan.rollout
        && let Err(e) = rollout_figure(&counts, &bin, base, progress).await
    {
        fail("rollout", &e);
    }
    if plan.idle
        && let Err(e) = idle_figures(&counts, &bin, base, progress).await
    {
        fail("idle", &e);
    }
    Outcome { failures }
}

/// Runs `counts.loaded_pods` pods on the idle site's nodes (Deployments of 1000 replicas) and
/// reports the server's memory once they are all Ready and it has settled.
async fn loaded_figure(
    counts: &Counts,
    site: &Site,
    progress: &dyn Fn(String),
) -> anyhow::Result<()> {
    const PER_DEPLOYMENT: usize = 1000;
    let deployments: Api<Deployment> = Api::namespaced(site.client.clone(), NAMESPACE);
    let names: Vec<String> = (0..counts.loaded_pods.div_ceil(PER_DEPLOYMENT))
        .map(|i| format!("load-{i}"))
        .collect();
    progress(format!(
        "cluster: {} pods in {} Deployments on {} nodes",
        counts.loaded_pods,
        names.len(),
        counts.idle_nodes
    ));
    let started = Instant::now();
    for name in &names {
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": PER_DEPLOYMENT,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "web", "image": "busybox",
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
                },
            },
        }))?;
        deployments.create(&PostParams::default(), &d).await?;
    }
    let replicas = i32::try_from(PER_DEPLOYMENT)?;
    let timeout = Duration::from_secs(600);
    loop {
        let list = deployments.list(&ListParams::default()).await?;
        let done = list
            .items
            .iter()
            .filter(|d| names.contains(&d.name_any()) && rolled_out(d, replicas))
            .count();
        if done == names.len() {
            break;
        }
        if started.elapsed() > timeout {
            bail!(
                "{done} of {} Deployments rolled out after {timeout:?}",
                names.len()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let rolled_out_after = started.elapsed();
    tokio::time::sleep(counts.idle_settle).await;
    let mem = machine::Memory::of_process(Some(site.server.pid))?;
    figure(
        &format!(
            "server RSS, {} nodes + {} pods",
            counts.idle_nodes, counts.loaded_pods
        ),
        Some(mem.rss_kib as f64 / 1024.0),
        Unit::MiB,
        Some(Goal::Below(mb(300.0), "< 300 MB")),
    );
    note(&format!(
        "{} pods Ready {:.1} s after the first create; after {} s of settling: VmRSS {:.1} MiB = \
         anon {:.1} + file {:.1} MiB, peak (VmHWM) {:.1} MiB",
        counts.loaded_pods,
        rolled_out_after.as_secs_f64(),
        counts.idle_settle.as_secs(),
        mem.rss_kib as f64 / 1024.0,
        mem.anon_kib as f64 / 1024.0,
        mem.file_kib as f64 / 1024.0,
        mem.hwm_kib as f64 / 1024.0
    ));
    Ok(())
}

/// A child process of the bench, killed if still running when dropped.
#[derive(Debug)]
pub(crate) struct Process {
    child: tokio::process::Child,
    pub(crate) pid: u32,
    log: PathBuf,
    what: &'static str,
}

impl Process {
    pub(crate) fn spawn(
        what: &'static str,
        bin: &Path,
        args: &[&std::ffi::OsStr],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let file = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(bin)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {what}"))?;
        let pid = child.id().context("the process exited at once")?;
        Ok(Self {
            child,
            pid,
            log,
            what,
        })
    }

    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            bail!(
                "{} exited ({status}); the end of its log:\n{}",
                self.what,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after 20 s.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid)?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await?;
            bail!("{} did not stop within 20 s of SIGTERM; killed", self.what);
        }
        Ok(())
    }
}

/// A server and its hollow nodes.
struct Site {
    _dir: tempfile::TempDir,
    server: Process,
    sim: Process,
    client: kube::Client,
    registered: Duration,
}

impl Site {
    /// Starts `edgesite server` on a free loopback port and `edgesite sim` with `nodes`
    /// hollow nodes, and waits until all of them are Ready.
    async fn start(
        bin: &Path,
        base: &Path,
        nodes: usize,
        heartbeat_secs: u64,
        progress: &dyn Fn(String),
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("edgesite-cluster-bench-")
            .tempdir_in(base)?;
        let data = dir.path().join("data");
        let kubeconfig = data.join("admin.kubeconfig");
        let mut server = Process::spawn(
            "edgesite server",
            bin,
            &[
                "server".as_ref(),
                "--bind-address".as_ref(),
                "127.0.0.1".as_ref(),
                "--secure-port".as_ref(),
                "0".as_ref(),
                "--data-dir".as_ref(),
                data.as_os_str(),
            ],
            dir.path().join("server.log"),
        )?;
        let deadline = Instant::now() + START_TIMEOUT;
        while !kubeconfig.exists() {
            server.check_alive()?;
            if Instant::now() > deadline {
                bail!("no admin.kubeconfig after {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let client = client(&kubeconfig).await?;
        progress(format!(
            "cluster: {nodes} hollow nodes, heartbeat {heartbeat_secs} s"
        ));
        let started = Instant::now();
        let mut sim = Process::spawn(
            "edgesite sim",
            bin,
            &[
                "sim".as_ref(),
                "--kubeconfig".as_ref(),
                kubeconfig.as_os_str(),
                "--nodes".as_ref(),
                nodes.to_string().as_ref(),
                "--prefix".as_ref(),
                "hollow".as_ref(),
                "--heartbeat-seconds".as_ref(),
                heartbeat_secs.to_string().as_ref(),
            ],
            dir.path().join("sim.log"),
        )?;
        let api: Api<Node> = Api::all(client.clone());
        loop {
            server.check_alive()?;
            sim.check_alive()?;
            let list = api
                .list(&ListParams::default().labels("edgesite.io/hollow=true"))
                .await?;
            let ready = list.items.iter().filter(|n| node_ready(n)).count();
            if ready >= nodes {
                break;
            }
            if started.elapsed() > NODES_TIMEOUT {
                bail!("{ready} of {nodes} hollow nodes Ready after {NODES_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let registered = started.elapsed();
        progress(format!(
            "cluster: {nodes} nodes Ready {:.1} s after starting the sim",
            registered.as_secs_f64()
        ));
        Ok(Self {
            _dir: dir,
            server,
            sim,
            client,
            registered,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        let sim = self.sim.stop().await;
        let server = self.server.stop().await;
        sim.and(server)
    }
}

/// A kube-rs client from the server's admin kubeconfig.
pub(crate) async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    // kube's rustls connector needs the process-wide crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

pub(crate) fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What `kubectl rollout status` waits for: the controller saw the latest generation and all
/// replicas are updated and available (and, here, ready).
fn rolled_out(d: &Deployment, replicas: i32) -> bool {
    let (Some(status), Some(generation)) = (d.status.as_ref(), d.metadata.generation) else {
        return false;
    };
    status.observed_generation.unwrap_or(0) >= generation
        && status.updated_replicas.unwrap_or(0) == replicas
        && status.available_replicas.unwrap_or(0) == replicas
        && status.ready_replicas.unwrap_or(0) == replicas
        && status.replicas.unwrap_or(0) == replicas
}

/// When each milestone of one rollout was first seen, from the create request.
#[derive(Debug, Default, Clone)]
struct Milestones {
    all_created: Option<Duration>,
    all_bound: Option<Duration>,
    all_ready: Option<Duration>,
    deployment_ready: Option<Duration>,
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
}

/// One run: create `name` with `replicas` replicas and follow its pods and its status.
async fn one_rollout(
    client: &kube::Client,
    name: &str,
    replicas: i32,
) -> anyhow::Result<Milestones> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let selector = format!("app={name}");
    // Open both watches before the create, so that no event is missed.
    let pod_rv = pods
        .list_metadata(&ListParams::default().labels(&selector))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let deploy_rv = deployments
        .list_metadata(&ListParams::default().fields(&format!("metadata.name={name}")))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut pod_events = pods
        .watch(&WatchParams::default().labels(&selector), &pod_rv)
        .await?
        .boxed();
    let mut deploy_events = deployments
        .watch(
            &WatchParams::default().fields(&format!("metadata.name={name}")),
            &deploy_rv,
        )
        .await?
        .boxed();
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": "busybox"}]},
            },
        },
    }))?;
    let sent = Instant::now();
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let want = usize::try_from(replicas)?;
    let mut m = Milestones::default();
    // name -> (bound, ready)
    let mut seen: HashMap<String, (bool, bool)> = HashMap::new();
    let deadline = tokio::time::Instant::now() + ROLLOUT_TIMEOUT;
    while m.deployment_ready.is_none() || m.all_ready.is_none() {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                bail!(
                    "not rolled out after {ROLLOUT_TIMEOUT:?}: {} pods seen, {} bound, {} ready; {m:?}",
                    seen.len(),
                    seen.values().filter(|s| s.0).count(),
                    seen.values().filter(|s| s.1).count(),
                );
            }
            ev = pod_events.try_next() => match ev? {
                Some(WatchEvent::Added(p) | WatchEvent::Modified(p)) => {
                    let bound = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                    seen.insert(p.name_any(), (bound, pod_ready(&p)));
                    let now = sent.elapsed();
                    if seen.len() >= want && m.all_created.is_none() {
                        m.all_created = Some(now);
                    }
                    if seen.values().filter(|s| s.0).count() >= want && m.all_bound.is_none() {
                        m.all_bound = Some(now);
                    }
                    if seen.values().filter(|s| s.1).count() >= want && m.all_ready.is_none() {
                        m.all_ready = Some(now);
                    }
                }
                Some(WatchEvent::Deleted(p)) => {
                    seen.remove(&p.name_any());
                }
                Some(WatchEvent::Bookmark(_)) => {}
                Some(WatchEvent::Error(e)) => bail!("pod watch error: {e:?}"),
                None => bail!("the pod watch ended"),
            },
            ev = deploy_events.try_next() => match ev? {
                Some(WatchEvent::Added(d) | WatchEvent::Modified(d)) => {
                    if rolled_out(&d, replicas) && m.deployment_ready.is_none() {
                        m.deployment_ready = Some(sent.elapsed());
                    }
                }
                Some(WatchEvent::Error(e)) => bail!("deployment watch error: {e:?}"),
                Some(_) => {}
                None => bail!("the deployment watch ended"),
            },
        }
    }
    Ok(m)
}

/// Deletes the Deployment (background propagation) and waits until its pods are gone, so
/// that the next run starts on empty nodes.
async fn clean_up(client: &kube::Client, name: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    deployments
        .delete(name, &DeleteParams::background())
        .await?;
    let selector = format!("app={name}");
    loop {
        let left = pods
            .list_metadata(&ListParams::default().labels(&selector))
            .await?
            .items
            .len();
        if left == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > ROLLOUT_TIMEOUT {
            bail!("{left} pods of {name} left {ROLLOUT_TIMEOUT:?} after deleting it");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn rollout_figure(
    counts: &Counts,
    bin: &Path,
    base: &Path,
    progress: &dyn Fn(String),
) -> anyhow::Result<()> {
    let site = Site::start(
        bin,
        base,
        counts.rollout_nodes,
        counts.heartbeat_secs,
        progress,
    )
    .await?;
    let result = async {
        let replicas = i32::try_from(counts.replicas)?;
        let mut runs = Vec::new();
        for run in 1..=counts.rollout_runs {
            let name = format!("web-{run}");
            progress(format!(
                "cluster: run {run}/{}: Deployment {name} with {replicas} replicas",
                counts.rollout_runs
            ));
            let cpu_before = cpu_seconds(Some(site.server.pid))?;
            let m = one_rollout(&site.client, &name, replicas).await?;
            let cpu = cpu_seconds(Some(site.server.pid))? - cpu_before;
            let spread = spread(&site.client, &name).await?;
            let cleaned = clean_up(&site.client, &name).await?;
            progress(format!(
                "cluster: run {run}: created {} bound {} pods ready {} deployment ready {}; \
                 server CPU {cpu:.2} s; pods per node {spread}; deleted in {:.1} s",
                secs(m.all_created),
                secs(m.all_bound),
                secs(m.all_ready),
                secs(m.deployment_ready),
                cleaned.as_secs_f64()
            ));
            runs.push((m, cpu, spread));
        }
        let mut ready: Vec<Duration> = runs
            .iter()
            .filter_map(|(m, _, _)| m.deployment_ready)
            .collect();
        ready.sort();
        let median = ready.get(ready.len() / 2).copied();
        figure(
            &format!(
                "deployment of {} -> all Ready, {} nodes (median of {})",
                counts.replicas,
                counts.rollout_nodes,
                ready.len()
            ),
            median.map(|d| d.as_secs_f64() * 1e3),
            Unit::Millis,
            None,
        );
        for (i, (m, cpu, spread)) in runs.iter().enumerate() {
            note(&format!(
                "run {}: all {} pods created {}, bound {}, reported Ready by the hollow nodes {}, \
                 Deployment status all ready {}; server CPU {cpu:.2} s; pods per node {spread}",
                i + 1,
                counts.replicas,
                secs(m.all_created),
                secs(m.all_bound),
                secs(m.all_ready),
                secs(m.deployment_ready),
            ));
        }
        note(&format!(
            "{} hollow nodes registered and Ready {:.1} s after the sim started; server RSS at \
             the end {:.1} MiB",
            counts.rollout_nodes,
            site.registered.as_secs_f64(),
            machine::Memory::of_process(Some(site.server.pid))?.rss_kib as f64 / 1024.0
        ));
        anyhow::Ok(())
    }
    .await;
    let stopped = site.stop().await;
    result?;
    stopped
}

/// `min-max` pods per node of the Deployment `name` (over the nodes that have some).
async fn spread(client: &kube::Client, name: &str) -> anyhow::Result<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let list = pods
        .list(&ListParams::default().labels(&format!("app={name}")))
        .await?;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in &list.items {
        if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            *per_node.entry(node).or_default() += 1;
        }
    }
    let min = per_node.values().min().copied().unwrap_or(0);
    let max = per_node.values().max().copied().unwrap_or(0);
    Ok(format!("{min}-{max} on {} nodes", per_node.len()))
}

async fn idle_figures(
    counts: &Counts,
    bin: &Path,
    base: &Path,
    progress: &dyn Fn(String),
) -> anyhow::Result<()> {
    let site = Site::start(
        bin,
        base,
        counts.idle_nodes,
        counts.heartbeat_secs,
        progress,
    )
    .await?;
    let result = async {
        progress(format!(
            "cluster: settling {} s, then measuring for {} s",
            counts.idle_settle.as_secs(),
            counts.idle_window.as_secs()
        ));
        tokio::time::sleep(counts.idle_settle).await;
        let (server0, sim0) = (
            cpu_seconds(Some(site.server.pid))?,
            cpu_seconds(Some(site.sim.pid))?,
        );
        let started = Instant::now();
        tokio::time::sleep(counts.idle_window).await;
        let window = started.elapsed().as_secs_f64();
        let server_cpu = cpu_seconds(Some(site.server.pid))? - server0;
        let sim_cpu = cpu_seconds(Some(site.sim.pid))? - sim0;
        let mem = machine::Memory::of_process(Some(site.server.pid))?;
        let nodes: Api<Node> = Api::all(site.client.clone());
        let ready = nodes
            .list(&ListParams::default().labels("edgesite.io/hollow=true"))
            .await?
            .items
            .iter()
            .filter(|n| node_ready(n))
            .count();
        figure(
            &format!(
                "server CPU, {} nodes heartbeating every {} s",
                counts.idle_nodes, counts.heartbeat_secs
            ),
            Some(server_cpu / window * 100.0),
            Unit::Percent,
            Some(Goal::Below(50.0, "< 50 % of one core")),
        );
        figure(
            &format!("server RSS, {} nodes", counts.idle_nodes),
            Some(mem.rss_kib as f64 / 1024.0),
            Unit::MiB,
            Some(Goal::Below(mb(300.0), "< 300 MB")),
        );
        note(&format!(
            "{} nodes registered and Ready {:.1} s after the sim started; after {} s of \
             settling, over {window:.1} s: server {server_cpu:.2} CPU s, hollow nodes (sim \
             process, not counted) {sim_cpu:.2} CPU s; {ready} nodes Ready at the end",
            counts.idle_nodes,
            site.registered.as_secs_f64(),
            counts.idle_settle.as_secs(),
        ));
        note(&format!(
            "server memory: VmRSS {:.1} MiB = anon {:.1} + file {:.1} MiB, peak (VmHWM) {:.1} MiB",
            mem.rss_kib as f64 / 1024.0,
            mem.anon_kib as f64 / 1024.0,
            mem.file_kib as f64 / 1024.0,
            mem.hwm_kib as f64 / 1024.0
        ));
        anyhow::ensure!(
            ready == counts.idle_nodes,
            "only {ready} of {} nodes Ready at the end",
            counts.idle_nodes
        );
        loaded_figure(counts, &site, progress).await
    }
    .await;
    let stopped = site.stop().await;
    result?;
    stopped
}
