//! Cascading and namespace deletion with the real kubectl (`/usr/bin/kubectl`, fresh HOME)
//! against an in-process server running the controllers. Fails, never skips, when kubectl
//! is missing.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::time::Duration;

use anyhow::{Result, ensure};

mod support;
use support::kubectl::{KUBECTL, Kubectl};
use support::{Cluster, deployment_tree, eventually};

#[tokio::test]
async fn kubectl_cascading_deletes() -> Result<()> {
    let c = Cluster::start().await?;
    let k = Kubectl::new(&c)?;

    // Background (kubectl's default): the owner goes, the collector takes the rest.
    deployment_tree(&c.client, "default").await?;
    let s = k.ok(&["delete", "deploy", "web"]).await?;
    assert!(s.contains("deployment.apps \"web\" deleted"), "{s}");
    eventually(15, "replica set and pods collected", || async {
        Ok(k.ok(&["get", "rs,pods", "-o", "name"])
            .await?
            .trim()
            .is_empty())
    })
    .await?;

    // Orphan: the replica set stays, without its owner reference; its pods stay too.
    deployment_tree(&c.client, "default").await?;
    k.ok(&["delete", "deploy", "web", "--cascade=orphan"])
        .await?;
    let s = k.ok(&["get", "deploy", "-o", "name"]).await?;
    assert!(s.trim().is_empty(), "kubectl waited for the orphaning: {s}");
    let refs = k
        .ok(&[
            "get",
            "rs",
            "web-1",
            "-o",
            "jsonpath={.metadata.ownerReferences}",
        ])
        .await?;
    assert!(refs.trim().is_empty(), "{refs}");
    let pods = k.ok(&["get", "pods", "-o", "name"]).await?;
    assert_eq!(pods.lines().count(), 2, "{pods}");
    k.ok(&["delete", "rs", "web-1"]).await?;
    eventually(15, "pods of the deleted replica set collected", || async {
        Ok(k.ok(&["get", "pods", "-o", "name"])
            .await?
            .trim()
            .is_empty())
    })
    .await?;

    // Foreground: kubectl returns once the owner is gone, and by then so are its dependents.
    deployment_tree(&c.client, "default").await?;
    let s = k
        .ok(&["delete", "deploy", "web", "--cascade=foreground"])
        .await?;
    assert!(s.contains("deleted"), "{s}");
    let left = k.ok(&["get", "deploy,rs,pods", "-o", "name"]).await?;
    assert!(left.trim().is_empty(), "{left}");
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn kubectl_namespace_deletion() -> Result<()> {
    let c = Cluster::start().await?;
    let k = Kubectl::new(&c)?;
    let ns = k.file(
        "ns.json",
        r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"demo"}}"#,
    )?;
    let cm = k.file(
        "cm.json",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"settings"},"data":{"a":"b"}}"#,
    )?;
    let pod = k.file(
        "pod.json",
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"nginx"}]}}"#,
    )?;
    k.ok(&["create", "-f", &ns]).await?;
    k.ok(&["create", "-n", "demo", "-f", &cm]).await?;
    k.ok(&["create", "-n", "demo", "-f", &pod, "--validate=false"])
        .await?;
    let s = k.ok(&["delete", "ns", "demo"]).await?;
    assert!(s.contains("namespace \"demo\" deleted"), "{s}");
    // kubectl waited: the namespace and its content are gone.
    let out = k.run(&["get", "ns", "demo"]).await?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("NotFound") && err.contains("namespaces \"demo\" not found"),
        "{err}"
    );
    let out = k
        .run(&["get", "cm,pods", "-n", "demo", "-o", "name"])
        .await?;
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());

    // A namespace held in Terminating by a finalizer refuses new content.
    k.ok(&["create", "-f", &ns]).await?;
    let held = k.file(
        "held.json",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"held","finalizers":["example.com/hold"]}}"#,
    )?;
    k.ok(&["create", "-n", "demo", "-f", &held]).await?;
    k.ok(&["delete", "ns", "demo", "--wait=false"]).await?;
    let phase = k
        .ok(&["get", "ns", "demo", "-o", "jsonpath={.status.phase}"])
        .await?;
    assert_eq!(phase, "Terminating");
    let out = k.run(&["create", "-n", "demo", "-f", &cm]).await?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Forbidden")
            && err.contains(
                "unable to create new content in namespace demo because it is being terminated"
            ),
        "{err}"
    );
    k.ok(&[
        "patch",
        "cm",
        "held",
        "-n",
        "demo",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])
    .await?;
    k.ok(&["wait", "--for=delete", "ns/demo", "--timeout=30s"])
        .await?;

    // `kubectl delete --wait` returns for an object held by a finalizer once it is lifted.
    let held_default = k.file(
        "held2.json",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"held2","finalizers":["example.com/hold"]}}"#,
    )?;
    k.ok(&["create", "-f", &held_default]).await?;
    let deleting = tokio::spawn({
        let args: Vec<String> = ["delete", "cm", "held2", "--wait=true", "--timeout=30s"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let home = k.home.path().to_owned();
        let kc = k.kubeconfig.clone();
        async move {
            tokio::process::Command::new(KUBECTL)
                .env("HOME", home)
                .env_remove("KUBECONFIG")
                .arg("--kubeconfig")
                .arg(kc)
                .args(args)
                .output()
                .await
        }
    });
    eventually(15, "held2 marked for deletion", || async {
        let ts = k
            .ok(&[
                "get",
                "cm",
                "held2",
                "-o",
                "jsonpath={.metadata.deletionTimestamp}",
            ])
            .await?;
        Ok(!ts.trim().is_empty())
    })
    .await?;
    ensure!(
        !deleting.is_finished(),
        "kubectl delete --wait returned early"
    );
    k.ok(&[
        "patch",
        "cm",
        "held2",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])
    .await?;
    let out = tokio::time::timeout(Duration::from_secs(30), deleting).await???;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configmap \"held2\" deleted"));
    c.stop().await;
    Ok(())
}
