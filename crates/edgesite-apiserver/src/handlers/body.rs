//! Request body decoding: every object a client sends goes through [`decode_object`], which
//! picks the decoder from the `Content-Type` and returns the object as raw JSON.
//!
//! Three encodings are accepted: JSON, YAML (one document) and Kubernetes protobuf, which
//! kubectl 1.32's typed clients send for `create`, `auth can-i`, `auth whoami` and `drain`
//! (see [`edgesite_api::protobuf`]). A decoding failure is a `400 BadRequest` carrying the
//! decoder's message; an unknown media type is a `415 UnsupportedMediaType` listing the
//! accepted ones. Nothing is stored in either case, since decoding happens before any write.

use edgesite_api::status::ApiError;
use edgesite_api::{decode, protobuf};
use serde_json::{Value, json};

/// The largest request body accepted (upstream: 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// The request's media type alone, lower-case, without parameters (`""` when absent).
pub fn media_type(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Reads a whole request body; `413` once it passes [`MAX_BODY`].
pub async fn read_body(body: axum::body::Body) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::request_entity_too_large(format!("limit is {MAX_BODY}")))
}

/// The media types [`decode_object`] and [`decode_delete_options`] accept.
pub const OBJECT_MEDIA_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
];

/// Decodes a request body holding one object. `content_type` is the media type alone,
/// lower-case, without parameters (`""` when the request had none, read as JSON).
pub fn decode_object(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    match content_type {
        "" | "application/json" => parse_json_object(body),
        "application/yaml" => parse_yaml_object(body),
        protobuf::MEDIA_TYPE => parse_protobuf_object(body),
        _ => Err(ApiError::unsupported_media_type(OBJECT_MEDIA_TYPES)),
    }
}

/// Decodes the body of a `DELETE`: a `DeleteOptions` in JSON, YAML or protobuf. An empty (or
/// all-whitespace) body means no options and gives `{}`. The result is the options' JSON form
/// (`propagationPolicy`, `gracePeriodSeconds`, `preconditions`, `dryRun`, …).
pub fn decode_delete_options(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let opts = decode_object(content_type, body)?;
    match opts.get("kind").and_then(Value::as_str) {
        None | Some("" | "DeleteOptions") => Ok(opts),
        Some(other) => Err(ApiError::bad_request(format!(
            "the body of a delete request must be DeleteOptions, not {other}"
        ))),
    }
}

/// Parses a JSON body that must hold one object.
pub fn parse_json_object(body: &[u8]) -> Result<Value, ApiError> {
    decode::json_object(body)
}

/// Parses a YAML body (`application/yaml`, and the YAML of server-side apply) that must hold
/// exactly one document, a mapping. Several documents (`---`) are a 400, as upstream.
pub fn parse_yaml_object(body: &[u8]) -> Result<Value, ApiError> {
    decode::yaml_object(body)
}

/// Parses a Kubernetes protobuf body into the object's JSON form.
pub fn parse_protobuf_object(body: &[u8]) -> Result<Value, ApiError> {
    decode::protobuf_object(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        let obj = decode_object("application/json", br#"{"a":1}"#).unwrap();
        assert_eq!(obj, json!({"a": 1}));
        let obj = decode_object("", br#"{"a":1}"#).unwrap();
        assert_eq!(obj, json!({"a": 1}));
        let obj = decode_object("application/yaml", b"a: 1\nb: [x, 'y']\nc: {d: null}\n").unwrap();
        assert_eq!(obj, json!({"a": 1, "b": ["x", "y"], "c": {"d": null}}));
        let err = decode_object("text/plain", b"{}").unwrap_err();
        assert_eq!(err.code(), 415);
        assert!(
            err.to_string()
                .contains("application/vnd.kubernetes.protobuf"),
            "{err}"
        );
    }

    #[test]
    fn delete_options() {
        assert_eq!(decode_delete_options("", b"").unwrap(), json!({}));
        assert_eq!(
            decode_delete_options("application/json", b" \n").unwrap(),
            json!({})
        );
        let opts = decode_delete_options(
            "application/json",
            br#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Background"}"#,
        )
        .unwrap();
        assert_eq!(opts["propagationPolicy"], "Background");
        let opts = decode_delete_options("application/yaml", b"gracePeriodSeconds: 0\n").unwrap();
        assert_eq!(opts["gracePeriodSeconds"], 0);
        // Protobuf DeleteOptions{propagationPolicy: "Foreground"} as kubectl drain sends it.
        let mut body = b"k8s\0".to_vec();
        let type_meta = [&[0x0a, 2][..], b"v1", &[0x12, 13], b"DeleteOptions"].concat();
        let raw = [&[0x22, 10][..], b"Foreground"].concat();
        body.extend_from_slice(&[0x0a, type_meta.len() as u8]);
        body.extend_from_slice(&type_meta);
        body.extend_from_slice(&[0x12, raw.len() as u8]);
        body.extend_from_slice(&raw);
        let opts = decode_delete_options("application/vnd.kubernetes.protobuf", &body).unwrap();
        assert_eq!(
            opts,
            json!({"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground"})
        );
        let err = decode_delete_options("application/json", br#"{"kind":"Pod"}"#).unwrap_err();
        assert_eq!(err.code(), 400);
        let err = decode_delete_options("application/vnd.kubernetes.protobuf", b"k8s").unwrap_err();
        assert_eq!(err.code(), 400);
    }
}
