//! System test of a real node: `edgesite up` (server and agent in one process) with its own
//! managed containerd, the busybox image dropped into its images directory, a pod run with the
//! real kubectl (ConfigMap env and volume), gracefully deleted, and `edgesite agent --cleanup`
//! leaving nothing behind. Needs root, containerd, runc and the CNI plugins (`scripts/setup`);
//! a missing prerequisite fails the test.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, ensure};

mod support;
use support::site::{Site, cleanup};
use support::{eventually, kubectl_output};

#[test]
fn edgesite_up_runs_a_real_pod_and_cleanup_leaves_nothing() -> Result<()> {
    let mut site = Site::start("edge-up", &[], &[])?;
    let dir = site.dir.path().to_owned();
    let home = site.home.path().to_owned();
    let kubeconfig = site.kubeconfig.clone();
    let agent_dir = site.agent_dir.clone();
    let k = |args: &[&str]| site.kubectl(args);
    let ready = site.wait_node_ready(60)?;
    println!("figure: edgesite up → node Ready in {ready:?}");
    let node: serde_json::Value =
        serde_json::from_str(&k(&["get", "node", "edge-up", "-o", "json"])?)?;
    let cidr = node["spec"]["podCIDR"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        cidr.starts_with("10.42."),
        "allocated from the cluster CIDR: {cidr}"
    );
    assert!(
        node["status"]["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .unwrap_or_default()
            .starts_with("containerd://"),
        "{node}"
    );
    let wide = k(&["get", "nodes", "-o", "wide"])?;
    assert!(
        wide.contains("edge-up") && wide.contains("127.0.0.1"),
        "{wide}"
    );

    let manifest = dir.join("pod.yaml");
    std::fs::write(
        &manifest,
        r#"apiVersion: v1
kind: ConfigMap
metadata: {name: greeting}
data: {text: hello-from-configmap}
---
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 10
  containers:
  - name: app
    image: edgesite.io/busybox:1
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "cat /cfg/text > /shared/seen; echo $GREETING >> /shared/seen; trap 'exit 0' TERM; while true; do sleep 1; done"]
    env:
    - name: GREETING
      valueFrom: {configMapKeyRef: {name: greeting, key: text}}
    volumeMounts:
    - {name: cfg, mountPath: /cfg}
    - {name: shared, mountPath: /shared}
  volumes:
  - {name: cfg, configMap: {name: greeting}}
  - {name: shared, emptyDir: {}}
"#,
    )?;
    let created = Instant::now();
    k(&["apply", "-f", &manifest.to_string_lossy()])?;
    k(&["wait", "--for=condition=Ready", "pod/web", "--timeout=60s"])?;
    println!(
        "figure: pod create → Ready through kubectl {:?}",
        created.elapsed()
    );
    let pod: serde_json::Value = serde_json::from_str(&k(&["get", "pod", "web", "-o", "json"])?)?;
    let status = &pod["status"];
    assert_eq!(status["phase"], "Running");
    let ip = status["podIP"].as_str().unwrap_or_default();
    let prefix = cidr.rsplit_once('.').map(|(p, _)| p).unwrap_or_default();
    assert!(ip.starts_with(prefix), "pod IP {ip} from the node's {cidr}");
    assert_eq!(status["hostIP"], "127.0.0.1");
    let cs = &status["containerStatuses"][0];
    assert!(
        cs["containerID"]
            .as_str()
            .unwrap_or_default()
            .starts_with("containerd://"),
        "{cs}"
    );
    assert_eq!(cs["ready"], true);
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // The container saw the ConfigMap as a file and as env, written into its emptyDir.
    let seen = agent_dir.join("pods").join(&uid).join("volumes");
    let mut found = String::new();
    eventually(20, "the container's output in its emptyDir", || {
        found = find_file(&seen, "seen")
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        Ok((!found.ends_with('\n')).then(|| found.clone()))
    })?;
    // The file's text (no newline of its own), then the env var's.
    assert_eq!(found, "hello-from-configmaphello-from-configmap\n");
    let events = k(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web",
    ])?;
    assert!(events.contains("Started"), "{events}");

    let deleting = Instant::now();
    k(&["delete", "pod", "web", "--timeout=60s"])?;
    println!(
        "figure: graceful delete (SIGTERM trapped) {:?}",
        deleting.elapsed()
    );
    let left = kubectl_output(&home, &kubeconfig, &["get", "pod", "web"])?;
    assert!(left.stderr.contains("NotFound"), "{left:?}");

    site.stop()?;
    let out = cleanup(&agent_dir)?;
    ensure!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!agent_dir.exists(), "the agent's directory is gone");
    let left = edgesite_testkit::containerd::leftovers_under(&dir);
    assert!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

/// A node short of disk (here: any disk use counts, `--eviction-hard nodefs.available<100%`)
/// reports `DiskPressure`, records kubelet's node event, is tainted `disk-pressure:NoSchedule`,
/// and new pods are not scheduled to it; Ready stays True.
#[test]
fn a_node_short_of_disk_reports_disk_pressure_and_takes_no_new_pods() -> Result<()> {
    let mut site = Site::start(
        "edge-dp",
        &[
            "--eviction-hard",
            "nodefs.available<100%",
            "--cluster-cidr",
            "10.79.0.0/16",
        ],
        &[],
    )?;
    site.wait_node_ready(60)?;
    let condition = |kind: &str| -> Result<String> {
        site.kubectl(&[
            "get",
            "node",
            "edge-dp",
            "-o",
            &format!("jsonpath={{.status.conditions[?(@.type==\"{kind}\")].status}}"),
        ])
    };
    eventually(30, "DiskPressure True", || {
        let now = condition("DiskPressure")?;
        Ok((now != "True").then_some(now))
    })?;
    assert_eq!(condition("Ready")?, "True");
    assert_eq!(condition("MemoryPressure")?, "False");
    eventually(30, "the disk-pressure taint", || {
        let taints = site.kubectl(&["get", "node", "edge-dp", "-o", "jsonpath={.spec.taints}"])?;
        Ok((!taints.contains("node.kubernetes.io/disk-pressure")).then_some(taints))
    })?;
    eventually(30, "the NodeHasDiskPressure event", || {
        let events = site.kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=Node,reason=NodeHasDiskPressure",
            "-o",
            "name",
        ])?;
        Ok(events.trim().is_empty().then(|| "none yet".to_owned()))
    })?;
    site.kubectl(&[
        "run",
        "late",
        "--image=edgesite.io/busybox:1",
        "--restart=Never",
        "--",
        "true",
    ])?;
    eventually(30, "a FailedScheduling event naming the taint", || {
        let events = site.kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=late,reason=FailedScheduling",
            "-o",
            "jsonpath={.items[*].message}",
        ])?;
        Ok((!events.contains("disk-pressure")).then_some(events))
    })?;
    assert_eq!(
        site.kubectl(&["get", "pod", "late", "-o", "jsonpath={.status.phase}"])?,
        "Pending"
    );
    site.stop()?;
    Ok(())
}
