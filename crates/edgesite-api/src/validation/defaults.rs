//! Upstream's defaulting (`pkg/apis/<group>/v1/defaults.go`, plus the few values the
//! `Priority`, `DefaultTolerationSeconds` and registry strategies add on create), applied to raw
//! JSON. Every function only fills what is absent, so applying it twice changes nothing.

use serde_json::{Map, Value, json};

use super::get_str;
use crate::registry::ResourceInfo;

/// Fills `m[key]` with `v` when absent or null.
fn set(m: &mut Map<String, Value>, key: &str, v: Value) {
    match m.get(key) {
        None | Some(Value::Null) => {
            m.insert(key.to_owned(), v);
        }
        Some(_) => {}
    }
}

/// `m[key]` as an object, created (as `{}`) when absent or null; `None` when it holds
/// something else, which validation reports.
fn obj<'a>(m: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    set(m, key, json!({}));
    m.get_mut(key).and_then(Value::as_object_mut)
}

/// `m[key]` as an existing object.
fn existing<'a>(m: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    m.get_mut(key).and_then(Value::as_object_mut)
}

/// Each object of the list `m[key]`.
fn each<'a>(
    m: &'a mut Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    m.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

/// Defaults `obj`; `create` adds what upstream's create strategies add only once (a
/// namespace's `kubernetes` finalizer, which may later be removed through `finalize`).
pub(super) fn apply(r: &ResourceInfo, obj: &mut Value, create: bool) {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let uid = obj
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let Some(o) = obj.as_object_mut() else {
        return;
    };
    match (r.group, r.kind) {
        ("", "Pod") => pod(o),
        ("", "Service") => {
            if let Some(spec) = obj_spec(o) {
                service_spec(spec);
            }
        }
        ("", "Secret") => {
            set(o, "type", json!("Opaque"));
            secret_string_data(o);
        }
        ("", "Namespace") => namespace(o, &name, create),
        (crate::rbac::GROUP, "RoleBinding" | "ClusterRoleBinding") => {
            super::rbac::default_binding(o);
        }
        ("", "Node") => node(o),
        ("", "Endpoints") => {
            for subset in each(o, "subsets") {
                for p in each(subset, "ports") {
                    set(p, "protocol", json!("TCP"));
                }
            }
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            for p in each(o, "ports") {
                set(p, "protocol", json!("TCP"));
                set(p, "name", json!(""));
            }
        }
        ("", "Event") => {
            // The involved object of a namespaced event lives in the event's namespace.
            let ns = o
                .get("metadata")
                .and_then(|m| get_str(m, "namespace"))
                .map(str::to_owned);
            if let (Some(ns), Some(io)) = (ns, existing(o, "involvedObject")) {
                set(io, "namespace", json!(ns));
            }
        }
        ("apps", kind @ ("Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet")) => {
            if let Some(spec) = obj_spec(o) {
                apps_spec(kind, spec);
            }
        }
        ("batch", "Job") => {
            if let Some(spec) = obj_spec(o) {
                job_spec(spec, &name, &uid);
            }
        }
        ("batch", "CronJob") => {
            if let Some(spec) = obj_spec(o) {
                set(spec, "concurrencyPolicy", json!("Allow"));
                set(spec, "suspend", json!(false));
                set(spec, "successfulJobsHistoryLimit", json!(3));
                set(spec, "failedJobsHistoryLimit", json!(1));
                if let Some(jt) = existing(spec, "jobTemplate")
                    && let Some(js) = existing(jt, "spec")
                {
                    template(js);
                }
            }
        }
        _ => {}
    }
}

/// `stringData` is write-only: merged into `data` (base64-encoded, winning over `data`)
/// and dropped, as upstream's conversion does.
fn secret_string_data(o: &mut Map<String, Value>) {
    use base64::Engine as _;
    let Some(Value::Object(sd)) = o.remove("stringData") else {
        return;
    };
    if let Some(data) = obj(o, "data") {
        for (k, v) in sd {
            if let Some(text) = v.as_str() {
                let encoded = base64::engine::general_purpose::STANDARD.encode(text);
                data.insert(k, json!(encoded));
            }
        }
    }
}

fn obj_spec(o: &mut Map<String, Value>) -> Option<&mut Map<String, Value>> {
    obj(o, "spec")
}

fn pod(o: &mut Map<String, Value>) {
    let Some(spec) = obj_spec(o) else {
        return;
    };
    pod_spec(spec);
    // Admission on create (Priority, DefaultTolerationSeconds) as a cluster without
    // priority classes applies it.
    if spec.get("priorityClassName").is_none() {
        set(spec, "priority", json!(0));
        set(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    }
    let tolerations = spec
        .entry("tolerations")
        .or_insert_with(|| json!([]))
        .as_array_mut();
    if let Some(t) = tolerations {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let present = t.iter().any(|x| {
                get_str(x, "key") == Some(key)
                    && matches!(get_str(x, "effect"), None | Some("" | "NoExecute"))
            });
            if !present {
                t.push(
                    json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                              "tolerationSeconds": 300}),
                );
            }
        }
    }
    let qos = qos_class(spec);
    if let Some(status) = obj(o, "status") {
        set(status, "phase", json!("Pending"));
        set(status, "qosClass", json!(qos));
    }
}

/// The pod's QoS class (upstream `qos.GetPodQOS`, simplified to the usual cases: compares
/// the textual quantities, which is what equal requests and limits look like in practice).
fn qos_class(spec: &Map<String, Value>) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        let relevant = |m: Option<&Map<String, Value>>| {
            m.is_some_and(|m| m.keys().any(|k| k == "cpu" || k == "memory"))
        };
        any |= relevant(requests) || relevant(limits);
        for res in ["cpu", "memory"] {
            let l = limits.and_then(|m| m.get(res));
            let q = requests.and_then(|m| m.get(res)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// `SetDefaults_PodSpec` and what it cascades to (containers, volumes, probes).
fn pod_spec(spec: &mut Map<String, Value>) {
    set(spec, "dnsPolicy", json!("ClusterFirst"));
    set(spec, "restartPolicy", json!("Always"));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set(spec, "securityContext", json!({}));
    set(spec, "schedulerName", json!("default-scheduler"));
    set(spec, "enableServiceLinks", json!(true));
    let host_network = spec.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    for key in ["initContainers", "containers", "ephemeralContainers"] {
        for c in each(spec, key) {
            container(c, host_network);
        }
    }
    for v in each(spec, "volumes") {
        volume(v);
    }
}

fn container(c: &mut Map<String, Value>, host_network: bool) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    set(c, "imagePullPolicy", json!(pull_policy(image)));
    set(c, "terminationMessagePath", json!("/dev/termination-log"));
    set(c, "terminationMessagePolicy", json!("File"));
    set(c, "resources", json!({}));
    for p in each(c, "ports") {
        set(p, "protocol", json!("TCP"));
        if host_network && let Some(cp) = p.get("containerPort").cloned() {
            set(p, "hostPort", cp);
        }
    }
    for e in each(c, "env") {
        if let Some(vf) = existing(e, "valueFrom")
            && let Some(fr) = existing(vf, "fieldRef")
        {
            set(fr, "apiVersion", json!("v1"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = existing(c, probe) {
            set(p, "timeoutSeconds", json!(1));
            set(p, "periodSeconds", json!(10));
            set(p, "successThreshold", json!(1));
            set(p, "failureThreshold", json!(3));
            if let Some(h) = existing(p, "httpGet") {
                set(h, "scheme", json!("HTTP"));
                set(h, "path", json!("/"));
            }
        }
    }
}

/// `Always` for `:latest` or an untagged image, `IfNotPresent` otherwise; a digest counts
/// as a tag.
fn pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn volume(v: &mut Map<String, Value>) {
    const SOURCES: &[&str] = &[
        "hostPath",
        "emptyDir",
        "gcePersistentDisk",
        "awsElasticBlockStore",
        "gitRepo",
        "secret",
        "nfs",
        "iscsi",
        "glusterfs",
        "persistentVolumeClaim",
        "rbd",
        "flexVolume",
        "cinder",
        "cephfs",
        "flocker",
        "downwardAPI",
        "fc",
        "azureFile",
        "configMap",
        "vsphereVolume",
        "quobyte",
        "azureDisk",
        "photonPersistentDisk",
        "projected",
        "portworxVolume",
        "scaleIO",
        "storageos",
        "csi",
        "ephemeral",
        "image",
    ];
    if !SOURCES.iter().any(|s| v.contains_key(*s)) {
        v.insert("emptyDir".into(), json!({}));
    }
    for src in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(s) = existing(v, src) {
            set(s, "defaultMode", json!(420));
        }
    }
    if let Some(h) = existing(v, "hostPath") {
        set(h, "type", json!(""));
    }
}

/// The pod template of a workload spec.
fn template(spec: &mut Map<String, Value>) {
    if let Some(t) = obj(spec, "template")
        && let Some(ps) = obj(t, "spec")
    {
        pod_spec(ps);
    }
}

fn apps_spec(kind: &str, spec: &mut Map<String, Value>) {
    template(spec);
    match kind {
        "Deployment" => {
            set(spec, "replicas", json!(1));
            set(spec, "revisionHistoryLimit", json!(10));
            set(spec, "progressDeadlineSeconds", json!(600));
            if let Some(s) = obj(spec, "strategy") {
                set(s, "type", json!("RollingUpdate"));
                if s.get("type").and_then(Value::as_str) == Some("RollingUpdate")
                    && let Some(ru) = obj(s, "rollingUpdate")
                {
                    set(ru, "maxUnavailable", json!("25%"));
                    set(ru, "maxSurge", json!("25%"));
                }
            }
        }
        "ReplicaSet" => set(spec, "replicas", json!(1)),
        "DaemonSet" => {
            set(spec, "revisionHistoryLimit", json!(10));
            if let Some(s) = obj(spec, "updateStrategy") {
                set(s, "type", json!("RollingUpdate"));
                if s.get("type").and_then(Value::as_str) == Some("RollingUpdate")
                    && let Some(ru) = obj(s, "rollingUpdate")
                {
                    set(ru, "maxUnavailable", json!(1));
                    set(ru, "maxSurge", json!(0));
                }
            }
        }
        "StatefulSet" => {
            set(spec, "replicas", json!(1));
            set(spec, "podManagementPolicy", json!("OrderedReady"));
            set(spec, "revisionHistoryLimit", json!(10));
            if let Some(s) = obj(spec, "updateStrategy") {
                set(s, "type", json!("RollingUpdate"));
                if s.get("type").and_then(Value::as_str) == Some("RollingUpdate")
                    && let Some(ru) = obj(s, "rollingUpdate")
                {
                    set(ru, "partition", json!(0));
                }
            }
            if let Some(p) = obj(spec, "persistentVolumeClaimRetentionPolicy") {
                set(p, "whenDeleted", json!("Retain"));
                set(p, "whenScaled", json!("Retain"));
            }
            for t in each(spec, "volumeClaimTemplates") {
                if let Some(s) = obj(t, "spec") {
                    set(s, "volumeMode", json!("Filesystem"));
                }
            }
        }
        _ => {}
    }
}

/// Upstream's Job label keys: the current ones and the legacy unprefixed ones, both set on
/// the template of a Job whose selector the server generates.
pub(crate) const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
const LEGACY_CONTROLLER_UID_LABEL: &str = "controller-uid";
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
const LEGACY_JOB_NAME_LABEL: &str = "job-name";

fn job_spec(spec: &mut Map<String, Value>, name: &str, uid: &str) {
    template(spec);
    if spec.get("completions").is_none_or(Value::is_null)
        && spec.get("parallelism").is_none_or(Value::is_null)
    {
        set(spec, "completions", json!(1));
    }
    set(spec, "parallelism", json!(1));
    if spec
        .get("backoffLimitPerIndex")
        .is_some_and(|v| !v.is_null())
    {
        set(spec, "backoffLimit", json!(i32::MAX));
    } else {
        set(spec, "backoffLimit", json!(6));
    }
    set(spec, "completionMode", json!("NonIndexed"));
    set(spec, "suspend", json!(false));
    let has_failure_policy = spec.get("podFailurePolicy").is_some_and(|v| !v.is_null());
    set(
        spec,
        "podReplacementPolicy",
        json!(if has_failure_policy {
            "Failed"
        } else {
            "TerminatingOrFailed"
        }),
    );
    set(spec, "manualSelector", json!(false));
    let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
    // The selector is generated from the uid; without one (not yet created) there is
    // nothing to generate.
    if manual || uid.is_empty() {
        return;
    }
    if let Some(labels) = obj(spec, "template")
        .and_then(|t| obj(t, "metadata"))
        .and_then(|m| obj(m, "labels"))
    {
        set(labels, LEGACY_CONTROLLER_UID_LABEL, json!(uid));
        set(labels, CONTROLLER_UID_LABEL, json!(uid));
        set(labels, LEGACY_JOB_NAME_LABEL, json!(name));
        set(labels, JOB_NAME_LABEL, json!(name));
    }
    if let Some(ml) = obj(spec, "selector").and_then(|s| obj(s, "matchLabels")) {
        set(ml, CONTROLLER_UID_LABEL, json!(uid));
    }
}

fn service_spec(spec: &mut Map<String, Value>) {
    set(spec, "type", json!("ClusterIP"));
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    set(spec, "sessionAffinity", json!("None"));
    if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP")
        && let Some(c) = obj(spec, "sessionAffinityConfig")
        && let Some(ip) = obj(c, "clientIP")
    {
        set(ip, "timeoutSeconds", json!(10800));
    }
    for p in each(spec, "ports") {
        set(p, "protocol", json!("TCP"));
        if let Some(port) = p.get("port").cloned() {
            set(p, "targetPort", port);
        }
    }
    if ty == "ExternalName" {
        return;
    }
    set(spec, "internalTrafficPolicy", json!("Cluster"));
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        set(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    set(spec, "ipFamilyPolicy", json!("SingleStack"));
    set(spec, "ipFamilies", json!(["IPv4"]));
}

fn namespace(o: &mut Map<String, Value>, name: &str, create: bool) {
    if create && let Some(spec) = obj_spec(o) {
        let finalizers = spec.entry("finalizers").or_insert_with(|| json!([]));
        if let Some(list) = finalizers.as_array_mut()
            && !list.iter().any(|f| f == "kubernetes")
        {
            list.push(json!("kubernetes"));
        }
    }
    if let Some(status) = obj(o, "status") {
        set(status, "phase", json!("Active"));
    }
    if !name.is_empty()
        && let Some(labels) = obj(o, "metadata").and_then(|m| obj(m, "labels"))
    {
        labels.insert("kubernetes.io/metadata.name".into(), json!(name));
    }
}

fn node(o: &mut Map<String, Value>) {
    if let Some(status) = existing(o, "status")
        && let Some(capacity) = status.get("capacity").cloned()
    {
        set(status, "allocatable", capacity);
    }
}

/// Values the server allocated that a replacement may omit: carried over from `old`.
pub(super) fn carry_allocated(r: &ResourceInfo, old: &Value, new: &mut Value) {
    if (r.group, r.kind) != ("", "Service") {
        return;
    }
    let (Some(os), Some(ns)) = (
        old.get("spec").and_then(Value::as_object),
        new.get_mut("spec").and_then(Value::as_object_mut),
    ) else {
        return;
    };
    let old_type = os
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let new_type = ns
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_owned();
    if old_type == "ExternalName" || new_type == "ExternalName" {
        return;
    }
    for key in ["clusterIP", "clusterIPs"] {
        let missing = match ns.get(key) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            _ => false,
        };
        if missing && let Some(v) = os.get(key) {
            ns.insert(key.into(), v.clone());
        }
    }
    // Node ports: matched by port number and protocol.
    if matches!(new_type.as_str(), "NodePort" | "LoadBalancer") {
        let old_ports = os
            .get("ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for p in each(ns, "ports") {
            if p.get("nodePort")
                .is_some_and(|v| v.as_i64().unwrap_or(0) != 0)
            {
                continue;
            }
            let proto = |v: &Value| get_str(v, "protocol").unwrap_or("TCP").to_owned();
            let this = Value::Object(p.clone());
            if let Some(np) = old_ports
                .iter()
                .find(|o| o.get("port") == this.get("port") && proto(o) == proto(&this))
                .and_then(|o| o.get("nodePort"))
            {
                p.insert("nodePort".into(), np.clone());
            }
        }
    }
}
