//! The bench's HTTPS client: rustls with the cluster CA and the admin client certificate (read
//! from `DATA_DIR/pki`, as written by the server), hyper's low-level HTTP/1.1 and HTTP/2 client
//! connections, so that the bench decides exactly which requests share a connection.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The longest the bench waits for one request (a list of 10k pods included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Connects to one server as the admin user.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    h1: TlsConnector,
    h2: TlsConnector,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("addr", &self.addr).finish()
    }
}

impl Client {
    /// Reads `pki/ca.crt`, `pki/admin.crt` and `pki/admin.key` under `data_dir`.
    pub fn load(data_dir: &Path, addr: SocketAddr) -> anyhow::Result<Self> {
        let pki = data_dir.join("pki");
        let read = |name: &str| {
            std::fs::read(pki.join(name)).with_context(|| format!("reading pki/{name}"))
        };
        let (ca, cert, key) = (read("ca.crt")?, read("admin.crt")?, read("admin.key")?);
        let config = |alpn: &[u8]| -> anyhow::Result<TlsConnector> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from_pem_slice(&ca)?)?;
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(&cert)?],
                    PrivateKeyDer::from_pem_slice(&key)?,
                )?;
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(TlsConnector::from(Arc::new(config)))
        };
        Ok(Self {
            addr,
            h1: config(b"http/1.1")?,
            h2: config(b"h2")?,
        })
    }

    async fn tls(
        &self,
        connector: &TlsConnector,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::from(self.addr.ip());
        Ok(connector.connect(name, tcp).await?)
    }

    /// A new HTTP/1.1 keep-alive connection (TCP + TLS handshake done).
    pub async fn h1(&self) -> anyhow::Result<H1> {
        let tls = self.tls(&self.h1).await?;
        let (send, conn) = http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(H1 {
            send,
            host: self.addr.to_string(),
        })
    }

    /// A new HTTP/2 connection; clone the sender for more streams on it.
    pub async fn h2(&self) -> anyhow::Result<http2::SendRequest<Full<Bytes>>> {
        let tls = self.tls(&self.h2).await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            bail!("the server did not negotiate HTTP/2");
        }
        let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(send)
    }

    /// The `https://host:port` prefix of request URIs.
    pub fn base(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// One HTTP/1.1 connection; requests on it are sequential.
#[derive(Debug)]
pub struct H1 {
    send: http1::SendRequest<Full<Bytes>>,
    host: String,
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: StatusCode,
    /// The whole body.
    pub body: Bytes,
    /// From sending the request to having the response head (status and headers).
    pub head_after: Duration,
}

impl Reply {
    /// Fails unless the status is `want`, quoting the body.
    pub fn expect(self, want: StatusCode, what: &str) -> anyhow::Result<Self> {
        if self.status != want {
            bail!(
                "{what}: status {} (expected {want}): {}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(600)])
            );
        }
        Ok(self)
    }
}

impl H1 {
    /// Sends one request and reads the whole response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("accept", "application/json");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let req = req.body(Full::new(body))?;
        let fut = async {
            self.send.ready().await?;
            let sent = Instant::now();
            let resp = self.send.send_request(req).await?;
            let head_after = sent.elapsed();
            let mut reply = read(resp).await?;
            reply.head_after = head_after;
            anyhow::Ok(reply)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .with_context(|| format!("{method} {path} timed out"))?
            .with_context(|| format!("{method} {path}"))
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Reply> {
        self.request("GET", path, None, Bytes::new()).await
    }

    /// `POST path` of a JSON body.
    pub async fn post_json(&mut self, path: &str, body: Bytes) -> anyhow::Result<Reply> {
        self.request("POST", path, Some("application/json"), body)
            .await
    }
}

/// Reads a whole response.
pub async fn read(resp: Response<Incoming>) -> anyhow::Result<Reply> {
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        body,
        head_after: Duration::ZERO,
    })
}
