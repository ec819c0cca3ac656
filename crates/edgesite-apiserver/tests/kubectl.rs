//! The real kubectl (`/usr/bin/kubectl`, the gcloud dispatcher that asks `/version` first)
//! against the in-process server. Fails, never skips, when kubectl is missing.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::process::Output;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

mod support;
use support::{Harness, kubectl};

#[tokio::test]
async fn kubectl_version_and_api_resources() -> Result<()> {
    let Harness {
        dir: _dir, server, ..
    } = Harness::start().await?;
    let home = tempfile::tempdir()?;
    let kc = server.kubeconfig_path().to_owned();

    let out = kubectl(home.path(), &kc, &["version", "-o", "json"]).await?;
    ensure!(out.status.success(), "kubectl version failed");
    let v: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["serverVersion"]["major"], "1");
    assert_eq!(v["serverVersion"]["minor"], "32");
    assert_eq!(v["serverVersion"]["gitVersion"], "v1.32.4+edgesite");
    // The dispatcher ran its bundled kubectl 1.32 (it reports minor "32+").
    assert!(
        v["clientVersion"]["gitVersion"]
            .as_str()
            .is_some_and(|s| s.starts_with("v1.32.")),
        "{v}"
    );

    let out = kubectl(home.path(), &kc, &["api-resources"]).await?;
    ensure!(out.status.success(), "kubectl api-resources failed");
    let text = String::from_utf8(out.stdout)?;
    let line = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
    };
    let pods = line("pods").context("pods listed")?;
    assert_eq!(pods, ["pods", "po", "v1", "true", "Pod"]);
    let deploy = line("deployments").context("deployments listed")?;
    assert_eq!(
        deploy,
        ["deployments", "deploy", "apps/v1", "true", "Deployment"]
    );

    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn kubectl_configmap_lifecycle_and_namespaces() -> Result<()> {
    let Harness {
        dir: _dir, server, ..
    } = Harness::start().await?;
    let home = tempfile::tempdir()?;
    let kc = server.kubeconfig_path().to_owned();
    let file = home.path().join("cm.json");
    std::fs::write(
        &file,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":{"a":"b"}}"#,
    )?;
    let f = file.to_str().context("path")?;
    let ok = |out: &Output, what: &str| -> Result<String> {
        ensure!(out.status.success(), "{what} failed");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let s = ok(
        &kubectl(home.path(), &kc, &["create", "-f", f, "--validate=false"]).await?,
        "create",
    )?;
    assert!(s.contains("configmap/x created"), "{s}");
    let s = ok(&kubectl(home.path(), &kc, &["get", "cm"]).await?, "get cm")?;
    assert!(
        s.contains("NAME") && s.contains("DATA") && s.contains('x'),
        "{s}"
    );
    let s = ok(
        &kubectl(home.path(), &kc, &["get", "cm", "x", "-o", "yaml"]).await?,
        "get -o yaml",
    )?;
    assert!(s.contains("a: b") && s.contains("uid:"), "{s}");
    let s = ok(
        &kubectl(home.path(), &kc, &["label", "cm", "x", "k=v"]).await?,
        "label",
    )?;
    assert!(s.contains("labeled"), "{s}");
    let s = ok(
        &kubectl(home.path(), &kc, &["get", "cm", "-l", "k=v", "-o", "name"]).await?,
        "get -l",
    )?;
    assert_eq!(s.trim(), "configmap/x");
    let s = ok(
        &kubectl(home.path(), &kc, &["delete", "cm", "x"]).await?,
        "delete",
    )?;
    assert!(s.contains("deleted"), "{s}");
    let out = kubectl(home.path(), &kc, &["get", "cm", "x"]).await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let s = ok(&kubectl(home.path(), &kc, &["get", "ns"]).await?, "get ns")?;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(s.contains(ns), "{s}");
    }
    assert!(s.contains("Active"), "{s}");
    server.shutdown().await;
    Ok(())
}
