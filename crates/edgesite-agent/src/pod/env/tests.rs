use super::*;
use crate::pod::config::ConfigError;
use crate::pod::test_support::{FakeObjects, node, pod};
use serde_json::json;

#[test]
fn expansion_follows_upstream_cases() {
    let env = |name: &str| -> Option<String> {
        match name {
            "VAR_A" => Some("A".into()),
            "VAR_B" => Some("B".into()),
            "VAR_C" => Some("C".into()),
            "VAR_REF" => Some("$(VAR_A)".into()),
            "VAR_EMPTY" => Some(String::new()),
            _ => None,
        }
    };
    // (input, expected), from upstream's third_party/forked/golang/expansion tests.
    let cases = [
        ("$(VAR_A)", "A"),
        ("___$(VAR_B)___", "___B___"),
        ("$(VAR_A)-$(VAR_A)", "A-A"),
        ("$(VAR_A)-1", "A-1"),
        ("$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_C"),
        ("$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),
        ("$$(VAR_A)", "$(VAR_A)"),
        ("$$$(VAR_A)", "$A"),
        ("$$$$$$(VAR_A)", "$$$(VAR_A)"),
        ("$$$$$$$(VAR_A)", "$$$A"),
        ("$(VAR_REF)", "$(VAR_A)"),
        ("foo$(VAR_EMPTY)bar", "foobar"),
        ("$(VAR_DNE)", "$(VAR_DNE)"),
        ("$(VAR_A", "$(VAR_A"),
        ("$(", "$("),
        ("$", "$"),
        ("$$", "$"),
        ("f00__(VAR_A)__", "f00__(VAR_A)__"),
        ("f00$$(VAR_A)", "f00$(VAR_A)"),
        ("$VAR_A", "$VAR_A"),
        ("$()", "$()"),
        ("foo$$$", "foo$$"),
        ("héllo $(VAR_A) wörld$", "héllo A wörld$"),
        ("$é$(VAR_B)", "$éB"),
        ("", ""),
    ];
    for (input, want) in cases {
        assert_eq!(expand(input, env), want, "input {input:?}");
    }
}

#[test]
fn env_var_names_are_checked_as_upstream() {
    for ok in ["A", "a_b", "-x", ".x", "_", "A1.b-c"] {
        assert!(is_env_var_name(ok), "{ok}");
    }
    for bad in ["", "1A", "A B", "A=B", "ä"] {
        assert!(!is_env_var_name(bad), "{bad}");
    }
}

fn container_pod(container: serde_json::Value) -> Pod {
    let mut p = pod(json!({
        "nodeName": "node-1",
        "serviceAccountName": "sa",
        "containers": [container],
    }));
    p.status = serde_json::from_value(
        json!({"podIP": "10.42.0.9", "podIPs": [{"ip": "10.42.0.9"}, {"ip": "fd00::9"}]}),
    )
    .unwrap();
    p
}

fn objects() -> FakeObjects {
    FakeObjects::default()
        .with_config_map(
            "ns",
            "cfg",
            &[
                ("mode", "fast"),
                ("level", "3"),
                ("bad key", "x"),
                ("1st", "y"),
            ],
        )
        .with_secret("ns", "creds", &[("password", "s3cret"), ("user", "admin")])
}

fn env_of(
    container: serde_json::Value,
    pod_ip: Option<&str>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let p = container_pod(container);
    let c = &p.spec.as_ref().unwrap().containers[0];
    let dir = std::path::Path::new("/nonexistent");
    container_env(&p, c, &objects(), &node(dir), pod_ip).map(|e| e.vars().to_vec())
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn every_value_from_kind_resolves() {
    let got = env_of(
        json!({
            "name": "app",
            "resources": {"limits": {"memory": "512Mi"}, "requests": {"cpu": "250m"}},
            "env": [
                {"name": "PLAIN", "value": "x"},
                {"name": "CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
                {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "NOTE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['note']"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "POD_IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}},
                {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "CPU_REQ_M", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
                {"name": "REF", "value": "$(CM)-$(NAME)-$$(CM)-$(NOPE)"},
            ]
        }),
        None,
    )
    .unwrap();
    assert_eq!(
        got,
        pairs(&[
            ("PLAIN", "x"),
            ("CM", "fast"),
            ("SECRET", "s3cret"),
            ("NAME", "web-1"),
            ("NS", "ns"),
            ("UID", "uid-1"),
            ("APP", "web"),
            ("NOTE", "say \"hi\""),
            ("NODE", "node-1"),
            ("SA", "sa"),
            ("HOST_IP", "192.0.2.10"),
            ("POD_IP", "10.42.0.9"),
            ("POD_IPS", "10.42.0.9,fd00::9"),
            ("MEM_MI", "512"),
            // No CPU limit: the node's allocatable 3.5 CPUs, rounded up.
            ("CPU_LIMIT", "4"),
            ("CPU_REQ_M", "250"),
            ("REF", "fast-web-1-$(CM)-$(NOPE)"),
        ])
    );
    // The pod IP the worker passes wins over a stale status.
    let got = env_of(
        json!({"name": "app", "env": [{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}}]}),
        Some("10.42.0.77"),
    )
    .unwrap();
    assert_eq!(got, pairs(&[("IP", "10.42.0.77")]));
}

#[test]
fn optional_sources_that_are_missing_leave_the_variable_out() {
    let got = env_of(
        json!({"name": "app", "env": [
            {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": true}}},
            {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope", "optional": true}}},
            {"name": "C", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": true}}},
            {"name": "D", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": true}}},
            {"name": "E", "value": "e"},
        ], "envFrom": [
            {"configMapRef": {"name": "nope", "optional": true}},
            {"secretRef": {"name": "nope", "optional": true}},
        ]}),
        None,
    )
    .unwrap();
    assert_eq!(got, pairs(&[("E", "e")]));
}

#[test]
fn missing_sources_are_config_errors_with_upstream_messages() {
    let cases = [
        (
            json!({"configMapKeyRef": {"name": "nope", "key": "k"}}),
            "configmap \"nope\" not found",
        ),
        (
            json!({"configMapKeyRef": {"name": "cfg", "key": "k"}}),
            "couldn't find key k in ConfigMap ns/cfg",
        ),
        (
            json!({"secretKeyRef": {"name": "nope", "key": "k"}}),
            "secret \"nope\" not found",
        ),
        (
            json!({"secretKeyRef": {"name": "creds", "key": "k"}}),
            "couldn't find key k in Secret ns/creds",
        ),
        (
            json!({"fieldRef": {"fieldPath": "metadata.labels"}}),
            "env X: metadata.labels is only supported in downwardAPI volumes",
        ),
        (
            json!({"fieldRef": {"fieldPath": "spec.bogus"}}),
            "env X: unsupported fieldPath \"spec.bogus\"",
        ),
        (
            json!({"resourceFieldRef": {"resource": "limits.gpu"}}),
            "env X: resourceFieldRef: unsupported resource \"limits.gpu\"",
        ),
    ];
    for (from, want) in cases {
        let err = env_of(
            json!({"name": "app", "env": [{"name": "X", "valueFrom": from}]}),
            None,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), want, "{from}");
    }
    let err = env_of(
        json!({"name": "app", "envFrom": [{"secretRef": {"name": "gone"}}]}),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(err, ConfigError::Missing { kind: "secret", .. }),
        "{err:?}"
    );
}

#[test]
fn env_from_prefixes_skips_invalid_keys_and_env_overrides_in_place() {
    let got = env_of(
        json!({"name": "app",
        "envFrom": [
            {"configMapRef": {"name": "cfg"}, "prefix": "CFG_"},
            {"configMapRef": {"name": "cfg"}},
            {"secretRef": {"name": "creds"}, "prefix": "S_"},
        ],
        "env": [
            {"name": "CFG_mode", "value": "slow"},
            {"name": "LEVEL2", "value": "$(level)$(level)"},
        ]}),
        None,
    )
    .unwrap();
    assert_eq!(
        got,
        pairs(&[
            // Keys of a ConfigMap in key order; "CFG_1st" is valid with the prefix,
            // "1st" alone is not; "bad key" never is.
            ("CFG_1st", "y"),
            ("CFG_level", "3"),
            ("CFG_mode", "slow"),
            ("level", "3"),
            ("mode", "fast"),
            ("S_password", "s3cret"),
            ("S_user", "admin"),
            ("LEVEL2", "33"),
        ])
    );
}

#[test]
fn volume_metadata_fields_format_maps_like_upstream() {
    let mut p = pod(json!({"containers": []}));
    p.metadata.annotations = Some(
        [
            ("b".to_string(), "two\nlines \"q\"".to_string()),
            ("a".to_string(), "1".to_string()),
        ]
        .into(),
    );
    assert_eq!(
        metadata_field(&p, "metadata.labels").unwrap(),
        "app=\"web\"\ntier=\"front\""
    );
    assert_eq!(
        metadata_field(&p, "metadata.annotations").unwrap(),
        "a=\"1\"\nb=\"two\\nlines \\\"q\\\"\""
    );
    assert_eq!(
        metadata_field(&p, "metadata.labels['missing']").unwrap(),
        ""
    );
    assert_eq!(
        metadata_field(&p, "metadata.labels[\"tier\"]").unwrap(),
        "front"
    );
}
