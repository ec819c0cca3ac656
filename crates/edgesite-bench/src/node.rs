//! The node figures of issue 11 in `docs/benchmarks.md` ("Node: pod start, agent footprint"),
//! measured on the release `edgesite` binary with its own managed containerd, runc and the CNI
//! bridge, and the busybox OCI image dropped into the agent's images directory.
//!
//! - Pod start: create -> `Running` observed through a pod watch (kube-rs, admin kubeconfig),
//!   1 pod at a time and 30 at once; next to it, against the same containerd, the same CRI
//!   calls made directly (RunPodSandbox with its own network namespace, so CNI runs, then
//!   CreateContainer and StartContainer), with the CRI configurations built by the agent's own
//!   [`sandbox_config`] and [`container_config`] from the same pod. The ratio is the agent's
//!   overhead (watch, scheduling, status report included).
//! - Footprint: VmRSS (anon + file) of `edgesite up` idle, of `edgesite agent` alone (beside
//!   `edgesite server`) idle and with 30 pods, of the managed containerd and of the shims; the
//!   agent's CPU with 30 pods running.
//! - The size of the stripped release binary.
//!
//! Everything runs under a fresh directory in `/tmp` (containerd's socket path must stay
//! short); whatever happens, the processes are killed and `edgesite agent --cleanup` removes
//! what the agent made.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use edgesite_agent::cri::{CriRuntime, Runtime as _, v1 as cri};
use edgesite_agent::pod::config::{container_config, sandbox_config};
use edgesite_agent::pod::{NodeContext, Objects, PreparedVolumes};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::api::{DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, ResourceExt as _};

use crate::cluster::{Process, client, node_ready};
use crate::machine::Memory;
use crate::server::{Goal, Unit, build_release_binary, cpu_seconds, figure, mb, note, quantile};

/// The image of every pod, built by the testkit and dropped into ADIR/images.
const IMAGE: &str = "edgesite.io/busybox:1";
/// What every container runs: a shell that exits at once on SIGTERM, so deletes are quick.
const COMMAND: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"];
/// The namespace of the API pods.
const NAMESPACE: &str = "default";
/// The label of every pod and sandbox the bench makes.
const LABEL: &str = "edgesite.io/bench";
/// How long the server may take to write its kubeconfig, and the node to be Ready.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a batch of pods may take to be Running, or to be gone.
const POD_TIMEOUT: Duration = Duration::from_secs(180);
/// The name of the benchmarked node.
const NODE_NAME: &str = "bench-node";

/// Which node figures to measure, and how.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Fewer runs and shorter windows.
    pub quick: bool,
    /// The `edgesite` binary; `None`: build it with `cargo build --release -p edgesite`.
    pub edgesite_bin: Option<PathBuf>,
}

/// The counts of one run.
#[derive(Debug, Clone)]
struct Counts {
    single_runs: usize,
    batch: usize,
    batch_rounds: usize,
    settle: Duration,
    cpu_window: Duration,
}

impl Counts {
    fn new(quick: bool) -> Self {
        Self {
            single_runs: if quick { 5 } else { 10 },
            batch: 30,
            batch_rounds: if quick { 2 } else { 3 },
            settle: Duration::from_secs(if quick { 5 } else { 15 }),
            cpu_window: Duration::from_secs(if quick { 15 } else { 30 }),
        }
    }
}

/// Runs the node figures; returns how many measurements failed (each printed as `error: …`).
pub async fn run(plan: &Plan, progress: &dyn Fn(String)) -> usize {
    let counts = Counts::new(plan.quick);
    let mut failures = 0;
    let mut fail = |what: &str, e: &anyhow::Error| {
        failures += 1;
        eprintln!("error: node {what}: {e:#}");
    };
    println!();
    println!(
        "EdgeSite node benchmark: release edgesite (up; server + agent as two processes) with \
         its managed containerd, runc, CNI bridge, busybox image"
    );
    if cfg!(debug_assertions) {
        println!("WARNING: the bench itself is a debug build (use --release)");
    }
    if let Err(e) = prerequisites() {
        fail("prerequisites", &e);
        return failures;
    }
    let bin = match &plan.edgesite_bin {
        Some(bin) => Ok(bin.clone()),
        None => {
            progress("node: cargo build --release -p edgesite".into());
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
            return failures;
        }
    };
    println!("binary    {}", bin.display());
    println!(
        "runtime   {}",
        command_line("/usr/bin/containerd", &["--version"])
    );
    println!();
    if let Err(e) = binary_figure(&bin) {
        fail("binary size", &e);
    }
    if let Err(e) = up_figures(&counts, &bin, progress).await {
        fail("up idle", &e);
    }
    if let Err(e) = split_figures(&counts, &bin, progress).await {
        fail("agent", &e);
    }
    failures
}

fn prerequisites() -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the node figures need root (containerd mounts overlays, CNI makes a bridge)"
    );
    for (bin, package) in [
        ("/usr/bin/containerd", "containerd"),
        ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ] {
        ensure!(
            Path::new(bin).exists(),
            "{bin} is missing: install the Debian package `{package}` (run `scripts/setup`)"
        );
    }
    Ok(())
}

fn command_line(bin: &str, args: &[&str]) -> String {
    std::process::Command::new(bin)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("{bin}: {e}"))
}

fn binary_figure(bin: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
    let stripped = !bytes.windows(8).any(|w| w == b".symtab\0");
    figure(
        "edgesite binary size (release)",
        Some(bytes.len() as f64 / 1_048_576.0),
        Unit::MiB,
        Some(Goal::Below(mb(30.0), "< 30 MB")),
    );
    note(&format!(
        "binary: {} bytes, {}",
        bytes.len(),
        if stripped {
            "stripped (no .symtab)"
        } else {
            "NOT stripped (.symtab present)"
        }
    ));
    Ok(())
}

/// The processes and directory of a node under test. Dropping it kills the processes and runs
/// `edgesite agent --cleanup` on the agent's directory.
struct Guard {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// `edgesite up`, or the agent (first) and the server.
    processes: Vec<Process>,
    agent_dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.processes.is_empty() {
            return;
        }
        for p in &self.processes {
            if let Ok(pid) = i32::try_from(p.pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // Give the kernel a moment to reap them.
        std::thread::sleep(Duration::from_millis(200));
        cleanup(&self.bin, &self.agent_dir);
        let left = edgesite_testkit::containerd::leftovers_under(self.dir.path());
        if !left.is_empty() {
            eprintln!("warning: node bench left behind: {left:?}");
        }
    }
}

impl Guard {
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.processes {
            p.check_alive()?;
        }
        Ok(())
    }
}

/// A node under test: `edgesite up`, or `edgesite server` + `edgesite agent`.
struct Site {
    guard: Guard,
    client: kube::Client,
    runtime: CriRuntime,
}

/// `edgesite agent --cleanup --data-dir ADIR`, reporting a failure on stderr.
fn cleanup(bin: &Path, agent_dir: &Path) {
    if !agent_dir.exists() {
        return;
    }
    match std::process::Command::new(bin)
        .args(["agent", "--cleanup", "--data-dir"])
        .arg(agent_dir)
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "warning: edgesite agent --cleanup failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("warning: cannot run edgesite agent --cleanup: {e}"),
    }
}

/// How a site runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `edgesite up`: server and agent in one process.
    Up,
    /// `edgesite server` and `edgesite agent` as two processes.
    Split,
}

impl Site {
    async fn start(bin: &Path, mode: Mode, progress: &dyn Fn(String)) -> anyhow::Result<Self> {
        // Under /tmp: containerd's socket path must stay short.
        let dir = tempfile::Builder::new().prefix("esb-").tempdir_in("/tmp")?;
        let data = dir.path().join("s");
        let agent_dir = match mode {
            Mode::Up => data.join("agent"),
            Mode::Split => dir.path().join("a"),
        };
        let images = agent_dir.join("images");
        std::fs::create_dir_all(&images)?;
        edgesite_testkit::busybox_image(&images, IMAGE);
        let kubeconfig = data.join("admin.kubeconfig");
        let node_args: [&std::ffi::OsStr; 4] = [
            "--node-name".as_ref(),
            NODE_NAME.as_ref(),
            "--node-ip".as_ref(),
            "127.0.0.1".as_ref(),
        ];
        let server_args: [&std::ffi::OsStr; 6] = [
            "--bind-address".as_ref(),
            "127.0.0.1".as_ref(),
            "--secure-port".as_ref(),
            "0".as_ref(),
            "--data-dir".as_ref(),
            data.as_os_str(),
        ];
        let started = Instant::now();
        let first = match mode {
            Mode::Up => {
                let args: Vec<&std::ffi::OsStr> = std::iter::once(std::ffi::OsStr::new("up"))
                    .chain(server_args)
                    .chain(node_args)
                    .collect();
                Process::spawn("edgesite up", bin, &args, dir.path().join("up.log"))?
            }
            Mode::Split => {
                let args: Vec<&std::ffi::OsStr> = std::iter::once(std::ffi::OsStr::new("server"))
                    .chain(server_args)
                    .collect();
                Process::spawn("edgesite server", bin, &args, dir.path().join("server.log"))?
            }
        };
        // From here on, Drop cleans up even when the start fails half-way.
        let mut guard = Guard {
            bin: bin.to_path_buf(),
            processes: vec![first],
            agent_dir: agent_dir.clone(),
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !kubeconfig.exists() {
            guard.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "no admin.kubeconfig after {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Let the writer finish the file.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let client = client(&kubeconfig).await?;
        if mode == Mode::Split {
            let server = server_url(&kubeconfig)?;
            let token = edgesite_apiserver::join::node_token_path(&data);
            let head: [&std::ffi::OsStr; 7] = [
                "agent".as_ref(),
                "--server".as_ref(),
                server.as_ref(),
                "--token-file".as_ref(),
                token.as_os_str(),
                "--data-dir".as_ref(),
                agent_dir.as_os_str(),
            ];
            let args: Vec<&std::ffi::OsStr> = head.into_iter().chain(node_args).collect();
            let agent = Process::spawn(
                "edgesite agent",
                bin,
                &args,
                guard.dir.path().join("agent.log"),
            )?;
            guard.processes.insert(0, agent);
        }
        let nodes: Api<Node> = Api::all(client.clone());
        loop {
            guard.check_alive()?;
            if nodes
                .get_opt(NODE_NAME)
                .await?
                .is_some_and(|n| node_ready(&n))
            {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "node {NODE_NAME} not Ready after {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ready = started.elapsed();
        let socket = agent_dir.join("containerd").join("containerd.sock");
        // The node may say Ready before the agent's containerd is up.
        let runtime = loop {
            guard.check_alive()?;
            match CriRuntime::connect(&socket).await {
                Ok(r) if r.version().await.is_ok() => break r,
                Ok(_) => {}
                Err(e) => ensure!(
                    Instant::now() < deadline,
                    "containerd not answering after {START_TIMEOUT:?}: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        loop {
            guard.check_alive()?;
            if runtime.image_status(IMAGE).await?.is_some() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{IMAGE} not imported after {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        progress(format!(
            "node: {mode:?}: node Ready {:.1} s after the start, {IMAGE} imported after {:.1} s",
            ready.as_secs_f64(),
            started.elapsed().as_secs_f64()
        ));
        Ok(Self {
            guard,
            client,
            runtime,
        })
    }

    /// The `edgesite up` or `edgesite agent` process.
    fn agent_pid(&self) -> u32 {
        self.guard.processes[0].pid
    }

    fn dir(&self) -> &Path {
        self.guard.dir.path()
    }

    fn pids(&self) -> Vec<u32> {
        self.guard.processes.iter().map(|p| p.pid).collect()
    }

    /// SIGTERM to every process (agent first), then `edgesite agent --cleanup`; checks that
    /// nothing is left under the site's directory.
    async fn stop(self) -> anyhow::Result<()> {
        let mut guard = self.guard;
        let mut result = Ok(());
        for p in std::mem::take(&mut guard.processes) {
            let r = p.stop().await;
            if result.is_ok() {
                result = r;
            }
        }
        cleanup(&guard.bin, &guard.agent_dir);
        let left = edgesite_testkit::containerd::leftovers_under(guard.dir.path());
        if result.is_ok() && !left.is_empty() {
            result = Err(anyhow::anyhow!("left behind after cleanup: {left:?}"));
        }
        result
    }
}

/// The API server URL of a kubeconfig's first cluster.
fn server_url(kubeconfig: &Path) -> anyhow::Result<String> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    kc.clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .context("the kubeconfig names no server")
}

/// The processes of a node besides the agent: the managed containerd, its shims, and what
/// runs in the pods (pause, the containers' processes).
#[derive(Debug, Default)]
struct NodeProcesses {
    containerd: Vec<u32>,
    shims: Vec<u32>,
    pods: Vec<u32>,
}

impl NodeProcesses {
    /// Every process under the site's directory (by command line, root or binary, and their
    /// descendants), sorted by what it is; `exclude` are the bench's own children.
    fn of(dir: &Path, exclude: &[u32]) -> Self {
        let mut out = Self::default();
        for (pid, cmdline) in edgesite_testkit::containerd::leftovers_under(dir).processes {
            if exclude.contains(&pid) {
                continue;
            }
            match classify(&cmdline) {
                Kind::Containerd => out.containerd.push(pid),
                Kind::Shim => out.shims.push(pid),
                Kind::Other => out.pods.push(pid),
            }
        }
        out
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Containerd,
    Shim,
    Other,
}

/// What a process of the node is, from its command line (arguments joined by spaces).
fn classify(cmdline: &str) -> Kind {
    let program = cmdline.split(' ').next().unwrap_or_default();
    let name = program.rsplit('/').next().unwrap_or_default();
    if name == "containerd" {
        Kind::Containerd
    } else if name.starts_with("containerd-shim") {
        Kind::Shim
    } else {
        Kind::Other
    }
}

/// The sum of the memory figures of `pids` (processes that vanished count nothing).
fn memory_sum(pids: &[u32]) -> Memory {
    let mut sum = Memory::default();
    for m in pids
        .iter()
        .filter_map(|&p| Memory::of_process(Some(p)).ok())
    {
        sum.rss_kib += m.rss_kib;
        sum.anon_kib += m.anon_kib;
        sum.file_kib += m.file_kib;
        sum.hwm_kib += m.hwm_kib;
        sum.pss_kib += m.pss_kib;
    }
    sum
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `VmRSS X MiB = anon A + file F MiB, PSS P MiB`.
fn describe(m: &Memory) -> String {
    format!(
        "VmRSS {:.1} MiB = anon {:.1} + file {:.1} MiB, PSS {:.1} MiB",
        mib(m.rss_kib),
        mib(m.anon_kib),
        mib(m.file_kib),
        mib(m.pss_kib)
    )
}

/// Prints the memory figures of a node: the agent (or `edgesite up`), containerd, the shims,
/// the node total; returns the total.
fn memory_figures(site: &Site, agent_label: &str, agent_goal: Option<Goal>, when: &str) -> f64 {
    let agent = Memory::of_process(Some(site.agent_pid())).ok();
    let procs = NodeProcesses::of(site.dir(), &site.pids());
    let containerd = memory_sum(&procs.containerd);
    let shims = memory_sum(&procs.shims);
    let pods = memory_sum(&procs.pods);
    figure(
        &format!("{agent_label} RSS, {when}"),
        agent.map(|m| mib(m.rss_kib)),
        Unit::MiB,
        agent_goal,
    );
    figure(
        &format!("managed containerd RSS, {when}"),
        Some(mib(containerd.rss_kib)),
        Unit::MiB,
        None,
    );
    figure(
        &format!("containerd-shim RSS ({} shims), {when}", procs.shims.len()),
        Some(mib(shims.rss_kib)),
        Unit::MiB,
        None,
    );
    let total = agent.map_or(0, |m| m.rss_kib) + containerd.rss_kib + shims.rss_kib;
    // Summed RSS counts the pages of each shared executable once per process; PSS splits them.
    let pss = agent.map_or(0, |m| m.pss_kib) + containerd.pss_kib + shims.pss_kib;
    figure(
        &format!("node total PSS ({agent_label} + containerd + shims), {when}"),
        Some(mib(pss)),
        Unit::MiB,
        None,
    );
    note(&format!(
        "{agent_label}: {}; containerd ({} process): {}; shims: {}; not counted, the pods' own \
         processes ({}, pause + containers): VmRSS {:.1} MiB",
        agent.map_or_else(|| "-".into(), |m| describe(&m)),
        procs.containerd.len(),
        describe(&containerd),
        describe(&shims),
        procs.pods.len(),
        mib(pods.rss_kib)
    ));
    mib(total)
}

async fn up_figures(counts: &Counts, bin: &Path, progress: &dyn Fn(String)) -> anyhow::Result<()> {
    let site = Site::start(bin, Mode::Up, progress).await?;
    let result = async {
        progress(format!(
            "node: up idle, settling {} s",
            counts.settle.as_secs()
        ));
        tokio::time::sleep(counts.settle).await;
        let total = memory_figures(
            &site,
            "edgesite up (server + agent)",
            Some(Goal::Below(mb(50.0), "< 50 MB")),
            "idle, no pods",
        );
        figure(
            "node total RSS (up + containerd + shims), idle",
            Some(total),
            Unit::MiB,
            None,
        );
        anyhow::Ok(())
    }
    .await;
    let stopped = site.stop().await;
    result?;
    stopped
}

async fn split_figures(
    counts: &Counts,
    bin: &Path,
    progress: &dyn Fn(String),
) -> anyhow::Result<()> {
    let site = Site::start(bin, Mode::Split, progress).await?;
    let result = async {
        progress(format!(
            "node: agent idle, settling {} s",
            counts.settle.as_secs()
        ));
        tokio::time::sleep(counts.settle).await;
        let cpu0 = cpu_seconds(Some(site.agent_pid()))?;
        let t0 = Instant::now();
        tokio::time::sleep(counts.settle).await;
        let idle_cpu = (cpu_seconds(Some(site.agent_pid()))? - cpu0) / t0.elapsed().as_secs_f64();
        let total = memory_figures(
            &site,
            "edgesite agent",
            Some(Goal::Below(mb(15.0), "< 15 MB")),
            "idle, no pods",
        );
        figure(
            "node total RSS (agent + containerd + shims), idle",
            Some(total),
            Unit::MiB,
            Some(Goal::Below(mb(45.0), "< 45 MB")),
        );
        note(&format!(
            "agent CPU idle, no pods: {:.2} % of one core over {} s",
            idle_cpu * 100.0,
            counts.settle.as_secs()
        ));
        start_figures(counts, &site, progress).await?;
        loaded_figures(counts, &site, progress).await
    }
    .await;
    let stopped = site.stop().await;
    result?;
    stopped
}

/// The pod every measurement runs: one busybox container.
fn bench_pod(name: &str, run: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {(LABEL): run}},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "main",
                "image": IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "command": COMMAND,
            }],
        },
    }))?)
}

/// When one API pod was seen bound and Running, from its create request.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    bound: Option<Duration>,
    running: Option<Duration>,
}

/// Creates `n` pods at once (labelled `run`) and follows them through a watch opened before
/// the creates until all are Running: each pod's times from its own create request.
async fn api_batch(client: &kube::Client, run: &str, n: usize) -> anyhow::Result<Vec<Seen>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let selector = format!("{LABEL}={run}");
    let rv = pods
        .list_metadata(&ListParams::default().labels(&selector))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut events = pods
        .watch(&WatchParams::default().labels(&selector), &rv)
        .await?
        .boxed();
    let manifests = (0..n)
        .map(|i| bench_pod(&format!("{run}-{i}"), run))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let creates = manifests.iter().map(|pod| {
        let pods = pods.clone();
        async move {
            let sent = Instant::now();
            pods.create(&PostParams::default(), pod).await?;
            anyhow::Ok((pod.name_any(), sent))
        }
    });
    let sent: HashMap<String, Instant> = futures::future::try_join_all(creates)
        .await?
        .into_iter()
        .collect();
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let deadline = tokio::time::Instant::now() + POD_TIMEOUT;
    while seen.values().filter(|s| s.running.is_some()).count() < n {
        let ev = tokio::select! {
            () = tokio::time::sleep_until(deadline) => bail!(
                "{} of {n} pods Running after {POD_TIMEOUT:?}",
                seen.values().filter(|s| s.running.is_some()).count()
            ),
            ev = events.try_next() => ev?,
        };
        match ev {
            Some(WatchEvent::Added(p) | WatchEvent::Modified(p)) => {
                let name = p.name_any();
                let Some(at) = sent.get(&name) else { continue };
                let s = seen.entry(name).or_default();
                let bound = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                if bound && s.bound.is_none() {
                    s.bound = Some(at.elapsed());
                }
                let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                if running && s.running.is_none() {
                    s.running = Some(at.elapsed());
                }
            }
            Some(WatchEvent::Deleted(_) | WatchEvent::Bookmark(_)) => {}
            Some(WatchEvent::Error(e)) => bail!("pod watch error: {e:?}"),
            None => bail!("the pod watch ended"),
        }
    }
    Ok(seen.into_values().collect())
}

/// Deletes the pods labelled `run` and waits until the agent has terminated them and they
/// are gone from the API.
async fn api_delete(client: &kube::Client, run: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let lp = ListParams::default().labels(&format!("{LABEL}={run}"));
    pods.delete_collection(&DeleteParams::default(), &lp)
        .await?;
    loop {
        let left = pods.list_metadata(&lp).await?.items.len();
        if left == 0 {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < POD_TIMEOUT,
            "{left} pods of {run} left {POD_TIMEOUT:?} after deleting them"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// No ConfigMaps or Secrets: the bench pods reference none.
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

/// The direct CRI path: the calls the agent's pod worker makes for a new pod, without the
/// agent.
struct Direct {
    runtime: CriRuntime,
    node: NodeContext,
}

impl Direct {
    fn new(site: &Site) -> Self {
        Self {
            runtime: site.runtime.clone(),
            node: NodeContext::new(
                NODE_NAME,
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                site.dir().join("direct-pods"),
                None,
                "cluster.local",
            ),
        }
    }

    /// RunPodSandbox (own network namespace: CNI), PodSandboxStatus (the pod IP), ImageStatus,
    /// CreateContainer, StartContainer, with the agent's configurations of the bench pod:
    /// the time until StartContainer returned.
    async fn start_one(&self, run: &str, i: usize) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let name = format!("{run}-{i}");
        let mut pod = bench_pod(&name, run)?;
        pod.metadata.uid = Some(format!("{run}-{i}-{}", std::process::id()));
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some(NODE_NAME.into());
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        std::fs::create_dir_all(self.node.pod_log_dir(&uid))?;
        let mut sandbox = sandbox_config(&pod, &self.node, 0)?;
        sandbox.labels.insert(LABEL.into(), "direct".into());
        let id = self.runtime.run_pod_sandbox(sandbox.clone(), "").await?;
        let ip = self
            .runtime
            .pod_sandbox_status(&id)
            .await?
            .network
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty())
            .context("the sandbox has no IP: CNI did not run")?;
        let spec = pod.spec.as_ref().context("no spec")?;
        let container = &spec.containers[0];
        ensure!(
            self.runtime.image_status(IMAGE).await?.is_some(),
            "{IMAGE} is not present"
        );
        let mut config = container_config(
            &pod,
            container,
            0,
            &PreparedVolumes::default(),
            &NoObjects,
            &self.node,
            Some(&ip),
        )?;
        config.labels.insert(LABEL.into(), "direct".into());
        let cid = self.runtime.create_container(&id, config, sandbox).await?;
        self.runtime.start_container(&cid).await?;
        Ok(started.elapsed())
    }

    /// `n` pods at once: each one's time from the start of the batch.
    async fn batch(&self, run: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
        let starts = (0..n).map(|i| self.start_one(run, i));
        futures::future::try_join_all(starts).await
    }

    /// Stops and removes every sandbox the direct path made (by label), and their files.
    async fn remove_all(&self) -> anyhow::Result<()> {
        let filter = cri::PodSandboxFilter {
            label_selector: HashMap::from([(LABEL.to_string(), "direct".to_string())]),
            ..Default::default()
        };
        let sandboxes = self.runtime.list_pod_sandboxes(Some(filter)).await?;
        let removes = sandboxes.iter().map(|s| async move {
            self.runtime.stop_pod_sandbox(&s.id).await?;
            self.runtime.remove_pod_sandbox(&s.id).await
        });
        futures::future::try_join_all(removes).await?;
        if self.node.pods_dir.exists() {
            std::fs::remove_dir_all(&self.node.pods_dir)?;
        }
        Ok(())
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// p50 and p99 (nearest rank) of `samples`.
fn p50_p99(samples: &[Duration]) -> (Duration, Duration) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    (quantile(&sorted, 0.5), quantile(&sorted, 0.99))
}

/// Prints the p50/p99 figures of one case, the API path next to the direct one, and the
/// ratios.
fn start_case_figures(case: &str, api: &[Seen], direct: &[Duration]) {
    let running: Vec<Duration> = api.iter().filter_map(|s| s.running).collect();
    let bound: Vec<Duration> = api.iter().filter_map(|s| s.bound).collect();
    let (a50, a99) = p50_p99(&running);
    let (d50, d99) = p50_p99(direct);
    let (b50, b99) = p50_p99(&bound);
    for (q, a, d) in [("p50", a50, d50), ("p99", a99, d99)] {
        figure(
            &format!("pod create -> Running {q}, {case}"),
            Some(millis(a)),
            Unit::Millis,
            None,
        );
        figure(
            &format!("direct CRI pod start {q}, {case}"),
            Some(millis(d)),
            Unit::Millis,
            None,
        );
        figure(
            &format!("ratio agent/direct {q}, {case}"),
            Some(a.as_secs_f64() / d.as_secs_f64().max(1e-9)),
            Unit::Times,
            Some(Goal::AtMost(1.3, "<= 1.3x")),
        );
    }
    note(&format!(
        "{case}: {} API samples, {} direct samples; create -> bound (scheduler) p50 {:.0} ms p99 \
         {:.0} ms; Running as the pod watch reports status.phase, direct as StartContainer \
         returns",
        running.len(),
        direct.len(),
        millis(b50),
        millis(b99)
    ));
}

async fn start_figures(
    counts: &Counts,
    site: &Site,
    progress: &dyn Fn(String),
) -> anyhow::Result<()> {
    let direct = Direct::new(site);
    let result = async {
        // Warm-up, not counted: the first pod of each path.
        progress("node: warm-up pod through the API and through CRI".into());
        api_batch(&site.client, "warm", 1).await?;
        api_delete(&site.client, "warm").await?;
        direct.batch("dwarm", 1).await?;
        direct.remove_all().await?;

        let (mut api1, mut direct1) = (Vec::new(), Vec::new());
        for run in 0..counts.single_runs {
            progress(format!(
                "node: 1 pod, run {}/{}",
                run + 1,
                counts.single_runs
            ));
            let name = format!("one{run}");
            api1.extend(api_batch(&site.client, &name, 1).await?);
            api_delete(&site.client, &name).await?;
            direct1.extend(direct.batch(&format!("d{name}"), 1).await?);
            direct.remove_all().await?;
        }
        let (mut apin, mut directn) = (Vec::new(), Vec::new());
        for round in 0..counts.batch_rounds {
            progress(format!(
                "node: {} pods at once, round {}/{}",
                counts.batch,
                round + 1,
                counts.batch_rounds
            ));
            let name = format!("many{round}");
            let t = Instant::now();
            apin.extend(api_batch(&site.client, &name, counts.batch).await?);
            let api_took = t.elapsed();
            let deleted = api_delete(&site.client, &name).await?;
            let t = Instant::now();
            directn.extend(direct.batch(&format!("d{name}"), counts.batch).await?);
            let direct_took = t.elapsed();
            direct.remove_all().await?;
            progress(format!(
                "node: round {}: API all Running in {:.2} s (deleted in {:.1} s), direct {:.2} s",
                round + 1,
                api_took.as_secs_f64(),
                deleted.as_secs_f64(),
                direct_took.as_secs_f64()
            ));
        }
        start_case_figures(
            &format!("1 pod ({} runs)", counts.single_runs),
            &api1,
            &direct1,
        );
        start_case_figures(
            &format!(
                "{} pods at once ({} rounds)",
                counts.batch, counts.batch_rounds
            ),
            &apin,
            &directn,
        );
        anyhow::Ok(())
    }
    .await;
    let removed = direct.remove_all().await;
    result?;
    removed
}

async fn loaded_figures(
    counts: &Counts,
    site: &Site,
    progress: &dyn Fn(String),
) -> anyhow::Result<()> {
    progress(format!("node: {} pods running, settling", counts.batch));
    api_batch(&site.client, "steady", counts.batch).await?;
    tokio::time::sleep(counts.settle).await;
    let pid = site.agent_pid();
    let procs = NodeProcesses::of(site.dir(), &site.pids());
    let cpu = |pids: &[u32]| -> f64 {
        pids.iter()
            .filter_map(|&p| cpu_seconds(Some(p)).ok())
            .sum::<f64>()
    };
    let (agent0, containerd0, shims0) = (
        cpu_seconds(Some(pid))?,
        cpu(&procs.containerd),
        cpu(&procs.shims),
    );
    progress(format!(
        "node: measuring agent CPU over {} s",
        counts.cpu_window.as_secs()
    ));
    let t0 = Instant::now();
    tokio::time::sleep(counts.cpu_window).await;
    let window = t0.elapsed().as_secs_f64();
    let agent_cpu = (cpu_seconds(Some(pid))? - agent0) / window * 100.0;
    let containerd_cpu = (cpu(&procs.containerd) - containerd0) / window * 100.0;
    let shims_cpu = (cpu(&procs.shims) - shims0) / window * 100.0;
    let when = format!("{} pods running", counts.batch);
    let total = memory_figures(
        site,
        "edgesite agent",
        Some(Goal::Below(mb(25.0), "< 25 MB")),
        &when,
    );
    figure(
        &format!("node total RSS (agent + containerd + shims), {when}"),
        Some(total),
        Unit::MiB,
        None,
    );
    figure(
        &format!("agent CPU, {when}"),
        Some(agent_cpu),
        Unit::Percent,
        Some(Goal::Below(1.0, "< 1 % of one core")),
    );
    note(&format!(
        "over {window:.1} s with {when}: managed containerd {containerd_cpu:.2} % of one core, \
         the {} shims together {shims_cpu:.2} %",
        procs.shims.len()
    ));
    let deleted = api_delete(&site.client, "steady").await?;
    progress(format!(
        "node: {} pods deleted in {:.1} s",
        counts.batch,
        deleted.as_secs_f64()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_processes_are_told_apart_by_program() {
        assert_eq!(
            classify("/usr/bin/containerd --config /tmp/esb-x/a/containerd/config.toml"),
            Kind::Containerd
        );
        assert_eq!(
            classify("/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id abc -address /tmp/s"),
            Kind::Shim
        );
        assert_eq!(classify("/pause"), Kind::Other);
        assert_eq!(classify("sleep 3600"), Kind::Other);
    }

    #[test]
    fn percentiles_of_few_samples() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        let (p50, p99) = p50_p99(&ms(&[30, 10, 20]));
        assert_eq!(
            (p50, p99),
            (Duration::from_millis(20), Duration::from_millis(30))
        );
        let (p50, p99) = p50_p99(&ms(&(1..=100).collect::<Vec<_>>()));
        assert_eq!(
            (p50, p99),
            (Duration::from_millis(50), Duration::from_millis(99))
        );
    }
}
