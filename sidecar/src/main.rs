//! `remora-sidecar`: Remora's data-plane proxy.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use remora_api::config::SidecarConfig;
use remora_sidecar::{
    Options, Proxy, config_watch::WatchTarget, iptables::CaptureRules, pod_overrides::PodOverrides,
    ratelimit::read_pod_labels,
};

#[derive(Parser)]
#[command(name = "remora-sidecar", version, about = "Remora's data-plane proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ConfigWatch {
    Auto,
    On,
    Off,
}

/// The API server and ConfigMap to follow, as `--config-watch` asks.
fn watch_target(mode: ConfigWatch) -> anyhow::Result<Option<WatchTarget>> {
    if mode == ConfigWatch::Off {
        return Ok(None);
    }
    let target = match WatchTarget::from_env() {
        Ok(t) => t,
        Err(e) if mode == ConfigWatch::Auto => {
            tracing::info!("config from the file only: {e}");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    match target {
        Some(t) if t.token_file.exists() => Ok(Some(t)),
        Some(t) if mode == ConfigWatch::Auto => {
            tracing::info!(
                "config from the file only: no ServiceAccount token at {}",
                t.token_file.display()
            );
            Ok(None)
        }
        Some(t) => anyhow::bail!(
            "--config-watch on: no ServiceAccount token at {}",
            t.token_file.display()
        ),
        None if mode == ConfigWatch::Auto => Ok(None),
        None => anyhow::bail!("--config-watch on: KUBERNETES_SERVICE_HOST is not set"),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Load a sidecar config exactly as the proxy does and report any problem.
    Check {
        #[arg(long, env = "REMORA_CONFIG")]
        config: PathBuf,
    },
    /// Run the proxy; the config file is watched and reloaded when it changes.
    Run {
        #[arg(long, env = "REMORA_CONFIG")]
        config: PathBuf,
        /// Downward-API labels file (`key="value"` lines); absent means no labels.
        #[arg(long, env = "REMORA_POD_LABELS")]
        pod_labels: Option<PathBuf>,
        /// The app's probes the admin port answers (JSON, written by the webhook).
        #[arg(long, env = "REMORA_APP_PROBES")]
        app_probes: Option<String>,
        /// The pod's own settings (from its SidecarTemplate and annotations,
        /// passed by the webhook), laid over the config at start and on reload.
        #[command(flatten)]
        overrides: PodOverrides,
        /// Follow the config through the API server as well as the file:
        /// `auto` does in a pod with a ServiceAccount token, `on` must
        /// (start fails without one), `off` reads the file only.
        #[arg(long, env = "REMORA_CONFIG_WATCH", value_enum, default_value_t = ConfigWatch::Auto)]
        config_watch: ConfigWatch,
    },
    /// Wait until the proxy's admin `/ready` answers 200 (for postStart hooks).
    WaitReady {
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
        #[arg(long, default_value = "60s")]
        timeout: remora_api::Duration,
    },
    /// Print (--dry-run) or apply the iptables rules for transparent capture.
    InitIptables {
        #[arg(long)]
        proxy_uid: u32,
        #[arg(long)]
        inbound_port: u16,
        #[arg(long)]
        outbound_port: u16,
        #[arg(long, value_delimiter = ',')]
        exclude_inbound_ports: Vec<u16>,
        #[arg(long, value_delimiter = ',')]
        exclude_outbound_ports: Vec<u16>,
        #[arg(long, value_delimiter = ',')]
        exclude_outbound_cidrs: Vec<String>,
        #[arg(long)]
        dry_run: bool,
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
        Command::Run {
            config,
            pod_labels,
            app_probes,
            overrides,
            config_watch,
        } => match run(
            &config,
            pod_labels.as_deref(),
            app_probes.as_deref(),
            overrides,
            config_watch,
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("remora-sidecar: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::WaitReady { admin, timeout } => {
            let deadline = Instant::now() + timeout.as_std();
            loop {
                if ready(admin) {
                    println!("remora-sidecar at {admin} is ready");
                    return ExitCode::SUCCESS;
                }
                if Instant::now() >= deadline {
                    eprintln!("remora-sidecar at {admin} not ready after {timeout}");
                    return ExitCode::FAILURE;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Command::InitIptables {
            proxy_uid,
            inbound_port,
            outbound_port,
            exclude_inbound_ports,
            exclude_outbound_ports,
            exclude_outbound_cidrs,
            dry_run,
        } => {
            let rules = CaptureRules {
                proxy_uid,
                inbound_port,
                outbound_port,
                exclude_inbound_ports,
                exclude_outbound_ports,
                exclude_outbound_cidrs,
            };
            if let Err(e) = rules.validate() {
                eprintln!("init-iptables: {e}");
                return ExitCode::FAILURE;
            }
            if dry_run {
                print!("{}", rules.render());
                return ExitCode::SUCCESS;
            }
            match rules.apply() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("init-iptables: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn load(path: &Path) -> anyhow::Result<SidecarConfig> {
    let bytes = std::fs::read(path)?;
    Ok(SidecarConfig::from_json(&bytes)?)
}

fn run(
    path: &Path,
    pod_labels: Option<&Path>,
    app_probes: Option<&str>,
    overrides: PodOverrides,
    config_watch: ConfigWatch,
) -> anyhow::Result<()> {
    let mut config = load(path)?;
    overrides.apply(&mut config);
    let app_probes: remora_api::config::AppProbes = match app_probes {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| anyhow::anyhow!("REMORA_APP_PROBES is not a valid probe list: {e}"))?,
        None => Default::default(),
    };
    let log_level = init_logging(&config.runtime.log_level);
    let config_watch = watch_target(config_watch)?;
    if let Some(t) = &config_watch {
        tracing::info!(
            api = %t.address,
            namespace = %t.namespace,
            "following ConfigMap {} through the API server",
            t.config_map
        );
    }
    let labels = match pod_labels {
        Some(p) => read_pod_labels(p)?,
        None => Default::default(),
    };
    let rt = remora_sidecar::runtime(config.runtime.worker_threads)?;
    rt.block_on(async move {
        let drain_timeout = config.runtime.drain_timeout.as_std();
        let drain_grace = config.runtime.drain_grace.as_std();
        let opts = Options {
            pod_labels: labels,
            config_path: Some(path.to_path_buf()),
            watch_interval: None,
            config_watch,
            app_probes,
            log_level: Some(log_level),
            overrides,
        };
        let handle = Proxy::start(config, opts).await?;
        shutdown_signal().await;
        tracing::info!(
            "shutting down: accepting for {drain_grace:?} more, then draining for up to {drain_timeout:?}"
        );
        let left = handle.shutdown_gracefully(drain_grace, drain_timeout).await;
        if left > 0 {
            tracing::warn!("{left} connections still open at the drain deadline");
        } else {
            tracing::info!("drained");
        }
        anyhow::Ok(())
    })?;
    // Connections still open at the deadline are cut by exiting.
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// Logs go to stderr (stdout carries the access log), filtered by `RUST_LOG`
/// or the config's level; the returned handle changes the filter at run time.
fn init_logging(level: &str) -> remora_sidecar::LogLevel {
    use tracing_subscriber::{EnvFilter, layer::SubscriberExt, reload, util::SubscriberInitExt};
    let initial = std::env::var("RUST_LOG").unwrap_or_else(|_| level.to_owned());
    let filter = EnvFilter::try_new(&initial).unwrap_or_else(|_| EnvFilter::new(level));
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    let current = std::sync::Mutex::new(initial);
    remora_sidecar::LogLevel(std::sync::Arc::new(move |new: Option<&str>| {
        let mut current = current.lock().expect("log level lock");
        if let Some(directive) = new {
            let filter = EnvFilter::try_new(directive)
                .map_err(|e| format!("not a log level or filter: {directive:?}: {e}"))?;
            handle
                .reload(filter)
                .map_err(|e| format!("cannot change the log filter: {e}"))?;
            tracing::warn!(filter = directive, "log level changed");
            *current = directive.to_owned();
        }
        Ok(current.clone())
    }))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// One `GET /ready`; true on 200.
fn ready(admin: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    buf[..n].starts_with(b"HTTP/1.1 200")
}
