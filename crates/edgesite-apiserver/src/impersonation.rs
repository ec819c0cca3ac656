//! Impersonation (`kubectl --as`, `--as-group`, `--as-uid`): the `Impersonate-User`,
//! `Impersonate-Group`, `Impersonate-Uid` and `Impersonate-Extra-<key>` headers, authorized as
//! upstream's impersonation filter does — the requester needs `impersonate` on each `users`,
//! `groups` or `serviceaccounts` (core), `uids` and `userextras/<key>` (authentication.k8s.io)
//! it asks for — and then the request runs as the impersonated identity.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use edgesite_api::rbac::SERVICE_ACCOUNT_PREFIX;
use edgesite_api::status::ApiError;

use crate::authn::{ANONYMOUS_USER, AUTHENTICATED_GROUP, Identity, UNAUTHENTICATED_GROUP};
use crate::authz::{
    Authorizer, Decision, RequestAttributes, ResourceAttributes, forbidden_message,
};

/// The user header.
pub const IMPERSONATE_USER: &str = "impersonate-user";
/// The group header (repeated for several groups).
pub const IMPERSONATE_GROUP: &str = "impersonate-group";
/// The uid header.
pub const IMPERSONATE_UID: &str = "impersonate-uid";
/// The prefix of extra-attribute headers (`Impersonate-Extra-Scopes: a`).
pub const IMPERSONATE_EXTRA_PREFIX: &str = "impersonate-extra-";

/// Why impersonation was refused.
#[derive(Debug)]
pub enum Refusal {
    /// Malformed headers (400).
    BadRequest(String),
    /// The requester may not impersonate this (403, upstream's message).
    Forbidden(ApiError),
}

/// Whether the request carries any impersonation header.
pub fn requested(headers: &HeaderMap) -> bool {
    headers.keys().any(|k| {
        let k = k.as_str();
        k == IMPERSONATE_USER
            || k == IMPERSONATE_GROUP
            || k == IMPERSONATE_UID
            || k.starts_with(IMPERSONATE_EXTRA_PREFIX)
    })
}

/// Removes every impersonation header, so that handlers never see them.
pub fn strip(headers: &mut HeaderMap) {
    let names: Vec<_> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            k.starts_with("impersonate-")
        })
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

fn values<'h>(headers: &'h HeaderMap, name: &str) -> Result<Vec<&'h str>, Refusal> {
    headers
        .get_all(name)
        .iter()
        .map(|v| {
            v.to_str()
                .map_err(|_| Refusal::BadRequest(format!("the {name} header is not valid text")))
        })
        .collect()
}

fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, Refusal> {
    let v = values(headers, name)?;
    match v.as_slice() {
        [] | [""] => Ok(None),
        [one] => Ok(Some(one)),
        // Upstream reads the first; two different users in one request is a smuggling attempt.
        _ => Err(Refusal::BadRequest(format!(
            "only one {name} header may be given"
        ))),
    }
}

/// Upstream's `unescapeExtraKey`: extra keys travel percent-encoded in header names.
fn unescape(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(Ok(b)) = key.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16))
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| key.to_owned())
}

/// The identity the request runs as: `requester` when no impersonation header is present,
/// otherwise the impersonated one after every part of it was authorized.
pub fn impersonate(
    authorizer: &dyn Authorizer,
    requester: Identity,
    headers: &HeaderMap,
    path: &str,
) -> Result<Identity, Refusal> {
    if !requested(headers) {
        return Ok(requester);
    }
    let user = single(headers, IMPERSONATE_USER)?;
    let uid = single(headers, IMPERSONATE_UID)?;
    let groups: Vec<String> = values(headers, IMPERSONATE_GROUP)?
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix(IMPERSONATE_EXTRA_PREFIX) {
            let value = value
                .to_str()
                .map_err(|_| Refusal::BadRequest(format!("the {name} header is not valid text")))?;
            extra
                .entry(unescape(key))
                .or_default()
                .push(value.to_owned());
        }
    }
    let Some(user) = user else {
        return Err(Refusal::BadRequest(
            "requested impersonation of groups, a uid or extra attributes without impersonating \
             a user"
                .to_owned(),
        ));
    };
    let check = |group: &str, resource: &str, sub: Option<&str>, ns: Option<&str>, name: &str| {
        let attrs = RequestAttributes {
            identity: &requester,
            verb: "impersonate".to_owned(),
            path,
            resource: Some(ResourceAttributes {
                api_group: group.to_owned(),
                resource: resource.to_owned(),
                subresource: sub.map(str::to_owned),
                namespace: ns.map(str::to_owned),
                name: Some(name.to_owned()),
            }),
        };
        match authorizer.authorize(&attrs) {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => Err(Refusal::Forbidden(ApiError::forbidden(
                edgesite_api::registry::GroupResource::new(group, resource),
                name,
                &forbidden_message(&attrs, &reason),
            ))),
        }
    };
    let service_account = user
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains(':'));
    let mut all_groups = Vec::new();
    match service_account {
        Some((ns, name)) => {
            check("", "serviceaccounts", None, Some(ns), name)?;
            all_groups.push("system:serviceaccounts".to_owned());
            all_groups.push(format!("system:serviceaccounts:{ns}"));
        }
        None => check("", "users", None, None, user)?,
    }
    for g in &groups {
        check("", "groups", None, None, g)?;
        if !all_groups.contains(g) {
            all_groups.push(g.clone());
        }
    }
    for (key, vals) in &extra {
        for v in vals {
            check("authentication.k8s.io", "userextras", Some(key), None, v)?;
        }
    }
    if let Some(uid) = uid {
        check("authentication.k8s.io", "uids", None, None, uid)?;
    }
    if user == ANONYMOUS_USER {
        if !all_groups.iter().any(|g| g == UNAUTHENTICATED_GROUP) {
            all_groups.push(UNAUTHENTICATED_GROUP.to_owned());
        }
    } else if !all_groups
        .iter()
        .any(|g| g == AUTHENTICATED_GROUP || g == UNAUTHENTICATED_GROUP)
    {
        all_groups.push(AUTHENTICATED_GROUP.to_owned());
    }
    tracing::debug!(requester = %requester.user, as_user = %user, "impersonating");
    Ok(Identity {
        user: user.to_owned(),
        uid: uid.unwrap_or_default().to_owned(),
        groups: all_groups,
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::MastersAuthorizer;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn admins_impersonate_users_groups_service_accounts_and_extras() {
        let admin = Identity::authenticated("admin", vec!["system:masters".into()]);
        let z = MastersAuthorizer;
        let id = impersonate(
            &z,
            admin.clone(),
            &headers(&[
                ("Impersonate-User", "alice"),
                ("Impersonate-Group", "dev"),
                ("Impersonate-Group", "ops"),
                ("Impersonate-Uid", "u-1"),
                ("Impersonate-Extra-Scopes%2Fx", "a"),
            ]),
            "/api",
        )
        .unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(id.uid, "u-1");
        assert_eq!(id.groups, ["dev", "ops", "system:authenticated"]);
        assert_eq!(id.extra["scopes/x"], ["a"]);
        let sa = impersonate(
            &z,
            admin.clone(),
            &headers(&[("Impersonate-User", "system:serviceaccount:ci:builder")]),
            "/api",
        )
        .unwrap();
        assert_eq!(
            sa.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:ci",
                "system:authenticated"
            ]
        );
        let anon = impersonate(
            &z,
            admin.clone(),
            &headers(&[("Impersonate-User", "system:anonymous")]),
            "/api",
        )
        .unwrap();
        assert_eq!(anon.groups, ["system:unauthenticated"]);
        assert_eq!(
            impersonate(&z, admin.clone(), &HeaderMap::new(), "/api").unwrap(),
            admin
        );
    }

    #[test]
    fn others_are_refused_with_upstreams_message_and_malformed_headers_are_bad_requests() {
        let bob = Identity::authenticated("bob", vec![]);
        let z = MastersAuthorizer;
        match impersonate(
            &z,
            bob.clone(),
            &headers(&[("Impersonate-User", "alice")]),
            "/api",
        ) {
            Err(Refusal::Forbidden(e)) => assert_eq!(
                e.to_string(),
                r#"users "alice" is forbidden: User "bob" cannot impersonate resource "users" in API group "" at the cluster scope"#
            ),
            other => panic!("{other:?}"),
        }
        for bad in [
            headers(&[("Impersonate-Group", "system:masters")]),
            headers(&[("Impersonate-User", "a"), ("Impersonate-User", "b")]),
            headers(&[("Impersonate-Uid", "x")]),
        ] {
            assert!(
                matches!(
                    impersonate(&z, bob.clone(), &bad, "/api"),
                    Err(Refusal::BadRequest(_))
                ),
                "{bad:?}"
            );
        }
        let mut h = headers(&[
            ("Impersonate-User", "a"),
            ("Impersonate-Extra-k", "v"),
            ("Accept", "x"),
        ]);
        strip(&mut h);
        assert_eq!(h.len(), 1);
    }
}
