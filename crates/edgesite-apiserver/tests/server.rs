//! The HTTPS server in-process on 127.0.0.1:0: TLS with and without client certificates,
//! HTTP/1.1 and HTTP/2, authentication, authorization, version, health and discovery.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use edgesite_apiserver::{IssuedCert, PkiOptions, Server, ServerConfig};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct Harness {
    _dir: tempfile::TempDir,
    server: Server,
    ca_pem: String,
    admin: IssuedCert,
}

async fn start() -> Result<Harness> {
    let dir = tempfile::tempdir()?;
    let mut config = ServerConfig::new(dir.path());
    config.bind_address = "127.0.0.1".parse()?;
    config.secure_port = 0;
    config.pki = PkiOptions {
        hostname: Some("edge-test".to_owned()),
        extra_sans: Vec::new(),
        include_interface_ips: false,
    };
    let server = Server::start(config).await?;
    println!("ready after {:?}", server.ready_after());
    let ca_pem = std::fs::read_to_string(dir.path().join("pki/ca.crt"))?;
    let admin = IssuedCert {
        cert_pem: std::fs::read_to_string(dir.path().join("pki/admin.crt"))?,
        key_pem: std::fs::read_to_string(dir.path().join("pki/admin.key"))?,
    };
    Ok(Harness {
        _dir: dir,
        server,
        ca_pem,
        admin,
    })
}

struct Reply {
    status: StatusCode,
    content_type: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

fn tls_connector(ca_pem: &str, cert: Option<&IssuedCert>, h2: bool) -> Result<TlsConnector> {
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

async fn request(
    h: &Harness,
    cert: Option<&IssuedCert>,
    h2: bool,
    method: &str,
    path: &str,
    accept: Option<&str>,
) -> Result<Reply> {
    let addr = h.server.local_addr();
    let tcp = TcpStream::connect(addr).await?;
    let tls = tls_connector(&h.ca_pem, cert, h2)?
        .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
        .await?;
    let negotiated_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    assert_eq!(negotiated_h2, h2, "ALPN");
    let mut req = Request::builder()
        .method(method)
        .uri(format!("https://{addr}{path}"));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    if !h2 {
        req = req.header("host", addr.to_string());
    }
    let req = req.body(Empty::<Bytes>::new())?;
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

async fn get(h: &Harness, cert: Option<&IssuedCert>, path: &str) -> Result<Reply> {
    request(h, cert, false, "GET", path, None).await
}

fn assert_status(r: &Reply, code: u16, reason: &str) {
    assert_eq!(
        r.status.as_u16(),
        code,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.content_type, "application/json");
    let s = r.json();
    assert_eq!(s["kind"], "Status");
    assert_eq!(s["apiVersion"], "v1");
    assert_eq!(s["status"], "Failure");
    assert_eq!(s["reason"], reason);
    assert_eq!(s["code"], code);
}

#[tokio::test]
async fn admin_sees_version_and_discovery() -> Result<()> {
    let h = start().await?;
    let admin = Some(&h.admin);
    for path in ["/version", "/version/", "/version?timeout=5s"] {
        let r = get(&h, admin, path).await?;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.content_type, "application/json");
        let v = r.json();
        assert_eq!(v["major"], "1");
        assert_eq!(v["minor"], "32");
        assert_eq!(v["gitVersion"], "v1.32.4+edgesite");
    }

    let r = get(&h, admin, "/api/v1?&limit=500").await?;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.content_type, "application/json");
    let list = r.json();
    assert_eq!(list["kind"], "APIResourceList");
    assert_eq!(list["groupVersion"], "v1");
    let pods = list["resources"]
        .as_array()
        .context("resources")?
        .iter()
        .find(|r| r["name"] == "pods")
        .context("pods listed")?;
    assert_eq!(pods["kind"], "Pod");
    assert_eq!(pods["namespaced"], true);

    let r = get(&h, admin, "/api").await?;
    assert_eq!(r.json()["kind"], "APIVersions");
    let r = get(&h, admin, "/apis").await?;
    assert_eq!(r.content_type, "application/json");
    assert_eq!(r.json()["kind"], "APIGroupList");
    let r = get(&h, admin, "/apis/apps").await?;
    assert_eq!(r.json()["kind"], "APIGroup");
    let r = get(&h, admin, "/apis/apps/v1").await?;
    assert_eq!(r.json()["groupVersion"], "apps/v1");

    // What kubectl 1.32 sends.
    let accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,\
                  application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,\
                  application/json";
    for path in ["/api", "/apis"] {
        let r = request(&h, admin, false, "GET", path, Some(accept)).await?;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.content_type,
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        );
        let v = r.json();
        assert_eq!(v["kind"], "APIGroupDiscoveryList");
        assert_eq!(v["apiVersion"], "apidiscovery.k8s.io/v2");
    }

    for path in [
        "/nope",
        "/apis/nope.example.com",
        "/apis/apps/v9",
        "/api/v2",
    ] {
        let r = get(&h, admin, path).await?;
        assert_status(&r, 404, "NotFound");
        assert_eq!(
            r.json()["message"],
            "the server could not find the requested resource"
        );
    }
    let r = request(&h, admin, false, "POST", "/api", None).await?;
    assert_status(&r, 405, "MethodNotAllowed");

    for path in ["/healthz", "/livez", "/readyz"] {
        let r = get(&h, admin, path).await?;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.body, b"ok");
    }
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn http2_works() -> Result<()> {
    let h = start().await?;
    let r = request(&h, Some(&h.admin), true, "GET", "/api/v1", None).await?;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["kind"], "APIResourceList");
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn anonymous_gets_public_info_only() -> Result<()> {
    let h = start().await?;
    for path in ["/version", "/version/", "/healthz", "/livez", "/readyz"] {
        let r = get(&h, None, path).await?;
        assert_eq!(r.status, StatusCode::OK, "{path}");
    }
    assert_eq!(get(&h, None, "/version").await?.json()["minor"], "32");
    for path in ["/api", "/apis", "/api/v1", "/nope"] {
        let r = get(&h, None, path).await?;
        assert_status(&r, 401, "Unauthorized");
        assert_eq!(r.json()["message"], "Unauthorized");
    }
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn non_masters_are_forbidden() -> Result<()> {
    let h = start().await?;
    let dir = h.server.kubeconfig_path().parent().context("data dir")?;
    let pki = edgesite_apiserver::ClusterPki::load_or_create(
        dir,
        &PkiOptions {
            hostname: Some("edge-test".to_owned()),
            extra_sans: vec!["127.0.0.1".to_owned()],
            include_interface_ips: false,
        },
    )?;
    let bob = pki.issue_client_cert("bob", &["dev"], Duration::from_secs(3600))?;
    let r = get(&h, Some(&bob), "/api").await?;
    assert_status(&r, 403, "Forbidden");
    assert_eq!(
        r.json()["message"],
        r#"forbidden: User "bob" cannot get path "/api""#
    );
    assert_eq!(
        get(&h, Some(&bob), "/version").await?.status,
        StatusCode::OK
    );
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn pki_and_kubeconfig_are_reused_on_restart() -> Result<()> {
    let h = start().await?;
    let dir = h
        .server
        .kubeconfig_path()
        .parent()
        .context("data dir")?
        .to_owned();
    let ca_before = std::fs::read(dir.join("pki/ca.crt"))?;
    let server_before = std::fs::read(dir.join("pki/server.crt"))?;
    assert!(h.server.kubeconfig_path().exists());
    let Harness { _dir, server, .. } = h;
    server.shutdown().await;

    let mut config = ServerConfig::new(&dir);
    config.bind_address = "127.0.0.1".parse()?;
    config.secure_port = 0;
    config.pki = PkiOptions {
        hostname: Some("edge-test".to_owned()),
        extra_sans: Vec::new(),
        include_interface_ips: false,
    };
    let server = Server::start(config).await?;
    assert_eq!(std::fs::read(dir.join("pki/ca.crt"))?, ca_before);
    assert_eq!(std::fs::read(dir.join("pki/server.crt"))?, server_before);
    let kubeconfig = std::fs::read_to_string(server.kubeconfig_path())?;
    assert!(kubeconfig.contains(server.url()), "{kubeconfig}");
    server.shutdown().await;
    Ok(())
}
