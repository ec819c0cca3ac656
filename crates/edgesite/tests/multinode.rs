//! System tests of a site with more than one node and of a node whose runtime fails: the
//! built `edgesite server` and `edgesite agent` processes, each agent with its own containerd,
//! the real kubectl. Needs root, containerd, runc and the CNI plugins (`scripts/setup`); a
//! missing prerequisite fails the test.
//!
//! Both agents run in the host's network namespace (node IP 127.0.0.1): what keeps them apart
//! is what the agent derives from its directory (containerd root, state and socket, the CNI
//! bridge's name, host-local's data directory), which is what these tests check.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

mod support;
use support::site::{cleanup, prerequisites};
use support::{Running, eventually, kubectl, kubectl_output, print_log_tail, start_server};

/// One `edgesite server` and its agents; dropping it kills them (by PID), stops any external
/// containerd, then removes what each agent made (`edgesite agent --cleanup`), whatever the
/// test's outcome.
struct Site {
    dir: PathBuf,
    home: tempfile::TempDir,
    kubeconfig: PathBuf,
    url: String,
    server: Option<Running>,
    agents: Vec<Agent>,
    containerds: Vec<(PathBuf, Running)>,
    /// Set by [`Site::passed`]; until then the logs are printed and kept on drop.
    passed: bool,
}

struct Agent {
    name: String,
    dir: PathBuf,
    log: PathBuf,
    running: Option<Running>,
}

impl Site {
    /// Starts `edgesite server` in a fresh directory under /tmp (containerd's socket paths
    /// must stay short).
    fn start(prefix: &str) -> Result<Self> {
        prerequisites()?;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")?
            .keep();
        let data = dir.join("server");
        let (server, took) = start_server(&data, &dir.join("server.log"), &[])?;
        eprintln!(
            "FIGURE server start → kubeconfig {:.2} s",
            took.as_secs_f64()
        );
        let kubeconfig = data.join("admin.kubeconfig");
        let text = std::fs::read_to_string(&kubeconfig)?;
        let url = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("server:"))
            .context("no server in the kubeconfig")?
            .trim()
            .to_owned();
        Ok(Self {
            home: tempfile::tempdir()?,
            kubeconfig,
            url,
            server: Some(server),
            agents: Vec::new(),
            containerds: Vec::new(),
            passed: false,
            dir,
        })
    }

    /// Marks the test as passed: the drop removes the directory instead of printing logs.
    fn passed(mut self) {
        self.passed = true;
    }

    fn k(&self, args: &[&str]) -> Result<String> {
        kubectl(self.home.path(), &self.kubeconfig, args)
    }

    /// A copy of the server's node token at `DIR/<name>`.
    fn token_copy(&self, name: &str) -> Result<PathBuf> {
        let to = self.dir.join(name);
        std::fs::copy(self.dir.join("server").join("node-token"), &to)?;
        Ok(to)
    }

    /// The agent directory of node `name`, with the busybox image in its images directory.
    fn agent_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.join(name);
        let images = dir.join("images");
        std::fs::create_dir_all(&images)?;
        edgesite_testkit::busybox_image(&images, "edgesite.io/busybox:1");
        Ok(dir)
    }

    /// The `edgesite agent` command of node `name` (not started).
    fn agent_command(&self, name: &str, token: Option<&Path>, extra: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgesite"));
        cmd.args(["agent", "--server", &self.url, "--node-name", name])
            .args(["--node-ip", "127.0.0.1", "--data-dir"])
            .arg(self.dir.join(name))
            .args(extra)
            .env("RUST_LOG", "info,edgesite_agent::agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(token) = token {
            cmd.arg("--token-file").arg(token);
        }
        cmd
    }

    /// Starts the agent of node `name` (its directory from [`Site::agent_dir`]), logging to
    /// `DIR/<name>-<n>.log`.
    fn start_agent(&mut self, name: &str, token: Option<&Path>, extra: &[&str]) -> Result<()> {
        let runs = self.agents.iter().filter(|a| a.name == name).count();
        let log = self.dir.join(format!("{name}-{runs}.log"));
        let child = self
            .agent_command(name, token, extra)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("cannot start edgesite agent")?;
        self.agents.push(Agent {
            name: name.to_owned(),
            dir: self.dir.join(name),
            log,
            running: Some(Running { child }),
        });
        Ok(())
    }

    fn agent(&mut self, name: &str) -> Result<&mut Agent> {
        self.agents
            .iter_mut()
            .rev()
            .find(|a| a.name == name && a.running.is_some())
            .with_context(|| format!("no running agent {name}"))
    }

    /// Stops node `name`'s agent with SIGTERM and waits for its exit (containers keep
    /// running).
    fn stop_agent(&mut self, name: &str) -> Result<()> {
        let agent = self.agent(name)?;
        let mut running = agent.running.take().context("not running")?;
        sigterm(running.child.id())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = running.child.try_wait()? {
                ensure!(status.success(), "agent {name} exited with {status}");
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "agent {name} ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills node `name`'s agent with SIGKILL (no chance to stop its containerd) and reaps it.
    fn kill_agent(&mut self, name: &str) -> Result<()> {
        let agent = self.agent(name)?;
        agent.running.take().context("not running")?.kill()
    }

    /// Whether node `name`'s agent process still runs.
    fn agent_alive(&mut self, name: &str) -> Result<bool> {
        let agent = self.agent(name)?;
        let running = agent.running.as_mut().context("not running")?;
        Ok(running.child.try_wait()?.is_none())
    }

    /// The node's Ready condition (status, reason, message).
    fn ready(&self, node: &str) -> Result<(String, String, String)> {
        let out = kubectl_output(
            self.home.path(),
            &self.kubeconfig,
            &["get", "node", node, "-o", "json"],
        )?;
        if !out.status.success() {
            return Ok(("absent".into(), String::new(), out.stderr));
        }
        let node: Value = serde_json::from_str(&out.stdout)?;
        let conditions = node["status"]["conditions"].as_array().cloned();
        let ready = conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c["type"] == "Ready")
            .unwrap_or_default();
        let s = |k: &str| ready[k].as_str().unwrap_or_default().to_owned();
        Ok((s("status"), s("reason"), s("message")))
    }

    fn wait_ready(&self, node: &str, want: &str, secs: u64) -> Result<(String, String, String)> {
        let mut last = Default::default();
        eventually(secs, &format!("node {node} Ready={want}"), || {
            last = self.ready(node)?;
            Ok((last.0 != want).then(|| format!("{last:?}")))
        })?;
        Ok(last)
    }

    /// The node events (`involvedObject.kind=Node`) of `node`: (type, reason, message).
    fn node_events(&self, node: &str) -> Result<Vec<(String, String, String)>> {
        let out = self.k(&[
            "get",
            "events",
            "-A",
            "--field-selector",
            &format!("involvedObject.kind=Node,involvedObject.name={node}"),
            "-o",
            "json",
        ])?;
        let list: Value = serde_json::from_str(&out)?;
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Ok(list["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| (s(&e["type"]), s(&e["reason"]), s(&e["message"])))
            .collect())
    }

    fn wait_event(&self, node: &str, kind: &str, reason: &str, secs: u64) -> Result<String> {
        let mut message = String::new();
        eventually(
            secs,
            &format!("a {kind} {reason} event of node {node}"),
            || {
                let events = self.node_events(node)?;
                match events.iter().find(|e| e.0 == kind && e.1 == reason) {
                    Some(e) => {
                        message = e.2.clone();
                        Ok(None)
                    }
                    None => Ok(Some(format!("{events:?}"))),
                }
            },
        )?;
        Ok(message)
    }

    /// Starts a containerd of the test's own for the agent directory `adir` (the agent's
    /// configuration for it, so its CRI plugin reads the agent's CNI configuration), as an
    /// external runtime (`--containerd-address`).
    fn start_containerd(&mut self, adir: &Path) -> Result<PathBuf> {
        let config = edgesite_agent::containerd::ContainerdConfig::new(adir);
        config.write()?;
        let socket = config.socket();
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(config.log_path())?;
        let child = Command::new(&config.binary)
            .arg("--config")
            .arg(config.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start containerd")?;
        self.containerds.push((adir.to_owned(), Running { child }));
        eventually(30, "the external containerd answering", || {
            let out = Command::new("/usr/bin/ctr")
                .arg("--address")
                .arg(&socket)
                .args(["--timeout", "2s", "version"])
                .output()?;
            Ok((!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned()))
        })?;
        Ok(socket)
    }

    /// Stops the test's containerd of `adir` (SIGTERM, then SIGKILL after 10 s).
    fn stop_containerd(&mut self, adir: &Path) -> Result<()> {
        let i = self
            .containerds
            .iter()
            .position(|(d, _)| d == adir)
            .context("no such containerd")?;
        let (_, mut running) = self.containerds.remove(i);
        sigterm(running.child.id())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while running.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                running.kill()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let failing = !self.passed;
        for agent in &mut self.agents {
            if let Some(mut r) = agent.running.take() {
                let _ = r.kill();
            }
        }
        if failing {
            print_log_tail("server log", &self.dir.join("server.log"), 40);
            for agent in &self.agents {
                print_log_tail(&format!("agent {} log", agent.name), &agent.log, 60);
            }
        }
        drop(self.server.take());
        // The external containerds first: cleanup runs the agent's own on the same directory.
        for (_, mut r) in self.containerds.drain(..) {
            let _ = r.kill();
        }
        let mut dirs: Vec<&PathBuf> = self.agents.iter().map(|a| &a.dir).collect();
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            // A killed agent leaves its containerd running. The cleanup stops it itself;
            // killing it here first keeps the teardown working whatever the test left.
            for _ in 0..50 {
                let Some(pid) = containerd_pid(dir) else {
                    break;
                };
                if let Ok(pid) = i32::try_from(pid) {
                    let pid = nix::unistd::Pid::from_raw(pid);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            match cleanup(dir) {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "cleanup of {} failed: {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => eprintln!("cleanup of {}: {e}", dir.display()),
            }
        }
        if !failing {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn sigterm(pid: u32) -> Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).context("kill -TERM")?;
    Ok(())
}

/// Whether `ip` lies in `cidr` (`a.b.c.d/n`).
fn in_cidr(ip: &str, cidr: &str) -> Result<bool> {
    let (net, bits) = cidr.split_once('/').context("a CIDR")?;
    let (net, bits): (Ipv4Addr, u32) = (net.parse()?, bits.parse()?);
    let ip: Ipv4Addr = ip.parse()?;
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    Ok(u32::from(ip) & mask == u32::from(net) & mask)
}

/// The pid of the containerd running with `adir`'s configuration.
fn containerd_pid(adir: &Path) -> Option<u32> {
    containerd_pids(adir).first().copied()
}

/// The pids of every containerd running with `adir`'s configuration (zombies, whose command
/// line is empty, are not).
fn containerd_pids(adir: &Path) -> Vec<u32> {
    let config = adir.join("containerd").join("config.toml");
    let needle = config.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (args.first().is_some_and(|a| a.ends_with("containerd")) && args.contains(&needle))
                .then_some(pid)
        })
        .collect()
}

/// A pod that runs until it is deleted, and stops at once on SIGTERM.
const STEADY_POD: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: steady}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: edgesite.io/busybox:1
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
"#;

/// Pod `steady`'s container id, restart count and readiness.
fn steady_container(site: &Site) -> Result<String> {
    site.k(&[
        "get",
        "pod",
        "steady",
        "-o",
        "jsonpath={.status.containerStatuses[0].containerID} \
         {.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].ready}",
    ])
}

const DAEMONSET: &str = r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {name: sleeper}
spec:
  selector: {matchLabels: {app: sleeper}}
  template:
    metadata: {labels: {app: sleeper}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: sleep
        image: edgesite.io/busybox:1
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
"#;

/// One of the DaemonSet's pods as the server has it.
#[derive(Debug, Clone, PartialEq)]
struct DaemonPod {
    node: String,
    name: String,
    phase: String,
    ip: String,
    restarts: i64,
    container: String,
    ready: bool,
}

/// The DaemonSet's pods.
fn daemon_pods(site: &Site) -> Result<Vec<DaemonPod>> {
    let out = site.k(&["get", "pods", "-l", "app=sleeper", "-o", "json"])?;
    let list: Value = serde_json::from_str(&out)?;
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    Ok(list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let cs = &p["status"]["containerStatuses"][0];
            DaemonPod {
                node: s(&p["spec"]["nodeName"]),
                name: s(&p["metadata"]["name"]),
                phase: s(&p["status"]["phase"]),
                ip: s(&p["status"]["podIP"]),
                restarts: cs["restartCount"].as_i64().unwrap_or(-1),
                container: s(&cs["containerID"]),
                ready: cs["ready"] == true,
            }
        })
        .collect())
}

#[test]
fn two_agents_run_a_daemonset_pod_each_and_survive_rejoin_and_a_containerd_crash() -> Result<()> {
    let mut site = Site::start("es-mn-")?;

    // A wrong token: the agent gives up at once with one clear line.
    let real = std::fs::read_to_string(site.dir.join("server").join("node-token"))?;
    let (pin, _) = real.trim().rsplit_once(':').context("token has a secret")?;
    let wrong = site.dir.join("wrong-token");
    std::fs::write(&wrong, format!("{pin}:{}\n", "0".repeat(48)))?;
    let started = Instant::now();
    let out = site
        .agent_command("wrong", Some(&wrong), &[])
        // As a user runs it: no backtrace under the message.
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stderr(Stdio::piped())
        .output()?;
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    println!("wrong token: {} after {took:?}: {last}", out.status);
    ensure!(!out.status.success(), "a wrong token must fail: {stderr}");
    ensure!(took < Duration::from_secs(10), "gave up after {took:?}");
    ensure!(
        last.starts_with("Error: ") && last.contains("rejected the join token"),
        "one clear line: {stderr}"
    );
    eprintln!(
        "FIGURE wrong token → agent exit {:.2} s",
        took.as_secs_f64()
    );

    let dir_a = site.agent_dir("edge-a")?;
    let dir_b = site.agent_dir("edge-b")?;
    // A corrupt tarball next to the good image: an event, and the good image still imported.
    std::fs::write(dir_a.join("images").join("bad.tar"), b"this is not a tar")?;
    let token_a = site.token_copy("token-a")?;
    let token_b = site.token_copy("token-b")?;
    let started = Instant::now();
    site.start_agent("edge-a", Some(&token_a), &[])?;
    site.start_agent("edge-b", Some(&token_b), &[])?;
    site.wait_ready("edge-a", "True", 90)?;
    site.wait_ready("edge-b", "True", 90)?;
    eprintln!(
        "FIGURE two agents start → both nodes Ready {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let wide = site.k(&["get", "nodes", "-o", "wide"])?;
    for node in ["edge-a", "edge-b"] {
        let line = wide
            .lines()
            .find(|l| l.split_whitespace().next() == Some(node))
            .with_context(|| format!("{node} in {wide}"))?;
        let f: Vec<&str> = line.split_whitespace().collect();
        ensure!(f[1] == "Ready", "{line}");
        ensure!(
            line.contains("127.0.0.1") && line.contains("containerd://"),
            "{line}"
        );
    }

    // What must not be shared between the two nodes on this host.
    let bridges = [
        edgesite_agent::cni::bridge_name(&dir_a),
        edgesite_agent::cni::bridge_name(&dir_b),
    ];
    ensure!(bridges[0] != bridges[1], "{bridges:?}");
    let (pid_a, pid_b) = (containerd_pid(&dir_a), containerd_pid(&dir_b));
    ensure!(
        pid_a.is_some() && pid_b.is_some() && pid_a != pid_b,
        "one containerd per agent: {pid_a:?} {pid_b:?}"
    );

    let message = site.wait_event("edge-a", "Warning", "ImageImportFailed", 30)?;
    ensure!(message.contains("bad.tar"), "{message}");
    let logged = std::fs::read_to_string(&site.agent("edge-a")?.log)?;
    ensure!(
        logged.contains("image file not imported") && logged.contains("bad.tar"),
        "the agent logs the failed import too"
    );

    let manifest = site.dir.join("ds.yaml");
    std::fs::write(&manifest, DAEMONSET)?;
    let created = Instant::now();
    site.k(&["apply", "-f", &manifest.to_string_lossy()])?;
    let mut pods = Vec::new();
    eventually(120, "one sleeper pod Running on each node", || {
        pods = daemon_pods(&site)?;
        let mut nodes: Vec<&str> = pods
            .iter()
            .filter(|p| p.phase == "Running" && p.ready && !p.ip.is_empty())
            .map(|p| p.node.as_str())
            .collect();
        nodes.sort();
        Ok((nodes != ["edge-a", "edge-b"] || pods.len() != 2).then(|| format!("{pods:?}")))
    })?;
    eprintln!(
        "FIGURE DaemonSet apply → a pod Running on each of 2 nodes {:.2} s",
        created.elapsed().as_secs_f64()
    );
    let mut cidrs = Vec::new();
    for DaemonPod { node, name, ip, .. } in &pods {
        let cidr = site.k(&["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"])?;
        ensure!(
            in_cidr(ip, &cidr)?,
            "pod {name} on {node} has {ip}, outside the node's {cidr}"
        );
        cidrs.push(cidr);
    }
    ensure!(cidrs[0] != cidrs[1], "each node its own podCIDR: {cidrs:?}");
    site.k(&["get", "pods", "-o", "wide"])?;

    // Rejoin: the token file is gone; the stored certificate is enough.
    site.stop_agent("edge-b")?;
    std::fs::remove_file(&token_b)?;
    let restarted = Instant::now();
    site.start_agent("edge-b", Some(&token_b), &[])?;
    eventually(30, "the restarted agent edge-b running", || {
        let log = std::fs::read_to_string(&site.agent("edge-b")?.log)?;
        if !site.agent_alive("edge-b")? {
            anyhow::bail!("edge-b exited after the token file was removed:\n{log}");
        }
        Ok((!log.contains("agent running")).then_some(log))
    })?;
    site.wait_ready("edge-b", "True", 60)?;
    eprintln!(
        "FIGURE agent restart without token → running {:.2} s",
        restarted.elapsed().as_secs_f64()
    );
    let on = |pods: &[DaemonPod], node: &str| pods.iter().find(|p| p.node == node).cloned();
    // A pod sync after the restart must see the same container.
    std::thread::sleep(Duration::from_secs(3));
    let (before_b, after_b) = (on(&pods, "edge-b"), on(&daemon_pods(&site)?, "edge-b"));
    ensure!(
        before_b.is_some() && before_b == after_b,
        "edge-b's pod adopted, same container, Running and ready: {before_b:?} → {after_b:?}"
    );

    // kill -9 of edge-a's managed containerd: the agent restarts it; the pod's container
    // (its shim outlives containerd) keeps running, and the node stays or comes back Ready.
    let old = containerd_pid(&dir_a).context("edge-a's containerd")?;
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(old)?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    eventually(30, "edge-a's containerd restarted", || {
        Ok(match containerd_pid(&dir_a) {
            Some(new) if new != old => None,
            other => Some(format!("{other:?}")),
        })
    })?;
    eprintln!(
        "FIGURE kill -9 managed containerd → new containerd process {:.2} s",
        killed.elapsed().as_secs_f64()
    );
    ensure!(site.agent_alive("edge-a")?, "the agent stays up");
    site.wait_ready("edge-a", "True", 60)?;
    std::thread::sleep(Duration::from_secs(6));
    let (before_a, after_a) = (on(&pods, "edge-a"), on(&daemon_pods(&site)?, "edge-a"));
    ensure!(
        before_a.is_some() && before_a == after_a,
        "edge-a's pod still Running and ready in the same container: {before_a:?} → {after_a:?}"
    );
    let log = std::fs::read_to_string(&site.agent("edge-a")?.log)?;
    ensure!(log.contains("containerd exited; restarting it"), "{log}");

    site.k(&["delete", "daemonset", "sleeper", "--timeout=60s"])?;
    eventually(60, "the DaemonSet's pods gone", || {
        let pods = daemon_pods(&site)?;
        Ok((!pods.is_empty()).then(|| format!("{pods:?}")))
    })?;
    site.passed();
    Ok(())
}

#[test]
fn an_external_containerd_down_makes_the_node_not_ready_until_it_is_back() -> Result<()> {
    let mut site = Site::start("es-mx-")?;
    let adir = site.agent_dir("edge-x")?;
    let socket = site.start_containerd(&adir)?;
    let token = site.token_copy("token-x")?;
    let socket_arg = socket.to_string_lossy().into_owned();
    site.start_agent(
        "edge-x",
        Some(&token),
        &["--containerd-address", &socket_arg],
    )?;
    site.wait_ready("edge-x", "True", 90)?;
    let pod = site.dir.join("pod.yaml");
    std::fs::write(&pod, STEADY_POD)?;
    site.k(&["apply", "-f", &pod.to_string_lossy()])?;
    site.k(&[
        "wait",
        "--for=condition=Ready",
        "pod/steady",
        "--timeout=60s",
    ])?;
    let before = steady_container(&site)?;

    site.stop_containerd(&adir)?;
    let stopped = Instant::now();
    let (_, reason, message) = site.wait_ready("edge-x", "False", 60)?;
    eprintln!(
        "FIGURE external containerd stopped → node Ready=False {:.2} s",
        stopped.elapsed().as_secs_f64()
    );
    ensure!(reason == "KubeletNotReady", "{reason}: {message}");
    ensure!(
        message.starts_with("container runtime is down"),
        "{message}"
    );
    let event = site.wait_event("edge-x", "Warning", "ContainerRuntimeDown", 30)?;
    ensure!(event.starts_with("container runtime is down"), "{event}");
    site.wait_event("edge-x", "Normal", "NodeNotReady", 30)?;
    ensure!(
        site.agent_alive("edge-x")?,
        "the agent stays up without its runtime"
    );
    site.k(&["get", "nodes"])?;

    site.start_containerd(&adir)?;
    let back = Instant::now();
    site.wait_ready("edge-x", "True", 60)?;
    eprintln!(
        "FIGURE external containerd back → node Ready=True {:.2} s",
        back.elapsed().as_secs_f64()
    );
    site.wait_event("edge-x", "Normal", "NodeReady", 30)?;
    ensure!(site.agent_alive("edge-x")?, "the agent still runs");
    // The container outlived its containerd (its shim did): the pod is Running and ready
    // in the same container once the workers reach the runtime again.
    let mut after = String::new();
    eventually(60, "pod steady ready in the same container", || {
        after = steady_container(&site)?;
        Ok((after != before).then(|| format!("{before} → {after}")))
    })?;
    site.k(&["delete", "pod", "steady", "--timeout=60s"])?;
    site.passed();
    Ok(())
}

#[test]
fn a_killed_agent_started_again_replaces_its_old_containerd_and_adopts_the_pod() -> Result<()> {
    let mut site = Site::start("es-mk-")?;
    let adir = site.agent_dir("edge-k")?;
    let token = site.token_copy("token-k")?;
    site.start_agent("edge-k", Some(&token), &[])?;
    site.wait_ready("edge-k", "True", 90)?;
    let pod = site.dir.join("pod.yaml");
    std::fs::write(&pod, STEADY_POD)?;
    site.k(&["apply", "-f", &pod.to_string_lossy()])?;
    site.k(&[
        "wait",
        "--for=condition=Ready",
        "pod/steady",
        "--timeout=60s",
    ])?;
    let before = steady_container(&site)?;
    ensure!(
        before.ends_with(" 0 true"),
        "running, never restarted: {before}"
    );
    let old = containerd_pids(&adir);
    ensure!(
        old.len() == 1,
        "one containerd for {}: {old:?}",
        adir.display()
    );
    let pid_file = adir.join("containerd").join("containerd.pid");
    ensure!(
        std::fs::read_to_string(&pid_file)?.trim() == old[0].to_string(),
        "the PID file names the running containerd"
    );

    // SIGKILL: the agent cannot stop its containerd, which keeps running on its own.
    site.kill_agent("edge-k")?;
    ensure!(
        containerd_pids(&adir) == old,
        "the killed agent's containerd is left running: {:?}",
        containerd_pids(&adir)
    );
    let restarted = Instant::now();
    site.start_agent("edge-k", None, &[])?;
    eventually(60, "the restarted agent running", || {
        let log = std::fs::read_to_string(&site.agent("edge-k")?.log)?;
        if !site.agent_alive("edge-k")? {
            anyhow::bail!("the restarted agent exited:\n{log}");
        }
        Ok((!log.contains("agent running")).then_some(log))
    })?;
    eprintln!(
        "FIGURE SIGKILLed agent restart → running {:.2} s",
        restarted.elapsed().as_secs_f64()
    );
    let log = std::fs::read_to_string(&site.agent("edge-k")?.log)?;
    ensure!(
        log.contains("stopping the containerd a previous agent left running"),
        "{log}"
    );
    let now = containerd_pids(&adir);
    ensure!(
        now.len() == 1 && now != old,
        "exactly one containerd for the directory, the new agent's: {old:?} → {now:?}"
    );
    site.wait_ready("edge-k", "True", 60)?;
    // A second agent on the same directory is refused, and leaves the containerd alone.
    let out = site
        .agent_command("edge-k", None, &[])
        .stderr(Stdio::piped())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("another edgesite agent uses"),
        "{}: {stderr}",
        out.status
    );
    ensure!(containerd_pids(&adir) == now, "the containerd left alone");
    // Past a few pod syncs of the new agent: the same container, never restarted.
    std::thread::sleep(Duration::from_secs(6));
    let after = steady_container(&site)?;
    ensure!(
        after == before,
        "the pod adopted in the same container: {before} → {after}"
    );
    ensure!(
        containerd_pids(&adir) == now,
        "still exactly one containerd"
    );

    // Killed again, `edgesite agent --cleanup` stops the containerd left behind itself.
    site.kill_agent("edge-k")?;
    ensure!(containerd_pids(&adir) == now, "left running again");
    let out = cleanup(&adir)?;
    ensure!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        containerd_pids(&adir).is_empty(),
        "no containerd after the cleanup: {:?}",
        containerd_pids(&adir)
    );
    ensure!(!adir.exists(), "the agent directory is gone");
    site.passed();
    Ok(())
}

#[test]
fn an_agent_waits_for_an_external_containerd_that_does_not_answer_yet() -> Result<()> {
    let mut site = Site::start("es-mw-")?;
    let adir = site.agent_dir("edge-w")?;
    // The socket the test's containerd will listen on; nothing does yet.
    let socket = edgesite_agent::containerd::ContainerdConfig::new(&adir).socket();
    let token = site.token_copy("token-w")?;
    let socket_arg = socket.to_string_lossy().into_owned();
    site.start_agent(
        "edge-w",
        Some(&token),
        &["--containerd-address", &socket_arg],
    )?;
    let waiting = "waiting for the container runtime to answer at --containerd-address";
    eventually(60, "the agent saying what it waits for", || {
        let log = std::fs::read_to_string(&site.agent("edge-w")?.log)?;
        if !site.agent_alive("edge-w")? {
            anyhow::bail!("the agent exited without its runtime:\n{log}");
        }
        Ok((!log.contains(waiting)).then_some(log))
    })?;
    // A few tries later (after 1, 2 and 4 s): still running, and still one line about it.
    std::thread::sleep(Duration::from_secs(8));
    ensure!(
        site.agent_alive("edge-w")?,
        "the agent waits for its runtime"
    );
    let log = std::fs::read_to_string(&site.agent("edge-w")?.log)?;
    let line = log
        .lines()
        .find(|l| l.contains(waiting))
        .context("the waiting line")?;
    ensure!(line.contains(&socket_arg), "names the socket: {line}");
    ensure!(
        log.matches(waiting).count() == 1,
        "one line, not one per try:\n{log}"
    );
    let (status, _, message) = site.ready("edge-w")?;
    ensure!(
        status == "False",
        "NotReady while it waits: {status} {message}"
    );

    site.start_containerd(&adir)?;
    let up = Instant::now();
    site.wait_ready("edge-w", "True", 60)?;
    eprintln!(
        "FIGURE external containerd up late → node Ready=True {:.2} s",
        up.elapsed().as_secs_f64()
    );
    let log = std::fs::read_to_string(&site.agent("edge-w")?.log)?;
    ensure!(
        log.contains("the container runtime answers; the agent goes on"),
        "{log}"
    );
    ensure!(log.contains("agent running"), "{log}");
    site.passed();
    Ok(())
}
