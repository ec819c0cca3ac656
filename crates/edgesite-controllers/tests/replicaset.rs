//! The ReplicaSet controller against a real in-process API server: it creates and deletes
//! pods to match `spec.replicas`, adopts and releases pods by their labels, and reports the
//! counts (with minReadySeconds on a manual clock) in `status`.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt as _};
use serde_json::json;

mod support;
use support::{Cluster, eventually};

fn replica_set(name: &str, app: &str, replicas: i32, min_ready: i32) -> Result<ReplicaSet> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "minReadySeconds": min_ready,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app, "tier": "web"}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]},
            },
        },
    }))?)
}

/// The active (not terminating) pods controlled by the object with `uid`.
async fn owned_pods(pods: &Api<Pod>, uid: &str) -> Result<Vec<Pod>> {
    Ok(pods
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|r| r.uid == uid && r.controller == Some(true))
        })
        .collect())
}

async fn scale(rss: &Api<ReplicaSet>, name: &str, replicas: i32) -> Result<()> {
    rss.patch_scale(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn replica_set_creates_and_deletes_pods_to_match_replicas() -> Result<()> {
    let c = Cluster::start().await?;
    let rss: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());
    let pods: Api<Pod> = Api::default_namespaced(c.client.clone());
    let rs = rss
        .create(
            &PostParams::default(),
            &replica_set("front", "front", 3, 0)?,
        )
        .await?;
    let uid = rs.uid().unwrap();
    eventually(10, "three pods", || async {
        Ok(owned_pods(&pods, &uid).await?.len() == 3)
    })
    .await?;
    for p in owned_pods(&pods, &uid).await? {
        assert!(p.name_any().starts_with("front-"), "{}", p.name_any());
        assert_eq!(p.labels().get("tier").map(String::as_str), Some("web"));
        let r = &p.owner_references()[0];
        assert_eq!(
            (r.kind.as_str(), r.block_owner_deletion),
            ("ReplicaSet", Some(true))
        );
    }
    eventually(10, "status counts three replicas", || async {
        let s = rss.get("front").await?.status.unwrap_or_default();
        Ok(s.replicas == 3
            && s.fully_labeled_replicas == Some(3)
            && s.observed_generation == Some(1))
    })
    .await?;
    // Nothing more is created once the count is right.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(owned_pods(&pods, &uid).await?.len(), 3);

    scale(&rss, "front", 1).await?;
    eventually(10, "scaled down to one pod", || async {
        Ok(owned_pods(&pods, &uid).await?.len() == 1)
    })
    .await?;
    scale(&rss, "front", 5).await?;
    eventually(10, "scaled up to five pods", || async {
        Ok(owned_pods(&pods, &uid).await?.len() == 5)
    })
    .await?;
    eventually(10, "status follows the scale", || async {
        let s = rss.get("front").await?.status.unwrap_or_default();
        Ok(s.replicas == 5 && s.observed_generation == Some(3))
    })
    .await?;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn replica_set_adopts_matching_orphans_and_releases_relabelled_pods() -> Result<()> {
    let c = Cluster::start().await?;
    let rss: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());
    let pods: Api<Pod> = Api::default_namespaced(c.client.clone());
    let pp = PostParams::default();
    for name in ["stray-1", "other"] {
        let app = if name == "other" { "other" } else { "api" };
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]},
        }))?;
        pods.create(&pp, &p).await?;
    }
    let rs = rss.create(&pp, &replica_set("api", "api", 2, 0)?).await?;
    let uid = rs.uid().unwrap();
    eventually(10, "orphan adopted and one pod created", || async {
        let owned = owned_pods(&pods, &uid).await?;
        Ok(owned.len() == 2 && owned.iter().any(|p| p.name_any() == "stray-1"))
    })
    .await?;
    // A pod that does not match stays an orphan.
    assert!(pods.get("other").await?.owner_references().is_empty());

    // Relabelled out of the selector: released, and replaced.
    pods.patch(
        "stray-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "debug"}}})),
    )
    .await?;
    eventually(10, "pod released and replaced", || async {
        let owned = owned_pods(&pods, &uid).await?;
        let stray = pods.get("stray-1").await?;
        Ok(owned.len() == 2
            && owned.iter().all(|p| p.name_any() != "stray-1")
            && stray.owner_references().is_empty())
    })
    .await?;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn replica_set_status_counts_ready_and_available_pods() -> Result<()> {
    let clock = Arc::new(edgesite_controllers::ManualClock::new());
    let config = edgesite_controllers::Config {
        clock: clock.clone(),
        workload_recheck: Duration::from_millis(100),
        ..edgesite_controllers::Config::default()
    };
    let c = Cluster::start_with(config).await?;
    let nodes = c.hollow_nodes(2, "rs-node", Duration::from_secs(5)).await?;
    let rss: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());
    rss.create(&PostParams::default(), &replica_set("db", "db", 3, 30)?)
        .await?;
    eventually(20, "three ready pods, none available yet", || async {
        let s = rss.get("db").await?.status.unwrap_or_default();
        Ok(s.replicas == 3 && s.ready_replicas == Some(3))
    })
    .await?;
    let s = rss.get("db").await?.status.unwrap_or_default();
    assert_eq!(s.available_replicas.unwrap_or(0), 0, "{s:?}");
    clock.advance(Duration::from_secs(31));
    eventually(10, "available after minReadySeconds", || async {
        let s = rss.get("db").await?.status.unwrap_or_default();
        Ok(s.available_replicas == Some(3))
    })
    .await?;
    nodes.stop().await;
    c.stop().await;
    Ok(())
}
