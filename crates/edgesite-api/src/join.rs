//! How a node joins the cluster, without IO: the node join token's text, the CA pin it carries,
//! and the wire form of the node-certificate endpoint. The server (which writes the token and
//! signs certificates) and the agent (which reads the token, checks the pin and asks for a
//! certificate) share this, so the agent needs nothing of the server.
//!
//! A token is `ES10<sha256 of the cluster CA certificate's DER, hex>::node:<secret>`, as k3s's
//! `K10<hash>::<user>:<secret>`: a joining agent fetches the CA from the unauthenticated
//! `GET /cacerts`, checks it against the pin, and only then sends the secret, over TLS verified
//! against that CA.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

const PREFIX: &str = "ES10";
const USER: &str = "node";

/// Where an agent asks for its node client certificate (`POST`, a [`NodeCertificateRequest`]
/// body, a [`NodeCertificateResponse`] back). Authorized by the join token as a bearer token,
/// or, for renewal, by the node's own client certificate.
pub const NODE_CERTIFICATE_PATH: &str = "/v1-edgesite/node-certificate";

/// The public path serving the cluster CA certificate (PEM) to anyone.
pub const CA_CERTS_PATH: &str = "/cacerts";

/// The user-name prefix of node identities (`system:node:<name>`), as upstream.
pub const NODE_USER_PREFIX: &str = "system:node:";

/// The group of node identities, as upstream.
pub const NODES_GROUP: &str = "system:nodes";

/// Why a text is not a node token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an EdgeSite node token ({0}); it looks like ES10<ca-hash>::node:<secret>")]
pub struct MalformedToken(pub &'static str);

/// A node join token: a CA pin and a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeToken {
    ca_hash: String,
    secret: String,
}

impl fmt::Debug for NodeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret never reaches a log.
        f.debug_struct("NodeToken")
            .field("ca_hash", &self.ca_hash)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for NodeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}::{USER}:{}", self.ca_hash, self.secret)
    }
}

impl NodeToken {
    /// The token pinning the CA certificate `ca_der` with `secret` (which the caller draws from
    /// a good random source: at least 32 letters and digits).
    pub fn new(ca_der: &[u8], secret: &str) -> Result<Self, MalformedToken> {
        check_secret(secret)?;
        Ok(Self {
            ca_hash: ca_hash(ca_der),
            secret: secret.to_owned(),
        })
    }

    /// The token pinning `ca_der` whose secret is `random` in hex (the server draws the 32
    /// bytes from the operating system).
    pub fn from_random(ca_der: &[u8], random: &[u8; 32]) -> Self {
        Self {
            ca_hash: ca_hash(ca_der),
            secret: hex(random),
        }
    }

    /// Parses a token's text (surrounding whitespace, such as a file's newline, is ignored).
    pub fn parse(text: &str) -> Result<Self, MalformedToken> {
        let rest = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(MalformedToken("no ES10 prefix"))?;
        let (ca_hash, creds) = rest
            .split_once("::")
            .ok_or(MalformedToken("no :: after the CA hash"))?;
        if ca_hash.len() != 64 || !ca_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(MalformedToken("the CA hash is not 64 hex digits"));
        }
        let secret = creds
            .strip_prefix(USER)
            .and_then(|s| s.strip_prefix(':'))
            .ok_or(MalformedToken("no node: before the secret"))?;
        check_secret(secret)?;
        Ok(Self {
            ca_hash: ca_hash.to_ascii_lowercase(),
            secret: secret.to_owned(),
        })
    }

    /// The SHA-256 of the CA certificate it pins, hex.
    pub fn ca_hash(&self) -> &str {
        &self.ca_hash
    }

    /// The secret, for an `Authorization: Bearer` header; never log it.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Whether `ca_der` is the CA this token pins.
    pub fn pins(&self, ca_der: &[u8]) -> bool {
        ca_hash(ca_der) == self.ca_hash
    }

    /// Whether `presented` is this token's secret (compared in constant time).
    pub fn secret_matches(&self, presented: &str) -> bool {
        constant_time_eq(self.secret.as_bytes(), presented.as_bytes())
    }

    /// Whether a bearer token an agent presented is this token: its secret alone, or the
    /// whole token text (k3s accepts both). The secret is compared in constant time.
    pub fn accepts(&self, presented: &str) -> bool {
        match NodeToken::parse(presented) {
            Ok(whole) => whole.ca_hash == self.ca_hash && self.secret_matches(&whole.secret),
            Err(_) => self.secret_matches(presented),
        }
    }
}

fn check_secret(secret: &str) -> Result<(), MalformedToken> {
    if secret.len() < 32 || !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(MalformedToken(
            "the secret is not at least 32 letters and digits",
        ));
    }
    Ok(())
}

/// The pin of a CA certificate: the SHA-256 of its DER, lower-case hex.
pub fn ca_hash(ca_der: &[u8]) -> String {
    hex(&Sha256::digest(ca_der))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Compares two byte strings in time that depends only on their lengths, not on where they
/// differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Whether `name` may name a node (a DNS-1123 subdomain, as upstream's node names); the error
/// is what is wrong with it.
pub fn validate_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a node name must not be empty".to_owned());
    }
    let errs = crate::validation::dns1123_subdomain(name);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(format!("invalid node name {name:?}: {}", errs.join("; ")))
    }
}

/// The node name of a node identity (`system:node:<name>` in group `system:nodes`), `None` for
/// any other user.
pub fn node_name_of<'a>(user: &'a str, groups: &[String]) -> Option<&'a str> {
    let name = user.strip_prefix(NODE_USER_PREFIX)?;
    (!name.is_empty() && groups.iter().any(|g| g == NODES_GROUP)).then_some(name)
}

/// The body of a `POST` to [`NODE_CERTIFICATE_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeCertificateRequest {
    /// The node the certificate is for; the certificate's CN is `system:node:<nodeName>`.
    pub node_name: String,
    /// A PKCS#10 certificate signing request, PEM. Only its public key is used: the server
    /// sets the subject, the usages and the validity itself.
    pub csr: String,
}

/// The answer of [`NODE_CERTIFICATE_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCertificateResponse {
    /// The node's client certificate, PEM.
    pub certificate: String,
    /// The cluster CA certificate, PEM.
    pub ca_certificate: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(ca: &[u8]) -> NodeToken {
        NodeToken::new(ca, &"s3cr3t".repeat(6)).unwrap()
    }

    #[test]
    fn tokens_print_and_parse_back() {
        let t = token(b"ca one");
        let text = t.to_string();
        assert!(text.starts_with("ES10"), "{text}");
        assert_eq!(NodeToken::parse(&format!("  {text}\n")).unwrap(), t);
        assert!(t.pins(b"ca one"));
        assert!(!t.pins(b"ca two"));
        assert!(
            !format!("{t:?}").contains(t.secret()),
            "Debug hides the secret"
        );
        assert_eq!(t.ca_hash(), ca_hash(b"ca one"));
        // The SHA-256 of "abc", a known vector.
        assert_eq!(
            ca_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(NodeToken::new(b"ca", "short").is_err());
    }

    #[test]
    fn secrets_compare_whole() {
        let t = token(b"ca");
        assert!(t.secret_matches(t.secret()));
        assert!(!t.secret_matches(&t.secret()[..30]));
        assert!(!t.secret_matches(""));
        let mut other = t.secret().to_owned().into_bytes();
        other[0] = if other[0] == b'a' { b'b' } else { b'a' };
        assert!(!t.secret_matches(std::str::from_utf8(&other).unwrap()));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn bearer_tokens_are_the_secret_or_the_whole_token() {
        let t = token(b"ca");
        assert!(t.accepts(t.secret()));
        assert!(t.accepts(&t.to_string()));
        assert!(!t.accepts("nope"));
        let other_secret = NodeToken::new(b"ca", &"x".repeat(36)).unwrap();
        assert!(!t.accepts(&other_secret.to_string()));
        assert!(!t.accepts(other_secret.secret()));
        let other_ca = NodeToken::new(b"another ca", t.secret()).unwrap();
        assert!(!t.accepts(&other_ca.to_string()), "the pin must match too");
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let hash = "ab".repeat(32);
        let secret = "x".repeat(32);
        let cases = [
            ("K10abc::node:secret".to_owned(), "no ES10 prefix"),
            (format!("ES10{hash}node:{secret}"), "no :: after"),
            (format!("ES10abc::node:{secret}"), "64 hex digits"),
            (format!("ES10{hash}::admin:{secret}"), "no node: before"),
            (format!("ES10{hash}::node:short"), "at least 32"),
            (format!("ES10{hash}::node:{secret}!"), "at least 32"),
        ];
        for (text, want) in cases {
            let err = NodeToken::parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        assert!(NodeToken::parse(&format!("ES10{hash}::node:{secret}")).is_ok());
    }

    #[test]
    fn node_names_and_identities() {
        assert!(validate_node_name("edge-1.site.example").is_ok());
        for bad in ["", "Edge", "-a", "a_b", &"a".repeat(254)] {
            assert!(validate_node_name(bad).is_err(), "{bad:?}");
        }
        let nodes = vec![NODES_GROUP.to_owned()];
        assert_eq!(node_name_of("system:node:n1", &nodes), Some("n1"));
        assert_eq!(node_name_of("system:node:n1", &[]), None);
        assert_eq!(node_name_of("system:node:", &nodes), None);
        assert_eq!(node_name_of("alice", &nodes), None);
    }

    #[test]
    fn wire_form_is_camel_case() {
        let req: NodeCertificateRequest =
            serde_json::from_str(r#"{"nodeName":"n1","csr":"PEM"}"#).unwrap();
        assert_eq!(req.node_name, "n1");
        assert!(serde_json::from_str::<NodeCertificateRequest>(r#"{"csr":"x"}"#).is_err());
        let resp = serde_json::to_value(NodeCertificateResponse {
            certificate: "c".into(),
            ca_certificate: "ca".into(),
        })
        .unwrap();
        assert_eq!(resp["caCertificate"], "ca");
    }
}
