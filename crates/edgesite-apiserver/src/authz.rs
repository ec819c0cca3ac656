//! Authorization: may this user do this? An [`Authorizer`] decides on [`RequestAttributes`].
//! The server composes them as kube-apiserver does ([`Union`]): the privileged
//! `system:masters` group ([`MastersAuthorizer`]), the node authorizer ([`NodeAuthorizer`]),
//! then RBAC ([`crate::rbac::RbacAuthorizer`]), whose default bindings grant everyone the
//! public-info paths, authenticated users discovery and self reviews.

use std::fmt;
use std::sync::Arc;

use edgesite_api::rbac::PolicyRule;

use crate::authn::Identity;
use crate::pki::ADMIN_GROUP;

/// Non-resource paths every user, anonymous included, may `get` — upstream's
/// `system:public-info-viewer` cluster role, bound to `system:authenticated` and
/// `system:unauthenticated`; and EdgeSite's `/cacerts`, the cluster CA a joining node checks
/// against the pin in its token before it trusts the server (k3s serves the same).
/// Anonymous requests reach these paths only (the authentication layer asks for credentials
/// elsewhere).
pub const PUBLIC_INFO_PATHS: [&str; 6] = [
    "/healthz",
    "/livez",
    "/readyz",
    "/version",
    "/version/",
    "/cacerts",
];

/// Whether `path` is one of [`PUBLIC_INFO_PATHS`].
pub fn is_public_info_path(path: &str) -> bool {
    PUBLIC_INFO_PATHS.contains(&path)
}

/// The path of the cluster CA, which no RBAC role names: a node reads it before it has any
/// identity, so it stays open to everyone whatever the RBAC objects say.
pub const CACERTS_PATH: &str = "/cacerts";

/// What is being asked: who, the verb, the path and, for resource requests, the resource.
#[derive(Debug, Clone)]
pub struct RequestAttributes<'a> {
    /// Who asks.
    pub identity: &'a Identity,
    /// The lower-case verb (`get`, `list`, ... for resources; `get`, `post`, ... for
    /// non-resource requests).
    pub verb: String,
    /// The request path.
    pub path: &'a str,
    /// For resource requests: what the verb applies to (`None`: a non-resource request).
    pub resource: Option<ResourceAttributes>,
}

/// The resource a resource request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceAttributes {
    /// The API group (`""` for core).
    pub api_group: String,
    /// The resource (plural).
    pub resource: String,
    /// The subresource, if any.
    pub subresource: Option<String>,
    /// The namespace, if any.
    pub namespace: Option<String>,
    /// The object name, if any.
    pub name: Option<String>,
}

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Not allowed (upstream's "no opinion": the next authorizer may still allow). The reason
    /// is appended to the 403 message when not empty, as upstream does (`RBAC: [role "x"
    /// not found]`, a node authorizer's explanation).
    Deny(String),
}

/// What an authorizer grants a user in a namespace: the answer of a SelfSubjectRulesReview
/// (upstream's `RuleResolver.RulesFor`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRules {
    /// Rules on resources.
    pub resource_rules: Vec<PolicyRule>,
    /// Rules on non-resource paths.
    pub non_resource_rules: Vec<PolicyRule>,
    /// Whether some authorizer could not list what it grants (the list is a lower bound).
    pub incomplete: bool,
    /// What went wrong evaluating (missing roles, authorizers that cannot list rules).
    pub errors: Vec<String>,
}

impl UserRules {
    /// Appends `other`.
    pub fn extend(&mut self, other: UserRules) {
        self.resource_rules.extend(other.resource_rules);
        self.non_resource_rules.extend(other.non_resource_rules);
        self.incomplete |= other.incomplete;
        self.errors.extend(other.errors);
    }
}

/// Decides whether a request may proceed.
pub trait Authorizer: Send + Sync + fmt::Debug + 'static {
    /// Authorizes one request.
    fn authorize(&self, attrs: &RequestAttributes<'_>) -> Decision;

    /// What the authorizer grants `identity` in `namespace` (`""`: cluster-wide only). The
    /// default grants nothing and is complete.
    fn rules_for(&self, _identity: &Identity, _namespace: &str) -> UserRules {
        UserRules::default()
    }
}

/// The privileged group: members of `system:masters` may do everything (upstream's
/// `authorizerfactory.NewPrivilegedGroups`, tried before RBAC so that an administrator
/// cannot lock themselves out by editing RBAC objects); everyone may `get` [`CACERTS_PATH`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MastersAuthorizer;

impl Authorizer for MastersAuthorizer {
    fn authorize(&self, attrs: &RequestAttributes<'_>) -> Decision {
        if attrs.identity.in_group(ADMIN_GROUP) {
            return Decision::Allow;
        }
        if attrs.verb == "get" && attrs.resource.is_none() && attrs.path == CACERTS_PATH {
            return Decision::Allow;
        }
        Decision::Deny(String::new())
    }

    fn rules_for(&self, identity: &Identity, _namespace: &str) -> UserRules {
        if !identity.in_group(ADMIN_GROUP) {
            return UserRules::default();
        }
        let all = || vec!["*".to_owned()];
        UserRules {
            resource_rules: vec![PolicyRule {
                verbs: all(),
                api_groups: all(),
                resources: all(),
                ..PolicyRule::default()
            }],
            non_resource_rules: vec![PolicyRule {
                verbs: all(),
                non_resource_urls: all(),
                ..PolicyRule::default()
            }],
            ..UserRules::default()
        }
    }
}

/// The group of node identities (`system:node:NAME` certificates).
pub const NODES_GROUP: &str = "system:nodes";

/// The prefix of a node identity's user name.
pub const NODE_USER_PREFIX: &str = "system:node:";

/// What a node agent may do: upstream's `system:node` cluster role, with writes to Nodes,
/// Leases and node status limited to the node's own name. Reads are not yet narrowed to the
/// node's own pods and what they reference (upstream's graph-based node authorizer); until
/// then a node may read, as a kubelet bound to `system:node` could.
///
/// - read (`get`, `list`, `watch`): nodes, pods, services, endpoints, endpointslices,
///   namespaces, configmaps, secrets, persistentvolumeclaims, persistentvolumes, leases
///   in `kube-node-lease`;
/// - its own Node: `create`, `update`, `patch` (and `nodes/status`);
/// - pods: `patch`/`update` of `pods/status`, `delete` (a kubelet finishes a deletion);
/// - events: `create`, `update`, `patch` (core and `events.k8s.io`);
/// - its own Lease in `kube-node-lease`: `create`, `update`, `patch`, `get`;
/// - `serviceaccounts/token`: `create`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeAuthorizer;

impl NodeAuthorizer {
    fn allows(node: &str, verb: &str, r: &ResourceAttributes) -> bool {
        let read = matches!(verb, "get" | "list" | "watch");
        let own = r.name.as_deref() == Some(node);
        // A create names its object in the body, not the path: which name it may have is
        // NodeRestriction admission's to check (the security issue), not the authorizer's.
        let creates = verb == "create" && r.name.is_none();
        let sub = r.subresource.as_deref();
        match (r.api_group.as_str(), r.resource.as_str(), sub) {
            ("", "nodes", None) => read || creates || (matches!(verb, "update" | "patch") && own),
            ("", "nodes", Some("status")) => (read || matches!(verb, "update" | "patch")) && own,
            ("", "pods", None) => read || verb == "delete",
            ("", "pods", Some("status")) => read || matches!(verb, "update" | "patch"),
            (
                "",
                "services"
                | "endpoints"
                | "namespaces"
                | "configmaps"
                | "secrets"
                | "persistentvolumeclaims"
                | "persistentvolumes",
                None,
            )
            | ("discovery.k8s.io", "endpointslices", None) => read,
            ("" | "events.k8s.io", "events", None) => {
                matches!(verb, "create" | "update" | "patch")
            }
            ("coordination.k8s.io", "leases", None) => {
                r.namespace.as_deref() == Some("kube-node-lease")
                    && (matches!(verb, "list" | "watch")
                        || creates
                        || (own && matches!(verb, "get" | "update" | "patch")))
            }
            ("", "serviceaccounts", Some("token")) => verb == "create",
            _ => false,
        }
    }
}

impl Authorizer for NodeAuthorizer {
    fn authorize(&self, attrs: &RequestAttributes<'_>) -> Decision {
        let node = attrs
            .identity
            .user
            .strip_prefix(NODE_USER_PREFIX)
            .filter(|_| attrs.identity.in_group(NODES_GROUP));
        match (node, &attrs.resource) {
            (Some(node), Some(r)) if Self::allows(node, &attrs.verb, r) => Decision::Allow,
            // A node opens its own tunnel; which node it is comes from its identity.
            (Some(_), None)
                if attrs.verb == "get" && attrs.path == edgesite_api::tunnel::TUNNEL_PATH =>
            {
                Decision::Allow
            }
            (Some(node), _) => Decision::Deny(format!(
                "node {node:?} may not {} {}",
                attrs.verb, attrs.path
            )),
            // No opinion on other users, and nothing to say about them.
            (None, _) => Decision::Deny(String::new()),
        }
    }

    fn rules_for(&self, identity: &Identity, _namespace: &str) -> UserRules {
        let is_node = identity.user.starts_with(NODE_USER_PREFIX) && identity.in_group(NODES_GROUP);
        UserRules {
            incomplete: is_node,
            errors: if is_node {
                vec!["node authorizer does not support user rule resolution".to_owned()]
            } else {
                Vec::new()
            },
            ..UserRules::default()
        }
    }
}

/// The authorizers in turn: the first that allows decides; denied when none does, with the
/// non-empty reasons of all, one per line (upstream's union authorizer).
#[derive(Debug)]
pub struct Union(pub Vec<Arc<dyn Authorizer>>);

impl Authorizer for Union {
    fn authorize(&self, attrs: &RequestAttributes<'_>) -> Decision {
        let mut why = Vec::new();
        for a in &self.0 {
            match a.authorize(attrs) {
                Decision::Allow => return Decision::Allow,
                Decision::Deny(reason) if !reason.is_empty() => why.push(reason),
                Decision::Deny(_) => {}
            }
        }
        Decision::Deny(why.join("\n"))
    }

    fn rules_for(&self, identity: &Identity, namespace: &str) -> UserRules {
        let mut out = UserRules::default();
        for a in &self.0 {
            out.extend(a.rules_for(identity, namespace));
        }
        out
    }
}

/// Upstream's 403 message (`forbiddenMessage`): `User "alice" cannot list resource "pods" in
/// API group "" in the namespace "default"`, `... at the cluster scope`, or `User "alice"
/// cannot get path "/metrics"`; `reason`, when not empty, follows after `: `.
pub fn forbidden_message(attrs: &RequestAttributes<'_>, reason: &str) -> String {
    let user = &attrs.identity.user;
    let mut msg = match &attrs.resource {
        None => format!("User {user:?} cannot {} path {:?}", attrs.verb, attrs.path),
        Some(r) => {
            let resource = match &r.subresource {
                Some(sub) => format!("{}/{sub}", r.resource),
                None => r.resource.clone(),
            };
            let scope = match r.namespace.as_deref().filter(|n| !n.is_empty()) {
                Some(ns) => format!("in the namespace {ns:?}"),
                None => "at the cluster scope".to_owned(),
            };
            format!(
                "User {user:?} cannot {} resource {resource:?} in API group {:?} {scope}",
                attrs.verb, r.api_group
            )
        }
    };
    if !reason.is_empty() {
        msg.push_str(": ");
        msg.push_str(reason);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs<'a>(id: &'a Identity, verb: &str, path: &'a str) -> RequestAttributes<'a> {
        RequestAttributes {
            identity: id,
            verb: verb.to_owned(),
            path,
            resource: None,
        }
    }

    fn resource<'a>(
        id: &'a Identity,
        verb: &str,
        (group, resource, sub): (&str, &str, Option<&str>),
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> RequestAttributes<'a> {
        RequestAttributes {
            identity: id,
            verb: verb.to_owned(),
            path: "/api/v1/...",
            resource: Some(ResourceAttributes {
                api_group: group.into(),
                resource: resource.into(),
                subresource: sub.map(String::from),
                namespace: namespace.map(String::from),
                name: name.map(String::from),
            }),
        }
    }

    /// verb, (group, resource, subresource), namespace, name, allowed.
    type Case<'a> = (
        &'a str,
        (&'a str, &'a str, Option<&'a str>),
        Option<&'a str>,
        Option<&'a str>,
        bool,
    );

    #[test]
    fn nodes_may_do_what_a_kubelet_does_and_write_only_their_own_node_and_lease() {
        let node = Identity::authenticated("system:node:edge-1", vec![NODES_GROUP.into()]);
        let impostor = Identity::authenticated("system:node:edge-1", vec![]);
        let z = NodeAuthorizer;
        let cases: &[Case<'_>] = &[
            ("watch", ("", "pods", None), None, None, true),
            (
                "patch",
                ("", "pods", Some("status")),
                Some("d"),
                Some("p"),
                true,
            ),
            ("delete", ("", "pods", None), Some("d"), Some("p"), true),
            ("create", ("", "pods", None), Some("d"), None, false),
            ("update", ("", "pods", None), Some("d"), Some("p"), false),
            (
                "get",
                ("", "pods", Some("exec")),
                Some("d"),
                Some("p"),
                false,
            ),
            ("create", ("", "nodes", None), None, None, true),
            (
                "patch",
                ("", "nodes", Some("status")),
                None,
                Some("edge-1"),
                true,
            ),
            (
                "patch",
                ("", "nodes", Some("status")),
                None,
                Some("edge-2"),
                false,
            ),
            ("delete", ("", "nodes", None), None, Some("edge-1"), false),
            ("get", ("", "secrets", None), Some("d"), Some("s"), true),
            ("create", ("", "secrets", None), Some("d"), None, false),
            ("create", ("", "events", None), Some("d"), None, true),
            (
                "patch",
                ("coordination.k8s.io", "leases", None),
                Some("kube-node-lease"),
                Some("edge-1"),
                true,
            ),
            (
                "patch",
                ("coordination.k8s.io", "leases", None),
                Some("kube-node-lease"),
                Some("edge-2"),
                false,
            ),
            (
                "patch",
                ("coordination.k8s.io", "leases", None),
                Some("kube-system"),
                Some("edge-1"),
                false,
            ),
            ("list", ("apps", "deployments", None), None, None, false),
            (
                "create",
                ("", "serviceaccounts", Some("token")),
                Some("d"),
                Some("sa"),
                true,
            ),
        ];
        for (verb, gr, ns, name, allowed) in cases {
            let got = z.authorize(&resource(&node, verb, *gr, *ns, *name)) == Decision::Allow;
            assert_eq!(got, *allowed, "{verb} {gr:?} {ns:?} {name:?}");
            assert_ne!(
                z.authorize(&resource(&impostor, verb, *gr, *ns, *name)),
                Decision::Allow,
                "a node user name without the nodes group is no node"
            );
        }
        assert_ne!(
            z.authorize(&attrs(&node, "get", "/metrics")),
            Decision::Allow
        );
    }

    #[test]
    fn masters_allowed_others_left_to_rbac() {
        let admin = Identity::authenticated("a", vec![ADMIN_GROUP.into()]);
        let bob = Identity::authenticated("bob", vec![]);
        let z = MastersAuthorizer;
        assert_eq!(
            z.authorize(&attrs(&admin, "delete", "/api")),
            Decision::Allow
        );
        assert_eq!(
            z.authorize(&attrs(&bob, "get", "/api")),
            Decision::Deny(String::new())
        );
        assert_eq!(
            z.authorize(&attrs(&Identity::anonymous(), "get", "/cacerts")),
            Decision::Allow
        );
        assert_eq!(z.rules_for(&admin, "").resource_rules.len(), 1);
        assert_eq!(z.rules_for(&bob, ""), UserRules::default());
    }

    #[test]
    fn forbidden_messages_have_upstreams_shape() {
        let alice = Identity::authenticated("alice", vec![]);
        let ns = resource(&alice, "list", ("", "pods", None), Some("default"), None);
        assert_eq!(
            forbidden_message(&ns, ""),
            r#"User "alice" cannot list resource "pods" in API group "" in the namespace "default""#
        );
        let cluster = resource(
            &alice,
            "get",
            ("apps", "deployments", Some("scale")),
            None,
            Some("d"),
        );
        assert_eq!(
            forbidden_message(&cluster, "RBAC: x"),
            r#"User "alice" cannot get resource "deployments/scale" in API group "apps" at the cluster scope: RBAC: x"#
        );
        assert_eq!(
            forbidden_message(&attrs(&alice, "get", "/metrics"), ""),
            r#"User "alice" cannot get path "/metrics""#
        );
    }

    #[test]
    fn union_allows_if_any_allows_and_joins_reasons() {
        let node = Identity::authenticated("system:node:n", vec![NODES_GROUP.into()]);
        let u = Union(vec![Arc::new(MastersAuthorizer), Arc::new(NodeAuthorizer)]);
        assert_eq!(
            u.authorize(&attrs(&node, "get", edgesite_api::tunnel::TUNNEL_PATH)),
            Decision::Allow
        );
        assert_eq!(
            u.authorize(&attrs(&node, "get", "/metrics")),
            Decision::Deny(r#"node "n" may not get /metrics"#.into())
        );
        assert!(u.rules_for(&node, "default").incomplete);
    }
}
