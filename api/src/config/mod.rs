//! The sidecar config document: one versioned, self-contained JSON document
//! per mesh namespace. The operator renders it (into the `remora-config`
//! ConfigMap), `remoractl render` prints it, and the sidecar loads it.
//!
//! Loading goes through [`SidecarConfig::from_json`], which parses (unknown
//! fields are errors where a typo would silently change behaviour), checks the
//! format version and the content hash, and runs [`SidecarConfig::validate`].
//! A config that fails any of these is never used.

mod cluster;
mod policy;
mod probe;
mod route;
mod validate;

use std::{collections::BTreeMap, net::SocketAddr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use cluster::*;
pub use policy::*;
pub use probe::*;
pub use route::*;

use crate::FieldErrors;

/// The format version this build reads and writes.
pub const CONFIG_VERSION: u32 = 1;

/// A complete sidecar configuration.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "Remora sidecar config")]
pub struct SidecarConfig {
    /// Format version of this document; this build reads version 1.
    pub version: u32,
    /// Content hash (`sha256:<hex>`) of the document without this field. When
    /// present it must match, so a truncated or hand-edited copy is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// The namespace this document was rendered for (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Where the proxy accepts traffic.
    pub listeners: Vec<Listener>,
    /// The admin endpoints: health and metrics on a pod-reachable port, state
    /// changes and the config dump on loopback only.
    #[serde(default)]
    pub admin: Admin,
    /// Route tables, one per destination service (virtual host).
    #[serde(default)]
    pub routes: Vec<RouteTable>,
    /// Upstream clusters that routes send traffic to.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// Local rate limits applied to inbound traffic of the pods they select.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
    /// Workload identity and mTLS.
    #[serde(default)]
    pub tls: Tls,
    /// Inbound authorization policies (deny by default once one selects a pod).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authz: Vec<AuthzPolicy>,
    #[serde(default)]
    pub access_log: AccessLog,
    #[serde(default)]
    pub tracing: Tracing,
    /// Settings of the proxy process itself.
    #[serde(default)]
    pub runtime: Runtime,
}

/// A socket the proxy listens on.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// Unique name; metrics and access logs are labelled with it.
    pub name: String,
    pub direction: Direction,
    /// Address to bind, such as `127.0.0.1:15001` or `0.0.0.0:15006`.
    pub address: SocketAddr,
    /// The connection was redirected by iptables: the destination the client
    /// meant is read from `SO_ORIGINAL_DST`.
    #[serde(default)]
    pub transparent: bool,
    /// What to expect on accepted connections. `auto` sniffs HTTP/1, HTTP/2
    /// and TLS and treats anything else as opaque TCP.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Cluster for traffic that matches no route table: for inbound, the
    /// application; for transparent outbound, usually `passthrough`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_cluster: Option<String>,
    /// Destination ports treated as opaque TCP without protocol detection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<u16>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Direction {
    /// Traffic the application sends.
    Outbound,
    /// Traffic sent to the application.
    Inbound,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ListenerProtocol {
    #[default]
    Auto,
    Http1,
    Http2,
    Tcp,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Admin {
    /// What the kubelet and Prometheus reach: `GET /ready`, `/live`,
    /// `/metrics` and the app's rewritten probes (`/app-health/...`). Nothing
    /// here changes or reveals state.
    pub address: SocketAddr,
    /// Loopback only: `POST /drain`, `GET /config_dump`, `GET`/`POST /logging`
    /// (log level), plus everything `address` answers.
    #[serde(default = "control_default")]
    pub control_address: SocketAddr,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            address: SocketAddr::from(([127, 0, 0, 1], 15000)),
            control_address: control_default(),
        }
    }
}

impl Admin {
    /// Whether `addr` is one of the admin sockets (port 0 never collides).
    pub fn uses(&self, addr: SocketAddr) -> bool {
        addr.port() != 0 && (addr == self.address || addr == self.control_address)
    }
}

fn control_default() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15009))
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLog {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `-` for standard output, or a file path.
    #[serde(default = "stdout")]
    pub path: String,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self {
            enabled: true,
            path: stdout(),
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// Start a W3C `traceparent` when a request has none (it is always
    /// propagated when present).
    #[serde(default)]
    pub start_traces: bool,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Runtime {
    /// Worker threads; 1 suits a sidecar best (fewest wake-ups).
    #[serde(default = "one")]
    pub worker_threads: u16,
    /// How long shutdown waits for in-flight requests.
    #[serde(default = "drain_default")]
    pub drain_timeout: crate::Duration,
    /// On SIGTERM, how long the proxy keeps accepting (with `/ready` failing
    /// and every response closing its connection) before it stops accepting,
    /// so callers that still route here while endpoints update are served.
    #[serde(default = "grace_default")]
    pub drain_grace: crate::Duration,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    #[serde(default = "info")]
    pub log_level: String,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            worker_threads: one(),
            drain_timeout: drain_default(),
            drain_grace: grace_default(),
            log_level: info(),
        }
    }
}

fn yes() -> bool {
    true
}
fn one() -> u16 {
    1
}
fn stdout() -> String {
    "-".into()
}
fn info() -> String {
    "info".into()
}
fn drain_default() -> crate::Duration {
    crate::Duration::from_secs(5)
}
fn grace_default() -> crate::Duration {
    crate::Duration::from_secs(5)
}

/// Why a config document was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("sidecar config is not valid JSON for this schema at {path}: {message}")]
    Parse { path: String, message: String },
    #[error("sidecar config has version {found}; this sidecar reads version {CONFIG_VERSION}")]
    Version { found: u32 },
    #[error("sidecar config hash mismatch: document says {stated}, content is {actual}")]
    Hash { stated: String, actual: String },
    #[error("sidecar config is invalid: {0}")]
    Invalid(#[from] FieldErrors),
}

impl SidecarConfig {
    /// Parses, checks version and hash, and validates. Nothing that fails
    /// here may replace a config in use.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let config: Self =
            serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Parse {
                path: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        if config.version != CONFIG_VERSION {
            return Err(ConfigError::Version {
                found: config.version,
            });
        }
        if let Some(stated) = &config.hash {
            let actual = config.content_hash();
            if *stated != actual {
                return Err(ConfigError::Hash {
                    stated: stated.clone(),
                    actual,
                });
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// `sha256:<hex>` of the canonical JSON of the document with `hash` unset.
    /// Field order is fixed by the types and maps are ordered, so equal
    /// content always hashes equal.
    pub fn content_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash = None;
        let bytes = serde_json::to_vec(&unhashed).expect("config serializes");
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
    }

    /// Sets `hash` to the content hash.
    pub fn seal(mut self) -> Self {
        self.hash = Some(self.content_hash());
        self
    }

    /// Pretty JSON with a trailing newline, as written to ConfigMaps and files.
    pub fn to_pretty_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("config serializes");
        s.push('\n');
        s
    }

    /// The JSON Schema of this document, as published in
    /// `api/sidecar-config.schema.json`.
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(SidecarConfig)).expect("schema serializes")
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

/// Pod labels: `key -> value`. A selector matches when every pair is present.
pub type Labels = BTreeMap<String, String>;

/// True when every `key=value` of `selector` is in `labels` (an empty
/// selector matches every pod).
pub fn selector_matches(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
