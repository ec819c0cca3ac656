//! The node-scoped watches against a real API server (in-process, TLS, admin kubeconfig): the
//! local cache gets exactly the node's pods and the ConfigMaps and Secrets they reference,
//! follows their changes, drops what no pod needs, and keeps everything when the server goes.
#![allow(clippy::disallowed_methods)] // tests wait in real time

use std::time::Duration;

use anyhow::{Result, ensure};
use edgesite_agent::cache::LocalCache;
use edgesite_agent::sync::Sync;
use edgesite_apiserver::{PkiOptions, Server, ServerConfig};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

async fn eventually<F>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> bool,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        ensure!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn server(dir: &std::path::Path) -> Result<(Server, Client)> {
    let mut config = ServerConfig::new(dir);
    config.bind_address = "127.0.0.1".parse()?;
    config.secure_port = 0;
    config.pki = PkiOptions {
        hostname: Some("edge-test".to_owned()),
        extra_sans: Vec::new(),
        include_interface_ips: false,
    };
    let server = Server::start(config).await?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = Kubeconfig::read_from(server.kubeconfig_path())?;
    let client =
        Client::try_from(Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?)?;
    Ok((server, client))
}

fn pod(name: &str, node: &str, config_map: &str, secret: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "volumes": [{"name": "cfg", "configMap": {"name": config_map}}],
            "containers": [{"name": "app", "image": "busybox:1.36",
                "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": secret, "key": "pw"}}}]}]
        }
    }))?)
}

fn config_map(name: &str, value: &str) -> Result<ConfigMap> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": value}
    }))?)
}

#[tokio::test]
async fn the_cache_holds_exactly_the_nodes_pods_and_what_they_reference() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, client) = server(&dir.path().join("server")).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    for name in ["cm-mine", "cm-other", "cm-unused"] {
        cms.create(&pp, &config_map(name, "v1")?).await?;
    }
    secrets
        .create(
            &pp,
            &serde_json::from_value(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "s-mine"}, "stringData": {"pw": "hunter2"}}))?,
        )
        .await?;
    pods.create(&pp, &pod("mine", "edge-1", "cm-mine", "s-mine")?)
        .await?;
    pods.create(&pp, &pod("other", "edge-2", "cm-other", "s-other")?)
        .await?;

    let cache_dir = dir.path().join("agent/cache");
    let (cache, _changes) = LocalCache::open(&cache_dir).await?;
    let sync = Sync::new(client.clone(), cache.clone(), "edge-1");
    sync.start();
    eventually("the node's pod is cached", || {
        cache.get::<Pod>("default/mine").is_some()
    })
    .await?;
    sync.follow_refs();
    eventually("its ConfigMap and Secret are cached", || {
        cache.get::<ConfigMap>("default/cm-mine").is_some()
            && cache.get::<Secret>("default/s-mine").is_some()
    })
    .await?;
    assert_eq!(
        sync.ref_watches(),
        2,
        "one by-name watch per referenced object"
    );
    assert!(
        cache.get::<Pod>("default/other").is_none(),
        "another node's pod"
    );
    assert!(cache.get::<ConfigMap>("default/cm-other").is_none());
    assert!(cache.get::<ConfigMap>("default/cm-unused").is_none());

    // A change on the server reaches the cache.
    let patch = json!({"data": {"k": "v2"}});
    cms.patch("cm-mine", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    eventually("the ConfigMap change is cached", || {
        cache
            .get::<ConfigMap>("default/cm-mine")
            .and_then(|c| c.data.as_ref()?.get("k").cloned())
            .as_deref()
            == Some("v2")
    })
    .await?;

    // The server goes away: the cache keeps everything, on disk too.
    server.shutdown().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(cache.get::<Pod>("default/mine").is_some());
    drop(sync);
    // The aborted watches let go of the cache; then its file is free again.
    let weak = std::sync::Arc::downgrade(&cache);
    drop(cache);
    eventually("the cache is closed", || weak.strong_count() == 0).await?;
    let (reopened, _changes) = LocalCache::open(&cache_dir).await?;
    assert!(reopened.get::<Pod>("default/mine").is_some());
    assert!(reopened.get::<Secret>("default/s-mine").is_some());
    Ok(())
}

#[tokio::test]
async fn objects_no_pod_needs_leave_the_cache() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_server, client) = server(&dir.path().join("server")).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    cms.create(&pp, &config_map("cm", "v1")?).await?;
    pods.create(&pp, &pod("p", "edge-1", "cm", "missing")?)
        .await?;
    let (cache, _changes) = LocalCache::open(&dir.path().join("cache")).await?;
    let sync = Sync::new(client.clone(), cache.clone(), "edge-1");
    sync.start();
    eventually("the pod is cached", || {
        cache.get::<Pod>("default/p").is_some()
    })
    .await?;
    sync.follow_refs();
    eventually("the ConfigMap is cached", || {
        cache.get::<ConfigMap>("default/cm").is_some()
    })
    .await?;
    // A missing Secret is watched (it may come) but is not in the cache.
    assert_eq!(sync.ref_watches(), 2);
    assert!(cache.get::<Secret>("default/missing").is_none());

    // Deleted on the server: gone from the cache.
    cms.delete("cm", &DeleteParams::default()).await?;
    eventually("the deleted ConfigMap leaves the cache", || {
        cache.get::<ConfigMap>("default/cm").is_none()
    })
    .await?;
    cms.create(&pp, &config_map("cm", "v3")?).await?;
    eventually("the recreated ConfigMap is cached", || {
        cache.get::<ConfigMap>("default/cm").is_some()
    })
    .await?;

    // The pod goes: so do its objects and their watches.
    pods.delete("p", &DeleteParams::default().grace_period(0))
        .await?;
    eventually("the pod leaves the cache", || {
        cache.get::<Pod>("default/p").is_none()
    })
    .await?;
    sync.follow_refs();
    assert_eq!(sync.ref_watches(), 0);
    eventually("its ConfigMap leaves the cache", || {
        cache.get::<ConfigMap>("default/cm").is_none()
    })
    .await?;
    Ok(())
}
