//! SidecarTemplate: how the webhook injects the sidecar.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::CommonStatus;
use crate::{Duration, FieldErrors, config::TlsMode};

/// How the sidecar is injected into pods: its image, resources, ports and
/// traffic capture. A pod uses the template named in its
/// `remora.dev/template` annotation, else one whose `podSelector` matches its
/// labels, else the namespace's default template (`default: true`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mesh.remora.dev",
    version = "v1alpha1",
    kind = "SidecarTemplate",
    namespaced,
    doc = "How Remora injects its sidecar into pods: image, resources, ports and traffic capture.",
    status = "CommonStatus",
    shortname = "sct",
    category = "remora",
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.image"}"#,
    printcolumn = r#"{"name":"Capture","type":"string","jsonPath":".spec.captureMode"}"#,
    printcolumn = r#"{"name":"Default","type":"boolean","jsonPath":".spec.default"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.ports.inbound != self.ports.outbound && self.ports.inbound != self.ports.admin && self.ports.outbound != self.ports.admin").message("spec.ports: inbound, outbound and admin must be three different ports"))]
#[x_kube(validation = Rule::new("!has(self.excludeOutboundCidrs) || self.excludeOutboundCidrs.all(c, !c.contains(':'))").message("spec.excludeOutboundCidrs: IPv6 CIDRs are refused: Remora captures IPv4 only (iptables, no ip6tables), so there is no IPv6 capture to exclude them from"))]
pub struct SidecarTemplateSpec {
    /// Sidecar container image, e.g. `ghcr.io/example/remora-sidecar:0.1.0`.
    #[schemars(length(min = 1))]
    pub image: String,
    /// When the kubelet pulls the image.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// CPU and memory for the sidecar container.
    #[serde(default)]
    pub resources: SidecarResources,
    /// Ports the sidecar listens on inside the pod.
    #[serde(default)]
    pub ports: ProxyPorts,
    /// `iptables`: an init container redirects the pod's traffic through the
    /// sidecar, transparently. `explicit`: no redirect; applications send
    /// outbound calls to the sidecar at 127.0.0.1 (given to them in the
    /// `REMORA_OUTBOUND` environment variable).
    #[serde(default)]
    pub capture_mode: CaptureMode,
    /// Inbound ports that bypass the sidecar (iptables mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub exclude_inbound_ports: Vec<Port>,
    /// Outbound destination ports that bypass the sidecar (iptables mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub exclude_outbound_ports: Vec<Port>,
    /// Outbound destination IPv4 CIDRs that bypass the sidecar, e.g.
    /// `10.0.0.0/8`. Only IPv4 is captured, so IPv6 CIDRs are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// Sidecar log level.
    #[serde(default)]
    pub log_level: LogLevel,
    /// `native`: the sidecar is an init container with `restartPolicy:
    /// Always` (Kubernetes 1.29+), started before and stopped after the
    /// application. `legacy`: the sidecar is the pod's first container.
    #[serde(default)]
    pub sidecar_mode: SidecarMode,
    /// Hold the application's containers until the sidecar is ready, so
    /// their first calls do not fail.
    #[serde(default = "yes")]
    pub hold_application_until_proxy_starts: bool,
    /// The UID the sidecar runs as; its own traffic is never redirected.
    #[serde(default = "proxy_uid")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub proxy_uid: i64,
    /// Worker threads of the proxy. One is best for most pods.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 64))]
    pub concurrency: u32,
    /// How long the sidecar keeps serving in-flight requests at shutdown.
    #[serde(default = "drain")]
    pub drain_duration: Duration,
    /// Extra environment variables for the sidecar container.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// This namespace's default template, used by pods that select no other.
    #[serde(default)]
    pub default: bool,
    /// Pods whose labels contain all of these use this template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_selector: BTreeMap<String, String>,
}

/// A TCP port, 1–65535.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(transparent)]
pub struct Port(#[schemars(range(min = 1, max = 65535))] pub u16);

/// An IPv4 CIDR such as `10.0.0.0/8`.
// The pattern admits IPv6 so that the CEL rule refusing it can say why.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct Cidr(
    #[schemars(
        regex(pattern = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}|[0-9a-fA-F:]+/[0-9]{1,3})$"),
        length(max = 43)
    )]
    pub String,
);

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    #[default]
    Iptables,
    Explicit,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SidecarMode {
    #[default]
    Native,
    Legacy,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Ports inside the pod.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyPorts {
    /// Where redirected inbound traffic arrives.
    #[serde(default = "inbound")]
    pub inbound: Port,
    /// Where the application's outbound traffic arrives (redirected, or sent
    /// explicitly to 127.0.0.1:<outbound>).
    #[serde(default = "outbound")]
    pub outbound: Port,
    /// Pod-reachable admin port: `/ready`, `/live`, `/metrics`, `/app-health/...`
    /// (`/drain`, `/config_dump` and the log level are on 127.0.0.1:15009 only).
    #[serde(default = "admin")]
    pub admin: Port,
}

impl Default for ProxyPorts {
    fn default() -> Self {
        Self {
            inbound: inbound(),
            outbound: outbound(),
            admin: admin(),
        }
    }
}

/// Requests and limits for the sidecar container, as Kubernetes quantities.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarResources {
    #[serde(default = "cpu_request")]
    pub cpu_request: Quantity,
    #[serde(default = "memory_request")]
    pub memory_request: Quantity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<Quantity>,
    #[serde(default = "memory_limit", skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<Quantity>,
}

impl Default for SidecarResources {
    fn default() -> Self {
        Self {
            cpu_request: cpu_request(),
            memory_request: memory_request(),
            cpu_limit: None,
            memory_limit: memory_limit(),
        }
    }
}

/// A Kubernetes resource quantity such as `100m`, `0.5` or `64Mi`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct Quantity(
    #[schemars(regex(
        pattern = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
    ))]
    pub String,
);

fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn proxy_uid() -> i64 {
    1337
}
fn drain() -> Duration {
    Duration::from_secs(5)
}
fn inbound() -> Port {
    Port(15006)
}
fn outbound() -> Port {
    Port(15001)
}
fn admin() -> Port {
    Port(15000)
}
fn cpu_request() -> Quantity {
    Quantity("50m".into())
}
fn memory_request() -> Quantity {
    Quantity("32Mi".into())
}
fn memory_limit() -> Option<Quantity> {
    Some(Quantity("128Mi".into()))
}

impl SidecarTemplateSpec {
    /// Checks what the schema cannot: every problem, each under its path.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errs = FieldErrors::default();
        let p = self.ports;
        if p.inbound == p.outbound || p.inbound == p.admin || p.outbound == p.admin {
            errs.push(
                "spec.ports",
                "inbound, outbound and admin must be three different ports",
            );
        }
        for (i, port) in self.exclude_inbound_ports.iter().enumerate() {
            if *port == p.inbound || *port == p.admin {
                errs.push(
                    format!("spec.excludeInboundPorts[{i}]"),
                    format!("{} is one of the sidecar's own ports", port.0),
                );
            }
        }
        for (i, cidr) in self.exclude_outbound_cidrs.iter().enumerate() {
            let at = format!("spec.excludeOutboundCidrs[{i}]");
            match cidr_family(&cidr.0) {
                Some(IpFamily::V4) => {}
                Some(IpFamily::V6) => errs.push(
                    at,
                    format!(
                        "{:?} is an IPv6 CIDR: Remora captures IPv4 only (iptables, no \
                         ip6tables), so there is no IPv6 capture to exclude it from; remove it",
                        cidr.0
                    ),
                ),
                None => errs.push(at, format!("{:?} is not a valid CIDR", cidr.0)),
            }
        }
        for key in self.env.keys() {
            if key.is_empty()
                || key.starts_with(|c: char| c.is_ascii_digit())
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
            {
                errs.push(
                    format!("spec.env[{key}]"),
                    format!("{key:?} is not a valid environment variable name"),
                );
            }
        }
        if self.drain_duration.as_std() > std::time::Duration::from_secs(600) {
            errs.push(
                "spec.drainDuration",
                "longer than 10m would hold pod deletion too long",
            );
        }
        errs.into_result()
    }
}

/// Why explicit capture cannot work in a mesh whose inbound mTLS is `mtls`,
/// if it cannot. Explicit mode has no inbound listener: callers' sidecars
/// would send mTLS straight to the app, and inbound rate limits and
/// authorization would never run.
pub fn explicit_capture_conflict(mode: CaptureMode, mtls: TlsMode) -> Option<String> {
    let mtls = match (mode, mtls) {
        (CaptureMode::Iptables, _) | (_, TlsMode::Disabled) => return None,
        (CaptureMode::Explicit, TlsMode::Permissive) => "permissive",
        (CaptureMode::Explicit, TlsMode::Strict) => "strict",
    };
    Some(format!(
        "captureMode explicit has no inbound listener, so it cannot be used while the mesh's \
         mTLS is {mtls}: other sidecars would send TLS straight to the app, and inbound rate \
         limits and authorization would not run; use captureMode iptables (or a mesh with \
         mTLS disabled)"
    ))
}

impl SidecarTemplateSpec {
    /// [`validate`](Self::validate), plus what depends on the mesh the
    /// template is used in: its inbound mTLS mode.
    pub fn validate_in_mesh(&self, mtls: TlsMode) -> Result<(), FieldErrors> {
        let mut errs = self.validate().err().unwrap_or_default();
        if let Some(why) = explicit_capture_conflict(self.capture_mode, mtls) {
            errs.push("spec.captureMode", why);
        }
        errs.into_result()
    }
}

enum IpFamily {
    V4,
    V6,
}

/// The family of a well-formed CIDR, `None` when it is not one.
fn cidr_family(s: &str) -> Option<IpFamily> {
    let (addr, len) = s.split_once('/')?;
    let len = len.parse::<u8>().ok()?;
    match addr.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(_) => (len <= 32).then_some(IpFamily::V4),
        std::net::IpAddr::V6(_) => (len <= 128).then_some(IpFamily::V6),
    }
}
