//! The scheduler: binds pending pods (`schedulerName: default-scheduler`, no `spec.nodeName`,
//! not terminating) to nodes, as upstream kube-scheduler does, through `pods/binding`.
//!
//! One task owns all state. It follows the shared node and pod informers into a [`cache`] of
//! nodes and the pods placed on them and a [`queue`] of pending pods, and schedules from the
//! queue between watch events: [`filters`] drop the nodes that cannot take the pod (with the
//! upstream reason texts), [`scores`] rank the rest, and the best node wins (ties broken at
//! random). The pod is *assumed* on that node in the cache at once, so the next decision sees
//! the room it takes, and the binding runs as its own task (up to
//! [`SchedulerSettings::bind_concurrency`] in flight); a failed binding forgets the assumption
//! and retries after a back-off. Pods no node fits wait in the unschedulable set until a
//! node, a placed pod or the pod itself changes, or a slow periodic flush; reports
//! ([`events`]) are written by a task of their own and never hold scheduling up.
//!
//! Per pod, nodes are checked from a rotating start until enough feasible ones are found:
//! upstream's adaptive `percentageOfNodesToScore` (all nodes below 100; else
//! `max(100, n * max(5, 50 - n/125) / 100)`), so the work per pod is bounded and the
//! rotation spreads pods over the whole cluster.

pub mod cache;
pub mod events;
pub mod filters;
pub mod queue;
pub mod scores;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::PostParams;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::Config;
use crate::informers::{self, Informers};
use cache::{Cache, PodFacts};
use edgesite_api::predicates::is_pod_terminal;
use edgesite_clock::Rng;
use events::{COMPONENT, Report};
use filters::{Candidate, Reason};
use queue::{Failure, SchedulingQueue, State};

/// Tunables of the scheduler; `SchedulerSettings::default()` is what `edgesite server` runs.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// Bindings in flight at once.
    pub bind_concurrency: usize,
    /// Back-off after the first failed attempt; doubles per attempt.
    pub initial_backoff: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
    /// Pods unschedulable for this long are retried even without a cluster change.
    pub unschedulable_timeout: Duration,
    /// Percentage of nodes to check per pod once enough are feasible; `None` is upstream's
    /// adaptive choice.
    pub percentage_of_nodes_to_score: Option<u32>,
    /// Pods scheduled in one go before watch events are looked at again.
    pub batch: usize,
    /// Reports (events, conditions) that may wait to be written; more are dropped.
    pub report_buffer: usize,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            // 64 measured faster than 32 on the 10k-pod figure (the store group-commits).
            bind_concurrency: 64,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            unschedulable_timeout: Duration::from_secs(60),
            percentage_of_nodes_to_score: None,
            batch: 64,
            report_buffer: 16_384,
        }
    }
}

/// How many feasible nodes to look for among `all` (upstream's `numFeasibleNodesToFind`).
pub fn feasible_nodes_to_find(all: usize, percentage: Option<u32>) -> usize {
    const MIN_NODES: usize = 100;
    if all < MIN_NODES {
        return all;
    }
    let pct = match percentage {
        Some(p) if p >= 100 => return all,
        Some(p) => p as usize,
        None => 50usize.saturating_sub(all / 125).max(5),
    };
    (all * pct / 100).max(MIN_NODES)
}

/// Runs the scheduler with default settings, and node and pod informers of its own, until
/// the returned future is dropped.
pub async fn run(client: Client, config: Arc<Config>) {
    let inf = Informers::new(&client);
    let (nodes, pods) = (inf.nodes.clone(), inf.pods.clone());
    tokio::join!(
        nodes.run(),
        pods.run(),
        run_with(client, config, SchedulerSettings::default(), &inf)
    );
}

/// Runs the scheduler with default settings over the process's shared informers until the
/// returned future is dropped.
pub async fn run_shared(client: Client, config: Arc<Config>, inf: &Informers) {
    run_with(client, config, SchedulerSettings::default(), inf).await;
}

/// The outcome of one binding.
#[derive(Debug)]
struct Bound {
    uid: String,
    namespace: String,
    name: String,
    node: String,
    result: Result<(), kube::Error>,
}

/// Runs the scheduler with `settings` over `inf`'s node and pod informers until the returned
/// future is dropped.
pub async fn run_with(
    client: Client,
    config: Arc<Config>,
    settings: SchedulerSettings,
    inf: &Informers,
) {
    let (report_tx, report_rx) = mpsc::channel(settings.report_buffer.max(1));
    // The writer ends once the scheduler (the only sender) is gone.
    tokio::spawn(events::write_reports(client.clone(), report_rx));
    let (bind_tx, mut bind_rx) = mpsc::unbounded_channel::<Bound>();
    let mut s = Scheduler {
        client: client.clone(),
        config,
        cache: Cache::default(),
        queue: SchedulingQueue::new(settings.initial_backoff, settings.max_backoff),
        binds: Arc::new(Semaphore::new(settings.bind_concurrency.max(1))),
        bind_tx,
        reports: report_tx,
        next_start: 0,
        rng: Rng::new(),
        nodes_seen: None,
        pods_seen: None,
        nodes_synced: false,
        pods_synced: false,
        settings,
    };
    let nodes = inf.nodes.events().map(|e| Ok(informers::owned(e)));
    let pods = inf.pods.events().map(|e| Ok(informers::owned(e)));
    let mut nodes = std::pin::pin!(nodes);
    let mut pods = std::pin::pin!(pods);
    let mut flush = tokio::time::interval(
        (s.settings.unschedulable_timeout / 2).max(Duration::from_millis(100)),
    );
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!("scheduler starting");
    loop {
        let backoff_at = s.queue.next_backoff();
        let can_schedule = s.nodes_synced && s.pods_synced && s.queue.has_active();
        tokio::select! {
            biased;
            Some(b) = bind_rx.recv() => s.bind_done(b),
            Some(ev) = nodes.next() => s.node_event(ev),
            Some(ev) = pods.next() => s.pod_event(ev),
            () = std::future::ready(()), if can_schedule => s.schedule_batch(),
            () = tokio::time::sleep_until(backoff_at.unwrap_or_else(Instant::now)),
                if backoff_at.is_some() => s.queue.flush_backoff(Instant::now()),
            _ = flush.tick() => {
                let moved = s.queue.flush_unschedulable(Instant::now(), s.settings.unschedulable_timeout);
                if moved > 0 {
                    debug!(moved, "retrying long-unschedulable pods");
                }
            }
        }
    }
}

struct Scheduler {
    client: Client,
    config: Arc<Config>,
    settings: SchedulerSettings,
    cache: Cache,
    queue: SchedulingQueue,
    binds: Arc<Semaphore>,
    bind_tx: mpsc::UnboundedSender<Bound>,
    reports: mpsc::Sender<Report>,
    /// Where the next pod's node scan starts.
    next_start: usize,
    /// Tie-breaks and event-name suffixes.
    rng: Rng,
    nodes_seen: Option<HashSet<String>>,
    pods_seen: Option<HashSet<String>>,
    nodes_synced: bool,
    pods_synced: bool,
}

fn is_ours(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .is_some_and(|s| s.scheduler_name.as_deref().unwrap_or(COMPONENT) == COMPONENT)
}

fn assigned_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn has_required_pod_affinity(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_some_and(|t| !t.is_empty())
}

impl Scheduler {
    fn random(&mut self) -> u64 {
        self.rng.u64()
    }

    fn node_event(&mut self, ev: Result<Event<Node>, watcher::Error>) {
        let now = Instant::now();
        match ev {
            Ok(Event::Init) => self.nodes_seen = Some(HashSet::new()),
            Ok(Event::InitApply(node)) => {
                if let (Some(seen), Some(name)) = (&mut self.nodes_seen, &node.metadata.name) {
                    seen.insert(name.clone());
                }
                if self.cache.upsert_node(&node) {
                    self.queue.move_unschedulable(now, |_| true);
                }
            }
            Ok(Event::InitDone) => {
                if let Some(seen) = self.nodes_seen.take() {
                    for name in self.cache.node_names() {
                        if !seen.contains(&name) {
                            self.cache.remove_node(&name);
                        }
                    }
                }
                self.nodes_synced = true;
                info!(nodes = self.cache.node_count(), "scheduler: nodes listed");
            }
            Ok(Event::Apply(node)) => {
                if self.cache.upsert_node(&node) {
                    let moved = self.queue.move_unschedulable(now, |_| true);
                    if moved > 0 {
                        debug!(node = ?node.metadata.name, moved, "node changed; retrying pods");
                    }
                }
            }
            Ok(Event::Delete(node)) => {
                if let Some(name) = &node.metadata.name {
                    self.cache.remove_node(name);
                }
            }
            Err(err) => debug!(%err, "scheduler node watch"),
        }
    }

    fn pod_event(&mut self, ev: Result<Event<Pod>, watcher::Error>) {
        match ev {
            Ok(Event::Init) => self.pods_seen = Some(HashSet::new()),
            Ok(Event::InitApply(pod)) => {
                if let (Some(seen), Some(uid)) = (&mut self.pods_seen, &pod.metadata.uid) {
                    seen.insert(uid.clone());
                }
                self.pod_applied(pod);
            }
            Ok(Event::InitDone) => {
                if let Some(seen) = self.pods_seen.take() {
                    let gone: Vec<String> = self
                        .cache
                        .pods()
                        .iter()
                        .filter(|(uid, p)| !p.assumed && !seen.contains(*uid))
                        .map(|(uid, _)| uid.clone())
                        .collect();
                    for uid in gone {
                        self.cache.remove_pod(&uid);
                    }
                    for uid in self.queue.uids() {
                        // Pods whose binding is in flight are settled by its outcome.
                        let waiting = self
                            .queue
                            .get(&uid)
                            .is_some_and(|e| e.state != State::InFlight);
                        if waiting && !seen.contains(&uid) {
                            self.queue.remove(&uid);
                        }
                    }
                }
                self.pods_synced = true;
                info!(
                    pending = self.queue.len(),
                    placed = self.cache.pods().len(),
                    "scheduler: pods listed"
                );
            }
            Ok(Event::Apply(pod)) => self.pod_applied(pod),
            Ok(Event::Delete(pod)) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    self.pod_gone(uid);
                }
            }
            Err(err) => debug!(%err, "scheduler pod watch"),
        }
    }

    /// A pod left (deleted or finished): its room is free again.
    fn pod_gone(&mut self, uid: &str) {
        self.queue.remove(uid);
        if self.cache.remove_pod(uid).is_some() {
            self.queue.move_unschedulable(Instant::now(), |_| true);
        }
    }

    fn pod_applied(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if let Some(node) = assigned_node(&pod) {
            self.queue.remove(&uid);
            if is_pod_terminal(&pod) {
                self.pod_gone(&uid);
                return;
            }
            let known = self.cache.pods().get(&uid).is_some_and(|p| p.node == node);
            let facts = Arc::new(PodFacts::of(&pod));
            let node = node.to_owned();
            self.cache.add_pod(facts, &node, false);
            if !known {
                // A new neighbour can satisfy pods waiting for pod affinity.
                self.queue
                    .move_unschedulable(Instant::now(), |e| has_required_pod_affinity(&e.pod));
            }
            return;
        }
        if !is_ours(&pod) || is_pod_terminal(&pod) || pod.metadata.deletion_timestamp.is_some() {
            self.queue.remove(&uid);
            return;
        }
        self.queue
            .add_or_update(&uid, Arc::new(pod), Instant::now());
    }

    fn schedule_batch(&mut self) {
        for _ in 0..self.settings.batch.max(1) {
            let Some((uid, pod)) = self.queue.pop() else {
                break;
            };
            self.schedule_one(&uid, &pod);
        }
    }

    fn schedule_one(&mut self, uid: &str, pod: &Pod) {
        let candidate = Candidate::new(pod, &self.cache);
        let total = self.cache.node_count();
        let nodes = self.cache.nodes();
        let want = feasible_nodes_to_find(total, self.settings.percentage_of_nodes_to_score);
        let mut feasible: Vec<usize> = Vec::with_capacity(want.min(nodes.len()));
        let mut counts: HashMap<Reason, usize> = HashMap::new();
        let (mut resolvable, mut unresolvable) = (0usize, 0usize);
        let mut reasons: Vec<Reason> = Vec::new();
        let n = nodes.len();
        let start = if n == 0 { 0 } else { self.next_start % n };
        let mut processed = 0;
        for k in 0..n {
            let i = (start + k) % n;
            if nodes[i].node.is_none() {
                continue;
            }
            processed = k + 1;
            reasons.clear();
            if candidate.check(&nodes[i], &mut reasons) {
                feasible.push(i);
                if feasible.len() >= want {
                    break;
                }
            } else {
                if reasons.first().is_some_and(Reason::resolvable) {
                    resolvable += 1;
                } else {
                    unresolvable += 1;
                }
                for r in reasons.drain(..) {
                    *counts.entry(r).or_default() += 1;
                }
            }
        }
        if n > 0 {
            self.next_start = (start + processed) % n;
        }
        if feasible.is_empty() {
            let message = if total == 0 {
                "no nodes available to schedule pods".to_owned()
            } else {
                filters::failure_message(total, &counts, resolvable, unresolvable)
            };
            self.failed(uid, pod, message);
            return;
        }
        let scores = scores::score(&candidate, nodes, &feasible);
        let mut best = 0;
        let mut ties = 0u64;
        let mut best_score = i64::MIN;
        for (k, s) in scores.iter().enumerate() {
            if *s > best_score {
                best_score = *s;
                best = k;
                ties = 1;
            } else if *s == best_score {
                ties += 1;
                // Reservoir sampling: each tied node wins with probability 1/ties.
                if self.random().is_multiple_of(ties) {
                    best = k;
                }
            }
        }
        let node = self.cache.nodes()[feasible[best]].name.clone();
        let facts = Arc::new(candidate.facts);
        let (namespace, name) = (facts.namespace.clone(), facts.name.clone());
        self.cache.add_pod(facts, &node, true);
        self.bind(uid, namespace, name, node);
    }

    fn bind(&self, uid: &str, namespace: String, name: String, node: String) {
        let client = self.client.clone();
        let permits = self.binds.clone();
        let tx = self.bind_tx.clone();
        let uid = uid.to_owned();
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let api: Api<Pod> = Api::namespaced(client, &namespace);
            let binding = json!({
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name, "namespace": namespace, "uid": uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            });
            let result = api
                .create_subresource::<_, serde_json::Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &binding,
                )
                .await
                .map(|_| ());
            let _ = tx.send(Bound {
                uid,
                namespace,
                name,
                node,
                result,
            });
        });
    }

    fn bind_done(&mut self, b: Bound) {
        let now = Instant::now();
        match b.result {
            Ok(()) => {
                self.queue.bound(&b.uid);
                let time = self.config.clock.rfc3339();
                let message = format!(
                    "Successfully assigned {}/{} to {}",
                    b.namespace, b.name, b.node
                );
                let event = events::event(
                    &b.namespace,
                    &b.name,
                    &b.uid,
                    &self.event_name(&b.name),
                    "Normal",
                    "Scheduled",
                    &message,
                    1,
                    &time,
                    &time,
                );
                self.report(Report::Create {
                    namespace: b.namespace,
                    event,
                });
            }
            Err(err) => {
                if self.cache.is_assumed(&b.uid) {
                    self.cache.remove_pod(&b.uid);
                    self.queue.move_unschedulable(now, |_| true);
                }
                let gone = matches!(&err, kube::Error::Api(e) if e.code == 404);
                if gone {
                    self.queue.remove(&b.uid);
                } else if self
                    .queue
                    .get(&b.uid)
                    .is_some_and(|e| e.state == State::InFlight)
                {
                    // 409: bound meanwhile (the watch will show where) or being deleted.
                    if !matches!(&err, kube::Error::Api(e) if e.code == 409) {
                        warn!(pod = %format!("{}/{}", b.namespace, b.name), node = %b.node, %err,
                            "binding failed; retrying");
                        let time = self.config.clock.rfc3339();
                        let event = events::event(
                            &b.namespace,
                            &b.name,
                            &b.uid,
                            &self.event_name(&b.name),
                            "Warning",
                            "FailedScheduling",
                            &format!("Binding rejected: {err}"),
                            1,
                            &time,
                            &time,
                        );
                        self.report(Report::Create {
                            namespace: b.namespace.clone(),
                            event,
                        });
                    }
                    self.queue.retry_later(&b.uid, now);
                }
            }
        }
    }

    fn event_name(&mut self, pod: &str) -> String {
        let nanos = self
            .config
            .clock
            .now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        format!(
            "{pod}.{:x}",
            nanos.wrapping_add(self.random() & 0xffff_ffff)
        )
    }

    fn report(&self, r: Report) {
        if self.reports.try_send(r).is_err() {
            debug!("scheduler report dropped (writer busy)");
        }
    }

    fn failed(&mut self, uid: &str, pod: &Pod, message: String) {
        let now = Instant::now();
        self.queue.unschedulable(uid, now);
        let time = self.config.clock.rfc3339();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        debug!(pod = %format!("{namespace}/{name}"), %message, "unschedulable");
        let fresh_name = self.event_name(&name);
        let Some(entry) = self.queue.get_mut(uid) else {
            return;
        };
        let (event_name, count, first) = match &mut entry.failure {
            Some(f) if f.message == message => {
                f.count += 1;
                (f.event.clone(), f.count, false)
            }
            _ => {
                entry.failure = Some(Failure {
                    message: message.clone(),
                    event: fresh_name.clone(),
                    count: 1,
                });
                (fresh_name, 1, true)
            }
        };
        let condition_set = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
            .is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(&message));
        let event = events::event(
            &namespace,
            &name,
            uid,
            &event_name,
            "Warning",
            "FailedScheduling",
            &message,
            count,
            &time,
            &time,
        );
        if first {
            self.report(Report::Create {
                namespace: namespace.clone(),
                event,
            });
        } else {
            self.report(Report::Bump {
                namespace: namespace.clone(),
                name: event_name,
                count,
                last: time.clone(),
                event,
            });
        }
        if !condition_set {
            self.report(Report::Unschedulable {
                namespace,
                name,
                message,
                time,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::feasible_nodes_to_find;

    #[test]
    fn nodes_to_find_follow_upstream_adaptive_percentage() {
        assert_eq!(feasible_nodes_to_find(50, None), 50);
        assert_eq!(feasible_nodes_to_find(100, None), 100);
        assert_eq!(feasible_nodes_to_find(1000, None), 420);
        assert_eq!(feasible_nodes_to_find(5000, None), 500);
        assert_eq!(feasible_nodes_to_find(1000, Some(100)), 1000);
        assert_eq!(feasible_nodes_to_find(1000, Some(1)), 100);
    }
}
