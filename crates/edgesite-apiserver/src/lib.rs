//! EdgeSite's API server.
//!
//! So far this holds the cluster PKI bootstrap ([`pki`]): the cluster CA, the API server's serving
//! certificate, the admin client certificate, the rustls server configuration that asks for (but
//! does not require) client certificates, and the admin kubeconfig ([`kubeconfig`]).

mod fsutil;
pub mod kubeconfig;
pub mod pki;

pub use kubeconfig::{Kubeconfig, KubeconfigError, write_admin_kubeconfig};
pub use pki::{ClusterPki, IssuedCert, PkiError, PkiOptions, client_identity};
