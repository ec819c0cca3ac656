//! The HTTPS server: opens the store, loads the PKI, binds, accepts TLS connections (HTTP/1.1
//! and HTTP/2 with upgrades) and serves the [`crate::handlers::router`]; then writes the admin
//! kubeconfig. [`Server::shutdown`] stops accepting, lets in-flight requests finish (up to
//! [`ServerConfig::shutdown_timeout`]) and closes the store.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edgesite_clock::{Clock, SystemClock};

use axum::Router;
use edgesite_api::discovery;
use edgesite_store::{DatastoreConfig, Store};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use crate::authn::{ConnectionInfo, TokenFileAuthenticator, TokenFileError, UnionAuthenticator};
use crate::authz::{MastersAuthorizer, NodeAuthorizer, Union};
use crate::handlers::{ApiState, router};
use crate::kubeconfig::{KubeconfigError, write_admin_kubeconfig};
use crate::pki::{ClusterPki, PkiError, PkiOptions};

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How `edgesite server` is set up.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The data directory: `pki/`, `db/`, `admin.kubeconfig`, `node-token`.
    pub data_dir: PathBuf,
    /// The address to listen on (`0.0.0.0` for all IPv4 interfaces).
    pub bind_address: IpAddr,
    /// The HTTPS port; `0` picks a free one (see [`Server::local_addr`]).
    pub secure_port: u16,
    /// The store; `None` is the embedded store at `data_dir/db/state.redb`.
    pub datastore: Option<DatastoreConfig>,
    /// What the serving certificate covers. A specific [`Self::bind_address`] is added to it.
    pub pki: PkiOptions,
    /// `gitCommit` reported by `/version`.
    pub git_commit: String,
    /// `buildDate` (RFC 3339) reported by `/version`.
    pub build_date: String,
    /// How long shutdown waits for in-flight requests before dropping connections.
    pub shutdown_timeout: Duration,
    /// Static bearer tokens (kube-apiserver's `--token-auth-file` CSV format), if any.
    pub token_auth_file: Option<PathBuf>,
    /// Where Services get their cluster IPs (`--service-cluster-ip-range`); the first address
    /// goes to `default/kubernetes`.
    pub service_cidr: crate::allocator::Ipv4Cidr,
    /// Where NodePort and LoadBalancer Services get their node ports
    /// (`--service-node-port-range`).
    pub node_port_range: std::ops::RangeInclusive<u16>,
    /// The server's clock: timestamps, ages and intervals (a `ManualClock` in tests).
    pub clock: Arc<dyn Clock>,
    /// How long the node client certificates issued to joining agents last (default 1 year;
    /// agents renew at 70–80 % of it).
    pub node_cert_validity: Duration,
}

impl ServerConfig {
    /// Defaults: all interfaces, port 6443, embedded store, hostname and interface addresses in
    /// the serving certificate.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            secure_port: 6443,
            datastore: None,
            pki: PkiOptions::default(),
            git_commit: "unknown".to_owned(),
            build_date: "1970-01-01T00:00:00Z".to_owned(),
            shutdown_timeout: Duration::from_secs(15),
            token_auth_file: None,
            service_cidr: crate::allocator::Ipv4Cidr::default(),
            node_port_range: 30000..=32767,
            clock: Arc::new(SystemClock),
            node_cert_validity: crate::join::NODE_CERT_VALIDITY,
        }
    }

    /// The embedded store's file: `data_dir/db/state.redb`.
    pub fn embedded_store_path(&self) -> PathBuf {
        self.data_dir.join("db").join("state.redb")
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be created.
    #[error("cannot create data directory {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] edgesite_store::Error),
    /// The PKI could not be loaded or created.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The admin kubeconfig could not be written.
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    /// The token file could not be loaded.
    #[error(transparent)]
    TokenFile(#[from] TokenFileError),
    /// The node join token could not be read or written, or pins another CA.
    #[error(transparent)]
    NodeToken(#[from] crate::join::TokenError),
    /// The RBAC cache could not be started.
    #[error("cannot start the RBAC cache: {0}")]
    Rbac(String),
}

/// A running server. Dropping it without [`Server::shutdown`] leaves the accept loop running
/// until the runtime stops.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    url: String,
    kubeconfig_path: PathBuf,
    node_token_path: PathBuf,
    ready_after: Duration,
    state: Arc<ApiState>,
    app: Router,
    shutdown_tx: watch::Sender<bool>,
    accept_loop: JoinHandle<()>,
    service_repair: JoinHandle<()>,
    rbac_watches: tokio::task::JoinSet<()>,
    ca_cert_pem: String,
}

impl Server {
    /// Opens the store, loads or creates the PKI, binds and starts accepting; once the listener
    /// accepts, writes `data_dir/admin.kubeconfig` and returns.
    pub async fn start(config: ServerConfig) -> Result<Self, ServerError> {
        let clock = config.clock.clone();
        let started = clock.instant();
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;

        let datastore = config
            .datastore
            .clone()
            .unwrap_or_else(|| DatastoreConfig::embedded(config.embedded_store_path()));
        let tokens = match &config.token_auth_file {
            Some(path) => Some(TokenFileAuthenticator::from_file(path)?),
            None => None,
        };
        let store = edgesite_store::open(&datastore).await?;
        let store_ready = clock.instant().duration_since(started);

        let mut pki_opts = config.pki.clone();
        if !config.bind_address.is_unspecified() {
            pki_opts.extra_sans.push(config.bind_address.to_string());
        }
        let data_dir = config.data_dir.clone();
        let pki =
            tokio::task::spawn_blocking(move || ClusterPki::load_or_create(&data_dir, &pki_opts))
                .await
                .map_err(|e| PkiError::Corrupt {
                    path: config.data_dir.join("pki"),
                    reason: format!("PKI task failed: {e}"),
                })??;
        let pki = Arc::new(pki);
        let tls = TlsAcceptor::from(pki.server_config()?);
        // Before anything is served: the token the node-certificate endpoint checks.
        let node_token = crate::join::load_or_create(&config.data_dir, pki.ca_cert_der().as_ref())?;
        let pki_ready = clock.instant().duration_since(started);

        let addr = SocketAddr::new(config.bind_address, config.secure_port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;

        let client_host = if config.bind_address.is_unspecified() {
            match config.bind_address {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            }
        } else {
            config.bind_address
        };
        let client_addr = SocketAddr::new(client_host, local_addr.port());
        let url = format!("https://{client_addr}");

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let services = Arc::new(crate::allocator::ServiceAllocator::new(
            store.clone(),
            config.service_cidr,
            config.node_port_range.clone(),
            clock.clone(),
        ));
        // Upstream's order: the privileged group, the node authorizer, then RBAC.
        let rbac = crate::rbac::RbacAuthorizer::new();
        let authorizer: Arc<dyn crate::authz::Authorizer> = Arc::new(Union(vec![
            Arc::new(MastersAuthorizer),
            Arc::new(NodeAuthorizer),
            rbac.clone(),
        ]));
        let state = Arc::new(ApiState {
            storage: crate::storage::Storage::new(store.clone()),
            admission: crate::admission::AdmissionChain::standard(
                store.clone(),
                services.clone(),
                rbac.clone(),
                authorizer.clone(),
            ),
            services,
            clock: clock.clone(),
            store,
            server_address: client_addr.to_string(),
            ca_cert_pem: pki.ca_cert_pem().to_owned(),
            node_certs: Some(Arc::new(crate::join::NodeCertIssuer {
                token: node_token,
                pki: pki.clone(),
                validity: config.node_cert_validity,
            })),
            version: discovery::version_info(&config.git_commit, &config.build_date),
            authenticator: Arc::new(UnionAuthenticator::with_tokens(tokens)),
            authorizer,
            tunnels: Arc::new(crate::tunnel::TunnelRegistry::new()),
            shutting_down: AtomicBool::new(false),
            shutdown: shutdown_rx.clone(),
        });
        // Before anything is served: Services whose allocation keys were lost in a crash get
        // them back, so no new Service can be handed their address.
        if let Err(err) = state.services.repair(SERVICE_REPAIR_GRACE).await {
            warn!(%err, "cannot repair the service allocations");
        }
        if let Err(err) = crate::handlers::resources::seed(&state, local_addr.port()).await {
            warn!(%err, "cannot seed the built-in objects");
        }
        // Before anything is served: the RBAC cache holds the stored policy, and the default
        // roles and bindings are in it (without them only system:masters could do anything).
        let rbac_watches = rbac
            .start(&state, shutdown_rx.clone())
            .await
            .map_err(|e| ServerError::Rbac(e.to_string()))?;
        if let Err(err) = crate::rbac::reconcile_bootstrap_policy(&state, &rbac).await {
            warn!(%err, "cannot reconcile the default RBAC roles and bindings");
        }
        let app = router(state.clone());
        let accept_loop = tokio::spawn(accept_loop(
            listener,
            tls,
            app.clone(),
            shutdown_rx,
            config.shutdown_timeout,
        ));

        let service_repair = tokio::spawn(repair_services_periodically(
            state.clone(),
            shutdown_tx.subscribe(),
        ));
        let kubeconfig_path = write_admin_kubeconfig(&config.data_dir, &pki, &url)?;
        let node_token_path = crate::join::node_token_path(&config.data_dir);
        let ready_after = clock.instant().duration_since(started);
        // The OpenAPI index and the protobuf table are built on first use; do it now, off the
        // request path, so the first write does not wait. (Each OpenAPI schema is parsed when a
        // write of its kind first needs it: a fraction of a millisecond.)
        tokio::task::spawn_blocking(|| {
            edgesite_api::openapi::OpenApi::get();
            let _ = edgesite_api::protobuf::message_for("v1", "ConfigMap");
        });
        info!(
            address = %local_addr,
            kubeconfig = %kubeconfig_path.display(),
            store_ms = store_ready.as_millis() as u64,
            pki_ms = (pki_ready - store_ready).as_millis() as u64,
            ready_ms = ready_after.as_millis() as u64,
            "API server ready in {:.1} ms",
            ready_after.as_secs_f64() * 1e3
        );
        Ok(Self {
            local_addr,
            url,
            kubeconfig_path,
            node_token_path,
            ready_after,
            state,
            app,
            shutdown_tx,
            accept_loop,
            service_repair,
            rbac_watches,
            ca_cert_pem: pki.ca_cert_pem().to_owned(),
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The URL clients should use (`https://127.0.0.1:<port>` when bound to all interfaces).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The admin kubeconfig written at startup.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The node join token (`DATA_DIR/node-token`, mode 0600) agents join with.
    pub fn node_token_path(&self) -> &Path {
        &self.node_token_path
    }

    /// How long [`Server::start`] took, from entry to the kubeconfig being written.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// The cluster CA certificate (PEM): what the `kube-root-ca.crt` ConfigMaps carry.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// Runs one repair pass over the Service allocations now (it also runs at start and
    /// every few minutes): keys no Service holds and older than `grace` are released, and
    /// addresses and ports Services hold without a key get one.
    pub async fn repair_service_allocations(
        &self,
        grace: Duration,
    ) -> Result<crate::allocator::RepairReport, edgesite_store::Error> {
        self.state.services.repair(grace).await
    }

    /// The store the server uses.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.state.store
    }

    /// Compacts the store at `revision` now (an operator's forced compaction): clients whose
    /// watches resume from an older resourceVersion get an `ERROR` 410 event and relist.
    pub async fn compact(&self, revision: i64) -> Result<(), edgesite_api::status::ApiError> {
        self.state.storage.compact(revision).await
    }

    /// A kube client that calls this server's handlers directly (no socket, no TLS), acting
    /// as `user` in `groups` (plus `system:authenticated`): how the in-process controllers
    /// talk to the API. Authorization applies as for any client.
    pub fn in_process_client(&self, user: &str, groups: &[&str]) -> kube::Client {
        let identity = crate::authn::Identity::authenticated(
            user,
            groups.iter().map(|g| (*g).to_owned()).collect(),
        );
        crate::in_process::client(self.app.clone(), identity)
    }

    /// Serves until `signal` completes, then shuts down gracefully.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }

    /// Stops accepting, waits for in-flight requests (bounded by the shutdown timeout) and
    /// closes the store.
    pub async fn shutdown(self) {
        info!("shutting down");
        self.state.shutting_down.store(true, Ordering::Relaxed);
        let _ = self.shutdown_tx.send(true);
        if let Err(err) = self.accept_loop.await {
            warn!(%err, "accept loop ended abnormally");
        }
        let _ = self.service_repair.await;
        // They hold watch caches, and so the store.
        let mut rbac_watches = self.rbac_watches;
        while rbac_watches.join_next().await.is_some() {}
        // The embedded store joins its writer thread on drop: do that off the async threads.
        // The router (kept for in-process clients) holds the state too.
        let (state, app) = (self.state, self.app);
        let released = Arc::downgrade(&state);
        // Watch caches (the RBAC cache keeps four) stop their feeding tasks by aborting them,
        // which drops their store handles a moment later. Keep one handle here and drop it
        // last, ourselves: the store closes its file in its destructor, and a strong count of
        // zero seen from here would only say that some other thread has begun that drop.
        let store = state.store.clone();
        let _ = tokio::task::spawn_blocking(move || drop((app, state))).await;
        // A task still finishing a request may hold the state a moment longer; the caller
        // expects the store closed (and its file free) once this returns.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_RELEASE_TIMEOUT;
        while released.strong_count() > 0 || Arc::strong_count(&store) > 1 {
            if tokio::time::Instant::now() >= deadline {
                warn!("the server state is still held after shutdown; the store closes later");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The last handle: this drop joins the store's writer and closes its file.
        let _ = tokio::task::spawn_blocking(move || drop(store)).await;
        info!("shut down");
    }
}

/// How long `shutdown` waits for tasks still holding the state (and so the store) to end.
const SHUTDOWN_RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the Service allocations are repaired while the server runs.
const SERVICE_REPAIR_INTERVAL: Duration = Duration::from_secs(300);
/// How old an allocation no Service holds must be before a repair releases it: younger ones
/// may belong to a create in flight on this or another server sharing the datastore.
const SERVICE_REPAIR_GRACE: Duration = Duration::from_secs(60);

async fn repair_services_periodically(state: Arc<ApiState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(SERVICE_REPAIR_INTERVAL) => {}
        }
        if let Err(err) = state.services.repair(SERVICE_REPAIR_GRACE).await {
            warn!(%err, "cannot repair the service allocations");
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: TlsAcceptor,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
    shutdown_timeout: Duration,
) {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    // The connection tasks, so that those still open at the shutdown timeout (watches) are
    // really dropped, releasing the state and with it the store.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (tcp, remote) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(err) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let tls = tls.clone();
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        connections.spawn(async move {
            if let Err(err) = serve_connection(tcp, remote, tls, app, builder, watcher).await {
                debug!(%remote, %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => debug!("all connections closed"),
        _ = tokio::time::sleep(shutdown_timeout) => {
            warn!("shutdown timeout: dropping the remaining connections");
        }
    }
    connections.shutdown().await;
}

async fn serve_connection(
    tcp: TcpStream,
    remote: SocketAddr,
    tls: TlsAcceptor,
    app: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _ = tcp.set_nodelay(true);
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await??;
    let peer_certificates = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|certs| {
            certs
                .iter()
                .map(|c| c.clone().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let conn = ConnectionInfo {
        remote_addr: Some(remote),
        peer_certificates: peer_certificates.into(),
    };
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(conn.clone());
        app.clone().oneshot(req)
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    watcher.watch(connection.into_owned()).await
}
