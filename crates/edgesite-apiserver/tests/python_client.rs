//! The official Python `kubernetes` client (from the venv `scripts/setup` creates) against
//! the in-process server: version, namespaces, ConfigMap and Deployment CRUD with all three
//! patch types, the scale subresource, ConfigMap and Pod watches, pods with a status patch and
//! a field selector, and 404/409 as `ApiException`s. The checks
//! live in `tests/python/client_check.py`. Fails, never skips, when the venv or the module is
//! missing.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, ensure};

mod support;
use support::Harness;

/// The venv `scripts/setup` creates.
const PYTHON: &str = "/opt/edgesite/pyenv/bin/python";
/// The client version `scripts/setup` pins.
const CLIENT_VERSION: &str = "37.0.2";

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("python")
        .join(name)
}

async fn run(args: &[&std::ffi::OsStr]) -> Result<std::process::Output> {
    tokio::process::Command::new(PYTHON)
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("cannot run {PYTHON}; run scripts/setup"))
}

#[tokio::test]
async fn python_kubernetes_client() -> Result<()> {
    ensure!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: run scripts/setup to create the venv with the kubernetes client"
    );
    let out = run(&[
        "-c".as_ref(),
        "import kubernetes; print(kubernetes.__version__)".as_ref(),
    ])
    .await?;
    ensure!(
        out.status.success(),
        "the kubernetes module is missing from the venv (run scripts/setup): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(version, CLIENT_VERSION, "the venv's kubernetes client");

    let h = Harness::start().await?;
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        run(&[
            script("client_check.py").as_os_str(),
            h.server.kubeconfig_path().as_os_str(),
        ]),
    )
    .await
    .context("the Python checks did not finish within 120 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!(
        "--- client_check.py stdout\n{stdout}--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "the Python checks failed");
    assert!(stdout.contains("all checks passed"), "{stdout}");
    h.server.shutdown().await;
    Ok(())
}
