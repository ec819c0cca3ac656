use serde_json::{Value, json};

use super::*;
use crate::registry::{self, ResourceInfo};
use crate::status::ApiError;

fn res(group: &str, plural: &str) -> &'static ResourceInfo {
    registry::lookup(group, "v1", plural).expect("served resource")
}

fn meta(name: &str) -> Value {
    json!({"name": name, "namespace": "default", "uid": "u-1"})
}

/// Defaults then validates as the create handler does.
fn create(r: &ResourceInfo, mut obj: Value) -> (Value, Vec<Cause>) {
    default_object(r, &mut obj);
    let errs = validate_create(r, &obj);
    (obj, errs)
}

/// The `(field, reason)` pairs of `errs`.
fn fields(errs: &[Cause]) -> Vec<(&str, &str)> {
    errs.iter()
        .map(|c| (c.field.as_str(), c.reason.as_str()))
        .collect()
}

fn has(errs: &[Cause], field: &str, reason: &str) -> bool {
    errs.iter().any(|c| c.field == field && c.reason == reason)
}

#[track_caller]
fn assert_cause(errs: &[Cause], field: &str, reason: &str) {
    assert!(
        has(errs, field, reason),
        "no {reason} at {field} in {errs:#?}"
    );
}

fn pod(containers: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta("p"),
           "spec": {"containers": containers}})
}

fn deployment(selector: Value, labels: Value) -> Value {
    json!({"metadata": meta("web"), "spec": {
        "selector": selector,
        "template": {"metadata": {"labels": labels},
                     "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}}}})
}

// ---- names and object meta ----

#[test]
fn names_follow_each_kinds_rule() {
    let cm = res("", "configmaps");
    assert!(validate_name(cm, "a.b-c").is_empty());
    let errs = validate_name(cm, "Bad_Name");
    assert_eq!(fields(&errs), [("metadata.name", "FieldValueInvalid")]);
    assert!(errs[0].message.starts_with(
        r#"Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist of"#
    ));
    // Namespaces are DNS-1123 labels: no dots.
    let ns = res("", "namespaces");
    assert!(!validate_name(ns, "a.b").is_empty());
    // Services are DNS-1035 labels: no leading digit.
    let svc = res("", "services");
    let errs = validate_name(svc, "1web");
    assert!(errs[0].message.contains("a DNS-1035 label"), "{errs:?}");
    assert!(validate_name(svc, "web-1").is_empty());
    // Too long: upstream reports it as an invalid value.
    let errs = validate_name(cm, &"a".repeat(254));
    assert!(
        errs[0]
            .message
            .ends_with("must be no more than 253 characters")
    );
    // CronJob names must leave room for the job suffix.
    let cj = res("batch", "cronjobs");
    let errs = validate_name(cj, &"a".repeat(53));
    assert!(
        errs[0]
            .message
            .ends_with("must be no more than 52 characters")
    );
}

#[test]
fn object_meta_rules() {
    let cm = res("", "configmaps");
    let obj = json!({"metadata": {"namespace": "default", "generateName": "Bad-",
        "labels": {"bad key": "v", "ok": "not valid!", "example.com/fine": "x"},
        "annotations": {"a": "b"}, "finalizers": ["plain", "example.com/ok", "kubernetes"]}});
    let errs = validate_create(cm, &obj);
    assert_cause(&errs, "metadata.generateName", "FieldValueInvalid");
    assert_cause(&errs, "metadata.name", "FieldValueRequired");
    assert_eq!(
        errs.iter().filter(|c| c.field == "metadata.labels").count(),
        2,
        "{errs:#?}"
    );
    let label_key = errs
        .iter()
        .find(|c| c.message.contains("\"bad key\""))
        .unwrap();
    assert!(
        label_key
            .message
            .contains("name part must consist of alphanumeric characters"),
        "{label_key:?}"
    );
    let finalizer = errs
        .iter()
        .find(|c| c.field == "metadata.finalizers")
        .unwrap();
    assert_eq!(
        finalizer.message,
        r#"Invalid value: "plain": name is neither a standard finalizer name nor is it fully qualified"#
    );
    assert_eq!(errs.len(), 5, "{errs:#?}");

    // The trailing dash of a generateName prefix is fine.
    let ok = json!({"metadata": {"name": "x-abcde", "generateName": "x-", "namespace": "d"}});
    assert!(validate_create(cm, &ok).is_empty());

    let big = "v".repeat(meta::TOTAL_ANNOTATION_SIZE);
    let obj = json!({"metadata": {"name": "a", "namespace": "d", "annotations": {"k": big}}});
    let errs = validate_create(cm, &obj);
    assert_eq!(
        fields(&errs),
        [("metadata.annotations", "FieldValueTooLong")]
    );
    assert_eq!(
        errs[0].message,
        "Too long: may not be more than 262144 bytes"
    );

    // Cluster-scoped objects have no namespace; namespaced ones need one.
    let errs = validate_create(
        res("", "nodes"),
        &json!({"metadata": {"name": "n", "namespace": "x"}}),
    );
    assert_cause(&errs, "metadata.namespace", "FieldValueForbidden");
    let errs = validate_create(cm, &json!({"metadata": {"name": "n"}}));
    assert_cause(&errs, "metadata.namespace", "FieldValueRequired");
}

#[test]
fn metadata_name_and_namespace_are_immutable() {
    let cm = res("", "configmaps");
    let old = json!({"metadata": meta("a")});
    let mut new = old.clone();
    new["metadata"]["name"] = json!("b");
    let errs = validate_update(cm, &old, &new);
    assert_eq!(fields(&errs), [("metadata.name", "FieldValueInvalid")]);
    assert!(errs[0].message.ends_with("field is immutable"));
}

#[test]
fn no_finalizers_added_while_deleting() {
    let cm = res("", "configmaps");
    let old = json!({"metadata": {"name": "a", "namespace": "d", "finalizers": ["example.com/x"],
                                  "deletionTimestamp": "2026-01-01T00:00:00Z"}});
    let mut new = old.clone();
    new["metadata"]["finalizers"] = json!(["example.com/x", "example.com/y"]);
    let errs = validate_update(cm, &old, &new);
    assert_eq!(
        fields(&errs),
        [("metadata.finalizers", "FieldValueForbidden")]
    );
    new["metadata"]["finalizers"] = json!([]);
    assert!(validate_update(cm, &old, &new).is_empty());
}

#[test]
fn invalid_status_renders_like_upstream() {
    let r = res("apps", "deployments");
    let (_, errs) = create(
        r,
        deployment(json!({"matchLabels": {"app": "web"}}), json!({"app": "x"})),
    );
    let err = ApiError::invalid(r, "web", errs);
    assert_eq!(
        err.to_string(),
        "Deployment.apps \"web\" is invalid: spec.template.metadata.labels: Invalid value: \
         map[string]string{\"app\":\"x\"}: `selector` does not match template `labels`"
    );
    let status = err.to_status_json();
    assert_eq!(status["code"], 422);
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(
        status["details"]["causes"][0]["field"],
        "spec.template.metadata.labels"
    );
}

#[test]
fn template_labels_are_checked_against_valid_selectors_only() {
    let r = res("apps", "deployments");
    let expr = |op: &str, values: Value| json!({"matchExpressions": [{"key": "app", "operator": op, "values": values}]});
    let cases = [
        (
            expr("In", json!(["web", "api"])),
            json!({"app": "web"}),
            vec![],
        ),
        (
            expr("NotIn", json!(["web"])),
            json!({"app": "web"}),
            vec![("spec.template.metadata.labels", "FieldValueInvalid")],
        ),
        (expr("Exists", json!([])), json!({"app": "x"}), vec![]),
        (
            expr("DoesNotExist", json!([])),
            json!({"app": "x"}),
            vec![("spec.template.metadata.labels", "FieldValueInvalid")],
        ),
        // An operator that does not exist is reported once, on the operator.
        (
            expr("Bogus", json!(["web"])),
            json!({"app": "web"}),
            vec![(
                "spec.selector.matchExpressions[0].operator",
                "FieldValueInvalid",
            )],
        ),
    ];
    for (selector, labels, want) in cases {
        let (_, errs) = create(r, deployment(selector.clone(), labels));
        assert_eq!(fields(&errs), want, "{selector}");
    }
}

// ---- pods ----

#[test]
fn pod_defaults() {
    let r = res("", "pods");
    let (p, errs) = create(
        r,
        pod(json!([
            {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}],
             "livenessProbe": {"httpGet": {"port": 80}}},
            {"name": "b", "image": "registry:5000/app:1.2"},
            {"name": "c", "image": "busybox:latest"},
            {"name": "d", "image": "x@sha256:abc"},
        ])),
    );
    assert!(errs.is_empty(), "{errs:#?}");
    let spec = &p["spec"];
    assert_eq!(spec["restartPolicy"], "Always");
    assert_eq!(spec["dnsPolicy"], "ClusterFirst");
    assert_eq!(spec["schedulerName"], "default-scheduler");
    assert_eq!(spec["terminationGracePeriodSeconds"], 30);
    assert_eq!(spec["securityContext"], json!({}));
    assert_eq!(spec["enableServiceLinks"], true);
    assert_eq!(spec["priority"], 0);
    assert_eq!(spec["preemptionPolicy"], "PreemptLowerPriority");
    assert_eq!(spec["tolerations"].as_array().unwrap().len(), 2);
    assert_eq!(spec["tolerations"][0]["tolerationSeconds"], 300);
    let pulls: Vec<&str> = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["imagePullPolicy"].as_str().unwrap())
        .collect();
    assert_eq!(pulls, ["Always", "IfNotPresent", "Always", "IfNotPresent"]);
    let c = &spec["containers"][0];
    assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(c["terminationMessagePolicy"], "File");
    assert_eq!(c["resources"], json!({}));
    assert_eq!(c["ports"][0]["protocol"], "TCP");
    assert_eq!(
        c["livenessProbe"],
        json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1,
               "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
    );
    assert_eq!(
        p["status"],
        json!({"phase": "Pending", "qosClass": "BestEffort"})
    );

    // Defaulting is idempotent and never overrides what was sent.
    let mut again = p.clone();
    default_object(r, &mut again);
    assert_eq!(again, p);
    let (p, _) = create(
        r,
        json!({"metadata": meta("p"), "spec": {"restartPolicy": "Never",
               "containers": [{"name": "a", "image": "x", "imagePullPolicy": "Never",
                               "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}}),
    );
    assert_eq!(p["spec"]["restartPolicy"], "Never");
    assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Never");
    assert_eq!(p["status"]["qosClass"], "Guaranteed");
}

#[test]
fn pod_volume_defaults() {
    let r = res("", "pods");
    let (p, errs) = create(
        r,
        json!({"metadata": meta("p"), "spec": {
            "containers": [{"name": "a", "image": "x",
                            "volumeMounts": [{"name": "scratch", "mountPath": "/s"}]}],
            "volumes": [{"name": "scratch"}, {"name": "cfg", "configMap": {"name": "c"}}]}}),
    );
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(p["spec"]["volumes"][0]["emptyDir"], json!({}));
    assert_eq!(p["spec"]["volumes"][1]["configMap"]["defaultMode"], 420);
}

#[test]
fn pod_validation() {
    let r = res("", "pods");
    let (_, errs) = create(r, pod(json!([])));
    assert_eq!(fields(&errs), [("spec.containers", "FieldValueRequired")]);
    assert_eq!(errs[0].message, "Required value");

    let (_, errs) = create(
        r,
        pod(json!([
            {"name": "a"},
            {"name": "a", "image": "x", "ports": [
                {"containerPort": 70000},
                {"containerPort": 80, "protocol": "HTTP", "name": "Web"},
                {"name": "p"}]},
            {"image": "x", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]},
            {"name": "Upper", "image": "x", "resources": {
                "requests": {"cpu": "2"}, "limits": {"cpu": "1"}}},
        ])),
    );
    assert_cause(&errs, "spec.containers[0].image", "FieldValueRequired");
    assert_cause(&errs, "spec.containers[1].name", "FieldValueDuplicate");
    assert_cause(
        &errs,
        "spec.containers[1].ports[0].containerPort",
        "FieldValueInvalid",
    );
    assert_cause(
        &errs,
        "spec.containers[1].ports[1].protocol",
        "FieldValueNotSupported",
    );
    assert_cause(
        &errs,
        "spec.containers[1].ports[1].name",
        "FieldValueInvalid",
    );
    assert_cause(
        &errs,
        "spec.containers[1].ports[2].containerPort",
        "FieldValueRequired",
    );
    assert_cause(&errs, "spec.containers[2].name", "FieldValueRequired");
    assert_cause(
        &errs,
        "spec.containers[2].volumeMounts[0].name",
        "FieldValueNotFound",
    );
    assert_cause(&errs, "spec.containers[3].name", "FieldValueInvalid");
    assert_cause(
        &errs,
        "spec.containers[3].resources.requests[cpu]",
        "FieldValueInvalid",
    );
    let port = errs
        .iter()
        .find(|c| c.field == "spec.containers[1].ports[0].containerPort")
        .unwrap();
    assert_eq!(
        port.message,
        "Invalid value: 70000: must be between 1 and 65535, inclusive"
    );
    let proto = errs
        .iter()
        .find(|c| c.field == "spec.containers[1].ports[1].protocol")
        .unwrap();
    assert_eq!(
        proto.message,
        r#"Unsupported value: "HTTP": supported values: "SCTP", "TCP", "UDP""#
    );
    let limit = errs
        .iter()
        .find(|c| c.reason == "FieldValueInvalid" && c.field.ends_with("requests[cpu]"))
        .unwrap();
    assert_eq!(
        limit.message,
        r#"Invalid value: "2": must be less than or equal to cpu limit of 1"#
    );

    let mut bad = pod(json!([{"name": "a", "image": "x"}]));
    bad["spec"]["restartPolicy"] = json!("Sometimes");
    let (_, errs) = create(r, bad);
    assert_eq!(
        fields(&errs),
        [("spec.restartPolicy", "FieldValueNotSupported")]
    );
    assert_eq!(
        errs[0].message,
        r#"Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never""#
    );
}

#[test]
fn pod_updates_only_change_images_and_a_few_fields() {
    let r = res("", "pods");
    let (old, _) = create(r, pod(json!([{"name": "a", "image": "nginx:1"}])));
    // Image changes and added labels are fine; the client may omit defaulted fields.
    let mut new = pod(json!([{"name": "a", "image": "nginx:2"}]));
    new["metadata"]["labels"] = json!({"x": "y"});
    default_update(r, &old, &mut new);
    assert!(validate_update(r, &old, &new).is_empty());
    // Setting activeDeadlineSeconds and adding tolerations are fine.
    let mut new = old.clone();
    new["spec"]["activeDeadlineSeconds"] = json!(30);
    new["spec"]["tolerations"]
        .as_array_mut()
        .unwrap()
        .push(json!({"key": "k", "operator": "Exists"}));
    assert!(validate_update(r, &old, &new).is_empty());
    // Anything else is forbidden with upstream's message.
    let mut new = old.clone();
    new["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80, "protocol": "TCP"}]);
    let errs = validate_update(r, &old, &new);
    assert_eq!(fields(&errs), [("spec", "FieldValueForbidden")]);
    assert!(
        errs[0]
            .message
            .starts_with("Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations)"),
        "{}",
        errs[0].message
    );
    // Removing a toleration is not an addition.
    let mut new = old.clone();
    new["spec"]["tolerations"] = json!([]);
    assert_eq!(
        fields(&validate_update(r, &old, &new)),
        [("spec", "FieldValueForbidden")]
    );
}

#[test]
fn pod_status_updates_check_only_meta() {
    let r = res("", "pods");
    let (old, _) = create(r, pod(json!([{"name": "a", "image": "x"}])));
    let mut new = old.clone();
    new["status"] = json!({"phase": "Running"});
    assert!(validate_status_update(r, &old, &new).is_empty());
    new["metadata"]["labels"] = json!({"bad key": "x"});
    assert_eq!(
        fields(&validate_status_update(r, &old, &new)),
        [("metadata.labels", "FieldValueInvalid")]
    );
}

// ---- apps ----

#[test]
fn deployment_defaults() {
    let r = res("apps", "deployments");
    let (d, errs) = create(
        r,
        deployment(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web"}),
        ),
    );
    assert!(errs.is_empty(), "{errs:#?}");
    let spec = &d["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["revisionHistoryLimit"], 10);
    assert_eq!(spec["progressDeadlineSeconds"], 600);
    assert_eq!(
        spec["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
    );
    assert_eq!(spec["template"]["spec"]["restartPolicy"], "Always");
    assert_eq!(
        spec["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    // Template pods get no admission-time fields.
    assert!(spec["template"]["spec"].get("priority").is_none());

    // Recreate gets no rollingUpdate block.
    let mut obj = deployment(
        json!({"matchLabels": {"app": "web"}}),
        json!({"app": "web"}),
    );
    obj["spec"]["strategy"] = json!({"type": "Recreate"});
    let (d, errs) = create(r, obj);
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
}

#[test]
fn deployment_validation() {
    let r = res("apps", "deployments");
    let (_, errs) = create(r, deployment(Value::Null, json!({"app": "web"})));
    assert_eq!(fields(&errs), [("spec.selector", "FieldValueRequired")]);

    let (_, errs) = create(r, deployment(json!({}), json!({"app": "web"})));
    assert_eq!(fields(&errs), [("spec.selector", "FieldValueInvalid")]);
    assert!(
        errs[0]
            .message
            .ends_with("empty selector is invalid for deployment")
    );

    let (_, errs) = create(
        r,
        deployment(
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]}),
            json!({"app": "c"}),
        ),
    );
    assert_eq!(
        fields(&errs),
        [("spec.template.metadata.labels", "FieldValueInvalid")]
    );

    let (_, errs) = create(
        r,
        deployment(
            json!({"matchExpressions": [{"key": "app", "operator": "Maybe"}]}),
            json!({"app": "c"}),
        ),
    );
    assert_cause(
        &errs,
        "spec.selector.matchExpressions[0].operator",
        "FieldValueInvalid",
    );

    let mut obj = deployment(
        json!({"matchLabels": {"app": "web"}}),
        json!({"app": "web"}),
    );
    obj["spec"]["replicas"] = json!(-1);
    obj["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
    obj["spec"]["strategy"] = json!({"type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "0%"}});
    let (_, errs) = create(r, obj);
    assert_cause(&errs, "spec.replicas", "FieldValueInvalid");
    assert_cause(
        &errs,
        "spec.template.spec.restartPolicy",
        "FieldValueNotSupported",
    );
    let ru = errs
        .iter()
        .find(|c| c.field == "spec.strategy.rollingUpdate.maxUnavailable")
        .unwrap();
    assert_eq!(
        ru.message,
        "Invalid value: 0: may not be 0 when `maxSurge` is 0"
    );
    assert_eq!(errs.len(), 3, "{errs:#?}");

    let mut obj = deployment(
        json!({"matchLabels": {"app": "web"}}),
        json!({"app": "web"}),
    );
    obj["spec"]["strategy"] = json!({"type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": "abc", "maxSurge": "110%"}});
    let (_, errs) = create(r, obj);
    assert_eq!(
        fields(&errs),
        [(
            "spec.strategy.rollingUpdate.maxUnavailable",
            "FieldValueInvalid"
        )]
    );
}

#[test]
fn workload_selectors_are_immutable() {
    for plural in ["deployments", "replicasets", "daemonsets"] {
        let r = res("apps", plural);
        let (old, errs) = create(
            r,
            deployment(
                json!({"matchLabels": {"app": "web"}}),
                json!({"app": "web", "v": "1"}),
            ),
        );
        assert!(errs.is_empty(), "{plural}: {errs:#?}");
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(3);
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
        assert!(validate_update(r, &old, &new).is_empty(), "{plural}");
        new["spec"]["selector"] = json!({"matchLabels": {"app": "web", "v": "1"}});
        let errs = validate_update(r, &old, &new);
        assert_eq!(
            fields(&errs),
            [("spec.selector", "FieldValueInvalid")],
            "{plural}"
        );
        assert_eq!(
            errs[0].message,
            "Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"web\", \"v\":\"1\"}, \
             MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
        );
    }
}

#[test]
fn replicaset_and_daemonset_defaults() {
    let (rs, errs) = create(
        res("apps", "replicasets"),
        deployment(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web"}),
        ),
    );
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(rs["spec"]["replicas"], 1);
    let (ds, errs) = create(
        res("apps", "daemonsets"),
        deployment(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web"}),
        ),
    );
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(
        ds["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
    );
    assert_eq!(ds["spec"]["revisionHistoryLimit"], 10);
    assert!(ds["spec"].get("replicas").is_none());
}

#[test]
fn statefulset_defaults_and_update_rules() {
    let r = res("apps", "statefulsets");
    let mut obj = deployment(json!({"matchLabels": {"app": "db"}}), json!({"app": "db"}));
    obj["spec"]["serviceName"] = json!("db");
    let (ss, errs) = create(r, obj);
    assert!(errs.is_empty(), "{errs:#?}");
    let spec = &ss["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["podManagementPolicy"], "OrderedReady");
    assert_eq!(
        spec["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
    );
    assert_eq!(spec["revisionHistoryLimit"], 10);
    assert_eq!(
        spec["persistentVolumeClaimRetentionPolicy"],
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
    );
    let mut new = ss.clone();
    new["spec"]["replicas"] = json!(3);
    assert!(validate_update(r, &ss, &new).is_empty());
    new["spec"]["serviceName"] = json!("other");
    let errs = validate_update(r, &ss, &new);
    assert_eq!(fields(&errs), [("spec", "FieldValueForbidden")]);
    assert!(
        errs[0]
            .message
            .contains("updates to statefulset spec for fields other than")
    );

    let mut bad = ss.clone();
    bad["spec"]["podManagementPolicy"] = json!("Whenever");
    assert_eq!(
        fields(&validate_create(r, &bad)),
        [("spec.podManagementPolicy", "FieldValueNotSupported")]
    );
}

// ---- batch ----

fn job(extra: Value) -> Value {
    let mut j = json!({"metadata": meta("pi"), "spec": {
        "template": {"spec": {"restartPolicy": "Never",
                              "containers": [{"name": "pi", "image": "perl:5"}]}}}});
    if let (Some(spec), Some(extra)) = (j["spec"].as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    j
}

#[test]
fn job_defaults_generate_the_selector() {
    let r = res("batch", "jobs");
    let (j, errs) = create(r, job(json!({})));
    assert!(errs.is_empty(), "{errs:#?}");
    let spec = &j["spec"];
    assert_eq!(spec["parallelism"], 1);
    assert_eq!(spec["completions"], 1);
    assert_eq!(spec["backoffLimit"], 6);
    assert_eq!(spec["completionMode"], "NonIndexed");
    assert_eq!(spec["suspend"], false);
    assert_eq!(spec["manualSelector"], false);
    assert_eq!(spec["podReplacementPolicy"], "TerminatingOrFailed");
    assert_eq!(
        spec["selector"],
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}})
    );
    assert_eq!(
        spec["template"]["metadata"]["labels"],
        json!({"batch.kubernetes.io/controller-uid": "u-1", "batch.kubernetes.io/job-name": "pi",
               "controller-uid": "u-1", "job-name": "pi"})
    );
    // Parallelism alone leaves completions unset.
    let (j, _) = create(r, job(json!({"parallelism": 3})));
    assert!(j["spec"].get("completions").is_none());
}

#[test]
fn job_validation() {
    let r = res("batch", "jobs");
    // The pod default restartPolicy Always is not allowed for Jobs (as upstream).
    let mut j = job(json!({}));
    j["spec"]["template"]["spec"]
        .as_object_mut()
        .unwrap()
        .remove("restartPolicy");
    let (_, errs) = create(r, j);
    assert_eq!(
        fields(&errs),
        [("spec.template.spec.restartPolicy", "FieldValueNotSupported")]
    );
    assert_eq!(
        errs[0].message,
        r#"Unsupported value: "Always": supported values: "OnFailure", "Never""#
    );

    let (_, errs) = create(
        r,
        job(json!({"completionMode": "Indexed", "parallelism": 2, "backoffLimit": -1})),
    );
    assert_cause(&errs, "spec.completions", "FieldValueRequired");
    assert_cause(&errs, "spec.backoffLimit", "FieldValueInvalid");

    // A manual selector is required and must match.
    let (_, errs) = create(r, job(json!({"manualSelector": true})));
    assert_eq!(fields(&errs), [("spec.selector", "FieldValueRequired")]);
    let (_, errs) = create(
        r,
        job(json!({"manualSelector": true, "selector": {"matchLabels": {"a": "b"}}})),
    );
    assert_eq!(
        fields(&errs),
        [("spec.template.metadata.labels", "FieldValueInvalid")]
    );
    // A forged controller-uid is not an auto-generated selector.
    let (_, errs) = create(
        r,
        job(json!({"selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "other"}}})),
    );
    assert_cause(&errs, "spec.selector", "FieldValueInvalid");
}

#[test]
fn job_update_rules() {
    let r = res("batch", "jobs");
    let (old, _) = create(r, job(json!({})));
    let mut new = old.clone();
    new["spec"]["parallelism"] = json!(4);
    new["metadata"]["labels"] = json!({"a": "b"});
    assert!(validate_update(r, &old, &new).is_empty());
    let mut new = old.clone();
    new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("perl:6");
    new["spec"]["completions"] = json!(5);
    let errs = validate_update(r, &old, &new);
    assert_eq!(
        fields(&errs),
        [
            ("spec.template", "FieldValueInvalid"),
            ("spec.completions", "FieldValueInvalid")
        ]
    );
    let mut new = old.clone();
    new["spec"]["selector"] = json!({"matchLabels": {"x": "y"}});
    assert_cause(
        &validate_update(r, &old, &new),
        "spec.selector",
        "FieldValueInvalid",
    );
}

#[test]
fn cronjob_defaults_and_validation() {
    let r = res("batch", "cronjobs");
    let cj = |schedule: &str| {
        json!({"metadata": meta("c"), "spec": {"schedule": schedule, "jobTemplate": {"spec": {
            "template": {"spec": {"restartPolicy": "OnFailure",
                                  "containers": [{"name": "c", "image": "busybox"}]}}}}}})
    };
    let (c, errs) = create(r, cj("*/5 * * * *"));
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(c["spec"]["concurrencyPolicy"], "Allow");
    assert_eq!(c["spec"]["suspend"], false);
    assert_eq!(c["spec"]["successfulJobsHistoryLimit"], 3);
    assert_eq!(c["spec"]["failedJobsHistoryLimit"], 1);
    assert_eq!(
        c["spec"]["jobTemplate"]["spec"]["template"]["spec"]["dnsPolicy"],
        "ClusterFirst"
    );
    for ok in [
        "@hourly",
        "0 0 * * MON-FRI",
        "0,30 8-17 1 jan *",
        "@every 1h",
    ] {
        assert!(create(r, cj(ok)).1.is_empty(), "{ok}");
    }
    let (_, errs) = create(r, cj(""));
    assert_eq!(fields(&errs), [("spec.schedule", "FieldValueRequired")]);
    let (_, errs) = create(r, cj("* * *"));
    assert_eq!(
        errs[0].message,
        r#"Invalid value: "* * *": expected exactly 5 fields, found 3: * * *"#
    );
    let (_, errs) = create(r, cj("70 * * * *"));
    assert_eq!(fields(&errs), [("spec.schedule", "FieldValueInvalid")]);
    let mut bad = cj("@daily");
    bad["spec"]["concurrencyPolicy"] = json!("Sometimes");
    bad["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
    let (_, errs) = create(r, bad);
    assert_eq!(
        fields(&errs),
        [
            ("spec.concurrencyPolicy", "FieldValueNotSupported"),
            (
                "spec.jobTemplate.spec.template.spec.restartPolicy",
                "FieldValueNotSupported"
            )
        ]
    );
}

// ---- services ----

fn service(spec: Value) -> Value {
    json!({"metadata": meta("web"), "spec": spec})
}

#[test]
fn service_defaults() {
    let r = res("", "services");
    let (s, errs) = create(
        r,
        service(json!({"selector": {"app": "web"}, "ports": [{"port": 80}]})),
    );
    assert!(errs.is_empty(), "{errs:#?}");
    let spec = &s["spec"];
    assert_eq!(spec["type"], "ClusterIP");
    assert_eq!(spec["sessionAffinity"], "None");
    assert_eq!(spec["internalTrafficPolicy"], "Cluster");
    assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
    assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
    assert_eq!(
        spec["ports"][0],
        json!({"port": 80, "protocol": "TCP", "targetPort": 80})
    );
    assert!(spec.get("externalTrafficPolicy").is_none());
    let (s, _) = create(
        r,
        service(json!({"type": "NodePort", "ports": [{"port": 80, "targetPort": "http"}]})),
    );
    assert_eq!(s["spec"]["externalTrafficPolicy"], "Cluster");
    assert_eq!(s["spec"]["ports"][0]["targetPort"], "http");
    let (s, errs) = create(
        r,
        service(json!({"type": "ExternalName", "externalName": "example.com"})),
    );
    assert!(errs.is_empty(), "{errs:#?}");
    assert!(s["spec"].get("ipFamilies").is_none());
}

#[test]
fn service_validation() {
    let r = res("", "services");
    let (_, errs) = create(r, service(json!({})));
    assert_eq!(fields(&errs), [("spec.ports", "FieldValueRequired")]);
    let (_, errs) = create(
        r,
        service(json!({"ports": [
            {"port": 80, "name": "http"},
            {"port": 0},
            {"port": 443, "name": "http", "protocol": "ICMP"},
            {"port": 80, "name": "other", "nodePort": 30000}],
            "selector": {"app": "bad value!"}})),
    );
    assert_cause(&errs, "spec.ports[1].name", "FieldValueRequired");
    assert_cause(&errs, "spec.ports[1].port", "FieldValueInvalid");
    assert_cause(&errs, "spec.ports[2].name", "FieldValueDuplicate");
    assert_cause(&errs, "spec.ports[2].protocol", "FieldValueNotSupported");
    assert_cause(&errs, "spec.ports[3].nodePort", "FieldValueForbidden");
    assert_cause(&errs, "spec.ports[3]", "FieldValueDuplicate");
    assert_cause(&errs, "spec.selector", "FieldValueInvalid");
    let (_, errs) = create(r, service(json!({"type": "ExternalName"})));
    assert_eq!(fields(&errs), [("spec.externalName", "FieldValueRequired")]);
    let (_, errs) = create(r, service(json!({"type": "Magic", "ports": [{"port": 1}]})));
    assert_eq!(fields(&errs), [("spec.type", "FieldValueNotSupported")]);
    // Headless services need no ports.
    assert!(
        create(r, service(json!({"clusterIP": "None"})))
            .1
            .is_empty()
    );
}

#[test]
fn service_cluster_ip_is_kept_and_immutable() {
    let r = res("", "services");
    let (mut old, _) = create(r, service(json!({"ports": [{"port": 80}]})));
    old["spec"]["clusterIP"] = json!("10.43.0.10");
    old["spec"]["clusterIPs"] = json!(["10.43.0.10"]);
    // A replacement without the allocated IP keeps it.
    let mut new = service(json!({"ports": [{"port": 81}]}));
    default_update(r, &old, &mut new);
    assert_eq!(new["spec"]["clusterIP"], "10.43.0.10");
    assert!(validate_update(r, &old, &new).is_empty());
    // Changing it is an error.
    new["spec"]["clusterIP"] = json!("10.43.0.11");
    new["spec"]["clusterIPs"] = json!(["10.43.0.11"]);
    let errs = validate_update(r, &old, &new);
    assert_eq!(
        fields(&errs),
        [
            ("spec.clusterIP", "FieldValueInvalid"),
            ("spec.clusterIPs[0]", "FieldValueInvalid")
        ]
    );
    assert_eq!(
        errs[0].message,
        r#"Invalid value: "10.43.0.11": field is immutable"#
    );
    assert_eq!(
        errs[1].message,
        r#"Invalid value: []string{"10.43.0.11"}: may not change once set"#
    );
}

// ---- config maps and secrets ----

#[test]
fn configmap_keys_and_size() {
    let r = res("", "configmaps");
    let ok =
        json!({"metadata": meta("c"), "data": {"a.b_c-D": "x"}, "binaryData": {"bin": "AAEC"}});
    assert!(create(r, ok).1.is_empty());
    let bad = json!({"metadata": meta("c"), "data": {"bad key": "x", "..x": "y", "dup": "z"},
                     "binaryData": {"dup": "AA=="}});
    let errs = create(r, bad).1;
    assert_eq!(
        fields(&errs),
        [
            ("data[..x]", "FieldValueInvalid"),
            ("data[bad key]", "FieldValueInvalid"),
            ("binaryData[dup]", "FieldValueInvalid"),
        ]
    );
    assert_eq!(
        errs[1].message,
        "Invalid value: \"bad key\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' \
         (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
    );
    let big = json!({"metadata": meta("c"), "data": {"a": "x".repeat(1024 * 1024 + 1)}});
    let errs = create(r, big).1;
    assert_eq!(fields(&errs), [("", "FieldValueTooLong")]);
}

#[test]
fn immutable_configmaps_and_secrets() {
    for plural in ["configmaps", "secrets"] {
        let r = res("", plural);
        let (old, errs) = create(
            r,
            json!({"metadata": meta("c"), "immutable": true, "data": {"k": "dg=="}}),
        );
        assert!(errs.is_empty(), "{errs:#?}");
        let mut new = old.clone();
        new["metadata"]["labels"] = json!({"a": "b"});
        assert!(validate_update(r, &old, &new).is_empty(), "{plural}");
        new["data"] = json!({"k": "dw=="});
        let errs = validate_update(r, &old, &new);
        assert_eq!(fields(&errs), [("data", "FieldValueForbidden")], "{plural}");
        assert_eq!(
            errs[0].message,
            "Forbidden: field is immutable when `immutable` is set"
        );
        let mut new = old.clone();
        new["immutable"] = json!(false);
        assert_eq!(
            fields(&validate_update(r, &old, &new)),
            [("immutable", "FieldValueForbidden")]
        );
    }
}

#[test]
fn secret_defaults_and_rules() {
    let r = res("", "secrets");
    let (s, errs) = create(
        r,
        json!({"metadata": meta("s"), "data": {"a": "eA=="}, "stringData": {"b": "hello"}}),
    );
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(s["type"], "Opaque");
    assert_eq!(s["data"], json!({"a": "eA==", "b": "aGVsbG8="}));
    assert!(s.get("stringData").is_none());

    let (_, errs) = create(
        r,
        json!({"metadata": meta("s"), "data": {"a": "not base64!"}}),
    );
    assert_eq!(fields(&errs), [("data[a]", "FieldValueInvalid")]);

    let (_, errs) = create(
        r,
        json!({"metadata": meta("s"), "type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}}),
    );
    assert_eq!(fields(&errs), [("data[tls.key]", "FieldValueRequired")]);

    let (old, _) = create(r, json!({"metadata": meta("s")}));
    let mut new = old.clone();
    new["type"] = json!("kubernetes.io/basic-auth");
    new["data"] = json!({"username": "eA=="});
    let errs = validate_update(r, &old, &new);
    assert_eq!(fields(&errs), [("type", "FieldValueInvalid")]);
    assert_eq!(
        errs[0].message,
        r#"Invalid value: "kubernetes.io/basic-auth": field is immutable"#
    );
}

// ---- the rest ----

#[test]
fn namespace_defaults() {
    let r = res("", "namespaces");
    let (n, errs) = create(
        r,
        json!({"metadata": {"name": "team-a", "labels": {"x": "y"}}}),
    );
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(n["spec"], json!({"finalizers": ["kubernetes"]}));
    assert_eq!(n["status"], json!({"phase": "Active"}));
    assert_eq!(
        n["metadata"]["labels"],
        json!({"x": "y", "kubernetes.io/metadata.name": "team-a"})
    );
    // The name label is always the name.
    let (n, _) = create(
        r,
        json!({"metadata": {"name": "b", "labels": {"kubernetes.io/metadata.name": "other"}}}),
    );
    assert_eq!(n["metadata"]["labels"]["kubernetes.io/metadata.name"], "b");
    let (_, errs) = create(r, json!({"metadata": {"name": "B"}}));
    assert_eq!(fields(&errs), [("metadata.name", "FieldValueInvalid")]);
}

#[test]
fn node_rules() {
    let r = res("", "nodes");
    let (n, errs) = create(
        r,
        json!({"metadata": {"name": "edge-1"}, "spec": {"podCIDR": "10.42.0.0/24",
               "taints": [{"key": "a", "effect": "NoSchedule"}]},
               "status": {"capacity": {"cpu": "4"}}}),
    );
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(n["status"]["allocatable"], json!({"cpu": "4"}));
    let (_, errs) = create(
        r,
        json!({"metadata": {"name": "edge-1"}, "spec": {"podCIDR": "nope",
               "taints": [{"key": "a", "effect": "Sometimes"}, {"effect": "NoSchedule"}]}}),
    );
    assert_eq!(
        fields(&errs),
        [
            ("spec.taints[0].effect", "FieldValueNotSupported"),
            ("spec.taints[1].key", "FieldValueRequired"),
            ("spec.podCIDR", "FieldValueInvalid")
        ]
    );
}

#[test]
fn endpoints_slices_events_and_leases() {
    let (e, errs) = create(
        res("", "endpoints"),
        json!({"metadata": meta("web"), "subsets": [{"addresses": [{"ip": "10.42.0.5"}],
               "ports": [{"port": 80}]}]}),
    );
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(e["subsets"][0]["ports"][0]["protocol"], "TCP");
    let (_, errs) = create(
        res("", "endpoints"),
        json!({"metadata": meta("web"), "subsets": [{"addresses": [{"ip": "x"}]}]}),
    );
    assert_eq!(
        fields(&errs),
        [("subsets[0].addresses[0].ip", "FieldValueInvalid")]
    );

    let es = res("discovery.k8s.io", "endpointslices");
    let (s, errs) = create(
        es,
        json!({"metadata": meta("web-1"), "addressType": "IPv4",
               "endpoints": [{"addresses": ["10.42.0.5"]}], "ports": [{"port": 80}]}),
    );
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(
        s["ports"][0],
        json!({"port": 80, "protocol": "TCP", "name": ""})
    );
    let (_, errs) = create(es, json!({"metadata": meta("web-1")}));
    assert_eq!(fields(&errs), [("addressType", "FieldValueRequired")]);

    let ev = res("", "events");
    let (e, errs) = create(
        ev,
        json!({"metadata": meta("p.1"), "involvedObject": {"kind": "Pod", "name": "p"}}),
    );
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(e["involvedObject"]["namespace"], "default");
    let (_, errs) = create(
        ev,
        json!({"metadata": meta("p.1"), "involvedObject": {"kind": "Pod", "namespace": "other"}}),
    );
    assert_eq!(
        fields(&errs),
        [("involvedObject.namespace", "FieldValueInvalid")]
    );

    let lease = res("coordination.k8s.io", "leases");
    let (_, errs) = create(
        lease,
        json!({"metadata": meta("l"), "spec": {"holderIdentity": "a", "leaseDurationSeconds": 40}}),
    );
    assert!(errs.is_empty(), "{errs:#?}");
    let (_, errs) = create(
        lease,
        json!({"metadata": meta("l"), "spec": {"leaseDurationSeconds": 0, "leaseTransitions": -1}}),
    );
    assert_eq!(
        fields(&errs),
        [
            ("spec.leaseDurationSeconds", "FieldValueInvalid"),
            ("spec.leaseTransitions", "FieldValueInvalid")
        ]
    );
    assert_eq!(errs[0].message, "Invalid value: 0: must be greater than 0");
}

#[test]
fn realistic_replicaset_pod_is_valid_and_keeps_its_values() {
    let r = res("", "pods");
    let sent = json!({
        "metadata": {"name": "web-7f9c6d5b8-abcde", "namespace": "shop", "uid": "u",
            "labels": {"app": "web", "pod-template-hash": "7f9c6d5b8"},
            "annotations": {"prometheus.io/scrape": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "web-7f9c6d5b8", "uid": "4f1c", "controller": true}]},
        "spec": {
            "containers": [{
                "name": "web", "image": "registry.example.com/shop/web:1.24.3",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"cpu": "500m", "memory": "256Mi"}},
                "volumeMounts": [{"name": "config", "mountPath": "/etc/web"}],
            }],
            "volumes": [{"name": "config", "configMap": {"name": "web-config"}}],
            "nodeName": "edge-node-3",
            "serviceAccountName": "default",
        },
    });
    let (p, errs) = create(r, sent.clone());
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(p["spec"]["nodeName"], "edge-node-3");
    assert_eq!(
        p["spec"]["containers"][0]["env"][0]["valueFrom"]["fieldRef"]["apiVersion"],
        "v1"
    );
    assert_eq!(p["status"]["qosClass"], "Burstable");
    assert_eq!(p["metadata"], sent["metadata"]);
    // Two controllers are one too many.
    let mut two = sent;
    let owner = two["metadata"]["ownerReferences"][0].clone();
    two["metadata"]["ownerReferences"]
        .as_array_mut()
        .unwrap()
        .push(owner);
    assert_eq!(
        fields(&create(r, two).1),
        [("metadata.ownerReferences", "FieldValueInvalid")]
    );
}

#[test]
fn namespace_finalizer_is_added_on_create_only() {
    let r = res("", "namespaces");
    let (n, _) = create(
        r,
        json!({"metadata": {"name": "a"}, "spec": {"finalizers": ["example.com/x"]}}),
    );
    assert_eq!(
        n["spec"]["finalizers"],
        json!(["example.com/x", "kubernetes"])
    );
    // Finalizing drops it; an update does not bring it back.
    let mut finalized = n.clone();
    finalized["spec"] = json!({});
    default_update(r, &n, &mut finalized);
    assert!(finalized["spec"].get("finalizers").is_none(), "{finalized}");
    assert!(validate_update(r, &n, &finalized).is_empty());
}

#[test]
fn rbac_objects_are_validated_and_defaulted_as_upstream() {
    use crate::validation::{default_object, validate_update};
    let role = registry::lookup("rbac.authorization.k8s.io", "v1", "roles").unwrap();
    let cluster_role = registry::lookup("rbac.authorization.k8s.io", "v1", "clusterroles").unwrap();
    let rb = registry::lookup("rbac.authorization.k8s.io", "v1", "rolebindings").unwrap();
    let crb = registry::lookup("rbac.authorization.k8s.io", "v1", "clusterrolebindings").unwrap();
    let fields = |causes: Vec<Cause>| {
        causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect::<Vec<_>>()
    };

    let ok = json!({"metadata": {"name": "system:reader", "namespace": "d"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]});
    assert!(
        validate_create(role, &ok).is_empty(),
        "RBAC names may hold colons"
    );
    let bad = json!({"metadata": {"name": "r", "namespace": "d"},
        "rules": [{"verbs": []}, {"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]});
    assert_eq!(
        fields(validate_create(role, &bad)),
        [
            "rules[0].verbs: Required value: verbs must contain at least one value",
            "rules[0].apiGroups: Required value: resource rules must supply at least one api group",
            "rules[0].resources: Required value: resource rules must supply at least one resource",
            "rules[1].nonResourceURLs: Invalid value: [\"/healthz\"]: namespaced rules cannot apply to non-resource URLs",
        ]
    );
    let urls = json!({"metadata": {"name": "r"},
        "rules": [{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]});
    assert!(validate_create(cluster_role, &urls).is_empty());

    let mut binding = json!({"metadata": {"name": "b", "namespace": "d"},
        "roleRef": {"kind": "Role", "name": "r"},
        "subjects": [{"kind": "User", "name": "alice"}, {"kind": "ServiceAccount", "name": "sa"}]});
    default_object(rb, &mut binding);
    assert_eq!(binding["roleRef"]["apiGroup"], "rbac.authorization.k8s.io");
    assert_eq!(
        binding["subjects"][0]["apiGroup"],
        "rbac.authorization.k8s.io"
    );
    assert!(binding["subjects"][1].get("apiGroup").is_none());
    assert!(validate_create(rb, &binding).is_empty());
    let mut cluster_binding = binding.clone();
    cluster_binding["metadata"] = json!({"name": "b"});
    cluster_binding["subjects"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kind": "Robot", "name": "x"}));
    assert_eq!(
        fields(validate_create(crb, &cluster_binding)),
        [
            "roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\"",
            "subjects[1].namespace: Required value",
            "subjects[2].kind: Unsupported value: \"Robot\": supported values: \"ServiceAccount\", \"User\", \"Group\"",
        ]
    );
    let mut moved = binding.clone();
    moved["roleRef"]["name"] = "other".into();
    assert!(
        fields(validate_update(rb, &binding, &moved))
            .iter()
            .any(
                |e| e.starts_with("roleRef: Invalid value") && e.ends_with("cannot change roleRef")
            )
    );
}
