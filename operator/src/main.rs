//! `remora-operator`: the mesh's control plane.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, routing::get};
use clap::{Parser, ValueEnum};
use remora_api::config::TlsMode;
use remora_operator::{
    controller::OperatorConfig,
    health::{Health, Role},
    leader::{self, LeaseTimings},
    metrics::Metrics,
};

#[derive(Parser)]
#[command(name = "remora-operator", version, about = "Remora's control plane")]
struct Args {
    /// The operator's own namespace (the CA Secret lives here).
    #[arg(long, env = "POD_NAMESPACE", default_value = "remora-system")]
    namespace: String,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Inbound mTLS mode rendered into every sidecar config.
    #[arg(long, value_enum, default_value_t = Mtls::Permissive)]
    mtls: Mtls,
    /// Secret with the CA; created on first start unless the user supplies it.
    #[arg(long, default_value = "remora-ca")]
    ca_secret: String,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:9090")]
    http_addr: SocketAddr,
    /// `info`, `debug`, ... or a tracing filter.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
    /// Hold a Lease so only one replica writes.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mtls {
    Disabled,
    Permissive,
    Strict,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .init();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::new(if args.leader_election {
        Role::Standby
    } else {
        Role::Leader
    }));

    let readyz = {
        let health = health.clone();
        move || async move {
            let (ready, why) = health.readiness();
            let code = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (code, why)
        }
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move { m.render() }),
        )
        .with_state(metrics.clone());
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding {}", args.http_addr))?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let leadership = if args.leader_election {
        let identity = std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("remora-operator-{}", std::process::id()));
        let held = tokio::select! {
            held = leader::acquire_with(
                client.clone(),
                &args.namespace,
                "remora-operator",
                &identity,
                health.clone(),
                LeaseTimings::default(),
            ) => held?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        Some(held)
    } else {
        None
    };
    let lost = async move {
        match leadership {
            Some(l) => l.lost().await,
            None => std::future::pending().await,
        }
    };

    let mut config = OperatorConfig::new(args.namespace);
    config.trust_domain = args.trust_domain;
    config.cluster_domain = args.cluster_domain;
    config.ca_secret = args.ca_secret;
    config.mtls = match args.mtls {
        Mtls::Disabled => TlsMode::Disabled,
        Mtls::Permissive => TlsMode::Permissive,
        Mtls::Strict => TlsMode::Strict,
    };
    tokio::select! {
        res = remora_operator::run_with_health(client, config, metrics, health) => {
            res.context("operator stopped")?
        }
        // Stop reconciling at once; the restart rejoins the election as standby.
        _ = lost => anyhow::bail!("stepped down: the leader lease was lost"),
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
