//! Upstream clusters: where routed traffic goes and how it is balanced.

use std::net::{IpAddr, SocketAddr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Protocol;
use crate::Duration;

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    /// Unique name, e.g. `reviews.default:9080` or `reviews.default:9080|v2`.
    pub name: String,
    #[serde(default)]
    pub protocol: Protocol,
    pub endpoints: Endpoints,
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    #[serde(default = "connect_timeout")]
    pub connect_timeout: Duration,
    /// Pooled upstream connections idle this long are closed.
    #[serde(default = "idle_timeout")]
    pub idle_timeout: Duration,
    /// Circuit breaking: connection and request limits for the whole cluster.
    #[serde(default)]
    pub limits: ConnectionLimits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// How to secure connections to this cluster.
    #[serde(default)]
    pub tls: UpstreamTls,
}

fn connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn idle_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Where the cluster's endpoints come from.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Endpoints {
    /// A fixed list (local mode, tests).
    Static(Vec<StaticEndpoint>),
    /// All addresses a DNS name resolves to, refreshed in the background. A
    /// headless Service name yields every ready pod IP.
    Dns(DnsEndpoints),
    /// The destination the client meant (transparent capture): plain
    /// pass-through for traffic that matches no route.
    OriginalDestination,
    /// 127.0.0.1 at the port the client meant: the application, for
    /// inbound traffic.
    LocalApp,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticEndpoint {
    pub address: SocketAddr,
    /// Relative weight for weighted policies (default 1).
    #[serde(default = "weight_one")]
    pub weight: u32,
}

fn weight_one() -> u32 {
    1
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsEndpoints {
    /// Fully qualified name, e.g. `reviews-v2.default.svc.cluster.local`.
    pub name: String,
    pub port: u16,
    #[serde(default = "refresh")]
    pub refresh: Duration,
}

fn refresh() -> Duration {
    Duration::from_secs(5)
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    #[serde(default)]
    pub policy: LbPolicy,
    /// What consistent-hash and Maglev policies hash; required for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    /// Weighted least-request, power of two choices.
    LeastRequest,
    Random,
    /// Consistent hashing on a ring.
    RingHash,
    Maglev,
}

impl LbPolicy {
    pub fn needs_hash(self) -> bool {
        matches!(self, LbPolicy::RingHash | LbPolicy::Maglev)
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum HashOn {
    Header(String),
    Cookie(String),
    SourceIp,
}

/// Circuit breaking for the whole cluster (every endpoint together); a
/// request or connection over a limit is refused at once and counted in
/// `upstream_overflow_total{limit}`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Open upstream sockets: HTTP/1.1 pool, HTTP/2 and TCP pass-through
    /// connections together (at least 1).
    #[serde(default = "limit_default")]
    pub max_connections: u32,
    /// Requests waiting for a connection (or an HTTP/2 stream) while the
    /// cluster is at `maxConnections`; one more is refused (503). 0 refuses
    /// at once.
    #[serde(default = "limit_default")]
    pub max_pending_requests: u32,
    /// Requests in flight to the cluster, each try counted (at least 1).
    #[serde(default = "limit_default")]
    pub max_requests: u32,
    /// Retries in flight to the cluster; a retry over it is not sent and the
    /// last answer is returned. 0 disables retries.
    #[serde(default = "limit_default")]
    pub max_retries: u32,
    /// An HTTP/1.1 connection is closed after this many requests; an HTTP/2
    /// connection takes no new stream after this many and closes once idle.
    /// 0 means unlimited.
    #[serde(default)]
    pub max_requests_per_connection: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: limit_default(),
            max_pending_requests: limit_default(),
            max_requests: limit_default(),
            max_retries: limit_default(),
            max_requests_per_connection: 0,
        }
    }
}

/// Envoy's default for connections, pending and in-flight requests. Also
/// for retries (Envoy: 3): the route's retry budget already bounds retries
/// as a share of traffic, so this is an absolute ceiling, not the control.
fn limit_default() -> u32 {
    1024
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx responses that eject an endpoint (0 disables).
    #[serde(default = "five")]
    pub consecutive_5xx: u32,
    /// Consecutive connect failures that eject an endpoint (0 disables).
    #[serde(default = "five")]
    pub consecutive_connect_failures: u32,
    /// First ejection lasts this long; each further ejection lasts longer.
    #[serde(default = "base_ejection")]
    pub base_ejection_time: Duration,
    /// Never eject more than this share of endpoints, 0–100.
    #[serde(default = "max_ejection")]
    pub max_ejection_percent: u32,
}

fn five() -> u32 {
    5
}
fn base_ejection() -> Duration {
    Duration::from_secs(30)
}
fn max_ejection() -> u32 {
    50
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// HTTP path probed with GET; absent probes with a TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    #[serde(default = "two")]
    pub unhealthy_threshold: u32,
    #[serde(default = "two")]
    pub healthy_threshold: u32,
}

fn two() -> u32 {
    2
}

/// Security of connections to a cluster.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamTls {
    #[serde(default)]
    pub mode: UpstreamTlsMode,
    /// The SPIFFE identity the server must present, e.g.
    /// `spiffe://cluster.local/ns/default/sa/reviews`. Absent accepts any
    /// identity from the trust bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// With `auto`: the destination addresses that have sidecars (the
    /// ClusterIPs of meshed Services, rendered by the operator).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mesh_addresses: Vec<IpAddr>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum UpstreamTlsMode {
    /// Plaintext.
    #[default]
    Disabled,
    /// Mesh mTLS with the workload certificate.
    Mesh,
    /// Mesh mTLS to destinations in `meshAddresses`, plaintext to the rest
    /// (pass-through traffic, where only some destinations have sidecars).
    Auto,
}
