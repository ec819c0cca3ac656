//! The Deployment controller (with the ReplicaSet controller, the scheduler and hollow nodes)
//! against a real in-process API server: rollouts to completion, scaling, RollingUpdate
//! bounds, Recreate, pause/resume, the progress deadline on a manual clock, revision history,
//! and the real kubectl's `rollout` commands.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, ensure};
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt as _};
use serde_json::{Value, json};

mod support;
use support::kubectl::Kubectl;
use support::{Cluster, HollowNodes, eventually, pod_image, pod_ready};

const REVISION: &str = "deployment.kubernetes.io/revision";

fn deployment(name: &str, replicas: i32, image: &str, strategy: Value) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image}]},
            },
        },
    }))?)
}

async fn start() -> Result<(Cluster, HollowNodes)> {
    let c = Cluster::start().await?;
    let nodes = c.hollow_nodes(3, "node", Duration::from_secs(5)).await?;
    Ok((c, nodes))
}

/// What `kubectl rollout status` calls a finished rollout.
async fn rolled_out(api: &Api<Deployment>, name: &str) -> Result<bool> {
    let d = api.get(name).await?;
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let s = d.status.clone().unwrap_or_default();
    let n = |v: Option<i32>| v.unwrap_or(0);
    Ok(d.metadata.generation <= s.observed_generation
        && n(s.updated_replicas) == want
        && n(s.replicas) == n(s.updated_replicas)
        && n(s.available_replicas) == n(s.updated_replicas))
}

/// Creates `deployment(name, replicas, image, strategy)` and waits for it to roll out.
async fn create_rolled_out(
    api: &Api<Deployment>,
    name: &str,
    replicas: i32,
    image: &str,
    strategy: Value,
) -> Result<Deployment> {
    let d = api
        .create(
            &PostParams::default(),
            &deployment(name, replicas, image, strategy)?,
        )
        .await?;
    wait_rolled_out(api, name).await?;
    Ok(d)
}

async fn wait_rolled_out(api: &Api<Deployment>, name: &str) -> Result<()> {
    eventually(30, &format!("deployment {name} rolled out"), || async {
        rolled_out(api, name).await
    })
    .await
}

/// The ReplicaSets the Deployment controls, oldest revision first.
async fn replica_sets(rss: &Api<ReplicaSet>, d: &Deployment) -> Result<Vec<ReplicaSet>> {
    let uid = d.uid().unwrap();
    let mut out: Vec<ReplicaSet> = rss
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|rs| rs.owner_references().iter().any(|r| r.uid == uid))
        .collect();
    out.sort_by_key(rev);
    Ok(out)
}

fn rev(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn condition(d: &Deployment, ty: &str) -> Option<(String, String)> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

async fn set_image(api: &Api<Deployment>, name: &str, image: &str) -> Result<()> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {
            "containers": [{"name": "c", "image": image}]}}}})),
    )
    .await?;
    Ok(())
}

async fn scale(api: &Api<Deployment>, name: &str, replicas: i32) -> Result<()> {
    api.patch_scale(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn deployment_rolls_out_to_ready_pods_and_scales() -> Result<()> {
    let (c, nodes) = start().await?;
    let deploys: Api<Deployment> = Api::default_namespaced(c.client.clone());
    let rss: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());
    let pods: Api<Pod> = Api::default_namespaced(c.client.clone());
    create_rolled_out(&deploys, "web", 3, "nginx", json!({})).await?;

    let d = deploys.get("web").await?;
    let s = d.status.clone().unwrap();
    assert_eq!(
        (
            s.replicas,
            s.ready_replicas,
            s.unavailable_replicas.unwrap_or(0)
        ),
        (Some(3), Some(3), 0)
    );
    assert_eq!(
        condition(&d, "Available"),
        Some(("True".into(), "MinimumReplicasAvailable".into()))
    );
    assert_eq!(
        condition(&d, "Progressing"),
        Some(("True".into(), "NewReplicaSetAvailable".into()))
    );
    assert_eq!(d.annotations().get(REVISION).map(String::as_str), Some("1"));

    let sets = replica_sets(&rss, &d).await?;
    assert_eq!(sets.len(), 1);
    let rs = &sets[0];
    let hash = rs.labels().get("pod-template-hash").cloned().unwrap();
    assert_eq!(rs.name_any(), format!("web-{hash}"));
    let spec = rs.spec.as_ref().unwrap();
    assert_eq!(
        spec.selector.match_labels.as_ref().unwrap()["pod-template-hash"],
        hash
    );
    let ann = rs.annotations();
    assert_eq!(ann[REVISION], "1");
    assert_eq!(ann["deployment.kubernetes.io/desired-replicas"], "3");
    // 25% of 3 rounds up to a surge of 1.
    assert_eq!(ann["deployment.kubernetes.io/max-replicas"], "4");
    let listed = pods.list(&ListParams::default()).await?.items;
    assert_eq!(listed.len(), 3);
    for p in &listed {
        assert_eq!(p.labels()["pod-template-hash"], hash);
        assert_eq!(p.owner_references()[0].uid, rs.uid().unwrap());
        assert!(p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some());
    }

    scale(&deploys, "web", 5).await?;
    wait_rolled_out(&deploys, "web").await?;
    let sets = replica_sets(&rss, &d).await?;
    assert_eq!(sets.len(), 1, "scaling makes no new replica set");
    assert_eq!(spec_replicas(&sets[0]), 5);
    assert_eq!(
        sets[0].annotations()["deployment.kubernetes.io/desired-replicas"],
        "5"
    );
    scale(&deploys, "web", 1).await?;
    wait_rolled_out(&deploys, "web").await?;
    eventually(10, "scaled down to one pod", || async {
        let active = pods
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .count();
        Ok(active == 1)
    })
    .await?;
    nodes.stop().await;
    c.stop().await;
    Ok(())
}

/// What a watch saw during a rollout.
#[derive(Debug, Default)]
struct Observed {
    pods: BTreeMap<String, Pod>,
    min_ready: Option<usize>,
    max_spec_sum: i32,
    rs_sizes: BTreeMap<String, i32>,
    min_status_available: Option<i32>,
    mixed: bool,
    synced: bool,
}

fn ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && pod_ready(p)
}

/// Watches pods, replica sets and the deployment in the default namespace and records the
/// extremes a rollout reaches.
fn observe(c: &Cluster, name: &str) -> (Arc<Mutex<Observed>>, Vec<tokio::task::JoinHandle<()>>) {
    let seen = Arc::new(Mutex::new(Observed::default()));
    let pods: Api<Pod> = Api::default_namespaced(c.client.clone());
    let rss: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());
    let deploys: Api<Deployment> = Api::default_namespaced(c.client.clone());
    let mut tasks = Vec::new();
    let s = seen.clone();
    tasks.push(tokio::spawn(async move {
        let mut w = Box::pin(watcher(pods, watcher::Config::default()));
        while let Some(Ok(ev)) = w.next().await {
            let mut o = s.lock().unwrap();
            match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    o.pods.insert(p.name_any(), p);
                }
                watcher::Event::Delete(p) => {
                    o.pods.remove(&p.name_any());
                }
                watcher::Event::InitDone => o.synced = true,
                watcher::Event::Init => continue,
            }
            // The initial listing arrives one pod at a time: judge only the whole picture.
            if !o.synced {
                continue;
            }
            let n = o.pods.values().filter(|p| ready(p)).count();
            o.min_ready = Some(o.min_ready.map_or(n, |m| m.min(n)));
            let images: std::collections::BTreeSet<String> = o
                .pods
                .values()
                .filter(|p| {
                    !matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
                })
                .map(pod_image)
                .collect();
            o.mixed |= images.len() > 1;
        }
    }));
    let s = seen.clone();
    tasks.push(tokio::spawn(async move {
        let mut w = Box::pin(watcher(rss, watcher::Config::default()));
        while let Some(Ok(ev)) = w.next().await {
            let mut o = s.lock().unwrap();
            match ev {
                watcher::Event::Apply(rs) | watcher::Event::InitApply(rs) => {
                    o.rs_sizes.insert(rs.name_any(), spec_replicas(&rs));
                }
                watcher::Event::Delete(rs) => {
                    o.rs_sizes.remove(&rs.name_any());
                }
                _ => continue,
            }
            let sum = o.rs_sizes.values().sum();
            o.max_spec_sum = o.max_spec_sum.max(sum);
        }
    }));
    let s = seen.clone();
    let name = name.to_owned();
    tasks.push(tokio::spawn(async move {
        let mut w = Box::pin(watcher(deploys, watcher::Config::default()));
        while let Some(Ok(ev)) = w.next().await {
            if let watcher::Event::Apply(d) | watcher::Event::InitApply(d) = ev
                && d.name_any() == name
            {
                let a = d
                    .status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0);
                let mut o = s.lock().unwrap();
                o.min_status_available = Some(o.min_status_available.map_or(a, |m| m.min(a)));
            }
        }
    }));
    (seen, tasks)
}

#[tokio::test]
async fn rolling_update_stays_within_surge_and_unavailability() -> Result<()> {
    let (c, nodes) = start().await?;
    let deploys: Api<Deployment> = Api::default_namespaced(c.client.clone());
    let rss: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());
    let strategy = json!({"type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}});
    let d = create_rolled_out(&deploys, "api", 6, "api:1", strategy).await?;

    let (seen, tasks) = observe(&c, "api");
    eventually(10, "watches synced", || async {
        let o = seen.lock().unwrap();
        Ok(o.synced && o.pods.len() == 6 && o.min_status_available.is_some())
    })
    .await?;
    set_image(&deploys, "api", "api:2").await?;
    wait_rolled_out(&deploys, "api").await?;
    for t in &tasks {
        t.abort();
    }

    {
        let o = seen.lock().unwrap();
        println!(
            "rolling update observed: min ready pods {:?}, min status.availableReplicas {:?}, max sum of replica set sizes {}",
            o.min_ready, o.min_status_available, o.max_spec_sum
        );
        // replicas 6, maxUnavailable 1: never fewer than 5 available; maxSurge 1: at most 7.
        assert!(
            o.min_ready.unwrap() >= 5,
            "ready pods dropped to {:?}",
            o.min_ready
        );
        assert!(
            o.min_status_available.unwrap() >= 5,
            "status.availableReplicas dropped to {:?}",
            o.min_status_available
        );
        assert!(
            o.max_spec_sum <= 7,
            "replica sets summed to {}",
            o.max_spec_sum
        );
        assert!(o.mixed, "a rolling update runs both versions for a while");
    }

    let d2 = deploys.get("api").await?;
    assert_eq!(d2.annotations()[REVISION], "2");
    let sets = replica_sets(&rss, &d).await?;
    assert_eq!(sets.len(), 2);
    assert_eq!(
        (rev(&sets[0]), spec_replicas(&sets[0])),
        (1, 0),
        "old scaled to zero"
    );
    assert_eq!((rev(&sets[1]), spec_replicas(&sets[1])), (2, 6));
    let pods: Api<Pod> = Api::default_namespaced(c.client.clone());
    eventually(10, "only new pods left", || async {
        let all = pods.list(&ListParams::default()).await?.items;
        Ok(all.len() == 6 && all.iter().all(|p| pod_image(p) == "api:2"))
    })
    .await?;
    nodes.stop().await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn resizing_during_a_stuck_rollout_scales_replica_sets_proportionally() -> Result<()> {
    let (c, nodes) = start().await?;
    let deploys: Api<Deployment> = Api::default_namespaced(c.client.clone());
    let rss: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());
    let strategy = json!({"type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 3, "maxUnavailable": 2}});
    let d = create_rolled_out(&deploys, "big", 10, "big:1", strategy).await?;
    // The new template fits no node: its pods stay pending and the rollout stalls with
    // 10 + 3 pods, 8 of them old (2 may be unavailable).
    deploys
        .patch(
            "big",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {
                "nodeSelector": {"example.com/nowhere": "true"}}}}})),
        )
        .await?;
    eventually(15, "rollout stalls at 8 old + 5 new", || async {
        let sizes: Vec<i32> = replica_sets(&rss, &d)
            .await?
            .iter()
            .map(spec_replicas)
            .collect();
        Ok(sizes == [8, 5])
    })
    .await?;
    // 10 -> 20 (at most 23 with surge): each keeps its share, 8*23/13 and 5*23/13 rounded.
    scale(&deploys, "big", 20).await?;
    eventually(15, "replica sets scaled proportionally", || async {
        let sizes: Vec<i32> = replica_sets(&rss, &d)
            .await?
            .iter()
            .map(spec_replicas)
            .collect();
        Ok(sizes == [14, 9])
    })
    .await?;
    nodes.stop().await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn recreate_stops_old_pods_before_starting_new_ones() -> Result<()> {
    let (c, nodes) = start().await?;
    let deploys: Api<Deployment> = Api::default_namespaced(c.client.clone());
    let rss: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());
    let d = create_rolled_out(&deploys, "db", 3, "db:1", json!({"type": "Recreate"})).await?;
    let (seen, tasks) = observe(&c, "db");
    eventually(10, "watch synced", || async {
        let o = seen.lock().unwrap();
        Ok(o.synced && o.pods.len() == 3)
    })
    .await?;
    set_image(&deploys, "db", "db:2").await?;
    wait_rolled_out(&deploys, "db").await?;
    for t in &tasks {
        t.abort();
    }
    {
        let o = seen.lock().unwrap();
        assert!(!o.mixed, "old and new pods ran at the same time");
        assert_eq!(o.min_ready, Some(0), "recreate has downtime");
    }
    let sets = replica_sets(&rss, &d).await?;
    assert_eq!(sets.iter().map(spec_replicas).collect::<Vec<_>>(), [0, 3]);
    nodes.stop().await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn paused_deployment_scales_but_does_not_roll_out() -> Result<()> {
    let (c, nodes) = start().await?;
    let deploys: Api<Deployment> = Api::default_namespaced(c.client.clone());
    let rss: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());
    let d = create_rolled_out(&deploys, "web", 2, "web:1", json!({})).await?;
    let pause = |paused: bool| {
        let deploys = deploys.clone();
        async move {
            deploys
                .patch(
                    "web",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"paused": paused}})),
                )
                .await
        }
    };
    pause(true).await?;
    eventually(10, "Progressing says paused", || async {
        let d = deploys.get("web").await?;
        Ok(condition(&d, "Progressing") == Some(("Unknown".into(), "DeploymentPaused".into())))
    })
    .await?;
    set_image(&deploys, "web", "web:2").await?;
    scale(&deploys, "web", 4).await?;
    eventually(10, "scaled while paused", || async {
        let d = deploys.get("web").await?;
        let s = d.status.unwrap_or_default();
        Ok(d.metadata.generation == s.observed_generation && s.available_replicas == Some(4))
    })
    .await?;
    let sets = replica_sets(&rss, &d).await?;
    assert_eq!(sets.len(), 1, "no rollout while paused");
    assert_eq!(spec_replicas(&sets[0]), 4);

    pause(false).await?;
    wait_rolled_out(&deploys, "web").await?;
    eventually(10, "rollout finished after resume", || async {
        let d = deploys.get("web").await?;
        Ok(condition(&d, "Progressing") == Some(("True".into(), "NewReplicaSetAvailable".into())))
    })
    .await?;
    let sets = replica_sets(&rss, &d).await?;
    assert_eq!(sets.iter().map(spec_replicas).collect::<Vec<_>>(), [0, 4]);
    nodes.stop().await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn progress_deadline_is_reported_when_pods_never_become_ready() -> Result<()> {
    let clock = Arc::new(edgesite_controllers::ManualClock::new());
    let config = edgesite_controllers::Config {
        clock: clock.clone(),
        workload_recheck: Duration::from_millis(100),
        ..edgesite_controllers::Config::default()
    };
    // No nodes: the pods stay pending.
    let c = Cluster::start_with(config).await?;
    let deploys: Api<Deployment> = Api::default_namespaced(c.client.clone());
    let mut d = deployment("stuck", 2, "nginx", json!({}))?;
    d.spec.as_mut().unwrap().progress_deadline_seconds = Some(60);
    deploys.create(&PostParams::default(), &d).await?;
    eventually(10, "rollout progressing", || async {
        let d = deploys.get("stuck").await?;
        let s = d.status.clone().unwrap_or_default();
        Ok(s.updated_replicas == Some(2)
            && matches!(condition(&d, "Progressing"), Some((st, _)) if st == "True"))
    })
    .await?;
    let d = deploys.get("stuck").await?;
    assert_eq!(
        condition(&d, "Available"),
        Some(("False".into(), "MinimumReplicasUnavailable".into()))
    );
    clock.advance(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let d = deploys.get("stuck").await?;
    assert_eq!(
        condition(&d, "Progressing").map(|c| c.0),
        Some("True".into()),
        "not before the deadline"
    );
    clock.advance(Duration::from_secs(31));
    eventually(10, "deadline exceeded", || async {
        let d = deploys.get("stuck").await?;
        Ok(condition(&d, "Progressing")
            == Some(("False".into(), "ProgressDeadlineExceeded".into())))
    })
    .await?;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn old_replica_sets_beyond_the_history_limit_are_deleted() -> Result<()> {
    let (c, nodes) = start().await?;
    let deploys: Api<Deployment> = Api::default_namespaced(c.client.clone());
    let rss: Api<ReplicaSet> = Api::default_namespaced(c.client.clone());
    let mut d = deployment("web", 1, "web:1", json!({}))?;
    d.spec.as_mut().unwrap().revision_history_limit = Some(1);
    let d = deploys.create(&PostParams::default(), &d).await?;
    wait_rolled_out(&deploys, "web").await?;
    for v in 2..=4 {
        set_image(&deploys, "web", &format!("web:{v}")).await?;
        wait_rolled_out(&deploys, "web").await?;
    }
    eventually(10, "one old replica set kept", || async {
        Ok(replica_sets(&rss, &d).await?.len() == 2)
    })
    .await?;
    let sets = replica_sets(&rss, &d).await?;
    assert_eq!(sets.iter().map(rev).collect::<Vec<_>>(), [3, 4]);
    nodes.stop().await;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn kubectl_rollout_create_scale_set_image_history_undo_delete() -> Result<()> {
    let (c, nodes) = start().await?;
    let k = Kubectl::new(&c)?;
    k.ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=3",
    ])
    .await?;
    let out = k
        .ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await?;
    assert!(out.contains("successfully rolled out"), "{out}");

    k.ok(&["scale", "deployment/web", "--replicas=4"]).await?;
    k.ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await?;
    let ready = k
        .ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ])
        .await?;
    assert_eq!(ready, "4");

    k.ok(&["set", "image", "deployment/web", "busybox=busybox:2"])
        .await?;
    let out = k
        .ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await?;
    assert!(out.contains("successfully rolled out"), "{out}");
    let rs = k
        .ok(&[
            "get",
            "rs",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.metadata.annotations.deployment\\.kubernetes\\.io/revision}={.spec.replicas}={.spec.template.spec.containers[0].image}{\"\\n\"}{end}",
        ])
        .await?;
    let mut lines: Vec<&str> = rs.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["1=0=busybox", "2=4=busybox:2"], "{rs}");

    assert_eq!(k.revisions("deployment/web").await?, ["1", "2"]);

    let first_rs = k
        .ok(&[
            "get",
            "rs",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[?(@.spec.template.spec.containers[0].image==\"busybox\")].metadata.name}",
        ])
        .await?;
    k.ok(&["rollout", "undo", "deployment/web"]).await?;
    let out = k
        .ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await?;
    assert!(out.contains("successfully rolled out"), "{out}");
    // The replica set of revision 1 came back as revision 3 with the replicas.
    let back = k
        .ok(&[
            "get",
            "rs",
            first_rs.trim(),
            "-o",
            "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision} {.spec.replicas}",
        ])
        .await?;
    assert_eq!(back, "3 4");
    let image = k
        .ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .await?;
    assert_eq!(image, "busybox");
    let history = k.ok(&["rollout", "history", "deployment/web"]).await?;
    ensure!(
        history.lines().any(|l| l.starts_with('2')) && history.lines().any(|l| l.starts_with('3')),
        "{history}"
    );
    let rs_count = k.ok(&["get", "rs", "-o", "name"]).await?;
    assert_eq!(
        rs_count.lines().count(),
        2,
        "undo reused the old replica set"
    );

    k.ok(&["delete", "deployment", "web"]).await?;
    eventually(15, "replica sets and pods collected", || async {
        Ok(k.ok(&["get", "deploy,rs,pods", "-o", "name"])
            .await?
            .trim()
            .is_empty())
    })
    .await?;
    nodes.stop().await;
    c.stop().await;
    Ok(())
}
