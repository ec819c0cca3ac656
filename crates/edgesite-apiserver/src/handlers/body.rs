//! Request body decoding: every object a client sends goes through [`decode_object`], which
//! picks the decoder from the `Content-Type` and returns the object as raw JSON.

use edgesite_api::status::ApiError;
use serde_json::Value;

/// Decodes a request body holding one object. `content_type` is the media type alone,
/// lower-case, without parameters (`""` when the request had none).
pub fn decode_object(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    match content_type {
        "" | "application/json" => parse_json_object(body),
        _ => Err(ApiError::unsupported_media_type(&["application/json"])),
    }
}

fn parse_json_object(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(v)
}
