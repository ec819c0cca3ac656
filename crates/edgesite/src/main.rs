//! `edgesite`: one binary for the whole edge site. Each role is a subcommand; this file only
//! parses the command line, sets up logging and hands over to the role.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use edgesite_apiserver::{Server, ServerConfig};
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
        Command::Server(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(server(args)),
    }
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
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
    // The controllers talk to the API in-process. Until RBAC exists they need system:masters.
    let client =
        server.in_process_client(edgesite_controllers::CONTROLLER_USER, &["system:masters"]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controllers = tokio::spawn(edgesite_controllers::run_all(client, async move {
        let _ = stopped.await;
    }));
    shutdown_signal().await;
    let _ = stop.send(());
    let _ = controllers.await;
    server.shutdown().await;
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
