use serde_json::json;

use super::*;

/// A tiny protobuf writer: just enough to build the bodies kubectl sends.
#[derive(Default, Clone)]
struct Enc(Vec<u8>);

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Enc {
    fn new() -> Self {
        Self::default()
    }
    fn key(mut self, field: u32, wire: u8) -> Self {
        put_varint(&mut self.0, (u64::from(field) << 3) | u64::from(wire));
        self
    }
    fn varint(self, field: u32, v: u64) -> Self {
        let mut s = self.key(field, 0);
        put_varint(&mut s.0, v);
        s
    }
    fn int(self, field: u32, v: i64) -> Self {
        self.varint(field, v as u64)
    }
    fn bytes(self, field: u32, b: &[u8]) -> Self {
        let mut s = self.key(field, 2);
        put_varint(&mut s.0, b.len() as u64);
        s.0.extend_from_slice(b);
        s
    }
    fn str(self, field: u32, v: &str) -> Self {
        self.bytes(field, v.as_bytes())
    }
    fn msg(self, field: u32, m: Enc) -> Self {
        self.bytes(field, &m.0)
    }
    fn fixed64(self, field: u32, v: u64) -> Self {
        let mut s = self.key(field, 1);
        s.0.extend_from_slice(&v.to_le_bytes());
        s
    }
    /// A `map<string, string>` entry.
    fn entry(self, field: u32, k: &str, v: &str) -> Self {
        self.msg(field, Enc::new().str(1, k).str(2, v))
    }
    fn entry_msg(self, field: u32, k: &str, v: Enc) -> Self {
        self.msg(field, Enc::new().str(1, k).msg(2, v))
    }
}

fn envelope(api_version: &str, kind: &str, raw: Enc) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    let unknown = Enc::new()
        .msg(1, Enc::new().str(1, api_version).str(2, kind))
        .msg(2, raw)
        .str(3, "")
        .str(4, "");
    out.extend_from_slice(&unknown.0);
    out
}

/// ObjectMeta as the Go encoder writes it: every non-pointer field, even when empty.
fn object_meta(name: &str, namespace: &str) -> Enc {
    Enc::new()
        .str(1, name)
        .str(2, "")
        .str(3, namespace)
        .str(4, "")
        .str(5, "")
        .str(6, "")
        .int(7, 0)
        .msg(8, Enc::new().int(1, 0).int(2, 0))
}

fn quantity(s: &str) -> Enc {
    Enc::new().str(1, s)
}

fn malformed(body: &[u8]) -> String {
    match decode_object(body) {
        Ok(v) => panic!("decoded malformed input to {v}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn schema_table_loads_and_knows_the_kinds_kubectl_sends() {
    for (av, kind, msg) in [
        ("v1", "ConfigMap", "k8s.io.api.core.v1.ConfigMap"),
        ("v1", "Namespace", "k8s.io.api.core.v1.Namespace"),
        ("apps/v1", "Deployment", "k8s.io.api.apps.v1.Deployment"),
        ("batch/v1", "CronJob", "k8s.io.api.batch.v1.CronJob"),
        ("policy/v1", "Eviction", "k8s.io.api.policy.v1.Eviction"),
        (
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
            "k8s.io.api.authorization.v1.SelfSubjectAccessReview",
        ),
        (
            "authentication.k8s.io/v1",
            "SelfSubjectReview",
            "k8s.io.api.authentication.v1.SelfSubjectReview",
        ),
        (
            "v1",
            "DeleteOptions",
            "k8s.io.apimachinery.pkg.apis.meta.v1.DeleteOptions",
        ),
        (
            "meta.k8s.io/v1",
            "DeleteOptions",
            "k8s.io.apimachinery.pkg.apis.meta.v1.DeleteOptions",
        ),
    ] {
        assert_eq!(message_for(av, kind), Some(msg), "{av} {kind}");
    }
    assert_eq!(message_for("v1", "Nope"), None);
    assert_eq!(message_for("nope/v1", "Pod"), None);
}

#[test]
fn configmap_with_maps_and_go_zero_values() {
    let meta = object_meta("cm", "demo")
        .entry(11, "app", "web")
        .entry(12, "note", "");
    let raw = Enc::new()
        .msg(1, meta)
        .entry(2, "a", "b")
        .entry(2, "empty", "")
        .msg(3, Enc::new().str(1, "bin").bytes(2, &[0, 1, 2, 255]));
    let obj = decode_object(&envelope("v1", "ConfigMap", raw)).unwrap();
    assert_eq!(
        obj,
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "cm",
                "namespace": "demo",
                "labels": {"app": "web"},
                "annotations": {"note": ""},
            },
            "data": {"a": "b", "empty": ""},
            "binaryData": {"bin": "AAEC/w=="},
        })
    );
}

#[test]
fn secret_data_is_base64_and_pointer_bool_keeps_false() {
    let raw = Enc::new()
        .msg(1, object_meta("s", "demo"))
        .msg(2, Enc::new().str(1, "p").bytes(2, b"x"))
        .str(3, "Opaque")
        .varint(5, 0);
    let obj = decode_object(&envelope("v1", "Secret", raw)).unwrap();
    assert_eq!(obj["data"], json!({"p": "eA=="}));
    assert_eq!(obj["type"], "Opaque");
    // `immutable` is a *bool: an explicit false is kept.
    assert_eq!(obj["immutable"], false);
    assert!(obj.get("stringData").is_none());
}

#[test]
fn deployment_with_int_or_string_quantities_and_time() {
    let container = Enc::new()
        .str(1, "nginx")
        .str(2, "nginx:1.27")
        .str(4, "--port")
        .str(4, "80")
        .msg(6, Enc::new().str(1, "").int(2, 0).int(3, 80).str(4, "TCP"))
        .msg(
            8,
            Enc::new()
                .entry_msg(1, "memory", quantity("128Mi"))
                .entry_msg(2, "cpu", quantity("100m")),
        );
    let pod_spec = Enc::new().msg(2, container).str(3, "Always").int(4, 30);
    let template = Enc::new()
        .msg(1, object_meta("", "").entry(11, "app", "web"))
        .msg(2, pod_spec);
    let strategy = Enc::new().str(1, "RollingUpdate").msg(
        2,
        Enc::new()
            .msg(1, Enc::new().int(1, 0).int(2, 1).str(3, ""))
            .msg(2, Enc::new().int(1, 1).int(2, 0).str(3, "25%")),
    );
    let spec = Enc::new()
        .int(1, 0) // replicas: 0, a pointer: kept
        .msg(2, Enc::new().entry(1, "app", "web"))
        .msg(3, template)
        .msg(4, strategy)
        .int(5, 0) // minReadySeconds: dropped
        .varint(7, 0); // paused false: dropped
    let meta = object_meta("web", "demo").msg(8, Enc::new().int(1, 1_709_210_096).int(2, 5));
    let raw = Enc::new().msg(1, meta).msg(2, spec).msg(3, Enc::new());
    let obj = decode_object(&envelope("apps/v1", "Deployment", raw)).unwrap();
    assert_eq!(
        obj,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "demo",
                "creationTimestamp": "2024-02-29T12:34:56Z",
            },
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{
                            "name": "nginx",
                            "image": "nginx:1.27",
                            "args": ["--port", "80"],
                            "ports": [{"containerPort": 80, "protocol": "TCP"}],
                            "resources": {
                                "limits": {"memory": "128Mi"},
                                "requests": {"cpu": "100m"},
                            },
                        }],
                        "restartPolicy": "Always",
                        "terminationGracePeriodSeconds": 30,
                    },
                },
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 1, "maxSurge": "25%"},
                },
            },
            "status": {},
        })
    );
}

#[test]
fn self_subject_access_review() {
    let attrs = Enc::new()
        .str(1, "demo")
        .str(2, "create")
        .str(3, "apps")
        .str(4, "")
        .str(5, "deployments")
        .str(6, "")
        .str(7, "");
    let raw = Enc::new()
        .msg(1, object_meta("", ""))
        .msg(2, Enc::new().msg(1, attrs))
        .msg(
            3,
            Enc::new().varint(1, 0).varint(4, 0).str(2, "").str(3, ""),
        );
    let obj = decode_object(&envelope(
        "authorization.k8s.io/v1",
        "SelfSubjectAccessReview",
        raw,
    ))
    .unwrap();
    assert_eq!(
        obj,
        json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "metadata": {},
            "spec": {"resourceAttributes": {
                "namespace": "demo", "verb": "create", "group": "apps", "resource": "deployments"
            }},
            "status": {"allowed": false},
        })
    );
}

#[test]
fn delete_options_and_eviction() {
    let opts = Enc::new()
        .int(1, 0)
        .msg(2, Enc::new().str(1, "uid-1").str(2, "42"))
        .str(4, "Background")
        .str(5, "All");
    for av in ["v1", "meta.k8s.io/v1"] {
        let obj = decode_object(&envelope(av, "DeleteOptions", opts.clone())).unwrap();
        assert_eq!(
            obj,
            json!({
                "apiVersion": av,
                "kind": "DeleteOptions",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": "uid-1", "resourceVersion": "42"},
                "propagationPolicy": "Background",
                "dryRun": ["All"],
            })
        );
    }
    let eviction = Enc::new()
        .msg(1, object_meta("pod-1", "demo"))
        .msg(2, Enc::new().int(1, 30));
    let obj = decode_object(&envelope("policy/v1", "Eviction", eviction)).unwrap();
    assert_eq!(
        obj["metadata"],
        json!({"name": "pod-1", "namespace": "demo"})
    );
    assert_eq!(obj["deleteOptions"], json!({"gracePeriodSeconds": 30}));
}

#[test]
fn micro_time_duration_and_packed_scalars() {
    let spec = Enc::new()
        .str(1, "node-1")
        .int(2, 40)
        .msg(4, Enc::new().int(1, 951_782_400).int(2, 123_456_789));
    let obj = decode_object(&envelope(
        "coordination.k8s.io/v1",
        "Lease",
        Enc::new()
            .msg(1, object_meta("l", "kube-node-lease"))
            .msg(2, spec),
    ))
    .unwrap();
    assert_eq!(
        obj["spec"],
        json!({
            "holderIdentity": "node-1",
            "leaseDurationSeconds": 40,
            "renewTime": "2000-02-29T00:00:00.123456Z",
        })
    );

    // supplementalGroups: packed and unpacked encodings of repeated int64 both decode; a
    // negative int64 is a ten-byte varint.
    let mut packed = Vec::new();
    for v in [1u64, 300, (-5i64) as u64] {
        put_varint(&mut packed, v);
    }
    let user = Enc::new().int(1, 0).int(2, 7).bytes(3, &packed).int(3, 9);
    let v = decode_message("k8s.io.api.core.v1.LinuxContainerUser", &user.0).unwrap();
    assert_eq!(
        v,
        json!({"uid": 0, "gid": 7, "supplementalGroups": [1, 300, -5, 9]})
    );

    assert_eq!(go_duration(0), "0s");
    assert_eq!(go_duration(1), "1ns");
    assert_eq!(go_duration(1_500), "1.5µs");
    assert_eq!(go_duration(2_500_000), "2.5ms");
    assert_eq!(go_duration(90_000_000_000), "1m30s");
    assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
    assert_eq!(go_duration(3_723_500_000_000), "1h2m3.5s");
    assert_eq!(go_duration(-1_000_000_000), "-1s");
    assert_eq!(go_duration(i64::MIN), "-2562047h47m16.854775808s");
    let d = decode_message(
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration",
        &Enc::new().int(1, 300_000_000_000).0,
    )
    .unwrap();
    assert_eq!(d, "5m0s");
}

#[test]
fn times_convert_to_rfc3339() {
    let t = |s: i64| {
        decode_message(
            "k8s.io.apimachinery.pkg.apis.meta.v1.Time",
            &Enc::new().int(1, s).0,
        )
        .unwrap()
    };
    assert_eq!(t(-1), "1969-12-31T23:59:59Z");
    assert_eq!(t(253_402_300_799), "9999-12-31T23:59:59Z");
    assert_eq!(t(0), Value::Null);
    let err = decode_message(
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time",
        &Enc::new().int(1, i64::MAX).0,
    )
    .unwrap_err();
    assert!(err.to_string().contains("outside the years"), "{err}");
}

#[test]
fn raw_extension_and_slices() {
    // ControllerRevision.data holds JSON; SubjectAccessReview extra holds ExtraValue slices;
    // APIResource verbs is a Verbs slice.
    let cr = Enc::new()
        .msg(1, object_meta("rev", "demo"))
        .msg(2, Enc::new().bytes(1, br#"{"spec":{"x":1}}"#))
        .int(3, 2);
    let obj = decode_object(&envelope("apps/v1", "ControllerRevision", cr)).unwrap();
    assert_eq!(obj["data"], json!({"spec": {"x": 1}}));
    assert_eq!(obj["revision"], 2);

    let spec = Enc::new().str(3, "alice").msg(
        5,
        Enc::new()
            .str(1, "scopes")
            .msg(2, Enc::new().str(1, "a").str(1, "b")),
    );
    let v = decode_message(
        "k8s.io.api.authorization.v1.SubjectAccessReviewSpec",
        &spec.0,
    )
    .unwrap();
    assert_eq!(v, json!({"user": "alice", "extra": {"scopes": ["a", "b"]}}));

    let res = Enc::new()
        .str(1, "pods")
        .msg(4, Enc::new().str(1, "get").str(1, "list"));
    let v = decode_message("k8s.io.apimachinery.pkg.apis.meta.v1.APIResource", &res.0).unwrap();
    assert_eq!(v["verbs"], json!(["get", "list"]));
    // A nested protobuf object in a RawExtension (v1 List items).
    let inner = envelope("v1", "Namespace", Enc::new().msg(1, object_meta("n1", "")));
    let list = Enc::new().msg(2, Enc::new().bytes(1, &inner));
    let obj = decode_object(&envelope("v1", "List", list)).unwrap();
    assert_eq!(
        obj["items"],
        json!([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n1"}}])
    );
}

#[test]
fn unknown_fields_are_skipped() {
    let raw = Enc::new()
        .msg(1, object_meta("n", "").str(99, "future").int(98, 1))
        .fixed64(77, 5)
        .msg(76, Enc::new().str(1, "x"));
    let obj = decode_object(&envelope("v1", "Namespace", raw)).unwrap();
    assert_eq!(obj["metadata"], json!({"name": "n"}));
}

#[test]
fn malformed_bodies_are_errors() {
    assert_eq!(decode_object(b"{}").unwrap_err(), ProtobufError::BadMagic);
    assert_eq!(decode_object(b"").unwrap_err(), ProtobufError::BadMagic);

    let good = envelope("v1", "ConfigMap", Enc::new().msg(1, object_meta("cm", "d")));
    for cut in 5..good.len() {
        // Every truncation is either an error or (when it cuts between fields) a smaller object;
        // it never panics.
        let _ = decode_object(&good[..cut]);
    }
    let m = malformed(&good[..good.len() - 1]);
    assert!(m.contains("truncated varint"), "{m}");
    let mut long = MAGIC.to_vec();
    long.extend_from_slice(&[0x12, 0x05, 0x01]);
    let m = malformed(&long);
    assert!(
        m.contains("length-delimited field of 5 bytes runs past the end"),
        "{m}"
    );
    // Inside a nested message, the path is reported.
    let inner = envelope("v1", "ConfigMap", Enc::new().bytes(1, &[0x0a, 0x09, b'x']));
    let m = malformed(&inner);
    assert!(
        m.contains("at metadata") && m.contains("past the end"),
        "{m}"
    );

    let mut truncated_varint = MAGIC.to_vec();
    truncated_varint.extend_from_slice(&[0x0a, 0xff]);
    assert!(malformed(&truncated_varint).contains("truncated varint"));

    let mut overflow = MAGIC.to_vec();
    overflow.extend_from_slice(&[
        0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
    ]);
    assert!(malformed(&overflow).contains("overflows"));

    // metadata as a varint: wrong wire type, reported with its path.
    let m = malformed(&envelope("v1", "ConfigMap", Enc::new().varint(1, 3)));
    assert!(
        m.contains("at metadata") && m.contains("expected wire type length-delimited"),
        "{m}"
    );

    // A string field holding invalid UTF-8, deep inside: the path says where.
    let bad = Enc::new().msg(
        2,
        Enc::new().msg(
            3,
            Enc::new().msg(2, Enc::new().msg(2, Enc::new().bytes(2, &[0xff, 0xfe]))),
        ),
    );
    let m = malformed(&envelope("apps/v1", "Deployment", bad));
    assert!(
        m.contains("at spec.template.spec.containers[0].image"),
        "{m}"
    );
    assert!(m.contains("UTF-8"), "{m}");

    let m = malformed(&envelope("v1", "Widget", Enc::new()));
    assert!(
        m.contains("no protobuf schema") && m.contains("Widget"),
        "{m}"
    );

    let mut no_type = MAGIC.to_vec();
    no_type.extend_from_slice(&Enc::new().msg(2, Enc::new()).0);
    assert!(malformed(&no_type).contains("typeMeta"));

    let mut gzip = MAGIC.to_vec();
    gzip.extend_from_slice(
        &Enc::new()
            .msg(1, Enc::new().str(1, "v1").str(2, "Namespace"))
            .str(3, "gzip")
            .0,
    );
    assert!(malformed(&gzip).contains("content encoding"));

    // IntOrString with an invalid type.
    let v = decode_message(
        "k8s.io.api.apps.v1.RollingUpdateDeployment",
        &Enc::new().msg(1, Enc::new().int(1, 2)).0,
    );
    assert!(v.unwrap_err().to_string().contains("IntOrString"));

    // Group wire types and invalid field numbers.
    let mut group = MAGIC.to_vec();
    group.extend_from_slice(&[0x0b]);
    assert!(malformed(&group).contains("group"));
    let mut zero = MAGIC.to_vec();
    zero.extend_from_slice(&[0x02, 0x00]);
    assert!(malformed(&zero).contains("field number 0"));

    // A NaN double has no JSON form.
    let nan = Enc::new().fixed64(1, f64::NAN.to_bits());
    let v = decode_message("k8s.io.api.core.v1.List", &Enc::new().msg(1, nan).0);
    // ListMeta has no double field; field 1 is selfLink, a string: wrong wire type.
    assert!(v.is_err());
}

#[test]
fn deep_nesting_is_rejected_without_overflowing_the_stack() {
    // v1 List → items RawExtension → a nested protobuf List → … 200 levels deep.
    let mut body = envelope("v1", "Namespace", Enc::new());
    for _ in 0..200 {
        body = envelope("v1", "List", Enc::new().msg(2, Enc::new().bytes(1, &body)));
    }
    assert_eq!(decode_object(&body).unwrap_err(), ProtobufError::TooDeep);

    // A shallow nesting is fine.
    let mut body = envelope("v1", "Namespace", Enc::new());
    for _ in 0..5 {
        body = envelope("v1", "List", Enc::new().msg(2, Enc::new().bytes(1, &body)));
    }
    assert!(decode_object(&body).is_ok());
}
