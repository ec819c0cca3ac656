//! Bad requests over HTTPS: each answer is a `metav1.Status` with the right `code` and `reason`,
//! and a list afterwards shows that nothing was stored.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::convert::Infallible;

use anyhow::Result;
use http_body_util::StreamBody;
use hyper::body::{Bytes, Frame};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::net::TcpStream;

mod support;
use support::{Harness, Reply, tls_connector};

/// Just over the 3 MiB request body limit.
const TOO_BIG: usize = 3 * 1024 * 1024 + 1024;

const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

fn status_of(r: &Reply, code: u16, reason: &str) -> Value {
    assert_eq!(
        r.status.as_u16(),
        code,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json();
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["apiVersion"], "v1", "{v}");
    assert_eq!(v["status"], "Failure", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
    v
}

/// A small ConfigMap named `name` padded with whitespace to `size` bytes, so that only the
/// body's size, not the object's, can be the problem.
fn big_configmap(name: &str, size: usize) -> Vec<u8> {
    let mut body = serde_json::to_vec(&json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"blob": "x".repeat(10)},
    }))
    .unwrap();
    body.resize(size.max(body.len()), b' ');
    body
}

async fn send_json(
    h: &Harness,
    h2: bool,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<Reply> {
    Reply::read(
        h.send(
            Some(&h.admin),
            h2,
            method,
            path,
            &[("content-type", content_type)],
            body,
        )
        .await?,
    )
    .await
}

/// The names of the ConfigMaps in `default`.
async fn configmap_names(h: &Harness) -> Result<Vec<String>> {
    let r = h.get(Some(&h.admin), CONFIGMAPS).await?;
    assert_eq!(r.status, StatusCode::OK);
    Ok(r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_owned))
        .collect())
}

/// POSTs `body` as a chunked HTTP/1.1 body (no Content-Length), in 64 KiB chunks.
async fn post_chunked(h: &Harness, path: &str, body: Vec<u8>) -> Result<Reply> {
    let addr = h.server.local_addr();
    let tcp = TcpStream::connect(addr).await?;
    let tls = tls_connector(&h.ca_pem, Some(&h.admin), false)?
        .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
        .await?;
    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = body
        .chunks(64 * 1024)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let req = Request::builder()
        .method("POST")
        .uri(format!("https://{addr}{path}"))
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(StreamBody::new(futures::stream::iter(chunks)))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await?;
    Reply::read(resp).await
}

#[tokio::test]
async fn bodies_over_3_mib_are_413_and_not_stored() -> Result<()> {
    let h = Harness::start().await?;

    // HTTP/1.1 with Content-Length.
    let r = send_json(
        &h,
        false,
        "POST",
        CONFIGMAPS,
        "application/json",
        big_configmap("big1", TOO_BIG),
    )
    .await?;
    let v = status_of(&r, 413, "RequestEntityTooLarge");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Request entity too large: limit is 3145728"),
        "{v}"
    );
    // HTTP/1.1 chunked.
    let r = post_chunked(&h, CONFIGMAPS, big_configmap("big2", TOO_BIG)).await?;
    status_of(&r, 413, "RequestEntityTooLarge");
    // HTTP/2.
    let r = send_json(
        &h,
        true,
        "POST",
        CONFIGMAPS,
        "application/json",
        big_configmap("big3", TOO_BIG),
    )
    .await?;
    status_of(&r, 413, "RequestEntityTooLarge");
    // An update that is too large changes nothing either.
    let r = send_json(
        &h,
        true,
        "POST",
        CONFIGMAPS,
        "application/json",
        big_configmap("small", 10),
    )
    .await?;
    assert_eq!(r.status, StatusCode::CREATED);
    let created_rv = r.json()["metadata"]["resourceVersion"].clone();
    let r = send_json(
        &h,
        true,
        "PUT",
        &format!("{CONFIGMAPS}/small"),
        "application/json",
        big_configmap("small", TOO_BIG),
    )
    .await?;
    status_of(&r, 413, "RequestEntityTooLarge");

    // Just under the limit is fine, chunked too.
    let r = post_chunked(
        &h,
        CONFIGMAPS,
        big_configmap("fits", 3 * 1024 * 1024 - 4096),
    )
    .await?;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );

    let mut names = configmap_names(&h).await?;
    names.sort();
    assert_eq!(names, ["fits", "small"]);
    let small = h
        .get(Some(&h.admin), &format!("{CONFIGMAPS}/small"))
        .await?;
    let small = small.json();
    assert_eq!(small["data"]["blob"], "x".repeat(10));
    assert_eq!(small["metadata"]["resourceVersion"], created_rv, "{small}");

    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn unknown_paths_and_resources_are_404() -> Result<()> {
    let h = Harness::start().await?;
    for path in [
        "/nope",
        "/api/v2",
        "/api/v1/nothings",
        "/api/v1/namespaces/default/nothings",
        "/apis/apps/v1/nothings",
        "/apis/apps/v1/namespaces/default/nothings",
        "/apis/nope.example.com/v1/things",
        "/api/v1/namespaces/default/configmaps/x/y/z",
    ] {
        let r = h.get(Some(&h.admin), path).await?;
        status_of(&r, 404, "NotFound");
    }
    // An object that does not exist.
    let r = h
        .get(Some(&h.admin), &format!("{CONFIGMAPS}/missing"))
        .await?;
    let v = status_of(&r, 404, "NotFound");
    assert_eq!(v["message"], "configmaps \"missing\" not found");
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn bad_requests_are_statuses_and_store_nothing() -> Result<()> {
    let h = Harness::start().await?;
    let cm =
        |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}});

    // Unsupported media type.
    let body = serde_json::to_vec(&cm("xml"))?;
    for ct in ["application/xml", "text/plain"] {
        let r = send_json(&h, false, "POST", CONFIGMAPS, ct, body.clone()).await?;
        status_of(&r, 415, "UnsupportedMediaType");
    }
    // Not JSON, not an object.
    let r = send_json(
        &h,
        false,
        "POST",
        CONFIGMAPS,
        "application/json",
        b"{not json".to_vec(),
    )
    .await?;
    status_of(&r, 400, "BadRequest");
    let r = send_json(
        &h,
        false,
        "POST",
        CONFIGMAPS,
        "application/json",
        b"[1,2]".to_vec(),
    )
    .await?;
    status_of(&r, 400, "BadRequest");

    // Wrong method.
    let r = send_json(
        &h,
        false,
        "PUT",
        CONFIGMAPS,
        "application/json",
        body.clone(),
    )
    .await?;
    status_of(&r, 405, "MethodNotAllowed");
    let r = send_json(
        &h,
        false,
        "POST",
        "/version",
        "application/json",
        body.clone(),
    )
    .await?;
    status_of(&r, 405, "MethodNotAllowed");
    let r = send_json(
        &h,
        false,
        "DELETE",
        "/api/v1",
        "application/json",
        Vec::new(),
    )
    .await?;
    status_of(&r, 405, "MethodNotAllowed");

    // kind / apiVersion mismatch.
    let mut wrong_kind = cm("kind");
    wrong_kind["kind"] = json!("Secret");
    let r = send_json(
        &h,
        false,
        "POST",
        CONFIGMAPS,
        "application/json",
        serde_json::to_vec(&wrong_kind)?,
    )
    .await?;
    let v = status_of(&r, 400, "BadRequest");
    assert!(
        v["message"].as_str().unwrap_or_default().contains("kind"),
        "{v}"
    );
    let mut wrong_version = cm("version");
    wrong_version["apiVersion"] = json!("apps/v1");
    let r = send_json(
        &h,
        false,
        "POST",
        CONFIGMAPS,
        "application/json",
        serde_json::to_vec(&wrong_version)?,
    )
    .await?;
    status_of(&r, 400, "BadRequest");

    // Namespace mismatch between URL and body.
    let mut other_ns = cm("elsewhere");
    other_ns["metadata"]["namespace"] = json!("kube-system");
    let r = send_json(
        &h,
        false,
        "POST",
        CONFIGMAPS,
        "application/json",
        serde_json::to_vec(&other_ns)?,
    )
    .await?;
    let v = status_of(&r, 400, "BadRequest");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("namespace"),
        "{v}"
    );

    // Name mismatch between URL and body on update (the object exists).
    let r = send_json(
        &h,
        false,
        "POST",
        CONFIGMAPS,
        "application/json",
        serde_json::to_vec(&cm("real"))?,
    )
    .await?;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = send_json(
        &h,
        false,
        "PUT",
        &format!("{CONFIGMAPS}/real"),
        "application/json",
        serde_json::to_vec(&cm("other"))?,
    )
    .await?;
    let v = status_of(&r, 400, "BadRequest");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("does not match the name"),
        "{v}"
    );

    // An unsupported field selector.
    let r = h
        .get(
            Some(&h.admin),
            &format!("{CONFIGMAPS}?fieldSelector=spec.nope%3Dx"),
        )
        .await?;
    let v = status_of(&r, 400, "BadRequest");
    assert_eq!(v["message"], "field label not supported: spec.nope");

    // Anonymous: 401 on resources (writes included), 200 on /healthz.
    let r = Reply::read(
        h.send(
            None,
            false,
            "POST",
            CONFIGMAPS,
            &[("content-type", "application/json")],
            serde_json::to_vec(&cm("anon"))?,
        )
        .await?,
    )
    .await?;
    status_of(&r, 401, "Unauthorized");
    status_of(&h.get(None, CONFIGMAPS).await?, 401, "Unauthorized");
    assert_eq!(h.get(None, "/healthz").await?.status, StatusCode::OK);

    // Only the one good create is stored, unchanged.
    assert_eq!(configmap_names(&h).await?, ["real"]);
    let real = h
        .get(Some(&h.admin), &format!("{CONFIGMAPS}/real"))
        .await?
        .json();
    assert_eq!(real["metadata"]["name"], "real");
    assert!(real.get("data").is_none(), "{real}");

    h.server.shutdown().await;
    Ok(())
}
