//! `edgesite-bench`: the store figures of `docs/benchmarks.md`, measured on the embedded engine
//! and on a real etcd side by side, with the same workload and the same durability (every
//! acknowledged write is on disk: the embedded engine fsyncs its write-ahead log on every group
//! commit, etcd fsyncs its WAL on every commit by default); and the API-server figures, measured
//! on the release `edgesite` binary run as its own process (see [`server`]).
//!
//! Each figure is printed as one line, `label  embedded X  etcd Y  ratio X/Y  (goal …) met|MISSED`,
//! so that runs can be compared over time with `grep`/`diff`. Progress goes to stderr.
//!
//! ```text
//! cargo run --release -p edgesite-bench            # full run (about 10 minutes)
//! cargo run --release -p edgesite-bench -- --quick # smaller counts (about 2 minutes)
//! cargo run --release -p edgesite-bench -- --only server [--quick]  # API server only
//! cargo run --release -p edgesite-bench -- --only cluster [--quick] # scheduler, controllers, hollow nodes
//! cargo run --release -p edgesite-bench -- --only scheduling [--quick] # scheduler throughput, in-process
//! cargo run --release -p edgesite-bench -- --only node [--quick] # pod start, agent footprint (root)
//! cargo run --release -p edgesite-bench -- --only authz [--quick] # ns per authorization decision
//! ```
#![allow(clippy::disallowed_methods)] // a harness: it waits for and measures real processes

mod authz;
mod backend;
mod cluster;
mod machine;
mod node;
mod report;
mod scheduling;
mod server;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use edgesite_store::embedded::CompactionPolicy;

use backend::{Instance, Kind, OpenOptions};
use report::{Figure, Goal, Pair, Unit};

/// Value size of every workload.
const VALUE_SIZE: usize = 1024;
/// Operations per transaction when loading keys (etcd's default `--max-txn-ops` is 128).
const LOAD_TXN_OPS: usize = 128;
/// Concurrent transactions when loading keys.
const LOAD_CONCURRENCY: usize = 8;
/// The history window of the file-size figure, for both backends.
const KEEP_REVISIONS: u64 = 1_000;
/// etcd's backend quota: its default 2 GiB would raise the NOSPACE alarm during the 1M-update
/// run, because etcd's revision compactor only runs every 5 minutes.
const ETCD_QUOTA_ARG: &str = "--quota-backend-bytes=8589934592";
/// Set in the environment of a re-executed bench (see [`reexec_for_tmpdir`]).
const REEXEC_ENV: &str = "EDGESITE_BENCH_REEXEC";

#[derive(Parser, Debug)]
#[command(
    name = "edgesite-bench",
    about = "Store benchmarks: the embedded engine and a real etcd side by side, same workload, \
             same durability; one line per figure with the ratio embedded/etcd"
)]
struct Cli {
    #[command(subcommand)]
    internal: Option<Internal>,

    /// Measure only this backend, or only the API server.
    #[arg(long, value_enum)]
    only: Option<Only>,

    /// The `edgesite` binary of the server figures [default: build it with
    /// `cargo build --release -p edgesite` and use what cargo reports].
    #[arg(long, value_name = "PATH")]
    edgesite_bin: Option<PathBuf>,

    /// Smaller counts and shorter durations (about 2 minutes instead of 10).
    #[arg(long)]
    quick: bool,

    /// Seconds each writes/s figure is measured for, after a 1 s warm-up [default: 5, quick: 2].
    #[arg(long, value_name = "N")]
    duration_secs: Option<u64>,

    /// Where both backends keep their data, in fresh subdirectories removed at the end. It must
    /// be on a real disk, not tmpfs [default: the system temporary directory if it is not tmpfs,
    /// else `bench-data` next to the bench binary in the target directory].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Run only these figures (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "FIGURES")]
    figures: Vec<FigureKind>,

    /// Updates of the file-size figure [default: 1000000, quick: 100000].
    #[arg(long, value_name = "N")]
    updates: Option<u64>,

    /// Time limit of the update run, per backend, in seconds [default: 300, quick: 60].
    #[arg(long, value_name = "SECS")]
    updates_time_limit_secs: Option<u64>,

    /// Concurrent writers of the update run.
    #[arg(long, value_name = "N", default_value_t = 128)]
    update_writers: usize,
}

#[derive(Subcommand, Debug)]
enum Internal {
    /// Opens an embedded store at PATH, loads KEYS keys, prints this process's memory figures.
    #[command(hide = true)]
    RssChild {
        #[arg(long)]
        path: PathBuf,
        #[arg(long)]
        keys: u64,
        #[arg(long)]
        value_size: usize,
    },
}

/// What `--only` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Only {
    /// the embedded store's figures
    Embedded,
    /// etcd's figures
    Etcd,
    /// the API server's figures (all `server-*` figures)
    Server,
    /// the cluster figures of issue 4 (all `cluster-*` figures: scheduler, controllers,
    /// hollow nodes)
    Cluster,
    /// the scheduler throughput figure (in-process server, 1000 hollow nodes, 10k pods)
    Scheduling,
    /// the authorization figure of issue 13: one decision with 1000 RoleBindings, in-process
    Authz,
    /// the node figures of issue 11: pod start through the agent and straight through CRI,
    /// the agent's and containerd's footprint, the binary size (needs root, containerd, CNI)
    Node,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FigureKind {
    /// writes/s with 1 and with 32 writers
    Writes,
    /// watch delivery latency
    Watch,
    /// range of 10k keys
    Range,
    /// resident memory with 100k keys
    Rss,
    /// file size after 1M updates with automatic compaction
    FileSize,
    /// API server: ready time and idle RSS
    ServerStart,
    /// API server: ConfigMap creates/s with 1 and 32 clients
    ServerCreates,
    /// API server: lists of 1000 ConfigMaps and 10k pods, RSS after them
    ServerList,
    /// API server: 1000 watchers, update -> all have the event
    ServerWatch,
    /// API server: release binary size
    ServerBinary,
    /// cluster: Deployment of 100 replicas -> all Ready on 100 hollow nodes
    ClusterRollout,
    /// cluster: server RSS and CPU with 1000 hollow nodes heartbeating every 10 s
    ClusterIdle,
    /// scheduler: 10k pending pods bound on 1000 hollow nodes, pods/s
    Scheduling,
    /// node: pod start (agent vs direct CRI), agent/containerd RSS and CPU, binary size
    Node,
    /// authorization: ns per decision with 1000 RoleBindings
    Authz,
}

impl FigureKind {
    const STORE: [Self; 5] = [
        Self::Writes,
        Self::Watch,
        Self::Range,
        Self::Rss,
        Self::FileSize,
    ];
    const SERVER: [Self; 5] = [
        Self::ServerStart,
        Self::ServerCreates,
        Self::ServerList,
        Self::ServerWatch,
        Self::ServerBinary,
    ];

    const CLUSTER: [Self; 2] = [Self::ClusterRollout, Self::ClusterIdle];

    fn is_server(self) -> bool {
        Self::SERVER.contains(&self)
            || Self::CLUSTER.contains(&self)
            || matches!(self, Self::Scheduling | Self::Node | Self::Authz)
    }
}

/// The counts and durations of one run.
#[derive(Debug, Clone)]
struct Settings {
    quick: bool,
    backends: Vec<Kind>,
    figures: Vec<FigureKind>,
    warmup: Duration,
    write_duration: Duration,
    watch_writes: usize,
    range_keys: u64,
    range_runs: usize,
    rss_keys: u64,
    updates: u64,
    update_keys: u64,
    update_writers: usize,
    update_limit: Duration,
    edgesite_bin: Option<PathBuf>,
}

impl Settings {
    fn from_cli(cli: &Cli) -> Self {
        let q = cli.quick;
        Self {
            quick: q,
            backends: match cli.only {
                Some(Only::Embedded) => vec![Kind::Embedded],
                Some(Only::Etcd) => vec![Kind::Etcd],
                Some(
                    Only::Server | Only::Cluster | Only::Scheduling | Only::Node | Only::Authz,
                ) => {
                    vec![]
                }
                None => vec![Kind::Embedded, Kind::Etcd],
            },
            figures: match (cli.figures.is_empty(), cli.only) {
                (false, _) => cli.figures.clone(),
                (true, Some(Only::Server)) => FigureKind::SERVER.to_vec(),
                (true, Some(Only::Cluster)) => FigureKind::CLUSTER.to_vec(),
                (true, Some(Only::Scheduling)) => vec![FigureKind::Scheduling],
                (true, Some(Only::Node)) => vec![FigureKind::Node],
                (true, Some(Only::Authz)) => vec![FigureKind::Authz],
                (true, Some(_)) => FigureKind::STORE.to_vec(),
                (true, None) => [FigureKind::STORE, FigureKind::SERVER].concat(),
            },
            warmup: Duration::from_secs(1),
            write_duration: Duration::from_secs(cli.duration_secs.unwrap_or(if q { 2 } else { 5 })),
            watch_writes: if q { 500 } else { 2000 },
            range_keys: 10_000,
            range_runs: if q { 10 } else { 20 },
            rss_keys: if q { 20_000 } else { 100_000 },
            updates: cli.updates.unwrap_or(if q { 100_000 } else { 1_000_000 }),
            update_keys: 1000,
            update_writers: cli.update_writers.max(1),
            update_limit: Duration::from_secs(cli.updates_time_limit_secs.unwrap_or(if q {
                60
            } else {
                300
            })),
            edgesite_bin: cli.edgesite_bin.clone(),
        }
    }

    fn server_plan(&self) -> Option<server::Plan> {
        let has = |k: FigureKind| self.figures.contains(&k);
        FigureKind::SERVER
            .iter()
            .any(|&k| has(k))
            .then(|| server::Plan {
                quick: self.quick,
                start: has(FigureKind::ServerStart),
                creates: has(FigureKind::ServerCreates),
                list: has(FigureKind::ServerList),
                watch: has(FigureKind::ServerWatch),
                binary: has(FigureKind::ServerBinary),
                edgesite_bin: self.edgesite_bin.clone(),
            })
    }

    fn cluster_plan(&self) -> Option<cluster::Plan> {
        let has = |k: FigureKind| self.figures.contains(&k);
        FigureKind::CLUSTER
            .iter()
            .any(|&k| has(k))
            .then(|| cluster::Plan {
                quick: self.quick,
                rollout: has(FigureKind::ClusterRollout),
                idle: has(FigureKind::ClusterIdle),
                edgesite_bin: self.edgesite_bin.clone(),
            })
    }

    fn describe(&self) -> String {
        format!(
            "{}: writes/s over {} s each (+{} s warm-up); watch {} writes; range {} keys x {} runs; \
             RSS {} keys; {} updates over {} keys by {} writers (limit {} s per backend); \
             values {} B",
            if self.quick { "quick" } else { "full" },
            self.write_duration.as_secs(),
            self.warmup.as_secs(),
            self.watch_writes,
            self.range_keys,
            self.range_runs,
            self.rss_keys,
            self.updates,
            self.update_keys,
            self.update_writers,
            self.update_limit.as_secs(),
            VALUE_SIZE,
        )
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cli.internal {
        Some(Internal::RssChild {
            ref path,
            keys,
            value_size,
        }) => runtime.block_on(rss_child(path, keys, value_size)),
        None => {
            let base = match &cli.data_dir {
                Some(dir) => {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    dir.canonicalize()?
                }
                None => default_base_dir()?,
            };
            if let Some(code) = reexec_for_tmpdir(&base)? {
                std::process::exit(code);
            }
            runtime.block_on(run(Settings::from_cli(&cli), base))
        }
    }
}

/// The default home of the data: the system temporary directory unless it is tmpfs (whose
/// fsync is free and would flatter both backends), else `bench-data` in the target directory.
fn default_base_dir() -> anyhow::Result<PathBuf> {
    let tmp = std::env::temp_dir().canonicalize()?;
    if machine::filesystem(&tmp).is_some_and(|fs| fs.is_tmpfs()) {
        let exe = std::env::current_exe()?;
        let target = exe
            .parent()
            .context("the bench binary has no parent directory")?;
        let dir = target.join("bench-data");
        std::fs::create_dir_all(&dir)?;
        Ok(dir.canonicalize()?)
    } else {
        Ok(tmp)
    }
}

/// The testkit creates etcd's data directory under the system temporary directory; for etcd to
/// live next to the embedded store on the chosen disk, the bench runs itself again with
/// `TMPDIR` pointing there (setting the variable in-process would need `unsafe`). Returns the
/// child's exit code when it did.
fn reexec_for_tmpdir(base: &Path) -> anyhow::Result<Option<i32>> {
    let tmp = std::env::temp_dir().canonicalize().ok();
    if tmp.as_deref() == Some(base) || std::env::var_os(REEXEC_ENV).is_some() {
        return Ok(None);
    }
    let exe = std::env::current_exe()?;
    let status = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("TMPDIR", base)
        .env(REEXEC_ENV, "1")
        .status()
        .context("re-running the bench with TMPDIR set")?;
    Ok(Some(status.code().unwrap_or(1)))
}

/// Everything a figure needs to open a backend.
#[derive(Debug)]
struct Ctx {
    settings: Settings,
    /// Fresh parent directory of the embedded stores of this run.
    data: tempfile::TempDir,
    value: Arc<Vec<u8>>,
    started: Instant,
    failures: usize,
}

impl Ctx {
    fn progress(&self, msg: impl std::fmt::Display) {
        eprintln!("[{:>6.1}s] {msg}", self.started.elapsed().as_secs_f64());
    }

    async fn open(&self, kind: Kind, opts: &OpenOptions) -> anyhow::Result<Instance> {
        Instance::open(kind, self.data.path(), opts).await
    }

    /// Records a failed measurement: the run goes on with the other figures.
    fn failed(&mut self, kind: Kind, what: &str, e: &anyhow::Error) {
        self.failures += 1;
        eprintln!("error: {kind} {what}: {e:#}");
    }
}

async fn run(settings: Settings, base: PathBuf) -> anyhow::Result<()> {
    let data = tempfile::Builder::new()
        .prefix("edgesite-bench-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a data directory under {}", base.display()))?;
    let facts = machine::Facts::collect(data.path());
    let store_figures =
        !settings.backends.is_empty() && settings.figures.iter().any(|f| !f.is_server());
    if store_figures {
        println!(
            "EdgeSite store benchmark: embedded engine vs etcd, same workload, same durability"
        );
        for line in facts.header_lines(&settings.describe(), ETCD_QUOTA_ARG) {
            println!("{line}");
        }
        for warning in facts.warnings() {
            println!("WARNING: {warning}");
        }
        println!();
    } else {
        // Only the lines about the run and the machine; the server part prints its own.
        for line in facts.header_lines("", ETCD_QUOTA_ARG) {
            if ["date", "commit", "machine", "load"]
                .iter()
                .any(|p| line.starts_with(p))
            {
                println!("{line}");
            }
        }
    }
    let mut ctx = Ctx {
        settings,
        data,
        value: Arc::new(workload::value_bytes(VALUE_SIZE)),
        started: Instant::now(),
        failures: 0,
    };
    let figures = ctx.settings.figures.clone();
    for figure in figures {
        if ctx.settings.backends.is_empty() {
            break;
        }
        match figure {
            FigureKind::Writes => {
                for (writers, goal) in [(1usize, 1.0), (32, 2.0)] {
                    writes_figure(&mut ctx, writers, goal).await;
                }
            }
            FigureKind::Watch => watch_figure(&mut ctx).await,
            FigureKind::Range => range_figure(&mut ctx).await,
            FigureKind::Rss => rss_figure(&mut ctx).await,
            FigureKind::FileSize => file_size_figure(&mut ctx).await,
            FigureKind::ServerStart
            | FigureKind::ServerCreates
            | FigureKind::ServerList
            | FigureKind::ServerWatch
            | FigureKind::ServerBinary
            | FigureKind::ClusterRollout
            | FigureKind::ClusterIdle
            | FigureKind::Scheduling
            | FigureKind::Node
            | FigureKind::Authz => {}
        }
    }
    if let Some(plan) = ctx.settings.server_plan() {
        let started = ctx.started;
        let progress = |msg: String| {
            eprintln!("[{:>6.1}s] {msg}", started.elapsed().as_secs_f64());
        };
        let outcome = server::run(&plan, ctx.data.path(), &progress).await;
        ctx.failures += outcome.failures;
    }
    if let Some(plan) = ctx.settings.cluster_plan() {
        let started = ctx.started;
        let progress = |msg: String| {
            eprintln!("[{:>6.1}s] {msg}", started.elapsed().as_secs_f64());
        };
        let outcome = cluster::run(&plan, ctx.data.path(), &progress).await;
        ctx.failures += outcome.failures;
    }
    if ctx.settings.figures.contains(&FigureKind::Scheduling) {
        let started = ctx.started;
        let progress = |msg: String| {
            eprintln!("[{:>6.1}s] {msg}", started.elapsed().as_secs_f64());
        };
        ctx.failures += scheduling::run(ctx.data.path(), ctx.settings.quick, &progress).await;
    }
    if ctx.settings.figures.contains(&FigureKind::Authz) {
        ctx.failures += authz::run(ctx.settings.quick);
    }
    if ctx.settings.figures.contains(&FigureKind::Node) {
        let started = ctx.started;
        let progress = |msg: String| {
            eprintln!("[{:>6.1}s] {msg}", started.elapsed().as_secs_f64());
        };
        let plan = node::Plan {
            quick: ctx.settings.quick,
            edgesite_bin: ctx.settings.edgesite_bin.clone(),
        };
        ctx.failures += node::run(&plan, &progress).await;
    }
    report::note(&format!(
        "load average {} (1/5/15 min) at the end",
        machine::load_average()
    ));
    ctx.progress("done");
    if ctx.failures > 0 {
        bail!(
            "{} measurement(s) failed (see the errors above)",
            ctx.failures
        );
    }
    Ok(())
}

async fn writes_figure(ctx: &mut Ctx, writers: usize, goal: f64) {
    let mut rate = Pair::default();
    for kind in ctx.settings.backends.clone() {
        ctx.progress(format!("{kind}: writes/s with {writers} writer(s)"));
        let r = async {
            let inst = ctx.open(kind, &OpenOptions::default()).await?;
            let r = workload::write_rate(
                inst.store.clone(),
                writers,
                ctx.settings.warmup,
                ctx.settings.write_duration,
                ctx.value.clone(),
            )
            .await;
            inst.close();
            r
        }
        .await;
        match r {
            Ok(r) => {
                ctx.progress(format!(
                    "{kind}: {} writes acknowledged in {:.1} s",
                    r.ops,
                    r.window.as_secs_f64()
                ));
                rate.set(kind, r.per_sec);
            }
            Err(e) => ctx.failed(kind, "writes/s", &e),
        }
    }
    let label = if writers == 1 {
        "writes/s 1 writer (1 KiB)".to_string()
    } else {
        format!("writes/s {writers} writers (1 KiB)")
    };
    Figure::new(label, Unit::PerSec, rate)
        .goal(Goal::RatioAtLeast(goal))
        .print();
}

async fn watch_figure(ctx: &mut Ctx) {
    let mut ack50 = Pair::default();
    let mut ack99 = Pair::default();
    let mut send50 = Pair::default();
    let mut send99 = Pair::default();
    let mut notes = Vec::new();
    let n = ctx.settings.watch_writes;
    for kind in ctx.settings.backends.clone() {
        ctx.progress(format!("{kind}: watch latency over {n} writes"));
        let r = async {
            let inst = ctx.open(kind, &OpenOptions::default()).await?;
            let r = workload::watch_latency(inst.store.clone(), n, ctx.value.clone()).await;
            inst.close();
            r
        }
        .await;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        match r {
            Ok(r) => {
                ack50.set(kind, ms(r.from_ack.p50));
                ack99.set(kind, ms(r.from_ack.p99));
                send50.set(kind, ms(r.from_send.p50));
                send99.set(kind, ms(r.from_send.p99));
                notes.push(format!(
                    "{kind} {} of {} events arrived before the put returned (counted as 0), \
                     ack->event mean {:.3} ms max {:.3} ms, sent->event mean {:.3} ms max {:.3} ms",
                    r.early,
                    r.events,
                    ms(r.from_ack.mean),
                    ms(r.from_ack.max),
                    ms(r.from_send.mean),
                    ms(r.from_send.max),
                ));
            }
            Err(e) => ctx.failed(kind, "watch latency", &e),
        }
    }
    Figure::new(
        "watch latency p50 (write ack -> event)",
        Unit::Millis,
        ack50,
    )
    .print();
    Figure::new(
        "watch latency p99 (write ack -> event)",
        Unit::Millis,
        ack99,
    )
    .goal(Goal::EmbeddedBelow(5.0))
    .print();
    Figure::new(
        "watch latency p50 (write sent -> event)",
        Unit::Millis,
        send50,
    )
    .print();
    Figure::new(
        "watch latency p99 (write sent -> event)",
        Unit::Millis,
        send99,
    )
    .print();
    report::note(&format!("watch: {}", notes.join("; ")));
}

async fn range_figure(ctx: &mut Ctx) {
    let mut median = Pair::default();
    let (keys, runs) = (ctx.settings.range_keys, ctx.settings.range_runs);
    for kind in ctx.settings.backends.clone() {
        ctx.progress(format!("{kind}: range of {keys} keys, {runs} runs"));
        let r = async {
            let inst = ctx.open(kind, &OpenOptions::default()).await?;
            let r = async {
                workload::load(
                    inst.store.clone(),
                    b"/bench/range/",
                    keys,
                    ctx.value.clone(),
                    LOAD_TXN_OPS,
                    LOAD_CONCURRENCY,
                )
                .await?;
                workload::range_median(inst.store.clone(), b"/bench/range/", keys, runs).await
            }
            .await;
            inst.close();
            r
        }
        .await;
        match r {
            Ok(d) => median.set(kind, d.as_secs_f64() * 1e3),
            Err(e) => ctx.failed(kind, "range", &e),
        }
    }
    Figure::new(
        format!("range {}k keys x 1 KiB (median of {runs})", keys / 1000),
        Unit::Millis,
        median,
    )
    .print();
}

async fn rss_figure(ctx: &mut Ctx) {
    let mut rss = Pair::default();
    let mut notes = Vec::new();
    let keys = ctx.settings.rss_keys;
    for kind in ctx.settings.backends.clone() {
        ctx.progress(format!("{kind}: resident memory with {keys} keys"));
        let r = match kind {
            Kind::Embedded => rss_embedded(ctx, keys).await,
            Kind::Etcd => rss_etcd(ctx, keys).await,
        };
        match r {
            Ok(m) => {
                rss.set(kind, m.rss_kib as f64 / 1024.0);
                notes.push(format!(
                    "{kind} anon {:.1} MiB + file {:.1} MiB (peak {:.1} MiB)",
                    m.anon_kib as f64 / 1024.0,
                    m.file_kib as f64 / 1024.0,
                    m.hwm_kib as f64 / 1024.0
                ));
            }
            Err(e) => ctx.failed(kind, "RSS", &e),
        }
    }
    Figure::new(
        format!("RSS with {}k keys x 1 KiB", keys / 1000),
        Unit::MiB,
        rss,
    )
    .print();
    report::note(&format!(
        "RSS: {} (embedded: a child process holding only the store; etcd: the etcd process)",
        notes.join("; ")
    ));
}

/// Runs the embedded store in a child process (this binary, hidden subcommand) so that its
/// memory is measured alone, without the bench's own.
async fn rss_embedded(ctx: &Ctx, keys: u64) -> anyhow::Result<machine::Memory> {
    let dir = tempfile::Builder::new()
        .prefix("rss-")
        .tempdir_in(ctx.data.path())?;
    let path = dir.path().join("store.redb");
    let exe = std::env::current_exe()?;
    let out = tokio::process::Command::new(exe)
        .arg("rss-child")
        .arg("--path")
        .arg(&path)
        .arg("--keys")
        .arg(keys.to_string())
        .arg("--value-size")
        .arg(VALUE_SIZE.to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("running the RSS child")?;
    if !out.status.success() {
        bail!(
            "the RSS child failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    machine::Memory::parse_line(&String::from_utf8_lossy(&out.stdout))
}

async fn rss_child(path: &Path, keys: u64, value_size: usize) -> anyhow::Result<()> {
    let store: Arc<dyn edgesite_store::Store> = Arc::new(
        edgesite_store::embedded::EmbeddedStore::open(
            edgesite_store::embedded::EmbeddedConfig::new(path),
        )
        .await?,
    );
    workload::load(
        store.clone(),
        b"/bench/rss/",
        keys,
        Arc::new(workload::value_bytes(value_size)),
        LOAD_TXN_OPS,
        LOAD_CONCURRENCY,
    )
    .await?;
    let count = store.count(b"/bench/rss/").await?;
    anyhow::ensure!(count == keys, "loaded {count} keys, expected {keys}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mem = machine::Memory::of_process(None)?;
    println!("{}", mem.to_line());
    Ok(())
}

async fn rss_etcd(ctx: &Ctx, keys: u64) -> anyhow::Result<machine::Memory> {
    let inst = ctx.open(Kind::Etcd, &OpenOptions::default()).await?;
    let r = async {
        workload::load(
            inst.store.clone(),
            b"/bench/rss/",
            keys,
            ctx.value.clone(),
            LOAD_TXN_OPS,
            LOAD_CONCURRENCY,
        )
        .await?;
        let count = inst.store.count(b"/bench/rss/").await?;
        anyhow::ensure!(count == keys, "loaded {count} keys, expected {keys}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        machine::Memory::of_process(inst.etcd_pid())
    }
    .await;
    inst.close();
    r
}

async fn file_size_figure(ctx: &mut Ctx) {
    let s = ctx.settings.clone();
    let live = s.update_keys * VALUE_SIZE as u64;
    let mut size = Pair::default();
    let mut per_live = Pair::default();
    let mut done = Pair::default();
    let mut notes = Vec::new();
    let opts = OpenOptions {
        compaction: Some(CompactionPolicy {
            keep_revisions: Some(KEEP_REVISIONS),
            keep_duration: None,
        }),
        etcd_args: vec![
            "--auto-compaction-mode=revision".into(),
            format!("--auto-compaction-retention={KEEP_REVISIONS}"),
        ],
    };
    for kind in s.backends.clone() {
        ctx.progress(format!(
            "{kind}: {} updates over {} keys by {} writers (limit {} s)",
            s.updates,
            s.update_keys,
            s.update_writers,
            s.update_limit.as_secs()
        ));
        let r = async {
            let inst = ctx.open(kind, &opts).await?;
            let r = async {
                let run = workload::updates(
                    inst.store.clone(),
                    s.updates,
                    s.update_keys,
                    s.update_writers,
                    s.update_limit,
                    ctx.value.clone(),
                    |done, elapsed| {
                        ctx.progress(format!(
                            "{kind}: {done} updates after {:.0} s",
                            elapsed.as_secs_f64()
                        ))
                    },
                )
                .await?;
                let status = inst.store.status().await?;
                let file = inst.file_size()?;
                Ok::<_, anyhow::Error>((run, status, file))
            }
            .await;
            inst.close();
            r
        }
        .await;
        match r {
            Ok((run, status, file)) => {
                size.set(kind, file as f64 / (1024.0 * 1024.0));
                per_live.set(kind, file as f64 / live as f64);
                done.set(kind, run.done);
                notes.push(format!(
                    "{kind} {} updates in {:.1} s ({:.0}/s){}, revision {}, compacted to {}, \
                     {} keys",
                    run.done,
                    run.elapsed.as_secs_f64(),
                    run.done as f64 / run.elapsed.as_secs_f64(),
                    if run.cut_by_time {
                        format!(", CUT by the {} s limit", s.update_limit.as_secs())
                    } else {
                        String::new()
                    },
                    status.revision,
                    status.compact_revision,
                    status.key_count
                ));
            }
            Err(e) => ctx.failed(kind, "file size", &e),
        }
    }
    let count = |n: u64| {
        if n.is_multiple_of(1_000_000) {
            format!("{}M", n / 1_000_000)
        } else if n.is_multiple_of(1000) {
            format!("{}k", n / 1000)
        } else {
            n.to_string()
        }
    };
    let updates_label = match (done.embedded, done.etcd) {
        (Some(a), Some(b)) if a != b => format!("{}/{}", count(a), count(b)),
        (Some(a), _) | (None, Some(a)) => count(a),
        (None, None) => count(s.updates),
    };
    Figure::new(
        format!(
            "file size, {updates_label} updates/{}k keys",
            s.update_keys / 1000
        ),
        Unit::MiB,
        size,
    )
    .print();
    Figure::new(
        format!("file/live (live {:.1} MiB)", live as f64 / 1048576.0),
        Unit::Times,
        per_live,
    )
    .goal(Goal::EmbeddedBelowTimes(10.0))
    .print();
    report::note(&format!(
        "file size: history window {KEEP_REVISIONS} revisions (embedded CompactionPolicy \
         keep_revisions={KEEP_REVISIONS}, keep_duration=None; etcd --auto-compaction-mode=revision \
         --auto-compaction-retention={KEEP_REVISIONS}, which etcd applies every 5 minutes); \
         the window alone holds {:.1} MiB of values ({:.0}x live); etcd file = member/snap/db",
        (KEEP_REVISIONS * VALUE_SIZE as u64) as f64 / 1048576.0,
        (KEEP_REVISIONS * VALUE_SIZE as u64) as f64 / live as f64
    ));
    report::note(&format!("file size: {}", notes.join("; ")));
}
