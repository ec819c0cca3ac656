//! The controllers' notion of "now". Everything time-dependent in a controller (grace periods,
//! deadlines, schedules, TTLs) reads a [`Clock`], so integration tests can run the real store
//! and API server while moving time forward by hand with [`ManualClock`].

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// Seconds since the Unix epoch (negative before it, which no controller expects).
    fn unix_seconds(&self) -> i64 {
        match self.now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        }
    }

    /// The current time in the RFC 3339 form Kubernetes objects carry (`2026-11-26T12:00:00Z`).
    fn rfc3339(&self) -> String {
        edgesite_api::time::format_rfc3339(self.unix_seconds())
    }
}

/// The system's clock: what `edgesite server` uses.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to; it starts at the system time of its creation.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<SystemTime>,
}

impl ManualClock {
    /// A clock standing at the current system time.
    pub fn new() -> Self {
        Self {
            now: Mutex::new(SystemTime::now()),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let c = ManualClock::new();
        let t0 = c.now();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.now(), t0);
        c.advance(Duration::from_secs(41));
        assert_eq!(c.now().duration_since(t0).unwrap(), Duration::from_secs(41));
        assert_eq!(c.unix_seconds() - 41, {
            let s = t0.duration_since(UNIX_EPOCH).unwrap().as_secs();
            i64::try_from(s).unwrap()
        });
        assert!(c.rfc3339().ends_with('Z'));
    }
}
