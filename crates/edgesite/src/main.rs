//! `edgesite`: one binary for the whole edge site. Each role is a subcommand; this file only
//! parses the command line, sets up logging and hands over to the role.

use clap::{Parser, Subcommand};

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Version => {
            println!("edgesite {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}
