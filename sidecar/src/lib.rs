//! Remora's data-plane proxy, in MOSN's layers:
//!
//! - network: [`listener`] accepts, reads `SO_ORIGINAL_DST`, detects the protocol;
//! - codec: [`codec::Codec`] implementations (HTTP/1.1, HTTP/2, opaque TCP);
//! - stream/proxy: [`http`] (filters, routing, retries, timeouts) and [`tcp`];
//! - upstream: [`cluster`] (endpoints, DNS), [`pool`] and [`breaker`]
//!   (connections and their limits) and [`balance`] (LB, outliers).
//!
//! A config is compiled once into a [`snapshot::Snapshot`] and swapped
//! atomically on reload; requests take a cheap snapshot and never lock.

pub mod access_log;
pub mod admin;
pub mod app_probe;
pub mod authz;
pub mod balance;
pub mod breaker;
pub mod cluster;
pub mod codec;
pub mod config_watch;
pub mod http;
pub mod iptables;
pub mod listener;
pub mod matching;
pub mod metrics;
pub mod pod_overrides;
pub mod pool;
mod proxy;
pub mod ratelimit;
pub mod replay;
pub mod snapshot;
pub mod split;
pub mod tcp;
pub mod tls;

pub use proxy::{LogLevel, Options, Proxy, ProxyHandle, Shared};

/// The tokio runtime for `workers` worker threads. One worker is a
/// current-thread runtime (one thread, no work stealing); the multi-thread
/// scheduler with one worker measured no cheaper (bench/RESULTS.md).
/// `REMORA_RUNTIME=multi-thread` forces the multi-thread scheduler even for
/// one worker (bench/sidecar.sh compares the two).
pub fn runtime(workers: u16) -> std::io::Result<tokio::runtime::Runtime> {
    let force_multi = std::env::var("REMORA_RUNTIME").is_ok_and(|v| v == "multi-thread");
    if workers <= 1 && !force_multi {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(workers.max(1)))
            .enable_all()
            .build()
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(String),
    #[error("invalid sidecar config: {0}")]
    Load(#[from] remora_api::config::ConfigError),
    #[error("cannot listen on {addr} (listener {listener}): {source}")]
    Bind {
        listener: String,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("upstream connect failed: {0}")]
    Connect(String),
    #[error("cluster {cluster} is at its {}", limit.field())]
    Overflow {
        cluster: String,
        limit: breaker::Limit,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether the same config may apply later unchanged: a port still held
    /// by another process, certificate files not mounted yet.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Bind { .. } | Error::Tls(_) | Error::Io(_))
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config(_) | Error::Load(_) => "config",
            Error::Bind { .. } => "bind",
            Error::Tls(_) => "tls",
            Error::Connect(_) => "connect",
            Error::Overflow { .. } => "overflow",
            Error::Io(_) => "io",
        }
    }
}
