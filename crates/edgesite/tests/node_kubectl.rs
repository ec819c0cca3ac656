//! System tests of a real node driven by the real kubectl and the real Python kubernetes
//! client: `edgesite up` with its managed containerd and the busybox image, then the `[N]`
//! checks of the API compatibility reference (§6: deployments and rollouts, wait, describe,
//! logs, exec, `exec -it` with a resize in a pty from util-linux `script`, cp, port-forward,
//! expose, drain, top, Python exec with and without a TTY and port-forward) and the pod
//! lifecycle as a node shows it (probes, back-offs, a missing image, a memory limit in the
//! cgroup, graceful deletion with preStop). Each test starts one site and checks many things
//! in sequence; timings are printed as FIGURE lines.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

mod support;
use support::site::{Site, cleanup};
use support::{KUBECTL, Running, eventually};

/// The venv `scripts/setup` makes with the Python kubernetes client.
const PYTHON: &str = "/opt/edgesite/pyenv/bin/python";

/// A bare pod serving `hello-through-the-tunnel` on port 80 from container `main` (what the
/// agent crate's Python stream check expects), after ten log lines. `busybox --install` puts
/// the applets on PATH, so `kubectl exec -- cat` and `kubectl cp` (tar) find them.
const POD_P: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: p, labels: {app: p}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: edgesite.io/busybox:1
    command: ["sh", "-c", "/bin/busybox --install -s /bin; mkdir -p /tmp; for i in 1 2 3 4 5 6 7 8 9 10; do echo line-$i; done; mkdir -p /www; echo hello-through-the-tunnel > /www/index.html; exec httpd -f -p 80 -h /www"]
    ports: [{containerPort: 80}]
"#;

/// What web2's pods run: an HTTP server in the background and a tick a second in the
/// foreground (for `logs -f`), ending at once on SIGTERM.
const WEB2_COMMAND: &str = "/bin/busybox --install -s /bin; mkdir -p /www; echo web2-$HOSTNAME > /www/index.html; httpd -p 80 -h /www; trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo tick-$i; sleep 1; done";

#[test]
fn kubectl_and_python_drive_workloads_on_a_real_node() -> Result<()> {
    let mut site = Site::start(
        "edge-k",
        &["--cluster-cidr", "10.77.0.0/16"],
        &["edgesite.io/busybox:2"],
    )?;
    let ready = site.wait_node_ready(60)?;
    eprintln!("FIGURE node_kubectl edgesite up → node Ready: {ready:?}");
    let k = |args: &[&str]| site.kubectl(args);

    // 19: a deployment of two pods and its ReplicaSet; a bare pod next to it.
    let p_yaml = site.file("p.yaml", POD_P)?;
    k(&["apply", "-f", &p_yaml])?;
    let created = Instant::now();
    k(&[
        "create",
        "deployment",
        "web2",
        "--image=edgesite.io/busybox:1",
        "--replicas=2",
        "--",
        "sh",
        "-c",
        WEB2_COMMAND,
    ])?;
    // 20
    let out = k(&["rollout", "status", "deploy/web2", "--timeout=60s"])?;
    ensure!(out.contains("successfully rolled out"), "{out}");
    eprintln!(
        "FIGURE node_kubectl create deployment (2 replicas) → rollout status done: {:?}",
        created.elapsed()
    );
    let rs = k(&["get", "rs", "-l", "app=web2", "--no-headers"])?;
    ensure!(rs.lines().count() == 1, "{rs}");
    let cols: Vec<&str> = rs.split_whitespace().collect();
    ensure!(
        cols.get(1..4) == Some(&["2", "2", "2"][..]),
        "DESIRED CURRENT READY: {rs}"
    );
    ensure!(pod_names(&site, "app=web2")?.len() == 2);
    // 25
    let out = k(&[
        "wait",
        "--for=condition=Ready",
        "pod",
        "-l",
        "app=web2",
        "--timeout=60s",
    ])?;
    ensure!(out.matches("condition met").count() == 2, "{out}");
    k(&["wait", "--for=condition=Ready", "pod/p", "--timeout=60s"])?;

    // 26
    let described = k(&["describe", "pod", "p"])?;
    for reason in ["Scheduled", "Pulled", "Started"] {
        ensure!(
            described.contains(reason),
            "describe lists no {reason} event:\n{described}"
        );
    }

    // 27: the last five lines with their timestamps.
    let mut logs = String::new();
    eventually(20, "p's ten log lines", || {
        logs = k(&["logs", "p", "--tail=5", "--timestamps"])?;
        Ok((!logs.contains("line-10")).then(|| logs.clone()))
    })?;
    let lines: Vec<&str> = logs.lines().collect();
    ensure!(lines.len() == 5, "{logs}");
    for (line, n) in lines.iter().zip(6..) {
        let (ts, text) = line.split_once(' ').context("timestamp and text")?;
        ensure!(text == format!("line-{n}"), "{logs}");
        ensure!(
            ts.len() >= 20 && ts.as_bytes()[10] == b'T' && ts.ends_with('Z'),
            "an RFC 3339 timestamp: {line}"
        );
    }

    // 28: the exit code, and stdin to its end.
    let out = site.kubectl_output(&["exec", "p", "--", "sh", "-c", "exit 3"])?;
    ensure!(out.status.code() == Some(3), "{out:?}");
    let text: String = (0..400).map(|i| format!("line {i} of f\n")).collect();
    let f = site.file("f", &text)?;
    let started = Instant::now();
    let out = kubectl_with_stdin(&site, &["exec", "-i", "p", "--", "cat"], Path::new(&f))?;
    ensure!(out.status.success(), "{out:?}");
    ensure!(
        String::from_utf8_lossy(&out.stdout) == text,
        "exec -i cat echoed {} bytes of {}",
        out.stdout.len(),
        text.len()
    );
    eprintln!(
        "FIGURE node_kubectl exec -i cat of {} bytes: {:?}",
        text.len(),
        started.elapsed()
    );

    // 30
    let started = Instant::now();
    k(&["cp", &f, "p:/tmp/f"])?;
    eprintln!(
        "FIGURE node_kubectl cp of {} bytes: {:?}",
        text.len(),
        started.elapsed()
    );
    let copied = k(&["exec", "p", "--", "cat", "/tmp/f"])?;
    ensure!(copied == text, "cp then cat gave {} bytes", copied.len());

    // 31: twice in sequence, twice at once.
    let started = Instant::now();
    let (mut forward, port) = port_forward(&site, "pod/p", 80)?;
    eprintln!(
        "FIGURE node_kubectl port-forward ready to accept: {:?}",
        started.elapsed()
    );
    for i in 0..2 {
        let (page, first_byte) = http_get(&format!("127.0.0.1:{port}"))?;
        ensure!(page.contains("hello-through-the-tunnel"), "{page}");
        eprintln!("FIGURE node_kubectl port-forward GET {i} first byte: {first_byte:?}");
    }
    let concurrent: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || http_get(&format!("127.0.0.1:{port}"))))
        .collect();
    for t in concurrent {
        let (page, _) = t.join().expect("GET thread")?;
        ensure!(page.contains("hello-through-the-tunnel"), "{page}");
    }
    forward.kill()?;

    // 39: the Python client's exec and port-forward (the agent crate's script: exec stdout,
    // exit code, stdin; port-forward bytes).
    let python = Path::new(PYTHON);
    ensure!(
        python.exists(),
        "{PYTHON} is missing: run scripts/setup to create the venv with the kubernetes client"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../edgesite-agent/tests/python/stream_check.py");
    let started = Instant::now();
    let out = Command::new(python)
        .arg(&script)
        .arg(&site.kubeconfig)
        .args(["p", "80"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("HOME", site.home.path())
        .output()?;
    ensure!(
        out.status.success(),
        "the Python client's streams failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "FIGURE node_kubectl python exec ×3 + port-forward: {:?}",
        started.elapsed()
    );

    // 29 without a terminal: the Python client's TTY exec, resized on channel 4, and what
    // `stty size` reports.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/tty_resize.py");
    let started = Instant::now();
    let out = Command::new(python)
        .arg(&script)
        .arg(&site.kubeconfig)
        .args(["p", "main"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("HOME", site.home.path())
        .output()?;
    ensure!(
        out.status.success(),
        "the Python client's TTY exec failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "FIGURE node_kubectl python tty exec with two resizes: {:?}",
        started.elapsed()
    );

    // 29: `kubectl exec -it` in a pseudo-terminal (util-linux `script`): a shell reading
    // what is typed, the terminal's size at the start and after a resize (the background
    // `stty` changes the pty's size, kubectl gets SIGWINCH and sends it), the exit code.
    let typed = site.file(
        "typed",
        "echo typed-$((6*7)); stty size; sleep 3; stty size\nexit 7\n",
    )?;
    let line = format!(
        "stty rows 30 cols 100; (sleep 2; stty rows 40 cols 120 </dev/tty) & {KUBECTL} --kubeconfig {} exec -it p -- sh",
        site.kubeconfig.display()
    );
    let started = Instant::now();
    let out = Command::new("/usr/bin/script")
        .args(["-qec", &line, "/dev/null"])
        .env("HOME", site.home.path())
        .env_remove("KUBECONFIG")
        .stdin(std::fs::File::open(&typed)?)
        .output()
        .context("util-linux script")?;
    let shown = String::from_utf8_lossy(&out.stdout);
    println!("exec -it: {:?} {shown:?}", out.status);
    ensure!(
        shown.contains("/ # "),
        "an interactive shell's prompt: {shown:?}"
    );
    ensure!(shown.contains("typed-42"), "{shown:?}");
    let sizes = shown.find("30 100").zip(shown.find("40 120"));
    ensure!(
        sizes.is_some_and(|(a, b)| a < b),
        "stty size 30 100, then 40 120: {shown:?}"
    );
    ensure!(out.status.code() == Some(7), "{:?}", out.status);
    eprintln!(
        "FIGURE node_kubectl exec -it session with a resize (3 s sleep inside): {:?}",
        started.elapsed()
    );

    // 32: the Service's endpoints are the pods' IPs, and those answer from the host.
    k(&["expose", "deploy", "web2", "--port=80"])?;
    let ips = pod_ips(&site, "app=web2")?;
    eventually(20, "endpoints web2 = the pods' IPs", || {
        let got = endpoint_ips(&site, "web2")?;
        Ok((got != ips).then(|| format!("{got:?} vs {ips:?}")))
    })?;
    let eps = k(&["get", "endpoints", "web2"])?;
    for ip in &ips {
        ensure!(eps.contains(ip.as_str()), "{eps}");
        let (page, first_byte) = http_get(&format!("{ip}:80"))?;
        ensure!(page.contains("web2-web2-"), "{page}");
        eprintln!("FIGURE node_kubectl host → pod {ip}:80 first byte: {first_byte:?}");
    }

    // 27: `logs -f deploy/web2` streams: lines keep coming while it runs.
    let started = Instant::now();
    let (mut follow, lines) = kubectl_lines(&site, &["logs", "-f", "deploy/web2"])?;
    let (first_at, first) = lines
        .recv_timeout(Duration::from_secs(20))
        .context("no line from logs -f")?;
    ensure!(first.starts_with("tick-"), "{first}");
    eprintln!(
        "FIGURE node_kubectl logs -f first line: {:?}",
        first_at - started
    );
    let mut later = None;
    while let Ok((at, line)) = lines.recv_timeout(Duration::from_secs(5)) {
        if at - first_at > Duration::from_millis(900) {
            later = Some(line);
            break;
        }
    }
    ensure!(
        later.as_deref().is_some_and(|l| l.starts_with("tick-")),
        "logs -f printed nothing a second after its first line: {later:?}"
    );
    ensure!(follow.child.try_wait()?.is_none(), "logs -f still follows");
    follow.kill()?;

    // 22: a new image makes a new ReplicaSet and revision; undo brings back the old template.
    let started = Instant::now();
    k(&[
        "set",
        "image",
        "deploy/web2",
        "busybox=edgesite.io/busybox:2",
    ])?;
    let out = k(&["rollout", "status", "deploy/web2", "--timeout=60s"])?;
    ensure!(out.contains("successfully rolled out"), "{out}");
    eprintln!(
        "FIGURE node_kubectl set image → rolled out: {:?}",
        started.elapsed()
    );
    let rs = k(&["get", "rs", "-l", "app=web2", "--no-headers"])?;
    ensure!(rs.lines().count() == 2, "{rs}");
    let history = k(&["rollout", "history", "deploy/web2"])?;
    for rev in ["1", "2"] {
        ensure!(
            history
                .lines()
                .any(|l| l.split_whitespace().next() == Some(rev)),
            "revision {rev} in:\n{history}"
        );
    }
    let started = Instant::now();
    k(&["rollout", "undo", "deploy/web2"])?;
    let out = k(&["rollout", "status", "deploy/web2", "--timeout=60s"])?;
    ensure!(out.contains("successfully rolled out"), "{out}");
    eprintln!(
        "FIGURE node_kubectl rollout undo → rolled out: {:?}",
        started.elapsed()
    );
    let image = k(&[
        "get",
        "deploy",
        "web2",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ])?;
    ensure!(image == "edgesite.io/busybox:1", "{image}");

    // 23: restart replaces every pod.
    let before = pod_names(&site, "app=web2")?;
    let started = Instant::now();
    k(&["rollout", "restart", "deploy/web2"])?;
    let out = k(&["rollout", "status", "deploy/web2", "--timeout=60s"])?;
    ensure!(out.contains("successfully rolled out"), "{out}");
    eprintln!(
        "FIGURE node_kubectl rollout restart → rolled out: {:?}",
        started.elapsed()
    );
    let after = pod_names(&site, "app=web2")?;
    ensure!(after.len() == 2, "{after:?}");
    ensure!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} → {after:?}"
    );

    // 37: usage, or a clean answer that there is no metrics API.
    let top = site.kubectl_output(&["top", "pods"])?;
    ensure!(
        top.status.success() || top.stderr.contains("Metrics API not available"),
        "{top:?}"
    );

    // 35: cordon, then drain evicts everything on the node.
    k(&["cordon", &site.node])?;
    let nodes = k(&["get", "node", &site.node, "--no-headers"])?;
    ensure!(
        nodes.split_whitespace().nth(1) == Some("Ready,SchedulingDisabled"),
        "{nodes}"
    );
    let started = Instant::now();
    let out = k(&[
        "drain",
        &site.node,
        "--ignore-daemonsets",
        "--force",
        "--timeout=60s",
    ])?;
    ensure!(
        out.contains("evicting pod") || out.contains("evicted"),
        "{out}"
    );
    eprintln!(
        "FIGURE node_kubectl drain (3 pods): {:?}",
        started.elapsed()
    );
    let on_node = format!("spec.nodeName={}", site.node);
    let left = k(&["get", "pods", "--field-selector", &on_node, "-o", "name"])?;
    ensure!(left.trim().is_empty(), "still on the node: {left}");
    let gone = site.kubectl_output(&["get", "pod", "p"])?;
    ensure!(gone.stderr.contains("NotFound"), "{gone:?}");
    // The Deployment made new pods; the cordoned node takes none of them.
    let pending = k(&[
        "get",
        "pods",
        "-l",
        "app=web2",
        "-o",
        "jsonpath={.items[*].status.phase}",
    ])?;
    ensure!(
        pending.split_whitespace().all(|p| p == "Pending"),
        "{pending}"
    );

    stop_and_clean_up(&mut site)
}

/// Pods of the lifecycle test; `HOSTPATH` is replaced by a directory the test reads.
const LIFECYCLE: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: live}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: edgesite.io/busybox:1
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    livenessProbe:
      exec: {command: ["sh", "-c", "test -f /tmp/alive"]}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata: {name: gated, labels: {app: gated}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: edgesite.io/busybox:1
    command: ["sh", "-c", "mkdir -p /tmp; trap 'exit 0' TERM; while true; do sleep 1; done"]
    readinessProbe:
      exec: {command: ["sh", "-c", "test -f /tmp/ready"]}
      periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: gated}
spec:
  selector: {app: gated}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  containers:
  - name: main
    image: edgesite.io/busybox:1
    command: ["/bin/busybox", "false"]
---
apiVersion: v1
kind: Pod
metadata: {name: noimage}
spec:
  containers:
  - name: main
    image: edgesite.io/missing:1
---
apiVersion: v1
kind: Pod
metadata: {name: mem}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: edgesite.io/busybox:1
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    resources:
      limits: {memory: 64Mi}
---
apiVersion: v1
kind: Pod
metadata: {name: term}
spec:
  terminationGracePeriodSeconds: 10
  containers:
  - name: main
    image: edgesite.io/busybox:1
    command: ["sh", "-c", "trap 'echo term >> /out/log; exit 0' TERM; echo started >> /out/log; while true; do sleep 1; done"]
    lifecycle:
      preStop:
        exec: {command: ["sh", "-c", "echo prestop >> /out/log"]}
    volumeMounts:
    - {name: out, mountPath: /out}
  volumes:
  - name: out
    hostPath: {path: HOSTPATH, type: Directory}
"#;

#[test]
fn a_real_node_runs_the_pod_lifecycle() -> Result<()> {
    let mut site = Site::start("edge-l", &["--cluster-cidr", "10.78.0.0/16"], &[])?;
    let ready = site.wait_node_ready(60)?;
    eprintln!("FIGURE node_lifecycle edgesite up → node Ready: {ready:?}");
    let k = |args: &[&str]| site.kubectl(args);
    let host_dir = site.dir.path().join("hostpath");
    std::fs::create_dir_all(&host_dir)?;
    let manifest = site.file(
        "lifecycle.yaml",
        &LIFECYCLE.replace("HOSTPATH", host_dir.to_str().context("utf-8")?),
    )?;
    let created = Instant::now();
    k(&["apply", "-f", &manifest])?;

    // A failing liveness probe restarts the container.
    let mut live = serde_json::Value::Null;
    eventually(30, "live restarted by its liveness probe", || {
        live = site.get_json(&["pod", "live"])?["status"]["containerStatuses"][0].clone();
        let restarted = live["restartCount"].as_u64().unwrap_or(0) >= 1
            && live["lastState"]["terminated"].is_object();
        Ok((!restarted).then(|| live.to_string()))
    })?;
    eprintln!(
        "FIGURE node_lifecycle failing liveness → first restart seen: {:?}",
        created.elapsed()
    );
    ensure!(
        live["lastState"]["terminated"]["finishedAt"].is_string(),
        "{live}"
    );
    let events = k(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=live",
    ])?;
    ensure!(events.contains("Unhealthy"), "{events}");

    // A readiness probe gates Ready and the Service's endpoints.
    let ip = eventually_value(20, "gated's pod IP", || {
        let ip = k(&["get", "pod", "gated", "-o", "jsonpath={.status.podIP}"])?;
        Ok((!ip.is_empty()).then_some(ip))
    })?;
    // Two probe periods with the file missing: still not ready, not an endpoint address.
    std::thread::sleep(Duration::from_secs(2));
    let cond = k(&[
        "get",
        "pod",
        "gated",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ])?;
    ensure!(cond == "False", "Ready before the probe passes: {cond}");
    ensure!(
        !endpoint_ips(&site, "gated")?.contains(&ip),
        "not-ready {ip} is an endpoint address"
    );
    let not_ready = k(&[
        "get",
        "endpoints",
        "gated",
        "-o",
        "jsonpath={.subsets[*].notReadyAddresses[*].ip}",
    ])?;
    eprintln!("gated's notReadyAddresses: {not_ready:?}");
    k(&["exec", "gated", "--", "sh", "-c", ": > /tmp/ready"])?;
    let made_ready = Instant::now();
    eventually(20, "gated Ready and an endpoint", || {
        let eps = endpoint_ips(&site, "gated")?;
        Ok((eps != [ip.clone()]).then(|| format!("{eps:?}")))
    })?;
    eprintln!(
        "FIGURE node_lifecycle readiness file → endpoint address: {:?}",
        made_ready.elapsed()
    );
    let cond = k(&[
        "get",
        "pod",
        "gated",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ])?;
    ensure!(cond == "True", "{cond}");

    // `false` as the command: CrashLoopBackOff.
    let mut crash = serde_json::Value::Null;
    eventually(30, "crash in CrashLoopBackOff", || {
        crash = site.get_json(&["pod", "crash"])?["status"]["containerStatuses"][0].clone();
        Ok((crash["state"]["waiting"]["reason"] != "CrashLoopBackOff").then(|| crash.to_string()))
    })?;
    ensure!(crash["restartCount"].as_u64() >= Some(1), "{crash}");
    ensure!(crash["lastState"]["terminated"]["exitCode"] == 1, "{crash}");

    // A missing image: ErrImagePull, then ImagePullBackOff, with a message naming it.
    let mut pull = serde_json::Value::Null;
    eventually(30, "noimage waiting on its image", || {
        pull = site.get_json(&["pod", "noimage"])?["status"]["containerStatuses"][0].clone();
        let reason = pull["state"]["waiting"]["reason"].as_str().unwrap_or("");
        Ok((!matches!(reason, "ErrImagePull" | "ImagePullBackOff")).then(|| pull.to_string()))
    })?;
    ensure!(
        pull["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("edgesite.io/missing:1")),
        "{pull}"
    );
    let phase = k(&["get", "pod", "noimage", "-o", "jsonpath={.status.phase}"])?;
    ensure!(phase == "Pending", "{phase}");

    // The memory limit is the container's cgroup's.
    k(&["wait", "--for=condition=Ready", "pod/mem", "--timeout=60s"])?;
    let limit = memory_limit(&site, "mem")?;
    ensure!(limit == 64 * 1024 * 1024, "memory limit {limit}");

    // Graceful delete: preStop runs, then the container gets SIGTERM; the sandbox goes.
    k(&["wait", "--for=condition=Ready", "pod/term", "--timeout=60s"])?;
    let uid = k(&["get", "pod", "term", "-o", "jsonpath={.metadata.uid}"])?;
    let log = host_dir.join("log");
    eventually(10, "term started", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        Ok((text != "started\n").then_some(text))
    })?;
    ensure!(
        !containers_of(&site, &uid)?.is_empty(),
        "ctr lists term's containers"
    );
    let deleting = Instant::now();
    k(&["delete", "pod", "term", "--timeout=60s"])?;
    eprintln!(
        "FIGURE node_lifecycle graceful delete (preStop + SIGTERM trapped): {:?}",
        deleting.elapsed()
    );
    let text = std::fs::read_to_string(&log)?;
    ensure!(text == "started\nprestop\nterm\n", "{text:?}");
    eventually(20, "term's sandbox and container gone", || {
        let left = containers_of(&site, &uid)?;
        Ok((!left.is_empty()).then(|| left.join(" ")))
    })?;

    stop_and_clean_up(&mut site)
}

/// Stops the site; its agent's cleanup then leaves no process, mount or directory behind.
fn stop_and_clean_up(site: &mut Site) -> Result<()> {
    site.stop()?;
    let out = cleanup(&site.agent_dir)?;
    ensure!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(!site.agent_dir.exists(), "the agent's directory is gone");
    let left = edgesite_testkit::containerd::leftovers_under(site.dir.path());
    ensure!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}

/// Polls `get` until it yields a value.
fn eventually_value<T>(
    secs: u64,
    what: &str,
    mut get: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let mut value = None;
    eventually(secs, what, || {
        value = get()?;
        Ok(value.is_none().then(|| "nothing yet".to_owned()))
    })?;
    value.context("set when eventually returns")
}

/// `field` (a JSON pointer) of each pod `kubectl get pods ARGS` lists that is not being
/// deleted, sorted.
fn live_pod_field(site: &Site, args: &[&str], field: &str) -> Result<Vec<String>> {
    let mut all = vec!["pods"];
    all.extend(args);
    let list = site.get_json(&all)?;
    let mut out: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p.pointer(field).and_then(|v| v.as_str()).map(str::to_owned))
        .collect();
    out.sort();
    Ok(out)
}

/// Names of the pods matching `selector` that are not being deleted.
fn pod_names(site: &Site, selector: &str) -> Result<Vec<String>> {
    live_pod_field(site, &["-l", selector], "/metadata/name")
}

/// IPs of the running pods matching `selector`, sorted.
fn pod_ips(site: &Site, selector: &str) -> Result<Vec<String>> {
    live_pod_field(
        site,
        &["-l", selector, "--field-selector=status.phase=Running"],
        "/status/podIP",
    )
}

/// The ready addresses of Endpoints `name`, sorted.
fn endpoint_ips(site: &Site, name: &str) -> Result<Vec<String>> {
    let out = site.kubectl(&[
        "get",
        "endpoints",
        name,
        "-o",
        "jsonpath={.subsets[*].addresses[*].ip}",
    ])?;
    let mut ips: Vec<String> = out.split_whitespace().map(str::to_owned).collect();
    ips.sort();
    Ok(ips)
}

/// A kubectl child process with the site's HOME and kubeconfig.
fn kubectl_command(site: &Site, args: &[&str]) -> Command {
    let mut cmd = Command::new(KUBECTL);
    cmd.env("HOME", site.home.path())
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig")
        .arg(&site.kubeconfig)
        .args(args);
    cmd
}

/// Runs kubectl with `stdin` as its standard input.
fn kubectl_with_stdin(site: &Site, args: &[&str], stdin: &Path) -> Result<std::process::Output> {
    let out = kubectl_command(site, args)
        .stdin(std::fs::File::open(stdin)?)
        .output()?;
    println!(
        "$ kubectl {} < {}   ({})\n{}",
        args.join(" "),
        stdin.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// Starts a long-running kubectl; its stdout lines arrive on the channel with the time each
/// was read.
fn kubectl_lines(
    site: &Site,
    args: &[&str],
) -> Result<(Running, mpsc::Receiver<(Instant, String)>)> {
    let mut child = kubectl_command(site, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            println!("kubectl: {line}");
            // Keep reading when nobody listens: a closed pipe would kill kubectl.
            let _ = tx.send((Instant::now(), line));
        }
    });
    Ok((Running { child }, rx))
}

/// `kubectl port-forward TARGET :REMOTE`; returns the process and the local port it chose.
fn port_forward(site: &Site, target: &str, remote: u16) -> Result<(Running, u16)> {
    let ports = format!(":{remote}");
    let (running, lines) = kubectl_lines(site, &["port-forward", target, &ports])?;
    loop {
        let (_, line) = lines
            .recv_timeout(Duration::from_secs(20))
            .context("port-forward printed no Forwarding line")?;
        // "Forwarding from 127.0.0.1:PORT -> 80"
        if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:")
            && let Some((port, _)) = rest.split_once(' ')
        {
            return Ok((running, port.parse()?));
        }
    }
}

/// `GET /` over HTTP/1.0 to `addr`; the whole answer and the time to its first byte.
fn http_get(addr: &str) -> Result<(String, Duration)> {
    let started = Instant::now();
    let mut conn = TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(10))
        .with_context(|| format!("connect {addr}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
    let mut first = [0u8; 1];
    conn.read_exact(&mut first)
        .with_context(|| format!("no answer from {addr}"))?;
    let first_byte = started.elapsed();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)?;
    let mut page = vec![first[0]];
    page.extend(rest);
    let page = String::from_utf8_lossy(&page).into_owned();
    ensure!(page.starts_with("HTTP/1."), "{page}");
    Ok((page, first_byte))
}

/// The memory limit of `pod`'s container as its cgroup on the host holds it (v1
/// `memory.limit_in_bytes` or v2 `memory.max`), found through `/proc/self/cgroup` inside it.
fn memory_limit(site: &Site, pod: &str) -> Result<u64> {
    let cgroups = site.kubectl(&["exec", pod, "--", "sh", "-c", "cat /proc/self/cgroup"])?;
    let (file, rel) = if let Some(rel) = cgroups
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_owned()))
    {
        (
            format!("/sys/fs/cgroup/memory{rel}/memory.limit_in_bytes"),
            rel,
        )
    } else if let Some(rel) = cgroups.lines().find_map(|l| l.strip_prefix("0::")) {
        (format!("/sys/fs/cgroup{rel}/memory.max"), rel.to_owned())
    } else {
        bail!("no memory cgroup in {cgroups}");
    };
    let text = if rel != "/" && Path::new(&file).exists() {
        std::fs::read_to_string(&file)?
    } else {
        // A cgroup namespace hides the host path; the container sees its own cgroup at the root.
        let inside = file.replacen(&rel, "", 1).replace("//", "/");
        site.kubectl(&["exec", pod, "--", "sh", "-c", &format!("cat {inside}")])?
    };
    println!("memory limit from {file}: {text}");
    text.trim()
        .parse()
        .with_context(|| format!("{file}: {text}"))
}

/// IDs of the containers (sandboxes among them) containerd holds for pod `uid`.
fn containers_of(site: &Site, uid: &str) -> Result<Vec<String>> {
    let out = Command::new("/usr/bin/ctr")
        .arg("--address")
        .arg(site.containerd_socket())
        .args(["--namespace", "k8s.io", "containers", "ls", "-q"])
        .arg(format!("labels.\"io.kubernetes.pod.uid\"=={uid}"))
        .output()?;
    ensure!(
        out.status.success(),
        "ctr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}
