use super::*;
use crate::registry;
use serde_json::json;

fn pods() -> GroupResource {
    GroupResource::core("pods")
}

#[test]
fn not_found_exact() {
    let e = ApiError::not_found(pods(), "x");
    assert_eq!(
        e.to_status_json(),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":"pods \"x\" not found","reason":"NotFound",
               "details":{"name":"x","kind":"pods"},"code":404})
    );
    let d = registry::lookup("apps", "v1", "deployments").unwrap();
    assert_eq!(
        ApiError::not_found(d, "web").to_status_json(),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":"deployments.apps \"web\" not found","reason":"NotFound",
               "details":{"name":"web","group":"apps","kind":"deployments"},"code":404})
    );
}

#[test]
fn already_exists_and_conflict_exact() {
    assert_eq!(
        ApiError::already_exists(pods(), "x").to_status_json(),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":"pods \"x\" already exists","reason":"AlreadyExists",
               "details":{"name":"x","kind":"pods"},"code":409})
    );
    assert_eq!(
        ApiError::conflict(pods(), "x").to_status_json(),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":"Operation cannot be fulfilled on pods \"x\": the object has been modified; please apply your changes to the latest version and try again",
               "reason":"Conflict","details":{"name":"x","kind":"pods"},"code":409})
    );
}

#[test]
fn invalid_exact() {
    let d = registry::lookup("apps", "v1", "deployments").unwrap();
    let one = ApiError::invalid(
        d,
        "web",
        vec![Cause::required(
            "spec.template.spec.containers[0].image",
            "",
        )],
    );
    assert_eq!(
        one.to_status_json(),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":"Deployment.apps \"web\" is invalid: spec.template.spec.containers[0].image: Required value",
               "reason":"Invalid",
               "details":{"name":"web","group":"apps","kind":"Deployment","causes":[
                   {"reason":"FieldValueRequired","message":"Required value","field":"spec.template.spec.containers[0].image"}]},
               "code":422})
    );
    let p = registry::lookup("", "v1", "pods").unwrap();
    let two = ApiError::invalid(
        p,
        "x",
        vec![
            Cause::invalid("metadata.name", &json!("X_1"), "must be lowercase"),
            Cause::not_supported(
                "spec.restartPolicy",
                &json!("Sometimes"),
                &["Always", "Never", "OnFailure"],
            ),
        ],
    );
    assert_eq!(
        two.to_string(),
        "Pod \"x\" is invalid: [metadata.name: Invalid value: \"X_1\": must be lowercase, \
         spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"Never\", \"OnFailure\"]"
    );
    assert_eq!(two.code(), 422);
    assert_eq!(
        two.to_status_json()["details"]["causes"][1]["reason"],
        "FieldValueNotSupported"
    );
    assert_eq!(
        Cause::invalid(
            "spec.replicas",
            &json!(-1),
            "must be greater than or equal to 0"
        )
        .message,
        "Invalid value: -1: must be greater than or equal to 0"
    );
    assert_eq!(
        Cause::duplicate("f", &json!("a")).message,
        "Duplicate value: \"a\""
    );
    assert_eq!(
        Cause::forbidden("f", "may not be changed").message,
        "Forbidden: may not be changed"
    );
    assert_eq!(
        Cause::too_long("f", 63).message,
        "Too long: may not be more than 63 bytes"
    );
}

#[test]
fn simple_errors_exact() {
    assert_eq!(
        ApiError::bad_request("bad").to_status_json(),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":"bad","reason":"BadRequest","code":400})
    );
    assert_eq!(
        ApiError::unauthorized().to_status_json(),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":"Unauthorized","reason":"Unauthorized","code":401})
    );
    assert_eq!(
        ApiError::too_old_resource_version(5, 10).to_status_json(),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":"too old resource version: 5 (10)","reason":"Expired","code":410})
    );
    assert_eq!(
        ApiError::internal("disk full").to_status_json(),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":"Internal error occurred: disk full","reason":"InternalError",
               "details":{"causes":[{"message":"disk full"}]},"code":500})
    );
    assert_eq!(
        ApiError::too_many_requests("too many requests, please try again later", 1)
            .to_status_json(),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":"too many requests, please try again later","reason":"TooManyRequests",
               "details":{"retryAfterSeconds":1},"code":429})
    );
}

#[test]
fn forbidden_and_method_messages() {
    let e = ApiError::forbidden(
        pods(),
        "",
        "User \"system:anonymous\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\"",
    );
    assert_eq!(
        e.to_string(),
        "pods is forbidden: User \"system:anonymous\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
    );
    assert_eq!(e.to_status_json()["details"], json!({"kind":"pods"}));
    let e = ApiError::forbidden(GroupResource::core("secrets"), "s", "node may not read it");
    assert_eq!(
        e.to_string(),
        "secrets \"s\" is forbidden: node may not read it"
    );
    let e = ApiError::method_not_allowed(GroupResource::core("namespaces"), "deletecollection");
    assert_eq!(
        e.to_string(),
        "deletecollection is not supported on resources of kind \"namespaces\""
    );
    assert_eq!(e.code(), 405);
    assert_eq!(
        ApiError::not_acceptable(&["application/json", "application/yaml"]).to_string(),
        "only the following media types are accepted: application/json, application/yaml"
    );
    assert_eq!(
        ApiError::unsupported_media_type(&["application/json"]).to_string(),
        "the body of the request was in an unknown format - accepted media types include: application/json"
    );
    assert_eq!(
        ApiError::request_entity_too_large("limit is 3145728").to_string(),
        "Request entity too large: limit is 3145728"
    );
    let t = ApiError::timeout("request did not complete within 60s", 2);
    assert_eq!(
        t.to_string(),
        "Timeout: request did not complete within 60s"
    );
    assert_eq!(t.retry_after_seconds(), Some(2));
}

#[test]
fn reason_code_table() {
    let table: Vec<(ApiError, &str, u16)> = vec![
        (ApiError::not_found(pods(), "x"), "NotFound", 404),
        (ApiError::already_exists(pods(), "x"), "AlreadyExists", 409),
        (ApiError::conflict(pods(), "x"), "Conflict", 409),
        (
            ApiError::invalid(GroupKind::new("", "Pod"), "x", vec![]),
            "Invalid",
            422,
        ),
        (ApiError::Unprocessable("x".into()), "Invalid", 422),
        (ApiError::bad_request("x"), "BadRequest", 400),
        (ApiError::unauthorized(), "Unauthorized", 401),
        (ApiError::forbidden(pods(), "x", "no"), "Forbidden", 403),
        (
            ApiError::method_not_allowed(pods(), "x"),
            "MethodNotAllowed",
            405,
        ),
        (ApiError::not_acceptable(&[]), "NotAcceptable", 406),
        (ApiError::expired("x"), "Expired", 410),
        (ApiError::Gone("x".into()), "Gone", 410),
        (
            ApiError::request_entity_too_large("x"),
            "RequestEntityTooLarge",
            413,
        ),
        (
            ApiError::unsupported_media_type(&[]),
            "UnsupportedMediaType",
            415,
        ),
        (ApiError::too_many_requests("x", 0), "TooManyRequests", 429),
        (ApiError::internal("x"), "InternalError", 500),
        (ApiError::timeout("x", 0), "Timeout", 504),
    ];
    for (e, reason, code) in table {
        assert_eq!((e.reason(), e.code()), (reason, code), "{e:?}");
        let s = e.to_status_json();
        assert_eq!(s["reason"], reason);
        assert_eq!(s["code"], code);
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["message"], e.to_string());
    }
}

#[test]
fn from_patch_and_selector_errors() {
    let e: ApiError = PatchError::InvalidJson("eof".into()).into();
    assert_eq!((e.reason(), e.code()), ("BadRequest", 400));
    let e: ApiError = PatchError::TestFailed {
        index: 0,
        path: "/a".into(),
    }
    .into();
    assert_eq!((e.reason(), e.code()), ("Invalid", 422));
    assert_eq!(
        e.to_string(),
        "JSON patch operation 0 (test /a) failed: the value did not match"
    );
    let e: ApiError = PatchError::InvalidSchema("x".into()).into();
    assert_eq!(e.code(), 500);

    let sel = crate::selector::LabelSelector::parse("a in (").unwrap_err();
    let msg = sel.to_string();
    let e: ApiError = sel.into();
    assert_eq!((e.reason(), e.code()), ("BadRequest", 400));
    assert_eq!(e.to_string(), msg);
}

#[test]
fn success_status() {
    assert_eq!(
        success_status_json(None),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success"})
    );
}
