//! The kube-rs informer pattern on pods — `reflector(watcher(Api<Pod>))` — kept equal to the
//! server through adds, updates and deletes, a forced compaction of the store, and a server
//! restart on the same data directory and port; once with the default list-then-watch and
//! once with streaming lists (`sendInitialEvents`).
//!
//! What each phase shows:
//! - a forced compaction while the server runs (`Server::compact`): the watcher's next watch
//!   resumes from a compacted resourceVersion, gets one `ERROR` 410 event and relists exactly
//!   once, then no more;
//! - restart after a write elsewhere and a compaction past the watcher's resourceVersion: the
//!   new server's watch cache starts at the compacted head, the watcher's resumed watch gets
//!   one `ERROR` 410 event, and the watcher relists exactly once (one more
//!   `watcher::Event::Init`), then no more.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Api, Client, Config, ResourceExt as _};
use serde_json::json;

mod support;
use support::Harness;

async fn client(kubeconfig: &std::path::Path) -> Result<Client> {
    // kube's rustls connector needs a process-wide provider; another test may have set it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}

fn pod(name: &str, app: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([("app".to_owned(), app.to_owned())])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".to_owned(),
                image: Some("busybox".to_owned()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

type Snapshot = BTreeMap<String, (Option<String>, BTreeMap<String, String>)>;

fn snapshot<'a>(items: impl IntoIterator<Item = &'a Pod>) -> Snapshot {
    items
        .into_iter()
        .map(|p| {
            (
                format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
                (p.resource_version(), p.labels().clone()),
            )
        })
        .collect()
}

/// Waits (with a deadline) until the reflector's store equals a fresh list of the server.
async fn converge(store: &reflector::Store<Pod>, api: &Api<Pod>) -> Result<Snapshot> {
    let expected = snapshot(&api.list(&ListParams::default()).await?.items);
    let polled = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if snapshot(store.state().iter().map(|p| p.as_ref())) == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let got = snapshot(store.state().iter().map(|p| p.as_ref()));
    ensure!(
        polled.is_ok(),
        "reflector never matched the server\n store: {got:?}\nserver: {expected:?}"
    );
    Ok(expected)
}

/// Counts of what the watcher yielded.
#[derive(Default)]
struct Counters {
    inits: AtomicUsize,
    errors: AtomicUsize,
}

impl Counters {
    fn inits(&self) -> usize {
        self.inits.load(Ordering::SeqCst)
    }
}

/// Waits until the watcher has started `n` (re)lists, then checks it stays there for 3 s.
async fn expect_inits(c: &Counters, n: usize) -> Result<()> {
    let reached = tokio::time::timeout(Duration::from_secs(20), async {
        while c.inits() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    ensure!(
        reached.is_ok(),
        "expected {n} watcher Init events, saw {} ({} errors)",
        c.inits(),
        c.errors.load(Ordering::SeqCst)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        c.inits() == n,
        "the watcher relisted again: {} Init events, expected {n} (a relist loop?)",
        c.inits()
    );
    Ok(())
}

async fn head_revision(server: &edgesite_apiserver::Server) -> Result<i64> {
    Ok(server.store().status().await?.revision)
}

/// Starts a server on `dir` and `port` again. The old server's store closes when the last
/// task holding it (a watch cache's, aborted at shutdown) is dropped, which the runtime does
/// shortly after `Server::shutdown` returns; until then the store file is locked, so retry
/// for a little while, as a supervisor restarting the process would.
async fn restart(dir: &std::path::Path, port: u16) -> Result<edgesite_apiserver::Server> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut config = support::config(dir)?;
        config.secure_port = port;
        match edgesite_apiserver::Server::start(config).await {
            Ok(s) => return Ok(s),
            Err(edgesite_apiserver::ServerError::Store(e))
                if tokio::time::Instant::now() < deadline =>
            {
                println!("restart: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn scenario(streaming: bool) -> Result<()> {
    let Harness {
        dir, mut server, ..
    } = Harness::start_with(|c| c.shutdown_timeout = Duration::from_millis(500)).await?;
    let port = server.local_addr().port();
    let kubeconfig = server.kubeconfig_path().to_owned();
    let client = client(&kubeconfig).await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let all: Api<Pod> = Api::all(client.clone());
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    api.create(&pp, &pod("pre", "web")).await?;
    Api::<Pod>::namespaced(client.clone(), "kube-system")
        .create(&pp, &pod("sys", "infra"))
        .await?;

    // Watches time out every 2 s, so the watcher resumes often. Without bookmarks it resumes
    // from its last pod event; streaming lists need bookmarks (the end of the initial events
    // is one), and the periodic ones come every 30 s, so they do not move it either.
    let mut config = watcher::Config::default().timeout(2);
    config = if streaming {
        config.streaming_lists()
    } else {
        config.disable_bookmarks()
    };
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    let events = watcher(all.clone(), config)
        .default_backoff()
        .inspect(move |ev| match ev {
            Ok(watcher::Event::Init) => {
                c.inits.fetch_add(1, Ordering::SeqCst);
            }
            Ok(_) => {}
            Err(e) => {
                println!("watcher error (retried): {e}");
                c.errors.fetch_add(1, Ordering::SeqCst);
            }
        });
    let (store, writer) = reflector::store();
    let stream = reflector(writer, events).boxed();
    let task = tokio::spawn(async move {
        let mut stream = stream;
        while stream.next().await.is_some() {}
    });
    tokio::time::timeout(Duration::from_secs(10), store.wait_until_ready())
        .await
        .context("the reflector never became ready")??;
    let snap = converge(&store, &all).await?;
    assert!(snap.contains_key("default/pre") && snap.contains_key("kube-system/sys"));
    expect_inits(&counters, 1).await?;

    // Adds, updates (a patch and a replace) and deletes.
    for i in 0..3 {
        api.create(&pp, &pod(&format!("p-{i}"), "web")).await?;
    }
    api.patch(
        "p-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})),
    )
    .await?;
    let mut one = api.get("p-1").await?;
    one.labels_mut()
        .insert("tier".to_owned(), "front".to_owned());
    api.replace("p-1", &pp, &one).await?;
    api.delete("p-2", &DeleteParams::default()).await?;
    api.delete("pre", &DeleteParams::default()).await?;
    let snap = converge(&store, &all).await?;
    assert_eq!(
        snap.keys().map(String::as_str).collect::<Vec<_>>(),
        ["default/p-0", "default/p-1", "kube-system/sys"]
    );
    assert_eq!(snap["default/p-0"].1["app"], "db");
    assert_eq!(snap["default/p-1"].1["tier"], "front");

    // A forced compaction past the watcher's resourceVersion: a write elsewhere moves the
    // head past the last pod event, the pod watch cache learns of the head (a list at
    // NotOlderThan waits for it), and the server compacts there. The watcher's next watch
    // (its watches time out every 2 s and carry no bookmarks, so it resumes from the last pod
    // event or its initial-events bookmark) gets an ERROR 410 event and relists exactly once, then watches on from the new
    // list without relisting again.
    cms.create(
        &pp,
        &ConfigMap {
            metadata: ObjectMeta {
                name: Some("bump-1".to_owned()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        },
    )
    .await?;
    let head = head_revision(&server).await?;
    let at_head = ListParams::default()
        .at(&head.to_string())
        .matching(kube::api::VersionMatch::NotOlderThan);
    tokio::time::timeout(Duration::from_secs(20), async {
        while all.list(&at_head).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .context("the pod watch cache never reached the head")?;
    server.compact(head).await?;
    assert_eq!(server.store().status().await?.compact_revision, head);
    expect_inits(&counters, 2).await?;
    api.create(&pp, &pod("after-compaction", "web")).await?;
    api.delete("p-0", &DeleteParams::default()).await?;
    converge(&store, &all).await?;
    expect_inits(&counters, 2).await?;

    // A restart on the same data directory and port, after another write elsewhere and a
    // compaction at the head: the new server's pod watch cache starts at the head, past the
    // watcher's resourceVersion, so the resumed watch gets an ERROR 410 event and the watcher
    // relists exactly once.
    cms.create(
        &pp,
        &ConfigMap {
            metadata: ObjectMeta {
                name: Some("bump-2".to_owned()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        },
    )
    .await?;
    let head = head_revision(&server).await?;
    server.store().compact(head).await?;
    server.shutdown().await;
    server = restart(dir.path(), port).await?;
    assert_eq!(server.local_addr().port(), port);
    assert_eq!(server.store().status().await?.compact_revision, head);
    expect_inits(&counters, 3).await?;
    converge(&store, &all).await?;

    // Equal again after more changes through the new server.
    api.create(&pp, &pod("after-restart", "web")).await?;
    api.patch(
        "p-1",
        &PatchParams::default(),
        &Patch::Strategic(json!({"metadata": {"labels": {"tier": "back"}}})),
    )
    .await?;
    api.delete("after-compaction", &DeleteParams::default())
        .await?;
    let snap = converge(&store, &all).await?;
    assert_eq!(
        snap.keys().map(String::as_str).collect::<Vec<_>>(),
        ["default/after-restart", "default/p-1", "kube-system/sys"]
    );
    assert_eq!(snap["default/p-1"].1["tier"], "back");
    assert_eq!(counters.inits(), 3, "no relist after the restart's one");

    ensure!(!task.is_finished(), "the reflector's stream ended");
    task.abort();
    server.shutdown().await;
    drop(dir);
    Ok(())
}

#[tokio::test]
async fn reflector_on_pods_through_compaction_and_restart() -> Result<()> {
    scenario(false).await
}

#[tokio::test]
async fn reflector_with_streaming_lists_through_compaction_and_restart() -> Result<()> {
    scenario(true).await
}
