//! Deletion semantics and the namespace lifecycle, without controllers: DeleteOptions
//! (propagation, grace, preconditions, dry run), the DELETE responses, graceful deletion of
//! bound pods, `deletecollection`, namespace termination, `finalize`, and the
//! NamespaceLifecycle admission on create.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use anyhow::Result;
use hyper::StatusCode;
use hyper::body::Bytes;
use serde_json::{Value, json};

mod support;
use support::Harness;

async fn call(
    h: &Harness,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(StatusCode, Value)> {
    let (code, v) = h
        .request(method, path, "application/json", body.as_ref())
        .await?;
    // Every answer is JSON (an object or a Status).
    anyhow::ensure!(!v.is_null(), "{method} {path}: the answer is not JSON");
    Ok((StatusCode::from_u16(code)?, v))
}

async fn create(h: &Harness, path: &str, obj: Value) -> Result<Value> {
    let (s, v) = call(h, "POST", path, Some(obj)).await?;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    Ok(v)
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";
const PODS: &str = "/api/v1/namespaces/default/pods";

fn pod(name: &str, node: Option<&str>) -> Value {
    let mut spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    json!({"metadata": {"name": name}, "spec": spec})
}

#[tokio::test]
async fn delete_answers_status_or_object_as_upstream() -> Result<()> {
    let h = Harness::start().await?;
    let cm = create(&h, CMS, json!({"metadata": {"name": "a"}})).await?;
    let (s, v) = call(&h, "DELETE", &format!("{CMS}/a"), None).await?;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["status"], "Success");
    assert_eq!(
        v["details"],
        json!({"name": "a", "group": "", "kind": "configmaps", "uid": cm["metadata"]["uid"]})
    );
    let (s, _) = call(&h, "GET", &format!("{CMS}/a"), None).await?;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = call(&h, "DELETE", &format!("{CMS}/a"), None).await?;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    // Pods answer with the deleted object (ReturnDeletedObject).
    create(&h, PODS, pod("p", None)).await?;
    let (s, v) = call(&h, "DELETE", &format!("{PODS}/p"), None).await?;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["kind"], "Pod", "{v}");
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn delete_options_preconditions_dry_run_and_validation() -> Result<()> {
    let h = Harness::start().await?;
    let cm = create(&h, CMS, json!({"metadata": {"name": "b"}})).await?;
    let path = format!("{CMS}/b");
    let (s, v) = call(
        &h,
        "DELETE",
        &path,
        Some(json!({"preconditions": {"uid": "00000000-0000-0000-0000-000000000000"}})),
    )
    .await?;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("Precondition failed: UID"),
        "{v}"
    );
    let (s, v) = call(
        &h,
        "DELETE",
        &path,
        Some(json!({"propagationPolicy": "Sideways"})),
    )
    .await?;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = call(
        &h,
        "DELETE",
        &path,
        Some(json!({"propagationPolicy": "Orphan", "orphanDependents": true})),
    )
    .await?;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, _) = call(&h, "DELETE", &format!("{path}?dryRun=All"), None).await?;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&h, "GET", &path, None).await?;
    assert_eq!(s, StatusCode::OK, "dry run deleted nothing");
    let (s, v) = call(
        &h,
        "DELETE",
        &path,
        Some(json!({"preconditions": {"uid": cm["metadata"]["uid"], "resourceVersion": cm["metadata"]["resourceVersion"]}})),
    )
    .await?;
    assert_eq!(s, StatusCode::OK, "{v}");
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn propagation_policies_set_gc_finalizers() -> Result<()> {
    let h = Harness::start().await?;
    for (name, policy, finalizer) in [
        ("fg", "Foreground", "foregroundDeletion"),
        ("or", "Orphan", "orphan"),
    ] {
        create(&h, CMS, json!({"metadata": {"name": name}})).await?;
        let path = format!("{CMS}/{name}");
        let (s, v) = call(
            &h,
            "DELETE",
            &path,
            Some(json!({"propagationPolicy": policy})),
        )
        .await?;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            v["kind"], "ConfigMap",
            "the lingering object, not a Status: {v}"
        );
        assert_eq!(v["metadata"]["finalizers"], json!([finalizer]));
        assert!(v["metadata"]["deletionTimestamp"].is_string());
        assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], 0);
        // Deleting again with Background drops the GC finalizer, so it goes.
        let (s, v) = call(
            &h,
            "DELETE",
            &path,
            Some(json!({"propagationPolicy": "Background"})),
        )
        .await?;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, _) = call(&h, "GET", &path, None).await?;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
    // A user finalizer keeps the object until an update removes it.
    create(
        &h,
        CMS,
        json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
    )
    .await?;
    let path = format!("{CMS}/held");
    let (s, v) = call(&h, "DELETE", &path, None).await?;
    assert_eq!(s, StatusCode::OK);
    assert!(v["metadata"]["deletionTimestamp"].is_string(), "{v}");
    let (s, v) = call(&h, "GET", &path, None).await?;
    assert_eq!(s, StatusCode::OK, "{v}");
    let resp = h
        .send(
            Some(&h.admin),
            false,
            "PATCH",
            &path,
            &[("content-type", "application/merge-patch+json")],
            Bytes::from(r#"{"metadata":{"finalizers":null}}"#),
        )
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let (s, _) = call(&h, "GET", &path, None).await?;
    assert_eq!(s, StatusCode::NOT_FOUND);
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn bound_pods_are_deleted_gracefully() -> Result<()> {
    let h = Harness::start().await?;
    create(&h, PODS, pod("bound", Some("node-1"))).await?;
    let path = format!("{PODS}/bound");
    let (s, v) = call(&h, "DELETE", &path, Some(json!({"gracePeriodSeconds": 20}))).await?;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], 20, "{v}");
    assert!(v["metadata"]["deletionTimestamp"].is_string());
    let (s, v) = call(&h, "GET", &path, None).await?;
    assert_eq!(
        s,
        StatusCode::OK,
        "still there while the node stops it: {v}"
    );
    // A longer grace period changes nothing; a shorter one shortens it.
    let (_, v) = call(&h, "DELETE", &path, Some(json!({"gracePeriodSeconds": 60}))).await?;
    assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], 20);
    let (_, v) = call(&h, "DELETE", &path, Some(json!({"gracePeriodSeconds": 5}))).await?;
    assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], 5);
    // The node removes it with grace 0.
    let (s, v) = call(&h, "DELETE", &path, Some(json!({"gracePeriodSeconds": 0}))).await?;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = call(&h, "GET", &path, None).await?;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Query parameters work as well as a body.
    create(&h, PODS, pod("bound2", Some("node-1"))).await?;
    let (s, _) = call(
        &h,
        "DELETE",
        &format!("{PODS}/bound2?gracePeriodSeconds=0"),
        None,
    )
    .await?;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&h, "GET", &format!("{PODS}/bound2"), None).await?;
    assert_eq!(s, StatusCode::NOT_FOUND);
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn deletecollection_honours_selectors() -> Result<()> {
    let h = Harness::start().await?;
    for (name, app) in [("x1", "x"), ("x2", "x"), ("y1", "y")] {
        create(
            &h,
            CMS,
            json!({"metadata": {"name": name, "labels": {"app": app}}}),
        )
        .await?;
    }
    let (s, v) = call(&h, "DELETE", &format!("{CMS}?labelSelector=app%3Dx"), None).await?;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["kind"], "ConfigMapList");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(2), "{v}");
    let (_, list) = call(&h, "GET", CMS, None).await?;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["y1"]);
    // Namespaces have no deletecollection.
    let (s, _) = call(&h, "DELETE", "/api/v1/namespaces", None).await?;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn namespace_lifecycle_without_controller() -> Result<()> {
    let h = Harness::start().await?;
    // Creating in a namespace that does not exist.
    let (s, v) = call(
        &h,
        "POST",
        "/api/v1/namespaces/nope/configmaps",
        Some(json!({"metadata": {"name": "c"}})),
    )
    .await?;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["message"], "namespaces \"nope\" not found");

    create(
        &h,
        "/api/v1/namespaces",
        json!({"metadata": {"name": "demo"}, "spec": {"finalizers": ["kubernetes"]}}),
    )
    .await?;
    create(
        &h,
        "/api/v1/namespaces/demo/configmaps",
        json!({"metadata": {"name": "c"}}),
    )
    .await?;
    let (s, v) = call(&h, "DELETE", "/api/v1/namespaces/demo", None).await?;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["kind"], "Namespace");
    assert_eq!(v["status"]["phase"], "Terminating");
    assert!(v["metadata"]["deletionTimestamp"].is_string());
    // Still there: the `kubernetes` finalizer waits for the namespace controller.
    let (s, v) = call(&h, "GET", "/api/v1/namespaces/demo", None).await?;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"]["phase"], "Terminating");

    let (s, v) = call(
        &h,
        "POST",
        "/api/v1/namespaces/demo/configmaps",
        Some(json!({"metadata": {"name": "late"}})),
    )
    .await?;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["reason"], "Forbidden");
    assert_eq!(
        v["message"],
        "configmaps \"late\" is forbidden: unable to create new content in namespace demo because it is being terminated"
    );
    // Updates to existing content are still allowed.
    let resp = h
        .send(
            Some(&h.admin),
            false,
            "PATCH",
            "/api/v1/namespaces/demo/configmaps/c",
            &[("content-type", "application/merge-patch+json")],
            Bytes::from(r#"{"data":{"k":"v"}}"#),
        )
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);

    // `finalize` accepts only PUT, and only spec.finalizers counts.
    let (s, _) = call(&h, "GET", "/api/v1/namespaces/demo/finalize", None).await?;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, v) = call(
        &h,
        "PUT",
        "/api/v1/namespaces/demo/finalize",
        Some(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo", "labels": {"ignored": "yes"}}, "spec": {"finalizers": []}})),
    )
    .await?;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["metadata"]["labels"].get("ignored").is_none(), "{v}");
    let (s, _) = call(&h, "GET", "/api/v1/namespaces/demo", None).await?;
    assert_eq!(s, StatusCode::NOT_FOUND, "finalized and removed");

    // Ordinary writes cannot drop the namespace controller's finalizer.
    let created = create(
        &h,
        "/api/v1/namespaces",
        json!({"metadata": {"name": "kept"}}),
    )
    .await?;
    assert_eq!(
        created["spec"]["finalizers"],
        json!(["kubernetes"]),
        "{created}"
    );
    let (s, v) = call(
        &h,
        "PUT",
        "/api/v1/namespaces/kept",
        Some(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kept"}})),
    )
    .await?;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["spec"]["finalizers"], json!(["kubernetes"]), "{v}");
    // The built-in namespaces cannot be deleted.
    let (s, v) = call(&h, "DELETE", "/api/v1/namespaces/default", None).await?;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(
        v["message"],
        "namespaces \"default\" is forbidden: this namespace may not be deleted"
    );
    h.server.shutdown().await;
    Ok(())
}
