//! Server-side printing: raw objects to `meta.k8s.io/v1` `Table` responses, the form `kubectl
//! get` asks for (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`).
//!
//! Columns and cells follow kube-apiserver's printers (`pkg/printers/internalversion`), so that
//! `kubectl get` output looks the same against both. As upstream does when converting for an
//! API response, every row carries all columns, the priority-1 (`-o wide`) ones included; kubectl
//! hides those unless asked. Kinds without a printer get Name and Age.
//!
//! Times are handled as whole Unix seconds parsed from RFC 3339 strings; ages use upstream's
//! `HumanDuration` buckets ([`human_duration`]).

use serde_json::{Map, Value, json};

use crate::registry::ResourceInfo;
use crate::time::days_from_civil;

/// What each row's `object` carries (`?includeObject=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object.
    None,
    /// A `PartialObjectMetadata` with the object's metadata (upstream's default).
    #[default]
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query parameter (`None`, `Metadata`, `Object`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "None" => Some(Self::None),
            "Metadata" => Some(Self::Metadata),
            "Object" => Some(Self::Object),
            _ => None,
        }
    }
}

/// How to build a table.
#[derive(Debug, Clone, Default)]
pub struct TableOptions {
    /// What rows embed.
    pub include_object: IncludeObject,
    /// Leave out `columnDefinitions`: watch events after the first.
    pub no_headers: bool,
    /// The current time, Unix seconds, against which ages are computed.
    pub now: i64,
    /// `metadata.resourceVersion` of the table (the list's, or the object's).
    pub resource_version: Option<String>,
    /// `metadata.continue` of the table.
    pub continue_token: Option<String>,
}

impl TableOptions {
    /// Options with defaults (metadata rows, headers) and ages relative to `now`.
    pub fn at(now: i64) -> Self {
        Self {
            now,
            ..Self::default()
        }
    }
}

/// One column of a table.
struct Column {
    name: &'static str,
    ty: &'static str,
    format: &'static str,
    description: &'static str,
    priority: u8,
}

const fn col(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty,
        format: "",
        description,
        priority: 0,
    }
}

const fn wide(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty,
        format: "",
        description,
        priority: 1,
    }
}

const NAME: Column = Column {
    name: "Name",
    ty: "string",
    format: "name",
    description: "Name must be unique within a namespace; it identifies the object.",
    priority: 0,
};
const AGE: Column = col(
    "Age",
    "string",
    "Time since the object was created (metadata.creationTimestamp).",
);
const CONTAINERS: Column = wide(
    "Containers",
    "string",
    "Names of the template's containers.",
);
const IMAGES: Column = wide("Images", "string", "Images of the template's containers.");
const SELECTOR: Column = wide("Selector", "string", "Label selector of the pods.");

const POD_COLUMNS: &[Column] = &[
    NAME,
    col("Ready", "string", "Ready containers out of all containers."),
    col(
        "Status",
        "string",
        "Aggregate status of the pod's containers.",
    ),
    col(
        "Restarts",
        "string",
        "Container restarts, and how long ago the last one happened.",
    ),
    AGE,
    wide("IP", "string", "The pod's IP address."),
    wide("Node", "string", "The node the pod is bound to."),
    wide(
        "Nominated Node",
        "string",
        "The node nominated by preemption.",
    ),
    wide(
        "Readiness Gates",
        "string",
        "Readiness gates that are true, of all.",
    ),
];

const NODE_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Status",
        "string",
        "Readiness and schedulability of the node.",
    ),
    col(
        "Roles",
        "string",
        "Roles from node-role.kubernetes.io/ labels.",
    ),
    AGE,
    col("Version", "string", "Kubelet version."),
    wide("Internal-IP", "string", "First InternalIP address."),
    wide("External-IP", "string", "First ExternalIP address."),
    wide("OS-Image", "string", "Operating system image."),
    wide("Kernel-Version", "string", "Kernel version."),
    wide(
        "Container-Runtime",
        "string",
        "Container runtime and version.",
    ),
];

const DEPLOYMENT_COLUMNS: &[Column] = &[
    NAME,
    col("Ready", "string", "Ready replicas out of desired replicas."),
    col(
        "Up-to-date",
        "integer",
        "Replicas running the latest template.",
    ),
    col("Available", "integer", "Replicas available to users."),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

const REPLICASET_COLUMNS: &[Column] = &[
    NAME,
    col("Desired", "integer", "Desired replicas."),
    col("Current", "integer", "Observed replicas."),
    col("Ready", "integer", "Ready replicas."),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

const DAEMONSET_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Desired",
        "integer",
        "Nodes that should run the daemon pod.",
    ),
    col(
        "Current",
        "integer",
        "Nodes running at least one daemon pod.",
    ),
    col("Ready", "integer", "Nodes whose daemon pod is ready."),
    col(
        "Up-to-date",
        "integer",
        "Nodes running the latest template.",
    ),
    col(
        "Available",
        "integer",
        "Nodes whose daemon pod is available.",
    ),
    col(
        "Node Selector",
        "string",
        "Node selector of the pod template.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

const STATEFULSET_COLUMNS: &[Column] = &[
    NAME,
    col("Ready", "string", "Ready replicas out of desired replicas."),
    AGE,
    CONTAINERS,
    IMAGES,
];

const JOB_COLUMNS: &[Column] = &[
    NAME,
    col("Status", "string", "Status of the job."),
    col(
        "Completions",
        "string",
        "Successful completions out of desired.",
    ),
    col(
        "Duration",
        "string",
        "Time the job took, or has run so far.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

const CRONJOB_COLUMNS: &[Column] = &[
    NAME,
    col("Schedule", "string", "Cron schedule."),
    col("Timezone", "string", "Time zone of the schedule."),
    col("Suspend", "boolean", "Whether scheduling is suspended."),
    col("Active", "integer", "Running jobs."),
    col(
        "Last Schedule",
        "string",
        "Time since a job was last scheduled.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

const SERVICE_COLUMNS: &[Column] = &[
    NAME,
    col("Type", "string", "How the service is exposed."),
    col("Cluster-IP", "string", "Cluster-internal IP address."),
    col("External-IP", "string", "External addresses."),
    col("Port(s)", "string", "Ports, with node ports."),
    AGE,
    wide("Selector", "string", "Label selector of the backing pods."),
];

const ENDPOINTS_COLUMNS: &[Column] = &[
    NAME,
    col("Endpoints", "string", "Endpoint addresses and ports."),
    AGE,
];

const ENDPOINTSLICE_COLUMNS: &[Column] = &[
    NAME,
    col("AddressType", "string", "Type of the addresses."),
    col("Ports", "string", "Ports of the slice."),
    col("Endpoints", "string", "Endpoint addresses."),
    AGE,
];

const NAMESPACE_COLUMNS: &[Column] = &[
    NAME,
    col("Status", "string", "Lifecycle phase of the namespace."),
    AGE,
];

const CONFIGMAP_COLUMNS: &[Column] = &[
    NAME,
    col("Data", "integer", "Number of data and binaryData keys."),
    AGE,
];

const SECRET_COLUMNS: &[Column] = &[
    NAME,
    col("Type", "string", "Type of the secret."),
    col("Data", "integer", "Number of data keys."),
    AGE,
];

const SERVICEACCOUNT_COLUMNS: &[Column] = &[
    NAME,
    col("Secrets", "integer", "Number of listed secrets."),
    AGE,
];

const EVENT_COLUMNS: &[Column] = &[
    col("Last Seen", "string", "Time since the event was last seen."),
    col("Type", "string", "Type of the event (Normal, Warning)."),
    col("Reason", "string", "Short reason for the event."),
    col("Object", "string", "The object the event is about."),
    wide("Subobject", "string", "Field path within the object."),
    wide("Source", "string", "Component that reported the event."),
    col("Message", "string", "Description of the event."),
    wide(
        "First Seen",
        "string",
        "Time since the event was first seen.",
    ),
    wide("Count", "integer", "How often the event occurred."),
    wide("Name", "string", "Name of the event object."),
];

const LEASE_COLUMNS: &[Column] = &[
    NAME,
    col("Holder", "string", "Current holder of the lease."),
    AGE,
];

const CONTROLLERREVISION_COLUMNS: &[Column] = &[
    NAME,
    col("Controller", "string", "Controller owning the revision."),
    col("Revision", "integer", "Revision number."),
    AGE,
];

const DEFAULT_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Age",
        "date",
        "Time since the object was created (metadata.creationTimestamp).",
    ),
];

type Printer = fn(&Value, &TableOptions) -> Row;

/// Cells of one row, and its conditions (completed pods).
struct Row {
    cells: Vec<Value>,
    conditions: Option<Value>,
}

impl From<Vec<Value>> for Row {
    fn from(cells: Vec<Value>) -> Self {
        Self {
            cells,
            conditions: None,
        }
    }
}

fn printer_for(resource: &ResourceInfo) -> (&'static [Column], Printer) {
    match (resource.group, resource.kind) {
        ("", "Pod") => (POD_COLUMNS, print_pod),
        ("", "Node") => (NODE_COLUMNS, print_node),
        ("apps", "Deployment") => (DEPLOYMENT_COLUMNS, print_deployment),
        ("apps", "ReplicaSet") => (REPLICASET_COLUMNS, print_replicaset),
        ("apps", "DaemonSet") => (DAEMONSET_COLUMNS, print_daemonset),
        ("apps", "StatefulSet") => (STATEFULSET_COLUMNS, print_statefulset),
        ("apps", "ControllerRevision") => (CONTROLLERREVISION_COLUMNS, print_controllerrevision),
        ("batch", "Job") => (JOB_COLUMNS, print_job),
        ("batch", "CronJob") => (CRONJOB_COLUMNS, print_cronjob),
        ("", "Service") => (SERVICE_COLUMNS, print_service),
        ("", "Endpoints") => (ENDPOINTS_COLUMNS, print_endpoints),
        ("discovery.k8s.io", "EndpointSlice") => (ENDPOINTSLICE_COLUMNS, print_endpointslice),
        ("", "Namespace") => (NAMESPACE_COLUMNS, print_namespace),
        ("", "ConfigMap") => (CONFIGMAP_COLUMNS, print_configmap),
        ("", "Secret") => (SECRET_COLUMNS, print_secret),
        ("", "ServiceAccount") => (SERVICEACCOUNT_COLUMNS, print_serviceaccount),
        ("", "Event") => (EVENT_COLUMNS, print_core_event),
        ("events.k8s.io", "Event") => (EVENT_COLUMNS, print_events_event),
        ("coordination.k8s.io", "Lease") => (LEASE_COLUMNS, print_lease),
        _ => (DEFAULT_COLUMNS, print_default),
    }
}

/// The `meta.k8s.io/v1` `Table` for `objects` of `resource`: one row per object, in order.
pub fn table_for(resource: &ResourceInfo, objects: &[&Value], opts: &TableOptions) -> Value {
    let (columns, printer) = printer_for(resource);
    let mut metadata = Map::new();
    if let Some(rv) = &opts.resource_version {
        metadata.insert("resourceVersion".into(), rv.clone().into());
    }
    if let Some(c) = opts.continue_token.as_ref().filter(|c| !c.is_empty()) {
        metadata.insert("continue".into(), c.clone().into());
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let row = printer(obj, opts);
            let mut out = Map::new();
            out.insert("cells".into(), Value::Array(row.cells));
            if let Some(c) = row.conditions {
                out.insert("conditions".into(), c);
            }
            match opts.include_object {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    out.insert(
                        "object".into(),
                        json!({
                            "kind": "PartialObjectMetadata",
                            "apiVersion": "meta.k8s.io/v1",
                            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
                        }),
                    );
                }
                IncludeObject::Object => {
                    out.insert("object".into(), (*obj).clone());
                }
            }
            Value::Object(out)
        })
        .collect();
    let mut table = Map::new();
    table.insert("kind".into(), "Table".into());
    table.insert("apiVersion".into(), "meta.k8s.io/v1".into());
    table.insert("metadata".into(), Value::Object(metadata));
    if !opts.no_headers {
        let defs = columns
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": c.ty,
                    "format": c.format,
                    "description": c.description,
                    "priority": c.priority,
                })
            })
            .collect();
        table.insert("columnDefinitions".into(), Value::Array(defs));
    }
    table.insert("rows".into(), Value::Array(rows));
    Value::Object(table)
}

// ---------------------------------------------------------------------------------------------
// Time.

/// Parses an RFC 3339 timestamp (`2024-05-01T10:00:00Z`, optional fraction, `Z` or `±hh:mm`)
/// into Unix seconds, dropping any fraction.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || rb[3] != b':' || !matches!(rb[0], b'+' | b'-') {
                return None;
            }
            let h: i64 = rest[1..3].parse().ok()?;
            let m: i64 = rest[4..6].parse().ok()?;
            let off = h * 3600 + m * 60;
            if rb[0] == b'-' { -off } else { off }
        }
    };
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// Upstream's `HumanDuration`: a short, rounded-down rendering of `seconds` whose precision
/// shrinks as the duration grows (`45s`, `2m30s`, `10m`, `3h5m`, `10h`, `2d3h`, `45d`, `2y5d`,
/// `9y`). Slightly negative values (clock skew) read `0s`; more negative ones `<invalid>`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        let dy = days % 365;
        return if dy == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{dy}d")
        };
    }
    format!("{years}y")
}

/// Time since `ts` as [`human_duration`], or `<unknown>` when absent or unparsable.
fn since(ts: Option<&str>, now: i64) -> String {
    match ts.and_then(parse_rfc3339) {
        Some(t) => human_duration(now - t),
        None => "<unknown>".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// JSON access.

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    get(v, path).and_then(Value::as_str).unwrap_or("")
}

fn opt_text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(v, path)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn int(v: &Value, path: &[&str]) -> i64 {
    get(v, path).and_then(Value::as_i64).unwrap_or(0)
}

fn list<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn count(v: &Value, path: &[&str]) -> i64 {
    let n = match get(v, path) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    };
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn name(obj: &Value) -> Value {
    text(obj, &["metadata", "name"]).into()
}

fn age(obj: &Value, opts: &TableOptions) -> Value {
    since(opt_text(obj, &["metadata", "creationTimestamp"]), opts.now).into()
}

/// `k=v,k2=v2` sorted by key, or `<none>`: upstream's `labels.FormatLabels`.
fn format_labels(map: Option<&Value>) -> String {
    let Some(Value::Object(m)) = map else {
        return "<none>".into();
    };
    if m.is_empty() {
        return "<none>".into();
    }
    let mut pairs: Vec<(&String, &str)> = m
        .iter()
        .map(|(k, v)| (k, v.as_str().unwrap_or("")))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A `metav1.LabelSelector` in selector syntax (`app=web,tier in (a,b),!legacy`), requirements
/// sorted by key; empty for a missing or empty selector.
fn format_label_selector(sel: Option<&Value>) -> String {
    let Some(sel) = sel.filter(|s| s.is_object()) else {
        return String::new();
    };
    let mut reqs: Vec<(String, String)> = Vec::new();
    if let Some(Value::Object(m)) = sel.get("matchLabels") {
        for (k, v) in m {
            reqs.push((k.clone(), format!("{k}={}", v.as_str().unwrap_or(""))));
        }
    }
    for e in list(sel, &["matchExpressions"]) {
        let key = text(e, &["key"]);
        let mut values: Vec<&str> = list(e, &["values"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        values.sort_unstable();
        values.dedup();
        let s = match text(e, &["operator"]) {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_owned(),
            "DoesNotExist" => format!("!{key}"),
            _ => return "<invalid>".into(),
        };
        reqs.push((key.to_owned(), s));
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    reqs.into_iter()
        .map(|(_, s)| s)
        .collect::<Vec<_>>()
        .join(",")
}

/// Container names and images of a pod spec, comma-joined.
fn containers_and_images(pod_spec: Option<&Value>) -> (Value, Value) {
    let containers = pod_spec.map_or(&[][..], |s| list(s, &["containers"]));
    let names: Vec<&str> = containers.iter().map(|c| text(c, &["name"])).collect();
    let images: Vec<&str> = containers.iter().map(|c| text(c, &["image"])).collect();
    (names.join(",").into(), images.join(",").into())
}

/// `spec.replicas`, defaulting to 1 as the API server would.
fn replicas(obj: &Value) -> i64 {
    get(obj, &["spec", "replicas"])
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

fn has_condition(obj: &Value, ty: &str) -> bool {
    list(obj, &["status", "conditions"])
        .iter()
        .any(|c| text(c, &["type"]) == ty && text(c, &["status"]) == "True")
}

// ---------------------------------------------------------------------------------------------
// Printers.

fn print_default(obj: &Value, opts: &TableOptions) -> Row {
    vec![name(obj), age(obj, opts)].into()
}

fn is_restartable_init(spec: &Value, container_name: &str) -> bool {
    list(spec, &["initContainers"])
        .iter()
        .find(|c| text(c, &["name"]) == container_name)
        .is_some_and(|c| text(c, &["restartPolicy"]) == "Always")
}

fn last_terminated(status: &Value) -> Option<i64> {
    opt_text(status, &["lastState", "terminated", "finishedAt"]).and_then(parse_rfc3339)
}

/// `ExitCode:n`, `Signal:n` or the reason of a terminated state.
fn terminated_reason(t: &Value) -> String {
    if let Some(r) = opt_text(t, &["reason"]) {
        r.to_owned()
    } else if int(t, &["signal"]) != 0 {
        format!("Signal:{}", int(t, &["signal"]))
    } else {
        format!("ExitCode:{}", int(t, &["exitCode"]))
    }
}

fn print_pod(pod: &Value, opts: &TableOptions) -> Row {
    let empty = json!({});
    let spec = pod.get("spec").unwrap_or(&empty);
    let status = pod.get("status").unwrap_or(&empty);
    let init_specs = list(spec, &["initContainers"]);
    let total = list(spec, &["containers"]).len()
        + init_specs
            .iter()
            .filter(|c| text(c, &["restartPolicy"]) == "Always")
            .count();
    let mut ready = 0usize;
    let mut restarts = 0i64;
    let mut sidecar_restarts = 0i64;
    let mut last_restart: Option<i64> = None;
    let mut last_sidecar_restart: Option<i64> = None;

    let phase = text(status, &["phase"]);
    let mut reason = opt_text(status, &["reason"]).unwrap_or(phase).to_owned();
    if list(status, &["conditions"])
        .iter()
        .any(|c| text(c, &["type"]) == "PodScheduled" && text(c, &["reason"]) == "SchedulingGated")
    {
        reason = "SchedulingGated".into();
    }

    let conditions = match phase {
        "Succeeded" => Some(json!([{
            "type": "Completed", "status": "True", "reason": "Succeeded",
            "message": "The pod has completed successfully.",
        }])),
        "Failed" => Some(json!([{
            "type": "Completed", "status": "True", "reason": "Failed",
            "message": "The pod failed.",
        }])),
        _ => None,
    };

    let mut initializing = false;
    let init_statuses = list(status, &["initContainerStatuses"]);
    for (i, c) in init_statuses.iter().enumerate() {
        let cname = text(c, &["name"]);
        let restartable = is_restartable_init(spec, cname);
        restarts += int(c, &["restartCount"]);
        let lt = last_terminated(c);
        last_restart = last_restart.max(lt);
        if restartable {
            sidecar_restarts += int(c, &["restartCount"]);
            last_sidecar_restart = last_sidecar_restart.max(lt);
        }
        let terminated = get(c, &["state", "terminated"]).filter(|t| t.is_object());
        let waiting_reason = opt_text(c, &["state", "waiting", "reason"]);
        if terminated.is_some_and(|t| int(t, &["exitCode"]) == 0) {
            continue;
        }
        if restartable && get(c, &["started"]).and_then(Value::as_bool) == Some(true) {
            if get(c, &["ready"]).and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            reason = format!("Init:{}", terminated_reason(t));
        } else if let Some(w) = waiting_reason.filter(|w| *w != "PodInitializing") {
            reason = format!("Init:{w}");
        } else {
            reason = format!("Init:{i}/{}", init_specs.len());
        }
        initializing = true;
        break;
    }

    if !initializing || has_condition(pod, "Initialized") {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        for c in list(status, &["containerStatuses"]).iter().rev() {
            restarts += int(c, &["restartCount"]);
            last_restart = last_restart.max(last_terminated(c));
            let terminated = get(c, &["state", "terminated"]).filter(|t| t.is_object());
            if let Some(w) = opt_text(c, &["state", "waiting", "reason"]) {
                reason = w.to_owned();
            } else if let Some(t) = terminated {
                reason = terminated_reason(t);
            } else if get(c, &["ready"]).and_then(Value::as_bool) == Some(true)
                && get(c, &["state", "running"]).is_some_and(Value::is_object)
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if has_condition(pod, "Ready") {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }

    let deleting = get(pod, &["metadata", "deletionTimestamp"]).is_some_and(|d| !d.is_null());
    if deleting && text(status, &["reason"]) == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".into();
    }

    let restarts_cell = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", human_duration(opts.now - t)),
        _ => restarts.to_string(),
    };

    let ip = list(status, &["podIPs"])
        .first()
        .and_then(|p| opt_text(p, &["ip"]))
        .or_else(|| opt_text(status, &["podIP"]))
        .unwrap_or("<none>");
    let node = opt_text(spec, &["nodeName"]).unwrap_or("<none>");
    let nominated = opt_text(status, &["nominatedNodeName"]).unwrap_or("<none>");
    let gates = list(spec, &["readinessGates"]);
    let gates_cell = if gates.is_empty() {
        "<none>".to_owned()
    } else {
        let conds = list(status, &["conditions"]);
        let true_count = gates
            .iter()
            .filter(|g| {
                let ty = text(g, &["conditionType"]);
                conds
                    .iter()
                    .find(|c| text(c, &["type"]) == ty)
                    .is_some_and(|c| text(c, &["status"]) == "True")
            })
            .count();
        format!("{true_count}/{}", gates.len())
    };
    Row {
        cells: vec![
            name(pod),
            format!("{ready}/{total}").into(),
            reason.into(),
            restarts_cell.into(),
            age(pod, opts),
            ip.into(),
            node.into(),
            nominated.into(),
            gates_cell.into(),
        ],
        conditions,
    }
}

fn node_address(node: &Value, ty: &str) -> Value {
    list(node, &["status", "addresses"])
        .iter()
        .find(|a| text(a, &["type"]) == ty)
        .map_or("<none>", |a| text(a, &["address"]))
        .into()
}

fn print_node(node: &Value, opts: &TableOptions) -> Row {
    let mut status: Vec<&str> = Vec::new();
    // The last Ready condition wins, as with upstream's map of conditions by type.
    if let Some(c) = list(node, &["status", "conditions"])
        .iter()
        .rev()
        .find(|c| text(c, &["type"]) == "Ready")
    {
        status.push(if text(c, &["status"]) == "True" {
            "Ready"
        } else {
            "NotReady"
        });
    }
    if status.is_empty() {
        status.push("Unknown");
    }
    if get(node, &["spec", "unschedulable"]).and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled");
    }
    let mut roles: Vec<&str> = Vec::new();
    if let Some(Value::Object(labels)) = get(node, &["metadata", "labels"]) {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.push(role);
                }
            } else if k == "kubernetes.io/role"
                && let Some(v) = v.as_str().filter(|v| !v.is_empty())
            {
                roles.push(v);
            }
        }
    }
    roles.sort_unstable();
    roles.dedup();
    let roles = if roles.is_empty() {
        "<none>".to_owned()
    } else {
        roles.join(",")
    };
    let info = |k: &str| -> Value {
        opt_text(node, &["status", "nodeInfo", k])
            .unwrap_or("<unknown>")
            .into()
    };
    vec![
        name(node),
        status.join(",").into(),
        roles.into(),
        age(node, opts),
        text(node, &["status", "nodeInfo", "kubeletVersion"]).into(),
        node_address(node, "InternalIP"),
        node_address(node, "ExternalIP"),
        info("osImage"),
        info("kernelVersion"),
        info("containerRuntimeVersion"),
    ]
    .into()
}

fn print_deployment(d: &Value, opts: &TableOptions) -> Row {
    let (containers, images) = containers_and_images(get(d, &["spec", "template", "spec"]));
    vec![
        name(d),
        format!("{}/{}", int(d, &["status", "readyReplicas"]), replicas(d)).into(),
        int(d, &["status", "updatedReplicas"]).into(),
        int(d, &["status", "availableReplicas"]).into(),
        age(d, opts),
        containers,
        images,
        format_label_selector(get(d, &["spec", "selector"])).into(),
    ]
    .into()
}

fn print_replicaset(rs: &Value, opts: &TableOptions) -> Row {
    let (containers, images) = containers_and_images(get(rs, &["spec", "template", "spec"]));
    vec![
        name(rs),
        replicas(rs).into(),
        int(rs, &["status", "replicas"]).into(),
        int(rs, &["status", "readyReplicas"]).into(),
        age(rs, opts),
        containers,
        images,
        format_label_selector(get(rs, &["spec", "selector"])).into(),
    ]
    .into()
}

fn print_daemonset(ds: &Value, opts: &TableOptions) -> Row {
    let (containers, images) = containers_and_images(get(ds, &["spec", "template", "spec"]));
    vec![
        name(ds),
        int(ds, &["status", "desiredNumberScheduled"]).into(),
        int(ds, &["status", "currentNumberScheduled"]).into(),
        int(ds, &["status", "numberReady"]).into(),
        int(ds, &["status", "updatedNumberScheduled"]).into(),
        int(ds, &["status", "numberAvailable"]).into(),
        format_labels(get(ds, &["spec", "template", "spec", "nodeSelector"])).into(),
        age(ds, opts),
        containers,
        images,
        format_label_selector(get(ds, &["spec", "selector"])).into(),
    ]
    .into()
}

fn print_statefulset(ss: &Value, opts: &TableOptions) -> Row {
    let (containers, images) = containers_and_images(get(ss, &["spec", "template", "spec"]));
    vec![
        name(ss),
        format!("{}/{}", int(ss, &["status", "readyReplicas"]), replicas(ss)).into(),
        age(ss, opts),
        containers,
        images,
    ]
    .into()
}

fn print_job(job: &Value, opts: &TableOptions) -> Row {
    let succeeded = int(job, &["status", "succeeded"]);
    let completions = match get(job, &["spec", "completions"]).and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => {
            let parallelism = int(job, &["spec", "parallelism"]);
            if parallelism > 1 {
                format!("{succeeded}/1 of {parallelism}")
            } else {
                format!("{succeeded}/1")
            }
        }
    };
    let start = opt_text(job, &["status", "startTime"]).and_then(parse_rfc3339);
    let end = opt_text(job, &["status", "completionTime"]).and_then(parse_rfc3339);
    let duration = match (start, end) {
        (None, _) => String::new(),
        (Some(s), None) => human_duration(opts.now - s),
        (Some(s), Some(e)) => human_duration(e - s),
    };
    let deleting = get(job, &["metadata", "deletionTimestamp"]).is_some_and(|d| !d.is_null());
    let status = if has_condition(job, "Complete") {
        "Complete"
    } else if has_condition(job, "Failed") {
        "Failed"
    } else if deleting {
        "Terminating"
    } else if has_condition(job, "Suspended") {
        "Suspended"
    } else if has_condition(job, "FailureTarget") {
        "FailureTarget"
    } else if has_condition(job, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let (containers, images) = containers_and_images(get(job, &["spec", "template", "spec"]));
    vec![
        name(job),
        status.into(),
        completions.into(),
        duration.into(),
        age(job, opts),
        containers,
        images,
        format_label_selector(get(job, &["spec", "selector"])).into(),
    ]
    .into()
}

fn print_cronjob(cj: &Value, opts: &TableOptions) -> Row {
    let job_spec = get(cj, &["spec", "jobTemplate", "spec"]);
    let (containers, images) =
        containers_and_images(job_spec.and_then(|s| get(s, &["template", "spec"])));
    let suspend = match get(cj, &["spec", "suspend"]).and_then(Value::as_bool) {
        Some(true) => "True",
        Some(false) => "False",
        None => "<unset>",
    };
    let last = match opt_text(cj, &["status", "lastScheduleTime"]) {
        Some(t) => since(Some(t), opts.now),
        None => "<none>".into(),
    };
    vec![
        name(cj),
        text(cj, &["spec", "schedule"]).into(),
        opt_text(cj, &["spec", "timeZone"])
            .unwrap_or("<none>")
            .into(),
        suspend.into(),
        count(cj, &["status", "active"]).into(),
        last.into(),
        age(cj, opts),
        containers,
        images,
        format_label_selector(job_spec.and_then(|s| s.get("selector"))).into(),
    ]
    .into()
}

fn print_service(svc: &Value, opts: &TableOptions) -> Row {
    let ty = opt_text(svc, &["spec", "type"]).unwrap_or("ClusterIP");
    let cluster_ip = list(svc, &["spec", "clusterIPs"])
        .first()
        .and_then(Value::as_str)
        .or_else(|| opt_text(svc, &["spec", "clusterIP"]))
        .unwrap_or("<none>");
    let external_ips: Vec<&str> = list(svc, &["spec", "externalIPs"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let external = match ty {
        "ClusterIP" | "NodePort" => {
            if external_ips.is_empty() {
                "<none>".to_owned()
            } else {
                external_ips.join(",")
            }
        }
        "LoadBalancer" => {
            let mut all: Vec<&str> = list(svc, &["status", "loadBalancer", "ingress"])
                .iter()
                .filter_map(|i| opt_text(i, &["ip"]).or_else(|| opt_text(i, &["hostname"])))
                .collect();
            all.extend(external_ips);
            if all.is_empty() {
                "<pending>".to_owned()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => text(svc, &["spec", "externalName"]).to_owned(),
        _ => "<unknown>".to_owned(),
    };
    let ports: Vec<String> = list(svc, &["spec", "ports"])
        .iter()
        .map(|p| {
            let port = int(p, &["port"]);
            let proto = opt_text(p, &["protocol"]).unwrap_or("TCP");
            match int(p, &["nodePort"]) {
                np if np > 0 => format!("{port}:{np}/{proto}"),
                _ => format!("{port}/{proto}"),
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_owned()
    } else {
        ports.join(",")
    };
    vec![
        name(svc),
        ty.into(),
        cluster_ip.into(),
        external.into(),
        ports.into(),
        age(svc, opts),
        format_labels(get(svc, &["spec", "selector"])).into(),
    ]
    .into()
}

/// The first three items comma-joined, then ` + N more...` for the rest; `empty` for none.
fn list_with_more(items: &[String], total: usize, empty: &str) -> String {
    let shown = items.iter().take(3).cloned().collect::<Vec<_>>().join(",");
    if total > 3 {
        format!("{shown} + {} more...", total - 3)
    } else if shown.is_empty() {
        empty.to_owned()
    } else {
        shown
    }
}

fn host_port(ip: &str, port: i64) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

fn print_endpoints(ep: &Value, opts: &TableOptions) -> Row {
    let subsets = list(ep, &["subsets"]);
    let cell = if subsets.is_empty() {
        "<none>".to_owned()
    } else {
        let mut items = Vec::new();
        for ss in subsets {
            let ips: Vec<&str> = list(ss, &["addresses"])
                .iter()
                .map(|a| text(a, &["ip"]))
                .collect();
            let ports = list(ss, &["ports"]);
            if ports.is_empty() {
                items.extend(ips.iter().map(|ip| (*ip).to_owned()));
            } else {
                for p in ports {
                    let port = int(p, &["port"]);
                    items.extend(ips.iter().map(|ip| host_port(ip, port)));
                }
            }
        }
        list_with_more(&items, items.len(), "")
    };
    vec![name(ep), cell.into(), age(ep, opts)].into()
}

fn print_endpointslice(es: &Value, opts: &TableOptions) -> Row {
    let ports: Vec<String> = list(es, &["ports"])
        .iter()
        .map(|p| match get(p, &["port"]).and_then(Value::as_i64) {
            Some(n) => n.to_string(),
            None => get(p, &["name"])
                .and_then(Value::as_str)
                .unwrap_or("*")
                .to_owned(),
        })
        .collect();
    let addrs: Vec<String> = list(es, &["endpoints"])
        .iter()
        .flat_map(|e| list(e, &["addresses"]))
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    vec![
        name(es),
        text(es, &["addressType"]).into(),
        list_with_more(&ports, ports.len(), "<unset>").into(),
        list_with_more(&addrs, addrs.len(), "<unset>").into(),
        age(es, opts),
    ]
    .into()
}

fn print_namespace(ns: &Value, opts: &TableOptions) -> Row {
    vec![
        name(ns),
        text(ns, &["status", "phase"]).into(),
        age(ns, opts),
    ]
    .into()
}

fn print_configmap(cm: &Value, opts: &TableOptions) -> Row {
    let n = count(cm, &["data"]) + count(cm, &["binaryData"]);
    vec![name(cm), n.into(), age(cm, opts)].into()
}

fn print_secret(s: &Value, opts: &TableOptions) -> Row {
    vec![
        name(s),
        text(s, &["type"]).into(),
        count(s, &["data"]).into(),
        age(s, opts),
    ]
    .into()
}

fn print_serviceaccount(sa: &Value, opts: &TableOptions) -> Row {
    vec![name(sa), count(sa, &["secrets"]).into(), age(sa, opts)].into()
}

fn print_lease(l: &Value, opts: &TableOptions) -> Row {
    vec![
        name(l),
        text(l, &["spec", "holderIdentity"]).into(),
        age(l, opts),
    ]
    .into()
}

fn print_controllerrevision(cr: &Value, opts: &TableOptions) -> Row {
    let controller = list(cr, &["metadata", "ownerReferences"])
        .iter()
        .find(|o| get(o, &["controller"]).and_then(Value::as_bool) == Some(true))
        .map_or_else(
            || "<none>".to_owned(),
            |o| {
                let group = text(o, &["apiVersion"])
                    .split_once('/')
                    .map_or("", |(g, _)| g);
                let kind = text(o, &["kind"]);
                let oname = text(o, &["name"]);
                match (kind, group) {
                    ("", "") => oname.to_owned(),
                    (k, "") => format!("{}/{oname}", k.to_lowercase()),
                    (k, g) => format!("{}/{oname}", format!("{k}.{g}").to_lowercase()),
                }
            },
        );
    vec![
        name(cr),
        controller.into(),
        int(cr, &["revision"]).into(),
        age(cr, opts),
    ]
    .into()
}

/// The fields of an event, from either the core/v1 or the events.k8s.io/v1 form.
struct EventFields<'a> {
    first: Option<&'a str>,
    last: Option<&'a str>,
    event_time: Option<&'a str>,
    count: i64,
    series: Option<&'a Value>,
    regarding: Option<&'a Value>,
    message: &'a str,
    component: &'a str,
    host: &'a str,
}

fn print_event(ev: &Value, f: &EventFields<'_>, opts: &TableOptions) -> Row {
    let first = match f.first {
        Some(t) => since(Some(t), opts.now),
        None => since(f.event_time, opts.now),
    };
    let mut last = match f.last {
        Some(t) => since(Some(t), opts.now),
        None => first.clone(),
    };
    let mut count = f.count;
    if let Some(series) = f.series.filter(|s| s.is_object()) {
        last = since(opt_text(series, &["lastObservedTime"]), opts.now);
        count = int(series, &["count"]);
    } else if count == 0 {
        count = 1;
    }
    let empty = json!({});
    let regarding = f.regarding.unwrap_or(&empty);
    let kind = text(regarding, &["kind"]).to_lowercase();
    let target = match opt_text(regarding, &["name"]) {
        Some(n) => format!("{kind}/{n}"),
        None => kind,
    };
    let component = if f.component.is_empty() {
        text(ev, &["reportingController"])
    } else {
        f.component
    };
    let host = if f.host.is_empty() {
        text(ev, &["reportingInstance"])
    } else {
        f.host
    };
    let source = if host.is_empty() {
        component.to_owned()
    } else {
        format!("{component}, {host}")
    };
    vec![
        last.into(),
        text(ev, &["type"]).into(),
        text(ev, &["reason"]).into(),
        target.into(),
        text(regarding, &["fieldPath"]).into(),
        source.into(),
        f.message.trim().into(),
        first.into(),
        count.into(),
        name(ev),
    ]
    .into()
}

fn print_core_event(ev: &Value, opts: &TableOptions) -> Row {
    let f = EventFields {
        first: opt_text(ev, &["firstTimestamp"]),
        last: opt_text(ev, &["lastTimestamp"]),
        event_time: opt_text(ev, &["eventTime"]),
        count: int(ev, &["count"]),
        series: ev.get("series"),
        regarding: ev.get("involvedObject"),
        message: text(ev, &["message"]),
        component: text(ev, &["source", "component"]),
        host: text(ev, &["source", "host"]),
    };
    print_event(ev, &f, opts)
}

fn print_events_event(ev: &Value, opts: &TableOptions) -> Row {
    let f = EventFields {
        first: opt_text(ev, &["deprecatedFirstTimestamp"]),
        last: opt_text(ev, &["deprecatedLastTimestamp"]),
        event_time: opt_text(ev, &["eventTime"]),
        count: int(ev, &["deprecatedCount"]),
        series: ev.get("series"),
        regarding: ev.get("regarding"),
        message: text(ev, &["note"]),
        component: text(ev, &["deprecatedSource", "component"]),
        host: text(ev, &["deprecatedSource", "host"]),
    };
    print_event(ev, &f, opts)
}

#[cfg(test)]
mod tests;
