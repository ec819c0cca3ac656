//! System tests of issue 4 ("Show it"): the built `edgesite server` (scheduler and controllers
//! inside) with hollow nodes from `edgesite sim` processes, driven only by the real kubectl
//! with a fresh HOME. Each test runs its own server; a missing kubectl fails, never skips.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};

mod support;
use support::{SystemCluster, eventually};

/// Heartbeat of the hollow nodes in these tests.
const HEARTBEAT_SECONDS: u64 = 1;

/// `kubectl rollout status` with the bound every check uses.
fn rollout_status(c: &SystemCluster, ns: &str, what: &str) -> Result<String> {
    c.kubectl(&["-n", ns, "rollout", "status", what, "--timeout=60s"])
}

/// The pods matching `selector` in `ns` as `name -> (node, image, phase, ready)`.
fn pods(c: &SystemCluster, ns: &str, selector: &str) -> Result<BTreeMap<String, PodView>> {
    let out = c.kubectl(&[
        "-n",
        ns,
        "get",
        "pods",
        "-l",
        selector,
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}|{.spec.nodeName}|{.spec.containers[0].image}|\
         {.status.phase}|{.status.conditions[?(@.type==\"Ready\")].status}|\
         {.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ])?;
    let mut all = BTreeMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('|').collect();
        let get = |i: usize| f.get(i).copied().unwrap_or("").trim().to_owned();
        all.insert(
            get(0),
            PodView {
                node: get(1),
                image: get(2),
                phase: get(3),
                ready: get(4) == "True",
                deleting: !get(5).is_empty(),
            },
        );
    }
    Ok(all)
}

/// What the tests look at in a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodView {
    node: String,
    image: String,
    phase: String,
    ready: bool,
    deleting: bool,
}

/// Waits until exactly `n` pods match `selector`, all Running and Ready with `image`, none
/// being deleted.
fn wait_pods_ready(
    c: &SystemCluster,
    ns: &str,
    selector: &str,
    n: usize,
    image: &str,
) -> Result<BTreeMap<String, PodView>> {
    let mut seen = BTreeMap::new();
    eventually(
        60,
        &format!("{n} ready pods {selector} with image {image}"),
        || {
            seen = pods(c, ns, selector)?;
            let ok = seen.len() == n
                && seen
                    .values()
                    .all(|p| p.phase == "Running" && p.ready && !p.deleting && p.image == image);
            Ok((!ok).then(|| format!("{seen:#?}")))
        },
    )?;
    Ok(seen)
}

/// A jsonpath value of one object.
fn field(c: &SystemCluster, ns: &str, object: &str, path: &str) -> Result<String> {
    c.kubectl(&["-n", ns, "get", object, "-o", &format!("jsonpath={path}")])
}

/// Check 1: `create deployment` → `rollout status`; `scale`; `set image` → a new ReplicaSet,
/// `rollout history`, `rollout undo`; `delete deployment` leaves no ReplicaSet or pod behind.
#[test]
fn deployment_rolls_out_scales_updates_undoes_and_deletes_cleanly() -> Result<()> {
    let mut c = SystemCluster::start(&[])?;
    c.sim("edge", 3, HEARTBEAT_SECONDS)?;

    c.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=3",
    ])?;
    let out = rollout_status(&c, "default", "deployment/web")?;
    ensure!(out.contains("successfully rolled out"), "{out}");
    let first = wait_pods_ready(&c, "default", "app=web", 3, "busybox")?;
    let nodes: BTreeSet<&str> = first.values().map(|p| p.node.as_str()).collect();
    ensure!(
        nodes.iter().all(|n| n.starts_with("edge-")),
        "pods on hollow nodes: {first:#?}"
    );
    ensure!(field(&c, "default", "deployment/web", "{.status.readyReplicas}")? == "3");

    c.kubectl(&["scale", "deployment/web", "--replicas=5"])?;
    rollout_status(&c, "default", "deployment/web")?;
    wait_pods_ready(&c, "default", "app=web", 5, "busybox")?;
    eventually(30, "deployment web reports 5 ready", || {
        let ready = field(&c, "default", "deployment/web", "{.status.readyReplicas}")?;
        Ok((ready != "5").then_some(ready))
    })?;

    let rs_before =
        c.jsonpath_words(&["get", "rs", "-l", "app=web"], "{.items[*].metadata.name}")?;
    ensure!(rs_before.len() == 1, "one ReplicaSet: {rs_before:?}");
    c.kubectl(&["set", "image", "deployment/web", "busybox=busybox:1.36"])?;
    let out = rollout_status(&c, "default", "deployment/web")?;
    ensure!(out.contains("successfully rolled out"), "{out}");
    wait_pods_ready(&c, "default", "app=web", 5, "busybox:1.36")?;
    let rs_after =
        c.jsonpath_words(&["get", "rs", "-l", "app=web"], "{.items[*].metadata.name}")?;
    ensure!(rs_after.len() == 2, "a second ReplicaSet: {rs_after:?}");
    ensure!(
        rs_after.contains(&rs_before[0]),
        "the old ReplicaSet is kept for history: {rs_after:?}"
    );
    let new_rs = rs_after
        .iter()
        .find(|n| **n != rs_before[0])
        .context("new ReplicaSet")?;
    ensure!(
        field(
            &c,
            "default",
            &format!("rs/{new_rs}"),
            "{.spec.template.spec.containers[0].image}"
        )? == "busybox:1.36"
    );
    eventually(30, "old ReplicaSet scaled to 0", || {
        let r = field(
            &c,
            "default",
            &format!("rs/{}", rs_before[0]),
            "{.spec.replicas}",
        )?;
        Ok((r != "0").then_some(r))
    })?;

    let history = c.kubectl(&["rollout", "history", "deployment/web"])?;
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .collect();
    ensure!(revisions == ["1", "2"], "revisions 1 and 2:\n{history}");

    c.kubectl(&["rollout", "undo", "deployment/web"])?;
    ensure!(
        field(
            &c,
            "default",
            "deployment/web",
            "{.spec.template.spec.containers[0].image}"
        )? == "busybox"
    );
    let out = rollout_status(&c, "default", "deployment/web")?;
    ensure!(out.contains("successfully rolled out"), "{out}");
    wait_pods_ready(&c, "default", "app=web", 5, "busybox")?;
    let history = c.kubectl(&["rollout", "history", "deployment/web"])?;
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .collect();
    ensure!(
        revisions == ["2", "3"],
        "undo re-labels revision 1 as 3:\n{history}"
    );

    c.kubectl(&["delete", "deployment", "web"])?;
    eventually(60, "no ReplicaSet or pod left", || {
        let left = c.kubectl(&["get", "rs,pods", "-o", "name"])?;
        Ok((!left.trim().is_empty()).then_some(left))
    })?;
    c.stop()
}

/// Check 2: a DaemonSet covers every hollow node (also one that joins later) and skips a node
/// tainted NoSchedule; `rollout status daemonset` succeeds.
#[test]
fn daemonset_covers_every_node_but_a_tainted_one() -> Result<()> {
    let mut c = SystemCluster::start(&[])?;
    c.sim("edge", 3, HEARTBEAT_SECONDS)?;
    c.kubectl(&["taint", "nodes", "edge-2", "dedicated=x:NoSchedule"])?;
    let manifest = c.file(
        "ds.yaml",
        "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels:
      app: agent
  template:
    metadata:
      labels:
        app: agent
    spec:
      containers:
      - name: agent
        image: busybox
",
    )?;
    c.kubectl(&["apply", "-f", &manifest])?;
    let out = rollout_status(&c, "default", "daemonset/agent")?;
    ensure!(out.contains("successfully rolled out"), "{out}");
    let on = |c: &SystemCluster, want: &[&str]| -> Result<()> {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        eventually(60, &format!("agent pods ready on exactly {want:?}"), || {
            let p = pods(c, "default", "app=agent")?;
            let nodes: BTreeSet<String> = p.values().map(|p| p.node.clone()).collect();
            let ok = nodes == want
                && p.len() == want.len()
                && p.values().all(|p| p.ready && p.phase == "Running");
            Ok((!ok).then(|| format!("{p:#?}")))
        })
    };
    on(&c, &["edge-0", "edge-1"])?;
    ensure!(
        field(
            &c,
            "default",
            "ds/agent",
            "{.status.desiredNumberScheduled}"
        )? == "2"
    );
    ensure!(field(&c, "default", "ds/agent", "{.status.numberReady}")? == "2");

    // A node that joins later gets its pod too.
    c.sim("late", 1, HEARTBEAT_SECONDS)?;
    on(&c, &["edge-0", "edge-1", "late-0"])?;
    let out = rollout_status(&c, "default", "daemonset/agent")?;
    ensure!(out.contains("successfully rolled out"), "{out}");
    eventually(30, "desiredNumberScheduled 3", || {
        let d = field(
            &c,
            "default",
            "ds/agent",
            "{.status.desiredNumberScheduled}",
        )?;
        Ok((d != "3").then_some(d))
    })?;
    c.stop()
}

/// Check 3: `kubectl create job` → `kubectl wait --for=condition=complete`.
#[test]
fn job_runs_to_completion() -> Result<()> {
    let mut c = SystemCluster::start(&[])?;
    c.sim("edge", 2, HEARTBEAT_SECONDS)?;
    c.kubectl(&["create", "job", "once", "--image=busybox", "--", "true"])?;
    let out = c.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/once",
        "--timeout=60s",
    ])?;
    ensure!(out.contains("condition met"), "{out}");
    ensure!(field(&c, "default", "job/once", "{.status.succeeded}")? == "1");
    let phases = c.jsonpath_words(
        &["get", "pods", "-l", "job-name=once"],
        "{.items[*].status.phase}",
    )?;
    ensure!(phases == ["Succeeded"], "the job's pod: {phases:?}");
    c.stop()
}

/// Check 4: `kubectl expose` → the Service gets a ClusterIP in 10.43.0.0/16 and its Endpoints
/// (and EndpointSlices) list exactly the ready pods' IPs, following a scale.
#[test]
fn expose_gives_a_cluster_ip_and_endpoints_of_the_ready_pods() -> Result<()> {
    let mut c = SystemCluster::start(&[])?;
    c.sim("edge", 3, HEARTBEAT_SECONDS)?;
    c.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=3",
    ])?;
    rollout_status(&c, "default", "deployment/web")?;
    c.kubectl(&["expose", "deployment", "web", "--port=80"])?;
    let ip = field(&c, "default", "service/web", "{.spec.clusterIP}")?;
    let octets: Vec<u8> = ip
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("clusterIP {ip:?}"))?;
    ensure!(
        octets.len() == 4 && octets[..2] == [10, 43],
        "clusterIP {ip} in 10.43.0.0/16"
    );
    ensure!(
        field(&c, "default", "service/web", "{.spec.clusterIPs[0]}")? == ip,
        "clusterIPs[0] is the clusterIP"
    );

    let endpoints_follow = |n: usize| -> Result<()> {
        wait_pods_ready(&c, "default", "app=web", n, "busybox")?;
        eventually(30, &format!("endpoints web list the {n} pod IPs"), || {
            let pod_ips = c.jsonpath_words(&["get", "pods", "-l", "app=web"], "{..podIP}")?;
            let ep = c.jsonpath_words(
                &["get", "endpoints", "web"],
                "{.subsets[*].addresses[*].ip}",
            )?;
            let ports = field(
                &c,
                "default",
                "endpoints/web",
                "{.subsets[*].ports[*].port}",
            )?;
            let ok = pod_ips.len() == n && ep == pod_ips && ports == "80";
            Ok((!ok).then(|| format!("pods {pod_ips:?}, endpoints {ep:?} port {ports:?}")))
        })?;
        eventually(
            30,
            &format!("endpointslices of web list the {n} pod IPs"),
            || {
                let pod_ips = c.jsonpath_words(&["get", "pods", "-l", "app=web"], "{..podIP}")?;
                let slices = c.jsonpath_words(
                    &[
                        "get",
                        "endpointslices",
                        "-l",
                        "kubernetes.io/service-name=web",
                    ],
                    "{.items[*].endpoints[*].addresses[*]}",
                )?;
                Ok((slices != pod_ips).then(|| format!("pods {pod_ips:?}, slices {slices:?}")))
            },
        )
    };
    endpoints_follow(3)?;
    c.kubectl(&["scale", "deployment/web", "--replicas=4"])?;
    endpoints_follow(4)?;
    let out = c.kubectl(&["get", "endpoints", "web"])?;
    ensure!(out.contains(":80"), "{out}");
    c.stop()
}

/// Check 5: `kubectl delete namespace` returns once the namespace is empty, and it is gone.
#[test]
fn deleting_a_namespace_returns_once_it_is_empty() -> Result<()> {
    let mut c = SystemCluster::start(&[])?;
    c.sim("edge", 2, HEARTBEAT_SECONDS)?;
    c.kubectl(&["create", "namespace", "tmp"])?;
    c.kubectl(&[
        "-n",
        "tmp",
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=2",
    ])?;
    rollout_status(&c, "tmp", "deployment/web")?;
    wait_pods_ready(&c, "tmp", "app=web", 2, "busybox")?;
    let started = Instant::now();
    c.kubectl(&["delete", "namespace", "tmp", "--timeout=60s"])?;
    println!("delete namespace returned after {:?}", started.elapsed());
    let out = c.kubectl_output(&["get", "ns", "tmp"])?;
    ensure!(
        !out.status.success(),
        "namespace still there: {}",
        out.stdout
    );
    ensure!(out.stderr.contains("NotFound"), "{}", out.stderr);
    let left = c.kubectl(&["get", "deploy,rs,pods", "-A", "-o", "name"])?;
    ensure!(left.trim().is_empty(), "objects left: {left}");
    c.stop()
}

/// Check 6: a node that stops heartbeating becomes NotReady (Ready=Unknown) and keeps its
/// pods: nothing is deleted or recreated elsewhere, long after the grace period, even for pods
/// whose tolerations would let upstream evict them after 2 s. When the node comes back it
/// finds its own pods and no duplicates exist.
#[test]
fn a_node_that_stops_heartbeating_is_not_ready_and_keeps_its_pods() -> Result<()> {
    const GRACE: u64 = 3;
    let mut c = SystemCluster::start(&["--node-monitor-grace-period", &format!("{GRACE}s")])?;
    c.sim("a", 2, HEARTBEAT_SECONDS)?;
    c.sim("b", 2, HEARTBEAT_SECONDS)?;
    // Upstream's taint manager would evict these pods 2 s after the unreachable taint.
    let manifest = c.file(
        "web.yaml",
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 8
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      tolerations:
      - key: node.kubernetes.io/unreachable
        operator: Exists
        effect: NoExecute
        tolerationSeconds: 2
      - key: node.kubernetes.io/not-ready
        operator: Exists
        effect: NoExecute
        tolerationSeconds: 2
      containers:
      - name: web
        image: busybox
",
    )?;
    c.kubectl(&["apply", "-f", &manifest])?;
    rollout_status(&c, "default", "deployment/web")?;
    let before = wait_pods_ready(&c, "default", "app=web", 8, "busybox")?;
    let on_b: BTreeSet<&String> = before
        .iter()
        .filter(|(_, p)| p.node.starts_with("b-"))
        .map(|(n, _)| n)
        .collect();
    ensure!(
        !on_b.is_empty() && on_b.len() < before.len(),
        "the deployment spans both node groups: {before:#?}"
    );
    let uids_before = c.jsonpath_words(
        &["get", "pods", "-l", "app=web"],
        "{.items[*].metadata.uid}",
    )?;

    c.kill_sim("b")?;
    let killed = Instant::now();
    c.wait_nodes(&["b-0", "b-1"], "NotReady", 60)?;
    println!("b-* NotReady {:?} after the kill", killed.elapsed());
    for node in ["b-0", "b-1"] {
        let ready = c.kubectl(&[
            "get",
            "node",
            node,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])?;
        ensure!(ready == "Unknown", "{node} Ready={ready}");
        let taints = c.jsonpath_words(
            &["get", "node", node],
            "{range .spec.taints[*]}{.key}:{.effect}{\" \"}{end}",
        )?;
        for want in [
            "node.kubernetes.io/unreachable:NoExecute",
            "node.kubernetes.io/unreachable:NoSchedule",
        ] {
            ensure!(taints.iter().any(|t| t == want), "{node} taints {taints:?}");
        }
    }
    c.wait_nodes(&["a-0", "a-1"], "Ready", 5)?;

    // Well beyond the grace period (and the pods' 2 s tolerations): nothing moves.
    let hold = Duration::from_secs(4 * GRACE);
    let check_until = Instant::now() + hold;
    while Instant::now() < check_until {
        let now = pods(&c, "default", "app=web")?;
        let names: BTreeSet<&String> = now.keys().collect();
        let before_names: BTreeSet<&String> = before.keys().collect();
        ensure!(
            names == before_names,
            "pods changed {:?} after the kill: {now:#?}",
            killed.elapsed()
        );
        for (name, p) in &now {
            ensure!(!p.deleting, "{name} is being deleted: {p:?}");
            ensure!(p.node == before[name].node, "{name} moved: {p:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let uids_after = c.jsonpath_words(
        &["get", "pods", "-l", "app=web"],
        "{.items[*].metadata.uid}",
    )?;
    ensure!(uids_after == uids_before, "the same pod objects");
    let all_pods = c.kubectl(&["get", "pods", "-A", "-o", "name"])?;
    ensure!(
        all_pods.lines().count() == 8,
        "no replacement pods anywhere:\n{all_pods}"
    );
    println!(
        "after {:?}: the {} pods on b-* are still there",
        killed.elapsed(),
        on_b.len()
    );

    // The partition heals: the nodes come back Ready with their own pods, no duplicates.
    c.sim("b", 2, HEARTBEAT_SECONDS)?;
    let healed = wait_pods_ready(&c, "default", "app=web", 8, "busybox")?;
    ensure!(
        healed.keys().collect::<Vec<_>>() == before.keys().collect::<Vec<_>>(),
        "the same pods after the partition healed: {healed:#?}"
    );
    c.stop()
}
