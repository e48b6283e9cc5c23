//! Probes keep working in iptables mode: the kubelet connects from the node, so the
//! inbound redirect would hand its probes to the proxy.
//!
//! - `httpGet` (HTTP or HTTPS, no `host`), `tcpSocket` and `grpc` probes of the app's
//!   containers, and their `httpGet` lifecycle hooks, are rewritten to the sidecar's
//!   admin port, `GET /app-health/<container>/<kind>`; the sidecar runs the original
//!   against 127.0.0.1 (see `remora_api::config::AppProbe`). The app's ports then need
//!   no exclusion, so mTLS and authorization cover all of them.
//!   `remora.dev/rewrite-app-probes: "false"` turns this off.
//! - Every port the kubelet still connects to (probes and hooks of another `host`, the
//!   user's native sidecars, everything when rewriting is off) bypasses the redirect
//!   (`--exclude-inbound-ports`). `tcpSocket` lifecycle hooks are never run by the
//!   kubelet, so they need no port.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use remora_api::config::{AppProbe, AppProbes, ProbeHeader, app_probe_path};

/// Rewrites the app containers' `httpGet`, `tcpSocket` and `grpc` probes and their
/// `httpGet` lifecycle hooks to the admin port and returns the originals, keyed by
/// their new admin path.
pub fn rewrite_app_probes(spec: &mut PodSpec, admin_port: u16) -> AppProbes {
    let mut out = AppProbes::new();
    let admin_get = |path: &str| HTTPGetAction {
        path: Some(path.to_owned()),
        port: IntOrString::Int(i32::from(admin_port)),
        scheme: Some("HTTP".into()),
        ..Default::default()
    };
    // A hook runs until the kubelet gives up on the container: its grace period.
    let hook_timeout = spec
        .termination_grace_period_seconds
        .and_then(|s| u32::try_from(s).ok())
        .unwrap_or(30)
        .max(1);
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
            p.grpc = None;
            p.http_get = Some(admin_get(&path));
            out.insert(path, original);
        }
        let Some(lifecycle) = c.lifecycle.as_mut() else {
            continue;
        };
        for (kind, hook) in [
            ("poststart", &mut lifecycle.post_start),
            ("prestop", &mut lifecycle.pre_stop),
        ] {
            let Some(get) = hook.as_mut().and_then(|h| h.http_get.as_mut()) else {
                continue;
            };
            let Some(original) = http_get(get, hook_timeout, &named) else {
                continue;
            };
            let path = app_probe_path(&name, kind);
            *get = admin_get(&path);
            out.insert(path, original);
        }
    }
    out
}

/// An `httpGet` to the pod itself (no `host`) on a port that resolves.
fn http_get(
    h: &HTTPGetAction,
    timeout_seconds: u32,
    port: &dyn Fn(&IntOrString) -> Option<u16>,
) -> Option<AppProbe> {
    let https = match h.scheme.as_deref() {
        None => false,
        Some(s) if s.eq_ignore_ascii_case("HTTP") => false,
        Some(s) if s.eq_ignore_ascii_case("HTTPS") => true,
        Some(_) => return None,
    };
    if h.host.is_some() {
        return None;
    }
    Some(AppProbe::HttpGet {
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
        https,
    })
}

/// The probe the sidecar can run for the kubelet, if this is one.
fn app_probe(p: &Probe, port: &dyn Fn(&IntOrString) -> Option<u16>) -> Option<AppProbe> {
    let timeout_seconds = p
        .timeout_seconds
        .and_then(|t| u32::try_from(t).ok())
        .unwrap_or(1);
    if let Some(h) = &p.http_get {
        return http_get(h, timeout_seconds, port);
    }
    if let Some(g) = &p.grpc {
        return Some(AppProbe::Grpc {
            port: u16::try_from(g.port).ok()?,
            service: g.service.clone().unwrap_or_default(),
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
/// `httpGet` lifecycle hooks of the app's containers and of the user's own native
/// sidecars, as they are after rewriting. (The kubelet never runs a `tcpSocket` hook.)
/// Named ports are resolved in the container that names them.
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
    fn probes_and_http_hooks_of_the_pod_itself_are_rewritten() {
        let mut s = spec(
            r#"
terminationGracePeriodSeconds: 45
containers:
  - name: app
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /ready, port: http, httpHeaders: [{name: x-probe, value: "1"}]}, timeoutSeconds: 3}
    livenessProbe: {httpGet: {path: /live, port: 8443, scheme: HTTPS}}
    startupProbe: {tcpSocket: {port: 8080, host: db.local}}
  - name: rpc
    readinessProbe: {grpc: {port: 50051, service: rpc.v1.Rpc}, timeoutSeconds: 2}
    livenessProbe: {tcpSocket: {port: 50051}}
    lifecycle:
      postStart: {httpGet: {path: /warm, port: 50051}}
      preStop: {tcpSocket: {port: 9999}}
"#,
        );
        let probes = rewrite_app_probes(&mut s, 15000);
        assert_eq!(
            probes.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "/app-health/app/livez",
                "/app-health/app/readyz",
                "/app-health/rpc/livez",
                "/app-health/rpc/poststart",
                "/app-health/rpc/readyz"
            ]
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
                https: false,
            }
        );
        assert!(matches!(
            probes["/app-health/app/livez"],
            AppProbe::HttpGet {
                port: 8443,
                https: true,
                ..
            }
        ));
        assert_eq!(
            probes["/app-health/rpc/readyz"],
            AppProbe::Grpc {
                port: 50051,
                service: "rpc.v1.Rpc".into(),
                timeout_seconds: 2,
            }
        );
        assert!(matches!(
            &probes["/app-health/rpc/poststart"],
            AppProbe::HttpGet { port: 50051, timeout_seconds: 45, path, .. } if path == "/warm"
        ));
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
        let rpc = &s.containers[1];
        let grpc = rpc.readiness_probe.as_ref().unwrap();
        assert!(grpc.grpc.is_none());
        assert_eq!(
            grpc.http_get.as_ref().unwrap().path.as_deref(),
            Some("/app-health/rpc/readyz")
        );
        let hook = rpc.lifecycle.as_ref().unwrap().post_start.as_ref().unwrap();
        assert_eq!(
            hook.http_get.as_ref().unwrap().port,
            IntOrString::Int(15000)
        );
        // Only the probe of another host keeps its bypass; the kubelet never runs
        // a tcpSocket hook, so 9999 needs none.
        let mut warnings = Vec::new();
        assert_eq!(
            kubelet_ports(&s, &mut warnings)
                .into_iter()
                .collect::<Vec<_>>(),
            [8080, 15000]
        );
        assert!(rpc.liveness_probe.as_ref().unwrap().tcp_socket.is_none());
    }
}
