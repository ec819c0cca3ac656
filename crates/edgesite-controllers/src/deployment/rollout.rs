//! How a pass moves replicas: resizing without a rollout (proportionally when several
//! ReplicaSets are active), RollingUpdate, Recreate, and pruning old revisions.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt as _};
use tracing::info;

use super::rules::*;
use super::{DESIRED_REPLICAS_ANNOTATION, Sync};
use crate::Error;
use crate::workload::{controller_of, key};

impl Sync<'_> {
    /// Resizes the ReplicaSets to `spec.replicas` without rolling (upstream's `scale`).
    pub(super) async fn scale(&mut self) -> Result<(), Error> {
        let replicas = spec_replicas(&self.d);
        let mut old = self.old_indices();
        // Newest first.
        old.reverse();
        let candidates: Vec<usize> = self.new.into_iter().chain(old.iter().copied()).collect();
        let active: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| rs_replicas(&self.all[i]) > 0)
            .collect();
        let only = match active.len() {
            0 => self.new.or(old.first().copied()),
            1 => Some(active[0]),
            _ => None,
        };
        if let Some(i) = only {
            if rs_replicas(&self.all[i]) != replicas {
                self.scale_rs(i, replicas).await?;
            }
            return Ok(());
        }
        if let Some(n) = self.new {
            let rs = &self.all[n];
            let saturated = rs_replicas(rs) == replicas
                && annotation_i64(&rs.metadata, DESIRED_REPLICAS_ANNOTATION)
                    == Some(i64::from(replicas))
                && rs_available(rs) == replicas;
            if saturated {
                for i in old {
                    if rs_replicas(&self.all[i]) > 0 {
                        self.scale_rs(i, 0).await?;
                    }
                }
                return Ok(());
            }
        }
        if is_recreate(&self.d) {
            return Ok(());
        }
        // Proportional scaling: spread the change over the active ReplicaSets by size.
        let allowed = if replicas > 0 {
            replicas + max_surge(&self.d)
        } else {
            0
        };
        let current: i32 = active.iter().map(|&i| rs_replicas(&self.all[i])).sum();
        let to_add = allowed - current;
        let mut order = active;
        order.sort_by(|&a, &b| {
            let (ra, rb) = (&self.all[a], &self.all[b]);
            let by_size = rs_replicas(rb).cmp(&rs_replicas(ra));
            let (ta, tb) = (
                ra.creation_timestamp().map(|t| t.0),
                rb.creation_timestamp().map(|t| t.0),
            );
            let by_age = if to_add > 0 { tb.cmp(&ta) } else { ta.cmp(&tb) };
            by_size.then(by_age)
        });
        let mut added = 0;
        let mut sizes: Vec<(usize, i32)> = Vec::new();
        for &i in &order {
            let rs = &self.all[i];
            let p = if to_add == 0 {
                0
            } else {
                proportion(rs, &self.d, to_add, added)
            };
            added += p;
            sizes.push((i, rs_replicas(rs) + p));
        }
        if let Some(first) = sizes.first_mut() {
            first.1 = (first.1 + to_add - added).max(0);
        }
        for (i, size) in sizes {
            self.scale_rs(i, size).await?;
        }
        Ok(())
    }

    pub(super) async fn rollout_rolling(&mut self) -> Result<Action, Error> {
        self.sync_revision(true).await?;
        let Some(new) = self.new else {
            return self.sync_rollout_status().await;
        };
        // Grow the new ReplicaSet within maxSurge.
        let replicas = spec_replicas(&self.d);
        let new_size = rs_replicas(&self.all[new]);
        if new_size != replicas {
            let to = if new_size > replicas {
                replicas
            } else {
                new_rs_new_replicas(&self.d, &self.all, new_size)
            };
            if self.scale_rs(new, to).await? {
                return self.sync_rollout_status().await;
            }
        }
        // Shrink the old ones within maxUnavailable.
        if self.reconcile_old().await? {
            return self.sync_rollout_status().await;
        }
        if deployment_complete(&self.d, &self.status()) {
            self.cleanup().await?;
        }
        self.sync_rollout_status().await
    }

    /// Upstream's `reconcileOldReplicaSets`; true when some old ReplicaSet shrank.
    pub(super) async fn reconcile_old(&mut self) -> Result<bool, Error> {
        let Some(new) = self.new else {
            return Ok(false);
        };
        // Oldest first (`all` is sorted by creation).
        let old: Vec<usize> = self
            .old_indices()
            .into_iter()
            .filter(|&i| rs_replicas(&self.all[i]) > 0)
            .collect();
        if old.is_empty() {
            return Ok(false);
        }
        let replicas = spec_replicas(&self.d);
        let min_available = replicas - max_unavailable(&self.d);
        let all_pods: i32 = self.all.iter().map(rs_replicas).sum();
        let new_rs = &self.all[new];
        let new_unavailable = rs_replicas(new_rs) - rs_counted_available(new_rs);
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        // Unhealthy old replicas go first: they do not count as available anyway.
        let mut cleaned = 0;
        for &i in &old {
            if cleaned >= max_scaled_down {
                break;
            }
            let rs = &self.all[i];
            let unhealthy = rs_replicas(rs) - rs_counted_available(rs);
            if unhealthy <= 0 {
                continue;
            }
            let n = unhealthy.min(max_scaled_down - cleaned);
            let to = rs_replicas(rs) - n;
            self.scale_rs(i, to).await?;
            cleaned += n;
        }
        // Then healthy ones, as far as availability allows.
        let available: i32 = self.all.iter().map(rs_counted_available).sum();
        let mut scaled = 0;
        if available > min_available {
            let total = available - min_available;
            for &i in &old {
                if scaled >= total {
                    break;
                }
                let size = rs_replicas(&self.all[i]);
                if size == 0 {
                    continue;
                }
                let n = size.min(total - scaled);
                self.scale_rs(i, size - n).await?;
                scaled += n;
            }
        }
        Ok(cleaned + scaled > 0)
    }

    pub(super) async fn rollout_recreate(&mut self) -> Result<Action, Error> {
        self.sync_revision(false).await?;
        let mut scaled_down = false;
        for i in self.old_indices() {
            if rs_replicas(&self.all[i]) > 0 {
                scaled_down |= self.scale_rs(i, 0).await?;
            }
        }
        if scaled_down {
            return self.sync_rollout_status().await;
        }
        if self.old_pods_running().await? {
            self.sync_rollout_status().await?;
            // Pod deletions do not wake this controller: look again soon.
            return Ok(Action::requeue(
                self.ctx.config.workload_recheck.min(Duration::from_secs(1)),
            ));
        }
        if self.new.is_none() {
            self.sync_revision(true).await?;
        }
        if let Some(new) = self.new {
            let replicas = spec_replicas(&self.d);
            self.scale_rs(new, replicas).await?;
        }
        if deployment_complete(&self.d, &self.status()) {
            self.cleanup().await?;
        }
        self.sync_rollout_status().await
    }

    /// Whether any pod of an old ReplicaSet may still be running (Recreate waits for none).
    pub(super) async fn old_pods_running(&self) -> Result<bool, Error> {
        let old: Vec<String> = self
            .old_indices()
            .into_iter()
            .filter_map(|i| self.all[i].uid())
            .collect();
        if self
            .old_indices()
            .iter()
            .any(|&i| rs_status_replicas(&self.all[i]) > 0)
        {
            return Ok(true);
        }
        if old.is_empty() {
            return Ok(false);
        }
        let pods: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            &self.d.namespace().unwrap_or_default(),
        );
        Ok(pods
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .any(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                controller_of(&p.metadata).is_some_and(|r| old.contains(&r.uid))
                    && !matches!(phase, Some("Failed" | "Succeeded"))
            }))
    }

    /// Deletes the oldest old ReplicaSets that are scaled to zero beyond
    /// `revisionHistoryLimit`.
    pub(super) async fn cleanup(&mut self) -> Result<(), Error> {
        let limit = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10);
        let mut alive: Vec<usize> = self
            .old_indices()
            .into_iter()
            .filter(|&i| self.all[i].metadata.deletion_timestamp.is_none())
            .collect();
        let excess = alive
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        if excess == 0 {
            return Ok(());
        }
        alive.sort_by_key(|&i| {
            (
                revision(&self.all[i]),
                self.all[i].creation_timestamp().map(|t| t.0),
            )
        });
        for &i in alive.iter().take(excess) {
            let rs = &self.all[i];
            let settled =
                rs.status.as_ref().and_then(|s| s.observed_generation) >= rs.metadata.generation;
            if rs_status_replicas(rs) != 0 || rs_replicas(rs) != 0 || !settled {
                continue;
            }
            info!(deployment = %key(&self.d), replicaset = %rs.name_any(), "deleting old replica set beyond revisionHistoryLimit");
            match self
                .rss
                .delete(&rs.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
