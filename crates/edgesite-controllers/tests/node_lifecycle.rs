//! The node lifecycle controller and the edge partition policy against a real in-process API
//! server, hollow nodes and a manual clock: silent nodes turn `Unknown` and get the unreachable
//! taints, their pods stay (unless the node's autonomy runs out) and come back when the node
//! does.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

mod support;
use edgesite_controllers::node_lifecycle::{AUTONOMY_ANNOTATION, TAINT_UNREACHABLE};
use edgesite_controllers::{Clock as _, Config, ManualClock};
use support::{Cluster, eventually};

const GRACE: Duration = Duration::from_secs(40);

fn config(clock: &Arc<ManualClock>) -> Config {
    Config {
        clock: clock.clone(),
        node_monitor_period: Duration::from_millis(50),
        node_monitor_grace_period: GRACE,
        ..Config::default()
    }
}

/// Creates pod `name` bound to `node`, with extra tolerations.
async fn bound_pod(client: &Client, name: &str, node: &str, tolerations: Value) -> Result<()> {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "edge"}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}],
                 "tolerations": tolerations},
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    Ok(())
}

fn condition<'a>(
    node: &'a Node,
    kind: &str,
) -> Option<&'a k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
}

fn ready(node: &Node) -> Option<String> {
    condition(node, "Ready").map(|c| c.status.clone())
}

fn taint_keys(node: &Node) -> Vec<(String, String)> {
    let mut keys: Vec<(String, String)> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key, t.effect))
        .collect();
    keys.sort();
    keys
}

fn pod_ready(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

async fn all_pods_ready(pods: &Api<Pod>, names: &[&str], want: &str) -> Result<bool> {
    for name in names {
        let p = pods.get(name).await?;
        if pod_ready(&p).as_deref() != Some(want) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn evicted(pod: Option<Pod>) -> bool {
    // Evicted = deleted (the silent node cannot finish the deletion, so it stays terminating).
    pod.is_none_or(|p| p.metadata.deletion_timestamp.is_some())
}

#[tokio::test]
async fn partitioned_nodes_keep_their_pods_unless_their_autonomy_runs_out() -> Result<()> {
    let clock = Arc::new(ManualClock::new());
    let c = Cluster::start_with(config(&clock)).await?;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let pods: Api<Pod> = Api::default_namespaced(c.client.clone());
    let beat = Duration::from_millis(100);
    let keep = c.hollow_nodes(1, "keep", beat).await?;
    let evict = c.hollow_nodes(1, "evict", beat).await?;
    // `evict-0` opts into eviction after one minute; `keep-0` follows the cluster default.
    nodes
        .patch(
            "evict-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {AUTONOMY_ANNOTATION: "1m"}}})),
        )
        .await?;
    let unreachable_for = |secs: u64| {
        json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": secs}])
    };
    bound_pod(&c.client, "kept", "keep-0", json!([])).await?;
    // On `evict-0`: the API server's default toleration (300 s), a short one (10 s, shorter
    // than the autonomy), and one that tolerates the taint for ever.
    bound_pod(&c.client, "default-toleration", "evict-0", json!([])).await?;
    bound_pod(
        &c.client,
        "short-toleration",
        "evict-0",
        unreachable_for(10),
    )
    .await?;
    bound_pod(
        &c.client,
        "forever",
        "evict-0",
        json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}]),
    )
    .await?;
    let all = ["kept", "default-toleration", "short-toleration", "forever"];
    eventually(20, "pods running and ready", || async {
        all_pods_ready(&pods, &all, "True").await
    })
    .await?;
    for n in ["keep-0", "evict-0"] {
        let node = nodes.get(n).await?;
        assert_eq!(ready(&node).as_deref(), Some("True"));
        assert!(taint_keys(&node).is_empty(), "{n}: {:?}", taint_keys(&node));
    }

    // The link goes down: no more heartbeats. Time passes in steps shorter than the grace
    // period, so a heartbeat still in flight only restarts the count.
    keep.stop().await;
    evict.stop().await;
    let started = clock.now();
    eventually(
        20,
        "silent nodes Unknown and tainted unreachable",
        || async {
            clock.advance(Duration::from_secs(5));
            for n in ["keep-0", "evict-0"] {
                let node = nodes.get(n).await?;
                if ready(&node).as_deref() != Some("Unknown") || taint_keys(&node).len() != 2 {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .await?;
    assert!(clock.now().duration_since(started)? > GRACE);
    for n in ["keep-0", "evict-0"] {
        let node = nodes.get(n).await?;
        for kind in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
            let cond = condition(&node, kind).unwrap();
            assert_eq!(cond.status, "Unknown", "{n} {kind}");
            assert_eq!(cond.reason.as_deref(), Some("NodeStatusUnknown"));
            assert_eq!(
                cond.message.as_deref(),
                Some("Kubelet stopped posting node status.")
            );
        }
        assert_eq!(
            taint_keys(&node),
            vec![
                (TAINT_UNREACHABLE.to_owned(), "NoExecute".to_owned()),
                (TAINT_UNREACHABLE.to_owned(), "NoSchedule".to_owned()),
            ]
        );
        let taints = node.spec.unwrap().taints.unwrap();
        assert!(taints.iter().all(|t| t.time_added.is_some()), "{taints:?}");
    }
    // Their pods are marked not ready, so Services stop sending them traffic.
    eventually(10, "pods on silent nodes not ready", || async {
        all_pods_ready(&pods, &all, "False").await
    })
    .await?;

    // Past `evict-0`'s autonomy (one minute): the pod that tolerated the taint for 10 s goes;
    // the one with the default 300 s toleration stays until that runs out too.
    clock.advance(Duration::from_secs(61));
    eventually(10, "short-toleration pod evicted", || async {
        Ok(evicted(pods.get_opt("short-toleration").await?))
    })
    .await?;
    assert!(!evicted(pods.get_opt("default-toleration").await?));
    let p = pods.get("short-toleration").await?;
    let disruption = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "DisruptionTarget").cloned());
    assert_eq!(
        disruption.and_then(|c| c.reason).as_deref(),
        Some("DeletionByTaintManager")
    );
    clock.advance(Duration::from_secs(300));
    eventually(10, "default-toleration pod evicted", || async {
        Ok(evicted(pods.get_opt("default-toleration").await?))
    })
    .await?;
    // An hour on: the default policy (autonomy forever) keeps `kept`, bound and not deleted;
    // a pod that tolerates the taint for ever stays on `evict-0` too.
    clock.advance(Duration::from_secs(3600));
    let events: Api<Event> = Api::default_namespaced(c.client.clone());
    eventually(10, "eviction events recorded", || async {
        let list = events.list(&ListParams::default()).await?;
        let evictions: Vec<String> = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("TaintManagerEviction"))
            .map(|e| e.involved_object.name.clone().unwrap_or_default())
            .collect();
        Ok(evictions.contains(&"short-toleration".to_owned())
            && evictions.contains(&"default-toleration".to_owned()))
    })
    .await?;
    for name in ["kept", "forever"] {
        let p = pods.get(name).await?;
        assert!(
            p.metadata.deletion_timestamp.is_none(),
            "{name} was evicted"
        );
        assert!(
            p.spec.as_ref().unwrap().node_name.is_some(),
            "{name} stays bound"
        );
    }
    let list = events.list(&ListParams::default()).await?;
    assert!(
        !list.items.iter().any(|e| {
            e.reason.as_deref() == Some("TaintManagerEviction")
                && matches!(e.involved_object.name.as_deref(), Some("kept" | "forever"))
        }),
        "no eviction of pods that may stay"
    );

    // The link comes back: heartbeats resume and the nodes report Ready again.
    let keep = c.hollow_nodes(1, "keep", beat).await?;
    let evict = c.hollow_nodes(1, "evict", beat).await?;
    eventually(20, "nodes Ready and untainted again", || async {
        for n in ["keep-0", "evict-0"] {
            let node = nodes.get(n).await?;
            if ready(&node).as_deref() != Some("True") || !taint_keys(&node).is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await?;
    // The pods that stayed run on and are ready again; the evicted ones are finally gone (the
    // node finished their deletion), so nothing runs twice.
    eventually(20, "kept pods ready, evicted pods gone", || async {
        Ok(all_pods_ready(&pods, &["kept", "forever"], "True").await?
            && pods.get_opt("short-toleration").await?.is_none()
            && pods.get_opt("default-toleration").await?.is_none())
    })
    .await?;
    keep.stop().await;
    evict.stop().await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_node_reporting_not_ready_gets_the_not_ready_taints() -> Result<()> {
    let clock = Arc::new(ManualClock::new());
    let c = Cluster::start_with(config(&clock)).await?;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let group = c
        .hollow_nodes(1, "sick", Duration::from_millis(100))
        .await?;
    eventually(10, "node reported Ready", || async {
        Ok(ready(&nodes.get("sick-0").await?).as_deref() == Some("True"))
    })
    .await?;
    let node = nodes.get("sick-0").await?;
    let mut conditions = node.status.unwrap().conditions.unwrap();
    for cond in &mut conditions {
        if cond.type_ == "Ready" {
            cond.status = "False".into();
            cond.reason = Some("KubeletNotReady".into());
        }
    }
    // The kubelet itself says not ready (its heartbeats go on).
    nodes
        .patch_status(
            "sick-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": conditions}})),
        )
        .await?;
    let not_ready = "node.kubernetes.io/not-ready".to_owned();
    eventually(10, "not-ready taints", || async {
        let node = nodes.get("sick-0").await?;
        Ok(taint_keys(&node)
            == vec![
                (not_ready.clone(), "NoExecute".to_owned()),
                (not_ready.clone(), "NoSchedule".to_owned()),
            ])
    })
    .await?;
    // Heartbeats continue, so the condition stays the kubelet's `False`, not `Unknown`.
    let node = nodes.get("sick-0").await?;
    assert_eq!(ready(&node).as_deref(), Some("False"));
    group.stop().await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_node_that_never_heartbeats_goes_unknown_after_the_grace_period() -> Result<()> {
    let clock = Arc::new(ManualClock::new());
    let c = Cluster::start_with(config(&clock)).await?;
    let nodes: Api<Node> = Api::all(c.client.clone());
    // Registered, never reporting status nor renewing a Lease.
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "mute"}}))?;
    nodes.create(&PostParams::default(), &node).await?;
    eventually(20, "conditions Unknown after the grace period", || async {
        clock.advance(Duration::from_secs(5));
        let node = nodes.get("mute").await?;
        Ok(ready(&node).as_deref() == Some("Unknown")
            && taint_keys(&node)
                .iter()
                .filter(|(k, _)| k == TAINT_UNREACHABLE)
                .count()
                == 2)
    })
    .await?;
    let node = nodes.get("mute").await?;
    let cond = condition(&node, "Ready").unwrap();
    assert_eq!(cond.reason.as_deref(), Some("NodeStatusNeverUpdated"));
    assert_eq!(
        cond.message.as_deref(),
        Some("Kubelet never posted node status.")
    );
    c.stop().await;
    Ok(())
}
