//! Node IPAM: gives every node without one a `spec.podCIDR` (and `podCIDRs`) out of the
//! cluster CIDR, a `/24` each by default, as kube-controller-manager's range allocator does
//! with `--allocate-node-cidrs`. The agent builds its pod network on it. A CIDR is free again
//! once its node is gone (the allocation is read back from the nodes, so a restart or a
//! failover loses nothing). Nodes that chose their own (hollow nodes) keep theirs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::{Api, Client, ResourceExt as _};
use serde_json::json;
use tracing::{info, warn};

use crate::Error;
use crate::informers::Informers;
use crate::queue;

/// An IPv4 network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCidr {
    /// The network address.
    pub network: Ipv4Addr,
    /// The prefix length of the cluster network.
    pub prefix: u8,
    /// The prefix length of each node's share.
    pub node_prefix: u8,
}

impl ClusterCidr {
    /// How many node CIDRs the cluster CIDR holds.
    pub fn capacity(&self) -> u32 {
        1u32 << (self.node_prefix - self.prefix)
    }

    /// The `index`-th node CIDR.
    pub fn nth(&self, index: u32) -> String {
        let base = u32::from(self.network);
        let addr = Ipv4Addr::from(base + (index << (32 - u32::from(self.node_prefix))));
        format!("{addr}/{}", self.node_prefix)
    }

    /// The index of `cidr` if it is one of this cluster's node CIDRs.
    pub fn index_of(&self, cidr: &str) -> Option<u32> {
        let (addr, len) = cidr.split_once('/')?;
        let addr = u32::from(Ipv4Addr::from_str(addr).ok()?);
        if len.parse::<u8>().ok()? != self.node_prefix {
            return None;
        }
        let base = u32::from(self.network);
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        if addr & mask != base {
            return None;
        }
        Some((addr - base) >> (32 - u32::from(self.node_prefix)))
    }
}

impl FromStr for ClusterCidr {
    type Err = String;

    /// `10.42.0.0/16` (node CIDRs `/24`).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 CIDR like 10.42.0.0/16");
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr = Ipv4Addr::from_str(addr).map_err(|_| bad())?;
        let prefix: u8 = len.parse().map_err(|_| bad())?;
        if !(8..=24).contains(&prefix) {
            return Err(format!(
                "{s:?}: the cluster CIDR must be between a /8 and a /24 (each node gets a /24)"
            ));
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        if u32::from(addr) & !mask != 0 {
            return Err(format!("{s:?} has host bits set"));
        }
        Ok(Self {
            network: addr,
            prefix,
            node_prefix: 24,
        })
    }
}

struct Context {
    client: Client,
    cidr: ClusterCidr,
    inf: Informers,
    /// Indexes handed out, by node, that the cache may not show yet.
    pending: Mutex<BTreeMap<String, u32>>,
}

/// Runs the allocator until the returned future is dropped.
pub async fn run(client: Client, cidr: ClusterCidr, inf: &Informers) {
    let controller = Controller::for_shared_stream(inf.nodes.objects(), inf.nodes.store());
    let ctx = Arc::new(Context {
        client,
        cidr,
        inf: inf.clone(),
        pending: Mutex::new(BTreeMap::new()),
    });
    queue::run_controller("node-ipam", controller, reconcile, ctx).await;
}

/// The lowest index neither `used` nor `pending` holds.
pub fn first_free(capacity: u32, used: &BTreeSet<u32>) -> Option<u32> {
    (0..capacity).find(|i| !used.contains(i))
}

/// The index for `node`: the one already handed out to it and not yet seen in the cache (a
/// reconcile that still sees the node without its CIDR must not give it a second one), else
/// the lowest free. Forgets pending indexes the cache (`used`) now shows.
fn choose(
    pending: &mut BTreeMap<String, u32>,
    used: &BTreeSet<u32>,
    node: &str,
    capacity: u32,
) -> Option<u32> {
    pending.retain(|_, i| !used.contains(i));
    if let Some(&i) = pending.get(node) {
        return Some(i);
    }
    let mut taken = used.clone();
    taken.extend(pending.values().copied());
    let i = first_free(capacity, &taken)?;
    pending.insert(node.to_owned(), i);
    Some(i)
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, Error> {
    let cidr_of = |n: &Node| {
        n.spec
            .as_ref()
            .and_then(|s| s.pod_cidr.clone())
            .filter(|c| !c.is_empty())
    };
    if cidr_of(&node).is_some() || node.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let chosen = {
        let mut pending = ctx.pending.lock().unwrap_or_else(|e| e.into_inner());
        // One snapshot for both: the node's latest copy (the event's may predate our patch)
        // and what is taken.
        let nodes = ctx.inf.nodes.store().state();
        if nodes
            .iter()
            .any(|n| n.name_any() == node.name_any() && cidr_of(n).is_some())
        {
            return Ok(Action::await_change());
        }
        let used: BTreeSet<u32> = nodes
            .iter()
            .filter_map(|n| ctx.cidr.index_of(&cidr_of(n)?))
            .collect();
        let Some(i) = choose(&mut pending, &used, &node.name_any(), ctx.cidr.capacity()) else {
            warn!(node = %node.name_any(), "the cluster CIDR is exhausted; the node gets no pod CIDR");
            return Ok(Action::requeue(std::time::Duration::from_secs(60)));
        };
        i
    };
    let cidr = ctx.cidr.nth(chosen);
    let api: Api<Node> = Api::all(ctx.client.clone());
    let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
    api.patch(
        &node.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    info!(node = %node.name_any(), %cidr, "allocated the node's pod CIDR");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_cidrs_are_slices_of_the_cluster_cidr() {
        let c: ClusterCidr = "10.42.0.0/16".parse().unwrap();
        assert_eq!(c.capacity(), 256);
        assert_eq!(c.nth(0), "10.42.0.0/24");
        assert_eq!(c.nth(7), "10.42.7.0/24");
        assert_eq!(c.index_of("10.42.7.0/24"), Some(7));
        assert_eq!(c.index_of("10.43.7.0/24"), None, "outside");
        assert_eq!(c.index_of("10.42.7.0/25"), None, "other size");
        assert_eq!(c.index_of("10.200.0.0/24"), None, "a hollow node's own");
        assert!("10.42.0.1/16".parse::<ClusterCidr>().is_err());
        assert!("10.42.0.0/25".parse::<ClusterCidr>().is_err());
        assert!("fd00::/64".parse::<ClusterCidr>().is_err());
        let big: ClusterCidr = "10.0.0.0/8".parse().unwrap();
        assert_eq!(big.nth(65535), "10.255.255.0/24");
        let used: BTreeSet<u32> = [0, 1, 3].into();
        assert_eq!(first_free(256, &used), Some(2));
        assert_eq!(first_free(2, &[0, 1].into()), None);
    }

    #[test]
    fn a_node_reconciled_again_before_the_cache_shows_its_cidr_keeps_it() {
        let mut pending = BTreeMap::new();
        let none = BTreeSet::new();
        assert_eq!(choose(&mut pending, &none, "a", 4), Some(0));
        // The node's own update arrives before the patch: still no CIDR in the cache.
        assert_eq!(choose(&mut pending, &none, "a", 4), Some(0));
        assert_eq!(choose(&mut pending, &none, "b", 4), Some(1));
        // Once the cache shows a's, it is no longer pending; c gets the next free.
        assert_eq!(choose(&mut pending, &[0].into(), "c", 4), Some(2));
        assert_eq!(pending.len(), 2);
        assert_eq!(choose(&mut pending, &[0, 1, 2].into(), "d", 4), Some(3));
        assert_eq!(choose(&mut pending, &[0, 1, 2, 3].into(), "e", 4), None);
    }
}
