//! What the demo's child processes run: `remoractl demo-sidecar run` (the
//! proxy) and `remoractl demo-app <echo|greeter>` (the sample apps).
//!
//! `cargo run -p remora-cli` builds remoractl only, so the demo re-executes
//! itself for each sidecar and app rather than look for a `remora-sidecar`
//! binary that a fresh clone has not built. Each sidecar is still its own
//! process running the sidecar library exactly as `remora-sidecar run` does
//! (same config loading, runtime, signal handling and drain); `--sidecar-bin`
//! runs a built `remora-sidecar` instead, with the same arguments.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use remora_api::config::SidecarConfig;
use remora_sidecar::{Options, Proxy, ratelimit::read_pod_labels};

/// `remoractl demo-sidecar run ...`: the arguments of `remora-sidecar run`.
#[derive(Subcommand)]
pub enum SidecarCommand {
    /// Run the proxy; the config file is watched and reloaded when it changes.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Downward-API labels file (`key="value"` lines).
        #[arg(long)]
        pod_labels: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum AppCommand {
    /// The echo app (HTTP/1.1 and h2c).
    Echo(EchoArgs),
    /// The gRPC greeter.
    Greeter {
        #[arg(long)]
        listen: SocketAddr,
    },
}

#[derive(Args)]
pub struct EchoArgs {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long = "version", default_value = "v1")]
    app_version: String,
}

/// Runs the proxy as `remora-sidecar run` does (sidecar/src/main.rs).
pub fn run_sidecar(cmd: SidecarCommand) -> Result<()> {
    let SidecarCommand::Run { config, pod_labels } = cmd;
    let bytes = std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?;
    let parsed = SidecarConfig::from_json(&bytes)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&parsed.runtime.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let labels = match pod_labels {
        Some(p) => read_pod_labels(&p)?,
        None => Default::default(),
    };
    // The runtime the sidecar binary picks.
    let rt = remora_sidecar::runtime(parsed.runtime.worker_threads)?;
    rt.block_on(async move {
        let drain_timeout = parsed.runtime.drain_timeout.as_std();
        let opts = Options {
            pod_labels: labels,
            config_path: Some(config),
            ..Options::default()
        };
        let handle = Proxy::start(parsed, opts).await?;
        shutdown_signal().await?;
        tracing::info!("shutting down: draining for up to {drain_timeout:?}");
        handle.shutdown(drain_timeout).await;
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// Runs one sample app until SIGTERM or SIGINT.
pub fn run_app(cmd: AppCommand) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cmd {
            AppCommand::Echo(args) => {
                let listener = tokio::net::TcpListener::bind(args.listen)
                    .await
                    .with_context(|| format!("binding {}", args.listen))?;
                let version: Arc<str> = args.app_version.into();
                tokio::select! {
                    _ = remora_e2e::echo::serve(listener, version) => {}
                    r = shutdown_signal() => r?,
                }
            }
            AppCommand::Greeter { listen } => {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                tokio::select! {
                    r = super::greeter::serve(listener) => r?,
                    r = shutdown_signal() => r?,
                }
            }
        }
        anyhow::Ok(())
    })
}

async fn shutdown_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
