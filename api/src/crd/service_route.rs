//! ServiceRoute: how calls to one service are routed.

use std::collections::{BTreeMap, HashSet};

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, DNS_LABEL_PATTERN, HEADER_NAME_PATTERN, Port, is_dns_label};
use crate::{Duration, FieldErrors};

/// How calls to one Kubernetes Service (on one port) are routed: ordered
/// rules that match requests and send them to weighted destinations, with
/// retries, timeouts, fault injection, mirroring, load balancing, outlier
/// detection and connection limits.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mesh.remora.dev",
    version = "v1alpha1",
    kind = "ServiceRoute",
    namespaced,
    doc = "How calls to one Service are routed: matching rules, weighted destinations (canaries), retries, timeouts, faults, mirroring, load balancing and circuit breaking.",
    status = "ServiceRouteStatus",
    shortname = "sr",
    category = "remora",
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service"}"#,
    printcolumn = r#"{"name":"Port","type":"integer","jsonPath":".spec.port"}"#,
    printcolumn = r#"{"name":"Protocol","type":"string","jsonPath":".spec.protocol"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.loadBalancer) || !(self.loadBalancer.policy in ['ConsistentHash', 'Maglev']) || has(self.loadBalancer.hash)").message("spec.loadBalancer.hash is required for ConsistentHash and Maglev"))]
pub struct ServiceRouteSpec {
    /// The Service these routes apply to, in this namespace, e.g. `reviews`.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub service: String,
    /// The Service port these routes apply to.
    pub port: Port,
    /// Application protocol on this port. `bolt` and `dubbo` are refused
    /// (`Accepted=False`) until the sidecar speaks them.
    #[serde(default)]
    pub protocol: RouteProtocol,
    /// Named groups of the Service's pods, by label (e.g. `version: v2`).
    /// Each becomes a headless Service `<service>-<subset>` that the
    /// operator owns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t.name == s.name))").message("spec.subsets: subset names must be unique"))]
    pub subsets: Vec<Subset>,
    /// Tried in order; the first rule that matches a request routes it.
    /// Requests that match no rule go to the Service itself.
    #[schemars(length(min = 1, max = 64))]
    pub rules: Vec<RouteRule>,
    /// How endpoints are chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSpec>,
    /// Eject endpoints that keep failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSpec>,
    /// Circuit breaking: caps on connections, pending and in-flight
    /// requests and retries, and requests per connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSpec>,
    /// Namespaces whose sidecars get these routes: `*` (all, the default),
    /// `.` (this namespace only) or namespace names.
    #[serde(default = "export_all")]
    #[schemars(length(min = 1, max = 32))]
    pub export_to: Vec<String>,
}

fn export_all() -> Vec<String> {
    vec!["*".into()]
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RouteProtocol {
    #[default]
    Http1,
    Http2,
    Grpc,
    Bolt,
    Dubbo,
    Tcp,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    /// Subset name, e.g. `v2`; part of the headless Service's name.
    #[schemars(length(min = 1, max = 30), regex(pattern = DNS_LABEL_PATTERN))]
    pub name: String,
    /// Pod labels that pick this subset, added to the Service's selector.
    #[schemars(length(min = 1))]
    pub labels: BTreeMap<String, String>,
}

/// One routing rule. (Named `RouteRule`: `Rule` is kube's CEL rule type.)
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.destinations) != has(self.directResponse)").message("a rule needs exactly one of destinations or directResponse"))]
#[x_kube(validation = Rule::new("!has(self.destinations) || (size(self.destinations) == 1 && !has(self.destinations[0].weight)) || self.destinations.all(d, has(d.weight))").message("when a rule has several destinations, each needs a weight"))]
#[x_kube(validation = Rule::new("!has(self.destinations) || !self.destinations.all(d, has(d.weight)) || self.destinations.map(d, d.weight).sum() == 100").message("destination weights must sum to 100"))]
pub struct RouteRule {
    /// Optional name; shows in metrics and access logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub name: Option<String>,
    /// The rule applies when any of these matches (all when empty).
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub matches: Vec<RequestMatchSpec>,
    /// Where matched requests go, split by weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub destinations: Option<Vec<Destination>>,
    /// Answer matched requests locally instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponseSpec>,
    /// Deadline for the whole request, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetriesSpec>,
    /// Inject delays or errors to test resilience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultSpec>,
    /// Copy a share of requests (bodies up to 64 KiB) to another destination,
    /// fire-and-forget; its responses are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorSpec>,
    /// Header changes on the way to the destination and back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeaderRules>,
}

/// Conditions on a request; all that are given must hold.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestMatchSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatchSpec>,
    /// HTTP method, e.g. `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[A-Z]+$"))]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatchSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub query_params: Vec<QueryMatchSpec>,
    /// For gRPC, Bolt and Dubbo: the interface and method called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc: Option<RpcMatchSpec>,
}

/// Exactly one of `exact`, `prefix` or `regex`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.exact), has(self.prefix), has(self.regex)].filter(x, x).size() == 1").message("set exactly one of exact, prefix or regex"))]
pub struct StringMatchSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// An RE2 regular expression matching the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub regex: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatchSpec {
    /// Header name (case-insensitive).
    #[schemars(length(min = 1, max = 256), regex(pattern = HEADER_NAME_PATTERN))]
    pub name: String,
    /// How the value must look; absent means the header only has to be present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<StringMatchSpec>,
    /// Match requests for which the condition does not hold.
    #[serde(default)]
    pub invert: bool,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QueryMatchSpec {
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<StringMatchSpec>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RpcMatchSpec {
    /// Interface or gRPC service, e.g. `com.example.ReviewService`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// Target Service, `name` (this namespace) or `name.namespace`. Defaults
    /// to `spec.service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 127),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)?$")
    )]
    pub service: Option<String>,
    /// A subset from `spec.subsets` (only for `spec.service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Target port; defaults to `spec.port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// Share of matched requests, 0–100. Weights in a rule sum to 100; a
    /// single destination may leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub weight: Option<u32>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DirectResponseSpec {
    #[schemars(range(min = 200, max = 599))]
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub body: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetriesSpec {
    /// Retries after the first try.
    #[schemars(range(min = 0, max = 10))]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// When to retry.
    #[serde(default = "default_retry_on")]
    #[schemars(length(min = 1, max = 9))]
    pub retry_on: Vec<RetryOnSpec>,
    /// Retries may add at most this share of load (percent, default 20), so
    /// they cannot multiply an overload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub budget_percent: Option<u32>,
}

fn default_retry_on() -> Vec<RetryOnSpec> {
    vec![RetryOnSpec::ConnectFailure, RetryOnSpec::GatewayError]
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOnSpec {
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    #[serde(rename = "5xx")]
    FiveXx,
    #[serde(rename = "gateway-error")]
    GatewayError,
    #[serde(rename = "reset")]
    Reset,
    #[serde(rename = "cancelled")]
    Cancelled,
    #[serde(rename = "deadline-exceeded")]
    DeadlineExceeded,
    #[serde(rename = "resource-exhausted")]
    ResourceExhausted,
    #[serde(rename = "unavailable")]
    Unavailable,
    #[serde(rename = "internal")]
    Internal,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FaultSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelaySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbortSpec>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelaySpec {
    /// Share of requests delayed, 0–100.
    #[schemars(range(min = 0, max = 100))]
    pub percentage: f64,
    pub fixed_delay: Duration,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbortSpec {
    /// Share of requests aborted, 0–100.
    #[schemars(range(min = 0, max = 100))]
    pub percentage: f64,
    /// HTTP status sent back.
    #[schemars(range(min = 200, max = 599))]
    pub http_status: u16,
    /// gRPC status code sent to gRPC callers instead (0–16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16))]
    pub grpc_status: Option<u32>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MirrorSpec {
    pub destination: Destination,
    /// Share of requests copied, 0–100.
    #[schemars(range(min = 0, max = 100))]
    pub percentage: f64,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOps>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOps>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderOps {
    /// Replace (or create) these headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Append these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSpec {
    #[serde(default)]
    pub policy: LbPolicySpec,
    /// What `ConsistentHash` and `Maglev` hash on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<HashSpec>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LbPolicySpec {
    #[default]
    RoundRobin,
    /// Weighted least-request with two random choices.
    LeastRequest,
    Random,
    /// Ring hash: requests with the same key go to the same pod.
    ConsistentHash,
    Maglev,
}

/// Exactly one of `header`, `cookie` or `sourceIp`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.header), has(self.cookie), has(self.sourceIp) && self.sourceIp].filter(x, x).size() == 1").message("set exactly one of header, cookie or sourceIp"))]
pub struct HashSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = HEADER_NAME_PATTERN))]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<bool>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetectionSpec {
    /// Consecutive 5xx responses that eject a pod (default 5; 0 disables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub consecutive_5xx: Option<u32>,
    /// Consecutive connect failures that eject a pod (default 5; 0 disables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub consecutive_connect_failures: Option<u32>,
    /// First ejection's length, growing with each repeat (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Never eject more than this share of pods (percent, default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: Option<u32>,
}

/// Circuit breaking for each cluster of the route (a subset is its own
/// cluster). Unset limits are 1024, like Envoy's; see docs/sidecar.md.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.maxRetries) || !has(self.maxRequests) || self.maxRetries <= self.maxRequests").message("spec.connectionPool.maxRetries must not exceed maxRequests: every retry is also a request in flight"))]
pub struct ConnectionPoolSpec {
    /// Open upstream connections (HTTP/1.1, HTTP/2 and TCP together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection while at maxConnections; one more
    /// gets 503 (0: refuse at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub max_pending_requests: Option<u32>,
    /// Requests in flight; one more gets 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_requests: Option<u32>,
    /// Retries in flight; a retry over it is not sent (0: no retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub max_retries: Option<u32>,
    /// Requests per upstream connection before it is retired (0: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub max_requests_per_connection: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRouteStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Headless Services created for the subsets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subset_services: Vec<String>,
}

impl ConnectionPoolSpec {
    /// The schema's ranges and CEL rule, for checks without an API server.
    fn check(&self, errs: &mut FieldErrors) {
        let limits = [
            ("maxConnections", self.max_connections, 1),
            ("maxPendingRequests", self.max_pending_requests, 0),
            ("maxRequests", self.max_requests, 1),
            ("maxRetries", self.max_retries, 0),
            (
                "maxRequestsPerConnection",
                self.max_requests_per_connection,
                0,
            ),
        ];
        for (name, v, min) in limits {
            if let Some(v) = v
                && !(min..=1_000_000).contains(&v)
            {
                errs.push(
                    format!("spec.connectionPool.{name}"),
                    format!("{v} is out of range, must be {min} to 1000000"),
                );
            }
        }
        if let (Some(retries), Some(requests)) = (self.max_retries, self.max_requests)
            && retries > requests
        {
            errs.push(
                "spec.connectionPool.maxRetries",
                format!(
                    "{retries} is more than maxRequests {requests}: every retry is also a request in flight"
                ),
            );
        }
    }
}

impl ServiceRouteSpec {
    /// Name of the headless Service for a subset.
    pub fn subset_service_name(&self, subset: &str) -> String {
        format!("{}-{}", self.service, subset)
    }

    /// Checks what the schema cannot: every problem, each under its path.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errs = FieldErrors::default();
        let mut subset_names = HashSet::new();
        for (i, s) in self.subsets.iter().enumerate() {
            if !subset_names.insert(s.name.as_str()) {
                errs.push(
                    format!("spec.subsets[{i}].name"),
                    format!("subset {:?} is defined twice", s.name),
                );
            }
            let svc = self.subset_service_name(&s.name);
            if !is_dns_label(&svc) {
                errs.push(format!("spec.subsets[{i}].name"), format!("the subset Service name {svc:?} is not a valid Service name (at most 63 lower-case letters, digits, '-')"));
            }
            if s.labels.is_empty() {
                errs.push(
                    format!("spec.subsets[{i}].labels"),
                    "a subset needs at least one label",
                );
            }
        }
        if let Some(p) = &self.connection_pool {
            p.check(&mut errs);
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("spec.rules[{i}]");
            for (j, m) in rule.matches.iter().enumerate() {
                m.check(&mut errs, &format!("{at}.match[{j}]"));
            }
            match (&rule.destinations, &rule.direct_response) {
                (Some(_), Some(_)) | (None, None) => errs.push(
                    at.clone(),
                    "a rule needs exactly one of destinations or directResponse",
                ),
                _ => {}
            }
            if let Some(dests) = &rule.destinations {
                if dests.is_empty() {
                    errs.push(
                        format!("{at}.destinations"),
                        "list at least one destination",
                    );
                }
                for (j, d) in dests.iter().enumerate() {
                    self.check_destination(&mut errs, &format!("{at}.destinations[{j}]"), d);
                    if dests.len() > 1 && d.weight.is_none() {
                        errs.push(
                            format!("{at}.destinations[{j}].weight"),
                            "required when a rule has several destinations",
                        );
                    }
                    if let Some(w) = d.weight
                        && w > 100
                    {
                        errs.push(
                            format!("{at}.destinations[{j}].weight"),
                            format!("{w} is more than 100"),
                        );
                    }
                }
                if dests.iter().all(|d| d.weight.is_some()) {
                    let sum: u32 = dests.iter().filter_map(|d| d.weight).sum();
                    if sum != 100 {
                        errs.push(
                            format!("{at}.destinations"),
                            format!("weights sum to {sum}, must be 100"),
                        );
                    }
                }
            }
            if let (Some(r), Some(timeout)) = (&rule.retries, rule.timeout)
                && let Some(per_try) = r.per_try_timeout
                && per_try > timeout
            {
                errs.push(
                    format!("{at}.retries.perTryTimeout"),
                    format!("{per_try} is longer than the rule's timeout {timeout}"),
                );
            }
            if let Some(r) = &rule.retries
                && r.attempts > 10
            {
                errs.push(
                    format!("{at}.retries.attempts"),
                    format!("{} retries is too many; at most 10", r.attempts),
                );
            }
            if let Some(f) = &rule.fault {
                if let Some(d) = &f.delay {
                    check_percentage(
                        &mut errs,
                        &format!("{at}.fault.delay.percentage"),
                        d.percentage,
                    );
                }
                if let Some(a) = &f.abort {
                    check_percentage(
                        &mut errs,
                        &format!("{at}.fault.abort.percentage"),
                        a.percentage,
                    );
                }
            }
            if let Some(m) = &rule.mirror {
                check_percentage(&mut errs, &format!("{at}.mirror.percentage"), m.percentage);
                self.check_destination(
                    &mut errs,
                    &format!("{at}.mirror.destination"),
                    &m.destination,
                );
            }
            if let Some(h) = &rule.headers {
                for (side, ops) in [("request", &h.request), ("response", &h.response)] {
                    let Some(ops) = ops else { continue };
                    for name in ops
                        .set
                        .keys()
                        .chain(ops.add.keys())
                        .chain(ops.remove.iter())
                    {
                        if !valid_header_name(name) {
                            errs.push(
                                format!("{at}.headers.{side}"),
                                format!("{name:?} is not a valid header name"),
                            );
                        }
                    }
                }
            }
        }
        if let Some(lb) = &self.load_balancer {
            let hashed = matches!(
                lb.policy,
                LbPolicySpec::ConsistentHash | LbPolicySpec::Maglev
            );
            if hashed && lb.hash.is_none() {
                errs.push(
                    "spec.loadBalancer.hash",
                    "required for ConsistentHash and Maglev",
                );
            }
            if let Some(h) = &lb.hash {
                let set = [
                    h.header.is_some(),
                    h.cookie.is_some(),
                    h.source_ip == Some(true),
                ];
                if set.iter().filter(|x| **x).count() != 1 {
                    errs.push(
                        "spec.loadBalancer.hash",
                        "set exactly one of header, cookie or sourceIp",
                    );
                }
            }
        }
        for (i, ns) in self.export_to.iter().enumerate() {
            if ns != "*" && ns != "." && !is_dns_label(ns) {
                errs.push(
                    format!("spec.exportTo[{i}]"),
                    format!("{ns:?} is not `*`, `.` or a namespace name"),
                );
            }
        }
        errs.into_result()
    }

    fn check_destination(&self, errs: &mut FieldErrors, at: &str, d: &Destination) {
        if let Some(subset) = &d.subset {
            let own = d.service.as_deref().is_none_or(|s| s == self.service);
            if !own {
                errs.push(format!("{at}.subset"), format!("subsets are defined for spec.service {:?} only; route to {:?} without a subset or give it its own ServiceRoute", self.service, d.service.as_deref().unwrap_or_default()));
            } else if !self.subsets.iter().any(|s| &s.name == subset) {
                errs.push(
                    format!("{at}.subset"),
                    format!("subset {subset:?} is not defined in spec.subsets"),
                );
            }
        }
    }
}

impl RequestMatchSpec {
    pub(crate) fn check(&self, errs: &mut FieldErrors, at: &str) {
        if let Some(p) = &self.path {
            p.check(errs, &format!("{at}.path"));
        }
        for (i, h) in self.headers.iter().enumerate() {
            if !valid_header_name(&h.name) {
                errs.push(
                    format!("{at}.headers[{i}].name"),
                    format!("{:?} is not a valid header name", h.name),
                );
            }
            if let Some(v) = &h.value {
                v.check(errs, &format!("{at}.headers[{i}].value"));
            }
        }
        for (i, q) in self.query_params.iter().enumerate() {
            if let Some(v) = &q.value {
                v.check(errs, &format!("{at}.queryParams[{i}].value"));
            }
        }
    }
}

impl StringMatchSpec {
    pub(crate) fn check(&self, errs: &mut FieldErrors, at: &str) {
        let set = [
            self.exact.is_some(),
            self.prefix.is_some(),
            self.regex.is_some(),
        ];
        if set.iter().filter(|x| **x).count() != 1 {
            errs.push(at, "set exactly one of exact, prefix or regex");
        }
        if let Some(re) = &self.regex {
            errs.check_regex(format!("{at}.regex"), re);
        }
    }
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+.^_`|~-".contains(&b))
}

pub(crate) fn check_percentage(errs: &mut FieldErrors, at: &str, v: f64) {
    if !(0.0..=100.0).contains(&v) {
        errs.push(at, format!("{v} is not a percentage (0-100)"));
    }
}
