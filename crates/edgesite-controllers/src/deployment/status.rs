//! What a pass reports: the counts the ReplicaSets add up to, the Available and Progressing
//! conditions (paused, progressing, complete, deadline exceeded), and when to look again.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt as _};
use serde_json::json;

use super::rules::*;
use super::{NEW_RS_AVAILABLE, PAUSED, RESUMED, RS_UPDATED, Sync, TIMED_OUT};
use crate::Error;

impl Sync<'_> {
    /// Upstream's `checkPausedConditions`: Progressing becomes DeploymentPaused while paused
    /// and DeploymentResumed after, unless the deadline already passed.
    pub(super) fn check_paused_conditions(&mut self) {
        if progress_deadline(&self.d).is_none() {
            return;
        }
        let st = self.status();
        let cur = condition(&st, "Progressing");
        if cur.is_some_and(|c| c.reason.as_deref() == Some(TIMED_OUT)) {
            return;
        }
        let paused_cond = cur.is_some_and(|c| c.reason.as_deref() == Some(PAUSED));
        let paused = self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        if paused && !paused_cond {
            let c = self.new_condition(
                "Progressing",
                "Unknown",
                PAUSED,
                "Deployment is paused".into(),
            );
            self.set(c);
        } else if !paused && paused_cond {
            let c = self.new_condition(
                "Progressing",
                "Unknown",
                RESUMED,
                "Deployment is resumed".into(),
            );
            self.set(c);
        }
    }

    /// The status the ReplicaSets add up to, with the Available condition.
    pub(super) fn calculate_status(&self) -> DeploymentStatus {
        let old = self.status();
        let available: i32 = self.all.iter().map(rs_available).sum();
        let total: i32 = self.all.iter().map(rs_replicas).sum();
        let mut st = DeploymentStatus {
            observed_generation: self.d.metadata.generation,
            replicas: Some(self.all.iter().map(rs_status_replicas).sum()),
            updated_replicas: Some(self.new.map_or(0, |i| rs_status_replicas(&self.all[i]))),
            ready_replicas: Some(self.all.iter().map(rs_ready).sum()),
            available_replicas: Some(available),
            unavailable_replicas: Some((total - available).max(0)),
            collision_count: old.collision_count,
            conditions: old.conditions.clone(),
            terminating_replicas: None,
        };
        let min = spec_replicas(&self.d) - max_unavailable(&self.d);
        let c = if available >= min {
            self.new_condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            )
        } else {
            self.new_condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            )
        };
        set_condition(&mut st, c);
        st
    }

    /// Writes the status when only counts may have changed (scaling, paused, deleting).
    pub(super) async fn sync_status(&mut self) -> Result<Action, Error> {
        let st = self.calculate_status();
        self.write_status(st).await?;
        Ok(Action::await_change())
    }

    /// Upstream's `syncRolloutStatus`: counts plus the Progressing condition, and a look
    /// again at the progress deadline.
    pub(super) async fn sync_rollout_status(&mut self) -> Result<Action, Error> {
        let mut st = self.calculate_status();
        let deadline = progress_deadline(&self.d);
        if deadline.is_none() {
            remove_condition(&mut st, "Progressing");
        }
        let cur = condition(&st, "Progressing").cloned();
        let complete_before = st.replicas == st.updated_replicas
            && cur
                .as_ref()
                .is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE));
        let name = self.new_rs_name();
        if deadline.is_some() && !complete_before {
            if deployment_complete(&self.d, &st) {
                let msg = format!("ReplicaSet \"{name}\" has successfully progressed.");
                set_condition(
                    &mut st,
                    self.new_condition("Progressing", "True", NEW_RS_AVAILABLE, msg),
                );
            } else if deployment_progressing(&self.d, &st) {
                let msg = format!("ReplicaSet \"{name}\" is progressing.");
                let mut c = self.new_condition("Progressing", "True", RS_UPDATED, msg);
                if let Some(cur) = cur.as_ref().filter(|c| c.status == "True") {
                    c.last_transition_time = cur.last_transition_time.clone();
                }
                remove_condition(&mut st, "Progressing");
                set_condition(&mut st, c);
            } else if self.timed_out(&st) {
                let msg = format!("ReplicaSet \"{name}\" has timed out progressing.");
                set_condition(
                    &mut st,
                    self.new_condition("Progressing", "False", TIMED_OUT, msg),
                );
            }
        }
        // Creation failures of the ReplicaSets show on the Deployment.
        let failure = self.all.iter().find_map(|rs| {
            rs.status
                .as_ref()?
                .conditions
                .as_deref()?
                .iter()
                .find(|c| c.type_ == "ReplicaFailure")
                .cloned()
        });
        match failure {
            Some(f) => set_condition(
                &mut st,
                DeploymentCondition {
                    type_: f.type_,
                    status: f.status,
                    reason: f.reason,
                    message: f.message,
                    last_update_time: f.last_transition_time.clone(),
                    last_transition_time: f.last_transition_time,
                },
            ),
            None => remove_condition(&mut st, "ReplicaFailure"),
        }
        let changed = self.write_status(st.clone()).await?;
        if changed {
            return Ok(Action::await_change());
        }
        Ok(self.requeue_stuck(&st))
    }

    pub(super) fn timed_out(&self, st: &DeploymentStatus) -> bool {
        let Some(deadline) = progress_deadline(&self.d) else {
            return false;
        };
        let Some(c) = condition(st, "Progressing") else {
            return false;
        };
        match c.reason.as_deref() {
            Some(NEW_RS_AVAILABLE) => false,
            Some(TIMED_OUT) => true,
            _ => c
                .last_update_time
                .as_ref()
                .is_some_and(|t| t.0.as_second() + deadline < self.ctx.config.clock.unix_seconds()),
        }
    }

    /// When a rollout that is neither done nor timed out should be looked at again.
    pub(super) fn requeue_stuck(&self, st: &DeploymentStatus) -> Action {
        let Some(deadline) = progress_deadline(&self.d) else {
            return Action::await_change();
        };
        let Some(c) = condition(st, "Progressing") else {
            return Action::await_change();
        };
        if deployment_complete(&self.d, st) || c.reason.as_deref() == Some(TIMED_OUT) {
            return Action::await_change();
        }
        let from = c.last_update_time.as_ref().map_or(0, |t| t.0.as_second());
        let after = (from + deadline + 1 - self.ctx.config.clock.unix_seconds()).max(1);
        Action::requeue(
            Duration::from_secs(u64::try_from(after).unwrap_or(1))
                .min(self.ctx.config.workload_recheck),
        )
    }

    /// Writes `st` if it differs from the stored status; true when it wrote.
    pub(super) async fn write_status(&mut self, st: DeploymentStatus) -> Result<bool, Error> {
        let n = |v: Option<i32>| v.unwrap_or(0);
        let stored = self.stored_status.clone().unwrap_or_default();
        let same = n(stored.replicas) == n(st.replicas)
            && n(stored.updated_replicas) == n(st.updated_replicas)
            && n(stored.ready_replicas) == n(st.ready_replicas)
            && n(stored.available_replicas) == n(st.available_replicas)
            && n(stored.unavailable_replicas) == n(st.unavailable_replicas)
            && stored.observed_generation == st.observed_generation
            && stored.collision_count == st.collision_count
            && stored.conditions.as_deref().unwrap_or_default()
                == st.conditions.as_deref().unwrap_or_default();
        self.d.status = Some(st.clone());
        if same {
            return Ok(false);
        }
        let api: Api<Deployment> = Api::namespaced(
            self.ctx.client.clone(),
            &self.d.namespace().unwrap_or_default(),
        );
        api.patch_status(
            &self.d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "observedGeneration": st.observed_generation,
                "replicas": st.replicas,
                "updatedReplicas": st.updated_replicas,
                "readyReplicas": st.ready_replicas,
                "availableReplicas": st.available_replicas,
                "unavailableReplicas": st.unavailable_replicas,
                "collisionCount": st.collision_count,
                "conditions": st.conditions,
            }})),
        )
        .await?;
        self.stored_status = Some(st);
        Ok(true)
    }
}
