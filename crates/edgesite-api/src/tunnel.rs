//! The node tunnel's wire contract, shared by the API server and the agent: the agent opens
//! `GET TUNNEL_PATH` with `Upgrade: TUNNEL_UPGRADE` over its own TLS connection; after the
//! `101` the server is the HTTP/2 *client* on that connection and sends kubelet-style requests
//! (`/containerLogs/…`, `/exec/…`, `/attach/…`, `/portForward/…`) to the agent.
//!
//! HTTP/2 has no `101`: an upgrade the agent accepted on the runtime's streaming server comes
//! back as `200` with [`STATUS_HEADER`] `101`, its headers, and the raw byte stream as body;
//! the request body carries the client's bytes. The client's `Upgrade` header, a
//! connection-specific header HTTP/2 forbids, travels as [`UPGRADE_HEADER`].

/// The path the agent upgrades into a tunnel.
pub const TUNNEL_PATH: &str = "/v1-edgesite/tunnel";
/// The `Upgrade` token of the tunnel.
pub const TUNNEL_UPGRADE: &str = "edgesite-tunnel/1";
/// Carries the client's `Upgrade` header value over HTTP/2.
pub const UPGRADE_HEADER: &str = "x-edgesite-upgrade";
/// The status the runtime's streaming server really answered (`101`).
pub const STATUS_HEADER: &str = "x-edgesite-status";

/// The headers of an upgrade request passed through to the runtime's streaming server and
/// of its answer passed back to the client (besides `Upgrade`).
pub const UPGRADE_PASSTHROUGH_HEADERS: [&str; 6] = [
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "x-stream-protocol-version",
    "origin",
];
