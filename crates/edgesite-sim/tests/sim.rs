//! Hollow nodes against a real API server (in-process, reached over TLS with the admin
//! kubeconfig): they register Ready (and post it again when the server changes it), renew
//! their Leases, report their pods running and ready,
//! and finish the deletion of their pods; pods of other nodes are left alone.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use edgesite_apiserver::{PkiOptions, Server, ServerConfig};
use edgesite_sim::{SimConfig, run};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if check().await? {
            return Ok(());
        }
        ensure!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pod(name: &str, node: Option<&str>) -> Result<Pod> {
    let mut v = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]}});
    if let Some(n) = node {
        v["spec"]["nodeName"] = json!(n);
    }
    Ok(serde_json::from_value(v)?)
}

#[tokio::test]
async fn hollow_nodes_heartbeat_and_run_their_pods() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = ServerConfig::new(dir.path());
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

    let mut sim = SimConfig::new(3, "hollow");
    sim.heartbeat = Duration::from_millis(300);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(client.clone(), sim, async move {
        let _ = stopped.await;
    }));

    // Three Ready nodes with capacity, each with a Lease that is renewed.
    let nodes: Api<Node> = Api::all(client.clone());
    eventually("three Ready hollow nodes", || async {
        let list = nodes
            .list(&ListParams::default().labels("edgesite.io/hollow=true"))
            .await?;
        Ok(list.items.len() == 3
            && list.items.iter().all(|n| {
                let st = n.status.clone().unwrap_or_default();
                st.conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
                    && st.allocatable.unwrap_or_default().contains_key("pods")
            }))
    })
    .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renewed = |l: Lease| l.spec.and_then(|s| s.renew_time).map(|t| format!("{t:?}"));
    let first = renewed(leases.get("hollow-1").await?).context("renewTime")?;
    eventually("the lease of hollow-1 is renewed", || async {
        Ok(renewed(leases.get("hollow-1").await?).as_deref() != Some(first.as_str()))
    })
    .await?;

    // The server marks hollow-0 Unknown, as node lifecycle does after a partition: the node
    // posts its status again at once, its Lease alone would not bring Ready back.
    let ready = |n: &Node| edgesite_api::predicates::node_ready_status(n).map(str::to_owned);
    nodes
        .patch_status(
            "hollow-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [
                {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                 "message": "Kubelet stopped posting node status."}]}})),
        )
        .await?;
    eventually("hollow-0 reports Ready again", || async {
        Ok(ready(&nodes.get("hollow-0").await?).as_deref() == Some("True"))
    })
    .await?;

    // A pod on a hollow node runs and is ready with an IP; one elsewhere stays Pending.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("on-hollow", Some("hollow-2"))?)
        .await?;
    pods.create(
        &PostParams::default(),
        &pod("elsewhere", Some("real-node"))?,
    )
    .await?;
    eventually("the pod on hollow-2 is Running and Ready", || async {
        let p = pods.get("on-hollow").await?;
        let st = p.status.unwrap_or_default();
        Ok(st.phase.as_deref() == Some("Running")
            && st.pod_ip.is_some()
            && st
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
            && st
                .container_statuses
                .unwrap_or_default()
                .iter()
                .all(|c| c.ready))
    })
    .await?;
    let other = pods.get("elsewhere").await?;
    ensure!(
        other.status.and_then(|s| s.phase).as_deref() == Some("Pending"),
        "a pod of a node the simulator does not own was touched"
    );

    // Deleting a bound pod is graceful; the hollow node finishes it.
    pods.delete("on-hollow", &DeleteParams::default()).await?;
    eventually("the deleted pod is gone", || async {
        Ok(pods.get_opt("on-hollow").await?.is_none())
    })
    .await?;
    ensure!(pods.get_opt("elsewhere").await?.is_some());

    let _ = stop.send(());
    task.await??;
    drop(client);
    server.shutdown().await;
    Ok(())
}

fn finite_pod(name: &str, policy: &str, annotations: serde_json::Value) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"restartPolicy": policy, "nodeName": "done-0",
                 "containers": [{"name": "app", "image": "busybox:1.36"}]},
    }))?)
}

fn phase(p: &Pod) -> Option<String> {
    p.status.as_ref().and_then(|s| s.phase.clone())
}

#[tokio::test]
async fn pods_that_run_to_completion_finish() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = ServerConfig::new(dir.path());
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
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(client.clone(), SimConfig::new(1, "done"), async move {
        let _ = stopped.await;
    }));

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    let fast = json!({"sim.edgesite.io/run-seconds": "0.2"});
    pods.create(&pp, &finite_pod("ok", "Never", fast.clone())?)
        .await?;
    pods.create(
        &pp,
        &finite_pod(
            "bad",
            "Never",
            json!({"sim.edgesite.io/run-seconds": "0.2", "sim.edgesite.io/exit-code": "3"}),
        )?,
    )
    .await?;
    pods.create(
        &pp,
        &finite_pod(
            "retry",
            "OnFailure",
            json!({"sim.edgesite.io/run-seconds": "0.2", "sim.edgesite.io/exit-code": "2"}),
        )?,
    )
    .await?;
    // Runs 1 s by default; a long-running Never pod is seen Running first.
    pods.create(&pp, &finite_pod("slow", "Never", json!({}))?)
        .await?;
    pods.create(&pp, &finite_pod("forever", "Always", fast)?)
        .await?;

    eventually("slow is Running", || async {
        Ok(phase(&pods.get("slow").await?).as_deref() == Some("Running"))
    })
    .await?;
    eventually("ok Succeeded, bad Failed", || async {
        Ok(
            phase(&pods.get("ok").await?).as_deref() == Some("Succeeded")
                && phase(&pods.get("bad").await?).as_deref() == Some("Failed"),
        )
    })
    .await?;
    let ok = pods.get("ok").await?.status.context("status")?;
    let c = &ok.container_statuses.context("containers")?[0];
    let term = c
        .state
        .clone()
        .and_then(|s| s.terminated)
        .context("terminated")?;
    ensure!(term.exit_code == 0 && term.reason.as_deref() == Some("Completed"));
    ensure!(!c.ready);
    ensure!(
        ok.conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready"
                && c.status == "False"
                && c.reason.as_deref() == Some("PodCompleted"))
    );
    let bad = pods.get("bad").await?.status.context("status")?;
    let term = bad.container_statuses.context("containers")?[0]
        .state
        .clone()
        .and_then(|s| s.terminated)
        .context("terminated")?;
    ensure!(term.exit_code == 3 && term.reason.as_deref() == Some("Error"));

    // OnFailure restarts in place: Running, restart count growing, last exit code 2.
    eventually("retry restarted twice", || async {
        let p = pods.get("retry").await?;
        let c = p
            .status
            .clone()
            .and_then(|s| s.container_statuses)
            .unwrap_or_default();
        Ok(phase(&p).as_deref() == Some("Running")
            && c.first().is_some_and(|c| {
                c.restart_count >= 2
                    && c.last_state
                        .as_ref()
                        .and_then(|s| s.terminated.as_ref())
                        .is_some_and(|t| t.exit_code == 2)
            }))
    })
    .await?;
    eventually("slow Succeeded after its default second", || async {
        Ok(phase(&pods.get("slow").await?).as_deref() == Some("Succeeded"))
    })
    .await?;
    // restartPolicy Always ignores the annotations and keeps running.
    ensure!(phase(&pods.get("forever").await?).as_deref() == Some("Running"));

    let _ = stop.send(());
    task.await??;
    drop(client);
    server.shutdown().await;
    Ok(())
}
