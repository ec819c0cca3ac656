//! The DaemonSet controller against a real in-process API server, the scheduler and hollow
//! nodes: one pod per eligible node, taints, nodes coming and going, rolling updates within
//! `maxUnavailable` / `maxSurge`, status, revisions, and `kubectl rollout status`.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use futures::TryStreamExt as _;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};

mod support;
use support::kubectl::Kubectl;
use support::{Cluster, eventually, pod_image, pod_ready};

const HEARTBEAT: Duration = Duration::from_secs(1);

fn daemonset(name: &str, image: &str, strategy: Value) -> Result<DaemonSet> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "updateStrategy": strategy,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image}]},
            },
        },
    }))?)
}

/// The DaemonSet's live pods (not being deleted) by the node they are bound to.
async fn pods_by_node(client: &Client, app: &str) -> Result<BTreeMap<String, Vec<Pod>>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut out: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for p in pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?
    {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        out.entry(node).or_default().push(p);
    }
    Ok(out)
}

/// Waits until exactly `nodes` each run one ready pod of `app` with `image`, and no other
/// node runs one.
async fn wait_covering(client: &Client, app: &str, nodes: &[&str], image_: &str) -> Result<()> {
    let want: BTreeSet<String> = nodes.iter().map(|n| (*n).to_owned()).collect();
    let last = std::sync::Mutex::new(String::new());
    let r = eventually(20, "daemon pods on exactly the eligible nodes", || {
        let last = &last;
        let want = &want;
        async move {
            let by_node = pods_by_node(client, app).await?;
            *last.lock().unwrap() = format!(
                "{:?}",
                by_node
                    .iter()
                    .map(|(n, ps)| (
                        n.clone(),
                        ps.iter()
                            .map(|p| (pod_image(p), pod_ready(p)))
                            .collect::<Vec<_>>()
                    ))
                    .collect::<Vec<_>>()
            );
            let have: BTreeSet<String> = by_node.keys().cloned().collect();
            Ok(have == *want
                && by_node
                    .values()
                    .all(|ps| ps.len() == 1 && pod_ready(&ps[0]) && pod_image(&ps[0]) == image_))
        }
    })
    .await;
    r.with_context(|| format!("pods by node: {}", last.lock().unwrap()))
}

/// Waits for the DaemonSet status to show `n` nodes scheduled, updated, ready and available.
async fn wait_status(client: &Client, name: &str, n: i32) -> Result<()> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let last = std::sync::Mutex::new(String::new());
    eventually(20, "daemonset status", || {
        let last = &last;
        let api = &api;
        async move {
            let ds = api.get(name).await?;
            let s = ds.status.clone().unwrap_or_default();
            *last.lock().unwrap() = format!("{s:?}");
            Ok(s.observed_generation == ds.metadata.generation
                && s.desired_number_scheduled == n
                && s.current_number_scheduled == n
                && s.number_ready == n
                && s.number_available == Some(n)
                && s.number_unavailable == Some(0)
                && s.updated_number_scheduled == Some(n)
                && s.number_misscheduled == 0)
        }
    })
    .await
    .with_context(|| format!("status: {}", last.lock().unwrap()))
}

async fn set_taints(client: &Client, node: &str, taints: Value) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": taints}})),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn daemonset_covers_eligible_nodes_and_follows_them() -> Result<()> {
    let c = Cluster::start().await?;
    let hollow = c.hollow_nodes(3, "ds", HEARTBEAT).await?;
    set_taints(
        &c.client,
        "ds-2",
        json!([{"key": "dedicated", "value": "edge", "effect": "NoSchedule"}]),
    )
    .await?;
    // A cordoned node still runs daemons.
    let nodes: Api<Node> = Api::all(c.client.clone());
    nodes
        .patch(
            "ds-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await?;
    let dss: Api<DaemonSet> = Api::namespaced(c.client.clone(), "default");
    dss.create(
        &PostParams::default(),
        &daemonset("agent", "agent:1", json!({"type": "RollingUpdate"}))?,
    )
    .await?;

    wait_covering(&c.client, "agent", &["ds-0", "ds-1"], "agent:1").await?;
    wait_status(&c.client, "agent", 2).await?;
    let by_node = pods_by_node(&c.client, "agent").await?;
    let pod = &by_node["ds-0"][0];
    assert!(pod.name_any().starts_with("agent-"), "{}", pod.name_any());
    let labels = pod.labels();
    assert_eq!(labels["pod-template-generation"], "1");
    let hash = labels["controller-revision-hash"].clone();
    let spec = pod.spec.clone().unwrap();
    let pinned = serde_json::to_value(&spec.affinity)?;
    assert_eq!(
        pinned["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"],
        json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["ds-0"]}]}]),
    );
    let tolerated: Vec<(String, String)> = spec
        .tolerations
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key.unwrap_or_default(), t.effect.unwrap_or_default()))
        .collect();
    for (key, effect) in [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ] {
        assert!(
            tolerated.contains(&(key.to_owned(), effect.to_owned())),
            "{key}:{effect} missing from {tolerated:?}"
        );
    }
    assert_eq!(
        pod.owner_references()[0].name,
        "agent",
        "{:?}",
        pod.owner_references()
    );
    let revs: Api<ControllerRevision> = Api::namespaced(c.client.clone(), "default");
    let rev = revs.get(&format!("agent-{hash}")).await?;
    assert_eq!(rev.revision, 1);

    // Tolerating the taint brings the tainted node in (a template change: generation 2).
    dss.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"}]}}}})),
    )
    .await?;
    wait_covering(&c.client, "agent", &["ds-0", "ds-1", "ds-2"], "agent:1").await?;
    wait_status(&c.client, "agent", 3).await?;
    for ps in pods_by_node(&c.client, "agent").await?.values() {
        assert_eq!(ps[0].labels()["pod-template-generation"], "2");
    }

    // A NoExecute taint the pods do not tolerate evicts the daemon from the node.
    set_taints(
        &c.client,
        "ds-0",
        json!([{"key": "broken", "effect": "NoExecute"}]),
    )
    .await?;
    wait_covering(&c.client, "agent", &["ds-1", "ds-2"], "agent:1").await?;
    wait_status(&c.client, "agent", 2).await?;
    set_taints(&c.client, "ds-0", json!(null)).await?;
    wait_covering(&c.client, "agent", &["ds-0", "ds-1", "ds-2"], "agent:1").await?;

    // A NoSchedule taint added later keeps the running daemon, counted as misscheduled.
    set_taints(
        &c.client,
        "ds-2",
        json!([{"key": "later", "effect": "NoSchedule"}]),
    )
    .await?;
    eventually(20, "ds-2's daemon counted misscheduled", || async {
        let s = dss.get("agent").await?.status.unwrap_or_default();
        Ok(s.desired_number_scheduled == 2
            && s.current_number_scheduled == 2
            && s.number_misscheduled == 1)
    })
    .await?;
    assert_eq!(pods_by_node(&c.client, "agent").await?["ds-2"].len(), 1);
    set_taints(&c.client, "ds-2", json!(null)).await?;
    wait_status(&c.client, "agent", 3).await?;

    // A node joining gets a pod; a node removed loses it.
    let late = c.hollow_nodes(1, "late", HEARTBEAT).await?;
    wait_covering(
        &c.client,
        "agent",
        &["ds-0", "ds-1", "ds-2", "late-0"],
        "agent:1",
    )
    .await?;
    wait_status(&c.client, "agent", 4).await?;
    nodes.delete("ds-1", &DeleteParams::default()).await?;
    wait_covering(&c.client, "agent", &["ds-0", "ds-2", "late-0"], "agent:1").await?;
    wait_status(&c.client, "agent", 3).await?;

    // A deleted daemon pod comes back on its node.
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let victim = pods_by_node(&c.client, "agent").await?["ds-2"][0].name_any();
    pods.delete(&victim, &DeleteParams::default()).await?;
    eventually(20, "replacement on ds-2", || async {
        let by_node = pods_by_node(&c.client, "agent").await?;
        Ok(by_node
            .get("ds-2")
            .is_some_and(|ps| ps.len() == 1 && ps[0].name_any() != victim && pod_ready(&ps[0])))
    })
    .await?;

    late.stop().await;
    hollow.stop().await;
    c.stop().await;
    Ok(())
}

/// Follows the pods of `app` through a watch and records, after every event, how many of
/// `nodes` have no ready pod and the most pods any node has: the worst of each seen.
async fn track_rollout(
    client: Client,
    app: String,
    nodes: usize,
    synced_tx: tokio::sync::oneshot::Sender<()>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<(usize, usize)> {
    let mut synced_tx = Some(synced_tx);
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let stream = watcher(
        pods,
        watcher::Config::default().labels(&format!("app={app}")),
    )
    .default_backoff();
    futures::pin_mut!(stream);
    let mut live: HashMap<String, Pod> = HashMap::new();
    let (mut worst_unavailable, mut worst_per_node) = (0, 0);
    let mut synced = false;
    let mut stop = stop;
    loop {
        let ev = tokio::select! {
            _ = &mut stop => return Ok((worst_unavailable, worst_per_node)),
            ev = stream.try_next() => ev?,
        };
        let Some(ev) = ev else {
            bail!("pod watch ended")
        };
        match ev {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                live.insert(p.name_any(), p);
            }
            watcher::Event::Delete(p) => {
                live.remove(&p.name_any());
            }
            watcher::Event::InitDone => {
                synced = true;
                if let Some(tx) = synced_tx.take() {
                    let _ = tx.send(());
                }
            }
            watcher::Event::Init => live.clear(),
        }
        if !synced {
            continue;
        }
        let mut ready_nodes = BTreeSet::new();
        let mut per_node: HashMap<String, usize> = HashMap::new();
        for p in live.values() {
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            if !node.is_empty() {
                *per_node.entry(node.clone()).or_default() += 1;
            }
            if p.metadata.deletion_timestamp.is_none() && pod_ready(p) && !node.is_empty() {
                ready_nodes.insert(node);
            }
        }
        worst_unavailable = worst_unavailable.max(nodes.saturating_sub(ready_nodes.len()));
        worst_per_node = worst_per_node.max(per_node.values().copied().max().unwrap_or(0));
    }
}

async fn rollout(strategy: Value, nodes: usize) -> Result<(usize, usize)> {
    let c = Cluster::start().await?;
    let hollow = c.hollow_nodes(nodes, "roll", HEARTBEAT).await?;
    let dss: Api<DaemonSet> = Api::namespaced(c.client.clone(), "default");
    dss.create(
        &PostParams::default(),
        &daemonset("web", "web:1", strategy)?,
    )
    .await?;
    let names: Vec<String> = (0..nodes).map(|i| format!("roll-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_covering(&c.client, "web", &names, "web:1").await?;
    wait_status(&c.client, "web", i32::try_from(nodes)?).await?;

    let (stop, stopped) = tokio::sync::oneshot::channel();
    let (synced_tx, synced) = tokio::sync::oneshot::channel();
    let tracker = tokio::spawn(track_rollout(
        c.client.clone(),
        "web".into(),
        nodes,
        synced_tx,
        stopped,
    ));
    // The tracker has listed the pods before the update starts.
    synced.await?;
    dss.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "web:2"}]}}}})),
    )
    .await?;
    wait_covering(&c.client, "web", &names, "web:2").await?;
    wait_status(&c.client, "web", i32::try_from(nodes)?).await?;
    let _ = stop.send(());
    let worst = tracker.await??;

    // Two revisions, numbered in order; the live pods carry the newer one's hash.
    let revs: Api<ControllerRevision> = Api::namespaced(c.client.clone(), "default");
    let mut list: Vec<ControllerRevision> = revs.list(&ListParams::default()).await?.items;
    list.sort_by_key(|r| r.revision);
    ensure!(
        list.len() == 2,
        "revisions: {:?}",
        list.iter().map(|r| r.name_any()).collect::<Vec<_>>()
    );
    assert_eq!((list[0].revision, list[1].revision), (1, 2));
    let newest = list[1].labels()["controller-revision-hash"].clone();
    for ps in pods_by_node(&c.client, "web").await?.values() {
        assert_eq!(ps[0].labels()["controller-revision-hash"], newest);
    }
    hollow.stop().await;
    c.stop().await;
    Ok(worst)
}

#[tokio::test]
async fn rolling_update_keeps_within_max_unavailable() -> Result<()> {
    let (unavailable, per_node) = rollout(
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}}),
        5,
    )
    .await?;
    assert!(
        unavailable <= 2,
        "{unavailable} nodes were without a ready pod"
    );
    assert!(unavailable >= 1, "the rollout never took a pod down");
    assert_eq!(per_node, 1, "a node had two pods without surge");
    Ok(())
}

#[tokio::test]
async fn rolling_update_with_surge_keeps_every_node_serving() -> Result<()> {
    let (unavailable, per_node) = rollout(
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}),
        3,
    )
    .await?;
    assert_eq!(unavailable, 0, "a node was without a ready pod");
    assert_eq!(per_node, 2, "the surge never ran two pods on a node");
    Ok(())
}

#[tokio::test]
async fn on_delete_waits_for_pods_to_be_deleted() -> Result<()> {
    let c = Cluster::start().await?;
    let hollow = c.hollow_nodes(2, "od", HEARTBEAT).await?;
    let dss: Api<DaemonSet> = Api::namespaced(c.client.clone(), "default");
    dss.create(
        &PostParams::default(),
        &daemonset("od", "od:1", json!({"type": "OnDelete"}))?,
    )
    .await?;
    wait_covering(&c.client, "od", &["od-0", "od-1"], "od:1").await?;
    dss.patch(
        "od",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "od:2"}]}}}})),
    )
    .await?;
    let api = dss.clone();
    eventually(20, "new generation observed, nothing updated", || async {
        let ds = api.get("od").await?;
        let s = ds.status.unwrap_or_default();
        Ok(s.observed_generation == Some(2) && s.updated_number_scheduled == Some(0))
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let old = pods_by_node(&c.client, "od").await?["od-0"][0].name_any();
    assert_eq!(pod_image(&pods.get(&old).await?), "od:1");
    pods.delete(&old, &DeleteParams::default()).await?;
    eventually(
        20,
        "od-0 replaced by the new template, od-1 untouched",
        || async {
            let by_node = pods_by_node(&c.client, "od").await?;
            Ok(by_node.get("od-0").is_some_and(|ps| {
                ps.len() == 1 && pod_image(&ps[0]) == "od:2" && pod_ready(&ps[0])
            }) && by_node
                .get("od-1")
                .is_some_and(|ps| ps.len() == 1 && pod_image(&ps[0]) == "od:1"))
        },
    )
    .await?;
    let ds = dss.get("od").await?;
    let s = ds.status.unwrap_or_default();
    assert_eq!(s.desired_number_scheduled, 2);
    hollow.stop().await;
    c.stop().await;
    Ok(())
}

const DS_YAML: &str = "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: x
spec:
  selector:
    matchLabels: {app: x}
  template:
    metadata:
      labels: {app: x}
    spec:
      containers:
      - {name: c, image: 'x:1'}
";

#[tokio::test]
async fn kubectl_rollout_status_daemonset() -> Result<()> {
    let c = Cluster::start().await?;
    let k = Kubectl::new(&c)?;
    let hollow = c.hollow_nodes(3, "kds", HEARTBEAT).await?;
    let file = k.file("ds.yaml", DS_YAML)?;
    let s = k.ok(&["apply", "-f", &file]).await?;
    assert!(s.contains("daemonset.apps/x created"), "{s}");
    let rollout = ["rollout", "status", "daemonset/x", "--timeout=60s"];
    let s = k.ok(&rollout).await?;
    assert!(
        s.contains("daemon set \"x\" successfully rolled out"),
        "{s}"
    );
    let s = k.ok(&["get", "pods", "-l", "app=x", "-o", "name"]).await?;
    assert_eq!(s.lines().count(), 3, "{s}");

    // An image change rolls out too, and is recorded as revision 2.
    k.ok(&["set", "image", "daemonset/x", "c=x:2"]).await?;
    let s = k.ok(&rollout).await?;
    assert!(s.contains("successfully rolled out"), "{s}");
    assert_eq!(k.pod_images("app=x").await?, "x:2 x:2 x:2");
    assert_eq!(k.revisions("daemonset/x").await?, ["1", "2"]);

    // Undo goes back to the first template (read from its ControllerRevision), which
    // becomes revision 3.
    k.ok(&["rollout", "undo", "daemonset/x"]).await?;
    k.ok(&rollout).await?;
    assert_eq!(k.pod_images("app=x").await?, "x:1 x:1 x:1");
    assert_eq!(k.revisions("daemonset/x").await?, ["2", "3"]);
    hollow.stop().await;
    c.stop().await;
    Ok(())
}
