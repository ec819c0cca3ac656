//! The scheduler throughput figure: an in-process API server (embedded store on disk), 1000
//! hollow nodes (edgesite-sim, Lease heartbeat every 10 s, reporting their pods Running) and
//! 10 000 pending pods created *before* the scheduler starts; then only the scheduler runs
//! (no other controller), and the figure is the time from its start until every pod has
//! `spec.nodeName`, as seen by a watch. The placement is checked for balance (most and fewest
//! pods per node).
//!
//! The pods belong to 10 made-up ReplicaSets (ownerReferences) and request 100m CPU and
//! 128Mi memory each, like a typical small web workload.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use edgesite_apiserver::{PkiOptions, Server, ServerConfig};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::oneshot;

use crate::server::{Goal, Unit, figure, note};

/// Namespace of the pods.
const NAMESPACE: &str = "default";
/// Pod creations in flight while loading.
const CREATE_CONCURRENCY: usize = 64;
/// How long the scheduler may take before the run counts as failed.
const TIMEOUT: Duration = Duration::from_secs(300);

/// The counts of one run.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    /// Hollow nodes.
    pub nodes: usize,
    /// Pending pods.
    pub pods: usize,
}

impl Counts {
    /// The figure's counts; `quick` uses a tenth of the pods.
    pub fn new(quick: bool) -> Self {
        Self {
            nodes: 1000,
            pods: if quick { 1000 } else { 10_000 },
        }
    }
}

/// Measures the figure; returns how many measurements failed.
pub async fn run(data: &Path, quick: bool, progress: &impl Fn(String)) -> usize {
    let counts = Counts::new(quick);
    println!();
    println!(
        "EdgeSite scheduler benchmark: in-process API server (embedded store), {} hollow nodes, \
         {} pending pods, the scheduler alone",
        counts.nodes, counts.pods
    );
    match measure(data, counts, progress).await {
        Ok(()) => 0,
        Err(e) => {
            figure("scheduling-throughput", None, Unit::PerSec, Some(goal()));
            eprintln!("error: scheduling: {e:#}");
            1
        }
    }
}

fn goal() -> Goal {
    Goal::AtLeast(1000.0, ">= 1000 pods/s")
}

async fn measure(data: &Path, counts: Counts, progress: &impl Fn(String)) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("scheduling-")
        .tempdir_in(data)?;
    let mut config = ServerConfig::new(dir.path());
    config.bind_address = "127.0.0.1".parse()?;
    config.secure_port = 0;
    config.pki = PkiOptions {
        hostname: Some("edge-bench".to_owned()),
        extra_sans: Vec::new(),
        include_interface_ips: false,
    };
    let server = Server::start(config).await.context("starting the server")?;
    let client = server.in_process_client("system:kube-scheduler", &["system:masters"]);
    let result = scheduled(&client, counts, progress).await;
    server.shutdown().await;
    result
}

async fn scheduled(
    client: &Client,
    counts: Counts,
    progress: &impl Fn(String),
) -> anyhow::Result<()> {
    // Hollow nodes.
    let (stop_nodes, nodes_stopped) = oneshot::channel::<()>();
    let sim_client = client.clone();
    let sim = tokio::spawn(async move {
        let mut config = edgesite_sim::SimConfig::new(counts.nodes, "hollow");
        config.heartbeat = Duration::from_secs(10);
        edgesite_sim::run(sim_client, config, async move {
            let _ = nodes_stopped.await;
        })
        .await
    });
    let nodes: Api<Node> = Api::all(client.clone());
    let started = Instant::now();
    loop {
        let n = nodes
            .list_metadata(&ListParams::default())
            .await?
            .items
            .len();
        if n >= counts.nodes {
            break;
        }
        if started.elapsed() > Duration::from_secs(180) {
            bail!("only {n} of {} hollow nodes registered", counts.nodes);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    progress(format!(
        "{} hollow nodes registered in {:.1} s",
        counts.nodes,
        started.elapsed().as_secs_f64()
    ));

    // Pending pods.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let created = Instant::now();
    futures::stream::iter(0..counts.pods)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let set = i % 10;
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {
                        "name": format!("web-{set}-{i}"),
                        "labels": {"app": format!("web-{set}")},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                            "name": format!("web-{set}"),
                            "uid": format!("00000000-0000-4000-8000-{set:012}"),
                            "controller": true}],
                    },
                    "spec": {"containers": [{"name": "c", "image": "nginx",
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]},
                }))?;
                pods.create(&PostParams::default(), &pod).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    progress(format!(
        "{} pending pods created in {:.1} s",
        counts.pods,
        created.elapsed().as_secs_f64()
    ));

    // Follow bindings from here on.
    let listed = pods.list_metadata(&ListParams::default()).await?;
    let rv = listed.metadata.resource_version.unwrap_or_default();
    let mut watch = pods
        .watch(&WatchParams::default().timeout(290), &rv)
        .await?
        .boxed();

    let (stop_scheduler, scheduler_stopped) = oneshot::channel::<()>();
    let scheduler_client = client.clone();
    let t0 = Instant::now();
    let scheduler = tokio::spawn(async move {
        tokio::select! {
            () = edgesite_controllers::scheduler::run(
                scheduler_client,
                Arc::new(edgesite_controllers::Config::default()),
            ) => {}
            _ = scheduler_stopped => {}
        }
    });
    let mut bound: HashSet<String> = HashSet::new();
    let mut first = None;
    while bound.len() < counts.pods {
        let remaining = TIMEOUT.saturating_sub(t0.elapsed());
        let Ok(next) = tokio::time::timeout(remaining, watch.try_next()).await else {
            bail!(
                "only {} of {} pods bound after {TIMEOUT:?}",
                bound.len(),
                counts.pods
            );
        };
        match next? {
            Some(WatchEvent::Added(p) | WatchEvent::Modified(p)) => {
                if p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .is_some_and(|n| !n.is_empty())
                    && let Some(uid) = p.metadata.uid
                    && bound.insert(uid)
                    && first.is_none()
                {
                    first = Some(t0.elapsed());
                }
            }
            Some(_) => {}
            None => bail!("the pod watch ended after {} bindings", bound.len()),
        }
    }
    let elapsed = t0.elapsed();
    let _ = stop_scheduler.send(());
    let _ = scheduler.await;
    let rate = counts.pods as f64 / elapsed.as_secs_f64();
    figure(
        &format!(
            "scheduling-throughput ({} pods, {} nodes)",
            counts.pods, counts.nodes
        ),
        Some(rate),
        Unit::PerSec,
        Some(goal()),
    );
    note(&format!(
        "all {} pods bound {:.2} s after the scheduler started (first after {:.0} ms); the \
         hollow nodes report each bound pod Running meanwhile",
        counts.pods,
        elapsed.as_secs_f64(),
        first.unwrap_or_default().as_secs_f64() * 1000.0
    ));

    // Balance.
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for p in pods.list(&ListParams::default()).await?.items {
        if let Some(n) = p.spec.and_then(|s| s.node_name) {
            *per_node.entry(n).or_default() += 1;
        }
    }
    let max = per_node.values().copied().max().unwrap_or(0);
    let min = if per_node.len() < counts.nodes {
        0
    } else {
        per_node.values().copied().min().unwrap_or(0)
    };
    note(&format!(
        "balance: {} of {} nodes used, pods per node min {min} / max {max} (even: {})",
        per_node.len(),
        counts.nodes,
        counts.pods / counts.nodes
    ));
    let _ = stop_nodes.send(());
    let _ = sim.await;
    Ok(())
}
