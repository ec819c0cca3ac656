//! `apps/v1 ControllerRevision` helpers shared by the DaemonSet and StatefulSet controllers:
//! hashing a pod template, storing each distinct template once as a numbered revision owned
//! by its workload, and pruning old revisions beyond `revisionHistoryLimit`. The revision data
//! has upstream's shape (`{"spec":{"template":{…,"$patch":"replace"}}}`) so `kubectl rollout
//! history` and `rollout undo` read it.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{Selector, SelectorExt as _};
use kube::{Api, Client, Resource, ResourceExt as _};
use serde_json::{Value, json};
use tracing::debug;

use crate::{Error, workload};

/// The pod and revision label that names the template revision a pod was made from.
pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";

/// How many collisions [`ensure`] tolerates before giving up on a template.
const MAX_COLLISIONS: i32 = 16;

/// The workload a revision belongs to.
#[derive(Debug, Clone)]
pub struct RevisionOwner {
    /// The controller reference its revisions and pods carry.
    pub reference: OwnerReference,
    /// The workload's namespace.
    pub namespace: String,
}

impl RevisionOwner {
    /// The owner `obj` (a DaemonSet or StatefulSet).
    pub fn of<K: Resource<DynamicType = ()>>(obj: &K) -> Result<Self, Error> {
        Ok(Self {
            reference: workload::controller_ref(obj)?,
            namespace: obj.meta().namespace.clone().unwrap_or_default(),
        })
    }

    /// The workload's name.
    pub fn name(&self) -> &str {
        &self.reference.name
    }

    /// Whether `meta` names this owner as controller.
    pub fn controls(&self, meta: &ObjectMeta) -> bool {
        workload::is_controlled_by(meta, &self.reference.uid)
    }
}

/// The hash of `template` (and the workload's collision count, which changes the hash when
/// two templates collide): what the `controller-revision-hash` label carries.
pub fn hash_template(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    workload::pod_template_hash(template, collision_count)
}

/// The revision data for `template`, in the strategic-merge-patch form upstream stores.
pub fn revision_data(template: &PodTemplateSpec) -> Result<Value, Error> {
    let mut t = serde_json::to_value(template)
        .map_err(|e| Error::Unexpected(format!("cannot serialize a pod template: {e}")))?;
    if let Some(o) = t.as_object_mut() {
        o.insert("$patch".into(), json!("replace"));
    }
    Ok(json!({"spec": {"template": t}}))
}

/// The pod template stored in `rev`, if it has one.
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0.pointer("/spec/template")?.clone();
    if let Some(o) = t.as_object_mut() {
        o.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

/// Whether `rev` stores exactly `template`.
pub fn stores(rev: &ControllerRevision, template: &PodTemplateSpec) -> bool {
    match (template_of(rev), serde_json::to_value(template)) {
        (Some(stored), Ok(want)) => serde_json::to_value(stored).is_ok_and(|s| s == want),
        _ => false,
    }
}

/// The revisions `owner` controls among those matching `selector`, oldest first.
pub async fn list(
    client: &Client,
    owner: &RevisionOwner,
    selector: &Selector,
) -> Result<Vec<ControllerRevision>, Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &owner.namespace);
    let lp = ListParams::default().labels_from(selector);
    let mut revs: Vec<ControllerRevision> = api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|r| {
            r.metadata.deletion_timestamp.is_none()
                && owner.controls(&r.metadata)
                && selector.matches(r.labels())
        })
        .collect();
    revs.sort_by(|a, b| {
        a.revision
            .cmp(&b.revision)
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    Ok(revs)
}

/// The revision storing `template`: an existing one (renumbered to be the newest when it is
/// an older one coming back, as `rollout undo` does), or a new one named `<owner>-<hash>`.
/// `revisions` (from [`list`]) is kept up to date; `collision_count` grows on a hash collision
/// and must be written to the workload's status.
pub async fn ensure(
    client: &Client,
    owner: &RevisionOwner,
    template: &PodTemplateSpec,
    revisions: &mut Vec<ControllerRevision>,
    collision_count: &mut i32,
) -> Result<ControllerRevision, Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &owner.namespace);
    let max = revisions.iter().map(|r| r.revision).max().unwrap_or(0);
    if let Some(i) = revisions.iter().position(|r| stores(r, template)) {
        if revisions[i].revision < max {
            let name = revisions[i].name_any();
            let patched = api
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"revision": max + 1})),
                )
                .await?;
            revisions[i] = patched;
        }
        return Ok(revisions[i].clone());
    }
    let data = revision_data(template)?;
    for _ in 0..MAX_COLLISIONS {
        let hash = hash_template(template, Some(*collision_count));
        let mut labels: BTreeMap<String, String> = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(REVISION_HASH_LABEL.into(), hash.clone());
        let mut rev = ControllerRevision {
            data: Some(RawExtension(data.clone())),
            revision: max + 1,
            ..ControllerRevision::default()
        };
        rev.metadata.name = Some(format!("{}-{hash}", owner.name()));
        rev.metadata.namespace = Some(owner.namespace.clone());
        rev.metadata.labels = Some(labels);
        rev.metadata.owner_references = Some(vec![owner.reference.clone()]);
        match api.create(&PostParams::default(), &rev).await {
            Ok(created) => {
                revisions.push(created.clone());
                return Ok(created);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let name = rev.name_any();
                let existing = api.get(&name).await?;
                if stores(&existing, template) && owner.controls(&existing.metadata) {
                    revisions.push(existing.clone());
                    return Ok(existing);
                }
                debug!(revision = %name, "controller revision hash collision");
                *collision_count += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Unexpected(format!(
        "{} {}/{}: too many controller revision hash collisions",
        owner.reference.kind,
        owner.namespace,
        owner.name()
    )))
}

/// Deletes the oldest revisions not in `live` beyond `limit` of them.
pub async fn prune(
    client: &Client,
    namespace: &str,
    revisions: &[ControllerRevision],
    live: &HashSet<String>,
    limit: i32,
) -> Result<(), Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
    let old: Vec<&ControllerRevision> = revisions
        .iter()
        .filter(|r| !live.contains(&r.name_any()))
        .collect();
    let excess = old
        .len()
        .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
    // `revisions` is sorted oldest first.
    for r in old.into_iter().take(excess) {
        match api.delete(&r.name_any(), &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": {"labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "image": image}]},
        }))
        .unwrap()
    }

    #[test]
    fn hashes_are_stable_safe_and_depend_on_template_and_collisions() {
        let a = hash_template(&template("a"), None);
        assert_eq!(a, hash_template(&template("a"), None));
        assert_ne!(a, hash_template(&template("b"), None));
        assert_ne!(a, hash_template(&template("a"), Some(1)));
        assert!(!a.is_empty());
        assert!(a.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }

    #[test]
    fn revision_data_round_trips() {
        let t = template("nginx:1");
        let data = revision_data(&t).unwrap();
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        let rev = ControllerRevision {
            data: Some(RawExtension(data)),
            revision: 1,
            ..ControllerRevision::default()
        };
        assert_eq!(template_of(&rev), Some(t.clone()));
        assert!(stores(&rev, &t));
        assert!(!stores(&rev, &template("nginx:2")));
    }
}
