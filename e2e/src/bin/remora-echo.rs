//! `remora-echo`: the test application behind the sidecars.
//!
//! `remora-echo --listen 0.0.0.0:8080 --version v1` serves
//! [`remora_e2e::echo`]: every HTTP/1.1 and h2c request is answered with its
//! own headers as JSON and `x-echo-version: v1`.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Parser;
use remora_e2e::echo::serve_ready_at;
use tokio::net::TcpListener;

// No `version` in `command`: `--version` is ours (the subset), not clap's.
#[derive(Parser, Debug)]
#[command(
    name = "remora-echo",
    about = "Echoes every HTTP/1.1 and h2c request as JSON"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Reported in `x-echo-version` and the body's `version`, e.g. the subset.
    #[arg(long, default_value = "v1")]
    version: String,
    /// A second address answering the same way, for kubelet probes: the
    /// webhook leaves probed ports out of the sidecar's capture, so probes
    /// belong on a port of their own.
    #[arg(long)]
    health_listen: Option<SocketAddr>,
    /// Seconds before `/healthz` reports ready (a slow-starting app; it
    /// answers other requests from the start, so misrouted traffic shows).
    #[arg(long, default_value_t = 0)]
    ready_after_secs: u64,
    /// Seconds to keep serving after SIGTERM, as a well-behaved app does
    /// while its endpoints are removed.
    #[arg(long, default_value_t = 0)]
    shutdown_delay_secs: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!(
        "remora-echo {} listening on {}",
        args.version,
        listener.local_addr()?
    );
    let version: Arc<str> = args.version.into();
    let ready_at = (args.ready_after_secs > 0)
        .then(|| Instant::now() + Duration::from_secs(args.ready_after_secs));
    if let Some(addr) = args.health_listen {
        let health = TcpListener::bind(addr).await?;
        tokio::spawn(serve_ready_at(health, version.clone(), ready_at));
    }
    // As PID 1 in a container the default SIGTERM action does not apply: exit
    // on it explicitly (after the shutdown delay, serving meanwhile).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let server = tokio::spawn(serve_ready_at(listener, version, ready_at));
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    if args.shutdown_delay_secs > 0 {
        eprintln!(
            "remora-echo: SIGTERM; serving {} s more",
            args.shutdown_delay_secs
        );
        tokio::time::sleep(Duration::from_secs(args.shutdown_delay_secs)).await;
    }
    server.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn keeps_the_interface_the_images_use() {
        Args::command().debug_assert();
        let a =
            Args::try_parse_from(["remora-echo", "--listen", "0.0.0.0:8080", "--version", "v2"])
                .unwrap();
        assert_eq!(a.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(a.version, "v2");
        assert_eq!(a.health_listen, None);
        let b = Args::try_parse_from(["remora-echo", "--health-listen", "0.0.0.0:8081"]).unwrap();
        assert_eq!(b.health_listen, Some("0.0.0.0:8081".parse().unwrap()));
    }
}
