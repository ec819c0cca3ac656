//! System test of the pod CRI configuration and host volumes against a real containerd
//! (needs root, containerd, runc and busybox-static; a missing one fails the test).
//!
//! A host-network pod with a configMap volume and an emptyDir: its sandbox and container
//! configurations come from `sandbox_config`/`container_config` over what `HostVolumes`
//! prepared; the container writes what it sees (env from the ConfigMap, the mounted file,
//! its memory limit and OOM score, its termination message) into the emptyDir, which the
//! test reads on the host, along with the container's cgroup limits; then a ConfigMap
//! change reaches the file the running container reads.
#![allow(clippy::disallowed_methods)] // a system test: it waits for real processes

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgesite_agent::cri::Runtime;
use edgesite_agent::cri::v1 as cri;
use edgesite_agent::pod::config::{ResolvConf, container_config, sandbox_config};
use edgesite_agent::pod::resources::oom_score_adj;
use edgesite_agent::pod::volumes::HostVolumes;
use edgesite_agent::pod::{NodeContext, NodeResources, Objects, VolumeManager};
use edgesite_testkit::{TestContainerd, busybox_image};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use serde_json::json;

const BUSYBOX: &str = "edgesite.io/busybox:1";

#[derive(Debug, Default)]
struct Cache {
    config_maps: BTreeMap<String, Arc<ConfigMap>>,
}

impl Objects for Cache {
    fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        self.config_maps
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }
    fn secret(&self, _: &str, _: &str) -> Option<Arc<Secret>> {
        None
    }
}

/// The container's cgroup directory of `controller` on the host (cgroupfs driver, no
/// parent: `/k8s.io/<id>`), v1 or v2.
fn cgroup_file(id: &str, v1_controller: &str, v1_file: &str, v2_file: &str) -> PathBuf {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        root.join("k8s.io").join(id).join(v2_file)
    } else {
        root.join(v1_controller)
            .join("k8s.io")
            .join(id)
            .join(v1_file)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_sees_its_config_map_env_volume_and_memory_limit() {
    let ctd = TestContainerd::start().await;
    let runtime = ctd.runtime();
    ctd.import_pause_image().await;
    let tarball = busybox_image(&ctd.dir().join("images"), BUSYBOX);
    ctd.import(&tarball, BUSYBOX).await;

    let node = NodeContext {
        node_name: "node-1".into(),
        node_ip: "127.0.0.1".parse().unwrap(),
        pods_dir: ctd.dir().join("pods"),
        cluster_dns: None,
        cluster_domain: "cluster.local".into(),
        capacity: NodeResources::of_host(),
        allocatable: NodeResources::of_host(),
        resolv_conf: "/etc/resolv.conf".into(),
        host_hosts_file: "/etc/hosts".into(),
    };
    assert!(node.capacity.memory_bytes > 0, "{:?}", node.capacity);
    let mut cache = Cache::default();
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "cfg", "namespace": "default"},
        "data": {"greeting": "hello from a configmap", "file.txt": "file content\n"},
    }))
    .unwrap();
    cache.config_maps.insert("default/cfg".into(), Arc::new(cm));

    let script = "echo \"$GREETING\" > /out/env; echo $(POD) > /out/expanded; \
                  cat /etc/cfg/file.txt > /out/file; \
                  (cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || \
                   cat /sys/fs/cgroup/memory.max) > /out/mem; \
                  cat /proc/self/oom_score_adj > /out/oom; \
                  echo bye > /dev/termination-log; \
                  cat /etc/resolv.conf > /out/resolv; cat /etc/hosts > /out/hosts; \
                  touch /out/done; \
                  while :; do cat /etc/cfg/file.txt > /out/live.tmp; mv /out/live.tmp /out/live; \
                  usleep 50000; done";
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "cfg-pod", "namespace": "default", "uid": "uid-cfg", "labels": {"app": "cfg"}},
        "spec": {
            "hostNetwork": true,
            "containers": [{
                "name": "app",
                "image": BUSYBOX,
                "command": ["/bin/busybox"],
                "args": ["sh", "-c", script],
                "env": [
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                ],
                "resources": {
                    "requests": {"cpu": "250m", "memory": "32Mi"},
                    "limits": {"cpu": "500m", "memory": "64Mi"},
                },
                "volumeMounts": [
                    {"name": "cfg", "mountPath": "/etc/cfg"},
                    {"name": "out", "mountPath": "/out"},
                ],
            }],
            "volumes": [
                {"name": "cfg", "configMap": {"name": "cfg"}},
                {"name": "out", "emptyDir": {}},
            ],
        },
    }))
    .unwrap();
    let spec_container = pod.spec.as_ref().unwrap().containers[0].clone();

    let volumes = HostVolumes::new(node.clone());
    let prepared = volumes.setup(&pod, &cache).await.unwrap();
    let out = prepared.paths["out"].host_path.clone();

    let sandbox = sandbox_config(&pod, &node, 0).unwrap();
    std::fs::create_dir_all(&sandbox.log_directory).unwrap();
    let sandbox_id = runtime.run_pod_sandbox(sandbox.clone(), "").await.unwrap();
    let config =
        container_config(&pod, &spec_container, 0, &prepared, &cache, &node, None).unwrap();
    let id = runtime
        .create_container(&sandbox_id, config, sandbox.clone())
        .await
        .unwrap();
    runtime.start_container(&id).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    while !out.join("done").exists() {
        let status = runtime.container_status(&id).await.unwrap();
        assert!(
            status.state != cri::ContainerState::ContainerExited as i32,
            "the container exited: {status:?}, log: {:?}",
            std::fs::read_to_string(Path::new(&sandbox.log_directory).join("app/0.log"))
        );
        assert!(
            Instant::now() < deadline,
            "the container wrote nothing in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap();
    assert_eq!(read("env"), "hello from a configmap\n");
    assert_eq!(read("expanded"), "cfg-pod\n");
    assert_eq!(read("file"), "file content\n");
    assert_eq!(read("mem").trim(), (64u64 << 20).to_string());
    let want_oom = oom_score_adj(&pod, &spec_container, node.capacity.memory_bytes);
    assert_eq!(read("oom").trim(), want_oom.to_string());
    // The host's DNS (host network, no cluster DNS) and the node's hosts file.
    let host_dns = ResolvConf::parse(&std::fs::read_to_string("/etc/resolv.conf").unwrap());
    let seen_dns = ResolvConf::parse(&read("resolv"));
    assert_eq!(seen_dns.servers, host_dns.servers);
    assert_eq!(seen_dns.searches, host_dns.searches);
    let host_hosts = std::fs::read_to_string("/etc/hosts").unwrap();
    assert!(
        read("hosts").starts_with(&host_hosts),
        "{:?}",
        read("hosts")
    );
    let log = node.pod_dir("uid-cfg").join("containers/app/0");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "bye\n");

    // The same limits as the host sees them on the container's cgroup.
    let mem = cgroup_file(&id, "memory", "memory.limit_in_bytes", "memory.max");
    assert_eq!(
        std::fs::read_to_string(&mem).unwrap().trim(),
        (64u64 << 20).to_string(),
        "{}",
        mem.display()
    );
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if v2 {
        let cpu = std::fs::read_to_string(cgroup_file(&id, "", "", "cpu.max")).unwrap();
        assert_eq!(cpu.trim(), "50000 100000");
    } else {
        let quota = cgroup_file(&id, "cpu", "cpu.cfs_quota_us", "");
        assert_eq!(std::fs::read_to_string(quota).unwrap().trim(), "50000");
        let shares = cgroup_file(&id, "cpu", "cpu.shares", "");
        assert_eq!(std::fs::read_to_string(shares).unwrap().trim(), "256");
    }

    // A ConfigMap change reaches the running container's mounted file once setup runs
    // again: the `..data` swap happens inside the bind-mounted directory.
    let mut changed = (*cache.config_maps["default/cfg"]).clone();
    changed
        .data
        .as_mut()
        .unwrap()
        .insert("file.txt".into(), "updated\n".into());
    cache
        .config_maps
        .insert("default/cfg".into(), Arc::new(changed));
    volumes.setup(&pod, &cache).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live = std::fs::read_to_string(out.join("live")).unwrap_or_default();
        if live == "updated\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the container still sees {live:?} 10 s after the update"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    runtime.stop_container(&id, 0).await.unwrap();
    runtime.remove_container(&id).await.unwrap();
    runtime.stop_pod_sandbox(&sandbox_id).await.unwrap();
    runtime.remove_pod_sandbox(&sandbox_id).await.unwrap();
    volumes.teardown("uid-cfg").await.unwrap();
    assert!(!node.pod_dir("uid-cfg").exists());
    let left = ctd.stop().await;
    assert!(left.is_empty(), "{left:?}");
}
