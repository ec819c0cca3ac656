//! "Now", for everything in EdgeSite that depends on time passing (grace periods, deadlines,
//! schedules, TTLs, heartbeats, back-off). Reading it through a [`Clock`] lets integration
//! tests run the real store and API server while moving time forward by hand with
//! [`ManualClock`].

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of wall-clock and monotonic time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;

    /// The current monotonic instant, for measuring how long something took or how long ago
    /// it was seen; never goes backwards.
    fn instant(&self) -> Instant;

    /// Seconds since the Unix epoch (negative before it, which nothing expects).
    fn unix_seconds(&self) -> i64 {
        unix_seconds_of(self.now())
    }

    /// The current time in the RFC 3339 form Kubernetes objects carry (`2026-11-26T12:00:00Z`).
    fn rfc3339(&self) -> String {
        edgesite_api::time::format_rfc3339(self.unix_seconds())
    }
}

/// Seconds since the Unix epoch of `t` (negative before it).
pub fn unix_seconds_of(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The system's clock: what the product runs on.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

// The one place allowed to read the system's clocks.
#[allow(clippy::disallowed_methods)]
impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to; it starts at the system time of its creation.
#[derive(Debug)]
pub struct ManualClock {
    state: Mutex<(SystemTime, Instant)>,
}

impl ManualClock {
    /// A clock standing at the current system time.
    pub fn new() -> Self {
        Self {
            state: Mutex::new((SystemClock.now(), SystemClock.instant())),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 += by;
        state.1 += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    fn instant(&self) -> Instant {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

/// Blocks the calling thread for `d`: for the few synchronous paths (start-up retries, tests)
/// that cannot await a timer.
#[allow(clippy::disallowed_methods)]
pub fn block_for(d: Duration) {
    std::thread::sleep(d);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let c = ManualClock::new();
        let (t0, i0) = (c.now(), c.instant());
        block_for(Duration::from_millis(5));
        assert_eq!(c.now(), t0);
        assert_eq!(c.instant(), i0);
        c.advance(Duration::from_secs(41));
        assert_eq!(c.now().duration_since(t0).unwrap(), Duration::from_secs(41));
        assert_eq!(c.instant() - i0, Duration::from_secs(41));
        assert_eq!(c.unix_seconds() - 41, unix_seconds_of(t0));
        assert!(c.rfc3339().ends_with('Z'));
    }

    #[test]
    fn system_clock_moves_by_itself() {
        let i0 = SystemClock.instant();
        block_for(Duration::from_millis(2));
        assert!(SystemClock.instant() > i0);
        assert!(SystemClock.unix_seconds() > 1_700_000_000);
    }

    #[test]
    fn unix_seconds_before_the_epoch_are_negative() {
        assert_eq!(unix_seconds_of(UNIX_EPOCH - Duration::from_secs(3)), -3);
    }
}
