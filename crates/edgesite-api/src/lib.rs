//! Kubernetes API machinery with no IO, used by the API server, the controllers and the agent:
//! label and field selectors, the patch engines (JSON patch, merge patch, strategic merge
//! patch), resource quantities, the table of served resources with its discovery documents,
//! the `metav1.Status` form of API errors, and the node join token with its CA pin ([`join`]).
//! Objects are handled as raw JSON (`serde_json::Value`), the form in which the store keeps
//! them, so that no field a client sent is ever lost.
#![warn(clippy::unwrap_used, clippy::expect_used)] // product code returns errors; tests may unwrap
pub mod apply;
pub mod decode;
pub mod discovery;
pub mod join;
pub mod openapi;
pub mod patch;
pub mod pod_refs;
pub mod predicates;
pub mod protobuf;
pub mod quantity;
pub mod rbac;
pub mod registry;
pub mod selector;
pub mod status;
pub mod table;
pub mod time;
pub mod tunnel;
pub mod validation;
