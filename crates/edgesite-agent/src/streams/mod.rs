//! The node side of `kubectl logs`, `exec`, `attach`, `port-forward` and `cp`: a kubelet-style
//! API (`/containerLogs/NS/POD/CONTAINER`, `/exec/NS/POD/CONTAINER`, `/attach/…`,
//! `/portForward/NS/POD`) served only on the tunnel the agent opens to the server
//! ([`tunnel::run`]), never on a port.
//!
//! Logs are read from the CRI log files here ([`logs`]). Exec, attach and port-forward ask
//! the runtime for a session URL (CRI `Exec`/`Attach`/`PortForward`) and pass the client's
//! upgraded connection (WebSocket or SPDY) through byte for byte to the runtime's loopback
//! streaming server, as kubelet's streaming proxy does — except kubectl's WebSocket v5 and
//! SPDY-in-WebSocket, which that server lacks: [`v5`] ends those here and speaks SPDY to it.

pub mod logs;
pub mod tunnel;
pub mod v5;

use std::sync::Arc;

use bytes::Bytes;
use edgesite_api::tunnel::{STATUS_HEADER, UPGRADE_HEADER, UPGRADE_PASSTHROUGH_HEADERS};
use edgesite_clock::Clock;
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::debug;

use crate::cri::{self, StreamingRuntime, v1};
use crate::pod::config::{LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE};

/// What the stream API needs from the node.
#[derive(Debug, Clone)]
pub struct StreamContext {
    /// The container runtime.
    pub runtime: Arc<dyn StreamingRuntime>,
    /// The node's clock (`sinceSeconds`).
    pub clock: Arc<dyn Clock>,
}

/// The body of every answer: bytes as they come.
pub type StreamBodyOf = BoxBody<Bytes, std::io::Error>;

/// A refused request, answered as a `metav1.Status` the server passes on.
#[derive(Debug)]
pub struct Refusal {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl Refusal {
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            code: StatusCode::BAD_REQUEST,
            reason: "BadRequest",
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: message.into(),
        }
    }

    fn runtime(err: cri::Error) -> Self {
        Self {
            code: StatusCode::INTERNAL_SERVER_ERROR,
            reason: "InternalError",
            message: err.to_string(),
        }
    }

    fn into_response(self) -> Response<StreamBodyOf> {
        let body = serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        let mut resp = Response::new(full(serde_json::to_vec(&body).unwrap_or_default()));
        *resp.status_mut() = self.code;
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

fn full(b: impl Into<Bytes>) -> StreamBodyOf {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A body fed by a channel: what the sender sends is sent on at once.
fn channel_body() -> (futures::channel::mpsc::Sender<Bytes>, StreamBodyOf) {
    let (tx, rx) = futures::channel::mpsc::channel::<Bytes>(16);
    let body = StreamBody::new(rx.map(|b| Ok::<_, std::io::Error>(Frame::data(b))));
    (tx, http_body_util::BodyExt::boxed(body))
}

/// Serves one request that came through the tunnel.
pub async fn serve_request(
    ctx: Arc<StreamContext>,
    req: Request<Incoming>,
) -> Response<StreamBodyOf> {
    match route(ctx, req).await {
        Ok(resp) => resp,
        Err(refusal) => refusal.into_response(),
    }
}

async fn route(
    ctx: Arc<StreamContext>,
    req: Request<Incoming>,
) -> Result<Response<StreamBodyOf>, Refusal> {
    let path = req.uri().path().to_owned();
    let query = query_pairs(req.uri().query().unwrap_or(""));
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["containerLogs", ns, pod, container] => {
            let opts = logs::LogOptions::from_query(&query).map_err(Refusal::bad_request)?;
            logs::serve(ctx, ns, pod, container, opts).await
        }
        ["exec", ns, pod, container] => {
            let id = running_container(ctx.runtime.as_ref(), ns, pod, container).await?;
            let cmd: Vec<String> = query
                .iter()
                .filter(|(k, _)| k == "command" || k == "input")
                .map(|(_, v)| v.clone())
                .collect();
            if cmd.is_empty() {
                return Err(Refusal::bad_request("you must specify at least 1 command"));
            }
            let (stdin, stdout, stderr, tty) = stream_flags(&query);
            let url = ctx
                .runtime
                .exec(v1::ExecRequest {
                    container_id: id,
                    cmd,
                    tty,
                    stdin,
                    stdout,
                    stderr,
                })
                .await
                .map_err(Refusal::runtime)?;
            if v5::wants_v5(&req) {
                return v5::bridge(
                    req,
                    &url,
                    v5::Streams {
                        stdin,
                        stdout,
                        stderr,
                        tty,
                    },
                )
                .await;
            }
            proxy_upgrade(req, &url).await
        }
        ["attach", ns, pod, container] => {
            let id = running_container(ctx.runtime.as_ref(), ns, pod, container).await?;
            let (stdin, stdout, stderr, tty) = stream_flags(&query);
            let url = ctx
                .runtime
                .attach(v1::AttachRequest {
                    container_id: id,
                    stdin,
                    tty,
                    stdout,
                    stderr,
                })
                .await
                .map_err(Refusal::runtime)?;
            if v5::wants_v5(&req) {
                return v5::bridge(
                    req,
                    &url,
                    v5::Streams {
                        stdin,
                        stdout,
                        stderr,
                        tty,
                    },
                )
                .await;
            }
            proxy_upgrade(req, &url).await
        }
        ["portForward", ns, pod] => {
            let sandbox = ready_sandbox(ctx.runtime.as_ref(), ns, pod).await?;
            // WebSocket clients name the ports in the query; SPDY clients per stream.
            let mut port = Vec::new();
            for (k, v) in &query {
                if k == "ports" || k == "port" {
                    for p in v.split(',').filter(|p| !p.is_empty()) {
                        port.push(
                            p.trim()
                                .parse::<i32>()
                                .map_err(|_| Refusal::bad_request(format!("invalid port {p:?}")))?,
                        );
                    }
                }
            }
            let url = ctx
                .runtime
                .port_forward(v1::PortForwardRequest {
                    pod_sandbox_id: sandbox,
                    port,
                })
                .await
                .map_err(Refusal::runtime)?;
            if v5::wants_spdy_in_websocket(&req) {
                return v5::tunnel_port_forward(req, &url).await;
            }
            proxy_upgrade(req, &url).await
        }
        _ => Err(Refusal::not_found(format!("no stream endpoint at {path}"))),
    }
}

fn stream_flags(query: &[(String, String)]) -> (bool, bool, bool, bool) {
    let flag = |name: &str| {
        query
            .iter()
            .any(|(k, v)| k == name && matches!(v.as_str(), "true" | "1"))
    };
    let tty = flag("tty");
    // A terminal has one output: as kubelet does, a TTY stream drops stderr rather than
    // passing both to the runtime, which refuses them ("tty and stderr cannot both be true";
    // the Python client asks for both).
    (flag("stdin"), flag("stdout"), flag("stderr") && !tty, tty)
}

/// The containers of one pod's container, newest attempt first.
pub(crate) async fn containers_of(
    runtime: &dyn StreamingRuntime,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<Vec<v1::Container>, Refusal> {
    let filter = v1::ContainerFilter {
        label_selector: [
            (LABEL_POD_NAMESPACE.to_owned(), ns.to_owned()),
            (LABEL_POD_NAME.to_owned(), pod.to_owned()),
            (LABEL_CONTAINER_NAME.to_owned(), container.to_owned()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    let mut found = runtime
        .list_containers(Some(filter))
        .await
        .map_err(Refusal::runtime)?;
    found.sort_by_key(|c| {
        std::cmp::Reverse((c.metadata.as_ref().map_or(0, |m| m.attempt), c.created_at))
    });
    if found.is_empty() {
        return Err(Refusal::not_found(format!(
            "container {container:?} of pod {ns}/{pod} is not on this node"
        )));
    }
    Ok(found)
}

async fn running_container(
    runtime: &dyn StreamingRuntime,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<String, Refusal> {
    containers_of(runtime, ns, pod, container)
        .await?
        .into_iter()
        .find(|c| c.state == v1::ContainerState::ContainerRunning as i32)
        .map(|c| c.id)
        .ok_or_else(|| {
            Refusal::bad_request(format!(
                "container {container} is not running in pod {ns}/{pod}"
            ))
        })
}

async fn ready_sandbox(
    runtime: &dyn StreamingRuntime,
    ns: &str,
    pod: &str,
) -> Result<String, Refusal> {
    let filter = v1::PodSandboxFilter {
        label_selector: [
            (LABEL_POD_NAMESPACE.to_owned(), ns.to_owned()),
            (LABEL_POD_NAME.to_owned(), pod.to_owned()),
        ]
        .into_iter()
        .collect(),
        state: Some(v1::PodSandboxStateValue {
            state: v1::PodSandboxState::SandboxReady as i32,
        }),
        ..Default::default()
    };
    let mut found = runtime
        .list_pod_sandboxes(Some(filter))
        .await
        .map_err(Refusal::runtime)?;
    found.sort_by_key(|s| std::cmp::Reverse(s.created_at));
    found.into_iter().next().map(|s| s.id).ok_or_else(|| {
        Refusal::not_found(format!("pod {ns}/{pod} has no ready sandbox on this node"))
    })
}

/// Passes the client's upgrade request to the runtime's streaming server at `url` and, once
/// it switched protocols, splices the tunnel stream and that connection together.
async fn proxy_upgrade(
    req: Request<Incoming>,
    url: &str,
) -> Result<Response<StreamBodyOf>, Refusal> {
    let internal = |message: String| Refusal {
        code: StatusCode::BAD_GATEWAY,
        reason: "InternalError",
        message,
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| internal(format!("unexpected streaming URL {url:?}")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let upgrade =
        req.headers().get(UPGRADE_HEADER).cloned().ok_or_else(|| {
            Refusal::bad_request("a stream needs an upgrade (WebSocket or SPDY/3.1)")
        })?;
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| {
            internal(format!(
                "cannot reach the runtime's streaming server at {authority}: {e}"
            ))
        })?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| internal(format!("streaming server at {authority}: {e}")))?;
    tokio::spawn(conn.with_upgrades());

    let uri = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut out = Request::builder()
        .method(req.method().clone())
        .uri(uri)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, upgrade);
    for name in UPGRADE_PASSTHROUGH_HEADERS {
        for v in req.headers().get_all(name) {
            out = out.header(name, v);
        }
    }
    let out = out
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| internal(e.to_string()))?;
    let mut resp = sender
        .send_request(out)
        .await
        .map_err(|e| internal(format!("streaming server at {authority}: {e}")))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let content_type = resp.headers().get(hyper::header::CONTENT_TYPE).cloned();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut answer = Response::new(full(body));
        *answer.status_mut() = status;
        if let Some(ct) = content_type {
            answer.headers_mut().insert(hyper::header::CONTENT_TYPE, ct);
        }
        return Ok(answer);
    }
    let mut answer = Response::builder()
        .status(StatusCode::OK)
        .header(STATUS_HEADER, "101");
    if let Some(v) = resp.headers().get(hyper::header::UPGRADE) {
        answer = answer.header(UPGRADE_HEADER, v);
    }
    for name in UPGRADE_PASSTHROUGH_HEADERS {
        for v in resp.headers().get_all(name) {
            answer = answer.header(name, v);
        }
    }
    let upgraded = hyper::upgrade::on(&mut resp)
        .await
        .map_err(|e| internal(format!("streaming server upgrade: {e}")))?;
    let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
    let (mut tx, body) = channel_body();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut from_client = req.into_body();
    tokio::spawn(async move {
        while let Some(frame) = from_client.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data()
                && (wr.write_all(&data).await.is_err() || wr.flush().await.is_err())
            {
                break;
            }
        }
        debug!("stream client side done");
        let _ = wr.shutdown().await;
    });
    answer.body(body).map_err(|e| internal(e.to_string()))
}

/// The query's pairs in order, percent-decoded (`command` repeats).
pub(crate) fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_in_order_with_repeats() {
        let q = query_pairs("command=sh&command=-c&command=echo+a%20b%3B&stdin=true&x");
        let v: Vec<(&str, &str)> = q.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            v,
            [
                ("command", "sh"),
                ("command", "-c"),
                ("command", "echo a b;"),
                ("stdin", "true"),
                ("x", "")
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(stream_flags(&q), (true, false, false, false));
    }

    #[test]
    fn a_tty_stream_drops_stderr() {
        let q = query_pairs("stdin=true&stdout=true&stderr=true&tty=true");
        assert_eq!(stream_flags(&q), (true, true, false, true));
        let q = query_pairs("stdout=true&stderr=true");
        assert_eq!(stream_flags(&q), (false, true, true, false));
    }
}
