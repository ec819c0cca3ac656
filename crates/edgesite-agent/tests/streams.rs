//! System test of the pod streams through the node tunnel: a real API server in-process, a
//! real containerd (needs root, containerd, runc, busybox-static) and the real `kubectl`; a
//! missing prerequisite fails the test. The agent side is `streams::tunnel::run` with a node
//! client certificate; the pod is run straight through CRI with the labels the pod worker
//! sets, and exists in the API with `spec.nodeName` = the test node.
//!
//! Checked: `kubectl logs` (all, `--tail`, `--timestamps`, `--limit-bytes`, `-f` receiving
//! new lines), `kubectl exec` exit codes and `-i` stdin, `kubectl port-forward` to busybox
//! `httpd`, `kubectl cp` out of the container; a pod on a node without a tunnel and an
//! unscheduled pod give a Status error. Prints the exec round trip and the logs throughput
//! next to direct CRI calls (run with `--no-capture` to see them).
#![allow(clippy::disallowed_methods)] // a system test: it times real processes

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use edgesite_agent::cri::{Runtime as _, v1 as cri};
use edgesite_agent::pod::config::{
    LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID,
};
use edgesite_agent::streams::StreamContext;
use edgesite_agent::streams::tunnel::{self, TunnelConfig};
use edgesite_apiserver::pki::ClusterPki;
use edgesite_apiserver::{PkiOptions, Server, ServerConfig};
use edgesite_testkit::TestContainerd;
use edgesite_testkit::containerd::host_busybox;
use edgesite_testkit::containerd::{container, host_network_sandbox, start_container};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const BUSYBOX: &str = "edgesite.io/busybox:1";
const NODE: &str = "streams-node";
const POD: &str = "web";
/// The venv `scripts/setup` creates, with the `kubernetes` client.
const PYTHON: &str = "/opt/edgesite/pyenv/bin/python";

fn pki_options() -> PkiOptions {
    PkiOptions {
        hostname: Some("edge-test".to_owned()),
        extra_sans: Vec::new(),
        include_interface_ips: false,
    }
}

async fn server(dir: &Path) -> Result<(Server, Client)> {
    let mut config = ServerConfig::new(dir);
    config.bind_address = "127.0.0.1".parse()?;
    config.secure_port = 0;
    config.pki = pki_options();
    let server = Server::start(config).await?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = Kubeconfig::read_from(server.kubeconfig_path())?;
    let client =
        Client::try_from(Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?)?;
    Ok((server, client))
}

/// A TLS client configuration with `node`'s client certificate, trusting the cluster CA.
fn node_tls(dir: &Path, node: &str) -> Result<Arc<rustls::ClientConfig>> {
    let pki = ClusterPki::load_or_create(dir, &pki_options())?;
    let issued = pki.issue_node_cert(node, Duration::from_secs(3600))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_cert_der().clone())?;
    let certs = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)?,
    ))
}

struct Kubectl {
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    /// Runs kubectl to completion (60 s at most): exit code, stdout, stderr.
    async fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<(i32, String, String)> {
        let mut cmd = self.command(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd
            .spawn()
            .context("kubectl is not installed (run scripts/setup)")?;
        if let Some(input) = stdin {
            let mut w = child.stdin.take().context("stdin")?;
            w.write_all(input).await?;
            drop(w);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .with_context(|| format!("kubectl {args:?} did not finish in 60 s"))??;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    async fn ok(&self, args: &[&str]) -> Result<String> {
        let (code, out, err) = self.run(args, None).await?;
        ensure!(code == 0, "kubectl {args:?} exited {code}: {err}");
        Ok(out)
    }
}

fn labelled_sandbox(name: &str, uid: &str, logs: &Path) -> cri::PodSandboxConfig {
    let mut s = host_network_sandbox(name, uid, logs);
    s.labels = [
        (LABEL_POD_NAME.to_owned(), name.to_owned()),
        (LABEL_POD_NAMESPACE.to_owned(), "default".to_owned()),
        (LABEL_POD_UID.to_owned(), uid.to_owned()),
    ]
    .into_iter()
    .collect();
    s
}

/// Reads `out` into `seen` until it holds `want` (20 s at most per read).
async fn read_until(
    seen: &mut Vec<u8>,
    out: &mut tokio::process::ChildStdout,
    want: &str,
) -> Result<()> {
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(seen).contains(want) {
        let n = tokio::time::timeout(Duration::from_secs(20), out.read(&mut buf)).await??;
        ensure!(
            n > 0,
            "the stream ended early: {:?}",
            String::from_utf8_lossy(seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_exec_port_forward_and_cp_go_through_the_node_tunnel() -> Result<()> {
    let ctd = TestContainerd::start().await;
    let runtime = ctd.runtime().clone();
    ctd.import_pause_image().await;
    // busybox with the applets kubectl's callers expect on PATH (`tar` for `kubectl cp`).
    let mut image = edgesite_agent::oci::ImageBuilder::new(BUSYBOX)
        .host_file("bin/busybox", host_busybox(), 0o755)?
        .entrypoint(["/bin/busybox"])
        .cmd(["sh"]);
    for applet in [
        "sh", "echo", "true", "tar", "tr", "cat", "yes", "head", "mkdir", "sleep",
    ] {
        image = image.symlink(&format!("bin/{applet}"), "busybox");
    }
    let tarball = ctd.dir().join("busybox-applets.oci.tar");
    image.write(&tarball)?;
    ctd.import(&tarball, BUSYBOX).await;

    let dir = tempfile::tempdir()?;
    let (server, client) = server(dir.path()).await?;
    let kubectl = Kubectl {
        kubeconfig: server.kubeconfig_path().to_owned(),
    };

    // The pod in the API, bound to the node and Running (kubectl port-forward insists).
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": POD,
            "annotations": {"kubectl.kubernetes.io/default-container": "main"}},
        "spec": {"nodeName": NODE, "containers": [
            {"name": "main", "image": BUSYBOX},
            {"name": "echoer", "image": BUSYBOX, "stdin": true}]}
    }))?;
    let created = pods.create(&PostParams::default(), &pod).await?;
    let uid = created.metadata.uid.clone().context("uid")?;
    pods.patch_status(
        POD,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await?;

    // The same pod on the node, run through CRI with the pod worker's labels.
    let port = 20000 + (std::process::id() % 20000) as u16;
    let logs_dir = ctd.dir().join("pods").join(&uid);
    let sandbox = labelled_sandbox(POD, &uid, &logs_dir);
    let sandbox_id = runtime.run_pod_sandbox(sandbox.clone(), "").await?;
    let script = format!(
        "for i in 1 2 3 4 5; do echo line$i; done; mkdir -p /www /data; \
         echo hello-through-the-tunnel > /www/index.html; echo payload-42 > /data/file.txt; \
         httpd -p 127.0.0.1:{port} -h /www; echo $$ > /main.pid; exec sleep 3600"
    );
    let mut config = container(
        "main",
        BUSYBOX,
        &["/bin/busybox"],
        &["sh", "-c", &script],
        "main/0.log",
    );
    config.labels = [
        (LABEL_POD_NAME.to_owned(), POD.to_owned()),
        (LABEL_POD_NAMESPACE.to_owned(), "default".to_owned()),
        (LABEL_POD_UID.to_owned(), uid.clone()),
        (LABEL_CONTAINER_NAME.to_owned(), "main".to_owned()),
    ]
    .into_iter()
    .collect();
    let container_id = start_container(&runtime, &sandbox_id, sandbox.clone(), config).await?;
    // A second container reading its stdin, for attach.
    let mut config = container(
        "echoer",
        BUSYBOX,
        &["/bin/busybox"],
        &["sh", "-c", "while read l; do echo got:$l; done"],
        "echoer/0.log",
    );
    config.stdin = true;
    config.labels = [
        (LABEL_POD_NAME.to_owned(), POD.to_owned()),
        (LABEL_POD_NAMESPACE.to_owned(), "default".to_owned()),
        (LABEL_POD_UID.to_owned(), uid.clone()),
        (LABEL_CONTAINER_NAME.to_owned(), "echoer".to_owned()),
    ]
    .into_iter()
    .collect();
    start_container(&runtime, &sandbox_id, sandbox, config).await?;

    // A pod on a node with no tunnel, and one not scheduled yet.
    for (name, node) in [("ghost", Some("ghost-node")), ("pending", None)] {
        let mut spec = json!({"containers": [{"name": "main", "image": BUSYBOX}]});
        if let Some(n) = node {
            spec["nodeName"] = json!(n);
        }
        let p: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec
        }))?;
        pods.create(&PostParams::default(), &p).await?;
    }

    // Before the tunnel: the node is not connected.
    let (code, _, err) = kubectl.run(&["logs", POD], None).await?;
    ensure!(
        code != 0 && err.contains("not connected"),
        "logs without a tunnel: {err}"
    );

    let tls = node_tls(dir.path(), NODE)?;
    let ctx = Arc::new(StreamContext {
        runtime: Arc::new(runtime.clone()),
        clock: Arc::new(edgesite_clock::SystemClock),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(tunnel::run(
        TunnelConfig {
            server_url: server.url().to_owned(),
            tls: Arc::new(move || tls.clone()),
        },
        ctx,
        async move {
            let _ = stop_rx.await;
        },
    ));

    // Logs: the tunnel comes up within the first back-off.
    let deadline = Instant::now() + Duration::from_secs(20);
    let all = loop {
        let (code, out, err) = kubectl.run(&["logs", POD], None).await?;
        if code == 0 && out.contains("line5") {
            break out;
        }
        ensure!(
            Instant::now() < deadline,
            "logs never worked: {code} {out:?} {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(all, "line1\nline2\nline3\nline4\nline5\n");
    assert_eq!(
        kubectl.ok(&["logs", POD, "--tail=2"]).await?,
        "line4\nline5\n"
    );
    assert_eq!(
        kubectl.ok(&["logs", POD, "--limit-bytes=8"]).await?,
        "line1\nli"
    );
    let stamped = kubectl
        .ok(&["logs", POD, "--timestamps", "--tail=1"])
        .await?;
    let (ts, rest) = stamped.split_once(' ').context("a timestamp")?;
    assert_eq!(rest, "line5\n");
    assert!(
        ts.len() == "2026-12-07T16:00:00.123456789Z".len() && ts.ends_with('Z'),
        "{ts}"
    );
    assert_eq!(
        kubectl.ok(&["logs", POD, "--since=1h", "--tail=1"]).await?,
        "line5\n"
    );
    let (code, _, err) = kubectl.run(&["logs", POD, "--previous"], None).await?;
    ensure!(
        code != 0 && err.contains("previous terminated container"),
        "{err}"
    );

    // logs -f receives lines written after it started.
    let mut follow = kubectl.command(&["logs", "-f", POD, "--tail=1"]);
    follow.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut follow = follow.spawn()?;
    let mut follow_out = follow.stdout.take().context("stdout")?;
    let mut seen = Vec::new();
    read_until(&mut seen, &mut follow_out, "line5\n")
        .await
        .context("logs -f")?;
    kubectl
        .ok(&[
            "exec",
            POD,
            "--",
            "sh",
            "-c",
            "echo followed-line > /proc/$(cat /main.pid)/fd/1",
        ])
        .await?;
    read_until(&mut seen, &mut follow_out, "followed-line\n")
        .await
        .context("logs -f, new line")?;
    assert_eq!(String::from_utf8_lossy(&seen), "line5\nfollowed-line\n");
    follow.kill().await?;

    // Exec: output, exit codes, stdin.
    assert_eq!(
        kubectl.ok(&["exec", POD, "--", "echo", "hi there"]).await?,
        "hi there\n"
    );
    let (code, _, _) = kubectl
        .run(&["exec", POD, "--", "sh", "-c", "exit 3"], None)
        .await?;
    assert_eq!(code, 3, "the exit code of the command");
    let (code, out, err) = kubectl
        .run(
            &["exec", "-i", POD, "--", "sh", "-c", "tr a-z A-Z"],
            Some(b"from stdin\n"),
        )
        .await?;
    assert_eq!((code, out.as_str()), (0, "FROM STDIN\n"), "{err}");
    let (code, out, _) = kubectl
        .run(&["exec", POD, "--", "sh", "-c", "echo to-stderr >&2"], None)
        .await?;
    assert_eq!(code, 0);
    assert_eq!(out, "", "stderr stays apart from stdout");

    // cp out of the container (tar over exec).
    let local = dir.path().join("copied.txt");
    let local_arg = local.to_string_lossy().into_owned();
    kubectl
        .ok(&["cp", &format!("default/{POD}:/data/file.txt"), &local_arg])
        .await?;
    assert_eq!(std::fs::read_to_string(&local)?, "payload-42\n");

    // attach: stdin reaches the container's process, its output comes back.
    let mut attach = kubectl.command(&["attach", "-i", POD, "-c", "echoer"]);
    attach
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut attach = attach.spawn()?;
    let mut attach_in = attach.stdin.take().context("stdin")?;
    let mut attach_out = attach.stdout.take().context("stdout")?;
    let mut attached = Vec::new();
    // The session needs a moment to be set up before input is read; resend until echoed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        attach_in.write_all(b"ping\n").await?;
        attach_in.flush().await?;
        let n =
            tokio::time::timeout(Duration::from_secs(1), attach_out.read_buf(&mut attached)).await;
        if String::from_utf8_lossy(&attached).contains("got:ping") {
            break;
        }
        ensure!(
            Instant::now() < deadline && !matches!(n, Ok(Ok(0))),
            "attach: {:?}",
            String::from_utf8_lossy(&attached)
        );
    }
    attach.kill().await?;
    assert_eq!(
        kubectl
            .ok(&["logs", POD, "-c", "echoer", "--tail=1"])
            .await?,
        "got:ping\n"
    );

    // port-forward to httpd, twice on one forward (sequential connections).
    let local_port = port + 1;
    let mut pf = kubectl.command(&[
        "port-forward",
        &format!("pod/{POD}"),
        &format!("{local_port}:{port}"),
    ]);
    pf.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut pf = pf.spawn()?;
    let mut pf_out = pf.stdout.take().context("stdout")?;
    let mut banner = Vec::new();
    if let Err(e) = read_until(&mut banner, &mut pf_out, "Forwarding from").await {
        pf.kill().await?;
        let out = pf.wait_with_output().await?;
        anyhow::bail!(
            "port-forward: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for _ in 0..2 {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", local_port)).await?;
        conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").await?;
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(20), conn.read_to_string(&mut answer)).await??;
        assert!(
            answer.starts_with("HTTP/1.") && answer.contains("hello-through-the-tunnel"),
            "{answer}"
        );
    }
    pf.kill().await?;

    // The Python client: WebSocket v4 exec (output, exit code, stdin) and port-forward.
    let python = Path::new(PYTHON);
    ensure!(
        python.exists(),
        "{PYTHON} is missing: run scripts/setup to create the venv with the kubernetes client"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/stream_check.py");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python)
            .arg(&script)
            .arg(server.kubeconfig_path())
            .arg(POD)
            .arg(port.to_string())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    ensure!(
        out.status.success(),
        "the Python client's streams failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Errors: a node without a tunnel, a pod without a node, a container not in the pod.
    let (code, _, err) = kubectl.run(&["logs", "ghost"], None).await?;
    ensure!(
        code != 0 && err.contains("node \"ghost-node\" is not connected"),
        "{err}"
    );
    let (code, _, err) = kubectl.run(&["exec", "ghost", "--", "true"], None).await?;
    ensure!(code != 0 && err.contains("not connected"), "{err}");
    let (code, _, err) = kubectl.run(&["logs", "pending"], None).await?;
    ensure!(
        code != 0 && err.contains("does not have a host assigned"),
        "{err}"
    );
    let (code, _, err) = kubectl.run(&["logs", POD, "-c", "nope"], None).await?;
    ensure!(code != 0 && err.contains("is not valid for pod"), "{err}");

    // Figures: exec round trip through the tunnel next to a direct CRI ExecSync.
    let mut through = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        kubectl.ok(&["exec", POD, "--", "true"]).await?;
        through.push(started.elapsed());
    }
    let mut direct = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let r = runtime
            .exec_sync(
                &container_id,
                vec!["true".into()],
                std::time::Duration::from_secs(10),
            )
            .await?;
        assert_eq!(r.exit_code, 0);
        direct.push(started.elapsed());
    }
    // What kubectl itself costs: start, load the kubeconfig, one TLS request.
    let mut bare = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        kubectl.ok(&["get", "--raw", "/healthz"]).await?;
        bare.push(started.elapsed());
    }
    eprintln!(
        "FIGURE exec round trip p50: kubectl exec -- true through the tunnel {:.1} ms; CRI ExecSync direct {:.1} ms; kubectl get --raw /healthz {:.1} ms",
        p50(through).as_secs_f64() * 1e3,
        p50(direct).as_secs_f64() * 1e3,
        p50(bare).as_secs_f64() * 1e3
    );
    // Logs throughput: ~20 MB of log lines, read through the tunnel and from the file.
    kubectl
        .ok(&["exec", POD, "--", "sh", "-c",
            "yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456 | head -n 200000 > /proc/$(cat /main.pid)/fd/1"])
        .await?;
    let log_file = logs_dir.join("main").join("0.log");
    let started = Instant::now();
    let out = kubectl
        .command(&["logs", POD])
        .stdout(Stdio::piped())
        .output()
        .await?;
    let tunnel_elapsed = started.elapsed();
    ensure!(out.status.success());
    let bytes = out.stdout.len();
    ensure!(bytes >= 19_600_000, "{bytes} bytes of logs");
    let started = Instant::now();
    let raw = tokio::fs::read(&log_file).await?;
    let direct_elapsed = started.elapsed();
    eprintln!(
        "FIGURE logs throughput: kubectl logs through the tunnel {:.1} MB/s ({bytes} bytes in {:.0} ms); reading the CRI log file directly {:.1} MB/s",
        bytes as f64 / 1e6 / tunnel_elapsed.as_secs_f64(),
        tunnel_elapsed.as_secs_f64() * 1e3,
        raw.len() as f64 / 1e6 / direct_elapsed.as_secs_f64()
    );

    // The server restarts (same data directory and port): the agent dials again and the
    // streams work as before.
    let port_used = server.local_addr().port();
    server.shutdown().await;
    let mut config = ServerConfig::new(dir.path());
    config.bind_address = "127.0.0.1".parse()?;
    config.secure_port = port_used;
    config.pki = pki_options();
    let server = Server::start(config).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, err) = kubectl.run(&["logs", POD, "--tail=1"], None).await?;
        if code == 0 {
            assert!(out.ends_with('\n'), "{out:?}");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no tunnel after the server restarted: {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let _ = stop_tx.send(());
    agent.await?;
    runtime.stop_pod_sandbox(&sandbox_id).await?;
    runtime.remove_pod_sandbox(&sandbox_id).await?;
    server.shutdown().await;
    let leftovers = ctd.stop().await;
    ensure!(leftovers.is_empty(), "left behind: {leftovers:?}");
    Ok(())
}
