//! The etcd backend: the [`Store`] trait mapped one to one onto a real etcd v3 cluster (KV, Txn,
//! Watch, Lease and Maintenance APIs) through `etcd-client`, for highly available control planes.
//! It adds no semantics of its own beyond what etcd does; it only checks requests that etcd would
//! refuse less clearly (empty keys, oversized values) and translates etcd's refusals into
//! [`Error`]s.
//!
//! Where etcd itself behaves differently from the embedded engine, [`EtcdStore`]'s documentation
//! says so.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client as ec;
use etcd_client::proto::{PbEvent, PbKeyValue, PbRangeResponse, PbResponseHeader, PbTxnOpResponse};
use futures::StreamExt;
use tracing::{debug, info, warn};

use crate::error::key_str;
use crate::{
    Compare, CompareOp, CompareTarget, Error, Event, EventType, KeyRange, KeyValue, LeaseId,
    LeaseInfo, MAX_VALUE_BYTES, RangeRequest, RangeResponse, Result, Revision, Store, StoreStatus,
    Txn, TxnOp, TxnOpResponse, TxnResponse, WatchRequest, WatchResponse, WatchStream,
};

/// etcd's client port, used when a datastore URL names a host without one.
pub const DEFAULT_PORT: u16 = 2379;

/// The most revisions etcd puts in one watch response while a watcher catches up
/// (`watchBatchMaxRevs` in etcd's mvcc package); a response holding that many may be followed by
/// more events at revisions below its header revision.
const ETCD_WATCH_BATCH_MAX_REVS: usize = 1000;

/// The URL forms [`EtcdConfig::from_url`] accepts, for error messages.
const URL_FORMS: &str = "etcd://host:port[,host:port...] or etcds://host:port[,host:port...]";

/// How to reach an etcd cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of the members, `http://host:port` or `https://host:port` (all of one scheme).
    /// Requests are balanced over the members that answer.
    pub endpoints: Vec<String>,
    /// TLS settings; required for `https` endpoints, refused for `http` ones.
    pub tls: Option<EtcdTls>,
    /// How long to wait for a connection to a member, and (added to `request_timeout`) for the
    /// first answer when connecting.
    pub connect_timeout: Duration,
    /// How long to wait for the answer to one request (range, txn, lease call, status, creating a
    /// watch). A write that timed out may still have been applied.
    pub request_timeout: Duration,
    /// How long to wait for a physical compaction, which can take much longer than a request.
    pub compact_timeout: Duration,
    /// HTTP/2 keep-alive `(interval, timeout)` while requests or watches are open, so that a dead
    /// member is noticed; `None` disables it. etcd refuses pings more often than every 5 s.
    pub keep_alive: Option<(Duration, Duration)>,
    /// The largest response accepted from etcd (large lists and watch batches exceed gRPC's
    /// default of 4 MiB).
    pub max_response_bytes: usize,
}

/// Certificates for talking to etcd over TLS (PEM files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// CA certificate(s) that signed the members' server certificates. Required: no system roots
    /// are trusted.
    pub ca_file: Option<PathBuf>,
    /// Client certificate, for clusters that require client authentication (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// Private key of the client certificate.
    pub key_file: Option<PathBuf>,
}

impl EtcdTls {
    /// TLS trusting the CA certificate(s) in `ca_file`, without client certificate.
    pub fn new(ca_file: impl Into<PathBuf>) -> Self {
        Self {
            ca_file: Some(ca_file.into()),
            cert_file: None,
            key_file: None,
        }
    }

    /// Adds a client certificate and its key.
    pub fn with_client_cert(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        self.cert_file = Some(cert_file.into());
        self.key_file = Some(key_file.into());
        self
    }
}

impl EtcdConfig {
    /// A configuration for these client URLs (`http://host:port` or `https://host:port`), with
    /// default timeouts and no TLS.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            tls: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            compact_timeout: Duration::from_secs(300),
            keep_alive: Some((Duration::from_secs(30), Duration::from_secs(10))),
            max_response_bytes: i32::MAX as usize,
        }
    }

    /// Parses a datastore URL: `etcd://host:port[,host:port...]` for plain HTTP members,
    /// `etcds://host:port[,host:port...]` for TLS ones (whose certificates the caller then sets
    /// with [`Self::with_tls`]). The port defaults to 2379; IPv6 addresses go in brackets
    /// (`etcd://[::1]:2379`).
    pub fn from_url(url: &str) -> Result<Self> {
        let bad = |why: String| {
            Error::InvalidRequest(format!(
                "invalid etcd datastore URL {url:?}: {why}; expected {URL_FORMS}"
            ))
        };
        let Some((scheme, rest)) = url.trim().split_once("://") else {
            return Err(bad("no scheme".into()));
        };
        let (tls, http) = match scheme.to_ascii_lowercase().as_str() {
            "etcd" => (false, "http"),
            "etcds" => (true, "https"),
            other => return Err(bad(format!("unknown scheme {other:?}"))),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if let Some(c) = rest.chars().find(|c| matches!(c, '/' | '?' | '#' | '@')) {
            return Err(bad(format!(
                "only a list of host:port may follow the scheme (found {c:?})"
            )));
        }
        let mut endpoints: Vec<String> = Vec::new();
        for member in rest.split(',') {
            let member = member.trim();
            if member.is_empty() {
                return Err(bad(if rest.trim().is_empty() {
                    "no host given".into()
                } else {
                    "empty entry in the host list".into()
                }));
            }
            let (host, port) = parse_host_port(member).map_err(bad)?;
            let endpoint = format!("{http}://{host}:{port}");
            if !endpoints.contains(&endpoint) {
                endpoints.push(endpoint);
            }
        }
        let mut config = Self::new(endpoints);
        if tls {
            config.tls = Some(EtcdTls::default());
        }
        Ok(config)
    }

    /// Sets the TLS certificates (for `etcds://` / `https` endpoints).
    pub fn with_tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the per-request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The endpoints as one string, for messages.
    fn describe(&self) -> String {
        self.endpoints.join(",")
    }

    /// Checks the settings and turns them into `etcd-client` options (reading the TLS files).
    fn connect_options(&self) -> Result<ec::ConnectOptions> {
        let invalid = |why: String| {
            Error::InvalidRequest(format!("etcd datastore {}: {why}", self.describe()))
        };
        if self.endpoints.is_empty() {
            return Err(invalid("no endpoint given".into()));
        }
        let https = self
            .endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        let http = self
            .endpoints
            .iter()
            .filter(|e| e.starts_with("http://"))
            .count();
        if https + http != self.endpoints.len() {
            return Err(invalid(
                "endpoints must be http://host:port or https://host:port URLs".into(),
            ));
        }
        if https > 0 && http > 0 {
            return Err(invalid("endpoints mix http and https".into()));
        }
        let mut options = ec::ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            // etcd closes connections that ping while no stream is open.
            .with_keep_alive_while_idle(false)
            // A member cut off from the leader fails requests and cancels watches at once (as
            // kube-apiserver asks for its watches), instead of serving nothing until it rejoins.
            .with_require_leader(true);
        if let Some((interval, timeout)) = self.keep_alive {
            options = options.with_keep_alive(interval, timeout);
        }
        match (&self.tls, https > 0) {
            (None, false) => {}
            (Some(_), false) => {
                return Err(invalid(
                    "TLS settings were given for plain http endpoints: use etcds:// (https) URLs"
                        .into(),
                ));
            }
            (None, true) => {
                return Err(invalid(
                    "https endpoints need TLS settings with at least a CA certificate".into(),
                ));
            }
            (Some(tls), true) => {
                let read = |what: &str, path: &PathBuf| {
                    std::fs::read(path).map_err(|e| {
                        invalid(format!(
                            "cannot read the etcd {what} {}: {e}",
                            path.display()
                        ))
                    })
                };
                let Some(ca_file) = &tls.ca_file else {
                    return Err(invalid(
                        "TLS needs a CA certificate to verify the etcd members (ca_file)".into(),
                    ));
                };
                let mut tls_options = ec::TlsOptions::new()
                    .ca_certificate(ec::Certificate::from_pem(read("CA certificate", ca_file)?));
                match (&tls.cert_file, &tls.key_file) {
                    (None, None) => {}
                    (Some(cert), Some(key)) => {
                        tls_options = tls_options.identity(ec::Identity::from_pem(
                            read("client certificate", cert)?,
                            read("client key", key)?,
                        ));
                    }
                    _ => {
                        return Err(invalid(
                            "a client certificate needs both cert_file and key_file".into(),
                        ));
                    }
                }
                options = options.with_tls(tls_options);
            }
        }
        Ok(options)
    }
}

/// Splits `host[:port]` (IPv6 in brackets), checking both.
fn parse_host_port(member: &str) -> std::result::Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = member.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return Err(format!("unclosed '[' in {member:?}"));
        };
        if addr.is_empty()
            || !addr
                .chars()
                .all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.'))
        {
            return Err(format!("bad IPv6 address in {member:?}"));
        }
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => {
                    return Err(format!(
                        "unexpected {after:?} after the address in {member:?}"
                    ));
                }
            },
        };
        (format!("[{addr}]"), port)
    } else {
        let (host, port) = match member.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (member, None),
        };
        if port.is_some_and(|p| p.contains(':')) {
            return Err(format!(
                "too many ':' in {member:?} (write IPv6 addresses as [addr]:port)"
            ));
        }
        if host.is_empty() {
            return Err(format!("no host in {member:?}"));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            return Err(format!("bad host name {host:?}"));
        }
        (host.to_string(), port)
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 && p.chars().all(|c| c.is_ascii_digit()) => port,
            _ => return Err(format!("bad port {p:?} in {member:?} (1-65535)")),
        },
    };
    Ok((host, port))
}

/// A [`Store`] on a real etcd v3 cluster.
///
/// Cheap to share behind an `Arc`; every method opens its own gRPC call on one balanced
/// connection pool. Each watch is a gRPC stream of its own, closed (and the watcher removed from
/// etcd) when the [`WatchStream`] is dropped.
///
/// What etcd does that the trait leaves open or the embedded engine may do otherwise:
/// - etcd refuses a transaction branch that writes one key twice (two puts, or a put and a delete
///   covering it) with "duplicate key given in txn request": [`Error::InvalidRequest`].
/// - etcd caps whole requests at `--max-request-bytes` (1.5 MiB by default, the same number as
///   [`MAX_VALUE_BYTES`]), so with default settings a value within a few hundred bytes of the
///   limit is refused: [`Error::ValueTooLarge`] with the request's put bytes as `size`. Run etcd
///   with `--max-request-bytes=2097152` (or more) to accept every value the trait allows.
/// - etcd raises lease TTLs below its minimum (2 s with default raft timing) to that minimum.
/// - A range inside a transaction reports the revision it read at: the transaction's own
///   revision if an earlier operation of the branch wrote, the previous one otherwise.
/// - etcd does not report its compaction point: the store keeps the latest one it saw (its own
///   compactions, watches cancelled by compaction) and checks it with one range at that revision;
///   if someone else compacted further since, it finds the new point by binary search with ranges
///   at past revisions (a few dozen small requests at most). [`Store::status`] and the
///   `compact_revision` of [`Error::Compacted`] use it.
/// - A request that times out fails with [`Error::Etcd`]; a write may still have been applied.
pub struct EtcdStore {
    kv: ec::KvClient,
    watch: ec::WatchClient,
    lease: ec::LeaseClient,
    maintenance: ec::MaintenanceClient,
    config: EtcdConfig,
    endpoints: Arc<str>,
    /// The latest compaction point seen (0: none seen); never above etcd's real one.
    compacted: Arc<AtomicI64>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.config.endpoints)
            .field("tls", &self.config.tls.is_some())
            .field("compacted", &self.compacted.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// How an etcd call failed, sorted by what the caller needs to add to the error.
#[derive(Debug)]
enum CallError {
    /// "mvcc: required revision has been compacted".
    Compacted(String),
    /// "mvcc: required revision is a future revision".
    FutureRevision(String),
    /// "requested lease not found".
    LeaseNotFound(String),
    /// "request is too large" (etcd's `--max-request-bytes`) or gRPC's message limit.
    TooLarge(String),
    /// Anything else, already translated.
    Other(Error),
}

impl From<CallError> for Error {
    /// The translation when the call site has nothing to add.
    fn from(e: CallError) -> Self {
        match e {
            CallError::Compacted(m)
            | CallError::FutureRevision(m)
            | CallError::LeaseNotFound(m)
            | CallError::TooLarge(m) => Error::InvalidRequest(m),
            CallError::Other(e) => e,
        }
    }
}

impl EtcdStore {
    /// Connects to the cluster and checks that a member answers; fails with [`Error::Etcd`]
    /// naming the endpoints when none does within `connect_timeout + request_timeout`, or
    /// [`Error::InvalidRequest`] when the configuration itself is wrong.
    pub async fn connect(config: EtcdConfig) -> Result<Self> {
        let endpoints: Arc<str> = config.describe().into();
        let options = config.connect_options()?;
        let client = ec::Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|e| match e {
                ec::Error::InvalidArgs(_) | ec::Error::InvalidUri(_) => {
                    Error::InvalidRequest(format!("bad etcd endpoint in {endpoints}: {e}"))
                }
                e => Error::Etcd(format!("cannot connect to etcd at {endpoints}: {e}")),
            })?;
        let limit = config.max_response_bytes;
        let store = Self {
            kv: client.kv_client().max_decoding_message_size(limit),
            watch: client.watch_client().max_decoding_message_size(limit),
            lease: client.lease_client(),
            maintenance: client.maintenance_client(),
            endpoints: endpoints.clone(),
            compacted: Arc::new(AtomicI64::new(0)),
            config,
        };
        let wait = store.config.connect_timeout + store.config.request_timeout;
        let mut maintenance = store.maintenance.clone();
        let status = match tokio::time::timeout(wait, maintenance.status()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => {
                return Err(Error::Etcd(format!(
                    "cannot reach etcd at {endpoints}: {e}"
                )));
            }
            Err(_) => {
                return Err(Error::Etcd(format!(
                    "cannot reach etcd at {endpoints}: no answer within {wait:?} \
                     (is etcd running there, and are the scheme and TLS settings right?)"
                )));
            }
        };
        info!(
            endpoints = %endpoints,
            version = status.version(),
            revision = status.header().map_or(0, |h| h.revision()),
            "connected to etcd"
        );
        Ok(store)
    }

    /// Runs one etcd call under `limit`, sorting its failure.
    async fn timed<T, F>(&self, op: &str, limit: Duration, call: F) -> Result<T, CallError>
    where
        F: Future<Output = Result<T, ec::Error>>,
    {
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(op, &self.endpoints, e)),
            Err(_) => Err(CallError::Other(Error::Etcd(format!(
                "{op}: no answer from etcd at {} within {limit:?}",
                self.endpoints
            )))),
        }
    }

    /// The current revision of the cluster.
    async fn current_revision(&self) -> Result<Revision> {
        let mut kv = self.kv.clone();
        let opts = ec::GetOptions::new().with_count_only();
        let resp = self
            .timed(
                "range",
                self.config.request_timeout,
                kv.get(vec![0u8], Some(opts)),
            )
            .await?;
        Ok(header_revision(resp.0.header.as_ref()))
    }

    /// Whether revision `rev` (>= 1, <= current) can still be read.
    async fn readable_at(&self, rev: Revision) -> Result<bool> {
        let mut kv = self.kv.clone();
        let opts = ec::GetOptions::new().with_count_only().with_revision(rev);
        match self
            .timed(
                "range",
                self.config.request_timeout,
                kv.get(vec![0u8], Some(opts)),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(CallError::Compacted(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The compaction point: the oldest readable revision (0 when nothing was ever compacted, or
    /// only revision 1), given that it is at least `at_least`. etcd does not report it, so it is
    /// found from the last one seen, checked with one range at that revision, and if history was
    /// compacted further since (by another client), by a binary search with ranges at past
    /// revisions (about log2 of the revisions since the last known point).
    async fn compact_revision(&self, at_least: Revision) -> Result<Revision> {
        let current = self.current_revision().await?;
        let known = self.compacted.load(Ordering::Acquire).max(at_least);
        if known >= current {
            return Ok(known);
        }
        // `known` is a point seen before (or a lower bound of the real one): if it can still be
        // read, it is the point (0 meaning "nothing compacted", or only revision 1).
        let floor = known.max(1);
        if self.readable_at(floor).await? {
            self.compacted.fetch_max(known, Ordering::AcqRel);
            return Ok(known);
        }
        // `floor` is compacted, `current` never is: search the first readable revision between.
        let (mut bad, mut good) = (floor, current);
        while good - bad > 1 {
            let mid = bad + (good - bad) / 2;
            if self.readable_at(mid).await? {
                good = mid;
            } else {
                bad = mid;
            }
        }
        debug!(compact_revision = good, "found etcd's compaction point");
        self.compacted.fetch_max(good, Ordering::AcqRel);
        Ok(good)
    }

    /// The error for a read at `requested` that etcd refused as compacted.
    async fn compacted_error(&self, requested: Revision) -> Error {
        match self.compact_revision(requested.saturating_add(1)).await {
            Ok(compact_revision) => Error::Compacted {
                requested,
                compact_revision,
            },
            Err(e) => {
                warn!(error = %e, "cannot find etcd's compaction point");
                Error::Compacted {
                    requested,
                    compact_revision: self
                        .compacted
                        .load(Ordering::Acquire)
                        .max(requested.saturating_add(1)),
                }
            }
        }
    }

    /// The error for a read or compaction at `requested` that etcd refused as in the future.
    async fn future_error(&self, requested: Revision) -> Error {
        let current = match self.current_revision().await {
            Ok(current) => current,
            Err(e) => {
                warn!(error = %e, "cannot read etcd's current revision");
                requested - 1
            }
        };
        Error::FutureRevision { requested, current }
    }

    /// Which lease a transaction refused with "lease not found" named: the only one it uses, or
    /// the first that etcd no longer knows.
    async fn missing_lease(&self, leases: &[LeaseId]) -> LeaseId {
        if leases.len() > 1 {
            for &id in leases {
                let mut lease = self.lease.clone();
                let ttl = self
                    .timed(
                        "lease time-to-live",
                        self.config.request_timeout,
                        lease.time_to_live(id, None),
                    )
                    .await;
                match ttl {
                    Ok(resp) if resp.ttl() == -1 => return id,
                    Err(CallError::LeaseNotFound(_)) => return id,
                    _ => {}
                }
            }
        }
        leases.first().copied().unwrap_or(0)
    }
}

/// Sorts an `etcd-client` error by etcd's refusal messages (stable across etcd versions).
fn classify(op: &str, endpoints: &str, err: ec::Error) -> CallError {
    let (code, msg) = match &err {
        ec::Error::GRpcStatus(s) => (Some(s.code()), s.message().to_string()),
        ec::Error::LeaseKeepAliveError(m) => (None, m.clone()),
        other => (None, other.to_string()),
    };
    if msg.contains("required revision has been compacted") {
        CallError::Compacted(msg)
    } else if msg.contains("required revision is a future revision") {
        CallError::FutureRevision(msg)
    } else if msg.contains("lease not found") {
        CallError::LeaseNotFound(msg)
    } else if msg.contains("request is too large")
        || (code == Some(tonic::Code::ResourceExhausted) && msg.contains("larger than max"))
    {
        CallError::TooLarge(msg)
    } else if msg.contains("database space exceeded") {
        CallError::Other(Error::Storage(format!(
            "etcd at {endpoints} refused the {op}: {msg} (its NOSPACE alarm is raised: compact \
             and defragment etcd, or raise its --quota-backend-bytes, then disarm the alarm)"
        )))
    } else if code == Some(tonic::Code::InvalidArgument) {
        CallError::Other(Error::InvalidRequest(format!(
            "etcd refused the {op}: {msg}"
        )))
    } else {
        CallError::Other(Error::Etcd(format!("{op} on {endpoints} failed: {err}")))
    }
}

fn header_revision(header: Option<&PbResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision)
}

/// Checks a single key.
fn check_key(key: &[u8], what: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidRequest(format!("{what}: the key is empty")));
    }
    Ok(())
}

/// The etcd `(key, range_end)` of a range, refusing an empty key (an empty range start means the
/// beginning of the keyspace, which etcd spells `"\0"`).
fn etcd_range(range: &KeyRange, what: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    match range {
        KeyRange::Key(k) => check_key(k, what)?,
        KeyRange::Range { start, end } if start.is_empty() => {
            if end.is_empty() {
                return Err(Error::InvalidRequest(format!(
                    "{what}: the range has an empty start and end"
                )));
            }
            return Ok((vec![0], end.clone()));
        }
        _ => {}
    }
    Ok(range.to_etcd())
}

fn kv_from_pb(kv: PbKeyValue) -> KeyValue {
    KeyValue {
        key: kv.key,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

/// Our event from etcd's; `None` for an event type this code does not know.
fn event_from_pb(ev: PbEvent) -> Option<Event> {
    let kind = match ev.r#type {
        0 => EventType::Put,
        1 => EventType::Delete,
        other => {
            warn!(
                event_type = other,
                "skipping an etcd watch event of unknown type"
            );
            return None;
        }
    };
    let kv = ev.kv.map(kv_from_pb).unwrap_or_default();
    let kv = match kind {
        EventType::Put => kv,
        // etcd already sends this; make sure of the trait's shape.
        EventType::Delete => KeyValue {
            key: kv.key,
            mod_revision: kv.mod_revision,
            ..KeyValue::default()
        },
    };
    Some(Event {
        kind,
        kv,
        prev_kv: ev.prev_kv.map(kv_from_pb),
    })
}

/// The revision of a watch batch: etcd's header revision, except for a full catch-up batch
/// ([`ETCD_WATCH_BATCH_MAX_REVS`] revisions), which etcd sends with the current revision although
/// more events below it may follow; then the batch's last event revision, so that "every change up
/// to `revision` has been delivered" holds.
fn batch_revision(events: &[Event], header_revision: Revision) -> Revision {
    let Some(last) = events.last() else {
        return header_revision;
    };
    let last = last.kv.mod_revision;
    if last >= header_revision {
        return last;
    }
    let mut revisions = events.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>();
    revisions.dedup();
    if revisions.len() >= ETCD_WATCH_BATCH_MAX_REVS {
        last
    } else {
        header_revision
    }
}

fn range_response_from_pb(resp: PbRangeResponse, fallback_revision: Revision) -> RangeResponse {
    let revision = header_revision(resp.header.as_ref());
    RangeResponse {
        kvs: resp.kvs.into_iter().map(kv_from_pb).collect(),
        count: u64::try_from(resp.count).unwrap_or(0),
        more: resp.more,
        revision: if revision > 0 {
            revision
        } else {
            fallback_revision
        },
    }
}

fn get_options(req: &RangeRequest, end: Vec<u8>) -> ec::GetOptions {
    let mut opts = ec::GetOptions::new().with_range(end);
    if let Some(rev) = req.revision {
        opts = opts.with_revision(rev);
    }
    if req.limit > 0 {
        opts = opts.with_limit(i64::try_from(req.limit).unwrap_or(i64::MAX));
    }
    if req.count_only {
        opts = opts.with_count_only();
    }
    if req.keys_only {
        opts = opts.with_keys_only();
    }
    opts
}

fn compare_to_etcd(c: Compare) -> ec::Compare {
    let op = match c.op {
        CompareOp::Equal => ec::CompareOp::Equal,
        CompareOp::NotEqual => ec::CompareOp::NotEqual,
        CompareOp::Greater => ec::CompareOp::Greater,
        CompareOp::Less => ec::CompareOp::Less,
    };
    match c.target {
        CompareTarget::Value(v) => ec::Compare::value(c.key, op, v),
        CompareTarget::Version(v) => ec::Compare::version(c.key, op, v),
        CompareTarget::CreateRevision(r) => ec::Compare::create_revision(c.key, op, r),
        CompareTarget::ModRevision(r) => ec::Compare::mod_revision(c.key, op, r),
        CompareTarget::Lease(l) => ec::Compare::lease(c.key, op, l),
    }
}

/// A transaction checked and converted, with what error translation needs.
#[derive(Debug)]
struct PreparedTxn {
    txn: ec::Txn,
    /// Leases the puts attach, success branch first, without repeats.
    leases: Vec<LeaseId>,
    /// The oldest revision a range reads at, if any reads at a past revision.
    oldest_read: Option<Revision>,
    /// The largest put value: key and size of the request's puts together.
    largest_put: Option<(Vec<u8>, usize)>,
}

/// Checks a transaction as the embedded engine does (empty keys, value sizes) and converts it.
fn prepare_txn(txn: Txn) -> Result<PreparedTxn> {
    let mut leases = Vec::new();
    let mut oldest_read: Option<Revision> = None;
    let mut largest: Option<(Vec<u8>, usize)> = None;
    let mut put_bytes = 0usize;
    for c in &txn.compare {
        check_key(&c.key, "transaction compare")?;
    }
    let mut convert = |ops: Vec<TxnOp>| -> Result<Vec<ec::TxnOp>> {
        ops.into_iter()
            .map(|op| match op {
                TxnOp::Range(req) => {
                    let (key, end) = etcd_range(&req.range, "transaction range")?;
                    if let Some(rev) = req.revision.filter(|r| *r > 0) {
                        oldest_read = Some(oldest_read.map_or(rev, |o| o.min(rev)));
                    }
                    let opts = get_options(&req, end);
                    Ok(ec::TxnOp::get(key, Some(opts)))
                }
                TxnOp::Put {
                    key,
                    value,
                    lease,
                    prev_kv,
                } => {
                    check_key(&key, "transaction put")?;
                    if value.len() > MAX_VALUE_BYTES {
                        return Err(Error::ValueTooLarge {
                            key: key_str(&key),
                            size: value.len(),
                            limit: MAX_VALUE_BYTES,
                        });
                    }
                    if lease != 0 && !leases.contains(&lease) {
                        leases.push(lease);
                    }
                    put_bytes += key.len() + value.len();
                    if largest.as_ref().is_none_or(|(_, size)| value.len() > *size) {
                        largest = Some((key.clone(), value.len()));
                    }
                    let mut opts = ec::PutOptions::new().with_lease(lease);
                    if prev_kv {
                        opts = opts.with_prev_key();
                    }
                    Ok(ec::TxnOp::put(key, value, Some(opts)))
                }
                TxnOp::Delete { range, prev_kv } => {
                    let (key, end) = etcd_range(&range, "transaction delete")?;
                    let mut opts = ec::DeleteOptions::new().with_range(end);
                    if prev_kv {
                        opts = opts.with_prev_key();
                    }
                    Ok(ec::TxnOp::delete(key, Some(opts)))
                }
            })
            .collect()
    };
    let success = convert(txn.success)?;
    let failure = convert(txn.failure)?;
    let compare: Vec<ec::Compare> = txn.compare.into_iter().map(compare_to_etcd).collect();
    Ok(PreparedTxn {
        txn: ec::Txn::new()
            .when(compare)
            .and_then(success)
            .or_else(failure),
        leases,
        oldest_read,
        largest_put: largest.map(|(key, _)| (key, put_bytes)),
    })
}

fn txn_response_from_pb(resp: ec::TxnResponse) -> TxnResponse {
    let resp = resp.0;
    let revision = header_revision(resp.header.as_ref());
    let responses = resp
        .responses
        .into_iter()
        .filter_map(|op| op.response)
        .filter_map(|op| match op {
            PbTxnOpResponse::ResponseRange(r) => {
                Some(TxnOpResponse::Range(range_response_from_pb(r, revision)))
            }
            PbTxnOpResponse::ResponsePut(p) => Some(TxnOpResponse::Put {
                prev_kv: p.prev_kv.map(kv_from_pb),
            }),
            PbTxnOpResponse::ResponseDeleteRange(d) => Some(TxnOpResponse::Delete {
                deleted: u64::try_from(d.deleted).unwrap_or(0),
                prev_kvs: d.prev_kvs.into_iter().map(kv_from_pb).collect(),
            }),
            // Nested transactions are never sent.
            PbTxnOpResponse::ResponseTxn(_) => None,
        })
        .collect();
    TxnResponse {
        succeeded: resp.succeeded,
        revision,
        responses,
    }
}

/// What the watch stream carries between items.
struct WatchState {
    stream: ec::WatchStream,
    /// The first revision not delivered yet (what a compaction cancels).
    next_revision: Revision,
    compacted: Arc<AtomicI64>,
    endpoints: Arc<str>,
    done: bool,
}

impl WatchState {
    /// The next item of our stream, `None` once it ended.
    async fn next_item(&mut self) -> Option<Result<WatchResponse>> {
        if self.done {
            return None;
        }
        loop {
            let resp = match self.stream.message().await {
                Ok(Some(resp)) => resp.0,
                Ok(None) => {
                    self.done = true;
                    return Some(Err(Error::Etcd(format!(
                        "etcd at {} closed the watch stream",
                        self.endpoints
                    ))));
                }
                Err(e) => {
                    self.done = true;
                    warn!(endpoints = %self.endpoints, error = %e, "etcd watch failed");
                    return Some(Err(Error::Etcd(format!(
                        "watch on {} failed: {e}",
                        self.endpoints
                    ))));
                }
            };
            if resp.compact_revision > 0 {
                self.done = true;
                self.compacted
                    .fetch_max(resp.compact_revision, Ordering::AcqRel);
                return Some(Err(Error::Compacted {
                    requested: self.next_revision,
                    compact_revision: resp.compact_revision,
                }));
            }
            if resp.canceled {
                self.done = true;
                return Some(Err(Error::Etcd(format!(
                    "etcd at {} canceled the watch: {}",
                    self.endpoints,
                    if resp.cancel_reason.is_empty() {
                        "no reason given"
                    } else {
                        &resp.cancel_reason
                    }
                ))));
            }
            if resp.created {
                continue;
            }
            let header = header_revision(resp.header.as_ref());
            let events: Vec<Event> = resp.events.into_iter().filter_map(event_from_pb).collect();
            let revision = batch_revision(&events, header);
            if let Some(last) = events.last() {
                self.next_revision = self.next_revision.max(last.kv.mod_revision + 1);
            }
            self.next_revision = self.next_revision.max(revision + 1);
            return Some(Ok(WatchResponse { events, revision }));
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        let (key, end) = etcd_range(&req.range, "range")?;
        let opts = get_options(&req, end);
        let mut kv = self.kv.clone();
        match self
            .timed(
                "range",
                self.config.request_timeout,
                kv.get(key, Some(opts)),
            )
            .await
        {
            Ok(resp) => Ok(range_response_from_pb(resp.0, 0)),
            Err(CallError::Compacted(_)) => {
                Err(self.compacted_error(req.revision.unwrap_or(0)).await)
            }
            Err(CallError::FutureRevision(_)) => {
                Err(self.future_error(req.revision.unwrap_or(0)).await)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Refuses empty keys and values over [`MAX_VALUE_BYTES`] before sending anything; a put with
    /// a lease etcd does not know fails with [`Error::LeaseNotFound`] naming that lease.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let prepared = prepare_txn(txn)?;
        let mut kv = self.kv.clone();
        match self
            .timed(
                "transaction",
                self.config.request_timeout,
                kv.txn(prepared.txn),
            )
            .await
        {
            Ok(resp) => Ok(txn_response_from_pb(resp)),
            Err(CallError::LeaseNotFound(_)) => Err(Error::LeaseNotFound(
                self.missing_lease(&prepared.leases).await,
            )),
            Err(CallError::Compacted(m)) => match prepared.oldest_read {
                Some(rev) => Err(self.compacted_error(rev).await),
                None => Err(Error::Etcd(m)),
            },
            Err(CallError::FutureRevision(m)) => match prepared.oldest_read {
                Some(rev) => Err(self.future_error(rev).await),
                None => Err(Error::Etcd(m)),
            },
            Err(CallError::TooLarge(m)) => match prepared.largest_put {
                // etcd's --max-request-bytes (1.5 MiB by default) counts the whole request.
                Some((key, size)) => Err(Error::ValueTooLarge {
                    key: key_str(&key),
                    size,
                    limit: MAX_VALUE_BYTES,
                }),
                None => Err(Error::InvalidRequest(format!(
                    "etcd refused the transaction: {m}"
                ))),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Returns once etcd has registered the watch. A start revision older than the compaction
    /// point gives [`Error::Compacted`] as the stream's first (and last) item; a failed or closed
    /// etcd stream gives [`Error::Etcd`] and ends. Each etcd response is one [`WatchResponse`]
    /// (an empty one is a progress notification).
    async fn watch(&self, req: WatchRequest) -> Result<WatchStream> {
        let (key, end) = etcd_range(&req.range, "watch")?;
        let mut opts = ec::WatchOptions::new().with_range(end);
        if let Some(rev) = req.start_revision {
            opts = opts.with_start_revision(rev);
        }
        if req.prev_kv {
            opts = opts.with_prev_key();
        }
        if req.progress_notify {
            opts = opts.with_progress_notify();
        }
        let mut client = self.watch.clone();
        // Wait for etcd to confirm the watch, so that every write after this returns is seen.
        let (stream, created) = self
            .timed("watch", self.config.request_timeout, async move {
                let mut stream = client.watch(key, Some(opts)).await?;
                let created = stream.message().await?;
                Ok((stream, created))
            })
            .await?;
        let Some(created) = created else {
            return Err(Error::Etcd(format!(
                "etcd at {} closed the watch stream before confirming the watch",
                self.endpoints
            )));
        };
        let created = created.0;
        if created.canceled {
            if created.compact_revision > 0 {
                self.compacted
                    .fetch_max(created.compact_revision, Ordering::AcqRel);
                return Err(Error::Compacted {
                    requested: req.start_revision.unwrap_or(0),
                    compact_revision: created.compact_revision,
                });
            }
            return Err(Error::Etcd(format!(
                "etcd at {} refused the watch: {}",
                self.endpoints, created.cancel_reason
            )));
        }
        if !created.created {
            warn!(endpoints = %self.endpoints, "etcd's first watch response was not the creation");
        }
        let next_revision = match req.start_revision {
            Some(rev) if rev > 0 => rev,
            _ => header_revision(created.header.as_ref()) + 1,
        };
        let state = WatchState {
            stream,
            next_revision,
            compacted: self.compacted.clone(),
            endpoints: self.endpoints.clone(),
            done: false,
        };
        Ok(futures::stream::unfold(state, |mut state| async move {
            let item = state.next_item().await?;
            Some((item, state))
        })
        .boxed())
    }

    async fn lease_grant(&self, ttl_secs: i64) -> Result<LeaseId> {
        if ttl_secs <= 0 {
            return Err(Error::InvalidRequest(format!(
                "lease TTL must be positive, got {ttl_secs}"
            )));
        }
        let mut lease = self.lease.clone();
        let resp = self
            .timed(
                "lease grant",
                self.config.request_timeout,
                lease.grant(ttl_secs, None),
            )
            .await?;
        if !resp.error().is_empty() {
            return Err(Error::Etcd(format!(
                "etcd at {} refused the lease: {}",
                self.endpoints,
                resp.error()
            )));
        }
        Ok(resp.id())
    }

    /// One renewal round trip (two keep-alives on one stream, see inside); `ttl` and
    /// `granted_ttl` are both the TTL etcd renewed the lease to.
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<LeaseInfo> {
        let mut lease = self.lease.clone();
        // `etcd-client` sends the first keep-alive itself but keeps its answer; a second one on the
        // same stream gives the TTL back (etcd renews to the granted TTL and answers with it).
        let result = self
            .timed(
                "lease keep-alive",
                self.config.request_timeout,
                async move {
                    let (mut keeper, mut stream) = lease.keep_alive(id).await?;
                    keeper.keep_alive().await?;
                    stream.message().await
                },
            )
            .await;
        match result {
            Ok(Some(resp)) if resp.ttl() > 0 => Ok(LeaseInfo {
                id,
                granted_ttl: resp.ttl(),
                ttl: resp.ttl(),
            }),
            Ok(Some(_)) | Err(CallError::LeaseNotFound(_)) => Err(Error::LeaseNotFound(id)),
            Ok(None) => Err(Error::Etcd(format!(
                "etcd at {} closed the lease keep-alive stream",
                self.endpoints
            ))),
            Err(e) => Err(e.into()),
        }
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        let mut lease = self.lease.clone();
        match self
            .timed(
                "lease revoke",
                self.config.request_timeout,
                lease.revoke(id),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(CallError::LeaseNotFound(_)) => Err(Error::LeaseNotFound(id)),
            Err(e) => Err(e.into()),
        }
    }

    async fn lease_time_to_live(&self, id: LeaseId) -> Result<LeaseInfo> {
        let mut lease = self.lease.clone();
        match self
            .timed(
                "lease time-to-live",
                self.config.request_timeout,
                lease.time_to_live(id, None),
            )
            .await
        {
            Ok(resp) if resp.ttl() == -1 => Err(Error::LeaseNotFound(id)),
            Ok(resp) => Ok(LeaseInfo {
                id,
                granted_ttl: resp.granted_ttl(),
                ttl: resp.ttl().max(0),
            }),
            Err(CallError::LeaseNotFound(_)) => Err(Error::LeaseNotFound(id)),
            Err(e) => Err(e.into()),
        }
    }

    /// Physical compaction: returns once etcd has removed the old revisions from its database.
    /// Compacting again to the current compaction point succeeds; to an older revision fails with
    /// [`Error::Compacted`]; past the current revision with [`Error::FutureRevision`].
    async fn compact(&self, revision: Revision) -> Result<()> {
        if revision <= 0 {
            return Err(Error::InvalidRequest(format!(
                "compaction revision must be positive, got {revision}"
            )));
        }
        let mut kv = self.kv.clone();
        let opts = ec::CompactionOptions::new().with_physical();
        match self
            .timed(
                "compaction",
                self.config.compact_timeout,
                kv.compact(revision, Some(opts)),
            )
            .await
        {
            Ok(_) => {
                self.compacted.fetch_max(revision, Ordering::AcqRel);
                info!(revision, endpoints = %self.endpoints, "compacted etcd");
                Ok(())
            }
            // etcd refuses any revision at or below its compaction point.
            Err(CallError::Compacted(_)) => {
                let point = self.compact_revision(revision).await?;
                if point <= revision {
                    Ok(())
                } else {
                    Err(Error::Compacted {
                        requested: revision,
                        compact_revision: point,
                    })
                }
            }
            Err(CallError::FutureRevision(_)) => Err(self.future_error(revision).await),
            Err(e) => Err(e.into()),
        }
    }

    /// `revision` and `key_count` from one count of the whole keyspace, `db_size_bytes` from the
    /// answering member's status, `compact_revision` as described on [`EtcdStore`].
    async fn status(&self) -> Result<StoreStatus> {
        let mut maintenance = self.maintenance.clone();
        let mut kv = self.kv.clone();
        let count = ec::GetOptions::new()
            .with_range(vec![0u8])
            .with_count_only();
        let (status, keys) = tokio::try_join!(
            self.timed("status", self.config.request_timeout, maintenance.status()),
            self.timed(
                "range",
                self.config.request_timeout,
                kv.get(vec![0u8], Some(count))
            ),
        )?;
        let compact_revision = self.compact_revision(0).await?;
        Ok(StoreStatus {
            revision: header_revision(keys.0.header.as_ref()),
            compact_revision,
            db_size_bytes: u64::try_from(status.db_size()).unwrap_or(0),
            key_count: u64::try_from(keys.count()).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_client::proto::{PbTxnOpRequest, PbTxnRequest};

    fn endpoints(url: &str) -> Vec<String> {
        EtcdConfig::from_url(url).unwrap().endpoints
    }

    fn url_error(url: &str) -> String {
        match EtcdConfig::from_url(url) {
            Err(Error::InvalidRequest(m)) => m,
            other => panic!("{url}: expected InvalidRequest, got {other:?}"),
        }
    }

    #[test]
    fn parses_plain_urls() {
        assert_eq!(
            endpoints("etcd://127.0.0.1:2379"),
            ["http://127.0.0.1:2379"]
        );
        assert_eq!(
            endpoints("etcd://a.example:2379,b.example:32379/"),
            ["http://a.example:2379", "http://b.example:32379"]
        );
        assert_eq!(endpoints("etcd://etcd-0"), ["http://etcd-0:2379"]);
        assert_eq!(endpoints("ETCD://[::1]:23790"), ["http://[::1]:23790"]);
        assert_eq!(endpoints("etcd://[fe80::1]"), ["http://[fe80::1]:2379"]);
        assert_eq!(
            endpoints("etcd://h:1, h:1 ,h:2"),
            ["http://h:1", "http://h:2"]
        );
        let config = EtcdConfig::from_url("etcd://h:2379").unwrap();
        assert_eq!(config.tls, None);
    }

    #[test]
    fn parses_tls_urls() {
        let config = EtcdConfig::from_url("etcds://a:2379,b:2379").unwrap();
        assert_eq!(config.endpoints, ["https://a:2379", "https://b:2379"]);
        assert_eq!(config.tls, Some(EtcdTls::default()));
        let config = config.with_tls(EtcdTls::new("/ca.pem").with_client_cert("/c.pem", "/k.pem"));
        let tls = config.tls.unwrap();
        assert_eq!(tls.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(tls.key_file, Some(PathBuf::from("/k.pem")));
    }

    #[test]
    fn refuses_bad_urls_naming_them() {
        for (url, why) in [
            ("http://h:2379", "unknown scheme"),
            ("h:2379", "no scheme"),
            ("etcd://", "no host"),
            ("etcd:///", "no host"),
            ("etcd://a:1,,b:2", "empty entry"),
            ("etcd://h:", "bad port"),
            ("etcd://h:0", "bad port"),
            ("etcd://h:65536", "bad port"),
            ("etcd://h:+1", "bad port"),
            ("etcd://h:x", "bad port"),
            ("etcd://:2379", "no host"),
            ("etcd://::1:2379", "IPv6"),
            ("etcd://[::1", "unclosed"),
            ("etcd://[::1]x", "unexpected"),
            ("etcd://[zz]:1", "bad IPv6"),
            ("etcd://user:pw@h:2379", "only a list"),
            ("etcd://h:2379/prefix", "only a list"),
            ("etcd://h:2379?x=1", "only a list"),
            ("etcd://h st:2379", "bad host"),
        ] {
            let message = url_error(url);
            assert!(message.contains(why), "{url}: {message}");
            assert!(message.contains(&format!("{url:?}")), "{url}: {message}");
            assert!(message.contains("etcd://host:port"), "{url}: {message}");
        }
    }

    #[test]
    fn checks_tls_settings_before_connecting() {
        let plain_with_tls = EtcdConfig::from_url("etcd://h:1")
            .unwrap()
            .with_tls(EtcdTls::new("/nonexistent"));
        assert!(
            matches!(plain_with_tls.connect_options(), Err(Error::InvalidRequest(m)) if m.contains("etcds://"))
        );
        let tls_without_ca = EtcdConfig::from_url("etcds://h:1").unwrap();
        assert!(
            matches!(tls_without_ca.connect_options(), Err(Error::InvalidRequest(m)) if m.contains("CA"))
        );
        let missing_ca = tls_without_ca
            .clone()
            .with_tls(EtcdTls::new("/nonexistent/ca.pem"));
        assert!(
            matches!(missing_ca.connect_options(), Err(Error::InvalidRequest(m)) if m.contains("/nonexistent/ca.pem"))
        );
        let mixed = EtcdConfig::new(["http://a:1", "https://b:1"]);
        assert!(
            matches!(mixed.connect_options(), Err(Error::InvalidRequest(m)) if m.contains("mix"))
        );
        let no_endpoint = EtcdConfig::new(Vec::<String>::new());
        assert!(matches!(
            no_endpoint.connect_options(),
            Err(Error::InvalidRequest(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not really a certificate").unwrap();
        let half_identity = tls_without_ca.with_tls(EtcdTls {
            ca_file: Some(ca),
            cert_file: Some("/c.pem".into()),
            key_file: None,
        });
        assert!(
            matches!(half_identity.connect_options(), Err(Error::InvalidRequest(m)) if m.contains("key_file"))
        );
    }

    #[tokio::test]
    async fn connect_failure_names_the_endpoints() {
        // Port 1 on loopback: nothing listens there.
        let config = EtcdConfig::from_url("etcd://127.0.0.1:1")
            .unwrap()
            .with_connect_timeout(Duration::from_millis(300))
            .with_request_timeout(Duration::from_millis(300));
        match EtcdStore::connect(config).await {
            Err(e @ Error::Etcd(_)) => {
                assert!(e.to_string().contains("http://127.0.0.1:1"), "{e}");
                assert!(e.is_transient());
            }
            other => panic!("expected Error::Etcd, got {other:?}"),
        }
    }

    #[test]
    fn ranges_map_to_etcd_and_refuse_empty_keys() {
        assert_eq!(
            etcd_range(&KeyRange::key("a"), "t").unwrap(),
            (b"a".to_vec(), vec![])
        );
        assert_eq!(
            etcd_range(&KeyRange::prefix("a/"), "t").unwrap(),
            (b"a/".to_vec(), b"a0".to_vec())
        );
        assert_eq!(
            etcd_range(&KeyRange::prefix(""), "t").unwrap(),
            (vec![0], vec![0])
        );
        let from_start = KeyRange::Range {
            start: vec![],
            end: b"m".to_vec(),
        };
        assert_eq!(
            etcd_range(&from_start, "t").unwrap(),
            (vec![0], b"m".to_vec())
        );
        assert!(matches!(
            etcd_range(&KeyRange::key(""), "t"),
            Err(Error::InvalidRequest(_))
        ));
        let empty = KeyRange::Range {
            start: vec![],
            end: vec![],
        };
        assert!(matches!(
            etcd_range(&empty, "t"),
            Err(Error::InvalidRequest(_))
        ));
    }

    #[test]
    fn transactions_convert_in_order() {
        let txn = Txn::new()
            .when(Compare::new(
                "k",
                CompareOp::Equal,
                CompareTarget::ModRevision(7),
            ))
            .when(Compare::new(
                "k",
                CompareOp::Less,
                CompareTarget::Value(b"v".to_vec()),
            ))
            .and_then(vec![
                TxnOp::Put {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    lease: 9,
                    prev_kv: true,
                },
                TxnOp::Delete {
                    range: KeyRange::prefix("p/"),
                    prev_kv: true,
                },
                TxnOp::Range(
                    RangeRequest::new(KeyRange::key("k"))
                        .at_revision(3)
                        .keys_only(),
                ),
            ])
            .or_else(vec![TxnOp::get("k")]);
        let prepared = prepare_txn(txn).unwrap();
        assert_eq!(prepared.leases, [9]);
        assert_eq!(prepared.oldest_read, Some(3));
        assert_eq!(prepared.largest_put, Some((b"k".to_vec(), 2)));
        let pb = PbTxnRequest::from(prepared.txn);
        assert_eq!(pb.compare.len(), 2);
        assert_eq!(pb.compare[0].key, b"k");
        assert_eq!(pb.compare[0].result, 0); // EQUAL
        assert_eq!(pb.compare[0].target, 2); // MOD
        assert_eq!(pb.compare[1].result, 2); // LESS
        assert_eq!(pb.compare[1].target, 3); // VALUE
        assert_eq!(pb.success.len(), 3);
        match pb.success[0].request.as_ref().unwrap() {
            PbTxnOpRequest::RequestPut(p) => {
                assert_eq!(
                    (p.key.as_slice(), p.value.as_slice(), p.lease, p.prev_kv),
                    (&b"k"[..], &b"v"[..], 9, true)
                );
            }
            other => panic!("{other:?}"),
        }
        match pb.success[1].request.as_ref().unwrap() {
            PbTxnOpRequest::RequestDeleteRange(d) => {
                assert_eq!(
                    (d.key.as_slice(), d.range_end.as_slice(), d.prev_kv),
                    (&b"p/"[..], &b"p0"[..], true)
                );
            }
            other => panic!("{other:?}"),
        }
        match pb.success[2].request.as_ref().unwrap() {
            PbTxnOpRequest::RequestRange(r) => {
                assert_eq!(
                    (r.key.as_slice(), r.range_end.len(), r.revision, r.keys_only),
                    (&b"k"[..], 0, 3, true)
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(pb.failure.len(), 1);
    }

    #[test]
    fn transactions_refuse_what_the_embedded_engine_refuses() {
        let big = Txn::new().and_then(vec![TxnOp::put("k", vec![0u8; MAX_VALUE_BYTES + 1])]);
        assert!(matches!(
            prepare_txn(big),
            Err(Error::ValueTooLarge { size, limit: MAX_VALUE_BYTES, .. }) if size == MAX_VALUE_BYTES + 1
        ));
        let at_limit = Txn::new().and_then(vec![TxnOp::put("k", vec![0u8; MAX_VALUE_BYTES])]);
        assert!(prepare_txn(at_limit).is_ok());
        let empty_put = Txn::new().or_else(vec![TxnOp::put("", "v")]);
        assert!(matches!(
            prepare_txn(empty_put),
            Err(Error::InvalidRequest(_))
        ));
        let empty_compare = Txn::new().when(Compare::new(
            "",
            CompareOp::Equal,
            CompareTarget::Version(0),
        ));
        assert!(matches!(
            prepare_txn(empty_compare),
            Err(Error::InvalidRequest(_))
        ));
        let empty_delete = Txn::new().and_then(vec![TxnOp::delete("")]);
        assert!(matches!(
            prepare_txn(empty_delete),
            Err(Error::InvalidRequest(_))
        ));
    }

    #[test]
    fn delete_events_keep_only_key_and_revision() {
        let event = event_from_pb(PbEvent {
            r#type: 1,
            kv: Some(PbKeyValue {
                key: b"k".to_vec(),
                create_revision: 3,
                mod_revision: 9,
                version: 2,
                value: b"stale".to_vec(),
                lease: 5,
            }),
            prev_kv: None,
        })
        .unwrap();
        assert_eq!(event.kind, EventType::Delete);
        assert_eq!(
            event.kv,
            KeyValue {
                key: b"k".to_vec(),
                mod_revision: 9,
                ..KeyValue::default()
            }
        );
        assert!(
            event_from_pb(PbEvent {
                r#type: 7,
                kv: None,
                prev_kv: None
            })
            .is_none()
        );
    }

    fn put_at(rev: Revision) -> Event {
        Event {
            kind: EventType::Put,
            kv: KeyValue {
                key: b"k".to_vec(),
                mod_revision: rev,
                ..KeyValue::default()
            },
            prev_kv: None,
        }
    }

    #[test]
    fn watch_batch_revision_never_claims_undelivered_events() {
        assert_eq!(batch_revision(&[], 42), 42);
        assert_eq!(batch_revision(&[put_at(5), put_at(5)], 5), 5);
        // A complete catch-up batch: everything up to the header revision was delivered.
        assert_eq!(batch_revision(&[put_at(3), put_at(4)], 10), 10);
        // A full catch-up batch: more may follow below the header revision.
        let full: Vec<Event> = (1..=ETCD_WATCH_BATCH_MAX_REVS as i64).map(put_at).collect();
        assert_eq!(
            batch_revision(&full, 5000),
            ETCD_WATCH_BATCH_MAX_REVS as i64
        );
    }

    #[test]
    fn etcd_refusals_are_sorted() {
        let status = |code, msg: &str| ec::Error::GRpcStatus(tonic::Status::new(code, msg));
        assert!(matches!(
            classify(
                "range",
                "e",
                status(
                    tonic::Code::OutOfRange,
                    "etcdserver: mvcc: required revision has been compacted"
                )
            ),
            CallError::Compacted(_)
        ));
        assert!(matches!(
            classify(
                "range",
                "e",
                status(
                    tonic::Code::OutOfRange,
                    "etcdserver: mvcc: required revision is a future revision"
                )
            ),
            CallError::FutureRevision(_)
        ));
        assert!(matches!(
            classify(
                "txn",
                "e",
                status(
                    tonic::Code::NotFound,
                    "etcdserver: requested lease not found"
                )
            ),
            CallError::LeaseNotFound(_)
        ));
        assert!(matches!(
            classify(
                "txn",
                "e",
                ec::Error::LeaseKeepAliveError("lease not found".into())
            ),
            CallError::LeaseNotFound(_)
        ));
        assert!(matches!(
            classify(
                "txn",
                "e",
                status(
                    tonic::Code::InvalidArgument,
                    "etcdserver: request is too large"
                )
            ),
            CallError::TooLarge(_)
        ));
        assert!(matches!(
            classify(
                "txn",
                "e",
                status(
                    tonic::Code::InvalidArgument,
                    "etcdserver: duplicate key given in txn request"
                )
            ),
            CallError::Other(Error::InvalidRequest(_))
        ));
        assert!(matches!(
            classify(
                "txn",
                "e",
                status(
                    tonic::Code::ResourceExhausted,
                    "etcdserver: mvcc: database space exceeded"
                )
            ),
            CallError::Other(Error::Storage(_))
        ));
        match classify(
            "txn",
            "http://e:1",
            status(tonic::Code::Unavailable, "etcdserver: leader changed"),
        ) {
            CallError::Other(e @ Error::Etcd(_)) => {
                assert!(e.to_string().contains("http://e:1"), "{e}");
                assert!(e.is_transient());
            }
            other => panic!("{other:?}"),
        }
    }
}
