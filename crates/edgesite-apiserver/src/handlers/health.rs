//! `/version`, `/healthz`, `/livez`, `/readyz`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use tracing::warn;

use super::{ApiState, json_response, text_response};

/// How long `/readyz` waits for the store.
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn version(State(state): State<Arc<ApiState>>) -> Response {
    json_response(StatusCode::OK, &state.version)
}

pub(super) async fn healthz() -> Response {
    text_response(StatusCode::OK, "ok".to_owned())
}

/// The cluster CA certificate, PEM, to anyone: a joining agent fetches it before it can verify
/// the server, and trusts it only if its SHA-256 is the one its node token pins.
pub(super) async fn cacerts(State(state): State<Arc<ApiState>>) -> Response {
    let mut resp = text_response(StatusCode::OK, state.ca_cert_pem.clone());
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-pem-file"),
    );
    resp
}

pub(super) async fn livez() -> Response {
    text_response(StatusCode::OK, "ok".to_owned())
}

/// Ready when the store answers a status call in time and shutdown has not begun. Failures
/// name the check, as upstream does (`[-]etcd failed: reason withheld`).
pub(super) async fn readyz(State(state): State<Arc<ApiState>>) -> Response {
    if state.shutting_down.load(Ordering::Relaxed) {
        return text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "[-]shutdown failed: reason withheld\nreadyz check failed".to_owned(),
        );
    }
    match tokio::time::timeout(STORE_CHECK_TIMEOUT, state.store.status()).await {
        Ok(Ok(_)) => text_response(StatusCode::OK, "ok".to_owned()),
        Ok(Err(err)) => {
            warn!(%err, "readyz: store check failed");
            store_failed()
        }
        Err(_) => {
            warn!("readyz: store check timed out");
            store_failed()
        }
    }
}

fn store_failed() -> Response {
    text_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "[-]etcd failed: reason withheld\nreadyz check failed".to_owned(),
    )
}
