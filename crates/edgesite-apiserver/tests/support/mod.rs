//! Shared harness for the integration tests: the server in-process on 127.0.0.1:0 in a
//! temporary directory, rustls client connectors and a one-shot HTTPS request helper.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use edgesite_apiserver::{IssuedCert, PkiOptions, Server, ServerConfig};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The test configuration for a data directory: loopback, an ephemeral port, hostname
/// `edge-test` and no interface addresses in the certificates.
pub fn config(dir: &Path) -> Result<ServerConfig> {
    let mut config = ServerConfig::new(dir);
    config.bind_address = "127.0.0.1".parse()?;
    config.secure_port = 0;
    config.pki = PkiOptions {
        hostname: Some("edge-test".to_owned()),
        extra_sans: Vec::new(),
        include_interface_ips: false,
    };
    Ok(config)
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub server: Server,
    pub ca_pem: String,
    pub admin: IssuedCert,
}

impl Harness {
    pub async fn start() -> Result<Self> {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = config(dir.path())?;
        tweak(&mut config);
        let server = Server::start(config).await?;
        println!("ready after {:?}", server.ready_after());
        let pki = dir.path().join("pki");
        let ca_pem = std::fs::read_to_string(pki.join("ca.crt"))?;
        let admin = IssuedCert {
            cert_pem: std::fs::read_to_string(pki.join("admin.crt"))?,
            key_pem: std::fs::read_to_string(pki.join("admin.key"))?,
        };
        Ok(Harness {
            dir,
            server,
            ca_pem,
            admin,
        })
    }

    /// One request on a fresh TLS connection; checks that ALPN chose `h2` exactly when
    /// asked for. The response body is left to the caller (watches stream it).
    pub async fn send(
        &self,
        cert: Option<&IssuedCert>,
        h2: bool,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Response<Incoming>> {
        let addr = self.server.local_addr();
        let tcp = TcpStream::connect(addr).await?;
        let tls = tls_connector(&self.ca_pem, cert, h2)?
            .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
            .await?;
        let negotiated_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        assert_eq!(negotiated_h2, h2, "ALPN");
        let mut req = Request::builder()
            .method(method)
            .uri(format!("https://{addr}{path}"));
        if !h2 {
            req = req.header("host", addr.to_string());
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Full::new(body.into()))?;
        let io = TokioIo::new(tls);
        let resp = if h2 {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            send.send_request(req).await?
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            send.send_request(req).await?
        };
        Ok(resp)
    }

    /// One admin request over HTTP/1.1 with an optional body of media type `content_type`;
    /// the status code and the body as JSON (`Null` when it is not JSON).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let headers: &[(&str, &str)] = if bytes.is_empty() {
            &[]
        } else {
            &[("content-type", content_type)]
        };
        let resp = self
            .send(Some(&self.admin), false, method, path, headers, bytes)
            .await?;
        let reply = Reply::read(resp).await?;
        Ok((
            reply.status.as_u16(),
            serde_json::from_slice(&reply.body).unwrap_or(Value::Null),
        ))
    }

    /// An HTTP/1.1 `GET` without a body.
    pub async fn get(&self, cert: Option<&IssuedCert>, path: &str) -> Result<Reply> {
        Reply::read(
            self.send(cert, false, "GET", path, &[], Bytes::new())
                .await?,
        )
        .await
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Reply {
    /// Reads the whole of a response.
    pub async fn read(resp: Response<Incoming>) -> Result<Self> {
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        let body = resp.into_body().collect().await?.to_bytes().to_vec();
        Ok(Reply {
            status,
            content_type,
            body,
        })
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// The machine's kubectl (the gcloud dispatcher, which picks the kubectl matching the server).
pub const KUBECTL: &str = "/usr/bin/kubectl";

/// Runs the real kubectl against `kubeconfig` with `HOME` at `home` (a fresh discovery cache per
/// test) and prints the command and its output. Fails, never skips, when kubectl is missing.
pub async fn kubectl(
    home: &Path,
    kubeconfig: &Path,
    args: &[&str],
) -> Result<std::process::Output> {
    anyhow::ensure!(
        Path::new(KUBECTL).exists(),
        "{KUBECTL} is missing: this test needs the real kubectl"
    );
    let out = tokio::process::Command::new(KUBECTL)
        .env("HOME", home)
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("cannot run {KUBECTL}: {e}"))?;
    println!(
        "$ kubectl {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// A client trusting only `ca_pem`, presenting `cert` if given, offering `h2` or `http/1.1`.
pub fn tls_connector(ca_pem: &str, cert: Option<&IssuedCert>, h2: bool) -> Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match cert {
        Some(c) => builder.with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes())?],
            PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())?,
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(TlsConnector::from(Arc::new(config)))
}
