//! Pieces the workload controllers (ReplicaSet, Deployment, and later the DaemonSet,
//! StatefulSet and Job controllers) share: controller owner references, label-selector
//! matching, building a Pod from a template, pod readiness and availability against the
//! controllers' clock, the `pod-template-hash` of a template, a pass's requeue time, and
//! creating or deleting a batch of pods.

use std::collections::BTreeMap;
use std::time::Duration;

pub use edgesite_api::predicates::{
    is_pod_active, is_pod_available, is_pod_ready, is_pod_terminal, ready_since,
    seconds_until_available,
};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt as _};

use crate::Error;

/// How many pod creations or deletions [`create_pods`] and [`delete_pods`] issue at once.
const BURST: usize = 16;

/// The label the Deployment controller adds to a ReplicaSet's selector, template and labels,
/// naming the template it was made from.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// A controller owner reference to `owner` (`controller` and `blockOwnerDeletion` set), as
/// workload controllers put on what they create or adopt.
pub fn controller_ref<K>(owner: &K) -> Result<OwnerReference, Error>
where
    K: Resource<DynamicType = ()>,
{
    let meta = owner.meta();
    let (Some(name), Some(uid)) = (meta.name.clone(), meta.uid.clone()) else {
        return Err(Error::Unexpected(format!(
            "{} has no name or uid yet; it cannot own objects",
            K::kind(&())
        )));
    };
    Ok(OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name,
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// The owner reference with `controller: true` in `meta`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|r| r.controller == Some(true))
}

/// Whether `meta` is controlled by the object with `uid`.
pub fn is_controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == uid)
}

/// The structured selector of a workload in the API server's selector type. An absent or
/// empty selector selects nothing, as upstream's controllers treat it.
pub fn selector(
    sel: Option<&LabelSelector>,
) -> Result<edgesite_api::selector::LabelSelector, Error> {
    let Some(sel) = sel else {
        return Ok(edgesite_api::selector::LabelSelector::nothing());
    };
    if sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && sel.match_expressions.as_ref().is_none_or(Vec::is_empty)
    {
        return Ok(edgesite_api::selector::LabelSelector::nothing());
    }
    let value = serde_json::to_value(sel)
        .map_err(|e| Error::Unexpected(format!("cannot encode label selector: {e}")))?;
    edgesite_api::selector::LabelSelector::from_metav1(&value)
        .map_err(|e| Error::Unexpected(format!("invalid label selector: {e}")))
}

/// The pod selector of the `kind` `ns/name` as a kube-rs [`kube::core::Selector`] for list
/// calls; `None` when it selects everything, which a workload controller leaves alone.
pub fn pod_selector(
    kind: &str,
    ns: &str,
    name: &str,
    sel: &LabelSelector,
) -> Result<Option<kube::core::Selector>, Error> {
    let selector = kube::core::Selector::try_from(sel.clone())
        .map_err(|e| Error::Unexpected(format!("{kind} {ns}/{name}: bad selector: {e}")))?;
    Ok((!selector.selects_all()).then_some(selector))
}

/// Whether `selector` selects an object with `meta`'s labels.
pub fn selects(selector: &edgesite_api::selector::LabelSelector, meta: &ObjectMeta) -> bool {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    selector.matches(meta.labels.as_ref().unwrap_or(&EMPTY))
}

/// A Pod made from `template` for the controller `owner`, named `{generate_name}xxxxx` by the
/// API server.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    owner: OwnerReference,
    generate_name: &str,
) -> Pod {
    let tm = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name.to_owned()),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// The `pod-template-hash` of a template: FNV-1a (32 bit) of its canonical JSON form and of
/// the collision count, spelled with upstream's alphabet of safe characters (no vowels, so no
/// words). Stable for equal templates; a different `collision_count` gives another name when
/// two templates collide.
pub fn pod_template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    // serde_json's maps are ordered, so this encoding is canonical.
    let json = serde_json::to_vec(template).unwrap_or_default();
    let mut h = Fnv32a::new();
    h.write(&json);
    if let Some(c) = collision_count {
        h.write(&c.to_le_bytes());
    }
    safe_encode(&h.0.to_string())
}

/// Whether two templates are equal apart from the `pod-template-hash` label.
pub fn templates_equal_ignoring_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    without_hash(a) == without_hash(b)
}

fn without_hash(t: &PodTemplateSpec) -> serde_json::Value {
    let mut t = t.clone();
    if let Some(meta) = t.metadata.as_mut() {
        if let Some(labels) = meta.labels.as_mut() {
            labels.remove(POD_TEMPLATE_HASH_LABEL);
            if labels.is_empty() {
                meta.labels = None;
            }
        }
        if *meta == ObjectMeta::default() {
            t.metadata = None;
        }
    }
    serde_json::to_value(&t).unwrap_or_default()
}

struct Fnv32a(u32);

impl Fnv32a {
    fn new() -> Self {
        Self(0x811c_9dc5)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u32::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0193);
        }
    }
}

/// Maps each byte to upstream's 27 "safe" characters (`rand.SafeEncodeString`).
fn safe_encode(s: &str) -> String {
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| char::from(SAFE[usize::from(b) % SAFE.len()]))
        .collect()
}

/// Resolves an int-or-percent against `total`; percentages round up or down as asked
/// (upstream's `GetScaledValueFromIntOrPercent`).
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, Error> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| {
                    Error::Unexpected(format!("invalid value for IntOrString: {s:?}"))
                })?;
            let prod = pct * i64::from(total);
            let v = if round_up {
                (prod + 99).div_euclid(100)
            } else {
                prod.div_euclid(100)
            };
            Ok(i32::try_from(v).unwrap_or(i32::MAX))
        }
    }
}

/// The clock's current time as a `metav1.Time` (whole seconds, as the API stores it).
pub fn now_time(clock: &dyn crate::Clock) -> Time {
    let secs = clock.unix_seconds();
    Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap_or_default())
}

/// Whether the owner may adopt orphans, asked of the API server rather than a cache (as
/// upstream's `RecheckDeletionTimestamp`): it still exists with `uid` and is not being
/// deleted. A controller working from a stale copy would otherwise re-adopt what the garbage
/// collector just orphaned, and the collector would then delete it with its owner.
pub async fn can_adopt<K>(api: &kube::Api<K>, name: &str, uid: &str) -> Result<bool, Error>
where
    K: Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.get_opt(name).await?.is_some_and(|o| {
        o.meta().uid.as_deref() == Some(uid) && o.meta().deletion_timestamp.is_none()
    }))
}

/// The name of `obj` with its namespace, for logs.
pub fn key<K: Resource>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The pod's phase, `""` when not reported yet.
pub(crate) fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Remembers the soonest moment a pass must look again (a pod about to become available).
#[derive(Debug, Default)]
pub(crate) struct Requeue(Option<Duration>);

impl Requeue {
    /// Asks for another look after `pod` becomes available, if it is Ready but not yet.
    pub(crate) fn pod(&mut self, pod: &Pod, min_ready_seconds: i32, now: i64) {
        if let Some(s) = seconds_until_available(pod, min_ready_seconds, now) {
            let d = Duration::from_secs(u64::try_from(s).unwrap_or(0));
            self.0 = Some(self.0.map_or(d, |c| c.min(d)));
        }
    }

    /// What the pass returns.
    pub(crate) fn action(&self) -> Action {
        match self.0 {
            // One more second: `metav1.Time` has whole seconds.
            Some(d) => Action::requeue(d + Duration::from_secs(1)),
            None => Action::await_change(),
        }
    }
}

/// Creates `pods`, a burst at a time.
pub(crate) async fn create_pods(api: &Api<Pod>, pods: Vec<Pod>) -> Result<(), kube::Error> {
    futures::stream::iter(pods)
        .map(|pod| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &pod).await.map(|_| ()) }
        })
        .buffer_unordered(BURST)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

/// Merge-patches `obj`'s status to `status`, unless `old` (what `obj` has) already equals it.
pub async fn patch_status_if_changed<K, S>(
    client: &kube::Client,
    obj: &K,
    old: Option<&S>,
    status: &S,
) -> Result<(), kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug,
    S: PartialEq + k8s_openapi::serde::Serialize,
{
    if old == Some(status) {
        return Ok(());
    }
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    api.patch_status(
        &obj.name_any(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await?;
    Ok(())
}

/// Deletes `pods` (gracefully, only the very pods listed), a burst at a time.
pub(crate) async fn delete_pods(api: &Api<Pod>, pods: Vec<Pod>) -> Result<(), kube::Error> {
    futures::stream::iter(pods)
        .map(|pod| {
            let api = api.clone();
            async move {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: pod.uid(),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match api.delete(&pod.name_any(), &dp).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(BURST)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(image: &str, hash: Option<&str>) -> PodTemplateSpec {
        let mut labels = json!({"app": "web"});
        if let Some(h) = hash {
            labels[POD_TEMPLATE_HASH_LABEL] = json!(h);
        }
        serde_json::from_value(json!({
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": "c", "image": image}]},
        }))
        .unwrap()
    }

    #[test]
    fn hash_is_stable_safe_and_depends_on_template_and_collisions() {
        let a = pod_template_hash(&template("nginx", None), None);
        assert_eq!(a, pod_template_hash(&template("nginx", None), None));
        assert_ne!(a, pod_template_hash(&template("nginx:2", None), None));
        assert_ne!(a, pod_template_hash(&template("nginx", None), Some(1)));
        assert!(a.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        assert!((1..=10).contains(&a.len()), "{a}");
    }

    #[test]
    fn templates_compare_without_the_hash_label() {
        assert!(templates_equal_ignoring_hash(
            &template("nginx", Some("abc")),
            &template("nginx", None)
        ));
        assert!(!templates_equal_ignoring_hash(
            &template("nginx", Some("abc")),
            &template("nginx:2", Some("abc"))
        ));
    }

    #[test]
    fn percentages_round_as_asked() {
        let p = IntOrString::String("25%".into());
        assert_eq!(scaled_value(&p, 10, true).unwrap(), 3);
        assert_eq!(scaled_value(&p, 10, false).unwrap(), 2);
        assert_eq!(scaled_value(&IntOrString::Int(4), 10, false).unwrap(), 4);
        assert!(scaled_value(&IntOrString::String("x".into()), 10, true).is_err());
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        }))
        .unwrap();
        let t = 1_767_225_600; // 2026-01-01T00:00:00Z
        assert!(is_pod_ready(&pod));
        assert!(is_pod_available(&pod, 0, t));
        assert!(!is_pod_available(&pod, 10, t + 9));
        assert_eq!(seconds_until_available(&pod, 10, t + 9), Some(1));
        assert!(is_pod_available(&pod, 10, t + 10));
        assert!(is_pod_active(&pod));
    }

    #[test]
    fn empty_selector_selects_nothing() {
        let meta = ObjectMeta {
            labels: Some(BTreeMap::from([("app".into(), "web".into())])),
            ..ObjectMeta::default()
        };
        assert!(!selects(&selector(None).unwrap(), &meta));
        let sel: LabelSelector =
            serde_json::from_value(json!({"matchLabels": {"app": "web"}})).unwrap();
        assert!(selects(&selector(Some(&sel)).unwrap(), &meta));
    }
}
