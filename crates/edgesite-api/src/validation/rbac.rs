//! rbac.authorization.k8s.io/v1 validation (upstream `pkg/apis/rbac/validation`) and defaults
//! (`pkg/apis/rbac/v1/defaults.go`).

use serde_json::{Map, Value, json};

use super::{FieldPath, get_list, get_str, meta::dns1123_subdomain, meta::validate_label_selector};
use crate::rbac::GROUP;
use crate::status::Cause;

/// Upstream's `path.IsValidPathSegmentName`: RBAC names (`system:node`) may be anything a
/// URL path segment can carry.
pub(crate) fn path_segment_name(s: &str) -> Vec<String> {
    if s == "." || s == ".." {
        return vec![format!("may not be '{s}'")];
    }
    let mut out = Vec::new();
    for bad in ["/", "%"] {
        if s.contains(bad) {
            out.push(format!("may not contain '{bad}'"));
        }
    }
    out
}

/// Defaults: a `roleRef` and `User`/`Group` subjects without `apiGroup` get the RBAC group.
pub(crate) fn default_binding(o: &mut Map<String, Value>) {
    if let Some(r) = o.get_mut("roleRef").and_then(Value::as_object_mut)
        && r.get("apiGroup")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .is_empty()
    {
        r.insert("apiGroup".into(), json!(GROUP));
    }
    for s in o
        .get_mut("subjects")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
    {
        let group_empty = s
            .get("apiGroup")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .is_empty();
        let kind = s.get("kind").and_then(Value::as_str).unwrap_or_default();
        if group_empty && matches!(kind, "User" | "Group") {
            s.insert("apiGroup".into(), json!(GROUP));
        }
    }
}

fn validate_rules(obj: &Value, namespaced: bool, errs: &mut Vec<Cause>) {
    for (i, rule) in get_list(obj, "rules").iter().enumerate() {
        let path = FieldPath::new("rules").index(i);
        let list = |k: &str| get_list(rule, k);
        if list("verbs").is_empty() {
            errs.push(Cause::required(
                path.child("verbs").as_str(),
                "verbs must contain at least one value",
            ));
        }
        let urls = list("nonResourceURLs");
        if !urls.is_empty() {
            let field = path.child("nonResourceURLs");
            if namespaced {
                errs.push(Cause::invalid(
                    field.as_str(),
                    &Value::Array(urls.to_vec()),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !list("apiGroups").is_empty()
                || !list("resources").is_empty()
                || !list("resourceNames").is_empty()
            {
                errs.push(Cause::invalid(
                    field.as_str(),
                    &Value::Array(urls.to_vec()),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if list("apiGroups").is_empty() {
            errs.push(Cause::required(
                path.child("apiGroups").as_str(),
                "resource rules must supply at least one api group",
            ));
        }
        if list("resources").is_empty() {
            errs.push(Cause::required(
                path.child("resources").as_str(),
                "resource rules must supply at least one resource",
            ));
        }
    }
}

/// A Role.
pub(crate) fn validate_role(obj: &Value, errs: &mut Vec<Cause>) {
    validate_rules(obj, true, errs);
}

/// A ClusterRole: its rules, and the selectors of its aggregation rule.
pub(crate) fn validate_cluster_role(obj: &Value, errs: &mut Vec<Cause>) {
    validate_rules(obj, false, errs);
    if let Some(agg) = obj.get("aggregationRule").filter(|a| !a.is_null()) {
        let path = FieldPath::new("aggregationRule").child("clusterRoleSelectors");
        let selectors = get_list(agg, "clusterRoleSelectors");
        if selectors.is_empty() {
            errs.push(Cause::required(
                path.as_str(),
                "at least one clusterRoleSelector required if aggregationRule is non-nil",
            ));
        }
        for (i, s) in selectors.iter().enumerate() {
            validate_label_selector(s, &path.index(i), errs);
        }
    }
}

/// A RoleBinding (`namespaced`) or ClusterRoleBinding.
pub(crate) fn validate_binding(obj: &Value, namespaced: bool, errs: &mut Vec<Cause>) {
    let role_ref = obj.get("roleRef").cloned().unwrap_or(Value::Null);
    let path = FieldPath::new("roleRef");
    let group = get_str(&role_ref, "apiGroup").unwrap_or_default();
    if group != GROUP {
        errs.push(Cause::not_supported(
            path.child("apiGroup").as_str(),
            &json!(group),
            &[GROUP],
        ));
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    let kind = get_str(&role_ref, "kind").unwrap_or_default();
    if !kinds.contains(&kind) {
        errs.push(Cause::not_supported(
            path.child("kind").as_str(),
            &json!(kind),
            kinds,
        ));
    }
    let name = get_str(&role_ref, "name").unwrap_or_default();
    if name.is_empty() {
        errs.push(Cause::required(path.child("name").as_str(), ""));
    } else {
        for m in path_segment_name(name) {
            errs.push(Cause::invalid(
                path.child("name").as_str(),
                &json!(name),
                &m,
            ));
        }
    }
    for (i, s) in get_list(obj, "subjects").iter().enumerate() {
        validate_subject(s, namespaced, &FieldPath::new("subjects").index(i), errs);
    }
}

fn validate_subject(s: &Value, namespaced: bool, path: &FieldPath, errs: &mut Vec<Cause>) {
    let name = get_str(s, "name").unwrap_or_default();
    let group = get_str(s, "apiGroup").unwrap_or_default();
    if name.is_empty() {
        errs.push(Cause::required(path.child("name").as_str(), ""));
    }
    match get_str(s, "kind").unwrap_or_default() {
        "ServiceAccount" => {
            if !name.is_empty() {
                for m in dns1123_subdomain(name) {
                    errs.push(Cause::invalid(
                        path.child("name").as_str(),
                        &json!(name),
                        &m,
                    ));
                }
            }
            if !group.is_empty() {
                errs.push(Cause::not_supported(
                    path.child("apiGroup").as_str(),
                    &json!(group),
                    &[""],
                ));
            }
            if !namespaced && get_str(s, "namespace").unwrap_or_default().is_empty() {
                errs.push(Cause::required(path.child("namespace").as_str(), ""));
            }
        }
        "User" | "Group" => {
            if group != GROUP {
                errs.push(Cause::not_supported(
                    path.child("apiGroup").as_str(),
                    &json!(group),
                    &[GROUP],
                ));
            }
        }
        other => errs.push(Cause::not_supported(
            path.child("kind").as_str(),
            &json!(other),
            &["ServiceAccount", "User", "Group"],
        )),
    }
}

/// A binding's `roleRef` cannot change (upstream: delete and recreate the binding).
pub(crate) fn validate_binding_update(old: &Value, new: &Value, errs: &mut Vec<Cause>) {
    if old.get("roleRef") != new.get("roleRef") {
        errs.push(Cause::invalid(
            "roleRef",
            new.get("roleRef").unwrap_or(&Value::Null),
            "cannot change roleRef",
        ));
    }
}
