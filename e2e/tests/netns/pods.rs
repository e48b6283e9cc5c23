//! What Kubernetes does for the netns test: the manifests a user applies,
//! cluster DNS and ClusterIPs computed from them, and a kubelet that starts
//! an injected Pod (init container, sidecar, app) in a network namespace with
//! its volumes as directories.

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Container, Pod as K8sPod, Service};
use remora_api::{
    config::{SidecarConfig, TlsMode},
    crd::MeshResource,
};
use remora_e2e::netns::{self, Node, Pod};
use remora_operator::{
    ca::{LeafRequest, MeshCa},
    render::MeshResources,
};
use remora_webhook::inject::{
    self, CONFIG_DIR, IDENTITY_DIR, INIT_CONTAINER, PODINFO_DIR, PROXY_CONTAINER,
};
use serde::Deserialize;

pub const NAMESPACE: &str = "bookinfo";

/// What a user applies: the Services, the mesh's resources and the Pods.
pub const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo}
spec:
  clusterIP: 10.251.128.10
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 9080}]
---
# A meshed Service no ServiceRoute names: calls to it take the pass-through
# cluster, which uses mTLS because its ClusterIP is in the mesh's catalog.
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: bookinfo}
spec:
  clusterIP: 10.251.128.11
  selector: {app: reviews, version: v1}
  ports: [{name: http, port: 9080, targetPort: 9080}]
---
apiVersion: mesh.remora.dev/v1alpha1
kind: SidecarTemplate
metadata: {name: default, namespace: bookinfo}
spec:
  default: true
  image: remora-sidecar:e2e
  captureMode: iptables
  sidecarMode: native
  ports: {inbound: 15006, outbound: 15001, admin: 15000}
  excludeOutboundCidrs: ["169.254.169.254/32"]
  proxyUid: 1337
  drainDuration: 1s
---
# 5% of /reviews goes to v2; /limited always to v1 (where the limit is counted).
apiVersion: mesh.remora.dev/v1alpha1
kind: ServiceRoute
metadata: {name: reviews, namespace: bookinfo}
spec:
  service: reviews
  port: 9080
  protocol: http1
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
  rules:
    - name: limited
      match: [{path: {prefix: /limited}}]
      destinations: [{subset: v1}]
    - name: canary
      match: [{path: {prefix: /reviews}}]
      destinations:
        - {subset: v1, weight: 95}
        - {subset: v2, weight: 5}
      timeout: 5s
      headers:
        request:
          set: {x-routed-by: remora}
---
apiVersion: mesh.remora.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: reviews, namespace: bookinfo}
spec:
  podSelector: {app: reviews}
  limits:
    - name: limited
      match: {path: {prefix: /limited}}
      requests: 5
      per: 1m
      burst: 5
  response:
    status: 429
    headers: {retry-after: "60"}
---
apiVersion: mesh.remora.dev/v1alpha1
kind: MeshCertificate
metadata: {name: productpage, namespace: bookinfo}
spec: {serviceAccount: productpage, ttl: 720h, rotateBefore: 24h, warnBefore: 48h}
---
apiVersion: mesh.remora.dev/v1alpha1
kind: MeshCertificate
metadata: {name: reviews, namespace: bookinfo}
spec:
  serviceAccount: reviews
  ttl: 720h
  rotateBefore: 24h
  warnBefore: 48h
  dnsNames: [reviews.bookinfo.svc.cluster.local]
---
# The client: its "app" is curl, run by the test as the pod's user.
apiVersion: v1
kind: Pod
metadata: {name: productpage, namespace: bookinfo, labels: {app: productpage, version: v1}}
spec:
  serviceAccountName: productpage
  securityContext: {runAsUser: 1000, runAsGroup: 1000}
  containers:
    - {name: productpage, image: curlimages/curl, command: [sleep, infinity]}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: bookinfo, labels: {app: reviews, version: v1}}
spec:
  serviceAccountName: reviews
  securityContext: {runAsUser: 1000, runAsGroup: 1000}
  containers:
    - name: reviews
      image: remora-echo
      args: [--listen, "0.0.0.0:9080", --version, v1]
      ports: [{name: http, containerPort: 9080}]
      # On the serving port: the webhook rewrites it to the sidecar's admin
      # port, so 9080 stays captured (strict mTLS still refuses plaintext).
      readinessProbe: {httpGet: {path: /healthz, port: http}}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2, namespace: bookinfo, labels: {app: reviews, version: v2}}
spec:
  serviceAccountName: reviews
  securityContext: {runAsUser: 1000, runAsGroup: 1000}
  containers:
    - name: reviews
      image: remora-echo
      args: [--listen, "0.0.0.0:9080", --version, v2]
      ports: [{name: http, containerPort: 9080}]
"#;

/// The parsed manifests.
#[derive(Default)]
pub struct Manifests {
    pub mesh: MeshResources,
    pub services: Vec<Service>,
    pub pods: Vec<K8sPod>,
}

pub fn manifests() -> Manifests {
    let mut out = Manifests::default();
    for doc in serde_yaml::Deserializer::from_str(MANIFESTS) {
        let value = serde_json::Value::deserialize(doc).expect("YAML");
        match value["kind"].as_str() {
            Some("Service") => out
                .services
                .push(serde_json::from_value(value).expect("Service")),
            Some("Pod") => out.pods.push(serde_json::from_value(value).expect("Pod")),
            _ => match MeshResource::from_value(value).expect("a Remora resource") {
                MeshResource::SidecarTemplate(r) => out.mesh.templates.push(r),
                MeshResource::ServiceRoute(r) => out.mesh.routes.push(r),
                MeshResource::RateLimitPolicy(r) => out.mesh.rate_limits.push(r),
                MeshResource::MeshCertificate(r) => out.mesh.certificates.push(r),
            },
        }
    }
    out
}

/// One injected pod, running.
pub struct Workload {
    pub pod: Pod,
    /// The app container's user (curl runs as it in the client).
    pub app_uid: u32,
    /// The sidecar's user, from the injected container's securityContext.
    pub proxy_uid: u32,
}

/// `(ClusterIP, port, [(pod IP, target port)])` per Service port.
pub type ClusterIps = Vec<(Ipv4Addr, u16, Vec<(Ipv4Addr, u16)>)>;

/// Cluster DNS and ClusterIPs, as Kubernetes computes them: each Service's
/// name resolves to its ClusterIP, which balances over the pods its selector
/// picks; each ServiceRoute subset is the headless Service `<svc>-<subset>`
/// (the operator creates it) resolving to the pods of that subset.
pub fn cluster_dns(
    m: &Manifests,
    pods: &BTreeMap<String, Pod>,
) -> (Vec<(Ipv4Addr, String)>, ClusterIps) {
    let selected = |selector: &BTreeMap<String, String>| -> Vec<Ipv4Addr> {
        m.pods
            .iter()
            .filter(|p| {
                let labels = p.metadata.labels.clone().unwrap_or_default();
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .map(|p| pods[p.metadata.name.as_deref().unwrap_or_default()].ip)
            .collect()
    };
    let mut hosts = Vec::new();
    let mut cluster_ips = Vec::new();
    for svc in &m.services {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let spec = svc.spec.clone().unwrap_or_default();
        let selector = spec.selector.clone().unwrap_or_default();
        let ip: Ipv4Addr = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse().ok())
            .expect("the test's Services have a ClusterIP");
        let fqdn = format!("{name}.{NAMESPACE}.svc.cluster.local");
        hosts.push((
            ip,
            format!("{fqdn} {name}.{NAMESPACE}.svc {name}.{NAMESPACE}"),
        ));
        for port in spec.ports.iter().flatten() {
            let target = match &port.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p)) => *p,
                _ => port.port,
            };
            let backends = selected(&selector)
                .into_iter()
                .map(|ip| (ip, target as u16))
                .collect();
            cluster_ips.push((ip, port.port as u16, backends));
        }
        for route in m.mesh.routes.iter().filter(|r| r.spec.service == name) {
            for subset in &route.spec.subsets {
                let mut sel = selector.clone();
                sel.extend(subset.labels.clone());
                for ip in selected(&sel) {
                    hosts.push((
                        ip,
                        format!("{name}-{}.{NAMESPACE}.svc.cluster.local", subset.name),
                    ));
                }
            }
        }
    }
    (hosts, cluster_ips)
}

/// Starts one injected pod: the init container's `init-iptables` as root,
/// the sidecar as its user (held until `wait-ready`), then the app as its
/// user. Mounts become per-pod directories under the node's work directory.
#[allow(clippy::too_many_arguments)]
pub fn start_pod(
    node: &mut Node,
    pod: &Pod,
    injected: &K8sPod,
    rendered: &SidecarConfig,
    ca: &MeshCa,
    mesh: &MeshResources,
    sidecar: &Path,
    echo: &Path,
) -> Result<Workload> {
    let spec = injected.spec.as_ref().context("pod spec")?;
    let inits = spec.init_containers.as_deref().unwrap_or_default();
    let init = find(inits, INIT_CONTAINER)?;
    let proxy =
        find(inits, PROXY_CONTAINER).or_else(|_| find(&spec.containers, PROXY_CONTAINER))?;
    let app = spec
        .containers
        .iter()
        .find(|c| c.name != PROXY_CONTAINER)
        .context("an app container")?;
    let proxy_uid = uid_of(proxy, injected).context("the sidecar's runAsUser")?;
    let app_uid = uid_of(app, injected).context("the app's runAsUser")?;
    ensure!(
        proxy_uid != app_uid,
        "the app must not run as the proxy's user"
    );

    // The volumes: config (ConfigMap), identity (Secret), runtime, pod info.
    let root = node.dir().join(&pod.name);
    let mounts = Mounts {
        config: root.join("config"),
        identity: root.join("identity"),
        runtime: root.join("runtime"),
        podinfo: root.join("podinfo"),
    };
    for dir in [&root, &mounts.config, &mounts.podinfo] {
        fs::create_dir_all(dir)?;
        chmod(dir, 0o755)?;
    }
    for dir in [&mounts.identity, &mounts.runtime] {
        fs::create_dir_all(dir)?;
        std::os::unix::fs::chown(dir, Some(proxy_uid), Some(proxy_uid))?;
        chmod(dir, 0o700)?;
    }
    let labels = injected.metadata.labels.clone().unwrap_or_default();
    let labels: String = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\"\n"))
        .collect();
    fs::write(mounts.podinfo.join("labels"), labels)?;

    // The MeshCertificate of the pod's service account, issued as the operator
    // does, in the Secret's layout.
    let sa = spec.service_account_name.clone().unwrap_or_default();
    let mut config = rendered.clone();
    if rendered.tls.mode != TlsMode::Disabled {
        let cert = mesh
            .certificates
            .iter()
            .find(|c| c.spec.service_account == sa)
            .with_context(|| format!("a MeshCertificate for service account {sa}"))?;
        let leaf = ca.issue(&LeafRequest {
            spiffe_id: cert.spec.spiffe_id(&rendered.tls.trust_domain, NAMESPACE),
            dns_names: cert.spec.dns_names.clone(),
            extra_uris: cert.spec.uris.clone(),
            ttl: cert.spec.ttl.as_std(),
        })?;
        for (file, pem, mode) in [
            ("tls.crt", &leaf.cert_pem, 0o444),
            ("tls.key", &leaf.key_pem, 0o400),
            ("ca.crt", &ca.cert_pem().to_owned(), 0o444),
        ] {
            netns::write_owned(&mounts.identity.join(file), pem.as_bytes(), mode, proxy_uid)?;
        }
        // The Secret is mounted at the webhook's identity directory.
        let mounted = |rendered: &str, file: &str| {
            let p = mounts.map(rendered);
            if p.as_path() == Path::new(rendered) {
                eprintln!(
                    "note: the rendered tls path {rendered} is not under a volume the webhook mounts \
                     (identity: {IDENTITY_DIR}); using the Secret's {file}"
                );
                mounts.identity.join(file)
            } else {
                p
            }
        };
        config.tls.cert_file = mounted(&rendered.tls.cert_file, "tls.crt")
            .display()
            .to_string();
        config.tls.key_file = mounted(&rendered.tls.key_file, "tls.key")
            .display()
            .to_string();
        if let Some(ca_file) = &rendered.tls.ca_file {
            config.tls.ca_file = Some(mounted(ca_file, "ca.crt").display().to_string());
        }
    }
    let config = config.seal();
    fs::write(mounts.config.join("config.json"), config.to_pretty_json())?;

    // remora-init: the capture rules, exactly as the webhook asks for them.
    let init_args = init.args.clone().unwrap_or_default();
    let mut argv = vec![sidecar.display().to_string()];
    argv.extend(init_args);
    node.exec_in_pod(pod, &argv)?;

    // remora-proxy: its args and env, with mounts mapped and the downward API filled in.
    let mut cmd = node.command(
        pod,
        Some(proxy_uid),
        &std::iter::once(sidecar.display().to_string())
            .chain(
                proxy
                    .args
                    .iter()
                    .flatten()
                    .map(|a| mounts.map(a).display().to_string()),
            )
            .collect::<Vec<_>>(),
    );
    for env in proxy.env.iter().flatten() {
        let value = match (&env.value, &env.value_from) {
            (Some(v), _) => mounts.map(v).display().to_string(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.name") => pod.name.clone(),
                Some("metadata.namespace") => NAMESPACE.into(),
                Some("spec.serviceAccountName") => sa.clone(),
                Some("status.podIP") => pod.ip.to_string(),
                Some("spec.nodeName") => "node".into(),
                _ => continue,
            },
            _ => continue,
        };
        cmd.env(&env.name, value);
    }
    node.spawn(pod, "sidecar", cmd)?;
    let admin = format!("127.0.0.1:{}", config.admin.address.port());
    let wait = node.command(
        pod,
        Some(proxy_uid),
        &[
            sidecar.display().to_string(),
            "wait-ready".into(),
            "--admin".into(),
            admin,
            "--timeout".into(),
            "30s".into(),
        ],
    );
    let out = node.run(wait, Duration::from_secs(40))?;
    if !out.status.success() {
        node.check_running()?;
        bail!("wait-ready: {}", String::from_utf8_lossy(&out.stderr));
    }

    // The app, if it is the echo server (the client's app is the test's curl).
    if app.image.as_deref() == Some("remora-echo") {
        let mut argv = vec![echo.display().to_string()];
        argv.extend(app.args.iter().flatten().cloned());
        let cmd = node.command(pod, Some(app_uid), &argv);
        node.spawn(pod, "app", cmd)?;
        let port = app
            .ports
            .iter()
            .flatten()
            .next()
            .map_or(8080, |p| p.container_port);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let probe = node.command(
                pod,
                Some(app_uid),
                &[
                    "curl",
                    "-sf",
                    "--max-time",
                    "1",
                    &format!("http://127.0.0.1:{port}/healthz"),
                ],
            );
            if node.run(probe, Duration::from_secs(5))?.status.success() {
                break;
            }
            node.check_running()?;
            ensure!(
                Instant::now() < deadline,
                "{}: the app never answered /healthz",
                pod.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(Workload {
        pod: pod.clone(),
        app_uid,
        proxy_uid,
    })
}

/// Where a pod's volumes live on this machine.
struct Mounts {
    config: PathBuf,
    identity: PathBuf,
    runtime: PathBuf,
    podinfo: PathBuf,
}

impl Mounts {
    /// A path inside the container, as it is on this machine.
    fn map(&self, path: &str) -> PathBuf {
        for (dir, local) in [
            (CONFIG_DIR, &self.config),
            (IDENTITY_DIR, &self.identity),
            (inject::RUNTIME_DIR, &self.runtime),
            (PODINFO_DIR, &self.podinfo),
        ] {
            if let Some(rest) = path.strip_prefix(dir) {
                return local.join(rest.trim_start_matches('/'));
            }
        }
        PathBuf::from(path)
    }
}

fn find<'a>(containers: &'a [Container], name: &str) -> Result<&'a Container> {
    containers
        .iter()
        .find(|c| c.name == name)
        .with_context(|| format!("the injected pod has no {name} container"))
}

/// The container's runAsUser, else the pod's.
fn uid_of(c: &Container, pod: &K8sPod) -> Option<u32> {
    c.security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .or_else(|| pod.spec.as_ref()?.security_context.as_ref()?.run_as_user)
        .and_then(|u| u32::try_from(u).ok())
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}
