//! Prometheus metrics, served at `/metrics` in the text exposition format (version 0.0.4).
//!
//! The names and labels follow kube-apiserver's, so dashboards and alerts written for it work:
//! `apiserver_request_total{verb,group,version,resource,subresource,code}`,
//! `apiserver_request_duration_seconds{verb,group,version,resource,subresource}` (a histogram
//! with upstream's buckets), `apiserver_longrunning_requests{verb,group,version,resource}` (open
//! watches), `apiserver_storage_objects{resource}` (objects in each started watch cache), and
//! the standard `process_*` metrics. Verbs are upstream's canonical upper-case
//! ones (`GET`, `LIST`, `WATCH`, `POST`, `PUT`, `PATCH`, `DELETE`, `DELETECOLLECTION`); for
//! non-resource paths the verb is the HTTP method and the group and resource labels are empty.
//!
//! The registry is process-wide ([`global`]), as Prometheus client registries are: one
//! process serves one API server.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use edgesite_clock::Clock as _;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use edgesite_api::registry;
use futures::StreamExt as _;

use crate::handlers::ApiState;
use crate::handlers::target::parse_path;

/// Upper bounds (seconds) of the request duration histogram: kube-apiserver's.
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a request is, for the metric labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestLabels {
    /// Canonical upper-case verb (`LIST`, `WATCH`, `GET`...; the method for non-resource paths).
    pub verb: String,
    /// API group (`""` for core and non-resource requests).
    pub group: String,
    /// API version (`""` for non-resource requests).
    pub version: String,
    /// Resource plural (`""` for non-resource requests).
    pub resource: String,
    /// Subresource (`""` for none).
    pub subresource: String,
}

impl RequestLabels {
    /// The labels of a request with `method` on `uri`.
    pub fn of(method: &Method, uri: &Uri) -> Self {
        match parse_path(uri.path()) {
            Some(Some(t)) => {
                let verb = t.verb(method, uri.query()).map_or_else(
                    || method.as_str().to_owned(),
                    |v| v.metric_label().to_owned(),
                );
                Self {
                    verb,
                    group: t.resource.group.to_owned(),
                    version: t.resource.version.to_owned(),
                    resource: t.resource.plural.to_owned(),
                    subresource: t
                        .subresource
                        .map(|s| s.as_str().to_owned())
                        .unwrap_or_default(),
                }
            }
            _ => Self {
                verb: method.as_str().to_owned(),
                group: String::new(),
                version: String::new(),
                resource: String::new(),
                subresource: String::new(),
            },
        }
    }

    /// Whether the request is long-running (a watch).
    pub fn is_longrunning(&self) -> bool {
        self.verb == "WATCH"
    }
}

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Cumulative counts are computed on output; these are per-bucket counts, the last one
    /// for `+Inf`.
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; DURATION_BUCKETS.len() + 1];
        }
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += secs;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct Series {
    requests: BTreeMap<(RequestLabels, u16), u64>,
    durations: BTreeMap<RequestLabels, Histogram>,
    longrunning: BTreeMap<RequestLabels, i64>,
}

/// The API server's metrics.
#[derive(Debug)]
pub struct Metrics {
    state: Mutex<Series>,
    start_time: f64,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide registry.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty registry; `process_start_time_seconds` is the process's start (from
    /// `/proc/self/stat`) or, failing that, now.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(Series::default()),
            start_time: process_start_time().unwrap_or_else(unix_now),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Series> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one finished request (for a watch: its response headers).
    pub fn observe(&self, labels: &RequestLabels, code: u16, elapsed: Duration) {
        let mut st = self.lock();
        *st.requests.entry((labels.clone(), code)).or_insert(0) += 1;
        st.durations
            .entry(labels.clone())
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a long-running request as open until the returned guard is dropped.
    pub fn longrunning(&'static self, labels: RequestLabels) -> LongrunningGuard {
        *self.lock().longrunning.entry(labels.clone()).or_insert(0) += 1;
        LongrunningGuard {
            metrics: self,
            labels,
        }
    }

    /// Records `resp` to a request with `labels` and, for a successful watch, counts it as
    /// long-running until its body is dropped (the client went away or the watch ended).
    pub fn record(
        &'static self,
        labels: RequestLabels,
        elapsed: Duration,
        resp: Response,
    ) -> Response {
        self.observe(&labels, resp.status().as_u16(), elapsed);
        if !labels.is_longrunning() || !resp.status().is_success() {
            return resp;
        }
        let guard = self.longrunning(labels);
        let (parts, body) = resp.into_parts();
        let stream = body.into_data_stream().map(move |chunk| {
            let _ = &guard;
            chunk
        });
        Response::from_parts(parts, Body::from_stream(stream))
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let st = self.lock();
        out.push_str(
            "# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, group, version, resource, subresource and HTTP response code.\n\
             # TYPE apiserver_request_total counter\n",
        );
        for ((l, code), n) in &st.requests {
            let _ = writeln!(
                out,
                "apiserver_request_total{{{},code=\"{code}\"}} {n}",
                label_pairs(l)
            );
        }
        out.push_str(
            "# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb, group, version, resource and subresource.\n\
             # TYPE apiserver_request_duration_seconds histogram\n",
        );
        for (l, h) in &st.durations {
            let pairs = label_pairs(l);
            let mut cumulative = 0;
            for (i, le) in DURATION_BUCKETS.iter().enumerate() {
                cumulative += h.buckets.get(i).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "apiserver_request_duration_seconds_bucket{{{pairs},le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_bucket{{{pairs},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_sum{{{pairs}}} {}",
                float(h.sum)
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_count{{{pairs}}} {}",
                h.count
            );
        }
        out.push_str(
            "# HELP apiserver_longrunning_requests Gauge of all active long-running apiserver requests broken out by verb, group, version, resource and subresource.\n\
             # TYPE apiserver_longrunning_requests gauge\n",
        );
        for (l, n) in &st.longrunning {
            let _ = writeln!(
                out,
                "apiserver_longrunning_requests{{{}}} {n}",
                label_pairs(l)
            );
        }
        drop(st);
        out.push_str(
            "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n\
             # TYPE process_start_time_seconds gauge\n",
        );
        let _ = writeln!(out, "process_start_time_seconds {}", float(self.start_time));
        if let Some(cpu) = process_cpu_seconds() {
            out.push_str(
                "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
                 # TYPE process_cpu_seconds_total counter\n",
            );
            let _ = writeln!(out, "process_cpu_seconds_total {}", float(cpu));
        }
        if let Some(rss) = process_resident_memory_bytes() {
            out.push_str(
                "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
                 # TYPE process_resident_memory_bytes gauge\n",
            );
            let _ = writeln!(out, "process_resident_memory_bytes {rss}");
        }
        out
    }
}

/// Decrements `apiserver_longrunning_requests` when dropped.
#[derive(Debug)]
pub struct LongrunningGuard {
    metrics: &'static Metrics,
    labels: RequestLabels,
}

impl Drop for LongrunningGuard {
    fn drop(&mut self) {
        if let Some(n) = self.metrics.lock().longrunning.get_mut(&self.labels) {
            *n -= 1;
        }
    }
}

/// The outermost middleware: records every request (authentication failures included) and
/// tracks open watches.
pub async fn middleware(
    State(state): State<Arc<ApiState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let labels = RequestLabels::of(req.method(), req.uri());
    let started = state.clock.instant();
    let resp = next.run(req).await;
    let elapsed = state.clock.instant().duration_since(started);
    global().record(labels, elapsed, resp)
}

/// `GET /metrics`: [`Metrics::render`] plus `apiserver_storage_objects` from the watch caches
/// started so far (a resource nobody has listed or watched yet has no cache and no sample).
pub async fn handler(State(state): State<Arc<ApiState>>) -> Response {
    let mut text = global().render();
    let mut objects: Vec<(String, usize)> = Vec::new();
    for (prefix, cache) in state.storage.started_caches().await {
        let name = registry::all()
            .iter()
            .find(|r| registry::storage_prefix(r, None).as_deref() == Some(prefix.as_str()))
            .map_or(prefix, |r| r.group_resource().to_string());
        objects.push((name, cache.stats().objects));
    }
    objects.sort();
    text.push_str(
        "# HELP apiserver_storage_objects Number of stored objects at the time of last check split by kind.\n\
         # TYPE apiserver_storage_objects gauge\n",
    );
    for (resource, n) in objects {
        let _ = writeln!(
            text,
            "apiserver_storage_objects{{resource=\"{}\"}} {n}",
            escape(&resource)
        );
    }
    let mut resp = Response::new(Body::from(text));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    resp
}

fn label_pairs(l: &RequestLabels) -> String {
    format!(
        "verb=\"{}\",group=\"{}\",version=\"{}\",resource=\"{}\",subresource=\"{}\"",
        escape(&l.verb),
        escape(&l.group),
        escape(&l.version),
        escape(&l.resource),
        escape(&l.subresource)
    )
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A float as Prometheus writes it (`1e-05` style is fine; integers keep no fraction).
fn float(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else if v.is_nan() {
        "NaN".to_owned()
    } else if v > 0.0 {
        "+Inf".to_owned()
    } else {
        "-Inf".to_owned()
    }
}

/// Now in Unix seconds: the registry is process-wide, so it reads the system clock (through
/// the one clock type) rather than a server's.
fn unix_now() -> f64 {
    edgesite_clock::SystemClock
        .now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// User plus system CPU time of this process.
fn process_cpu_seconds() -> Option<f64> {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(secs(u.user_time()) + secs(u.system_time()))
}

/// The resident set size, from `VmRSS` in `/proc/self/status`.
fn process_resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The process start time: boot time (`btime` in `/proc/stat`) plus the process's start in
/// clock ticks since boot (field 22 of `/proc/self/stat`), at the USER_HZ of 100 that Linux
/// exposes to user space on every architecture it supports.
fn process_start_time() -> Option<f64> {
    const USER_HZ: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces: count fields after its closing paren.
    let after = &stat[stat.rfind(')')? + 1..];
    let start_ticks: f64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let btime: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(btime + start_ticks / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(verb: &str, resource: &str) -> RequestLabels {
        RequestLabels {
            verb: verb.into(),
            group: String::new(),
            version: "v1".into(),
            resource: resource.into(),
            subresource: String::new(),
        }
    }

    #[test]
    fn labels_from_requests() {
        let l = RequestLabels::of(
            &Method::GET,
            &"/api/v1/namespaces/d/pods?watch=true".parse().unwrap(),
        );
        assert_eq!((l.verb.as_str(), l.resource.as_str()), ("WATCH", "pods"));
        assert!(l.is_longrunning());
        let l = RequestLabels::of(
            &Method::POST,
            &"/apis/apps/v1/namespaces/d/deployments".parse().unwrap(),
        );
        assert_eq!(
            (l.verb.as_str(), l.group.as_str(), l.resource.as_str()),
            ("POST", "apps", "deployments")
        );
        let l = RequestLabels::of(&Method::GET, &"/healthz".parse().unwrap());
        assert_eq!((l.verb.as_str(), l.resource.as_str()), ("GET", ""));
    }

    #[test]
    fn histogram_is_cumulative_and_counts_match() {
        let m = Metrics::new();
        let l = labels("LIST", "pods");
        m.observe(&l, 200, Duration::from_millis(1));
        m.observe(&l, 200, Duration::from_millis(300));
        m.observe(&l, 500, Duration::from_secs(100));
        let text = m.render();
        assert!(text.contains(
            "apiserver_request_total{verb=\"LIST\",group=\"\",version=\"v1\",resource=\"pods\",subresource=\"\",code=\"200\"} 2"
        ));
        assert!(text.contains("code=\"500\"} 1"));
        assert!(text.contains("subresource=\"\",le=\"0.005\"} 1\n"));
        assert!(text.contains("subresource=\"\",le=\"0.4\"} 2\n"));
        assert!(text.contains("subresource=\"\",le=\"60\"} 2\n"));
        assert!(text.contains("subresource=\"\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("apiserver_request_duration_seconds_count{verb=\"LIST\""));
        assert!(text.contains("process_start_time_seconds "));
        assert!(text.contains("process_resident_memory_bytes "));
        assert!(text.contains("process_cpu_seconds_total "));
    }

    #[test]
    fn longrunning_guard_decrements() {
        let l = labels("WATCH", "configmaps");
        let g = global().longrunning(l.clone());
        assert!(global().render().contains(
            "apiserver_longrunning_requests{verb=\"WATCH\",group=\"\",version=\"v1\",resource=\"configmaps\",subresource=\"\"} 1"
        ));
        drop(g);
        assert!(
            global()
                .render()
                .contains("resource=\"configmaps\",subresource=\"\"} 0")
        );
    }

    #[test]
    fn escaping_and_start_time() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let start = process_start_time().unwrap();
        assert!(start <= unix_now() + 1.0 && start > unix_now() - 86_400.0 * 365.0);
    }
}
