use serde_json::{Value, json};

use super::*;
use crate::registry;

const NOW: &str = "2024-06-01T12:00:00Z";

fn opts() -> TableOptions {
    TableOptions::at(parse_rfc3339(NOW).unwrap())
}

fn resource(group: &str, kind: &str) -> &'static ResourceInfo {
    registry::all()
        .iter()
        .find(|r| r.group == group && r.kind == kind)
        .unwrap()
}

/// The cells of the single row of `obj`'s table.
fn cells(group: &str, kind: &str, obj: Value) -> Vec<Value> {
    let t = table_for(resource(group, kind), &[&obj], &opts());
    t["rows"][0]["cells"].as_array().unwrap().clone()
}

fn column_names(group: &str, kind: &str) -> Vec<(String, String, i64)> {
    let t = table_for(resource(group, kind), &[], &opts());
    t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["type"].as_str().unwrap().to_owned(),
                c["priority"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn meta(name: &str, created: &str) -> Value {
    json!({"name": name, "namespace": "default", "uid": "u1", "resourceVersion": "7",
           "creationTimestamp": created, "labels": {"app": "web"}})
}

#[test]
fn rfc3339_parsing() {
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800));
    assert_eq!(parse_rfc3339("2024-06-01T12:00:00Z"), Some(1_717_243_200));
    assert_eq!(
        parse_rfc3339("2024-06-01T14:00:00.123456+02:00"),
        Some(1_717_243_200)
    );
    assert_eq!(
        parse_rfc3339("2024-06-01T11:30:00-00:30"),
        Some(1_717_243_200)
    );
    for bad in [
        "",
        "2024-06-01",
        "2024-13-01T00:00:00Z",
        "2024-06-01T12:00:00",
        "x024-06-01T12:00:00Z",
    ] {
        assert_eq!(parse_rfc3339(bad), None, "{bad}");
    }
}

#[test]
fn human_duration_buckets() {
    let cases: &[(i64, &str)] = &[
        (-5, "<invalid>"),
        (-1, "0s"),
        (0, "0s"),
        (5, "5s"),
        (119, "119s"),
        (120, "2m"),
        (150, "2m30s"),
        (599, "9m59s"),
        (600, "10m"),
        (179 * 60 + 59, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 5 * 60, "3h5m"),
        (8 * 3600, "8h"),
        (47 * 3600 + 59 * 60, "47h"),
        (48 * 3600, "2d"),
        (51 * 3600, "2d3h"),
        (8 * 86_400, "8d"),
        (45 * 86_400 + 3600, "45d"),
        (729 * 86_400, "729d"),
        (730 * 86_400, "2y"),
        (735 * 86_400, "2y5d"),
        (9 * 365 * 86_400 + 40 * 86_400, "9y"),
    ];
    for (secs, want) in cases {
        assert_eq!(human_duration(*secs), *want, "{secs}s");
    }
}

#[test]
fn table_shape_and_partial_metadata_rows() {
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": meta("cfg", "2024-06-01T11:59:55Z"),
        "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}});
    let mut o = opts();
    o.resource_version = Some("42".into());
    o.continue_token = Some("tok".into());
    let t = table_for(resource("", "ConfigMap"), &[&cm], &o);
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(
        t["metadata"],
        json!({"resourceVersion": "42", "continue": "tok"})
    );
    assert_eq!(
        t["columnDefinitions"][0],
        json!({"name": "Name", "type": "string", "format": "name",
               "description": NAME.description, "priority": 0})
    );
    assert_eq!(t["columnDefinitions"][1]["format"], "");
    assert_eq!(
        t["rows"],
        json!([{"cells": ["cfg", 3, "5s"], "object": {
            "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": meta("cfg", "2024-06-01T11:59:55Z")}}])
    );

    o.include_object = IncludeObject::Object;
    let t = table_for(resource("", "ConfigMap"), &[&cm], &o);
    assert_eq!(t["rows"][0]["object"], cm);

    o.include_object = IncludeObject::None;
    o.no_headers = true;
    o.resource_version = None;
    o.continue_token = None;
    let t = table_for(resource("", "ConfigMap"), &[&cm], &o);
    assert!(t.get("columnDefinitions").is_none());
    assert!(t["rows"][0].get("object").is_none());
    assert_eq!(t["metadata"], json!({}));

    let t = table_for(resource("", "ConfigMap"), &[], &opts());
    assert_eq!(t["rows"], json!([]));
    assert_eq!(
        IncludeObject::parse("Metadata"),
        Some(IncludeObject::Metadata)
    );
    assert_eq!(IncludeObject::parse("bogus"), None);
}

fn pod(status: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta("web-1", "2024-06-01T11:00:00Z"),
        "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "nginx"}, {"name": "side", "image": "envoy"}]},
        "status": status})
}

#[test]
fn pod_columns() {
    let cols = column_names("", "Pod");
    let names: Vec<&str> = cols.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "Name",
            "Ready",
            "Status",
            "Restarts",
            "Age",
            "IP",
            "Node",
            "Nominated Node",
            "Readiness Gates"
        ]
    );
    assert_eq!(cols[4].2, 0);
    assert_eq!(cols[5].2, 1);
}

#[test]
fn pod_cells() {
    let running = pod(json!({
        "phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}],
        "conditions": [{"type": "Ready", "status": "False"}],
        "containerStatuses": [
            {"name": "app", "ready": true, "restartCount": 2, "state": {"running": {"startedAt": "2024-06-01T11:55:00Z"}},
             "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-06-01T11:55:00Z"}}},
            {"name": "side", "ready": false, "restartCount": 0, "state": {"running": {}}}]}));
    let crash = pod(json!({
        "phase": "Running",
        "containerStatuses": [
            {"name": "app", "ready": false, "restartCount": 7,
             "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2024-06-01T09:00:00Z"}}},
            {"name": "side", "ready": true, "restartCount": 0, "state": {"running": {}}}]}));
    let pending = pod(json!({"phase": "Pending"}));
    let mut completed = pod(json!({
        "phase": "Succeeded",
        "containerStatuses": [
            {"name": "app", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
            {"name": "side", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}));
    completed["metadata"]["deletionTimestamp"] = json!("2024-06-01T11:59:00Z");
    let mut terminating = running.clone();
    terminating["metadata"]["deletionTimestamp"] = json!("2024-06-01T11:59:00Z");
    let oom = pod(json!({"phase": "Running", "containerStatuses": [
        {"name": "app", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}},
        {"name": "side", "state": {"terminated": {"exitCode": 0, "signal": 9}}}]}));
    let mut init = pod(json!({"phase": "Pending", "initContainerStatuses": [
        {"name": "setup", "restartCount": 0, "state": {"terminated": {"exitCode": 0}}},
        {"name": "migrate", "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}]}));
    init["spec"]["initContainers"] = json!([{"name": "setup"}, {"name": "migrate"}]);
    let mut init_crash = init.clone();
    init_crash["status"]["initContainerStatuses"][1] = json!({"name": "migrate", "restartCount": 3,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-06-01T11:58:00Z"}}});
    let mut init_failed = init.clone();
    init_failed["status"]["initContainerStatuses"][1] =
        json!({"name": "migrate", "state": {"terminated": {"exitCode": 2}}});
    let mut sidecar = pod(json!({"phase": "Running",
        "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}],
        "initContainerStatuses": [{"name": "proxy", "started": true, "ready": true, "restartCount": 1,
            "state": {"running": {}}, "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-06-01T10:00:00Z"}}}],
        "containerStatuses": [
            {"name": "app", "ready": true, "state": {"running": {}}},
            {"name": "side", "ready": true, "state": {"running": {}}}]}));
    sidecar["spec"]["initContainers"] = json!([{"name": "proxy", "restartPolicy": "Always"}]);
    sidecar["spec"]["readinessGates"] =
        json!([{"conditionType": "Ready"}, {"conditionType": "x/lb"}]);
    sidecar["status"]["nominatedNodeName"] = json!("n2");
    let gated = pod(json!({"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}));

    let cases: Vec<(&str, Value, Value)> = vec![
        (
            "running 1/2, restart 5m ago",
            running,
            json!([
                "web-1",
                "1/2",
                "Running",
                "2 (5m ago)",
                "60m",
                "10.0.0.5",
                "n1",
                "<none>",
                "<none>"
            ]),
        ),
        (
            "crash loop",
            crash,
            json!([
                "web-1",
                "1/2",
                "CrashLoopBackOff",
                "7 (3h ago)",
                "60m",
                "<none>",
                "n1",
                "<none>",
                "<none>"
            ]),
        ),
        (
            "pending",
            pending,
            json!([
                "web-1", "0/2", "Pending", "0", "60m", "<none>", "n1", "<none>", "<none>"
            ]),
        ),
        (
            "completed, deleted",
            completed,
            json!([
                "web-1",
                "0/2",
                "Completed",
                "0",
                "60m",
                "<none>",
                "n1",
                "<none>",
                "<none>"
            ]),
        ),
        (
            "terminating",
            terminating,
            json!([
                "web-1",
                "1/2",
                "Terminating",
                "2 (5m ago)",
                "60m",
                "10.0.0.5",
                "n1",
                "<none>",
                "<none>"
            ]),
        ),
        (
            "oom and signal",
            oom,
            json!([
                "web-1",
                "0/2",
                "OOMKilled",
                "0",
                "60m",
                "<none>",
                "n1",
                "<none>",
                "<none>"
            ]),
        ),
        (
            "init progress",
            init,
            json!([
                "web-1", "0/2", "Init:1/2", "0", "60m", "<none>", "n1", "<none>", "<none>"
            ]),
        ),
        (
            "init crash loop",
            init_crash,
            json!([
                "web-1",
                "0/2",
                "Init:CrashLoopBackOff",
                "3 (2m ago)",
                "60m",
                "<none>",
                "n1",
                "<none>",
                "<none>"
            ]),
        ),
        (
            "init failed",
            init_failed,
            json!([
                "web-1",
                "0/2",
                "Init:ExitCode:2",
                "0",
                "60m",
                "<none>",
                "n1",
                "<none>",
                "<none>"
            ]),
        ),
        (
            "sidecar",
            sidecar,
            json!([
                "web-1",
                "3/3",
                "Running",
                "1 (120m ago)",
                "60m",
                "<none>",
                "n1",
                "n2",
                "1/2"
            ]),
        ),
        (
            "scheduling gated",
            gated,
            json!([
                "web-1",
                "0/2",
                "SchedulingGated",
                "0",
                "60m",
                "<none>",
                "n1",
                "<none>",
                "<none>"
            ]),
        ),
    ];
    for (what, obj, want) in cases {
        assert_eq!(Value::Array(cells("", "Pod", obj)), want, "{what}");
    }

    let oom_signal = pod(json!({"phase": "Running", "containerStatuses": [
        {"name": "app", "state": {"running": {}}, "ready": true},
        {"name": "side", "state": {"terminated": {"exitCode": 0, "signal": 9}}}]}));
    // Status comes from the first container reporting a reason, scanning from the last.
    assert_eq!(cells("", "Pod", oom_signal)[2], "Signal:9");
}

#[test]
fn pod_row_conditions() {
    let done = pod(json!({"phase": "Succeeded"}));
    let t = table_for(resource("", "Pod"), &[&done], &opts());
    assert_eq!(t["rows"][0]["conditions"][0]["type"], "Completed");
    assert_eq!(t["rows"][0]["conditions"][0]["reason"], "Succeeded");
    let running = pod(json!({"phase": "Running"}));
    let t = table_for(resource("", "Pod"), &[&running], &opts());
    assert!(t["rows"][0].get("conditions").is_none());
}

#[test]
fn node_cells() {
    let names: Vec<String> = column_names("", "Node").into_iter().map(|c| c.0).collect();
    assert_eq!(
        names,
        [
            "Name",
            "Status",
            "Roles",
            "Age",
            "Version",
            "Internal-IP",
            "External-IP",
            "OS-Image",
            "Kernel-Version",
            "Container-Runtime"
        ]
    );
    let mut node = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n1", "creationTimestamp": "2024-05-30T09:00:00Z",
            "labels": {"node-role.kubernetes.io/worker": "", "node-role.kubernetes.io/control-plane": "", "kubernetes.io/hostname": "n1"}},
        "spec": {"unschedulable": true},
        "status": {"conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
            "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "192.168.1.10"}],
            "nodeInfo": {"kubeletVersion": "v1.32.0-edgesite", "osImage": "Debian GNU/Linux 12", "kernelVersion": "6.1.0", "containerRuntimeVersion": "containerd://1.7.0"}}});
    assert_eq!(
        Value::Array(cells("", "Node", node.clone())),
        json!([
            "n1",
            "Ready,SchedulingDisabled",
            "control-plane,worker",
            "2d3h",
            "v1.32.0-edgesite",
            "192.168.1.10",
            "<none>",
            "Debian GNU/Linux 12",
            "6.1.0",
            "containerd://1.7.0"
        ])
    );
    node["spec"] = json!({});
    node["status"]["conditions"][1]["status"] = json!("Unknown");
    assert_eq!(cells("", "Node", node.clone())[1], "NotReady");
    node["status"] = json!({});
    node["metadata"]["labels"] = json!({"kubernetes.io/role": "edge"});
    let c = cells("", "Node", node.clone());
    assert_eq!(c[1], "Unknown");
    assert_eq!(c[2], "edge");
    assert_eq!(c[7], "<unknown>");
    node["metadata"]["labels"] = json!({});
    assert_eq!(cells("", "Node", node)[2], "<none>");
}

fn workload(kind: &str, spec: Value, status: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": kind, "metadata": meta("web", "2024-06-01T11:57:30Z"),
        "spec": spec, "status": status})
}

fn template() -> Value {
    json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
        {"name": "app", "image": "nginx:1.27"}, {"name": "log", "image": "busybox"}]}})
}

#[test]
fn deployment_and_replicaset_cells() {
    let names: Vec<(String, String, i64)> = column_names("apps", "Deployment");
    assert_eq!(
        names,
        [
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1)
        ]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c))
    );
    let d = workload(
        "Deployment",
        json!({"replicas": 3, "selector": {"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]},
                                 {"key": "legacy", "operator": "DoesNotExist"}]},
            "template": template()}),
        json!({"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}),
    );
    assert_eq!(
        Value::Array(cells("apps", "Deployment", d)),
        json!([
            "web",
            "2/3",
            3,
            2,
            "2m30s",
            "app,log",
            "nginx:1.27,busybox",
            "app=web,!legacy,tier in (a,b)"
        ])
    );
    let fresh = workload("Deployment", json!({"template": template()}), json!({}));
    let c = cells("apps", "Deployment", fresh);
    assert_eq!(c[1], "0/1");
    assert_eq!(c[2], 0);
    assert_eq!(c[7], "");

    let names: Vec<String> = column_names("apps", "ReplicaSet")
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(
        names,
        [
            "Name",
            "Desired",
            "Current",
            "Ready",
            "Age",
            "Containers",
            "Images",
            "Selector"
        ]
    );
    let rs = workload(
        "ReplicaSet",
        json!({"replicas": 2, "selector": {"matchLabels": {"app": "web", "pod-template-hash": "abc"}}, "template": template()}),
        json!({"replicas": 2, "readyReplicas": 1}),
    );
    assert_eq!(
        Value::Array(cells("apps", "ReplicaSet", rs)),
        json!([
            "web",
            2,
            2,
            1,
            "2m30s",
            "app,log",
            "nginx:1.27,busybox",
            "app=web,pod-template-hash=abc"
        ])
    );
}

#[test]
fn daemonset_statefulset_controllerrevision_cells() {
    let mut tpl = template();
    tpl["spec"]["nodeSelector"] = json!({"kubernetes.io/os": "linux"});
    let ds = workload(
        "DaemonSet",
        json!({"selector": {"matchLabels": {"app": "web"}}, "template": tpl}),
        json!({"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2,
               "updatedNumberScheduled": 3, "numberAvailable": 2}),
    );
    assert_eq!(
        Value::Array(cells("apps", "DaemonSet", ds)),
        json!([
            "web",
            3,
            3,
            2,
            3,
            2,
            "kubernetes.io/os=linux",
            "2m30s",
            "app,log",
            "nginx:1.27,busybox",
            "app=web"
        ])
    );
    let ss = workload(
        "StatefulSet",
        json!({"replicas": 3, "template": template()}),
        json!({"readyReplicas": 3}),
    );
    assert_eq!(
        Value::Array(cells("apps", "StatefulSet", ss)),
        json!(["web", "3/3", "2m30s", "app,log", "nginx:1.27,busybox"])
    );
    let cr = json!({"apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {"name": "web-5d4f", "creationTimestamp": "2024-06-01T11:59:00Z",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "web", "controller": true}]},
        "revision": 4});
    assert_eq!(
        Value::Array(cells("apps", "ControllerRevision", cr)),
        json!(["web-5d4f", "daemonset.apps/web", 4, "60s"])
    );
}

#[test]
fn job_and_cronjob_cells() {
    let names: Vec<String> = column_names("batch", "Job")
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(
        names,
        [
            "Name",
            "Status",
            "Completions",
            "Duration",
            "Age",
            "Containers",
            "Images",
            "Selector"
        ]
    );
    let job = |spec: Value, status: Value| {
        let mut spec = spec;
        spec["template"] = template();
        spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}});
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta("pi", "2024-06-01T11:00:00Z"),
               "spec": spec, "status": status})
    };
    let complete = job(
        json!({"completions": 1}),
        json!({"succeeded": 1,
        "startTime": "2024-06-01T11:00:00Z", "completionTime": "2024-06-01T11:00:42Z",
        "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]}),
    );
    assert_eq!(
        Value::Array(cells("batch", "Job", complete)),
        json!([
            "pi",
            "Complete",
            "1/1",
            "42s",
            "60m",
            "app,log",
            "nginx:1.27,busybox",
            "batch.kubernetes.io/controller-uid=u1"
        ])
    );
    let running = job(
        json!({"parallelism": 3}),
        json!({"succeeded": 0, "startTime": "2024-06-01T11:58:00Z"}),
    );
    let c = cells("batch", "Job", running);
    assert_eq!(
        (&c[1], &c[2], &c[3]),
        (&json!("Running"), &json!("0/1 of 3"), &json!("2m"))
    );
    let failed = job(
        json!({"completions": 5}),
        json!({"succeeded": 2,
        "conditions": [{"type": "Failed", "status": "True"}]}),
    );
    let c = cells("batch", "Job", failed);
    assert_eq!(
        (&c[1], &c[2], &c[3]),
        (&json!("Failed"), &json!("2/5"), &json!(""))
    );
    let suspended = job(
        json!({}),
        json!({"conditions": [{"type": "Suspended", "status": "True"}]}),
    );
    assert_eq!(cells("batch", "Job", suspended)[1], "Suspended");

    let names: Vec<String> = column_names("batch", "CronJob")
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(
        names,
        [
            "Name",
            "Schedule",
            "Timezone",
            "Suspend",
            "Active",
            "Last Schedule",
            "Age",
            "Containers",
            "Images",
            "Selector"
        ]
    );
    let cj = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta("hourly", "2024-05-01T12:00:00Z"),
        "spec": {"schedule": "0 * * * *", "suspend": false,
            "jobTemplate": {"spec": {"template": template()}}},
        "status": {"active": [{"name": "hourly-1"}], "lastScheduleTime": "2024-06-01T11:00:00Z"}});
    assert_eq!(
        Value::Array(cells("batch", "CronJob", cj)),
        json!([
            "hourly",
            "0 * * * *",
            "<none>",
            "False",
            1,
            "60m",
            "31d",
            "app,log",
            "nginx:1.27,busybox",
            ""
        ])
    );
}

fn service(spec: Value, status: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": meta("web", "2024-06-01T09:00:00Z"),
        "spec": spec, "status": status})
}

#[test]
fn service_cells() {
    let names: Vec<String> = column_names("", "Service")
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(
        names,
        [
            "Name",
            "Type",
            "Cluster-IP",
            "External-IP",
            "Port(s)",
            "Age",
            "Selector"
        ]
    );
    let cases = [
        (
            service(
                json!({"type": "NodePort", "clusterIP": "10.43.0.10", "clusterIPs": ["10.43.0.10"],
            "selector": {"app": "web", "tier": "fe"},
            "ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "nodePort": 30443, "protocol": "TCP"},
                      {"port": 53, "protocol": "UDP"}]}),
                json!({}),
            ),
            json!([
                "web",
                "NodePort",
                "10.43.0.10",
                "<none>",
                "80/TCP,443:30443/TCP,53/UDP",
                "3h",
                "app=web,tier=fe"
            ]),
        ),
        (
            service(json!({"clusterIP": "None", "ports": []}), json!({})),
            json!([
                "web",
                "ClusterIP",
                "None",
                "<none>",
                "<none>",
                "3h",
                "<none>"
            ]),
        ),
        (
            service(
                json!({"type": "LoadBalancer", "clusterIP": "10.43.0.11", "ports": [{"port": 80, "nodePort": 31000}]}),
                json!({"loadBalancer": {}}),
            ),
            json!([
                "web",
                "LoadBalancer",
                "10.43.0.11",
                "<pending>",
                "80:31000/TCP",
                "3h",
                "<none>"
            ]),
        ),
        (
            service(
                json!({"type": "LoadBalancer", "clusterIP": "10.43.0.11", "externalIPs": ["1.2.3.4"],
                        "ports": [{"port": 80, "nodePort": 31000}]}),
                json!({"loadBalancer": {"ingress": [{"ip": "192.168.1.200"}, {"hostname": "lb.example"}]}}),
            ),
            json!([
                "web",
                "LoadBalancer",
                "10.43.0.11",
                "192.168.1.200,lb.example,1.2.3.4",
                "80:31000/TCP",
                "3h",
                "<none>"
            ]),
        ),
        (
            service(
                json!({"type": "ExternalName", "externalName": "db.example.com"}),
                json!({}),
            ),
            json!([
                "web",
                "ExternalName",
                "<none>",
                "db.example.com",
                "<none>",
                "3h",
                "<none>"
            ]),
        ),
    ];
    for (svc, want) in cases {
        assert_eq!(Value::Array(cells("", "Service", svc)), want);
    }
}

#[test]
fn endpoints_cells() {
    let ep = |subsets: Value| {
        json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": meta("web", "2024-06-01T11:59:00Z"),
               "subsets": subsets})
    };
    let c = cells(
        "",
        "Endpoints",
        ep(
            json!([{"addresses": [{"ip": "10.42.0.5"}, {"ip": "fd00::5"}],
        "ports": [{"port": 8080}, {"port": 9090}]}]),
        ),
    );
    assert_eq!(
        c,
        [
            json!("web"),
            json!("10.42.0.5:8080,[fd00::5]:8080,10.42.0.5:9090 + 1 more..."),
            json!("60s")
        ]
    );
    assert_eq!(cells("", "Endpoints", ep(json!([])))[1], "<none>");
    assert_eq!(
        cells(
            "",
            "Endpoints",
            ep(json!([{"addresses": [{"ip": "10.42.0.6"}]}]))
        )[1],
        "10.42.0.6"
    );

    let es = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": meta("web-abc", "2024-06-01T11:59:00Z"), "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80}, {"name": "metrics"}],
        "endpoints": [{"addresses": ["10.42.0.5"]}, {"addresses": ["10.42.0.6", "10.42.0.7", "10.42.0.8"]}]});
    assert_eq!(
        Value::Array(cells("discovery.k8s.io", "EndpointSlice", es)),
        json!([
            "web-abc",
            "IPv4",
            "80,metrics",
            "10.42.0.5,10.42.0.6,10.42.0.7 + 1 more...",
            "60s"
        ])
    );
    let empty = json!({"metadata": {"name": "e"}, "addressType": "IPv4"});
    assert_eq!(
        Value::Array(cells("discovery.k8s.io", "EndpointSlice", empty)),
        json!(["e", "IPv4", "<unset>", "<unset>", "<unknown>"])
    );
}

#[test]
fn simple_kinds() {
    let ns = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "kube-system", "creationTimestamp": "2022-05-01T00:00:00Z"}, "status": {"phase": "Active"}});
    assert_eq!(
        Value::Array(cells("", "Namespace", ns)),
        json!(["kube-system", "Active", "2y32d"])
    );
    assert_eq!(
        column_names("", "Namespace")[1],
        ("Status".to_owned(), "string".to_owned(), 0)
    );

    let cm = json!({"metadata": {"name": "kube-root-ca.crt", "creationTimestamp": "2024-06-01T11:00:00Z"},
        "data": {"ca.crt": "..."}});
    assert_eq!(
        Value::Array(cells("", "ConfigMap", cm)),
        json!(["kube-root-ca.crt", 1, "60m"])
    );
    let empty_cm = json!({"metadata": {"name": "e", "creationTimestamp": "2024-06-01T11:00:00Z"}});
    assert_eq!(cells("", "ConfigMap", empty_cm)[1], 0);

    let secret = json!({"metadata": {"name": "tls", "creationTimestamp": "2024-06-01T11:00:00Z"},
        "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}});
    assert_eq!(
        Value::Array(cells("", "Secret", secret)),
        json!(["tls", "kubernetes.io/tls", 2, "60m"])
    );
    let names: Vec<String> = column_names("", "Secret")
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(names, ["Name", "Type", "Data", "Age"]);

    let sa = json!({"metadata": {"name": "default", "creationTimestamp": "2024-06-01T11:00:00Z"}});
    assert_eq!(
        Value::Array(cells("", "ServiceAccount", sa)),
        json!(["default", 0, "60m"])
    );

    let lease = json!({"metadata": {"name": "kube-scheduler", "creationTimestamp": "2024-06-01T11:00:00Z"},
        "spec": {"holderIdentity": "node-1_abc"}});
    assert_eq!(
        Value::Array(cells("coordination.k8s.io", "Lease", lease)),
        json!(["kube-scheduler", "node-1_abc", "60m"])
    );
}

#[test]
fn events() {
    let names: Vec<String> = column_names("", "Event").into_iter().map(|c| c.0).collect();
    assert_eq!(
        names,
        [
            "Last Seen",
            "Type",
            "Reason",
            "Object",
            "Subobject",
            "Source",
            "Message",
            "First Seen",
            "Count",
            "Name"
        ]
    );
    let core = json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "web-1.17a", "namespace": "default", "creationTimestamp": "2024-06-01T11:00:00Z"},
        "involvedObject": {"kind": "Pod", "name": "web-1", "fieldPath": "spec.containers{app}"},
        "reason": "BackOff", "message": "Back-off restarting failed container\n", "type": "Warning",
        "source": {"component": "kubelet", "host": "n1"},
        "firstTimestamp": "2024-06-01T11:00:00Z", "lastTimestamp": "2024-06-01T11:59:30Z", "count": 12});
    assert_eq!(
        Value::Array(cells("", "Event", core)),
        json!([
            "30s",
            "Warning",
            "BackOff",
            "pod/web-1",
            "spec.containers{app}",
            "kubelet, n1",
            "Back-off restarting failed container",
            "60m",
            12,
            "web-1.17a"
        ])
    );
    let new = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "web.1", "creationTimestamp": "2024-06-01T11:59:00Z"},
        "eventTime": "2024-06-01T11:59:00.123456Z", "reportingController": "edgesite/scheduler",
        "reportingInstance": "n1", "regarding": {"kind": "Pod", "name": "web-2"},
        "reason": "Scheduled", "note": "Successfully assigned", "type": "Normal"});
    assert_eq!(
        Value::Array(cells("events.k8s.io", "Event", new)),
        json!([
            "60s",
            "Normal",
            "Scheduled",
            "pod/web-2",
            "",
            "edgesite/scheduler, n1",
            "Successfully assigned",
            "60s",
            1,
            "web.1"
        ])
    );
}

#[test]
fn default_kind_and_unknown_age() {
    let r = resource("authentication.k8s.io", "SelfSubjectReview");
    let obj = json!({"metadata": {"name": "x", "creationTimestamp": "2024-06-01T11:59:58Z"}});
    let t = table_for(r, &[&obj], &opts());
    assert_eq!(t["rows"][0]["cells"], json!(["x", "2s"]));
    let defs = t["columnDefinitions"].as_array().unwrap();
    assert_eq!(defs.len(), 2);
    assert_eq!(defs[0]["format"], "name");
    assert_eq!(defs[1]["name"], "Age");
    let undated = json!({"metadata": {"name": "y"}});
    assert_eq!(
        table_for(r, &[&undated], &opts())["rows"][0]["cells"],
        json!(["y", "<unknown>"])
    );
}
