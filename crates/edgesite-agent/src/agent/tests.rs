//! The heartbeat over a fake API server (an in-process kube client whose answers each test
//! chooses) and a runtime that goes down on demand, on paused tokio time: the intervals are
//! the agent's defaults, and every wait below is virtual.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

use super::*;
use crate::cri::v1::RuntimeCondition;
use crate::fake_api::{self, Reply};
use crate::pod::fake::TokioClock;

/// A runtime whose CRI `Status` answers until [`SwitchedRuntime::down`] is set.
#[derive(Debug, Default)]
struct SwitchedRuntime {
    down: AtomicBool,
}

#[async_trait::async_trait]
impl RuntimeStatus for SwitchedRuntime {
    async fn runtime_status(&self) -> crate::cri::Result<Vec<RuntimeCondition>> {
        if self.down.load(Ordering::SeqCst) {
            return Err(crate::cri::Error::Call {
                call: "Status",
                socket: PathBuf::from("/fake/containerd.sock"),
                code: tonic::Code::Unavailable,
                message: "connection refused".into(),
            });
        }
        let ready = |kind: &str| RuntimeCondition {
            r#type: kind.into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        };
        Ok(vec![ready("RuntimeReady"), ready("NetworkReady")])
    }

    fn socket(&self) -> &Path {
        Path::new("/fake/containerd.sock")
    }
}

/// What the fake server does and saw.
#[derive(Debug, Default)]
struct FakeApi {
    /// Lease renewals never get an answer.
    hang_leases: bool,
    /// The next status post with `Ready=False` fails with a 500.
    fail_next_not_ready: AtomicBool,
    /// Each status post: when, its Ready status, and whether it was accepted.
    posts: Mutex<Vec<(tokio::time::Instant, String, bool)>>,
}

impl FakeApi {
    fn posts(&self) -> Vec<(tokio::time::Instant, String, bool)> {
        self.posts.lock().unwrap().clone()
    }

    /// When the first accepted post with Ready `status` arrived.
    fn accepted(&self, status: &str) -> Option<tokio::time::Instant> {
        self.posts()
            .into_iter()
            .find(|(_, s, ok)| *ok && s == status)
            .map(|(at, _, _)| at)
    }
}

/// The fake server: Lease renewals answered (or never), status posts recorded and answered
/// (the first `Ready=False` one with a 500 when asked).
fn client(api: Arc<FakeApi>) -> kube::Client {
    fake_api::client(move |_, path, body| {
        if path.contains("/leases/") {
            if api.hang_leases {
                return Reply::Hang;
            }
            return Reply::Json(
                200,
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "n1", "namespace": "kube-node-lease"}}),
            );
        }
        if !path.ends_with("/nodes/n1/status") {
            return fake_api::failure(404);
        }
        let patch: Value = serde_json::from_slice(body).unwrap_or_default();
        let ready = patch["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .map(|c| c["status"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        let fail = ready == "False" && api.fail_next_not_ready.swap(false, Ordering::SeqCst);
        api.posts
            .lock()
            .unwrap()
            .push((tokio::time::Instant::now(), ready, !fail));
        if fail {
            return fake_api::failure(500);
        }
        Reply::Json(
            200,
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}),
        )
    })
}

/// Starts the heartbeat of node `n1` with the agent's default intervals; returns it with the
/// runtime, the directory (kept while the test runs) and the start time.
async fn start(
    api: Arc<FakeApi>,
) -> (
    tokio::task::JoinHandle<()>,
    Arc<SwitchedRuntime>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _changes) = LocalCache::open(&dir.path().join("cache")).await.unwrap();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let config = AgentConfig::new(
        "https://192.0.2.1:6443",
        "n1",
        dir.path(),
        "192.0.2.10".parse().unwrap(),
    );
    let runtime = Arc::new(SwitchedRuntime::default());
    let (health, _) = watch::channel(Health {
        ready: Err(("KubeletNotReady".into(), "not checked yet".into())),
        ..Health::healthy()
    });
    let heartbeat = Heartbeat {
        writer: NodeWriter::new(&client(api), FIELD_MANAGER),
        clock: clock.clone(),
        facts: node_facts(&config, "containerd://fake", "v0.0.0"),
        cache,
        runtime: runtime.clone(),
        reporter: ApiReporter::new("n1", clock),
        health,
        renew: config.lease_renew,
        report: config.status_report,
        runtime_check: config.runtime_check,
        data_dir: dir.path().to_owned(),
        // Never short of anything: only the runtime decides here.
        thresholds: crate::pressure::Thresholds {
            memory_available: 0,
            disk_available_percent: 0,
            inodes_free_percent: 0,
            pids_available_percent: 0,
        },
    };
    (tokio::spawn(heartbeat.run()), runtime, dir)
}

/// Waits (virtual time, at most `limit`) until `api` accepted a post with Ready `status`.
async fn accepted_within(api: &FakeApi, status: &str, limit: Duration) -> Option<Duration> {
    let from = tokio::time::Instant::now();
    while from.elapsed() <= limit {
        if let Some(at) = api.accepted(status) {
            return Some(at.saturating_duration_since(from));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The longest a runtime outage may take to reach the server: the next check, its `Status`
/// timing out, and the post.
const NOTICED: Duration = Duration::from_secs(5 + 5 + 1);

#[tokio::test(start_paused = true)]
async fn a_lease_renewal_that_never_returns_does_not_stop_the_runtime_check() {
    let api = Arc::new(FakeApi {
        hang_leases: true,
        ..FakeApi::default()
    });
    let (heartbeat, runtime, _dir) = start(api.clone()).await;
    assert!(
        accepted_within(&api, "True", NOTICED).await.is_some(),
        "Ready=True posted after the first check: {:?}",
        api.posts()
    );
    runtime.down.store(true, Ordering::SeqCst);
    let took = accepted_within(&api, "False", Duration::from_secs(120)).await;
    assert!(
        took.is_some_and(|t| t <= NOTICED),
        "the outage reached the server after {took:?} (want ≤ {NOTICED:?}) though the Lease \
         renewals hang: {:?}",
        api.posts()
    );
    heartbeat.abort();
}

#[tokio::test(start_paused = true)]
async fn a_failed_not_ready_post_is_retried_before_the_next_periodic_status() {
    let api = Arc::new(FakeApi {
        fail_next_not_ready: AtomicBool::new(true),
        ..FakeApi::default()
    });
    let (heartbeat, runtime, _dir) = start(api.clone()).await;
    assert!(accepted_within(&api, "True", NOTICED).await.is_some());
    runtime.down.store(true, Ordering::SeqCst);
    // One failed post, then the retry after one check interval; the periodic status (every
    // minute) must not be what finally carries it.
    let limit = NOTICED + Duration::from_secs(5);
    let took = accepted_within(&api, "False", Duration::from_secs(120)).await;
    assert!(
        took.is_some_and(|t| t <= limit),
        "Ready=False reached the server after {took:?} (want ≤ {limit:?}): {:?}",
        api.posts()
    );
    let refused = api
        .posts()
        .iter()
        .filter(|(_, s, ok)| s == "False" && !ok)
        .count();
    assert_eq!(
        refused,
        1,
        "the injected failure happened: {:?}",
        api.posts()
    );
    heartbeat.abort();
}

#[test]
fn waiting_for_a_runtime_backs_off_to_30_s_and_says_so_once_then_once_a_minute() {
    let mut wait = RuntimeWait::new();
    let mut waited = Duration::ZERO;
    let mut delays = Vec::new();
    let mut notes = Vec::new();
    // Ten minutes of a runtime that never answers.
    while waited < Duration::from_secs(600) {
        let (delay, note) = wait.failed(waited);
        delays.push(delay.as_secs());
        if let Some(note) = note {
            notes.push((waited.as_secs(), note));
        }
        waited += delay;
    }
    assert_eq!(delays[..7], [1, 2, 4, 8, 16, 30, 30]);
    assert!(delays.iter().all(|&d| d <= 30), "{delays:?}");
    assert_eq!(notes[0], (0, WaitNote::Waiting));
    assert!(
        notes[1..].iter().all(|(_, n)| *n == WaitNote::StillWaiting),
        "{notes:?}"
    );
    for pair in notes.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= 60,
            "a reminder per minute at most: {notes:?}"
        );
    }
    // Ten lines for some two dozen tries.
    assert!(
        delays.len() > 2 * notes.len(),
        "{} tries, {notes:?}",
        delays.len()
    );
    assert_eq!(notes.len(), 10, "{notes:?}");
}

#[test]
fn a_second_agent_on_the_same_directory_is_refused_until_the_first_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let first = lock_agent_dir(dir.path()).unwrap();
    let err = lock_agent_dir(dir.path()).unwrap_err();
    assert!(matches!(err, AgentError::DirInUse(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(dir.path().to_str().unwrap()) && text.contains("--data-dir"),
        "{text}"
    );
    drop(first);
    lock_agent_dir(dir.path()).unwrap();
}
