//! Authentication and the endpoints about it, over HTTPS against the in-process server: static
//! bearer tokens next to client certificates, SelfSubjectAccessReview and SelfSubjectReview
//! (also through the real kubectl, which fails the test when missing), and `/metrics`.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use edgesite_store::{KeyRange, RangeRequest};
use http_body_util::BodyExt as _;
use hyper::StatusCode;
use hyper::body::Bytes;
use serde_json::{Value, json};

mod support;
use support::{Harness, Reply, kubectl};

const ADMIN_TOKEN: &str = "admin-token-0123456789";
const ALICE_TOKEN: &str = "alice-token-abcdef";

/// A server with a token file: an admin token in system:masters and alice in dev and ops.
async fn start() -> Result<Harness> {
    let tokens = tempfile::NamedTempFile::new()?;
    std::fs::write(
        tokens.path(),
        format!(
            "{ADMIN_TOKEN},token-admin,uid-admin,system:masters\n\n{ALICE_TOKEN},alice,uid-alice,\"dev,ops\"\n"
        ),
    )?;
    let path = tokens.path().to_owned();
    let h = Harness::start_with(|c| c.token_auth_file = Some(path)).await?;
    drop(tokens);
    Ok(h)
}

async fn with_token(
    h: &Harness,
    token: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> Result<Reply> {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    let bytes = if body.is_null() {
        Bytes::new()
    } else {
        headers.push(("content-type", "application/json"));
        Bytes::from(serde_json::to_vec(body)?)
    };
    Reply::read(h.send(None, false, method, path, &headers, bytes).await?).await
}

async fn with_cert(h: &Harness, method: &str, path: &str, body: &Value) -> Result<Reply> {
    let bytes = Bytes::from(serde_json::to_vec(body)?);
    Reply::read(
        h.send(
            Some(&h.admin),
            true,
            method,
            path,
            &[("content-type", "application/json")],
            bytes,
        )
        .await?,
    )
    .await
}

fn assert_status(r: &Reply, code: u16, reason: &str) {
    assert_eq!(
        r.status.as_u16(),
        code,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json();
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
}

#[tokio::test]
async fn bearer_tokens_and_certificates_both_authenticate() -> Result<()> {
    let h = start().await?;

    let r = with_token(&h, ADMIN_TOKEN, "GET", "/api/v1/namespaces", &Value::Null).await?;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["kind"], "NamespaceList");

    // The client certificate still works on the same server.
    let r = h.get(Some(&h.admin), "/api/v1/namespaces").await?;
    assert_eq!(r.status, StatusCode::OK);

    // A wrong token is 401, even for public paths (bad credentials are never anonymous).
    for path in ["/api/v1/namespaces", "/healthz"] {
        let r = with_token(&h, "not-a-token", "GET", path, &Value::Null).await?;
        assert_status(&r, 401, "Unauthorized");
        // A prefix of a real token is no better.
        let r = with_token(&h, &ADMIN_TOKEN[..10], "GET", path, &Value::Null).await?;
        assert_status(&r, 401, "Unauthorized");
    }

    // alice is authenticated but not in system:masters.
    let r = with_token(&h, ALICE_TOKEN, "GET", "/api/v1/namespaces", &Value::Null).await?;
    assert_status(&r, 403, "Forbidden");
    let r = with_token(&h, ALICE_TOKEN, "GET", "/version", &Value::Null).await?;
    assert_eq!(r.status, StatusCode::OK);

    // Anonymous: the public-info paths only.
    for path in ["/healthz", "/livez", "/readyz", "/version"] {
        assert_eq!(h.get(None, path).await?.status, StatusCode::OK, "{path}");
    }
    assert_status(&h.get(None, "/api/v1/pods").await?, 401, "Unauthorized");
    assert_status(&h.get(None, "/metrics").await?, 401, "Unauthorized");

    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_bad_token_file_stops_startup() -> Result<()> {
    let tokens = tempfile::NamedTempFile::new()?;
    std::fs::write(tokens.path(), "only-two,columns\n")?;
    let path = tokens.path().to_owned();
    let err = Harness::start_with(|c| c.token_auth_file = Some(path))
        .await
        .err()
        .context("startup must fail")?;
    let msg = format!("{err:#}");
    assert!(msg.contains("line 1"), "{msg}");
    Ok(())
}

#[tokio::test]
async fn self_subject_review_reports_the_user() -> Result<()> {
    let h = start().await?;
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    let path = "/apis/authentication.k8s.io/v1/selfsubjectreviews";

    let r = with_token(&h, ALICE_TOKEN, "POST", path, &review).await?;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json();
    assert_eq!(v["kind"], "SelfSubjectReview");
    assert_eq!(v["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(v["metadata"]["creationTimestamp"], Value::Null);
    let info = &v["status"]["userInfo"];
    assert_eq!(info["username"], "alice");
    assert_eq!(info["uid"], "uid-alice");
    assert_eq!(
        info["groups"],
        json!(["dev", "ops", "system:authenticated"])
    );

    let r = with_cert(&h, "POST", path, &review).await?;
    assert_eq!(r.status, StatusCode::CREATED);
    let info = &r.json()["status"]["userInfo"];
    assert_eq!(info["username"], "kubernetes-admin");
    assert_eq!(
        info["groups"],
        json!(["system:masters", "system:authenticated"])
    );

    // Anonymous requests cannot ask.
    let r = Reply::read(
        h.send(
            None,
            false,
            "POST",
            path,
            &[("content-type", "application/json")],
            serde_json::to_vec(&review)?,
        )
        .await?,
    )
    .await?;
    assert_status(&r, 401, "Unauthorized");

    // Only POST.
    let r = with_token(&h, ADMIN_TOKEN, "GET", path, &Value::Null).await?;
    assert_status(&r, 405, "MethodNotAllowed");
    // A mismatched kind is a 400.
    let r = with_token(&h, ALICE_TOKEN, "POST", path, &json!({"kind": "Pod"})).await?;
    assert_status(&r, 400, "BadRequest");

    assert_nothing_stored(&h, "/registry/authentication.k8s.io/").await?;
    h.server.shutdown().await;
    Ok(())
}

async fn assert_nothing_stored(h: &Harness, prefix: &str) -> Result<()> {
    let resp = h
        .server
        .store()
        .range(RangeRequest::new(KeyRange::Prefix(
            prefix.as_bytes().to_vec(),
        )))
        .await?;
    ensure!(
        resp.kvs.is_empty(),
        "reviews were stored under {prefix}: {:?}",
        resp.kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect::<Vec<_>>()
    );
    Ok(())
}

fn ssar_resource(verb: &str, resource: &str, namespace: &str) -> Value {
    json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"namespace": namespace, "verb": verb, "resource": resource}},
    })
}

#[tokio::test]
async fn self_subject_access_review_asks_the_authorizer() -> Result<()> {
    let h = start().await?;
    let path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";

    // The admin may do anything.
    let r = with_cert(
        &h,
        "POST",
        path,
        &ssar_resource("create", "pods", "default"),
    )
    .await?;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json();
    assert_eq!(v["kind"], "SelfSubjectAccessReview");
    assert_eq!(v["status"]["allowed"], true, "{v}");
    assert_eq!(v["spec"]["resourceAttributes"]["resource"], "pods");
    let r = with_token(
        &h,
        ADMIN_TOKEN,
        "POST",
        path,
        &ssar_resource("delete", "deployments", "kube-system"),
    )
    .await?;
    assert_eq!(r.json()["status"]["allowed"], true);

    // alice may not create pods, but may ask, and may read /healthz.
    let r = with_token(
        &h,
        ALICE_TOKEN,
        "POST",
        path,
        &ssar_resource("create", "pods", "default"),
    )
    .await?;
    assert_eq!(r.status, StatusCode::CREATED);
    let v = r.json();
    assert_eq!(v["status"]["allowed"], false, "{v}");
    assert!(v["status"].get("denied").is_none(), "{v}");
    let non_resource = json!({
        "kind": "SelfSubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "spec": {"nonResourceAttributes": {"path": "/healthz", "verb": "get"}},
    });
    let r = with_token(&h, ALICE_TOKEN, "POST", path, &non_resource).await?;
    assert_eq!(r.json()["status"]["allowed"], true);
    let mut metrics = non_resource.clone();
    metrics["spec"]["nonResourceAttributes"]["path"] = json!("/metrics");
    let r = with_token(&h, ALICE_TOKEN, "POST", path, &metrics).await?;
    assert_eq!(r.json()["status"]["allowed"], false);

    // Neither or both attribute kinds: 422.
    let r = with_cert(&h, "POST", path, &json!({"spec": {}})).await?;
    assert_status(&r, 422, "Invalid");
    let mut both = ssar_resource("get", "pods", "");
    both["spec"]["nonResourceAttributes"] = json!({"path": "/x", "verb": "get"});
    let r = with_cert(&h, "POST", path, &both).await?;
    assert_status(&r, 422, "Invalid");
    // Unsupported media type.
    let r = Reply::read(
        h.send(
            Some(&h.admin),
            false,
            "POST",
            path,
            &[("content-type", "text/plain")],
            "hello",
        )
        .await?,
    )
    .await?;
    assert_status(&r, 415, "UnsupportedMediaType");

    assert_nothing_stored(&h, "/registry/authorization.k8s.io/").await?;
    h.server.shutdown().await;
    Ok(())
}

/// A kubeconfig for `server` that authenticates with `token` alone (no client certificate).
fn token_kubeconfig(
    dir: &Path,
    url: &str,
    ca_pem: &str,
    token: &str,
) -> Result<std::path::PathBuf> {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let path = dir.join("token.kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: edge\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: tok\n  user:\n    token: {token}\ncontexts:\n- name: edge\n  context:\n    cluster: edge\n    user: tok\ncurrent-context: edge\n"
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

#[tokio::test]
async fn kubectl_auth_can_i_and_whoami() -> Result<()> {
    let h = start().await?;
    let home = tempfile::tempdir()?;
    let kc = h.server.kubeconfig_path().to_owned();

    let out = kubectl(home.path(), &kc, &["auth", "can-i", "create", "pods"]).await?;
    ensure!(out.status.success(), "kubectl auth can-i failed");
    assert_eq!(String::from_utf8(out.stdout)?.trim(), "yes");

    let out = kubectl(home.path(), &kc, &["auth", "whoami", "-o", "json"]).await?;
    ensure!(out.status.success(), "kubectl auth whoami failed");
    let v: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["status"]["userInfo"]["username"], "kubernetes-admin");

    // A token user: can-i answers no (exit status 1), whoami names alice.
    let alice = token_kubeconfig(home.path(), h.server.url(), &h.ca_pem, ALICE_TOKEN)?;
    let out = kubectl(home.path(), &alice, &["auth", "can-i", "create", "pods"]).await?;
    assert_eq!(String::from_utf8(out.stdout)?.trim(), "no");
    assert_eq!(out.status.code(), Some(1));
    let out = kubectl(home.path(), &alice, &["auth", "whoami"]).await?;
    ensure!(out.status.success(), "kubectl auth whoami as alice failed");
    let text = String::from_utf8(out.stdout)?;
    assert!(text.contains("alice"), "{text}");
    assert!(text.contains("uid-alice"), "{text}");
    assert!(text.contains("dev"), "{text}");

    h.server.shutdown().await;
    Ok(())
}

/// Parses a text exposition: every sample line is `name{labels} value` or `name value`.
fn parse_metrics(text: &str) -> Vec<(String, String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let labels = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels: {line}"));
                for pair in split_labels(labels) {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad pair {pair} in {line}"));
                    assert!(
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "bad label name in {line}"
                    );
                    assert!(
                        v.starts_with('"') && v.ends_with('"') && v.len() >= 2,
                        "bad label value in {line}"
                    );
                }
                (n, labels.to_owned())
            }
            None => (series, String::new()),
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        samples.push((name.to_owned(), labels, value));
    }
    samples
}

/// Splits `a="x",b="y,z"` at the commas between pairs.
fn split_labels(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

fn sample(samples: &[(String, String, f64)], name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|want| l.contains(want)))
        .map(|(_, _, v)| *v)
        .sum()
}

async fn scrape(h: &Harness) -> Result<Vec<(String, String, f64)>> {
    let r = h.get(Some(&h.admin), "/metrics").await?;
    ensure!(r.status == StatusCode::OK, "GET /metrics: {}", r.status);
    assert!(
        r.content_type.starts_with("text/plain"),
        "{}",
        r.content_type
    );
    Ok(parse_metrics(std::str::from_utf8(&r.body)?))
}

#[tokio::test]
async fn metrics_parse_and_move() -> Result<()> {
    let h = start().await?;
    // Leases: no other test in this binary touches them, so counts are exact under `cargo test`.
    let list_leases = ["verb=\"LIST\"", "resource=\"leases\"", "code=\"200\""];
    let before = scrape(&h).await?;
    let n0 = sample(&before, "apiserver_request_total", &list_leases);
    for _ in 0..3 {
        assert_eq!(
            h.get(
                Some(&h.admin),
                "/apis/coordination.k8s.io/v1/namespaces/default/leases"
            )
            .await?
            .status,
            StatusCode::OK
        );
    }
    let r = with_token(
        &h,
        ALICE_TOKEN,
        "GET",
        "/apis/coordination.k8s.io/v1/namespaces/default/leases",
        &Value::Null,
    )
    .await?;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Listing namespaces starts their watch cache, which apiserver_storage_objects reads.
    let r = h.get(Some(&h.admin), "/api/v1/namespaces").await?;
    assert_eq!(r.status, StatusCode::OK);
    let after = scrape(&h).await?;
    assert_eq!(
        sample(&after, "apiserver_request_total", &list_leases),
        n0 + 3.0
    );
    assert!(
        sample(
            &after,
            "apiserver_request_total",
            &["verb=\"LIST\"", "resource=\"leases\"", "code=\"403\""]
        ) >= 1.0
    );
    let count = sample(
        &after,
        "apiserver_request_duration_seconds_count",
        &["verb=\"LIST\"", "resource=\"leases\""],
    );
    let inf = sample(
        &after,
        "apiserver_request_duration_seconds_bucket",
        &["verb=\"LIST\"", "resource=\"leases\"", "le=\"+Inf\""],
    );
    assert!(count >= 4.0, "count {count}");
    assert_eq!(count, inf);
    // The namespaces cache holds the four seeded namespaces.
    assert_eq!(
        sample(
            &after,
            "apiserver_storage_objects",
            &["resource=\"namespaces\""]
        ),
        4.0
    );
    assert!(sample(&after, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(sample(&after, "process_cpu_seconds_total", &[]) > 0.0);
    let start = sample(&after, "process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    assert!(
        start > now - 3600.0 && start <= now + 1.0,
        "start {start}, now {now}"
    );

    // Authorized like other non-resource paths: alice is forbidden.
    let r = with_token(&h, ALICE_TOKEN, "GET", "/metrics", &Value::Null).await?;
    assert_status(&r, 403, "Forbidden");

    // An open watch counts as long-running until the client goes away.
    let watching = ["verb=\"WATCH\"", "resource=\"configmaps\""];
    let resp = h
        .send(
            Some(&h.admin),
            false,
            "GET",
            "/api/v1/namespaces/default/configmaps?watch=true",
            &[],
            Bytes::new(),
        )
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        sample(
            &scrape(&h).await?,
            "apiserver_longrunning_requests",
            &watching
        ),
        1.0
    );
    let mut body = resp.into_body();
    drop(tokio::time::timeout(Duration::from_millis(50), body.frame()).await);
    drop(body);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let open = sample(
            &scrape(&h).await?,
            "apiserver_longrunning_requests",
            &watching,
        );
        if open == 0.0 {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "watch still counted as open: {open}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    h.server.shutdown().await;
    Ok(())
}
