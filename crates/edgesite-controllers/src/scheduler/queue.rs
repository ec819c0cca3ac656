//! The scheduling queue: pending pods waiting for a decision. Three places, as upstream:
//! *active* (ready now, highest priority first, then first come), *backoff* (failed recently,
//! wait `initial * 2^(attempts-1)` up to a maximum), and *unschedulable* (no node fitted; they
//! stay until a cluster change that may help moves them, or a slow periodic flush).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::time::Instant;

/// Where a queued pod is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Ready to be scheduled.
    Active,
    /// Waiting for its back-off to expire.
    Backoff,
    /// No node fitted; waiting for a change.
    Unschedulable,
    /// Being scheduled, or its binding is in flight.
    InFlight,
    /// Bound; waiting for the watch to show it.
    Bound,
}

/// A pending pod in the queue.
#[derive(Debug)]
pub struct Entry {
    /// The latest version the watch showed.
    pub pod: Arc<Pod>,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Where it is.
    pub state: State,
    /// When it entered the unschedulable set, or when its back-off ends.
    pub since: Instant,
    /// The last `FailedScheduling` message, the event carrying it and how often it repeated.
    pub failure: Option<Failure>,
    generation: u64,
}

/// The last failure reported for a pod.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The message.
    pub message: String,
    /// The name of its event.
    pub event: String,
    /// How many times it was reported.
    pub count: u32,
}

/// The queue of pending pods, keyed by uid.
#[derive(Debug)]
pub struct SchedulingQueue {
    entries: HashMap<String, Entry>,
    active: BinaryHeap<(i32, Reverse<u64>, String, u64)>,
    backoff: BinaryHeap<Reverse<(Instant, u64, String)>>,
    /// Uids that were made unschedulable; entries that left that state since are dropped
    /// lazily, so a cluster change costs O(unschedulable pods), not O(queue).
    unschedulable: HashSet<String>,
    seq: u64,
    initial_backoff: Duration,
    max_backoff: Duration,
}

/// Whether two versions of a pending pod differ in anything scheduling looks at (not status,
/// resourceVersion or managed fields, as upstream's `isPodUpdated`).
fn scheduling_relevant_change(old: &Pod, new: &Pod) -> bool {
    old.spec != new.spec
        || old.metadata.labels != new.metadata.labels
        || old.metadata.annotations != new.metadata.annotations
}

impl SchedulingQueue {
    /// An empty queue with the given back-off bounds.
    pub fn new(initial_backoff: Duration, max_backoff: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            active: BinaryHeap::new(),
            backoff: BinaryHeap::new(),
            unschedulable: HashSet::new(),
            seq: 0,
            initial_backoff,
            max_backoff,
        }
    }

    /// How many pods are queued (in any state).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no pod is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of `uid`.
    pub fn get(&self, uid: &str) -> Option<&Entry> {
        self.entries.get(uid)
    }

    /// The entry of `uid`, mutably.
    pub fn get_mut(&mut self, uid: &str) -> Option<&mut Entry> {
        self.entries.get_mut(uid)
    }

    /// Whether a pod is ready to be popped.
    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }

    fn push_active(&mut self, uid: &str) {
        let Some(e) = self.entries.get_mut(uid) else {
            return;
        };
        self.seq += 1;
        e.state = State::Active;
        e.generation = self.seq;
        let priority = e.pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        self.active
            .push((priority, Reverse(self.seq), uid.to_owned(), self.seq));
    }

    fn backoff_for(&self, attempts: u32) -> Duration {
        let shift = attempts.saturating_sub(1).min(20);
        self.initial_backoff
            .saturating_mul(1 << shift)
            .min(self.max_backoff)
    }

    fn push_backoff(&mut self, uid: &str, until: Instant) {
        let Some(e) = self.entries.get_mut(uid) else {
            return;
        };
        self.seq += 1;
        e.state = State::Backoff;
        e.since = until;
        e.generation = self.seq;
        self.backoff
            .push(Reverse((until, self.seq, uid.to_owned())));
    }

    /// Adds a new pending pod or records a newer version of a queued one. An unschedulable
    /// pod whose spec or labels changed is given another chance (after its back-off).
    pub fn add_or_update(&mut self, uid: &str, pod: Arc<Pod>, now: Instant) {
        match self.entries.get_mut(uid) {
            None => {
                self.entries.insert(
                    uid.to_owned(),
                    Entry {
                        pod,
                        attempts: 0,
                        state: State::Active,
                        since: now,
                        failure: None,
                        generation: 0,
                    },
                );
                self.push_active(uid);
            }
            Some(e) => {
                let wake =
                    e.state == State::Unschedulable && scheduling_relevant_change(&e.pod, &pod);
                e.pod = pod;
                if wake {
                    self.wake(uid, now);
                }
            }
        }
    }

    /// Moves an unschedulable pod to active, or to backoff while its back-off runs.
    fn wake(&mut self, uid: &str, now: Instant) {
        let Some(e) = self.entries.get(uid) else {
            return;
        };
        // `since` is when it became unschedulable, right after its last attempt.
        let until = e.since + self.backoff_for(e.attempts);
        if until <= now {
            self.push_active(uid);
        } else {
            self.push_backoff(uid, until);
        }
    }

    /// Removes a pod (deleted, bound elsewhere, no longer ours).
    pub fn remove(&mut self, uid: &str) -> Option<Entry> {
        self.unschedulable.remove(uid);
        self.entries.remove(uid)
    }

    /// Takes the next pod to schedule and marks it in flight.
    pub fn pop(&mut self) -> Option<(String, Arc<Pod>)> {
        while let Some((_, _, uid, generation)) = self.active.pop() {
            if let Some(e) = self.entries.get_mut(&uid)
                && e.state == State::Active
                && e.generation == generation
            {
                e.state = State::InFlight;
                return Some((uid, e.pod.clone()));
            }
        }
        None
    }

    /// No node fitted the pod.
    pub fn unschedulable(&mut self, uid: &str, now: Instant) {
        if let Some(e) = self.entries.get_mut(uid) {
            e.attempts += 1;
            e.state = State::Unschedulable;
            e.since = now;
            self.unschedulable.insert(uid.to_owned());
        }
    }

    /// Its binding failed: retry after the back-off.
    pub fn retry_later(&mut self, uid: &str, now: Instant) {
        let Some(e) = self.entries.get_mut(uid) else {
            return;
        };
        e.attempts += 1;
        let attempts = e.attempts;
        let until = now + self.backoff_for(attempts);
        self.push_backoff(uid, until);
    }

    /// Its binding succeeded.
    pub fn bound(&mut self, uid: &str) {
        if let Some(e) = self.entries.get_mut(uid) {
            e.state = State::Bound;
        }
    }

    /// A change that may help: every unschedulable pod `which` accepts gets another chance.
    /// Returns how many moved.
    pub fn move_unschedulable(&mut self, now: Instant, which: impl Fn(&Entry) -> bool) -> usize {
        let entries = &self.entries;
        self.unschedulable.retain(|uid| {
            entries
                .get(uid)
                .is_some_and(|e| e.state == State::Unschedulable)
        });
        let uids: Vec<String> = self
            .unschedulable
            .iter()
            .filter(|uid| self.entries.get(*uid).is_some_and(&which))
            .cloned()
            .collect();
        for uid in &uids {
            self.unschedulable.remove(uid);
            self.wake(uid, now);
        }
        uids.len()
    }

    /// Moves the pods whose back-off ended to active.
    pub fn flush_backoff(&mut self, now: Instant) {
        while let Some(Reverse((until, generation, uid))) = self.backoff.peek().cloned() {
            if until > now {
                break;
            }
            self.backoff.pop();
            if self
                .entries
                .get(&uid)
                .is_some_and(|e| e.state == State::Backoff && e.generation == generation)
            {
                self.push_active(&uid);
            }
        }
    }

    /// When the earliest back-off ends.
    pub fn next_backoff(&self) -> Option<Instant> {
        self.backoff.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Pods unschedulable for longer than `age` go back to active (the periodic flush).
    pub fn flush_unschedulable(&mut self, now: Instant, age: Duration) -> usize {
        self.move_unschedulable(now, |e| now.duration_since(e.since) >= age)
    }

    /// The uids of every queued pod.
    pub fn uids(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(priority: i32, label: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"labels": {"l": label}},
                "spec": {"priority": priority, "containers": []}}))
            .unwrap(),
        )
    }

    #[test]
    fn higher_priority_first_then_fifo() {
        let mut q = SchedulingQueue::new(Duration::from_secs(1), Duration::from_secs(10));
        let now = Instant::now();
        q.add_or_update("a", pod(0, "x"), now);
        q.add_or_update("b", pod(5, "x"), now);
        q.add_or_update("c", pod(0, "x"), now);
        let order: Vec<String> = std::iter::from_fn(|| q.pop().map(|(u, _)| u)).collect();
        assert_eq!(order, ["b", "a", "c"]);
    }

    #[test]
    fn unschedulable_pods_wait_for_a_change_and_their_backoff() {
        let mut q = SchedulingQueue::new(Duration::from_secs(1), Duration::from_secs(10));
        let t0 = Instant::now();
        q.add_or_update("a", pod(0, "x"), t0);
        q.pop().unwrap();
        q.unschedulable("a", t0);
        assert!(q.pop().is_none());
        // A status-only update does not wake it.
        q.add_or_update("a", pod(0, "x"), t0);
        assert!(q.pop().is_none());
        // A cluster change does, once the 1 s back-off ends.
        assert_eq!(q.move_unschedulable(t0, |_| true), 1);
        assert!(q.pop().is_none());
        assert_eq!(q.next_backoff(), Some(t0 + Duration::from_secs(1)));
        q.flush_backoff(t0 + Duration::from_secs(1));
        assert_eq!(q.pop().unwrap().0, "a");
        // A second failure doubles the back-off; a label change wakes it.
        q.unschedulable("a", t0);
        q.add_or_update("a", pod(0, "y"), t0);
        assert_eq!(q.next_backoff(), Some(t0 + Duration::from_secs(2)));
    }
}
