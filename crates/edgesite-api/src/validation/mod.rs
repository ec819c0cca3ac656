//! Admission for the built-in kinds: upstream's defaulting (`pkg/apis/<group>/v1/defaults.go`)
//! and validation (`pkg/apis/<group>/validation`, apimachinery's object-meta checks).
//!
//! The API server calls [`default_object`] (or [`default_update`]) and then
//! [`validate_create`] / [`validate_update`] on every write, before anything is stored; a
//! non-empty list of causes becomes a 422 `Invalid` Status
//! ([`ApiError::invalid`](crate::status::ApiError::invalid)). Field paths, cause types and
//! messages follow upstream's so that kubectl prints the familiar
//! `The Deployment "web" is invalid: spec.template.metadata.labels: Invalid value: ...`.
//! Objects stay raw JSON: defaulting only fills fields that are absent, validation only reads.
//!
//! ```
//! use edgesite_api::registry;
//! use edgesite_api::validation::{default_object, validate_create};
//! use serde_json::json;
//!
//! let pods = registry::lookup("", "v1", "pods").unwrap();
//! let mut pod = json!({"metadata": {"name": "p", "namespace": "default"},
//!                      "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
//! default_object(pods, &mut pod);
//! assert_eq!(pod["spec"]["restartPolicy"], "Always");
//! assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
//! assert!(validate_create(pods, &pod).is_empty());
//! ```

mod apps;
mod batch;
mod core;
mod defaults;
mod meta;
mod rbac;

use serde_json::{Map, Value};

use crate::registry::ResourceInfo;
use crate::status::Cause;

/// Defaulting for a create: fills the fields upstream defaults when they are absent (never
/// overwrites a value the client sent, except the namespace's `kubernetes.io/metadata.name`
/// label, which upstream always sets), plus what upstream's create strategies and admission
/// add (a namespace's `kubernetes` finalizer, a pod's priority, not-ready/unreachable
/// tolerations and `Pending` status). Call it after the name and uid are set: the Job
/// selector and the namespace label are derived from them.
pub fn default_object(r: &ResourceInfo, obj: &mut Value) {
    defaults::apply(r, obj, true);
}

/// Defaulting for an update: the defaults of [`default_object`] on `new` except the
/// create-only namespace finalizer (it may be removed over the object's life), and values the
/// server allocated that a replacement may leave out carried over from `old` (a Service's
/// `clusterIP`, `clusterIPs` and node ports, as upstream's service storage does).
pub fn default_update(r: &ResourceInfo, old: &Value, new: &mut Value) {
    defaults::carry_allocated(r, old, new);
    defaults::apply(r, new, false);
}

/// Validates an object about to be created; empty when it is valid.
pub fn validate_create(r: &ResourceInfo, obj: &Value) -> Vec<Cause> {
    let mut errs = Vec::new();
    if skip(r) {
        return errs;
    }
    meta::validate_object_meta(r, obj, &mut errs);
    validate_kind(r, obj, &mut errs);
    errs
}

/// Validates `new` replacing `old` (both whole objects, `new` already defaulted): the create
/// rules on `new`, plus what may not change (`metadata.name`/`namespace`, immutable fields).
pub fn validate_update(r: &ResourceInfo, old: &Value, new: &Value) -> Vec<Cause> {
    let mut errs = Vec::new();
    if skip(r) {
        return errs;
    }
    meta::validate_object_meta(r, new, &mut errs);
    meta::validate_object_meta_update(old, new, &mut errs);
    validate_kind(r, new, &mut errs);
    // Compare against a defaulted copy of the old object, so that an object stored before
    // a default existed does not read as "changed" in a field the client never touched.
    let mut old = old.clone();
    defaults::apply(r, &mut old, false);
    match (r.group, r.kind) {
        ("", "Pod") => core::validate_pod_update(&old, new, &mut errs),
        ("", "Service") => core::validate_service_update(&old, new, &mut errs),
        ("", "ConfigMap") => core::validate_configmap_update(&old, new, &mut errs),
        ("", "Secret") => core::validate_secret_update(&old, new, &mut errs),
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet") => {
            apps::validate_selector_update(&old, new, &mut errs);
        }
        ("apps", "StatefulSet") => apps::validate_statefulset_update(&old, new, &mut errs),
        ("apps", "ControllerRevision") => apps::validate_revision_update(&old, new, &mut errs),
        ("batch", "Job") => batch::validate_job_update(&old, new, &mut errs),
        (crate::rbac::GROUP, "RoleBinding" | "ClusterRoleBinding") => {
            rbac::validate_binding_update(&old, new, &mut errs);
        }
        _ => {}
    }
    errs
}

/// Validates a `/status` update: only object-meta sanity (the handler keeps everything but
/// `status` from `old`, so the spec cannot have changed).
pub fn validate_status_update(r: &ResourceInfo, old: &Value, new: &Value) -> Vec<Cause> {
    let mut errs = Vec::new();
    if skip(r) {
        return errs;
    }
    meta::validate_object_meta(r, new, &mut errs);
    meta::validate_object_meta_update(old, new, &mut errs);
    if let Some(s) = new.get("status")
        && !s.is_object()
        && !s.is_null()
    {
        errs.push(Cause::invalid("status", s, "must be an object"));
    }
    errs
}

/// Validates an object name for `r` alone (DNS subdomain for most kinds, DNS-1123 label for
/// namespaces, DNS-1035 label for services), as the `metadata.name` causes
/// [`validate_create`] would report.
pub fn validate_name(r: &ResourceInfo, name: &str) -> Vec<Cause> {
    meta::name_causes(r, name, "metadata.name", false)
}

/// The messages for `s` as a DNS-1123 subdomain (most object names, node names); empty when
/// it is one.
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    meta::dns1123_subdomain(s)
}

/// Review-style resources are not objects that are stored; they carry no meaningful meta.
fn skip(r: &ResourceInfo) -> bool {
    matches!(
        (r.group, r.kind),
        ("authentication.k8s.io", _) | ("authorization.k8s.io", _)
    )
}

fn validate_kind(r: &ResourceInfo, obj: &Value, errs: &mut Vec<Cause>) {
    match (r.group, r.kind) {
        ("", "Pod") => core::validate_pod(obj, errs),
        ("", "Service") => core::validate_service(obj, errs),
        ("", "ConfigMap") => core::validate_configmap(obj, errs),
        ("", "Secret") => core::validate_secret(obj, errs),
        ("", "Namespace") => core::validate_namespace(obj, errs),
        ("", "Node") => core::validate_node(obj, errs),
        ("", "Endpoints") => core::validate_endpoints(obj, errs),
        ("", "Event") => core::validate_event(obj, errs),
        ("apps", "Deployment") => apps::validate_deployment(obj, errs),
        ("apps", "ReplicaSet") => apps::validate_replicaset(obj, errs),
        ("apps", "DaemonSet") => apps::validate_daemonset(obj, errs),
        ("apps", "StatefulSet") => apps::validate_statefulset(obj, errs),
        ("apps", "ControllerRevision") => apps::validate_revision(obj, errs),
        ("batch", "Job") => batch::validate_job(obj, errs),
        ("batch", "CronJob") => batch::validate_cronjob(obj, errs),
        ("coordination.k8s.io", "Lease") => core::validate_lease(obj, errs),
        ("discovery.k8s.io", "EndpointSlice") => core::validate_endpointslice(obj, errs),
        (crate::rbac::GROUP, "Role") => rbac::validate_role(obj, errs),
        (crate::rbac::GROUP, "ClusterRole") => rbac::validate_cluster_role(obj, errs),
        (crate::rbac::GROUP, "RoleBinding") => rbac::validate_binding(obj, true, errs),
        (crate::rbac::GROUP, "ClusterRoleBinding") => rbac::validate_binding(obj, false, errs),
        _ => {}
    }
}

/// A field path as upstream prints it: `spec.containers[0].name`, `data[key]`.
#[derive(Debug, Clone)]
pub(crate) struct FieldPath(String);

impl FieldPath {
    pub(crate) fn new(root: &str) -> Self {
        Self(root.to_owned())
    }

    pub(crate) fn child(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_owned())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    pub(crate) fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    pub(crate) fn key(&self, k: &str) -> Self {
        Self(format!("{}[{k}]", self.0))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `obj[key]` as a string, `None` when absent or not a string.
pub(crate) fn get_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// `obj[key]` as an integer.
pub(crate) fn get_i64(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

/// `obj[key]` as a list, empty when absent.
pub(crate) fn get_list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// `obj[key]` as an object.
pub(crate) fn get_map<'a>(v: &'a Value, key: &str) -> Option<&'a Map<String, Value>> {
    v.get(key).and_then(Value::as_object)
}

/// Go `%q` of a string (JSON quoting, which agrees for printable text).
pub(crate) fn go_quote(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// Go `%#v` of a `map[string]string`: `map[string]string{"a":"b", "c":"d"}`, keys sorted.
pub(crate) fn go_string_map(m: Option<&Value>) -> String {
    match m.and_then(Value::as_object) {
        None => "map[string]string(nil)".into(),
        Some(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let parts: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", go_quote(k), go_quote(v.as_str().unwrap_or(""))))
                .collect();
            format!("map[string]string{{{}}}", parts.join(", "))
        }
    }
}

/// Go `%#v` of a `[]string`: `[]string{"a", "b"}`.
pub(crate) fn go_string_slice(v: Option<&Value>) -> String {
    match v.and_then(Value::as_array) {
        None => "[]string(nil)".into(),
        Some(a) => {
            let parts: Vec<String> = a
                .iter()
                .map(|s| go_quote(s.as_str().unwrap_or("")))
                .collect();
            format!("[]string{{{}}}", parts.join(", "))
        }
    }
}

/// Go `%#v` of a `metav1.LabelSelector`, as upstream prints the selector in field errors.
pub(crate) fn go_label_selector(sel: Option<&Value>) -> String {
    let Some(sel) = sel.filter(|s| s.is_object()) else {
        return "null".into();
    };
    let exprs = match sel.get("matchExpressions").and_then(Value::as_array) {
        None => "[]v1.LabelSelectorRequirement(nil)".into(),
        Some(a) => {
            let parts: Vec<String> = a
                .iter()
                .map(|e| {
                    format!(
                        "v1.LabelSelectorRequirement{{Key:{}, Operator:{}, Values:{}}}",
                        go_quote(get_str(e, "key").unwrap_or("")),
                        go_quote(get_str(e, "operator").unwrap_or("")),
                        go_string_slice(e.get("values")),
                    )
                })
                .collect();
            format!("[]v1.LabelSelectorRequirement{{{}}}", parts.join(", "))
        }
    };
    format!(
        "v1.LabelSelector{{MatchLabels:{}, MatchExpressions:{exprs}}}",
        go_string_map(sel.get("matchLabels"))
    )
}

#[cfg(test)]
mod tests;
