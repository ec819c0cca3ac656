//! Upstream's per-resource field selectors over HTTPS, on lists and on watches.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::time::Duration;

use anyhow::{Context as _, Result};
use http_body_util::BodyExt as _;
use hyper::StatusCode;
use hyper::body::Bytes;
use serde_json::{Value, json};

mod support;
use support::Harness;

const PODS: &str = "/api/v1/namespaces/default/pods";

async fn create_pod(h: &Harness, name: &str, node: &str, phase: &str) -> Result<()> {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": phase},
    });
    let resp = h
        .send(
            Some(&h.admin),
            true,
            "POST",
            PODS,
            &[("content-type", "application/json")],
            serde_json::to_vec(&pod)?,
        )
        .await?;
    anyhow::ensure!(
        resp.status() == StatusCode::CREATED,
        "create {name}: {}",
        resp.status()
    );
    Ok(())
}

async fn names(h: &Harness, query: &str) -> Result<Vec<String>> {
    let r = h.get(Some(&h.admin), &format!("{PODS}?{query}")).await?;
    anyhow::ensure!(
        r.status == StatusCode::OK,
        "{query}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let mut out: Vec<String> = r.json()["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    out.sort();
    Ok(out)
}

#[tokio::test]
async fn pod_field_selectors_on_lists() -> Result<()> {
    let h = Harness::start().await?;
    create_pod(&h, "a", "node1", "Running").await?;
    create_pod(&h, "b", "node2", "Running").await?;
    create_pod(&h, "c", "node1", "Pending").await?;

    assert_eq!(
        names(&h, "fieldSelector=status.phase%3DRunning").await?,
        ["a", "b"]
    );
    assert_eq!(
        names(&h, "fieldSelector=status.phase!%3DRunning").await?,
        ["c"]
    );
    assert_eq!(
        names(&h, "fieldSelector=spec.nodeName%3Dnode1").await?,
        ["a", "c"]
    );
    assert_eq!(
        names(
            &h,
            "fieldSelector=spec.nodeName%3Dnode1,status.phase%3DRunning"
        )
        .await?,
        ["a"]
    );
    assert_eq!(
        names(&h, "fieldSelector=spec.hostNetwork%3Dfalse").await?,
        ["a", "b", "c"]
    );
    assert_eq!(names(&h, "fieldSelector=metadata.name%3Db").await?, ["b"]);
    assert_eq!(
        names(&h, "fieldSelector=status.podIP%3D").await?,
        ["a", "b", "c"]
    );

    // A field pods do not have: upstream's 400.
    let r = h
        .get(
            Some(&h.admin),
            &format!("{PODS}?fieldSelector=spec.containers%3Dx"),
        )
        .await?;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let v = r.json();
    assert_eq!(v["reason"], "BadRequest");
    assert_eq!(v["message"], "field label not supported: spec.containers");
    // Nodes have no metadata.namespace field, as upstream.
    let r = h
        .get(
            Some(&h.admin),
            "/api/v1/nodes?fieldSelector=metadata.namespace%3Dx",
        )
        .await?;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = h
        .get(
            Some(&h.admin),
            "/api/v1/nodes?fieldSelector=spec.unschedulable%3Dfalse",
        )
        .await?;
    assert_eq!(r.status, StatusCode::OK);
    // Namespaces by phase: the seeded ones are Active.
    let r = h
        .get(
            Some(&h.admin),
            "/api/v1/namespaces?fieldSelector=status.phase%3DActive",
        )
        .await?;
    assert!(r.json()["items"].as_array().is_some_and(|i| i.len() >= 4));

    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn node_name_field_selector_on_a_watch() -> Result<()> {
    let h = Harness::start().await?;
    create_pod(&h, "early-other", "node2", "Pending").await?;
    create_pod(&h, "early-mine", "node1", "Pending").await?;

    let resp = h
        .send(
            Some(&h.admin),
            false,
            "GET",
            &format!("{PODS}?watch=true&fieldSelector=spec.nodeName%3Dnode1"),
            &[],
            Bytes::new(),
        )
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();

    create_pod(&h, "late-other", "node2", "Pending").await?;
    create_pod(&h, "late-mine", "node1", "Pending").await?;

    let mut buf = Vec::new();
    let mut events: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while events.len() < 2 {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .context("timed out waiting for watch events")?
            .context("watch ended")??;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            events.push(serde_json::from_slice(&line)?);
        }
    }
    let seen: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default(),
                e["object"]["metadata"]["name"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(seen, [("ADDED", "early-mine"), ("ADDED", "late-mine")]);
    // Nothing about the other node's pods arrives.
    let more = tokio::time::timeout(Duration::from_millis(300), body.frame()).await;
    assert!(more.is_err(), "unexpected event: {more:?}");

    drop(body);
    h.server.shutdown().await;
    Ok(())
}
