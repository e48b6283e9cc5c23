//! MeshCertificate: a workload identity signed by the mesh CA.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, DNS_LABEL_PATTERN, is_dns_label};
use crate::{Duration, FieldErrors};

/// A workload identity: the operator (the mesh CA) issues a certificate for
/// a service account into a Secret (`tls.crt`, `tls.key`, `ca.crt`), with the
/// SPIFFE ID `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceAccount>`,
/// renews it before it expires, and publishes its serial to every sidecar
/// when it is revoked.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mesh.remora.dev",
    version = "v1alpha1",
    kind = "MeshCertificate",
    namespaced,
    doc = "A workload identity (SPIFFE) signed by the mesh CA, issued into a Secret, rotated before expiry, revocable.",
    status = "MeshCertificateStatus",
    shortname = "mcert",
    category = "remora",
    printcolumn = r#"{"name":"ServiceAccount","type":"string","jsonPath":".spec.serviceAccount"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.notAfter"}"#,
    printcolumn = r#"{"name":"Revoked","type":"boolean","jsonPath":".spec.revoked"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.rotateBefore) < duration(self.ttl)").message("spec.rotateBefore must be shorter than spec.ttl"))]
#[x_kube(validation = Rule::new("duration(self.warnBefore) >= duration(self.rotateBefore)").message("spec.warnBefore must not be shorter than spec.rotateBefore"))]
pub struct MeshCertificateSpec {
    /// The service account whose pods use this identity.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub service_account: String,
    /// Certificate lifetime (default 720h, 30 days).
    #[serde(default = "ttl")]
    pub ttl: Duration,
    /// Renew when less than this remains (default 24h).
    #[serde(default = "rotate_before")]
    pub rotate_before: Duration,
    /// Warn (an Event and a condition) when less than this remains and the
    /// certificate has not been renewed (default 48h).
    #[serde(default = "warn_before")]
    pub warn_before: Duration,
    /// Extra DNS names, e.g. `reviews.default.svc.cluster.local`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub dns_names: Vec<String>,
    /// Extra URI SANs; the SPIFFE ID is always included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub uris: Vec<String>,
    /// Secret to write the certificate to (default `<name>-tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub secret_name: Option<String>,
    /// Revoke the current certificate: its serial is published to every
    /// sidecar, which then refuses it, and a fresh certificate is issued.
    #[serde(default)]
    pub revoked: bool,
}

fn ttl() -> Duration {
    Duration::from_secs(720 * 3600)
}
fn rotate_before() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn warn_before() -> Duration {
    Duration::from_secs(48 * 3600)
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MeshCertificateStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The SPIFFE ID in the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// Serial number (lower-case hex) of the current certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// RFC 3339 times the current certificate is valid between.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// When the operator will renew it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
    /// When `revoked: true` was acted on (RFC 3339). Cleared when `revoked` is
    /// set back to false; set it false and then true to revoke again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// Serials of this identity's certificates revoked and not yet expired
    /// (the serials of `revocations`, for `kubectl get -o yaml` readers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_serials: Vec<String>,
    /// Each revoked certificate with its expiry: the serial is published to
    /// every sidecar until then, also after this MeshCertificate is deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revocations: Vec<Revocation>,
}

/// A revoked certificate: refused by every sidecar until it expires anyway.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    /// Serial number (lower-case hex).
    pub serial: String,
    /// When the certificate expires (RFC 3339); after that the entry is pruned.
    pub not_after: String,
}

impl MeshCertificateSpec {
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service account>`.
    pub fn spiffe_id(&self, trust_domain: &str, namespace: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{namespace}/sa/{}",
            self.service_account
        )
    }

    /// The Secret the certificate goes to.
    pub fn secret_name_for(&self, resource_name: &str) -> String {
        self.secret_name
            .clone()
            .unwrap_or_else(|| format!("{resource_name}-tls"))
    }

    /// Checks what the schema cannot: every problem, each under its path.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errs = FieldErrors::default();
        if self.ttl.as_std() < std::time::Duration::from_secs(3600) {
            errs.push(
                "spec.ttl",
                format!("{} is too short; at least 1h", self.ttl),
            );
        }
        if self.rotate_before >= self.ttl {
            errs.push(
                "spec.rotateBefore",
                format!(
                    "{} must be shorter than spec.ttl ({})",
                    self.rotate_before, self.ttl
                ),
            );
        }
        if self.warn_before < self.rotate_before {
            errs.push(
                "spec.warnBefore",
                format!(
                    "{} must not be shorter than spec.rotateBefore ({})",
                    self.warn_before, self.rotate_before
                ),
            );
        }
        for (i, name) in self.dns_names.iter().enumerate() {
            let host = name.strip_prefix("*.").unwrap_or(name);
            if host.len() > 253 || !host.split('.').all(is_dns_label) {
                errs.push(
                    format!("spec.dnsNames[{i}]"),
                    format!("{name:?} is not a DNS name"),
                );
            }
        }
        for (i, uri) in self.uris.iter().enumerate() {
            let scheme_ok = uri.split_once("://").is_some_and(|(s, rest)| {
                !s.is_empty()
                    && !rest.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            });
            if !scheme_ok {
                errs.push(
                    format!("spec.uris[{i}]"),
                    format!("{uri:?} is not an absolute URI"),
                );
            }
        }
        errs.into_result()
    }
}
