//! The HTTPS server in-process on 127.0.0.1:0: TLS with and without client certificates,
//! HTTP/1.1 and HTTP/2, authentication, authorization, version, health and discovery.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::time::Duration;

use anyhow::{Context as _, Result};
use edgesite_apiserver::{PkiOptions, Server};
use hyper::StatusCode;

mod support;
use support::{Harness, Reply};

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
    let h = Harness::start().await?;
    let admin = Some(&h.admin);
    for path in ["/version", "/version/", "/version?timeout=5s"] {
        let r = h.get(admin, path).await?;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.content_type, "application/json");
        let v = r.json();
        assert_eq!(v["major"], "1");
        assert_eq!(v["minor"], "32");
        assert_eq!(v["gitVersion"], "v1.32.4+edgesite");
    }

    let r = h.get(admin, "/api/v1?&limit=500").await?;
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

    let r = h.get(admin, "/api").await?;
    assert_eq!(r.json()["kind"], "APIVersions");
    let r = h.get(admin, "/apis").await?;
    assert_eq!(r.content_type, "application/json");
    assert_eq!(r.json()["kind"], "APIGroupList");
    let r = h.get(admin, "/apis/apps").await?;
    assert_eq!(r.json()["kind"], "APIGroup");
    let r = h.get(admin, "/apis/apps/v1").await?;
    assert_eq!(r.json()["groupVersion"], "apps/v1");

    // What kubectl 1.32 sends.
    let accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,\
                  application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,\
                  application/json";
    for path in ["/api", "/apis"] {
        let r = Reply::read(
            h.send(admin, false, "GET", path, &[("accept", accept)], "")
                .await?,
        )
        .await?;
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
        let r = h.get(admin, path).await?;
        assert_status(&r, 404, "NotFound");
        assert_eq!(
            r.json()["message"],
            "the server could not find the requested resource"
        );
    }
    let r = Reply::read(h.send(admin, false, "POST", "/api", &[], "").await?).await?;
    assert_status(&r, 405, "MethodNotAllowed");

    for path in ["/healthz", "/livez", "/readyz"] {
        let r = h.get(admin, path).await?;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.body, b"ok");
    }
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn http2_works() -> Result<()> {
    let h = Harness::start().await?;
    let r = Reply::read(
        h.send(Some(&h.admin), true, "GET", "/api/v1", &[], "")
            .await?,
    )
    .await?;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["kind"], "APIResourceList");
    h.server.shutdown().await;
    Ok(())
}

/// The DER of a one-certificate PEM.
fn der_of(pem: &str) -> Result<Vec<u8>> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    Ok(base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        b64,
    )?)
}

#[tokio::test]
async fn anonymous_gets_public_info_only() -> Result<()> {
    let h = Harness::start().await?;
    for path in [
        "/version",
        "/version/",
        "/healthz",
        "/livez",
        "/readyz",
        "/cacerts",
    ] {
        let r = h.get(None, path).await?;
        assert_eq!(r.status, StatusCode::OK, "{path}");
    }
    // `/cacerts` is the cluster CA, the one a node token pins.
    let dir = h.server.kubeconfig_path().parent().context("data dir")?;
    let served = String::from_utf8(h.get(None, "/cacerts").await?.body)?;
    assert_eq!(served, std::fs::read_to_string(dir.join("pki/ca.crt"))?);
    let token = std::fs::read_to_string(h.server.node_token_path())?;
    let token = edgesite_apiserver::join::NodeToken::parse(&token)?;
    assert!(token.pins(&der_of(&served)?));
    assert_eq!(h.get(None, "/version").await?.json()["minor"], "32");
    for path in ["/api", "/apis", "/api/v1", "/nope"] {
        let r = h.get(None, path).await?;
        assert_status(&r, 401, "Unauthorized");
        assert_eq!(r.json()["message"], "Unauthorized");
    }
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn non_masters_get_discovery_and_nothing_else_without_rbac_bindings() -> Result<()> {
    let h = Harness::start().await?;
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
    // system:discovery and system:public-info-viewer, bound to every authenticated user.
    assert_eq!(h.get(Some(&bob), "/api").await?.status, StatusCode::OK);
    assert_eq!(
        h.get(Some(&bob), "/openapi/v3").await?.status,
        StatusCode::OK
    );
    assert_eq!(h.get(Some(&bob), "/version").await?.status, StatusCode::OK);
    let r = h.get(Some(&bob), "/metrics").await?;
    assert_status(&r, 403, "Forbidden");
    assert_eq!(
        r.json()["message"],
        r#"forbidden: User "bob" cannot get path "/metrics""#
    );
    let r = h.get(Some(&bob), "/api/v1/namespaces/default/pods").await?;
    assert_status(&r, 403, "Forbidden");
    assert_eq!(
        r.json()["message"],
        r#"pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "default""#
    );
    assert_eq!(r.json()["details"], serde_json::json!({"kind": "pods"}));
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn pki_and_kubeconfig_are_reused_on_restart() -> Result<()> {
    let h = Harness::start().await?;
    let dir = h
        .server
        .kubeconfig_path()
        .parent()
        .context("data dir")?
        .to_owned();
    let ca_before = std::fs::read(dir.join("pki/ca.crt"))?;
    let server_before = std::fs::read(dir.join("pki/server.crt"))?;
    assert!(h.server.kubeconfig_path().exists());
    // The first start also writes the node join token: private, pinning this CA.
    let token_path = h.server.node_token_path().to_owned();
    assert_eq!(token_path, dir.join("node-token"));
    let token_before = std::fs::read_to_string(&token_path)?;
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token_path)?.permissions());
    assert_eq!(mode & 0o777, 0o600);
    let token = edgesite_apiserver::join::NodeToken::parse(&token_before)?;
    let ca_der = der_of(std::str::from_utf8(&ca_before)?)?;
    assert!(token.pins(&ca_der), "the token pins the cluster CA");
    let Harness {
        dir: _dir, server, ..
    } = h;
    server.shutdown().await;

    let server = Server::start(support::config(&dir)?).await?;
    assert_eq!(std::fs::read(dir.join("pki/ca.crt"))?, ca_before);
    assert_eq!(std::fs::read(dir.join("pki/server.crt"))?, server_before);
    let kubeconfig = std::fs::read_to_string(server.kubeconfig_path())?;
    assert!(kubeconfig.contains(server.url()), "{kubeconfig}");
    assert_eq!(
        std::fs::read_to_string(server.node_token_path())?,
        token_before,
        "a restart keeps the token agents joined with"
    );
    server.shutdown().await;
    Ok(())
}
