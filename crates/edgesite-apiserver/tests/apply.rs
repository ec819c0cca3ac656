//! Server-side apply over HTTPS: create by apply, idempotent re-apply, conflicts between
//! managers and `force`, pruning of a dropped label, managedFields of ordinary writes; then the
//! real kubectl (`apply --server-side`, pruning, `--force-conflicts`). Fails, never skips, when
//! kubectl is missing.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use anyhow::{Context as _, Result, ensure};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};

mod support;
use support::{Harness, kubectl};

const DEPLOYS: &str = "/apis/apps/v1/namespaces/default/deployments";
const CMS: &str = "/api/v1/namespaces/default/configmaps";
const APPLY: &str = "application/apply-patch+yaml";

async fn call(
    h: &Harness,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> Result<(u16, Value)> {
    let headers = [
        ("content-type", content_type),
        ("user-agent", "edgesite-test/1.0 (linux)"),
    ];
    let resp = h
        .send(
            Some(&h.admin),
            false,
            method,
            path,
            &headers,
            body.to_owned(),
        )
        .await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

fn deployment_yaml(labels: &[(&str, &str)], replicas: u32) -> String {
    let mut y =
        String::from("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels:\n");
    for (k, v) in labels {
        y.push_str(&format!("    {k}: {v}\n"));
    }
    y.push_str(&format!(
        "spec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n      - name: nginx\n        image: nginx:1.27\n        ports:\n        - containerPort: 80\n"
    ));
    y
}

fn managers(obj: &Value) -> Vec<(String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["manager"].as_str().unwrap_or_default().to_owned(),
                        e["operation"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn server_side_apply_over_https() -> Result<()> {
    let h = Harness::start().await?;
    let web = format!("{DEPLOYS}/web");

    // No fieldManager: rejected, nothing stored.
    let (code, status) = call(
        &h,
        "PATCH",
        &web,
        APPLY,
        &deployment_yaml(&[("app", "web")], 2),
    )
    .await?;
    assert_eq!(code, 422, "{status}");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("fieldManager: Required value")),
        "{status}"
    );
    let (code, _) = call(&h, "GET", &web, "", "").await?;
    assert_eq!(code, 404);

    // Create by apply (YAML body): 201, owned by the applier.
    let yaml = deployment_yaml(&[("app", "web"), ("tier", "front")], 2);
    let (code, created) = call(
        &h,
        "PATCH",
        &format!("{web}?fieldManager=alice"),
        APPLY,
        &yaml,
    )
    .await?;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["spec"]["replicas"], 2);
    assert_eq!(created["metadata"]["labels"]["tier"], "front");
    assert_eq!(
        managers(&created),
        [("alice".to_owned(), "Apply".to_owned())]
    );
    let fields = &created["metadata"]["managedFields"][0];
    assert_eq!(fields["fieldsType"], "FieldsV1");
    assert_eq!(fields["apiVersion"], "apps/v1");
    assert!(
        fields["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]
            .get("k:{\"name\":\"nginx\"}")
            .is_some(),
        "{fields}"
    );

    // Re-applying the same configuration changes nothing (whether the store is written anyway
    // is the update path's business).
    let (code, again) = call(
        &h,
        "PATCH",
        &format!("{web}?fieldManager=alice"),
        APPLY,
        &yaml,
    )
    .await?;
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["spec"], created["spec"]);
    assert_eq!(again["metadata"]["labels"], created["metadata"]["labels"]);
    assert_eq!(
        again["metadata"]["managedFields"],
        created["metadata"]["managedFields"]
    );
    assert_eq!(again["metadata"]["generation"], 1);

    // Bob wants other replicas: conflict with alice, nothing stored.
    let bob = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},"spec":{"replicas":5}}"#;
    let (code, status) = call(&h, "PATCH", &format!("{web}?fieldManager=bob"), APPLY, bob).await?;
    assert_eq!(code, 409, "{status}");
    assert_eq!(status["reason"], "Conflict");
    assert_eq!(
        status["message"],
        "Apply failed with 1 conflict: conflict with \"alice\": .spec.replicas"
    );
    assert_eq!(
        status["details"]["causes"],
        json!([{"reason": "FieldManagerConflict", "message": "conflict with \"alice\"", "field": ".spec.replicas"}])
    );
    let (_, live) = call(&h, "GET", &web, "", "").await?;
    assert_eq!(live["spec"]["replicas"], 2);

    // Same value: no conflict, shared ownership.
    let bob_same = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},"spec":{"replicas":2}}"#;
    let (code, shared) = call(
        &h,
        "PATCH",
        &format!("{web}?fieldManager=bob"),
        APPLY,
        bob_same,
    )
    .await?;
    assert_eq!(code, 200, "{shared}");
    assert_eq!(managers(&shared).len(), 2);

    // dryRun with force: answered, not stored.
    let (code, dry) = call(
        &h,
        "PATCH",
        &format!("{web}?fieldManager=bob&force=true&dryRun=All"),
        APPLY,
        bob,
    )
    .await?;
    assert_eq!(code, 200, "{dry}");
    assert_eq!(dry["spec"]["replicas"], 5);
    let (_, live) = call(&h, "GET", &web, "", "").await?;
    assert_eq!(live["spec"]["replicas"], 2);

    // force: bob takes replicas over.
    let (code, forced) = call(
        &h,
        "PATCH",
        &format!("{web}?fieldManager=bob&force=true"),
        APPLY,
        bob,
    )
    .await?;
    assert_eq!(code, 200, "{forced}");
    assert_eq!(forced["spec"]["replicas"], 5);
    assert_eq!(forced["metadata"]["generation"], 2);

    // Alice drops the tier label (and replicas, now bob's): the label is pruned, replicas stay.
    let mut dropped = deployment_yaml(&[("app", "web")], 2);
    dropped = dropped.replace("  replicas: 2\n", "");
    let (code, pruned) = call(
        &h,
        "PATCH",
        &format!("{web}?fieldManager=alice"),
        APPLY,
        &dropped,
    )
    .await?;
    assert_eq!(code, 200, "{pruned}");
    assert_eq!(pruned["metadata"]["labels"], json!({"app": "web"}));
    assert_eq!(pruned["spec"]["replicas"], 5);
    let (_, live) = call(&h, "GET", &web, "", "").await?;
    assert_eq!(live["metadata"]["labels"], json!({"app": "web"}));

    // A merge patch by another client: recorded as an Update of its manager, which then
    // conflicts with a re-apply.
    let (code, patched) = call(
        &h,
        "PATCH",
        &web,
        "application/merge-patch+json",
        r#"{"spec":{"replicas":7}}"#,
    )
    .await?;
    assert_eq!(code, 200, "{patched}");
    assert!(
        managers(&patched).contains(&("edgesite-test".to_owned(), "Update".to_owned())),
        "{:?}",
        managers(&patched)
    );
    let (code, status) = call(&h, "PATCH", &format!("{web}?fieldManager=bob"), APPLY, bob).await?;
    assert_eq!(code, 409, "{status}");
    assert_eq!(
        status["message"],
        "Apply failed with 1 conflict: conflict with \"edgesite-test\" using apps/v1: .spec.replicas"
    );

    // Errors of the configuration: a name that differs from the URL, a wrong kind.
    let (code, _) = call(
        &h,
        "PATCH",
        &format!("{web}?fieldManager=alice"),
        APPLY,
        r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"other"}}"#,
    )
    .await?;
    assert_eq!(code, 400);
    let (code, _) = call(
        &h,
        "PATCH",
        &format!("{web}?fieldManager=alice"),
        APPLY,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"web"}}"#,
    )
    .await?;
    assert_eq!(code, 400);

    // Apply through the status subresource (what kube-rs controllers do): only status
    // changes, recorded with the subresource.
    let (code, st) = call(
        &h,
        "PATCH",
        &format!("{web}/status?fieldManager=controller&force=true"),
        APPLY,
        r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},"spec":{"replicas":1},"status":{"replicas":3}}"#,
    )
    .await?;
    assert_eq!(code, 200, "{st}");
    assert_eq!(st["status"]["replicas"], 3);
    assert_eq!(st["spec"]["replicas"], 7);
    let entry = st["metadata"]["managedFields"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["manager"] == "controller"))
        .context("controller entry")?;
    assert_eq!(entry["subresource"], "status");
    assert_eq!(entry["fieldsV1"], json!({"f:status": {"f:replicas": {}}}));

    // A create records the creator (fieldManager parameter) as an Update.
    let (code, cm) = call(
        &h,
        "POST",
        &format!("{CMS}?fieldManager=kubectl-create"),
        "application/json",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"a":"1"}}"#,
    )
    .await?;
    assert_eq!(code, 201, "{cm}");
    assert_eq!(
        managers(&cm),
        [("kubectl-create".to_owned(), "Update".to_owned())]
    );
    assert_eq!(
        cm["metadata"]["managedFields"][0]["fieldsV1"],
        json!({"f:data": {".": {}, "f:a": {}}})
    );

    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn kubectl_apply_server_side() -> Result<()> {
    let h = Harness::start().await?;
    let home = tempfile::tempdir()?;
    let kc = h.server.kubeconfig_path().to_owned();
    let file = home.path().join("deploy.yaml");
    let file_s = file.to_str().context("path")?;

    std::fs::write(
        &file,
        deployment_yaml(&[("app", "web"), ("tier", "front")], 2),
    )?;
    let out = kubectl(home.path(), &kc, &["apply", "--server-side", "-f", file_s]).await?;
    ensure!(out.status.success(), "kubectl apply --server-side failed");
    assert_eq!(
        String::from_utf8(out.stdout)?.trim(),
        "deployment.apps/web serverside-applied"
    );

    // Drop a label from the file and re-apply: the label is gone from the live object.
    std::fs::write(&file, deployment_yaml(&[("app", "web")], 2))?;
    let out = kubectl(home.path(), &kc, &["apply", "--server-side", "-f", file_s]).await?;
    ensure!(out.status.success(), "second apply failed");
    let out = kubectl(home.path(), &kc, &["get", "deploy", "web", "-o", "json"]).await?;
    ensure!(out.status.success(), "kubectl get failed");
    let live: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(live["metadata"]["labels"], json!({"app": "web"}));

    // Another manager owns replicas now (kubectl patch): a plain apply of other replicas
    // conflicts, --force-conflicts takes the field.
    let out = kubectl(
        home.path(),
        &kc,
        &[
            "patch",
            "deploy",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":4}}"#,
        ],
    )
    .await?;
    ensure!(out.status.success(), "kubectl patch failed");
    std::fs::write(&file, deployment_yaml(&[("app", "web")], 3))?;
    let out = kubectl(home.path(), &kc, &["apply", "--server-side", "-f", file_s]).await?;
    ensure!(
        !out.status.success(),
        "apply over another manager's field must fail"
    );
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl-patch\" using apps/v1")
            && err.contains(".spec.replicas"),
        "{err}"
    );
    let out = kubectl(
        home.path(),
        &kc,
        &["apply", "--server-side", "--force-conflicts", "-f", file_s],
    )
    .await?;
    ensure!(out.status.success(), "apply --force-conflicts failed");
    let out = kubectl(home.path(), &kc, &["get", "deploy", "web", "-o", "json"]).await?;
    let live: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(live["spec"]["replicas"], 3);

    // An object created by client-side apply moves to server-side apply without conflicts,
    // and a label dropped afterwards is pruned.
    let csa = home.path().join("csa.yaml");
    let csa_s = csa.to_str().context("path")?;
    let csa_yaml = |labels: &[(&str, &str)], replicas| {
        deployment_yaml(labels, replicas).replace("name: web\n", "name: legacy\n")
    };
    std::fs::write(&csa, csa_yaml(&[("app", "web"), ("tier", "front")], 2))?;
    let out = kubectl(home.path(), &kc, &["apply", "-f", csa_s]).await?;
    ensure!(out.status.success(), "client-side apply failed");
    std::fs::write(&csa, csa_yaml(&[("app", "web"), ("tier", "front")], 3))?;
    let out = kubectl(home.path(), &kc, &["apply", "--server-side", "-f", csa_s]).await?;
    ensure!(
        out.status.success(),
        "server-side apply after client-side apply failed"
    );
    std::fs::write(&csa, csa_yaml(&[("app", "web")], 3))?;
    let out = kubectl(home.path(), &kc, &["apply", "--server-side", "-f", csa_s]).await?;
    ensure!(out.status.success(), "server-side re-apply failed");
    let out = kubectl(home.path(), &kc, &["get", "deploy", "legacy", "-o", "json"]).await?;
    let live: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(live["spec"]["replicas"], 3);
    assert_eq!(live["metadata"]["labels"], json!({"app": "web"}));

    h.server.shutdown().await;
    Ok(())
}
