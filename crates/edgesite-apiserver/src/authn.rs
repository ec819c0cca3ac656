//! Authentication: who is making a request.
//!
//! Each TLS connection yields a [`ConnectionInfo`] (remote address and the client certificate
//! chain rustls verified against the cluster CA). For every request an [`Authenticator`] turns
//! that, plus the request headers, into an [`Identity`]. [`X509Authenticator`] reads CN/O from
//! the client certificate; bearer tokens (static tokens, service-account JWTs, bootstrap tokens)
//! plug in as further [`Authenticator`]s in a [`UnionAuthenticator`].
//!
//! As in kube-apiserver, a request with *no* credentials is anonymous
//! ([`Identity::anonymous`]); one with credentials that no authenticator accepts — for example a
//! bearer token while no token authenticator is configured — gets 401.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, header};
use rustls::pki_types::CertificateDer;

use crate::pki::client_identity;

/// The user `system:anonymous`.
pub const ANONYMOUS_USER: &str = "system:anonymous";
/// The group of anonymous requests.
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
/// The group every authenticated user is in.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// An authenticated (or anonymous) user, attached to each request as an extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name (a certificate's CN).
    pub user: String,
    /// The groups (a certificate's O values, plus `system:authenticated` or
    /// `system:unauthenticated`).
    pub groups: Vec<String>,
}

impl Identity {
    /// An authenticated user; `system:authenticated` is appended to `groups` as upstream does.
    pub fn authenticated(user: impl Into<String>, mut groups: Vec<String>) -> Self {
        if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            groups.push(AUTHENTICATED_GROUP.to_owned());
        }
        Self {
            user: user.into(),
            groups,
        }
    }

    /// `system:anonymous` in `system:unauthenticated`.
    pub fn anonymous() -> Self {
        Self {
            user: ANONYMOUS_USER.to_owned(),
            groups: vec![UNAUTHENTICATED_GROUP.to_owned()],
        }
    }

    /// Whether this is the anonymous user.
    pub fn is_anonymous(&self) -> bool {
        self.user == ANONYMOUS_USER
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// What is known about a connection, attached to each of its requests as an extension.
#[derive(Clone, Default)]
pub struct ConnectionInfo {
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
    /// The client certificate chain (leaf first) that rustls verified during the handshake;
    /// empty when the client sent none.
    pub peer_certificates: Arc<[CertificateDer<'static>]>,
}

impl fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("remote_addr", &self.remote_addr)
            .field("peer_certificates", &self.peer_certificates.len())
            .finish()
    }
}

/// The outcome of one [`Authenticator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthnResult {
    /// The credentials are valid: this is the user.
    Authenticated(Identity),
    /// This authenticator found no credentials of its kind; ask the next one.
    NoCredentials,
    /// Credentials of this authenticator's kind were presented and are invalid (401).
    Rejected(String),
}

/// Turns a request's credentials into an [`Identity`].
pub trait Authenticator: Send + Sync + fmt::Debug + 'static {
    /// Authenticates one request from its connection and headers.
    fn authenticate(&self, conn: &ConnectionInfo, headers: &HeaderMap) -> AuthnResult;
}

/// Client certificates: CN is the user, each O a group. The chain was verified against the
/// cluster CA by rustls during the handshake, so this only reads the subject.
#[derive(Debug, Clone, Copy, Default)]
pub struct X509Authenticator;

impl Authenticator for X509Authenticator {
    fn authenticate(&self, conn: &ConnectionInfo, _headers: &HeaderMap) -> AuthnResult {
        let Some(leaf) = conn.peer_certificates.first() else {
            return AuthnResult::NoCredentials;
        };
        match client_identity(leaf) {
            Some((user, groups)) => {
                AuthnResult::Authenticated(Identity::authenticated(user, groups))
            }
            None => AuthnResult::Rejected("client certificate has no usable subject".to_owned()),
        }
    }
}

/// Tries authenticators in order: the first [`AuthnResult::Authenticated`] wins. Otherwise a
/// request that carried credentials (a certificate or an `Authorization` header) is
/// [`AuthnResult::Rejected`], and one without is [`AuthnResult::NoCredentials`] (anonymous).
#[derive(Debug, Clone)]
pub struct UnionAuthenticator {
    authenticators: Vec<Arc<dyn Authenticator>>,
}

impl UnionAuthenticator {
    /// A union of `authenticators`, tried in order.
    pub fn new(authenticators: Vec<Arc<dyn Authenticator>>) -> Self {
        Self { authenticators }
    }

    /// What the server uses today: client certificates only. Bearer-token authenticators are
    /// to be appended here.
    pub fn default_chain() -> Self {
        Self::new(vec![Arc::new(X509Authenticator)])
    }
}

impl Authenticator for UnionAuthenticator {
    fn authenticate(&self, conn: &ConnectionInfo, headers: &HeaderMap) -> AuthnResult {
        let mut rejected = None;
        for a in &self.authenticators {
            match a.authenticate(conn, headers) {
                AuthnResult::Authenticated(id) => return AuthnResult::Authenticated(id),
                AuthnResult::Rejected(why) => rejected = Some(why),
                AuthnResult::NoCredentials => {}
            }
        }
        if let Some(why) = rejected {
            return AuthnResult::Rejected(why);
        }
        if headers.contains_key(header::AUTHORIZATION) {
            return AuthnResult::Rejected(
                "no authenticator accepted the Authorization header".into(),
            );
        }
        AuthnResult::NoCredentials
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_without_token_authenticator_is_rejected() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        let got =
            UnionAuthenticator::default_chain().authenticate(&ConnectionInfo::default(), &headers);
        assert!(matches!(got, AuthnResult::Rejected(_)));
    }

    #[test]
    fn nothing_is_anonymous() {
        let got = UnionAuthenticator::default_chain()
            .authenticate(&ConnectionInfo::default(), &HeaderMap::new());
        assert_eq!(got, AuthnResult::NoCredentials);
    }

    #[test]
    fn authenticated_adds_group_once() {
        let id = Identity::authenticated("u", vec![AUTHENTICATED_GROUP.into(), "g".into()]);
        assert_eq!(
            id.groups,
            vec![AUTHENTICATED_GROUP.to_owned(), "g".to_owned()]
        );
        assert!(Identity::anonymous().is_anonymous());
    }
}
