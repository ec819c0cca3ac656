//! EdgeSite's controllers. Each is an ordinary API client (kube-rs) so it can run inside
//! `edgesite server` over the in-process transport or, later, anywhere with a kubeconfig.
//!
//! - [`namespace`]: empties terminating namespaces, then releases their `kubernetes`
//!   finalizer so the API server removes them.
//! - [`garbage_collector`]: deletes objects whose owners are gone, and runs the `orphan` and
//!   `foregroundDeletion` finalizers.
//!
//! [`run_all`] runs every controller until a shutdown signal.

pub mod clock;
pub mod garbage_collector;
pub mod namespace;
pub mod resources;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tracing::info;

pub use clock::{Clock, ManualClock, SystemClock};

/// The user in-process controllers act as (upstream's controller manager identity).
pub const CONTROLLER_USER: &str = "system:kube-controller-manager";

/// Why a controller step failed; failures are retried with back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// An object or answer was not what the controller expected.
    #[error("{0}")]
    Unexpected(String),
}

/// Settings shared by the controllers. `Config::default()` is what `edgesite server` runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where controllers read the time from.
    pub clock: Arc<dyn Clock>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
        }
    }
}

/// A controller's main loop, as [`run_all`] runs it.
type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs every controller with `client` until `shutdown` completes.
///
/// Leader election seam: with several servers sharing one datastore, the caller acquires the
/// controller lease first and passes "lease lost or shutting down" as `shutdown`.
pub async fn run_all(
    client: kube::Client,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let config = Arc::new(config);
    let tasks: Vec<(&str, Task)> = vec![
        ("namespace", Box::pin(namespace::run(client.clone()))),
        (
            "garbage-collector",
            Box::pin(garbage_collector::run(client.clone())),
        ),
    ];
    let names: Vec<&str> = tasks.iter().map(|(n, _)| *n).collect();
    info!(controllers = ?names, "starting controllers");
    let _ = &config;
    tokio::select! {
        () = shutdown => info!("controllers stopping"),
        _ = futures::future::join_all(tasks.into_iter().map(|(_, t)| t)) => info!("controllers ended"),
    }
}
