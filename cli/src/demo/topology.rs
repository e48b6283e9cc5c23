//! The demo's mesh: the manifests, the operator's render of them, and what a
//! cluster would add around it, done on one machine.
//!
//! Each pod gets a loopback address of its own (127.0.0.10, .11, ...): its
//! sidecar listens there on the template's ports and its app on the
//! container port, as they would on a pod IP. What Kubernetes and iptables
//! do is replaced, not faked:
//! - the rendered document is kept as it is, except that listeners bind the
//!   pod's address without transparent capture (apps call their sidecar
//!   explicitly, so there is no pass-through cluster), and the admin
//!   addresses move to the pod's address;
//! - DNS clusters (`reviews-v2.bookinfo.svc.cluster.local`) become the static
//!   endpoints EndpointSlices would list: the pods the Service (and subset)
//!   selects, at their inbound listener, which stands for the iptables
//!   redirect of the pod's port;
//! - the inbound `localApp` cluster becomes the app's address on the pod;
//! - certificate paths point at the files the demo's CA wrote for the pod.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Pod, Service};
use remora_api::{
    config::{Direction, Endpoints, SidecarConfig, StaticEndpoint, TlsMode},
    crd::MeshResource,
};
use remora_operator::{
    ca::LeafRequest,
    render::{INBOUND_APP, MeshResources, PASSTHROUGH, RenderContext, render_sidecar_config},
};
use serde::Deserialize;

/// The manifests the demo applies: the repository's `examples/` (the mesh's
/// policy) and the demo's cluster (Services, Pods and the other routes).
pub const MANIFESTS: &[(&str, &str)] = &[
    (
        "examples/mesh-certificate.yaml",
        include_str!("../../../examples/mesh-certificate.yaml"),
    ),
    (
        "examples/rate-limit.yaml",
        include_str!("../../../examples/rate-limit.yaml"),
    ),
    (
        "examples/reviews-canary.yaml",
        include_str!("../../../examples/reviews-canary.yaml"),
    ),
    (
        "examples/sidecar-template.yaml",
        include_str!("../../../examples/sidecar-template.yaml"),
    ),
    ("cli/src/demo/bookinfo.yaml", include_str!("bookinfo.yaml")),
];

/// The image of the client pod: its app is remoractl's traffic.
const TRAFFIC_IMAGE: &str = "remoractl-traffic";

/// Where the pods go on this machine.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// The first pod's address; the others follow it.
    pub first_address: Ipv4Addr,
    /// Added to every port (listeners, admin, apps).
    pub port_offset: u16,
}

/// The demo's sample apps (`remoractl demo-app <kind>`).
#[derive(Clone, Debug, PartialEq)]
pub enum AppKind {
    /// `remora-echo`: HTTP/1.1 and h2c, answers with what it received.
    Echo,
    /// `remora-greeter`: the gRPC `remora.demo.Greeter`.
    Greeter,
}

#[derive(Clone, Debug)]
pub struct App {
    pub kind: AppKind,
    pub address: SocketAddr,
    /// The container's args, with the listen address on the pod's.
    pub args: Vec<String>,
}

/// One pod, placed.
#[derive(Clone, Debug)]
pub struct PodPlan {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub ip: Ipv4Addr,
    /// None for the client, whose app is the demo's traffic.
    pub app: Option<App>,
    pub admin: SocketAddr,
    pub outbound: SocketAddr,
    /// None when no app is behind the sidecar.
    pub inbound: Option<SocketAddr>,
}

impl PodPlan {
    pub fn spiffe_id(&self, trust_domain: &str, namespace: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{namespace}/sa/{}",
            self.service_account
        )
    }

    /// `key="value"` lines, as the downward API writes pod labels.
    pub fn labels_file(&self) -> String {
        self.labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\"\n"))
            .collect()
    }

    /// Every address this pod's processes bind, with what binds it.
    pub fn bound_addresses(&self) -> Vec<(SocketAddr, String)> {
        let mut out = vec![
            (self.admin, format!("{} sidecar admin", self.name)),
            (self.outbound, format!("{} sidecar outbound", self.name)),
        ];
        if let Some(inbound) = self.inbound {
            out.push((inbound, format!("{} sidecar inbound", self.name)));
        }
        if let Some(app) = &self.app {
            out.push((app.address, format!("{} app", self.name)));
        }
        out
    }
}

/// A Service of the demo: its name and the pods it selects.
#[derive(Clone, Debug)]
pub struct ServicePlan {
    pub name: String,
    pub selector: BTreeMap<String, String>,
}

/// Everything the demo starts, computed before anything starts.
pub struct Plan {
    pub namespace: String,
    pub trust_domain: String,
    pub resources: MeshResources,
    /// The operator's render of the manifests, untouched.
    pub rendered: SidecarConfig,
    pub pods: Vec<PodPlan>,
    pub services: Vec<ServicePlan>,
    pub layout: Layout,
}

struct Parsed {
    mesh: MeshResources,
    services: Vec<Service>,
    pods: Vec<Pod>,
}

fn parse() -> Result<Parsed> {
    let mut out = Parsed {
        mesh: MeshResources::default(),
        services: Vec::new(),
        pods: Vec::new(),
    };
    for (file, text) in MANIFESTS {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let at = || format!("{file} document {}", i + 1);
            let value = serde_json::Value::deserialize(doc).with_context(at)?;
            match value["kind"].as_str() {
                Some("Service") => out
                    .services
                    .push(serde_json::from_value(value).with_context(at)?),
                Some("Pod") => out
                    .pods
                    .push(serde_json::from_value(value).with_context(at)?),
                _ => match MeshResource::from_value(value).with_context(at)? {
                    MeshResource::SidecarTemplate(r) => out.mesh.templates.push(r),
                    MeshResource::ServiceRoute(r) => out.mesh.routes.push(r),
                    MeshResource::RateLimitPolicy(r) => out.mesh.rate_limits.push(r),
                    MeshResource::MeshCertificate(r) => out.mesh.certificates.push(r),
                },
            }
        }
    }
    Ok(out)
}

impl Plan {
    /// Renders the namespace's config with strict mTLS and the CA's
    /// `trust_bundle`, and places every pod.
    pub fn new(layout: Layout, trust_bundle: &str) -> Result<Self> {
        let parsed = parse()?;
        let namespace = "bookinfo".to_owned();
        let mut ctx = RenderContext::new(namespace.clone());
        ctx.mtls = TlsMode::Strict;
        ctx.trust_bundle = trust_bundle.to_owned();
        let rendered = render_sidecar_config(&ctx, &parsed.mesh);
        if !rendered.rejected.is_empty() {
            let list: Vec<String> = rendered.rejected.iter().map(|r| r.to_string()).collect();
            bail!(
                "the operator's render rejected demo resources: {}",
                list.join("; ")
            );
        }
        let rendered = rendered.config;
        let port = |direction: Direction| {
            rendered
                .listeners
                .iter()
                .find(|l| l.direction == direction)
                .map(|l| l.address.port())
        };
        let outbound_port =
            port(Direction::Outbound).context("the render has no outbound listener")?;
        let inbound_port = port(Direction::Inbound).context(
            "the render has no inbound listener (the demo needs the template's iptables capture mode)",
        )?;
        let admin_port = rendered.admin.address.port();
        let shift = |p: u16| -> Result<u16> {
            p.checked_add(layout.port_offset).with_context(|| {
                format!(
                    "--port-offset {} moves port {p} past 65535",
                    layout.port_offset
                )
            })
        };

        let services = parsed
            .services
            .iter()
            .map(|s| ServicePlan {
                name: s.metadata.name.clone().unwrap_or_default(),
                selector: s
                    .spec
                    .clone()
                    .unwrap_or_default()
                    .selector
                    .unwrap_or_default(),
            })
            .collect();

        let mut pods = Vec::new();
        for (i, pod) in parsed.pods.iter().enumerate() {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let ip = nth_address(layout.first_address, i)?;
            let spec = pod.spec.clone().unwrap_or_default();
            let container = spec
                .containers
                .first()
                .context("a pod without containers")?;
            let image = container.image.as_deref().unwrap_or_default();
            let app = match image {
                TRAFFIC_IMAGE => None,
                "remora-echo" | "remora-greeter" => {
                    let port = container
                        .ports
                        .iter()
                        .flatten()
                        .next()
                        .map(|p| p.container_port as u16)
                        .with_context(|| {
                            format!("pod {name}: the app declares no containerPort")
                        })?;
                    let address = SocketAddr::from((ip, shift(port)?));
                    let args = container
                        .args
                        .iter()
                        .flatten()
                        .map(|a| {
                            if a.starts_with("0.0.0.0:") {
                                address.to_string()
                            } else {
                                a.clone()
                            }
                        })
                        .collect();
                    Some(App {
                        kind: if image == "remora-echo" {
                            AppKind::Echo
                        } else {
                            AppKind::Greeter
                        },
                        address,
                        args,
                    })
                }
                other => bail!("pod {name}: the demo cannot run image {other:?}"),
            };
            pods.push(PodPlan {
                labels: pod.metadata.labels.clone().unwrap_or_default(),
                service_account: spec
                    .service_account_name
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                admin: SocketAddr::from((ip, shift(admin_port)?)),
                outbound: SocketAddr::from((ip, shift(outbound_port)?)),
                inbound: match app {
                    Some(_) => Some(SocketAddr::from((ip, shift(inbound_port)?))),
                    None => None,
                },
                name,
                ip,
                app,
            });
        }
        Ok(Self {
            trust_domain: rendered.tls.trust_domain.clone(),
            namespace,
            resources: parsed.mesh,
            rendered,
            pods,
            services,
            layout,
        })
    }

    /// The client pod (the one whose app is the demo's traffic).
    pub fn client(&self) -> &PodPlan {
        self.pods
            .iter()
            .find(|p| p.app.is_none())
            .expect("bookinfo.yaml has a client pod")
    }

    #[cfg(test)]
    pub fn pod(&self, name: &str) -> Option<&PodPlan> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// What the pod's certificate is issued for: its service account's
    /// MeshCertificate when one exists (as the operator issues it), else
    /// what the sidecar's own signing request gets (the SPIFFE ID, 24 h).
    pub fn leaf_request(&self, pod: &PodPlan) -> LeafRequest {
        let spiffe_id = pod.spiffe_id(&self.trust_domain, &self.namespace);
        match self
            .resources
            .certificates
            .iter()
            .find(|c| c.spec.service_account == pod.service_account)
        {
            Some(cert) => LeafRequest {
                spiffe_id,
                dns_names: cert.spec.dns_names.clone(),
                extra_uris: cert.spec.uris.clone(),
                ttl: cert.spec.ttl.as_std(),
            },
            None => LeafRequest {
                spiffe_id,
                dns_names: Vec::new(),
                extra_uris: Vec::new(),
                ttl: Duration::from_secs(24 * 3600),
            },
        }
    }

    /// The pods behind a cluster DNS name (`<service>[-<subset>].<ns>.svc.<domain>`),
    /// as its EndpointSlices would list them.
    pub fn endpoints(&self, dns_name: &str) -> Result<Vec<&PodPlan>> {
        let suffix = format!(".{}.svc.cluster.local", self.namespace);
        let host = dns_name.strip_suffix(&suffix).with_context(|| {
            format!(
                "{dns_name} is not a Service of namespace {}",
                self.namespace
            )
        })?;
        let mut selector = None;
        for svc in &self.services {
            if svc.name == host {
                selector = Some(svc.selector.clone());
            }
            for route in self
                .resources
                .routes
                .iter()
                .filter(|r| r.spec.service == svc.name)
            {
                for subset in &route.spec.subsets {
                    if host == route.spec.subset_service_name(&subset.name) {
                        let mut s = svc.selector.clone();
                        s.extend(subset.labels.clone());
                        selector = Some(s);
                    }
                }
            }
        }
        let selector = selector.with_context(|| format!("no demo Service behind {dns_name}"))?;
        let pods: Vec<&PodPlan> = self
            .pods
            .iter()
            .filter(|p| p.inbound.is_some())
            .filter(|p| selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
            .collect();
        ensure!(!pods.is_empty(), "no demo pod is behind {dns_name}");
        Ok(pods)
    }

    /// The rendered config as this pod's sidecar runs it (see the module
    /// comment for each change). `identity` holds `tls.crt` and `tls.key`.
    pub fn sidecar_config(
        &self,
        pod: &PodPlan,
        identity: &Path,
        access_log: &Path,
    ) -> Result<SidecarConfig> {
        let mut c = self.rendered.clone();
        c.hash = None;
        c.listeners
            .retain(|l| l.direction == Direction::Outbound || pod.inbound.is_some());
        for l in &mut c.listeners {
            l.transparent = false;
            match l.direction {
                Direction::Outbound => {
                    l.address = pod.outbound;
                    l.default_cluster = None;
                }
                Direction::Inbound => {
                    l.address = pod.inbound.expect("listeners retained above");
                }
            }
        }
        c.clusters.retain(|cl| cl.name != PASSTHROUGH);
        for cl in &mut c.clusters {
            match &cl.endpoints {
                Endpoints::LocalApp => {
                    let app = pod.app.as_ref().map(|a| a.address);
                    cl.endpoints = Endpoints::Static(
                        app.into_iter()
                            .map(|address| StaticEndpoint { address, weight: 1 })
                            .collect(),
                    );
                }
                Endpoints::Dns(dns) => {
                    let eps = self
                        .endpoints(&dns.name)?
                        .into_iter()
                        .map(|p| StaticEndpoint {
                            address: p.inbound.expect("endpoints have an inbound listener"),
                            weight: 1,
                        })
                        .collect();
                    cl.endpoints = Endpoints::Static(eps);
                }
                Endpoints::Static(_) | Endpoints::OriginalDestination => {}
            }
        }
        if pod.app.is_none() {
            c.clusters.retain(|cl| cl.name != INBOUND_APP);
        }
        c.tls.cert_file = identity.join("tls.crt").display().to_string();
        c.tls.key_file = identity.join("tls.key").display().to_string();
        c.tls.ca_file = None;
        c.access_log.path = access_log.display().to_string();
        let c = move_admin_addresses(c, pod.ip, self.layout.port_offset)?;
        c.validate()
            .with_context(|| format!("the demo's config for pod {} is invalid", pod.name))?;
        Ok(c.seal())
    }
}

/// Every address of the `admin` section moves to the pod's address (and
/// port offset). Through JSON so that each address the section has (the
/// pod-reachable one and the loopback-only control address) moves, whatever
/// this build's `Admin` holds.
fn move_admin_addresses(c: SidecarConfig, ip: Ipv4Addr, offset: u16) -> Result<SidecarConfig> {
    let mut doc = serde_json::to_value(&c)?;
    if let Some(admin) = doc.get_mut("admin").and_then(|a| a.as_object_mut()) {
        for value in admin.values_mut() {
            if let Some(addr) = value.as_str().and_then(|s| s.parse::<SocketAddr>().ok()) {
                let port = addr
                    .port()
                    .checked_add(offset)
                    .context("--port-offset moves an admin port past 65535")?;
                *value = SocketAddr::from((ip, port)).to_string().into();
            }
        }
    }
    Ok(serde_json::from_value(doc)?)
}

/// `first + n`, staying in 127.0.0.0/8.
fn nth_address(first: Ipv4Addr, n: usize) -> Result<Ipv4Addr> {
    let ip = u32::from(first)
        .checked_add(n as u32)
        .map(Ipv4Addr::from)
        .filter(|ip| ip.is_loopback());
    ip.with_context(|| format!("--first-address {first}: pod {n} would fall outside 127.0.0.0/8"))
}

/// The first address must be a loopback one: the demo never listens elsewhere.
pub fn check_first_address(ip: IpAddr) -> Result<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Ok(v4),
        other => bail!(
            "--first-address {other} is not in 127.0.0.0/8; the demo only listens on loopback addresses"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use remora_api::config::UpstreamTlsMode;

    fn plan() -> Plan {
        let layout = Layout {
            first_address: Ipv4Addr::new(127, 0, 0, 10),
            port_offset: 0,
        };
        let ca = remora_operator::ca::MeshCa::generate("cluster.local").unwrap();
        Plan::new(layout, ca.cert_pem()).unwrap()
    }

    #[test]
    fn every_manifest_parses_and_renders_without_rejections() {
        let p = plan();
        assert_eq!(p.pods.len(), 6);
        assert_eq!(p.client().name, "productpage-v1");
        assert_eq!(p.rendered.tls.mode, TlsMode::Strict);
        let tables: Vec<&str> = p.rendered.routes.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            tables,
            [
                "details.bookinfo:9080",
                "greeter.bookinfo:50051",
                "ratings.bookinfo:9080",
                "reviews.bookinfo:9080"
            ]
        );
    }

    #[test]
    fn subsets_resolve_to_the_pods_that_carry_their_labels() {
        let p = plan();
        let names = |dns: &str| -> Vec<String> {
            p.endpoints(dns)
                .unwrap()
                .iter()
                .map(|p| p.name.clone())
                .collect()
        };
        assert_eq!(
            names("reviews-v1.bookinfo.svc.cluster.local"),
            ["reviews-v1"]
        );
        assert_eq!(
            names("reviews-v2.bookinfo.svc.cluster.local"),
            ["reviews-v2"]
        );
        assert_eq!(
            names("reviews.bookinfo.svc.cluster.local"),
            ["reviews-v1", "reviews-v2"]
        );
        let err = p
            .endpoints("nothing.bookinfo.svc.cluster.local")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("no demo Service behind nothing.bookinfo"),
            "{err}"
        );
    }

    #[test]
    fn a_pods_config_keeps_the_render_and_moves_only_addresses() {
        let p = plan();
        let pod = p.pod("reviews-v1").unwrap();
        let c = p
            .sidecar_config(pod, Path::new("/tmp/id"), Path::new("/tmp/access.log"))
            .unwrap();
        let reparsed = SidecarConfig::from_json(c.to_pretty_json().as_bytes()).unwrap();
        assert_eq!(reparsed, c, "sealed and valid for the sidecar");
        assert_eq!(c.admin.address, "127.0.0.11:15000".parse().unwrap());
        let inbound = c
            .listeners
            .iter()
            .find(|l| l.direction == Direction::Inbound)
            .unwrap();
        assert_eq!(inbound.address, "127.0.0.11:15006".parse().unwrap());
        assert!(!inbound.transparent);
        let app = c.cluster(INBOUND_APP).unwrap();
        assert_eq!(
            app.endpoints,
            Endpoints::Static(vec![StaticEndpoint {
                address: "127.0.0.11:9080".parse().unwrap(),
                weight: 1
            }])
        );
        let v2 = c.cluster("reviews.bookinfo:9080|v2").unwrap();
        assert_eq!(
            v2.endpoints,
            Endpoints::Static(vec![StaticEndpoint {
                address: "127.0.0.12:15006".parse().unwrap(),
                weight: 1
            }])
        );
        assert_eq!(
            v2.tls.mode,
            UpstreamTlsMode::Mesh,
            "strict mTLS between sidecars"
        );
        assert!(c.cluster(PASSTHROUGH).is_none());
        // Routes, rate limits and TLS mode are the render's.
        assert_eq!(c.routes, p.rendered.routes);
        assert_eq!(c.rate_limits, p.rendered.rate_limits);
        assert_eq!(c.tls.mode, TlsMode::Strict);

        let client = p
            .sidecar_config(p.client(), Path::new("/tmp/id"), Path::new("/tmp/a.log"))
            .unwrap();
        assert_eq!(client.listeners.len(), 1, "the client has no app to front");
        assert!(client.cluster(INBOUND_APP).is_none());
    }

    #[test]
    fn port_offset_and_first_address_move_everything() {
        let layout = Layout {
            first_address: Ipv4Addr::new(127, 0, 3, 10),
            port_offset: 100,
        };
        let p = Plan::new(layout, "").unwrap();
        let pod = p.pod("greeter-v1").unwrap();
        assert_eq!(pod.ip, Ipv4Addr::new(127, 0, 3, 15));
        assert_eq!(pod.admin.port(), 15100);
        let app = pod.app.as_ref().unwrap();
        assert_eq!(app.address, "127.0.3.15:50151".parse().unwrap());
        assert_eq!(app.args, ["--listen", "127.0.3.15:50151"]);
        assert!(
            Plan::new(
                Layout {
                    first_address: Ipv4Addr::new(127, 255, 255, 254),
                    port_offset: 0
                },
                ""
            )
            .is_err()
        );
        assert!(check_first_address("10.0.0.1".parse().unwrap()).is_err());
    }
}
