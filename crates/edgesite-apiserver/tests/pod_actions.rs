//! The pod actions: `pods/binding` (how a scheduler assigns a node) and `pods/eviction` (how
//! `kubectl drain` removes pods), over HTTPS and with the real kubectl.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use anyhow::{Result, ensure};
use serde_json::{Value, json};

mod support;
use support::{Harness, kubectl};

const PODS: &str = "/api/v1/namespaces/default/pods";
const JSON: &str = "application/json";

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
}

fn binding(name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "annotations": {"example.com/by": "test"}},
        "target": {"kind": "Node", "name": node}})
}

#[tokio::test]
async fn binding_assigns_once_and_eviction_deletes() -> Result<()> {
    let h = Harness::start().await?;
    for name in ["a", "b"] {
        let (code, v) = h.request("POST", PODS, JSON, Some(&pod(name))).await?;
        assert_eq!(code, 201, "{v}");
    }

    // Bind: 201 Success, the pod gets its node, the annotations and PodScheduled.
    let (code, v) = h
        .request(
            "POST",
            &format!("{PODS}/a/binding"),
            JSON,
            Some(&binding("a", "n1")),
        )
        .await?;
    assert_eq!((code, v["status"].as_str()), (201, Some("Success")), "{v}");
    let (_, p) = h.request("GET", &format!("{PODS}/a"), JSON, None).await?;
    assert_eq!(p["spec"]["nodeName"], "n1");
    assert_eq!(p["metadata"]["annotations"]["example.com/by"], "test");
    let scheduled = p["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(scheduled["status"], "True", "{p}");

    // A second binding conflicts and changes nothing.
    let (code, v) = h
        .request(
            "POST",
            &format!("{PODS}/a/binding"),
            JSON,
            Some(&binding("a", "n2")),
        )
        .await?;
    assert_eq!((code, v["reason"].as_str()), (409, Some("Conflict")), "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .contains("already assigned to node \"n1\"")
    );
    let (_, p) = h.request("GET", &format!("{PODS}/a"), JSON, None).await?;
    assert_eq!(p["spec"]["nodeName"], "n1");

    // Bad bindings: a name that is not the URL's, a missing target, an unknown pod, GET.
    let (code, _) = h
        .request(
            "POST",
            &format!("{PODS}/b/binding"),
            JSON,
            Some(&binding("x", "n1")),
        )
        .await?;
    assert_eq!(code, 400);
    let mut no_target = binding("b", "n1");
    no_target["target"] = json!({});
    let (code, v) = h
        .request("POST", &format!("{PODS}/b/binding"), JSON, Some(&no_target))
        .await?;
    assert_eq!((code, v["reason"].as_str()), (422, Some("Invalid")), "{v}");
    let (code, _) = h
        .request(
            "POST",
            &format!("{PODS}/zz/binding"),
            JSON,
            Some(&binding("zz", "n1")),
        )
        .await?;
    assert_eq!(code, 404);
    let (code, _) = h
        .request("GET", &format!("{PODS}/b/binding"), JSON, None)
        .await?;
    assert_eq!(code, 405);
    let (_, p) = h.request("GET", &format!("{PODS}/b"), JSON, None).await?;
    assert!(p["spec"].get("nodeName").is_none(), "{p}");

    // Eviction of an unbound pod deletes it at once; a dry run deletes nothing.
    let eviction = |name: &str, grace: Option<i64>| {
        let mut e =
            json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name}});
        if let Some(g) = grace {
            e["deleteOptions"] = json!({"gracePeriodSeconds": g});
        }
        e
    };
    let (code, _) = h
        .request(
            "POST",
            &format!("{PODS}/b/eviction?dryRun=All"),
            JSON,
            Some(&eviction("b", None)),
        )
        .await?;
    assert_eq!(code, 201);
    assert_eq!(
        h.request("GET", &format!("{PODS}/b"), JSON, None).await?.0,
        200
    );
    let (code, v) = h
        .request(
            "POST",
            &format!("{PODS}/b/eviction"),
            JSON,
            Some(&eviction("b", None)),
        )
        .await?;
    assert_eq!((code, v["kind"].as_str()), (201, Some("Status")), "{v}");
    assert_eq!(
        h.request("GET", &format!("{PODS}/b"), JSON, None).await?.0,
        404
    );

    // A bound pod is deleted gracefully (its node finishes it), unless the grace is 0.
    let (code, _) = h
        .request(
            "POST",
            &format!("{PODS}/a/eviction"),
            JSON,
            Some(&eviction("a", None)),
        )
        .await?;
    assert_eq!(code, 201);
    let (_, p) = h.request("GET", &format!("{PODS}/a"), JSON, None).await?;
    assert!(p["metadata"]["deletionTimestamp"].is_string(), "{p}");
    let (code, _) = h
        .request(
            "POST",
            &format!("{PODS}/a/eviction"),
            JSON,
            Some(&eviction("a", Some(0))),
        )
        .await?;
    assert_eq!(code, 201);
    assert_eq!(
        h.request("GET", &format!("{PODS}/a"), JSON, None).await?.0,
        404
    );
    let (code, _) = h
        .request(
            "POST",
            &format!("{PODS}/a/eviction"),
            JSON,
            Some(&eviction("a", None)),
        )
        .await?;
    assert_eq!(code, 404);
    Ok(())
}

/// `kubectl cordon` and `kubectl drain` (protobuf evictions) empty a node of its pods.
#[tokio::test]
async fn kubectl_drain_evicts_the_pods_of_a_node() -> Result<()> {
    let h = Harness::start().await?;
    let home = tempfile::tempdir()?;
    let kc = h.server.kubeconfig_path().to_owned();
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}});
    assert_eq!(
        h.request("POST", "/api/v1/nodes", JSON, Some(&node))
            .await?
            .0,
        201
    );
    for name in ["p1", "p2"] {
        assert_eq!(
            h.request("POST", PODS, JSON, Some(&pod(name))).await?.0,
            201
        );
        let (code, v) = h
            .request(
                "POST",
                &format!("{PODS}/{name}/binding"),
                JSON,
                Some(&binding(name, "n1")),
            )
            .await?;
        assert_eq!(code, 201, "{v}");
    }
    assert_eq!(
        h.request("POST", PODS, JSON, Some(&pod("elsewhere")))
            .await?
            .0,
        201
    );

    let out = kubectl(
        home.path(),
        &kc,
        &[
            "drain",
            "n1",
            "--force",
            "--ignore-daemonsets",
            "--grace-period=0",
            "--timeout=60s",
        ],
    )
    .await?;
    ensure!(out.status.success(), "kubectl drain failed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pod/p1 evicted") && text.contains("pod/p2 evicted"),
        "{text}"
    );
    assert!(text.contains("node/n1 drained"), "{text}");
    let (_, n) = h.request("GET", "/api/v1/nodes/n1", JSON, None).await?;
    assert_eq!(n["spec"]["unschedulable"], true, "cordoned: {n}");
    let (_, list) = h.request("GET", PODS, JSON, None).await?;
    let names: Vec<&str> = list["items"]
        .as_array()
        .map(|i| {
            i.iter()
                .filter_map(|p| p["metadata"]["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(names, ["elsewhere"]);
    Ok(())
}
