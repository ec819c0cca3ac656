//! The real kubectl (`/usr/bin/kubectl`, the gcloud dispatcher that asks `/version` first)
//! against the in-process server. Fails, never skips, when kubectl is missing.

use std::path::Path;
use std::process::Output;

use anyhow::{Context as _, Result, ensure};
use edgesite_apiserver::{PkiOptions, Server, ServerConfig};
use serde_json::Value;

const KUBECTL: &str = "/usr/bin/kubectl";

async fn kubectl(home: &Path, kubeconfig: &Path, args: &[&str]) -> Result<Output> {
    ensure!(Path::new(KUBECTL).exists(), "{KUBECTL} is missing");
    let out = tokio::process::Command::new(KUBECTL)
        .env("HOME", home)
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .await
        .with_context(|| format!("cannot run {KUBECTL}"))?;
    println!(
        "$ kubectl {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

#[tokio::test]
async fn kubectl_version_and_api_resources() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let home = tempfile::tempdir()?;
    let mut config = ServerConfig::new(dir.path());
    config.bind_address = "127.0.0.1".parse()?;
    config.secure_port = 0;
    config.pki = PkiOptions {
        hostname: Some("edge-test".to_owned()),
        extra_sans: Vec::new(),
        include_interface_ips: false,
    };
    let server = Server::start(config).await?;
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
