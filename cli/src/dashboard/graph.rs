//! The mesh as a graph, from sidecars' `/metrics` samples only: services as
//! nodes, caller → service edges with rate, success, p99, the weighted split
//! across subsets, and whether the hop is mutual TLS.
//!
//! Any source plugs in by handing over one [`Workload`] per sidecar (the
//! demo's processes, `--admin` addresses, pods read through the API
//! server): the builder never asks where the samples came from.
//!
//! Where each number comes from:
//! - edge rate and split: the caller's `upstream_request_total` per cluster;
//!   cluster names are the operator's `<service>.<namespace>:<port>[|<subset>]`;
//! - edge success and p99: the destination's inbound listener
//!   (`downstream_request_total`/`_failed`, `downstream_request_duration_seconds`)
//!   summed over the service's scraped workloads, so with several callers
//!   it is the service's, not the caller's; when no destination workload was
//!   scraped, the caller's mean upstream time is shown instead of a p99;
//! - mTLS: the caller's `tls_handshake_total{direction="outbound",result="success"}`
//!   and every scraped destination's inbound successes (the caller's alone
//!   when no destination was scraped); metrics are per
//!   sidecar, not per peer, so a sidecar that speaks mTLS to one service and
//!   plaintext to another shows both as mTLS (the config is the authority).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::demo::scrape::{Sample, histogram_quantile, sum};

/// One sidecar's metrics, and who it is.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The pod or workload (`reviews-v2`), or the admin address.
    pub name: String,
    /// The Service it serves (`app` label); the name when unknown.
    pub service: String,
    /// Its `version` label, if any.
    pub version: Option<String>,
    /// Its SPIFFE ID, when the source knows it.
    pub identity: Option<String>,
    pub samples: Vec<Sample>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Default)]
pub struct Graph {
    /// The seconds between the two scrapes the rates come from.
    pub window_seconds: f64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Node {
    pub service: String,
    /// The scraped workloads serving it (empty for a service only seen as a
    /// destination).
    pub workloads: Vec<WorkloadFacts>,
    /// Requests per second its sidecars received (inbound), or sent when
    /// it only calls (a client).
    pub requests_per_second: f64,
    pub success_percent: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct WorkloadFacts {
    pub name: String,
    pub version: Option<String>,
    pub identity: Option<String>,
    /// The sidecar holds a workload certificate.
    pub has_certificate: bool,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// Upstream requests sent since the caller's sidecar started (each try).
    pub requests: f64,
    pub requests_per_second: f64,
    pub success_percent: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The caller's mean upstream time over the window, when no p99 is known.
    pub mean_ms: Option<f64>,
    /// Per subset, the share of `requests` (two or more subsets: a split).
    pub split: Vec<SplitShare>,
    pub mtls: HopSecurity,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct SplitShare {
    /// The subset (`v2`), or `-` for the service's cluster without one.
    pub subset: String,
    pub requests: f64,
    pub percent: f64,
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HopSecurity {
    /// Both sides counted successful mesh TLS handshakes.
    Mtls,
    /// The caller has no certificate and made no TLS handshake.
    Plaintext,
    /// Not enough samples to tell.
    Unknown,
}

/// `reviews.bookinfo:9080|v2` → (`reviews`, `v2`); None for clusters that
/// are not a service (`inbound|app`, `passthrough`).
pub fn parse_cluster(name: &str) -> Option<(&str, Option<&str>)> {
    let (base, subset) = match name.split_once('|') {
        Some((b, s)) => (b, Some(s)),
        None => (name, None),
    };
    let (host, port) = base.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let service = host.split('.').next().filter(|s| !s.is_empty())?;
    Some((service, subset.filter(|s| !s.is_empty())))
}

/// Counters over the window: `now - before` per series (a series that went
/// down restarted, so its value now is all of the window).
pub fn delta(before: &[Sample], now: &[Sample]) -> Vec<Sample> {
    let key = |s: &Sample| (s.name.clone(), s.labels.clone());
    let old: BTreeMap<_, f64> = before.iter().map(|s| (key(s), s.value)).collect();
    now.iter()
        .map(|s| {
            let was = old.get(&key(s)).copied().unwrap_or(0.0);
            Sample {
                name: s.name.clone(),
                labels: s.labels.clone(),
                value: if s.value >= was {
                    s.value - was
                } else {
                    s.value
                },
            }
        })
        .collect()
}

/// Several sidecars' samples as one: same name and labels summed.
fn merge<'a>(sets: impl IntoIterator<Item = &'a [Sample]>) -> Vec<Sample> {
    let mut out: BTreeMap<(String, BTreeMap<String, String>), f64> = BTreeMap::new();
    for set in sets {
        for s in set {
            *out.entry((s.name.clone(), s.labels.clone())).or_default() += s.value;
        }
    }
    out.into_iter()
        .map(|((name, labels), value)| Sample {
            name,
            labels,
            value,
        })
        .collect()
}

/// Requests, success and p99 of one listener over merged window samples.
struct ListenerWindow {
    requests: f64,
    success_percent: Option<f64>,
    p99_ms: Option<f64>,
}

fn listener_window(window: &[Sample], listener: &str) -> ListenerWindow {
    let l = [("listener", listener)];
    let requests = sum(window, "downstream_request_total", &l);
    let failed = sum(window, "downstream_request_failed", &l);
    ListenerWindow {
        requests,
        success_percent: (requests > 0.0).then(|| 100.0 * (requests - failed).max(0.0) / requests),
        p99_ms: histogram_quantile(window, "downstream_request_duration_seconds", &l, 0.99)
            .map(|s| s * 1000.0),
    }
}

fn handshakes(samples: &[Sample], direction: &str, result: &str) -> f64 {
    sum(
        samples,
        "tls_handshake_total",
        &[("direction", direction), ("result", result)],
    )
}

pub(crate) fn has_certificate(samples: &[Sample]) -> bool {
    samples
        .iter()
        .any(|s| s.name == "tls_certificate_expiration_timestamp_seconds" && s.value > 0.0)
}

/// The graph from two scrapes of the same sidecars, `seconds` apart
/// (`before` may be empty: rates are then zero). Nodes and edges are
/// sorted, so equal inputs give equal graphs.
pub fn build(before: &[Workload], now: &[Workload], seconds: f64) -> Graph {
    let empty = Vec::new();
    let window_of = |w: &Workload| {
        let old = before
            .iter()
            .find(|b| b.name == w.name)
            .map_or(&empty, |b| &b.samples);
        delta(old, &w.samples)
    };
    let windows: BTreeMap<&str, Vec<Sample>> = now
        .iter()
        .map(|w| (w.name.as_str(), window_of(w)))
        .collect();
    let per_second = |n: f64| if seconds > 0.0 { n / seconds } else { 0.0 };

    let mut services: BTreeMap<String, Vec<&Workload>> = BTreeMap::new();
    for w in now {
        services.entry(w.service.clone()).or_default().push(w);
    }

    // Edges: one per (caller service, destination service).
    #[derive(Default)]
    struct EdgeSum {
        /// Subset -> (requests so far, requests in the window).
        subsets: BTreeMap<String, (f64, f64)>,
        upstream_nanos: f64,
        callers_outbound_tls: f64,
        callers_with_cert: bool,
    }
    let mut edges: BTreeMap<(String, String), EdgeSum> = BTreeMap::new();
    for w in now {
        let window = &windows[w.name.as_str()];
        let mut clusters: Vec<&str> = w
            .samples
            .iter()
            .filter(|s| s.name == "upstream_request_total")
            .filter_map(|s| s.labels.get("cluster").map(String::as_str))
            .collect();
        clusters.sort_unstable();
        clusters.dedup();
        for cluster in clusters {
            let Some((to, subset)) = parse_cluster(cluster) else {
                continue;
            };
            let c = [("cluster", cluster)];
            let e = edges.entry((w.service.clone(), to.to_owned())).or_default();
            let share = e
                .subsets
                .entry(subset.unwrap_or("-").to_owned())
                .or_default();
            share.0 += sum(&w.samples, "upstream_request_total", &c);
            share.1 += sum(window, "upstream_request_total", &c);
            e.upstream_nanos += sum(window, "upstream_request_duration_time_total", &c);
            e.callers_outbound_tls += handshakes(&w.samples, "outbound", "success");
            e.callers_with_cert |= has_certificate(&w.samples);
        }
    }

    // Sidecars register every cluster of their config at start: a cluster
    // that never had a request is not a call, and a subset that had none
    // is no part of a split.
    for e in edges.values_mut() {
        e.subsets.retain(|_, (n, _)| *n > 0.0);
    }
    edges.retain(|_, e| !e.subsets.is_empty());
    let edges: Vec<Edge> = edges
        .into_iter()
        .map(|((from, to), e)| {
            let requests: f64 = e.subsets.values().map(|s| s.0).sum();
            let in_window: f64 = e.subsets.values().map(|s| s.1).sum();
            let dest = services.get(&to).map(Vec::as_slice).unwrap_or_default();
            let dest_window = merge(dest.iter().map(|w| windows[w.name.as_str()].as_slice()));
            let inbound = listener_window(&dest_window, "inbound");
            let dest_tls = dest
                .iter()
                .all(|w| handshakes(&w.samples, "inbound", "success") > 0.0);
            let mtls = if e.callers_outbound_tls > 0.0 && dest_tls {
                HopSecurity::Mtls
            } else if e.callers_outbound_tls == 0.0 && !e.callers_with_cert && requests > 0.0 {
                HopSecurity::Plaintext
            } else {
                HopSecurity::Unknown
            };
            let split = e
                .subsets
                .iter()
                .map(|(subset, (n, _))| SplitShare {
                    subset: subset.clone(),
                    requests: *n,
                    percent: if requests > 0.0 {
                        100.0 * n / requests
                    } else {
                        0.0
                    },
                })
                .collect();
            Edge {
                requests,
                requests_per_second: per_second(in_window),
                success_percent: inbound.success_percent,
                p99_ms: inbound.p99_ms,
                mean_ms: (inbound.p99_ms.is_none() && in_window > 0.0)
                    .then(|| e.upstream_nanos / in_window / 1e6),
                split,
                mtls,
                from,
                to,
            }
        })
        .collect();

    // Nodes: every scraped service, and every destination seen.
    for e in &edges {
        services.entry(e.to.clone()).or_default();
    }
    let nodes = services
        .iter()
        .map(|(service, ws)| {
            let merged = merge(ws.iter().map(|w| windows[w.name.as_str()].as_slice()));
            let inbound = listener_window(&merged, "inbound");
            let serving = inbound.requests > 0.0
                || ws.iter().any(|w| {
                    sum(
                        &w.samples,
                        "downstream_request_total",
                        &[("listener", "inbound")],
                    ) > 0.0
                });
            let l = if serving {
                inbound
            } else {
                listener_window(&merged, "outbound")
            };
            let mut workloads: Vec<WorkloadFacts> = ws
                .iter()
                .map(|w| WorkloadFacts {
                    name: w.name.clone(),
                    version: w.version.clone(),
                    identity: w.identity.clone(),
                    has_certificate: has_certificate(&w.samples),
                })
                .collect();
            workloads.sort_by(|a, b| a.name.cmp(&b.name));
            Node {
                service: service.clone(),
                workloads,
                requests_per_second: per_second(l.requests),
                success_percent: l.success_percent,
                p99_ms: l.p99_ms,
            }
        })
        .collect();

    Graph {
        window_seconds: seconds,
        nodes,
        edges,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::scrape::parse;

    fn workload(name: &str, service: &str, version: Option<&str>, metrics: &str) -> Workload {
        Workload {
            name: name.into(),
            service: service.into(),
            version: version.map(Into::into),
            identity: Some(format!("spiffe://cluster.local/ns/bookinfo/sa/{service}")),
            samples: parse(metrics),
        }
    }

    /// The client after 2,000 reviews calls (1,900 / 100) and 100 details
    /// calls; the reviews pods' inbound listeners; one second earlier the
    /// client had sent 1,710 / 90 and the servers had answered as many.
    fn scrapes() -> (Vec<Workload>, Vec<Workload>) {
        let client = |v1: u32, v2: u32, details: u32| {
            format!(
                "upstream_request_total{{cluster=\"reviews.bookinfo:9080|v1\"}} {v1}\n\
                 upstream_request_total{{cluster=\"reviews.bookinfo:9080|v2\"}} {v2}\n\
                 upstream_request_total{{cluster=\"details.bookinfo:9080\"}} {details}\n\
                 upstream_request_duration_time_total{{cluster=\"details.bookinfo:9080\"}} {}\n\
                 upstream_request_total{{cluster=\"inbound|app\"}} 0\n\
                 upstream_request_total{{cluster=\"reviews.bookinfo:9080\"}} 0\n\
                 upstream_request_total{{cluster=\"ratings.bookinfo:9080\"}} 0\n\
                 downstream_request_total{{listener=\"outbound\"}} {}\n\
                 tls_handshake_total{{direction=\"outbound\",result=\"success\"}} 12\n\
                 tls_certificate_expiration_timestamp_seconds 1900000000\n",
                u64::from(details) * 4_000_000,
                v1 + v2 + details
            )
        };
        let server = |n: u32, failed: u32, fast: u32| {
            format!(
                "downstream_request_total{{listener=\"inbound\"}} {n}\n\
                 downstream_request_failed{{listener=\"inbound\"}} {failed}\n\
                 downstream_request_duration_seconds_bucket{{listener=\"inbound\",le=\"0.005\"}} {fast}\n\
                 downstream_request_duration_seconds_bucket{{listener=\"inbound\",le=\"0.01\"}} {n}\n\
                 downstream_request_duration_seconds_bucket{{listener=\"inbound\",le=\"+Inf\"}} {n}\n\
                 upstream_request_total{{cluster=\"inbound|app\"}} {n}\n\
                 upstream_request_total{{cluster=\"details.bookinfo:9080\"}} 0\n\
                 tls_handshake_total{{direction=\"inbound\",result=\"success\"}} 6\n\
                 tls_certificate_expiration_timestamp_seconds 1900000000\n"
            )
        };
        let before = vec![
            workload(
                "productpage-v1",
                "productpage",
                Some("v1"),
                &client(1710, 90, 90),
            ),
            workload("reviews-v1", "reviews", Some("v1"), &server(1710, 0, 1710)),
            workload("reviews-v2", "reviews", Some("v2"), &server(90, 0, 90)),
        ];
        let now = vec![
            workload(
                "productpage-v1",
                "productpage",
                Some("v1"),
                &client(1900, 100, 100),
            ),
            // In the window: 190 answered, 2 failed, 10 slower than 5 ms.
            workload("reviews-v1", "reviews", Some("v1"), &server(1900, 2, 1890)),
            workload("reviews-v2", "reviews", Some("v2"), &server(100, 0, 100)),
        ];
        (before, now)
    }

    #[test]
    fn clusters_name_their_service_and_subset() {
        assert_eq!(
            parse_cluster("reviews.bookinfo:9080|v2"),
            Some(("reviews", Some("v2")))
        );
        assert_eq!(
            parse_cluster("details.bookinfo:9080"),
            Some(("details", None))
        );
        assert_eq!(parse_cluster("inbound|app"), None);
        assert_eq!(parse_cluster("passthrough"), None);
        assert_eq!(parse_cluster(":80"), None);
    }

    #[test]
    fn the_canary_edge_has_its_split_rate_success_p99_and_mtls() {
        let (before, now) = scrapes();
        let g = build(&before, &now, 1.0);
        let services: Vec<&str> = g.nodes.iter().map(|n| n.service.as_str()).collect();
        assert_eq!(services, ["details", "productpage", "reviews"]);
        // Clusters without a request (ratings, the servers' details) are no
        // edge, and reviews' subset-less cluster is no part of its split.
        assert_eq!(g.edges.len(), 2, "{:?}", g.edges);

        let reviews = g.edges.iter().find(|e| e.to == "reviews").unwrap();
        assert_eq!(reviews.from, "productpage");
        assert_eq!(reviews.requests, 2000.0);
        assert_eq!(reviews.requests_per_second, 200.0);
        let split: Vec<(&str, f64)> = reviews
            .split
            .iter()
            .map(|s| (s.subset.as_str(), s.percent))
            .collect();
        assert_eq!(split, [("v1", 95.0), ("v2", 5.0)]);
        // 200 answered in the window by both pods, 2 failed.
        assert_eq!(reviews.success_percent, Some(99.0));
        // 10 of 200 slower than 5 ms: the 198th is in the 5-10 ms bucket,
        // 8/10 of the way.
        let p99 = reviews.p99_ms.unwrap();
        assert!((p99 - 9.0).abs() < 1e-9, "p99 {p99}");
        assert_eq!(reviews.mean_ms, None);
        assert_eq!(reviews.mtls, HopSecurity::Mtls);

        // details has no scraped workload: no success or p99, the caller's
        // mean time instead; mTLS rests on the caller's handshakes alone.
        let details = g.edges.iter().find(|e| e.to == "details").unwrap();
        assert_eq!(details.requests_per_second, 10.0);
        assert_eq!(details.success_percent, None);
        assert_eq!(details.mean_ms, Some(4.0));
        assert_eq!(details.split.len(), 1);
        assert_eq!(details.split[0].subset, "-");
        assert_eq!(details.mtls, HopSecurity::Mtls);

        let node = |s: &str| g.nodes.iter().find(|n| n.service == s).unwrap();
        assert_eq!(node("reviews").workloads.len(), 2);
        assert_eq!(node("reviews").requests_per_second, 200.0);
        assert_eq!(node("reviews").success_percent, Some(99.0));
        // The client serves nothing: its outbound listener's numbers.
        assert_eq!(node("productpage").requests_per_second, 210.0);
        assert!(node("details").workloads.is_empty());
        assert!(node("productpage").workloads[0].has_certificate);
    }

    #[test]
    fn plaintext_hops_and_restarted_counters() {
        let caller = "upstream_request_total{cluster=\"ratings.bookinfo:9080\"} 5\n";
        let now = vec![workload("a", "a", None, caller)];
        // A counter lower than before: the sidecar restarted.
        let before = vec![workload(
            "a",
            "a",
            None,
            "upstream_request_total{cluster=\"ratings.bookinfo:9080\"} 50\n",
        )];
        let g = build(&before, &now, 1.0);
        let e = &g.edges[0];
        assert_eq!(e.mtls, HopSecurity::Plaintext);
        assert_eq!(e.requests_per_second, 5.0);
        // Without a window, rates are zero but totals and splits stand.
        let g = build(&[], &now, 0.0);
        assert_eq!(g.edges[0].requests_per_second, 0.0);
        assert_eq!(g.edges[0].requests, 5.0);
        assert_eq!(g.edges[0].split[0].percent, 100.0);
        assert_eq!(build(&before, &now, 1.0), build(&before, &now, 1.0));
    }
}
