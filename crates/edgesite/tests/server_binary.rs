//! System test: the built `edgesite server` binary, started twice on one data directory; time
//! to ready (spawn → admin.kubeconfig written → `/readyz` answers through kubectl), the real
//! kubectl against it, graceful shutdown on SIGTERM.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};

mod support;
use support::{Running, kubectl, start_server, start_sim, terminate};

/// Starts the binary and waits for the kubeconfig; returns the process and the time it took.
fn start(data_dir: &std::path::Path, log: &std::path::Path) -> Result<(Running, Duration)> {
    start_server(data_dir, log, &[])
}

#[test]
fn edgesite_server_binary_starts_serves_kubectl_and_stops() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let home = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let kubeconfig = data.join("admin.kubeconfig");

    for round in [
        "first start (creates PKI and store)",
        "second start (reuses them)",
    ] {
        let log = dir.path().join("server.log");
        let ca_before = std::fs::read(data.join("pki/ca.crt")).ok();
        let spawned = Instant::now();
        let (running, to_kubeconfig) = start(&data, &log)?;
        let ready = kubectl(home.path(), &kubeconfig, &["get", "--raw", "/readyz"])?;
        let to_first_answer = spawned.elapsed();
        assert_eq!(ready, "ok");
        println!(
            "{round}: admin.kubeconfig after {to_kubeconfig:?}; first kubectl answer after \
             {to_first_answer:?} (kubectl startup included)"
        );
        let text = std::fs::read_to_string(&log)?;
        let line = text
            .lines()
            .find(|l| l.contains("API server ready in"))
            .context("ready line logged")?;
        println!("server log: {line}");
        let export = format!(
            "export KUBECONFIG={}",
            std::path::absolute(&kubeconfig)?.display()
        );
        assert!(
            text.lines().any(|l| l == export),
            "the server prints `{export}` on a line of its own:\n{text}"
        );
        assert!(text.contains("embedded store open"), "{text}");
        assert!(data.join("db/state.redb").exists());
        if let Some(ca) = ca_before {
            assert_eq!(std::fs::read(data.join("pki/ca.crt"))?, ca, "CA reused");
        }

        let version = kubectl(home.path(), &kubeconfig, &["version", "-o", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&version)?;
        assert_eq!(v["serverVersion"]["minor"], "32");
        let resources = kubectl(home.path(), &kubeconfig, &["api-resources"])?;
        assert!(resources.lines().any(|l| l.starts_with("deployments ")));

        terminate(running, &log)?;
    }
    Ok(())
}

#[test]
fn edgesite_server_binary_runs_on_etcd() -> Result<()> {
    let etcd = edgesite_testkit::EtcdServer::try_start()?;
    let dir = tempfile::tempdir()?;
    let home = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let url = format!("etcd://{}", etcd.endpoint());
    let (running, to_kubeconfig) = start_server(&data, &log, &["--datastore", &url])?;
    println!("on etcd: admin.kubeconfig after {to_kubeconfig:?}");
    let ready = kubectl(
        home.path(),
        &data.join("admin.kubeconfig"),
        &["get", "--raw", "/readyz"],
    )?;
    assert_eq!(ready, "ok");
    assert!(
        !data.join("db/state.redb").exists(),
        "embedded store not used"
    );
    terminate(running, &log)
}

#[test]
fn edgesite_server_rejects_a_bad_datastore_url() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = Command::new(env!("CARGO_BIN_EXE_edgesite"))
        .args([
            "server",
            "--secure-port",
            "0",
            "--datastore",
            "mysql://x",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid --datastore"), "{stderr}");
    Ok(())
}

/// `edgesite sim` against a running `edgesite server`: the hollow nodes show up Ready in
/// `kubectl get nodes`, and a pod bound to one of them is reported Running.
#[test]
fn edgesite_sim_registers_hollow_nodes_that_run_pods() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let home = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let kubeconfig = data.join("admin.kubeconfig");
    let log = dir.path().join("server.log");
    let (server, _) = start(&data, &log)?;
    let _sim = start_sim(&kubeconfig, "edge", 2, 1, &dir.path().join("sim.log"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes = kubectl(home.path(), &kubeconfig, &["get", "nodes", "--no-headers"])?;
        let ready = nodes
            .lines()
            .filter(|l| l.starts_with("edge-") && l.split_whitespace().nth(1) == Some("Ready"))
            .count();
        if ready == 2 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "hollow nodes not Ready:\n{nodes}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let pod = dir.path().join("pod.json");
    std::fs::write(
        &pod,
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},
            "spec":{"nodeName":"edge-1","containers":[{"name":"c","image":"busybox"}]}}"#,
    )?;
    kubectl(
        home.path(),
        &kubeconfig,
        &["create", "-f", pod.to_str().context("path")?],
    )?;
    loop {
        let phase = kubectl(
            home.path(),
            &kubeconfig,
            &["get", "pod", "p", "-o", "jsonpath={.status.phase}"],
        )?;
        if phase == "Running" {
            break;
        }
        ensure!(Instant::now() < deadline, "the pod never ran: {phase}");
        std::thread::sleep(Duration::from_millis(200));
    }
    terminate(server, &log)
}
