//! Container probes and lifecycle hooks: exec (CRI ExecSync), httpGet (plain HTTP to the pod's
//! or the named host, 200–399 is success) and tcpSocket; one task per running container and
//! probe kind keeps the verdict in [`ProbeResults`] with the probe's timings and thresholds,
//! and wakes the pod worker when it changes. Startup gates liveness and readiness.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use super::{EventType, Reporter};
use crate::cri::Runtime;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// Restarts the container when it fails.
    Liveness,
    /// Gates `ready`.
    Readiness,
    /// Gates the other two; restarts the container when it fails.
    Startup,
}

impl ProbeKind {
    /// As upstream's messages name it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Startup => "Startup",
        }
    }

    /// The container's probe of this kind.
    pub fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            ProbeKind::Liveness => c.liveness_probe.as_ref(),
            ProbeKind::Readiness => c.readiness_probe.as_ref(),
            ProbeKind::Startup => c.startup_probe.as_ref(),
        }
    }

    /// Every kind.
    pub const ALL: [ProbeKind; 3] = [
        ProbeKind::Startup,
        ProbeKind::Liveness,
        ProbeKind::Readiness,
    ];
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It passed.
    Success,
    /// It failed, with the output or error that says why.
    Failure(String),
}

/// The verdicts of the probes of one pod's containers, by container id.
#[derive(Debug, Default)]
pub struct ProbeResults {
    verdicts: Mutex<HashMap<(String, ProbeKind), bool>>,
    changed: Notify,
}

impl ProbeResults {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, ProbeKind), bool>> {
        self.verdicts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The verdict of probe `kind` of container `id`, `None` before it has one.
    pub fn get(&self, id: &str, kind: ProbeKind) -> Option<bool> {
        self.lock().get(&(id.to_string(), kind)).copied()
    }

    fn set(&self, id: &str, kind: ProbeKind, ok: bool) {
        let old = self.lock().insert((id.to_string(), kind), ok);
        if old != Some(ok) {
            self.changed.notify_one();
        }
    }

    /// Forgets container `id`.
    pub fn forget(&self, id: &str) {
        self.lock().retain(|(c, _), _| c != id);
    }

    /// Resolves when a verdict changed.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Whether the container has started: no startup probe, or it passed.
    pub fn started(&self, id: &str, c: &Container) -> bool {
        c.startup_probe.is_none() || self.get(id, ProbeKind::Startup) == Some(true)
    }

    /// Whether the running container is ready: started, and its readiness probe (if any)
    /// passed last.
    pub fn ready(&self, id: &str, c: &Container) -> bool {
        self.started(id, c)
            && (c.readiness_probe.is_none() || self.get(id, ProbeKind::Readiness) == Some(true))
    }

    /// Why the container must be restarted: its liveness or startup probe failed.
    pub fn unhealthy(&self, id: &str, name: &str) -> Option<String> {
        [ProbeKind::Liveness, ProbeKind::Startup]
            .into_iter()
            .find(|k| self.get(id, *k) == Some(false))
            .map(|k| {
                format!(
                    "Container {name} failed {} probe, will be restarted",
                    k.as_str().to_lowercase()
                )
            })
    }
}

/// Where probes and hooks of one container go.
#[derive(Debug, Clone)]
pub struct Target {
    /// The runtime, for exec.
    pub runtime: Arc<dyn Runtime>,
    /// The container's runtime id.
    pub container_id: String,
    /// The container spec (named ports).
    pub container: Container,
    /// The pod's IP (the node's for host-network pods): httpGet and tcpSocket's default host.
    pub host: IpAddr,
}

fn port_of(port: &IntOrString, c: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("couldn't find port {name} in container {}", c.name)),
    }
}

/// Runs an exec command in the container: exit 0 is success.
pub async fn exec(target: &Target, command: &[String], timeout: Duration) -> Outcome {
    let run = target
        .runtime
        .exec_sync(&target.container_id, command.to_vec(), timeout);
    match tokio::time::timeout(timeout + Duration::from_secs(1), run).await {
        Err(_) => Outcome::Failure(format!(
            "command {command:?} timed out after {}s",
            timeout.as_secs()
        )),
        Ok(Err(e)) => Outcome::Failure(e.to_string()),
        Ok(Ok(r)) if r.exit_code == 0 => Outcome::Success,
        Ok(Ok(r)) => {
            let mut out = String::from_utf8_lossy(&r.stdout).into_owned();
            out.push_str(&String::from_utf8_lossy(&r.stderr));
            if out.trim().is_empty() {
                out = format!("command {command:?} exited with {}", r.exit_code);
            }
            Outcome::Failure(out.trim_end().to_string())
        }
    }
}

/// One plain-HTTP GET: a status of 200–399 is success.
pub async fn http_get(target: &Target, action: &HTTPGetAction, timeout: Duration) -> Outcome {
    let port = match port_of(&action.port, &target.container) {
        Ok(p) => p,
        Err(e) => return Outcome::Failure(e),
    };
    let host = action
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| target.host.to_string());
    let path = action.path.clone().unwrap_or_else(|| "/".into());
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let url = format!("http://{authority}{path}");
    if action
        .scheme
        .as_deref()
        .is_some_and(|s| !s.eq_ignore_ascii_case("HTTP"))
    {
        return Outcome::Failure(format!(
            "Get \"{url}\": scheme {:?} is not supported by this node's prober (plain HTTP only)",
            action.scheme.as_deref().unwrap_or_default()
        ));
    }
    let headers = action.http_headers.clone().unwrap_or_default();
    let request = async {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let mut req = format!("GET {path} HTTP/1.1\r\n");
        if !headers.iter().any(|h| h.name.eq_ignore_ascii_case("host")) {
            req.push_str(&format!("Host: {authority}\r\n"));
        }
        if !headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("user-agent"))
        {
            req.push_str("User-Agent: kube-probe/1.33\r\n");
        }
        if !headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("accept"))
        {
            req.push_str("Accept: */*\r\n");
        }
        for h in &headers {
            req.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
        req.push_str("Connection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0_u8; 512];
        while !buf.contains(&b'\n') && buf.len() < 8192 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(buf)
    };
    let reply = match tokio::time::timeout(timeout, request).await {
        Err(_) => {
            return Outcome::Failure(format!(
                "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            ));
        }
        Ok(Err(e)) => return Outcome::Failure(format!("Get \"{url}\": {e}")),
        Ok(Ok(r)) => r,
    };
    let line = String::from_utf8_lossy(&reply);
    let code = line
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(c) if (200..400).contains(&c) => Outcome::Success,
        Some(c) => Outcome::Failure(format!("HTTP probe failed with statuscode: {c}")),
        None => Outcome::Failure(format!("Get \"{url}\": malformed HTTP response")),
    }
}

/// A TCP connection opens within the timeout.
pub async fn tcp(
    target: &Target,
    host: Option<&str>,
    port: &IntOrString,
    timeout: Duration,
) -> Outcome {
    let port = match port_of(port, &target.container) {
        Ok(p) => p,
        Err(e) => return Outcome::Failure(e),
    };
    let host = host
        .filter(|h| !h.is_empty())
        .map_or_else(|| target.host.to_string(), str::to_string);
    match tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Err(_) => Outcome::Failure(format!("dial tcp {host}:{port}: i/o timeout")),
        Ok(Err(e)) => Outcome::Failure(format!("dial tcp {host}:{port}: {e}")),
        Ok(Ok(_)) => Outcome::Success,
    }
}

/// Runs `probe` once against `target`.
pub async fn run_once(probe: &Probe, target: &Target) -> Outcome {
    let timeout =
        Duration::from_secs(u64::try_from(probe.timeout_seconds.unwrap_or(1).max(1)).unwrap_or(1));
    if let Some(e) = &probe.exec {
        return exec(target, e.command.as_deref().unwrap_or_default(), timeout).await;
    }
    if let Some(h) = &probe.http_get {
        return http_get(target, h, timeout).await;
    }
    if let Some(t) = &probe.tcp_socket {
        return tcp(target, t.host.as_deref(), &t.port, timeout).await;
    }
    if probe.grpc.is_some() {
        return Outcome::Failure("gRPC probes are not supported by this node".into());
    }
    Outcome::Failure("probe has no handler".into())
}

fn secs(v: Option<i32>, default: i32, min: i32) -> Duration {
    Duration::from_secs(u64::try_from(v.unwrap_or(default).max(min)).unwrap_or(0))
}

/// One probe of one container, until its verdict ends its use (startup passed; liveness or
/// startup failed, the container is restarted) or the worker drops it.
#[derive(Debug)]
pub struct ProbeTask {
    /// Which probe.
    pub kind: ProbeKind,
    /// Where to probe.
    pub target: Target,
    /// Verdicts, shared with the worker.
    pub results: Arc<ProbeResults>,
    /// For `Unhealthy` events.
    pub reporter: Arc<dyn Reporter>,
    /// The pod, for events.
    pub pod: Arc<Pod>,
    /// How long the container has been running already.
    pub running_for: Duration,
}

impl ProbeTask {
    /// Probes until done.
    pub async fn run(self) {
        let c = &self.target.container;
        let Some(probe) = self.kind.of(c).cloned() else {
            return;
        };
        let id = self.target.container_id.clone();
        let initial = secs(probe.initial_delay_seconds, 0, 0);
        let period = secs(probe.period_seconds, 10, 1);
        let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
        let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
        if self.kind == ProbeKind::Liveness {
            // Healthy until proven otherwise.
            self.results.set(&id, self.kind, true);
        }
        if initial > self.running_for {
            tokio::time::sleep(initial - self.running_for).await;
        }
        let (mut successes, mut failures) = (0, 0);
        loop {
            let gated = self.kind != ProbeKind::Startup && !self.results.started(&id, c);
            if !gated {
                match run_once(&probe, &self.target).await {
                    Outcome::Success => {
                        failures = 0;
                        successes += 1;
                        if successes >= success_threshold {
                            self.results.set(&id, self.kind, true);
                            if self.kind == ProbeKind::Startup {
                                return;
                            }
                        }
                    }
                    Outcome::Failure(output) => {
                        successes = 0;
                        failures += 1;
                        self.reporter.event(
                            &self.pod,
                            EventType::Warning,
                            "Unhealthy",
                            Some(format!("spec.containers{{{}}}", c.name)),
                            format!("{} probe failed: {output}", self.kind.as_str()),
                        );
                        if failures >= failure_threshold {
                            self.results.set(&id, self.kind, false);
                            if self.kind != ProbeKind::Readiness {
                                return;
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(period).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::fake::{FakeRuntime, TokioClock};
    use tokio::net::TcpListener;

    fn target(container: serde_json::Value) -> Target {
        let clock = Arc::new(TokioClock::new());
        Target {
            runtime: Arc::new(FakeRuntime::new(clock, Arc::default(), &[])),
            container_id: "c1".into(),
            container: serde_json::from_value(container).unwrap(),
            host: "127.0.0.1".parse().unwrap(),
        }
    }

    /// Answers each connection with `status`, recording the request.
    async fn server(status: u16) -> (u16, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0; 2048];
                let n = s.read(&mut buf).await.unwrap_or(0);
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        (port, seen)
    }

    fn get(port: serde_json::Value) -> HTTPGetAction {
        serde_json::from_value(json_get(port)).unwrap()
    }

    fn json_get(port: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"path": "/healthz", "port": port,
            "httpHeaders": [{"name": "X-Probe", "value": "yes"}]})
    }

    #[tokio::test]
    async fn http_get_succeeds_on_2xx_and_3xx_and_fails_otherwise() {
        for (status, ok) in [
            (200, true),
            (302, true),
            (399, true),
            (404, false),
            (500, false),
        ] {
            let (port, seen) = server(status).await;
            let t = target(serde_json::json!({"name": "app"}));
            let out = http_get(&t, &get(port.into()), Duration::from_secs(2)).await;
            assert_eq!(out == Outcome::Success, ok, "{status}: {out:?}");
            if !ok {
                assert_eq!(
                    out,
                    Outcome::Failure(format!("HTTP probe failed with statuscode: {status}"))
                );
            }
            let req = seen.lock().unwrap()[0].clone();
            assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
            assert!(
                req.contains(&format!("Host: 127.0.0.1:{port}\r\n")),
                "{req}"
            );
            assert!(req.contains("X-Probe: yes\r\n"), "{req}");
            assert!(req.contains("User-Agent: kube-probe/"), "{req}");
        }
    }

    #[tokio::test]
    async fn http_get_finds_named_ports_and_names_refused_connections() {
        let (port, _) = server(200).await;
        let t = target(serde_json::json!({"name": "app",
            "ports": [{"name": "web", "containerPort": port}]}));
        assert_eq!(
            http_get(&t, &get("web".into()), Duration::from_secs(2)).await,
            Outcome::Success
        );
        let missing = http_get(&t, &get("nope".into()), Duration::from_secs(2)).await;
        assert_eq!(
            missing,
            Outcome::Failure("couldn't find port nope in container app".into())
        );
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = closed.local_addr().unwrap().port();
        drop(closed);
        let Outcome::Failure(why) = http_get(&t, &get(dead.into()), Duration::from_secs(2)).await
        else {
            panic!("a closed port passed");
        };
        assert!(
            why.starts_with(&format!("Get \"http://127.0.0.1:{dead}/healthz\": ")),
            "{why}"
        );
    }

    #[tokio::test]
    async fn tcp_succeeds_when_a_connection_opens() {
        let (port, _) = server(200).await;
        let t = target(serde_json::json!({"name": "app"}));
        assert_eq!(
            tcp(
                &t,
                None,
                &IntOrString::Int(port.into()),
                Duration::from_secs(2)
            )
            .await,
            Outcome::Success
        );
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = closed.local_addr().unwrap().port();
        drop(closed);
        let out = tcp(
            &t,
            None,
            &IntOrString::Int(dead.into()),
            Duration::from_secs(2),
        )
        .await;
        assert!(
            matches!(out, Outcome::Failure(ref w) if w.starts_with("dial tcp")),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn exec_fails_with_the_commands_output() {
        let t = target(serde_json::json!({"name": "app"}));
        // The fake has no container c1: the exec itself fails, which is a probe failure.
        let out = exec(&t, &["true".into()], Duration::from_secs(1)).await;
        assert!(
            matches!(out, Outcome::Failure(ref w) if w.contains("ExecSync")),
            "{out:?}"
        );
    }
}
