//! Node tunnels: connections agents open to the server (`GET /v1-edgesite/tunnel`, upgraded),
//! on which the server is the HTTP/2 client. [`TunnelRegistry`] maps a node name to its live
//! tunnel, so the stream handlers reach an agent behind NAT without any inbound port on the
//! node. A reconnect replaces the node's tunnel; a closed tunnel is removed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tracing::{debug, info, warn};

/// How often the server pings an idle tunnel, and how long it waits for the answer before
/// dropping it (a node that vanished without closing).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request could not go through a node's tunnel.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The node has no tunnel open.
    #[error("node {0:?} is not connected to the server (no tunnel from its agent)")]
    NotConnected(String),
    /// The tunnel broke during the request.
    #[error("the tunnel to node {node:?} failed: {source}")]
    Broken {
        /// The node.
        node: String,
        /// The HTTP/2 error.
        #[source]
        source: hyper::Error,
    },
}

#[derive(Debug)]
struct Entry {
    generation: u64,
    sender: SendRequest<Body>,
}

/// The live tunnels by node name.
#[derive(Debug, Default)]
pub struct TunnelRegistry {
    tunnels: Mutex<HashMap<String, Entry>>,
    generation: AtomicU64,
}

impl TunnelRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `node` has a tunnel open now.
    pub fn is_connected(&self, node: &str) -> bool {
        self.lock().get(node).is_some_and(|e| !e.sender.is_closed())
    }

    /// The nodes with a tunnel open.
    pub fn nodes(&self) -> Vec<String> {
        let mut v: Vec<_> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.tunnels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `req` to `node`'s agent; its answer streams back as the response body.
    pub async fn send(
        &self,
        node: &str,
        req: hyper::Request<Body>,
    ) -> Result<hyper::Response<Incoming>, TunnelError> {
        let sender = self
            .lock()
            .get(node)
            .filter(|e| !e.sender.is_closed())
            .map(|e| e.sender.clone());
        let mut sender = sender.ok_or_else(|| TunnelError::NotConnected(node.to_owned()))?;
        sender.ready().await.map_err(|source| TunnelError::Broken {
            node: node.to_owned(),
            source,
        })?;
        sender
            .send_request(req)
            .await
            .map_err(|source| TunnelError::Broken {
                node: node.to_owned(),
                source,
            })
    }

    /// Runs the HTTP/2 client side of a tunnel on `io` (the upgraded connection) until it
    /// closes or `shutdown` turns true; the node's tunnel meanwhile.
    pub async fn serve<I>(
        &self,
        node: String,
        io: I,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake::<_, Body>(io)
            .await;
        let (sender, connection) = match handshake {
            Ok(x) => x,
            Err(err) => {
                warn!(%node, %err, "tunnel handshake failed");
                return;
            }
        };
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        if self
            .lock()
            .insert(node.clone(), Entry { generation, sender })
            .is_some()
        {
            info!(%node, "node tunnel replaced by a new connection");
        } else {
            info!(%node, "node tunnel open");
        }
        tokio::select! {
            result = connection => match result {
                Ok(()) => debug!(%node, "node tunnel closed"),
                Err(err) => info!(%node, %err, "node tunnel closed"),
            },
            _ = shutdown.wait_for(|down| *down) => debug!(%node, "closing node tunnel: shutdown"),
        }
        let mut tunnels = self.lock();
        if tunnels
            .get(&node)
            .is_some_and(|e| e.generation == generation)
        {
            tunnels.remove(&node);
            info!(%node, "node tunnel gone");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use hyper_util::rt::TokioIo;

    use super::*;

    /// An agent end on `io` answering every request with `answer`.
    fn agent(io: tokio::io::DuplexStream, answer: &'static str) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| async move {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(answer))))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(io), service)
                .await;
        })
    }

    async fn ask(reg: &TunnelRegistry) -> Result<String, TunnelError> {
        let req = hyper::Request::builder()
            .uri("/containerLogs/ns/p/c")
            .body(Body::empty())
            .unwrap();
        let resp = reg.send("n1", req).await?;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
        for _ in 0..500 {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what} did not happen in 5 s");
    }

    #[tokio::test]
    async fn a_reconnect_replaces_the_tunnel_and_only_its_own_close_removes_it() {
        let reg = Arc::new(TunnelRegistry::new());
        let (_down, shutdown) = tokio::sync::watch::channel(false);
        assert!(matches!(ask(&reg).await, Err(TunnelError::NotConnected(_))));

        let (server_io, agent_io) = tokio::io::duplex(64 * 1024);
        let first = agent(agent_io, "first");
        let r = reg.clone();
        let first_tunnel = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                r.serve("n1".into(), TokioIo::new(server_io), shutdown)
                    .await
            }
        });
        eventually("the first tunnel", async || {
            ask(&reg).await.ok().as_deref() == Some("first")
        })
        .await;
        assert_eq!(reg.nodes(), ["n1"]);

        let (server_io, agent_io) = tokio::io::duplex(64 * 1024);
        let second = agent(agent_io, "second");
        let r = reg.clone();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                r.serve("n1".into(), TokioIo::new(server_io), shutdown)
                    .await
            }
        });
        eventually("the replacement", async || {
            ask(&reg).await.ok().as_deref() == Some("second")
        })
        .await;

        // The old connection closing leaves the new one in place.
        first.abort();
        first_tunnel.await.unwrap();
        assert_eq!(ask(&reg).await.unwrap(), "second");

        second.abort();
        eventually("the removal", async || !reg.is_connected("n1")).await;
        assert!(matches!(ask(&reg).await, Err(TunnelError::NotConnected(n)) if n == "n1"));
        assert!(reg.nodes().is_empty());
    }
}
