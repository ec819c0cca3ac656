//! The Deployment controller: rolls a Deployment's pod template out through ReplicaSets.
//!
//! Each distinct template gets a ReplicaSet `<deployment>-<pod-template-hash>` whose selector,
//! template and labels carry the `pod-template-hash` label; a ReplicaSet whose template equals
//! the Deployment's (ignoring that label) is reused, which is how `kubectl rollout undo` brings
//! an old revision back. RollingUpdate moves replicas from old to new ReplicaSets within
//! `maxSurge`/`maxUnavailable`; Recreate scales the old ones to zero and waits for their pods
//! to be gone first. The rules (fenceposts, proportional scaling, conditions, revision
//! history) follow upstream's controller; pods are the ReplicaSet controller's business.

mod rollout;
mod rules;
mod status;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::queue;
use crate::workload::{
    POD_TEMPLATE_HASH_LABEL, can_adopt, controller_of, controller_ref, is_controlled_by, key,
    now_time, pod_template_hash, selector, selects, templates_equal_ignoring_hash,
};
use crate::{Config, Error};

pub use rules::resolve_fenceposts;
use rules::*;

/// The revision of a ReplicaSet (and of its Deployment, for the newest one).
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// `spec.replicas` of the Deployment when it last scaled the ReplicaSet.
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
/// `spec.replicas + maxSurge` of the Deployment when it last scaled the ReplicaSet.
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";
/// Why a revision was made; copied from the Deployment to its new ReplicaSet.
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";

/// Deployment annotations never copied to a ReplicaSet.
const SKIPPED_ANNOTATIONS: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION_ANNOTATION,
    "deployment.kubernetes.io/revision-history",
    DESIRED_REPLICAS_ANNOTATION,
    MAX_REPLICAS_ANNOTATION,
    "deprecated.deployment.rollback.to",
];

// Progressing condition reasons, as `kubectl rollout status` and users read them.
const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
const RS_UPDATED: &str = "ReplicaSetUpdated";
const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
const TIMED_OUT: &str = "ProgressDeadlineExceeded";
const PAUSED: &str = "DeploymentPaused";
const RESUMED: &str = "DeploymentResumed";
const RS_CREATE_ERROR: &str = "ReplicaSetCreateError";

struct Context {
    client: Client,
    config: Arc<Config>,
}

/// Runs the Deployment controller until the returned future is dropped.
pub async fn run(client: Client, config: Arc<Config>) {
    let deploys: Api<Deployment> = Api::all(client.clone());
    let rss: Api<ReplicaSet> = Api::all(client.clone());
    let controller = Controller::new(deploys, watcher::Config::default());
    let store = controller.store();
    let ctx = Arc::new(Context { client, config });
    let controller = controller.watches(rss, watcher::Config::default(), move |rs: ReplicaSet| {
        deployments_for_replica_set(&store, &rs)
    });
    queue::run_controller("deployment", controller, reconcile, ctx).await;
}

/// The Deployments a ReplicaSet event concerns: its controller, or for an orphan every
/// Deployment of its namespace that selects it.
fn deployments_for_replica_set(
    store: &Store<Deployment>,
    rs: &ReplicaSet,
) -> Vec<ObjectRef<Deployment>> {
    let ns = rs.namespace().unwrap_or_default();
    if let Some(owner) = controller_of(&rs.metadata) {
        if owner.kind == "Deployment" {
            return vec![ObjectRef::new(&owner.name).within(&ns)];
        }
        return Vec::new();
    }
    store
        .state()
        .iter()
        .filter(|d| d.namespace().as_deref() == Some(ns.as_str()))
        .filter(|d| {
            selector(d.spec.as_ref().map(|s| &s.selector))
                .is_ok_and(|sel| selects(&sel, &rs.metadata))
        })
        .map(|d| ObjectRef::from_obj(&**d))
        .collect()
}

/// A Deployment being synced: the object (whose status and annotations the pass updates in
/// memory) and the ReplicaSets it controls.
struct Sync<'a> {
    ctx: &'a Context,
    d: Deployment,
    rss: Api<ReplicaSet>,
    /// Every ReplicaSet the Deployment controls.
    all: Vec<ReplicaSet>,
    /// Which of `all` runs the current template.
    new: Option<usize>,
    /// The revision annotation the Deployment should carry, when it must change.
    revision: Option<String>,
    /// The status as the server has it, to write only changes.
    stored_status: Option<DeploymentStatus>,
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = d.namespace().unwrap_or_default();
    let mut s = Sync {
        ctx: &ctx,
        d: (*d).clone(),
        rss: Api::namespaced(ctx.client.clone(), &ns),
        all: Vec::new(),
        new: None,
        revision: None,
        stored_status: d.status.clone(),
    };
    let sel = selector(d.spec.as_ref().map(|s| &s.selector))?;
    if sel.is_everything()
        || d.spec.as_ref().is_none_or(|s| {
            s.selector
                .match_labels
                .as_ref()
                .is_none_or(BTreeMap::is_empty)
                && s.selector
                    .match_expressions
                    .as_ref()
                    .is_none_or(Vec::is_empty)
        })
    {
        warn!(deployment = %key(&*d), "empty selector selects every pod; not syncing");
        return Ok(Action::await_change());
    }
    s.all = s.claim_replica_sets(&sel).await?;
    s.find_new();

    let action = if d.metadata.deletion_timestamp.is_some() {
        s.sync_status().await?
    } else {
        s.check_paused_conditions();
        let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        if paused || s.is_scaling_event() {
            s.sync_revision(false).await?;
            s.scale().await?;
            if paused {
                s.cleanup().await?;
            }
            s.sync_status().await?
        } else if is_recreate(&d) {
            s.rollout_recreate().await?
        } else {
            s.rollout_rolling().await?
        }
    };
    if let Some(rev) = s.revision.take() {
        let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch(
            &d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {REVISION_ANNOTATION: rev}}})),
        )
        .await?;
    }
    Ok(action)
}

impl Sync<'_> {
    fn uid(&self) -> String {
        self.d.uid().unwrap_or_default()
    }

    fn status(&self) -> DeploymentStatus {
        self.d.status.clone().unwrap_or_default()
    }

    fn now(&self) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
        now_time(self.ctx.config.clock.as_ref())
    }

    fn new_condition(
        &self,
        ty: &str,
        status: &str,
        reason: &str,
        msg: String,
    ) -> DeploymentCondition {
        let now = self.now();
        DeploymentCondition {
            type_: ty.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(msg),
            last_update_time: Some(now.clone()),
            last_transition_time: Some(now),
        }
    }

    /// Sets a condition on the in-memory status.
    fn set(&mut self, c: DeploymentCondition) {
        let mut st = self.status();
        set_condition(&mut st, c);
        self.d.status = Some(st);
    }

    fn old_indices(&self) -> Vec<usize> {
        (0..self.all.len())
            .filter(|i| Some(*i) != self.new)
            .collect()
    }

    /// Merge-patches the ReplicaSet `name`: a merge patch, so the ReplicaSet controller's
    /// status writes cannot make it conflict.
    async fn merge_patch_rs(&self, name: &str, patch: Value) -> Result<ReplicaSet, kube::Error> {
        self.rss
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
    }

    fn new_rs_name(&self) -> String {
        self.new.map(|i| self.all[i].name_any()).unwrap_or_default()
    }

    /// Lists the namespace's ReplicaSets; keeps those this Deployment controls and still
    /// selects, releases those it no longer selects, adopts matching orphans.
    async fn claim_replica_sets(
        &self,
        sel: &edgesite_api::selector::LabelSelector,
    ) -> Result<Vec<ReplicaSet>, Error> {
        let uid = self.uid();
        let deleting = self.d.metadata.deletion_timestamp.is_some();
        let mut out = Vec::new();
        let mut adoptable = None;
        for rs in self.rss.list(&ListParams::default()).await?.items {
            let matches = selects(sel, &rs.metadata);
            match controller_of(&rs.metadata) {
                Some(r) if r.uid == uid => {
                    if matches {
                        out.push(rs);
                    } else if rs.metadata.deletion_timestamp.is_none() {
                        self.set_owner_refs(&rs, None).await?;
                    }
                }
                Some(_) => {}
                None if matches && !deleting && rs.metadata.deletion_timestamp.is_none() => {
                    if adoptable.is_none() {
                        let api: Api<Deployment> = Api::namespaced(
                            self.ctx.client.clone(),
                            &self.d.namespace().unwrap_or_default(),
                        );
                        adoptable = Some(can_adopt(&api, &self.d.name_any(), &uid).await?);
                    }
                    if adoptable != Some(true) {
                        continue;
                    }
                    if let Some(rs) = self.set_owner_refs(&rs, Some(&self.d)).await? {
                        info!(deployment = %key(&self.d), replicaset = %rs.name_any(), "adopted replica set");
                        out.push(rs);
                    }
                }
                None => {}
            }
        }
        Ok(out)
    }

    /// Adopts (`owner` set) or releases `rs`; `None` if it changed meanwhile.
    async fn set_owner_refs(
        &self,
        rs: &ReplicaSet,
        owner: Option<&Deployment>,
    ) -> Result<Option<ReplicaSet>, Error> {
        let uid = self.uid();
        let mut refs: Vec<_> = rs
            .owner_references()
            .iter()
            .filter(|r| r.uid != uid)
            .cloned()
            .collect();
        if let Some(d) = owner {
            refs.push(controller_ref(d)?);
        }
        let refs = if refs.is_empty() {
            Value::Null
        } else {
            json!(refs)
        };
        let patch = json!({"metadata": {"ownerReferences": refs}});
        match self.merge_patch_rs(&rs.name_any(), patch).await {
            Ok(rs) => Ok(Some(rs)),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Picks the new ReplicaSet: the oldest whose template equals the Deployment's.
    fn find_new(&mut self) {
        self.all.sort_by(|a, b| {
            (a.creation_timestamp().map(|t| t.0), a.name_any())
                .cmp(&(b.creation_timestamp().map(|t| t.0), b.name_any()))
        });
        let Some(template) = self.d.spec.as_ref().map(|s| s.template.clone()) else {
            return;
        };
        self.new = self.all.iter().position(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| templates_equal_ignoring_hash(t, &template))
        });
    }

    /// A resize of the Deployment (not a template change): some active ReplicaSet was last
    /// scaled for another `spec.replicas`.
    fn is_scaling_event(&self) -> bool {
        let want = i64::from(spec_replicas(&self.d));
        self.all.iter().filter(|rs| rs_replicas(rs) > 0).any(|rs| {
            annotation_i64(&rs.metadata, DESIRED_REPLICAS_ANNOTATION).is_some_and(|v| v != want)
        })
    }

    /// Brings the revision annotations up to date and, with `create`, makes the new
    /// ReplicaSet if none runs the current template (upstream's
    /// `getAllReplicaSetsAndSyncRevision`).
    async fn sync_revision(&mut self, create: bool) -> Result<(), Error> {
        let max_old = self
            .old_indices()
            .into_iter()
            .map(|i| revision(&self.all[i]))
            .max()
            .unwrap_or(0);
        let new_revision = max_old + 1;
        if let Some(i) = self.new {
            let mut rs = self.all[i].clone();
            let changed = self.set_new_rs_annotations(&mut rs, new_revision, true);
            let min_ready = self
                .d
                .spec
                .as_ref()
                .and_then(|s| s.min_ready_seconds)
                .unwrap_or(0);
            let spec = rs.spec.get_or_insert_with(Default::default);
            let min_ready_changed = spec.min_ready_seconds.unwrap_or(0) != min_ready;
            if changed || min_ready_changed {
                spec.min_ready_seconds = Some(min_ready);
                // A merge patch, so the ReplicaSet controller's status writes cannot make
                // this conflict.
                let patch = json!({
                    "metadata": {"annotations": rs.metadata.annotations},
                    "spec": {"minReadySeconds": min_ready},
                });
                rs = self.merge_patch_rs(&rs.name_any(), patch).await?;
            }
            self.set_deployment_revision(revision(&rs));
            self.all[i] = rs;
            if condition(&self.status(), "Progressing").is_none()
                && progress_deadline(&self.d).is_some()
            {
                let msg = format!("Found new replica set \"{}\"", self.new_rs_name());
                let c = self.new_condition("Progressing", "True", FOUND_NEW_RS, msg);
                self.set(c);
            }
            return Ok(());
        }
        if !create {
            return Ok(());
        }
        self.create_new_rs(new_revision).await
    }

    async fn create_new_rs(&mut self, new_revision: i64) -> Result<(), Error> {
        let spec = self.d.spec.clone().unwrap_or_default();
        let collisions = self.status().collision_count;
        let hash = pod_template_hash(&spec.template, collisions);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.clone());
        let mut sel = spec.selector.clone();
        sel.match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.clone());
        let name = format!("{}-{hash}", self.d.name_any());
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: self.d.namespace(),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                owner_references: Some(vec![controller_ref(&self.d)?]),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: Some(spec.min_ready_seconds.unwrap_or(0)),
                selector: sel,
                template: Some(template),
            }),
            status: None,
        };
        let replicas = new_rs_new_replicas(&self.d, &self.all, 0);
        if let Some(s) = rs.spec.as_mut() {
            s.replicas = Some(replicas);
        }
        self.set_new_rs_annotations(&mut rs, new_revision, false);
        let created = match self.rss.create(&PostParams::default(), &rs).await {
            Ok(rs) => {
                info!(deployment = %key(&self.d), replicaset = %name, replicas, "created new replica set");
                let msg = format!("Created new replica set \"{name}\"");
                if progress_deadline(&self.d).is_some() {
                    let c = self.new_condition("Progressing", "True", NEW_RS_CREATED, msg);
                    self.set(c);
                }
                rs
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Ours already (a pass whose answer was lost), or a hash collision.
                let existing = self.rss.get(&name).await?;
                let ours = is_controlled_by(&existing.metadata, &self.uid())
                    && existing
                        .spec
                        .as_ref()
                        .and_then(|s| s.template.as_ref())
                        .is_some_and(|t| templates_equal_ignoring_hash(t, &spec.template));
                if !ours {
                    let count = collisions.unwrap_or(0).saturating_add(1);
                    let mut st = self.status();
                    st.collision_count = Some(count);
                    self.write_status(st).await?;
                    return Err(Error::Unexpected(format!(
                        "replica set {name} exists with another template; collisionCount now {count}"
                    )));
                }
                existing
            }
            Err(e) => {
                if progress_deadline(&self.d).is_some() {
                    let msg = format!("Failed to create new replica set \"{name}\": {e}");
                    let c = self.new_condition("Progressing", "False", RS_CREATE_ERROR, msg);
                    self.set(c);
                    let st = self.status();
                    self.write_status(st).await?;
                }
                return Err(e.into());
            }
        };
        self.set_deployment_revision(revision(&created));
        self.all.push(created);
        self.new = Some(self.all.len() - 1);
        Ok(())
    }

    /// Upstream's `SetNewReplicaSetAnnotations`; true when `rs` changed.
    fn set_new_rs_annotations(&self, rs: &mut ReplicaSet, new_revision: i64, exists: bool) -> bool {
        let replicas = spec_replicas(&self.d);
        let max = replicas + max_surge(&self.d);
        let old_revision = revision(rs);
        let ann = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
        let mut changed = false;
        for (k, v) in self.d.annotations() {
            if SKIPPED_ANNOTATIONS.contains(&k.as_str()) || ann.get(k) == Some(v) {
                continue;
            }
            ann.insert(k.clone(), v.clone());
            changed = true;
        }
        if old_revision < new_revision || !ann.contains_key(REVISION_ANNOTATION) {
            ann.insert(REVISION_ANNOTATION.into(), new_revision.to_string());
            changed = true;
        }
        if !exists {
            ann.insert(DESIRED_REPLICAS_ANNOTATION.into(), replicas.to_string());
            ann.insert(MAX_REPLICAS_ANNOTATION.into(), max.to_string());
            changed = true;
        }
        changed
    }

    fn set_deployment_revision(&mut self, rev: i64) {
        let rev = rev.to_string();
        if self.d.annotations().get(REVISION_ANNOTATION) != Some(&rev) {
            self.d
                .annotations_mut()
                .insert(REVISION_ANNOTATION.into(), rev.clone());
            self.revision = Some(rev);
        }
    }

    /// Sets a ReplicaSet's size and its replicas annotations; true when the size changed.
    async fn scale_rs(&mut self, i: usize, to: i32) -> Result<bool, Error> {
        let rs = &self.all[i];
        let replicas = spec_replicas(&self.d);
        let desired = replicas.to_string();
        let max = (replicas + max_surge(&self.d)).to_string();
        let size_changed = rs_replicas(rs) != to;
        let ann = rs.annotations();
        let ann_changed = ann.get(DESIRED_REPLICAS_ANNOTATION) != Some(&desired)
            || ann.get(MAX_REPLICAS_ANNOTATION) != Some(&max);
        if !size_changed && !ann_changed {
            return Ok(false);
        }
        let from = rs_replicas(rs);
        let patch = json!({
            "metadata": {
                "annotations": {DESIRED_REPLICAS_ANNOTATION: desired, MAX_REPLICAS_ANNOTATION: max},
            },
            "spec": {"replicas": to},
        });
        let updated = self.merge_patch_rs(&rs.name_any(), patch).await?;
        if size_changed {
            info!(deployment = %key(&self.d), replicaset = %updated.name_any(), from, to, "scaled replica set");
        }
        self.all[i] = updated;
        Ok(size_changed)
    }
}
