//! Probes keep working in iptables mode: the kubelet connects from the node, so the
//! inbound redirect would hand its probes to the proxy. Instead, every port the kubelet
//! connects to bypasses the redirect (`--exclude-inbound-ports`).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

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
                    let found = c
                        .ports
                        .iter()
                        .flatten()
                        .find(|p| p.name.as_deref() == Some(name.as_str()))
                        .and_then(|p| u16::try_from(p.container_port).ok());
                    match found {
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
