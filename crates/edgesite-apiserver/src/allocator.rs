//! Service ClusterIP and NodePort allocation, done at admission as upstream's service storage
//! does: each address or port a Service holds is a key of its own in the store
//! (`/registry/ranges/serviceips/<ip>`, `/registry/ranges/servicenodeports/<port>`) created
//! only if absent, so two requests (on one server or several sharing a datastore) can never
//! take the same one. The key's value names the owning Service's uid.
//!
//! Hooks: [`ServiceAllocator::admit_create`] / [`ServiceAllocator::admit_update`] before the
//! object is written (undo with [`ServiceAllocator::rollback`] if the write fails),
//! [`ServiceAllocator::release_replaced`] after an update is written and
//! [`ServiceAllocator::release`] once a Service is gone from the store.
//! [`ServiceAllocator::repair`] reconciles the keys with the stored Services after a crash.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use edgesite_api::registry::{self, ResourceInfo};
use edgesite_api::status::{ApiError, Cause};
use edgesite_clock::{Clock, Rng};
use edgesite_store::{Error as StoreError, KeyRange, KeyValue, RangeRequest, Store};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::storage::{self, meta_str};

/// Where allocated service IPs are recorded, one key per address.
pub const SERVICE_IP_PREFIX: &str = "/registry/ranges/serviceips/";
/// Where allocated node ports are recorded, one key per port.
pub const NODE_PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

/// How many random picks are tried before scanning the range for a free value.
const RANDOM_TRIES: usize = 16;

/// An IPv4 network in CIDR notation (`10.43.0.0/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    network: u32,
    prefix: u8,
}

/// Why a CIDR could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid service CIDR {0:?}: expected an IPv4 network like 10.43.0.0/16 (prefix 8 to 30)")]
pub struct CidrError(String);

impl Ipv4Cidr {
    /// The network `addr/prefix` (host bits are cleared); `None` for a prefix outside 8..=30.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        if !(8..=30).contains(&prefix) {
            return None;
        }
        let mask = u32::MAX << (32 - prefix);
        Some(Self {
            network: u32::from(addr) & mask,
            prefix,
        })
    }

    /// The number of addresses services can get (network and broadcast addresses excluded).
    pub fn usable(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 2
    }

    /// The `i`-th usable address (0 is the first after the network address).
    pub fn host(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1 + i % self.usable())
    }

    /// The first usable address: upstream gives it to the `default/kubernetes` Service.
    pub fn first_host(&self) -> Ipv4Addr {
        self.host(0)
    }

    /// Whether `ip` is a usable address of the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v > self.network && v - self.network <= self.usable()
    }
}

impl Default for Ipv4Cidr {
    /// `10.43.0.0/16`.
    fn default() -> Self {
        Self {
            network: u32::from(Ipv4Addr::new(10, 43, 0, 0)),
            prefix: 16,
        }
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_owned());
        let (addr, prefix) = s.split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        Self::new(addr, prefix).ok_or_else(err)
    }
}

/// The keys one request created, to be deleted again if its write fails.
#[derive(Debug, Default)]
#[must_use = "claims must be rolled back when the write they were made for fails"]
pub struct Claims {
    keys: Vec<String>,
}

/// What one [`ServiceAllocator::repair`] pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// Keys written for addresses or ports that Services hold but that had no key.
    pub marked: usize,
    /// Keys deleted because no Service holds them any more.
    pub freed: usize,
    /// Addresses or ports a Service holds whose key names another Service.
    pub conflicts: usize,
}

/// Hands out ClusterIPs from the service CIDR and node ports from the node port range.
#[derive(Debug)]
pub struct ServiceAllocator {
    store: Arc<dyn Store>,
    cidr: Ipv4Cidr,
    ports: RangeInclusive<u16>,
    /// Stamps `allocatedAt` on keys, which the repair's grace period is measured against.
    clock: Arc<dyn Clock>,
    /// Picks candidate addresses and ports (not secret: spreading picks is all it is for).
    rng: std::sync::Mutex<Rng>,
}

/// The allocatable values of a Service, read from its spec.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Held {
    ip: Option<Ipv4Addr>,
    ports: BTreeSet<u16>,
}

fn is_services(r: &ResourceInfo) -> bool {
    r.group.is_empty() && r.plural == "services"
}

fn services() -> &'static ResourceInfo {
    registry::builtin("", "v1", "services")
}

fn spec_str<'a>(svc: &'a Value, field: &str) -> Option<&'a str> {
    svc.get("spec")?.get(field)?.as_str()
}

fn svc_type(svc: &Value) -> &str {
    spec_str(svc, "type").unwrap_or("ClusterIP")
}

/// Whether the Service type gets a cluster IP (headless ones are excluded separately).
fn wants_ip(svc: &Value) -> bool {
    svc_type(svc) != "ExternalName"
}

fn is_headless(svc: &Value) -> bool {
    spec_str(svc, "clusterIP") == Some("None")
}

/// Whether the Service type gets node ports.
fn wants_node_ports(svc: &Value) -> bool {
    match svc_type(svc) {
        "NodePort" => true,
        "LoadBalancer" => svc
            .pointer("/spec/allocateLoadBalancerNodePorts")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        _ => false,
    }
}

fn wants_health_check_port(svc: &Value) -> bool {
    svc_type(svc) == "LoadBalancer" && spec_str(svc, "externalTrafficPolicy") == Some("Local")
}

fn requested_ip(svc: &Value) -> Option<String> {
    let ip = spec_str(svc, "clusterIP").filter(|s| !s.is_empty());
    let first = svc
        .pointer("/spec/clusterIPs/0")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    ip.or(first).map(str::to_owned)
}

fn node_port(p: &Value) -> Option<u16> {
    p.get("nodePort")
        .and_then(Value::as_i64)
        .filter(|n| *n != 0)
        .and_then(|n| u16::try_from(n).ok())
}

fn health_check_port(svc: &Value) -> Option<u16> {
    svc.pointer("/spec/healthCheckNodePort")
        .and_then(Value::as_i64)
        .filter(|n| *n != 0)
        .and_then(|n| u16::try_from(n).ok())
}

fn held(svc: &Value) -> Held {
    let mut h = Held::default();
    if wants_ip(svc) && !is_headless(svc) {
        h.ip = requested_ip(svc).and_then(|s| s.parse().ok());
    }
    if let Some(ports) = svc.pointer("/spec/ports").and_then(Value::as_array) {
        h.ports.extend(ports.iter().filter_map(node_port));
    }
    h.ports.extend(health_check_port(svc));
    h
}

fn go_string_slice(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

fn ip_key(ip: Ipv4Addr) -> String {
    format!("{SERVICE_IP_PREFIX}{ip}")
}

fn port_key(port: u16) -> String {
    format!("{NODE_PORT_PREFIX}{port}")
}

fn owner_value(svc: &Value, now: i64) -> Vec<u8> {
    json!({
        "uid": meta_str(svc, "uid").unwrap_or_default(),
        "namespace": meta_str(svc, "namespace").unwrap_or_default(),
        "name": meta_str(svc, "name").unwrap_or_default(),
        "allocatedAt": now,
    })
    .to_string()
    .into_bytes()
}

fn owner_uid(kv: &KeyValue) -> String {
    serde_json::from_slice::<Value>(&kv.value)
        .ok()
        .and_then(|v| v.get("uid").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default()
}

/// Whether the allocation `kv` belongs to `svc` (by uid).
fn held_by(kv: &KeyValue, svc: &Value) -> Take {
    if owner_uid(kv) == meta_str(svc, "uid").unwrap_or_default() {
        Take::Ours
    } else {
        Take::Busy
    }
}

fn allocated_at(kv: &KeyValue) -> i64 {
    serde_json::from_slice::<Value>(&kv.value)
        .ok()
        .and_then(|v| v.get("allocatedAt").and_then(Value::as_i64))
        .unwrap_or(0)
}

/// The outcome of trying to take one key.
enum Take {
    /// Created now.
    Taken,
    /// Already held by this Service.
    Ours,
    /// Held by another Service.
    Busy,
}

impl ServiceAllocator {
    /// An allocator over `store` for addresses in `cidr` and node ports in `ports`.
    pub fn new(
        store: Arc<dyn Store>,
        cidr: Ipv4Cidr,
        ports: RangeInclusive<u16>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            cidr,
            ports,
            clock,
            rng: std::sync::Mutex::new(Rng::new()),
        }
    }

    /// A random index below `size` (> 0).
    fn random_below(&self, size: u32) -> u32 {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        u32::try_from(rng.below(u64::from(size))).unwrap_or(0)
    }

    /// The service CIDR.
    pub fn cidr(&self) -> Ipv4Cidr {
        self.cidr
    }

    /// The node port range.
    pub fn node_ports(&self) -> RangeInclusive<u16> {
        self.ports.clone()
    }

    fn port_range_text(&self) -> String {
        format!("{}-{}", self.ports.start(), self.ports.end())
    }

    /// Tries to take `key` for `svc` (`dry_run`: only looks whether it is free).
    async fn take(&self, key: &str, svc: &Value, dry_run: bool) -> Result<Take, ApiError> {
        if dry_run {
            let kv = self
                .store
                .get(key.as_bytes())
                .await
                .map_err(storage::store_error)?;
            return Ok(kv.as_ref().map_or(Take::Taken, |kv| held_by(kv, svc)));
        }
        // Deleted between the compare and the read: it was just released; count it busy
        // rather than retry in a loop.
        let claimed = self.claim(key, svc).await.map_err(storage::store_error)?;
        Ok(claimed.unwrap_or(Take::Busy))
    }

    /// Creates `key` for `svc` unless it exists: `Taken` when this created it, `Ours` or
    /// `Busy` by who holds it, `None` when it went away between the compare and the read.
    async fn claim(&self, key: &str, svc: &Value) -> Result<Option<Take>, StoreError> {
        let value = owner_value(svc, self.clock.unix_seconds());
        match self.store.create(key.as_bytes(), value, 0).await {
            Ok(_) => Ok(Some(Take::Taken)),
            Err(StoreError::AlreadyExists { current, .. }) => Ok(Some(held_by(&current, svc))),
            Err(StoreError::Conflict { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes a requested value; `Busy` becomes the caller's 422.
    async fn take_requested(
        &self,
        key: String,
        svc: &Value,
        dry_run: bool,
        claims: &mut Claims,
    ) -> Result<bool, ApiError> {
        match self.take(&key, svc, dry_run).await? {
            Take::Taken => {
                if !dry_run {
                    claims.keys.push(key);
                }
                Ok(true)
            }
            Take::Ours => Ok(true),
            Take::Busy => Ok(false),
        }
    }

    /// Takes a random free value among `size` candidates (`key_of(i)`), avoiding `skip`:
    /// random picks first, then a scan of what is recorded as taken.
    async fn take_random(
        &self,
        size: u32,
        prefix: &str,
        key_of: impl Fn(u32) -> String,
        svc: &Value,
        dry_run: bool,
        claims: &mut Claims,
    ) -> Result<Option<u32>, ApiError> {
        let mut tried = BTreeSet::new();
        for _ in 0..RANDOM_TRIES.min(size as usize) {
            let i = self.random_below(size);
            if !tried.insert(i) {
                continue;
            }
            let key = key_of(i);
            if let Take::Taken = self.take(&key, svc, dry_run).await? {
                if !dry_run {
                    claims.keys.push(key);
                }
                return Ok(Some(i));
            }
        }
        // Crowded: look at what is taken and try the free ones from a random start.
        let taken: BTreeSet<Vec<u8>> = self
            .store
            .range(RangeRequest::new(KeyRange::prefix(prefix.as_bytes().to_vec())).keys_only())
            .await
            .map_err(storage::store_error)?
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        let start = self.random_below(size);
        for step in 0..size {
            let i = (start + step) % size;
            let key = key_of(i);
            if taken.contains(key.as_bytes()) {
                continue;
            }
            if let Take::Taken = self.take(&key, svc, dry_run).await? {
                if !dry_run {
                    claims.keys.push(key);
                }
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// Deletes keys this request created (its write failed or was refused).
    pub async fn rollback(&self, claims: Claims) {
        for key in claims.keys {
            if let Err(err) = self.store.delete(key.as_bytes(), None).await
                && !matches!(err, StoreError::NotFound { .. })
            {
                warn!(%key, %err, "cannot release an allocation of a failed service write");
            }
        }
    }

    /// Admission of a new object of `r`: for a Service, allocates its cluster IP and node
    /// ports (requested or random) and fills them in. `dry_run` checks without taking.
    pub async fn admit_create(
        &self,
        r: &ResourceInfo,
        svc: &mut Value,
        dry_run: bool,
    ) -> Result<Claims, ApiError> {
        if !is_services(r) {
            return Ok(Claims::default());
        }
        let mut claims = Claims::default();
        match self
            .allocate(svc, &Held::default(), dry_run, &mut claims)
            .await
        {
            Ok(()) => Ok(claims),
            Err(e) => {
                self.rollback(claims).await;
                Err(e)
            }
        }
    }

    /// Admission of `new` replacing `old` (both of `r`): allocates what the new Service
    /// holds that the old one did not (a type change to NodePort, a new port, a requested
    /// change) and fills in what is missing. The old values are released by
    /// [`Self::release_replaced`] once the update is written.
    pub async fn admit_update(
        &self,
        r: &ResourceInfo,
        old: &Value,
        new: &mut Value,
        dry_run: bool,
    ) -> Result<Claims, ApiError> {
        if !is_services(r) {
            return Ok(Claims::default());
        }
        let mut claims = Claims::default();
        match self.allocate(new, &held(old), dry_run, &mut claims).await {
            Ok(()) => Ok(claims),
            Err(e) => {
                self.rollback(claims).await;
                Err(e)
            }
        }
    }

    /// Allocates the values `svc` needs, except those in `already` (held by the version being
    /// replaced), and writes them into `svc`.
    async fn allocate(
        &self,
        svc: &mut Value,
        already: &Held,
        dry_run: bool,
        claims: &mut Claims,
    ) -> Result<(), ApiError> {
        let name = meta_str(svc, "name").unwrap_or_default().to_owned();
        let invalid = |cause: Cause| ApiError::invalid(services(), &name, vec![cause]);
        if wants_ip(svc) && !is_headless(svc) {
            let ip = match requested_ip(svc) {
                Some(text) => {
                    let detail = |why: &str| {
                        invalid(Cause::invalid_rendered(
                            "spec.clusterIPs",
                            &go_string_slice(&[&text]),
                            &format!("failed to allocate IP {text}: {why}"),
                        ))
                    };
                    let ip: Ipv4Addr = text
                        .parse()
                        .map_err(|_| detail("not a valid IPv4 address"))?;
                    if already.ip != Some(ip) {
                        if !self.cidr.contains(ip) {
                            return Err(detail(&format!(
                                "the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                                self.cidr
                            )));
                        }
                        if !self
                            .take_requested(ip_key(ip), svc, dry_run, claims)
                            .await?
                        {
                            return Err(detail("provided IP is already allocated"));
                        }
                    }
                    ip
                }
                None => {
                    let cidr = self.cidr;
                    let i = self
                        .take_random(
                            cidr.usable(),
                            SERVICE_IP_PREFIX,
                            |i| ip_key(cidr.host(i)),
                            svc,
                            dry_run,
                            claims,
                        )
                        .await?
                        .ok_or_else(|| {
                            ApiError::internal("failed to allocate a serviceIP: range is full")
                        })?;
                    cidr.host(i)
                }
            };
            if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("clusterIP".into(), ip.to_string().into());
                spec.insert("clusterIPs".into(), json!([ip.to_string()]));
                spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
                spec.entry("ipFamilyPolicy")
                    .or_insert_with(|| json!("SingleStack"));
            }
        } else if wants_ip(svc)
            && let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut)
        {
            // Headless.
            spec.insert("clusterIPs".into(), json!(["None"]));
            spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
            spec.entry("ipFamilyPolicy")
                .or_insert_with(|| json!("SingleStack"));
        }

        if wants_node_ports(svc) {
            let ports = svc
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            // Ports with the same number (TCP and UDP) share a node port, as upstream.
            let mut by_port: BTreeMap<i64, u16> = BTreeMap::new();
            let mut chosen = Vec::with_capacity(ports.len());
            for (i, p) in ports.iter().enumerate() {
                let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                let np = match node_port(p) {
                    Some(np) => {
                        self.take_node_port(np, already, svc, dry_run, claims, &name, i)
                            .await?;
                        np
                    }
                    None => match by_port.get(&port) {
                        Some(np) => *np,
                        None => self.random_node_port(svc, dry_run, claims).await?,
                    },
                };
                by_port.entry(port).or_insert(np);
                chosen.push(np);
            }
            if let Some(list) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
                for (p, np) in list.iter_mut().zip(chosen) {
                    if let Some(p) = p.as_object_mut() {
                        p.insert("nodePort".into(), np.into());
                    }
                }
            }
        }
        if wants_health_check_port(svc) {
            let np = match health_check_port(svc) {
                Some(np) => {
                    if !already.ports.contains(&np) {
                        let out = self.requested_port_error(np, "spec.healthCheckNodePort", &name);
                        if let Some(e) = out {
                            return Err(e);
                        }
                        if !self
                            .take_requested(port_key(np), svc, dry_run, claims)
                            .await?
                        {
                            return Err(invalid(Cause::invalid(
                                "spec.healthCheckNodePort",
                                &np.into(),
                                "provided port is already allocated",
                            )));
                        }
                    }
                    np
                }
                None => self.random_node_port(svc, dry_run, claims).await?,
            };
            if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("healthCheckNodePort".into(), np.into());
            }
        }
        Ok(())
    }

    fn requested_port_error(&self, np: u16, field: &str, name: &str) -> Option<ApiError> {
        (!self.ports.contains(&np)).then(|| {
            ApiError::invalid(
                services(),
                name,
                vec![Cause::invalid(
                    field,
                    &np.into(),
                    &format!(
                        "provided port is not in the valid range. The range of valid ports is {}",
                        self.port_range_text()
                    ),
                )],
            )
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn take_node_port(
        &self,
        np: u16,
        already: &Held,
        svc: &Value,
        dry_run: bool,
        claims: &mut Claims,
        name: &str,
        index: usize,
    ) -> Result<(), ApiError> {
        if already.ports.contains(&np) || claims.keys.contains(&port_key(np)) {
            return Ok(());
        }
        let field = format!("spec.ports[{index}].nodePort");
        if let Some(e) = self.requested_port_error(np, &field, name) {
            return Err(e);
        }
        if !self
            .take_requested(port_key(np), svc, dry_run, claims)
            .await?
        {
            return Err(ApiError::invalid(
                services(),
                name,
                vec![Cause::invalid(
                    &field,
                    &np.into(),
                    "provided port is already allocated",
                )],
            ));
        }
        Ok(())
    }

    async fn random_node_port(
        &self,
        svc: &Value,
        dry_run: bool,
        claims: &mut Claims,
    ) -> Result<u16, ApiError> {
        let first = *self.ports.start();
        let size = u32::from(*self.ports.end() - first) + 1;
        let i = self
            .take_random(
                size,
                NODE_PORT_PREFIX,
                |i| port_key(first + i as u16),
                svc,
                dry_run,
                claims,
            )
            .await?
            .ok_or_else(|| ApiError::internal("failed to allocate a nodePort: range is full"))?;
        Ok(first + i as u16)
    }

    /// After `new` replaced `old` in the store: releases what `old` held and `new` does not
    /// (a type change from NodePort to ClusterIP frees the ports, to ExternalName the IP).
    pub async fn release_replaced(&self, r: &ResourceInfo, old: &Value, new: &Value) {
        if !is_services(r) {
            return;
        }
        let (before, after) = (held(old), held(new));
        let uid = meta_str(old, "uid").unwrap_or_default();
        if let Some(ip) = before.ip
            && after.ip != Some(ip)
        {
            self.release_key(&ip_key(ip), uid).await;
        }
        for port in before.ports.difference(&after.ports) {
            self.release_key(&port_key(*port), uid).await;
        }
    }

    /// After a Service was removed from the store: releases its IP and node ports.
    pub async fn release(&self, r: &ResourceInfo, svc: &Value) {
        if !is_services(r) {
            return;
        }
        let h = held(svc);
        let uid = meta_str(svc, "uid").unwrap_or_default();
        if let Some(ip) = h.ip {
            self.release_key(&ip_key(ip), uid).await;
        }
        for port in h.ports {
            self.release_key(&port_key(port), uid).await;
        }
    }

    /// Deletes `key` if `uid` owns it (a failure is left to the repair pass).
    async fn release_key(&self, key: &str, uid: &str) {
        for _ in 0..4 {
            let kv = match self.store.get(key.as_bytes()).await {
                Ok(Some(kv)) => kv,
                Ok(None) => return,
                Err(err) => {
                    warn!(%key, %err, "cannot release a service allocation");
                    return;
                }
            };
            if owner_uid(&kv) != uid {
                return;
            }
            match self
                .store
                .delete(key.as_bytes(), Some(kv.mod_revision))
                .await
            {
                Ok(_) | Err(StoreError::NotFound { .. }) => return,
                Err(StoreError::Conflict { .. }) => continue,
                Err(err) => {
                    warn!(%key, %err, "cannot release a service allocation");
                    return;
                }
            }
        }
    }

    /// Reconciles the allocation keys with the stored Services: writes missing keys for the
    /// IPs and ports Services hold, and deletes keys no Service holds that are older than
    /// `grace` (younger ones may belong to a create still in flight on some server).
    pub async fn repair(&self, grace: Duration) -> Result<RepairReport, edgesite_store::Error> {
        let mut report = RepairReport::default();
        let prefix = registry::storage_prefix(services(), None).unwrap_or_default();
        let listed = self
            .store
            .range(RangeRequest::new(KeyRange::prefix(prefix.into_bytes())))
            .await?;
        // key → uid of the Service holding it.
        let mut holders: BTreeMap<String, String> = BTreeMap::new();
        let mut owners: BTreeMap<String, Value> = BTreeMap::new();
        for kv in &listed.kvs {
            let Ok(svc) = storage::decode(kv, kv.mod_revision) else {
                warn!(key = %String::from_utf8_lossy(&kv.key), "repair: skipping an unreadable Service");
                continue;
            };
            let uid = meta_str(&svc, "uid").unwrap_or_default().to_owned();
            let h = held(&svc);
            let keys =
                h.ip.filter(|ip| self.cidr.contains(*ip))
                    .map(ip_key)
                    .into_iter()
                    .chain(
                        h.ports
                            .iter()
                            .filter(|p| self.ports.contains(p))
                            .map(|p| port_key(*p)),
                    );
            for key in keys {
                holders.insert(key, uid.clone());
            }
            owners.insert(uid, svc);
        }
        for (key, uid) in &holders {
            let Some(svc) = owners.get(uid) else { continue };
            match self.claim(key, svc).await? {
                Some(Take::Taken) => {
                    report.marked += 1;
                    info!(%key, service = meta_str(svc, "name").unwrap_or_default(), "repair: marked a service allocation that had no key");
                }
                Some(Take::Busy) => {
                    report.conflicts += 1;
                    warn!(%key, service = meta_str(svc, "name").unwrap_or_default(),
                        "repair: a service holds a value allocated to another service");
                }
                Some(Take::Ours) | None => {}
            }
        }
        let now = self.clock.unix_seconds();
        for prefix in [SERVICE_IP_PREFIX, NODE_PORT_PREFIX] {
            let keys = self
                .store
                .range(RangeRequest::new(KeyRange::prefix(
                    prefix.as_bytes().to_vec(),
                )))
                .await?;
            for kv in keys.kvs {
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                if holders.get(&key).is_some_and(|u| *u == owner_uid(&kv)) {
                    continue;
                }
                if now - allocated_at(&kv) < grace.as_secs() as i64 {
                    continue;
                }
                match self.store.delete(&kv.key, Some(kv.mod_revision)).await {
                    Ok(_) => {
                        report.freed += 1;
                        info!(%key, "repair: released an allocation no service holds");
                    }
                    Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        debug!(?report, "service allocation repair done");
        Ok(report)
    }

    /// Upstream's `dropTypeDependentFields`: when an update changes the type, values the old
    /// type needed and the request left as they were are cleared (a NodePort Service patched
    /// to ClusterIP loses its node ports, one turned ExternalName its cluster IP); the health
    /// check node port goes once the Service is no longer a LoadBalancer with
    /// `externalTrafficPolicy: Local`.
    pub fn drop_type_dependent_fields(r: &ResourceInfo, old: &Value, new: &mut Value) {
        if !is_services(r) {
            return;
        }
        let type_changed = svc_type(old) != svc_type(new);
        let old_ports = old
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let to_external = svc_type(new) == "ExternalName";
        let keep_node_ports = wants_node_ports(new);
        let keep_health = wants_health_check_port(new);
        let old_health = old.pointer("/spec/healthCheckNodePort").cloned();
        let old_spec = old.get("spec").cloned().unwrap_or(Value::Null);
        let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        if type_changed && to_external {
            for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                if spec.get(f) == old_spec.get(f) {
                    spec.remove(f);
                }
            }
        }
        if type_changed
            && !keep_node_ports
            && let Some(list) = spec.get_mut("ports").and_then(Value::as_array_mut)
        {
            for p in list.iter_mut() {
                let Some(np) = p.get("nodePort").cloned() else {
                    continue;
                };
                if old_ports.iter().any(|o| o.get("nodePort") == Some(&np))
                    && let Some(p) = p.as_object_mut()
                {
                    p.remove("nodePort");
                }
            }
        }
        // Also when only `externalTrafficPolicy` changed.
        if !keep_health
            && old_health.is_some()
            && spec.get("healthCheckNodePort") == old_health.as_ref()
        {
            spec.remove("healthCheckNodePort");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_hosts() {
        let c: Ipv4Cidr = "10.43.0.0/16".parse().unwrap();
        assert_eq!(c, Ipv4Cidr::default());
        assert_eq!(c.to_string(), "10.43.0.0/16");
        assert_eq!(c.usable(), 65534);
        assert_eq!(c.first_host(), Ipv4Addr::new(10, 43, 0, 1));
        assert_eq!(c.host(65533), Ipv4Addr::new(10, 43, 255, 254));
        assert!(c.contains(Ipv4Addr::new(10, 43, 0, 1)));
        assert!(!c.contains(Ipv4Addr::new(10, 43, 0, 0)));
        assert!(!c.contains(Ipv4Addr::new(10, 43, 255, 255)));
        assert!(!c.contains(Ipv4Addr::new(10, 44, 0, 1)));
        assert!("10.43.0.0".parse::<Ipv4Cidr>().is_err());
        assert!("10.43.0.0/31".parse::<Ipv4Cidr>().is_err());
        let host_bits: Ipv4Cidr = "192.168.7.9/24".parse().unwrap();
        assert_eq!(host_bits.to_string(), "192.168.7.0/24");
    }

    #[test]
    fn type_changes_drop_what_the_old_type_needed() {
        let svc = services();
        let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.0.9",
            "clusterIPs": ["10.43.0.9"], "ports": [{"port": 80, "nodePort": 30080}]}});
        let mut new = old.clone();
        new["spec"]["type"] = json!("ClusterIP");
        ServiceAllocator::drop_type_dependent_fields(svc, &old, &mut new);
        assert!(new["spec"]["ports"][0].get("nodePort").is_none());
        assert_eq!(new["spec"]["clusterIP"], "10.43.0.9");
        let mut ext = old.clone();
        ext["spec"]["type"] = json!("ExternalName");
        ServiceAllocator::drop_type_dependent_fields(svc, &old, &mut ext);
        assert!(ext["spec"].get("clusterIP").is_none());
        assert!(ext["spec"].get("clusterIPs").is_none());
        assert_eq!(held(&ext), Held::default());
        assert_eq!(
            held(&old),
            Held {
                ip: Some(Ipv4Addr::new(10, 43, 0, 9)),
                ports: [30080].into()
            }
        );
    }
}
