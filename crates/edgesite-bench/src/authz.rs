//! The authorization figure of issue 13: the cost of one decision of the server's authorizer
//! (system:masters, the node authorizer, then RBAC, composed as `edgesite server` does) over
//! the default policy plus 1000 RoleBindings in 100 namespaces and 100 ClusterRoleBindings,
//! the RBAC cache filled directly (no store: the figure is the decision, not the watch).
//! Printed as `authz <case>  p50 N ns  p99 N ns` lines.

use std::sync::Arc;
use std::time::Instant;

use edgesite_api::rbac::{Policy, bootstrap};
use edgesite_apiserver::authn::Identity;
use edgesite_apiserver::authz::{
    Authorizer, Decision, MastersAuthorizer, NodeAuthorizer, RequestAttributes, ResourceAttributes,
    Union,
};
use edgesite_apiserver::rbac::RbacAuthorizer;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

const NAMESPACES: usize = 100;
const BINDINGS_PER_NAMESPACE: usize = 10;
const CLUSTER_BINDINGS: usize = 100;

fn policy() -> Policy {
    let mut cluster_roles = bootstrap::cluster_roles();
    // `view` as the aggregation controller fills it.
    let view_rules: Vec<Value> = {
        let view = cluster_roles
            .iter()
            .find(|r| r["metadata"]["name"] == "view")
            .cloned()
            .unwrap_or_default();
        edgesite_api::rbac::aggregated_rules(&view, &cluster_roles)
            .unwrap_or_default()
            .iter()
            .map(edgesite_api::rbac::PolicyRule::to_json)
            .collect()
    };
    for r in &mut cluster_roles {
        if r["metadata"]["name"] == "view" {
            r["rules"] = Value::Array(view_rules.clone());
        }
    }
    let mut roles = Vec::new();
    let mut bindings = Vec::new();
    for ns in 0..NAMESPACES {
        let namespace = format!("ns-{ns}");
        roles.push(json!({"metadata": {"name": "app", "namespace": namespace}, "rules": [
            {"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"], "verbs": ["*"]},
        ]}));
        for b in 0..BINDINGS_PER_NAMESPACE {
            let user = format!("user-{}", ns * BINDINGS_PER_NAMESPACE + b);
            let (kind, role) = if b % 2 == 0 {
                ("ClusterRole", "view")
            } else {
                ("Role", "app")
            };
            bindings.push(json!({"metadata": {"name": format!("b-{b}"), "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
                "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user},
                             {"kind": "ServiceAccount", "name": format!("sa-{b}")}]}));
        }
    }
    let mut cluster_bindings = bootstrap::cluster_role_bindings();
    for g in 0..CLUSTER_BINDINGS {
        cluster_bindings.push(json!({"metadata": {"name": format!("crb-{g}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": format!("group-{g}")}]}));
    }
    Policy::build(&roles, &cluster_roles, &bindings, &cluster_bindings)
}

fn resource(group: &str, res: &str, ns: &str, name: Option<&str>) -> Option<ResourceAttributes> {
    Some(ResourceAttributes {
        api_group: group.to_owned(),
        resource: res.to_owned(),
        subresource: None,
        namespace: Some(ns.to_owned()),
        name: name.map(str::to_owned),
    })
}

/// Runs the figure; returns the number of failed measurements (a decision that came out
/// other than expected).
pub fn run(quick: bool) -> usize {
    let rbac = RbacAuthorizer::new();
    let built = Instant::now();
    rbac.set_policy(policy());
    let build_ms = built.elapsed().as_secs_f64() * 1e3;
    let z = Union(vec![
        Arc::new(MastersAuthorizer),
        Arc::new(NodeAuthorizer),
        rbac,
    ]);
    let iterations = if quick { 200_000 } else { 1_000_000 };
    println!();
    println!(
        "authorization: one decision of masters+node+RBAC; {} RoleBindings in {NAMESPACES} \
         namespaces, {CLUSTER_BINDINGS} extra ClusterRoleBindings, {iterations} decisions per case",
        NAMESPACES * BINDINGS_PER_NAMESPACE
    );
    println!("  note: policy index built in {build_ms:.1} ms");
    let user = Identity::authenticated("user-420", vec!["group-7".into()]);
    let user2 = Identity::authenticated("user-421", vec![]);
    let admin = Identity::authenticated("admin", vec!["system:masters".into()]);
    let cases: Vec<(&str, &Identity, &str, Option<ResourceAttributes>, bool)> = vec![
        (
            "allowed: list pods via RoleBinding to view",
            &user,
            "list",
            resource("", "pods", "ns-42", None),
            true,
        ),
        (
            "allowed: get secret via RoleBinding to a Role",
            &user2,
            "get",
            resource("", "secrets", "ns-42", Some("s")),
            true,
        ),
        (
            "allowed: list pods via ClusterRoleBinding (group)",
            &user,
            "list",
            resource("", "pods", "ns-3", None),
            true,
        ),
        (
            "denied: create pods in another namespace",
            &user,
            "create",
            resource("", "pods", "ns-9", None),
            false,
        ),
        (
            "allowed: GET /apis (system:discovery)",
            &user,
            "get",
            None,
            true,
        ),
        (
            "allowed: system:masters",
            &admin,
            "delete",
            resource("", "nodes", "", Some("n")),
            true,
        ),
    ];
    let mut failures = 0;
    for (label, identity, verb, res, expect) in cases {
        let attrs = RequestAttributes {
            identity,
            verb: verb.to_owned(),
            path: "/apis",
            resource: res,
        };
        let got = z.authorize(&attrs) == Decision::Allow;
        if got != expect {
            eprintln!("authz {label}: expected allowed={expect}, got {got}");
            failures += 1;
            continue;
        }
        let mut hist = Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!());
        for _ in 0..iterations {
            let t = Instant::now();
            std::hint::black_box(z.authorize(std::hint::black_box(&attrs)));
            let _ = hist.record(t.elapsed().as_nanos() as u64);
        }
        println!(
            "authz {label:<52} p50 {:>6} ns   p99 {:>6} ns",
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.99)
        );
    }
    failures
}
