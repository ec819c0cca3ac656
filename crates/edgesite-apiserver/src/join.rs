//! The node join flow, server side: the token file `DATA_DIR/node-token` and the
//! node-certificate endpoint ([`NODE_CERTIFICATE_PATH`]) where agents trade the token (or, to
//! renew, their current node certificate) for a node client certificate. The token's text and
//! the wire form are in [`edgesite_api::join`], which the agent uses too.
//!
//! The token is the secret an agent presents on its first join, and a pin of the cluster CA, so
//! that the agent verifies the server before it trusts it (as k3s tokens do). Its text is
//! `ES10<sha256 of the CA certificate, hex>::node:<secret>`. The server writes it on its first
//! start (mode 0600) and keeps it across restarts; a token file whose CA pin no longer matches
//! the CA (the PKI was replaced) is an error, never rewritten silently, since every agent that
//! joined holds the old pin.
//!
//! The endpoint sits outside the API's authentication (a join token is no API credential) but
//! is never open: a request needs the token as a bearer token (401 otherwise) or a node client
//! certificate for the very node it asks about (403 for another node's).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use edgesite_api::join::{
    MalformedToken, NodeCertificateRequest, NodeCertificateResponse, node_name_of,
    validate_node_name,
};
use tracing::info;

pub use edgesite_api::join::{NODE_CERTIFICATE_PATH, NodeToken};

use crate::authn::{ConnectionInfo, bearer_token};
use crate::fsutil::{PRIVATE_MODE, write_atomic};
use crate::handlers::{json_response, status_json_response};
use crate::pki::{ClusterPki, client_identity};

/// File name of the token in the data directory.
pub const NODE_TOKEN_FILE: &str = "node-token";

/// Validity of node client certificates by default (1 year, as kubelet's).
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The largest request body the endpoint reads (a CSR is well under 1 KiB).
const MAX_BODY: usize = 64 * 1024;

/// Why a token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The text is not a node token.
    #[error(transparent)]
    Malformed(#[from] MalformedToken),
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

/// A new token for the CA certificate `ca_der`, with a fresh 256-bit secret.
pub fn generate_token(ca_der: &[u8]) -> NodeToken {
    let mut secret = [0u8; 32];
    edgesite_clock::random::fill(&mut secret);
    NodeToken::from_random(ca_der, &secret)
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
                    pinned: token.ca_hash().to_owned(),
                    actual: edgesite_api::join::ca_hash(ca_der),
                });
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = generate_token(ca_der);
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

/// What the node-certificate endpoint needs: the token, the CA that signs, how long
/// certificates last.
pub(crate) struct NodeCertIssuer {
    pub(crate) token: NodeToken,
    pub(crate) pki: Arc<ClusterPki>,
    pub(crate) validity: Duration,
}

impl std::fmt::Debug for NodeCertIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCertIssuer")
            .field("token", &self.token)
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

/// The router serving [`NODE_CERTIFICATE_PATH`], mounted outside the API's authentication.
pub(crate) fn router(issuer: Arc<NodeCertIssuer>) -> Router {
    Router::new()
        .route(
            NODE_CERTIFICATE_PATH,
            axum::routing::post(issue_node_certificate).fallback(|| async {
                status_json_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "node certificates are requested with POST",
                )
            }),
        )
        .with_state(issuer)
}

/// Who is asking for a node certificate.
enum Credential {
    /// The join token.
    Token,
    /// The client certificate of this node.
    Node(String),
}

async fn issue_node_certificate(
    State(issuer): State<Arc<NodeCertIssuer>>,
    req: Request,
) -> Response {
    let conn = req
        .extensions()
        .get::<ConnectionInfo>()
        .cloned()
        .unwrap_or_default();
    let unauthorized =
        |message: &str| status_json_response(StatusCode::UNAUTHORIZED, "Unauthorized", message);
    let forbidden =
        |message: &str| status_json_response(StatusCode::FORBIDDEN, "Forbidden", message);
    // Credentials are checked before the body is looked at: without them nothing about the
    // request is answered but 401.
    let credential = if let Some(presented) = bearer_token(req.headers()) {
        if !issuer.token.accepts(presented) {
            return unauthorized(
                "the join token is not this cluster's node token (see DATA_DIR/node-token on the server)",
            );
        }
        Credential::Token
    } else if let Some(leaf) = conn.peer_certificates.first() {
        let Some((user, groups)) = client_identity(leaf) else {
            return unauthorized("the client certificate has no usable subject");
        };
        match node_name_of(&user, &groups) {
            Some(node) => Credential::Node(node.to_owned()),
            None => {
                return forbidden(&format!(
                    "user {user:?} is not a node: node certificates are renewed with a node's own certificate (CN system:node:NAME, O system:nodes)"
                ));
            }
        }
    } else {
        return unauthorized(
            "a node certificate needs the node join token (Authorization: Bearer <token>) or, to renew, the node's current client certificate",
        );
    };

    let bad_request =
        |message: &str| status_json_response(StatusCode::BAD_REQUEST, "BadRequest", message);
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(err) => return bad_request(&format!("cannot read the request body: {err}")),
    };
    let request: NodeCertificateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(err) => {
            return bad_request(&format!(
                "the body is not a node certificate request ({{\"nodeName\": ..., \"csr\": PEM}}): {err}"
            ));
        }
    };
    if let Err(why) = validate_node_name(&request.node_name) {
        return bad_request(&why);
    }
    let via = match &credential {
        Credential::Token => "join token",
        Credential::Node(node) if *node == request.node_name => "node certificate",
        Credential::Node(node) => {
            return forbidden(&format!(
                "node {node:?} may not obtain a certificate for node {:?}",
                request.node_name
            ));
        }
    };
    let certificate =
        match issuer
            .pki
            .sign_node_csr(&request.node_name, &request.csr, issuer.validity)
        {
            Ok(pem) => pem,
            Err(err) => return bad_request(&format!("cannot sign the CSR: {err}")),
        };
    info!(
        node = %request.node_name,
        via,
        validity_secs = issuer.validity.as_secs(),
        "issued a node client certificate"
    );
    let response = NodeCertificateResponse {
        certificate,
        ca_certificate: issuer.pki.ca_cert_pem().to_owned(),
    };
    match serde_json::to_value(&response) {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(err) => status_json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &err.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn generated_tokens_are_random_and_pin_the_ca() {
        let t = generate_token(b"ca one");
        assert!(t.pins(b"ca one"));
        assert_eq!(t.secret().len(), 64);
        assert_eq!(NodeToken::parse(&t.to_string()).unwrap(), t);
        assert_ne!(generate_token(b"ca one"), t, "secrets are random");
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
