//! The scheduler against a real in-process API server, driven through the kube-rs client over
//! HTTPS: pods land only on nodes that pass every filter, spread over nodes, and both outcomes
//! are reported as upstream does (events, the `PodScheduled` condition).
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

mod support;
use support::{Cluster, eventually, owner_ref};

/// Registers a Ready node `name` with `cpu` cores, `pods` pod slots and the given extra
/// metadata/spec (labels, taints, unschedulable).
async fn node(client: &Client, name: &str, cpu: &str, extra: Value) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = json!({"kubernetes.io/hostname": name});
    if let Some(more) = extra.get("labels").and_then(Value::as_object) {
        for (k, v) in more {
            labels[k] = v.clone();
        }
    }
    let n: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": extra.get("spec").cloned().unwrap_or(json!({})),
    }))?;
    nodes.create(&PostParams::default(), &n).await?;
    let status = json!({"status": {
        "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "10", "ephemeral-storage": "10Gi"},
        "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "10", "ephemeral-storage": "10Gi"},
        "conditions": [{"type": "Ready",
            "status": extra.get("ready").and_then(Value::as_str).unwrap_or("True"),
            "reason": "KubeletReady", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// Creates pod `name` in `default` with `spec` merged over one container.
async fn pod(client: &Client, name: &str, labels: Value, spec: Value) -> Result<()> {
    pod_with_meta(client, name, json!({"labels": labels}), spec).await
}

async fn pod_with_meta(client: &Client, name: &str, meta: Value, spec: Value) -> Result<()> {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let mut s = json!({"containers": [{"name": "c", "image": "nginx"}]});
    if let (Some(s), Some(extra)) = (s.as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    let mut m = meta;
    m["name"] = json!(name);
    let p: Pod = serde_json::from_value(json!({"metadata": m, "spec": s}))?;
    pods.create(&PostParams::default(), &p).await?;
    Ok(())
}

/// Requests of one container.
fn requests(cpu: &str) -> Value {
    json!({"containers": [{"name": "c", "image": "nginx",
        "resources": {"requests": {"cpu": cpu}}}]})
}

async fn node_of(client: &Client, name: &str) -> Result<Option<String>> {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    Ok(pods
        .get(name)
        .await?
        .spec
        .and_then(|s| s.node_name)
        .filter(|n| !n.is_empty()))
}

/// Polls `check` every 50 ms until it gives a value, failing after `secs` seconds.
async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until pod `name` is bound and returns its node.
async fn bound(client: &Client, name: &str) -> Result<String> {
    wait_for(10, &format!("pod {name} bound"), || node_of(client, name)).await
}

/// The events about pod `name` with `reason`.
async fn events(client: &Client, name: &str, reason: &str) -> Result<Vec<Event>> {
    let api: Api<Event> = Api::default_namespaced(client.clone());
    let list = api.list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(name) && e.reason.as_deref() == Some(reason)
        })
        .collect())
}

/// Waits for the `FailedScheduling` event of `name` and returns its message.
async fn failure(client: &Client, name: &str) -> Result<String> {
    let message = wait_for(10, &format!("FailedScheduling for {name}"), || async {
        Ok(events(client, name, "FailedScheduling")
            .await?
            .first()
            .map(|e| e.message.clone().unwrap_or_default()))
    })
    .await?;
    if node_of(client, name).await?.is_some() {
        bail!("pod {name} was reported unschedulable but is bound");
    }
    Ok(message)
}

#[tokio::test]
async fn pods_spread_over_hollow_nodes_with_scheduled_events() -> Result<()> {
    let c = Cluster::start().await?;
    let nodes = c.hollow_nodes(3, "hollow", Duration::from_secs(10)).await?;
    // Six pods of one controller: two per node. The owner is a ConfigMap so that no
    // workload controller acts on the pods (and the garbage collector keeps them).
    let cms: Api<ConfigMap> = Api::default_namespaced(c.client.clone());
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "owner"}}))?;
    let cm = cms.create(&PostParams::default(), &cm).await?;
    let owner = owner_ref("ConfigMap", "v1", "owner", &cm.metadata.uid.unwrap());
    for i in 0..6 {
        pod_with_meta(
            &c.client,
            &format!("web-{i}"),
            json!({"labels": {"app": "web"}, "ownerReferences": [owner]}),
            json!({}),
        )
        .await?;
    }
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..6 {
        *per_node
            .entry(bound(&c.client, &format!("web-{i}")).await?)
            .or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "spread over every node: {per_node:?}");
    assert!(per_node.values().all(|n| *n == 2), "{per_node:?}");

    let node0 = node_of(&c.client, "web-0").await?.unwrap();
    eventually(10, "Scheduled event", || async {
        Ok(!events(&c.client, "web-0", "Scheduled").await?.is_empty())
    })
    .await?;
    let e = events(&c.client, "web-0", "Scheduled").await?.remove(0);
    assert_eq!(e.type_.as_deref(), Some("Normal"));
    assert_eq!(
        e.message.as_deref(),
        Some(format!("Successfully assigned default/web-0 to {node0}").as_str())
    );
    assert_eq!(
        e.source.and_then(|s| s.component).as_deref(),
        Some("default-scheduler")
    );
    assert_eq!(e.involved_object.kind.as_deref(), Some("Pod"));
    // The hollow node runs it: the pod is scheduled for real, not just annotated.
    let pods: Api<Pod> = Api::default_namespaced(c.client.clone());
    eventually(10, "web-0 running", || async {
        let p = pods.get("web-0").await?;
        Ok(p.status.and_then(|s| s.phase).as_deref() == Some("Running"))
    })
    .await?;
    nodes.stop().await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn taints_cordon_and_readiness_keep_pods_off_unless_tolerated() -> Result<()> {
    let c = Cluster::start().await?;
    let cl = &c.client;
    node(
        cl,
        "tainted",
        "4",
        json!({"spec": {"taints": [
        {"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
    )
    .await?;
    node(
        cl,
        "cordoned",
        "4",
        json!({"spec": {"unschedulable": true}}),
    )
    .await?;
    node(cl, "not-ready", "4", json!({"ready": "False"})).await?;
    pod(cl, "plain", json!({}), json!({})).await?;
    let msg = failure(cl, "plain").await?;
    assert_eq!(
        msg,
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: db}, \
         1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, \
         1 node(s) were unschedulable. preemption: 0/3 nodes are available: \
         3 Preemption is not helpful for scheduling."
    );
    // The condition says the same.
    let pods: Api<Pod> = Api::default_namespaced(cl.clone());
    eventually(10, "PodScheduled=False", || async {
        let p = pods.get("plain").await?;
        let cond = p
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled");
        Ok(cond.is_some_and(|c| {
            c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref() == Some(msg.as_str())
        }))
    })
    .await?;

    pod(
        cl,
        "tolerates-taint",
        json!({}),
        json!({"tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}),
    )
    .await?;
    assert_eq!(bound(cl, "tolerates-taint").await?, "tainted");
    pod(
        cl,
        "tolerates-cordon",
        json!({}),
        json!({"nodeSelector": {"kubernetes.io/hostname": "cordoned"},
        "tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists",
            "effect": "NoSchedule"}]}),
    )
    .await?;
    assert_eq!(bound(cl, "tolerates-cordon").await?, "cordoned");
    pod(
        cl,
        "tolerates-all",
        json!({}),
        json!({"nodeSelector": {"kubernetes.io/hostname": "not-ready"},
        "tolerations": [{"operator": "Exists"}]}),
    )
    .await?;
    assert_eq!(bound(cl, "tolerates-all").await?, "not-ready");
    // Uncordoning the node is a change that gives the waiting pod another chance.
    let nodes: Api<Node> = Api::all(cl.clone());
    nodes
        .patch(
            "cordoned",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"unschedulable": false}})),
        )
        .await?;
    assert_eq!(bound(cl, "plain").await?, "cordoned");
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn node_selector_and_node_affinity_choose_the_node() -> Result<()> {
    let c = Cluster::start().await?;
    let cl = &c.client;
    node(
        cl,
        "a",
        "4",
        json!({"labels": {"zone": "east", "gen": "3"}}),
    )
    .await?;
    node(
        cl,
        "b",
        "4",
        json!({"labels": {"zone": "west", "gen": "5"}}),
    )
    .await?;
    node(
        cl,
        "c",
        "4",
        json!({"labels": {"zone": "west", "gen": "7", "gpu": "yes"}}),
    )
    .await?;
    pod(
        cl,
        "selector",
        json!({}),
        json!({"nodeSelector": {"zone": "east"}}),
    )
    .await?;
    assert_eq!(bound(cl, "selector").await?, "a");
    let affinity = |terms: Value| {
        json!({"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}})
    };
    pod(
        cl,
        "gt-and-notin",
        json!({}),
        affinity(json!([{"matchExpressions": [
        {"key": "gen", "operator": "Gt", "values": ["4"]},
        {"key": "gpu", "operator": "DoesNotExist"}]}])),
    )
    .await?;
    assert_eq!(bound(cl, "gt-and-notin").await?, "b");
    // matchFields on metadata.name, as the DaemonSet controller pins its pods.
    pod(
        cl,
        "pinned",
        json!({}),
        affinity(json!([{"matchFields": [
        {"key": "metadata.name", "operator": "In", "values": ["c"]}]}])),
    )
    .await?;
    assert_eq!(bound(cl, "pinned").await?, "c");
    // Terms are ORed.
    pod(
        cl,
        "either",
        json!({}),
        affinity(json!([
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["north"]}]},
        {"matchExpressions": [{"key": "gen", "operator": "Lt", "values": ["4"]}]}])),
    )
    .await?;
    assert_eq!(bound(cl, "either").await?, "a");
    // Preferred terms steer among feasible nodes.
    pod(
        cl,
        "prefers-gpu",
        json!({}),
        json!({"affinity": {"nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "preference": {"matchExpressions": [
                {"key": "gpu", "operator": "Exists"}]}}]}}}),
    )
    .await?;
    assert_eq!(bound(cl, "prefers-gpu").await?, "c");
    pod(
        cl,
        "nowhere",
        json!({}),
        json!({"nodeSelector": {"zone": "south"}}),
    )
    .await?;
    assert_eq!(
        failure(cl, "nowhere").await?,
        "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector. \
         preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn full_nodes_report_insufficient_cpu_until_a_new_node_arrives() -> Result<()> {
    let c = Cluster::start().await?;
    let cl = &c.client;
    node(cl, "small", "1", json!({})).await?;
    pod(cl, "first", json!({}), requests("600m")).await?;
    assert_eq!(bound(cl, "first").await?, "small");
    pod(cl, "second", json!({}), requests("600m")).await?;
    // Containers without requests still fit: they count zero.
    pod(cl, "best-effort", json!({}), json!({})).await?;
    assert_eq!(bound(cl, "best-effort").await?, "small");
    assert_eq!(
        failure(cl, "second").await?,
        "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: \
         1 No preemption victims found for incoming pod."
    );
    node(cl, "big", "4", json!({})).await?;
    assert_eq!(bound(cl, "second").await?, "big");
    // No busy loop: the pod was tried once, then waited for the new node.
    let failed = events(cl, "second", "FailedScheduling").await?;
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0].count.unwrap_or(1) <= 2,
        "retried {:?} times while nothing changed",
        failed[0].count
    );
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn pod_anti_affinity_spreads_replicas_one_per_node() -> Result<()> {
    let c = Cluster::start().await?;
    let cl = &c.client;
    for n in ["a", "b", "c"] {
        node(cl, n, "4", json!({})).await?;
    }
    let spec = json!({"affinity": {"podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchLabels": {"app": "db"}},
            "topologyKey": "kubernetes.io/hostname"}]}}});
    for i in 0..3 {
        pod(cl, &format!("db-{i}"), json!({"app": "db"}), spec.clone()).await?;
    }
    let mut placed = Vec::new();
    for i in 0..3 {
        placed.push(bound(cl, &format!("db-{i}")).await?);
    }
    placed.sort();
    assert_eq!(placed, ["a", "b", "c"]);
    pod(cl, "db-3", json!({"app": "db"}), spec.clone()).await?;
    assert_eq!(
        failure(cl, "db-3").await?,
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. \
         preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
    );
    // A pod without anti-affinity of its own is still kept away by the others' terms.
    pod(cl, "db-plain", json!({"app": "db"}), json!({})).await?;
    assert_eq!(
        failure(cl, "db-plain").await?,
        "0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules. \
         preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
    );
    let pods: Api<Pod> = Api::default_namespaced(cl.clone());
    pods.delete(
        "db-plain",
        &kube::api::DeleteParams::default().grace_period(0),
    )
    .await?;
    // Required affinity: a cache pod goes next to db-0.
    let db0 = node_of(cl, "db-0").await?.unwrap();
    pod(cl, "cache", json!({"app": "cache"}), json!({"affinity": {"podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]},
            "topologyKey": "kubernetes.io/hostname"}]}},
        "nodeSelector": {"kubernetes.io/hostname": db0.clone()}}))
    .await?;
    assert_eq!(bound(cl, "cache").await?, db0);
    // Deleting a db pod frees its node for the waiting one.
    let db1 = node_of(cl, "db-1").await?.unwrap();
    pods.delete("db-1", &kube::api::DeleteParams::default().grace_period(0))
        .await?;
    assert_eq!(bound(cl, "db-3").await?, db1);
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn host_port_conflicts_keep_pods_apart() -> Result<()> {
    let c = Cluster::start().await?;
    let cl = &c.client;
    for n in ["a", "b"] {
        node(cl, n, "4", json!({})).await?;
    }
    let spec = |ip: &str| {
        json!({"containers": [{"name": "c", "image": "nginx",
            "ports": [{"containerPort": 80, "hostPort": 8080, "hostIP": ip}]}]})
    };
    pod(cl, "p0", json!({}), spec("")).await?;
    pod(cl, "p1", json!({}), spec("")).await?;
    let (n0, n1) = (bound(cl, "p0").await?, bound(cl, "p1").await?);
    assert_ne!(n0, n1);
    pod(cl, "p2", json!({}), spec("10.0.0.1")).await?;
    assert_eq!(
        failure(cl, "p2").await?,
        "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports. \
         preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
    );
    // Another port (or protocol) is fine.
    pod(
        cl,
        "udp",
        json!({}),
        json!({"containers": [{"name": "c", "image": "nginx",
        "ports": [{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}]}]}),
    )
    .await?;
    bound(cl, "udp").await?;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn pods_for_another_scheduler_are_left_alone() -> Result<()> {
    let c = Cluster::start().await?;
    let cl = &c.client;
    node(cl, "a", "4", json!({})).await?;
    pod(
        cl,
        "other",
        json!({}),
        json!({"schedulerName": "my-scheduler"}),
    )
    .await?;
    pod(cl, "ours", json!({}), json!({})).await?;
    assert_eq!(bound(cl, "ours").await?, "a");
    assert_eq!(node_of(cl, "other").await?, None);
    assert!(events(cl, "other", "FailedScheduling").await?.is_empty());
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn prefer_no_schedule_only_steers_and_a_pod_update_retries_at_once() -> Result<()> {
    let c = Cluster::start().await?;
    let cl = &c.client;
    node(
        cl,
        "soft",
        "4",
        json!({"spec": {"taints": [
        {"key": "spot", "value": "true", "effect": "PreferNoSchedule"}]}}),
    )
    .await?;
    node(
        cl,
        "hard",
        "4",
        json!({"spec": {"taints": [
        {"key": "gpu", "value": "true", "effect": "NoSchedule"}]}}),
    )
    .await?;
    // Only "soft" is feasible: a PreferNoSchedule taint does not filter.
    pod(cl, "anywhere", json!({}), json!({})).await?;
    assert_eq!(bound(cl, "anywhere").await?, "soft");
    // Tolerating the hard taint makes both feasible; the soft taint's score decides.
    for i in 0..3 {
        pod(
            cl,
            &format!("gpu-{i}"),
            json!({}),
            json!({"tolerations": [
            {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]}),
        )
        .await?;
        assert_eq!(bound(cl, &format!("gpu-{i}")).await?, "hard");
    }
    // A pending pod that gains a toleration (a pod update) is retried without any node
    // changing.
    pod(
        cl,
        "late",
        json!({}),
        json!({"nodeSelector": {"kubernetes.io/hostname": "hard"}}),
    )
    .await?;
    failure(cl, "late").await?;
    let pods: Api<Pod> = Api::default_namespaced(cl.clone());
    let patch = json!({"spec": {"tolerations": [
        {"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]}});
    pods.patch("late", &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    assert_eq!(bound(cl, "late").await?, "hard");
    c.stop().await;
    Ok(())
}
