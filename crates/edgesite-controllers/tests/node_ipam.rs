//! Node IPAM against a real in-process API server: nodes get distinct pod CIDRs from the
//! cluster CIDR, nodes with their own keep it, and a deleted node's CIDR is handed out again.
#![allow(clippy::disallowed_methods)] // tests wait in real time

use anyhow::Result;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

mod support;
use edgesite_controllers::Config;
use support::{Cluster, eventually};

fn node(name: &str, cidr: Option<&str>) -> Result<Node> {
    let mut v = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
    if let Some(c) = cidr {
        v["spec"] = json!({"podCIDR": c, "podCIDRs": [c]});
    }
    Ok(serde_json::from_value(v)?)
}

async fn cidr_of(api: &Api<Node>, name: &str) -> Result<Option<String>> {
    Ok(api.get(name).await?.spec.and_then(|s| s.pod_cidr))
}

#[tokio::test]
async fn nodes_get_distinct_pod_cidrs_and_deleted_ones_are_reused() -> Result<()> {
    let cluster = Cluster::start_with(Config {
        cluster_cidr: Some("10.42.0.0/16".parse().map_err(anyhow::Error::msg)?),
        ..Config::default()
    })
    .await?;
    let api: Api<Node> = Api::all(cluster.client.clone());
    let pp = PostParams::default();
    api.create(&pp, &node("own", Some("10.42.0.0/24"))?).await?;
    for n in ["a", "b", "c"] {
        api.create(&pp, &node(n, None)?).await?;
    }
    let mut got = Vec::new();
    for n in ["a", "b", "c"] {
        eventually(10, "a pod CIDR", || async {
            Ok(cidr_of(&api, n).await?.is_some())
        })
        .await?;
        got.push(cidr_of(&api, n).await?.unwrap_or_default());
    }
    got.sort();
    assert_eq!(got, ["10.42.1.0/24", "10.42.2.0/24", "10.42.3.0/24"]);
    assert_eq!(cidr_of(&api, "own").await?.as_deref(), Some("10.42.0.0/24"));
    let a = api.get("a").await?;
    assert_eq!(
        a.spec.and_then(|s| s.pod_cidrs),
        Some(vec![cidr_of(&api, "a").await?.unwrap_or_default()])
    );

    let freed = cidr_of(&api, "b").await?.unwrap_or_default();
    api.delete("b", &DeleteParams::default()).await?;
    eventually(10, "b is gone", || async {
        Ok(api.get_opt("b").await?.is_none())
    })
    .await?;
    // The informer must have seen the delete before the next allocation reuses it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    api.create(&pp, &node("d", None)?).await?;
    eventually(10, "d gets a pod CIDR", || async {
        Ok(cidr_of(&api, "d").await?.is_some())
    })
    .await?;
    assert_eq!(cidr_of(&api, "d").await?, Some(freed));
    cluster.stop().await;
    Ok(())
}
