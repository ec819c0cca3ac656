//! The test etcd starts healthy, serves the v3 API, honours extra flags and is gone after drop.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::path::Path;
use std::time::{Duration, Instant};

use edgesite_testkit::{EtcdOptions, EtcdServer, http_get, wait_for_port};

/// Whether process `pid` still exists (a reaped process has no `/proc` entry).
fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn etcd_server_answers_health_and_is_gone_after_drop() {
    let etcd = EtcdServer::start();
    let pid = etcd.pid();
    let dir = etcd.dir().to_path_buf();
    let client = etcd.client_addr();

    assert_eq!(etcd.client_url(), format!("http://{}", etcd.endpoint()));
    assert!(
        etcd.endpoint().starts_with("127.0.0.1:"),
        "{}",
        etcd.endpoint()
    );
    assert_ne!(etcd.client_url(), etcd.peer_url());
    let (status, body) = http_get(client, "/health", Duration::from_secs(5)).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains(r#""health":"true""#), "{body}");
    etcd.health().unwrap();
    assert!(process_exists(pid));
    assert!(dir.join("data").is_dir());
    // The process is etcd itself (setpriv execs it), so killing this pid stops the server.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("--data-dir="),
        "{cmdline:?}"
    );

    drop(etcd);
    assert!(!process_exists(pid), "etcd (pid {pid}) survived the drop");
    assert!(!dir.exists(), "{} survived the drop", dir.display());
    assert!(
        wait_for_port(client, Duration::from_millis(200)).is_err(),
        "something still listens on {client}"
    );
}

#[test]
fn two_servers_run_side_by_side_on_distinct_ports() {
    let a = EtcdServer::start();
    let b = EtcdServer::start();
    assert_ne!(a.endpoint(), b.endpoint());
    assert_ne!(a.dir(), b.dir());
    a.health().unwrap();
    b.health().unwrap();
}

#[test]
fn extra_args_reach_etcd() {
    let etcd = EtcdOptions::new()
        .arg("--max-request-bytes=2097152")
        .arg("--auto-compaction-mode=revision")
        .arg("--auto-compaction-retention=1000")
        .start();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", etcd.pid())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("--max-request-bytes=2097152"), "{cmdline}");
    assert!(
        cmdline.contains("--auto-compaction-mode=revision"),
        "{cmdline}"
    );
    etcd.health().unwrap();
}

#[test]
fn a_bad_flag_fails_fast_with_the_log_tail() {
    let started = Instant::now();
    let err = EtcdOptions::new()
        .arg("--no-such-flag-for-etcd")
        .try_start()
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("did not become healthy"), "{msg}");
    assert!(msg.contains("no-such-flag-for-etcd"), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
#[should_panic(expected = "--unsafe-no-fsync is not allowed")]
fn unsafe_no_fsync_is_refused() {
    let _ = EtcdOptions::new().arg("--unsafe-no-fsync");
}

#[test]
fn a_missing_binary_fails_telling_to_run_setup() {
    let err = EtcdOptions::new()
        .binary("/nonexistent/etcd")
        .try_start()
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("scripts/setup"), "{msg}");
    assert!(msg.contains("/nonexistent/etcd"), "{msg}");
}

#[test]
#[should_panic(expected = "run `scripts/setup`")]
fn start_panics_when_the_binary_is_missing() {
    let _ = EtcdOptions::new().binary("/nonexistent/etcd").start();
}
