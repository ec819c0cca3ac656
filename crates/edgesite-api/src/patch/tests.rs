//! Data-driven cases for strategic merge patch (`testdata/strategic/*.json`, behaviour learnt
//! from upstream's strategicpatch tests, written anew), kubectl request shapes, the JSON and
//! merge patch wrappers, and a property: without lists, strategic merge patch is merge patch.

use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

/// A [`PatchSchema`] read from a JSON tree `{field: {strategy, mergeKey, fields}}`, walked the
/// way an OpenAPI-backed schema would be: one borrowed node per step.
struct FixtureSchema<'a>(&'a Value);

impl FixtureSchema<'_> {
    fn field(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }
}

impl PatchSchema for FixtureSchema<'_> {
    fn patch_meta(&self, field: &str) -> PatchMeta {
        let Some(f) = self.field(field) else {
            return PatchMeta::default();
        };
        PatchMeta::from_extensions(
            f.get("strategy").and_then(Value::as_str),
            f.get("mergeKey").and_then(Value::as_str),
        )
        .expect("fixture schema strategy")
    }

    fn child(&self, field: &str) -> Option<Box<dyn PatchSchema + '_>> {
        let fields = self.field(field)?.get("fields")?;
        Some(Box::new(FixtureSchema(fields)))
    }
}

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/strategic")
}

fn read_json(name: &str) -> Value {
    let path = testdata().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// Runs every case of every fixture file; returns how many ran.
fn run_fixture_file(name: &str) -> usize {
    let file = read_json(name);
    let generic = read_json("generic-schema.json");
    let schema: Box<dyn PatchSchema> = match file["schema"].as_str() {
        Some("known") => Box::new(KnownMergeKeys),
        Some("none") => Box::new(NoSchema),
        Some("generic") => Box::new(FixtureSchema(&generic)),
        other => panic!("{name}: unknown schema {other:?}"),
    };
    let cases = file["cases"].as_array().expect("cases");
    let mut failures = Vec::new();
    for case in cases {
        let title = case["name"].as_str().expect("case name");
        let got = strategic_merge_patch(&case["original"], &case["patch"], &*schema);
        match (
            case.get("expected"),
            case.get("error").and_then(Value::as_str),
            got,
        ) {
            (Some(want), None, Ok(got)) if *want == got => {}
            (None, Some(want), Err(e)) if e.to_string().contains(want) => {}
            (_, _, got) => failures.push(format!(
                "{name}: {title}\n  expected: {}\n  got:      {}",
                case.get("expected").unwrap_or(&case["error"]),
                match got {
                    Ok(v) => v.to_string(),
                    Err(e) => format!("error: {e}"),
                }
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    cases.len()
}

#[test]
fn fixtures_maps() {
    run_fixture_file("maps.json");
}

#[test]
fn fixtures_lists() {
    run_fixture_file("lists.json");
}

#[test]
fn fixtures_directives() {
    run_fixture_file("directives.json");
}

#[test]
fn fixtures_order() {
    run_fixture_file("order.json");
}

#[test]
fn fixtures_errors() {
    run_fixture_file("errors.json");
}

#[test]
fn fixtures_kubectl() {
    run_fixture_file("kubectl.json");
}

/// Every fixture file is run by one of the tests above, so a new file cannot be forgotten.
#[test]
fn every_fixture_file_is_run() {
    let mut files: Vec<String> = std::fs::read_dir(testdata())
        .expect("testdata")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && n != "generic-schema.json")
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "directives.json",
            "errors.json",
            "kubectl.json",
            "lists.json",
            "maps.json",
            "order.json"
        ]
    );
}

/// The body kubectl 1.32 sent for `kubectl apply` (reference/k8s-api-compat.md §2), spelled
/// out here as well as in the fixtures because treating it as a merge patch corrupts objects.
#[test]
fn kubectl_client_side_apply_keeps_unlisted_containers() {
    let live = json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "nginx", "image": "nginx:1.26", "ports": [{"containerPort": 80}]},
            {"name": "sidecar", "image": "busybox"}
        ]}}}
    });
    let patch = json!({
        "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"}},
        "spec": {"replicas": 3, "template": {"spec": {
            "$setElementOrder/containers": [{"name": "nginx"}],
            "containers": [{"image": "nginx:1.27", "name": "nginx"}]
        }}}
    });
    let got = strategic_merge_patch(&live, &patch, &KnownMergeKeys).unwrap();
    assert_eq!(
        got,
        json!({
            "metadata": {"name": "web", "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{...}"}},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [
                {"name": "nginx", "image": "nginx:1.27", "ports": [{"containerPort": 80}]},
                {"name": "sidecar", "image": "busybox"}
            ]}}}
        })
    );
    // The same body as a merge patch loses the sidecar and the ports: why SMP exists.
    let mut as_merge = merge_patch(&live, &patch).unwrap();
    let containers = as_merge
        .pointer_mut("/spec/template/spec/containers")
        .unwrap();
    assert_eq!(
        *containers,
        json!([{"image": "nginx:1.27", "name": "nginx"}])
    );
}

#[test]
fn top_level_list_patch_is_rejected() {
    let err =
        strategic_merge_patch(&json!({}), &json!([{"op": "add"}]), &KnownMergeKeys).unwrap_err();
    assert_eq!(err, PatchError::PatchNotAnObject("a list"));
    assert_eq!(err.status_code(), 400);
    let err = strategic_merge_patch(&json!([]), &json!({}), &NoSchema).unwrap_err();
    assert_eq!(err, PatchError::TargetNotAnObject("a list"));
}

#[test]
fn strategic_patch_leaves_target_untouched_on_error() {
    let live = json!({"spec": {"containers": [{"name": "a"}]}});
    let before = live.clone();
    let bad = json!({"spec": {"replicas": 2, "containers": [{"image": "x"}]}});
    let err = strategic_merge_patch(&live, &bad, &KnownMergeKeys).unwrap_err();
    assert!(
        matches!(err, PatchError::MissingMergeKey { ref key, .. } if key == "name"),
        "{err}"
    );
    assert_eq!(err.status_code(), 422);
    assert_eq!(live, before);
}

#[test]
fn known_merge_keys_table() {
    let k = KnownMergeKeys;
    let pod_spec = k.child("spec").unwrap();
    assert_eq!(
        pod_spec.patch_meta("containers"),
        PatchMeta::merge_by("name")
    );
    assert_eq!(pod_spec.patch_meta("tolerations"), PatchMeta::default());
    assert!(pod_spec.patch_meta("volumes").retain_keys);
    let container = pod_spec.child("containers").unwrap();
    assert_eq!(
        container.patch_meta("ports"),
        PatchMeta::merge_by("containerPort")
    );
    assert_eq!(
        container.patch_meta("volumeMounts"),
        PatchMeta::merge_by("mountPath")
    );
    assert_eq!(container.patch_meta("envFrom"), PatchMeta::default());
    let template = pod_spec.child("template").unwrap();
    let template_spec = template.child("spec").unwrap();
    assert_eq!(
        template_spec.patch_meta("initContainers"),
        PatchMeta::merge_by("name")
    );
    assert_eq!(pod_spec.patch_meta("ports"), PatchMeta::merge_by("port"));
    let meta = k.child("metadata").unwrap();
    assert_eq!(meta.patch_meta("finalizers"), PatchMeta::merge_set());
    assert_eq!(
        meta.patch_meta("ownerReferences"),
        PatchMeta::merge_by("uid")
    );
    assert_eq!(
        k.child("status").unwrap().patch_meta("conditions"),
        PatchMeta::merge_by("type")
    );
    assert!(container.child("env").is_none());
}

#[test]
fn patch_meta_from_openapi_extensions() {
    let m = PatchMeta::from_extensions(Some("merge,retainKeys"), Some("name")).unwrap();
    assert_eq!(
        m,
        PatchMeta {
            retain_keys: true,
            ..PatchMeta::merge_by("name")
        }
    );
    let m = PatchMeta::from_extensions(Some("retainKeys"), None).unwrap();
    assert_eq!(
        m,
        PatchMeta {
            retain_keys: true,
            ..PatchMeta::default()
        }
    );
    assert_eq!(
        PatchMeta::from_extensions(None, None).unwrap(),
        PatchMeta::default()
    );
    assert_eq!(
        PatchMeta::from_extensions(Some("replace"), None)
            .unwrap()
            .strategy,
        PatchStrategy::Replace
    );
    let err = PatchMeta::from_extensions(Some("merge,replace"), None).unwrap_err();
    assert_eq!(err.status_code(), 500);
    assert!(PatchMeta::from_extensions(Some("bogus"), None).is_err());
}

#[test]
fn json_patch_applies_operations_including_test() {
    let live = json!({"metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"replicas": 1}});
    let body = br#"[
        {"op": "test", "path": "/spec/replicas", "value": 1},
        {"op": "replace", "path": "/spec/replicas", "value": 2},
        {"op": "add", "path": "/metadata/labels/b", "value": "2"},
        {"op": "remove", "path": "/metadata/labels/a"}
    ]"#;
    let got = json_patch(&live, body).unwrap();
    assert_eq!(
        got,
        json!({"metadata": {"name": "x", "labels": {"b": "2"}}, "spec": {"replicas": 2}})
    );
}

/// kube-rs's finalizer helper: `test` that an absent field is null, then `add` it.
#[test]
fn json_patch_test_null_matches_absent_field() {
    let live = json!({"metadata": {"name": "x"}});
    let body = br#"[
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/cleanup"]}
    ]"#;
    let got = json_patch(&live, body).unwrap();
    assert_eq!(
        got,
        json!({"metadata": {"name": "x", "finalizers": ["example.com/cleanup"]}})
    );

    // Only when the parent exists; and a present non-null value still fails the test.
    let err = json_patch(
        &live,
        br#"[{"op": "test", "path": "/spec/x", "value": null}]"#,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            PatchError::OperationFailed {
                index: 0,
                op: "test",
                ..
            }
        ),
        "{err}"
    );
    let err = json_patch(
        &live,
        br#"[{"op": "test", "path": "/metadata/name", "value": null}]"#,
    )
    .unwrap_err();
    assert_eq!(
        err,
        PatchError::TestFailed {
            index: 0,
            path: "/metadata/name".into()
        }
    );
    assert_eq!(err.status_code(), 422);
}

#[test]
fn json_patch_failure_is_atomic_and_names_the_operation() {
    let live = json!({"spec": {"replicas": 1}});
    let body = br#"[
        {"op": "replace", "path": "/spec/replicas", "value": 5},
        {"op": "remove", "path": "/spec/missing"}
    ]"#;
    let err = json_patch(&live, body).unwrap_err();
    match &err {
        PatchError::OperationFailed {
            index, op, path, ..
        } => {
            assert_eq!((*index, *op, path.as_str()), (1, "remove", "/spec/missing"));
        }
        other => panic!("unexpected {other}"),
    }
    assert!(
        err.to_string()
            .starts_with("JSON patch operation 1 (remove /spec/missing) failed")
    );
    assert_eq!(live, json!({"spec": {"replicas": 1}}));
}

#[test]
fn json_patch_rejects_malformed_bodies() {
    let live = json!({});
    let err = json_patch(&live, b"{not json").unwrap_err();
    assert!(matches!(err, PatchError::InvalidJson(_)));
    assert_eq!(err.status_code(), 400);
    let err = json_patch(&live, br#"{"op": "add"}"#).unwrap_err();
    assert!(
        matches!(err, PatchError::InvalidJsonPatch(ref m) if m.contains("an object")),
        "{err}"
    );
    let err = json_patch(&live, br#"[{"op": "frob", "path": "/a"}]"#).unwrap_err();
    assert!(matches!(err, PatchError::InvalidJsonPatch(_)), "{err}");
}

#[test]
fn merge_patch_follows_rfc7386() {
    let live = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"ports": [1, 2]}});
    let patch = json!({"metadata": {"labels": {"a": null, "c": "3"}}, "spec": {"ports": [3]}});
    let got = merge_patch(&live, &patch).unwrap();
    assert_eq!(
        got,
        json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"ports": [3]}})
    );
    // kubectl scale through /scale.
    let scale = json!({"spec": {"replicas": 1}, "status": {"replicas": 1}});
    let got = merge_patch(&scale, &json!({"spec": {"replicas": 5}})).unwrap();
    assert_eq!(
        got,
        json!({"spec": {"replicas": 5}, "status": {"replicas": 1}})
    );
    assert_eq!(
        merge_patch(&live, &json!([1])).unwrap_err(),
        PatchError::PatchNotAnObject("a list")
    );
    assert_eq!(
        merge_patch(&json!("x"), &json!({})).unwrap_err(),
        PatchError::TargetNotAnObject("a string")
    );
}

/// JSON without lists; keys from a small set (including ones `KnownMergeKeys` knows) so that
/// patches and targets overlap.
fn list_free_json(nulls: bool) -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z]{0,3}".prop_map(Value::from),
    ]
    .boxed();
    let leaf = if nulls {
        prop_oneof![4 => scalar, 1 => Just(Value::Null)].boxed()
    } else {
        scalar
    };
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop::collection::btree_map(key(), inner, 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("spec".to_owned()),
        Just("metadata".to_owned()),
        Just("template".to_owned()),
        Just("strategy".to_owned()),
        "[a-d]",
    ]
}

fn list_free_object(nulls: bool) -> impl Strategy<Value = Value> {
    prop::collection::btree_map(key(), list_free_json(nulls), 0..5)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

proptest! {
    /// Without lists and directives, strategic merge patch is exactly RFC 7386 merge patch,
    /// whatever the schema says about maps it merges.
    #[test]
    fn strategic_equals_merge_patch_without_lists(
        target in list_free_object(false),
        patch in list_free_object(true),
    ) {
        let merge = merge_patch(&target, &patch).unwrap();
        prop_assert_eq!(&strategic_merge_patch(&target, &patch, &NoSchema).unwrap(), &merge);
        prop_assert_eq!(&strategic_merge_patch(&target, &patch, &KnownMergeKeys).unwrap(), &merge);
    }

    /// Applying the same strategic patch twice changes nothing the second time, for patches
    /// that only merge (no deletions by directive, no lists).
    #[test]
    fn strategic_patch_without_lists_is_idempotent(
        target in list_free_object(false),
        patch in list_free_object(true),
    ) {
        let once = strategic_merge_patch(&target, &patch, &KnownMergeKeys).unwrap();
        let twice = strategic_merge_patch(&once, &patch, &KnownMergeKeys).unwrap();
        prop_assert_eq!(once, twice);
    }
}
