//! The controllers' one work queue and its per-object back-off, as client-go's default
//! controller rate limiter has it: an object that fails waits 5 ms, then 10 ms, 20 ms, … up
//! to 1000 s, and is forgotten (back to 5 ms) once it syncs. [`Backoff`] is the failure
//! count per key; [`WorkQueue`] adds deduplication and delayed keys for the controllers that
//! run their own loop (endpoints, garbage collector); [`run_controller`] gives every
//! kube-runtime `Controller` the same back-off through one error policy.
//!
//! Due times are instants of tokio's timer, passed in by the caller, so the queue itself is
//! a pure data structure and tests can pause time.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Display;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::Error;

/// client-go's `DefaultControllerRateLimiter` base delay.
pub const BASE_DELAY: Duration = Duration::from_millis(5);
/// client-go's `DefaultControllerRateLimiter` longest delay.
pub const MAX_DELAY: Duration = Duration::from_secs(1000);

/// Failures per key, turned into an exponential delay (client-go's
/// `ItemExponentialFailureRateLimiter`).
#[derive(Debug)]
pub struct Backoff<T> {
    failures: Mutex<HashMap<T, u32>>,
    base: Duration,
    max: Duration,
}

impl<T: Hash + Eq + Clone> Backoff<T> {
    /// A back-off starting at `base` and doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            failures: Mutex::new(HashMap::new()),
            base,
            max,
        }
    }

    /// Records one more failure of `key` and returns how long to wait before retrying it.
    pub fn failed(&self, key: &T) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.clone()).or_insert(0);
        let exp = *n;
        *n = n.saturating_add(1);
        // 2^exp overflows long before the cap matters: cap the exponent first.
        let delay = self.base.saturating_mul(2u32.saturating_pow(exp.min(31)));
        delay.min(self.max)
    }

    /// Forgets `key`'s failures: its next failure waits the base delay again.
    pub fn forget(&self, key: &T) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// How many times `key` failed since it was last forgotten.
    pub fn failures(&self, key: &T) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

impl<T: Hash + Eq + Clone> Default for Backoff<T> {
    fn default() -> Self {
        Self::new(BASE_DELAY, MAX_DELAY)
    }
}

/// A queue of keys to sync: a key is in it at most once, and a failed key comes back after
/// its back-off (client-go's rate-limited work queue, for one worker).
#[derive(Debug)]
pub struct WorkQueue<T> {
    ready: VecDeque<T>,
    queued: HashSet<T>,
    /// Keys waiting for their back-off, with when they are due.
    waiting: HashMap<T, Instant>,
    backoff: Backoff<T>,
}

impl<T: Hash + Eq + Clone + Ord> WorkQueue<T> {
    /// An empty queue with client-go's default back-off.
    pub fn new() -> Self {
        Self::with_backoff(Backoff::default())
    }

    /// An empty queue with `backoff`.
    pub fn with_backoff(backoff: Backoff<T>) -> Self {
        Self {
            ready: VecDeque::new(),
            queued: HashSet::new(),
            waiting: HashMap::new(),
            backoff,
        }
    }

    /// Queues `key` now, unless it is queued already.
    pub fn add(&mut self, key: T) {
        if self.queued.insert(key.clone()) {
            self.ready.push_back(key);
        }
    }

    /// The next key to sync.
    pub fn pop(&mut self) -> Option<T> {
        let key = self.ready.pop_front()?;
        self.queued.remove(&key);
        Some(key)
    }

    /// Records that syncing `key` succeeded: its failures are forgotten.
    pub fn forget(&mut self, key: &T) {
        self.backoff.forget(key);
    }

    /// Records that syncing `key` failed at `now`: it comes back after its back-off, which
    /// is returned.
    pub fn retry(&mut self, key: T, now: Instant) -> Duration {
        let delay = self.backoff.failed(&key);
        let at = now + delay;
        let due = self.waiting.entry(key).or_insert(at);
        *due = (*due).min(at);
        delay
    }

    /// When the soonest waiting key is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.waiting.values().min().copied()
    }

    /// Queues the waiting keys that are due at `now`, in key order.
    pub fn promote_due(&mut self, now: Instant) {
        let due: BTreeMap<T, ()> = self
            .waiting
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| (k.clone(), ()))
            .collect();
        for key in due.into_keys() {
            self.waiting.remove(&key);
            self.add(key);
        }
    }

    /// Whether no key is ready to sync (waiting keys do not count).
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty()
    }
}

impl<T: Hash + Eq + Clone + Ord> Default for WorkQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Sleeps until `at`, or forever without one (for a `select!` arm).
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

/// Runs a kube-runtime `controller` with `reconcile` until its streams end: a failed object
/// is retried after its own back-off ([`Backoff`]), which a successful pass forgets.
pub(crate) async fn run_controller<K, Ctx, F, Fut>(
    name: &'static str,
    controller: Controller<K>,
    reconcile: F,
    ctx: Arc<Ctx>,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    Ctx: Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    let backoff: Arc<Backoff<ObjectRef<K>>> = Arc::new(Backoff::default());
    let on_error = backoff.clone();
    controller
        .run(
            move |obj: Arc<K>, ctx: Arc<Ctx>| {
                let backoff = backoff.clone();
                let key = ObjectRef::from_obj(&*obj);
                let pass = reconcile(obj, ctx);
                async move {
                    let result = pass.await;
                    if result.is_ok() {
                        backoff.forget(&key);
                    }
                    result
                }
            },
            move |obj: Arc<K>, err: &Error, _ctx: Arc<Ctx>| {
                error_action(name, &on_error, &ObjectRef::from_obj(&*obj), err)
            },
            ctx,
        )
        .for_each(|res| async move {
            if let Err(err) = res {
                debug!(controller = name, %err, "reconcile");
            }
        })
        .await;
}

/// The one error policy: log, and requeue after the object's next back-off.
fn error_action<T: Hash + Eq + Clone + Display>(
    name: &str,
    backoff: &Backoff<T>,
    key: &T,
    err: &Error,
) -> Action {
    let delay = backoff.failed(key);
    warn!(controller = name, object = %key, %err, ?delay, "sync failed; retrying");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_from_5ms_to_1000s_and_forgets() {
        let b: Backoff<&str> = Backoff::default();
        let seq: Vec<Duration> = (0..4).map(|_| b.failed(&"a")).collect();
        assert_eq!(
            seq,
            [5, 10, 20, 40].map(Duration::from_millis),
            "client-go's sequence"
        );
        // 5 ms * 2^17 = 655 s, 2^18 = 1310 s: capped from the 19th failure on.
        for _ in 4..18 {
            b.failed(&"a");
        }
        assert_eq!(b.failed(&"a"), MAX_DELAY);
        for _ in 0..100 {
            assert_eq!(b.failed(&"a"), MAX_DELAY, "no overflow");
        }
        assert_eq!(b.failed(&"b"), BASE_DELAY, "per key");
        b.forget(&"a");
        assert_eq!(b.failures(&"a"), 0);
        assert_eq!(b.failed(&"a"), BASE_DELAY, "forgotten on success");
    }

    #[test]
    fn queue_deduplicates_keys() {
        let mut q = WorkQueue::new();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.pop(), Some("a"));
        q.add("a");
        assert_eq!(q.pop(), Some("b"));
        assert_eq!(q.pop(), Some("a"));
        assert_eq!(q.pop(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn failed_keys_come_back_after_their_back_off() {
        let t0 = Instant::now();
        let mut q = WorkQueue::new();
        assert_eq!(q.retry("a", t0), Duration::from_millis(5));
        assert_eq!(q.retry("b", t0), Duration::from_millis(5));
        assert_eq!(q.retry("b", t0), Duration::from_millis(10));
        // A second failure before the key came back keeps the earlier due time.
        assert_eq!(q.next_due(), Some(t0 + Duration::from_millis(5)));
        q.promote_due(t0 + Duration::from_millis(4));
        assert_eq!(q.pop(), None);
        q.promote_due(t0 + Duration::from_millis(5));
        assert_eq!(q.pop(), Some("a"));
        assert_eq!(q.pop(), Some("b"));
        assert_eq!(q.next_due(), None);
        q.forget(&"a");
        assert_eq!(q.retry("a", t0), Duration::from_millis(5));
        assert_eq!(q.retry("b", t0), Duration::from_millis(20));
    }

    #[test]
    fn a_due_key_already_queued_is_not_queued_twice() {
        let t0 = Instant::now();
        let mut q = WorkQueue::new();
        q.retry("a", t0);
        q.add("a");
        q.promote_due(t0 + Duration::from_secs(1));
        assert_eq!(q.pop(), Some("a"));
        assert_eq!(q.pop(), None);
    }
}
