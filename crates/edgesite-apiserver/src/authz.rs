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
