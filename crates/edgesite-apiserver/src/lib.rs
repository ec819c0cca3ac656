//! EdgeSite's API server.
//!
//! - [`pki`]: the cluster CA, the serving certificate, the admin client certificate and the
//!   rustls server configuration that asks for (but does not require) client certificates;
//!   [`kubeconfig`]: the admin kubeconfig.
//! - [`server`]: the HTTPS accept loop (tokio-rustls, HTTP/1.1 and HTTP/2) and startup/shutdown.
//! - [`authn`] and [`authz`]: who is asking ([`authn::Identity`] from client certificates,
//!   with a hook for bearer tokens) and whether they may ([`authz::Authorizer`]).
//! - [`metrics`]: Prometheus metrics at `/metrics` (request counts and latencies, open watches,
//!   process figures).
//! - [`handlers`]: the axum router: version, health, discovery, and generic handlers for every
//!   registered resource over raw JSON (get, list, watch, create, update, patch, delete,
//!   `/status`), reading through [`storage`]'s watch caches and writing through the store.
//! - [`admission`]: the admission chain every write goes through (namespace lifecycle,
//!   defaulting, Service IP and port allocation, validation).
//! - [`allocator`]: Service cluster IPs and node ports, taken at admission, one store key
//!   each, released on delete and repaired at start and periodically.
//! - [`in_process`]: kube clients that call the router directly (no socket, no TLS), for the
//!   controllers running inside `edgesite server` ([`Server::in_process_client`]).
#![warn(clippy::unwrap_used, clippy::expect_used)] // product code returns errors; tests may unwrap

pub mod admission;
pub mod allocator;
pub mod authn;
pub mod authz;
mod fsutil;
pub mod handlers;
pub mod impersonation;
pub mod in_process;
pub mod join;
pub mod kubeconfig;
pub mod metrics;
pub mod pki;
pub mod rbac;
pub mod server;
pub mod storage;
pub mod tunnel;

pub use kubeconfig::{Kubeconfig, KubeconfigError, write_admin_kubeconfig};
pub use pki::{ClusterPki, IssuedCert, PkiError, PkiOptions, client_identity};
pub use server::{Server, ServerConfig, ServerError};
