//! `edgesite`: one binary for the whole edge site. Each role is a subcommand; this file only
//! parses the command line, sets up logging and hands over to the role.
#![warn(clippy::unwrap_used, clippy::expect_used)] // product code returns errors; tests may unwrap

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use edgesite_apiserver::{Server, ServerConfig};
use edgesite_controllers::leader::{self, LeaderElection};
use edgesite_controllers::node_lifecycle::Autonomy;
use edgesite_store::DatastoreConfig;

/// A lightweight Kubernetes-compatible cluster for one edge site.
#[derive(Debug, Parser)]
#[command(name = "edgesite", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version of this binary.
    Version,
    /// Run the control plane: the Kubernetes API server over HTTPS.
    Server(ServerArgs),
    /// Run an edge node: join the cluster with the node token, run pods on containerd.
    Agent(AgentArgs),
    /// Run a single-node site: the server and an agent in one process.
    Up(UpArgs),
    /// Register hollow nodes for scale tests: simulated nodes that heartbeat their Leases and
    /// report the pods bound to them as Running and Ready, without running containers.
    Sim(SimArgs),
    /// Build node images offline, to drop into an agent's images directory.
    #[command(subcommand)]
    Image(ImageCommand),
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Write an OCI image tarball holding this host's static busybox (`/bin/sh` and the
    /// busybox applets: sh, httpd, nc, wget, ...), for sites without a registry.
    Busybox(BusyboxArgs),
}

#[derive(Debug, clap::Args)]
struct BusyboxArgs {
    /// The image's name, as pods name it.
    #[arg(long, default_value = "edgesite.io/busybox:1")]
    name: String,
    /// The tarball to write (written aside and renamed, so an agent watching the directory
    /// never sees half of it).
    #[arg(long, short)]
    output: PathBuf,
    /// The static busybox binary (Debian's `busybox-static`).
    #[arg(long, default_value = edgesite_agent::oci::HOST_BUSYBOX)]
    busybox: PathBuf,
}

#[derive(Debug, clap::Args)]
struct SimArgs {
    /// Kubeconfig of the cluster (e.g. DATA_DIR/admin.kubeconfig).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// How many nodes to simulate.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Node names are PREFIX-0, PREFIX-1, ...
    #[arg(long, default_value = "hollow")]
    prefix: String,
    /// Seconds between two Lease renewals of a node.
    #[arg(long, default_value_t = 10)]
    heartbeat_seconds: u64,
}

#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// The node's name. Default: the hostname.
    #[arg(long)]
    node_name: Option<String>,
    /// The node's address. Default: the address of the interface of the default route.
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// Use this containerd (its CRI socket) instead of the agent's own managed containerd.
    #[arg(long)]
    containerd_address: Option<PathBuf>,
    /// When the node reports MemoryPressure, DiskPressure and PIDPressure, as kubelet's flag:
    /// `memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,pid.available<10%`
    /// (the defaults; a signal not named keeps its default).
    #[arg(long, default_value = "")]
    eviction_hard: edgesite_agent::pressure::Thresholds,
}

#[derive(Debug, clap::Args)]
struct AgentArgs {
    /// The API server, https://HOST:PORT.
    #[arg(long, required_unless_present = "cleanup")]
    server: Option<String>,
    /// The node token (the server's DATA_DIR/node-token); needed for the first join only.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The agent's directory: its certificate, cache, containerd, pods.
    #[arg(long, env = "EDGESITE_AGENT_DIR")]
    data_dir: PathBuf,
    /// Remove everything the agent made on this host (containers, network, files) and exit.
    #[arg(long)]
    cleanup: bool,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// Directory for the store, the PKI and admin.kubeconfig.
    #[arg(long, env = "EDGESITE_DATA_DIR")]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// HTTPS port (0 picks a free one; the kubeconfig names the real one).
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// Datastore URL, e.g. `etcd://10.0.0.1:2379,10.0.0.2:2379`. Default: the embedded store
    /// at DATA_DIR/db/state.redb.
    #[arg(long, env = "EDGESITE_DATASTORE")]
    datastore: Option<String>,
    /// Static bearer tokens, one `token,user,uid,"group1,group2"` per line (kube-apiserver's
    /// --token-auth-file format).
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// Run the scheduler and controllers only while holding the Lease
    /// kube-system/edgesite-controller-manager, so several servers can share one etcd.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true")]
    leader_elect: bool,
    /// How long standbys wait after the leader's last renewal they saw before taking over.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    leader_elect_lease_duration: Duration,
    /// How long the leader keeps trying to renew before it stops its controllers.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    leader_elect_renew_deadline: Duration,
    /// How often the leader renews and standbys retry.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    leader_elect_retry_period: Duration,
    /// How long a node may go without a heartbeat before it is marked NotReady (Unknown) and
    /// tainted unreachable.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    node_monitor_grace_period: Duration,
    /// How long an unreachable or not-ready node keeps its pods before they are evicted: a
    /// duration (e.g. `10m`) or `forever` (never evict; the edge default). A node's
    /// `edgesite.io/autonomy-duration` annotation overrides it.
    #[arg(long, default_value = "forever")]
    node_autonomy: Autonomy,
    /// The network nodes' pod CIDRs are allocated from, a /24 per node.
    #[arg(long, default_value = "10.42.0.0/16", value_parser = parse_cidr)]
    cluster_cidr: edgesite_controllers::node_ipam::ClusterCidr,
}

fn parse_cidr(s: &str) -> Result<edgesite_controllers::node_ipam::ClusterCidr, String> {
    s.parse()
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    edgesite_controllers::node_lifecycle::parse_duration(s).map_err(|e| e.to_string())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Version => {
            println!("edgesite {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Server(args) => runtime()?.block_on(server(args)),
        Command::Agent(args) => runtime()?.block_on(agent(args)),
        Command::Up(args) => runtime()?.block_on(up(args)),
        Command::Sim(args) => runtime()?.block_on(sim(args)),
        Command::Image(ImageCommand::Busybox(args)) => busybox_image(&args),
    }
}

fn busybox_image(args: &BusyboxArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.busybox.is_file(),
        "{} is missing: install the Debian package `busybox-static`",
        args.busybox.display()
    );
    anyhow::ensure!(
        !args.output.is_dir(),
        "--output {} is a directory; name the tarball to write",
        args.output.display()
    );
    let file_name = args
        .output
        .file_name()
        .context("--output must name a file")?
        .to_string_lossy();
    // A name the images directory ignores while it is written.
    let partial = args.output.with_file_name(format!(".{file_name}.partial"));
    let built = edgesite_agent::oci::busybox_image(&args.name, &args.busybox)
        .and_then(|b| b.write(&partial))
        .with_context(|| format!("cannot write {}", partial.display()))?;
    if let Err(err) = std::fs::rename(&partial, &args.output) {
        let _ = std::fs::remove_file(&partial);
        return Err(err).with_context(|| format!("cannot move {} into place", partial.display()));
    }
    println!("{} {}", built.name, args.output.display());
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn sim(args: SimArgs) -> anyhow::Result<()> {
    // kube's rustls connector needs the process-wide crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("cannot read the kubeconfig {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .context("invalid kubeconfig")?;
    let client = kube::Client::try_from(config).context("cannot build a client")?;
    let mut sim = edgesite_sim::SimConfig::new(args.nodes, args.prefix);
    sim.heartbeat = std::time::Duration::from_secs(args.heartbeat_seconds.max(1));
    edgesite_sim::run(client, sim, shutdown_signal()).await?;
    Ok(())
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let running = start_server(args).await?;
    shutdown_signal().await;
    running.stop().await;
    Ok(())
}

/// A started server and its controllers.
struct RunningServer {
    server: Server,
    stop: tokio::sync::oneshot::Sender<()>,
    controllers: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.controllers.await;
        self.server.shutdown().await;
    }
}

async fn start_server(args: ServerArgs) -> anyhow::Result<RunningServer> {
    // Stable per data directory, so a server restarted after a crash leads again at once.
    let data_dir = std::path::absolute(&args.data_dir).unwrap_or_else(|_| args.data_dir.clone());
    let identity = leader::installation_identity(&data_dir.to_string_lossy());
    let election = LeaderElection {
        lease_duration: args.leader_elect_lease_duration,
        renew_deadline: args.leader_elect_renew_deadline,
        retry_period: args.leader_elect_retry_period,
        ..LeaderElection::new(identity)
    };
    // As kube-controller-manager checks: the leader must stop before a standby may start.
    if election.renew_deadline >= election.lease_duration
        || election.retry_period >= election.renew_deadline
        || election.retry_period.is_zero()
    {
        anyhow::bail!(
            "leader election needs 0 < --leader-elect-retry-period < \
             --leader-elect-renew-deadline < --leader-elect-lease-duration"
        );
    }
    let node_monitor_grace_period = args.node_monitor_grace_period;
    let node_autonomy = args.node_autonomy;
    let mut config = ServerConfig::new(args.data_dir);
    config.bind_address = args.bind_address;
    config.secure_port = args.secure_port;
    config.token_auth_file = args.token_auth_file;
    if let Some(url) = &args.datastore {
        config.datastore = Some(
            DatastoreConfig::from_url(url)
                .with_context(|| format!("invalid --datastore {url:?}"))?,
        );
    }
    config.git_commit = option_env!("EDGESITE_GIT_COMMIT")
        .unwrap_or("unknown")
        .to_owned();
    if let Some(date) = option_env!("EDGESITE_BUILD_DATE") {
        config.build_date = date.to_owned();
    }
    let server = Server::start(config)
        .await
        .context("cannot start the server")?;
    // One line to copy into another terminal; absolute, so it works from any directory.
    let kubeconfig = std::path::absolute(server.kubeconfig_path())
        .unwrap_or_else(|_| server.kubeconfig_path().to_owned());
    eprintln!("export KUBECONFIG={}", kubeconfig.display());
    tracing::info!(path = %server.node_token_path().display(), "node join token (mode 0600)");
    // The controllers talk to the API in-process. Until RBAC exists they need system:masters.
    let client =
        server.in_process_client(edgesite_controllers::CONTROLLER_USER, &["system:masters"]);
    let controller_config = edgesite_controllers::Config {
        node_monitor_grace_period,
        node_autonomy,
        root_ca_pem: Some(server.ca_cert_pem().to_owned()),
        cluster_cidr: Some(args.cluster_cidr),
        ..edgesite_controllers::Config::default()
    };
    tracing::info!(
        grace_period = %edgesite_controllers::node_lifecycle::format_duration(node_monitor_grace_period),
        autonomy = %node_autonomy,
        "node lifecycle policy"
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped = async move {
        let _ = stopped.await;
    };
    let controllers = if args.leader_elect {
        tracing::info!(identity = %election.identity, "campaigning for the controller lease");
        tokio::spawn(leader::run_elected(
            client.clone(),
            election,
            controller_config.clock.clone(),
            stopped,
            move |stop| {
                edgesite_controllers::run_all(client.clone(), controller_config.clone(), stop)
            },
        ))
    } else {
        tokio::spawn(edgesite_controllers::run_all(
            client,
            controller_config,
            stopped,
        ))
    };
    Ok(RunningServer {
        server,
        stop,
        controllers,
    })
}

fn agent_config(
    server: &str,
    data_dir: PathBuf,
    node: NodeArgs,
) -> anyhow::Result<edgesite_agent::agent::AgentConfig> {
    let node_name = match node.node_name {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .context("cannot read the hostname; pass --node-name")?
            .to_string_lossy()
            .to_lowercase(),
    };
    let node_ip = match node.node_ip {
        Some(ip) => ip,
        None => edgesite_agent::agent::default_route_ip()
            .context("no default route to take the node's address from; pass --node-ip")?,
    };
    let data_dir = std::path::absolute(&data_dir).unwrap_or(data_dir);
    let mut config = edgesite_agent::agent::AgentConfig::new(server, &node_name, data_dir, node_ip);
    config.containerd_address = node.containerd_address;
    config.pressure = node.eviction_hard;
    Ok(config)
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if args.cleanup {
        edgesite_agent::agent::cleanup(&args.data_dir)
            .await
            .context("cleanup failed")?;
        eprintln!(
            "removed what the agent made under {}",
            args.data_dir.display()
        );
        return Ok(());
    }
    let server = args.server.unwrap_or_default();
    let mut config = agent_config(&server, args.data_dir, args.node)?;
    config.token_file = args.token_file;
    edgesite_agent::agent::run(config, shutdown_signal()).await?;
    Ok(())
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data_dir =
        std::path::absolute(&args.server.data_dir).unwrap_or_else(|_| args.server.data_dir.clone());
    let running = start_server(args.server).await?;
    let port = running.server.local_addr().port();
    let url = format!("https://127.0.0.1:{port}");
    let mut config = agent_config(&url, data_dir.join("agent"), args.node)?;
    config.token_file = Some(running.server.node_token_path().to_owned());
    let result = edgesite_agent::agent::run(config, shutdown_signal()).await;
    running.stop().await;
    result?;
    Ok(())
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(%err, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
        _ = term.recv() => tracing::info!("received SIGTERM"),
    }
}
