//! Stored bytes the server cannot read: GET, LIST (plain, selected, as a table) and WATCH
//! answer a 500 `Status` naming the key (a watch, an ERROR event), never an empty object.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use anyhow::Result;
use edgesite_api::registry;
use serde_json::{Value, json};

mod support;

use support::Harness;

/// Writes `bytes` directly under the key of configmap `default/{name}`; returns the key.
async fn corrupt(h: &Harness, name: &str, bytes: &[u8]) -> Result<String> {
    let cm = registry::lookup("", "v1", "configmaps").expect("configmaps");
    let key = registry::storage_key(cm, Some("default"), name).expect("a key");
    h.server
        .store()
        .put(key.as_bytes(), bytes.to_vec(), 0)
        .await?;
    Ok(key)
}

fn assert_names_key(code: u16, body: &Value, key: &str) {
    assert_eq!(code, 500, "{body}");
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["reason"], "InternalError", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(key), "{message}");
}

#[tokio::test]
async fn unreadable_objects_are_a_500_status_naming_the_key() -> Result<()> {
    let h = Harness::start().await?;
    let (code, _) = h
        .request(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            Some(&json!({"metadata": {"name": "fine"}, "data": {"a": "b"}})),
        )
        .await?;
    assert_eq!(code, 201);
    let key = corrupt(&h, "broken", b"\x00not json{").await?;

    let (code, body) = h
        .request(
            "GET",
            "/api/v1/namespaces/default/configmaps/broken",
            "",
            None,
        )
        .await?;
    assert_names_key(code, &body, &key);
    // Objects next to it still read.
    let (code, body) = h
        .request(
            "GET",
            "/api/v1/namespaces/default/configmaps/fine",
            "",
            None,
        )
        .await?;
    assert_eq!((code, &body["data"]["a"]), (200, &json!("b")));

    for path in [
        "/api/v1/namespaces/default/configmaps",
        "/api/v1/configmaps?resourceVersion=0",
        "/api/v1/namespaces/default/configmaps?labelSelector=x%3Dy",
        "/api/v1/namespaces/default/configmaps?limit=1&resourceVersion=0",
    ] {
        let (code, body) = h.request("GET", path, "", None).await?;
        assert_names_key(code, &body, &key);
    }
    let reply = h
        .send(
            Some(&h.admin),
            false,
            "GET",
            "/api/v1/namespaces/default/configmaps",
            &[("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")],
            Vec::new(),
        )
        .await?;
    let reply = support::Reply::read(reply).await?;
    assert_names_key(reply.status.as_u16(), &reply.json(), &key);

    // A watch cannot answer 500 once it streams: the object is an ERROR event naming the key.
    let reply = h
        .get(
            Some(&h.admin),
            "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=1",
        )
        .await?;
    assert_eq!(reply.status.as_u16(), 200);
    let events: Vec<Value> = reply
        .body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(serde_json::from_slice)
        .collect::<Result<_, _>>()?;
    let error = events
        .iter()
        .find(|e| e["type"] == "ERROR")
        .unwrap_or_else(|| panic!("no ERROR event in {events:?}"));
    assert_eq!(error["object"]["code"], 500);
    assert!(
        error["object"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&key))
    );
    assert!(
        events
            .iter()
            .any(|e| e["object"]["metadata"]["name"] == "fine")
    );

    // A JSON value that is not an object is as unreadable.
    let key = corrupt(&h, "scalar", b"42").await?;
    let (code, body) = h
        .request(
            "GET",
            "/api/v1/namespaces/default/configmaps/scalar",
            "",
            None,
        )
        .await?;
    assert_names_key(code, &body, &key);
    Ok(())
}
