//! Service cluster IP and node port allocation through the real server and kube-rs: no
//! duplicates under concurrent creates, upstream's 422s for taken or out-of-range values,
//! release on delete and on type change, headless and ExternalName Services, dry runs, and
//! the repair pass at start.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Result;
use edgesite_apiserver::allocator::{NODE_PORT_PREFIX, SERVICE_IP_PREFIX};
use edgesite_apiserver::{Server, ServerConfig};
use edgesite_store::{KeyRange, RangeRequest, Store};
use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};

mod support;

async fn client(server: &Server) -> Result<Client> {
    // kube's rustls connector needs a process-wide provider; another test may have set it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = Kubeconfig::read_from(server.kubeconfig_path())?;
    Ok(Client::try_from(
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?,
    )?)
}

async fn start(dir: &std::path::Path) -> Result<(Server, Api<Service>)> {
    start_with(dir, |_| {}).await
}

async fn start_with(
    dir: &std::path::Path,
    tweak: impl FnOnce(&mut ServerConfig),
) -> Result<(Server, Api<Service>)> {
    let mut config = support::config(dir)?;
    tweak(&mut config);
    let server = Server::start(config).await?;
    let api = Api::namespaced(client(&server).await?, "default");
    Ok((server, api))
}

fn svc(name: &str, spec: Value) -> Result<Service> {
    let mut spec = spec;
    if spec.get("ports").is_none() && spec.get("type") != Some(&json!("ExternalName")) {
        spec["ports"] = json!([{"port": 80}]);
    }
    Ok(serde_json::from_value(
        json!({"metadata": {"name": name}, "spec": spec}),
    )?)
}

fn spec(s: &Service) -> Value {
    serde_json::to_value(s.spec.clone().unwrap_or_default()).unwrap_or_default()
}

fn cluster_ip(s: &Service) -> String {
    s.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .unwrap_or_default()
}

fn node_ports(s: &Service) -> Vec<i32> {
    s.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|ps| ps.iter().filter_map(|p| p.node_port).collect())
        .unwrap_or_default()
}

/// The allocation keys under `prefix`, without it.
async fn keys(store: &std::sync::Arc<dyn Store>, prefix: &str) -> Result<BTreeSet<String>> {
    let resp = store
        .range(RangeRequest::new(KeyRange::prefix(prefix.as_bytes().to_vec())).keys_only())
        .await?;
    Ok(resp
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned())
        .collect())
}

/// The status message of a refused request, asserting its code.
fn refused(err: kube::Error, code: u16) -> String {
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, code, "{}", s.message);
            s.message
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn concurrent_creates_get_distinct_cluster_ips() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, api) = start(dir.path()).await?;
    let creates = (0..50).map(|i| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &svc(&format!("s{i}"), json!({}))?)
                .await
                .map_err(anyhow::Error::from)
        }
    });
    let created = futures::future::try_join_all(creates).await?;
    let ips: BTreeSet<String> = created.iter().map(cluster_ip).collect();
    assert_eq!(ips.len(), 50, "duplicate cluster IPs: {ips:?}");
    let net: edgesite_apiserver::allocator::Ipv4Cidr = "10.43.0.0/16".parse()?;
    for s in &created {
        let ip: Ipv4Addr = cluster_ip(s).parse()?;
        assert!(
            net.contains(ip) && ip != Ipv4Addr::new(10, 43, 0, 1),
            "{ip}"
        );
        let sp = spec(s);
        assert_eq!(sp["clusterIPs"], json!([ip.to_string()]));
        assert_eq!(sp["ipFamilies"], json!(["IPv4"]));
        assert_eq!(sp["ipFamilyPolicy"], "SingleStack");
    }
    // One key per address, the seeded `kubernetes` Service's included.
    let held = keys(server.store(), SERVICE_IP_PREFIX).await?;
    assert_eq!(held.len(), 51);
    assert!(held.contains("10.43.0.1"));
    assert!(ips.iter().all(|ip| held.contains(ip)));
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn concurrent_creates_fill_a_small_range_exactly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, api) = start_with(dir.path(), |c| {
        c.service_cidr = "10.44.0.0/26".parse().expect("cidr");
    })
    .await?;
    // 62 usable addresses, one held by `kubernetes`: 61 creates at once take all the rest.
    let creates = (0..61).map(|i| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &svc(&format!("s{i}"), json!({}))?)
                .await
                .map_err(anyhow::Error::from)
        }
    });
    let created = futures::future::try_join_all(creates).await?;
    let ips: BTreeSet<String> = created.iter().map(cluster_ip).collect();
    assert_eq!(ips.len(), 61, "duplicate cluster IPs");
    assert!(!ips.contains("10.44.0.1"));
    let err = api
        .create(&PostParams::default(), &svc("full", json!({}))?)
        .await
        .expect_err("allocated from a full range");
    assert_eq!(
        refused(err, 500),
        "Internal error occurred: failed to allocate a serviceIP: range is full"
    );
    assert_eq!(keys(server.store(), SERVICE_IP_PREFIX).await?.len(), 62);
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn requested_ips_are_checked_and_released_on_delete() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, api) = start(dir.path()).await?;
    let pp = PostParams::default();
    let a = api
        .create(&pp, &svc("a", json!({"clusterIP": "10.43.0.10"}))?)
        .await?;
    assert_eq!(cluster_ip(&a), "10.43.0.10");

    let err = api
        .create(&pp, &svc("b", json!({"clusterIP": "10.43.0.10"}))?)
        .await
        .expect_err("duplicate IP accepted");
    assert_eq!(
        refused(err, 422),
        "Service \"b\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.43.0.10\"}: \
         failed to allocate IP 10.43.0.10: provided IP is already allocated"
    );
    let err = api
        .create(&pp, &svc("b", json!({"clusterIP": "10.43.0.1"}))?)
        .await
        .expect_err("the kubernetes Service's IP was handed out again");
    assert!(refused(err, 422).contains("provided IP is already allocated"));
    let err = api
        .create(&pp, &svc("b", json!({"clusterIPs": ["10.0.0.5"]}))?)
        .await
        .expect_err("IP outside the range accepted");
    assert_eq!(
        refused(err, 422),
        "Service \"b\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.0.0.5\"}: \
         failed to allocate IP 10.0.0.5: the provided IP (10.0.0.5) is not in the valid range. \
         The range of valid IPs is 10.43.0.0/16"
    );

    // A dry run reports the address but keeps nothing.
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let d = api
        .create(&dry, &svc("d", json!({"clusterIP": "10.43.0.20"}))?)
        .await?;
    assert_eq!(cluster_ip(&d), "10.43.0.20");
    let d = api.create(&dry, &svc("d", json!({}))?).await?;
    assert!(!cluster_ip(&d).is_empty());
    assert!(
        !keys(server.store(), SERVICE_IP_PREFIX)
            .await?
            .contains("10.43.0.20")
    );
    let err = api
        .create(&dry, &svc("d", json!({"clusterIP": "10.43.0.10"}))?)
        .await
        .expect_err("dry run accepted a taken IP");
    assert!(refused(err, 422).contains("provided IP is already allocated"));

    // The cluster IP is immutable.
    let err = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"clusterIP": "10.43.0.11", "clusterIPs": ["10.43.0.11"]}}),
            ),
        )
        .await
        .expect_err("cluster IP changed");
    assert!(refused(err, 422).contains("spec.clusterIP"));
    // A replace that leaves it out keeps it.
    let mut a2 = api.get("a").await?;
    if let Some(s) = a2.spec.as_mut() {
        s.cluster_ip = None;
        s.cluster_ips = None;
    }
    let a2 = api.replace("a", &pp, &a2).await?;
    assert_eq!(cluster_ip(&a2), "10.43.0.10");

    // Once `a` is gone, its address can be requested again.
    api.delete("a", &DeleteParams::default()).await?;
    assert!(
        !keys(server.store(), SERVICE_IP_PREFIX)
            .await?
            .contains("10.43.0.10")
    );
    let b = api
        .create(&pp, &svc("b", json!({"clusterIP": "10.43.0.10"}))?)
        .await?;
    assert_eq!(cluster_ip(&b), "10.43.0.10");
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn node_ports_are_allocated_and_released() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, api) = start(dir.path()).await?;
    let pp = PostParams::default();
    let ports = json!([{"name": "http", "port": 80}, {"name": "https", "port": 443}]);
    let n = api
        .create(&pp, &svc("n", json!({"type": "NodePort", "ports": ports}))?)
        .await?;
    let allocated = node_ports(&n);
    assert_eq!(allocated.len(), 2);
    assert!(allocated.iter().all(|p| (30000..=32767).contains(p)));
    assert_ne!(allocated[0], allocated[1]);

    let err = api
        .create(
            &pp,
            &svc(
                "m",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": allocated[0]}]}),
            )?,
        )
        .await
        .expect_err("duplicate node port accepted");
    assert_eq!(
        refused(err, 422),
        format!(
            "Service \"m\" is invalid: spec.ports[0].nodePort: Invalid value: {}: provided port is already allocated",
            allocated[0]
        )
    );
    let err = api
        .create(
            &pp,
            &svc(
                "m",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 40000}]}),
            )?,
        )
        .await
        .expect_err("node port outside the range accepted");
    assert!(refused(err, 422).contains(
        "provided port is not in the valid range. The range of valid ports is 30000-32767"
    ));
    // The failed creates left nothing behind.
    let held = keys(server.store(), NODE_PORT_PREFIX).await?;
    assert_eq!(
        held,
        allocated
            .iter()
            .map(|p| p.to_string())
            .collect::<BTreeSet<_>>()
    );

    // NodePort → ClusterIP drops and releases the node ports, keeps the cluster IP.
    let ip = cluster_ip(&n);
    let c = api
        .patch(
            "n",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
        )
        .await?;
    assert!(node_ports(&c).is_empty());
    assert_eq!(cluster_ip(&c), ip);
    assert!(keys(server.store(), NODE_PORT_PREFIX).await?.is_empty());
    let m = api
        .create(
            &pp,
            &svc(
                "m",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": allocated[0]}]}),
            )?,
        )
        .await?;
    assert_eq!(node_ports(&m), vec![allocated[0]]);

    // ClusterIP → NodePort allocates again; → ExternalName releases the address too.
    let n = api
        .patch(
            "n",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "NodePort"}})),
        )
        .await?;
    assert_eq!(node_ports(&n).len(), 2);
    assert!(!node_ports(&n).contains(&allocated[0]));
    let e = api
        .patch(
            "n",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ExternalName", "externalName": "example.com"}})),
        )
        .await?;
    assert_eq!(cluster_ip(&e), "");
    assert!(node_ports(&e).is_empty());
    assert!(!keys(server.store(), SERVICE_IP_PREFIX).await?.contains(&ip));
    assert_eq!(
        keys(server.store(), NODE_PORT_PREFIX).await?,
        BTreeSet::from([allocated[0].to_string()])
    );

    // Deleting releases the ports.
    api.delete("m", &DeleteParams::default()).await?;
    assert!(keys(server.store(), NODE_PORT_PREFIX).await?.is_empty());

    // LoadBalancer gets node ports as well; with allocateLoadBalancerNodePorts false, none.
    let lb = api
        .create(&pp, &svc("lb", json!({"type": "LoadBalancer"}))?)
        .await?;
    assert_eq!(node_ports(&lb).len(), 1);
    let lb2 = api
        .create(
            &pp,
            &svc(
                "lb2",
                json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false}),
            )?,
        )
        .await?;
    assert!(node_ports(&lb2).is_empty());
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn headless_and_external_name_services_get_no_address() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, api) = start(dir.path()).await?;
    let pp = PostParams::default();
    let before = keys(server.store(), SERVICE_IP_PREFIX).await?;
    let h = api
        .create(&pp, &svc("headless", json!({"clusterIP": "None"}))?)
        .await?;
    assert_eq!(cluster_ip(&h), "None");
    assert_eq!(spec(&h)["clusterIPs"], json!(["None"]));
    let e = api
        .create(
            &pp,
            &svc(
                "ext",
                json!({"type": "ExternalName", "externalName": "db.example.com"}),
            )?,
        )
        .await?;
    assert_eq!(cluster_ip(&e), "");
    assert_eq!(keys(server.store(), SERVICE_IP_PREFIX).await?, before);
    // ExternalName → ClusterIP gets an address.
    let c = api
        .patch(
            "ext",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP", "externalName": null,
                "ports": [{"port": 80}]}})),
        )
        .await?;
    let ip = cluster_ip(&c);
    assert!(ip.starts_with("10.43."), "{ip}");
    assert!(keys(server.store(), SERVICE_IP_PREFIX).await?.contains(&ip));
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn configured_ranges_are_used() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, api) = start_with(dir.path(), |c| {
        c.service_cidr = "10.96.0.0/24".parse().expect("cidr");
        c.node_port_range = 31000..=31001;
    })
    .await?;
    assert_eq!(cluster_ip(&api.get("kubernetes").await?), "10.96.0.1");
    let pp = PostParams::default();
    let ports = json!([{"name": "a", "port": 80}, {"name": "b", "port": 81}]);
    let s = api
        .create(&pp, &svc("s", json!({"type": "NodePort", "ports": ports}))?)
        .await?;
    assert!(cluster_ip(&s).starts_with("10.96.0."));
    let mut got = node_ports(&s);
    got.sort_unstable();
    assert_eq!(got, vec![31000, 31001]);
    // The range is full: upstream answers 500.
    let err = api
        .create(&pp, &svc("t", json!({"type": "NodePort"}))?)
        .await
        .expect_err("allocated from a full range");
    assert!(refused(err, 500).contains("range is full"));
    // ... and the address the failed create took was released.
    assert_eq!(keys(server.store(), SERVICE_IP_PREFIX).await?.len(), 2);
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn repair_restores_lost_keys_and_frees_stale_ones() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, api) = start(dir.path()).await?;
    let pp = PostParams::default();
    let s = api
        .create(
            &pp,
            &svc(
                "s",
                json!({"type": "NodePort", "clusterIP": "10.43.0.50",
                    "ports": [{"port": 80, "nodePort": 30050}]}),
            )?,
        )
        .await?;
    assert_eq!(cluster_ip(&s), "10.43.0.50");
    let store = server.store().clone();
    // A crash between steps: the Service's keys are lost, and a key of a create that never
    // finished (no Service has its uid) is left behind.
    store
        .delete(format!("{SERVICE_IP_PREFIX}10.43.0.50").as_bytes(), None)
        .await?;
    store
        .delete(format!("{NODE_PORT_PREFIX}30050").as_bytes(), None)
        .await?;
    let stale = json!({"uid": "0000", "namespace": "default", "name": "ghost", "allocatedAt": 0});
    store
        .put(
            format!("{SERVICE_IP_PREFIX}10.43.0.77").as_bytes(),
            stale.to_string().into_bytes(),
            0,
        )
        .await?;
    // A young stale key is left to a later pass (its create may still be in flight).
    let young = json!({"uid": "1111", "allocatedAt": edgesite_clock::Clock::unix_seconds(&edgesite_clock::SystemClock)});
    store
        .put(
            format!("{NODE_PORT_PREFIX}30077").as_bytes(),
            young.to_string().into_bytes(),
            0,
        )
        .await?;
    drop(store);
    server.shutdown().await;

    // The repair runs at start, before anything is served.
    let (server, api) = start(dir.path()).await?;
    let ips = keys(server.store(), SERVICE_IP_PREFIX).await?;
    assert!(
        ips.contains("10.43.0.50") && !ips.contains("10.43.0.77"),
        "{ips:?}"
    );
    assert_eq!(
        keys(server.store(), NODE_PORT_PREFIX).await?,
        BTreeSet::from(["30050".to_owned(), "30077".to_owned()])
    );
    let err = api
        .create(&pp, &svc("t", json!({"clusterIP": "10.43.0.50"}))?)
        .await
        .expect_err("repaired address handed out again");
    assert!(refused(err, 422).contains("already allocated"));
    let t = api
        .create(&pp, &svc("t", json!({"clusterIP": "10.43.0.77"}))?)
        .await?;
    assert_eq!(cluster_ip(&t), "10.43.0.77");

    // An explicit pass with no grace frees the young one too and touches nothing held.
    let report = server.repair_service_allocations(Duration::ZERO).await?;
    assert_eq!((report.marked, report.freed, report.conflicts), (0, 1, 0));
    assert_eq!(
        keys(server.store(), NODE_PORT_PREFIX).await?,
        BTreeSet::from(["30050".to_owned()])
    );
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn local_load_balancers_get_a_health_check_port_and_dry_run_updates_keep_nothing()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, api) = start(dir.path()).await?;
    let pp = PostParams::default();
    let lb = api
        .create(
            &pp,
            &svc(
                "lb",
                json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local"}),
            )?,
        )
        .await?;
    let health = spec(&lb)["healthCheckNodePort"].as_i64().unwrap_or(0);
    assert!((30000..=32767).contains(&health), "{}", spec(&lb));
    let node_port = node_ports(&lb)[0];
    assert_ne!(i64::from(node_port), health);
    assert_eq!(
        keys(server.store(), NODE_PORT_PREFIX).await?,
        BTreeSet::from([node_port.to_string(), health.to_string()])
    );
    // Back to the Cluster policy: the health check port goes.
    let lb = api
        .patch(
            "lb",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"externalTrafficPolicy": "Cluster"}})),
        )
        .await?;
    assert!(spec(&lb).get("healthCheckNodePort").is_none());
    assert_eq!(
        keys(server.store(), NODE_PORT_PREFIX).await?,
        BTreeSet::from([node_port.to_string()])
    );

    // A dry-run type change shows node ports but takes none.
    api.create(&pp, &svc("c", json!({}))?).await?;
    let dry = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    let c = api
        .patch(
            "c",
            &dry,
            &Patch::Merge(json!({"spec": {"type": "NodePort"}})),
        )
        .await?;
    assert_eq!(node_ports(&c).len(), 1);
    assert_eq!(
        keys(server.store(), NODE_PORT_PREFIX).await?,
        BTreeSet::from([node_port.to_string()])
    );
    assert!(node_ports(&api.get("c").await?).is_empty());
    server.shutdown().await;
    Ok(())
}
