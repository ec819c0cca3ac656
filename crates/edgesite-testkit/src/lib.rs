//! Test harness shared by EdgeSite's crates.
//!
//! - [`EtcdServer`]: a real, single-member etcd on free loopback ports with its own temporary
//!   data directory, stopped and wiped on drop. It runs with etcd's production durability
//!   (fsync on every commit; no `--unsafe-no-fsync`), so the etcd backend is tested as it runs.
//! - [`busybox_image`]: an OCI tarball of the host's static busybox, for containerd tests.
//! - `TestContainerd` (feature `containerd`): a real containerd run by the agent's supervisor
//!   in a temporary directory; containerd, shims, containers and mounts are reaped on drop.
//! - [`net`]: process helpers — free loopback ports, waiting for a port to accept connections, a
//!   tiny HTTP GET — for any test that starts a server.
//!
//! Prerequisites are never optional: when the etcd binary is missing, [`EtcdServer::start`]
//! panics and tells to run `scripts/setup`, so a test that needs etcd fails instead of skipping.
//!
//! ```no_run
//! let etcd = edgesite_testkit::EtcdServer::start();
//! println!("etcd at {} ({})", etcd.client_url(), etcd.endpoint());
//! // ... connect a client to etcd.endpoint() ...
//! drop(etcd); // kills the process and removes its data directory
//! ```
#![allow(clippy::disallowed_methods)] // a harness: it waits for and measures real processes

pub mod containerd;
pub mod etcd;
pub mod net;

pub use containerd::busybox_image;
#[cfg(feature = "containerd")]
pub use containerd::{Leftovers, TestContainerd, direct_cri_pod_start};
pub use etcd::{EtcdOptions, EtcdServer};
pub use net::{free_port, free_ports, http_get, wait_for_port};
