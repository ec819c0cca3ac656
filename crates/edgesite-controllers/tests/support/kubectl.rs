//! The real kubectl (`/usr/bin/kubectl`) against a [`Cluster`], with a fresh HOME so no
//! user configuration or cache leaks in. A missing kubectl fails the test, never skips it.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};

use super::Cluster;

/// Where the tests expect kubectl.
pub const KUBECTL: &str = "/usr/bin/kubectl";

/// kubectl with its own HOME and the cluster's admin kubeconfig.
pub struct Kubectl {
    /// The fresh HOME kubectl runs with.
    pub home: tempfile::TempDir,
    /// The admin kubeconfig of the cluster.
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    pub fn new(c: &Cluster) -> Result<Self> {
        ensure!(Path::new(KUBECTL).exists(), "{KUBECTL} is missing");
        Ok(Self {
            home: tempfile::tempdir()?,
            kubeconfig: c.server.kubeconfig_path().to_owned(),
        })
    }

    /// A kubectl command with the fresh HOME and the kubeconfig set, not yet started.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(KUBECTL);
        cmd.env("HOME", self.home.path())
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .kill_on_drop(true);
        cmd
    }

    /// Runs kubectl; a command that hangs (a wait that never ends) fails the test.
    pub async fn run(&self, args: &[&str]) -> Result<Output> {
        let out = tokio::time::timeout(Duration::from_secs(90), self.command(args).output())
            .await
            .with_context(|| format!("kubectl {} did not return", args.join(" ")))?
            .with_context(|| format!("cannot run {KUBECTL}"))?;
        println!(
            "$ kubectl {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    /// Runs kubectl and returns stdout, failing on a non-zero exit.
    pub async fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args).await?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Writes `json` to a file in HOME and returns its path.
    pub fn file(&self, name: &str, json: &str) -> Result<String> {
        let p = self.home.path().join(name);
        std::fs::write(&p, json)?;
        Ok(p.to_str().context("utf-8 path")?.to_owned())
    }

    /// The revision numbers `kubectl rollout history <target>` lists, oldest first.
    pub async fn revisions(&self, target: &str) -> Result<Vec<String>> {
        let history = self.ok(&["rollout", "history", target]).await?;
        Ok(history
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
            .map(str::to_owned)
            .collect())
    }

    /// The first container's image of every pod matching `selector`, space-separated.
    pub async fn pod_images(&self, selector: &str) -> Result<String> {
        let out = self
            .ok(&[
                "get",
                "pods",
                "-l",
                selector,
                "-o",
                "jsonpath={.items[*].spec.containers[0].image}",
            ])
            .await?;
        Ok(out.trim().to_owned())
    }
}
