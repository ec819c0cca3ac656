//! The namespace controller and the garbage collector against a real in-process API server,
//! driven by the kube-rs client over HTTPS.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use anyhow::Result;
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt as _};
use serde_json::json;

mod support;
use support::{Cluster, deployment_tree, eventually, owner_ref};

async fn gone<K>(api: &Api<K>, name: &str) -> Result<bool>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.get_opt(name).await?.is_none())
}

async fn count<K>(api: &Api<K>) -> Result<usize>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.list(&ListParams::default()).await?.items.len())
}

#[tokio::test]
async fn background_deletion_collects_the_whole_tree() -> Result<()> {
    let c = Cluster::start().await?;
    deployment_tree(&c.client, "default").await?;
    let deploys: Api<Deployment> = Api::default_namespaced(c.client.clone());
    let rss: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());
    let pods: Api<Pod> = Api::default_namespaced(c.client.clone());
    deploys.delete("web", &DeleteParams::background()).await?;
    assert!(
        gone(&deploys, "web").await?,
        "background: the owner goes at once"
    );
    eventually(10, "replica set and pods collected", || async {
        Ok(gone(&rss, "web-1").await? && count(&pods).await? == 0)
    })
    .await?;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn orphan_deletion_keeps_dependents_without_owner_refs() -> Result<()> {
    let c = Cluster::start().await?;
    deployment_tree(&c.client, "default").await?;
    let deploys: Api<Deployment> = Api::default_namespaced(c.client.clone());
    let rss: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());
    let pods: Api<Pod> = Api::default_namespaced(c.client.clone());
    deploys.delete("web", &DeleteParams::orphan()).await?;
    eventually(10, "deployment removed after orphaning", || async {
        gone(&deploys, "web").await
    })
    .await?;
    let rs = rss.get("web-1").await?;
    assert!(rs.owner_references().is_empty(), "{:?}", rs.metadata);
    // The pods still belong to the replica set, which lives on.
    assert_eq!(count(&pods).await?, 2);
    for p in pods.list(&ListParams::default()).await?.items {
        assert_eq!(p.owner_references()[0].uid, rs.uid().unwrap());
    }
    // And they stay: give the collector a moment to (wrongly) act.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(count(&pods).await?, 2);
    assert!(!gone(&rss, "web-1").await?);
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn foreground_deletion_removes_dependents_first() -> Result<()> {
    let c = Cluster::start().await?;
    deployment_tree(&c.client, "default").await?;
    let deploys: Api<Deployment> = Api::default_namespaced(c.client.clone());
    let rss: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());
    let pods: Api<Pod> = Api::default_namespaced(c.client.clone());
    let out = deploys.delete("web", &DeleteParams::foreground()).await?;
    let lingering = out
        .left()
        .expect("the owner lingers while its dependents go");
    assert!(
        lingering
            .finalizers()
            .contains(&"foregroundDeletion".to_owned())
    );
    eventually(10, "deployment removed", || async {
        gone(&deploys, "web").await
    })
    .await?;
    // Blocking dependents were gone before the owner was released.
    assert!(gone(&rss, "web-1").await?);
    assert_eq!(count(&pods).await?, 0);
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn dangling_owner_references_are_collected_or_dropped() -> Result<()> {
    let c = Cluster::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(c.client.clone());
    let pp = PostParams::default();
    let keeper = cms
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "keeper"}}))?,
        )
        .await?;
    let ghost = owner_ref(
        "ConfigMap",
        "v1",
        "ghost",
        "11111111-2222-4333-8444-555555555555",
    );
    // Only a vanished owner: collected.
    cms.create(
        &pp,
        &serde_json::from_value(
            json!({"metadata": {"name": "orphaned", "ownerReferences": [ghost]}}),
        )?,
    )
    .await?;
    // A live owner and a vanished one: kept, the dangling reference dropped.
    let live = owner_ref("ConfigMap", "v1", "keeper", &keeper.uid().unwrap());
    let mut ghost = ghost;
    ghost["controller"] = json!(false);
    cms.create(
        &pp,
        &serde_json::from_value(
            json!({"metadata": {"name": "shared", "ownerReferences": [live, ghost]}}),
        )?,
    )
    .await?;
    // An owner with the right name but another uid counts as gone.
    let stale = owner_ref(
        "ConfigMap",
        "v1",
        "keeper",
        "99999999-2222-4333-8444-555555555555",
    );
    cms.create(
        &pp,
        &serde_json::from_value(
            json!({"metadata": {"name": "stale", "ownerReferences": [stale]}}),
        )?,
    )
    .await?;
    eventually(10, "dangling dependents collected", || async {
        Ok(gone(&cms, "orphaned").await? && gone(&cms, "stale").await?)
    })
    .await?;
    eventually(10, "dangling reference dropped", || async {
        let s = cms.get("shared").await?;
        Ok(s.owner_references().len() == 1)
    })
    .await?;
    assert_eq!(
        cms.get("shared").await?.owner_references()[0].name,
        "keeper"
    );
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn namespace_deletion_empties_then_removes_it() -> Result<()> {
    let c = Cluster::start().await?;
    let nss: Api<Namespace> = Api::all(c.client.clone());
    let pp = PostParams::default();
    nss.create(
        &pp,
        &serde_json::from_value(json!({"metadata": {"name": "demo"}}))?,
    )
    .await?;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "demo");
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "demo");
    cms.create(
        &pp,
        &serde_json::from_value(json!({"metadata": {"name": "plain"}}))?,
    )
    .await?;
    // A finalizer nobody handles holds the namespace in Terminating until we lift it.
    cms.create(
        &pp,
        &serde_json::from_value(
            json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
        )?,
    )
    .await?;
    pods.create(
        &pp,
        &serde_json::from_value(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}),
        )?,
    )
    .await?;
    deployment_tree(&c.client, "demo").await?;

    nss.delete("demo", &DeleteParams::default()).await?;
    eventually(
        10,
        "content other than the held config map deleted",
        || async {
            Ok(
                count(&pods).await? == 0
                    && cms.list(&ListParams::default()).await?.items.len() == 1,
            )
        },
    )
    .await?;
    let ns = nss.get("demo").await?;
    assert_eq!(
        ns.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Terminating")
    );
    // Creating in a terminating namespace is forbidden.
    let err = cms
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "late"}}))?,
        )
        .await
        .expect_err("create in a terminating namespace");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403);
            assert!(
                s.message.contains("because it is being terminated"),
                "{}",
                s.message
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    eventually(10, "conditions report the remaining finalizer", || async {
        let ns = nss.get("demo").await?;
        let conds = ns.status.and_then(|s| s.conditions).unwrap_or_default();
        Ok(conds.iter().any(|c| {
            c.type_ == "NamespaceFinalizersRemaining"
                && c.status == "True"
                && c.message
                    .as_deref()
                    .is_some_and(|m| m.contains("example.com/hold"))
        }))
    })
    .await?;
    // Lift the finalizer: the namespace finishes.
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    eventually(10, "namespace removed", || async {
        gone(&nss, "demo").await
    })
    .await?;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn in_process_client_is_authorized_like_any_other() -> Result<()> {
    let c = Cluster::start().await?;
    let admin = c.server.in_process_client("someone", &["system:masters"]);
    let names: Vec<String> = Api::<Namespace>::all(admin.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    assert!(names.contains(&"kube-system".to_owned()), "{names:?}");
    // Watches stream through the in-process transport too.
    let cms: Api<ConfigMap> = Api::default_namespaced(admin);
    let mut events = Box::pin(kube::runtime::watcher(
        cms.clone(),
        kube::runtime::watcher::Config::default(),
    ));
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "seen"}}))?,
    )
    .await?;
    let seen = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(ev) = events.next().await {
            if let kube::runtime::watcher::Event::Apply(cm)
            | kube::runtime::watcher::Event::InitApply(cm) = ev?
                && cm.name_any() == "seen"
            {
                return Ok::<_, anyhow::Error>(true);
            }
        }
        Ok(false)
    })
    .await??;
    assert!(seen);
    // Without system:masters the identity is denied, as over the network.
    let nobody = c.server.in_process_client("nobody", &[]);
    let err = Api::<Namespace>::all(nobody)
        .list(&ListParams::default())
        .await
        .expect_err("denied");
    assert!(matches!(err, kube::Error::Api(s) if s.code == 403));
    // In-process clients hold the server's state; the shutdown waits for them to go.
    drop((events, cms));
    c.stop().await;
    Ok(())
}
