//! Shared by the Job and CronJob tests: fast batch controllers on a manual clock.

use std::sync::Arc;
use std::time::Duration;

use edgesite_controllers::{Config, ManualClock};
use k8s_openapi::api::batch::v1::Job;

/// Fast controllers: no failure back-off, short re-checks of time-based state.
pub fn config(clock: Arc<ManualClock>) -> Config {
    Config {
        clock,
        workload_recheck: Duration::from_millis(100),
        job_backoff: Duration::ZERO,
        ..Config::default()
    }
}

/// Whether the Job has condition `ty` with status `True`.
pub fn has_condition(j: &Job, ty: &str) -> bool {
    j.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == ty && c.status == "True"))
}
