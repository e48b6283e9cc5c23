//! `remora-webhook`: the sidecar injector. See docs/webhook.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use remora_api::config::TlsMode;
use remora_webhook::server::{observability_router, router, serve_plain, serve_tls};
use remora_webhook::{Catalog, InjectOptions, Metrics, Mutator, ReloadingCert, Settings};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "remora-webhook",
    version,
    about = "Remora's sidecar-injecting admission webhook"
)]
struct Args {
    /// HTTPS address for /mutate (and /healthz, /readyz, /metrics).
    #[arg(long, env = "REMORA_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Plain-HTTP address for /healthz, /readyz and /metrics; "off" to disable.
    #[arg(
        long,
        env = "REMORA_WEBHOOK_METRICS_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    metrics_listen: String,
    /// PEM serving certificate (chain); reloaded when it changes.
    #[arg(
        long,
        env = "REMORA_WEBHOOK_TLS_CERT",
        default_value = "/etc/remora/webhook-tls/tls.crt"
    )]
    tls_cert: PathBuf,
    /// PEM private key of the serving certificate.
    #[arg(
        long,
        env = "REMORA_WEBHOOK_TLS_KEY",
        default_value = "/etc/remora/webhook-tls/tls.key"
    )]
    tls_key: PathBuf,
    /// How often the certificate files are checked for changes, in seconds.
    #[arg(long, default_value_t = 10)]
    cert_reload_seconds: u64,
    /// Sidecar image when no SidecarTemplate applies.
    #[arg(
        long,
        env = "REMORA_DEFAULT_IMAGE",
        default_value = "ghcr.io/remora-mesh/remora-sidecar:0.1.0"
    )]
    default_image: String,
    /// The control plane's namespace: never injected; its default template applies cluster-wide.
    #[arg(long, env = "REMORA_MESH_NAMESPACE", default_value = "remora-system")]
    mesh_namespace: String,
    /// ConfigMap with the sidecar config (key config.json) in each mesh namespace.
    #[arg(long, default_value = "remora-config")]
    config_map: String,
    /// The mesh's inbound mTLS mode, as given to the operator: explicit capture
    /// is refused unless it is `disabled`.
    #[arg(long, env = "REMORA_MTLS", value_enum, default_value_t = Mtls::Permissive)]
    mtls: Mtls,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mtls {
    Disabled,
    Permissive,
    Strict,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_json {
        logs.json().init();
    } else {
        logs.init();
    }

    let metrics = Arc::new(Metrics::new());
    let cert = ReloadingCert::load(&args.tls_cert, &args.tls_key)?;
    cert.clone().watch(
        Duration::from_secs(args.cert_reload_seconds.max(1)),
        metrics.clone(),
    );
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let settings = Settings {
        mesh_namespace: args.mesh_namespace,
        default_image: args.default_image,
        inject: InjectOptions {
            config_map: args.config_map,
            mtls: match args.mtls {
                Mtls::Disabled => TlsMode::Disabled,
                Mtls::Permissive => TlsMode::Permissive,
                Mtls::Strict => TlsMode::Strict,
            },
            ..InjectOptions::default()
        },
    };
    let mutator = Mutator::new(Catalog::watch(client), settings, metrics);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    if args.metrics_listen != "off" {
        let addr: SocketAddr = args
            .metrics_listen
            .parse()
            .context("--metrics-listen: expected ADDRESS:PORT or off")?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        tokio::spawn(serve_plain(
            listener,
            observability_router(mutator.clone()),
            stopped(),
        ));
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, "serving AdmissionReviews at /mutate");
    let server = serve_tls(
        listener,
        Arc::new(cert.server_config()),
        router(mutator),
        stopped(),
    );
    tokio::select! {
        () = server => {}
        () = shutdown_signal() => tracing::info!("shutting down"),
    }
    let _ = stop_tx.send(true);
    // Give in-flight reviews a moment; the API server retries nothing, but times out.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
