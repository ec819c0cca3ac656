//! System test of the runtime foundation against a real containerd (needs root, containerd,
//! runc and busybox-static; a missing one fails the test with the package to install).
//!
//! One managed containerd in a temporary agent directory; the pause and busybox images built
//! in Rust and imported; a host-network pod whose container prints and exits 3; the log in CRI
//! format; everything stopped and removed, and nothing left in `/proc` or the mount table.
#![allow(clippy::disallowed_methods)] // a system test: it waits for real processes

use std::time::Duration;

use edgesite_agent::cri::Runtime;
use edgesite_agent::cri::v1 as cri;
use edgesite_agent::oci;
use edgesite_testkit::containerd::{
    container, host_network_sandbox, is_running, leftovers_under, shim_socket, start_container,
};
use edgesite_testkit::{TestContainerd, busybox_image, direct_cri_pod_start};

const BUSYBOX: &str = "edgesite.io/busybox:1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_exits_and_logs_through_cri_and_leaves_nothing_behind() {
    let ctd = TestContainerd::start().await;
    let runtime = ctd.runtime();

    let version = runtime.version().await.unwrap();
    assert_eq!(version.runtime_name, "containerd");
    assert_eq!(version.runtime_api_version, "v1");

    let pause = ctd.import_pause_image().await;
    assert!(
        pause.repo_tags.iter().any(|t| t == oci::PAUSE_IMAGE),
        "{pause:?}"
    );
    let images = ctd.dir().join("images");
    let tarball = busybox_image(&images, BUSYBOX);
    let busybox = ctd.import(&tarball, BUSYBOX).await;
    assert!(
        busybox.repo_tags.iter().any(|t| t == BUSYBOX),
        "{busybox:?}"
    );
    let listed = runtime.list_images(None).await.unwrap();
    for name in [oci::PAUSE_IMAGE, BUSYBOX] {
        assert!(
            listed.iter().any(|i| i.repo_tags.iter().any(|t| t == name)),
            "{name} not in ListImages: {listed:?}"
        );
    }

    let logs = ctd.dir().join("pods").join("hello");
    let sandbox = host_network_sandbox("hello", "uid-hello", &logs);
    let pod = runtime.run_pod_sandbox(sandbox.clone(), "").await.unwrap();
    let status = runtime.pod_sandbox_status(&pod).await.unwrap();
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);

    let config = container(
        "hello",
        BUSYBOX,
        &["/bin/busybox"],
        &["sh", "-c", "echo hello; exit 3"],
        "hello/0.log",
    );
    let id = start_container(runtime, &pod, sandbox, config)
        .await
        .unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = runtime.container_status(&id).await.unwrap();
        if status.state == cri::ContainerState::ContainerExited as i32 {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the container did not exit in 30 s: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.exit_code, 3, "{status:?}");

    let log_path = logs.join("hello/0.log");
    assert_eq!(status.log_path, log_path.to_string_lossy());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let line = log.lines().next().unwrap_or_default();
    let fields: Vec<&str> = line.splitn(4, ' ').collect();
    assert_eq!(fields.len(), 4, "not a CRI log line: {log:?}");
    assert!(
        is_rfc3339(fields[0]),
        "not an RFC 3339 time: {:?} in {log:?}",
        fields[0]
    );
    assert_eq!(&fields[1..], ["stdout", "F", "hello"], "{log:?}");

    let containers = runtime.list_containers(None).await.unwrap();
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0].id, id);

    let took = direct_cri_pod_start(runtime, BUSYBOX, &ctd.dir().join("pods"))
        .await
        .unwrap();
    eprintln!("direct CRI pod start (RunPodSandbox + CreateContainer + StartContainer): {took:?}");

    runtime.stop_container(&id, 10).await.unwrap();
    runtime.remove_container(&id).await.unwrap();
    runtime.stop_pod_sandbox(&pod).await.unwrap();
    runtime.remove_pod_sandbox(&pod).await.unwrap();
    assert!(runtime.list_pod_sandboxes(None).await.unwrap().is_empty());
    assert!(runtime.list_containers(None).await.unwrap().is_empty());
    // runc's cgroups (cgroupfs driver, no cgroup parent: `/k8s.io/<id>` in every hierarchy)
    // went with the pod.
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        for gone in [&pod, &id] {
            let cgroup = hierarchy.path().join("k8s.io").join(gone);
            assert!(!cgroup.exists(), "{} is left behind", cgroup.display());
        }
    }
    let err = runtime.container_status(&id).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic_code_not_found()), "{err}");

    let dir = ctd.dir().to_path_buf();
    let left = ctd.stop().await;
    assert!(
        left.is_empty(),
        "left behind under {}: {left:?}",
        dir.display()
    );
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_is_restarted_when_it_dies() {
    let ctd = TestContainerd::start().await;
    let first = ctd.managed().pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(first).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(pid) = ctd.managed().pid().filter(|&p| p != first)
            && ctd.runtime().version().await.is_ok()
        {
            assert_ne!(pid, first);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "containerd was not restarted within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = ctd.stop().await;
    assert!(left.is_empty(), "{left:?}");
}

fn tonic_code_not_found() -> tonic::Code {
    tonic::Code::NotFound
}

/// `2026-12-07T12:00:00.123456789Z` or with a `+01:00` offset.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && (s.ends_with('Z') || s[19..].contains(['+', '-']))
        && s[..4].bytes().all(|c| c.is_ascii_digit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixture_dropped_with_a_running_pod_reaps_shims_containers_and_mounts() {
    let ctd = TestContainerd::start().await;
    ctd.import_pause_image().await;
    let tarball = busybox_image(&ctd.dir().join("images"), BUSYBOX);
    ctd.import(&tarball, BUSYBOX).await;
    let runtime = ctd.runtime();
    let sandbox = host_network_sandbox("left", "uid-left", &ctd.dir().join("pods"));
    let pod = runtime.run_pod_sandbox(sandbox.clone(), "").await.unwrap();
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
    let running = ctd.leftovers();
    // containerd, the shim and the two containers' processes; their rootfs and shm mounts.
    assert!(running.processes.len() >= 4, "{running:?}");
    assert!(!running.mounts.is_empty(), "{running:?}");

    let sockets: Vec<_> = running
        .processes
        .iter()
        .filter_map(|(_, cmdline)| shim_socket(cmdline))
        .collect();
    assert!(!sockets.is_empty(), "no shim in {running:?}");
    for socket in &sockets {
        assert!(
            socket.exists(),
            "{} is not the shim's socket",
            socket.display()
        );
    }

    let dir = ctd.dir().to_path_buf();
    drop(ctd);
    for socket in &sockets {
        assert!(!socket.exists(), "{} is left behind", socket.display());
    }
    let left = leftovers_under(&dir);
    assert!(
        left.is_empty(),
        "left behind under {}: {left:?}",
        dir.display()
    );
    assert!(!dir.exists(), "{} was not removed", dir.display());
    // Killed processes may linger a moment as zombies; none may still run.
    for (pid, cmdline) in &running.processes {
        assert!(!is_running(*pid), "{pid} ({cmdline}) still runs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importing_a_broken_tarball_fails_naming_the_command_and_the_file() {
    let ctd = TestContainerd::start().await;
    let broken = ctd.dir().join("broken.tar");
    std::fs::write(&broken, b"not a tarball").unwrap();
    let err = edgesite_agent::images::ImageImporter::new(ctd.socket())
        .import(ctd.runtime(), &broken, "edgesite.io/broken:1")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, edgesite_agent::images::Error::Import { .. }),
        "{text}"
    );
    assert!(text.contains("images import"), "{text}");
    assert!(text.contains(&*broken.to_string_lossy()), "{text}");
    assert!(
        ctd.runtime()
            .image_status("edgesite.io/broken:1")
            .await
            .unwrap()
            .is_none()
    );
    let left = ctd.stop().await;
    assert!(left.is_empty(), "{left:?}");
}
