//! In-process clients: a [`kube::Client`] whose requests go straight into the API router —
//! no socket, no TLS — for the controllers that run inside `edgesite server`. Each request
//! carries an [`InProcessIdentity`] extension that authentication trusts; requests from the
//! network cannot carry extensions, so this cannot be forged from outside the process.
//! Authorization still applies to the identity.

use axum::Router;
use tower::ServiceExt as _;

use crate::authn::Identity;

/// The identity of an in-process request, set by [`client`] and read by the authentication
/// middleware instead of the connection's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InProcessIdentity(pub Identity);

/// A kube client over `router`, acting as `identity`, with `default` as its default
/// namespace. Must be called inside a tokio runtime (the client spawns its request buffer).
pub fn client(router: Router, identity: Identity) -> kube::Client {
    let marker = InProcessIdentity(identity);
    let service = router.map_request(move |mut req: axum::http::Request<kube::client::Body>| {
        req.extensions_mut().insert(marker.clone());
        req
    });
    kube::Client::new(service, "default")
}
