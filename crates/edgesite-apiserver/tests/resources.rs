//! Generic resource handlers over HTTPS: CRUD with Status bodies, lists with selectors and
//! pagination, watches (ordering and the 410 ERROR event), Table responses.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::time::Duration;

use anyhow::Result;
use http_body_util::BodyExt as _;
use hyper::StatusCode;
use hyper::body::Incoming;
use serde_json::{Value, json};

mod support;
use support::Harness;

impl Harness {
    /// As the admin over HTTP/1.1, with a content type, maybe an accept header, and a
    /// JSON body.
    async fn admin_send(
        &self,
        method: &str,
        path: &str,
        ct: &str,
        accept: Option<&str>,
        body: Option<Value>,
    ) -> Result<hyper::Response<Incoming>> {
        let mut headers = vec![("content-type", ct)];
        if let Some(a) = accept {
            headers.push(("accept", a));
        }
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        self.send(Some(&self.admin), false, method, path, &headers, bytes)
            .await
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        self.call_ct(method, path, "application/json", body).await
    }

    async fn call_ct(
        &self,
        method: &str,
        path: &str,
        ct: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let resp = self.admin_send(method, path, ct, None, body).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";

fn cm(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels}, "data": {"a": "1"}})
}

#[tokio::test]
async fn configmap_crud_and_errors() -> Result<()> {
    let h = Harness::start().await?;
    let (code, created) = h.call("POST", CMS, Some(cm("c1", json!({})))).await?;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["metadata"]["namespace"], "default");
    assert_eq!(created["metadata"]["generation"], 1);
    assert_eq!(created["metadata"]["uid"].as_str().unwrap().len(), 36);
    let rv1 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();

    let (code, s) = h.call("POST", CMS, Some(cm("c1", json!({})))).await?;
    assert_eq!((code, s["reason"].as_str()), (409, Some("AlreadyExists")));
    assert_eq!(s["message"], "configmaps \"c1\" already exists");

    let (code, s) = h.call("GET", &format!("{CMS}/nope"), None).await?;
    assert_eq!((code, s["reason"].as_str()), (404, Some("NotFound")));
    assert_eq!(s["message"], "configmaps \"nope\" not found");

    let (code, s) = h
        .call("GET", "/api/v1/namespaces/default/widgets", None)
        .await?;
    assert_eq!((code, s["reason"].as_str()), (404, Some("NotFound")));

    let (code, s) = h
        .call(
            "POST",
            CMS,
            Some(json!({"kind":"Secret","apiVersion":"v1","metadata":{"name":"z"}})),
        )
        .await?;
    assert_eq!(code, 400, "{s}");
    let (code, s) = h.call("POST", CMS, Some(cm("Bad_Name", json!({})))).await?;
    assert_eq!((code, s["reason"].as_str()), (422, Some("Invalid")));
    let (code, _) = h
        .call_ct("POST", CMS, "text/plain", Some(cm("y", json!({}))))
        .await?;
    assert_eq!(code, 415);

    // generateName
    let (code, g) = h
        .call(
            "POST",
            CMS,
            Some(json!({"metadata": {"generateName": "gen-"}})),
        )
        .await?;
    assert_eq!(code, 201, "{g}");
    assert_eq!(g["metadata"]["name"].as_str().unwrap().len(), 9);

    // update: data change bumps generation; stale RV conflicts
    let mut upd = created.clone();
    upd["data"]["a"] = json!("2");
    let (code, u) = h
        .call("PUT", &format!("{CMS}/c1"), Some(upd.clone()))
        .await?;
    assert_eq!(code, 200, "{u}");
    assert_eq!(u["metadata"]["generation"], 2);
    assert_eq!(u["metadata"]["uid"], created["metadata"]["uid"]);
    assert_ne!(u["metadata"]["resourceVersion"].as_str().unwrap(), rv1);
    let (code, s) = h.call("PUT", &format!("{CMS}/c1"), Some(upd)).await?;
    assert_eq!((code, s["reason"].as_str()), (409, Some("Conflict")));
    assert_eq!(
        s["message"],
        "Operation cannot be fulfilled on configmaps \"c1\": the object has been modified; please apply your changes to the latest version and try again"
    );

    // patches
    let (code, p) = h
        .call_ct(
            "PATCH",
            &format!("{CMS}/c1"),
            "application/merge-patch+json",
            Some(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await?;
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["metadata"]["labels"]["x"], "y");
    let (code, p) = h
        .call_ct(
            "PATCH",
            &format!("{CMS}/c1"),
            "application/json-patch+json",
            Some(json!([{"op": "replace", "path": "/data/a", "value": "3"}])),
        )
        .await?;
    assert_eq!((code, p["data"]["a"].as_str()), (200, Some("3")));
    let (code, p) = h
        .call_ct(
            "PATCH",
            &format!("{CMS}/c1"),
            "application/strategic-merge-patch+json",
            Some(json!({"data": {"b": "4"}})),
        )
        .await?;
    assert_eq!((code, p["data"]["b"].as_str()), (200, Some("4")));
    let (code, _) = h
        .call_ct(
            "PATCH",
            &format!("{CMS}/c1"),
            "application/xml",
            Some(json!({})),
        )
        .await?;
    assert_eq!(code, 415);

    // delete with a wrong uid precondition, then for real
    let (code, s) = h
        .call(
            "DELETE",
            &format!("{CMS}/c1"),
            Some(json!({"preconditions": {"uid": "nope"}})),
        )
        .await?;
    assert_eq!(code, 409, "{s}");
    let (code, d) = h.call("DELETE", &format!("{CMS}/c1"), None).await?;
    // Deleted at once: a Success Status naming the object, as upstream answers for ConfigMaps.
    assert_eq!(
        (code, d["kind"].as_str(), d["details"]["name"].as_str()),
        (200, Some("Status"), Some("c1")),
        "{d}"
    );
    let (code, _) = h.call("GET", &format!("{CMS}/c1"), None).await?;
    assert_eq!(code, 404);

    // finalizers: delete marks, removing the finalizer deletes
    let mut f = cm("fin", json!({}));
    f["metadata"]["finalizers"] = json!(["example.com/x"]);
    assert_eq!(h.call("POST", CMS, Some(f)).await?.0, 201);
    let (code, d) = h.call("DELETE", &format!("{CMS}/fin"), None).await?;
    assert_eq!(code, 200);
    assert!(d["metadata"]["deletionTimestamp"].is_string(), "{d}");
    let (code, _) = h
        .call_ct(
            "PATCH",
            &format!("{CMS}/fin"),
            "application/merge-patch+json",
            Some(json!({"metadata": {"finalizers": null}})),
        )
        .await?;
    assert_eq!(code, 200);
    assert_eq!(h.call("GET", &format!("{CMS}/fin"), None).await?.0, 404);

    // seeded objects
    let (code, ns) = h
        .call("GET", "/api/v1/namespaces/kube-system", None)
        .await?;
    assert_eq!(
        (code, ns["status"]["phase"].as_str()),
        (200, Some("Active"))
    );
    let (code, svc) = h
        .call(
            "GET",
            "/api/v1/namespaces/default/services/kubernetes",
            None,
        )
        .await?;
    assert_eq!(
        (code, svc["spec"]["clusterIP"].as_str()),
        (200, Some("10.43.0.1"))
    );
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn list_selectors_pagination_and_table() -> Result<()> {
    let h = Harness::start().await?;
    for i in 0..5 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        let (code, _) = h
            .call(
                "POST",
                CMS,
                Some(cm(&format!("m{i}"), json!({"tier": tier}))),
            )
            .await?;
        assert_eq!(code, 201);
    }
    let (code, l) = h.call("GET", CMS, None).await?;
    assert_eq!(code, 200);
    assert_eq!(l["kind"], "ConfigMapList");
    assert_eq!(l["apiVersion"], "v1");
    assert_eq!(l["items"].as_array().unwrap().len(), 5);
    assert!(l["metadata"]["resourceVersion"].is_string());
    let (_, l) = h
        .call("GET", "/api/v1/namespaces/kube-system/configmaps", None)
        .await?;
    assert_eq!(l["items"], json!([]));
    let (_, l) = h
        .call("GET", &format!("{CMS}?labelSelector=tier%3Deven"), None)
        .await?;
    assert_eq!(l["items"].as_array().unwrap().len(), 3);
    let (_, l) = h
        .call(
            "GET",
            "/api/v1/configmaps?fieldSelector=metadata.name%3Dm1",
            None,
        )
        .await?;
    assert_eq!(l["items"].as_array().unwrap().len(), 1);
    let (code, _) = h
        .call("GET", &format!("{CMS}?fieldSelector=spec.x%3D1"), None)
        .await?;
    assert_eq!(code, 400);

    let mut names = Vec::new();
    let mut cont = String::new();
    loop {
        let (code, l) = h
            .call("GET", &format!("{CMS}?limit=2&continue={cont}"), None)
            .await?;
        assert_eq!(code, 200, "{l}");
        for i in l["items"].as_array().unwrap() {
            names.push(i["metadata"]["name"].as_str().unwrap().to_owned());
        }
        match l["metadata"]["continue"].as_str() {
            Some(c) => cont = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(names, ["m0", "m1", "m2", "m3", "m4"]);

    let resp = h
        .admin_send(
            "GET",
            CMS,
            "application/json",
            Some("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"),
            None,
        )
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let t: Value = serde_json::from_slice(&resp.into_body().collect().await?.to_bytes())?;
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["columnDefinitions"][0]["name"], "Name");
    assert_eq!(t["rows"].as_array().unwrap().len(), 5);
    assert_eq!(t["rows"][0]["cells"][0], "m0");
    h.server.shutdown().await;
    Ok(())
}

/// Lists longer than one streamed chunk (256 items) come back whole and in order, as do
/// their pages and their selections; the streamed body is exactly one JSON document.
#[tokio::test]
async fn long_lists_are_streamed_whole() -> Result<()> {
    let h = Harness::start().await?;
    let n = 600;
    for i in 0..n {
        let tier = if i % 3 == 0 { "third" } else { "rest" };
        let (code, v) = h
            .call(
                "POST",
                CMS,
                Some(cm(&format!("s{i:04}"), json!({"tier": tier}))),
            )
            .await?;
        assert_eq!(code, 201, "{v}");
    }
    let names = |l: &Value| -> Vec<String> {
        l["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let want: Vec<String> = (0..n).map(|i| format!("s{i:04}")).collect();
    let (code, l) = h.call("GET", CMS, None).await?;
    assert_eq!(code, 200);
    assert_eq!(names(&l), want);
    assert_eq!(l["kind"], "ConfigMapList");
    let rv: i64 = l["metadata"]["resourceVersion"].as_str().unwrap().parse()?;
    for item in l["items"].as_array().unwrap() {
        let item_rv: i64 = item["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()?;
        assert!(item_rv <= rv && item["data"].is_object(), "{item}");
    }
    let (_, l) = h.call("GET", "/api/v1/configmaps", None).await?;
    assert_eq!(names(&l), want, "the cluster-wide list");
    let (_, l) = h
        .call("GET", &format!("{CMS}?labelSelector=tier%3Dthird"), None)
        .await?;
    assert_eq!(names(&l).len(), 200);
    let (_, page) = h.call("GET", &format!("{CMS}?limit=500"), None).await?;
    assert_eq!(names(&page), want[..500]);
    let cont = page["metadata"]["continue"].as_str().unwrap().to_owned();
    let (_, rest) = h
        .call("GET", &format!("{CMS}?limit=500&continue={cont}"), None)
        .await?;
    assert_eq!(names(&rest), want[500..]);
    h.server.shutdown().await;
    Ok(())
}

async fn next_line(body: &mut Incoming, buf: &mut Vec<u8>) -> Result<Option<Value>> {
    loop {
        if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            return Ok(Some(serde_json::from_slice(&line)?));
        }
        match tokio::time::timeout(Duration::from_secs(10), body.frame()).await? {
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            None => return Ok(None),
        }
    }
}

#[tokio::test]
async fn watch_events_in_order_and_too_old() -> Result<()> {
    let h = Harness::start().await?;
    let (_, pre) = h.call("POST", CMS, Some(cm("pre", json!({})))).await?;
    let rv0 = pre["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = h
        .admin_send(
            "GET",
            &format!("{CMS}?watch=true&resourceVersion={rv0}"),
            "",
            None,
            None,
        )
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let (_, c) = h.call("POST", CMS, Some(cm("w", json!({})))).await?;
    let (_, _) = h
        .call_ct(
            "PATCH",
            &format!("{CMS}/w"),
            "application/merge-patch+json",
            Some(json!({"data": {"a": "2"}})),
        )
        .await?;
    let (code, _) = h.call("DELETE", &format!("{CMS}/w"), None).await?;
    assert_eq!(code, 200);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ev = next_line(&mut body, &mut buf).await?.expect("event");
        seen.push((
            ev["type"].as_str().unwrap().to_owned(),
            ev["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_owned(),
            ev["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse::<i64>()?,
        ));
    }
    assert_eq!(
        seen.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        ["ADDED", "MODIFIED", "DELETED"]
    );
    assert!(seen.iter().all(|s| s.1 == "w"));
    assert!(seen[0].2 < seen[1].2 && seen[1].2 < seen[2].2);
    assert_eq!(
        seen[0].2.to_string(),
        c["metadata"]["resourceVersion"].as_str().unwrap()
    );
    drop(body);

    // initial events for resourceVersion unset
    let resp = h
        .admin_send(
            "GET",
            &format!("{CMS}?watch=1&timeoutSeconds=1"),
            "",
            None,
            None,
        )
        .await?;
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let ev = next_line(&mut body, &mut buf).await?.expect("initial");
    assert_eq!(ev["type"], "ADDED");
    assert_eq!(ev["object"]["metadata"]["name"], "pre");
    assert!(
        next_line(&mut body, &mut buf).await?.is_none(),
        "timeoutSeconds ends the watch"
    );

    // too old
    let resp = h
        .admin_send(
            "GET",
            &format!("{CMS}?watch=true&resourceVersion=1"),
            "",
            None,
            None,
        )
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let ev = next_line(&mut body, &mut buf).await?.expect("error event");
    assert_eq!(ev["type"], "ERROR", "{ev}");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    assert!(
        ev["object"]["message"]
            .as_str()
            .unwrap()
            .starts_with("too old resource version: 1 ("),
        "{ev}"
    );
    assert!(next_line(&mut body, &mut buf).await?.is_none());
    h.server.shutdown().await;
    Ok(())
}

/// A watch with a label selector sees objects enter the selection as ADDED and leave it as
/// DELETED, as upstream's watch cache reports selector transitions; and a list at an exact
/// past resourceVersion shows the state of that revision.
#[tokio::test]
async fn selector_transitions_and_exact_lists() -> Result<()> {
    let h = Harness::start().await?;
    let (_, first) = h
        .call("POST", CMS, Some(cm("in", json!({"app": "web"}))))
        .await?;
    let rv_first = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = h
        .admin_send(
            "GET",
            &format!("{CMS}?watch=true&labelSelector=app%3Dweb&resourceVersion={rv_first}"),
            "",
            None,
            None,
        )
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    // Outside the selection: no event. Then it moves in (ADDED), the first one moves out
    // (DELETED), and a change inside the selection is MODIFIED.
    let (code, _) = h
        .call("POST", CMS, Some(cm("out", json!({"app": "db"}))))
        .await?;
    assert_eq!(code, 201);
    relabel(&h, "out", "web").await?;
    relabel(&h, "in", "db").await?;
    relabel(&h, "out", "web").await?; // unchanged: no new revision, no event
    let (code, _) = h
        .call_ct(
            "PATCH",
            &format!("{CMS}/out"),
            "application/merge-patch+json",
            Some(json!({"data": {"k": "v"}})),
        )
        .await?;
    assert_eq!(code, 200);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ev = next_line(&mut body, &mut buf).await?.expect("event");
        seen.push(format!(
            "{} {} {}",
            ev["type"].as_str().unwrap(),
            ev["object"]["metadata"]["name"].as_str().unwrap(),
            ev["object"]["metadata"]["labels"]["app"].as_str().unwrap()
        ));
    }
    // Leaving the selection is DELETED with the object as it was while it matched (with the
    // new resourceVersion), as upstream's cacher sends it.
    assert_eq!(
        seen,
        ["ADDED out web", "DELETED in web", "MODIFIED out web"]
    );
    drop(body);

    // Exact: the list at the first revision has only `in`, labelled web.
    let (code, l) = h
        .call(
            "GET",
            &format!("{CMS}?resourceVersion={rv_first}&resourceVersionMatch=Exact"),
            None,
        )
        .await?;
    assert_eq!(code, 200, "{l}");
    assert_eq!(l["metadata"]["resourceVersion"], rv_first.as_str());
    let items = l["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{l}");
    assert_eq!(items[0]["metadata"]["labels"]["app"], "web");
    // NotOlderThan a future revision waits, then answers 504-style Timeout.
    let (code, s) = h
        .call(
            "GET",
            &format!("{CMS}?resourceVersion=999999&resourceVersionMatch=NotOlderThan"),
            None,
        )
        .await?;
    assert_eq!((code, s["reason"].as_str()), (504, Some("Timeout")), "{s}");
    h.server.shutdown().await;
    Ok(())
}

async fn relabel(h: &Harness, name: &str, app: &str) -> Result<()> {
    let (code, v) = h
        .call_ct(
            "PATCH",
            &format!("{CMS}/{name}"),
            "application/merge-patch+json",
            Some(json!({"metadata": {"labels": {"app": app}}})),
        )
        .await?;
    assert_eq!(code, 200, "{v}");
    Ok(())
}
