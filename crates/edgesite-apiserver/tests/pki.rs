//! Cluster PKI bootstrap: files, reuse, reissue, refusal, TLS handshakes and kubectl.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::collections::BTreeMap;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use edgesite_apiserver::kubeconfig::admin_kubeconfig_path;
use edgesite_apiserver::{
    ClusterPki, Kubeconfig, PkiError, PkiOptions, client_identity, write_admin_kubeconfig,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

const FILES: [&str; 6] = [
    "ca.crt",
    "ca.key",
    "server.crt",
    "server.key",
    "admin.crt",
    "admin.key",
];
const KUBECTL: &str = "/usr/bin/kubectl";

fn opts(extra: &[&str]) -> PkiOptions {
    PkiOptions {
        hostname: Some("edge-1".to_owned()),
        extra_sans: extra.iter().map(|s| (*s).to_owned()).collect(),
        include_interface_ips: false,
    }
}

fn snapshot(dir: &Path) -> BTreeMap<&'static str, Vec<u8>> {
    FILES
        .iter()
        .map(|f| (*f, fs::read(dir.join("pki").join(f)).unwrap()))
        .collect()
}

fn der_of(pem: &[u8]) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem).unwrap()
}

fn file_der(dir: &Path, name: &str) -> CertificateDer<'static> {
    der_of(&fs::read(dir.join("pki").join(name)).unwrap())
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> X509Certificate<'a> {
    x509_parser::parse_x509_certificate(der).unwrap().1
}

/// DNS names (lower-case) and IPs in the certificate's SAN extension.
fn sans(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    let ext = cert
        .subject_alternative_name()
        .unwrap()
        .expect("SAN extension");
    for name in &ext.value.general_names {
        match name {
            GeneralName::DNSName(d) => dns.push(d.to_ascii_lowercase()),
            GeneralName::IPAddress(b) if b.len() == 4 => {
                ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()));
            }
            GeneralName::IPAddress(b) if b.len() == 16 => {
                ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()));
            }
            _ => {}
        }
    }
    (dns, ips)
}

fn days_valid(cert: &X509Certificate<'_>) -> i64 {
    let v = cert.validity();
    (v.not_after.timestamp() - v.not_before.timestamp()) / 86_400
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn first_start_creates_ca_serving_and_admin_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let pki =
        ClusterPki::load_or_create(tmp.path(), &opts(&["10.0.0.5", "API.example.com"])).unwrap();
    let dir = tmp.path().join("pki");
    assert_eq!(pki.dir(), dir);
    for f in FILES {
        assert!(dir.join(f).is_file(), "{f} missing");
    }

    let ca_der = file_der(tmp.path(), "ca.crt");
    assert_eq!(&ca_der, pki.ca_cert_der());
    let ca = parse(&ca_der);
    assert!(ca.basic_constraints().unwrap().unwrap().value.ca);
    let ku = ca.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    // ECDSA P-256 keys, ECDSA-with-SHA256 signatures.
    assert_eq!(
        ca.public_key().algorithm.algorithm.to_id_string(),
        "1.2.840.10045.2.1"
    );
    assert_eq!(
        ca.public_key()
            .algorithm
            .parameters
            .as_ref()
            .unwrap()
            .as_oid()
            .unwrap()
            .to_id_string(),
        "1.2.840.10045.3.1.7"
    );
    assert_eq!(
        ca.signature_algorithm.algorithm.to_id_string(),
        "1.2.840.10045.4.3.2"
    );
    assert!(
        (3649..=3651).contains(&days_valid(&ca)),
        "{}",
        days_valid(&ca)
    );
    ca.verify_signature(None).unwrap();

    let server_der = file_der(tmp.path(), "server.crt");
    assert_eq!(&server_der, pki.server_cert_der());
    let server = parse(&server_der);
    server.verify_signature(Some(ca.public_key())).unwrap();
    assert!(!server.basic_constraints().unwrap().unwrap().value.ca);
    let eku = server.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    assert!((364..=366).contains(&days_valid(&server)));
    let (dns, ips) = sans(&server);
    for name in [
        "edge-1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "api.example.com",
    ] {
        assert!(dns.iter().any(|d| d == name), "{name} not in {dns:?}");
    }
    for ip in ["127.0.0.1", "::1", "10.0.0.5"] {
        let ip: IpAddr = ip.parse().unwrap();
        assert!(ips.contains(&ip), "{ip} not in {ips:?}");
    }

    let admin_der = file_der(tmp.path(), "admin.crt");
    let admin = parse(&admin_der);
    admin.verify_signature(Some(ca.public_key())).unwrap();
    let eku = admin.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!((364..=366).contains(&days_valid(&admin)));
    assert_eq!(
        client_identity(&admin_der),
        Some((
            "kubernetes-admin".to_owned(),
            vec!["system:masters".to_owned()]
        ))
    );
    assert_eq!(
        pki.admin_cert().cert_pem.as_bytes(),
        fs::read(dir.join("admin.crt")).unwrap()
    );

    // Keys are private to the owner, certificates readable, the directory private.
    for key in ["ca.key", "server.key", "admin.key"] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
    }
    for crt in ["ca.crt", "server.crt", "admin.crt"] {
        assert_eq!(mode(&dir.join(crt)), 0o644, "{crt}");
    }
    assert_eq!(mode(&dir), 0o700);
    // No temporary files left behind.
    assert_eq!(fs::read_dir(&dir).unwrap().count(), FILES.len());
}

#[test]
fn interface_addresses_are_included_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(tmp.path(), &PkiOptions::default()).unwrap();
    let server = parse(pki.server_cert_der());
    let (dns, ips) = sans(&server);
    assert!(dns.iter().any(|d| d == "localhost"));
    assert!(ips.contains(&"127.0.0.1".parse().unwrap()));
    let host = nix::unistd::gethostname().unwrap();
    let host = host.to_string_lossy().to_ascii_lowercase();
    assert!(dns.contains(&host), "{host} not in {dns:?}");
    // A second start with the same options reuses the certificate.
    let again = ClusterPki::load_or_create(tmp.path(), &PkiOptions::default()).unwrap();
    assert_eq!(again.server_cert_der(), pki.server_cert_der());
}

#[test]
fn second_start_reuses_every_file() {
    let tmp = tempfile::tempdir().unwrap();
    ClusterPki::load_or_create(tmp.path(), &opts(&["10.0.0.5"])).unwrap();
    let before = snapshot(tmp.path());
    let pki = ClusterPki::load_or_create(tmp.path(), &opts(&["10.0.0.5"])).unwrap();
    assert_eq!(snapshot(tmp.path()), before);
    assert_eq!(pki.ca_cert_pem().as_bytes(), before["ca.crt"]);
    // Asking for fewer names than the certificate has is no reason to reissue it.
    ClusterPki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    assert_eq!(snapshot(tmp.path()), before);
}

#[test]
fn san_change_reissues_serving_certificate_and_keeps_ca() {
    let tmp = tempfile::tempdir().unwrap();
    ClusterPki::load_or_create(tmp.path(), &opts(&["10.0.0.5"])).unwrap();
    let before = snapshot(tmp.path());
    let pki =
        ClusterPki::load_or_create(tmp.path(), &opts(&["10.0.0.5", "192.168.7.1", "edge.lan"]))
            .unwrap();
    let after = snapshot(tmp.path());
    for f in ["ca.crt", "ca.key", "admin.crt", "admin.key"] {
        assert_eq!(before[f], after[f], "{f} changed");
    }
    assert_ne!(before["server.crt"], after["server.crt"]);
    assert_ne!(before["server.key"], after["server.key"]);
    let server = parse(pki.server_cert_der());
    let (dns, ips) = sans(&server);
    assert!(dns.contains(&"edge.lan".to_owned()));
    assert!(ips.contains(&"192.168.7.1".parse().unwrap()));
    assert!(ips.contains(&"10.0.0.5".parse().unwrap()));
    let ca_der = der_of(&after["ca.crt"]);
    server
        .verify_signature(Some(parse(&ca_der).public_key()))
        .unwrap();
    // A hostname change reissues it too.
    let mut renamed = opts(&["10.0.0.5", "192.168.7.1", "edge.lan"]);
    renamed.hostname = Some("edge-2".to_owned());
    let pki = ClusterPki::load_or_create(tmp.path(), &renamed).unwrap();
    assert!(
        sans(&parse(pki.server_cert_der()))
            .0
            .contains(&"edge-2".to_owned())
    );
    assert_eq!(
        fs::read(tmp.path().join("pki/ca.crt")).unwrap(),
        after["ca.crt"]
    );
}

#[test]
fn serving_certificate_expiring_within_30_days_is_reissued() {
    let tmp = tempfile::tempdir().unwrap();
    ClusterPki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    let dir = tmp.path().join("pki");
    let before = snapshot(tmp.path());

    // Replace the serving certificate by one from the same CA, same SANs, 10 days left.
    let old = der_of(&before["server.crt"]);
    let (dns, ips) = sans(&parse(&old));
    let names: Vec<String> = dns
        .into_iter()
        .chain(ips.iter().map(IpAddr::to_string))
        .collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let ca_key =
        rcgen::KeyPair::from_pem(&fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(&der_of(&before["ca.crt"]), ca_key).unwrap();
    let key =
        rcgen::KeyPair::from_pem(&fs::read_to_string(dir.join("server.key")).unwrap()).unwrap();
    let short = params.signed_by(&key, &issuer).unwrap();
    fs::write(dir.join("server.crt"), short.pem()).unwrap();

    let pki = ClusterPki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    let fresh = parse(pki.server_cert_der());
    assert!((364..=366).contains(&days_valid(&fresh)));
    assert_ne!(
        fs::read(dir.join("server.crt")).unwrap(),
        short.pem().as_bytes()
    );
    assert_eq!(fs::read(dir.join("ca.crt")).unwrap(), before["ca.crt"]);
    assert_eq!(
        fs::read(dir.join("admin.crt")).unwrap(),
        before["admin.crt"]
    );
}

#[test]
fn leaf_certificates_from_another_ca_are_reissued() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    ClusterPki::load_or_create(ours.path(), &opts(&[])).unwrap();
    ClusterPki::load_or_create(theirs.path(), &opts(&[])).unwrap();
    for f in ["server.crt", "server.key", "admin.crt", "admin.key"] {
        fs::copy(
            theirs.path().join("pki").join(f),
            ours.path().join("pki").join(f),
        )
        .unwrap();
    }
    let pki = ClusterPki::load_or_create(ours.path(), &opts(&[])).unwrap();
    let ca = parse(pki.ca_cert_der());
    parse(pki.server_cert_der())
        .verify_signature(Some(ca.public_key()))
        .unwrap();
    parse(&file_der(ours.path(), "admin.crt"))
        .verify_signature(Some(ca.public_key()))
        .unwrap();
}

#[test]
fn corrupt_or_incomplete_ca_is_refused_and_left_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    ClusterPki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    let dir = tmp.path().join("pki");
    let before = snapshot(tmp.path());

    // Garbage certificate.
    fs::write(
        dir.join("ca.crt"),
        b"-----BEGIN CERTIFICATE-----\nbm9wZQ==\n",
    )
    .unwrap();
    let err = ClusterPki::load_or_create(tmp.path(), &opts(&[])).unwrap_err();
    match &err {
        PkiError::Corrupt { path, .. } => assert_eq!(path, &dir.join("ca.crt")),
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("ca.crt"), "{err}");
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    assert_eq!(
        fs::read(dir.join("ca.crt")).unwrap(),
        b"-----BEGIN CERTIFICATE-----\nbm9wZQ==\n"
    );
    assert_eq!(fs::read(dir.join("ca.key")).unwrap(), before["ca.key"]);
    fs::write(dir.join("ca.crt"), &before["ca.crt"]).unwrap();

    // Garbage key.
    fs::write(dir.join("ca.key"), b"not a key").unwrap();
    let err = ClusterPki::load_or_create(tmp.path(), &opts(&[])).unwrap_err();
    assert!(
        matches!(&err, PkiError::Corrupt { path, .. } if path == &dir.join("ca.key")),
        "{err:?}"
    );
    assert_eq!(fs::read(dir.join("ca.key")).unwrap(), b"not a key");
    assert_eq!(fs::read(dir.join("ca.crt")).unwrap(), before["ca.crt"]);

    // A key that belongs to another certificate.
    fs::write(dir.join("ca.key"), &before["admin.key"]).unwrap();
    let err = ClusterPki::load_or_create(tmp.path(), &opts(&[])).unwrap_err();
    assert!(
        matches!(&err, PkiError::Corrupt { path, .. } if path == &dir.join("ca.key")),
        "{err:?}"
    );

    // Missing key.
    fs::remove_file(dir.join("ca.key")).unwrap();
    let err = ClusterPki::load_or_create(tmp.path(), &opts(&[])).unwrap_err();
    assert!(matches!(err, PkiError::IncompleteCa { .. }), "{err:?}");
    assert!(!dir.join("ca.key").exists());
    assert_eq!(fs::read(dir.join("ca.crt")).unwrap(), before["ca.crt"]);

    // Not a CA: the admin certificate and key in the CA's place.
    fs::write(dir.join("ca.crt"), &before["admin.crt"]).unwrap();
    fs::write(dir.join("ca.key"), &before["admin.key"]).unwrap();
    let err = ClusterPki::load_or_create(tmp.path(), &opts(&[])).unwrap_err();
    assert!(
        matches!(&err, PkiError::Corrupt { reason, .. } if reason.contains("not a CA")),
        "{err:?}"
    );

    // Restored, everything works again with the original files.
    fs::write(dir.join("ca.crt"), &before["ca.crt"]).unwrap();
    fs::write(dir.join("ca.key"), &before["ca.key"]).unwrap();
    ClusterPki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    assert_eq!(snapshot(tmp.path()), before);
}

#[test]
fn unreadable_key_file_is_an_error_not_a_new_key() {
    let tmp = tempfile::tempdir().unwrap();
    ClusterPki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    let key = tmp.path().join("pki/ca.key");
    // A directory where the key should be cannot be read, even by root.
    let saved = fs::read(&key).unwrap();
    fs::remove_file(&key).unwrap();
    fs::create_dir(&key).unwrap();
    let err = ClusterPki::load_or_create(tmp.path(), &opts(&[])).unwrap_err();
    assert!(
        matches!(&err, PkiError::Io { path, .. } if path == &key),
        "{err:?}"
    );
    assert!(key.is_dir());
    fs::remove_dir(&key).unwrap();
    fs::write(&key, saved).unwrap();
}

#[test]
fn loose_key_permissions_are_tightened() {
    let tmp = tempfile::tempdir().unwrap();
    ClusterPki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    let key = tmp.path().join("pki/server.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    ClusterPki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn node_client_certificates_carry_node_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    let issued = pki
        .issue_node_cert("edge-7", Duration::from_secs(3600))
        .unwrap();
    let der = der_of(issued.cert_pem.as_bytes());
    assert_eq!(
        client_identity(&der),
        Some((
            "system:node:edge-7".to_owned(),
            vec!["system:nodes".to_owned()]
        ))
    );
    let cert = parse(&der);
    cert.verify_signature(Some(parse(pki.ca_cert_der()).public_key()))
        .unwrap();
    assert!(
        cert.extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .client_auth
    );
    let v = cert.validity();
    assert!(v.not_after.timestamp() - time::OffsetDateTime::now_utc().unix_timestamp() <= 3600);
    rcgen::KeyPair::from_pem(&issued.key_pem).unwrap();

    let groupless = pki
        .issue_client_cert("alice", &[], Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        client_identity(&der_of(groupless.cert_pem.as_bytes())),
        Some(("alice".to_owned(), vec![]))
    );
    assert!(matches!(
        pki.issue_client_cert("alice", &["dev", "ops"], Duration::from_secs(60)),
        Err(PkiError::TooManyGroups { count: 2, .. })
    ));
    assert!(matches!(
        pki.issue_client_cert("bob", &[], Duration::ZERO),
        Err(PkiError::InvalidValidity(_))
    ));
    assert_eq!(client_identity(b"garbage"), None);
}

#[test]
fn invalid_requested_san_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let err = ClusterPki::load_or_create(tmp.path(), &opts(&["bad name!"])).unwrap_err();
    assert!(matches!(err, PkiError::InvalidSan(_)), "{err:?}");
}

/// The admin kubeconfig as written, parsed back.
fn read_kubeconfig(path: &Path) -> Kubeconfig {
    serde_saphyr::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn admin_kubeconfig_is_written_privately_and_atomically() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    let path = write_admin_kubeconfig(tmp.path(), &pki, "https://127.0.0.1:6443").unwrap();
    assert_eq!(path, tmp.path().join("admin.kubeconfig"));
    assert_eq!(path, admin_kubeconfig_path(tmp.path()));
    assert_eq!(mode(&path), 0o600);

    let yaml = fs::read_to_string(&path).unwrap();
    assert!(
        yaml.contains("\n    server: https://127.0.0.1:6443\n"),
        "{yaml}"
    );
    assert!(yaml.contains("\ncurrent-context: edgesite\n"), "{yaml}");
    assert!(!yaml.contains(">-") && !yaml.contains('|'), "{yaml}");
    let kc = read_kubeconfig(&path);
    assert_eq!(kc.api_version, "v1");
    assert_eq!(kc.kind, "Config");
    assert_eq!(kc.current_context, "edgesite");
    assert_eq!(kc.clusters[0].name, "edgesite");
    assert_eq!(kc.clusters[0].cluster.server, "https://127.0.0.1:6443");
    assert_eq!(
        BASE64
            .decode(&kc.clusters[0].cluster.certificate_authority_data)
            .unwrap(),
        pki.ca_cert_pem().as_bytes()
    );
    assert_eq!(kc.users[0].name, "admin");
    let admin = pki.admin_cert();
    assert_eq!(
        BASE64
            .decode(&kc.users[0].user.client_certificate_data)
            .unwrap(),
        admin.cert_pem.as_bytes()
    );
    assert_eq!(
        BASE64.decode(&kc.users[0].user.client_key_data).unwrap(),
        admin.key_pem.as_bytes()
    );
    assert_eq!(kc.contexts[0].name, "edgesite");
    assert_eq!(kc.contexts[0].context.cluster, "edgesite");
    assert_eq!(kc.contexts[0].context.user, "admin");

    // Rewriting replaces it (new server URL) and leaves no temporary file.
    write_admin_kubeconfig(tmp.path(), &pki, "https://edge-1:7443").unwrap();
    assert_eq!(
        read_kubeconfig(&path).clusters[0].cluster.server,
        "https://edge-1:7443"
    );
    assert_eq!(mode(&path), 0o600);
    let names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["admin.kubeconfig", "pki"]);
}

/// These tests drive the real kubectl; without it they fail (the project never skips a test
/// for a missing prerequisite).
fn require_kubectl() {
    assert!(
        Path::new(KUBECTL).exists(),
        "{KUBECTL} is needed by this test (it comes with the development machine image)"
    );
}

#[test]
fn kubectl_accepts_the_admin_kubeconfig() {
    require_kubectl();
    let tmp = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    let path = write_admin_kubeconfig(tmp.path(), &pki, "https://127.0.0.1:6443").unwrap();
    let out = Command::new(KUBECTL)
        .arg("--kubeconfig")
        .arg(&path)
        .args([
            "config",
            "view",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.server} {.current-context} {.contexts[0].context.user}",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "https://127.0.0.1:6443 edgesite admin"
    );
}

/// The client side of the handshake tests, built from the admin kubeconfig.
struct KubeconfigClient {
    roots: rustls::RootCertStore,
    cert: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl KubeconfigClient {
    fn load(path: &Path) -> Self {
        let kc = read_kubeconfig(path);
        let ca = BASE64
            .decode(&kc.clusters[0].cluster.certificate_authority_data)
            .unwrap();
        let cert = BASE64
            .decode(&kc.users[0].user.client_certificate_data)
            .unwrap();
        let key = BASE64.decode(&kc.users[0].user.client_key_data).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der_of(&ca)).unwrap();
        Self {
            roots,
            cert: vec![der_of(&cert)],
            key: PrivateKeyDer::from_pem_slice(&key).unwrap(),
        }
    }

    fn config(&self, with_cert: bool) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots.clone());
        let mut config = if with_cert {
            builder
                .with_client_auth_cert(self.cert.clone(), self.key.clone_key())
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// What the server saw of one connection: the negotiated ALPN protocol and the identity in the
/// client certificate, if any.
type Seen = (Option<Vec<u8>>, Option<(String, Vec<String>)>);

/// Accepts TLS connections forever; for each, reports what it saw and writes "ok".
fn spawn_server(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> tokio::sync::mpsc::UnboundedReceiver<Result<Seen, String>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let conn = tls.get_ref().1;
                        let identity = conn
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .and_then(|cert| client_identity(cert));
                        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
                        let _ = tx.send(Ok((alpn, identity)));
                        let _ = tls.write_all(b"ok").await;
                        let _ = tls.shutdown().await;
                    }
                    Err(err) => {
                        let _ = tx.send(Err(err.to_string()));
                    }
                }
            });
        }
    });
    rx
}

async fn connect(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
) -> std::io::Result<Vec<u8>> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await?;
    Ok(buf)
}

#[tokio::test]
async fn tls_handshake_with_and_without_client_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let kubeconfig = write_admin_kubeconfig(
        tmp.path(),
        &pki,
        &format!("https://127.0.0.1:{}", addr.port()),
    )
    .unwrap();
    let mut seen = spawn_server(listener, TlsAcceptor::from(pki.server_config().unwrap()));
    let client = KubeconfigClient::load(&kubeconfig);
    let ip = ServerName::IpAddress("127.0.0.1".parse::<IpAddr>().unwrap().into());

    // Admin certificate, server verified by IP SAN.
    let got = connect(addr, client.config(true), ip.clone())
        .await
        .unwrap();
    assert_eq!(got, b"ok");
    let (alpn, identity) = seen.recv().await.unwrap().unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(
        identity,
        Some((
            "kubernetes-admin".to_owned(),
            vec!["system:masters".to_owned()]
        ))
    );

    // No client certificate: still connects (bearer tokens are checked later), no identity.
    let got = connect(
        addr,
        client.config(false),
        ServerName::try_from("localhost").unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(got, b"ok");
    let (_, identity) = seen.recv().await.unwrap().unwrap();
    assert_eq!(identity, None);

    // The in-cluster service name is covered too.
    connect(
        addr,
        client.config(false),
        ServerName::try_from("kubernetes.default.svc").unwrap(),
    )
    .await
    .unwrap();
    seen.recv().await.unwrap().unwrap();

    // A name the certificate does not cover is refused by the client.
    assert!(
        connect(
            addr,
            client.config(false),
            ServerName::try_from("elsewhere.example").unwrap()
        )
        .await
        .is_err()
    );
    assert!(seen.recv().await.unwrap().is_err());

    // A client certificate from another CA is refused by the server.
    let other = tempfile::tempdir().unwrap();
    let other_pki = ClusterPki::load_or_create(other.path(), &opts(&[])).unwrap();
    let other_kc = write_admin_kubeconfig(other.path(), &other_pki, "https://x:1").unwrap();
    let mut stranger = KubeconfigClient::load(&other_kc);
    stranger.roots = client.roots.clone();
    let result = connect(addr, stranger.config(true), ip).await;
    assert!(result.is_err() || result.unwrap().is_empty());
    let err = seen.recv().await.unwrap().unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

/// Serves one canned HTTP/1.1 JSON response per connection, naming the client's identity.
fn spawn_http_server(listener: TcpListener, acceptor: TlsAcceptor) {
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let user = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|cert| client_identity(cert))
                    .map(|(user, _)| user)
                    .unwrap_or_default();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!(
                    r#"{{"major":"1","minor":"33","gitVersion":"v1.33.0-{}"}}"#,
                    user.replace(':', "-")
                );
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
}

/// kubectl (Go's TLS stack, stricter than rustls in places) trusts the serving certificate by
/// IP and by hostname, and presents the admin certificate, which our server verifies.
#[tokio::test]
async fn kubectl_talks_tls_to_the_server_with_the_admin_kubeconfig() {
    require_kubectl();
    let tmp = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(tmp.path(), &opts(&[])).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // This canned server speaks HTTP/1.1 only.
    let mut config = (*pki.server_config().unwrap()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    spawn_http_server(listener, TlsAcceptor::from(Arc::new(config)));

    for server in [
        format!("https://127.0.0.1:{port}"),
        format!("https://localhost:{port}"),
    ] {
        let path: PathBuf = write_admin_kubeconfig(tmp.path(), &pki, &server).unwrap();
        let out = tokio::process::Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(&path)
            .args(["get", "--raw", "/version", "--request-timeout=20s"])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{server}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            stdout.contains("v1.33.0-kubernetes-admin"),
            "{server}: {stdout}"
        );
    }
}
