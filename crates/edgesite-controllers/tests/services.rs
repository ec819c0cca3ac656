//! Endpoints and EndpointSlices on the real server: they follow pods becoming ready, not
//! ready, terminating and deleted, resolve named target ports per pod, split slices at 100
//! endpoints, go with their Service, and `kubectl expose` lists the ready pod IPs.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};

mod support;
use support::kubectl::Kubectl;
use support::{Cluster, eventually, pod_ready};

async fn create_pod(client: &Client, ns: &str, name: &str, spec: Value) -> Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": spec,
    }))?;
    Ok(pods.create(&PostParams::default(), &pod).await?)
}

fn container(port_name: &str, port: i32) -> Value {
    json!({"containers": [{"name": "c", "image": "nginx",
        "ports": [{"name": port_name, "containerPort": port}]}]})
}

/// Reports the pod running with `ip`, Ready or not, as a kubelet would.
async fn set_status(client: &Client, ns: &str, name: &str, ip: &str, ready: bool) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let status = if ready { "True" } else { "False" };
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": status}]}}),
        ),
    )
    .await?;
    Ok(())
}

/// The Endpoints as (ports, ready IPs, not-ready IPs) per subset, sorted.
type Subsets = Vec<(Vec<(String, i32)>, Vec<String>, Vec<String>)>;

fn subsets(ep: &Endpoints) -> Subsets {
    let mut out: Subsets = ep
        .subsets
        .iter()
        .flatten()
        .map(|s| {
            let ips = |a: &Option<Vec<k8s_openapi::api::core::v1::EndpointAddress>>| {
                a.iter().flatten().map(|a| a.ip.clone()).collect::<Vec<_>>()
            };
            let ports = s
                .ports
                .iter()
                .flatten()
                .map(|p| (p.name.clone().unwrap_or_default(), p.port))
                .collect();
            (ports, ips(&s.addresses), ips(&s.not_ready_addresses))
        })
        .collect();
    out.sort();
    out
}

async fn endpoints_are(client: &Client, ns: &str, name: &str, want: Subsets) -> Result<bool> {
    let api: Api<Endpoints> = Api::namespaced(client.clone(), ns);
    Ok(api
        .get_opt(name)
        .await?
        .is_some_and(|ep| subsets(&ep) == want))
}

/// The managed slices of Service `name`: per slice, its ports and its endpoints as
/// (ip, ready, serving, terminating), sorted.
type Slices = Vec<(Vec<(String, i32)>, Vec<(String, bool, bool, bool)>)>;

async fn slices(client: &Client, ns: &str, name: &str) -> Result<Slices> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!(
        "kubernetes.io/service-name={name},endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io"
    ));
    let mut out: Slices = api
        .list(&lp)
        .await?
        .items
        .iter()
        .map(|s| {
            let ports = s
                .ports
                .iter()
                .flatten()
                .map(|p| (p.name.clone().unwrap_or_default(), p.port.unwrap_or(0)))
                .collect();
            let mut eps: Vec<_> = s
                .endpoints
                .iter()
                .map(|e| {
                    let c = e.conditions.clone().unwrap_or_default();
                    (
                        e.addresses.join(","),
                        c.ready == Some(true),
                        c.serving == Some(true),
                        c.terminating == Some(true),
                    )
                })
                .collect();
            eps.sort();
            (ports, eps)
        })
        .collect();
    out.sort();
    Ok(out)
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

fn ports(v: &[(&str, i32)]) -> Vec<(String, i32)> {
    v.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect()
}

#[tokio::test]
async fn endpoints_and_slices_follow_the_pods() -> Result<()> {
    let c = Cluster::start().await?;
    let client = c.client.clone();
    let ns = "default";
    create_pod(&client, ns, "p1", container("http", 8080)).await?;
    create_pod(&client, ns, "p2", container("http", 8080)).await?;
    // Another pod of the same app whose `http` port is elsewhere.
    create_pod(&client, ns, "p3", container("http", 8081)).await?;
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"tier": "front"}},
        "spec": {"selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "metrics", "port": 9090}]},
    }))?;
    svcs.create(&PostParams::default(), &svc).await?;

    // No pod has an IP yet: empty Endpoints, one empty slice.
    eventually(10, "empty endpoints", || {
        endpoints_are(&client, ns, "web", Vec::new())
    })
    .await?;
    eventually(10, "placeholder slice", || async {
        Ok(slices(&client, ns, "web").await? == vec![(vec![], vec![])])
    })
    .await?;
    let ep = Api::<Endpoints>::namespaced(client.clone(), ns)
        .get("web")
        .await?;
    assert_eq!(ep.labels().get("tier").map(String::as_str), Some("front"));
    assert!(ep.owner_references().is_empty());

    // p1 ready: listed with its node, target and resolved ports, within moments.
    let started = Instant::now();
    set_status(&client, ns, "p1", "10.1.0.1", true).await?;
    let web_ports = ports(&[("http", 8080), ("metrics", 9090)]);
    eventually(10, "p1 ready in endpoints", || {
        endpoints_are(
            &client,
            ns,
            "web",
            vec![(web_ports.clone(), s(&["10.1.0.1"]), vec![])],
        )
    })
    .await?;
    println!("ready pod listed after {:?}", started.elapsed());
    let ep = Api::<Endpoints>::namespaced(client.clone(), ns)
        .get("web")
        .await?;
    let addr = &ep.subsets.as_ref().unwrap()[0].addresses.as_ref().unwrap()[0];
    let target = addr.target_ref.as_ref().unwrap();
    assert_eq!(
        (target.kind.as_deref(), target.name.as_deref()),
        (Some("Pod"), Some("p1"))
    );
    assert_eq!(target.namespace.as_deref(), Some(ns));
    assert!(target.uid.is_some());
    eventually(10, "p1 ready in the slice", || async {
        Ok(slices(&client, ns, "web").await?
            == vec![(
                web_ports.clone(),
                vec![("10.1.0.1".to_owned(), true, true, false)],
            )])
    })
    .await?;

    // p2 not ready, p3 ready on another port: a second subset and a second slice.
    set_status(&client, ns, "p2", "10.1.0.2", false).await?;
    set_status(&client, ns, "p3", "10.1.0.3", true).await?;
    let other_ports = ports(&[("http", 8081), ("metrics", 9090)]);
    eventually(10, "p2 not ready, p3 in its own subset", || {
        endpoints_are(
            &client,
            ns,
            "web",
            vec![
                (web_ports.clone(), s(&["10.1.0.1"]), s(&["10.1.0.2"])),
                (other_ports.clone(), s(&["10.1.0.3"]), vec![]),
            ],
        )
    })
    .await?;
    eventually(10, "slices per port set", || async {
        Ok(slices(&client, ns, "web").await?
            == vec![
                (
                    web_ports.clone(),
                    vec![
                        ("10.1.0.1".to_owned(), true, true, false),
                        ("10.1.0.2".to_owned(), false, false, false),
                    ],
                ),
                (
                    other_ports.clone(),
                    vec![("10.1.0.3".to_owned(), true, true, false)],
                ),
            ])
    })
    .await?;

    // p2 becomes ready, p1 stops being ready.
    set_status(&client, ns, "p2", "10.1.0.2", true).await?;
    set_status(&client, ns, "p1", "10.1.0.1", false).await?;
    eventually(10, "readiness swapped", || {
        endpoints_are(
            &client,
            ns,
            "web",
            vec![
                (web_ports.clone(), s(&["10.1.0.2"]), s(&["10.1.0.1"])),
                (other_ports.clone(), s(&["10.1.0.3"]), vec![]),
            ],
        )
    })
    .await?;

    // A pod relabelled out of the selector leaves; one deleted leaves.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.patch(
        "p3",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await?;
    pods.delete("p1", &DeleteParams::default()).await?;
    eventually(10, "p1 and p3 gone", || {
        endpoints_are(
            &client,
            ns,
            "web",
            vec![(web_ports.clone(), s(&["10.1.0.2"]), vec![])],
        )
    })
    .await?;

    // A terminating pod (bound to a node, so deleted gracefully) leaves the Endpoints but
    // stays in the slice as terminating and still serving.
    create_pod(
        &client,
        ns,
        "p4",
        json!({"nodeName": "n1", "containers": [{"name": "c", "image": "nginx",
            "ports": [{"name": "http", "containerPort": 8080}]}]}),
    )
    .await?;
    set_status(&client, ns, "p4", "10.1.0.4", true).await?;
    eventually(10, "p4 listed", || {
        endpoints_are(
            &client,
            ns,
            "web",
            vec![(web_ports.clone(), s(&["10.1.0.2", "10.1.0.4"]), vec![])],
        )
    })
    .await?;
    pods.delete("p4", &DeleteParams::default()).await?;
    assert!(pods.get("p4").await?.metadata.deletion_timestamp.is_some());
    eventually(10, "terminating p4 out of endpoints", || {
        endpoints_are(
            &client,
            ns,
            "web",
            vec![(web_ports.clone(), s(&["10.1.0.2"]), vec![])],
        )
    })
    .await?;
    eventually(10, "terminating p4 in the slice", || async {
        Ok(slices(&client, ns, "web").await?
            == vec![(
                web_ports.clone(),
                vec![
                    ("10.1.0.2".to_owned(), true, true, false),
                    ("10.1.0.4".to_owned(), false, true, true),
                ],
            )])
    })
    .await?;

    // Endpoints deleted by hand come back.
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), ns);
    eps.delete("web", &DeleteParams::default()).await?;
    eventually(10, "endpoints recreated", || {
        endpoints_are(
            &client,
            ns,
            "web",
            vec![(web_ports.clone(), s(&["10.1.0.2"]), vec![])],
        )
    })
    .await?;

    // A Service without a selector keeps the Endpoints its owner wrote.
    let manual: Service = serde_json::from_value(json!({
        "metadata": {"name": "manual"}, "spec": {"ports": [{"port": 5432}]}}))?;
    svcs.create(&PostParams::default(), &manual).await?;
    let mine: Endpoints = serde_json::from_value(json!({
        "metadata": {"name": "manual"},
        "subsets": [{"addresses": [{"ip": "192.168.1.5"}], "ports": [{"port": 5432}]}]}))?;
    eps.create(&PostParams::default(), &mine).await?;

    // The Service goes: its Endpoints and slices go too.
    svcs.delete("web", &DeleteParams::default()).await?;
    eventually(10, "endpoints and slices removed", || async {
        Ok(eps.get_opt("web").await?.is_none() && slices(&client, ns, "web").await?.is_empty())
    })
    .await?;
    let still = eps.get("manual").await?;
    assert_eq!(
        subsets(&still),
        vec![(ports(&[("", 5432)]), s(&["192.168.1.5"]), vec![])]
    );
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn slices_hold_at_most_100_endpoints() -> Result<()> {
    let c = Cluster::start().await?;
    let client = c.client.clone();
    let ns = "default";
    let n = 130;
    let made = futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            async move {
                let name = format!("p{i}");
                create_pod(&client, ns, &name, container("http", 8080)).await?;
                let ip = format!("10.2.{}.{}", i / 200, i % 200 + 1);
                set_status(&client, ns, &name, &ip, true).await
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<Result<()>>>()
        .await;
    made.into_iter().collect::<Result<Vec<()>>>()?;
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "big"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))?;
    svcs.create(&PostParams::default(), &svc).await?;
    eventually(20, "130 endpoints in two slices", || async {
        let sl = slices(&client, ns, "big").await?;
        let mut sizes: Vec<usize> = sl.iter().map(|(_, e)| e.len()).collect();
        sizes.sort_unstable();
        Ok(sizes == vec![30, 100])
    })
    .await?;
    let all: BTreeSet<String> = slices(&client, ns, "big")
        .await?
        .into_iter()
        .flat_map(|(_, e)| e.into_iter().map(|x| x.0))
        .collect();
    assert_eq!(all.len(), n);
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    for sl in api.list(&ListParams::default()).await?.items {
        assert!(sl.name_any().starts_with("big-"), "{}", sl.name_any());
        assert_eq!(sl.address_type, "IPv4");
        let owner = &sl.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("Service", "big", Some(true))
        );
    }
    eventually(10, "130 addresses in the endpoints", || async {
        let ep = Api::<Endpoints>::namespaced(client.clone(), ns)
            .get_opt("big")
            .await?;
        Ok(ep.is_some_and(|ep| subsets(&ep).first().is_some_and(|s| s.1.len() == n)))
    })
    .await?;
    c.stop().await;
    Ok(())
}

#[tokio::test]
async fn kubectl_expose_lists_the_ready_pod_ips() -> Result<()> {
    let c = Cluster::start().await?;
    let kubectl = Kubectl::new(&c)?;
    let nodes = c.hollow_nodes(2, "ep", Duration::from_secs(5)).await?;
    kubectl
        .ok(&[
            "create",
            "deployment",
            "web",
            "--image=nginx",
            "--replicas=2",
        ])
        .await?;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let found = std::sync::Mutex::new(BTreeSet::new());
    eventually(30, "two ready web pods", || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await?;
        let ips: BTreeSet<String> = list
            .items
            .iter()
            .filter(|p| pod_ready(p))
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect();
        let n = ips.len();
        *found.lock().unwrap() = ips;
        Ok(n == 2)
    })
    .await?;
    let ips = found.into_inner().unwrap();
    let exposed = Instant::now();
    kubectl
        .ok(&["expose", "deployment", "web", "--port=80"])
        .await?;
    let seen = std::sync::Mutex::new(BTreeSet::new());
    eventually(10, "endpoints list the ready pod IPs", || async {
        let out = kubectl
            .ok(&[
                "get",
                "endpoints",
                "web",
                "-o",
                "jsonpath={.subsets[*].addresses[*].ip}",
            ])
            .await
            .unwrap_or_default();
        let listed: BTreeSet<String> = out.split_whitespace().map(str::to_owned).collect();
        let done = listed == ips;
        *seen.lock().unwrap() = listed;
        Ok(done)
    })
    .await?;
    let took = exposed.elapsed();
    let listed = seen.into_inner().unwrap();
    println!("kubectl expose → endpoints listed {listed:?} in {took:?}");
    ensure!(
        took < Duration::from_secs(3),
        "endpoints took {took:?} (kubectl runs included)"
    );
    let out = kubectl
        .ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "jsonpath={.items[*].endpoints[*].addresses[0]}",
        ])
        .await?;
    let sliced: BTreeSet<String> = out.split_whitespace().map(str::to_owned).collect();
    assert_eq!(sliced, ips);
    nodes.stop().await;
    c.stop().await;
    Ok(())
}
