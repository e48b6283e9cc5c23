//! Probes keep working in iptables mode: the kubelet connects from the node, so the
//! inbound redirect would hand its probes to the proxy.
//!
//! - `httpGet` (plain HTTP, no `host`) and `tcpSocket` probes of the app's containers
//!   are rewritten to the sidecar's admin port, `GET /app-health/<container>/<kind>`;
//!   the sidecar runs the original probe against 127.0.0.1 (see
//!   `remora_api::config::AppProbe`). The app's ports then need no exclusion, so mTLS
//!   and authorization cover all of them. `remora.dev/rewrite-app-probes: "false"`
//!   turns this off.
//! - Every port the kubelet still connects to (other probes, lifecycle hooks, the
//!   user's native sidecars) bypasses the redirect (`--exclude-inbound-ports`).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use remora_api::config::{AppProbe, AppProbes, ProbeHeader, app_probe_path};

/// Rewrites the app containers' `httpGet` and `tcpSocket` probes to the admin port
/// and returns the originals, keyed by their new admin path.
pub fn rewrite_app_probes(spec: &mut PodSpec, admin_port: u16) -> AppProbes {
    let mut out = AppProbes::new();
    for c in &mut spec.containers {
        let ports = c.ports.clone().unwrap_or_default();
        let named = |port: &IntOrString| match port {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(name) => declared(&ports, name),
        };
        let name = c.name.clone();
        for (kind, probe) in [
            ("livez", &mut c.liveness_probe),
            ("readyz", &mut c.readiness_probe),
            ("startupz", &mut c.startup_probe),
        ] {
            let Some(p) = probe.as_mut() else { continue };
            let Some(original) = app_probe(p, &named) else {
                continue;
            };
            let path = app_probe_path(&name, kind);
            p.tcp_socket = None;
            p.http_get = Some(HTTPGetAction {
                path: Some(path.clone()),
                port: IntOrString::Int(i32::from(admin_port)),
                scheme: Some("HTTP".into()),
                ..Default::default()
            });
            out.insert(path, original);
        }
    }
    out
}

/// The probe the sidecar can run for the kubelet, if this is one.
fn app_probe(p: &Probe, port: &dyn Fn(&IntOrString) -> Option<u16>) -> Option<AppProbe> {
    let timeout_seconds = p
        .timeout_seconds
        .and_then(|t| u32::try_from(t).ok())
        .unwrap_or(1);
    if let Some(h) = &p.http_get {
        let plain = h
            .scheme
            .as_deref()
            .is_none_or(|s| s.eq_ignore_ascii_case("HTTP"));
        if !plain || h.host.is_some() {
            return None;
        }
        return Some(AppProbe::HttpGet {
            path: h.path.clone().unwrap_or_else(|| "/".into()),
            port: port(&h.port)?,
            headers: h
                .http_headers
                .iter()
                .flatten()
                .map(|h| ProbeHeader {
                    name: h.name.clone(),
                    value: h.value.clone(),
                })
                .collect(),
            timeout_seconds,
        });
    }
    let t = p.tcp_socket.as_ref().filter(|t| t.host.is_none())?;
    Some(AppProbe::TcpSocket {
        port: port(&t.port)?,
        timeout_seconds,
    })
}

/// The number of the port named `name` in `ports`.
fn declared(ports: &[ContainerPort], name: &str) -> Option<u16> {
    ports
        .iter()
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| u16::try_from(p.container_port).ok())
}

/// Ports the kubelet connects to from the node: probes (httpGet, tcpSocket, grpc) and
/// lifecycle hooks (httpGet, tcpSocket) of the app's containers and of the user's own
/// native sidecars. Named ports are resolved in the container that names them.
pub fn kubelet_ports(spec: &PodSpec, warnings: &mut Vec<String>) -> BTreeSet<u16> {
    let mut out = BTreeSet::new();
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    for c in spec.containers.iter().chain(sidecars) {
        let probes = [&c.liveness_probe, &c.readiness_probe, &c.startup_probe];
        let mut targets: Vec<&IntOrString> = Vec::new();
        for p in probes.into_iter().flatten() {
            targets.extend(p.http_get.as_ref().map(|h| &h.port));
            targets.extend(p.tcp_socket.as_ref().map(|t| &t.port));
            if let Some(g) = &p.grpc {
                out.extend(u16::try_from(g.port).ok());
            }
        }
        if let Some(l) = &c.lifecycle {
            for h in [&l.post_start, &l.pre_stop].into_iter().flatten() {
                targets.extend(h.http_get.as_ref().map(|h| &h.port));
                targets.extend(h.tcp_socket.as_ref().map(|t| &t.port));
            }
        }
        for port in targets {
            match port {
                IntOrString::Int(n) => out.extend(u16::try_from(*n).ok()),
                IntOrString::String(name) => {
                    match declared(c.ports.as_deref().unwrap_or_default(), name) {
                        Some(n) => {
                            out.insert(n);
                        }
                        None => warnings.push(format!(
                            "remora: container {} probes port {name:?}, which it does not declare; \
                             the probe goes through the proxy",
                            c.name
                        )),
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> PodSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn only_plain_local_http_and_tcp_probes_are_rewritten() {
        let mut s = spec(
            r#"
containers:
  - name: app
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /ready, port: http, httpHeaders: [{name: x-probe, value: "1"}]}, timeoutSeconds: 3}
    livenessProbe: {httpGet: {path: /live, port: 8443, scheme: HTTPS}}
    startupProbe: {tcpSocket: {port: 8080, host: db.local}}
  - name: rpc
    readinessProbe: {grpc: {port: 50051}}
    livenessProbe: {tcpSocket: {port: 50051}}
"#,
        );
        let probes = rewrite_app_probes(&mut s, 15000);
        assert_eq!(
            probes.keys().map(String::as_str).collect::<Vec<_>>(),
            ["/app-health/app/readyz", "/app-health/rpc/livez"]
        );
        assert_eq!(
            probes["/app-health/app/readyz"],
            AppProbe::HttpGet {
                path: "/ready".into(),
                port: 8080,
                headers: vec![ProbeHeader {
                    name: "x-probe".into(),
                    value: "1".into()
                }],
                timeout_seconds: 3,
            }
        );
        let app = &s.containers[0];
        let ready = app
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(ready.port, IntOrString::Int(15000));
        assert_eq!(ready.path.as_deref(), Some("/app-health/app/readyz"));
        assert_eq!(
            app.readiness_probe.as_ref().unwrap().timeout_seconds,
            Some(3),
            "timings are kept"
        );
        // HTTPS, another host and gRPC stay as they are, and keep their bypass.
        let mut warnings = Vec::new();
        assert_eq!(
            kubelet_ports(&s, &mut warnings)
                .into_iter()
                .collect::<Vec<_>>(),
            [8080, 8443, 15000, 50051]
        );
        let rpc = &s.containers[1];
        assert!(rpc.liveness_probe.as_ref().unwrap().tcp_socket.is_none());
    }
}
