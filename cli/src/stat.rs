//! `remoractl stat`: live numbers from sidecars' `/metrics`, the same the
//! demo shows: per listener the request rate, success rate and p50/p99, per
//! upstream cluster the request rate, retries and timeouts.
//!
//! It reads admin addresses directly (the demo's sidecars, a port-forward);
//! reading through the API server's pod proxy is not built yet.

use std::{collections::BTreeMap, net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use crate::demo::scrape::{Sample, histogram_quantile, metrics, sum};

#[derive(Args)]
pub struct StatArgs {
    /// A sidecar's admin address (`/metrics`); repeat for several.
    #[arg(long = "admin", required = true)]
    admins: Vec<SocketAddr>,
    /// Rates are measured over this interval (two reads of `/metrics`).
    #[arg(long, default_value = "1s")]
    interval: remora_api::Duration,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct SidecarStat {
    admin: String,
    listeners: Vec<ListenerStat>,
    clusters: Vec<ClusterStat>,
}

#[derive(Serialize)]
struct ListenerStat {
    listener: String,
    requests: f64,
    requests_per_second: f64,
    /// Requests not answered with a 5xx or a local error, in percent.
    success_percent: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

#[derive(Serialize)]
struct ClusterStat {
    cluster: String,
    requests: f64,
    requests_per_second: f64,
    retries: f64,
    timeouts: f64,
}

fn labels_of(samples: &[Sample], name: &str, key: &str) -> Vec<String> {
    let mut v: Vec<String> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter_map(|s| s.labels.get(key).cloned())
        .collect();
    v.sort();
    v.dedup();
    v
}

fn stat(admin: SocketAddr, before: &[Sample], after: &[Sample], seconds: f64) -> SidecarStat {
    let rate = |name: &str, labels: &[(&str, &str)]| {
        (sum(after, name, labels) - sum(before, name, labels)).max(0.0) / seconds
    };
    let listeners = labels_of(after, "downstream_request_total", "listener")
        .into_iter()
        .map(|l| {
            let k = [("listener", l.as_str())];
            let total = sum(after, "downstream_request_total", &k);
            let failed = sum(after, "downstream_request_failed", &k);
            let q = |q| {
                histogram_quantile(after, "downstream_request_duration_seconds", &k, q)
                    .map(|s| s * 1000.0)
            };
            ListenerStat {
                requests: total,
                requests_per_second: rate("downstream_request_total", &k),
                success_percent: (total > 0.0).then(|| 100.0 * (total - failed) / total),
                p50_ms: q(0.5),
                p99_ms: q(0.99),
                listener: l,
            }
        })
        .collect();
    let clusters = labels_of(after, "upstream_request_total", "cluster")
        .into_iter()
        .map(|c| {
            let k = [("cluster", c.as_str())];
            ClusterStat {
                requests: sum(after, "upstream_request_total", &k),
                requests_per_second: rate("upstream_request_total", &k),
                retries: sum(after, "upstream_request_retry", &k),
                timeouts: sum(after, "upstream_request_timeout", &k),
                cluster: c,
            }
        })
        .collect();
    SidecarStat {
        admin: admin.to_string(),
        listeners,
        clusters,
    }
}

pub fn run(args: StatArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let interval: Duration = args.interval.as_std().max(Duration::from_millis(100));
    let stats = rt.block_on(async {
        let mut before = BTreeMap::new();
        for a in &args.admins {
            before.insert(
                *a,
                metrics(*a)
                    .await
                    .with_context(|| format!("reading the sidecar at {a}"))?,
            );
        }
        tokio::time::sleep(interval).await;
        let mut out = Vec::new();
        for a in &args.admins {
            let after = metrics(*a)
                .await
                .with_context(|| format!("reading the sidecar at {a}"))?;
            out.push(stat(*a, &before[a], &after, interval.as_secs_f64()));
        }
        anyhow::Ok(out)
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(ExitCode::SUCCESS);
    }
    let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1} ms"));
    for s in &stats {
        println!("sidecar {}", s.admin);
        println!(
            "  {:<22} {:>9} {:>8} {:>8} {:>10} {:>10}",
            "LISTENER", "REQUESTS", "RPS", "OK %", "P50", "P99"
        );
        for l in &s.listeners {
            println!(
                "  {:<22} {:>9} {:>8.1} {:>8} {:>10} {:>10}",
                l.listener,
                l.requests,
                l.requests_per_second,
                l.success_percent
                    .map_or_else(|| "-".into(), |p| format!("{p:.1}")),
                ms(l.p50_ms),
                ms(l.p99_ms)
            );
        }
        if !s.clusters.is_empty() {
            println!(
                "  {:<32} {:>9} {:>8} {:>8} {:>9}",
                "CLUSTER", "REQUESTS", "RPS", "RETRIES", "TIMEOUTS"
            );
            for c in &s.clusters {
                println!(
                    "  {:<32} {:>9} {:>8.1} {:>8} {:>9}",
                    c.cluster, c.requests, c.requests_per_second, c.retries, c.timeouts
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
