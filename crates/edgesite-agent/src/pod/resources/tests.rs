use super::*;
use crate::pod::test_support::{GI, node, pod};
use serde_json::json;

fn with_resources(resources: &[serde_json::Value]) -> Pod {
    let containers: Vec<_> = resources
        .iter()
        .enumerate()
        .map(|(i, r)| json!({"name": format!("c{i}"), "resources": r}))
        .collect();
    pod(json!({"containers": containers}))
}

#[test]
fn qos_classes_follow_upstream() {
    let cases = [
        (vec![json!({})], QosClass::BestEffort),
        (
            vec![json!({}), json!({"requests": {"cpu": "0"}})],
            QosClass::BestEffort,
        ),
        (
            vec![json!({"limits": {"cpu": "1", "memory": "1Gi"}})],
            QosClass::Guaranteed,
        ),
        (
            vec![
                json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1000m", "memory": "1073741824"}}),
            ],
            QosClass::Guaranteed,
        ),
        (
            vec![json!({"limits": {"cpu": "1", "memory": "1Gi"}}), json!({})],
            QosClass::Burstable,
        ),
        (
            vec![json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}})],
            QosClass::Burstable,
        ),
        (
            vec![json!({"limits": {"memory": "1Gi"}})],
            QosClass::Burstable,
        ),
        (
            vec![json!({"requests": {"cpu": "100m"}})],
            QosClass::Burstable,
        ),
        // Equal amounts in other units are equal.
        (
            vec![json!({"requests": {"cpu": "1000m", "memory": "1Gi"},
                        "limits": {"cpu": "1", "memory": "1024Mi"}})],
            QosClass::Guaranteed,
        ),
        (
            vec![json!({"requests": {"cpu": "500m", "memory": "1Gi"},
                        "limits": {"cpu": "1", "memory": "1Gi"}})],
            QosClass::Burstable,
        ),
    ];
    for (resources, want) in cases {
        assert_eq!(
            qos_class(&with_resources(&resources)),
            want,
            "{resources:?}"
        );
    }
    // Init containers count.
    let p = pod(json!({
        "initContainers": [{"name": "i", "resources": {"requests": {"memory": "1Mi"}}}],
        "containers": [{"name": "c"}],
    }));
    assert_eq!(qos_class(&p), QosClass::Burstable);
}

#[test]
fn cpu_numbers_are_kubelets() {
    for (milli, shares) in [
        (0, 2),
        (1, 2),
        (2, 2),
        (100, 102),
        (250, 256),
        (1000, 1024),
        (1500, 1536),
        (1_000_000, 262_144),
    ] {
        assert_eq!(milli_cpu_to_shares(milli), shares, "{milli}m");
    }
    for (milli, quota) in [
        (0, 0),
        (1, 1000),
        (5, 1000),
        (10, 1000),
        (250, 25_000),
        (1000, 100_000),
        (2500, 250_000),
    ] {
        assert_eq!(milli_cpu_to_quota(milli, QUOTA_PERIOD), quota, "{milli}m");
    }
}

#[test]
fn linux_resources_map_requests_limits_and_qos() {
    let node = node(std::path::Path::new("/nonexistent"));
    let run = |resources: Vec<serde_json::Value>| {
        let p = with_resources(&resources);
        let c = &p.spec.as_ref().unwrap().containers[0];
        linux_resources(&p, c, &node)
    };
    // Guaranteed: shares and quota from the same 500m, limit 256 MiB, -997.
    let r = run(vec![json!({"limits": {"cpu": "500m", "memory": "256Mi"}})]);
    assert_eq!(
        (
            r.cpu_shares,
            r.cpu_quota,
            r.cpu_period,
            r.memory_limit_in_bytes,
            r.memory_swap_limit_in_bytes,
            r.oom_score_adj
        ),
        (512, 50_000, 100_000, 256 << 20, 256 << 20, -997)
    );
    // BestEffort: minimum shares, no quota, no limit, 1000.
    let r = run(vec![json!({})]);
    assert_eq!(
        (
            r.cpu_shares,
            r.cpu_quota,
            r.memory_limit_in_bytes,
            r.oom_score_adj
        ),
        (2, 0, 0, 1000)
    );
    // Burstable requesting 2 GiB of the 8 GiB capacity: 1000 - 250.
    let r = run(vec![
        json!({"requests": {"cpu": "100m", "memory": "2Gi"}, "limits": {"cpu": "2"}}),
    ]);
    assert_eq!(
        (
            r.cpu_shares,
            r.cpu_quota,
            r.memory_limit_in_bytes,
            r.oom_score_adj
        ),
        (102, 200_000, 0, 750)
    );
    // Burstable without a memory request: just below BestEffort.
    let r = run(vec![json!({"requests": {"cpu": "100m"}})]);
    assert_eq!(r.oom_score_adj, 999);
    // Burstable requesting all the node's memory: just above Guaranteed.
    let r = run(vec![json!({"requests": {"memory": "8Gi"}}), json!({})]);
    assert_eq!(r.oom_score_adj, 3);
    // A critical pod is treated as Guaranteed.
    let mut p = with_resources(&[json!({"requests": {"memory": "1Gi"}})]);
    p.spec.as_mut().unwrap().priority = Some(2_000_001_000);
    assert_eq!(
        oom_score_adj(&p, &p.spec.as_ref().unwrap().containers[0], 8 * GI),
        -997
    );
}

#[test]
fn resource_fields_round_up_by_divisor_and_default_limits_to_allocatable() {
    let node = node(std::path::Path::new("/nonexistent"));
    let p = with_resources(&[
        json!({"requests": {"cpu": "250m", "memory": "100Mi"}, "limits": {"cpu": "1500m", "memory": "1Gi"}}),
        json!({}),
    ]);
    let q = |s: &str| ApiQuantity(s.into());
    let cases = [
        ("c0", "limits.cpu", None, "2"),
        ("c0", "limits.cpu", Some("1m"), "1500"),
        ("c0", "requests.cpu", Some("1m"), "250"),
        ("c0", "requests.cpu", None, "1"),
        ("c0", "limits.memory", None, "1073741824"),
        ("c0", "limits.memory", Some("1Mi"), "1024"),
        ("c0", "requests.memory", Some("1Gi"), "1"),
        ("c0", "requests.memory", Some("1M"), "105"),
        ("c1", "limits.cpu", Some("1m"), "3500"),
        ("c1", "limits.memory", Some("1Gi"), "7"),
        ("c1", "requests.memory", None, "0"),
    ];
    for (c, res, div, want) in cases {
        let d = div.map(q);
        assert_eq!(
            resource_field(&p, c, res, d.as_ref(), &node).unwrap(),
            want,
            "{c} {res} {div:?}"
        );
    }
    assert!(resource_field(&p, "nope", "limits.cpu", None, &node).is_err());
    assert!(resource_field(&p, "c0", "limits.cpu", Some(&q("0")), &node).is_err());
}
