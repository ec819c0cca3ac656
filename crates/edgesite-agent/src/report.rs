//! What the pod workers learn, written to the API server: pod status (the status
//! subresource), events, and the final delete of terminated pods (grace period 0, as kubelet
//! finishes a deletion). [`ApiReporter`] queues everything and two writers send it, one for
//! the pod statuses and final deletes and one for the events, so a slow or failing event
//! write never holds back a pod's status (the status is what controllers and `kubectl wait`
//! act on; an event is only a record). While the server is unreachable the queue holds the
//! latest status per pod (a later one replaces an earlier one), the terminations, and up to
//! [`MAX_EVENTS`] events (older ones are dropped and counted), so offline costs bounded memory
//! and a reconnect sends only what is current.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgesite_clock::Clock;
use k8s_openapi::api::core::v1::{Event, Pod, PodStatus};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client, ResourceExt as _};
use serde_json::json;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::pod::{EventType, Reporter};

/// The most events kept while they cannot be sent.
pub const MAX_EVENTS: usize = 1000;

/// The field manager of what the agent writes.
pub const FIELD_MANAGER: &str = "edgesite-agent";

/// How long one write may take before it counts as failed and is retried: the node client
/// has no timeout of its own.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// `write`, failing when it takes longer than `limit`.
pub(crate) async fn within<T>(
    limit: Duration,
    write: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    match tokio::time::timeout(limit, write).await {
        Ok(res) => res,
        Err(_) => Err(kube::Error::Service(
            format!("no answer within {limit:?}").into(),
        )),
    }
}

#[derive(Debug, Clone)]
struct PodId {
    namespace: String,
    name: String,
    uid: String,
}

impl PodId {
    fn of(pod: &Pod) -> Self {
        Self {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
        }
    }
}

#[derive(Debug, Default)]
struct Queue {
    statuses: HashMap<String, (PodId, PodStatus)>,
    terminated: Vec<PodId>,
    events: VecDeque<Event>,
    dropped_events: u64,
}

/// The [`Reporter`] that writes to the API server through a queue.
#[derive(Debug)]
pub struct ApiReporter {
    node_name: String,
    clock: Arc<dyn Clock>,
    queue: Mutex<Queue>,
    /// A status or termination was queued.
    statuses_queued: Notify,
    /// An event was queued.
    events_queued: Notify,
}

impl ApiReporter {
    /// A reporter for node `node_name`; nothing is sent before [`ApiReporter::run`] runs.
    pub fn new(node_name: &str, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self {
            node_name: node_name.to_owned(),
            clock,
            queue: Mutex::new(Queue::default()),
            statuses_queued: Notify::new(),
            events_queued: Notify::new(),
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many statuses, terminations and events wait to be sent.
    pub fn pending(&self) -> (usize, usize, usize) {
        let q = self.queue();
        (q.statuses.len(), q.terminated.len(), q.events.len())
    }

    /// Sends what is queued through `client` until dropped: statuses and final deletes on one
    /// writer, events on the other. Each keeps what failed and retries with its own back-off
    /// (1 s doubling to 30 s).
    pub async fn run(self: Arc<Self>, client: Client) {
        let statuses = self.write_loop(
            &self.statuses_queued,
            "pod status reports",
            |q| {
                let batch = (
                    std::mem::take(&mut q.statuses),
                    std::mem::take(&mut q.terminated),
                );
                (!batch.0.is_empty() || !batch.1.is_empty()).then_some(batch)
            },
            |(statuses, terminated)| self.send_statuses(&client, statuses, terminated),
        );
        let events = self.write_loop(
            &self.events_queued,
            "events",
            |q| {
                if q.dropped_events > 0 {
                    warn!(
                        dropped = q.dropped_events,
                        "events dropped while the server was unreachable"
                    );
                    q.dropped_events = 0;
                }
                let events = std::mem::take(&mut q.events);
                (!events.is_empty()).then_some(events)
            },
            |events| self.send_events(&client, events),
        );
        tokio::join!(statuses, events);
    }

    /// Takes a batch from the queue with `take` whenever `queued` fires and sends it with
    /// `send`, which puts back what failed and says whether everything went; after a failure
    /// waits with back-off before the next batch.
    async fn write_loop<B, Fut>(
        &self,
        queued: &Notify,
        what: &'static str,
        mut take: impl FnMut(&mut Queue) -> Option<B>,
        mut send: impl FnMut(B) -> Fut,
    ) where
        Fut: std::future::Future<Output = bool>,
    {
        let mut backoff = Duration::from_secs(1);
        let mut failing = false;
        loop {
            let notified = queued.notified();
            let batch = take(&mut self.queue());
            let Some(batch) = batch else {
                notified.await;
                continue;
            };
            if send(batch).await {
                if failing {
                    info!(what, "reports reach the server again");
                }
                failing = false;
                backoff = Duration::from_secs(1);
            } else {
                if !failing {
                    warn!(
                        what,
                        "cannot report to the server; keeping the latest and retrying"
                    );
                }
                failing = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }

    /// Sends statuses and final deletes; what fails for a retryable reason goes back to the
    /// queue (unless a newer status replaced it meanwhile). Returns whether everything went.
    async fn send_statuses(
        &self,
        client: &Client,
        statuses: HashMap<String, (PodId, PodStatus)>,
        terminated: Vec<PodId>,
    ) -> bool {
        let mut all_ok = true;
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        for (uid, (id, status)) in statuses {
            let api: Api<Pod> = Api::namespaced(client.clone(), &id.namespace);
            let body = json!({"metadata": {"uid": id.uid}, "status": status});
            let patch = Patch::Merge(&body);
            match within(WRITE_TIMEOUT, api.patch_status(&id.name, &params, &patch)).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 || e.code == 422 => {
                    debug!(pod = %id.name, code = e.code, msg = %e.message, "status not written: the pod is gone or changed");
                }
                Err(err) => {
                    debug!(pod = %id.name, %err, "status write failed; kept");
                    all_ok = false;
                    self.queue().statuses.entry(uid).or_insert((id, status));
                }
            }
        }
        for id in terminated {
            let api: Api<Pod> = Api::namespaced(client.clone(), &id.namespace);
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(id.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match within(WRITE_TIMEOUT, api.delete(&id.name, &dp)).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(err) => {
                    debug!(pod = %id.name, %err, "final delete failed; kept");
                    all_ok = false;
                    self.queue().terminated.push(id);
                }
            }
        }
        all_ok
    }

    /// Sends events; one that fails for a retryable reason goes back to the queue (while it
    /// has room). Returns whether everything went.
    async fn send_events(&self, client: &Client, events: VecDeque<Event>) -> bool {
        let mut all_ok = true;
        for ev in events {
            let ns = ev.namespace().unwrap_or_default();
            let api: Api<Event> = Api::namespaced(client.clone(), &ns);
            match within(WRITE_TIMEOUT, api.create(&PostParams::default(), &ev)).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code != 429 && e.code < 500 => {
                    debug!(code = e.code, msg = %e.message, "event refused");
                }
                Err(err) => {
                    debug!(%err, "event write failed; kept");
                    all_ok = false;
                    let mut q = self.queue();
                    if q.events.len() < MAX_EVENTS {
                        q.events.push_back(ev);
                    } else {
                        q.dropped_events += 1;
                    }
                }
            }
        }
        all_ok
    }
}

impl Reporter for ApiReporter {
    fn pod_status(&self, pod: &Pod, status: PodStatus) {
        let id = PodId::of(pod);
        self.queue().statuses.insert(id.uid.clone(), (id, status));
        self.statuses_queued.notify_one();
    }

    fn event(
        &self,
        pod: &Pod,
        kind: EventType,
        reason: &str,
        field_path: Option<String>,
        message: String,
    ) {
        let id = PodId::of(pod);
        let now = edgesite_node::time_now(&*self.clock);
        let suffix = edgesite_clock::random::name_suffix(10);
        let ev: Result<Event, _> = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": format!("{}.{suffix}", id.name), "namespace": id.namespace},
            "involvedObject": {
                "apiVersion": "v1", "kind": "Pod", "namespace": id.namespace,
                "name": id.name, "uid": id.uid, "fieldPath": field_path,
            },
            "reason": reason,
            "message": message,
            "type": kind.as_str(),
            "source": {"component": "kubelet", "host": self.node_name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node_name,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }));
        let Ok(ev) = ev else { return };
        self.push_event(ev);
    }

    fn pod_terminated(&self, pod: &Pod) {
        self.queue().terminated.push(PodId::of(pod));
        self.statuses_queued.notify_one();
    }
}

impl ApiReporter {
    /// Queues an event about the node itself (runtime down, an image that cannot be
    /// imported), as kubelet records them: in `default`, the involved object the Node with
    /// its name as uid.
    pub fn node_event(&self, kind: EventType, reason: &str, message: String) {
        let now = edgesite_node::time_now(&*self.clock);
        let suffix = edgesite_clock::random::name_suffix(10);
        let node = &self.node_name;
        let ev: Result<Event, _> = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": format!("{node}.{suffix}"), "namespace": "default"},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node},
            "reason": reason,
            "message": message,
            "type": kind.as_str(),
            "source": {"component": "kubelet", "host": node},
            "reportingComponent": "kubelet",
            "reportingInstance": node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }));
        if let Ok(ev) = ev {
            self.push_event(ev);
        }
    }

    fn push_event(&self, ev: Event) {
        let mut q = self.queue();
        if q.events.len() >= MAX_EVENTS {
            q.events.pop_front();
            q.dropped_events += 1;
        }
        q.events.push_back(ev);
        drop(q);
        self.events_queued.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "d", "uid": uid}}))
            .unwrap()
    }

    #[test]
    fn the_latest_status_per_pod_wins_and_events_are_bounded() {
        let r = ApiReporter::new("n1", Arc::new(edgesite_clock::SystemClock));
        let mut s = PodStatus {
            phase: Some("Pending".into()),
            ..PodStatus::default()
        };
        r.pod_status(&pod("u1"), s.clone());
        s.phase = Some("Running".into());
        r.pod_status(&pod("u1"), s);
        r.pod_status(&pod("u2"), PodStatus::default());
        for i in 0..MAX_EVENTS + 5 {
            r.event(
                &pod("u1"),
                EventType::Normal,
                "Started",
                None,
                format!("{i}"),
            );
        }
        r.pod_terminated(&pod("u2"));
        assert_eq!(r.pending(), (2, 1, MAX_EVENTS));
        let q = r.queue();
        assert_eq!(q.statuses["u1"].1.phase.as_deref(), Some("Running"));
        assert_eq!(q.dropped_events, 5);
        assert_eq!(q.events.front().unwrap().message.as_deref(), Some("5"));
        let ev = q.events.back().unwrap();
        assert_eq!(ev.involved_object.uid.as_deref(), Some("u1"));
        assert_eq!(ev.source.as_ref().unwrap().host.as_deref(), Some("n1"));
    }

    /// What the fake server saw of the reporter's writes, and when.
    #[derive(Debug, Default)]
    struct Seen {
        status_patches: Mutex<Vec<tokio::time::Instant>>,
        event_posts: Mutex<Vec<tokio::time::Instant>>,
    }

    /// A server that records status patches and events, answering events with `events`.
    fn server(events: crate::fake_api::Reply) -> (Client, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        let client = crate::fake_api::client(move |_, path, _| {
            let now = tokio::time::Instant::now();
            if path.ends_with("/events") {
                s.event_posts.lock().unwrap().push(now);
                return events.clone();
            }
            if path.ends_with("/pods/p/status") {
                s.status_patches.lock().unwrap().push(now);
                let pod = json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "p", "namespace": "d", "uid": "u1"}});
                return crate::fake_api::Reply::Json(200, pod);
            }
            crate::fake_api::failure(404)
        });
        (client, seen)
    }

    /// Queues an event, then (once it is being written) a pod status; returns how long the
    /// status took to reach the server, `None` after a minute.
    async fn status_delay_behind_an_event(
        events: crate::fake_api::Reply,
    ) -> (Option<Duration>, Arc<Seen>) {
        let (client, seen) = server(events);
        let r = ApiReporter::new("n1", Arc::new(edgesite_clock::SystemClock));
        let writer = tokio::spawn(r.clone().run(client));
        r.node_event(EventType::Warning, "ContainerRuntimeDown", "down".into());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !seen.event_posts.lock().unwrap().is_empty(),
            "the event was sent"
        );
        let queued = tokio::time::Instant::now();
        r.pod_status(&pod("u1"), PodStatus::default());
        let mut took = None;
        while queued.elapsed() < Duration::from_secs(60) {
            if let Some(at) = seen.status_patches.lock().unwrap().first() {
                took = Some(at.saturating_duration_since(queued));
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        writer.abort();
        (took, seen)
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_write_that_never_returns_does_not_hold_back_pod_statuses() {
        let (took, _) = status_delay_behind_an_event(crate::fake_api::Reply::Hang).await;
        assert!(
            took.is_some_and(|t| t < Duration::from_millis(100)),
            "the status reached the server after {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failing_event_writes_back_off_without_delaying_pod_statuses() {
        let (took, seen) = status_delay_behind_an_event(crate::fake_api::failure(500)).await;
        assert!(
            took.is_some_and(|t| t < Duration::from_millis(100)),
            "the status reached the server after {took:?}"
        );
        // The event is kept and retried after its back-off (1 s, then 2 s).
        let posts = seen.event_posts.lock().unwrap().clone();
        assert!(posts.len() >= 2, "retried: {posts:?}");
        assert!(
            posts[1].saturating_duration_since(posts[0]) >= Duration::from_secs(1),
            "with back-off: {posts:?}"
        );
    }

    #[test]
    fn a_node_event_names_the_node_in_default() {
        let r = ApiReporter::new("n1", Arc::new(edgesite_clock::SystemClock));
        r.node_event(
            EventType::Warning,
            "ImageImportFailed",
            "bad.tar: not a tar".into(),
        );
        let q = r.queue();
        let ev = q.events.back().unwrap();
        assert_eq!(ev.namespace().as_deref(), Some("default"));
        assert_eq!(ev.involved_object.kind.as_deref(), Some("Node"));
        assert_eq!(ev.involved_object.name.as_deref(), Some("n1"));
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(ev.reason.as_deref(), Some("ImageImportFailed"));
    }
}
