//! Scores: how good a feasible node is for a pod, each plugin 0..=100, weighted and summed
//! with upstream's default weights (TaintToleration 3, NodeAffinity 2, PodTopologySpread 2,
//! NodeResourcesFit 1, BalancedAllocation 1). Inter-pod preferred affinity and image
//! locality are not scored.

use super::cache::NodeInfo;
use edgesite_api::predicates::{term_matches, untolerated_prefer_no_schedule};

use super::filters::Candidate;

const WEIGHT_TAINT: i64 = 3;
const WEIGHT_NODE_AFFINITY: i64 = 2;
const WEIGHT_SPREAD: i64 = 2;
const WEIGHT_LEAST_ALLOCATED: i64 = 1;
const WEIGHT_BALANCED: i64 = 1;

/// The raw per-plugin values of one node, before normalisation.
#[derive(Debug, Clone, Copy, Default)]
struct Raw {
    least_allocated: i64,
    balanced: i64,
    same_owner: i64,
    intolerable_prefer: i64,
    preferred_affinity: i64,
}

fn raw(c: &Candidate<'_>, info: &NodeInfo) -> Raw {
    let Some(node) = info.node.as_ref() else {
        return Raw::default();
    };
    let alloc = &node.allocatable;
    let cpu = info.nonzero_cpu + c.facts.nonzero_cpu;
    let mem = info.nonzero_memory + c.facts.nonzero_memory;
    let free = |used: i64, cap: i64| {
        if cap <= 0 || used > cap {
            0
        } else {
            (cap - used) * 100 / cap
        }
    };
    let least_allocated = (free(cpu, alloc.cpu_milli) + free(mem, alloc.memory)) / 2;
    let frac = |used: i64, cap: i64| {
        if cap <= 0 {
            1.0
        } else {
            (used as f64 / cap as f64).min(1.0)
        }
    };
    // Standard deviation of two fractions is half their difference.
    let spread = (frac(cpu, alloc.cpu_milli) - frac(mem, alloc.memory)).abs() / 2.0;
    let balanced = ((1.0 - spread) * 100.0) as i64;
    let same_owner = c
        .facts
        .owner
        .as_ref()
        .and_then(|o| info.owners.get(o))
        .map_or(0, |n| i64::from(*n));
    let intolerable_prefer = untolerated_prefer_no_schedule(&node.taints, c.tolerations) as i64;
    let preferred_affinity = c
        .preferred
        .iter()
        .filter(|p| term_matches(&p.preference, &node.labels, &info.name))
        .map(|p| i64::from(p.weight))
        .sum();
    Raw {
        least_allocated,
        balanced,
        same_owner,
        intolerable_prefer,
        preferred_affinity,
    }
}

/// Scores every node of `feasible` (indices into `nodes`) for `c`; the result is in the same
/// order.
pub fn score(c: &Candidate<'_>, nodes: &[NodeInfo], feasible: &[usize]) -> Vec<i64> {
    let raws: Vec<Raw> = feasible.iter().map(|i| raw(c, &nodes[*i])).collect();
    let max_owner = raws.iter().map(|r| r.same_owner).max().unwrap_or(0);
    let max_taint = raws.iter().map(|r| r.intolerable_prefer).max().unwrap_or(0);
    let max_pref = raws.iter().map(|r| r.preferred_affinity).max().unwrap_or(0);
    // Fewer is better for owners and taints: 100 for the least, 0 for the most.
    let reverse = |v: i64, max: i64| if max == 0 { 100 } else { (max - v) * 100 / max };
    raws.iter()
        .map(|r| {
            let affinity = if max_pref <= 0 {
                0
            } else {
                r.preferred_affinity.max(0) * 100 / max_pref
            };
            WEIGHT_LEAST_ALLOCATED * r.least_allocated
                + WEIGHT_BALANCED * r.balanced
                + WEIGHT_SPREAD * reverse(r.same_owner, max_owner)
                + WEIGHT_TAINT * reverse(r.intolerable_prefer, max_taint)
                + WEIGHT_NODE_AFFINITY * affinity
        })
        .collect()
}
