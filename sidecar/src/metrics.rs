//! Prometheus metrics with MOSN's names.
//!
//! Every series is registered once (when a config is compiled) and handed out
//! as an `Arc<AtomicU64>`; the hot path only does atomic adds. The registry
//! lock is taken at registration and when `/metrics` renders, never per request.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// A monotonically increasing value (times are nanosecond counters, as in MOSN).
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (active connections and requests).
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// Increments now and decrements when the guard drops.
    pub fn track(&self) -> GaugeGuard {
        self.inc();
        GaugeGuard(self.clone())
    }
}

pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Request-duration buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default)]
struct HistogramInner {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

#[derive(Clone, Debug, Default)]
pub struct Histogram(Arc<HistogramInner>);

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.0.count.fetch_add(1, Ordering::Relaxed);
        self.0
            .sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
}

type LabelSet = Vec<(&'static str, String)>;

struct Family {
    help: &'static str,
    kind: Kind,
    series: BTreeMap<LabelSet, Arc<AtomicU64>>,
}

#[derive(Default)]
struct Inner {
    families: BTreeMap<&'static str, Family>,
    histograms: BTreeMap<&'static str, (&'static str, BTreeMap<LabelSet, Histogram>)>,
}

/// All metrics of the process. Cloning shares the registry.
#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<Inner>>);

impl Registry {
    fn series(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: LabelSet,
    ) -> Arc<AtomicU64> {
        let mut inner = self.0.lock().expect("metrics lock");
        let family = inner.families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            series: BTreeMap::new(),
        });
        family.series.entry(labels).or_default().clone()
    }

    pub fn counter(&self, name: &'static str, help: &'static str, labels: LabelSet) -> Counter {
        Counter(self.series(name, help, Kind::Counter, labels))
    }

    pub fn gauge(&self, name: &'static str, help: &'static str, labels: LabelSet) -> Gauge {
        Gauge(self.series(name, help, Kind::Gauge, labels))
    }

    pub fn histogram(&self, name: &'static str, help: &'static str, labels: LabelSet) -> Histogram {
        let mut inner = self.0.lock().expect("metrics lock");
        let (_, series) = inner
            .histograms
            .entry(name)
            .or_insert_with(|| (help, BTreeMap::new()));
        series.entry(labels).or_default().clone()
    }

    /// An info series (value 1) that replaces the family's previous series:
    /// facts that change as a whole, such as which config document runs.
    pub fn set_info(&self, name: &'static str, help: &'static str, labels: LabelSet) {
        let mut inner = self.0.lock().expect("metrics lock");
        let family = inner.families.entry(name).or_insert_with(|| Family {
            help,
            kind: Kind::Gauge,
            series: BTreeMap::new(),
        });
        family.series.clear();
        family.series.insert(labels, Arc::new(AtomicU64::new(1)));
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let inner = self.0.lock().expect("metrics lock");
        let mut out = String::with_capacity(8192);
        for (name, f) in &inner.families {
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", f.help);
            for (labels, v) in &f.series {
                let _ = writeln!(
                    out,
                    "{name}{} {}",
                    fmt_labels(labels, None),
                    v.load(Ordering::Relaxed)
                );
            }
        }
        for (name, (help, series)) in &inner.histograms {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (labels, h) in series {
                let mut cumulative = 0;
                for (i, le) in BUCKETS.iter().enumerate() {
                    cumulative += h.0.buckets[i].load(Ordering::Relaxed);
                    let le = le.to_string();
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {cumulative}",
                        fmt_labels(labels, Some(&le))
                    );
                }
                let count = h.0.count.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {count}",
                    fmt_labels(labels, Some("+Inf"))
                );
                let sum = h.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
                let _ = writeln!(out, "{name}_sum{} {sum}", fmt_labels(labels, None));
                let _ = writeln!(out, "{name}_count{} {count}", fmt_labels(labels, None));
            }
        }
        out
    }
}

fn fmt_labels(labels: &LabelSet, le: Option<&str>) -> String {
    if labels.is_empty() && le.is_none() {
        return String::new();
    }
    let mut s = String::from("{");
    let mut first = true;
    for (k, v) in labels {
        if !first {
            s.push(',');
        }
        first = false;
        let v = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(s, "{k}=\"{v}\"");
    }
    if let Some(le) = le {
        if !first {
            s.push(',');
        }
        let _ = write!(s, "le=\"{le}\"");
    }
    s.push('}');
    s
}

/// `sidecar_config_info{hash="…",version="…"} 1`: the hash of the config
/// document running now (the operator's `hash` field, which the ConfigMap's
/// `remora.dev/config-hash` annotation also carries) and this proxy's
/// version, so `remoractl check` can compare them with what the operator wrote.
pub fn set_config_info(reg: &Registry, config_hash: &str) {
    reg.set_info(
        "sidecar_config_info",
        "The running config document's hash and the proxy's version",
        vec![
            ("hash", config_hash.to_owned()),
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ],
    );
}

/// Per-listener series (MOSN's downstream metrics).
#[derive(Clone)]
pub struct ListenerMetrics {
    pub connection_active: Gauge,
    pub connection_total: Counter,
    pub request_active: Gauge,
    pub request_total: Counter,
    pub request_time_total: Counter,
    pub process_time_total: Counter,
    pub request_failed: Counter,
    pub request_duration: Histogram,
    pub authz_denied: Counter,
    pub fault_delays: Counter,
    pub fault_aborts: Counter,
}

impl ListenerMetrics {
    pub fn new(reg: &Registry, listener: &str) -> Self {
        let l = || vec![("listener", listener.to_string())];
        Self {
            connection_active: reg.gauge(
                "downstream_connection_active",
                "Open downstream connections",
                l(),
            ),
            connection_total: reg.counter(
                "downstream_connection_total",
                "Accepted downstream connections",
                l(),
            ),
            request_active: reg.gauge(
                "downstream_request_active",
                "Downstream requests in flight",
                l(),
            ),
            request_total: reg.counter("downstream_request_total", "Downstream requests", l()),
            request_time_total: reg.counter(
                "downstream_request_time_total",
                "Nanoseconds from request start to response headers",
                l(),
            ),
            process_time_total: reg.counter(
                "downstream_process_time_total",
                "Nanoseconds spent in the proxy itself (request time minus upstream time)",
                l(),
            ),
            request_failed: reg.counter(
                "downstream_request_failed",
                "Downstream requests answered with a 5xx or a local error",
                l(),
            ),
            request_duration: reg.histogram(
                "downstream_request_duration_seconds",
                "Time from request start to response headers",
                l(),
            ),
            authz_denied: reg.counter(
                "downstream_authz_denied_total",
                "Requests and connections refused by an authorization policy",
                l(),
            ),
            fault_delays: reg.counter(
                "downstream_fault_injected_total",
                "Faults injected by routes, by kind",
                vec![("listener", listener.to_string()), ("kind", "delay".into())],
            ),
            fault_aborts: reg.counter(
                "downstream_fault_injected_total",
                "Faults injected by routes, by kind",
                vec![("listener", listener.to_string()), ("kind", "abort".into())],
            ),
        }
    }
}

/// Per-cluster series (MOSN's upstream metrics).
#[derive(Clone)]
pub struct ClusterMetrics {
    pub connection_active: Gauge,
    pub connection_total: Counter,
    pub connect_fail: Counter,
    pub request_active: Gauge,
    pub request_total: Counter,
    pub request_duration_time_total: Counter,
    pub request_failure_eject: Counter,
    pub request_timeout: Counter,
    pub request_retry: Counter,
    pub request_retry_overflow: Counter,
    pub request_pending_overflow: Counter,
}

impl ClusterMetrics {
    pub fn new(reg: &Registry, cluster: &str) -> Self {
        let l = || vec![("cluster", cluster.to_string())];
        Self {
            connection_active: reg.gauge(
                "upstream_connection_active",
                "Open upstream connections",
                l(),
            ),
            connection_total: reg.counter(
                "upstream_connection_total",
                "Upstream connections opened",
                l(),
            ),
            connect_fail: reg.counter(
                "upstream_connection_con_fail",
                "Upstream connect failures",
                l(),
            ),
            request_active: reg.gauge(
                "upstream_request_active",
                "Upstream requests in flight",
                l(),
            ),
            request_total: reg.counter(
                "upstream_request_total",
                "Upstream requests (each try)",
                l(),
            ),
            request_duration_time_total: reg.counter(
                "upstream_request_duration_time_total",
                "Nanoseconds from sending upstream to response headers",
                l(),
            ),
            request_failure_eject: reg.counter(
                "upstream_request_failure_eject",
                "Endpoints ejected by outlier detection",
                l(),
            ),
            request_timeout: reg.counter(
                "upstream_request_timeout",
                "Upstream tries that timed out",
                l(),
            ),
            request_retry: reg.counter("upstream_request_retry", "Retries sent", l()),
            request_retry_overflow: reg.counter(
                "upstream_request_retry_overflow",
                "Retries refused by the retry budget",
                l(),
            ),
            request_pending_overflow: reg.counter(
                "upstream_request_pending_overflow",
                "Requests refused by circuit breaking (maxPendingRequests)",
                l(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_info_keeps_one_series_for_the_running_document() {
        let reg = Registry::default();
        set_config_info(&reg, "sha256:aaa");
        set_config_info(&reg, "sha256:bbb");
        let text = reg.render();
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.contains(&format!(
                "sidecar_config_info{{hash=\"sha256:bbb\",version=\"{version}\"}} 1"
            )),
            "{text}"
        );
        assert!(!text.contains("sha256:aaa"), "the old hash stayed: {text}");
        assert!(text.contains("# TYPE sidecar_config_info gauge"));
    }

    #[test]
    fn renders_mosn_names_with_labels() {
        let reg = Registry::default();
        let m = ListenerMetrics::new(&reg, "outbound");
        m.request_total.inc();
        m.request_failed.add(2);
        m.request_duration.observe(Duration::from_millis(3));
        let text = reg.render();
        assert!(
            text.contains("downstream_request_total{listener=\"outbound\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("downstream_request_failed{listener=\"outbound\"} 2"),
            "{text}"
        );
        assert!(text.contains("# TYPE downstream_connection_active gauge"));
        assert!(text.contains(
            "downstream_request_duration_seconds_bucket{listener=\"outbound\",le=\"0.005\"} 1"
        ));
        assert!(
            text.contains("downstream_request_duration_seconds_count{listener=\"outbound\"} 1")
        );
    }

    #[test]
    fn same_labels_share_one_series() {
        let reg = Registry::default();
        let a = reg.counter("x_total", "x", vec![("cluster", "c".into())]);
        let b = reg.counter("x_total", "x", vec![("cluster", "c".into())]);
        a.inc();
        b.inc();
        assert_eq!(a.get(), 2);
    }
}
