//! The node join flow against a real API server over real TLS: the first join with the token,
//! later starts from the stored identity, the terminal errors (wrong token, wrong CA pin, a
//! server with another CA), retries while the server is away, and renewal without a restart.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use edgesite_agent::join::{self, CA_FILE, JoinError, NODE_PEM_FILE};
use edgesite_api::join::NodeToken;
use edgesite_apiserver::{PkiOptions, Server, ServerConfig};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, PostParams};

fn config(dir: &Path, port: u16, node_cert_validity: Duration) -> ServerConfig {
    let mut config = ServerConfig::new(dir);
    config.bind_address = "127.0.0.1".parse().unwrap();
    config.secure_port = port;
    config.pki = PkiOptions {
        hostname: Some("edge-test".to_owned()),
        extra_sans: Vec::new(),
        include_interface_ips: false,
    };
    config.node_cert_validity = node_cert_validity;
    config
}

async fn start(dir: &Path) -> Result<Server> {
    Ok(Server::start(config(dir, 0, Duration::from_secs(3600))).await?)
}

/// A copy of the server's token that the test may delete.
fn copy_token(server: &Server, to: &Path) -> Result<PathBuf> {
    let path = to.join("token");
    std::fs::copy(server.node_token_path(), &path)?;
    Ok(path)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Who the server says the client is.
async fn whoami(client: kube::Client) -> Result<(String, Vec<String>)> {
    let review: SelfSubjectReview = Api::all(client)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    let info = review.status.and_then(|s| s.user_info).unwrap_or_default();
    Ok((
        info.username.unwrap_or_default(),
        info.groups.unwrap_or_default(),
    ))
}

#[tokio::test]
async fn joins_with_the_token_then_starts_from_the_stored_identity() -> Result<()> {
    let server_dir = tempfile::tempdir()?;
    let server = start(server_dir.path()).await?;
    let agent = tempfile::tempdir()?;
    let token = copy_token(&server, agent.path())?;
    let pki = agent.path().join("pki");

    let identity = join::join(server.url(), Some(&token), "edge-1", &pki).await?;
    assert_eq!(mode(&pki), 0o700);
    assert_eq!(mode(&pki.join(NODE_PEM_FILE)), 0o600);
    assert_eq!(mode(&pki.join(CA_FILE)), 0o644);
    assert_eq!(
        std::fs::read_to_string(pki.join(CA_FILE))?,
        server.ca_cert_pem(),
        "the stored CA is the cluster CA"
    );
    let stored = std::fs::read_to_string(pki.join(NODE_PEM_FILE))?;
    assert!(stored.contains("BEGIN CERTIFICATE") && stored.contains("PRIVATE KEY"));
    assert!(
        !std::fs::read_dir(&pki)?.any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp")),
        "no temporary files left"
    );

    // The server sees the node's identity.
    let (user, groups) = whoami(identity.client()).await?;
    assert_eq!(user, "system:node:edge-1");
    assert!(groups.contains(&"system:nodes".to_owned()), "{groups:?}");
    // Authorized as a node: it may list nodes, not Deployments (a 403 that names the node,
    // not a 401).
    Api::<Node>::all(identity.client())
        .list(&ListParams::default())
        .await?;
    let err = Api::<k8s_openapi::api::apps::v1::Deployment>::all(identity.client())
        .list(&ListParams::default())
        .await
        .unwrap_err();
    let kube::Error::Api(status) = &err else {
        panic!("{err}")
    };
    assert_eq!(status.code, 403, "{status:?}");
    assert!(status.message.contains("system:node:edge-1"), "{status:?}");

    // A second start without the token uses the stored certificate.
    std::fs::remove_file(&token)?;
    let again = join::join(server.url(), Some(&token), "edge-1", &pki).await?;
    assert_eq!(again.cert_der(), identity.cert_der());
    let again = join::join(server.url(), None, "edge-1", &pki).await?;
    assert_eq!(again.cert_der(), identity.cert_der());
    assert_eq!(whoami(again.client()).await?.0, "system:node:edge-1");

    // The stored identity is edge-1's: another name is a clear error, not a silent rejoin.
    let err = join::join(server.url(), None, "edge-2", &pki)
        .await
        .unwrap_err();
    assert!(matches!(err, JoinError::OtherNode { .. }), "{err}");
    assert!(err.to_string().contains("--node-name edge-1"), "{err}");

    // Without identity or token: says what is needed.
    let empty = agent.path().join("empty");
    let err = join::join(server.url(), None, "edge-3", &empty)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--token-file"), "{err}");
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_wrong_secret_or_pin_is_a_terminal_error_within_seconds() -> Result<()> {
    let server_dir = tempfile::tempdir()?;
    let server = start(server_dir.path()).await?;
    let agent = tempfile::tempdir()?;
    let real = NodeToken::parse(&std::fs::read_to_string(server.node_token_path())?)?;
    let pki = agent.path().join("pki");

    let admin = admin_client(&server).await?;
    let before = post_401s(&admin).await?;
    let wrong_secret = NodeToken::new(server_ca_der(&server).as_slice(), &"w".repeat(64))?;
    assert_eq!(wrong_secret.ca_hash(), real.ca_hash());
    let path = agent.path().join("wrong-secret");
    std::fs::write(&path, format!("{wrong_secret}\n"))?;
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        join::join(server.url(), Some(&path), "edge-1", &pki),
    )
    .await?
    .unwrap_err();
    assert!(matches!(err, JoinError::TokenRejected { .. }), "{err}");
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(text.contains("rejected the join token"), "{text}");
    assert!(
        text.contains("node token"),
        "the server's message is kept: {text}"
    );
    assert!(!text.contains('\n'), "one line: {text}");
    assert!(!pki.join(NODE_PEM_FILE).exists());
    let after_wrong_secret = post_401s(&admin).await?;
    assert_eq!(
        after_wrong_secret,
        before + 1,
        "the wrong secret was sent once"
    );

    // The right secret, but a pin of another CA: refused before the secret is sent.
    let wrong_pin = NodeToken::new(b"another cluster's CA", real.secret())?;
    let path = agent.path().join("wrong-pin");
    std::fs::write(&path, format!("{wrong_pin}\n"))?;
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        join::join(server.url(), Some(&path), "edge-1", &pki),
    )
    .await?
    .unwrap_err();
    assert!(matches!(err, JoinError::CaPinMismatch { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(
        err.to_string().contains("differs from the token's pin"),
        "{err}"
    );
    assert!(
        err.to_string().contains(real.ca_hash()),
        "names the CA: {err}"
    );
    assert!(!pki.join(NODE_PEM_FILE).exists());
    assert_eq!(
        post_401s(&admin).await?,
        after_wrong_secret,
        "nothing was posted with the wrong pin"
    );

    // Not a token at all.
    std::fs::write(&path, "K10abc::server:xyz")?;
    let err = join::join(server.url(), Some(&path), "edge-1", &pki)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not an EdgeSite node token"),
        "{err}"
    );
    server.shutdown().await;
    Ok(())
}

async fn admin_client(server: &Server) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig_path())?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// How many POSTs to non-resource paths (the node-certificate endpoint is the only one this
/// test makes) the server answered 401.
async fn post_401s(admin: &kube::Client) -> Result<u64> {
    let text = admin
        .request_text(hyper::Request::get("/metrics").body(Vec::new())?)
        .await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with(
                "apiserver_request_total{verb=\"POST\",group=\"\",version=\"\",resource=\"\"",
            ) && l.contains("code=\"401\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

fn server_ca_der(server: &Server) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(server.ca_cert_pem().as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn a_server_with_another_ca_is_refused_with_the_stored_identity() -> Result<()> {
    let first_dir = tempfile::tempdir()?;
    let first = start(first_dir.path()).await?;
    let port = first.local_addr().port();
    let agent = tempfile::tempdir()?;
    let token = copy_token(&first, agent.path())?;
    let pki = agent.path().join("pki");
    join::join(first.url(), Some(&token), "edge-1", &pki).await?;
    first.shutdown().await;

    // Another cluster (a new CA) answers at the same address.
    let other_dir = tempfile::tempdir()?;
    let other = Server::start(config(other_dir.path(), port, Duration::from_secs(3600))).await?;
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        join::join(other.url(), None, "edge-1", &pki),
    )
    .await?
    .unwrap_err();
    assert!(matches!(err, JoinError::UntrustedServer { .. }), "{err}");
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains("presents a certificate not signed by the cluster CA this node joined"),
        "{text}"
    );
    assert!(
        text.contains(&pki.join(CA_FILE).display().to_string()),
        "{text}"
    );
    other.shutdown().await;

    // With the server away, the stored identity is enough to start.
    let offline = join::join(&format!("https://127.0.0.1:{port}"), None, "edge-1", &pki).await?;
    assert_eq!(offline.node_name(), "edge-1");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_server_is_retried_until_it_appears() -> Result<()> {
    // A server that made its token, then went away; it comes back on the same port.
    let server_dir = tempfile::tempdir()?;
    let server = start(server_dir.path()).await?;
    let port = server.local_addr().port();
    let agent = tempfile::tempdir()?;
    let token = copy_token(&server, agent.path())?;
    server.shutdown().await;

    let pki = agent.path().join("pki");
    let url = format!("https://127.0.0.1:{port}");
    let started = tokio::time::Instant::now();
    let joining = tokio::spawn({
        let (url, token, pki) = (url.clone(), token.clone(), pki.clone());
        async move { join::join(&url, Some(&token), "edge-1", &pki).await }
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!joining.is_finished(), "still waiting for the server");
    let server = Server::start(config(server_dir.path(), port, Duration::from_secs(3600))).await?;
    let identity = tokio::time::timeout(Duration::from_secs(15), joining).await???;
    let took = started.elapsed();
    println!("joined after {took:?}");
    assert!(took >= Duration::from_millis(2500));
    assert_eq!(whoami(identity.client()).await?.0, "system:node:edge-1");
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn renewal_replaces_the_certificate_without_a_restart() -> Result<()> {
    let server_dir = tempfile::tempdir()?;
    let server = Server::start(config(server_dir.path(), 0, Duration::from_secs(6))).await?;
    let agent = tempfile::tempdir()?;
    let token = copy_token(&server, agent.path())?;
    let pki = agent.path().join("pki");
    let identity = Arc::new(join::join(server.url(), Some(&token), "edge-1", &pki).await?);
    let (_, first_expiry) = identity.validity();
    let first_file = std::fs::read(pki.join(NODE_PEM_FILE))?;
    // Made before the renewal, used before and after it: its pooled connection was
    // authenticated with the first certificate.
    let client = identity.client();
    assert_eq!(whoami(client.clone()).await?.0, "system:node:edge-1");
    // The control: a plain kube client that keeps the first certificate, with a connection
    // opened before the renewal. Once that certificate expires, the server refuses it.
    let stale_pem = agent.path().join("first.pem");
    std::fs::write(&stale_pem, &first_file)?;
    let mut stale = kube::Config::new(server.url().parse()?);
    stale.root_cert = Some(vec![identity.ca_der().to_vec()]);
    stale.auth_info.client_certificate = Some(stale_pem.display().to_string());
    stale.auth_info.client_key = Some(stale_pem.display().to_string());
    let stale = kube::Client::try_from(stale)?;
    assert_eq!(whoami(stale.clone()).await?.0, "system:node:edge-1");

    let renewal = tokio::spawn(
        identity
            .clone()
            .run_renewal(Arc::new(edgesite_clock::SystemClock)),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read(pki.join(NODE_PEM_FILE))? == first_file {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no renewal within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mode(&pki.join(NODE_PEM_FILE)), 0o600);
    let (_, second_expiry) = identity.validity();
    assert!(second_expiry > first_expiry);

    // Wait until the first certificate has expired (a second of slack for the seconds of
    // X.509 times), then the old client must still be accepted.
    let now = std::time::SystemTime::UNIX_EPOCH
        + Duration::from_secs(
            edgesite_clock::Clock::unix_seconds(&edgesite_clock::SystemClock) as u64,
        );
    if let Ok(left) = first_expiry.duration_since(now) {
        tokio::time::sleep(left + Duration::from_millis(1500)).await;
    }
    assert!(
        whoami(stale).await.is_err(),
        "the first certificate has expired: the control must fail"
    );
    assert_eq!(whoami(client.clone()).await?.0, "system:node:edge-1");
    assert_eq!(whoami(identity.client()).await?.0, "system:node:edge-1");

    // The renewed pair is what a restart would pick up.
    let restarted = join::join(server.url(), None, "edge-1", &pki).await?;
    assert_eq!(restarted.cert_der(), identity.cert_der());
    renewal.abort();
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_failed_renewal_keeps_the_old_certificate() -> Result<()> {
    let server_dir = tempfile::tempdir()?;
    let server = start(server_dir.path()).await?;
    let port = server.local_addr().port();
    let agent = tempfile::tempdir()?;
    let token = copy_token(&server, agent.path())?;
    let pki = agent.path().join("pki");
    let identity = join::join(server.url(), Some(&token), "edge-1", &pki).await?;
    let first = identity.cert_der();
    let first_file = std::fs::read(pki.join(NODE_PEM_FILE))?;
    server.shutdown().await;

    // The server is away: the renewal fails, retryably, and nothing changes.
    let err = identity.renew().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("cannot reach the server"), "{err}");
    assert_eq!(identity.cert_der(), first);
    assert_eq!(std::fs::read(pki.join(NODE_PEM_FILE))?, first_file);

    // Back: the renewal goes through with the old certificate as the credential.
    let server = Server::start(config(server_dir.path(), port, Duration::from_secs(3600))).await?;
    identity.renew().await?;
    assert_ne!(identity.cert_der(), first);
    assert_ne!(std::fs::read(pki.join(NODE_PEM_FILE))?, first_file);
    assert_eq!(whoami(identity.client()).await?.0, "system:node:edge-1");
    server.shutdown().await;
    Ok(())
}
