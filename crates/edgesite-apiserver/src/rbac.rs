//! RBAC in the API server: the [`RbacAuthorizer`] answers from an in-memory [`Policy`] kept
//! current by watching the four RBAC resources through the watch caches (never a store read
//! per request); [`RbacEscalation`] is the admission check that keeps users from granting
//! what they do not hold (upstream's `escalate`/`bind` rules in the RBAC registry); and
//! [`reconcile_bootstrap_policy`] writes upstream's default roles and bindings at start.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use edgesite_api::rbac::bootstrap::{self, BindingChange};
use edgesite_api::rbac::{
    GROUP, Policy, PolicyRule, Request, UserInfo, covers, escalation_message, rules_of,
};
use edgesite_api::registry::{self, ResourceInfo};
use edgesite_api::status::ApiError;
use edgesite_store::Revision;
use edgesite_store::watch_cache::{CacheEventKind, WatchItem, WatchOptions};
use futures::{FutureExt as _, StreamExt as _};
use serde_json::Value;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::admission::{AdmissionPlugin, Attributes, Operation};
use crate::authn::Identity;
use crate::authz::{Authorizer, Decision, RequestAttributes, ResourceAttributes, UserRules};
use crate::handlers::ApiState;
use crate::pki::ADMIN_GROUP;
use crate::storage;

/// The four RBAC resources, in the order [`Objects`] keeps them.
const KINDS: [&str; 4] = [
    "roles",
    "clusterroles",
    "rolebindings",
    "clusterrolebindings",
];

fn rbac_resource(plural: &str) -> &'static ResourceInfo {
    registry::builtin(GROUP, "v1", plural)
}

/// The RBAC objects by store key, one map per kind of [`KINDS`].
#[derive(Debug, Default)]
struct Objects {
    by_kind: [HashMap<Vec<u8>, Value>; 4],
}

impl Objects {
    fn policy(&self) -> Policy {
        let [roles, cluster_roles, role_bindings, cluster_role_bindings] = &self.by_kind;
        Policy::build(
            roles.values(),
            cluster_roles.values(),
            role_bindings.values(),
            cluster_role_bindings.values(),
        )
    }
}

/// How far the cache has read: per kind, the revision up to which every change is in the
/// policy (0 until its first list is in).
type Progress = [Revision; 4];

/// The RBAC authorizer over a cached [`Policy`].
#[derive(Debug)]
pub struct RbacAuthorizer {
    policy: RwLock<Arc<Policy>>,
    objects: std::sync::Mutex<Objects>,
    progress: watch::Sender<Progress>,
}

impl Default for RbacAuthorizer {
    fn default() -> Self {
        Self {
            policy: RwLock::new(Arc::new(Policy::default())),
            objects: std::sync::Mutex::new(Objects::default()),
            progress: watch::channel([0; 4]).0,
        }
    }
}

impl RbacAuthorizer {
    /// An authorizer with an empty policy; [`RbacAuthorizer::start`] fills it.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The current policy.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the policy with one built from `roles`, `cluster_roles`, `role_bindings` and
    /// `cluster_role_bindings` (for benchmarks and tests that need no store).
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
    }

    /// Watches the four RBAC resources through `state`'s watch caches and keeps the policy
    /// current until `shutdown`; returns once every kind's first list is in the policy, with
    /// the watching tasks (which hold the caches, and so the store, until they end).
    pub async fn start(
        self: &Arc<Self>,
        state: &Arc<ApiState>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinSet<()>, ApiError> {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, plural) in KINDS.iter().enumerate() {
            let cache = state.storage.cache(rbac_resource(plural)).await?;
            let this = self.clone();
            let mut shutdown = shutdown.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        () = this.follow(i, &cache) => {}
                    }
                    // The watch ended (lagged, or the cache relisted): list again.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            });
        }
        let mut rx = self.progress.subscribe();
        rx.wait_for(|p| p.iter().all(|r| *r > 0))
            .await
            .map_err(|_| ApiError::internal("the RBAC cache stopped"))?;
        Ok(tasks)
    }

    /// Waits until the policy holds every change of kind `plural` up to `revision`.
    pub async fn wait_for(&self, plural: &str, revision: Revision) {
        let Some(i) = KINDS.iter().position(|k| *k == plural) else {
            return;
        };
        let mut rx = self.progress.subscribe();
        let _ = rx.wait_for(|p| p[i] >= revision).await;
    }

    /// Follows one kind's watch: the initial list replaces what the kind held, then each
    /// batch of changes rebuilds the policy once.
    async fn follow(&self, i: usize, cache: &edgesite_store::watch_cache::WatchCache) {
        let mut w = match cache
            .watch(
                WatchOptions::initial()
                    .with_initial_events_end()
                    .with_bookmarks(),
            )
            .await
        {
            Ok(w) => w,
            Err(err) => {
                warn!(%err, kind = KINDS[i], "cannot watch RBAC objects");
                return;
            }
        };
        let mut initial: Option<HashMap<Vec<u8>, Value>> = Some(HashMap::new());
        while let Some(item) = w.next().await {
            let mut batch = vec![item];
            // Whatever else is ready now goes into the same rebuild.
            while batch.len() < 1024 {
                match w.next().now_or_never() {
                    Some(Some(item)) => batch.push(item),
                    _ => break,
                }
            }
            let mut changed = false;
            let mut revision = None;
            for item in batch {
                let item = match item {
                    Ok(item) => item,
                    Err(err) => {
                        debug!(%err, kind = KINDS[i], "RBAC watch ended");
                        return;
                    }
                };
                match item {
                    WatchItem::Event(ev) => match initial.as_mut() {
                        Some(m) => apply(m, &ev),
                        None => {
                            changed = true;
                            revision = Some(ev.revision);
                            apply(&mut self.lock_objects().by_kind[i], &ev);
                        }
                    },
                    WatchItem::InitialEventsEnd(rev) => {
                        if let Some(m) = initial.take() {
                            self.lock_objects().by_kind[i] = m;
                        }
                        changed = true;
                        revision = Some(rev.max(1));
                    }
                    WatchItem::Bookmark(rev) if initial.is_none() => revision = Some(rev),
                    WatchItem::Bookmark(_) => {}
                }
            }
            if changed {
                let policy = self.lock_objects().policy();
                self.set_policy(policy);
            }
            if let Some(rev) = revision {
                self.progress.send_modify(|p| p[i] = p[i].max(rev));
            }
        }
    }

    fn lock_objects(&self) -> std::sync::MutexGuard<'_, Objects> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One change into a kind's map.
fn apply(map: &mut HashMap<Vec<u8>, Value>, ev: &edgesite_store::watch_cache::CacheEvent) {
    if ev.kind == CacheEventKind::Deleted {
        map.remove(&ev.kv.key);
        return;
    }
    match storage::decode(&ev.kv, ev.kv.mod_revision) {
        Ok(v) => {
            map.insert(ev.kv.key.clone(), v);
        }
        Err(err) => warn!(%err, "skipping an unreadable RBAC object"),
    }
}

fn user_info(identity: &Identity) -> UserInfo<'_> {
    UserInfo {
        name: &identity.user,
        groups: &identity.groups,
    }
}

/// The RBAC request of `attrs`.
fn request<'a>(attrs: &'a RequestAttributes<'_>) -> Request<'a> {
    match &attrs.resource {
        Some(r) => Request::resource(
            &attrs.verb,
            &r.api_group,
            &r.resource,
            r.subresource.as_deref(),
            r.namespace.as_deref(),
            r.name.as_deref(),
        ),
        None => Request::NonResource {
            verb: &attrs.verb,
            path: attrs.path,
        },
    }
}

/// Upstream's `RBAC: <aggregate of errors>`.
fn errors_reason(errors: &[String]) -> String {
    match errors {
        [] => String::new(),
        [one] => format!("RBAC: {one}"),
        many => format!("RBAC: [{}]", many.join(", ")),
    }
}

impl Authorizer for RbacAuthorizer {
    fn authorize(&self, attrs: &RequestAttributes<'_>) -> Decision {
        let verdict = self
            .policy()
            .authorize(&user_info(attrs.identity), &request(attrs));
        if verdict.allowed {
            Decision::Allow
        } else {
            Decision::Deny(errors_reason(&verdict.errors))
        }
    }

    fn rules_for(&self, identity: &Identity, namespace: &str) -> UserRules {
        let (rules, errors) = self
            .policy()
            .rules_for(&user_info(identity), Some(namespace));
        let (non_resource_rules, resource_rules) = rules
            .into_iter()
            .partition(|r: &PolicyRule| !r.non_resource_urls.is_empty());
        UserRules {
            resource_rules,
            non_resource_rules,
            incomplete: false,
            errors,
        }
    }
}

/// The admission check of upstream's RBAC registry: creating or updating a Role or
/// ClusterRole needs every permission it grants (or `escalate` on it); a binding needs every
/// permission of the role it binds (or `bind` on that role). Members of `system:masters`
/// and the server itself skip the check.
#[derive(Debug)]
pub struct RbacEscalation {
    rbac: Arc<RbacAuthorizer>,
    authorizer: Arc<dyn Authorizer>,
}

impl RbacEscalation {
    /// The check over the RBAC cache `rbac` and the server's whole `authorizer` (which decides
    /// `escalate` and `bind`).
    pub fn new(rbac: Arc<RbacAuthorizer>, authorizer: Arc<dyn Authorizer>) -> Self {
        Self { rbac, authorizer }
    }

    fn may(
        &self,
        identity: &Identity,
        verb: &str,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> bool {
        let attrs = RequestAttributes {
            identity,
            verb: verb.to_owned(),
            path: "",
            resource: Some(ResourceAttributes {
                api_group: GROUP.to_owned(),
                resource: resource.to_owned(),
                subresource: None,
                namespace: namespace.map(str::to_owned),
                name: Some(name.to_owned()),
            }),
        };
        self.authorizer.authorize(&attrs) == Decision::Allow
    }

    /// `Err` with upstream's message when `identity` does not hold every rule of `rules` in
    /// `namespace`.
    fn confirm_no_escalation(
        &self,
        identity: &Identity,
        namespace: Option<&str>,
        rules: &[PolicyRule],
    ) -> Result<(), String> {
        let user = user_info(identity);
        let (owned, errors) = self.rbac.policy().rules_for(&user, namespace);
        covers(&owned, rules).map_err(|missing| escalation_message(&user, &missing, &errors))
    }
}

#[async_trait]
impl AdmissionPlugin for RbacEscalation {
    fn name(&self) -> &'static str {
        "RBACEscalation"
    }

    async fn validate(&self, a: &Attributes<'_>, obj: Option<&Value>) -> Result<(), ApiError> {
        if a.r.group != GROUP || !matches!(a.operation, Operation::Create | Operation::Update) {
            return Ok(());
        }
        let (Some(identity), Some(obj)) = (a.user, obj) else {
            return Ok(());
        };
        if identity.in_group(ADMIN_GROUP) {
            return Ok(());
        }
        let forbidden = |msg: &str| ApiError::forbidden(a.r, a.name, msg);
        match a.r.kind {
            "Role" | "ClusterRole" => {
                if self.may(identity, "escalate", a.r.plural, a.namespace, a.name) {
                    return Ok(());
                }
                self.confirm_no_escalation(identity, a.namespace, &rules_of(obj))
                    .map_err(|m| forbidden(&m))?;
                let aggregation_changed = obj.get("aggregationRule").is_some()
                    && a.old.and_then(|o| o.get("aggregationRule")) != obj.get("aggregationRule");
                if aggregation_changed {
                    let all = vec!["*".to_owned()];
                    let full = [
                        PolicyRule {
                            verbs: all.clone(),
                            api_groups: all.clone(),
                            resources: all.clone(),
                            ..PolicyRule::default()
                        },
                        PolicyRule {
                            verbs: all.clone(),
                            non_resource_urls: all,
                            ..PolicyRule::default()
                        },
                    ];
                    self.confirm_no_escalation(identity, None, &full)
                        .map_err(|_| {
                            forbidden(
                                "must have cluster-admin privileges to use the aggregationRule",
                            )
                        })?;
                }
                Ok(())
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let role_ref = obj.get("roleRef").cloned().unwrap_or(Value::Null);
                let kind = role_ref
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let role_name = role_ref
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let role_resource = if kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                let ns = if a.r.kind == "RoleBinding" {
                    a.namespace
                } else {
                    None
                };
                if self.may(identity, "bind", role_resource, ns, role_name) {
                    return Ok(());
                }
                let rules = self
                    .rbac
                    .policy()
                    .role_ref_rules(obj, ns)
                    .map_err(|m| forbidden(&m))?;
                self.confirm_no_escalation(identity, ns, &rules)
                    .map_err(|m| forbidden(&m))
            }
            _ => Ok(()),
        }
    }
}

/// Creates the default ClusterRoles and ClusterRoleBindings that are missing and reconciles
/// the others ([`bootstrap`]); then waits until the RBAC cache holds what it wrote. Another
/// server sharing the datastore may do the same at the same time: conflicts are retried.
pub async fn reconcile_bootstrap_policy(
    state: &ApiState,
    rbac: &RbacAuthorizer,
) -> Result<(), ApiError> {
    let mut written: [Revision; 4] = [0; 4];
    let sets = [
        (1, bootstrap::cluster_roles()),
        (3, bootstrap::cluster_role_bindings()),
    ];
    for (kind, objects) in sets {
        let r = rbac_resource(KINDS[kind]);
        for expected in objects {
            let name = expected
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            for _attempt in 0..5 {
                match reconcile_one(state, r, &name, &expected).await {
                    Ok(Some(rev)) => {
                        written[kind] = written[kind].max(rev);
                        break;
                    }
                    Ok(None) => break,
                    Err(ApiError::Conflict { .. } | ApiError::AlreadyExists { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    for (i, rev) in written.iter().enumerate() {
        if *rev > 0 {
            rbac.wait_for(KINDS[i], *rev).await;
        }
    }
    Ok(())
}

/// One default object: `Some(revision)` when it was written.
async fn reconcile_one(
    state: &ApiState,
    r: &'static ResourceInfo,
    name: &str,
    expected: &Value,
) -> Result<Option<Revision>, ApiError> {
    let key = registry::storage_key(r, None, name)
        .ok_or_else(|| ApiError::internal(format!("no storage key for {name}")))?;
    let store = &state.storage.store;
    let Some(kv) = store
        .get(key.as_bytes())
        .await
        .map_err(storage::store_error)?
    else {
        let created = crate::handlers::resources::create_object(
            state,
            r,
            None,
            expected.clone(),
            false,
            None,
        )
        .await?;
        info!(kind = r.kind, %name, "created default RBAC object");
        return Ok(created
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok()));
    };
    let existing = storage::decode(&kv, kv.mod_revision)?;
    let update = match r.kind {
        "ClusterRole" => bootstrap::reconcile_role(&existing, expected),
        _ => match bootstrap::reconcile_binding(&existing, expected) {
            BindingChange::None => None,
            BindingChange::Update(v) => Some(v),
            BindingChange::Recreate(fresh) => {
                store
                    .delete(key.as_bytes(), Some(kv.mod_revision))
                    .await
                    .map_err(|_| ApiError::conflict(r, name))?;
                let created =
                    crate::handlers::resources::create_object(state, r, None, fresh, false, None)
                        .await?;
                info!(kind = r.kind, %name, "recreated default RBAC binding with its roleRef");
                return Ok(created
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok()));
            }
        },
    };
    let Some(update) = update else {
        return Ok(None);
    };
    let rev = store
        .update(key.as_bytes(), storage::encode(&update), kv.mod_revision, 0)
        .await
        .map_err(|e| match e {
            edgesite_store::Error::Conflict { .. } => ApiError::conflict(r, name),
            other => storage::store_error(other),
        })?;
    info!(kind = r.kind, %name, "reconciled default RBAC object");
    Ok(Some(rev))
}
