//! The server driven by the real kube-rs client, configured from the admin kubeconfig the
//! server writes: typed ConfigMap CRUD and patches, a reflector kept in step through adds,
//! updates and deletes, and the seeded namespaces.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Api, Client, Config, ResourceExt as _};
use serde_json::json;

mod support;
use support::Harness;

async fn client(h: &Harness) -> Result<Client> {
    // kube's rustls connector needs a process-wide provider; another test may have set it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let path = h.server.kubeconfig_path();
    assert_eq!(path, h.dir.path().join("admin.kubeconfig"));
    let config =
        Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &KubeConfigOptions::default())
            .await?;
    Ok(Client::try_from(config)?)
}

fn cm(name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) -> ConfigMap {
    let map = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(map(labels)),
            ..ObjectMeta::default()
        },
        data: Some(map(data)),
        ..ConfigMap::default()
    }
}

fn api_code(err: kube::Error) -> u16 {
    match err {
        kube::Error::Api(status) => status.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn configmap_crud_with_kube_rs() -> Result<()> {
    let h = Harness::start().await?;
    let api: Api<ConfigMap> = Api::namespaced(client(&h).await?, "default");
    let pp = PostParams::default();

    // create
    let created = api
        .create(&pp, &cm("kube-a", &[("app", "x")], &[("k", "1")]))
        .await?;
    assert_eq!(created.name_any(), "kube-a");
    assert_eq!(created.namespace().as_deref(), Some("default"));
    assert!(created.uid().is_some());
    let rv1 = created.resource_version().expect("resourceVersion");
    api.create(&pp, &cm("kube-b", &[("app", "y")], &[])).await?;
    // creating again conflicts
    let err = api
        .create(&pp, &cm("kube-a", &[], &[]))
        .await
        .expect_err("duplicate create");
    assert_eq!(api_code(err), 409);

    // get
    let got = api.get("kube-a").await?;
    assert_eq!(got.data.as_ref().unwrap()["k"], "1");
    assert_eq!(got.resource_version().as_deref(), Some(rv1.as_str()));

    // list with a label selector
    let listed = api.list(&ListParams::default().labels("app=x")).await?;
    let names: Vec<_> = listed.items.iter().map(|c| c.name_any()).collect();
    assert_eq!(names, vec!["kube-a"]);
    assert!(listed.metadata.resource_version.is_some());
    let all = api.list(&ListParams::default()).await?;
    let all: Vec<_> = all.items.iter().map(|c| c.name_any()).collect();
    assert!(all.contains(&"kube-a".to_owned()) && all.contains(&"kube-b".to_owned()));

    // replace with the current resourceVersion succeeds, then with the stale one conflicts
    let mut fresh = got.clone();
    fresh.data = Some(BTreeMap::from([("k".to_owned(), "2".to_owned())]));
    let replaced = api.replace("kube-a", &pp, &fresh).await?;
    assert_eq!(replaced.data.as_ref().unwrap()["k"], "2");
    assert_ne!(replaced.resource_version(), Some(rv1.clone()));
    let mut stale = got.clone();
    stale.data = Some(BTreeMap::from([("k".to_owned(), "3".to_owned())]));
    let err = api
        .replace("kube-a", &pp, &stale)
        .await
        .expect_err("stale replace");
    assert_eq!(api_code(err), 409);
    assert_eq!(api.get("kube-a").await?.data.unwrap()["k"], "2");

    // merge patch
    let patched = api
        .patch(
            "kube-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"m": "merged"}, "metadata": {"labels": {"extra": "1"}}})),
        )
        .await?;
    let data = patched.data.clone().unwrap();
    assert_eq!(data["k"], "2");
    assert_eq!(data["m"], "merged");
    assert_eq!(patched.labels()["extra"], "1");
    assert_eq!(patched.labels()["app"], "x");

    // strategic merge patch, including a key deletion
    let patched = api
        .patch(
            "kube-a",
            &PatchParams::default(),
            &Patch::Strategic(json!({"data": {"s": "strategic", "k": null}})),
        )
        .await?;
    let data = patched.data.clone().unwrap();
    assert_eq!(data.get("k"), None);
    assert_eq!(data["m"], "merged");
    assert_eq!(data["s"], "strategic");
    assert_eq!(api.get("kube-a").await?.data, Some(data));

    // delete, then get is 404
    let deleted = api.delete("kube-a", &DeleteParams::default()).await?;
    // Deleted at once: upstream answers with a Status (only pods, services, service accounts
    // and namespaces answer with the object), which kube-rs returns as `Right`.
    assert!(deleted.is_right(), "ConfigMaps are deleted immediately");
    let err = api.get("kube-a").await.expect_err("deleted");
    assert_eq!(api_code(err), 404);
    assert!(api.get_opt("kube-a").await?.is_none());
    let err = api
        .delete("kube-a", &DeleteParams::default())
        .await
        .expect_err("already deleted");
    assert_eq!(api_code(err), 404);
    let left: Vec<_> = api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert!(left.contains(&"kube-b".to_owned()) && !left.contains(&"kube-a".to_owned()));

    h.server.shutdown().await;
    Ok(())
}

type Snapshot = BTreeMap<String, (Option<String>, Option<BTreeMap<String, String>>)>;

fn snapshot<'a>(items: impl IntoIterator<Item = &'a ConfigMap>) -> Snapshot {
    items
        .into_iter()
        .map(|c| (c.name_any(), (c.resource_version(), c.data.clone())))
        .collect()
}

/// Waits (with a deadline) until the reflector's store equals a fresh list of the server.
async fn converge(store: &reflector::Store<ConfigMap>, api: &Api<ConfigMap>) -> Result<Snapshot> {
    let expected = snapshot(&api.list(&ListParams::default()).await?.items);
    let polled = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let state = store.state();
            let got = snapshot(state.iter().map(|c| c.as_ref()));
            if got == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let got = snapshot(store.state().iter().map(|c| c.as_ref()));
    assert!(
        polled.is_ok(),
        "reflector never matched the server\n store: {got:?}\nserver: {expected:?}"
    );
    Ok(expected)
}

#[tokio::test]
async fn reflector_tracks_configmaps() -> Result<()> {
    let h = Harness::start().await?;
    let api: Api<ConfigMap> = Api::namespaced(client(&h).await?, "default");
    let pp = PostParams::default();
    // One object exists before the informer starts (it arrives in the initial list).
    api.create(&pp, &cm("pre", &[], &[("v", "0")])).await?;

    let (store, writer) = reflector::store();
    let stream = reflector(writer, watcher(api.clone(), watcher::Config::default()))
        .applied_objects()
        .boxed();
    let task = tokio::spawn(async move {
        let mut stream = stream;
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                panic!("watch stream error: {e}");
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), store.wait_until_ready()).await??;
    let snap = converge(&store, &api).await?;
    assert!(snap.contains_key("pre"));

    // adds
    for i in 0..3 {
        api.create(&pp, &cm(&format!("cm-{i}"), &[], &[("v", "1")]))
            .await?;
    }
    let snap = converge(&store, &api).await?;
    assert_eq!(snap.len(), 4);

    // updates (a patch and a replace)
    api.patch(
        "cm-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "2"}})),
    )
    .await?;
    let mut one = api.get("cm-1").await?;
    one.data = Some(BTreeMap::from([("v".to_owned(), "3".to_owned())]));
    api.replace("cm-1", &pp, &one).await?;
    let snap = converge(&store, &api).await?;
    assert_eq!(snap["cm-0"].1.as_ref().unwrap()["v"], "2");
    assert_eq!(snap["cm-1"].1.as_ref().unwrap()["v"], "3");

    // deletes
    api.delete("cm-2", &DeleteParams::default()).await?;
    api.delete("pre", &DeleteParams::default()).await?;
    let snap = converge(&store, &api).await?;
    assert_eq!(
        snap.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["cm-0", "cm-1"]
    );

    // mixed burst
    api.create(&pp, &cm("late", &[], &[("v", "9")])).await?;
    api.delete("cm-0", &DeleteParams::default()).await?;
    api.patch(
        "cm-1",
        &PatchParams::default(),
        &Patch::Strategic(json!({"data": {"w": "x"}})),
    )
    .await?;
    let snap = converge(&store, &api).await?;
    assert_eq!(
        snap.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["cm-1", "late"]
    );

    assert!(!task.is_finished(), "the watch stream ended or failed");
    task.abort();
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn namespaces_are_seeded() -> Result<()> {
    let h = Harness::start().await?;
    let api: Api<Namespace> = Api::all(client(&h).await?);
    let mut names: Vec<_> = api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["default", "kube-node-lease", "kube-public", "kube-system"]
    );
    let default = api.get("default").await?;
    assert_eq!(
        default.status.and_then(|s| s.phase).as_deref(),
        Some("Active")
    );
    h.server.shutdown().await;
    Ok(())
}
