//! Inbound policy: rate limits, identity and mTLS, authorization.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Labels, RequestMatch, StringMatch};
use crate::Duration;

/// A token bucket in front of the pods it selects.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// `<namespace>/<policy>/<limit>`; metrics are labelled with it.
    pub name: String,
    /// Pods whose labels contain all of these (empty: every pod).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_selector: Labels,
    /// Requests this limit counts (empty: all).
    #[serde(default, rename = "match")]
    pub matches: RequestMatch,
    /// The token bucket; absent when only the adaptive mode is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<TokenBucket>,
    /// Requests carrying this header (with this value, when given) are
    /// test traffic: shed first, and the adaptive mode limits them first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_traffic: Option<TestTraffic>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveLimit>,
    #[serde(default)]
    pub response: LimitResponse,
    /// Count and report, never refuse.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// `requests` tokens per `per`, holding at most `burst`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenBucket {
    pub requests: u32,
    #[serde(default = "second")]
    pub per: Duration,
    /// Requests allowed at once after a quiet spell.
    pub burst: u32,
    /// One bucket per distinct value of this header instead of one in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_header: Option<String>,
}

fn second() -> Duration {
    Duration::from_secs(1)
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestTraffic {
    pub header: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Share of the bucket test traffic may use, 0–100.
    #[serde(default = "half")]
    pub max_share_percent: u32,
}

fn half() -> u32 {
    50
}

/// Shed load when the pod is under pressure, whatever the bucket says.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdaptiveLimit {
    /// Shed when process CPU use over the window exceeds this, 0–100 of
    /// the cores the sidecar's pod may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<u32>,
    /// Shed when more requests than this are in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    #[serde(default = "window")]
    pub window: Duration,
}

fn window() -> Duration {
    Duration::from_secs(10)
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitResponse {
    #[serde(default = "too_many")]
    pub status: u16,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
}

impl Default for LimitResponse {
    fn default() -> Self {
        Self {
            status: too_many(),
            headers: BTreeMap::new(),
            body: String::new(),
        }
    }
}

fn too_many() -> u16 {
    429
}

/// Workload identity and mutual TLS between sidecars.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tls {
    /// Inbound: `disabled` (plaintext only), `permissive` (TLS and
    /// plaintext), `strict` (mTLS only).
    #[serde(default)]
    pub mode: TlsMode,
    #[serde(default = "trust_domain")]
    pub trust_domain: String,
    /// Workload certificate chain (PEM), mounted from the certificate Secret
    /// (the webhook mounts it at `/var/run/remora/identity`).
    #[serde(default = "cert_file")]
    pub cert_file: String,
    #[serde(default = "key_file")]
    pub key_file: String,
    /// Trust bundle file; when absent, `trustBundle` is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// The mesh CA certificates (PEM), rendered by the operator.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trust_bundle: String,
    /// Serial numbers (lower-case hex) of revoked certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_serials: Vec<String>,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            mode: TlsMode::default(),
            trust_domain: trust_domain(),
            cert_file: cert_file(),
            key_file: key_file(),
            ca_file: None,
            trust_bundle: String::new(),
            revoked_serials: Vec::new(),
        }
    }
}

pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

fn trust_domain() -> String {
    DEFAULT_TRUST_DOMAIN.into()
}
fn cert_file() -> String {
    "/var/run/remora/identity/tls.crt".into()
}
fn key_file() -> String {
    "/var/run/remora/identity/tls.key".into()
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum TlsMode {
    #[default]
    Disabled,
    Permissive,
    Strict,
}

/// Who may call the pods a policy selects. Once any policy selects a pod,
/// calls that no rule allows are refused (403 / PERMISSION_DENIED).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzPolicy {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_selector: Labels,
    pub rules: Vec<AuthzRule>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzRule {
    /// Caller identities (SPIFFE IDs); a trailing `*` matches a prefix, a
    /// lone `*` any authenticated caller.
    pub from: Vec<String>,
    /// Requests allowed; empty allows every request of those callers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RequestMatch>,
}

/// `StringMatch` is also how authorization rules name paths; re-exported
/// here so policy users need one import.
pub type PathMatch = StringMatch;
