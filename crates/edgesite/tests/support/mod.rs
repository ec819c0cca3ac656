//! Process helpers for the system tests: the built `edgesite` binary run as `edgesite server`
//! and `edgesite sim` child processes, and the real kubectl (`/usr/bin/kubectl`) with a fresh
//! HOME and the server's admin kubeconfig. A missing kubectl fails the test, never skips it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

pub mod site;

/// Prints the last `lines` lines of the log file `log` (named `what`), for a failed test.
pub fn print_log_tail(what: &str, log: &Path, lines: usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = &all[all.len().saturating_sub(lines)..];
    eprintln!(
        "--- {what} ({}), last {} lines ---",
        log.display(),
        tail.len()
    );
    for l in tail {
        eprintln!("{l}");
    }
}

/// The real kubectl.
pub const KUBECTL: &str = "/usr/bin/kubectl";

/// How long one kubectl command may run before the test fails (its own `--timeout`s are
/// shorter).
const KUBECTL_DEADLINE: Duration = Duration::from_secs(90);

/// What a kubectl command printed and how it exited.
#[derive(Debug)]
pub struct KubectlOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs kubectl with `HOME=home` and `--kubeconfig kubeconfig`; fails only when kubectl cannot
/// run or does not return within [`KUBECTL_DEADLINE`]. Prints the command and its output.
pub fn kubectl_output(home: &Path, kubeconfig: &Path, args: &[&str]) -> Result<KubectlOutput> {
    ensure!(Path::new(KUBECTL).exists(), "{KUBECTL} is missing");
    // Files, not pipes: a large answer cannot fill a pipe while we wait for the exit.
    let out_path = tempfile::NamedTempFile::new_in(home)?;
    let err_path = tempfile::NamedTempFile::new_in(home)?;
    let mut child = Command::new(KUBECTL)
        .env("HOME", home)
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out_path.reopen()?)
        .stderr(err_path.reopen()?)
        .spawn()
        .with_context(|| format!("cannot run {KUBECTL}"))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > KUBECTL_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "kubectl {} did not return within {KUBECTL_DEADLINE:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = std::fs::read_to_string(out_path.path())?;
    let stderr = std::fs::read_to_string(err_path.path())?;
    println!(
        "$ kubectl {}   ({:.1} s, {status})\n{stdout}{stderr}",
        args.join(" "),
        started.elapsed().as_secs_f64()
    );
    Ok(KubectlOutput {
        status,
        stdout,
        stderr,
    })
}

/// Runs kubectl and returns its stdout; a non-zero exit is an error.
pub fn kubectl(home: &Path, kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let out = kubectl_output(home, kubeconfig, args)?;
    ensure!(
        out.status.success(),
        "kubectl {} failed ({}): {}",
        args.join(" "),
        out.status,
        out.stderr
    );
    Ok(out.stdout)
}

/// A child process, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Running {
    /// The process.
    pub child: Child,
}

impl Running {
    /// Kills the process at once (no chance to clean up, as a power cut) and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `edgesite server` on a free loopback port with `extra` arguments and waits for its
/// admin kubeconfig; returns the process and the time it took.
pub fn start_server(data_dir: &Path, log: &Path, extra: &[&str]) -> Result<(Running, Duration)> {
    let kubeconfig = data_dir.join("admin.kubeconfig");
    let _ = std::fs::remove_file(&kubeconfig);
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_edgesite"))
        .args([
            "server",
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            "0",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("cannot start edgesite")?;
    let mut running = Running { child };
    while !kubeconfig.exists() {
        if let Some(status) = running.child.try_wait()? {
            bail!(
                "edgesite exited early with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "not ready within 30 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok((running, started.elapsed()))
}

/// Sends SIGTERM and checks that the server logs its shutdown and exits with success.
pub fn terminate(mut running: Running, log: &Path) -> Result<()> {
    // The signal itself, not /bin/kill: procps is not on every Debian (minbase has none).
    let pid = nix::unistd::Pid::from_raw(i32::try_from(running.child.id())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).context("kill -TERM")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = running.child.try_wait()? {
            let text = std::fs::read_to_string(log)?;
            ensure!(status.success(), "edgesite exited with {status}:\n{text}");
            ensure!(text.contains("received SIGTERM"), "{text}");
            ensure!(text.contains("shut down"), "{text}");
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "edgesite did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `edgesite sim` with `nodes` hollow nodes named `{prefix}-0…` that renew their Leases
/// every `heartbeat_seconds`.
pub fn start_sim(
    kubeconfig: &Path,
    prefix: &str,
    nodes: usize,
    heartbeat_seconds: u64,
    log: &Path,
) -> Result<Running> {
    let child = Command::new(env!("CARGO_BIN_EXE_edgesite"))
        .args(["sim", "--prefix", prefix, "--nodes"])
        .arg(nodes.to_string())
        .arg("--heartbeat-seconds")
        .arg(heartbeat_seconds.to_string())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("cannot start edgesite sim")?;
    Ok(Running { child })
}

/// Polls `check` every 200 ms (kubectl takes ~100 ms per call) until it returns true; fails
/// after `secs` seconds, with the last value `check` reported.
pub fn eventually(
    secs: u64,
    what: &str,
    mut check: impl FnMut() -> Result<Option<String>>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let last = check()?;
        let Some(last) = last else {
            return Ok(());
        };
        if Instant::now() > deadline {
            bail!("timed out after {secs} s waiting for: {what}; last seen: {last}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One `edgesite server` in a temporary directory, its hollow-node processes and a kubectl
/// for it. Dropping it kills everything; if the test is failing, the tails of the logs are
/// printed first.
#[derive(Debug)]
pub struct SystemCluster {
    /// Holds the data directory and the logs.
    pub dir: tempfile::TempDir,
    /// Fresh HOME of kubectl.
    pub home: tempfile::TempDir,
    /// The server's admin kubeconfig.
    pub kubeconfig: PathBuf,
    server: Option<Running>,
    sims: Vec<(String, Running)>,
}

impl SystemCluster {
    /// Starts `edgesite server` with `extra` arguments (on top of a free loopback port and a
    /// fresh data directory).
    pub fn start(extra: &[&str]) -> Result<Self> {
        ensure!(Path::new(KUBECTL).exists(), "{KUBECTL} is missing");
        let dir = tempfile::tempdir()?;
        let home = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let (server, took) = start_server(&data, &dir.path().join("server.log"), extra)?;
        println!("edgesite server {extra:?} wrote its kubeconfig after {took:?}");
        Ok(Self {
            kubeconfig: data.join("admin.kubeconfig"),
            dir,
            home,
            server: Some(server),
            sims: Vec::new(),
        })
    }

    /// Path of a log file in the test's directory.
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs kubectl and returns its stdout; a non-zero exit is an error.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        kubectl(self.home.path(), &self.kubeconfig, args)
    }

    /// Runs kubectl; the caller judges the exit status.
    pub fn kubectl_output(&self, args: &[&str]) -> Result<KubectlOutput> {
        kubectl_output(self.home.path(), &self.kubeconfig, args)
    }

    /// `kubectl get … -o jsonpath=PATH` split on whitespace and sorted.
    pub fn jsonpath_words(&self, args: &[&str], path: &str) -> Result<Vec<String>> {
        let jp = format!("jsonpath={path}");
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-o", &jp]);
        let out = self.kubectl(&all)?;
        let mut words: Vec<String> = out.split_whitespace().map(str::to_owned).collect();
        words.sort();
        Ok(words)
    }

    /// Writes `text` to a file in kubectl's HOME and returns its path.
    pub fn file(&self, name: &str, text: &str) -> Result<String> {
        let p = self.home.path().join(name);
        std::fs::write(&p, text)?;
        Ok(p.to_str().context("utf-8 path")?.to_owned())
    }

    /// Starts `edgesite sim` with `nodes` hollow nodes `{prefix}-0…` heartbeating every
    /// `heartbeat_seconds`, and waits until `kubectl get nodes` shows all of them Ready.
    pub fn sim(&mut self, prefix: &str, nodes: usize, heartbeat_seconds: u64) -> Result<()> {
        let log = self.log(&format!("sim-{prefix}.log"));
        let running = start_sim(&self.kubeconfig, prefix, nodes, heartbeat_seconds, &log)?;
        self.sims.push((prefix.to_owned(), running));
        let names: Vec<String> = (0..nodes).map(|i| format!("{prefix}-{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        self.wait_nodes(&refs, "Ready", 30)
    }

    /// Waits until `kubectl get nodes` shows each of `nodes` with STATUS `status` (`Ready`,
    /// `NotReady`, …).
    pub fn wait_nodes(&self, nodes: &[&str], status: &str, secs: u64) -> Result<()> {
        eventually(secs, &format!("nodes {nodes:?} {status}"), || {
            let out = self.kubectl(&["get", "nodes", "--no-headers"])?;
            let ok = nodes.iter().all(|n| {
                out.lines().any(|l| {
                    let mut f = l.split_whitespace();
                    f.next() == Some(n) && f.next() == Some(status)
                })
            });
            Ok((!ok).then_some(out))
        })
    }

    /// Kills the `edgesite sim` process of `prefix` (SIGKILL: its nodes stop heartbeating at
    /// once, as if partitioned or powered off).
    pub fn kill_sim(&mut self, prefix: &str) -> Result<()> {
        let i = self
            .sims
            .iter()
            .position(|(p, _)| p == prefix)
            .with_context(|| format!("no sim {prefix}"))?;
        let (_, mut running) = self.sims.remove(i);
        running.kill()
    }

    /// Stops the server with SIGTERM and starts it again on the same data directory (a new
    /// port: the kubeconfig is rewritten), with the same `extra` arguments as the first start.
    pub fn restart(&mut self, extra: &[&str]) -> Result<()> {
        let server = self.server.take().context("server already stopped")?;
        let log = self.dir.path().join("server.log");
        terminate(server, &log)?;
        let data = self.dir.path().join("data");
        let (server, took) = start_server(&data, &log, extra)?;
        println!("edgesite server restarted: kubeconfig after {took:?}");
        self.server = Some(server);
        Ok(())
    }

    /// Stops the server with SIGTERM and checks it shut down cleanly.
    pub fn stop(mut self) -> Result<()> {
        for (_, mut sim) in self.sims.drain(..) {
            sim.kill()?;
        }
        let server = self.server.take().context("server already stopped")?;
        terminate(server, &self.dir.path().join("server.log"))
    }

    fn print_log_tails(&self) {
        let mut logs = vec!["server.log".to_owned()];
        logs.extend(self.sims.iter().map(|(p, _)| format!("sim-{p}.log")));
        for name in logs {
            print_log_tail(&name, &self.log(&name), 80);
        }
    }
}

impl Drop for SystemCluster {
    fn drop(&mut self) {
        if std::thread::panicking() || self.server.is_some() {
            self.print_log_tails();
        }
    }
}
