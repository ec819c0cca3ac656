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
///
/// Each request is handled on a task of its own, as a network connection's would be: the
/// handler must make progress even when the caller stops polling its request future for a
/// while (a kube-rs stream under back-pressure), or it could sit on a server-side lock.
pub fn client(router: Router, identity: Identity) -> kube::Client {
    let marker = InProcessIdentity(identity);
    let service = tower::service_fn(move |mut req: axum::http::Request<kube::client::Body>| {
        req.extensions_mut().insert(marker.clone());
        let handled = tokio::spawn(router.clone().oneshot(req));
        async move {
            match handled.await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(never)) => match never {},
                Err(e) => Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
            }
        }
    });
    kube::Client::new(service, "default")
}
