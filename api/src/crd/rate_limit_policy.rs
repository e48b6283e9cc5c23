//! RateLimitPolicy: what a service accepts.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CommonStatus, HEADER_NAME_PATTERN, RequestMatchSpec, service_route::check_percentage};
use crate::{Duration, FieldErrors};

/// Limits on the requests the selected pods accept, enforced by their
/// sidecars: token buckets per route, header value or RPC method; an
/// adaptive mode that sheds load when the pod is under pressure; and test
/// traffic (marked by a header) shed before production traffic.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mesh.remora.dev",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    namespaced,
    doc = "Limits on the requests the selected pods accept: token buckets, adaptive load shedding and test-traffic priority.",
    status = "CommonStatus",
    shortname = "rlp",
    category = "remora",
    printcolumn = r#"{"name":"Limits","type":"integer","jsonPath":".spec.limits[*].requests"}"#,
    printcolumn = r#"{"name":"DryRun","type":"boolean","jsonPath":".spec.dryRun"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.limits) || has(self.adaptive)").message("set limits, adaptive or both"))]
pub struct RateLimitPolicySpec {
    /// Pods (in this namespace) whose labels contain all of these; empty
    /// selects every pod in the namespace.
    #[serde(default)]
    pub pod_selector: BTreeMap<String, String>,
    /// Token buckets; a request counts against every limit it matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    pub limits: Option<Vec<LimitSpec>>,
    /// Shed load when CPU or concurrency crosses a threshold. Not enforced
    /// by the sidecar yet: the policy reports `Degraded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveSpec>,
    /// Requests marked as test traffic, shed before production traffic. Not
    /// enforced by the sidecar yet: the policy reports `Degraded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_traffic: Option<TestTrafficSpec>,
    /// The response sent when a request is refused.
    #[serde(default)]
    pub response: LimitResponseSpec,
    /// Count and report what would be refused, but refuse nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LimitSpec {
    /// Name, unique in the policy; metrics are labelled with it.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Requests this limit counts (all when absent).
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<RequestMatchSpec>,
    /// Keep one bucket per distinct value of this header (e.g. a tenant id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = HEADER_NAME_PATTERN))]
    pub per_header: Option<String>,
    /// Requests allowed per `per`.
    #[schemars(range(min = 1, max = 100000000))]
    pub requests: u32,
    /// The period of `requests` (default 1s).
    #[serde(default = "second")]
    pub per: Duration,
    /// Requests allowed at once after a quiet spell (default: `requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000000))]
    pub burst: Option<u32>,
}

fn second() -> Duration {
    Duration::from_secs(1)
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.cpuPercent) || has(self.maxConcurrency)").message("set cpuPercent, maxConcurrency or both"))]
pub struct AdaptiveSpec {
    /// Shed when the sidecar's pod uses more than this share of its CPU
    /// (percent of its limit, or of one core without a limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub cpu_percent: Option<u32>,
    /// Shed when more requests than this are in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_concurrency: Option<u32>,
    /// Sliding window over which load is measured (default 10s).
    #[serde(default = "window")]
    pub window: Duration,
}

fn window() -> Duration {
    Duration::from_secs(10)
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TestTrafficSpec {
    /// Header that marks test traffic, e.g. `x-load-test`.
    #[schemars(regex(pattern = HEADER_NAME_PATTERN))]
    pub header: String,
    /// Required header value; absent means any value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Share of each limit test traffic may use, 0–100 (default 50).
    #[serde(default = "half")]
    #[schemars(range(min = 0, max = 100))]
    pub max_share_percent: u32,
}

fn half() -> u32 {
    50
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LimitResponseSpec {
    /// HTTP status of a refused request (default 429). gRPC callers get
    /// RESOURCE_EXHAUSTED.
    #[serde(default = "too_many")]
    #[schemars(range(min = 400, max = 599))]
    pub status: u16,
    /// Headers added to the refusal.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub body: Option<String>,
}

impl Default for LimitResponseSpec {
    fn default() -> Self {
        Self {
            status: too_many(),
            headers: BTreeMap::new(),
            body: None,
        }
    }
}

fn too_many() -> u16 {
    429
}

impl RateLimitPolicySpec {
    /// Checks what the schema cannot: every problem, each under its path.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errs = FieldErrors::default();
        if self.limits.is_none() && self.adaptive.is_none() {
            errs.push("spec", "set limits, adaptive or both");
        }
        let mut names = std::collections::HashSet::new();
        for (i, l) in self.limits.iter().flatten().enumerate() {
            let at = format!("spec.limits[{i}]");
            if !names.insert(l.name.as_str()) {
                errs.push(
                    format!("{at}.name"),
                    format!("limit {:?} is defined twice", l.name),
                );
            }
            if l.requests == 0 {
                errs.push(format!("{at}.requests"), "must be at least 1");
            }
            if l.per.is_zero() {
                errs.push(format!("{at}.per"), "must be longer than 0");
            }
            if l.burst == Some(0) {
                errs.push(format!("{at}.burst"), "must be at least 1");
            }
            if let Some(m) = &l.matches {
                m.check(&mut errs, &format!("{at}.match"));
            }
        }
        if let Some(a) = &self.adaptive {
            if a.cpu_percent.is_none() && a.max_concurrency.is_none() {
                errs.push("spec.adaptive", "set cpuPercent, maxConcurrency or both");
            }
            if let Some(cpu) = a.cpu_percent {
                check_percentage(&mut errs, "spec.adaptive.cpuPercent", f64::from(cpu));
            }
            if a.window.is_zero() {
                errs.push("spec.adaptive.window", "must be longer than 0");
            }
        }
        if let Some(t) = &self.test_traffic {
            check_percentage(
                &mut errs,
                "spec.testTraffic.maxSharePercent",
                f64::from(t.max_share_percent),
            );
        }
        if !(400..=599).contains(&self.response.status) {
            errs.push(
                "spec.response.status",
                format!("{} is not an error status (400-599)", self.response.status),
            );
        }
        errs.into_result()
    }
}
