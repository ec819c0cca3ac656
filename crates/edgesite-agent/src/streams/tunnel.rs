//! The agent's end of the node tunnel: dial the server over TLS with the node's client
//! certificate, upgrade `GET /v1-edgesite/tunnel`, then serve the kubelet-style stream API
//! ([`super::serve_request`]) as the HTTP/2 *server* on that connection. Reconnects with
//! jittered back-off (1 s doubling to 30 s) and logs once per outage. Nothing listens on a
//! port: every stream comes in on the connection the agent opened.

use std::sync::Arc;
use std::time::Duration;

use edgesite_api::tunnel::{TUNNEL_PATH, TUNNEL_UPGRADE};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tracing::{debug, info, warn};

use super::StreamContext;

const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh TLS client configuration for each dial (so a renewed node certificate is used from
/// the next connection on). It must present the node's client certificate
/// (CN `system:node:NAME`, O `system:nodes`) and trust the cluster CA.
pub type TlsConfigSource = Arc<dyn Fn() -> Arc<rustls::ClientConfig> + Send + Sync>;

/// Where and how the tunnel dials.
#[derive(Clone)]
pub struct TunnelConfig {
    /// The server, `https://HOST:PORT`.
    pub server_url: String,
    /// The TLS configuration of each dial.
    pub tls: TlsConfigSource,
}

impl std::fmt::Debug for TunnelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelConfig")
            .field("server_url", &self.server_url)
            .finish_non_exhaustive()
    }
}

/// Why one tunnel connection failed.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The server URL is not `https://HOST[:PORT]`.
    #[error("server URL {0:?} is not https://HOST[:PORT]")]
    Url(String),
    /// TCP or TLS failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("tunnel request to {addr} failed: {source}")]
    Http {
        /// `host:port`.
        addr: String,
        /// The hyper error.
        #[source]
        source: hyper::Error,
    },
    /// The server refused the tunnel.
    #[error("the server at {addr} refused the tunnel ({status}): {body}")]
    Refused {
        /// `host:port`.
        addr: String,
        /// The HTTP status.
        status: u16,
        /// The server's answer.
        body: String,
    },
}

/// Keeps the node's tunnel open until `shutdown` resolves: dials, serves, and on any failure
/// dials again after a back-off. This is what the agent's main runs next to the pod workers.
pub async fn run(
    config: TunnelConfig,
    ctx: Arc<StreamContext>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut backoff = BACKOFF_INITIAL;
    let mut in_outage = false;
    loop {
        let attempt = connect_and_serve(&config, ctx.clone(), || {
            if in_outage {
                info!(server = %config.server_url, "node tunnel connected again");
            } else {
                debug!(server = %config.server_url, "node tunnel connected");
            }
        });
        let outcome = tokio::select! {
            () = &mut shutdown => return,
            outcome = attempt => outcome,
        };
        match outcome {
            Ok(served) => {
                in_outage = false;
                backoff = BACKOFF_INITIAL;
                debug!(?served, "node tunnel closed; reconnecting");
            }
            Err(err) => {
                if !in_outage {
                    warn!(%err, "node tunnel down; retrying with back-off until the server answers");
                    in_outage = true;
                } else {
                    debug!(%err, "node tunnel still down");
                }
            }
        }
        let jittered = backoff.mul_f64(0.8 + fastrand::f64() * 0.4);
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(jittered) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One tunnel connection: dial, upgrade, serve until it closes. `Ok` with how long it was up
/// after a clean close.
async fn connect_and_serve(
    config: &TunnelConfig,
    ctx: Arc<StreamContext>,
    on_connected: impl FnOnce(),
) -> Result<Duration, TunnelError> {
    let (host, addr) = host_port(&config.server_url)?;
    let connect = |source| TunnelError::Connect {
        addr: addr.clone(),
        source,
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr))
        .await
        .map_err(|_| connect(std::io::ErrorKind::TimedOut.into()))?
        .map_err(connect)?;
    let _ = tcp.set_nodelay(true);
    let mut tls = (*(config.tls)()).clone();
    // The upgrade is an HTTP/1.1 mechanism.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(host.clone())
        .map_err(|_| TunnelError::Url(config.server_url.clone()))?;
    let stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp),
    )
    .await
    .map_err(|_| connect(std::io::ErrorKind::TimedOut.into()))?
    .map_err(connect)?;

    let http = |source| TunnelError::Http {
        addr: addr.clone(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let conn = tokio::spawn(conn.with_upgrades());
    let req = hyper::Request::builder()
        .method(hyper::Method::GET)
        .uri(TUNNEL_PATH)
        .header(hyper::header::HOST, &addr)
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, TUNNEL_UPGRADE)
        .body(Empty::<Bytes>::new())
        .map_err(|e| TunnelError::Url(e.to_string()))?;
    let mut resp = sender.send_request(req).await.map_err(http)?;
    if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        conn.abort();
        return Err(TunnelError::Refused { addr, status, body });
    }
    let upgraded = hyper::upgrade::on(&mut resp).await.map_err(http)?;
    on_connected();
    let started = tokio::time::Instant::now();
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, std::convert::Infallible>(super::serve_request(ctx, req).await) }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .serve_connection(upgraded, service)
        .await
        .map_err(http)?;
    Ok(started.elapsed())
}

/// `(host, host:port)` of an `https://` URL; the port defaults to 443.
fn host_port(url: &str) -> Result<(String, String), TunnelError> {
    let bad = || TunnelError::Url(url.to_owned());
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        (h.to_owned(), after.strip_prefix(':').unwrap_or("443"))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p),
            None => (authority.to_owned(), "443"),
        }
    };
    port.parse::<u16>().map_err(|_| bad())?;
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok((host, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_give_host_and_address() {
        let hp = |u| host_port(u).map_err(|e| e.to_string());
        assert_eq!(
            hp("https://127.0.0.1:6443"),
            Ok(("127.0.0.1".into(), "127.0.0.1:6443".into()))
        );
        assert_eq!(
            hp("https://edge.example/"),
            Ok(("edge.example".into(), "edge.example:443".into()))
        );
        assert_eq!(
            hp("https://[::1]:6443"),
            Ok(("::1".into(), "[::1]:6443".into()))
        );
        assert!(hp("http://x:1").is_err());
        assert!(hp("https://x:notaport").is_err());
    }
}
