//! Table tests covering the situations upstream's own tests cover (`TestTolerationToleratesTaint`,
//! `TestMatchNodeSelectorTerms`, `TestNodeSelectorMatch`, `IsPodAvailable`), in our own cases.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorTerm, Pod, PodSpec, Taint, Toleration};
use serde_json::{Value, json};

use super::*;

fn taint(key: &str, value: &str, effect: &str) -> Taint {
    Taint {
        key: key.to_owned(),
        value: (!value.is_empty()).then(|| value.to_owned()),
        effect: effect.to_owned(),
        ..Taint::default()
    }
}

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("test object decodes")
}

#[test]
fn toleration_against_taint() {
    let cases: &[(&str, Value, Taint, bool)] = &[
        (
            "empty toleration: Equal with empty key and value, tolerates an empty taint",
            json!({}),
            taint("", "", "NoSchedule"),
            true,
        ),
        (
            "key and value and effect equal",
            json!({"key": "foo", "operator": "Equal", "value": "bar", "effect": "NoSchedule"}),
            taint("foo", "bar", "NoSchedule"),
            true,
        ),
        (
            "operator defaults to Equal",
            json!({"key": "foo", "value": "bar"}),
            taint("foo", "bar", "NoExecute"),
            true,
        ),
        (
            "Equal with another value",
            json!({"key": "foo", "operator": "Equal", "value": "baz"}),
            taint("foo", "bar", "NoSchedule"),
            false,
        ),
        (
            "Equal without value against a taint with value",
            json!({"key": "foo"}),
            taint("foo", "bar", "NoSchedule"),
            false,
        ),
        (
            "Exists ignores the value",
            json!({"key": "foo", "operator": "Exists"}),
            taint("foo", "bar", "NoSchedule"),
            true,
        ),
        (
            "Exists with another key",
            json!({"key": "other", "operator": "Exists"}),
            taint("foo", "bar", "NoSchedule"),
            false,
        ),
        (
            "empty key with Exists tolerates every key",
            json!({"operator": "Exists"}),
            taint("foo", "bar", "NoExecute"),
            true,
        ),
        (
            "empty key with Exists and an effect: only that effect",
            json!({"operator": "Exists", "effect": "NoSchedule"}),
            taint("foo", "bar", "NoExecute"),
            false,
        ),
        (
            "empty key with Equal matches any key when values agree (as upstream)",
            json!({"operator": "Equal", "value": "bar"}),
            taint("foo", "bar", "NoSchedule"),
            true,
        ),
        (
            "empty key with Equal and another value",
            json!({"operator": "Equal", "value": "x"}),
            taint("foo", "bar", "NoSchedule"),
            false,
        ),
        (
            "empty effect matches every effect",
            json!({"key": "foo", "operator": "Exists"}),
            taint("foo", "", "PreferNoSchedule"),
            true,
        ),
        (
            "effect differs",
            json!({"key": "foo", "operator": "Exists", "effect": "NoExecute"}),
            taint("foo", "", "NoSchedule"),
            false,
        ),
        (
            "unknown operator tolerates nothing",
            json!({"key": "foo", "operator": "Gt", "value": "1"}),
            taint("foo", "2", "NoSchedule"),
            false,
        ),
    ];
    for (name, tol, t, want) in cases {
        let tol: Toleration = from(tol.clone());
        assert_eq!(tolerates(&tol, t), *want, "{name}");
    }
}

#[test]
fn untolerated_taints_by_effect() {
    let hard = ["NoSchedule", "NoExecute"];
    let cases: &[(&str, Vec<Taint>, Value, Option<&str>)] = &[
        ("no taints", vec![], json!([]), None),
        (
            "PreferNoSchedule never blocks",
            vec![taint("a", "", "PreferNoSchedule")],
            json!([]),
            None,
        ),
        (
            "an untolerated NoSchedule taint",
            vec![taint("a", "", "NoSchedule")],
            json!([]),
            Some("a"),
        ),
        (
            "the first untolerated one is named",
            vec![
                taint("a", "", "NoSchedule"),
                taint("b", "", "NoExecute"),
                taint("c", "", "NoExecute"),
            ],
            json!([{"key": "a", "operator": "Exists"}]),
            Some("b"),
        ),
        (
            "all tolerated",
            vec![taint("a", "1", "NoSchedule"), taint("b", "", "NoExecute")],
            json!([{"key": "a", "value": "1"}, {"key": "b", "operator": "Exists", "effect": "NoExecute"}]),
            None,
        ),
        (
            "tolerate everything",
            vec![taint("a", "", "NoSchedule"), taint("b", "", "NoExecute")],
            json!([{"operator": "Exists"}]),
            None,
        ),
    ];
    for (name, taints, tols, want) in cases {
        let tols: Vec<Toleration> = from(tols.clone());
        let got = first_untolerated(taints, &tols, &hard).map(|t| t.key.as_str());
        assert_eq!(got, *want, "{name}");
    }
}

#[test]
fn prefer_no_schedule_counting() {
    let taints = vec![
        taint("a", "", "PreferNoSchedule"),
        taint("b", "", "PreferNoSchedule"),
        taint("c", "", "NoSchedule"),
    ];
    let cases: &[(&str, Value, usize)] = &[
        ("no tolerations", json!([]), 2),
        (
            "one tolerated with an empty effect",
            json!([{"key": "a", "operator": "Exists"}]),
            1,
        ),
        (
            "a NoSchedule toleration does not count",
            json!([{"key": "a", "operator": "Exists", "effect": "NoSchedule"}]),
            2,
        ),
        (
            "both tolerated",
            json!([{"operator": "Exists", "effect": "PreferNoSchedule"}]),
            0,
        ),
    ];
    for (name, tols, want) in cases {
        let tols: Vec<Toleration> = from(tols.clone());
        assert_eq!(
            untolerated_prefer_no_schedule(&taints, &tols),
            *want,
            "{name}"
        );
    }
}

#[test]
fn toleration_time_for_no_execute() {
    let t = taint("node.kubernetes.io/unreachable", "", "NoExecute");
    let cases: &[(&str, Value, TolerationTime)] = &[
        (
            "nothing matches",
            json!([{"key": "other", "operator": "Exists"}]),
            TolerationTime::None,
        ),
        (
            "no tolerationSeconds: for ever",
            json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists"}]),
            TolerationTime::Forever,
        ),
        (
            "the shortest of the matching",
            json!([
            {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "tolerationSeconds": 60},
            {"key": "other", "operator": "Exists", "tolerationSeconds": 1}]),
            TolerationTime::Seconds(60),
        ),
        (
            "for ever wins over seconds",
            json!([
            {"operator": "Exists", "tolerationSeconds": 30},
            {"operator": "Exists", "effect": "NoExecute"}]),
            TolerationTime::Forever,
        ),
        (
            "negative counts as zero",
            json!([{"operator": "Exists", "tolerationSeconds": -5}]),
            TolerationTime::Seconds(0),
        ),
    ];
    for (name, tols, want) in cases {
        let tols: Vec<Toleration> = from(tols.clone());
        assert_eq!(toleration_time(&tols, &t), *want, "{name}");
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn node_selector_terms() {
    let node = labels(&[("zone", "a"), ("cpus", "8"), ("gpu", "")]);
    let expr = |key: &str, op: &str, values: Value| json!({"matchExpressions": [{"key": key, "operator": op, "values": values}]});
    let cases: Vec<(&str, Value, bool)> = vec![
        ("no terms match nothing", json!([]), false),
        ("an empty term matches nothing", json!([{}]), false),
        (
            "empty lists match nothing",
            json!([{"matchExpressions": [], "matchFields": []}]),
            false,
        ),
        (
            "In matches",
            json!([expr("zone", "In", json!(["b", "a"]))]),
            true,
        ),
        (
            "In misses",
            json!([expr("zone", "In", json!(["b"]))]),
            false,
        ),
        (
            "In on a missing label",
            json!([expr("rack", "In", json!(["1"]))]),
            false,
        ),
        (
            "In without values is invalid",
            json!([expr("zone", "In", json!([]))]),
            false,
        ),
        (
            "NotIn matches",
            json!([expr("zone", "NotIn", json!(["b"]))]),
            true,
        ),
        (
            "NotIn on a missing label matches",
            json!([expr("rack", "NotIn", json!(["1"]))]),
            true,
        ),
        (
            "NotIn misses",
            json!([expr("zone", "NotIn", json!(["a"]))]),
            false,
        ),
        (
            "NotIn without values is invalid",
            json!([expr("rack", "NotIn", json!([]))]),
            false,
        ),
        (
            "Exists on an empty value",
            json!([{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]),
            true,
        ),
        (
            "Exists misses",
            json!([{"matchExpressions": [{"key": "rack", "operator": "Exists"}]}]),
            false,
        ),
        (
            "Exists with values is invalid",
            json!([expr("gpu", "Exists", json!(["x"]))]),
            false,
        ),
        (
            "DoesNotExist matches",
            json!([{"matchExpressions": [{"key": "rack", "operator": "DoesNotExist"}]}]),
            true,
        ),
        (
            "DoesNotExist misses",
            json!([{"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}]),
            false,
        ),
        (
            "Gt matches",
            json!([expr("cpus", "Gt", json!(["4"]))]),
            true,
        ),
        (
            "Gt is strict",
            json!([expr("cpus", "Gt", json!(["8"]))]),
            false,
        ),
        (
            "Lt matches",
            json!([expr("cpus", "Lt", json!(["16"]))]),
            true,
        ),
        (
            "Lt misses",
            json!([expr("cpus", "Lt", json!(["2"]))]),
            false,
        ),
        (
            "Gt on a non-integer label",
            json!([expr("zone", "Gt", json!(["1"]))]),
            false,
        ),
        (
            "Gt with a non-integer bound",
            json!([expr("cpus", "Gt", json!(["x"]))]),
            false,
        ),
        (
            "Gt with two values is invalid",
            json!([expr("cpus", "Gt", json!(["1", "2"]))]),
            false,
        ),
        (
            "Gt on a missing label",
            json!([expr("rack", "Gt", json!(["1"]))]),
            false,
        ),
        (
            "unknown operator",
            json!([expr("zone", "Is", json!(["a"]))]),
            false,
        ),
        (
            "requirements of a term are ANDed",
            json!([{"matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["a"]},
            {"key": "cpus", "operator": "Gt", "values": ["10"]}]}]),
            false,
        ),
        (
            "terms are ORed",
            json!([
                expr("zone", "In", json!(["b"])),
                expr("cpus", "Gt", json!(["1"]))
            ]),
            true,
        ),
        (
            "matchFields on the name",
            json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]),
            true,
        ),
        (
            "matchFields on another name",
            json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]),
            false,
        ),
        (
            "matchFields NotIn",
            json!([{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n2"]}]}]),
            true,
        ),
        (
            "matchFields on another field",
            json!([{"matchFields": [{"key": "metadata.uid", "operator": "In", "values": ["n1"]}]}]),
            false,
        ),
        (
            "matchFields with two values is invalid",
            json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1", "n2"]}]}]),
            false,
        ),
        (
            "matchFields Exists is invalid",
            json!([{"matchFields": [{"key": "metadata.name", "operator": "Exists"}]}]),
            false,
        ),
        (
            "expressions and fields are ANDed",
            json!([{
            "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}],
            "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]),
            false,
        ),
        (
            "a failing term does not spoil a matching one",
            json!([
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]),
            true,
        ),
    ];
    for (name, terms, want) in cases {
        let terms: Vec<NodeSelectorTerm> = from(terms);
        assert_eq!(terms_match(&terms, &node, "n1"), want, "{name}");
    }
}

#[test]
fn pod_against_node() {
    let node = labels(&[("zone", "a"), ("disk", "ssd")]);
    let required = |terms: Value| json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}});
    let cases: Vec<(&str, Value, bool)> = vec![
        ("nothing asked", json!({}), true),
        ("empty nodeSelector", json!({"nodeSelector": {}}), true),
        (
            "nodeSelector matches",
            json!({"nodeSelector": {"zone": "a"}}),
            true,
        ),
        (
            "nodeSelector wants another value",
            json!({"nodeSelector": {"zone": "b"}}),
            false,
        ),
        (
            "nodeSelector wants a missing label",
            json!({"nodeSelector": {"zone": "a", "rack": "1"}}),
            false,
        ),
        (
            "affinity without required part",
            json!({"affinity": {"nodeAffinity": {}}}),
            true,
        ),
        (
            "required with no terms matches nothing",
            required(json!([])),
            false,
        ),
        (
            "required matches",
            required(
                json!([{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]),
            ),
            true,
        ),
        (
            "both must hold",
            {
                let mut v = required(
                    json!([{"matchExpressions": [{"key": "disk", "operator": "Exists"}]}]),
                );
                v["nodeSelector"] = json!({"zone": "b"});
                v
            },
            false,
        ),
    ];
    for (name, spec, want) in cases {
        let mut spec = spec;
        spec["containers"] = json!([]);
        let spec: PodSpec = from(spec);
        assert_eq!(pod_matches_node(&spec, &node, "n1"), want, "{name}");
    }
}

fn pod(status: Value, deleting: bool) -> Pod {
    let mut v = json!({"metadata": {"name": "p"}, "status": status});
    if deleting {
        v["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
    }
    from(v)
}

#[test]
fn readiness_and_availability() {
    // 2024-01-01T00:00:00Z
    let t0: i64 = 1_704_067_200;
    let ready_at = |status: &str| json!({"conditions": [{"type": "Ready", "status": status, "lastTransitionTime": "2024-01-01T00:00:00Z"}]});
    // (name, status, minReadySeconds, now, ready, available, seconds until available)
    type Case = (&'static str, Value, i32, i64, bool, bool, Option<i64>);
    let cases: Vec<Case> = vec![
        ("no status", json!({}), 0, t0, false, false, None),
        (
            "no Ready condition",
            json!({"conditions": [{"type": "PodScheduled", "status": "True"}]}),
            0,
            t0,
            false,
            false,
            None,
        ),
        ("Ready False", ready_at("False"), 0, t0, false, false, None),
        (
            "Ready Unknown",
            ready_at("Unknown"),
            0,
            t0,
            false,
            false,
            None,
        ),
        (
            "ready, no minReadySeconds",
            ready_at("True"),
            0,
            t0,
            true,
            true,
            None,
        ),
        (
            "ready, not long enough",
            ready_at("True"),
            10,
            t0 + 9,
            true,
            false,
            Some(1),
        ),
        (
            "ready exactly long enough",
            ready_at("True"),
            10,
            t0 + 10,
            true,
            true,
            None,
        ),
        (
            "ready long since",
            ready_at("True"),
            10,
            t0 + 3600,
            true,
            true,
            None,
        ),
        (
            "not ready with minReadySeconds",
            ready_at("False"),
            10,
            t0 + 3600,
            false,
            false,
            None,
        ),
    ];
    for (name, status, min, now, ready, available, until) in cases {
        let p = pod(status, false);
        assert_eq!(is_pod_ready(&p), ready, "{name}: ready");
        assert_eq!(
            is_pod_available(&p, min, now),
            available,
            "{name}: available"
        );
        assert_eq!(
            seconds_until_available(&p, min, now),
            until,
            "{name}: until"
        );
    }
}

#[test]
fn phases() {
    let cases: &[(&str, Value, bool, bool, bool)] = &[
        // (name, status, deleting, terminal, active)
        ("no status", json!({}), false, false, true),
        ("pending", json!({"phase": "Pending"}), false, false, true),
        ("running", json!({"phase": "Running"}), false, false, true),
        (
            "succeeded",
            json!({"phase": "Succeeded"}),
            false,
            true,
            false,
        ),
        ("failed", json!({"phase": "Failed"}), false, true, false),
        ("unknown", json!({"phase": "Unknown"}), false, false, true),
        (
            "running but being deleted",
            json!({"phase": "Running"}),
            true,
            false,
            false,
        ),
    ];
    for (name, status, deleting, terminal, active) in cases {
        let p = pod(status.clone(), *deleting);
        assert_eq!(is_pod_terminal(&p), *terminal, "{name}: terminal");
        assert_eq!(is_pod_active(&p), *active, "{name}: active");
    }
}

#[test]
fn node_conditions() {
    let node = |conditions: Value| -> Node { from(json!({"status": {"conditions": conditions}})) };
    let cases = [
        (json!([{"type": "Ready", "status": "True"}]), Some("True")),
        (
            json!([{"type": "Ready", "status": "Unknown"}]),
            Some("Unknown"),
        ),
        (
            json!([{"type": "MemoryPressure", "status": "False"},
                   {"type": "Ready", "status": "False"}]),
            Some("False"),
        ),
        // The first Ready condition counts, as the readers upstream take it.
        (
            json!([{"type": "Ready", "status": "False"}, {"type": "Ready", "status": "True"}]),
            Some("False"),
        ),
        (json!([{"type": "DiskPressure", "status": "False"}]), None),
        (json!([]), None),
    ];
    for (conditions, want) in cases {
        assert_eq!(
            node_ready_status(&node(conditions.clone())),
            want,
            "{conditions}"
        );
    }
    assert_eq!(node_ready_status(&Node::default()), None);
    let n = node(json!([{"type": "MemoryPressure", "status": "True", "reason": "Low"}]));
    assert_eq!(
        node_condition(&n, "MemoryPressure").and_then(|c| c.reason.as_deref()),
        Some("Low")
    );
}
