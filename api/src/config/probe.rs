//! Application probes the sidecar answers for the kubelet.
//!
//! In iptables mode the webhook rewrites a container's `httpGet` (HTTP or
//! HTTPS), `tcpSocket` and `grpc` probes, and its `httpGet` lifecycle hooks,
//! to `GET <admin port>/app-health/<container>/<kind>` and passes the
//! originals to the sidecar in `REMORA_APP_PROBES` (a JSON object from those
//! paths to [`AppProbe`]s). The sidecar runs the original against the app on
//! 127.0.0.1 and answers with its result. So the app's ports need no
//! exclusion from the inbound capture, and strict mTLS and authorization
//! cover every port the app serves (Istio rewrites probes for the same
//! reason): a port left out of the capture would let anyone who reaches the
//! pod claim any caller identity (`x-forwarded-client-cert`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The environment variable carrying the probes.
pub const APP_PROBES_ENV: &str = "REMORA_APP_PROBES";

/// The admin path for `container`'s probe of `kind` (`livez`, `readyz`,
/// `startupz`) or lifecycle hook (`poststart`, `prestop`).
pub fn app_probe_path(container: &str, kind: &str) -> String {
    format!("/app-health/{container}/{kind}")
}

/// An original probe, run by the sidecar against 127.0.0.1.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum AppProbe {
    HttpGet {
        path: String,
        port: u16,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        headers: Vec<ProbeHeader>,
        #[serde(default = "one")]
        timeout_seconds: u32,
        /// `scheme: HTTPS`: TLS without verifying the app's certificate, as
        /// the kubelet does.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        https: bool,
    },
    TcpSocket {
        port: u16,
        #[serde(default = "one")]
        timeout_seconds: u32,
    },
    /// `grpc.health.v1.Health/Check` in plaintext HTTP/2; healthy when the
    /// answer is `SERVING`.
    Grpc {
        port: u16,
        /// The `service` of the health request (empty: the server as a whole).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        service: String,
        #[serde(default = "one")]
        timeout_seconds: u32,
    },
}

impl AppProbe {
    /// The app's port the probe connects to.
    pub fn port(&self) -> u16 {
        match self {
            AppProbe::HttpGet { port, .. }
            | AppProbe::TcpSocket { port, .. }
            | AppProbe::Grpc { port, .. } => *port,
        }
    }

    pub fn timeout_seconds(&self) -> u32 {
        match self {
            AppProbe::HttpGet {
                timeout_seconds, ..
            }
            | AppProbe::TcpSocket {
                timeout_seconds, ..
            }
            | AppProbe::Grpc {
                timeout_seconds, ..
            } => *timeout_seconds,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProbeHeader {
    pub name: String,
    pub value: String,
}

fn one() -> u32 {
    1
}

/// Admin path → probe.
pub type AppProbes = BTreeMap<String, AppProbe>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_round_trip_as_the_webhook_writes_them() {
        let mut p = AppProbes::new();
        p.insert(
            app_probe_path("reviews", "readyz"),
            AppProbe::HttpGet {
                path: "/healthz".into(),
                port: 9080,
                headers: vec![ProbeHeader {
                    name: "x-probe".into(),
                    value: "1".into(),
                }],
                timeout_seconds: 2,
                https: false,
            },
        );
        p.insert(
            app_probe_path("reviews", "startupz"),
            AppProbe::Grpc {
                port: 9090,
                service: "reviews.v1.Reviews".into(),
                timeout_seconds: 3,
            },
        );
        p.insert(
            app_probe_path("reviews", "livez"),
            AppProbe::TcpSocket {
                port: 9080,
                timeout_seconds: 1,
            },
        );
        let json = serde_json::to_string(&p).unwrap();
        assert!(
            json.contains(r#""/app-health/reviews/readyz":{"httpGet":{"path":"/healthz""#)
                && json.contains(r#""timeoutSeconds":2"#)
                && json.contains(r#""grpc":{"port":9090,"service":"reviews.v1.Reviews""#)
                && !json.contains("https"),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<AppProbes>(&json).unwrap(), p);
        assert!(serde_json::from_str::<AppProbes>(r#"{"/x":{"exec":{}}}"#).is_err());
    }
}
