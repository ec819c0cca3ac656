//! A real single-node site for the system tests: `edgesite up` (server and agent in one
//! process) with its own managed containerd and the busybox image in its images directory.
//! Dropping a [`Site`] — also when the test panics — kills the process, prints the tail of its
//! log and runs `edgesite agent --cleanup` on its agent directory. Needs root, containerd, runc
//! and the CNI plugins (`scripts/setup`); a missing prerequisite fails the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use super::{
    KubectlOutput, Running, eventually, kubectl, kubectl_output, print_log_tail, terminate,
};

/// Checks what a real node needs; fails (never skips) when something is missing.
pub fn prerequisites() -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "a test of a real node needs root (containerd mounts overlays, CNI makes bridges)"
    );
    for (bin, package) in [
        ("/usr/bin/containerd", "containerd"),
        ("/usr/lib/cni/bridge", "containernetworking-plugins"),
        ("/usr/lib/cni/host-local", "containernetworking-plugins"),
        ("/usr/bin/ctr", "containerd"),
    ] {
        ensure!(
            Path::new(bin).exists(),
            "{bin} is missing: install the Debian package `{package}` (run `scripts/setup`)"
        );
    }
    Ok(())
}

/// Runs `edgesite agent --cleanup` on `agent_dir`.
pub fn cleanup(agent_dir: &Path) -> Result<std::process::Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_edgesite"))
        .args(["agent", "--cleanup", "--data-dir"])
        .arg(agent_dir)
        .output()?)
}

/// One `edgesite up` in a short directory under /tmp, and a kubectl with a fresh HOME for it.
pub struct Site {
    /// The node's name.
    pub node: String,
    /// The agent's directory (`DATA/agent`).
    pub agent_dir: PathBuf,
    /// The admin kubeconfig the server writes.
    pub kubeconfig: PathBuf,
    /// `edgesite up`'s stderr.
    pub log: PathBuf,
    /// When the process was started.
    pub started: Instant,
    running: Option<Running>,
    /// Fresh HOME of kubectl (a temporary directory).
    pub home: tempfile::TempDir,
    /// Holds everything else; removed last (field order), after the cleanup in `Drop`.
    pub dir: tempfile::TempDir,
}

impl Site {
    /// Starts `edgesite up` as node `node` (node IP 127.0.0.1) with `extra` arguments, the
    /// images `edgesite.io/busybox:1` and each of `more_images` (busybox too) in the agent's
    /// images directory, and waits for the admin kubeconfig.
    pub fn start(node: &str, extra: &[&str], more_images: &[&str]) -> Result<Self> {
        prerequisites()?;
        // Under /tmp: containerd's socket paths must stay short.
        let dir = tempfile::Builder::new()
            .prefix("es-up-")
            .tempdir_in("/tmp")?;
        let home = tempfile::tempdir()?;
        let data = dir.path().join("d");
        let agent_dir = data.join("agent");
        let images = agent_dir.join("images");
        std::fs::create_dir_all(&images)?;
        for name in std::iter::once(&"edgesite.io/busybox:1").chain(more_images) {
            edgesite_testkit::busybox_image(&images, name);
        }
        let log = dir.path().join("up.log");
        let kubeconfig = data.join("admin.kubeconfig");
        let started = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_edgesite"))
            .args(["up", "--bind-address", "127.0.0.1", "--secure-port", "0"])
            .args(["--node-name", node, "--node-ip", "127.0.0.1"])
            .args(extra)
            .arg("--data-dir")
            .arg(&data)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("cannot start edgesite up")?;
        let mut site = Site {
            node: node.to_owned(),
            agent_dir,
            kubeconfig,
            log,
            started,
            running: Some(Running { child }),
            home,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !site.kubeconfig.exists() {
            if let Some(r) = site.running.as_mut()
                && let Some(status) = r.child.try_wait()?
            {
                bail!("edgesite up exited early with {status}");
            }
            ensure!(Instant::now() < deadline, "no admin kubeconfig within 30 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(site)
    }

    /// Waits until the node reports Ready; returns the time since the start.
    pub fn wait_node_ready(&self, secs: u64) -> Result<Duration> {
        let jsonpath = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
        eventually(secs, &format!("node {} Ready", self.node), || {
            let out = self.kubectl_output(&["get", "node", &self.node, "-o", jsonpath])?;
            Ok((out.stdout.trim() != "True").then(|| format!("{} {}", out.stdout, out.stderr)))
        })?;
        Ok(self.started.elapsed())
    }

    /// Runs kubectl and returns its stdout; a non-zero exit is an error.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        kubectl(self.home.path(), &self.kubeconfig, args)
    }

    /// Runs kubectl; the caller judges the exit status.
    pub fn kubectl_output(&self, args: &[&str]) -> Result<KubectlOutput> {
        kubectl_output(self.home.path(), &self.kubeconfig, args)
    }

    /// `kubectl get … -o json` parsed.
    pub fn get_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["get"];
        all.extend(args);
        all.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.kubectl(&all)?)?)
    }

    /// Writes `text` to a file in the site's directory and returns its path.
    pub fn file(&self, name: &str, text: &str) -> Result<String> {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text)?;
        Ok(p.to_str().context("utf-8 path")?.to_owned())
    }

    /// The socket of the site's managed containerd.
    pub fn containerd_socket(&self) -> PathBuf {
        self.agent_dir.join("containerd").join("containerd.sock")
    }

    /// Stops `edgesite up` with SIGTERM and checks it shut down cleanly.
    pub fn stop(&mut self) -> Result<()> {
        let running = self.running.take().context("already stopped")?;
        terminate(running, &self.log)
    }

    fn print_log_tail(&self) {
        print_log_tail("edgesite up log", &self.log, 60);
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(mut r) = self.running.take() {
            let _ = r.kill();
            self.print_log_tail();
        } else if std::thread::panicking() {
            self.print_log_tail();
        }
        let _ = cleanup(&self.agent_dir);
    }
}
