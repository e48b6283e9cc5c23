//! Prometheus metrics of the webhook, registered once; the request path only increments.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::decision::SkipReason;

/// How an admission request ended, as the `result` and `reason` labels say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmissionResult {
    Injected,
    Skipped(SkipReason),
    /// Not a pod CREATE: allowed untouched.
    Ignored,
    /// The AdmissionReview could not be read: allowed untouched, with a warning.
    Malformed,
}

impl AdmissionResult {
    fn labels(self) -> AdmissionLabels {
        let (result, reason) = match self {
            AdmissionResult::Injected => ("injected", ""),
            AdmissionResult::Skipped(r) => ("skipped", r.as_str()),
            AdmissionResult::Ignored => ("ignored", ""),
            AdmissionResult::Malformed => ("error", "malformed"),
        };
        AdmissionLabels { result, reason }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    result: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    admissions: Family<AdmissionLabels, Counter>,
    latency: Histogram,
    certificate_reloads: Family<ReloadLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("remora_webhook");
        let admissions = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admissions",
            "Admission requests by result (injected, skipped, ignored, error) and reason",
            admissions.clone(),
        );
        // 25 µs .. ~0.8 s.
        let latency = Histogram::new(exponential_buckets(25e-6, 2.0, 16));
        registry.register(
            "admission_duration_seconds",
            "Time to answer one AdmissionReview, from body to response body",
            latency.clone(),
        );
        let certificate_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "certificate_reloads",
            "Serving certificate reloads by result (ok, error)",
            certificate_reloads.clone(),
        );
        // Every series exists from the start, so rates work from the first scrape.
        let all = [
            AdmissionResult::Injected,
            AdmissionResult::Ignored,
            AdmissionResult::Malformed,
        ]
        .into_iter()
        .chain(SkipReason::ALL.map(AdmissionResult::Skipped));
        for r in all {
            let _ = admissions.get_or_create(&r.labels());
        }
        for result in ["ok", "error"] {
            let _ = certificate_reloads.get_or_create(&ReloadLabels { result });
        }
        Self {
            registry,
            admissions,
            latency,
            certificate_reloads,
        }
    }

    pub fn record_admission(&self, result: AdmissionResult, took: Duration) {
        self.admissions.get_or_create(&result.labels()).inc();
        self.latency.observe(took.as_secs_f64());
    }

    pub fn record_certificate_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.certificate_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// How many admissions ended with `result` so far.
    pub fn admissions(&self, result: AdmissionResult) -> u64 {
        self.admissions.get_or_create(&result.labels()).get()
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
