use serde_json::{Value, json};

use super::bootstrap::{self, BindingChange};
use super::*;

fn rule(v: Value) -> PolicyRule {
    PolicyRule::from_json(&v)
}

/// rule, verb, group, resource, subresource, name, allowed.
type ResourceCase<'a> = (
    Value,
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    bool,
);

#[test]
fn resource_rules_match_verbs_groups_resources_subresources_and_names() {
    // rule, verb, group, resource, subresource, name, allowed
    let cases: &[ResourceCase<'_>] = &[
        (
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}),
            "get",
            "",
            "pods",
            None,
            Some("p"),
            true,
        ),
        (
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}),
            "list",
            "",
            "pods",
            None,
            None,
            false,
        ),
        (
            json!({"verbs": ["*"], "apiGroups": [""], "resources": ["pods"]}),
            "delete",
            "",
            "pods",
            None,
            None,
            true,
        ),
        (
            json!({"verbs": ["get"], "apiGroups": ["apps"], "resources": ["pods"]}),
            "get",
            "",
            "pods",
            None,
            None,
            false,
        ),
        (
            json!({"verbs": ["get"], "apiGroups": ["*"], "resources": ["deployments"]}),
            "get",
            "apps",
            "deployments",
            None,
            None,
            true,
        ),
        (
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["*"]}),
            "get",
            "",
            "secrets",
            None,
            None,
            true,
        ),
        (
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["*"]}),
            "get",
            "",
            "pods",
            Some("log"),
            None,
            true,
        ),
        // A resource does not grant its subresources, nor a subresource its parent.
        (
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}),
            "get",
            "",
            "pods",
            Some("log"),
            None,
            false,
        ),
        (
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]}),
            "get",
            "",
            "pods",
            Some("log"),
            None,
            true,
        ),
        (
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]}),
            "get",
            "",
            "pods",
            None,
            None,
            false,
        ),
        (
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]}),
            "get",
            "",
            "pods",
            Some("exec"),
            None,
            false,
        ),
        (
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["*/scale"]}),
            "get",
            "apps",
            "deployments",
            Some("scale"),
            None,
            false,
        ),
        (
            json!({"verbs": ["get"], "apiGroups": ["apps"], "resources": ["*/scale"]}),
            "get",
            "apps",
            "deployments",
            Some("scale"),
            None,
            true,
        ),
        (
            json!({"verbs": ["get"], "apiGroups": ["apps"], "resources": ["*/scale"]}),
            "get",
            "apps",
            "deployments",
            None,
            None,
            false,
        ),
        // `podsx/log` is no subresource of `pods`.
        (
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["podsx/log"]}),
            "get",
            "",
            "pods",
            Some("log"),
            None,
            false,
        ),
        (
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"]}),
            "get",
            "",
            "configmaps",
            None,
            Some("a"),
            true,
        ),
        (
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"]}),
            "get",
            "",
            "configmaps",
            None,
            Some("b"),
            false,
        ),
        // A list names nothing, so a rule limited to names does not allow it.
        (
            json!({"verbs": ["list"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"]}),
            "list",
            "",
            "configmaps",
            None,
            None,
            false,
        ),
        (
            json!({"verbs": ["get"], "nonResourceURLs": ["*"]}),
            "get",
            "",
            "pods",
            None,
            None,
            false,
        ),
    ];
    for (r, verb, group, resource, sub, name, allowed) in cases {
        let req = ResourceRequest {
            verb,
            api_group: group,
            resource,
            subresource: *sub,
            namespace: Some("default"),
            name: *name,
        };
        assert_eq!(
            rule(r.clone()).allows_resource(&req),
            *allowed,
            "{r} vs {req:?}"
        );
    }
}

#[test]
fn non_resource_rules_match_exact_paths_prefix_stars_and_everything() {
    let cases: &[(Value, &str, &str, bool)] = &[
        (
            json!({"verbs": ["get"], "nonResourceURLs": ["/healthz"]}),
            "get",
            "/healthz",
            true,
        ),
        (
            json!({"verbs": ["get"], "nonResourceURLs": ["/healthz"]}),
            "get",
            "/healthz/etcd",
            false,
        ),
        (
            json!({"verbs": ["get"], "nonResourceURLs": ["/healthz"]}),
            "post",
            "/healthz",
            false,
        ),
        (
            json!({"verbs": ["get"], "nonResourceURLs": ["/apis/*"]}),
            "get",
            "/apis/apps/v1",
            true,
        ),
        (
            json!({"verbs": ["get"], "nonResourceURLs": ["/apis/*"]}),
            "get",
            "/apis",
            false,
        ),
        (
            json!({"verbs": ["get"], "nonResourceURLs": ["/api*"]}),
            "get",
            "/apis",
            true,
        ),
        (
            json!({"verbs": ["*"], "nonResourceURLs": ["*"]}),
            "delete",
            "/anything",
            true,
        ),
        (
            json!({"verbs": ["get"], "apiGroups": ["*"], "resources": ["*"]}),
            "get",
            "/healthz",
            false,
        ),
    ];
    for (r, verb, path, allowed) in cases {
        assert_eq!(
            rule(r.clone()).allows_non_resource(verb, path),
            *allowed,
            "{r} vs {verb} {path}"
        );
    }
}

fn role(ns: &str, name: &str, rules: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": ns}, "rules": rules})
}

fn cluster_role(name: &str, rules: Value) -> Value {
    json!({"metadata": {"name": name}, "rules": rules})
}

fn binding(ns: Option<&str>, kind: &str, role: &str, subjects: Value) -> Value {
    let mut md = json!({"name": format!("{role}-binding")});
    if let Some(ns) = ns {
        md["namespace"] = ns.into();
    }
    json!({"metadata": md, "roleRef": {"apiGroup": GROUP, "kind": kind, "name": role}, "subjects": subjects})
}

#[test]
fn policy_applies_bindings_by_user_group_and_service_account_in_their_scope() {
    let pods_reader = json!([{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]);
    let roles = [role("dev", "reader", pods_reader.clone())];
    let cluster_roles = [
        cluster_role("pods-reader", pods_reader),
        cluster_role(
            "nodes-reader",
            json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["nodes"]}]),
        ),
    ];
    let rbs = [
        binding(
            Some("dev"),
            "Role",
            "reader",
            json!([{"kind": "User", "name": "alice"}]),
        ),
        // A ClusterRole bound in a namespace grants in that namespace only.
        binding(
            Some("ops"),
            "ClusterRole",
            "pods-reader",
            json!([{"kind": "Group", "name": "ops-team"}]),
        ),
        // A service account subject without namespace means the binding's.
        binding(
            Some("ci"),
            "ClusterRole",
            "pods-reader",
            json!([{"kind": "ServiceAccount", "name": "builder"}]),
        ),
        binding(
            Some("dev"),
            "Role",
            "missing",
            json!([{"kind": "User", "name": "carol"}]),
        ),
    ];
    let crbs = [binding(
        None,
        "ClusterRole",
        "nodes-reader",
        json!([{"kind": "User", "name": "bob"}]),
    )];
    let p = Policy::build(&roles, &cluster_roles, &rbs, &crbs);
    let no_groups: Vec<String> = vec![];
    let ops = vec!["ops-team".to_owned()];
    let list = |ns: &'static str| Request::resource("list", "", "pods", None, Some(ns), None);
    let user = |name| UserInfo {
        name,
        groups: &no_groups,
    };
    assert!(p.authorize(&user("alice"), &list("dev")).allowed);
    assert!(!p.authorize(&user("alice"), &list("ops")).allowed);
    assert!(
        !p.authorize(
            &user("alice"),
            &Request::resource("list", "", "pods", None, None, None)
        )
        .allowed,
        "not across namespaces"
    );
    assert!(
        p.authorize(
            &UserInfo {
                name: "dave",
                groups: &ops
            },
            &list("ops")
        )
        .allowed
    );
    assert!(
        !p.authorize(
            &UserInfo {
                name: "dave",
                groups: &ops
            },
            &list("dev")
        )
        .allowed
    );
    assert!(
        p.authorize(&user("system:serviceaccount:ci:builder"), &list("ci"))
            .allowed
    );
    assert!(
        !p.authorize(&user("system:serviceaccount:dev:builder"), &list("ci"))
            .allowed
    );
    let get_node = Request::resource("get", "", "nodes", None, None, Some("n1"));
    assert!(p.authorize(&user("bob"), &get_node).allowed);
    assert!(!p.authorize(&user("alice"), &get_node).allowed);
    let carol = p.authorize(&user("carol"), &list("dev"));
    assert!(!carol.allowed);
    assert_eq!(
        carol.errors,
        vec![format!("role.{GROUP} \"missing\" not found")]
    );
    let (rules, errors) = p.rules_for(&user("alice"), Some("dev"));
    assert_eq!(rules.len(), 1);
    assert!(errors.is_empty());
    assert_eq!(p.rules_for(&user("alice"), None).0.len(), 0);
}

#[test]
fn a_cluster_role_binding_to_a_role_grants_nothing() {
    let roles = [role(
        "dev",
        "reader",
        json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]),
    )];
    let crbs = [binding(
        None,
        "Role",
        "reader",
        json!([{"kind": "User", "name": "alice"}]),
    )];
    let p = Policy::build(&roles, [], [], &crbs);
    let req = Request::resource("get", "", "pods", None, Some("dev"), Some("p"));
    assert!(
        !p.authorize(
            &UserInfo {
                name: "alice",
                groups: &[]
            },
            &req
        )
        .allowed
    );
}

#[test]
fn covers_breaks_rules_down_and_honours_stars_subresources_names_and_paths() {
    let owner = vec![
        rule(
            json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "*/status"]}),
        ),
        rule(
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a", "b"]}),
        ),
        rule(json!({"verbs": ["get"], "nonResourceURLs": ["/apis/*"]})),
    ];
    let ok = [
        json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}),
        json!({"verbs": ["list"], "apiGroups": [""], "resources": ["pods/status", "services/status"]}),
        json!({"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"]}),
        json!({"verbs": ["get"], "nonResourceURLs": ["/apis/apps"]}),
    ];
    for s in ok {
        assert_eq!(covers(&owner, &[rule(s.clone())]), Ok(()), "{s}");
    }
    let missing = covers(
        &owner,
        &[rule(
            json!({"verbs": ["get", "delete"], "apiGroups": ["", "apps"], "resources": ["pods"]}),
        )],
    )
    .unwrap_err();
    let names: Vec<String> = missing.iter().map(PolicyRule::compact_string).collect();
    assert_eq!(
        names,
        [
            r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}"#,
            r#"{APIGroups:["apps"], Resources:["pods"], Verbs:["get"]}"#,
            r#"{APIGroups:["apps"], Resources:["pods"], Verbs:["delete"]}"#,
        ]
    );
    // Names: an unlimited rule is not covered by a rule limited to names.
    assert!(
        covers(
            &owner,
            &[rule(
                json!({"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"]})
            )]
        )
        .is_err()
    );
    assert!(
        covers(
            &owner,
            &[rule(json!({"verbs": ["get"], "nonResourceURLs": ["/api"]}))]
        )
        .is_err()
    );
    let admin = [
        rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]})),
        rule(json!({"verbs": ["*"], "nonResourceURLs": ["*"]})),
    ];
    assert_eq!(covers(&admin, &owner), Ok(()));
    let msg = escalation_message(
        &UserInfo {
            name: "alice",
            groups: &["system:authenticated".to_owned()],
        },
        &missing[..1],
        &[],
    );
    assert_eq!(
        msg,
        "user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"delete\"]}"
    );
}

#[test]
fn aggregation_unions_the_selected_roles_rules_in_name_order_without_duplicates() {
    let view = json!({"metadata": {"name": "view"},
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "true"}}]}, "rules": []});
    let a = json!({"metadata": {"name": "b-role", "labels": {"agg": "true"}},
        "rules": [{"verbs": ["get"], "apiGroups": ["x.io"], "resources": ["widgets"]}]});
    let b = json!({"metadata": {"name": "a-role", "labels": {"agg": "true"}},
        "rules": [{"verbs": ["list"], "apiGroups": ["x.io"], "resources": ["widgets"]},
                  {"verbs": ["get"], "apiGroups": ["x.io"], "resources": ["widgets"]}]});
    let other = json!({"metadata": {"name": "other"}, "rules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]});
    let got = aggregated_rules(&view, [&view, &a, &b, &other]).unwrap();
    assert_eq!(
        got.iter().map(|r| r.verbs[0].as_str()).collect::<Vec<_>>(),
        ["list", "get"]
    );
    assert_eq!(aggregated_rules(&other, [&a]), None, "not aggregated");
}

#[test]
fn bootstrap_roles_chain_view_into_edit_into_admin() {
    let roles = bootstrap::cluster_roles();
    let by = |n: &str| {
        roles
            .iter()
            .find(|r| r["metadata"]["name"] == n)
            .unwrap()
            .clone()
    };
    let view = aggregated_rules(&by("view"), &roles).unwrap();
    let edit_source: Vec<Value> = roles
        .iter()
        .map(|r| {
            if r["metadata"]["name"] == "view" {
                let mut r = r.clone();
                r["rules"] = json!(view.iter().map(PolicyRule::to_json).collect::<Vec<_>>());
                r
            } else {
                r.clone()
            }
        })
        .collect();
    let edit = aggregated_rules(&by("edit"), &edit_source).unwrap();
    let req = |verb, res| ResourceRequest {
        verb,
        api_group: "",
        resource: res,
        subresource: None,
        namespace: Some("d"),
        name: None,
    };
    assert!(view.iter().any(|r| r.allows_resource(&req("list", "pods"))));
    assert!(
        !view
            .iter()
            .any(|r| r.allows_resource(&req("list", "secrets"))),
        "view cannot read secrets"
    );
    assert!(
        edit.iter().any(|r| r.allows_resource(&req("list", "pods"))),
        "edit includes view"
    );
    assert!(
        edit.iter()
            .any(|r| r.allows_resource(&req("create", "secrets")))
    );
    // Every default binding names a default role.
    for b in bootstrap::cluster_role_bindings() {
        let name = &b["roleRef"]["name"];
        assert!(
            roles.iter().any(|r| &r["metadata"]["name"] == name),
            "{name}"
        );
    }
}

#[test]
fn reconciling_adds_what_is_missing_keeps_user_additions_and_respects_autoupdate_false() {
    let expected = bootstrap::cluster_roles()
        .into_iter()
        .find(|r| r["metadata"]["name"] == "system:basic-user")
        .unwrap();
    assert_eq!(bootstrap::reconcile_role(&expected, &expected), None);
    let mut trimmed = expected.clone();
    trimmed["rules"] = json!([{"verbs": ["get"], "apiGroups": ["x.io"], "resources": ["extra"]}]);
    trimmed["metadata"]["labels"] = json!({"mine": "yes"});
    let fixed = bootstrap::reconcile_role(&trimmed, &expected).unwrap();
    assert_eq!(
        fixed["rules"][0]["resources"],
        json!(["extra"]),
        "user rule kept"
    );
    assert!(covers(&rules_of(&fixed), &rules_of(&expected)).is_ok());
    assert_eq!(fixed["metadata"]["labels"]["mine"], "yes");
    assert_eq!(
        fixed["metadata"]["labels"]["kubernetes.io/bootstrapping"],
        "rbac-defaults"
    );
    let mut protected = trimmed.clone();
    protected["metadata"]["annotations"] = json!({AUTOUPDATE_ANNOTATION: "false"});
    assert_eq!(bootstrap::reconcile_role(&protected, &expected), None);

    let b = bootstrap::cluster_role_bindings().remove(0);
    assert_eq!(bootstrap::reconcile_binding(&b, &b), BindingChange::None);
    let mut no_subjects = b.clone();
    no_subjects.as_object_mut().unwrap().remove("subjects");
    let BindingChange::Update(fixed) = bootstrap::reconcile_binding(&no_subjects, &b) else {
        panic!()
    };
    assert_eq!(fixed["subjects"], b["subjects"]);
    let mut other_role = b.clone();
    other_role["roleRef"]["name"] = "view".into();
    assert!(matches!(
        bootstrap::reconcile_binding(&other_role, &b),
        BindingChange::Recreate(_)
    ));
}
