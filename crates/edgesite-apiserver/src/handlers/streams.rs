//! The pod streams — `log`, `exec`, `attach`, `portforward` — and the node tunnel endpoint
//! they travel over. The server resolves the pod's node and passes the request through that
//! node's tunnel to its agent as kubelet's paths (`/containerLogs/…`, `/exec/…`, `/attach/…`,
//! `/portForward/…`). Upgrades (WebSocket, SPDY) are passed through byte for byte to the
//! runtime's streaming server behind the agent, as kubelet's streaming proxy does; kubectl's
//! WebSocket `v5.channel.k8s.io` and port-forward's SPDY-in-WebSocket, which that server
//! lacks, the agent bridges to SPDY itself. Any other WebSocket protocol is refused with `400`
//! before the upgrade, which makes kubectl fall back to plain SPDY.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use edgesite_api::registry;
use edgesite_api::status::ApiError;
use edgesite_api::tunnel::{
    STATUS_HEADER, TUNNEL_UPGRADE, UPGRADE_HEADER, UPGRADE_PASSTHROUGH_HEADERS,
};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::{debug, warn};

use super::target::{Subresource, Target};
use super::{ApiState, status_json_response, status_response};
use crate::authn::Identity;
use crate::storage;
use crate::tunnel::TunnelError;

/// The group of node identities (`O` of node client certificates).
pub const NODES_GROUP: &str = "system:nodes";
/// The user-name prefix of node identities.
pub const NODE_USER_PREFIX: &str = "system:node:";

/// Whether `sub` of `r` is a pod stream served here.
pub fn is_pod_stream(r: &registry::ResourceInfo, sub: Subresource) -> bool {
    r.group.is_empty()
        && r.plural == "pods"
        && matches!(
            sub,
            Subresource::Log | Subresource::Exec | Subresource::Attach | Subresource::PortForward
        )
}

/// `GET /v1-edgesite/tunnel` with `Upgrade: edgesite-tunnel/1`, from a node identity: the
/// connection becomes that node's tunnel.
pub async fn tunnel(State(state): State<Arc<ApiState>>, mut req: Request) -> Response {
    let Some(node) = req
        .extensions()
        .get::<Identity>()
        .filter(|id| id.in_group(NODES_GROUP))
        .and_then(|id| id.user.strip_prefix(NODE_USER_PREFIX))
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
    else {
        return status_json_response(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "only node identities (system:node:NAME in system:nodes) may open a node tunnel",
        );
    };
    let upgrade_ok = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(TUNNEL_UPGRADE));
    let Some(on_upgrade) = upgrade_ok
        .then(|| req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>())
        .flatten()
    else {
        return status_json_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("a node tunnel needs HTTP/1.1 with Upgrade: {TUNNEL_UPGRADE}"),
        );
    };
    // The task keeps the registry only: the state (and with it the store) must be free to go
    // when the server shuts down, whatever the tunnel is doing.
    let (tunnels, shutdown) = (state.tunnels.clone(), state.shutdown.clone());
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => tunnels.serve(node, upgraded, shutdown).await,
            Err(err) => warn!(%node, %err, "node tunnel upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, TUNNEL_UPGRADE)
        .body(Body::empty())
        .unwrap_or_default()
}

/// Serves a pod stream request.
pub async fn handle(state: Arc<ApiState>, target: Target, req: Request) -> Response {
    match handle_inner(state, target, req).await {
        Ok(resp) => resp,
        Err(Refusal::Api(err)) => status_response(&err),
        Err(Refusal::Unavailable(message)) => status_json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &message,
        ),
    }
}

enum Refusal {
    Api(ApiError),
    Unavailable(String),
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Refusal::Api(e)
    }
}

async fn handle_inner(
    state: Arc<ApiState>,
    target: Target,
    mut req: Request,
) -> Result<Response, Refusal> {
    let pods = target.resource;
    let (Some(ns), Some(name), Some(sub)) = (
        target.namespace.as_deref(),
        target.name.as_deref(),
        target.subresource,
    ) else {
        return Err(ApiError::bad_request("a pod stream needs a namespace and a pod name").into());
    };
    let query = parse_query(req.uri().query().unwrap_or(""));
    let method = req.method().clone();
    let upgrade = sub != Subresource::Log;
    match (sub, &method) {
        (Subresource::Log, &Method::GET) => {}
        (_, &Method::GET | &Method::POST) if upgrade => {}
        _ => return Err(ApiError::method_not_allowed(pods, method.as_str()).into()),
    }

    let key = registry::storage_key(pods, Some(ns), name)
        .ok_or_else(|| ApiError::not_found(pods, name))?;
    let kv = state
        .storage
        .store
        .get(key.as_bytes())
        .await
        .map_err(storage::store_error)?
        .ok_or_else(|| ApiError::not_found(pods, name))?;
    let pod = storage::decode(&kv, kv.mod_revision)?;
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("pod {name} does not have a host assigned")))?
        .to_owned();

    let path = match sub {
        Subresource::PortForward => format!("/portForward/{ns}/{name}"),
        _ => {
            let container = pick_container(&pod, name, query.get("container"))?;
            let verb = match sub {
                Subresource::Log => "containerLogs",
                Subresource::Exec => "exec",
                _ => "attach",
            };
            format!("/{verb}/{ns}/{name}/{container}")
        }
    };
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };

    if !upgrade {
        let inner = hyper::Request::builder()
            .method(Method::GET)
            .uri(path_and_query)
            .body(Body::empty())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let resp = send(&state, &node, inner).await?;
        return Ok(pass_response(resp));
    }

    let client_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{} needs a connection upgrade (WebSocket or SPDY/3.1)",
                sub.as_str()
            ))
        })?;
    if client_upgrade.eq_ignore_ascii_case("websocket") {
        refuse_unsupported_websocket(req.headers(), sub)?;
    }
    let on_upgrade = req
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| {
            ApiError::bad_request("this connection cannot be upgraded (use HTTP/1.1)")
        })?;

    let (to_agent, body_rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let body = Body::from_stream(body_rx);
    let mut inner = hyper::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(UPGRADE_HEADER, client_upgrade);
    for name in UPGRADE_PASSTHROUGH_HEADERS {
        for v in req.headers().get_all(name) {
            inner = inner.header(name, v);
        }
    }
    let inner = inner
        .body(body)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = send(&state, &node, inner).await?;
    let switched = resp
        .headers()
        .get(STATUS_HEADER)
        .is_some_and(|v| v.as_bytes() == b"101");
    if !switched {
        // The runtime refused the upgrade: its answer goes to the client as it is.
        return Ok(pass_response(resp));
    }
    let mut answer = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade");
    if let Some(v) = resp.headers().get(UPGRADE_HEADER) {
        answer = answer.header(header::UPGRADE, v);
    }
    for name in UPGRADE_PASSTHROUGH_HEADERS {
        for v in resp.headers().get_all(name) {
            answer = answer.header(name, v);
        }
    }
    let from_agent = resp.into_body();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => splice(TokioIo::new(upgraded), to_agent, from_agent).await,
            Err(err) => debug!(%err, "stream upgrade failed"),
        }
    });
    Ok(answer.body(Body::empty()).unwrap_or_default())
}

/// Copies the client's bytes into the tunnel request and the agent's answer back to the
/// client, until both directions end.
async fn splice<U>(
    client: U,
    mut to_agent: futures::channel::mpsc::Sender<Result<Bytes, std::io::Error>>,
    mut from_agent: hyper::body::Incoming,
) where
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures::SinkExt as _;
    let (mut rd, mut wr) = tokio::io::split(client);
    let up = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_agent
                        .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        // Ending the request body tells the agent the client is done sending.
        to_agent.close_channel();
    };
    let down = async move {
        while let Some(frame) = from_agent.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data()
                && (wr.write_all(&data).await.is_err() || wr.flush().await.is_err())
            {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    // The runtime ends the session (exit code sent, connection closed); when that direction
    // is over, so is the session.
    tokio::pin!(up);
    tokio::select! {
        () = down => {}
        () = &mut up => {}
    }
}

async fn send(
    state: &ApiState,
    node: &str,
    req: hyper::Request<Body>,
) -> Result<hyper::Response<hyper::body::Incoming>, Refusal> {
    state.tunnels.send(node, req).await.map_err(|e| match e {
        TunnelError::NotConnected(_) => Refusal::Unavailable(format!(
            "{e}: the node's agent must be running and reach the server"
        )),
        TunnelError::Broken { .. } => Refusal::Unavailable(e.to_string()),
    })
}

/// The agent's answer as the response: status, content type, the body streamed.
fn pass_response(resp: hyper::Response<hyper::body::Incoming>) -> Response {
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(Body::new(body));
    *out.status_mut() = parts.status;
    for name in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    if !out.headers().contains_key(header::CONTENT_TYPE) {
        out.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    out
}

/// The runtime's streaming server (containerd's, built on kubelet's) speaks WebSocket
/// `channel.k8s.io` up to `v4`, and plain SPDY; the agent adds `v5` for exec and attach and
/// SPDY-in-WebSocket for port-forward. A client offering only other protocols is refused
/// before the upgrade, which makes kubectl retry with SPDY.
fn refuse_unsupported_websocket(headers: &HeaderMap, sub: Subresource) -> Result<(), ApiError> {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()))
        .filter(|p| !p.is_empty())
        .collect();
    let supported = |p: &str| {
        matches!(
            p,
            "channel.k8s.io"
                | "base64.channel.k8s.io"
                | "v4.channel.k8s.io"
                | "v4.base64.channel.k8s.io"
        ) || (sub == Subresource::PortForward && p == "portforward.k8s.io")
            // The agent ends these itself and speaks SPDY to the runtime.
            || (sub != Subresource::PortForward && p == "v5.channel.k8s.io")
            || (sub == Subresource::PortForward && p == "SPDY/3.1+portforward.k8s.io")
    };
    if offered.is_empty() || offered.iter().any(|p| supported(p)) {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "none of the WebSocket protocols {offered:?} is supported for {}: use SPDY/3.1 or \
         v4.channel.k8s.io",
        sub.as_str()
    )))
}

/// The container a stream is for: `container` when given (and in the pod), else the pod's
/// only container; several containers and none named → 400, as upstream.
fn pick_container(
    pod: &Value,
    pod_name: &str,
    requested: Option<&String>,
) -> Result<String, ApiError> {
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("containers");
    let mut all = names("initContainers");
    all.extend(containers.iter().cloned());
    all.extend(names("ephemeralContainers"));
    match requested.filter(|c| !c.is_empty()) {
        Some(c) if all.contains(c) => Ok(c.clone()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {pod_name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {pod_name}, choose one of: [{}]",
            containers.join(" "),
        ))),
    }
}

/// The query's last value per key (the container name; the rest goes to the agent as is).
fn parse_query(q: &str) -> HashMap<String, String> {
    url_pairs(q).collect()
}

fn url_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    q.split('&').filter(|kv| !kv.is_empty()).map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (percent_decode(k), percent_decode(v))
    })
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
    use serde_json::json;

    #[test]
    fn the_container_is_the_named_one_or_the_only_one() {
        let one = json!({"spec": {"containers": [{"name": "app"}]}});
        let two = json!({"spec": {"initContainers": [{"name": "init"}],
            "containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(pick_container(&one, "p", None).unwrap(), "app");
        assert_eq!(
            pick_container(&two, "p", Some(&"init".to_owned())).unwrap(),
            "init"
        );
        let err = pick_container(&two, "p", None).unwrap_err();
        assert_eq!(err.code(), 400);
        assert!(
            err.to_status_json()["message"]
                .as_str()
                .unwrap()
                .contains("choose one of: [a b]"),
            "{err:?}"
        );
        let err = pick_container(&one, "p", Some(&"x".to_owned())).unwrap_err();
        assert!(format!("{err:?}").contains("container x is not valid for pod p"));
    }

    #[test]
    fn websocket_protocols_nobody_bridges_are_refused_before_the_upgrade() {
        let with = |p: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_str(p).unwrap(),
            );
            h
        };
        // kubectl 1.32 offers only v5: the agent bridges it for exec and attach, not for
        // port-forward (whose WebSocket kubectl offers as SPDY-in-WebSocket).
        assert!(
            refuse_unsupported_websocket(&with("v5.channel.k8s.io"), Subresource::Exec).is_ok()
        );
        assert!(
            refuse_unsupported_websocket(&with("v5.channel.k8s.io"), Subresource::PortForward)
                .is_err()
        );
        assert!(
            refuse_unsupported_websocket(
                &with("SPDY/3.1+portforward.k8s.io"),
                Subresource::PortForward
            )
            .is_ok()
        );
        assert!(
            refuse_unsupported_websocket(&with("SPDY/3.1+portforward.k8s.io"), Subresource::Exec)
                .is_err()
        );
        // The Python client offers v4 (and v5): passed through.
        assert!(
            refuse_unsupported_websocket(
                &with("v5.channel.k8s.io, v4.channel.k8s.io"),
                Subresource::Exec
            )
            .is_ok()
        );
        assert!(refuse_unsupported_websocket(&HeaderMap::new(), Subresource::Exec).is_ok());
    }

    #[test]
    fn queries_decode() {
        let q = parse_query("container=a%2Db&follow=true&x");
        assert_eq!(q.get("container").map(String::as_str), Some("a-b"));
        assert_eq!(q.get("x").map(String::as_str), Some(""));
    }
}
