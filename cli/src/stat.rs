//! `remoractl stat` and `top`: live numbers from sidecars' `/metrics`, the
//! same the demo shows: per listener the request rate, success rate and
//! p50/p99, per upstream cluster the request rate, retries and timeouts.
//!
//! In a cluster the sidecars of injected pods are read through the API
//! server's pod proxy ([`crate::cluster`]) and summed per workload (the
//! owning Deployment or other controller, else the `app` label, else the
//! pod); `--admin` reads admin addresses directly (the demo's sidecars, a
//! port-forward), one table per address.

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    net::SocketAddr,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use crate::{
    cluster::{self, KubeArgs},
    demo::scrape::{Sample, histogram_quantile, metrics, sum},
};

/// Which sidecars to read.
#[derive(Args)]
pub struct Sources {
    /// `deploy/NAME` or `pod/NAME` (default: every injected pod in the namespace).
    #[arg(conflicts_with = "admins")]
    target: Option<String>,
    /// The namespace (default: the kubeconfig context's).
    #[arg(short, long, conflicts_with = "admins")]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with_all = ["admins", "namespace", "target"])]
    all_namespaces: bool,
    /// Read a sidecar's admin address directly instead of a cluster; repeat
    /// for several.
    #[arg(long = "admin")]
    admins: Vec<SocketAddr>,
    #[command(flatten)]
    kube: KubeArgs,
}

#[derive(Args)]
pub struct StatArgs {
    #[command(flatten)]
    sources: Sources,
    /// Rates are measured over this interval (two reads of `/metrics`).
    #[arg(long, default_value = "1s")]
    interval: remora_api::Duration,
    /// `text`: a table per workload (or admin address); `json`: an array of
    /// {workload, pods, listeners, clusters}.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// The same as `--output json`.
    #[arg(long, hide = true)]
    json: bool,
}

#[derive(Args)]
pub struct TopArgs {
    #[command(flatten)]
    sources: Sources,
    /// How often the table refreshes (rates are over this interval).
    #[arg(long, default_value = "2s")]
    interval: remora_api::Duration,
    /// Stop after this many tables (default: until Ctrl-C).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    count: Option<u32>,
    /// `json`: one JSON document per refresh, one per line.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Serialize)]
struct SidecarStat {
    /// The admin address read (`--admin`).
    #[serde(skip_serializing_if = "Option::is_none")]
    admin: Option<String>,
    /// `namespace/kind/name` of the workload (in a cluster).
    #[serde(skip_serializing_if = "Option::is_none")]
    workload: Option<String>,
    /// Its pods whose sidecars were read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pods: Vec<String>,
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

fn stat(before: &[Sample], after: &[Sample], seconds: f64) -> SidecarStat {
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
        admin: None,
        workload: None,
        pods: Vec::new(),
        listeners,
        clusters,
    }
}

/// The samples of several sidecars summed series by series (counters and
/// histogram buckets add up across the pods of a workload).
fn merge<'a>(sets: impl IntoIterator<Item = &'a [Sample]>) -> Vec<Sample> {
    let mut sums: BTreeMap<(String, Vec<(String, String)>), f64> = BTreeMap::new();
    for set in sets {
        for s in set {
            let labels = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            *sums.entry((s.name.clone(), labels)).or_default() += s.value;
        }
    }
    sums.into_iter()
        .map(|((name, labels), value)| Sample {
            name,
            labels: labels.into_iter().collect(),
            value,
        })
        .collect()
}

/// `deploy/NAME` for a ReplicaSet's pod, `KIND/NAME` for another owner,
/// `app/NAME` by label, else `pod/NAME`.
fn workload_of(pod: &Pod) -> String {
    if let Some(owner) = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
    {
        if owner.kind == "ReplicaSet" {
            let hash = pod.labels().get("pod-template-hash");
            if let Some(deploy) = hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
                return format!("deploy/{deploy}");
            }
        }
        return format!("{}/{}", owner.kind.to_ascii_lowercase(), owner.name);
    }
    match pod.labels().get("app") {
        Some(app) => format!("app/{app}"),
        None => format!("pod/{}", pod.name_any()),
    }
}

/// The sidecars a run reads: admin addresses, or injected pods in a cluster.
enum Sidecars {
    Admin(Vec<SocketAddr>),
    Cluster {
        client: Client,
        namespace: Option<String>,
        target: Option<String>,
    },
}

/// One read of every sidecar: the samples per table (an admin address, or a
/// workload with the pods read).
type Scrape = BTreeMap<String, (Vec<String>, Vec<Sample>)>;

impl Sidecars {
    async fn new(s: &Sources) -> Result<Self> {
        if !s.admins.is_empty() {
            return Ok(Self::Admin(s.admins.clone()));
        }
        let client = s.kube.client().await?;
        let namespace = if s.all_namespaces {
            None
        } else {
            Some(
                s.namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_owned()),
            )
        };
        Ok(Self::Cluster {
            client,
            namespace,
            target: s.target.clone(),
        })
    }

    async fn pods(
        client: &Client,
        namespace: Option<&str>,
        target: Option<&str>,
    ) -> Result<Vec<Pod>> {
        let Some(target) = target else {
            return cluster::injected_pods(client, namespace, None).await;
        };
        let ns = namespace.unwrap_or("default");
        let (kind, name) = target
            .split_once('/')
            .with_context(|| format!("target {target:?}: expected deploy/NAME or pod/NAME"))?;
        match kind {
            "pod" | "pods" | "po" => {
                let pod = Api::<Pod>::namespaced(client.clone(), ns)
                    .get(name)
                    .await
                    .with_context(|| format!("reading pod {ns}/{name}"))?;
                if cluster::proxy_container(&pod).is_none() {
                    bail!(
                        "pod {ns}/{name} has no {} sidecar: it is not in the mesh",
                        remora_webhook::inject::PROXY_CONTAINER
                    );
                }
                Ok(vec![pod])
            }
            "deploy" | "deployment" | "deployments" => {
                let d = Api::<Deployment>::namespaced(client.clone(), ns)
                    .get(name)
                    .await
                    .with_context(|| format!("reading deployment {ns}/{name}"))?;
                let selector = d
                    .spec
                    .and_then(|s| s.selector.match_labels)
                    .unwrap_or_default()
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
                if selector.is_empty() {
                    bail!(
                        "deployment {ns}/{name} has no spec.selector.matchLabels to find its pods by"
                    );
                }
                cluster::injected_pods(client, Some(ns), Some(&selector)).await
            }
            other => bail!("target {target:?}: kind {other:?} is not deploy or pod"),
        }
    }

    async fn scrape(&self) -> Result<Scrape> {
        let mut out = Scrape::new();
        match self {
            Self::Admin(admins) => {
                for a in admins {
                    let m = metrics(*a)
                        .await
                        .with_context(|| format!("reading the sidecar at {a}"))?;
                    out.insert(a.to_string(), (Vec::new(), m));
                }
            }
            Self::Cluster {
                client,
                namespace,
                target,
            } => {
                let pods = Self::pods(client, namespace.as_deref(), target.as_deref()).await?;
                let mut groups: BTreeMap<String, Vec<(String, Vec<Sample>)>> = BTreeMap::new();
                for p in pods.iter().filter(|p| cluster::has_ip(p)) {
                    match cluster::sidecar_metrics(client, p).await {
                        Ok(m) => groups
                            .entry(format!(
                                "{}/{}",
                                p.namespace().unwrap_or_default(),
                                workload_of(p)
                            ))
                            .or_default()
                            .push((p.name_any(), m)),
                        // One pod going away must not stop the table.
                        Err(e) => eprintln!("skipping pod {}: {e:#}", cluster::pod_key(p)),
                    }
                }
                for (workload, pods) in groups {
                    let merged = merge(pods.iter().map(|(_, m)| m.as_slice()));
                    out.insert(
                        workload,
                        (pods.into_iter().map(|(n, _)| n).collect(), merged),
                    );
                }
            }
        }
        Ok(out)
    }

    fn is_admin(&self) -> bool {
        matches!(self, Self::Admin(_))
    }
}

/// The stats between two reads, per table.
fn stats(sidecars: &Sidecars, before: &Scrape, after: &Scrape, seconds: f64) -> Vec<SidecarStat> {
    after
        .iter()
        .map(|(key, (pods, samples))| {
            let empty = Vec::new();
            let prev = before.get(key).map_or(&empty, |(_, s)| s);
            let mut s = stat(prev, samples, seconds);
            if sidecars.is_admin() {
                s.admin = Some(key.clone());
            } else {
                s.workload = Some(key.clone());
                s.pods = pods.clone();
            }
            s
        })
        .collect()
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub fn run(args: StatArgs) -> Result<ExitCode> {
    let interval: Duration = args.interval.as_std().max(Duration::from_millis(100));
    let stats = runtime()?.block_on(async {
        let sidecars = Sidecars::new(&args.sources).await?;
        let started = Instant::now();
        let before = sidecars.scrape().await?;
        tokio::time::sleep(interval).await;
        let after = sidecars.scrape().await?;
        if after.is_empty() && !sidecars.is_admin() {
            bail!("no running injected pods found (label remora.dev/sidecar=injected)");
        }
        anyhow::Ok(stats(
            &sidecars,
            &before,
            &after,
            started.elapsed().as_secs_f64(),
        ))
    })?;
    if args.json || args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        print!("{}", table(&stats));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn top(args: TopArgs) -> Result<ExitCode> {
    let interval: Duration = args.interval.as_std().max(Duration::from_millis(100));
    let clear = args.output == Output::Text && std::io::stdout().is_terminal();
    runtime()?.block_on(async {
        let sidecars = Sidecars::new(&args.sources).await?;
        let mut before = sidecars.scrape().await?;
        let mut at = Instant::now();
        let mut shown = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = tokio::signal::ctrl_c() => return anyhow::Ok(ExitCode::SUCCESS),
            }
            let after = sidecars.scrape().await?;
            let now = Instant::now();
            let stats = stats(&sidecars, &before, &after, (now - at).as_secs_f64());
            let mut out = std::io::stdout().lock();
            if args.output == Output::Json {
                writeln!(out, "{}", serde_json::to_string(&stats)?)?;
            } else {
                if clear {
                    // Home and clear, as `top` does.
                    write!(out, "\x1b[H\x1b[2J")?;
                }
                writeln!(
                    out,
                    "every {:.1} s{}",
                    interval.as_secs_f64(),
                    if clear { ", Ctrl-C to stop" } else { "" }
                )?;
                write!(out, "{}", table(&stats))?;
                if stats.is_empty() {
                    writeln!(out, "(no running injected pods)")?;
                }
            }
            out.flush()?;
            shown += 1;
            if args.count.is_some_and(|c| shown >= c) {
                return Ok(ExitCode::SUCCESS);
            }
            (before, at) = (after, now);
        }
    })
}

fn table(stats: &[SidecarStat]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1} ms"));
    for s in stats {
        match (&s.admin, &s.workload) {
            (Some(a), _) => {
                let _ = writeln!(out, "sidecar {a}");
            }
            (None, Some(w)) => {
                let _ = writeln!(out, "{w} ({} pods: {})", s.pods.len(), s.pods.join(", "));
            }
            (None, None) => {}
        }
        let _ = writeln!(
            out,
            "  {:<22} {:>9} {:>8} {:>8} {:>10} {:>10}",
            "LISTENER", "REQUESTS", "RPS", "OK %", "P50", "P99"
        );
        for l in &s.listeners {
            let _ = writeln!(
                out,
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
            let _ = writeln!(
                out,
                "  {:<32} {:>9} {:>8} {:>8} {:>9}",
                "CLUSTER", "REQUESTS", "RPS", "RETRIES", "TIMEOUTS"
            );
            for c in &s.clusters {
                let _ = writeln!(
                    out,
                    "  {:<32} {:>9} {:>8.1} {:>8} {:>9}",
                    c.cluster, c.requests, c.requests_per_second, c.retries, c.timeouts
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::scrape::parse;

    #[test]
    fn pods_of_a_workload_add_up_before_quantiles() {
        let a = parse(
            "downstream_request_total{listener=\"inbound\"} 10\n\
             d_bucket{listener=\"inbound\",le=\"0.001\"} 10\n\
             d_bucket{listener=\"inbound\",le=\"+Inf\"} 10\n",
        );
        let b = parse(
            "downstream_request_total{listener=\"inbound\"} 30\n\
             d_bucket{listener=\"inbound\",le=\"0.001\"} 0\n\
             d_bucket{listener=\"inbound\",le=\"+Inf\"} 30\n",
        );
        let m = merge([a.as_slice(), b.as_slice()]);
        assert_eq!(
            sum(&m, "downstream_request_total", &[("listener", "inbound")]),
            40.0
        );
        // 10 of 40 under 1 ms: the median lies in the +Inf bucket, so the
        // last finite bound.
        let p50 = histogram_quantile(&m, "d", &[("listener", "inbound")], 0.5).unwrap();
        assert_eq!(p50, 0.001);
        let p10 = histogram_quantile(&m, "d", &[("listener", "inbound")], 0.1).unwrap();
        assert!(p10 < 0.001, "{p10}");
    }

    #[test]
    fn workloads_are_named_after_their_controller() {
        let pod = |meta: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({ "metadata": meta })).unwrap()
        };
        let rs = pod(
            serde_json::json!({"name": "reviews-7d9f-abc", "labels": {"pod-template-hash": "7d9f", "app": "reviews"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "reviews-7d9f", "uid": "u", "controller": true}]}),
        );
        assert_eq!(workload_of(&rs), "deploy/reviews");
        let sts = pod(serde_json::json!({"name": "db-0",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u", "controller": true}]}));
        assert_eq!(workload_of(&sts), "statefulset/db");
        assert_eq!(
            workload_of(&pod(
                serde_json::json!({"name": "x", "labels": {"app": "ratings"}})
            )),
            "app/ratings"
        );
        assert_eq!(workload_of(&pod(serde_json::json!({"name": "x"}))), "pod/x");
    }
}
