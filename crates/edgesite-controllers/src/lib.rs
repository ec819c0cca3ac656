//! EdgeSite's controllers. Each is an ordinary API client (kube-rs) so it can run inside
//! `edgesite server` over the in-process transport or, later, anywhere with a kubeconfig.
//!
//! - [`namespace`]: empties terminating namespaces, then releases their `kubernetes`
//!   finalizer so the API server removes them.
//! - [`garbage_collector`]: deletes objects whose owners are gone, and runs the `orphan` and
//!   `foregroundDeletion` finalizers.
//!
//! [`run_all`] runs every controller until a shutdown signal.

pub mod garbage_collector;
pub mod namespace;
pub mod resources;

use std::future::Future;

use tracing::info;

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

/// Runs every controller with `client` until `shutdown` completes.
///
/// Leader election seam: with several servers sharing one datastore, the caller acquires the
/// controller lease first and passes "lease lost or shutting down" as `shutdown`.
pub async fn run_all(client: kube::Client, shutdown: impl Future<Output = ()> + Send + 'static) {
    info!("starting controllers: namespace, garbage-collector");
    let namespace = namespace::run(client.clone());
    let gc = garbage_collector::run(client);
    tokio::select! {
        () = shutdown => info!("controllers stopping"),
        _ = futures::future::join(namespace, gc) => info!("controllers ended"),
    }
}
