//! Joining the cluster: how an agent gets, keeps and renews its node client certificate
//! (CN `system:node:<name>`, O `system:nodes`), and the kube clients that use it.
//!
//! [`join`] is called once at start. The first time, it reads the join token, fetches the
//! cluster CA from the public `GET /cacerts` without trusting it, checks it against the token's
//! pin, and only then sends a CSR (the private key never leaves the node) with the token's
//! secret over TLS verified against that CA. It stores `ADIR/pki/ca.crt` and
//! `ADIR/pki/node.pem` (certificate and key in one file, mode 0600, so the pair is replaced
//! atomically, as kubelet's `kubelet-client-current.pem`). Later starts use these files and need
//! no token. A wrong token, a CA that differs from the pin or from the one the node joined are
//! terminal [`JoinError`]s; an unreachable server is retried with back-off
//! ([`JoinError::is_retryable`]). With a stored identity an unreachable server is no reason to
//! wait: the agent starts from its local state and the clients connect when the server is back.
//!
//! [`Identity::client`] makes kube clients whose TLS client certificate follows renewal
//! ([`Identity::run_renewal`], at 70–80 % of the certificate's life) without a restart: the
//! certificate sits behind a swappable rustls resolver, and each renewal starts a fresh
//! connection pool, so no request goes out on a connection authenticated with the old
//! certificate (upstream's apiserver checks a client certificate's expiry on every request;
//! kubelet closes its connections on rotation for the same reason).

use std::fmt;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use edgesite_api::join::{
    CA_CERTS_PATH, NODE_CERTIFICATE_PATH, NODE_USER_PREFIX, NODES_GROUP, NodeCertificateRequest,
    NodeCertificateResponse, NodeToken, ca_hash, validate_node_name,
};
use edgesite_clock::{Clock, SystemClock};
use http_body_util::BodyExt as _;
use hyper::body::Bytes;
use hyper::{Method, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tracing::{info, warn};

/// The CA bundle of the cluster the node joined, under the agent's `pki` directory.
pub const CA_FILE: &str = "ca.crt";
/// The node's client certificate followed by its private key (PEM, mode 0600).
pub const NODE_PEM_FILE: &str = "node.pem";

/// How long a TCP connect to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one join request (handshake, request, response) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// First and largest delay between join attempts (1 s doubling to 30 s, jittered).
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why the node could not join, or renew its certificate. Every message is one line naming the
/// cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// No identity is stored and no token file was given.
    #[error(
        "{} holds no node identity and no join token was given: the first start of a node needs --token-file (a copy of the server's DATA_DIR/node-token)",
        dir.display()
    )]
    NoToken {
        /// The agent's `pki` directory.
        dir: PathBuf,
    },
    /// The token file cannot be read.
    #[error("cannot read the join token {}: {source}", path.display())]
    TokenFile {
        /// The token file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The token file does not hold a node token.
    #[error("{}: {source}", path.display())]
    MalformedToken {
        /// The token file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: edgesite_api::join::MalformedToken,
    },
    /// The node name is not a DNS subdomain.
    #[error("{0} (--node-name)")]
    NodeName(String),
    /// The server's CA is not the one the token pins: wrong server, wrong token, or someone in
    /// between. Nothing secret was sent.
    #[error(
        "the server at {server} presents CA sha256:{actual} but the join token pins sha256:{pinned}: the server's CA differs from the token's pin (wrong server or wrong token); the token was not sent"
    )]
    CaPinMismatch {
        /// The server.
        server: String,
        /// The hash the token holds.
        pinned: String,
        /// The hash of the CA the server served.
        actual: String,
    },
    /// The server answered 401 to the join token.
    #[error(
        "the server at {server} rejected the join token ({message}); check --token-file against the server's DATA_DIR/node-token"
    )]
    TokenRejected {
        /// The server.
        server: String,
        /// The server's message.
        message: String,
    },
    /// The server refused the request for another reason (400, 403, ...).
    #[error("the server at {server} refused the node certificate request ({status}: {message})")]
    Refused {
        /// The server.
        server: String,
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The server's certificate is not signed by the CA the node trusts.
    #[error("server at {server} presents a certificate not signed by {trusted} ({detail})")]
    UntrustedServer {
        /// The server.
        server: String,
        /// Which CA: "the cluster CA this node joined (ADIR/pki/ca.crt)" or the pinned one.
        trusted: String,
        /// What rustls found.
        detail: String,
    },
    /// The server ended the TLS handshake with an alert: it does not accept this node's
    /// client certificate (expired, or from another cluster).
    #[error(
        "the server at {server} refused this node's client certificate in the TLS handshake ({alert}): it may have expired or belong to another cluster; join again with --token-file"
    )]
    CertificateRefused {
        /// The server.
        server: String,
        /// The TLS alert.
        alert: String,
    },
    /// The server cannot be reached (yet): retried.
    #[error("cannot reach the server at {server}: {reason}")]
    Unreachable {
        /// The server.
        server: String,
        /// What failed.
        reason: String,
    },
    /// The server answered with a 5xx or 429: retried.
    #[error("the server at {server} answered {status}: {message}")]
    ServerBusy {
        /// The server.
        server: String,
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The server answered something that is not what an EdgeSite server sends.
    #[error("the server at {server} sent {what}: is it an EdgeSite server?")]
    Protocol {
        /// The server.
        server: String,
        /// What was wrong.
        what: String,
    },
    /// A stored file is unusable; it was left untouched.
    #[error(
        "{} is not usable: {reason}; move {} away and join again with the token",
        path.display(),
        dir.display()
    )]
    Stored {
        /// The file.
        path: PathBuf,
        /// The agent's `pki` directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The stored identity is another node's.
    #[error(
        "{} holds the identity of node {stored:?}, not {wanted:?}: start with --node-name {stored}, or use another --data-dir",
        dir.display()
    )]
    OtherNode {
        /// The agent's `pki` directory.
        dir: PathBuf,
        /// The node name in the stored certificate.
        stored: String,
        /// The node name asked for.
        wanted: String,
    },
    /// The stored certificate expired and no token was given to join again.
    #[error(
        "the node certificate {} expired {} s ago; start with --token-file to join again",
        path.display(),
        ago.as_secs()
    )]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// How long ago.
        ago: Duration,
    },
    /// The server URL is not `https://HOST[:PORT]`.
    #[error("invalid server URL {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Generating the key or the CSR, or setting up TLS, failed.
    #[error("cannot {action}: {reason}")]
    Crypto {
        /// What was being done.
        action: &'static str,
        /// The error.
        reason: String,
    },
}

impl JoinError {
    /// Whether trying again later may succeed without anyone changing anything: the server is
    /// unreachable or overloaded. Everything else needs a person (a token, a flag, a file) and
    /// is reported at once.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::ServerBusy { .. })
    }
}

/// `https://HOST[:PORT]`, parsed once.
#[derive(Debug, Clone)]
struct ServerUrl {
    text: String,
    uri: Uri,
    host: String,
    port: u16,
}

impl ServerUrl {
    fn parse(url: &str) -> Result<Self, JoinError> {
        let bad = |reason: &str| JoinError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let text = url.trim_end_matches('/');
        let uri: Uri = text.parse().map_err(|e| bad(&format!("{e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("the scheme must be https"));
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(bad("a server URL has no path"));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Self {
            text: text.to_owned(),
            port: uri.port_u16().unwrap_or(443),
            host,
            uri,
        })
    }

    fn server_name(&self) -> Result<ServerName<'static>, JoinError> {
        ServerName::try_from(self.host.clone()).map_err(|e| JoinError::Url {
            url: self.text.clone(),
            reason: format!("invalid host: {e}"),
        })
    }
}

/// What the node holds: its certificate and key, and the cluster CA.
struct Stored {
    cert_der: CertificateDer<'static>,
    key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl fmt::Debug for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stored")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The client certificate rustls presents: swapped on renewal, read at every handshake.
#[derive(Debug)]
struct NodeCertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl NodeCertResolver {
    fn get(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        match self.current.write() {
            Ok(mut k) => *k = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
    }
}

impl ResolvesClientCert for NodeCertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<HttpConnector>,
    kube::client::Body,
>;

/// The node's identity in the cluster: its client certificate (renewed in place), the cluster
/// CA, and the server they belong to. Cheap to share (`Arc`).
pub struct Identity {
    server: ServerUrl,
    node_name: String,
    dir: PathBuf,
    ca_der: CertificateDer<'static>,
    /// Roots = the cluster CA, client certificate = the resolver.
    tls: Arc<ClientConfig>,
    resolver: Arc<NodeCertResolver>,
    state: Arc<RwLock<Current>>,
}

/// What renewal replaces.
struct Current {
    validity: (SystemTime, SystemTime),
    cert_der: CertificateDer<'static>,
    /// The connection pool of this certificate; a renewal starts a new one.
    http: HttpClient,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("server", &self.server.text)
            .field("node_name", &self.node_name)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Joins the cluster at `server` (`https://HOST:PORT`) as `node_name`, keeping the identity in
/// `dir` (`ADIR/pki`): uses the identity stored there by an earlier join (then `token_file` is
/// not read and may be missing), else joins with the token in `token_file`. Retryable errors
/// (an unreachable server at first join) are retried with back-off, 1 s doubling to 30 s with
/// jitter, with one log line per attempt; the others are returned at once.
pub async fn join(
    server: &str,
    token_file: Option<&Path>,
    node_name: &str,
    dir: &Path,
) -> Result<Identity, JoinError> {
    let server = ServerUrl::parse(server)?;
    validate_node_name(node_name).map_err(JoinError::NodeName)?;
    let clock = SystemClock;
    let mut backoff = Backoff::default();
    loop {
        match try_join(&server, token_file, node_name, dir, &clock).await {
            Err(err) if err.is_retryable() => {
                let delay = backoff.next_delay();
                warn!(
                    server = %server.text,
                    attempt = backoff.attempts,
                    retry_in_ms = delay.as_millis() as u64,
                    "waiting for the API server to join the cluster: {err}; retrying in {:.1} s",
                    delay.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

async fn try_join(
    server: &ServerUrl,
    token_file: Option<&Path>,
    node_name: &str,
    dir: &Path,
    clock: &dyn Clock,
) -> Result<Identity, JoinError> {
    let node_pem = dir.join(NODE_PEM_FILE);
    if node_pem.exists() {
        let (ca_der, stored) = load_stored(dir, node_name)?;
        let now = clock.now();
        match (now.duration_since(stored.not_after), token_file) {
            (Ok(ago), None) => {
                return Err(JoinError::Expired {
                    path: node_pem,
                    ago,
                });
            }
            (Ok(_), Some(_)) => {
                info!(path = %node_pem.display(), "the stored node certificate expired; joining again with the token");
            }
            (Err(_), _) => {
                let identity = Identity::new(server.clone(), node_name, dir, ca_der, stored)?;
                identity.check_server().await?;
                info!(
                    node = node_name,
                    path = %node_pem.display(),
                    "using the stored node identity"
                );
                return Ok(identity);
            }
        }
    }
    let Some(token_file) = token_file else {
        return Err(JoinError::NoToken {
            dir: dir.to_owned(),
        });
    };
    let text = std::fs::read_to_string(token_file).map_err(|source| JoinError::TokenFile {
        path: token_file.to_owned(),
        source,
    })?;
    let token = NodeToken::parse(&text).map_err(|source| JoinError::MalformedToken {
        path: token_file.to_owned(),
        source,
    })?;
    first_join(server, &token, node_name, dir).await
}

async fn first_join(
    server: &ServerUrl,
    token: &NodeToken,
    node_name: &str,
    dir: &Path,
) -> Result<Identity, JoinError> {
    // The CA, from whoever answers: trusted only once it matches the token's pin.
    let insecure = Arc::new(
        client_config_builder()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider())))
            .with_no_client_auth(),
    );
    let (status, body) = request(
        server,
        insecure,
        "any CA",
        Method::GET,
        CA_CERTS_PATH,
        None,
        None,
    )
    .await?;
    if status != StatusCode::OK {
        return Err(answer_error(server, status, &body));
    }
    let ca_der = first_cert(&body).ok_or_else(|| JoinError::Protocol {
        server: server.text.clone(),
        what: format!("no PEM certificate at {CA_CERTS_PATH}"),
    })?;
    if !token.pins(&ca_der) {
        return Err(JoinError::CaPinMismatch {
            server: server.text.clone(),
            pinned: token.ca_hash().to_owned(),
            actual: ca_hash(&ca_der),
        });
    }
    let verified = Arc::new(
        client_config_builder()?
            .with_root_certificates(roots(&ca_der, "the pinned CA")?)
            .with_no_client_auth(),
    );
    let (key_pem, csr) = new_key_and_csr(node_name)?;
    let (cert_der, cert_pem) = ask_for_certificate(
        server,
        verified,
        "the cluster CA the join token pins",
        node_name,
        csr,
        Some(token.secret()),
        &ca_der,
    )
    .await?;
    let stored = stored_from_pem(&cert_der, &key_pem, &dir.join(NODE_PEM_FILE), dir)?;
    create_dir(dir)?;
    let ca_pem = pem_encode("CERTIFICATE", &ca_der);
    write_atomic(&dir.join(CA_FILE), ca_pem.as_bytes(), 0o644)?;
    write_atomic(
        &dir.join(NODE_PEM_FILE),
        format!("{cert_pem}{key_pem}").as_bytes(),
        0o600,
    )?;
    info!(
        node = node_name,
        server = %server.text,
        dir = %dir.display(),
        "joined the cluster: node client certificate stored"
    );
    Identity::new(server.clone(), node_name, dir, ca_der, stored)
}

/// Sends a CSR to the node-certificate endpoint; returns the new certificate (DER and PEM).
/// The CA in the answer must be `ca_der`: the cluster CA never changes under a node. (That the
/// certificate is for the CSR's key is checked when it is paired with the key.)
async fn ask_for_certificate(
    server: &ServerUrl,
    tls: Arc<ClientConfig>,
    trusted: &str,
    node_name: &str,
    csr: String,
    bearer: Option<&str>,
    ca_der: &CertificateDer<'static>,
) -> Result<(CertificateDer<'static>, String), JoinError> {
    let body = serde_json::to_vec(&NodeCertificateRequest {
        node_name: node_name.to_owned(),
        csr,
    })
    .map_err(|e| JoinError::Crypto {
        action: "encode the request",
        reason: e.to_string(),
    })?;
    let (status, answer) = request(
        server,
        tls,
        trusted,
        Method::POST,
        NODE_CERTIFICATE_PATH,
        bearer,
        Some(body),
    )
    .await?;
    if status != StatusCode::OK {
        return Err(answer_error(server, status, &answer));
    }
    let protocol = |what: String| JoinError::Protocol {
        server: server.text.clone(),
        what,
    };
    let response: NodeCertificateResponse = serde_json::from_slice(&answer)
        .map_err(|e| protocol(format!("an unreadable node certificate answer ({e})")))?;
    let cert_der = first_cert(response.certificate.as_bytes())
        .ok_or_else(|| protocol("no certificate in its answer".to_owned()))?;
    if first_cert(response.ca_certificate.as_bytes()).as_ref() != Some(ca_der) {
        return Err(protocol(
            "another CA in its answer than the one it presents".to_owned(),
        ));
    }
    Ok((cert_der, response.certificate))
}

impl Identity {
    fn new(
        server: ServerUrl,
        node_name: &str,
        dir: &Path,
        ca_der: CertificateDer<'static>,
        stored: Stored,
    ) -> Result<Self, JoinError> {
        let resolver = Arc::new(NodeCertResolver {
            current: RwLock::new(stored.key.clone()),
        });
        let mut tls = client_config_builder()?
            .with_root_certificates(roots(&ca_der, "the cluster CA")?)
            .with_client_cert_resolver(resolver.clone());
        // A resumed TLS session carries the client certificate of the session it resumes: the
        // renewal requests never resume, and each pool has a session cache of its own
        // (`http_client`), so no connection presents a certificate that was replaced.
        tls.resumption = rustls::client::Resumption::disabled();
        let tls = Arc::new(tls);
        let http = http_client(&tls);
        Ok(Self {
            server,
            node_name: node_name.to_owned(),
            dir: dir.to_owned(),
            ca_der,
            tls,
            resolver,
            state: Arc::new(RwLock::new(Current {
                validity: (stored.not_before, stored.not_after),
                cert_der: stored.cert_der,
                http,
            })),
        })
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The server URL the identity belongs to.
    pub fn server(&self) -> &str {
        &self.server.text
    }

    /// The cluster CA certificate, DER.
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// The current client certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.read_state(|c| c.cert_der.clone())
    }

    /// When the current client certificate becomes valid and expires.
    pub fn validity(&self) -> (SystemTime, SystemTime) {
        self.read_state(|c| c.validity)
    }

    fn read_state<T>(&self, f: impl FnOnce(&Current) -> T) -> T {
        match self.state.read() {
            Ok(c) => f(&c),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// The TLS configuration of connections to the server: the cluster CA as the only root,
    /// the node certificate as the client certificate (following renewals).
    pub fn tls_config(&self) -> Arc<ClientConfig> {
        self.tls.clone()
    }

    /// A kube client for the server, authenticated by the node certificate, with `default` as
    /// its default namespace. It follows renewals: requests after a renewal go out on new
    /// connections with the new certificate. Must be called inside a tokio runtime.
    pub fn client(&self) -> kube::Client {
        use kube::client::ConfigExt as _;
        let config = kube::Config::new(self.server.uri.clone());
        let service = tower::ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .service(CurrentPool(self.state.clone()));
        kube::client::ClientBuilder::new(service, "default").build()
    }

    /// Connects once to the server with the stored identity: a server whose certificate the
    /// cluster CA did not sign is a terminal error; an unreachable one is only logged (the
    /// agent works from its local state until the server is back).
    async fn check_server(&self) -> Result<(), JoinError> {
        let trusted = format!(
            "the cluster CA this node joined ({})",
            self.dir.join(CA_FILE).display()
        );
        match request(
            &self.server,
            self.tls.clone(),
            &trusted,
            Method::GET,
            "/version",
            None,
            None,
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(err) if err.is_retryable() => {
                warn!(server = %self.server.text, "the server is not reachable now ({err}); starting with the stored node identity");
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Renews the certificate once: a new key, a CSR authenticated by the current certificate,
    /// the new pair written atomically, then the resolver and the connection pool swapped.
    pub async fn renew(&self) -> Result<(), JoinError> {
        let (key_pem, csr) = new_key_and_csr(&self.node_name)?;
        let trusted = format!(
            "the cluster CA this node joined ({})",
            self.dir.join(CA_FILE).display()
        );
        let (cert_der, cert_pem) = ask_for_certificate(
            &self.server,
            self.tls.clone(),
            &trusted,
            &self.node_name,
            csr,
            None,
            &self.ca_der,
        )
        .await?;
        let path = self.dir.join(NODE_PEM_FILE);
        let stored = stored_from_pem(&cert_der, &key_pem, &path, &self.dir)?;
        write_atomic(&path, format!("{cert_pem}{key_pem}").as_bytes(), 0o600)?;
        self.resolver.set(stored.key.clone());
        let http = http_client(&self.tls);
        match self.state.write() {
            Ok(mut c) => {
                c.validity = (stored.not_before, stored.not_after);
                c.cert_der = stored.cert_der;
                c.http = http;
            }
            Err(poisoned) => {
                let mut c = poisoned.into_inner();
                c.validity = (stored.not_before, stored.not_after);
                c.cert_der = stored.cert_der;
                c.http = http;
            }
        }
        info!(
            node = %self.node_name,
            expires_in_s = stored.not_after.duration_since(SystemClock.now()).unwrap_or_default().as_secs(),
            "renewed the node client certificate"
        );
        Ok(())
    }

    /// Renews the certificate for as long as it runs: at a random point between 70 % and 80 %
    /// of the current certificate's life, then again for the new one. A failed renewal is
    /// retried with back-off (1 s doubling to 30 s); the old certificate stays in use until a
    /// new one arrives, even past its expiry (then the server refuses it and the logs say so).
    pub async fn run_renewal(self: Arc<Self>, clock: Arc<dyn Clock>) {
        let mut rng = edgesite_clock::Rng::new();
        loop {
            let (not_before, not_after) = self.validity();
            let at = renewal_time(not_before, not_after, 0.7 + 0.1 * rng.fraction());
            let wait = at.duration_since(clock.now()).unwrap_or_default();
            info!(
                node = %self.node_name,
                renew_in_s = wait.as_secs(),
                "next node certificate renewal"
            );
            tokio::time::sleep(wait).await;
            let mut backoff = Backoff::default();
            while let Err(err) = self.renew().await {
                let delay = backoff.next_delay();
                let expired = clock.now() >= not_after;
                warn!(
                    node = %self.node_name,
                    expired,
                    attempt = backoff.attempts,
                    "cannot renew the node client certificate: {err}; retrying in {:.1} s",
                    delay.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// `not_before + fraction × (not_after − not_before)`.
fn renewal_time(not_before: SystemTime, not_after: SystemTime, fraction: f64) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    not_before + life.mul_f64(fraction.clamp(0.0, 1.0))
}

/// The kube client's transport: every request goes to the pool of the current certificate.
#[derive(Clone)]
struct CurrentPool(Arc<RwLock<Current>>);

impl tower::Service<hyper::Request<kube::client::Body>> for CurrentPool {
    type Response = hyper::Response<hyper::body::Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: hyper::Request<kube::client::Body>) -> Self::Future {
        let http = match self.0.read() {
            Ok(c) => c.http.clone(),
            Err(poisoned) => poisoned.into_inner().http.clone(),
        };
        http.request(req)
    }
}

fn http_client(tls: &Arc<ClientConfig>) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_nodelay(true);
    // Edge links die silently; keep-alive probes notice.
    http.set_keepalive(Some(Duration::from_secs(30)));
    let mut config = (**tls).clone();
    config.resumption = rustls::client::Resumption::default();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https)
}

/// One HTTP/1.1 request over a fresh TLS connection, with errors sorted into what a retry may
/// fix (connect, reset, timeout) and what it cannot (an untrusted server certificate).
#[allow(clippy::too_many_arguments)]
async fn request(
    server: &ServerUrl,
    tls: Arc<ClientConfig>,
    trusted: &str,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Bytes), JoinError> {
    let unreachable = |reason: String| JoinError::Unreachable {
        server: server.text.clone(),
        reason,
    };
    let exchange = async {
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((server.host.as_str(), server.port)),
        )
        .await
        .map_err(|_| unreachable("connect timed out".to_owned()))?
        .map_err(|e| unreachable(format!("connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(server.server_name()?, tcp)
            .await
            .map_err(|e| handshake_error(server, trusted, e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(format!("HTTP handshake: {e}")))?;
        tokio::spawn(conn);
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(
                hyper::header::HOST,
                server.uri.authority().map_or("", |a| a.as_str()),
            )
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(token) = bearer {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = builder
            .body(http_body_util::Full::new(Bytes::from(
                body.unwrap_or_default(),
            )))
            .map_err(|e| JoinError::Crypto {
                action: "build the request",
                reason: e.to_string(),
            })?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(format!("request: {e}")))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(format!("response: {e}")))?
            .to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())))?
}

fn handshake_error(server: &ServerUrl, trusted: &str, err: io::Error) -> JoinError {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
        | Some(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForNameContext { .. },
        )) => JoinError::UntrustedServer {
            server: server.text.clone(),
            trusted: trusted.to_owned(),
            detail: format!(
                "signed, but not valid for host {:?}: add it to the server's certificate SANs",
                server.host
            ),
        },
        Some(rustls::Error::InvalidCertificate(e)) => JoinError::UntrustedServer {
            server: server.text.clone(),
            trusted: trusted.to_owned(),
            detail: format!("{e:?}"),
        },
        Some(rustls::Error::AlertReceived(alert)) => JoinError::CertificateRefused {
            server: server.text.clone(),
            alert: format!("{alert:?}"),
        },
        _ => JoinError::Unreachable {
            server: server.text.clone(),
            reason: format!("TLS handshake: {err}"),
        },
    }
}

/// The error for a non-200 answer, with the `metav1.Status` message when there is one.
fn answer_error(server: &ServerUrl, status: StatusCode, body: &[u8]) -> JoinError {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect());
    let server = server.text.clone();
    match status {
        StatusCode::UNAUTHORIZED => JoinError::TokenRejected { server, message },
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => JoinError::ServerBusy {
            server,
            status: s.as_u16(),
            message,
        },
        s => JoinError::Refused {
            server,
            status: s.as_u16(),
            message,
        },
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config_builder()
-> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, JoinError> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| JoinError::Crypto {
            action: "set up TLS",
            reason: e.to_string(),
        })
}

fn roots(ca_der: &CertificateDer<'static>, what: &str) -> Result<RootCertStore, JoinError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca_der.clone()).map_err(|e| JoinError::Crypto {
        action: "trust the cluster CA",
        reason: format!("{what}: {e}"),
    })?;
    Ok(roots)
}

/// Accepts any server certificate (the handshake's signatures are still checked): only for
/// fetching the CA that is then compared with the token's pin.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A fresh ECDSA P-256 key (PKCS#8 PEM) and a CSR for it naming the node.
fn new_key_and_csr(node_name: &str) -> Result<(String, String), JoinError> {
    let crypto = |action: &'static str| {
        move |e: rcgen::Error| JoinError::Crypto {
            action,
            reason: e.to_string(),
        }
    };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(crypto("generate a key"))?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(crypto("make the CSR"))?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        format!("{NODE_USER_PREFIX}{node_name}"),
    );
    dn.push(rcgen::DnType::OrganizationName, NODES_GROUP);
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .map_err(crypto("sign the CSR"))?
        .pem()
        .map_err(crypto("encode the CSR"))?;
    Ok((key.serialize_pem(), csr))
}

/// Reads `dir`'s identity: the CA, the node's certificate and key; checks that they belong
/// together and to `node_name`.
fn load_stored(
    dir: &Path,
    node_name: &str,
) -> Result<(CertificateDer<'static>, Stored), JoinError> {
    let ca_path = dir.join(CA_FILE);
    let node_path = dir.join(NODE_PEM_FILE);
    let stored_err = |path: &Path, reason: String| JoinError::Stored {
        path: path.to_owned(),
        dir: dir.to_owned(),
        reason,
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| stored_err(path, format!("cannot read it: {e}")))
    };
    let ca_der = first_cert(&read(&ca_path)?)
        .ok_or_else(|| stored_err(&ca_path, "no PEM certificate in it".to_owned()))?;
    let node = read(&node_path)?;
    let cert_der = first_cert(&node)
        .ok_or_else(|| stored_err(&node_path, "no PEM certificate in it".to_owned()))?;
    let key_pem = String::from_utf8_lossy(&node).into_owned();
    let stored = stored_from_pem(&cert_der, &key_pem, &node_path, dir)?;
    // The certificate must be the cluster CA's, and this node's.
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)
        .map_err(|e| stored_err(&ca_path, format!("not an X.509 certificate: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
        .map_err(|e| stored_err(&node_path, format!("not an X.509 certificate: {e}")))?;
    cert.verify_signature(Some(ca.public_key())).map_err(|_| {
        stored_err(
            &node_path,
            format!("the certificate is not signed by {}", ca_path.display()),
        )
    })?;
    let stored_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .and_then(|cn| cn.strip_prefix(NODE_USER_PREFIX))
        .ok_or_else(|| stored_err(&node_path, "not a node certificate".to_owned()))?;
    if stored_name != node_name {
        return Err(JoinError::OtherNode {
            dir: dir.to_owned(),
            stored: stored_name.to_owned(),
            wanted: node_name.to_owned(),
        });
    }
    Ok((ca_der, stored))
}

/// The certificate with the key in `key_pem` (a PEM text holding a PKCS#8 key), checked to
/// belong together.
fn stored_from_pem(
    cert_der: &CertificateDer<'static>,
    key_pem: &str,
    path: &Path,
    dir: &Path,
) -> Result<Stored, JoinError> {
    let stored_err = |reason: String| JoinError::Stored {
        path: path.to_owned(),
        dir: dir.to_owned(),
        reason,
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| stored_err(format!("no private key: {e}")))?;
    let certified = CertifiedKey::from_der(vec![cert_der.clone()], key, &provider())
        .map_err(|e| stored_err(format!("the key does not fit the certificate: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| stored_err(format!("not an X.509 certificate: {e}")))?;
    let time = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    Ok(Stored {
        cert_der: cert_der.clone(),
        key: Arc::new(certified),
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
    })
}

fn first_cert(pem: &[u8]) -> Option<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem).next()?.ok()
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn create_dir(dir: &Path) -> Result<(), JoinError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| JoinError::Io {
            action: "create directory",
            path: dir.to_owned(),
            source,
        })
}

/// Writes through a temporary file and a rename, so a reader or a crash sees the old file or
/// the complete new one; the file has `mode` from its creation.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), JoinError> {
    use std::io::Write as _;
    let io_err = |source| JoinError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}

/// 1 s doubling to 30 s, each delay stretched by up to a quarter at random so that many nodes
/// coming back at once do not call in step.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    attempts: u32,
    rng: edgesite_clock::Rng,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_START,
            attempts: 0,
            rng: edgesite_clock::Rng::new(),
        }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        self.attempts += 1;
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        (base + base.mul_f64(0.25 * self.rng.fraction())).min(BACKOFF_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_to_thirty_seconds_with_jitter() {
        let mut b = Backoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        for (d, base) in delays.iter().zip([1, 2, 4, 8, 16, 30, 30, 30]) {
            let base = Duration::from_secs(base);
            assert!(
                *d >= base && *d <= (base + base / 4).min(BACKOFF_MAX),
                "{d:?} vs {base:?}"
            );
        }
    }

    #[test]
    fn renewal_falls_in_the_last_part_of_the_life() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let na = nb + Duration::from_secs(100);
        assert_eq!(renewal_time(nb, na, 0.7), nb + Duration::from_secs(70));
        assert_eq!(renewal_time(nb, na, 2.0), na);
        assert_eq!(
            renewal_time(na, nb, 0.7),
            na,
            "an inverted validity renews at once"
        );
    }

    #[test]
    fn server_urls() {
        let u = ServerUrl::parse("https://127.0.0.1:6443/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 6443));
        assert_eq!(ServerUrl::parse("https://[::1]").unwrap().host, "::1");
        assert!(ServerUrl::parse("http://h:1").is_err());
        assert!(ServerUrl::parse("https://h:1/api").is_err());
    }

    #[test]
    fn only_unreachable_and_busy_are_retried() {
        let s = || "https://x".to_owned();
        assert!(
            JoinError::Unreachable {
                server: s(),
                reason: "r".into()
            }
            .is_retryable()
        );
        assert!(
            JoinError::ServerBusy {
                server: s(),
                status: 503,
                message: "m".into()
            }
            .is_retryable()
        );
        assert!(
            !JoinError::TokenRejected {
                server: s(),
                message: "m".into()
            }
            .is_retryable()
        );
        assert!(
            !JoinError::CaPinMismatch {
                server: s(),
                pinned: "a".into(),
                actual: "b".into()
            }
            .is_retryable()
        );
    }

    #[test]
    fn csrs_carry_the_node_name_and_a_fresh_key() {
        let (key, csr) = new_key_and_csr("n1").unwrap();
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
        let (_, second) = new_key_and_csr("n1").unwrap();
        assert_ne!(csr, second);
        assert!(key.contains("PRIVATE KEY"));
        let dn = format!("{:?}", parsed.params.distinguished_name);
        assert!(dn.contains("system:node:n1"), "{dn}");
    }

    #[test]
    fn pem_round_trip() {
        let pem = pem_encode("CERTIFICATE", &[1, 2, 3, 4]);
        assert_eq!(first_cert(pem.as_bytes()).unwrap().as_ref(), &[1, 2, 3, 4]);
    }
}
