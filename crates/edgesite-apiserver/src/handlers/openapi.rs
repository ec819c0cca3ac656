//! `/openapi/v3`: the root discovery document and one OpenAPI v3 document per group-version,
//! served from the embedded data of [`edgesite_api::openapi`]. kubectl needs them for `apply`,
//! `create -f`, `replace`, `edit` (field validation and strategic merge patch) and `explain`.
//! `/openapi/v2` is not served: kubectl tolerates its 404 when v3 exists.

use axum::body::Body;
use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use edgesite_api::openapi::OpenApi;

use super::not_found;

/// Documents requested by their current hash never change: cache them for a year, as
/// kube-apiserver does.
const IMMUTABLE: &str = "public, immutable, max-age=31536000";
/// The root and un-hashed URLs must be revalidated.
const REVALIDATE: &str = "no-cache, private";

fn json(bytes: &'static [u8], cache_control: &'static str, etag: Option<&str>) -> Response {
    let mut resp = Response::new(Body::from(bytes));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if let Some(etag) = etag.and_then(|e| HeaderValue::from_str(&format!("\"{e}\"")).ok()) {
        headers.insert(header::ETAG, etag);
    }
    resp
}

/// `GET /openapi/v3`.
pub(super) async fn root() -> Response {
    json(OpenApi::get().discovery().as_bytes(), REVALIDATE, None)
}

/// `GET /openapi/v3/{gv}`, e.g. `/openapi/v3/apis/apps/v1?hash=…`.
pub(super) async fn group_version(
    Path(gv): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some((bytes, hash)) = OpenApi::get().document(&gv) else {
        return not_found().await;
    };
    let requested = query.as_deref().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("hash="))
            .map(str::to_owned)
    });
    let cache_control = if requested.as_deref() == Some(hash) {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    let etag_matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().trim_matches('"') == hash));
    let mut resp = json(bytes, cache_control, Some(hash));
    if etag_matches {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        *resp.body_mut() = Body::empty();
    }
    resp
}
