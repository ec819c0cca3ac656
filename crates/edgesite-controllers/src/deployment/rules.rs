//! The Deployment controller's arithmetic and condition rules on plain objects, no API
//! calls: fenceposts, how far a new ReplicaSet may grow, proportional shares, completion,
//! progress and upstream's condition-setting rule.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{MAX_REPLICAS_ANNOTATION, REVISION_ANNOTATION};
use crate::Error;
use crate::workload::scaled_value;

pub(super) fn spec_replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

pub(super) fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

pub(super) fn rs_status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

pub(super) fn rs_ready(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

pub(super) fn rs_available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// Available replicas a decision may count on: a ReplicaSet just scaled down still reports
/// the pods it is about to delete, which must not be counted twice.
pub(super) fn rs_counted_available(rs: &ReplicaSet) -> i32 {
    rs_available(rs).min(rs_replicas(rs))
}

pub(super) fn annotation_i64(meta: &ObjectMeta, name: &str) -> Option<i64> {
    meta.annotations.as_ref()?.get(name)?.parse().ok()
}

pub(super) fn revision(rs: &ReplicaSet) -> i64 {
    annotation_i64(&rs.metadata, REVISION_ANNOTATION).unwrap_or(0)
}

pub(super) fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

/// `(maxSurge, maxUnavailable)` resolved against `replicas`: surge rounds up, unavailability
/// down, and when both come out zero one pod may be unavailable so the rollout can move.
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    replicas: i32,
) -> Result<(i32, i32), Error> {
    let quarter = IntOrString::String("25%".into());
    let surge = scaled_value(max_surge.unwrap_or(&quarter), replicas, true)?;
    let unavailable = scaled_value(max_unavailable.unwrap_or(&quarter), replicas, false)?;
    if surge == 0 && unavailable == 0 {
        return Ok((0, 1));
    }
    Ok((surge, unavailable))
}

pub(super) fn fenceposts(d: &Deployment) -> (i32, i32) {
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    resolve_fenceposts(
        ru.and_then(|r| r.max_surge.as_ref()),
        ru.and_then(|r| r.max_unavailable.as_ref()),
        spec_replicas(d),
    )
    // Validation rejects malformed values; should one slip through, roll one at a time.
    .unwrap_or((1, 0))
}

/// How many pods above `spec.replicas` a rollout may run (0 for Recreate).
pub(super) fn max_surge(d: &Deployment) -> i32 {
    if is_recreate(d) { 0 } else { fenceposts(d).0 }
}

/// How many of `spec.replicas` may be unavailable during a rollout (0 for Recreate).
pub(super) fn max_unavailable(d: &Deployment) -> i32 {
    let replicas = spec_replicas(d);
    if is_recreate(d) || replicas == 0 {
        return 0;
    }
    fenceposts(d).1.min(replicas)
}

/// The size the new ReplicaSet may grow to now, given every ReplicaSet's `spec.replicas`.
pub(super) fn new_rs_new_replicas(d: &Deployment, all: &[ReplicaSet], new_replicas: i32) -> i32 {
    let replicas = spec_replicas(d);
    if is_recreate(d) {
        return replicas;
    }
    let current: i32 = all.iter().map(rs_replicas).sum();
    let max_total = replicas + max_surge(d);
    if current >= max_total {
        return new_replicas;
    }
    new_replicas + (max_total - current).min(replicas - new_replicas).max(0)
}

/// How many replicas a ReplicaSet gains (or loses) when the Deployment is resized in the
/// middle of a rollout: its share of the new size, by its share of the last one.
pub(super) fn replica_set_fraction(rs: &ReplicaSet, d: &Deployment) -> i32 {
    let replicas = spec_replicas(d);
    if replicas == 0 {
        return -rs_replicas(rs);
    }
    let deployment_replicas = replicas + max_surge(d);
    let annotated = annotation_i64(&rs.metadata, MAX_REPLICAS_ANNOTATION)
        .and_then(|v| i32::try_from(v).ok())
        .unwrap_or_else(|| d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0));
    if annotated <= 0 {
        return 0;
    }
    let size = f64::from(rs_replicas(rs)) * f64::from(deployment_replicas) / f64::from(annotated);
    // Bounded by the replica counts above, so the conversion cannot overflow.
    #[allow(clippy::cast_possible_truncation)]
    let size = size.round() as i32;
    size - rs_replicas(rs)
}

pub(super) fn proportion(rs: &ReplicaSet, d: &Deployment, to_add: i32, added: i32) -> i32 {
    if rs_replicas(rs) == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = replica_set_fraction(rs, d);
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

/// Whether the Deployment's status says the rollout is done.
pub(super) fn deployment_complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let replicas = spec_replicas(d);
    s.updated_replicas.unwrap_or(0) == replicas
        && s.replicas.unwrap_or(0) == replicas
        && s.available_replicas.unwrap_or(0) == replicas
        && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Whether `new` shows progress over the Deployment's current status.
pub(super) fn deployment_progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let n = |v: Option<i32>| v.unwrap_or(0);
    let old_old = n(old.replicas) - n(old.updated_replicas);
    let new_old = n(new.replicas) - n(new.updated_replicas);
    n(new.updated_replicas) > n(old.updated_replicas)
        || new_old < old_old
        || n(new.ready_replicas) > n(old.ready_replicas)
        || n(new.available_replicas) > n(old.available_replicas)
}

pub(super) fn progress_deadline(d: &Deployment) -> Option<i64> {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .filter(|s| *s != i32::MAX)
        .map(i64::from)
}

pub(super) fn condition<'a>(s: &'a DeploymentStatus, ty: &str) -> Option<&'a DeploymentCondition> {
    s.conditions.as_deref()?.iter().find(|c| c.type_ == ty)
}

pub(super) fn remove_condition(s: &mut DeploymentStatus, ty: &str) {
    if let Some(c) = s.conditions.as_mut() {
        c.retain(|c| c.type_ != ty);
        if c.is_empty() {
            s.conditions = None;
        }
    }
}

/// Upstream's `SetDeploymentCondition`: no change when status and reason are the same;
/// the transition time survives a change of reason with the same status.
pub(super) fn set_condition(s: &mut DeploymentStatus, mut c: DeploymentCondition) {
    if let Some(cur) = condition(s, &c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    remove_condition(s, &c.type_);
    s.conditions.get_or_insert_with(Vec::new).push(c);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ios(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    #[test]
    fn fenceposts_round_surge_up_and_unavailability_down() {
        assert_eq!(resolve_fenceposts(None, None, 10).unwrap(), (3, 2));
        assert_eq!(resolve_fenceposts(None, None, 3).unwrap(), (1, 0));
        assert_eq!(
            resolve_fenceposts(Some(&IntOrString::Int(0)), Some(&ios("10%")), 5).unwrap(),
            (0, 1),
            "both zero: one may be unavailable"
        );
        assert_eq!(
            resolve_fenceposts(Some(&IntOrString::Int(2)), Some(&IntOrString::Int(1)), 5).unwrap(),
            (2, 1)
        );
    }

    fn rs(replicas: i32, max_annotation: Option<i32>) -> ReplicaSet {
        let mut ann = serde_json::Map::new();
        if let Some(m) = max_annotation {
            ann.insert(MAX_REPLICAS_ANNOTATION.into(), json!(m.to_string()));
        }
        serde_json::from_value(json!({
            "metadata": {"name": "x", "annotations": ann},
            "spec": {"replicas": replicas, "selector": {}},
        }))
        .unwrap()
    }

    fn deployment(replicas: i32, surge: i32, unavailable: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "d"},
            "spec": {"replicas": replicas, "selector": {}, "template": {},
                "strategy": {"type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}},
        }))
        .unwrap()
    }

    #[test]
    fn new_replica_set_grows_within_surge() {
        let d = deployment(10, 3, 2);
        // 10 old + 0 new, surge 3: the new one may take 3.
        assert_eq!(new_rs_new_replicas(&d, &[rs(10, None), rs(0, None)], 0), 3);
        // Already at 13: no growth.
        assert_eq!(new_rs_new_replicas(&d, &[rs(10, None), rs(3, None)], 3), 3);
        // Old shrank to 5: up to 8, but never beyond spec.replicas.
        assert_eq!(new_rs_new_replicas(&d, &[rs(5, None), rs(3, None)], 3), 8);
        assert_eq!(new_rs_new_replicas(&d, &[rs(0, None), rs(8, None)], 8), 10);
    }

    #[test]
    fn proportions_follow_the_last_size() {
        // Scaled from 10 (max 13) to 20 (max 23): a replica set of 6 grows to about 6*23/13.
        let d = deployment(20, 3, 2);
        assert_eq!(replica_set_fraction(&rs(6, Some(13)), &d), 5);
        assert_eq!(
            proportion(&rs(6, Some(13)), &d, 10, 8),
            2,
            "capped by what is left"
        );
        let zero = deployment(0, 3, 2);
        assert_eq!(replica_set_fraction(&rs(6, Some(13)), &zero), -6);
    }
}
