//! Authorization: may this user do this? An [`Authorizer`] decides on [`RequestAttributes`];
//! RBAC and the node authorizer will be further implementations.

use std::fmt;

use crate::authn::{AUTHENTICATED_GROUP, Identity};
use crate::pki::ADMIN_GROUP;

/// Non-resource paths every user, anonymous included, may `get` — upstream's
/// `system:public-info-viewer` cluster role, bound to `system:authenticated` and
/// `system:unauthenticated`; and EdgeSite's `/cacerts`, the cluster CA a joining node checks
/// against the pin in its token before it trusts the server (k3s serves the same).
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

/// Whether `path` is an OpenAPI document (`/openapi/v3`, `/openapi/v3/apis/apps/v1`…), which
/// upstream's `system:discovery` cluster role lets every authenticated user `get`.
pub fn is_openapi_path(path: &str) -> bool {
    path == "/openapi/v3" || path.starts_with("/openapi/v3/")
}

/// Whether the request creates a `SelfSubjectAccessReview` or a `SelfSubjectReview`, which
/// upstream's `system:basic-user` cluster role grants every authenticated user.
pub fn is_self_review(attrs: &RequestAttributes<'_>) -> bool {
    attrs.verb == "create"
        && attrs.resource.as_ref().is_some_and(|r| {
            r.subresource.is_none()
                && matches!(
                    (r.api_group.as_str(), r.resource.as_str()),
                    ("authorization.k8s.io", "selfsubjectaccessreviews")
                        | ("authentication.k8s.io", "selfsubjectreviews")
                )
        })
}

/// What is being asked. Today every request is treated as a non-resource request (verb from the
/// HTTP method, the path); resource attributes (namespace, resource, name, subresource) arrive
/// with the resource handlers.
#[derive(Debug, Clone)]
pub struct RequestAttributes<'a> {
    /// Who asks.
    pub identity: &'a Identity,
    /// The lower-case verb (`get`, `post`, … for non-resource requests).
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
    /// Denied; the reason is for logs.
    Deny(String),
}

/// Decides whether a request may proceed.
pub trait Authorizer: Send + Sync + fmt::Debug + 'static {
    /// Authorizes one request.
    fn authorize(&self, attrs: &RequestAttributes<'_>) -> Decision;
}

/// The bootstrap policy: members of `system:masters` may do everything; everyone may `get` the
/// [`PUBLIC_INFO_PATHS`]; authenticated users may create self reviews ([`is_self_review`]);
/// everything else is denied.
#[derive(Debug, Clone, Copy, Default)]
pub struct MastersAuthorizer;

impl Authorizer for MastersAuthorizer {
    fn authorize(&self, attrs: &RequestAttributes<'_>) -> Decision {
        if attrs.identity.in_group(ADMIN_GROUP) {
            return Decision::Allow;
        }
        if attrs.verb == "get" && is_public_info_path(attrs.path) {
            return Decision::Allow;
        }
        if attrs.identity.in_group(AUTHENTICATED_GROUP) && is_self_review(attrs) {
            return Decision::Allow;
        }
        // A node opens its own tunnel; which node it is comes from its identity.
        if attrs.verb == "get"
            && attrs.path == edgesite_api::tunnel::TUNNEL_PATH
            && attrs
                .identity
                .in_group(crate::handlers::streams::NODES_GROUP)
        {
            return Decision::Allow;
        }
        if attrs.verb == "get"
            && attrs.identity.in_group(AUTHENTICATED_GROUP)
            && is_openapi_path(attrs.path)
        {
            return Decision::Allow;
        }
        Decision::Deny(format!(
            "user {:?} is not in {ADMIN_GROUP}",
            attrs.identity.user
        ))
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
            (Some(node), _) => Decision::Deny(format!(
                "node {node:?} may not {} {}",
                attrs.verb, attrs.path
            )),
            (None, _) => Decision::Deny("not a node".into()),
        }
    }
}

/// The authorizers in turn: the first that allows decides; denied when none does, with the
/// reasons of all.
#[derive(Debug)]
pub struct Union(pub Vec<Box<dyn Authorizer>>);

impl Authorizer for Union {
    fn authorize(&self, attrs: &RequestAttributes<'_>) -> Decision {
        let mut why = Vec::new();
        for a in &self.0 {
            match a.authorize(attrs) {
                Decision::Allow => return Decision::Allow,
                Decision::Deny(reason) => why.push(reason),
            }
        }
        Decision::Deny(why.join("; "))
    }
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
    fn masters_allowed_others_denied() {
        let admin = Identity::authenticated("a", vec![ADMIN_GROUP.into()]);
        let bob = Identity::authenticated("bob", vec![]);
        let z = MastersAuthorizer;
        assert_eq!(
            z.authorize(&attrs(&admin, "delete", "/api")),
            Decision::Allow
        );
        assert!(matches!(
            z.authorize(&attrs(&bob, "get", "/api")),
            Decision::Deny(_)
        ));
        assert_eq!(
            z.authorize(&attrs(&bob, "get", "/version")),
            Decision::Allow
        );
        assert!(matches!(
            z.authorize(&attrs(&bob, "post", "/version")),
            Decision::Deny(_)
        ));
    }
}
