//! Requests and limits as the runtime applies them: the pod's QoS class, a container's
//! `LinuxContainerResources` (CPU shares from requests, CFS quota and memory limit from
//! limits, OOM score adjustment by QoS) and the downward API's `resourceFieldRef`, with the
//! numbers kubelet computes (`pkg/kubelet/cm/helpers_linux.go`, `pkg/kubelet/qos`).

use std::str::FromStr;

use edgesite_api::quantity::Quantity;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;

use super::NodeContext;

/// CPU shares of a container that requests no CPU (the kernel's minimum).
pub const MIN_SHARES: i64 = 2;
/// CPU shares cap (cgroup v1's maximum).
pub const MAX_SHARES: i64 = 262_144;
/// The CFS period kubelet uses, in microseconds.
pub const QUOTA_PERIOD: i64 = 100_000;
/// The smallest CFS quota the kernel accepts, in microseconds.
pub const MIN_QUOTA: i64 = 1_000;
/// OOM score adjustment of Guaranteed containers (and critical pods).
pub const GUARANTEED_OOM_SCORE_ADJ: i64 = -997;
/// OOM score adjustment of BestEffort containers.
pub const BEST_EFFORT_OOM_SCORE_ADJ: i64 = 1000;
/// Priority from which a pod is critical (`system-cluster-critical` is 2000000000).
const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// The node's amounts of the resources containers can be limited in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeResources {
    /// CPU in millicores.
    pub cpu_millis: i64,
    /// Memory in bytes.
    pub memory_bytes: i64,
}

impl NodeResources {
    /// This host's CPUs (`available_parallelism`) and memory (`MemTotal` of `/proc/meminfo`);
    /// zero for what cannot be read.
    pub fn of_host() -> Self {
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            })
            .map_or(0, |kb| kb.saturating_mul(1024));
        NodeResources {
            cpu_millis: i64::try_from(cpus).unwrap_or(0).saturating_mul(1000),
            memory_bytes,
        }
    }
}

/// A pod's QoS class (`status.qosClass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    /// Every container has CPU and memory limits equal to its requests.
    Guaranteed,
    /// Some container requests or limits CPU or memory, not Guaranteed.
    Burstable,
    /// No container requests or limits CPU or memory.
    BestEffort,
}

impl QosClass {
    /// The `status.qosClass` string.
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// CPU (millicores) and memory (bytes) of a container's requests or limits; `None` unset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amounts {
    /// CPU in millicores.
    pub cpu_millis: Option<i64>,
    /// Memory in bytes.
    pub memory_bytes: Option<i64>,
}

/// A container's requests and limits, requests defaulted to limits where only the limit is
/// set (as the API server's defaulting does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerAmounts {
    /// `resources.requests`.
    pub requests: Amounts,
    /// `resources.limits`.
    pub limits: Amounts,
}

fn parse(q: &ApiQuantity) -> Option<Quantity> {
    Quantity::from_str(&q.0).ok()
}

/// The requests and limits of `container` (unparsable quantities count as unset: the API
/// server validated them).
pub fn container_amounts(container: &Container) -> ContainerAmounts {
    let res = container.resources.as_ref();
    let get = |map: Option<&std::collections::BTreeMap<String, ApiQuantity>>, k: &str| {
        map.and_then(|m| m.get(k)).and_then(parse)
    };
    let limits = res.and_then(|r| r.limits.as_ref());
    let requests = res.and_then(|r| r.requests.as_ref());
    let limits = Amounts {
        cpu_millis: get(limits, "cpu").map(|q| q.milli_value()),
        memory_bytes: get(limits, "memory").map(|q| q.value()),
    };
    let requests = Amounts {
        cpu_millis: get(requests, "cpu")
            .map(|q| q.milli_value())
            .or(limits.cpu_millis),
        memory_bytes: get(requests, "memory")
            .map(|q| q.value())
            .or(limits.memory_bytes),
    };
    ContainerAmounts { requests, limits }
}

fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    pod.spec.iter().flat_map(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
    })
}

/// The QoS class of `pod`, as upstream `GetPodQOS` (init containers included; zero amounts
/// count as unset).
pub fn qos_class(pod: &Pod) -> QosClass {
    let mut any = false;
    let mut guaranteed = true;
    for c in all_containers(pod) {
        let a = container_amounts(c);
        let set = |v: Option<i64>| v.filter(|&v| v != 0);
        let (rc, rm) = (set(a.requests.cpu_millis), set(a.requests.memory_bytes));
        let (lc, lm) = (set(a.limits.cpu_millis), set(a.limits.memory_bytes));
        any |= rc.is_some() || rm.is_some() || lc.is_some() || lm.is_some();
        guaranteed &= lc.is_some() && lm.is_some() && rc == lc && rm == lm;
    }
    if !any {
        QosClass::BestEffort
    } else if guaranteed {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// Upstream `MilliCPUToShares`.
pub fn milli_cpu_to_shares(milli: i64) -> i64 {
    if milli <= 0 {
        return MIN_SHARES;
    }
    (milli.saturating_mul(1024) / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// Upstream `MilliCPUToQuota`: 0 (no quota) without a limit.
pub fn milli_cpu_to_quota(milli: i64, period: i64) -> i64 {
    if milli <= 0 {
        return 0;
    }
    (milli.saturating_mul(period) / 1000).max(MIN_QUOTA)
}

/// Upstream `GetContainerOOMScoreAdjust`; `memory_capacity` in bytes.
pub fn oom_score_adj(pod: &Pod, container: &Container, memory_capacity: i64) -> i64 {
    if pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0) >= SYSTEM_CRITICAL_PRIORITY {
        return GUARANTEED_OOM_SCORE_ADJ;
    }
    match qos_class(pod) {
        QosClass::Guaranteed => GUARANTEED_OOM_SCORE_ADJ,
        QosClass::BestEffort => BEST_EFFORT_OOM_SCORE_ADJ,
        QosClass::Burstable => {
            let request = container_amounts(container)
                .requests
                .memory_bytes
                .unwrap_or(0);
            let adj = if memory_capacity > 0 {
                let used = i128::from(request) * 1000 / i128::from(memory_capacity);
                1000 - i64::try_from(used).unwrap_or(1000)
            } else {
                BEST_EFFORT_OOM_SCORE_ADJ
            };
            // Burstable stays above any Guaranteed container (whose score is at least
            // 1000 - 997 even at full memory use) and below BestEffort.
            adj.clamp(
                1000 + GUARANTEED_OOM_SCORE_ADJ,
                BEST_EFFORT_OOM_SCORE_ADJ - 1,
            )
        }
    }
}

/// The Linux resources of `container`: CPU shares from its request (its limit when only
/// that is set), CFS quota over a 100 ms period from its CPU limit, memory limit (and the
/// same memory+swap limit: no swap, as kubelet's `NoSwap`), OOM score adjustment by QoS.
pub fn linux_resources(
    pod: &Pod,
    container: &Container,
    node: &NodeContext,
) -> cri::LinuxContainerResources {
    let a = container_amounts(container);
    let memory = a.limits.memory_bytes.filter(|&m| m > 0).unwrap_or(0);
    cri::LinuxContainerResources {
        cpu_shares: milli_cpu_to_shares(a.requests.cpu_millis.unwrap_or(0)),
        cpu_period: QUOTA_PERIOD,
        cpu_quota: milli_cpu_to_quota(a.limits.cpu_millis.unwrap_or(0), QUOTA_PERIOD),
        memory_limit_in_bytes: memory,
        memory_swap_limit_in_bytes: memory,
        oom_score_adj: oom_score_adj(pod, container, node.capacity.memory_bytes),
        ..Default::default()
    }
}

/// The downward API `resourceFieldRef` value of `resource` (`limits.cpu`, `requests.memory`,
/// ...) of the container named `container_name`, in units of `divisor` rounded up; an unset
/// limit is the node's allocatable amount, as kubelet.
pub fn resource_field(
    pod: &Pod,
    container_name: &str,
    resource: &str,
    divisor: Option<&ApiQuantity>,
    node: &NodeContext,
) -> Result<String, String> {
    let container = all_containers(pod)
        .find(|c| c.name == container_name)
        .ok_or_else(|| format!("resourceFieldRef: no container {container_name:?} in the pod"))?;
    let a = container_amounts(container);
    let divisor = match divisor {
        Some(d) => parse(d).ok_or_else(|| format!("resourceFieldRef: bad divisor {:?}", d.0))?,
        None => Quantity::new(1, edgesite_api::quantity::Format::DecimalSI),
    };
    let ceil_div = |n: i64, d: i64| -> Result<String, String> {
        if d <= 0 {
            return Err(format!(
                "resourceFieldRef {resource}: divisor must be positive"
            ));
        }
        Ok(((n + d - 1).div_euclid(d)).to_string())
    };
    let alloc = &node.allocatable;
    match resource {
        "limits.cpu" => ceil_div(
            a.limits.cpu_millis.unwrap_or(alloc.cpu_millis),
            divisor.milli_value(),
        ),
        "requests.cpu" => ceil_div(a.requests.cpu_millis.unwrap_or(0), divisor.milli_value()),
        "limits.memory" => ceil_div(
            a.limits.memory_bytes.unwrap_or(alloc.memory_bytes),
            divisor.value(),
        ),
        "requests.memory" => ceil_div(a.requests.memory_bytes.unwrap_or(0), divisor.value()),
        other => Err(format!("resourceFieldRef: unsupported resource {other:?}")),
    }
}

#[cfg(test)]
mod tests;
