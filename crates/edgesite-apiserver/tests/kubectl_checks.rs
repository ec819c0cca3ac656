//! The acceptance checks of `reference/k8s-api-compat.md` §6 that need no node, run with the
//! real kubectl (`/usr/bin/kubectl`, fresh `HOME` per test) against the in-process server:
//! 1 version, 2 api-resources, 3 aggregated discovery, 4 get ns, 6 cluster-info,
//! 16 `get pods -A --show-labels`, 17 `get all`, 18 label and field selectors, 21 `scale`,
//! 24 `get pods -w`, and the output formats (`-o yaml|json|jsonpath|custom-columns|wide`).
//! Fails, never skips, when kubectl is missing.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};

mod support;
use support::Harness;

const KUBECTL: &str = "/usr/bin/kubectl";

/// A test's kubectl: its own `HOME` (so no discovery cache is shared) and the admin
/// kubeconfig.
struct Kubectl {
    home: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn new(h: &Harness) -> Result<Self> {
        ensure!(Path::new(KUBECTL).exists(), "{KUBECTL} is missing");
        Ok(Self {
            home: tempfile::tempdir()?,
            kubeconfig: h.server.kubeconfig_path().to_owned(),
        })
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(KUBECTL);
        cmd.env("HOME", self.home.path())
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .kill_on_drop(true);
        cmd
    }

    async fn run(&self, args: &[&str]) -> Result<Output> {
        let out = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .with_context(|| format!("kubectl {} timed out", args.join(" ")))?
            .with_context(|| format!("cannot run {KUBECTL}"))?;
        println!(
            "$ kubectl {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    /// Runs kubectl and returns its stdout; fails if it failed.
    async fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args).await?;
        ensure!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// `kubectl create -f` of a JSON manifest.
    async fn create(&self, manifest: &Value) -> Result<String> {
        let file = self.home.path().join("manifest.json");
        std::fs::write(&file, serde_json::to_vec(manifest)?)?;
        self.ok(&["create", "-f", file.to_str().context("path")?])
            .await
    }
}

/// The whitespace-separated cells of each line of kubectl's table output.
fn rows(text: &str) -> Vec<Vec<&str>> {
    text.lines()
        .map(|l| l.split_whitespace().collect())
        .collect()
}

/// The row whose cell `col` is `value`.
fn row<'a>(text: &'a str, col: usize, value: &str) -> Option<Vec<&'a str>> {
    rows(text)
        .into_iter()
        .find(|r| r.get(col).copied() == Some(value))
}

fn pod(name: &str, namespace: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}]},
    })
}

fn deployment(name: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
            },
        },
    })
}

fn replicaset(name: &str, replicas: i64) -> Value {
    let mut rs = deployment(name, replicas);
    rs["kind"] = "ReplicaSet".into();
    rs
}

/// Checks 1, 2, 3, 4 and 6: version, api-resources, aggregated discovery, namespaces and
/// cluster-info.
#[tokio::test]
async fn discovery_and_cluster_checks() -> Result<()> {
    let h = Harness::start().await?;
    let k = Kubectl::new(&h)?;

    // 1: the server version (and the bundled kubectl 1.32 client).
    let s = k.ok(&["version"]).await?;
    assert!(s.contains("Server Version: v1.32."), "{s}");
    assert!(s.contains("Client Version: v1.32."), "{s}");

    // 1 and 3 as kubectl sees them: its User-Agent, and aggregated discovery answered with
    // the v2 type (a fresh HOME, so discovery is not cached).
    let fresh = Kubectl::new(&h)?;
    let out = fresh.run(&["get", "ns", "-v=8"]).await?;
    ensure!(out.status.success(), "kubectl get ns -v=8 failed");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("User-Agent: kubectl/v1.32."), "{log}");
    assert!(
        log.contains(
            "Content-Type: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        ),
        "{log}"
    );

    // 2: api-resources with short names, group versions and scope.
    let s = k.ok(&["api-resources"]).await?;
    let expect = [
        vec!["pods", "po", "v1", "true", "Pod"],
        vec!["namespaces", "ns", "v1", "false", "Namespace"],
        vec!["configmaps", "cm", "v1", "true", "ConfigMap"],
        vec!["services", "svc", "v1", "true", "Service"],
        vec!["deployments", "deploy", "apps/v1", "true", "Deployment"],
        vec!["replicasets", "rs", "apps/v1", "true", "ReplicaSet"],
        vec!["statefulsets", "sts", "apps/v1", "true", "StatefulSet"],
    ];
    for want in expect {
        assert_eq!(row(&s, 0, want[0]).as_ref(), Some(&want), "{s}");
    }
    let s = k
        .ok(&["api-resources", "--namespaced=false", "-o", "name"])
        .await?;
    assert!(s.lines().any(|l| l == "namespaces"), "{s}");
    assert!(!s.lines().any(|l| l == "pods"), "{s}");

    // 3: /apis with the aggregated discovery Accept answers the v2 type.
    let accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
    for path in ["/api", "/apis"] {
        let resp = support::Reply::read(
            h.send(
                Some(&h.admin),
                false,
                "GET",
                path,
                &[("accept", accept)],
                hyper::body::Bytes::new(),
            )
            .await?,
        )
        .await?;
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(
            resp.content_type,
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
            "{path}"
        );
        let body = resp.json();
        assert_eq!(body["kind"], "APIGroupDiscoveryList", "{path}");
        assert_eq!(body["apiVersion"], "apidiscovery.k8s.io/v2", "{path}");
    }
    // Without the aggregated type, the legacy documents.
    let resp = h.get(Some(&h.admin), "/apis").await?;
    assert_eq!(resp.json()["kind"], "APIGroupList");

    // 4: the built-in namespaces, all Active.
    let s = k.ok(&["get", "ns"]).await?;
    assert_eq!(rows(&s)[0][..2], ["NAME", "STATUS"], "{s}");
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let r = row(&s, 0, ns).with_context(|| format!("{ns} listed: {s}"))?;
        assert_eq!(r[1], "Active", "{s}");
    }
    assert_eq!(rows(&s).len(), 5, "{s}");

    // 6: cluster-info.
    let s = k.ok(&["cluster-info"]).await?;
    let url = h.server.url();
    assert!(
        s.contains("Kubernetes control plane") && s.contains("is running at") && s.contains(url),
        "{s}"
    );

    h.server.shutdown().await;
    Ok(())
}

/// Checks 16, 17 and 18, and the output formats.
#[tokio::test]
async fn listing_checks() -> Result<()> {
    let h = Harness::start().await?;
    let k = Kubectl::new(&h)?;
    k.create(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}))
        .await?;
    k.create(&pod(
        "web-1",
        "default",
        json!({"app": "web", "tier": "front"}),
    ))
    .await?;
    k.create(&pod("web-2", "default", json!({"app": "web"})))
        .await?;
    k.create(&pod("db-1", "default", json!({"app": "db"})))
        .await?;
    k.create(&pod("o-1", "other", json!({"app": "web"})))
        .await?;
    let s = k
        .create(&json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}], "type": "ClusterIP", "clusterIP": "10.43.0.10", "clusterIPs": ["10.43.0.10"]},
        }))
        .await?;
    assert!(s.contains("service/web created"), "{s}");
    let s = k.create(&deployment("web2", 2)).await?;
    assert!(s.contains("deployment.apps/web2 created"), "{s}");
    let s = k.create(&replicaset("web2-abc", 2)).await?;
    assert!(s.contains("replicaset.apps/web2-abc created"), "{s}");
    // Phases as the kubelet would report them (the status subresource).
    for (name, phase) in [
        ("web-1", "Running"),
        ("web-2", "Pending"),
        ("db-1", "Running"),
    ] {
        let patch = json!({"status": {"phase": phase, "podIP": "10.42.0.9"}}).to_string();
        k.ok(&[
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ])
        .await?;
    }

    // 16: all namespaces with labels.
    let s = k.ok(&["get", "pods", "-A", "--show-labels"]).await?;
    let head = rows(&s)[0].clone();
    assert_eq!(head.first(), Some(&"NAMESPACE"), "{s}");
    assert_eq!(head.last(), Some(&"LABELS"), "{s}");
    let r = row(&s, 1, "web-1").context("web-1 listed")?;
    assert_eq!(r[0], "default", "{s}");
    assert_eq!(r.last(), Some(&"app=web,tier=front"), "{s}");
    let r = row(&s, 1, "o-1").context("o-1 listed")?;
    assert_eq!(r[0], "other", "{s}");
    assert_eq!(r.last(), Some(&"app=web"), "{s}");

    // 17: get all.
    let s = k.ok(&["get", "all"]).await?;
    for name in [
        "pod/web-1",
        "pod/web-2",
        "pod/db-1",
        "service/web",
        "service/kubernetes",
        "deployment.apps/web2",
        "replicaset.apps/web2-abc",
    ] {
        assert!(
            s.lines().any(|l| l.split_whitespace().next() == Some(name)),
            "{name} missing from get all:\n{s}"
        );
    }
    assert!(!s.contains("pod/o-1"), "{s}");

    // 18: label plus field selector, -o name.
    let s = k
        .ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "--field-selector",
            "status.phase=Running",
            "-o",
            "name",
        ])
        .await?;
    assert_eq!(s.trim(), "pod/web-1");
    let s = k
        .ok(&[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "status.phase!=Running",
            "-o",
            "name",
        ])
        .await?;
    let mut names: Vec<&str> = s.lines().collect();
    names.sort_unstable();
    assert_eq!(names, ["pod/o-1", "pod/web-2"]);
    let out = k
        .run(&["get", "pods", "--field-selector", "spec.bogus=x"])
        .await?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("field label not supported"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Output formats.
    let s = k.ok(&["get", "pod", "web-1", "-o", "yaml"]).await?;
    let y: Value = serde_saphyr::from_str(&s)?;
    assert_eq!(y["metadata"]["labels"]["tier"], "front");
    assert_eq!(y["status"]["phase"], "Running");
    let s = k.ok(&["get", "pods", "-o", "json"]).await?;
    let j: Value = serde_json::from_str(&s)?;
    assert_eq!(j["kind"], "List");
    assert_eq!(j["items"].as_array().map(Vec::len), Some(3), "{j}");
    let s = k
        .ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.phase};{end}",
        ])
        .await?;
    assert_eq!(s, "web-1=Running;web-2=Pending;");
    let s = k
        .ok(&[
            "get",
            "pods",
            "-o",
            "custom-columns=NAME:.metadata.name,APP:.metadata.labels.app,IMAGE:.spec.containers[0].image",
            "--sort-by=.metadata.name",
        ])
        .await?;
    assert_eq!(
        rows(&s),
        [
            vec!["NAME", "APP", "IMAGE"],
            vec!["db-1", "db", "nginx:1.27"],
            vec!["web-1", "web", "nginx:1.27"],
            vec!["web-2", "web", "nginx:1.27"],
        ]
    );
    let s = k.ok(&["get", "pods", "-o", "wide"]).await?;
    let head = rows(&s)[0].clone();
    assert_eq!(
        head[..],
        [
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED",
            "NODE",
            "READINESS",
            "GATES"
        ]
    );
    let r = row(&s, 0, "web-1").context("web-1 in -o wide")?;
    assert_eq!(r[2], "Running", "{s}");
    assert!(r.contains(&"10.42.0.9"), "{s}");
    let s = k.ok(&["get", "deploy", "-o", "wide"]).await?;
    assert_eq!(
        rows(&s)[0][..],
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ]
    );
    let r = row(&s, 0, "web2").context("web2 in -o wide")?;
    assert_eq!(r[1], "0/2", "{s}");
    assert_eq!(r[5..], ["web", "nginx:1.27", "app=web2"], "{s}");

    h.server.shutdown().await;
    Ok(())
}

/// Check 21: `kubectl scale` through the scale subresource of deployments, replicasets and
/// statefulsets (no controller yet: `spec.replicas` is what changes).
#[tokio::test]
async fn scale_checks() -> Result<()> {
    let h = Harness::start().await?;
    let k = Kubectl::new(&h)?;
    k.create(&deployment("web2", 2)).await?;
    k.create(&replicaset("web2-abc", 2)).await?;
    let mut sts = deployment("db", 1);
    sts["kind"] = "StatefulSet".into();
    sts["spec"]["serviceName"] = "db".into();
    k.create(&sts).await?;

    let s = k.ok(&["scale", "deploy/web2", "--replicas=3"]).await?;
    assert!(s.contains("deployment.apps/web2 scaled"), "{s}");
    let s = k
        .ok(&["get", "deploy", "web2", "-o", "jsonpath={.spec.replicas}"])
        .await?;
    assert_eq!(s, "3");
    let s = k
        .ok(&["get", "deploy", "web2", "--subresource=scale", "-o", "json"])
        .await?;
    let scale: Value = serde_json::from_str(&s)?;
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["apiVersion"], "autoscaling/v1");
    assert_eq!(scale["spec"]["replicas"], 3);
    assert_eq!(scale["status"]["selector"], "app=web2");
    let s = k
        .ok(&["get", "deploy", "web2", "--subresource=scale"])
        .await?;
    assert_eq!(rows(&s)[0], ["NAME", "DESIRED", "AVAILABLE", "AGE"], "{s}");
    assert_eq!(rows(&s)[1][..3], ["web2", "3", "0"], "{s}");
    // A precondition on the current replicas: met, then not met.
    let s = k
        .ok(&[
            "scale",
            "deploy",
            "web2",
            "--current-replicas=3",
            "--replicas=1",
        ])
        .await?;
    assert!(s.contains("scaled"), "{s}");
    let out = k
        .run(&[
            "scale",
            "deploy",
            "web2",
            "--current-replicas=3",
            "--replicas=5",
        ])
        .await?;
    assert!(!out.status.success(), "a failed precondition must fail");

    let s = k.ok(&["scale", "rs/web2-abc", "--replicas=3"]).await?;
    assert!(s.contains("replicaset.apps/web2-abc scaled"), "{s}");
    let s = k.ok(&["get", "rs", "web2-abc"]).await?;
    assert_eq!(rows(&s)[0][..2], ["NAME", "DESIRED"], "{s}");
    assert_eq!(row(&s, 0, "web2-abc").context("rs listed")?[1], "3", "{s}");

    let s = k
        .ok(&["scale", "statefulset", "db", "--replicas=0"])
        .await?;
    assert!(s.contains("statefulset.apps/db scaled"), "{s}");
    let s = k
        .ok(&["get", "sts", "db", "-o", "jsonpath={.spec.replicas}"])
        .await?;
    assert_eq!(s, "0");

    // A scale of something without the subresource, or of a missing object.
    let out = k.run(&["scale", "deploy/missing", "--replicas=1"]).await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let resp = support::Reply::read(
        h.send(
            Some(&h.admin),
            false,
            "PUT",
            "/apis/apps/v1/namespaces/default/deployments/web2/scale",
            &[("content-type", "application/json")],
            r#"{"kind":"Scale","apiVersion":"autoscaling/v1","metadata":{"name":"web2"},"spec":{"replicas":-1}}"#,
        )
        .await?,
    )
    .await?;
    assert_eq!(resp.status, 422, "{}", String::from_utf8_lossy(&resp.body));
    let resp = h
        .get(
            Some(&h.admin),
            "/api/v1/namespaces/default/configmaps/x/scale",
        )
        .await?;
    assert_eq!(resp.status, 404);

    h.server.shutdown().await;
    Ok(())
}

/// Check 24: `kubectl get pods -w` prints a full row when another kubectl labels the pod, and
/// stays open.
#[tokio::test]
async fn watch_check() -> Result<()> {
    let h = Harness::start().await?;
    let k = Kubectl::new(&h)?;
    k.create(&pod("p", "default", json!({"app": "web"})))
        .await?;

    let mut child = k
        .command(&["get", "pods", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start kubectl get -w")?;
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut reader = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let collected = lines.clone();
    let reader_task = tokio::spawn(async move {
        while let Ok(Some(l)) = reader.next_line().await {
            println!("get -w: {l}");
            collected.lock().expect("lock").push(l);
        }
    });
    let wait_lines = |n: usize| {
        let lines = lines.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(20), async {
                while lines.lock().expect("lock").len() < n {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "expected {n} lines from get -w, got {:?}",
                    lines.lock().expect("lock")
                )
            })
        }
    };
    // The header and the existing pod.
    wait_lines(2).await?;
    {
        let l = lines.lock().expect("lock");
        assert_eq!(
            rows(&l.join("\n"))[..2],
            [
                vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
                vec![
                    "p",
                    "0/1",
                    "Pending",
                    "0",
                    l[1].split_whitespace().last().unwrap_or("")
                ]
            ]
        );
    }
    let s = k.ok(&["label", "pod", "p", "x=y"]).await?;
    assert!(s.contains("pod/p labeled"), "{s}");
    wait_lines(3).await?;
    {
        let l = lines.lock().expect("lock");
        let r: Vec<&str> = l[2].split_whitespace().collect();
        assert_eq!(r.len(), 5, "a full row: {:?}", l[2]);
        assert_eq!(r[..4], ["p", "0/1", "Pending", "0"], "{:?}", l[2]);
    }
    // A new pod is a new row too.
    k.create(&pod("q", "default", json!({}))).await?;
    wait_lines(4).await?;
    assert!(lines.lock().expect("lock")[3].starts_with("q "));

    // The watch stays open.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        child.try_wait()?.is_none(),
        "kubectl get -w exited: {:?}",
        lines.lock().expect("lock")
    );
    child.kill().await?;
    reader_task.abort();
    h.server.shutdown().await;
    Ok(())
}
