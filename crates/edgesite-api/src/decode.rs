//! Request bodies holding one object, parsed from JSON, YAML or Kubernetes protobuf into raw
//! JSON. Every failure is a `400 BadRequest` [`ApiError`] whose message says what is wrong;
//! the API server picks the parser from the `Content-Type`.

use serde_json::Value;

use crate::protobuf;
use crate::status::ApiError;

/// Parses a JSON body that must hold one object.
pub fn json_object(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(v)
}

/// Parses a YAML body that must hold exactly one document, a mapping. Several documents
/// (`---`) are rejected: one request carries one object.
pub fn yaml_object(body: &[u8]) -> Result<Value, ApiError> {
    let mut docs: Vec<Value> = serde_saphyr::from_slice_multiple(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid YAML: {e}")))?;
    if docs.len() > 1 {
        return Err(ApiError::bad_request(format!(
            "the request body is YAML with {} documents; send one object per request",
            docs.len()
        )));
    }
    let v = docs.pop().unwrap_or(Value::Null);
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a YAML mapping holding one object",
        ));
    }
    Ok(v)
}

/// Parses a Kubernetes protobuf body (see [`protobuf::decode_object`]).
pub fn protobuf_object(body: &[u8]) -> Result<Value, ApiError> {
    protobuf::decode_object(body).map_err(|e| ApiError::bad_request(e.to_string()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn yaml() {
        let obj = yaml_object(b"a: 1\nb: [x, 'y']\nc: {d: null}\n").unwrap();
        assert_eq!(obj, json!({"a": 1, "b": ["x", "y"], "c": {"d": null}}));
        for (body, want) in [
            (&b"a: 1\n---\nb: 2\n"[..], "2 documents"),
            (b"- 1\n- 2\n", "mapping"),
            (b"a: [1, 2\n", "not valid YAML"),
            (b"", "mapping"),
        ] {
            let err = yaml_object(body).unwrap_err();
            assert_eq!(err.code(), 400);
            assert!(err.to_string().contains(want), "{err}");
        }
    }

    #[test]
    fn json() {
        assert_eq!(json_object(br#"{"a":1}"#).unwrap(), json!({"a": 1}));
        for body in [&b"[1]"[..], b"{", b"", b"null"] {
            assert_eq!(json_object(body).unwrap_err().code(), 400);
        }
    }
}
