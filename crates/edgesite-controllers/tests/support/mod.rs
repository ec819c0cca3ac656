//! A real API server in a temporary directory with the controllers running in-process, and
//! an admin kube client that reaches it over TLS like any user.

#![allow(dead_code)]

pub mod batch;
pub mod kubectl;

use std::future::Future;
use std::time::Duration;

use anyhow::{Result, bail};
use edgesite_apiserver::{PkiOptions, Server, ServerConfig};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, ResourceExt as _};
use kube::{Client, Config};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub server: Server,
    /// The admin client, over HTTPS.
    pub client: Client,
    /// The controllers' clock, which the hollow nodes report their times from too.
    clock: std::sync::Arc<dyn edgesite_clock::Clock>,
    stop: oneshot::Sender<()>,
    controllers: JoinHandle<()>,
}

impl Cluster {
    pub async fn start() -> Result<Self> {
        Self::start_with(edgesite_controllers::Config::default()).await
    }

    /// Starts the server and the controllers with `config` (e.g. a manual clock).
    pub async fn start_with(mut config: edgesite_controllers::Config) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut server_config = ServerConfig::new(dir.path());
        server_config.bind_address = "127.0.0.1".parse()?;
        server_config.secure_port = 0;
        server_config.pki = PkiOptions {
            hostname: Some("edge-test".to_owned()),
            extra_sans: Vec::new(),
            include_interface_ips: false,
        };
        let server = Server::start(server_config).await?;
        if config.root_ca_pem.is_none() {
            config.root_ca_pem = Some(server.ca_cert_pem().to_owned());
        }
        let in_process =
            server.in_process_client(edgesite_controllers::CONTROLLER_USER, &["system:masters"]);
        let clock = config.clock.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let controllers = tokio::spawn(edgesite_controllers::run_all(
            in_process,
            config,
            async move {
                let _ = stopped.await;
            },
        ));
        // kube's rustls connector needs a process-wide provider; another test may have set it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kc = Kubeconfig::read_from(server.kubeconfig_path())?;
        let client = Client::try_from(
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?,
        )?;
        Ok(Self {
            dir,
            server,
            client,
            clock,
            stop,
            controllers,
        })
    }

    /// Registers `n` hollow nodes `{prefix}-0..n` (edgesite-sim) that heartbeat every
    /// `heartbeat` and run the pods bound to them; they stop with the returned handle.
    pub async fn hollow_nodes(
        &self,
        n: usize,
        prefix: &str,
        heartbeat: Duration,
    ) -> Result<HollowNodes> {
        let mut config = edgesite_sim::SimConfig::new(n, prefix);
        config.heartbeat = heartbeat;
        // One clock for the cluster: a heartbeat the controllers see is stamped with their
        // own time, however far a test moved it.
        config.clock = self.clock.clone();
        let client = self.client.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Err(err) = edgesite_sim::run(client, config, async move {
                let _ = stopped.await;
            })
            .await
            {
                eprintln!("hollow nodes failed: {err}");
            }
        });
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        let want: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
        eventually(30, "hollow nodes registered", || async {
            for name in &want {
                if nodes.get_opt(name).await?.is_none() {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await?;
        Ok(HollowNodes { stop, task })
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.controllers.await;
        drop(self.client);
        self.server.shutdown().await;
    }
}

/// Running hollow nodes; [`HollowNodes::stop`] ends their heartbeats and pod handling (the
/// nodes stay registered, as a node that lost power would).
pub struct HollowNodes {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl HollowNodes {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Polls `check` every 50 ms until it returns true, failing after `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn owner_ref(kind: &str, api_version: &str, name: &str, uid: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
           "controller": true, "blockOwnerDeletion": true})
}

/// A Deployment `web` with ReplicaSet `web-1` and pods `web-1-a`, `web-1-b`, chained by
/// ownerReferences. They are made bottom-up as orphans whose labels and templates match, and
/// the ReplicaSet and Deployment controllers adopt them (as they would adopt what a user
/// orphaned); returns once both links are in place.
pub async fn deployment_tree(client: &Client, ns: &str) -> Result<(Deployment, ReplicaSet)> {
    let pp = PostParams::default();
    let labels = json!({"app": "web"});
    let template = json!({"metadata": {"labels": labels},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for suffix in ["a", "b"] {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("web-1-{suffix}"), "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]},
        }))?;
        pods.create(&pp, &p).await?;
    }
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "labels": labels},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": template},
    }))?;
    rss.create(&pp, &rs).await?;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": template},
    }))?;
    let d = deploys.create(&pp, &d).await?;
    let controlled_by =
        |refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference], uid: &str| {
            refs.iter()
                .any(|r| r.uid == uid && r.controller == Some(true))
        };
    let d_uid = d.uid().unwrap_or_default();
    eventually(10, "deployment tree adopted", || async {
        let rs = rss.get("web-1").await?;
        let rs_uid = rs.uid().unwrap_or_default();
        let mut linked = controlled_by(rs.owner_references(), &d_uid);
        for suffix in ["a", "b"] {
            let p = pods.get(&format!("web-1-{suffix}")).await?;
            linked &= controlled_by(p.owner_references(), &rs_uid);
        }
        Ok(linked)
    })
    .await?;
    // Let the controllers finish with the tree (revision annotation, statuses), so the tests
    // start from a quiet state.
    eventually(10, "deployment tree settled", || async {
        let rs = rss.get("web-1").await?;
        let d = deploys.get("web").await?;
        let rs_settled = rs
            .annotations()
            .contains_key("deployment.kubernetes.io/revision")
            && rs.status.as_ref().is_some_and(|s| {
                s.replicas == 2 && s.observed_generation == rs.metadata.generation
            });
        let d_settled = d
            .annotations()
            .contains_key("deployment.kubernetes.io/revision")
            && d.status.as_ref().is_some_and(|s| {
                s.replicas == Some(2) && s.observed_generation == d.metadata.generation
            });
        Ok(rs_settled && d_settled)
    })
    .await?;
    let rs = rss.get("web-1").await?;
    Ok((d, rs))
}

/// Whether the pod's `Ready` condition is `True`.
pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The image of the pod's first container (`""` without one).
pub fn pod_image(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}
