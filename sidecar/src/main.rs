//! `remora-sidecar`: Remora's data-plane proxy.
//!
//! This build validates configs (`check`) the way the proxy will load them;
//! the proxy itself lands with the data-plane issue.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use remora_api::config::SidecarConfig;

#[derive(Parser)]
#[command(name = "remora-sidecar", version, about = "Remora's data-plane proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load a sidecar config exactly as the proxy does and report any problem.
    Check {
        #[arg(long, env = "REMORA_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { config } => match load(&config) {
            Ok(c) => {
                println!(
                    "{}: valid ({} listeners, {} route tables, {} clusters, hash {})",
                    config.display(),
                    c.listeners.len(),
                    c.routes.len(),
                    c.clusters.len(),
                    c.content_hash()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e:#}", config.display());
                ExitCode::FAILURE
            }
        },
    }
}

fn load(path: &PathBuf) -> anyhow::Result<SidecarConfig> {
    let bytes = std::fs::read(path)?;
    Ok(SidecarConfig::from_json(&bytes)?)
}
