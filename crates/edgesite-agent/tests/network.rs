//! System test of pod networking against a real containerd and the host's CNI plugins (needs
//! root, containerd, runc, busybox-static, containernetworking-plugins, iproute2 and iptables;
//! a missing one fails the test naming the Debian package).
//!
//! The agent's conflist for a random `10.88.X.0/24` no route of the host overlaps; a pod in its
//! own network namespace gets an address in it, serves a file with busybox httpd, and the test
//! process reads it over TCP from the host, through the agent's own bridge (no other interface
//! sees the traffic). Stopping the pod releases its address, its veth and its masquerade rule;
//! the fixture and `cni::cleanup` remove the bridge.
#![allow(clippy::disallowed_methods)] // a system test: it waits for and times real processes

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use edgesite_agent::cni::{self, Ipv4Cidr, PodNetwork};
use edgesite_agent::cri::Runtime;
use edgesite_agent::cri::v1 as cri;
use edgesite_testkit::containerd::{
    container, host_network_sandbox, pod_network_sandbox, start_container,
};
use edgesite_testkit::{TestContainerd, busybox_image, http_get, wait_for_port};

const BUSYBOX: &str = "edgesite.io/busybox:1";

/// Fails, naming the Debian package, when a binary the pod network needs is missing.
fn require_prerequisites() {
    assert!(
        nix_is_root(),
        "the pod network test needs root (it creates bridges, veths and iptables rules)"
    );
    for plugin in ["bridge", "host-local", "loopback", "portmap"] {
        let path = Path::new("/usr/lib/cni").join(plugin);
        assert!(
            path.is_file(),
            "{} is missing: install the Debian package `containernetworking-plugins` (run \
             `scripts/setup`)",
            path.display()
        );
    }
    for (binary, package) in [("ip", "iproute2"), ("iptables", "iptables")] {
        assert!(
            Command::new(binary).arg("-V").output().is_ok(),
            "`{binary}` is missing: install the Debian package `{package}` (run `scripts/setup`)"
        );
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1).map(|e| e == "0"))
        .unwrap_or(false)
}

fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every IPv4 network or address in the host's routing tables (all tables).
fn host_routes() -> Vec<(Ipv4Addr, u8)> {
    output("ip", &["-4", "route", "show", "table", "all"])
        .split_whitespace()
        .filter_map(|word| {
            let (ip, prefix) = word.split_once('/').unwrap_or((word, "32"));
            Some((ip.parse().ok()?, prefix.parse().ok()?))
        })
        .collect()
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let prefix = a.1.min(b.1);
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

/// A `10.88.X.0/24` that overlaps no route of the host (`10.88.0.0/16` is nobody's default;
/// `X` from the clock and the pid, so parallel tests pick different ones).
fn free_pod_cidr(salt: u32) -> Ipv4Cidr {
    let routes = host_routes();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let seed = nanos ^ std::process::id().rotate_left(8) ^ salt.wrapping_mul(0x9e37_79b9);
    for i in 0..256u32 {
        let x = u8::try_from((seed.wrapping_add(i * 97) >> 4) % 254 + 1).unwrap();
        let net = (Ipv4Addr::new(10, 88, x, 0), 24);
        if !routes
            .iter()
            .filter(|r| r.1 > 0) // the default route overlaps everything
            .any(|&r| overlaps(r, net))
        {
            return format!("10.88.{x}.0/24").parse().unwrap();
        }
    }
    panic!("every 10.88.X.0/24 overlaps a host route: {routes:?}");
}

fn link_exists(name: &str) -> bool {
    output("ip", &["-o", "link", "show"])
        .lines()
        .any(|l| l.split(": ").nth(1).and_then(|n| n.split('@').next()) == Some(name))
}

/// Waits up to 10 s for the link `name` to go: the kernel destroys a freed network namespace,
/// and the veth end inside it, from a work queue, a moment after its last reference goes.
fn assert_link_gone(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while link_exists(name) {
        assert!(Instant::now() < deadline, "{name} is left behind");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The host ends of the veths enslaved to `bridge`.
fn veths_of(bridge: &str) -> Vec<String> {
    output("ip", &["-o", "link", "show", "master", bridge])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

fn masquerade_rules(network: &str) -> Vec<String> {
    let needle = format!("name: \\\"{network}\\\"");
    output("iptables", &["-w", "-t", "nat", "-S", "POSTROUTING"])
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

async fn pod_ip(runtime: &dyn Runtime, pod: &str) -> Ipv4Addr {
    let status = runtime.pod_sandbox_status(pod).await.unwrap();
    assert_eq!(
        status.state,
        cri::PodSandboxState::SandboxReady as i32,
        "{status:?}"
    );
    let ip = status
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default();
    ip.parse()
        .unwrap_or_else(|_| panic!("the pod has no IPv4 address: {status:?}"))
}

async fn wait_running(runtime: &dyn Runtime, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = runtime.container_status(id).await.unwrap();
        if status.state == cri::ContainerState::ContainerRunning as i32 {
            return;
        }
        assert!(
            status.state != cri::ContainerState::ContainerExited as i32,
            "the container exited: {status:?}"
        );
        assert!(Instant::now() < deadline, "not running in 30 s: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the fixture, writes the pod network and imports pause and busybox.
async fn networked_containerd(salt: u32) -> (TestContainerd, PodNetwork) {
    require_prerequisites();
    let ctd = TestContainerd::start().await;
    let cidr = free_pod_cidr(salt);
    let net = PodNetwork::new(ctd.dir(), &cidr.to_string()).unwrap();
    net.write().unwrap();
    assert!(
        !link_exists(&net.bridge),
        "{} exists before the first pod",
        net.bridge
    );
    ctd.import_pause_image().await;
    let tarball = busybox_image(&ctd.dir().join("images"), BUSYBOX);
    ctd.import(&tarball, BUSYBOX).await;
    (ctd, net)
}

const HTTPD: &str = "mkdir -p /www && echo hello from the pod > /www/index.html && \
     /bin/busybox ip -o addr show dev lo > /www/lo.txt && \
     exec /bin/busybox httpd -f -p 8080 -h /www";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_on_the_agents_bridge_serves_the_host_and_releases_its_address() {
    let (ctd, net) = networked_containerd(1).await;
    let runtime = ctd.runtime();
    let logs = ctd.dir().join("pods");

    // Host network first, once to warm up (the pause snapshot), once measured.
    let mut host_time = Duration::ZERO;
    for i in 0..2 {
        let name = format!("host-{i}");
        let sandbox = host_network_sandbox(&name, &name, &logs);
        let started = Instant::now();
        let pod = runtime.run_pod_sandbox(sandbox, "").await.unwrap();
        host_time = started.elapsed();
        runtime.stop_pod_sandbox(&pod).await.unwrap();
        runtime.remove_pod_sandbox(&pod).await.unwrap();
    }

    let sandbox = pod_network_sandbox("web", "uid-web", &logs);
    let started = Instant::now();
    let pod = runtime
        .run_pod_sandbox(sandbox.clone(), "")
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RunPodSandbox with the CNI network failed: {e}\nconflist {}:\n{}",
                net.conflist_path().display(),
                std::fs::read_to_string(net.conflist_path()).unwrap_or_default()
            )
        });
    let cni_time = started.elapsed();

    let ip = pod_ip(runtime, &pod).await;
    assert!(net.pod_cidr.contains(ip), "{ip} is not in {}", net.pod_cidr);
    assert_ne!(ip, net.pod_cidr.gateway());
    assert!(
        net.lease_path(ip).is_file(),
        "host-local did not record {ip} at {}",
        net.lease_path(ip).display()
    );
    assert!(link_exists(&net.bridge), "no bridge {}", net.bridge);
    let veths = veths_of(&net.bridge);
    assert_eq!(veths.len(), 1, "veths on {}: {veths:?}", net.bridge);
    // The host reaches the pod through the agent's bridge, and nothing else.
    let route = output("ip", &["-4", "route", "get", &ip.to_string()]);
    assert!(
        route.contains(&format!("dev {} ", net.bridge)),
        "{ip} is not routed through {}: {route}",
        net.bridge
    );
    assert_eq!(
        masquerade_rules(&net.name()).len(),
        1,
        "{:?}",
        masquerade_rules(&net.name())
    );

    let config = container(
        "httpd",
        BUSYBOX,
        &["/bin/busybox"],
        &["sh", "-c", HTTPD],
        "httpd/0.log",
    );
    let id = start_container(runtime, &pod, sandbox.clone(), config)
        .await
        .unwrap();
    wait_running(runtime, &id).await;

    let addr = SocketAddr::from((ip, 8080));
    wait_for_port(addr, Duration::from_secs(20)).unwrap();
    let (status, body) = http_get(addr, "/index.html", Duration::from_secs(10)).unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from the pod\n"));
    // The pod's own loopback is up with 127.0.0.1: containerd's CRI plugin ran `loopback`.
    let (status, lo) = http_get(addr, "/lo.txt", Duration::from_secs(10)).unwrap();
    assert_eq!(status, 200);
    assert!(
        lo.contains("inet 127.0.0.1/8"),
        "the pod's lo is not set up: {lo:?}"
    );

    // A second networked pod, for a timing without the bridge's creation.
    let second = pod_network_sandbox("web-2", "uid-web-2", &logs);
    let started = Instant::now();
    let pod2 = runtime.run_pod_sandbox(second, "").await.unwrap();
    let cni_time_2 = started.elapsed();
    let ip2 = pod_ip(runtime, &pod2).await;
    assert!(
        net.pod_cidr.contains(ip2) && ip2 != ip,
        "{ip2} next to {ip}"
    );
    runtime.stop_pod_sandbox(&pod2).await.unwrap();
    runtime.remove_pod_sandbox(&pod2).await.unwrap();

    eprintln!(
        "RunPodSandbox: host network {host_time:?}; CNI bridge, first pod (creates the \
         bridge) {cni_time:?}; CNI bridge, second pod {cni_time_2:?}"
    );

    runtime.stop_container(&id, 10).await.unwrap();
    runtime.remove_container(&id).await.unwrap();
    runtime.stop_pod_sandbox(&pod).await.unwrap();
    runtime.remove_pod_sandbox(&pod).await.unwrap();
    for released in [ip, ip2] {
        assert!(
            !net.lease_path(released).exists(),
            "{released} is still allocated: {}",
            net.lease_path(released).display()
        );
    }
    for veth in &veths {
        assert_link_gone(veth);
    }
    assert!(masquerade_rules(&net.name()).is_empty());

    let dir = ctd.dir().to_path_buf();
    let left = ctd.stop().await;
    assert!(left.is_empty(), "left behind: {left:?}");
    cni::cleanup(&dir).unwrap();
    assert!(!link_exists(&net.bridge), "{} is left behind", net.bridge);
    assert!(!net.ipam_dir().exists());
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixture_dropped_with_a_networked_pod_leaves_no_bridge_veth_or_rule() {
    let (ctd, net) = networked_containerd(2).await;
    let runtime = ctd.runtime();
    let sandbox = pod_network_sandbox("left", "uid-left", &ctd.dir().join("pods"));
    let pod = runtime.run_pod_sandbox(sandbox.clone(), "").await.unwrap();
    let ip = pod_ip(runtime, &pod).await;
    assert!(net.pod_cidr.contains(ip), "{ip} is not in {}", net.pod_cidr);
    let config = container(
        "sleep",
        BUSYBOX,
        &["/bin/busybox"],
        &["sleep", "3600"],
        "s.log",
    );
    start_container(runtime, &pod, sandbox, config)
        .await
        .unwrap();
    let veths = veths_of(&net.bridge);
    assert_eq!(veths.len(), 1, "{veths:?}");
    let rules = masquerade_rules(&net.name());
    assert_eq!(rules.len(), 1, "{rules:?}");
    let chain = rules[0]
        .rsplit_once("-j ")
        .map(|(_, c)| c.trim().to_string())
        .unwrap();
    assert!(chain.starts_with("CNI-"), "{rules:?}");
    assert!(nat_chains().contains(&chain));

    // No StopPodSandbox: CNI DEL never runs; the fixture must still clean up.
    let dir = ctd.dir().to_path_buf();
    drop(ctd);
    assert!(!dir.exists(), "{} was not removed", dir.display());
    assert!(!link_exists(&net.bridge), "{} is left behind", net.bridge);
    for veth in &veths {
        assert_link_gone(veth);
    }
    let rules = masquerade_rules(&net.name());
    assert!(rules.is_empty(), "masquerade rules left behind: {rules:?}");
    assert!(!nat_chains().contains(&chain), "{chain} is left behind");
}

/// The user chains of the nat table.
fn nat_chains() -> Vec<String> {
    output("iptables", &["-w", "-t", "nat", "-S"])
        .lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .map(str::to_string)
        .collect()
}
