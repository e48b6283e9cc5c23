//! What the demo saw, from two sides: the answers the apps gave the client
//! (which version served, which caller identity they received) and the
//! sidecars' own `/metrics`. The same numbers feed the live view, the
//! summary in words and `--output json`.

use std::collections::BTreeMap;

use remora_api::config::{RouteAction, SidecarConfig, selector_matches};
use serde::Serialize;

use super::{
    scrape::{Sample, histogram_quantile, sum},
    topology::Plan,
    traffic::{ROUTES, RouteStats, TENANT_HEADER},
};

#[derive(Serialize, Debug, Clone)]
pub struct Report {
    /// Seconds of traffic actually sent.
    pub duration_seconds: f64,
    /// Requested calls per second, all routes together.
    pub rate: u32,
    /// Stopped early by Ctrl-C or SIGTERM.
    pub interrupted: bool,
    pub config: ConfigFacts,
    pub pods: Vec<PodFacts>,
    pub routes: Vec<RouteReport>,
    pub canary: Option<Canary>,
    pub rate_limit: Option<RateLimitReport>,
    pub mtls: Mtls,
    pub cleanup: Cleanup,
}

#[derive(Serialize, Debug, Clone)]
pub struct ConfigFacts {
    pub rendered_from: Vec<String>,
    pub namespace: String,
    /// Content hash of the operator's render (before local addresses).
    pub hash: String,
    pub mtls: String,
}

#[derive(Serialize, Debug, Clone)]
pub struct PodFacts {
    pub name: String,
    pub address: String,
    pub identity: String,
    pub app: Option<String>,
    /// From the pod's sidecar's `/metrics`: requests its listener for the
    /// pod's traffic (inbound for servers, outbound for the client) handled.
    pub sidecar_requests: f64,
    pub sidecar_failed: f64,
    pub sidecar_p50_ms: Option<f64>,
    pub sidecar_p99_ms: Option<f64>,
}

#[derive(Serialize, Debug, Clone)]
pub struct RouteReport {
    pub service: String,
    pub protocol: String,
    pub requests: u64,
    pub ok: u64,
    pub limited: u64,
    pub failed: u64,
    /// Ticks skipped because `MAX_IN_FLIGHT` calls were already out.
    pub skipped: u64,
    /// ok / answered calls, in percent.
    pub success_percent: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Status codes and errors, with counts.
    pub outcomes: BTreeMap<String, u64>,
    /// Which version answered, from the apps' answers.
    pub versions: BTreeMap<String, u64>,
}

#[derive(Serialize, Debug, Clone)]
pub struct Canary {
    pub service: String,
    /// Subset -> weight, from the rendered route.
    pub target: BTreeMap<String, u32>,
    /// Subset -> calls it answered (the apps' `x-echo-version`).
    pub served: BTreeMap<String, u64>,
    /// Subset -> upstream requests the client's sidecar sent to its cluster.
    pub sidecar_upstream: BTreeMap<String, f64>,
    pub total: u64,
    /// Subset -> percent of `total`.
    pub percent: BTreeMap<String, f64>,
    /// The largest distance, in calls, of a subset's count from its exact
    /// share of `total` (the sidecar's split is a schedule, not a dice
    /// roll, so this stays at a call or two whatever the count).
    pub off_by_calls: f64,
}

#[derive(Serialize, Debug, Clone)]
pub struct RateLimitReport {
    pub service: String,
    /// The limit that refused calls (the example's per-tenant write limit).
    pub limit: String,
    pub requests_per_second: f64,
    pub burst: u32,
    /// The header that keys one bucket per value.
    pub per_header: Option<String>,
    /// Calls sent, and how many came back 429 (client side).
    pub sent: u64,
    pub limited_429: u64,
    /// Per tenant: calls sent, answered 429, and sent per second.
    pub tenants: BTreeMap<String, TenantReport>,
    /// The limited service's sidecar's `ratelimit_requests_total` for `limit`.
    pub sidecar_allowed: f64,
    pub sidecar_limited: f64,
}

#[derive(Serialize, Debug, Clone)]
pub struct TenantReport {
    pub sent: u64,
    pub limited_429: u64,
    pub sent_per_second: f64,
}

#[derive(Serialize, Debug, Clone)]
pub struct Mtls {
    pub mode: String,
    /// Per serving pod: its identity and the callers its app received.
    pub servers: Vec<ServerIdentity>,
    /// `tls_handshake_total` over every sidecar, by `direction/result`.
    pub handshakes: BTreeMap<String, f64>,
    pub plaintext_probe: Option<PlaintextProbe>,
}

#[derive(Serialize, Debug, Clone)]
pub struct ServerIdentity {
    pub pod: String,
    pub identity: String,
    /// Caller identity (`URI=` of `x-forwarded-client-cert`) -> calls.
    pub callers: BTreeMap<String, u64>,
}

#[derive(Serialize, Debug, Clone)]
pub struct PlaintextProbe {
    pub pod: String,
    pub address: String,
    /// The sidecar gave no HTTP answer to a plaintext request.
    pub refused: bool,
    /// What came back, in a few words.
    pub answer: String,
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct Cleanup {
    pub work_dir: String,
    pub work_dir_removed: bool,
    /// Every child the demo started, all stopped before the summary.
    pub pids: Vec<u32>,
    pub processes_stopped: usize,
}

pub struct Inputs<'a> {
    pub plan: &'a Plan,
    pub stats: &'a [RouteStats],
    /// Pod name -> its sidecar's last `/metrics`.
    pub metrics: &'a BTreeMap<String, Vec<Sample>>,
    pub duration_seconds: f64,
    pub rate: u32,
    pub interrupted: bool,
    pub plaintext_probe: Option<PlaintextProbe>,
    pub cleanup: Cleanup,
}

pub fn build(i: Inputs<'_>) -> Report {
    let plan = i.plan;
    let no_samples = Vec::new();
    let metrics_of = |pod: &str| i.metrics.get(pod).unwrap_or(&no_samples);
    let client = plan.client();

    let pods = plan
        .pods
        .iter()
        .map(|p| {
            let m = metrics_of(&p.name);
            let listener = if p.inbound.is_some() {
                "inbound"
            } else {
                "outbound"
            };
            let l = [("listener", listener)];
            let q = |q| {
                histogram_quantile(m, "downstream_request_duration_seconds", &l, q)
                    .map(|s| s * 1000.0)
            };
            PodFacts {
                name: p.name.clone(),
                address: p.ip.to_string(),
                identity: p.spiffe_id(&plan.trust_domain, &plan.namespace),
                app: p
                    .app
                    .as_ref()
                    .map(|a| format!("{:?} on {}", a.kind, a.address).to_lowercase()),
                sidecar_requests: sum(m, "downstream_request_total", &l),
                sidecar_failed: sum(m, "downstream_request_failed", &l),
                sidecar_p50_ms: q(0.5),
                sidecar_p99_ms: q(0.99),
            }
        })
        .collect();

    let routes: Vec<RouteReport> = ROUTES
        .iter()
        .zip(i.stats)
        .map(|(spec, s)| RouteReport {
            service: spec.service.into(),
            protocol: spec.protocol.label().into(),
            requests: s.sent,
            ok: s.ok,
            limited: s.limited,
            failed: s.failed,
            skipped: s.skipped,
            success_percent: percent(s.ok, s.ok + s.limited + s.failed),
            p50_ms: s.percentile_ms(0.5),
            p99_ms: s.percentile_ms(0.99),
            outcomes: s.outcomes.clone(),
            versions: s.versions.clone(),
        })
        .collect();

    let canary = canary(&plan.rendered, i.stats, metrics_of(&client.name));
    let rate_limit = rate_limit(plan, i.stats, i.metrics, i.duration_seconds);

    let mut servers = Vec::new();
    for p in plan.pods.iter().filter(|p| p.app.is_some()) {
        let app = p.labels.get("app").cloned().unwrap_or_default();
        let version = p.labels.get("version").cloned().unwrap_or_default();
        let mut callers = BTreeMap::new();
        for (spec, s) in ROUTES.iter().zip(i.stats) {
            if spec.service != app {
                continue;
            }
            for ((v, caller), n) in &s.callers {
                if *v == version {
                    *callers.entry(caller.clone()).or_default() += n;
                }
            }
        }
        servers.push(ServerIdentity {
            pod: p.name.clone(),
            identity: p.spiffe_id(&plan.trust_domain, &plan.namespace),
            callers,
        });
    }
    let mut handshakes = BTreeMap::new();
    for samples in i.metrics.values() {
        for s in samples.iter().filter(|s| s.name == "tls_handshake_total") {
            let key = format!(
                "{}/{}",
                s.labels.get("direction").map_or("-", String::as_str),
                s.labels.get("result").map_or("-", String::as_str)
            );
            *handshakes.entry(key).or_default() += s.value;
        }
    }

    Report {
        duration_seconds: i.duration_seconds,
        rate: i.rate,
        interrupted: i.interrupted,
        config: ConfigFacts {
            rendered_from: super::topology::MANIFESTS
                .iter()
                .map(|(f, _)| f.to_string())
                .collect(),
            namespace: plan.namespace.clone(),
            hash: plan.rendered.hash.clone().unwrap_or_default(),
            mtls: format!("{:?}", plan.rendered.tls.mode).to_lowercase(),
        },
        pods,
        routes,
        canary,
        rate_limit,
        mtls: Mtls {
            mode: format!("{:?}", plan.rendered.tls.mode).to_lowercase(),
            servers,
            handshakes,
            plaintext_probe: i.plaintext_probe,
        },
        cleanup: i.cleanup,
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// The weighted route of the demo's canary service, as rendered.
fn canary(config: &SidecarConfig, stats: &[RouteStats], client: &[Sample]) -> Option<Canary> {
    let (idx, spec) = ROUTES
        .iter()
        .enumerate()
        .find(|(_, r)| r.shows.starts_with("canary"))?;
    let table = config
        .routes
        .iter()
        .find(|t| t.name.starts_with(&format!("{}.", spec.service)))?;
    let weighted = table.routes.iter().find_map(|r| match &r.action {
        RouteAction::Clusters(cs) if cs.len() > 1 => Some(cs),
        _ => None,
    })?;
    let subset = |cluster: &str| {
        cluster
            .rsplit_once('|')
            .map_or(cluster, |(_, s)| s)
            .to_owned()
    };
    let target: BTreeMap<String, u32> = weighted
        .iter()
        .map(|c| (subset(&c.cluster), c.weight))
        .collect();
    let sidecar_upstream = weighted
        .iter()
        .map(|c| {
            (
                subset(&c.cluster),
                sum(client, "upstream_request_total", &[("cluster", &c.cluster)]),
            )
        })
        .collect();
    let s = &stats[idx];
    let served: BTreeMap<String, u64> = target
        .keys()
        .map(|k| (k.clone(), s.versions.get(k).copied().unwrap_or(0)))
        .collect();
    let total: u64 = served.values().sum();
    let pct = served
        .iter()
        .map(|(k, n)| (k.clone(), percent(*n, total)))
        .collect();
    let off_by = target
        .iter()
        .map(|(k, w)| {
            let exact = total as f64 * f64::from(*w) / 100.0;
            (served.get(k).copied().unwrap_or(0) as f64 - exact).abs()
        })
        .fold(0.0, f64::max);
    Some(Canary {
        service: spec.service.into(),
        target,
        served,
        sidecar_upstream,
        total,
        percent: pct,
        off_by_calls: off_by,
    })
}

/// The limited service's per-tenant token bucket, and what it did.
fn rate_limit(
    plan: &Plan,
    stats: &[RouteStats],
    metrics: &BTreeMap<String, Vec<Sample>>,
    seconds: f64,
) -> Option<RateLimitReport> {
    let (idx, spec) = ROUTES
        .iter()
        .enumerate()
        .find(|(_, r)| r.shows == "rate limit")?;
    let pod = plan
        .pods
        .iter()
        .find(|p| p.labels.get("app").map(String::as_str) == Some(spec.service))?;
    let limit = plan.rendered.rate_limits.iter().find(|l| {
        l.bucket
            .as_ref()
            .is_some_and(|b| b.per_header.as_deref() == Some(TENANT_HEADER))
            && selector_matches(&l.pod_selector, &pod.labels)
    })?;
    let bucket = limit.bucket.as_ref()?;
    let m = metrics
        .get(&pod.name)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let s = &stats[idx];
    let per_second = |n: u64| {
        if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        }
    };
    Some(RateLimitReport {
        service: spec.service.into(),
        limit: limit.name.clone(),
        requests_per_second: f64::from(bucket.requests) / bucket.per.as_std().as_secs_f64(),
        burst: bucket.burst,
        per_header: bucket.per_header.clone(),
        sent: s.sent,
        limited_429: s.outcomes.get("429").copied().unwrap_or(0),
        tenants: s
            .tenants
            .iter()
            .map(|(t, (sent, limited))| {
                (
                    t.clone(),
                    TenantReport {
                        sent: *sent,
                        limited_429: *limited,
                        sent_per_second: per_second(*sent),
                    },
                )
            })
            .collect(),
        sidecar_allowed: sum(
            m,
            "ratelimit_requests_total",
            &[("limit", &limit.name), ("result", "allowed")],
        ),
        sidecar_limited: sum(
            m,
            "ratelimit_requests_total",
            &[("limit", &limit.name), ("result", "limited")],
        ),
    })
}

/// `1,903`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Canary {
    /// The largest distance, in percentage points, of a subset's share from
    /// its weight.
    pub fn max_deviation_percent(&self) -> f64 {
        self.target
            .iter()
            .map(|(k, w)| (self.percent.get(k).copied().unwrap_or(0.0) - f64::from(*w)).abs())
            .fold(0.0, f64::max)
    }
}

impl Mtls {
    /// Handshakes that failed (not `success`, and not the plaintext the
    /// demo's own probe sent).
    pub fn failed_handshakes(&self) -> f64 {
        self.handshakes
            .iter()
            .filter(|(k, _)| !k.ends_with("/success") && !k.ends_with("/plaintext_refused"))
            .map(|(_, v)| v)
            .sum()
    }

    pub fn successful_handshakes(&self) -> f64 {
        self.handshakes
            .iter()
            .filter(|(k, _)| k.as_str() == "inbound/success")
            .map(|(_, v)| v)
            .sum()
    }
}

pub fn short_hash(h: &str) -> String {
    let hex = h.strip_prefix("sha256:").unwrap_or(h);
    format!("sha256:{}", &hex[..hex.len().min(12)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1903), "1,903");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
