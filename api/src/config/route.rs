//! Route tables: which requests go where.

use std::{collections::BTreeMap, net::IpAddr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;

/// The routes for one destination service (a virtual host).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTable {
    /// Unique name, usually `<service>.<namespace>:<port>`.
    pub name: String,
    /// Authorities (`host` or `host:port`) this table answers for, such as
    /// `reviews`, `reviews.default.svc.cluster.local:9080`. For transparent
    /// outbound traffic the original destination selects the table too.
    pub domains: Vec<String>,
    /// The service port; with transparent capture, traffic to this port of
    /// the service's addresses uses this table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The service's addresses (its ClusterIPs, rendered by the operator).
    /// Captured traffic to one of them on `port` uses this table. A table
    /// that lists addresses owns only those; one that lists none (written by
    /// hand) takes unnamed traffic to any address on `port`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub protocol: Protocol,
    /// Tried in order; the first route whose match holds is used.
    pub routes: Vec<Route>,
}

/// Application protocol spoken to a service.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum Protocol {
    #[default]
    Http1,
    Http2,
    Grpc,
    Bolt,
    Dubbo,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Bolt => "bolt",
            Protocol::Dubbo => "dubbo",
            Protocol::Tcp => "tcp",
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    pub name: String,
    /// Empty matches every request.
    #[serde(default, rename = "match")]
    pub matches: RequestMatch,
    pub action: RouteAction,
    /// Whole-request deadline, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    #[serde(default, skip_serializing_if = "HeaderEdits::is_empty")]
    pub request_headers: HeaderEdits,
    #[serde(default, skip_serializing_if = "HeaderEdits::is_empty")]
    pub response_headers: HeaderEdits,
}

/// Conditions on a request; all present conditions must hold.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatch>,
    /// HTTP method, upper case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<KeyedMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<KeyedMatch>,
    /// For gRPC, Bolt and Dubbo: the service interface and method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc: Option<RpcMatch>,
}

/// How a string is compared.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// Matches the whole string (anchored).
    Regex(String),
}

/// A named header or query parameter and how its value must look.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyedMatch {
    pub name: String,
    /// Absent: the key only has to be present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<StringMatch>,
    /// Match when the condition does not hold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RpcMatch {
    /// Service interface, e.g. `com.example.ReviewService` or a gRPC
    /// `package.Service`. Absent matches any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// What to do with a matched request.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum RouteAction {
    /// Send to clusters, split by weight (weights sum to 100).
    Clusters(Vec<WeightedCluster>),
    /// Answer locally without an upstream.
    Direct(DirectResponse),
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first try (0 disables retrying).
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    pub retry_on: Vec<RetryOn>,
    /// Retries may add at most this share of the requests in flight ...
    #[serde(default = "budget_percent")]
    pub budget_percent: u32,
    /// ... but at least this many retries per second are always allowed.
    #[serde(default = "budget_min")]
    pub min_retries_per_second: u32,
    /// Initial back-off between tries (doubled each time, jittered).
    #[serde(default = "backoff")]
    pub backoff: Duration,
}

fn budget_percent() -> u32 {
    20
}
fn budget_min() -> u32 {
    10
}
fn backoff() -> Duration {
    Duration::from_millis(25)
}

/// Conditions under which a request is retried.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The upstream connection could not be established.
    ConnectFailure,
    /// Any 5xx response.
    #[serde(rename = "5xx")]
    FiveXx,
    /// 502, 503 or 504.
    GatewayError,
    /// The upstream reset the stream or closed the connection.
    Reset,
    /// gRPC status CANCELLED.
    Cancelled,
    /// gRPC status DEADLINE_EXCEEDED.
    DeadlineExceeded,
    /// gRPC status RESOURCE_EXHAUSTED.
    ResourceExhausted,
    /// gRPC status UNAVAILABLE.
    Unavailable,
    /// gRPC status INTERNAL.
    Internal,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// Share of requests delayed, 0–100.
    pub percentage: f64,
    pub delay: Duration,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// Share of requests aborted, 0–100.
    pub percentage: f64,
    pub http_status: u16,
    /// gRPC status code sent instead for gRPC requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    pub cluster: String,
    /// Share of requests copied, 0–100. Responses of the copy are dropped.
    pub percentage: f64,
}

/// Header changes, applied in the order remove, set, add.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderEdits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// Replace any existing value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Append a value, keeping existing ones.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}
