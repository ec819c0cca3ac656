//! Per-container restart back-off (CrashLoopBackOff) and image back-off (ImagePullBackOff),
//! with kubelet's rules: the first restart is immediate, then 10 s doubling to 5 min; a
//! container that ran for 10 min (twice the cap) since its last restart starts over.
//!
//! Times are wall-clock nanoseconds since the Unix epoch, the unit CRI reports container
//! exits in, so the runtime's `finishedAt` compares with the worker's clock directly.

use std::collections::HashMap;
use std::time::Duration;

/// The first back-off.
pub const INITIAL: Duration = Duration::from_secs(10);
/// The longest back-off.
pub const MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Entry {
    backoff: Duration,
    last_update: i64,
}

/// Back-off per key (a container name), as kubelet's `flowcontrol.Backoff`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    entries: HashMap<String, Entry>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(INITIAL, MAX)
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Backoff {
    /// A back-off starting at `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            entries: HashMap::new(),
        }
    }

    /// An entry last updated more than twice the cap before `at` is forgotten: the container
    /// ran long enough to count as healthy.
    fn expired(&self, at: i64, last_update: i64) -> bool {
        at.saturating_sub(last_update) > nanos(self.max) * 2
    }

    /// Whether `key`, which last failed at `event` (ns), must still wait at `now` (ns).
    pub fn in_backoff_since(&self, key: &str, event: i64, now: i64) -> bool {
        match self.entries.get(key) {
            None => false,
            Some(e) if self.expired(event, e.last_update) => false,
            Some(e) => now.saturating_sub(event) < nanos(e.backoff),
        }
    }

    /// Whether `key` must still wait at `now` since its last retry (images: the failed pull
    /// is the retry).
    pub fn in_backoff_since_update(&self, key: &str, now: i64) -> bool {
        self.entries
            .get(key)
            .is_some_and(|e| now.saturating_sub(e.last_update) < nanos(e.backoff))
    }

    /// When `key`, which last failed at `event`, may be retried (ns); `None` when it may now.
    pub fn retry_at(&self, key: &str, event: i64, now: i64) -> Option<i64> {
        if !self.in_backoff_since(key, event, now) {
            return None;
        }
        self.entries
            .get(key)
            .map(|e| event.saturating_add(nanos(e.backoff)))
    }

    /// The current back-off of `key`, `None` when it has none.
    pub fn current(&self, key: &str) -> Option<Duration> {
        self.entries.get(key).map(|e| e.backoff)
    }

    /// Records a retry of `key` at `now`: the next failure waits twice as long as the last
    /// (the first waits [`INITIAL`]), or starts over after a long healthy run.
    pub fn next(&mut self, key: &str, now: i64) {
        let (initial, max) = (self.initial, self.max);
        let fresh = Entry {
            backoff: initial,
            last_update: now,
        };
        match self.entries.get(key).copied() {
            Some(e) if !self.expired(now, e.last_update) => {
                let doubled = e.backoff.saturating_mul(2).min(max);
                self.entries.insert(
                    key.to_string(),
                    Entry {
                        backoff: doubled,
                        last_update: now,
                    },
                );
            }
            _ => {
                self.entries.insert(key.to_string(), fresh);
            }
        }
    }

    /// Forgets `key` (the container succeeded, or its pod is gone).
    pub fn reset(&mut self, key: &str) {
        self.entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn waits_double_from_ten_seconds_to_five_minutes() {
        let mut b = Backoff::default();
        let mut now = 1_000 * S;
        // The first failure restarts at once.
        assert!(!b.in_backoff_since("c", now, now));
        let mut waits = Vec::new();
        for _ in 0..8 {
            b.next("c", now);
            // The container fails right after each restart.
            let failed = now + S;
            let retry = b.retry_at("c", failed, failed).unwrap();
            waits.push((retry - failed) / S);
            assert!(b.in_backoff_since("c", failed, retry - 1));
            assert!(!b.in_backoff_since("c", failed, retry));
            now = retry;
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn ten_minutes_of_running_starts_over() {
        let mut b = Backoff::default();
        let t0 = 1_000 * S;
        b.next("c", t0);
        b.next("c", t0 + 20 * S);
        assert_eq!(b.current("c"), Some(Duration::from_secs(20)));
        let restarted = t0 + 20 * S;
        // Failed 9 min after the restart: still backing off.
        assert!(b.in_backoff_since("c", restarted + 540 * S, restarted + 541 * S));
        // Failed 10 min 1 s after it: restarted at once, and the next wait is 10 s again.
        let failed = restarted + 601 * S;
        assert!(!b.in_backoff_since("c", failed, failed));
        b.next("c", failed);
        assert_eq!(b.current("c"), Some(INITIAL));
    }
}
