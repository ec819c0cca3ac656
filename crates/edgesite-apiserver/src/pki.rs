//! The cluster PKI: a CA, the API server's serving certificate and the admin client certificate,
//! kept in `DATA_DIR/pki/`.
//!
//! The first start creates everything; later starts reuse the files. The serving certificate is
//! reissued (by the same CA) when its SANs no longer cover the requested names or it expires within
//! [`RENEW_BEFORE`]; the admin certificate likewise when it is about to expire. Both are also
//! reissued when they were not signed by the CA or only half of a pair exists. A file that is
//! unreadable or corrupt (or a key that does not match its certificate), and a CA pair that is
//! half present, are never replaced: [`ClusterPki::load_or_create`] fails with a [`PkiError`]
//! naming the file and leaves it untouched.
//!
//! Client identities follow Kubernetes: the certificate's CN is the user name and each O is a
//! group ([`client_identity`]).

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ServerConfig, VerifierBuilderError, WebPkiClientVerifier};
use time::OffsetDateTime;
use tracing::{info, warn};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::fsutil::{PRIVATE_MODE, PUBLIC_MODE, write_atomic};

/// Validity of a newly created cluster CA (10 years).
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of the serving and admin certificates (1 year).
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Leaf certificates expiring within this window are reissued at start-up.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// New certificates are valid from this long before "now" (a tenth of their validity at most),
/// to tolerate clock skew.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// CN of the cluster CA.
pub const CA_COMMON_NAME: &str = "edgesite-ca";
/// User name of the admin client certificate.
pub const ADMIN_USER: &str = "kubernetes-admin";
/// Group of the admin client certificate (bound to cluster-admin by RBAC).
pub const ADMIN_GROUP: &str = "system:masters";
/// CN of the serving certificate, as kube-apiserver's.
const SERVER_COMMON_NAME: &str = "kube-apiserver";
/// Names the in-cluster `kubernetes` service is reached by; always in the serving certificate.
pub const KUBERNETES_SERVICE_NAMES: [&str; 4] = [
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// What the serving certificate must cover.
#[derive(Debug, Clone)]
pub struct PkiOptions {
    /// The host's name; `None` asks the system (`gethostname`).
    pub hostname: Option<String>,
    /// Further DNS names or IP addresses (e.g. an external address, a load balancer name, the
    /// `kubernetes` service's cluster IP).
    pub extra_sans: Vec<String>,
    /// Also include every address of the host's interfaces that are up (link-local IPv6
    /// addresses excepted).
    pub include_interface_ips: bool,
}

impl Default for PkiOptions {
    fn default() -> Self {
        Self {
            hostname: None,
            extra_sans: Vec::new(),
            include_interface_ips: true,
        }
    }
}

/// Why the PKI could not be loaded, created or used.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file or directory could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An existing file is not what it should be; it was left untouched.
    #[error(
        "{} is not usable: {reason}; refusing to overwrite it (fix or move it away, then restart)",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Only one half of the CA's certificate and key exists; nothing was created over it.
    #[error(
        "incomplete cluster CA: {} exists but {} does not; refusing to create a new CA \
         (restore the missing file, or remove both to start a new cluster CA)",
        present.display(),
        missing.display()
    )]
    IncompleteCa {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// The cluster CA has expired; every certificate it signed is useless.
    #[error("cluster CA {} has expired", path.display())]
    CaExpired {
        /// The CA certificate.
        path: PathBuf,
    },
    /// A requested subject alternative name is neither an IP address nor a DNS name.
    #[error("invalid subject alternative name {0:?}")]
    InvalidSan(String),
    /// More than one group was asked for in a client certificate: rcgen keeps one value per
    /// attribute type in a subject, so a certificate carries at most one O here.
    #[error("client certificate for {user:?} asks for {count} groups; at most one is supported")]
    TooManyGroups {
        /// The user (CN).
        user: String,
        /// How many groups were asked for.
        count: usize,
    },
    /// A requested validity does not fit in a certificate.
    #[error("invalid certificate validity {0:?}")]
    InvalidValidity(Duration),
    /// Generating a key or signing a certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected the certificate or key.
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] VerifierBuilderError),
}

type Result<T, E = PkiError> = std::result::Result<T, E>;

/// A client certificate and its key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The PKCS#8 private key, PEM.
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A certificate with its key, as loaded or created.
struct Pair {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
}

/// The cluster CA, the serving certificate and the admin certificate, loaded from (and kept in)
/// `DATA_DIR/pki/`.
pub struct ClusterPki {
    dir: PathBuf,
    ca_cert_pem: String,
    ca_cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    server: Pair,
    admin: Pair,
}

impl fmt::Debug for ClusterPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterPki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// File names under `pki/`.
const CA: &str = "ca";
const SERVER: &str = "server";
const ADMIN: &str = "admin";

impl ClusterPki {
    /// Loads the PKI from `data_dir/pki/`, creating what is missing and reissuing leaf
    /// certificates that are stale (see the module docs).
    pub fn load_or_create(data_dir: &Path, opts: &PkiOptions) -> Result<Self> {
        let dir = data_dir.join("pki");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| PkiError::Io {
                action: "create directory",
                path: dir.clone(),
                source,
            })?;

        let Pair {
            cert_pem: ca_cert_pem,
            cert_der: ca_cert_der,
            key: ca_key,
        } = load_or_create_ca(&dir)?;
        let issuer = Issuer::from_ca_cert_der(&ca_cert_der, ca_key)
            .map_err(|err| corrupt(&paths(&dir, CA).0, format!("unusable as an issuer: {err}")))?;
        let wanted = wanted_sans(opts)?;

        let server = load_or_issue_leaf(&dir, SERVER, &ca_cert_der, |cert| {
            let present = cert_sans(cert);
            let missing: Vec<String> = wanted
                .iter()
                .filter(|san| !present.contains(*san))
                .map(San::to_string)
                .collect();
            if missing.is_empty() {
                None
            } else {
                Some(format!("SANs do not cover {}", missing.join(", ")))
            }
        })?;
        let server = match server {
            Some(pair) => pair,
            None => {
                let mut params = leaf_params(SERVER_COMMON_NAME, &[], LEAF_VALIDITY)?;
                params.subject_alt_names =
                    wanted.iter().map(San::to_rcgen).collect::<Result<_>>()?;
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                let pair = issue(&params, &issuer)?;
                store_pair(&dir, SERVER, &pair)?;
                info!(
                    sans = %wanted.iter().map(San::to_string).collect::<Vec<_>>().join(","),
                    "issued API server serving certificate"
                );
                pair
            }
        };

        let admin = load_or_issue_leaf(&dir, ADMIN, &ca_cert_der, |cert| {
            let expected = (ADMIN_USER.to_owned(), vec![ADMIN_GROUP.to_owned()]);
            (identity_of(cert).as_ref() != Some(&expected))
                .then(|| format!("subject is not CN={ADMIN_USER}, O={ADMIN_GROUP}"))
        })?;
        let admin = match admin {
            Some(pair) => pair,
            None => {
                let params = client_params(ADMIN_USER, &[ADMIN_GROUP], LEAF_VALIDITY)?;
                let pair = issue(&params, &issuer)?;
                store_pair(&dir, ADMIN, &pair)?;
                info!("issued admin client certificate");
                pair
            }
        };

        Ok(Self {
            dir,
            ca_cert_pem,
            ca_cert_der,
            issuer,
            server,
            admin,
        })
    }

    /// The directory holding the files (`DATA_DIR/pki`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster CA certificate, PEM.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The cluster CA certificate, DER.
    pub fn ca_cert_der(&self) -> &CertificateDer<'static> {
        &self.ca_cert_der
    }

    /// The serving certificate, PEM.
    pub fn server_cert_pem(&self) -> &str {
        &self.server.cert_pem
    }

    /// The serving certificate, DER.
    pub fn server_cert_der(&self) -> &CertificateDer<'static> {
        &self.server.cert_der
    }

    /// The admin client certificate and key (CN=`kubernetes-admin`, O=`system:masters`).
    pub fn admin_cert(&self) -> IssuedCert {
        IssuedCert {
            cert_pem: self.admin.cert_pem.clone(),
            key_pem: self.admin.key.serialize_pem(),
        }
    }

    /// Issues a client certificate for `user` in `groups` (CN=user, O=the group), valid for
    /// `validity`, signed by the cluster CA. Nothing is written to disk. At most one group
    /// ([`PkiError::TooManyGroups`]): rcgen writes one value per subject attribute type.
    pub fn issue_client_cert(
        &self,
        user: &str,
        groups: &[&str],
        validity: Duration,
    ) -> Result<IssuedCert> {
        let params = client_params(user, groups, validity)?;
        let pair = issue(&params, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: pair.cert_pem,
            key_pem: pair.key.serialize_pem(),
        })
    }

    /// Issues a node agent's client certificate: CN=`system:node:<node_name>`,
    /// O=`system:nodes`, as the node authorizer expects.
    pub fn issue_node_cert(&self, node_name: &str, validity: Duration) -> Result<IssuedCert> {
        self.issue_client_cert(
            &format!("system:node:{node_name}"),
            &["system:nodes"],
            validity,
        )
    }

    /// Signs a node agent's client certificate for the public key of `csr_pem` (a PKCS#10
    /// request, PEM, whose signature must verify): CN=`system:node:<node_name>`,
    /// O=`system:nodes`, client-auth usage, valid for `validity`, whatever subject, SANs or
    /// extensions the request asks for. The agent keeps its private key. Returns the
    /// certificate, PEM.
    pub fn sign_node_csr(
        &self,
        node_name: &str,
        csr_pem: &str,
        validity: Duration,
    ) -> Result<String> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params = client_params(
            &format!("{}{node_name}", edgesite_api::join::NODE_USER_PREFIX),
            &[edgesite_api::join::NODES_GROUP],
            validity,
        )?;
        Ok(csr.signed_by(&self.issuer)?.pem())
    }

    /// A rustls server configuration serving the serving certificate, offering ALPN `h2` and
    /// `http/1.1`, and asking for client certificates signed by the cluster CA without requiring
    /// one (so bearer tokens still work). Uses the ring crypto provider.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_cert_der.clone())?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server.key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.server.cert_der.clone()], key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The Kubernetes identity in a client certificate: the first CN is the user, each O a group.
///
/// This only reads the subject; the chain must already have been verified (rustls's client
/// verifier does that during the handshake). `None` if the certificate does not parse or has no
/// CN.
pub fn client_identity(cert_der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    identity_of(&cert)
}

fn identity_of(cert: &X509Certificate<'_>) -> Option<(String, Vec<String>)> {
    let subject = cert.subject();
    let user = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some((user, groups))
}

/// A subject alternative name, normalised (DNS names lower-case).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        let valid = !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'*')
            });
        if valid {
            Ok(Self::Dns(s.to_ascii_lowercase()))
        } else {
            Err(PkiError::InvalidSan(s.to_owned()))
        }
    }

    fn to_rcgen(&self) -> Result<SanType> {
        Ok(match self {
            Self::Dns(name) => SanType::DnsName(name.as_str().try_into()?),
            Self::Ip(ip) => SanType::IpAddress(*ip),
        })
    }
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => f.write_str(name),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// The SANs the serving certificate must have.
fn wanted_sans(opts: &PkiOptions) -> Result<BTreeSet<San>> {
    let mut sans = BTreeSet::new();
    let hostname = match &opts.hostname {
        Some(name) => Some(name.clone()),
        None => match nix::unistd::gethostname() {
            Ok(name) => Some(name.to_string_lossy().into_owned()),
            Err(err) => {
                warn!(%err, "cannot read the hostname; leaving it out of the serving certificate");
                None
            }
        },
    };
    if let Some(name) = hostname.filter(|n| !n.is_empty()) {
        match San::parse(&name) {
            Ok(san) => {
                sans.insert(san);
            }
            // The system hostname is not ours to validate; an explicit one is.
            Err(err) if opts.hostname.is_some() => return Err(err),
            Err(_) => warn!(hostname = %name, "hostname is not a valid DNS name; leaving it out"),
        }
    }
    sans.insert(San::Dns("localhost".to_owned()));
    sans.insert(San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    sans.insert(San::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    for name in KUBERNETES_SERVICE_NAMES {
        sans.insert(San::Dns(name.to_owned()));
    }
    for extra in &opts.extra_sans {
        sans.insert(San::parse(extra)?);
    }
    if opts.include_interface_ips {
        sans.extend(interface_ips().into_iter().map(San::Ip));
    }
    Ok(sans)
}

/// Addresses of the host's interfaces that are up, without IPv6 link-local ones (they need a
/// zone and are useless in a certificate). Empty, with a warning, if they cannot be listed.
fn interface_ips() -> Vec<IpAddr> {
    use nix::net::if_::InterfaceFlags;
    let addrs = match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs,
        Err(err) => {
            warn!(%err, "cannot list network interfaces; their addresses are left out of the serving certificate");
            return Vec::new();
        }
    };
    addrs
        .filter(|ifa| ifa.flags.contains(InterfaceFlags::IFF_UP))
        .filter_map(|ifa| {
            let addr = ifa.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_unspecified(),
            IpAddr::V6(v6) => !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect()
}

/// The SANs a certificate has.
fn cert_sans(cert: &X509Certificate<'_>) -> BTreeSet<San> {
    let mut sans = BTreeSet::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(dns) => {
                    sans.insert(San::Dns(dns.to_ascii_lowercase()));
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    sans.extend(ip.map(San::Ip));
                }
                _ => {}
            }
        }
    }
    sans
}

fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    )
}

fn exists(path: &Path) -> Result<bool> {
    path.try_exists().map_err(|source| PkiError::Io {
        action: "inspect",
        path: path.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<String> {
    let bytes = fs::read(path).map_err(|source| PkiError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| PkiError::Corrupt {
        path: path.to_owned(),
        reason: "not a PEM text file".to_owned(),
    })
}

fn corrupt(path: &Path, reason: impl fmt::Display) -> PkiError {
    PkiError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Reads and checks a certificate and its key: both parse and belong together.
fn read_pair(crt_path: &Path, key_path: &Path) -> Result<Pair> {
    let cert_pem = read(crt_path)?;
    let key_pem = read(key_path)?;
    tighten_key_mode(key_path)?;
    let cert_der = parse_cert_pem(&cert_pem).map_err(|reason| corrupt(crt_path, reason))?;
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|err| corrupt(key_path, format!("not a private key: {err}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
        .map_err(|err| corrupt(crt_path, format!("not an X.509 certificate: {err}")))?;
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(corrupt(
            key_path,
            format!("key does not match {}", crt_path.display()),
        ));
    }
    Ok(Pair {
        cert_pem,
        cert_der,
        key,
    })
}

/// The DER of the single certificate in `pem`.
fn parse_cert_pem(pem: &str) -> Result<CertificateDer<'static>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut certs = CertificateDer::pem_slice_iter(pem.as_bytes());
    match certs.next() {
        Some(Ok(der)) => Ok(der),
        Some(Err(err)) => Err(format!("bad PEM: {err}")),
        None => Err("no CERTIFICATE block".to_owned()),
    }
}

/// Restricts an existing key file to its owner if it is readable by others.
fn tighten_key_mode(path: &Path) -> Result<()> {
    let mode = fs::metadata(path)
        .map_err(|source| PkiError::Io {
            action: "inspect",
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "private key was accessible to others; setting mode 0600");
        fs::set_permissions(path, Permissions::from_mode(PRIVATE_MODE)).map_err(|source| {
            PkiError::Io {
                action: "set permissions of",
                path: path.to_owned(),
                source,
            }
        })?;
    }
    Ok(())
}

fn load_or_create_ca(dir: &Path) -> Result<Pair> {
    let (crt_path, key_path) = paths(dir, CA);
    match (exists(&crt_path)?, exists(&key_path)?) {
        (true, true) => {
            let pair = read_pair(&crt_path, &key_path)?;
            let (_, cert) = x509_parser::parse_x509_certificate(&pair.cert_der)
                .map_err(|err| corrupt(&crt_path, err))?;
            let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
            if !is_ca {
                return Err(corrupt(&crt_path, "not a CA certificate"));
            }
            match cert.validity().time_to_expiration() {
                None => return Err(PkiError::CaExpired { path: crt_path }),
                Some(left) if left < RENEW_BEFORE => {
                    warn!(path = %crt_path.display(), "cluster CA expires within 30 days");
                }
                Some(_) => {}
            }
            Ok(pair)
        }
        (false, false) => {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::CommonName, CA_COMMON_NAME);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            set_validity(&mut params, CA_VALIDITY)?;
            let cert = params.self_signed(&key)?;
            let pair = Pair {
                cert_pem: cert.pem(),
                cert_der: cert.der().clone(),
                key,
            };
            store_pair(dir, CA, &pair)?;
            info!(dir = %dir.display(), "created cluster CA");
            Ok(pair)
        }
        (true, false) => Err(PkiError::IncompleteCa {
            present: crt_path,
            missing: key_path,
        }),
        (false, true) => Err(PkiError::IncompleteCa {
            present: key_path,
            missing: crt_path,
        }),
    }
}

/// Loads the leaf pair `name` if it exists, parses, was issued by the CA, is not about to expire
/// and passes `stale` (which returns why it is stale). `None` means: issue a new one.
fn load_or_issue_leaf(
    dir: &Path,
    name: &str,
    ca_cert_der: &CertificateDer<'static>,
    stale: impl Fn(&X509Certificate<'_>) -> Option<String>,
) -> Result<Option<Pair>> {
    let (crt_path, key_path) = paths(dir, name);
    match (exists(&crt_path)?, exists(&key_path)?) {
        (true, true) => {}
        (false, false) => return Ok(None),
        (present, _) => {
            let (have, lacking) = if present {
                (&crt_path, &key_path)
            } else {
                (&key_path, &crt_path)
            };
            warn!(present = %have.display(), missing = %lacking.display(), "incomplete certificate pair; reissuing it");
            return Ok(None);
        }
    }
    let pair = read_pair(&crt_path, &key_path)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&pair.cert_der)
        .map_err(|err| corrupt(&crt_path, err))?;
    let (_, ca_cert) = x509_parser::parse_x509_certificate(ca_cert_der)
        .map_err(|err| corrupt(&dir.join("ca.crt"), err))?;
    let reason = if cert.verify_signature(Some(ca_cert.public_key())).is_err() {
        Some("not signed by the cluster CA".to_owned())
    } else {
        match cert.validity().time_to_expiration() {
            None => Some("expired or not yet valid".to_owned()),
            Some(left) if left < RENEW_BEFORE => Some("expires within 30 days".to_owned()),
            Some(_) => stale(&cert),
        }
    };
    match reason {
        Some(reason) => {
            info!(path = %crt_path.display(), %reason, "reissuing certificate");
            Ok(None)
        }
        None => Ok(Some(pair)),
    }
}

fn set_validity(params: &mut CertificateParams, validity: Duration) -> Result<()> {
    let invalid = || PkiError::InvalidValidity(validity);
    let now = OffsetDateTime::now_utc();
    // Short-lived certificates (tests, aggressive rotation) are backdated by a tenth of their
    // life at most, so that "70 % of the lifetime" stays close to 70 % of the validity asked.
    let backdate = time::Duration::try_from(BACKDATE.min(validity / 10)).map_err(|_| invalid())?;
    let span = time::Duration::try_from(validity).map_err(|_| invalid())?;
    params.not_before = now - backdate;
    params.not_after = now.checked_add(span).ok_or_else(invalid)?;
    if validity.is_zero() {
        return Err(invalid());
    }
    Ok(())
}

fn leaf_params(common_name: &str, orgs: &[&str], validity: Duration) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    for org in orgs {
        params
            .distinguished_name
            .push(DnType::OrganizationName, *org);
    }
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, validity)?;
    Ok(params)
}

fn client_params(user: &str, groups: &[&str], validity: Duration) -> Result<CertificateParams> {
    if groups.len() > 1 {
        return Err(PkiError::TooManyGroups {
            user: user.to_owned(),
            count: groups.len(),
        });
    }
    let mut params = leaf_params(user, groups, validity)?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

fn issue(params: &CertificateParams, issuer: &Issuer<'_, KeyPair>) -> Result<Pair> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = params.signed_by(&key, issuer)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        cert_der: cert.der().clone(),
        key,
    })
}

/// Writes the key (0600) then the certificate (0644), each atomically: a crash in between
/// leaves a lone key, which the next start treats as a missing pair.
fn store_pair(dir: &Path, name: &str, pair: &Pair) -> Result<()> {
    let (crt_path, key_path) = paths(dir, name);
    write_atomic(&key_path, pair.key.serialize_pem().as_bytes(), PRIVATE_MODE).map_err(
        |source| PkiError::Io {
            action: "write",
            path: key_path.clone(),
            source,
        },
    )?;
    write_atomic(&crt_path, pair.cert_pem.as_bytes(), PUBLIC_MODE).map_err(|source| PkiError::Io {
        action: "write",
        path: crt_path.clone(),
        source,
    })
}
