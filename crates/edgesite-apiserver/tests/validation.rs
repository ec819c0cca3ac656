//! Admission over HTTPS: objects come back defaulted, invalid ones get upstream's 422
//! `Invalid` Status with field causes and are never stored, immutable fields stay put, and
//! the real kubectl prints the familiar `is invalid:` message. Fails, never skips, when
//! kubectl is missing.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};

mod support;
use support::{Harness, kubectl};

/// One admin request with a JSON body; the status code and the decoded body.
async fn call(
    h: &Harness,
    method: &str,
    path: &str,
    ct: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    h.request(method, path, ct, body.as_ref()).await
}

async fn json_call(
    h: &Harness,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    call(h, method, path, "application/json", body).await
}

/// The `(field, reason)` pairs of a Status's causes.
fn causes(status: &Value) -> Vec<(String, String)> {
    status["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["field"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn cause(field: &str, reason: &str) -> (String, String) {
    (field.to_owned(), reason.to_owned())
}

fn bad_deployment() -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "x"}},
                              "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}})
}

#[tokio::test]
async fn minimal_pod_comes_back_defaulted() -> Result<()> {
    let h = Harness::start().await?;
    let pods = "/api/v1/namespaces/default/pods";
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}]}]}});
    let (code, created) = json_call(&h, "POST", pods, Some(pod)).await?;
    assert_eq!(code, 201, "{created}");
    let (code, got) = json_call(&h, "GET", &format!("{pods}/p"), None).await?;
    assert_eq!(code, 200);
    assert_eq!(got, created);
    let spec = &got["spec"];
    assert_eq!(spec["restartPolicy"], "Always");
    assert_eq!(spec["dnsPolicy"], "ClusterFirst");
    assert_eq!(spec["schedulerName"], "default-scheduler");
    assert_eq!(spec["terminationGracePeriodSeconds"], 30);
    assert_eq!(spec["enableServiceLinks"], true);
    let c = &spec["containers"][0];
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(c["terminationMessagePolicy"], "File");
    assert_eq!(c["ports"][0]["protocol"], "TCP");

    // A pod without containers is refused and not stored.
    let empty = json!({"metadata": {"name": "q"}, "spec": {"containers": []}});
    let (code, status) = json_call(&h, "POST", pods, Some(empty)).await?;
    assert_eq!(code, 422, "{status}");
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(
        status["message"],
        "Pod \"q\" is invalid: spec.containers: Required value"
    );
    assert_eq!(
        json_call(&h, "GET", &format!("{pods}/q"), None).await?.0,
        404
    );

    // Changing anything but the image is refused with upstream's pod-update message.
    let mut changed = got.clone();
    changed["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(81);
    let (code, status) = json_call(&h, "PUT", &format!("{pods}/p"), Some(changed)).await?;
    assert_eq!(code, 422, "{status}");
    assert_eq!(causes(&status), [cause("spec", "FieldValueForbidden")]);
    let (code, patched) = call(
        &h,
        "PATCH",
        &format!("{pods}/p"),
        "application/strategic-merge-patch+json",
        Some(json!({"spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}})),
    )
    .await?;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(patched["spec"]["containers"][0]["image"], "nginx:1.27");
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn invalid_deployment_is_refused_and_not_stored() -> Result<()> {
    let h = Harness::start().await?;
    let deploys = "/apis/apps/v1/namespaces/default/deployments";
    for path in [deploys.to_owned(), format!("{deploys}?dryRun=All")] {
        let (code, status) = json_call(&h, "POST", &path, Some(bad_deployment())).await?;
        assert_eq!(code, 422, "{status}");
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "Invalid");
        assert_eq!(status["details"]["name"], "web");
        assert_eq!(status["details"]["group"], "apps");
        assert_eq!(status["details"]["kind"], "Deployment");
        assert_eq!(
            causes(&status),
            [cause("spec.template.metadata.labels", "FieldValueInvalid")]
        );
        assert_eq!(
            status["message"],
            "Deployment.apps \"web\" is invalid: spec.template.metadata.labels: Invalid value: \
             map[string]string{\"app\":\"x\"}: `selector` does not match template `labels`"
        );
    }
    let (code, _) = json_call(&h, "GET", &format!("{deploys}/web"), None).await?;
    assert_eq!(code, 404);
    let (_, list) = json_call(&h, "GET", deploys, None).await?;
    assert_eq!(list["items"], json!([]));

    // Fixed, it is created with the Deployment defaults; its selector cannot change later.
    let mut good = bad_deployment();
    good["spec"]["template"]["metadata"]["labels"] = json!({"app": "web"});
    let (code, d) = json_call(&h, "POST", deploys, Some(good)).await?;
    assert_eq!(code, 201, "{d}");
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    let (code, status) = call(
        &h,
        "PATCH",
        &format!("{deploys}/web"),
        "application/merge-patch+json",
        Some(
            json!({"spec": {"selector": {"matchLabels": {"app": "other"}},
            "template": {"metadata": {"labels": {"app": "other"}}}}}),
        ),
    )
    .await?;
    assert_eq!(code, 422, "{status}");
    assert_eq!(
        causes(&status),
        [cause("spec.selector", "FieldValueInvalid")]
    );
    let (_, stored) = json_call(&h, "GET", &format!("{deploys}/web"), None).await?;
    assert_eq!(
        stored["spec"]["selector"],
        json!({"matchLabels": {"app": "web"}})
    );
    assert_eq!(
        stored["metadata"]["resourceVersion"],
        d["metadata"]["resourceVersion"]
    );
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn immutable_secret_data_cannot_change() -> Result<()> {
    let h = Harness::start().await?;
    let secrets = "/api/v1/namespaces/default/secrets";
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
        "immutable": true, "stringData": {"password": "hunter2"}});
    let (code, created) = json_call(&h, "POST", secrets, Some(secret)).await?;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["type"], "Opaque");
    assert_eq!(created["data"], json!({"password": "aHVudGVyMg=="}));
    assert!(created.get("stringData").is_none());

    let mut replaced = created.clone();
    replaced["data"] = json!({"password": "b3RoZXI="});
    let (code, status) = json_call(&h, "PUT", &format!("{secrets}/s"), Some(replaced)).await?;
    assert_eq!(code, 422, "{status}");
    assert_eq!(causes(&status), [cause("data", "FieldValueForbidden")]);
    assert_eq!(
        status["message"],
        "Secret \"s\" is invalid: data: Forbidden: field is immutable when `immutable` is set"
    );
    let (code, status) = call(
        &h,
        "PATCH",
        &format!("{secrets}/s"),
        "application/merge-patch+json",
        Some(json!({"immutable": false})),
    )
    .await?;
    assert_eq!(code, 422, "{status}");
    assert_eq!(causes(&status), [cause("immutable", "FieldValueForbidden")]);
    // Metadata may still change.
    let (code, labeled) = call(
        &h,
        "PATCH",
        &format!("{secrets}/s"),
        "application/merge-patch+json",
        Some(json!({"metadata": {"labels": {"a": "b"}}})),
    )
    .await?;
    assert_eq!(code, 200, "{labeled}");
    let (_, stored) = json_call(&h, "GET", &format!("{secrets}/s"), None).await?;
    assert_eq!(stored["data"], created["data"]);
    assert_eq!(stored["immutable"], true);
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn invalid_names_are_refused() -> Result<()> {
    let h = Harness::start().await?;
    let cms = "/api/v1/namespaces/default/configmaps";
    let (code, status) = json_call(
        &h,
        "POST",
        cms,
        Some(json!({"metadata": {"name": "Bad_Name"}, "data": {"bad key": "x"}})),
    )
    .await?;
    assert_eq!(code, 422, "{status}");
    assert_eq!(
        causes(&status),
        [
            cause("metadata.name", "FieldValueInvalid"),
            cause("data[bad key]", "FieldValueInvalid")
        ]
    );
    assert!(
        status["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("ConfigMap \"Bad_Name\" is invalid: [metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"),
        "{status}"
    );
    let (code, status) = json_call(
        &h,
        "POST",
        "/api/v1/namespaces",
        Some(json!({"metadata": {"name": "a.b"}})),
    )
    .await?;
    assert_eq!(code, 422, "{status}");
    assert_eq!(
        causes(&status),
        [cause("metadata.name", "FieldValueInvalid")]
    );
    let (code, status) = json_call(
        &h,
        "POST",
        "/api/v1/namespaces/default/services",
        Some(json!({"metadata": {"name": "1web"}, "spec": {"ports": [{"port": 80}]}})),
    )
    .await?;
    assert_eq!(code, 422, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or_default()
            .contains("a DNS-1035 label"),
        "{status}"
    );
    let (code, status) = json_call(
        &h,
        "POST",
        cms,
        Some(json!({"metadata": {"generateName": "Bad-"}})),
    )
    .await?;
    assert_eq!(code, 422, "{status}");
    assert!(
        causes(&status).contains(&cause("metadata.generateName", "FieldValueInvalid")),
        "{status}"
    );
    let (_, list) = json_call(&h, "GET", cms, None).await?;
    assert_eq!(list["items"], json!([]));
    let (_, ns) = json_call(&h, "GET", "/api/v1/namespaces/a.b", None).await?;
    assert_eq!(ns["reason"], "NotFound");

    // A namespace created through the API gets upstream's defaults.
    let (code, ns) = json_call(
        &h,
        "POST",
        "/api/v1/namespaces",
        Some(json!({"metadata": {"name": "team-a"}})),
    )
    .await?;
    assert_eq!(code, 201, "{ns}");
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
    assert_eq!(ns["status"]["phase"], "Active");
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "team-a"
    );
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn kubectl_prints_the_upstream_invalid_message() -> Result<()> {
    let h = Harness::start().await?;
    let home = tempfile::tempdir()?;
    let kc = h.server.kubeconfig_path().to_owned();
    let file = home.path().join("deploy.yaml");
    std::fs::write(
        &file,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector:\n    \
         matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: x\n    \
         spec:\n      containers:\n      - name: web\n        image: nginx:1.27\n",
    )?;
    let f = file.to_str().context("path")?;
    let out = kubectl(home.path(), &kc, &["create", "-f", f]).await?;
    ensure!(
        !out.status.success(),
        "kubectl create of an invalid Deployment succeeded"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "The Deployment \"web\" is invalid: spec.template.metadata.labels: Invalid value: \
             map[string]string{\"app\":\"x\"}: `selector` does not match template `labels`"
        ),
        "{stderr}"
    );
    let out = kubectl(home.path(), &kc, &["get", "deploy", "web"]).await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));

    // A minimal pod created by kubectl reads back defaulted.
    let out = kubectl(
        home.path(),
        &kc,
        &["run", "p", "--image=nginx:1.27", "--restart=Never"],
    )
    .await?;
    ensure!(out.status.success(), "kubectl run failed");
    let out = kubectl(
        home.path(),
        &kc,
        &[
            "get",
            "pod",
            "p",
            "-o",
            "jsonpath={.spec.containers[0].imagePullPolicy} {.spec.schedulerName}",
        ],
    )
    .await?;
    ensure!(out.status.success(), "kubectl get failed");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "IfNotPresent default-scheduler"
    );

    // What kubectl's generators send passes admission as upstream's does.
    for args in [
        &[
            "create",
            "deployment",
            "web",
            "--image=nginx:1.27",
            "--replicas=2",
        ][..],
        &[
            "expose",
            "deployment",
            "web",
            "--port=80",
            "--target-port=8080",
        ],
        &["create", "job", "once", "--image=busybox"],
        &[
            "create",
            "cronjob",
            "tick",
            "--image=busybox",
            "--schedule=*/5 * * * *",
        ],
        &["create", "service", "nodeport", "np", "--tcp=80:8080"],
        &["create", "secret", "generic", "s", "--from-literal=a=b"],
        &["create", "configmap", "c", "--from-literal=a=b"],
        &["create", "namespace", "team-a"],
    ] {
        let out = kubectl(home.path(), &kc, args).await?;
        ensure!(out.status.success(), "kubectl {} failed", args.join(" "));
    }
    let out = kubectl(
        home.path(),
        &kc,
        &[
            "get",
            "job",
            "once",
            "-o",
            "jsonpath={.spec.selector.matchLabels}",
        ],
    )
    .await?;
    let selector: Value = serde_json::from_slice(&out.stdout)?;
    assert!(
        selector["batch.kubernetes.io/controller-uid"].is_string(),
        "{selector}"
    );
    let out = kubectl(
        home.path(),
        &kc,
        &[
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={.spec.selector.app} {.spec.ports[0].protocol}",
        ],
    )
    .await?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "web TCP");
    // An edit that breaks two rules is refused; kubectl lists the causes.
    let out = kubectl(
        home.path(),
        &kc,
        &[
            "patch",
            "deployment",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"selector":{"matchLabels":{"app":"other"}}}}"#,
        ],
    )
    .await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("The Deployment \"web\" is invalid: \n")
            && stderr.contains(
                "* spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"other\"}, \
                 MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
            ),
        "{stderr}"
    );
    h.server.shutdown().await;
    Ok(())
}
