//! EdgeSite's node agent. This first foundation is the runtime side:
//!
//! - [`join`]: joining the cluster with the node token, the node client certificate kept
//!   under the agent's directory and renewed in place, and the kube clients that use it;
//! - [`cri`]: the [`cri::Runtime`] trait (the CRI v1 calls the pod workers make) and
//!   [`cri::CriRuntime`], CRI v1 gRPC over containerd's unix socket;
//! - [`agent`]: `edgesite agent`, the parts wired together;
//! - [`report`]: pod status, events and final deletes written to the server through a queue;
//! - [`cache`]: the node's local cache on disk, the only source the pod workers read;
//! - [`cni`]: the pods' network, a CNI bridge per agent from the node's pod CIDR, and its
//!   cleanup;
//! - [`containerd`]: a containerd owned and supervised by the agent, with its own generated
//!   configuration, root, state and socket under the agent's directory;
//! - [`images`]: importing OCI tarballs into containerd's `k8s.io` namespace, the agent's pause
//!   image;
//! - [`pod`]: the pod workers and what they need (CRI configurations, volumes, status);
//! - [`sync`]: the node-scoped watches that feed the cache;
//! - [`oci`]: building single-layer OCI image-layout tarballs from host files (no IO beyond
//!   files; the only module compiled without the `runtime` feature, for the testkit).
#![warn(clippy::unwrap_used, clippy::expect_used)] // product code returns errors; tests may unwrap
#![warn(missing_docs)]

#[cfg(feature = "runtime")]
pub mod agent;
#[cfg(feature = "runtime")]
pub mod cache;
#[cfg(feature = "runtime")]
pub mod cni;
#[cfg(feature = "runtime")]
pub mod containerd;
#[cfg(feature = "runtime")]
pub mod cri;
#[cfg(all(test, feature = "runtime"))]
mod fake_api;
#[cfg(feature = "runtime")]
pub mod images;
#[cfg(feature = "runtime")]
pub mod join;
pub mod oci;
#[cfg(feature = "runtime")]
pub mod pod;
#[cfg(feature = "runtime")]
pub mod pressure;
#[cfg(feature = "runtime")]
pub mod report;
#[cfg(feature = "runtime")]
pub mod streams;
#[cfg(feature = "runtime")]
pub mod sync;
