//! Selectable fields: which fields `?fieldSelector=` accepts for each resource, and their values
//! in a raw object.
//!
//! The lists follow kube-apiserver's field label conversions and `…ToSelectableFields`
//! functions (`pkg/apis/*/v1/conversion.go`, `pkg/registry/*/strategy.go`): a resource without
//! its own list accepts `metadata.name` and `metadata.namespace`; nodes and namespaces, being
//! cluster-scoped with their own list, accept `metadata.name` but not `metadata.namespace`.
//! Values are strings as upstream renders them: booleans as `true`/`false`, integers in decimal,
//! an absent string as the empty string, and absent booleans and counts as their Go zero value
//! (`false`, `0`), because upstream reads them from typed structs.

use std::collections::BTreeMap;

use serde_json::Value;

use super::ResourceInfo;

/// The fields every resource without its own list accepts.
const META_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

const POD_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
    // Old clients' name for spec.nodeName.
    "spec.host",
];

const NODE_FIELDS: &[&str] = &["metadata.name", "spec.unschedulable"];

const NAMESPACE_FIELDS: &[&str] = &["metadata.name", "status.phase"];

const SECRET_FIELDS: &[&str] = &["metadata.name", "metadata.namespace", "type"];

const SERVICE_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.clusterIP",
    "spec.type",
];

const CORE_EVENT_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

/// events.k8s.io/v1 names the same fields after its own schema (`regarding` for
/// `involvedObject`, `reportingController` for `reportingComponent`).
const EVENTS_V1_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
    "regarding.apiVersion",
    "regarding.resourceVersion",
    "regarding.fieldPath",
    "reason",
    "reportingController",
    "source",
    "type",
];

const REPLICASET_FIELDS: &[&str] = &["metadata.name", "metadata.namespace", "status.replicas"];

const JOB_FIELDS: &[&str] = &["metadata.name", "metadata.namespace", "status.successful"];

/// The fields `?fieldSelector=` accepts for `r`; any other field is a 400
/// `field label not supported: <field>`.
pub fn selectable_fields(r: &ResourceInfo) -> &'static [&'static str] {
    match (r.group, r.plural) {
        ("", "pods") => POD_FIELDS,
        ("", "nodes") => NODE_FIELDS,
        ("", "namespaces") => NAMESPACE_FIELDS,
        ("", "secrets") => SECRET_FIELDS,
        ("", "services") => SERVICE_FIELDS,
        ("", "events") => CORE_EVENT_FIELDS,
        ("events.k8s.io", "events") => EVENTS_V1_FIELDS,
        ("apps", "replicasets") => REPLICASET_FIELDS,
        ("batch", "jobs") => JOB_FIELDS,
        _ => META_FIELDS,
    }
}

/// Whether `field` is one of [`selectable_fields`] of `r`.
pub fn is_selectable_field(r: &ResourceInfo, field: &str) -> bool {
    selectable_fields(r).contains(&field)
}

/// The value of the selectable field `field` in the raw object `obj` of resource `r`, rendered
/// as upstream renders it; `None` when `field` is not selectable for `r`.
pub fn selectable_field_value(r: &ResourceInfo, obj: &Value, field: &str) -> Option<String> {
    if !is_selectable_field(r, field) {
        return None;
    }
    let text = |path: &str| string_at(obj, path).unwrap_or_default();
    Some(match (r.group, r.plural, field) {
        ("", "pods", "spec.host") => text("spec.nodeName"),
        ("", "pods", "spec.hostNetwork") => bool_at(obj, "spec.hostNetwork"),
        // Upstream reads the first of status.podIPs, which the pod's status keeps in step
        // with status.podIP.
        ("", "pods", "status.podIP") => obj
            .pointer("/status/podIPs/0/ip")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| text("status.podIP")),
        ("", "nodes", "spec.unschedulable") => bool_at(obj, "spec.unschedulable"),
        ("", "events", "source") => {
            non_empty(text("source.component")).unwrap_or_else(|| text("reportingComponent"))
        }
        ("events.k8s.io", "events", "source") => non_empty(text("deprecatedSource.component"))
            .unwrap_or_else(|| text("reportingController")),
        ("apps", "replicasets", "status.replicas") => int_at(obj, "status.replicas"),
        ("batch", "jobs", "status.successful") => int_at(obj, "status.successful"),
        _ => text(field),
    })
}

/// Every selectable field of `obj` with its value (see [`selectable_field_value`]).
pub fn selectable_field_set(r: &ResourceInfo, obj: &Value) -> BTreeMap<String, String> {
    selectable_fields(r)
        .iter()
        .filter_map(|f| Some(((*f).to_owned(), selectable_field_value(r, obj, f)?)))
        .collect()
}

fn at<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(obj, |v, seg| v.get(seg))
}

/// A scalar rendered as a string; objects, arrays and null are absent.
fn string_at(obj: &Value, path: &str) -> Option<String> {
    match at(obj, path)? {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn bool_at(obj: &Value, path: &str) -> String {
    at(obj, path)
        .and_then(Value::as_bool)
        .unwrap_or(false)
        .to_string()
}

fn int_at(obj: &Value, path: &str) -> String {
    at(obj, path)
        .and_then(Value::as_i64)
        .unwrap_or(0)
        .to_string()
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::registry::lookup;

    fn r(group: &str, plural: &str) -> &'static ResourceInfo {
        let version = "v1";
        lookup(group, version, plural).unwrap()
    }

    #[test]
    fn pod_fields_render_like_upstream() {
        let pods = r("", "pods");
        let pod = json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"nodeName": "n1", "restartPolicy": "Always", "schedulerName": "default-scheduler",
                     "serviceAccountName": "sa"},
            "status": {"phase": "Running", "podIP": "10.0.0.9", "podIPs": [{"ip": "10.0.0.9"}]},
        });
        let set = selectable_field_set(pods, &pod);
        assert_eq!(set["metadata.name"], "p");
        assert_eq!(set["metadata.namespace"], "ns");
        assert_eq!(set["spec.nodeName"], "n1");
        assert_eq!(set["spec.host"], "n1");
        assert_eq!(set["spec.restartPolicy"], "Always");
        assert_eq!(set["spec.schedulerName"], "default-scheduler");
        assert_eq!(set["spec.serviceAccountName"], "sa");
        assert_eq!(set["spec.hostNetwork"], "false");
        assert_eq!(set["status.phase"], "Running");
        assert_eq!(set["status.podIP"], "10.0.0.9");
        assert_eq!(set["status.nominatedNodeName"], "");
        let host = json!({"spec": {"hostNetwork": true}});
        assert_eq!(
            selectable_field_value(pods, &host, "spec.hostNetwork").as_deref(),
            Some("true")
        );
        assert_eq!(selectable_field_value(pods, &pod, "spec.containers"), None);
    }

    #[test]
    fn cluster_scoped_lists_have_no_namespace_field() {
        assert!(is_selectable_field(r("", "nodes"), "metadata.name"));
        assert!(!is_selectable_field(r("", "nodes"), "metadata.namespace"));
        assert!(!is_selectable_field(
            r("", "namespaces"),
            "metadata.namespace"
        ));
        assert!(is_selectable_field(r("", "namespaces"), "status.phase"));
        // Resources without their own list take the metadata pair.
        assert!(is_selectable_field(
            r("", "configmaps"),
            "metadata.namespace"
        ));
        assert!(!is_selectable_field(r("", "configmaps"), "data.x"));
        assert!(is_selectable_field(
            r("coordination.k8s.io", "leases"),
            "metadata.name"
        ));
    }

    #[test]
    fn defaults_are_go_zero_values() {
        let node = json!({"metadata": {"name": "n"}});
        assert_eq!(
            selectable_field_value(r("", "nodes"), &node, "spec.unschedulable").as_deref(),
            Some("false")
        );
        let rs = json!({"status": {"replicas": 3}});
        assert_eq!(
            selectable_field_value(r("apps", "replicasets"), &rs, "status.replicas").as_deref(),
            Some("3")
        );
        assert_eq!(
            selectable_field_value(r("batch", "jobs"), &json!({}), "status.successful").as_deref(),
            Some("0")
        );
    }

    #[test]
    fn event_fields_core_and_events_v1() {
        let core = r("", "events");
        let ev = json!({
            "metadata": {"name": "e", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default", "uid": "u1",
                               "apiVersion": "v1", "resourceVersion": "7", "fieldPath": "spec.containers{c}"},
            "reason": "Started", "type": "Normal", "reportingComponent": "kubelet",
        });
        let set = selectable_field_set(core, &ev);
        assert_eq!(set["involvedObject.kind"], "Pod");
        assert_eq!(set["involvedObject.uid"], "u1");
        assert_eq!(set["involvedObject.fieldPath"], "spec.containers{c}");
        assert_eq!(set["reason"], "Started");
        assert_eq!(set["type"], "Normal");
        assert_eq!(set["reportingComponent"], "kubelet");
        // No source.component: source falls back to the reporting component.
        assert_eq!(set["source"], "kubelet");
        let with_source = json!({"source": {"component": "scheduler"}});
        assert_eq!(
            selectable_field_value(core, &with_source, "source").as_deref(),
            Some("scheduler")
        );

        let v1 = r("events.k8s.io", "events");
        let ev = json!({"regarding": {"kind": "Node", "name": "n"}, "reportingController": "ctl",
                        "reason": "R", "type": "Warning"});
        let set = selectable_field_set(v1, &ev);
        assert_eq!(set["regarding.kind"], "Node");
        assert_eq!(set["regarding.name"], "n");
        assert_eq!(set["reportingController"], "ctl");
        assert_eq!(set["source"], "ctl");
        assert!(!is_selectable_field(v1, "involvedObject.kind"));
    }

    #[test]
    fn other_resources() {
        let secret = json!({"type": "kubernetes.io/tls"});
        assert_eq!(
            selectable_field_value(r("", "secrets"), &secret, "type").as_deref(),
            Some("kubernetes.io/tls")
        );
        let svc = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.0.7"}});
        let set = selectable_field_set(r("", "services"), &svc);
        assert_eq!(set["spec.type"], "NodePort");
        assert_eq!(set["spec.clusterIP"], "10.43.0.7");
        let ns = json!({"metadata": {"name": "x"}, "status": {"phase": "Terminating"}});
        let set = selectable_field_set(r("", "namespaces"), &ns);
        assert_eq!(set["status.phase"], "Terminating");
        assert!(!set.contains_key("metadata.namespace"));
    }
}
