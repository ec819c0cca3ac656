//! Discovery: `/api`, `/apis` (legacy or aggregated), `/api/v1`, `/apis/{g}`, `/apis/{g}/{v}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use edgesite_api::discovery::{self, AggregatedVersion};

use super::{ApiState, json_response, json_response_as, not_found};

fn aggregated(headers: &HeaderMap) -> Option<AggregatedVersion> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    discovery::negotiate_aggregated(accept)
}

pub(super) async fn api(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    match aggregated(&headers) {
        Some(av) => json_response_as(
            StatusCode::OK,
            &discovery::aggregated_api(av),
            av.content_type(),
        ),
        None => json_response(
            StatusCode::OK,
            &discovery::api_versions(&state.server_address),
        ),
    }
}

pub(super) async fn apis(headers: HeaderMap) -> Response {
    match aggregated(&headers) {
        Some(av) => json_response_as(
            StatusCode::OK,
            &discovery::aggregated_apis(av),
            av.content_type(),
        ),
        None => json_response(StatusCode::OK, &discovery::api_group_list()),
    }
}

pub(super) async fn core_v1() -> Response {
    match discovery::api_resource_list("", "v1") {
        Some(body) => json_response(StatusCode::OK, &body),
        None => not_found().await,
    }
}

pub(super) async fn group(Path(group): Path<String>) -> Response {
    match discovery::api_group(&group) {
        Some(body) => json_response(StatusCode::OK, &body),
        None => not_found().await,
    }
}

pub(super) async fn group_version(Path((group, version)): Path<(String, String)>) -> Response {
    match discovery::api_resource_list(&group, &version) {
        Some(body) => json_response(StatusCode::OK, &body),
        None => not_found().await,
    }
}
