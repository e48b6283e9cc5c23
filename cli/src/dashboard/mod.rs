//! `remoractl dashboard`: the mesh as a graph on a local web page, redrawn
//! every second from `GET /api/graph`.
//!
//! A source hands the graph task one scrape at a time, one [`Workload`]
//! per sidecar; the graph is built from the newest scrape and one about a
//! second older ([`graph::build`]). Sources: a cluster (the default: every
//! injected pod's sidecar read through the API server, [`cluster`]),
//! `--demo` (the demo's sidecars, read by the demo's own loop) and `--admin`
//! (sidecar admin addresses).

mod cluster;
pub mod graph;
mod server;

use std::{
    collections::VecDeque,
    net::SocketAddr,
    process::ExitCode,
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use clap::Args;
use tokio::sync::{mpsc, watch};

use crate::{
    cluster::KubeArgs,
    demo::{self, DemoArgs, scrape},
};
pub use graph::Workload;
use server::GraphDoc;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").args(["demo", "admins"])))]
pub struct DashboardArgs {
    /// Where the page is served. Loopback addresses only: the page has no
    /// authentication.
    #[arg(long, default_value = "127.0.0.1:15050")]
    listen: SocketAddr,
    /// Run `remoractl demo` and draw its mesh (the demo's flags apply).
    #[arg(long)]
    demo: bool,
    /// A sidecar's admin address, optionally named by its service and
    /// version: `reviews/v2=127.0.0.12:15000`. Repeat for several.
    #[arg(long = "admin", value_name = "[SERVICE[/VERSION]=]ADDR")]
    admins: Vec<AdminTarget>,
    /// In a cluster (no `--demo` or `--admin`): the namespace whose injected
    /// pods are drawn (default: the kubeconfig context's).
    #[arg(short, long, conflicts_with = "source")]
    namespace: Option<String>,
    /// In a cluster: the injected pods of every namespace.
    #[arg(short = 'A', long, conflicts_with_all = ["source", "namespace"])]
    all_namespaces: bool,
    #[command(flatten)]
    kube: KubeArgs,
    #[command(flatten)]
    demo_args: DemoArgs,
}

/// `--admin [SERVICE[/VERSION]=]ADDR`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminTarget {
    pub address: SocketAddr,
    pub service: Option<String>,
    pub version: Option<String>,
}

impl FromStr for AdminTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, addr) = match s.rsplit_once('=') {
            Some((n, a)) => (Some(n), a),
            None => (None, s),
        };
        let address = addr.parse().map_err(|e| {
            format!("--admin {s:?}: {addr:?} is not an address:port ({e}); e.g. reviews/v2=127.0.0.12:15000")
        })?;
        let (service, version) = match name.map(|n| n.split_once('/').unwrap_or((n, ""))) {
            Some(("", _)) => {
                return Err(format!(
                    "--admin {s:?}: the service name before `=` is empty"
                ));
            }
            Some((svc, v)) => (
                Some(svc.to_owned()),
                Some(v.to_owned()).filter(|v| !v.is_empty()),
            ),
            None => (None, None),
        };
        Ok(Self {
            address,
            service,
            version,
        })
    }
}

/// One round of a source: every sidecar it could read, and why the others
/// could not be read.
pub struct Scrape {
    pub at: Instant,
    pub workloads: Vec<Workload>,
    pub errors: Vec<String>,
}

/// The sending side a source writes its scrapes to.
pub type ScrapeSender = mpsc::Sender<Scrape>;

/// Rates are measured over about this long.
const WINDOW: Duration = Duration::from_secs(1);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Turns scrapes into graphs: each new scrape against the newest one kept
/// that is at least [`WINDOW`] older.
async fn graph_task(
    source: &'static str,
    mut scrapes: mpsc::Receiver<Scrape>,
    out: watch::Sender<Arc<GraphDoc>>,
) {
    let mut history: VecDeque<Scrape> = VecDeque::new();
    while let Some(now) = scrapes.recv().await {
        while history.len() > 1 && now.at.duration_since(history[1].at) >= WINDOW {
            history.pop_front();
        }
        let (before, seconds) = match history.front() {
            Some(b) => (
                b.workloads.as_slice(),
                now.at.duration_since(b.at).as_secs_f64(),
            ),
            None => (&[][..], 0.0),
        };
        let graph = graph::build(before, &now.workloads, seconds);
        let _ = out.send(Arc::new(GraphDoc {
            source: source.into(),
            generated_unix_ms: unix_ms(),
            graph,
            errors: now.errors.clone(),
        }));
        history.push_back(now);
        // Bounded: a scrape at least every 100 ms keeps ~10.
        while history.len() > 64 {
            history.pop_front();
        }
    }
}

/// Binds the page, starts the graph task, prints the URL; the returned
/// sender is the source's.
async fn start(listen: SocketAddr, source: &'static str) -> Result<ScrapeSender> {
    let listener = server::bind(listen).await?;
    // The bound address: `--listen 127.0.0.1:0` picks a free port.
    let bound = listener.local_addr().unwrap_or(listen);
    let (doc_tx, doc_rx) = watch::channel(Arc::new(GraphDoc {
        source: source.into(),
        generated_unix_ms: unix_ms(),
        ..GraphDoc::default()
    }));
    let (scrape_tx, scrape_rx) = mpsc::channel(8);
    tokio::spawn(graph_task(source, scrape_rx, doc_tx));
    let app = server::router(doc_rx);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the dashboard's server stopped");
        }
    });
    eprintln!("remoractl dashboard: open http://{bound}/ (graph JSON at /api/graph)");
    Ok(scrape_tx)
}

pub fn run(args: DashboardArgs) -> Result<ExitCode> {
    if args.demo {
        let listen = args.listen;
        // The demo owns the runtime (its children are started from the
        // main thread); the page is served from the same one.
        return demo::run_with(args.demo_args, move || async move {
            start(listen, "demo").await
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut source = if args.admins.is_empty() {
            let client = args.kube.client().await.context(
                "drawing a cluster's mesh (without one: --demo, or --admin ADDR for sidecars' admin addresses)",
            )?;
            let namespace = (!args.all_namespaces).then(|| {
                args.namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_owned())
            });
            Some(cluster::ClusterSource::new(client, namespace))
        } else {
            None
        };
        let name = if source.is_some() { "cluster" } else { "admin" };
        let tx = start(args.listen, name).await?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = tick.tick() => {}
            }
            let scrape = match &mut source {
                Some(cluster) => cluster.scrape().await,
                None => scrape_admins(&args.admins).await,
            };
            let _ = tx.try_send(scrape);
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// One read of every `--admin` sidecar.
async fn scrape_admins(targets: &[AdminTarget]) -> Scrape {
    let at = Instant::now();
    let mut workloads = Vec::new();
    let mut errors = Vec::new();
    for t in targets {
        match scrape::metrics(t.address).await {
            Ok(samples) => workloads.push(Workload {
                name: match (&t.service, &t.version) {
                    (Some(s), Some(v)) => format!("{s}-{v}"),
                    (Some(s), None) => s.clone(),
                    _ => t.address.to_string(),
                },
                service: t.service.clone().unwrap_or_else(|| t.address.to_string()),
                version: t.version.clone(),
                identity: None,
                samples,
            }),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    Scrape {
        at,
        workloads,
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_targets_parse_with_and_without_a_name() {
        let t: AdminTarget = "127.0.0.12:15000".parse().unwrap();
        assert_eq!((t.service, t.version), (None, None));
        let t: AdminTarget = "reviews/v2=127.0.0.12:15000".parse().unwrap();
        assert_eq!(t.service.as_deref(), Some("reviews"));
        assert_eq!(t.version.as_deref(), Some("v2"));
        assert_eq!(t.address, "127.0.0.12:15000".parse::<SocketAddr>().unwrap());
        let t: AdminTarget = "details=127.0.0.14:15000".parse().unwrap();
        assert_eq!((t.service.as_deref(), t.version), (Some("details"), None));
        let e = "reviews=localhost".parse::<AdminTarget>().unwrap_err();
        assert!(e.contains("\"localhost\" is not an address:port"), "{e}");
        let e = "=127.0.0.1:1".parse::<AdminTarget>().unwrap_err();
        assert!(e.contains("service name before `=` is empty"), "{e}");
    }
}
