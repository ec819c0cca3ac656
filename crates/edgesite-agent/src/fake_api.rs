//! An API server for unit tests: a [`kube::Client`] whose every request a test's function
//! answers in process (no socket), or never answers, so the agent's writers are tested
//! against a slow, failing or hanging server.

use serde_json::Value;

/// How the fake server answers one request.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// A JSON body with this status code.
    Json(u16, Value),
    /// No answer, ever.
    Hang,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client whose requests `answer` answers from their method, path and body.
pub(crate) fn client(
    answer: impl Fn(&hyper::Method, &str, &[u8]) -> Reply + Send + Sync + 'static,
) -> kube::Client {
    use http_body_util::BodyExt as _;
    let answer = std::sync::Arc::new(answer);
    let service = tower::service_fn(move |req: hyper::Request<kube::client::Body>| {
        let answer = answer.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await?.to_bytes();
            match answer(&parts.method, parts.uri.path(), &body) {
                Reply::Hang => std::future::pending().await,
                Reply::Json(code, json) => Ok::<_, BoxError>(
                    hyper::Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(kube::client::Body::from(json.to_string().into_bytes()))?,
                ),
            }
        }
    });
    kube::Client::new(service, "default")
}

/// A `metav1.Status` failure with `code`.
pub(crate) fn failure(code: u16) -> Reply {
    Reply::Json(
        code,
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "injected by the test", "reason": "InternalError", "code": code}),
    )
}
