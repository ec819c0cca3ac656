//! The HTTP surface: an axum [`Router`] with authentication and authorization in front of the
//! discovery, version and health endpoints. Resource handlers plug into [`router`] next.

pub mod body;
mod discovery;
mod fieldvalidation;
mod guaranteed_update;
mod health;
mod openapi;
mod pods;
pub mod resources;
mod reviews;
mod scale;
pub mod streams;
pub mod target;
mod watch;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use edgesite_api::status::ApiError;
use edgesite_store::Store;
use serde_json::{Value, json};
use tracing::debug;

use crate::authn::{Authenticator, AuthnResult, ConnectionInfo, Identity};
use crate::authz::{
    Authorizer, Decision, RequestAttributes, ResourceAttributes, forbidden_message,
    is_public_info_path,
};

/// Everything handlers share.
#[derive(Debug)]
pub struct ApiState {
    /// The cluster's store.
    pub store: Arc<dyn Store>,
    /// Object storage (watch caches) for the resource handlers.
    pub storage: crate::storage::Storage,
    /// Service cluster IP and node port allocation.
    pub services: Arc<crate::allocator::ServiceAllocator>,
    /// The admission plugins every create, update and delete goes through.
    pub admission: crate::admission::AdmissionChain,
    /// Where every timestamp and interval of the handlers comes from (a `ManualClock` in
    /// tests that need to move time).
    pub clock: Arc<dyn edgesite_clock::Clock>,
    /// `host:port` clients should use, reported by `GET /api`.
    pub server_address: String,
    /// The cluster CA certificate (PEM), served at `GET /cacerts`.
    pub ca_cert_pem: String,
    /// The node-certificate endpoint's token and signer; `None` serves no such endpoint.
    pub(crate) node_certs: Option<Arc<crate::join::NodeCertIssuer>>,
    /// The `/version` body, computed once.
    pub version: Value,
    /// Authenticates each request.
    pub authenticator: Arc<dyn Authenticator>,
    /// Authorizes each request.
    pub authorizer: Arc<dyn Authorizer>,

    /// The nodes' tunnels, which the pod streams (logs, exec, port-forward) go through.
    pub tunnels: Arc<crate::tunnel::TunnelRegistry>,
    /// Set when shutdown begins; `/readyz` then fails so load balancers stop sending traffic.
    pub shutting_down: AtomicBool,
    /// Turns true when shutdown begins: open watches end then (clients re-watch elsewhere or
    /// once the server is back), so connections close and shutdown does not wait for them.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// The API router over `state`. Requests should carry a [`ConnectionInfo`] extension (the
/// accept loop adds it); without one they are treated as coming without a client certificate.
pub fn router(state: Arc<ApiState>) -> Router {
    let api = Router::new()
        .route("/cacerts", get_only(health::cacerts))
        .route("/version", get_only(health::version))
        .route("/version/", get_only(health::version))
        .route("/healthz", get_only(health::healthz))
        .route("/livez", get_only(health::livez))
        .route("/readyz", get_only(health::readyz))
        .route("/metrics", get_only(crate::metrics::handler))
        .route("/openapi/v3", get_only(openapi::root))
        .route("/openapi/v3/", get_only(openapi::root))
        .route("/openapi/v3/{*gv}", get_only(openapi::group_version))
        .route("/api", get_only(discovery::api))
        .route("/api/", get_only(discovery::api))
        .route("/apis", get_only(discovery::apis))
        .route("/apis/", get_only(discovery::apis))
        .route("/api/v1", get_only(discovery::core_v1))
        .route("/api/v1/", get_only(discovery::core_v1))
        .route("/apis/{group}", get_only(discovery::group))
        .route("/apis/{group}/", get_only(discovery::group))
        .route(
            "/apis/{group}/{version}",
            get_only(discovery::group_version),
        )
        .route(
            "/apis/{group}/{version}/",
            get_only(discovery::group_version),
        )
        .route(
            edgesite_api::tunnel::TUNNEL_PATH,
            get(streams::tunnel).fallback(method_not_allowed),
        )
        .fallback(resource_or_not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            authenticate_and_authorize,
        ));
    // Added after the authentication layer, which therefore does not wrap it: the endpoint
    // checks its own credentials (the join token is no API credential).
    let api = match &state.node_certs {
        Some(issuer) => api.route_service(
            crate::join::NODE_CERTIFICATE_PATH,
            crate::join::router(issuer.clone()),
        ),
        None => api,
    };
    api.layer(middleware::from_fn_with_state(
        state.clone(),
        crate::metrics::middleware,
    ))
    .with_state(state)
}

fn get_only<H, T>(handler: H) -> MethodRouter<Arc<ApiState>>
where
    H: axum::handler::Handler<T, Arc<ApiState>>,
    T: 'static,
{
    get(handler).fallback(method_not_allowed)
}

/// Authentication, then authorization, then the handler; logs each request at debug level.
async fn authenticate_and_authorize(
    State(state): State<Arc<ApiState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = state.clock.instant();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let conn = req
        .extensions()
        .get::<ConnectionInfo>()
        .cloned()
        .unwrap_or_default();
    // In-process clients (controllers) carry their identity as an extension, which only code
    // in this process can set: network requests never have one.
    let in_process = req
        .extensions()
        .get::<crate::in_process::InProcessIdentity>()
        .map(|i| AuthnResult::Authenticated(i.0.clone()));
    let authn =
        in_process.unwrap_or_else(|| state.authenticator.authenticate(&conn, req.headers()));
    let identity = match authn {
        AuthnResult::Authenticated(id) => Some(id),
        AuthnResult::NoCredentials => None,
        AuthnResult::Rejected(why) => {
            debug!(%method, %path, remote = ?conn.remote_addr, %why, "authentication failed");
            return status_response(&ApiError::unauthorized());
        }
    };
    let identity = match identity {
        Some(id) => id,
        // Anonymous requests reach only the public-info paths; everything else asks for
        // credentials.
        None if is_public_info_path(&path) => Identity::anonymous(),
        None => return status_response(&ApiError::unauthorized()),
    };
    let identity = match crate::impersonation::impersonate(
        state.authorizer.as_ref(),
        identity,
        req.headers(),
        &path,
    ) {
        Ok(id) => id,
        Err(crate::impersonation::Refusal::BadRequest(msg)) => {
            return status_response(&ApiError::bad_request(msg));
        }
        Err(crate::impersonation::Refusal::Forbidden(err)) => {
            debug!(%method, %path, %err, "impersonation refused");
            return status_response(&err);
        }
    };
    crate::impersonation::strip(req.headers_mut());
    let target = target::parse_path(&path);
    let (verb, resource) = match &target {
        Some(Some(t)) => (
            t.verb(&method, req.uri().query())
                .map_or("unknown", target::Verb::as_str)
                .to_owned(),
            Some(ResourceAttributes {
                api_group: t.resource.group.to_owned(),
                resource: t.resource.plural.to_owned(),
                subresource: t.subresource.map(|s| s.as_str().to_owned()),
                // A namespace is its own namespace, as upstream's request info has it: `view`
                // bound in `dev` may get namespace `dev`.
                namespace: if t.resource.group.is_empty() && t.resource.plural == "namespaces" {
                    t.name.clone()
                } else {
                    t.namespace.clone()
                },
                name: t.name.clone(),
            }),
        ),
        _ => (method.as_str().to_ascii_lowercase(), None),
    };
    let attrs = RequestAttributes {
        identity: &identity,
        verb,
        path: &path,
        resource,
    };
    if let Decision::Deny(why) = state.authorizer.authorize(&attrs) {
        debug!(%method, %path, user = %identity.user, %why, "forbidden");
        let message = forbidden_message(&attrs, &why);
        return match &attrs.resource {
            Some(r) => status_response(&ApiError::forbidden(
                edgesite_api::registry::GroupResource::new(&r.api_group, &r.resource),
                r.name.as_deref().unwrap_or_default(),
                &message,
            )),
            None => status_json_response(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!("forbidden: {message}"),
            ),
        };
    }
    let user = identity.user.clone();
    req.extensions_mut().insert(identity);
    if let Some(Some(t)) = target {
        req.extensions_mut().insert(t);
    }
    let resp = next.run(req).await;
    debug!(
        %method,
        %path,
        %user,
        status = resp.status().as_u16(),
        micros = state.clock.instant().duration_since(started).as_micros() as u64,
        "request"
    );
    resp
}

async fn resource_or_not_found(State(state): State<Arc<ApiState>>, req: Request) -> Response {
    match req.extensions().get::<target::Target>().cloned() {
        Some(t)
            if t.subresource
                .is_some_and(|s| streams::is_pod_stream(t.resource, s)) =>
        {
            streams::handle(state, t, req).await
        }
        Some(t) => resources::handle(state, t, req).await,
        None => not_found().await,
    }
}

async fn not_found() -> Response {
    status_json_response(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
    )
}

async fn method_not_allowed() -> Response {
    status_json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
    )
}

/// A JSON response with `Content-Type: application/json`.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    json_response_as(status, body, "application/json")
}

/// A response of already serialized JSON with `Content-Type: application/json`.
pub fn json_bytes_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON response with the given content type (e.g. the aggregated discovery type).
pub fn json_response_as(status: StatusCode, body: &Value, content_type: &'static str) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// The `metav1.Status` response for `err`, with `Retry-After` when it carries one.
pub fn status_response(err: &ApiError) -> Response {
    let status = StatusCode::from_u16(err.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_response(status, &err.to_status_json());
    if let Some(secs) = err.retry_after_seconds() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// A generic failure `Status` as upstream's `NewGenericServerResponse` builds it (empty
/// `details`), for errors that are about the path rather than a resource.
pub fn status_json_response(status: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {},
        "code": status.as_u16(),
    });
    json_response(status, &body)
}

/// A `text/plain` response (health endpoints).
fn text_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}
