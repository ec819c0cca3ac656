//! Request body encodings over HTTPS: Kubernetes protobuf and YAML creates stored and read back
//! as JSON, malformed bodies rejected with 400 and nothing stored, unknown media types 415; and
//! the real kubectl 1.32, whose `create` subcommands send protobuf.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::path::Path;

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};

mod support;
use support::{Harness, Reply, kubectl};

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// A tiny protobuf writer for the test bodies.
#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn varint(mut self, v: u64) -> Self {
        let mut v = v;
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
        self
    }
    fn bytes(self, field: u32, b: &[u8]) -> Self {
        let mut s = self
            .varint(u64::from(field) << 3 | 2)
            .varint(b.len() as u64);
        s.0.extend_from_slice(b);
        s
    }
    fn str(self, field: u32, v: &str) -> Self {
        self.bytes(field, v.as_bytes())
    }
    fn msg(self, field: u32, m: Enc) -> Self {
        self.bytes(field, &m.0)
    }
    fn entry(self, field: u32, k: &str, v: &str) -> Self {
        self.msg(field, Enc::default().str(1, k).str(2, v))
    }
}

/// `k8s\0` + runtime.Unknown{typeMeta, raw}.
fn envelope(api_version: &str, kind: &str, raw: Enc) -> Vec<u8> {
    let mut out = b"k8s\0".to_vec();
    let unknown = Enc::default()
        .msg(1, Enc::default().str(1, api_version).str(2, kind))
        .msg(2, raw);
    out.extend_from_slice(&unknown.0);
    out
}

/// ObjectMeta as Go writes it: the empty non-pointer strings are on the wire too.
fn meta(name: &str, namespace: &str) -> Enc {
    Enc::default()
        .str(1, name)
        .str(2, "")
        .str(3, namespace)
        .str(5, "")
        .str(6, "")
        .msg(8, Enc::default())
}

impl Harness {
    async fn post(&self, path: &str, content_type: &str, body: Vec<u8>) -> Result<Reply> {
        let headers = [
            ("content-type", content_type),
            ("accept", "application/json"),
        ];
        Reply::read(
            self.send(Some(&self.admin), false, "POST", path, &headers, body)
                .await?,
        )
        .await
    }

    async fn admin_get(&self, path: &str) -> Result<Reply> {
        self.get(Some(&self.admin), path).await
    }

    async fn count(&self, path: &str) -> Result<usize> {
        let r = self.admin_get(path).await?;
        ensure!(r.status == 200, "list {path}: {}", r.status);
        Ok(r.json()["items"].as_array().context("items")?.len())
    }
}

#[tokio::test]
async fn protobuf_creates_are_stored_and_read_back_as_json() -> Result<()> {
    let h = Harness::start().await?;

    let ns = envelope("v1", "Namespace", Enc::default().msg(1, meta("pb", "")));
    let r = h.post("/api/v1/namespaces", PROTOBUF, ns).await?;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.content_type.starts_with("application/json"),
        "{}",
        r.content_type
    );
    let got = h.admin_get("/api/v1/namespaces/pb").await?;
    assert_eq!(got.status, 200);
    let ns = got.json();
    assert_eq!(ns["kind"], "Namespace");
    assert_eq!(ns["metadata"]["name"], "pb");
    // The empty strings of the Go encoder did not turn into fields.
    assert!(ns["metadata"].get("generateName").is_none(), "{ns}");

    let cm = Enc::default()
        .msg(1, meta("cm", "pb").entry(11, "app", "demo"))
        .entry(2, "a", "b")
        .entry(2, "c", "");
    let r = h
        .post(
            "/api/v1/namespaces/pb/configmaps",
            PROTOBUF,
            envelope("v1", "ConfigMap", cm),
        )
        .await?;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let got = h.admin_get("/api/v1/namespaces/pb/configmaps/cm").await?;
    assert_eq!(got.status, 200);
    let cm = got.json();
    assert_eq!(cm["apiVersion"], "v1");
    assert_eq!(cm["data"], json!({"a": "b", "c": ""}));
    assert_eq!(cm["metadata"]["labels"], json!({"app": "demo"}));
    assert_eq!(cm["metadata"]["namespace"], "pb");
    assert!(cm["metadata"]["uid"].is_string());

    // Secret data bytes arrive base64-encoded.
    let secret = Enc::default()
        .msg(1, meta("s", "pb"))
        .msg(2, Enc::default().str(1, "p").bytes(2, b"x"))
        .str(3, "Opaque");
    let r = h
        .post(
            "/api/v1/namespaces/pb/secrets",
            PROTOBUF,
            envelope("v1", "Secret", secret),
        )
        .await?;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let s = h.admin_get("/api/v1/namespaces/pb/secrets/s").await?.json();
    assert_eq!(s["data"], json!({"p": "eA=="}));

    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn yaml_creates_are_stored() -> Result<()> {
    let h = Harness::start().await?;
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\n  labels: {tier: web}\ndata:\n  key: |\n    line one\n    line two\n";
    let r = h
        .post(
            "/api/v1/namespaces/default/configmaps",
            "application/yaml",
            yaml.into(),
        )
        .await?;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let cm = h
        .admin_get("/api/v1/namespaces/default/configmaps/from-yaml")
        .await?
        .json();
    assert_eq!(cm["data"]["key"], "line one\nline two\n");
    assert_eq!(cm["metadata"]["labels"]["tier"], "web");
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn malformed_bodies_are_400_and_store_nothing() -> Result<()> {
    let h = Harness::start().await?;
    let cms = "/api/v1/namespaces/default/configmaps";
    let before = h.count(cms).await?;

    let good = envelope(
        "v1",
        "ConfigMap",
        Enc::default()
            .msg(1, meta("bad", "default"))
            .entry(2, "a", "b"),
    );
    let mut bad_magic = good.clone();
    bad_magic[0] = b'K';
    let truncated = good[..good.len() - 3].to_vec();
    let mut long = b"k8s\0".to_vec();
    long.extend_from_slice(&[0x12, 0x7f, 0x0a]);
    let unknown_kind = envelope("v1", "Gizmo", Enc::default().msg(1, meta("bad", "")));
    let wrong_wire = envelope("v1", "ConfigMap", Enc::default().varint(1 << 3).varint(5));

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "application/json",
            br#"{"metadata": {"name": "bad""#.to_vec(),
            "not valid JSON",
        ),
        (
            "application/json",
            b"[1, 2]".to_vec(),
            "must be a JSON object",
        ),
        (
            "application/yaml",
            b"metadata: {name: bad\n".to_vec(),
            "not valid YAML",
        ),
        (
            "application/yaml",
            b"metadata: {name: bad}\n---\nmetadata: {name: bad2}\n".to_vec(),
            "2 documents",
        ),
        (PROTOBUF, bad_magic, "magic"),
        (PROTOBUF, truncated, "malformed protobuf"),
        (PROTOBUF, long, "past the end"),
        (PROTOBUF, unknown_kind, "no protobuf schema"),
        (PROTOBUF, wrong_wire, "expected wire type"),
    ];
    for (ct, body, want) in cases {
        let r = h.post(cms, ct, body).await?;
        let s = r.json();
        assert_eq!(r.status, 400, "{ct}: {s}");
        assert_eq!(s["kind"], "Status");
        assert_eq!(s["reason"], "BadRequest", "{s}");
        let msg = s["message"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "{ct}: {msg:?} lacks {want:?}");
    }
    assert_eq!(h.count(cms).await?, before, "nothing was stored");
    assert_eq!(h.admin_get(&format!("{cms}/bad")).await?.status, 404);

    let r = h.post(cms, "text/plain", b"{}".to_vec()).await?;
    let s = r.json();
    assert_eq!(r.status, 415, "{s}");
    assert_eq!(s["reason"], "UnsupportedMediaType");
    let msg = s["message"].as_str().unwrap_or_default();
    for ct in ["application/json", "application/yaml", PROTOBUF] {
        assert!(msg.contains(ct), "{msg}");
    }
    h.server.shutdown().await;
    Ok(())
}

async fn kubectl_ok(home: &Path, kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let out = kubectl(home, kubeconfig, args).await?;
    ensure!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn kubectl_create_sends_protobuf_that_is_stored() -> Result<()> {
    let h = Harness::start().await?;
    let home = tempfile::tempdir()?;
    let kc = h.server.kubeconfig_path().to_owned();
    let k = |args: &'static [&'static str]| {
        let home = home.path().to_owned();
        let kc = kc.clone();
        async move { kubectl_ok(&home, &kc, args).await }
    };

    k(&["create", "namespace", "demo"]).await?;
    let ns = h.admin_get("/api/v1/namespaces/demo").await?;
    assert_eq!(ns.status, 200);

    // -v=8 shows the request headers: the body really is protobuf.
    let out = kubectl(
        home.path(),
        &kc,
        &[
            "-n",
            "demo",
            "create",
            "configmap",
            "cm",
            "--from-literal=a=b",
            "-v=8",
        ],
    )
    .await?;
    ensure!(out.status.success(), "kubectl create configmap failed");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("Content-Type: application/vnd.kubernetes.protobuf"),
        "kubectl did not send protobuf"
    );
    let a = k(&["-n", "demo", "get", "cm", "cm", "-o", "jsonpath={.data.a}"]).await?;
    assert_eq!(a, "b");

    k(&[
        "-n",
        "demo",
        "create",
        "secret",
        "generic",
        "s",
        "--from-literal=p=x",
    ])
    .await?;
    let p = k(&[
        "-n",
        "demo",
        "get",
        "secret",
        "s",
        "-o",
        "jsonpath={.data.p}",
    ])
    .await?;
    assert_eq!(p, "eA==");

    k(&[
        "-n",
        "demo",
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=2",
    ])
    .await?;
    let d = h
        .admin_get("/apis/apps/v1/namespaces/demo/deployments/web")
        .await?;
    assert_eq!(d.status, 200);
    let d = d.json();
    assert_eq!(d["spec"]["replicas"], 2, "{d}");
    assert_eq!(d["spec"]["selector"]["matchLabels"], json!({"app": "web"}));
    assert_eq!(
        d["spec"]["template"]["metadata"]["labels"],
        json!({"app": "web"})
    );
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["name"], "nginx", "{d}");
    assert_eq!(c["image"], "nginx");
    assert!(
        d["metadata"]
            .get("creationTimestamp")
            .is_some_and(Value::is_string)
    );

    // replicas is a pointer in Go: an explicit 0 on the wire stays 0 (no defaulting to 1).
    k(&[
        "-n",
        "demo",
        "create",
        "deployment",
        "idle",
        "--image=nginx",
        "--replicas=0",
    ])
    .await?;
    let d = h
        .admin_get("/apis/apps/v1/namespaces/demo/deployments/idle")
        .await?
        .json();
    assert_eq!(d["spec"]["replicas"], 0, "{d}");

    k(&[
        "-n",
        "demo",
        "create",
        "cronjob",
        "tick",
        "--image=busybox",
        "--schedule=*/5 * * * *",
    ])
    .await?;
    let c = h
        .admin_get("/apis/batch/v1/namespaces/demo/cronjobs/tick")
        .await?
        .json();
    assert_eq!(c["spec"]["schedule"], "*/5 * * * *", "{c}");
    let image = &c["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"];
    assert_eq!(image, "busybox", "{c}");

    k(&[
        "-n",
        "demo",
        "create",
        "job",
        "once",
        "--image=busybox",
        "--",
        "true",
    ])
    .await?;
    let j = h
        .admin_get("/apis/batch/v1/namespaces/demo/jobs/once")
        .await?;
    assert_eq!(j.status, 200);
    let j = j.json();
    let c = &j["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "busybox", "{j}");
    assert_eq!(c["command"], json!(["true"]), "{j}");
    assert_eq!(
        j["spec"]["template"]["spec"]["restartPolicy"], "Never",
        "{j}"
    );

    k(&[
        "-n",
        "demo",
        "create",
        "service",
        "clusterip",
        "web",
        "--tcp=80:8080",
    ])
    .await?;
    let s = h.admin_get("/api/v1/namespaces/demo/services/web").await?;
    assert_eq!(s.status, 200);
    let s = s.json();
    let port = &s["spec"]["ports"][0];
    assert_eq!(port["port"], 80, "{s}");
    assert_eq!(port["targetPort"], 8080, "{s}");
    assert_eq!(s["spec"]["selector"], json!({"app": "web"}), "{s}");

    // SelfSubjectAccessReview and SelfSubjectReview bodies are protobuf too.
    let can = k(&["-n", "demo", "auth", "can-i", "create", "deployments"]).await?;
    assert_eq!(can.trim(), "yes");
    let who = k(&["auth", "whoami", "-o", "json"]).await?;
    let who: Value = serde_json::from_str(&who)?;
    assert_eq!(who["kind"], "SelfSubjectReview", "{who}");
    assert!(who["status"]["userInfo"]["username"].is_string(), "{who}");

    h.server.shutdown().await;
    Ok(())
}
