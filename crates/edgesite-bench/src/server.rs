//! The API-server figures of `docs/benchmarks.md`: the release `edgesite` binary runs as a
//! separate process (`edgesite server --data-dir TMP --bind-address 127.0.0.1 --secure-port
//! PORT`) and the bench talks to it over TLS with the admin client certificate, as kubectl
//! would.
//!
//! Each figure is one line, `label  value  (goal …) met|MISSED`. Nothing is warmed up: every
//! request the bench sends is either part of a figure or reported as setup in the progress
//! output (stderr). Setup that is excluded from a figure is named in its note.

mod client;
mod objects;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use tokio::sync::mpsc;

use crate::machine;
use client::{Client, H1};

/// Namespace of the ConfigMaps created one at a time.
const NS_SEQ: &str = "bench-seq";
/// Namespace of the ConfigMaps created by the concurrent clients (beyond [`NS_CM_LIST`]).
const NS_CONC: &str = "bench-conc";
/// Namespace holding exactly [`Counts::list_config_maps`] ConfigMaps, for the list figure.
const NS_CM_LIST: &str = "bench-cm-list";
/// Namespace holding the pods of the list figure.
const NS_PODS: &str = "bench-pods";
/// Namespace holding the one watched pod.
const NS_WATCH: &str = "bench-watch";
/// The watched pod.
const WATCHED_POD: &str = "watched";
/// How long the server may take to start before the bench gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between polls while waiting for the server to start.
const POLL: Duration = Duration::from_millis(1);
/// Pause before reading an RSS figure, so that the server has finished the work just done.
const SETTLE: Duration = Duration::from_secs(1);
/// Pause between two watch rounds.
const ROUND_GAP: Duration = Duration::from_millis(100);

/// Which server figures to measure, and how.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Smaller counts for a smoke run.
    pub quick: bool,
    /// Ready time (fresh and existing data directory) and idle RSS.
    pub start: bool,
    /// ConfigMap creates/s, sequential and concurrent.
    pub creates: bool,
    /// Lists of 1000 ConfigMaps and of 10k pods, and the RSS after them.
    pub list: bool,
    /// 1000 watchers, time until all have the event.
    pub watch: bool,
    /// Size of the release binary.
    pub binary: bool,
    /// The `edgesite` binary to run; `None`: build it with `cargo build --release -p edgesite`.
    pub edgesite_bin: Option<PathBuf>,
}

impl Plan {
    fn needs_server(&self) -> bool {
        self.start || self.creates || self.list || self.watch
    }
}

/// The counts of one run.
#[derive(Debug, Clone)]
struct Counts {
    seq_creates: usize,
    conc_creates: usize,
    conc_clients: usize,
    list_config_maps: usize,
    cm_list_runs: usize,
    pods: usize,
    pod_list_runs: usize,
    pod_load_clients: usize,
    watchers: usize,
    watch_connections: usize,
    watch_rounds: usize,
}

impl Counts {
    fn new(quick: bool) -> Self {
        Self {
            seq_creates: if quick { 1000 } else { 5000 },
            conc_creates: if quick { 2000 } else { 5000 },
            conc_clients: 32,
            list_config_maps: 1000,
            cm_list_runs: if quick { 20 } else { 100 },
            pods: 10_000,
            pod_list_runs: if quick { 5 } else { 30 },
            pod_load_clients: 32,
            watchers: 1000,
            watch_connections: 10,
            watch_rounds: if quick { 5 } else { 30 },
        }
    }

    fn config_maps(&self) -> usize {
        self.seq_creates + self.conc_creates
    }

    fn describe(&self, quick: bool) -> String {
        format!(
            "{}: {} sequential + {} concurrent ConfigMap creates ({} clients); {} lists of {} \
             ConfigMaps; {} pods, {} lists; {} watchers on {} HTTP/2 connections, {} rounds",
            if quick { "quick" } else { "full" },
            self.seq_creates,
            self.conc_creates,
            self.conc_clients,
            self.cm_list_runs,
            self.list_config_maps,
            self.pods,
            self.pod_list_runs,
            self.watchers,
            self.watch_connections,
            self.watch_rounds,
        )
    }
}

/// How a server figure reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Unit {
    Millis,
    MiB,
    PerSec,
    /// Per cent (of one core, for CPU figures).
    Percent,
    /// A multiple (a ratio of two figures).
    Times,
}

impl Unit {
    fn format(self, v: f64) -> String {
        match self {
            Self::Millis if v < 1.0 => format!("{v:.3} ms"),
            Self::Millis if v < 100.0 => format!("{v:.2} ms"),
            Self::Millis => format!("{v:.0} ms"),
            Self::MiB => format!("{v:.1} MiB"),
            Self::PerSec => format!("{v:.0}/s"),
            Self::Percent => format!("{v:.1} %"),
            Self::Times => format!("{v:.2}x"),
        }
    }
}

/// A goal, in the figure's unit.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Goal {
    /// Below this value; the text says it as the brief does (e.g. `< 20 MB`).
    Below(f64, &'static str),
    /// At least this value.
    AtLeast(f64, &'static str),
    /// At most this value.
    AtMost(f64, &'static str),
}

impl Goal {
    fn met(self, v: f64) -> bool {
        match self {
            Self::Below(limit, _) => v < limit,
            Self::AtLeast(limit, _) => v >= limit,
            Self::AtMost(limit, _) => v <= limit,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Self::Below(_, t) | Self::AtLeast(_, t) | Self::AtMost(_, t) => t,
        }
    }
}

/// MB (10^6 bytes, as the goals are written) in MiB, the unit the figures print.
pub(crate) fn mb(n: f64) -> f64 {
    n * 1e6 / 1_048_576.0
}

/// The line of one figure: `label  value  (goal …) met|MISSED`.
fn figure_line(label: &str, value: Option<f64>, unit: Unit, goal: Option<Goal>) -> String {
    let shown = value.map_or_else(|| "-".to_string(), |v| unit.format(v));
    let mut line = format!("{label:<48} {shown:>12}");
    if let Some(goal) = goal {
        line.push_str(&format!("   (goal {})", goal.text()));
        match value {
            Some(v) if goal.met(v) => line.push_str(" met"),
            Some(_) => line.push_str(" MISSED"),
            None => line.push_str(" not measured"),
        }
    }
    line
}

pub(crate) fn figure(label: &str, value: Option<f64>, unit: Unit, goal: Option<Goal>) {
    println!("{}", figure_line(label, value, unit, goal));
}

pub(crate) fn note(text: &str) {
    println!("  note: {text}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `q` quantile (0 < q <= 1) of sorted samples, nearest rank: p99 of fewer than 100
/// samples is their maximum.
pub(crate) fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What a server run reports back to the caller, which adds the failures to its own count.
#[derive(Debug)]
pub struct Outcome {
    /// Measurements that failed (each printed as `error: …` on stderr).
    pub failures: usize,
}

/// Runs the planned server figures with data under `base` (a real disk). Progress goes to
/// `progress`, figures and notes to stdout.
pub async fn run(plan: &Plan, base: &Path, progress: &dyn Fn(String)) -> Outcome {
    let counts = Counts::new(plan.quick);
    let mut failures = 0;
    let mut fail = |what: &str, e: &anyhow::Error| {
        failures += 1;
        eprintln!("error: server {what}: {e:#}");
    };
    println!();
    println!("EdgeSite API server benchmark: the release edgesite binary as its own process, TLS");
    println!("with the admin client certificate, embedded store");
    if cfg!(debug_assertions) {
        println!(
            "WARNING: the bench itself is a debug build; its client side is slow (use --release)"
        );
    }
    let bin = match &plan.edgesite_bin {
        Some(bin) => Ok(bin.clone()),
        None => {
            progress("server: cargo build --release -p edgesite".into());
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
    println!(
        "data      {} ({})",
        base.display(),
        machine::filesystem(base).map_or_else(|| "unknown fs".to_string(), |f| f.to_string())
    );
    println!("run       {}", counts.describe(plan.quick));
    println!();

    if plan.binary {
        match binary_figures(&bin) {
            Ok(()) => {}
            Err(e) => fail("binary size", &e),
        }
    }
    if plan.needs_server()
        && let Err(e) = server_figures(plan, &counts, &bin, base, progress).await
    {
        fail("figures", &e);
    }
    Outcome { failures }
}

/// `cargo build --release -p edgesite` in this workspace; returns the executable it reports.
pub(crate) fn build_release_binary() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "edgesite",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(&workspace)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build --release -p edgesite")?;
    if !out.status.success() {
        bail!("cargo build --release -p edgesite failed ({})", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "edgesite")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo build reported no edgesite executable")
}

fn binary_figures(bin: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
    let size = bytes.len() as f64 / 1_048_576.0;
    figure(
        "release binary size",
        Some(size),
        Unit::MiB,
        Some(Goal::Below(mb(30.0), "< 30 MB")),
    );
    let has_symtab = bytes.windows(8).any(|w| w == b".symtab\0");
    note(&format!(
        "binary: {} bytes, {} (a .symtab section {})",
        bytes.len(),
        if has_symtab {
            "NOT stripped"
        } else {
            "stripped"
        },
        if has_symtab {
            "is present"
        } else {
            "is absent"
        }
    ));
    println!(
        "{:<48} {:>12}   (goal < 10 min on 2 cores) measured by hand, see docs/benchmarks.md",
        "clean release build time", "-"
    );
    Ok(())
}

/// A running `edgesite server`.
#[derive(Debug)]
struct ServerProcess {
    child: tokio::process::Child,
    pid: u32,
    log: PathBuf,
}

/// How a start went.
#[derive(Debug)]
struct Startup {
    /// Spawn to `admin.kubeconfig` existing.
    kubeconfig: Duration,
    /// Spawn to the first `200` of `/readyz`.
    ready: Duration,
    /// `/readyz` attempts (connection refused included).
    attempts: u32,
    /// The server's own `API server ready in …` line, trimmed to the message and fields.
    own_line: Option<String>,
}

impl ServerProcess {
    /// Spawns the server on a free port and waits until `/readyz` answers `200`.
    async fn start(
        bin: &Path,
        data_dir: &Path,
        log: PathBuf,
    ) -> anyhow::Result<(Self, Client, Startup)> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let kubeconfig = data_dir.join("admin.kubeconfig");
        if kubeconfig.exists() {
            std::fs::remove_file(&kubeconfig)?;
        }
        let log_file = std::fs::File::create(&log)?;
        let spawned = Instant::now();
        let child = tokio::process::Command::new(bin)
            .arg("server")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--bind-address", "127.0.0.1", "--secure-port"])
            .arg(port.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let mut proc = Self { child, pid, log };
        let deadline = spawned + START_TIMEOUT;
        while !kubeconfig.exists() {
            proc.check_alive()?;
            if Instant::now() > deadline {
                bail!("no admin.kubeconfig after {START_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
        let kubeconfig_at = spawned.elapsed();
        let client = Client::load(data_dir, addr)?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let ok = async {
                let mut c = client.h1().await?;
                anyhow::Ok(c.get("/readyz").await?.status == StatusCode::OK)
            }
            .await
            .unwrap_or(false);
            if ok {
                break;
            }
            proc.check_alive()?;
            if Instant::now() > deadline {
                bail!("/readyz not 200 after {START_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
        let ready = spawned.elapsed();
        let mut own_line = proc.own_ready_line();
        if own_line.is_none() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            own_line = proc.own_ready_line();
        }
        Ok((
            proc,
            client,
            Startup {
                kubeconfig: kubeconfig_at,
                ready,
                attempts,
                own_line,
            },
        ))
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the server exited ({status}); its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        Ok(())
    }

    fn own_ready_line(&self) -> Option<String> {
        let log = std::fs::read_to_string(&self.log).ok()?;
        let line = log.lines().find(|l| l.contains("API server ready in"))?;
        let from = line.find("API server ready in")?;
        Some(line[from..].to_string())
    }

    fn memory(&self) -> anyhow::Result<machine::Memory> {
        machine::Memory::of_process(Some(self.pid))
    }

    /// SIGTERM, then SIGKILL after 10 s.
    async fn stop(mut self) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid)?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("the server did not stop within 10 s of SIGTERM; killed");
            }
        }
        Ok(())
    }
}

/// User + system CPU seconds of a process (`None`: this one) so far, from `/proc/<pid>/stat`
/// (fields 14 and 15, in clock ticks of 1/100 s, Linux's `USER_HZ`).
pub(crate) fn cpu_seconds(pid: Option<u32>) -> anyhow::Result<f64> {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_string(),
        |p| format!("/proc/{p}/stat"),
    );
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces; the fields after it start at field 3.
    let rest = stat.rsplit_once(')').context("no ')' in stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("short stat")?.parse::<f64>()? / 100.0)
    };
    Ok(tick(11)? + tick(12)?)
}

/// CPU seconds of the server and of the bench during some work.
#[derive(Debug, Clone, Copy)]
struct CpuSpan {
    server: f64,
    bench: f64,
}

impl CpuSpan {
    fn now(server_pid: u32) -> anyhow::Result<Self> {
        Ok(Self {
            server: cpu_seconds(Some(server_pid))?,
            bench: cpu_seconds(None)?,
        })
    }

    fn since(self, server_pid: u32) -> anyhow::Result<String> {
        let end = Self::now(server_pid)?;
        Ok(format!(
            "CPU used: server {:.2} s, bench client {:.2} s",
            end.server - self.server,
            end.bench - self.bench
        ))
    }
}

/// A free loopback port (bound and released; the server binds it right after).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn startup_note(which: &str, s: &Startup) {
    note(&format!(
        "{which}: admin.kubeconfig after {:.1} ms, /readyz 200 after {:.1} ms ({} attempt(s), \
         1 ms apart, each a new TCP+TLS connection); server log: {}",
        ms(s.kubeconfig),
        ms(s.ready),
        s.attempts,
        s.own_line.as_deref().unwrap_or("(no ready line)")
    ));
}

fn memory_note(what: &str, m: &machine::Memory) {
    note(&format!(
        "{what}: VmRSS {:.1} MiB = anon {:.1} + file {:.1} MiB, peak (VmHWM) {:.1} MiB",
        m.rss_kib as f64 / 1024.0,
        m.anon_kib as f64 / 1024.0,
        m.file_kib as f64 / 1024.0,
        m.hwm_kib as f64 / 1024.0
    ));
}

async fn server_figures(
    plan: &Plan,
    counts: &Counts,
    bin: &Path,
    base: &Path,
    progress: &dyn Fn(String),
) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("edgesite-server-bench-")
        .tempdir_in(base)?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;

    progress("server: first start, fresh data directory".into());
    let (first, _, fresh) =
        ServerProcess::start(bin, &data, dir.path().join("server-1.log")).await?;
    first.stop().await?;
    progress("server: second start, existing data directory".into());
    let (server, client, again) =
        ServerProcess::start(bin, &data, dir.path().join("server-2.log")).await?;
    let result = async {
        if plan.start {
            let goal = Some(Goal::Below(300.0, "< 300 ms"));
            figure(
                "ready time, fresh data dir (spawn -> /readyz)",
                Some(ms(fresh.ready)),
                Unit::Millis,
                goal,
            );
            figure(
                "ready time, existing data dir",
                Some(ms(again.ready)),
                Unit::Millis,
                goal,
            );
            startup_note(
                "fresh (creates the store, the CA and all certificates)",
                &fresh,
            );
            startup_note("existing (opens the store, loads the PKI)", &again);
        }
        tokio::time::sleep(SETTLE).await;
        let idle = server.memory()?;
        if plan.start {
            figure(
                "server RSS idle",
                Some(idle.rss_kib as f64 / 1024.0),
                Unit::MiB,
                Some(Goal::Below(mb(20.0), "< 20 MB")),
            );
            memory_note("idle, 1 s after the second start answered /readyz", &idle);
        }
        let mut setup = client.h1().await?;
        for ns in [NS_SEQ, NS_CONC, NS_CM_LIST, NS_PODS, NS_WATCH] {
            create_namespace(&mut setup, ns).await?;
        }
        setup
            .post_json("/api/v1/nodes", objects::node())
            .await?
            .expect(StatusCode::CREATED, "creating the node of the pods")?;
        if plan.creates || plan.list {
            config_map_figures(plan, counts, &client, &server, progress).await?;
        }
        if plan.list {
            pod_list_figures(counts, &client, &server, progress).await?;
        }
        if plan.watch {
            watch_figures(counts, &client, &mut setup, server.pid, progress).await?;
            memory_note("after the watch rounds", &server.memory()?);
        }
        anyhow::Ok(())
    }
    .await;
    let stopped = server.stop().await;
    result?;
    stopped
}

async fn create_namespace(c: &mut H1, name: &str) -> anyhow::Result<()> {
    let reply = c
        .post_json("/api/v1/namespaces", objects::namespace(name))
        .await?;
    if reply.status != StatusCode::CREATED && reply.status != StatusCode::CONFLICT {
        reply.expect(StatusCode::CREATED, &format!("creating namespace {name}"))?;
    }
    Ok(())
}

/// `(path, body)` of the creates of one run, built before the clock starts.
type Jobs = Arc<Vec<(String, Bytes)>>;

fn config_map_jobs(ns: &str, prefix: &str, range: std::ops::Range<usize>) -> Vec<(String, Bytes)> {
    range
        .map(|i| {
            (
                format!("/api/v1/namespaces/{ns}/configmaps"),
                objects::config_map(&format!("{prefix}-{i:06}")),
            )
        })
        .collect()
}

/// Posts every job over one connection, one after the other; the connection is opened before
/// the clock starts.
async fn create_sequential(client: &Client, jobs: &[(String, Bytes)]) -> anyhow::Result<Duration> {
    let mut c = client.h1().await?;
    let started = Instant::now();
    for (path, body) in jobs {
        c.post_json(path, body.clone())
            .await?
            .expect(StatusCode::CREATED, "create")?;
    }
    Ok(started.elapsed())
}

/// Posts the jobs from `clients` connections, each taking the next job when its previous one
/// is answered; all connections are opened before the clock starts.
async fn create_concurrent(
    client: &Client,
    jobs: Jobs,
    clients: usize,
) -> anyhow::Result<Duration> {
    let conns = futures::future::try_join_all((0..clients).map(|_| client.h1())).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let (jobs, next) = (jobs.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((path, body)) = jobs.get(i) else {
                        return anyhow::Ok(());
                    };
                    c.post_json(path, body.clone())
                        .await?
                        .expect(StatusCode::CREATED, "create")?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

/// Timings of repeated lists.
#[derive(Debug)]
struct ListStats {
    median: Duration,
    p99: Duration,
    min: Duration,
    max: Duration,
    /// Median time to the response head.
    head: Duration,
    body_bytes: usize,
}

/// Lists `path` `runs` times over one keep-alive connection (opened before the first run),
/// timing from sending the request to having the whole body; checks every answer's item count
/// after its clock stopped.
async fn list_runs(
    client: &Client,
    path: &str,
    runs: usize,
    items: usize,
) -> anyhow::Result<ListStats> {
    let mut c = client.h1().await?;
    let mut times = Vec::with_capacity(runs);
    let mut heads = Vec::with_capacity(runs);
    let mut body_bytes = 0;
    for _ in 0..runs {
        let started = Instant::now();
        let reply = c.get(path).await?;
        times.push(started.elapsed());
        heads.push(reply.head_after);
        let reply = reply.expect(StatusCode::OK, "list")?;
        let list: serde_json::Value = serde_json::from_slice(&reply.body)?;
        // The root-CA publisher adds `kube-root-ca.crt` to every namespace; it is not the bench's.
        let got = list["items"].as_array().map_or(0, |items| {
            items
                .iter()
                .filter(|i| i["metadata"]["name"] != "kube-root-ca.crt")
                .count()
        });
        anyhow::ensure!(got == items, "{path}: {got} items, expected {items}");
        body_bytes = reply.body.len();
    }
    times.sort();
    heads.sort();
    Ok(ListStats {
        head: quantile(&heads, 0.5),
        median: quantile(&times, 0.5),
        p99: quantile(&times, 0.99),
        min: times[0],
        max: times[times.len() - 1],
        body_bytes,
    })
}

fn list_figures(what: &str, goal: Goal, runs: usize, items: usize, s: &ListStats) {
    figure(
        &format!("list {what}, median of {runs}"),
        Some(ms(s.median)),
        Unit::Millis,
        Some(goal),
    );
    figure(
        &format!("list {what}, p99 of {runs}"),
        Some(ms(s.p99)),
        Unit::Millis,
        None,
    );
    note(&format!(
        "list {what}: min {:.2} ms, max {:.2} ms, median time to the response head {:.2} ms; \
         JSON body {:.2} MiB ({} B per item)",
        ms(s.min),
        ms(s.max),
        ms(s.head),
        s.body_bytes as f64 / 1_048_576.0,
        s.body_bytes / items.max(1)
    ));
}

async fn config_map_figures(
    plan: &Plan,
    counts: &Counts,
    client: &Client,
    server: &ServerProcess,
    progress: &dyn Fn(String),
) -> anyhow::Result<()> {
    let seq = config_map_jobs(NS_SEQ, "seq", 0..counts.seq_creates);
    progress(format!(
        "server: {} ConfigMap creates, one client",
        seq.len()
    ));
    let seq_time = create_sequential(client, &seq).await?;
    // The concurrent creates fill the list namespace first, then their own.
    let in_list = counts.list_config_maps.min(counts.conc_creates);
    let mut conc = config_map_jobs(NS_CM_LIST, "cm", 0..in_list);
    conc.extend(config_map_jobs(
        NS_CONC,
        "conc",
        in_list..counts.conc_creates,
    ));
    progress(format!(
        "server: {} ConfigMap creates, {} clients",
        conc.len(),
        counts.conc_clients
    ));
    let conc_n = conc.len();
    let conc_time = create_concurrent(client, Arc::new(conc), counts.conc_clients).await?;
    if plan.creates {
        figure(
            "ConfigMap creates/s, 1 client (HTTP/1.1)",
            Some(seq.len() as f64 / seq_time.as_secs_f64()),
            Unit::PerSec,
            Some(Goal::AtLeast(2500.0, ">= 2500/s")),
        );
        figure(
            &format!(
                "ConfigMap creates/s, {} clients (HTTP/1.1)",
                counts.conc_clients
            ),
            Some(conc_n as f64 / conc_time.as_secs_f64()),
            Unit::PerSec,
            Some(Goal::AtLeast(5000.0, ">= 5000/s")),
        );
        note(&format!(
            "creates: {} in {:.2} s one after the other on one keep-alive connection; {} in \
             {:.2} s from {} connections; {} B JSON bodies; connections opened before the \
             clock starts; every answer checked for 201",
            seq.len(),
            seq_time.as_secs_f64(),
            conc_n,
            conc_time.as_secs_f64(),
            counts.conc_clients,
            seq.first().map_or(0, |j| j.1.len())
        ));
    }
    if plan.list {
        tokio::time::sleep(SETTLE).await;
        memory_note(
            &format!(
                "after {} ConfigMaps, before any list, 1 s pause",
                counts.config_maps()
            ),
            &server.memory()?,
        );
        progress(format!(
            "server: {} lists of {} ConfigMaps",
            counts.cm_list_runs, in_list
        ));
        let s = list_runs(
            client,
            &format!("/api/v1/namespaces/{NS_CM_LIST}/configmaps"),
            counts.cm_list_runs,
            in_list,
        )
        .await?;
        let label = if in_list == 1000 {
            "1000 ConfigMaps".to_string()
        } else {
            format!("{in_list} ConfigMaps")
        };
        list_figures(
            &label,
            Goal::Below(4.0, "< 4 ms"),
            counts.cm_list_runs,
            in_list,
            &s,
        );
        tokio::time::sleep(SETTLE).await;
        let m = server.memory()?;
        let total = counts.config_maps();
        figure(
            &format!(
                "server RSS after {}k ConfigMaps + {} lists",
                total / 1000,
                counts.cm_list_runs
            ),
            Some(m.rss_kib as f64 / 1024.0),
            Unit::MiB,
            Some(Goal::Below(mb(60.0), "< 60 MB")),
        );
        memory_note(
            &format!("after {total} ConfigMaps and the lists, 1 s pause"),
            &m,
        );
    }
    Ok(())
}

async fn pod_list_figures(
    counts: &Counts,
    client: &Client,
    server: &ServerProcess,
    progress: &dyn Fn(String),
) -> anyhow::Result<()> {
    let jobs: Vec<_> = (0..counts.pods)
        .map(|i| {
            (
                format!("/api/v1/namespaces/{NS_PODS}/pods"),
                objects::pod(&format!("web-7f9c6d5b8-{i:06}")),
            )
        })
        .collect();
    let sent = jobs.first().map_or(0, |j| j.1.len());
    progress(format!(
        "server: loading {} pods ({} clients)",
        counts.pods, counts.pod_load_clients
    ));
    let load = create_concurrent(client, Arc::new(jobs), counts.pod_load_clients).await?;
    progress(format!(
        "server: {} lists of {} pods",
        counts.pod_list_runs, counts.pods
    ));
    let cpu = CpuSpan::now(server.pid)?;
    let s = list_runs(
        client,
        &format!("/api/v1/namespaces/{NS_PODS}/pods"),
        counts.pod_list_runs,
        counts.pods,
    )
    .await?;
    let cpu = cpu.since(server.pid)?;
    list_figures(
        &format!("{}k pods", counts.pods / 1000),
        Goal::Below(60.0, "< 60 ms"),
        counts.pod_list_runs,
        counts.pods,
        &s,
    );
    note(&format!(
        "pods: {} B sent per create; loaded in {:.2} s ({:.0}/s, {} clients); during the lists \
         (clients also parse each answer after its clock stopped) {cpu}",
        sent,
        load.as_secs_f64(),
        counts.pods as f64 / load.as_secs_f64(),
        counts.pod_load_clients
    ));
    tokio::time::sleep(SETTLE).await;
    memory_note(
        &format!("after also {} pods and their lists", counts.pods),
        &server.memory()?,
    );
    Ok(())
}

/// An event line that carried a round's marker: the watcher, the round, and when the line was
/// complete.
type Arrival = (usize, usize, Instant);

/// Finds `bench-round-NNNNN` in an event line.
fn round_in(line: &[u8]) -> Option<usize> {
    let key = b"\"bench-round-";
    let at = line.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = line.get(at..at + 5)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

async fn watch_figures(
    counts: &Counts,
    client: &Client,
    setup: &mut H1,
    server_pid: u32,
    progress: &dyn Fn(String),
) -> anyhow::Result<()> {
    let created = setup
        .post_json(
            &format!("/api/v1/namespaces/{NS_WATCH}/pods"),
            objects::pod(WATCHED_POD),
        )
        .await?
        .expect(StatusCode::CREATED, "creating the watched pod")?;
    let pod: serde_json::Value = serde_json::from_slice(&created.body)?;
    let rv = pod["metadata"]["resourceVersion"]
        .as_str()
        .context("the created pod has no resourceVersion")?
        .to_string();

    progress(format!(
        "server: starting {} watchers on {} HTTP/2 connections",
        counts.watchers, counts.watch_connections
    ));
    let conns =
        futures::future::try_join_all((0..counts.watch_connections).map(|_| client.h2())).await?;
    let uri = format!(
        "{}/api/v1/namespaces/{NS_WATCH}/pods?watch=true&resourceVersion={rv}",
        client.base()
    );
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<Arrival>();
    let (started_tx, mut started) = mpsc::unbounded_channel::<anyhow::Result<()>>();
    let mut tasks = Vec::with_capacity(counts.watchers);
    for w in 0..counts.watchers {
        let mut send = conns[w % conns.len()].clone();
        let (uri, arrived_tx, started_tx) = (uri.clone(), arrived_tx.clone(), started_tx.clone());
        tasks.push(tokio::spawn(async move {
            let resp = async {
                let req = Request::get(&uri)
                    .header("accept", "application/json")
                    .body(Full::new(Bytes::new()))?;
                send.ready().await?;
                let resp = send.send_request(req).await?;
                anyhow::ensure!(resp.status() == StatusCode::OK, "watch: {}", resp.status());
                anyhow::Ok(resp)
            }
            .await;
            let mut body = match resp {
                Ok(resp) => {
                    let _ = started_tx.send(Ok(()));
                    resp.into_body()
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return;
                }
            };
            let mut buf = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.extend_from_slice(&data);
                while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                    let now = Instant::now();
                    if let Some(round) = round_in(&buf[..end]) {
                        let _ = arrived_tx.send((w, round, now));
                    }
                    buf.drain(..=end);
                }
            }
        }));
    }
    drop(started_tx);
    for _ in 0..counts.watchers {
        tokio::time::timeout(Duration::from_secs(60), started.recv())
            .await
            .context("watchers did not start within 60 s")?
            .context("a watcher task ended")??;
    }

    progress(format!(
        "server: {} rounds of one pod update seen by {} watchers",
        counts.watch_rounds, counts.watchers
    ));
    let mut all = Vec::with_capacity(counts.watch_rounds);
    let mut each = Vec::with_capacity(counts.watch_rounds * counts.watchers);
    let mut update_replies = Vec::with_capacity(counts.watch_rounds);
    let path = format!("/api/v1/namespaces/{NS_WATCH}/pods/{WATCHED_POD}");
    let cpu = CpuSpan::now(server_pid)?;
    let result = async {
        for round in 0..counts.watch_rounds {
            let sent = Instant::now();
            setup
                .request(
                    "PATCH",
                    &path,
                    Some("application/merge-patch+json"),
                    objects::round_patch(round),
                )
                .await?
                .expect(StatusCode::OK, "patching the watched pod")?;
            update_replies.push(sent.elapsed());
            let mut last = sent;
            let mut seen = 0;
            let mut has = vec![false; counts.watchers];
            while seen < counts.watchers {
                let (w, r, at) = tokio::time::timeout(Duration::from_secs(30), arrived.recv())
                    .await
                    .with_context(|| {
                        format!(
                            "round {round}: {seen} of {} watchers had the event after 30 s",
                            counts.watchers
                        )
                    })?
                    .context("all watchers ended")?;
                // Another writer (a controller) may touch the pod too: its events carry the
                // marker of the round they follow; only a watcher's first event of this round
                // counts.
                if r != round || std::mem::replace(&mut has[w], true) {
                    continue;
                }
                seen += 1;
                each.push(at.saturating_duration_since(sent));
                last = last.max(at);
            }
            all.push(last - sent);
            tokio::time::sleep(ROUND_GAP).await;
        }
        anyhow::Ok(())
    }
    .await;
    let cpu = cpu.since(server_pid);
    for task in &tasks {
        task.abort();
    }
    result?;
    let cpu = cpu?;
    all.sort();
    each.sort();
    update_replies.sort();
    let rounds = counts.watch_rounds;
    figure(
        &format!(
            "watch: update -> all {} watchers, p99 of {rounds}",
            counts.watchers
        ),
        Some(ms(quantile(&all, 0.99))),
        Unit::Millis,
        Some(Goal::Below(50.0, "< 50 ms")),
    );
    figure(
        &format!("watch: update -> all {} watchers, median", counts.watchers),
        Some(ms(quantile(&all, 0.5))),
        Unit::Millis,
        None,
    );
    note(&format!(
        "watch: {} watchers = {} HTTP/2 connections x {} streams, each `?watch=true&\
         resourceVersion=` on one namespace holding one pod; each round one merge-patch of it \
         from another connection (answered in median {:.2} ms); clock from sending the patch to \
         the last watcher having the whole event line; per watcher p50 {:.2} ms, p99 {:.2} ms; \
         rounds {} ms apart; over the {} rounds {cpu}",
        counts.watchers,
        counts.watch_connections,
        counts.watchers.div_ceil(counts.watch_connections),
        ms(quantile(&update_replies, 0.5)),
        ms(quantile(&each, 0.5)),
        ms(quantile(&each, 0.99)),
        ROUND_GAP.as_millis(),
        counts.watch_rounds,
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_readable() {
        let spent = cpu_seconds(None).unwrap();
        assert!(spent >= 0.0);
        let pid = std::process::id();
        assert!(cpu_seconds(Some(pid)).unwrap() >= spent);
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let d: Vec<_> = (1..=10).map(Duration::from_millis).collect();
        assert_eq!(quantile(&d, 0.5), Duration::from_millis(5));
        assert_eq!(quantile(&d, 0.99), Duration::from_millis(10));
        assert_eq!(quantile(&d[..1], 0.99), Duration::from_millis(1));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn lines_carry_value_goal_and_verdict() {
        let line = figure_line(
            "ready time",
            Some(12.5),
            Unit::Millis,
            Some(Goal::Below(300.0, "< 300 ms")),
        );
        assert!(line.starts_with("ready time "), "{line}");
        assert!(line.contains("12.50 ms   (goal < 300 ms) met"), "{line}");
        let line = figure_line(
            "creates",
            Some(2400.0),
            Unit::PerSec,
            Some(Goal::AtLeast(2500.0, ">= 2500/s")),
        );
        assert!(line.ends_with("2400/s   (goal >= 2500/s) MISSED"), "{line}");
        let line = figure_line(
            "rss",
            None,
            Unit::MiB,
            Some(Goal::Below(mb(20.0), "< 20 MB")),
        );
        assert!(line.ends_with("-   (goal < 20 MB) not measured"), "{line}");
    }

    #[test]
    fn megabytes_are_decimal() {
        assert!(
            figure_line("x", Some(19.2), Unit::MiB, Some(Goal::Below(mb(20.0), "")))
                .ends_with("MISSED")
        );
        assert!(
            figure_line("x", Some(19.0), Unit::MiB, Some(Goal::Below(mb(20.0), "")))
                .ends_with("met")
        );
    }

    #[test]
    fn rounds_are_found_in_event_lines() {
        let line = format!(
            "{{\"type\":\"MODIFIED\",\"object\":{{\"metadata\":{{\"annotations\":\
             {{\"bench/round\":\"{}\"}}}}}}}}",
            objects::round_marker(42)
        );
        assert_eq!(round_in(line.as_bytes()), Some(42));
        assert_eq!(round_in(b"{\"type\":\"BOOKMARK\"}"), None);
    }
}
