//! The StatefulSet controller against a real in-process API server, the scheduler and hollow
//! nodes: ordered creation, stable names and identities, recreation under the same name,
//! scale-down from the highest ordinal, partitioned rolling updates, status, and `kubectl
//! rollout status`.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures::TryStreamExt as _;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};

mod support;
use support::kubectl::Kubectl;
use support::{Cluster, eventually, pod_image, pod_ready};

const HEARTBEAT: Duration = Duration::from_secs(1);

fn statefulset(name: &str, replicas: i32, image: &str, extra: Value) -> Result<StatefulSet> {
    let mut v = json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image}]},
            },
        },
    });
    if let (Some(spec), Some(extra)) = (v["spec"].as_object_mut(), extra.as_object()) {
        for (k, x) in extra {
            spec.insert(k.clone(), x.clone());
        }
    }
    Ok(serde_json::from_value(v)?)
}

/// One step in the life of the set's pods, as a watch saw it.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// A pod (name, image) appeared; `lower_ready`: every lower ordinal was ready then.
    Added(String, String, bool),
    /// A pod started terminating (or vanished without a terminating state seen).
    Leaving(String),
}

/// Records the pods' steps in watch order until dropped.
struct Recorder {
    steps: Arc<Mutex<Vec<Step>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start(client: &Client, app: &str) -> Result<Self> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let steps = Arc::new(Mutex::new(Vec::new()));
        let (synced_tx, synced) = tokio::sync::oneshot::channel();
        let app = app.to_owned();
        let task = tokio::spawn({
            let steps = steps.clone();
            async move {
                let stream = watcher(
                    pods,
                    watcher::Config::default().labels(&format!("app={app}")),
                )
                .default_backoff();
                futures::pin_mut!(stream);
                // name → (uid, ready, leaving)
                let mut live: BTreeMap<String, (String, bool, bool)> = BTreeMap::new();
                let mut synced_tx = Some(synced_tx);
                while let Ok(Some(ev)) = stream.try_next().await {
                    let mut steps = steps.lock().unwrap();
                    match ev {
                        watcher::Event::InitApply(p) => {
                            live.insert(
                                p.name_any(),
                                (p.uid().unwrap_or_default(), pod_ready(&p), false),
                            );
                        }
                        watcher::Event::InitDone => {
                            if let Some(tx) = synced_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        watcher::Event::Init => live.clear(),
                        watcher::Event::Apply(p) => {
                            let name = p.name_any();
                            let uid = p.uid().unwrap_or_default();
                            let leaving = p.metadata.deletion_timestamp.is_some();
                            match live.get(&name) {
                                Some((u, _, _)) if *u == uid => {}
                                _ => {
                                    let ordinal: usize = name
                                        .rsplit('-')
                                        .next()
                                        .and_then(|o| o.parse().ok())
                                        .unwrap_or(0);
                                    let lower_ready = (0..ordinal).all(|o| {
                                        live.get(&format!("{app}-{o}"))
                                            .is_some_and(|(_, r, l)| *r && !*l)
                                    });
                                    steps.push(Step::Added(
                                        name.clone(),
                                        pod_image(&p),
                                        lower_ready,
                                    ));
                                }
                            }
                            let was_leaving =
                                live.get(&name).is_some_and(|(u, _, l)| *u == uid && *l);
                            if leaving && !was_leaving {
                                steps.push(Step::Leaving(name.clone()));
                            }
                            live.insert(name, (uid, pod_ready(&p), leaving));
                        }
                        watcher::Event::Delete(p) => {
                            let name = p.name_any();
                            if live.get(&name).is_some_and(|(_, _, l)| !*l) {
                                steps.push(Step::Leaving(name.clone()));
                            }
                            live.remove(&name);
                        }
                    }
                }
            }
        });
        synced.await?;
        Ok(Self { steps, task })
    }

    fn steps(&self) -> Vec<Step> {
        self.steps.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The set's live pods (not being deleted) by name.
async fn live_pods(client: &Client, app: &str) -> Result<BTreeMap<String, Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    Ok(pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.name_any(), p))
        .collect())
}

/// Waits until the live pods are exactly `want` (name, image), all ready, and the status
/// agrees: `replicas` ready, `updated` on the update revision, `current` on the current one.
async fn wait_settled(
    client: &Client,
    app: &str,
    want: &[(&str, &str)],
    updated: i32,
    current: i32,
) -> Result<StatefulSet> {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let last = Mutex::new(String::new());
    let n = i32::try_from(want.len())?;
    eventually(30, "statefulset settled", || async {
        let pods = live_pods(client, app).await?;
        let have: Vec<(String, String, bool)> = pods
            .values()
            .map(|p| (p.name_any(), pod_image(p), pod_ready(p)))
            .collect();
        let sts = api.get(app).await?;
        let s = sts.status.clone().unwrap_or_default();
        *last.lock().unwrap() = format!("{have:?} {s:?}");
        let expected: Vec<(String, String, bool)> = want
            .iter()
            .map(|(n, i)| ((*n).to_owned(), (*i).to_owned(), true))
            .collect();
        Ok(have == expected
            && s.observed_generation == sts.metadata.generation
            && s.replicas == n
            && s.ready_replicas == Some(n)
            && s.available_replicas == Some(n)
            && s.updated_replicas == Some(updated)
            && s.current_replicas == Some(current))
    })
    .await
    .with_context(|| format!("last seen: {}", last.lock().unwrap()))?;
    Ok(api.get(app).await?)
}

#[tokio::test]
async fn ordered_stable_pods_come_back_and_scale_down_from_the_top() -> Result<()> {
    let c = Cluster::start().await?;
    let hollow = c.hollow_nodes(2, "st", HEARTBEAT).await?;
    let rec = Recorder::start(&c.client, "db").await?;
    let api: Api<StatefulSet> = Api::namespaced(c.client.clone(), "default");
    api.create(
        &PostParams::default(),
        &statefulset("db", 3, "db:1", json!({}))?,
    )
    .await?;
    let sts = wait_settled(
        &c.client,
        "db",
        &[("db-0", "db:1"), ("db-1", "db:1"), ("db-2", "db:1")],
        3,
        3,
    )
    .await?;
    let s = sts.status.unwrap();
    assert_eq!(s.current_revision, s.update_revision);
    let rev = s.update_revision.clone().unwrap();
    assert!(rev.starts_with("db-"), "{rev}");
    let revs: Api<ControllerRevision> = Api::namespaced(c.client.clone(), "default");
    assert_eq!(revs.get(&rev).await?.revision, 1);

    // Created in order, each once the lower ones were ready.
    let added: Vec<Step> = rec
        .steps()
        .into_iter()
        .filter(|s| matches!(s, Step::Added(..)))
        .collect();
    assert_eq!(
        added,
        ["db-0", "db-1", "db-2"]
            .map(|n| Step::Added(n.into(), "db:1".into(), true))
            .to_vec()
    );

    // Stable identity.
    let pods = live_pods(&c.client, "db").await?;
    let p1 = &pods["db-1"];
    let spec = p1.spec.clone().unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("db-1"));
    assert_eq!(spec.subdomain.as_deref(), Some("db"));
    let labels = p1.labels();
    assert_eq!(labels["statefulset.kubernetes.io/pod-name"], "db-1");
    assert_eq!(labels["apps.kubernetes.io/pod-index"], "1");
    assert_eq!(labels["controller-revision-hash"], rev);
    assert_eq!(p1.owner_references()[0].name, "db");

    // A deleted pod comes back under the same name.
    let old_uid = p1.uid().unwrap();
    let pods_api: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    pods_api.delete("db-1", &DeleteParams::default()).await?;
    eventually(20, "db-1 recreated and ready", || async {
        let p = pods_api.get_opt("db-1").await?;
        Ok(p.is_some_and(|p| p.uid().as_deref() != Some(&old_uid) && pod_ready(&p)))
    })
    .await?;
    wait_settled(
        &c.client,
        "db",
        &[("db-0", "db:1"), ("db-1", "db:1"), ("db-2", "db:1")],
        3,
        3,
    )
    .await?;

    // Scaling down removes the highest ordinal first, one at a time.
    let before = rec.steps().len();
    api.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await?;
    wait_settled(&c.client, "db", &[("db-0", "db:1")], 1, 1).await?;
    let leaving: Vec<Step> = rec.steps()[before..]
        .iter()
        .filter(|s| matches!(s, Step::Leaving(_)))
        .cloned()
        .collect();
    assert_eq!(
        leaving,
        vec![Step::Leaving("db-2".into()), Step::Leaving("db-1".into())]
    );
    drop(rec);
    hollow.stop().await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn partitioned_rolling_update_goes_from_the_top_down() -> Result<()> {
    let c = Cluster::start().await?;
    let hollow = c.hollow_nodes(2, "ru", HEARTBEAT).await?;
    let api: Api<StatefulSet> = Api::namespaced(c.client.clone(), "default");
    api.create(
        &PostParams::default(),
        &statefulset(
            "web",
            3,
            "web:1",
            json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}}),
        )?,
    )
    .await?;
    let first = wait_settled(
        &c.client,
        "web",
        &[("web-0", "web:1"), ("web-1", "web:1"), ("web-2", "web:1")],
        3,
        3,
    )
    .await?
    .status
    .unwrap()
    .update_revision
    .unwrap();

    let rec = Recorder::start(&c.client, "web").await?;
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "web:2"}]}}}})),
    )
    .await?;
    // Only ordinals ≥ partition are updated; web-0 stays on the old revision.
    let sts = wait_settled(
        &c.client,
        "web",
        &[("web-0", "web:1"), ("web-1", "web:2"), ("web-2", "web:2")],
        2,
        1,
    )
    .await?;
    let s = sts.status.unwrap();
    assert_eq!(s.current_revision.as_deref(), Some(first.as_str()));
    let second = s.update_revision.clone().unwrap();
    assert_ne!(first, second);
    let pods = live_pods(&c.client, "web").await?;
    assert_eq!(pods["web-0"].labels()["controller-revision-hash"], first);
    assert_eq!(pods["web-2"].labels()["controller-revision-hash"], second);
    // Top down, one at a time: web-2 was replaced before web-1 left.
    let steps = rec.steps();
    let pos = |want: &Step| steps.iter().position(|s| s == want);
    let leave2 = pos(&Step::Leaving("web-2".into())).context("web-2 never left")?;
    let back2 =
        pos(&Step::Added("web-2".into(), "web:2".into(), true)).context("web-2 not re-added")?;
    let leave1 = pos(&Step::Leaving("web-1".into())).context("web-1 never left")?;
    assert!(leave2 < back2 && back2 < leave1, "{steps:?}");
    assert!(pos(&Step::Leaving("web-0".into())).is_none(), "{steps:?}");

    // A pod below the partition that goes away comes back on the old revision.
    let pods_api: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    pods_api.delete("web-0", &DeleteParams::default()).await?;
    let uid0 = pods["web-0"].uid().unwrap();
    eventually(20, "web-0 recreated", || async {
        let p = pods_api.get_opt("web-0").await?;
        Ok(p.is_some_and(|p| p.uid().as_deref() != Some(uid0.as_str()) && pod_ready(&p)))
    })
    .await?;
    let p0 = pods_api.get("web-0").await?;
    assert_eq!(pod_image(&p0), "web:1");

    // Partition 0 finishes the rollout; the update revision becomes current.
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}})),
    )
    .await?;
    let sts = wait_settled(
        &c.client,
        "web",
        &[("web-0", "web:2"), ("web-1", "web:2"), ("web-2", "web:2")],
        3,
        3,
    )
    .await?;
    let s = sts.status.unwrap();
    assert_eq!(s.current_revision.as_deref(), Some(second.as_str()));
    assert_eq!(s.update_revision.as_deref(), Some(second.as_str()));
    drop(rec);
    hollow.stop().await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn ordered_ready_waits_parallel_does_not() -> Result<()> {
    // No nodes: pods stay Pending, so an ordered set cannot get past its first pod.
    let c = Cluster::start().await?;
    let api: Api<StatefulSet> = Api::namespaced(c.client.clone(), "default");
    api.create(
        &PostParams::default(),
        &statefulset("ord", 3, "x", json!({}))?,
    )
    .await?;
    api.create(
        &PostParams::default(),
        &statefulset("par", 3, "x", json!({"podManagementPolicy": "Parallel"}))?,
    )
    .await?;
    eventually(20, "parallel set created all pods", || async {
        Ok(live_pods(&c.client, "par").await?.len() == 3)
    })
    .await?;
    eventually(20, "ordered set reported its one pod", || async {
        let s = api.get("ord").await?.status.unwrap_or_default();
        Ok(s.observed_generation == Some(1) && s.replicas == 1 && s.ready_replicas == Some(0))
    })
    .await?;
    let ord: Vec<String> = live_pods(&c.client, "ord").await?.into_keys().collect();
    assert_eq!(ord, vec!["ord-0".to_owned()]);

    // A failed pod is replaced under the same name.
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let failed = pods.get("ord-0").await?.uid().unwrap();
    pods.patch_status(
        "ord-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Failed"}})),
    )
    .await?;
    eventually(20, "ord-0 replaced", || async {
        let p = pods.get_opt("ord-0").await?;
        Ok(p.is_some_and(|p| {
            p.uid().as_deref() != Some(failed.as_str())
                && p.status.and_then(|s| s.phase).as_deref() == Some("Pending")
        }))
    })
    .await?;
    let ord: Vec<String> = live_pods(&c.client, "ord").await?.into_keys().collect();
    assert_eq!(ord, vec!["ord-0".to_owned()]);
    c.stop().await;
    Ok(())
}

const STS_YAML: &str = "apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: x
spec:
  replicas: 3
  serviceName: x
  selector:
    matchLabels: {app: x}
  template:
    metadata:
      labels: {app: x}
    spec:
      containers:
      - {name: c, image: 'x:1'}
";

#[tokio::test]
async fn kubectl_rollout_status_statefulset() -> Result<()> {
    let c = Cluster::start().await?;
    let k = Kubectl::new(&c)?;
    let hollow = c.hollow_nodes(2, "kst", HEARTBEAT).await?;
    let file = k.file("sts.yaml", STS_YAML)?;
    let s = k.ok(&["apply", "-f", &file]).await?;
    assert!(s.contains("statefulset.apps/x created"), "{s}");
    // The API server defaults `partition: 0`, so kubectl reports a partitioned roll out, as
    // it does against upstream.
    let rollout = ["rollout", "status", "statefulset/x", "--timeout=60s"];
    let s = k.ok(&rollout).await?;
    assert!(
        s.contains("partitioned roll out complete: 3 new pods have been updated"),
        "{s}"
    );
    let s = k.ok(&["get", "pods", "-l", "app=x", "-o", "name"]).await?;
    assert_eq!(
        s.lines().collect::<Vec<_>>(),
        ["pod/x-0", "pod/x-1", "pod/x-2"]
    );

    k.ok(&["set", "image", "statefulset/x", "c=x:2"]).await?;
    let s = k.ok(&rollout).await?;
    assert!(
        s.contains("partitioned roll out complete: 3 new pods have been updated"),
        "{s}"
    );
    assert_eq!(k.pod_images("app=x").await?, "x:2 x:2 x:2");
    let api: Api<StatefulSet> = Api::namespaced(c.client.clone(), "default");
    eventually(10, "the update revision became current", || async {
        let s = api.get("x").await?.status.unwrap_or_default();
        Ok(s.current_revision.is_some()
            && s.current_revision == s.update_revision
            && s.current_replicas == Some(3))
    })
    .await?;
    hollow.stop().await;
    c.stop().await;
    Ok(())
}
