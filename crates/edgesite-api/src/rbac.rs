//! RBAC (rbac.authorization.k8s.io/v1) with no IO: policy rules and how they match a request,
//! the [`Policy`] index that answers "may this user do this?" from Roles, ClusterRoles and
//! their bindings, the escalation check ([`covers`]), ClusterRole aggregation
//! ([`aggregated_rules`]) and the default roles and bindings upstream bootstraps
//! ([`bootstrap`]).
//!
//! Semantics are upstream's (`plugin/pkg/auth/authorizer/rbac`, `pkg/apis/rbac/v1/evaluation_helpers.go`,
//! `pkg/registry/rbac/validation`): rules only grant, the union of every binding that applies
//! decides, and a binding whose role is missing grants nothing but is reported.
//!
//! ```
//! use edgesite_api::rbac::{Policy, Request, UserInfo};
//! use serde_json::json;
//!
//! let role = json!({"metadata": {"name": "reader", "namespace": "dev"},
//!     "rules": [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}]});
//! let binding = json!({"metadata": {"name": "alice-reads", "namespace": "dev"},
//!     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
//!     "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}]});
//! let policy = Policy::build([&role], [], [&binding], []);
//! let alice = UserInfo { name: "alice", groups: &[] };
//! let list_pods = Request::resource("list", "", "pods", None, Some("dev"), None);
//! assert!(policy.authorize(&alice, &list_pods).allowed);
//! let elsewhere = Request::resource("list", "", "pods", None, Some("prod"), None);
//! assert!(!policy.authorize(&alice, &elsewhere).allowed);
//! ```

pub mod bootstrap;

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::selector::LabelSelector;

/// The API group of the RBAC types.
pub const GROUP: &str = "rbac.authorization.k8s.io";
/// The annotation that, set to `"false"` on a default role or binding, keeps the server from
/// reconciling it at start.
pub const AUTOUPDATE_ANNOTATION: &str = "rbac.authorization.kubernetes.io/autoupdate";
/// The prefix of service-account user names (`system:serviceaccount:NS:NAME`).
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// One rule of a Role or ClusterRole (`rbacv1.PolicyRule`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyRule {
    /// Verbs (`get`, `list`, ..., `*`).
    pub verbs: Vec<String>,
    /// API groups (`""` for core, `*`).
    pub api_groups: Vec<String>,
    /// Resources (`pods`, `pods/log`, `*/scale`, `*`).
    pub resources: Vec<String>,
    /// Object names the rule is limited to (empty: all).
    pub resource_names: Vec<String>,
    /// Non-resource paths (`/healthz`, `/apis/*`, `*`).
    pub non_resource_urls: Vec<String>,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn has(set: &[String], s: &str) -> bool {
    set.iter().any(|x| x == s)
}

impl PolicyRule {
    /// The rule of a JSON `PolicyRule`; absent or ill-typed fields are empty.
    pub fn from_json(v: &Value) -> Self {
        Self {
            verbs: strings(v.get("verbs")),
            api_groups: strings(v.get("apiGroups")),
            resources: strings(v.get("resources")),
            resource_names: strings(v.get("resourceNames")),
            non_resource_urls: strings(v.get("nonResourceURLs")),
        }
    }

    /// The JSON form, omitting empty lists as upstream serializes them.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        for (k, v) in [
            ("verbs", &self.verbs),
            ("apiGroups", &self.api_groups),
            ("resources", &self.resources),
            ("resourceNames", &self.resource_names),
            ("nonResourceURLs", &self.non_resource_urls),
        ] {
            if !v.is_empty() || k == "verbs" {
                m.insert(k.into(), json!(v));
            }
        }
        Value::Object(m)
    }

    fn verb_matches(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == "*" || v == verb)
    }

    /// Whether the rule allows the resource request `r` (upstream's `RuleAllows`).
    pub fn allows_resource(&self, r: &ResourceRequest<'_>) -> bool {
        self.verb_matches(r.verb)
            && self.api_groups.iter().any(|g| g == "*" || g == r.api_group)
            && self.resource_matches(r.resource, r.subresource)
            && (self.resource_names.is_empty()
                || r.name.is_some_and(|n| has(&self.resource_names, n)))
    }

    fn resource_matches(&self, resource: &str, subresource: Option<&str>) -> bool {
        self.resources.iter().any(|rr| {
            if rr == "*" {
                return true;
            }
            match subresource {
                None => rr == resource,
                Some(sub) => {
                    // `pods/log`, or `*/log`: every resource's `log`.
                    rr.strip_prefix(resource)
                        .and_then(|rest| rest.strip_prefix('/'))
                        .is_some_and(|s| s == sub)
                        || rr.strip_prefix("*/").is_some_and(|s| s == sub)
                }
            }
        })
    }

    /// Whether the rule allows `verb` on the non-resource path `path` (`*` matches every
    /// path; a trailing `*` matches every path with that prefix).
    pub fn allows_non_resource(&self, verb: &str, path: &str) -> bool {
        self.verb_matches(verb)
            && self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || u == path
                    || u.strip_suffix('*')
                        .is_some_and(|prefix| path.starts_with(prefix))
            })
    }

    /// Upstream's `CompactString`: `{APIGroups:["apps"], Resources:["deployments"],
    /// Verbs:["create"]}`, the form escalation errors list missing rules in.
    pub fn compact_string(&self) -> String {
        let mut parts = Vec::new();
        for (name, v) in [
            ("APIGroups", &self.api_groups),
            ("Resources", &self.resources),
            ("ResourceNames", &self.resource_names),
            ("NonResourceURLs", &self.non_resource_urls),
            ("Verbs", &self.verbs),
        ] {
            if !v.is_empty() {
                let quoted: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
                parts.push(format!("{name}:[{}]", quoted.join(", ")));
            }
        }
        format!("{{{}}}", parts.join(", "))
    }
}

/// The rules of a Role or ClusterRole object (`rules`).
pub fn rules_of(obj: &Value) -> Vec<PolicyRule> {
    obj.get("rules")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(PolicyRule::from_json).collect())
        .unwrap_or_default()
}

/// What a resource request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceRequest<'a> {
    /// The verb.
    pub verb: &'a str,
    /// The API group (`""` for core).
    pub api_group: &'a str,
    /// The resource (plural).
    pub resource: &'a str,
    /// The subresource, if any.
    pub subresource: Option<&'a str>,
    /// The namespace (`None`: cluster scope or all namespaces).
    pub namespace: Option<&'a str>,
    /// The object's name, if the request names one.
    pub name: Option<&'a str>,
}

/// A request as RBAC sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// On a resource.
    Resource(ResourceRequest<'a>),
    /// On a non-resource path.
    NonResource {
        /// The verb (`get`, `post`, ...).
        verb: &'a str,
        /// The path.
        path: &'a str,
    },
}

impl<'a> Request<'a> {
    /// A resource request.
    pub fn resource(
        verb: &'a str,
        api_group: &'a str,
        resource: &'a str,
        subresource: Option<&'a str>,
        namespace: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Self {
        Self::Resource(ResourceRequest {
            verb,
            api_group,
            resource,
            subresource,
            namespace,
            name,
        })
    }

    fn namespace(&self) -> Option<&'a str> {
        match self {
            Self::Resource(r) => r.namespace.filter(|n| !n.is_empty()),
            Self::NonResource { .. } => None,
        }
    }

    fn allowed_by(&self, rule: &PolicyRule) -> bool {
        match self {
            Self::Resource(r) => rule.allows_resource(r),
            Self::NonResource { verb, path } => rule.allows_non_resource(verb, path),
        }
    }
}

/// Who asks: the user name and groups.
#[derive(Debug, Clone, Copy)]
pub struct UserInfo<'a> {
    /// The user name.
    pub name: &'a str,
    /// The groups.
    pub groups: &'a [String],
}

/// Who a binding's subject is, resolved for lookups: a service account subject carries the
/// namespace it defaults to (its binding's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SubjectKey {
    User(String),
    Group(String),
    ServiceAccount { namespace: String, name: String },
}

impl SubjectKey {
    /// The subject of a binding in `binding_ns` (`None` for ClusterRoleBindings), or `None`
    /// when it can match nobody (unknown kind, a service account without namespace).
    fn of(subject: &Value, binding_ns: Option<&str>) -> Option<Self> {
        let s = |k: &str| subject.get(k).and_then(Value::as_str).unwrap_or_default();
        let name = s("name").to_owned();
        match s("kind") {
            "User" => Some(Self::User(name)),
            "Group" => Some(Self::Group(name)),
            "ServiceAccount" => {
                let ns = Some(s("namespace"))
                    .filter(|n| !n.is_empty())
                    .or(binding_ns)?;
                Some(Self::ServiceAccount {
                    namespace: ns.to_owned(),
                    name,
                })
            }
            _ => None,
        }
    }

    /// Every key that can match `user`.
    fn for_user(user: &UserInfo<'_>) -> Vec<Self> {
        let mut keys = Vec::with_capacity(user.groups.len() + 2);
        keys.push(Self::User(user.name.to_owned()));
        if let Some((ns, name)) = user
            .name
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            && !ns.is_empty()
            && !name.is_empty()
            && !name.contains(':')
        {
            keys.push(Self::ServiceAccount {
                namespace: ns.to_owned(),
                name: name.to_owned(),
            });
        }
        keys.extend(user.groups.iter().map(|g| Self::Group(g.clone())));
        keys
    }
}

/// A binding's `roleRef`, resolved to a kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RoleRef {
    ClusterRole(String),
    Role(String),
}

impl RoleRef {
    fn of(binding: &Value) -> Option<Self> {
        let r = binding.get("roleRef")?;
        let name = r.get("name").and_then(Value::as_str)?.to_owned();
        match r.get("kind").and_then(Value::as_str)? {
            "ClusterRole" => Some(Self::ClusterRole(name)),
            "Role" => Some(Self::Role(name)),
            _ => None,
        }
    }
}

/// A binding that applies, as the evaluator visits it.
#[derive(Debug, Clone)]
struct Grant {
    /// `None`: a ClusterRoleBinding.
    namespace: Option<Arc<str>>,
    role: RoleRef,
}

type Rules = Arc<[PolicyRule]>;

/// The answer of [`Policy::authorize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether a rule allows the request.
    pub allowed: bool,
    /// Bindings that reference missing roles, as upstream words them
    /// (`clusterrole.rbac.authorization.k8s.io "x" not found`); shown in a denial's reason.
    pub errors: Vec<String>,
}

/// The RBAC objects, indexed by subject so that a decision looks at the bindings of the
/// user and its groups only (not every binding), and the roles by name.
#[derive(Debug, Default, Clone)]
pub struct Policy {
    cluster_roles: HashMap<String, Rules>,
    roles: HashMap<(String, String), Rules>,
    /// ClusterRoleBindings' grants by subject.
    cluster_grants: HashMap<SubjectKey, Vec<Grant>>,
    /// RoleBindings' grants by (namespace, subject).
    namespace_grants: HashMap<(String, SubjectKey), Vec<Grant>>,
}

fn meta<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn not_found(kind: &str, name: &str) -> String {
    format!("{kind}.{GROUP} {name:?} not found")
}

impl Policy {
    /// Indexes Roles, ClusterRoles, RoleBindings and ClusterRoleBindings (raw objects).
    pub fn build<'a>(
        roles: impl IntoIterator<Item = &'a Value>,
        cluster_roles: impl IntoIterator<Item = &'a Value>,
        role_bindings: impl IntoIterator<Item = &'a Value>,
        cluster_role_bindings: impl IntoIterator<Item = &'a Value>,
    ) -> Self {
        let mut p = Self::default();
        for r in roles {
            if let (Some(ns), Some(name)) = (meta(r, "namespace"), meta(r, "name")) {
                p.roles
                    .insert((ns.to_owned(), name.to_owned()), rules_of(r).into());
            }
        }
        for r in cluster_roles {
            if let Some(name) = meta(r, "name") {
                p.cluster_roles.insert(name.to_owned(), rules_of(r).into());
            }
        }
        for b in role_bindings {
            let (Some(ns), Some(role)) = (meta(b, "namespace"), RoleRef::of(b)) else {
                continue;
            };
            let namespace: Arc<str> = ns.into();
            for s in b
                .get("subjects")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(key) = SubjectKey::of(s, Some(ns)) {
                    p.namespace_grants
                        .entry((ns.to_owned(), key))
                        .or_default()
                        .push(Grant {
                            namespace: Some(namespace.clone()),
                            role: role.clone(),
                        });
                }
            }
        }
        for b in cluster_role_bindings {
            // A ClusterRoleBinding may only name a ClusterRole.
            let Some(role @ RoleRef::ClusterRole(_)) = RoleRef::of(b) else {
                continue;
            };
            for s in b
                .get("subjects")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(key) = SubjectKey::of(s, None) {
                    p.cluster_grants.entry(key).or_default().push(Grant {
                        namespace: None,
                        role: role.clone(),
                    });
                }
            }
        }
        p
    }

    /// The grants that apply to `user` in `namespace`: cluster-wide ones first, then those
    /// of the namespace (upstream's visiting order).
    fn grants<'p>(
        &'p self,
        user: &UserInfo<'_>,
        namespace: Option<&str>,
    ) -> impl Iterator<Item = &'p Grant> + 'p {
        let keys = SubjectKey::for_user(user);
        let mut found: Vec<&'p Grant> = Vec::new();
        for k in &keys {
            if let Some(g) = self.cluster_grants.get(k) {
                found.extend(g);
            }
        }
        if let Some(ns) = namespace {
            for k in keys {
                if let Some(g) = self.namespace_grants.get(&(ns.to_owned(), k)) {
                    found.extend(g);
                }
            }
        }
        found.into_iter()
    }

    fn rules_of_grant(&self, g: &Grant) -> Result<&Rules, String> {
        match (&g.role, &g.namespace) {
            (RoleRef::ClusterRole(name), _) => self
                .cluster_roles
                .get(name)
                .ok_or_else(|| not_found("clusterrole", name)),
            (RoleRef::Role(name), Some(ns)) => self
                .roles
                .get(&(ns.to_string(), name.clone()))
                .ok_or_else(|| not_found("role", name)),
            (RoleRef::Role(name), None) => Err(not_found("role", name)),
        }
    }

    /// Whether a rule of a binding that applies to `user` allows `req` (stops at the first).
    pub fn authorize(&self, user: &UserInfo<'_>, req: &Request<'_>) -> Verdict {
        let mut errors = Vec::new();
        for g in self.grants(user, req.namespace()) {
            match self.rules_of_grant(g) {
                Ok(rules) => {
                    if rules.iter().any(|r| req.allowed_by(r)) {
                        return Verdict {
                            allowed: true,
                            errors: Vec::new(),
                        };
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        Verdict {
            allowed: false,
            errors,
        }
    }

    /// Every rule that applies to `user` in `namespace` (`None`: cluster-wide bindings only),
    /// and the errors met resolving roles: what SelfSubjectRulesReview lists and what the
    /// escalation check compares against.
    pub fn rules_for(
        &self,
        user: &UserInfo<'_>,
        namespace: Option<&str>,
    ) -> (Vec<PolicyRule>, Vec<String>) {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for g in self.grants(user, namespace.filter(|n| !n.is_empty())) {
            match self.rules_of_grant(g) {
                Ok(r) => rules.extend(r.iter().cloned()),
                Err(e) => errors.push(e),
            }
        }
        (rules, errors)
    }

    /// The rules of the role `roleRef` of a binding in `namespace` (`None`: a
    /// ClusterRoleBinding) names; `Err` with the not-found message when it does not exist.
    pub fn role_ref_rules(
        &self,
        binding: &Value,
        namespace: Option<&str>,
    ) -> Result<Vec<PolicyRule>, String> {
        let role =
            RoleRef::of(binding).ok_or_else(|| "the binding has no valid roleRef".to_owned())?;
        self.rules_of_grant(&Grant {
            namespace: namespace.map(Into::into),
            role,
        })
        .map(|r| r.to_vec())
    }

    /// How many bindings' subjects are indexed (for logs and benchmarks).
    pub fn grant_count(&self) -> usize {
        self.cluster_grants.values().map(Vec::len).sum::<usize>()
            + self.namespace_grants.values().map(Vec::len).sum::<usize>()
    }
}

/// One rule broken down to one verb, group and resource (or one path), with at most one name:
/// what [`covers`] compares (upstream's `BreakdownRule`).
fn breakdown(rule: &PolicyRule) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    let one = |s: &String| vec![s.clone()];
    for group in &rule.api_groups {
        for resource in &rule.resources {
            for verb in &rule.verbs {
                if rule.resource_names.is_empty() {
                    out.push(PolicyRule {
                        verbs: one(verb),
                        api_groups: one(group),
                        resources: one(resource),
                        ..PolicyRule::default()
                    });
                } else {
                    for name in &rule.resource_names {
                        out.push(PolicyRule {
                            verbs: one(verb),
                            api_groups: one(group),
                            resources: one(resource),
                            resource_names: one(name),
                            ..PolicyRule::default()
                        });
                    }
                }
            }
        }
    }
    for url in &rule.non_resource_urls {
        for verb in &rule.verbs {
            out.push(PolicyRule {
                verbs: one(verb),
                non_resource_urls: one(url),
                ..PolicyRule::default()
            });
        }
    }
    out
}

fn has_all(set: &[String], wanted: &[String]) -> bool {
    wanted.iter().all(|w| has(set, w))
}

fn resource_covers_all(set: &[String], wanted: &[String]) -> bool {
    if has(set, "*") || has_all(set, wanted) {
        return true;
    }
    wanted.iter().all(|path| {
        has(set, path)
            || path
                .split_once('/')
                .is_some_and(|(_, sub)| has(set, &format!("*/{sub}")))
    })
}

fn non_resource_url_covers(owner: &str, sub: &str) -> bool {
    owner == sub || owner.strip_suffix('*').is_some_and(|p| sub.starts_with(p))
}

fn rule_covers(owner: &PolicyRule, sub: &PolicyRule) -> bool {
    let verbs = has(&owner.verbs, "*") || has_all(&owner.verbs, &sub.verbs);
    let groups = has(&owner.api_groups, "*") || has_all(&owner.api_groups, &sub.api_groups);
    let resources = resource_covers_all(&owner.resources, &sub.resources);
    let urls = sub.non_resource_urls.iter().all(|p| {
        owner
            .non_resource_urls
            .iter()
            .any(|o| non_resource_url_covers(o, p))
    });
    let names = owner.resource_names.is_empty()
        || (!sub.resource_names.is_empty() && has_all(&owner.resource_names, &sub.resource_names));
    verbs && groups && resources && names && urls
}

/// Whether `owner` rules cover every permission of `servant` (upstream's `Covers`); the
/// uncovered pieces otherwise, one verb/group/resource(/name) or verb/path each.
pub fn covers(owner: &[PolicyRule], servant: &[PolicyRule]) -> Result<(), Vec<PolicyRule>> {
    let missing: Vec<PolicyRule> = servant
        .iter()
        .flat_map(breakdown)
        .filter(|piece| !owner.iter().any(|o| rule_covers(o, piece)))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

/// Upstream's escalation message: `user "alice" (groups=["system:authenticated"]) is
/// attempting to grant RBAC permissions not currently held:\n{...}`.
pub fn escalation_message(
    user: &UserInfo<'_>,
    missing: &[PolicyRule],
    resolution_errors: &[String],
) -> String {
    let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
    let mut msg = format!(
        "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:",
        user.name,
        groups.join(" ")
    );
    for r in missing {
        let _ = write!(msg, "\n{}", r.compact_string());
    }
    if !resolution_errors.is_empty() {
        let _ = write!(
            msg,
            "; resolution errors: [{}]",
            resolution_errors.join(", ")
        );
    }
    msg
}

/// The rules an aggregated ClusterRole (one with `aggregationRule.clusterRoleSelectors`)
/// should hold: those of every other ClusterRole a selector matches, in name order, without
/// duplicates, as upstream's clusterrole-aggregation controller computes them. `None` when
/// `role` is not aggregated.
pub fn aggregated_rules<'a>(
    role: &Value,
    cluster_roles: impl IntoIterator<Item = &'a Value>,
) -> Option<Vec<PolicyRule>> {
    let selectors: Vec<LabelSelector> = role
        .pointer("/aggregationRule/clusterRoleSelectors")?
        .as_array()?
        .iter()
        .filter_map(|s| LabelSelector::from_metav1(s).ok())
        .collect();
    let own = meta(role, "name");
    let mut sources: Vec<&Value> = cluster_roles
        .into_iter()
        .filter(|r| meta(r, "name") != own)
        .collect();
    sources.sort_by_key(|r| meta(r, "name").unwrap_or_default().to_owned());
    let mut rules: Vec<PolicyRule> = Vec::new();
    let mut seen = BTreeSet::new();
    for sel in &selectors {
        for r in &sources {
            if sel.matches_object(r) {
                for rule in rules_of(r) {
                    if seen.insert(rule.clone()) {
                        rules.push(rule);
                    }
                }
            }
        }
    }
    Some(rules)
}

#[cfg(test)]
mod tests;
