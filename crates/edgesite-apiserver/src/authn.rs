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

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{HeaderMap, header};
use edgesite_api::join::constant_time_eq;
use edgesite_clock::Clock as _;
use rustls::pki_types::CertificateDer;

use crate::pki::client_identity;

/// The user `system:anonymous`.
pub const ANONYMOUS_USER: &str = "system:anonymous";
/// The group of anonymous requests.
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
/// The group every authenticated user is in.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// An authenticated (or anonymous) user, attached to each request as an extension.
///
/// Build it with [`Identity::authenticated`] or [`Identity::anonymous`] (then
/// [`Identity::with_uid`]), so that fields added later keep their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name (a certificate's CN, a token's user).
    pub user: String,
    /// The user's uid, if the authenticator knows one (static tokens, service accounts);
    /// empty otherwise.
    pub uid: String,
    /// The groups (a certificate's O values, plus `system:authenticated` or
    /// `system:unauthenticated`).
    pub groups: Vec<String>,
    /// Extra attributes (`authentication.kubernetes.io/credential-id`...), as upstream's
    /// `user.Info.GetExtra`.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Identity {
    /// An authenticated user; `system:authenticated` is appended to `groups` as upstream does.
    pub fn authenticated(user: impl Into<String>, mut groups: Vec<String>) -> Self {
        if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            groups.push(AUTHENTICATED_GROUP.to_owned());
        }
        Self {
            user: user.into(),
            uid: String::new(),
            groups,
            extra: BTreeMap::new(),
        }
    }

    /// `system:anonymous` in `system:unauthenticated`.
    pub fn anonymous() -> Self {
        Self {
            user: ANONYMOUS_USER.to_owned(),
            uid: String::new(),
            groups: vec![UNAUTHENTICATED_GROUP.to_owned()],
            extra: BTreeMap::new(),
        }
    }

    /// The same identity with `uid` set.
    pub fn with_uid(mut self, uid: impl Into<String>) -> Self {
        self.uid = uid.into();
        self
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
        // rustls checked the validity at the handshake; a connection outlives that, and
        // upstream verifies the chain (expiry included) on every request, so a client must
        // reconnect with a renewed certificate rather than ride an old connection.
        if let Some(why) = outside_validity(leaf, edgesite_clock::SystemClock.unix_seconds()) {
            return AuthnResult::Rejected(why);
        }
        match client_identity(leaf) {
            Some((user, groups)) => {
                AuthnResult::Authenticated(Identity::authenticated(user, groups))
            }
            None => AuthnResult::Rejected("client certificate has no usable subject".to_owned()),
        }
    }
}

/// Why a client certificate is not valid at `now` (Unix seconds), if it is not.
fn outside_validity(cert_der: &[u8], now: i64) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let validity = cert.validity();
    if now > validity.not_after.timestamp() {
        Some(format!(
            "client certificate expired at {}",
            validity.not_after
        ))
    } else if now < validity.not_before.timestamp() {
        Some(format!(
            "client certificate is not valid before {}",
            validity.not_before
        ))
    } else {
        None
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

    /// What the server uses without token configuration: client certificates only.
    pub fn default_chain() -> Self {
        Self::new(vec![Arc::new(X509Authenticator)])
    }

    /// Client certificates, then the static tokens of `tokens` if given. Service-account
    /// tokens are to be appended here.
    pub fn with_tokens(tokens: Option<TokenFileAuthenticator>) -> Self {
        let mut chain: Vec<Arc<dyn Authenticator>> = vec![Arc::new(X509Authenticator)];
        if let Some(t) = tokens {
            chain.push(Arc::new(t));
        }
        Self::new(chain)
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

/// The bearer token of an `Authorization: Bearer <token>` header (scheme case-insensitive, as
/// upstream); `None` when there is no such header or the token is empty.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// Why a token file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("cannot read token file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `token,user,uid[,"group1,group2,..."]`.
    #[error("token file {}, line {line}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// One entry of a token file.
#[derive(Clone, PartialEq, Eq)]
struct TokenEntry {
    token: Vec<u8>,
    identity: Identity,
}

/// Static bearer tokens from a CSV file in kube-apiserver's `--token-auth-file` format: one
/// `token,user,uid[,"group1,group2"]` per line (blank lines ignored; the groups column is
/// quoted when it holds several groups). A request with `Authorization: Bearer <token>` for a
/// listed token is that user; an unknown token is rejected (401). Tokens are compared in
/// constant time, and every entry is compared, so timing reveals neither the token nor which
/// entry matched.
#[derive(Clone)]
pub struct TokenFileAuthenticator {
    entries: Vec<TokenEntry>,
}

impl fmt::Debug for TokenFileAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the tokens.
        f.debug_struct("TokenFileAuthenticator")
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl TokenFileAuthenticator {
    /// Reads and parses `path`.
    pub fn from_file(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, reason)| TokenFileError::Invalid {
            path: path.to_owned(),
            line,
            reason,
        })
    }

    /// Parses the file's text; the error is the 1-based line number and the reason.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut entries: Vec<TokenEntry> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let fields = split_csv_line(line).map_err(|e| (n, e))?;
            if fields.len() < 3 {
                return Err((
                    n,
                    format!(
                        "expected at least 3 columns (token,user,uid), found {}",
                        fields.len()
                    ),
                ));
            }
            let token = fields[0].trim();
            let user = fields[1].trim();
            if token.is_empty() {
                return Err((n, "empty token".to_owned()));
            }
            if user.is_empty() {
                return Err((n, "empty user name".to_owned()));
            }
            let groups: Vec<String> = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            if entries.iter().any(|e| e.token == token.as_bytes()) {
                return Err((n, format!("duplicate token for user {user:?}")));
            }
            entries.push(TokenEntry {
                token: token.as_bytes().to_vec(),
                identity: Identity::authenticated(user, groups).with_uid(fields[2].trim()),
            });
        }
        Ok(Self { entries })
    }

    /// How many tokens the file holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Authenticator for TokenFileAuthenticator {
    fn authenticate(&self, _conn: &ConnectionInfo, headers: &HeaderMap) -> AuthnResult {
        let Some(token) = bearer_token(headers) else {
            return AuthnResult::NoCredentials;
        };
        let mut found: Option<&Identity> = None;
        for e in &self.entries {
            if constant_time_eq(&e.token, token.as_bytes()) {
                found = Some(&e.identity);
            }
        }
        match found {
            Some(id) => AuthnResult::Authenticated(id.clone()),
            None => AuthnResult::Rejected("invalid bearer token".to_owned()),
        }
    }
}

/// Splits one CSV line (RFC 4180 quoting: `"a,b"`, `""` for a quote inside quotes).
fn split_csv_line(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.trim().is_empty() && !was_quoted => {
                field.clear();
                quoted = true;
                was_quoted = true;
            }
            (false, '"') => return Err("a quote inside an unquoted field".to_owned()),
            (false, ',') => {
                fields.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            (false, '\r') => {}
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field".to_owned());
    }
    fields.push(field);
    Ok(fields)
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

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    const FILE: &str =
        "s3cret,alice,uid-1,\"dev,ops\"\n\nadmintok,root,uid-0,system:masters\nbare,bob,uid-2\n";

    #[test]
    fn token_file_parses_upstream_csv() {
        let a = TokenFileAuthenticator::parse(FILE).unwrap();
        assert_eq!(a.len(), 3);
        let got = a.authenticate(&ConnectionInfo::default(), &bearer("s3cret"));
        let AuthnResult::Authenticated(id) = got else {
            panic!("{got:?}")
        };
        assert_eq!(id.user, "alice");
        assert_eq!(id.uid, "uid-1");
        assert_eq!(id.groups, ["dev", "ops", AUTHENTICATED_GROUP]);
        let AuthnResult::Authenticated(id) =
            a.authenticate(&ConnectionInfo::default(), &bearer("bare"))
        else {
            panic!()
        };
        assert_eq!(id.groups, [AUTHENTICATED_GROUP]);
    }

    #[test]
    fn wrong_or_prefix_token_is_rejected() {
        let a = TokenFileAuthenticator::parse(FILE).unwrap();
        for t in ["s3cre", "s3cretx", "S3CRET", "nope"] {
            assert!(matches!(
                a.authenticate(&ConnectionInfo::default(), &bearer(t)),
                AuthnResult::Rejected(_)
            ));
        }
        assert_eq!(
            a.authenticate(&ConnectionInfo::default(), &HeaderMap::new()),
            AuthnResult::NoCredentials
        );
        // Through the union: still rejected, not anonymous.
        let u = UnionAuthenticator::with_tokens(Some(a));
        assert!(matches!(
            u.authenticate(&ConnectionInfo::default(), &bearer("nope")),
            AuthnResult::Rejected(_)
        ));
        assert!(matches!(
            u.authenticate(&ConnectionInfo::default(), &bearer("admintok")),
            AuthnResult::Authenticated(_)
        ));
    }

    #[test]
    fn bad_token_files() {
        assert_eq!(TokenFileAuthenticator::parse("tok,user").unwrap_err().0, 1);
        assert_eq!(
            TokenFileAuthenticator::parse("a,u,1\n\"unterminated,u,2")
                .unwrap_err()
                .0,
            2
        );
        assert!(TokenFileAuthenticator::parse(",u,1").is_err());
        assert!(TokenFileAuthenticator::parse("t,u,1\nt,v,2").is_err());
        assert!(format!("{:?}", TokenFileAuthenticator::parse(FILE).unwrap()).contains("3"));
        assert!(!format!("{:?}", TokenFileAuthenticator::parse(FILE).unwrap()).contains("s3cret"));
    }

    #[test]
    fn bearer_header_forms() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn client_certificates_count_only_within_their_validity() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "n");
        params.not_before = time::OffsetDateTime::from_unix_timestamp(1_000).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(2_000).unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(outside_validity(&der, 1_500), None);
        assert_eq!(outside_validity(&der, 2_000), None);
        assert!(outside_validity(&der, 2_001).unwrap().contains("expired"));
        assert!(
            outside_validity(&der, 999)
                .unwrap()
                .contains("not valid before")
        );
        // Through the authenticator: this certificate expired long ago.
        let conn = ConnectionInfo {
            remote_addr: None,
            peer_certificates: vec![CertificateDer::from(der)].into(),
        };
        assert!(matches!(
            X509Authenticator.authenticate(&conn, &HeaderMap::new()),
            AuthnResult::Rejected(why) if why.contains("expired")
        ));
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
