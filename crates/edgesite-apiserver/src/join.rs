//! The node join token, `DATA_DIR/node-token`: the secret an agent presents on its first join,
//! and a pin of the cluster CA, so that the agent verifies the server before it trusts it (as
//! k3s tokens do). Its text is `ES10<sha256 of the CA certificate, hex>::node:<secret>`.
//!
//! The server writes it on its first start (mode 0600) and keeps it across restarts; a token
//! file whose CA pin no longer matches the CA (the PKI was replaced) is an error, never rewritten
//! silently, since every agent that joined holds the old pin.

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::fsutil::{PRIVATE_MODE, write_atomic};

/// File name of the token in the data directory.
pub const NODE_TOKEN_FILE: &str = "node-token";

const PREFIX: &str = "ES10";
const USER: &str = "node";

/// Why a token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The text is not a node token.
    #[error("not an EdgeSite node token ({0}); it looks like ES10<ca-hash>::node:<secret>")]
    Malformed(&'static str),
    /// The token pins another CA than the server's.
    #[error(
        "the node token in {path} pins CA {pinned} but the cluster CA is {actual}; remove the file to issue a new token (every agent must then join again)"
    )]
    OtherCa {
        /// The token file.
        path: PathBuf,
        /// The CA hash the token holds.
        pinned: String,
        /// The hash of the CA in use.
        actual: String,
    },
    /// Reading or writing the token file failed.
    #[error("cannot {action} the node token {path}: {source}")]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The token file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A node join token.
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
    /// A new token for the CA certificate `ca_der`, with a fresh 256-bit secret.
    pub fn generate(ca_der: &[u8]) -> Self {
        let mut secret = [0u8; 32];
        edgesite_clock::random::fill(&mut secret);
        Self {
            ca_hash: ca_hash(ca_der),
            secret: hex(&secret),
        }
    }

    /// Parses a token's text (surrounding whitespace, such as a file's newline, is ignored).
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let rest = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(TokenError::Malformed("no ES10 prefix"))?;
        let (ca_hash, creds) = rest
            .split_once("::")
            .ok_or(TokenError::Malformed("no :: after the CA hash"))?;
        if ca_hash.len() != 64 || !ca_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Malformed("the CA hash is not 64 hex digits"));
        }
        let secret = creds
            .strip_prefix(USER)
            .and_then(|s| s.strip_prefix(':'))
            .ok_or(TokenError::Malformed("no node: before the secret"))?;
        if secret.len() < 32 || !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(TokenError::Malformed(
                "the secret is not at least 32 letters and digits",
            ));
        }
        Ok(Self {
            ca_hash: ca_hash.to_ascii_lowercase(),
            secret: secret.to_owned(),
        })
    }

    /// The SHA-256 of the CA certificate it pins, hex.
    pub fn ca_hash(&self) -> &str {
        &self.ca_hash
    }

    /// Whether `ca_der` is the CA this token pins.
    pub fn pins(&self, ca_der: &[u8]) -> bool {
        ca_hash(ca_der) == self.ca_hash
    }

    /// Whether `presented` is this token's secret (compared in constant time).
    pub fn secret_matches(&self, presented: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// The token path of `data_dir`.
pub fn node_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(NODE_TOKEN_FILE)
}

/// The data directory's token: read when it exists (it must pin `ca_der`), else made and
/// written with mode 0600.
pub fn load_or_create(data_dir: &Path, ca_der: &[u8]) -> Result<NodeToken, TokenError> {
    let path = node_token_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = NodeToken::parse(&text)?;
            if !token.pins(ca_der) {
                return Err(TokenError::OtherCa {
                    path,
                    pinned: token.ca_hash,
                    actual: ca_hash(ca_der),
                });
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = NodeToken::generate(ca_der);
            write_atomic(&path, format!("{token}\n").as_bytes(), PRIVATE_MODE).map_err(
                |source| TokenError::Io {
                    action: "write",
                    path: path.clone(),
                    source,
                },
            )?;
            Ok(token)
        }
        Err(source) => Err(TokenError::Io {
            action: "read",
            path,
            source,
        }),
    }
}

fn ca_hash(ca_der: &[u8]) -> String {
    hex(&Sha256::digest(ca_der))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn tokens_print_and_parse_back() {
        let t = NodeToken::generate(b"ca one");
        let text = t.to_string();
        assert!(text.starts_with("ES10"), "{text}");
        assert_eq!(NodeToken::parse(&format!("  {text}\n")).unwrap(), t);
        assert!(t.pins(b"ca one"));
        assert!(!t.pins(b"ca two"));
        assert_ne!(NodeToken::generate(b"ca one"), t, "secrets are random");
        assert!(
            !format!("{t:?}").contains(&t.secret),
            "Debug hides the secret"
        );
    }

    #[test]
    fn secrets_compare_whole() {
        let t = NodeToken::generate(b"ca");
        assert!(t.secret_matches(&t.secret));
        assert!(!t.secret_matches(&t.secret[..40]));
        assert!(!t.secret_matches(""));
        let mut other = t.secret.clone().into_bytes();
        other[0] = if other[0] == b'a' { b'b' } else { b'a' };
        assert!(!t.secret_matches(std::str::from_utf8(&other).unwrap()));
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
    fn the_token_file_is_private_kept_and_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), b"the ca").unwrap();
        let path = node_token_path(dir.path());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{first}\n")
        );
        assert_eq!(load_or_create(dir.path(), b"the ca").unwrap(), first);
        let err = load_or_create(dir.path(), b"another ca").unwrap_err();
        assert!(matches!(err, TokenError::OtherCa { .. }), "{err}");
        assert!(err.to_string().contains("remove the file"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{first}\n"),
            "a mismatch leaves the file alone"
        );
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            load_or_create(dir.path(), b"the ca"),
            Err(TokenError::Malformed(_))
        ));
    }
}
