//! `/openapi/v3` over HTTPS, server-side field validation, strategic merge patch driven by the
//! OpenAPI schemas, and the real kubectl's `apply`, `create -f` and `explain`, which need them.
//! Fails, never skips, when kubectl is missing.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::process::Output;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use edgesite_apiserver::{IssuedCert, PkiOptions};
use hyper::StatusCode;
use hyper::body::Bytes;
use serde_json::{Value, json};

mod support;
use support::{Harness, Reply, kubectl};

/// A reply with its `Warning` and `Cache-Control` headers.
struct Full {
    reply: Reply,
    warnings: Vec<String>,
    cache_control: String,
}

async fn send(
    h: &Harness,
    cert: Option<&IssuedCert>,
    method: &str,
    path: &str,
    content_type: &str,
    body: &Value,
) -> Result<Full> {
    let headers: Vec<(&str, &str)> = if content_type.is_empty() {
        Vec::new()
    } else {
        vec![("content-type", content_type)]
    };
    let bytes = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(serde_json::to_vec(body)?)
    };
    let resp = h.send(cert, false, method, path, &headers, bytes).await?;
    let warnings = resp
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .collect();
    let cache_control = resp
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    Ok(Full {
        reply: Reply::read(resp).await?,
        warnings,
        cache_control,
    })
}

/// A container's ports as (containerPort, name), ignoring defaulted fields.
fn ports(container: &Value) -> Vec<(i64, Option<&str>)> {
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["containerPort"].as_i64().unwrap_or(-1),
                p["name"].as_str(),
            )
        })
        .collect()
}

fn deployment(extra_spec: Value) -> Value {
    let mut d = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [
                    {"name": "a", "image": "nginx:1", "ports": [{"containerPort": 80}]},
                    {"name": "b", "image": "busybox:1"}
                ]}
            }
        }
    });
    for (k, v) in extra_spec.as_object().into_iter().flatten() {
        d["spec"][k] = v.clone();
    }
    d
}

#[tokio::test]
async fn openapi_v3_endpoints_over_https() -> Result<()> {
    let h = Harness::start().await?;
    let admin = Some(&h.admin);

    let root = h.get(admin, "/openapi/v3").await?;
    assert_eq!(root.status, StatusCode::OK);
    assert_eq!(root.content_type, "application/json");
    let paths = root.json()["paths"].clone();
    let paths = paths.as_object().context("paths")?;
    for gv in [
        "api/v1",
        "apis/apps/v1",
        "apis/batch/v1",
        "apis/coordination.k8s.io/v1",
        "apis/discovery.k8s.io/v1",
        "apis/events.k8s.io/v1",
        "apis/authorization.k8s.io/v1",
        "apis/authentication.k8s.io/v1",
    ] {
        let url = paths[gv]["serverRelativeURL"]
            .as_str()
            .with_context(|| format!("{gv} listed"))?;
        assert!(url.starts_with(&format!("/openapi/v3/{gv}?hash=")), "{url}");
        let doc = send(&h, admin, "GET", url, "", &Value::Null).await?;
        assert_eq!(doc.reply.status, StatusCode::OK, "{url}");
        assert_eq!(doc.reply.content_type, "application/json");
        assert!(
            doc.cache_control.contains("immutable"),
            "{}",
            doc.cache_control
        );
        let body = doc.reply.json();
        assert_eq!(body["openapi"], "3.0.0");
        assert!(
            body["components"]["schemas"]["io.k8s.apimachinery.pkg.apis.meta.v1.Status"]
                .is_object()
        );
    }
    let apps = h.get(admin, "/openapi/v3/apis/apps/v1").await?.json();
    let patch = &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert_eq!(
        patch["x-kubernetes-group-version-kind"],
        json!({"group": "apps", "version": "v1", "kind": "Deployment"})
    );
    // Without the current hash the document must be revalidated.
    let unhashed = send(
        &h,
        admin,
        "GET",
        "/openapi/v3/apis/apps/v1?hash=old",
        "",
        &Value::Null,
    )
    .await?;
    assert_eq!(unhashed.reply.status, StatusCode::OK);
    assert!(
        unhashed.cache_control.contains("no-cache"),
        "{}",
        unhashed.cache_control
    );

    let missing = h.get(admin, "/openapi/v3/apis/policy/v1").await?;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["kind"], "Status");
    let v2 = h.get(admin, "/openapi/v2").await?;
    assert_eq!(v2.status, StatusCode::NOT_FOUND);
    assert_eq!(v2.json()["reason"], "NotFound");

    // Anonymous requests are refused; any authenticated user may read the documents.
    assert_eq!(
        h.get(None, "/openapi/v3").await?.status,
        StatusCode::UNAUTHORIZED
    );
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
    assert_eq!(
        h.get(Some(&bob), "/openapi/v3").await?.status,
        StatusCode::OK
    );
    assert_eq!(
        h.get(Some(&bob), "/openapi/v3/api/v1").await?.status,
        StatusCode::OK
    );
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn field_validation_strict_warn_and_ignore() -> Result<()> {
    let h = Harness::start().await?;
    let admin = Some(&h.admin);
    let coll = "/apis/apps/v1/namespaces/default/deployments";
    let item = "/apis/apps/v1/namespaces/default/deployments/web";
    let bad = deployment(json!({"foo": 1}));

    // Strict: 400, upstream's wording, nothing stored.
    let r = send(
        &h,
        admin,
        "POST",
        &format!("{coll}?fieldValidation=Strict"),
        "application/json",
        &bad,
    )
    .await?;
    assert_eq!(r.reply.status, StatusCode::BAD_REQUEST);
    let status = r.reply.json();
    assert_eq!(status["reason"], "BadRequest");
    assert_eq!(
        status["message"],
        r#"Deployment in version "v1" cannot be handled as a Deployment: strict decoding error: unknown field "spec.foo""#
    );
    assert_eq!(h.get(admin, item).await?.status, StatusCode::NOT_FOUND);

    // An unsupported directive is rejected.
    let r = send(
        &h,
        admin,
        "POST",
        &format!("{coll}?fieldValidation=Loose"),
        "application/json",
        &bad,
    )
    .await?;
    assert_eq!(r.reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(h.get(admin, item).await?.status, StatusCode::NOT_FOUND);

    // Default (Warn): stored without the field, one Warning header per unknown field.
    let r = send(&h, admin, "POST", coll, "application/json", &bad).await?;
    assert_eq!(r.reply.status, StatusCode::CREATED);
    assert_eq!(r.warnings, [r#"299 - "unknown field \"spec.foo\"""#]);
    assert!(r.reply.json()["spec"].get("foo").is_none());
    let stored = h.get(admin, item).await?.json();
    assert!(stored["spec"].get("foo").is_none(), "{stored}");
    assert_eq!(stored["spec"]["replicas"], 1);

    // Ignore on update: pruned silently.
    let mut upd = stored.clone();
    upd["spec"]["template"]["spec"]["containers"][0]["bogus"] = json!(true);
    let r = send(
        &h,
        admin,
        "PUT",
        &format!("{item}?fieldValidation=Ignore"),
        "application/json",
        &upd,
    )
    .await?;
    assert_eq!(r.reply.status, StatusCode::OK);
    assert!(r.warnings.is_empty());
    assert!(
        r.reply.json()["spec"]["template"]["spec"]["containers"][0]
            .get("bogus")
            .is_none()
    );

    // Strict update and patch are refused and change nothing.
    let r = send(
        &h,
        admin,
        "PUT",
        &format!("{item}?fieldValidation=Strict"),
        "application/json",
        &upd,
    )
    .await?;
    assert_eq!(r.reply.status, StatusCode::BAD_REQUEST);
    assert!(
        r.reply.json()["message"]
            .as_str()
            .unwrap_or_default()
            .ends_with(
                r#"strict decoding error: unknown field "spec.template.spec.containers[0].bogus""#
            )
    );
    let p = json!({"spec": {"paused": true, "bar": 1}});
    let r = send(
        &h,
        admin,
        "PATCH",
        &format!("{item}?fieldValidation=Strict"),
        "application/strategic-merge-patch+json",
        &p,
    )
    .await?;
    assert_eq!(r.reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.reply.json()["message"],
        r#"strict decoding error: unknown field "spec.bar""#
    );
    assert!(
        h.get(admin, item).await?.json()["spec"]
            .get("paused")
            .is_none()
    );

    // Strategic merge patch merges containers by name and their ports by containerPort,
    // from the OpenAPI schema.
    let p = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "b", "image": "busybox:2", "ports": [{"containerPort": 9090}]}
    ]}}}});
    let r = send(
        &h,
        admin,
        "PATCH",
        item,
        "application/strategic-merge-patch+json",
        &p,
    )
    .await?;
    assert_eq!(r.reply.status, StatusCode::OK, "{}", r.reply.json());
    let containers = r.reply.json()["spec"]["template"]["spec"]["containers"].clone();
    assert_eq!(containers[0]["name"], "a");
    assert_eq!(ports(&containers[0]), [(80, None)]);
    assert_eq!(containers[1]["image"], "busybox:2");
    assert_eq!(ports(&containers[1]), [(9090, None)]);
    h.server.shutdown().await;
    Ok(())
}

const DEPLOY_YAML: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 1
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx:IMAGE
        ports:
        - containerPort: 80
          name: http
        - containerPort: 443
          name: https
        env:
        - name: MODE
          value: prod
      - name: sidecar
        image: busybox:1.36
        command: [\"sleep\", \"infinity\"]
        ports:
        - containerPort: 9090
";

#[tokio::test]
async fn kubectl_apply_create_and_explain_use_openapi() -> Result<()> {
    let h = Harness::start().await?;
    let home = tempfile::tempdir()?;
    let kc = h.server.kubeconfig_path().to_owned();
    let k = |args: Vec<String>| {
        let (home, kc) = (home.path().to_owned(), kc.clone());
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kubectl(&home, &kc, &args).await
        }
    };
    let write = |name: &str, text: &str| -> Result<String> {
        let p = home.path().join(name);
        std::fs::write(&p, text)?;
        Ok(p.to_str().context("path")?.to_owned())
    };
    let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let ok = |out: &Output, what: &str| -> Result<String> {
        ensure!(
            out.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };

    // First apply creates, the second finds nothing to change.
    let f = write("deploy.yaml", &DEPLOY_YAML.replace("IMAGE", "1.27"))?;
    let out = ok(&k(s(&["apply", "-f", &f])).await?, "apply")?;
    assert!(out.contains("deployment.apps/web created"), "{out}");
    let out = ok(&k(s(&["apply", "-f", &f])).await?, "second apply")?;
    assert!(out.contains("deployment.apps/web unchanged"), "{out}");

    // A new image is a strategic merge patch keyed by container name: ports and env stay.
    let f2 = write("deploy2.yaml", &DEPLOY_YAML.replace("IMAGE", "1.28"))?;
    let out = ok(&k(s(&["apply", "-f", &f2])).await?, "apply changed image")?;
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let got: Value = serde_json::from_str(&ok(
        &k(s(&["get", "deploy", "web", "-o", "json"])).await?,
        "get",
    )?)?;
    let containers = &got["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers[0]["image"], "nginx:1.28");
    assert_eq!(
        ports(&containers[0]),
        [(80, Some("http")), (443, Some("https"))]
    );
    assert_eq!(
        containers[0]["env"],
        json!([{"name": "MODE", "value": "prod"}])
    );
    assert_eq!(ports(&containers[1]), [(9090, None)]);
    assert_eq!(got["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");

    // diff after an edit: a server-side dry run shows the change, exit code 1, and the live
    // object is unchanged; without an edit there is no diff (exit code 0).
    let before = ok(&k(s(&["get", "deploy", "web", "-o", "json"])).await?, "get")?;
    let f3 = write("deploy3.yaml", &DEPLOY_YAML.replace("IMAGE", "1.29"))?;
    let out = k(s(&["diff", "-f", &f3])).await?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "kubectl diff finds a difference"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("-        image: nginx:1.28") && text.contains("+        image: nginx:1.29"),
        "{text}"
    );
    let after = ok(&k(s(&["get", "deploy", "web", "-o", "json"])).await?, "get")?;
    let (before, after): (Value, Value) = (
        serde_json::from_str(&before)?,
        serde_json::from_str(&after)?,
    );
    assert_eq!(
        before["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );
    assert_eq!(
        after["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.28"
    );
    let out = k(s(&["diff", "-f", &f2])).await?;
    assert_eq!(out.status.code(), Some(0), "no diff for the applied file");

    // An unknown field is refused by the server (kubectl asks for Strict validation) and
    // nothing is stored.
    let bad = DEPLOY_YAML
        .replace("IMAGE", "1.27")
        .replace("name: web\n  labels", "name: bad\n  labels")
        .replace("  replicas: 2\n", "  replicas: 2\n  foo: bar\n");
    let fb = write("bad.yaml", &bad)?;
    let out = k(s(&["apply", "-f", &fb])).await?;
    assert!(!out.status.success(), "apply of an unknown field succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#"unknown field "spec.foo""#), "{err}");
    let out = k(s(&["get", "deploy", "bad"])).await?;
    assert!(!out.status.success(), "the bad deployment was stored");
    let out = k(s(&["create", "-f", &fb])).await?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(r#"unknown field "spec.foo""#),
        "create -f"
    );

    // create -f with default validation.
    let cm = write(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  a: b\n",
    )?;
    let out = ok(&k(s(&["create", "-f", &cm])).await?, "create -f")?;
    assert!(out.contains("configmap/settings created"), "{out}");

    // explain reads the field documentation from the OpenAPI documents.
    let out = ok(
        &k(s(&["explain", "deployment.spec.strategy"])).await?,
        "explain",
    )?;
    assert!(out.contains("KIND:") && out.contains("Deployment"), "{out}");
    assert!(out.contains("FIELD: strategy"), "{out}");
    assert!(
        out.contains("The deployment strategy to use to replace existing pods with new ones."),
        "{out}"
    );
    assert!(out.contains("rollingUpdate"), "{out}");
    h.server.shutdown().await;
    Ok(())
}
