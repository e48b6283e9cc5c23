//! The injection itself: a pure function from a pod and a template to the injected pod.
//! The webhook and `remoractl inject` both call [`inject`].

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, DownwardAPIVolumeFile,
    DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
    Lifecycle, LifecycleHandler, ObjectFieldSelector, Pod, PodSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use remora_api::config::{APP_PROBES_ENV, TlsMode};
use remora_api::crd::{
    CaptureMode, PullPolicy, SidecarMode, SidecarTemplateSpec, explicit_capture_conflict,
};

use crate::annotations;
use crate::overrides::apply_overrides;
use crate::probes::{kubelet_ports, rewrite_app_probes};
use crate::templates::SelectedTemplate;

/// The sidecar container.
pub const PROXY_CONTAINER: &str = "remora-proxy";
/// The init container that installs the iptables redirect.
pub const INIT_CONTAINER: &str = "remora-init";
/// Where the sidecar reads its config (key `config.json` of the ConfigMap).
pub const CONFIG_DIR: &str = "/etc/remora/config";
pub const CONFIG_PATH: &str = "/etc/remora/config/config.json";
pub const IDENTITY_DIR: &str = "/var/run/remora/identity";
pub const RUNTIME_DIR: &str = "/var/run/remora/runtime";
pub const PODINFO_DIR: &str = "/etc/remora/podinfo";

/// Settings that are the same for every pod, from the webhook's flags.
#[derive(Clone, Debug)]
pub struct InjectOptions {
    /// The ConfigMap holding the sidecar config (key `config.json`), rendered by the operator.
    pub config_map: String,
    /// How long the legacy sidecar's postStart hook waits for the proxy to be ready.
    pub wait_ready_timeout_seconds: u32,
    /// The mesh's inbound mTLS mode (the operator's `--mtls`): explicit capture,
    /// which has no inbound listener, is refused unless it is `disabled`.
    pub mtls: TlsMode,
}

impl Default for InjectOptions {
    fn default() -> Self {
        Self {
            config_map: "remora-config".into(),
            wait_ready_timeout_seconds: 120,
            // The operator's default.
            mtls: TlsMode::Permissive,
        }
    }
}

/// An injected pod and what the caller should tell the user.
#[derive(Clone, Debug)]
pub struct Injection {
    pub pod: Pod,
    /// Ignored override annotations, unresolvable probe ports.
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("the pod has no spec")]
    NoPodSpec,
    #[error("the pod already has the {PROXY_CONTAINER} container")]
    AlreadyInjected,
    #[error("the pod has its own container named {0}; rename it to inject the sidecar")]
    NameConflict(&'static str),
    /// The template or the pod's `remora.dev/capture-mode` asks for explicit
    /// capture in a mesh with mTLS on.
    #[error("{0}")]
    ExplicitCaptureWithMtls(String),
}

/// Returns `pod` with the sidecar from `template` (after the pod's override annotations):
/// the proxy container, the iptables init container (iptables mode), the volumes, the
/// status annotations and the workload label. Pure and deterministic.
pub fn inject(
    pod: &Pod,
    template: &SelectedTemplate,
    options: &InjectOptions,
) -> Result<Injection, InjectError> {
    let spec = pod.spec.as_ref().ok_or(InjectError::NoPodSpec)?;
    let names = container_names(spec);
    if names.contains(PROXY_CONTAINER) {
        return Err(InjectError::AlreadyInjected);
    }
    if names.contains(INIT_CONTAINER) {
        return Err(InjectError::NameConflict(INIT_CONTAINER));
    }

    let mut t = template.spec.clone();
    let mut warnings = apply_overrides(&mut t, pod.metadata.annotations.as_ref());
    if let Some(why) = explicit_capture_conflict(t.capture_mode, options.mtls) {
        return Err(InjectError::ExplicitCaptureWithMtls(why));
    }
    let mut out = pod.clone();
    let spec = out.spec.as_mut().expect("checked above");
    let volumes = VolumeNames::choose(spec);

    let mut proxy = proxy_container(&t, &volumes, options, &mut warnings);
    let init = (t.capture_mode == CaptureMode::Iptables).then(|| {
        // Probes the proxy can run go through it; the rest bypass the redirect.
        let rewrite = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(annotations::REWRITE_APP_PROBES))
            .is_none_or(|v| v != "false");
        if rewrite {
            let app_probes = rewrite_app_probes(spec, t.ports.admin.0);
            if !app_probes.is_empty() {
                let json = serde_json::to_string(&app_probes).expect("probes serialize");
                proxy
                    .env
                    .get_or_insert_with(Vec::new)
                    .push(env_value(APP_PROBES_ENV, &json));
            }
        }
        let probes = kubelet_ports(spec, &mut warnings);
        // A served port left out of the capture is outside mTLS and authorization,
        // and a caller there can claim any identity (x-forwarded-client-cert).
        let native_sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        for c in spec.containers.iter().chain(native_sidecars) {
            for p in c.ports.iter().flatten() {
                if u16::try_from(p.container_port).is_ok_and(|n| probes.contains(&n)) {
                    warnings.push(format!(
                        "remora: container {} serves port {} and the kubelet reaches it \
                         directly (a probe or hook the proxy does not run: another host, a \
                         native sidecar of the pod, or remora.dev/rewrite-app-probes=false), so \
                         traffic to that port bypasses the sidecar: no mTLS or authorization on \
                         it, and callers can forge x-forwarded-client-cert; probe another port \
                         to keep it in the mesh",
                        c.name, p.container_port
                    ));
                }
            }
        }
        init_container(&t, &probes)
    });
    if t.capture_mode == CaptureMode::Explicit {
        let outbound = format!("127.0.0.1:{}", t.ports.outbound.0);
        for c in &mut spec.containers {
            let env = c.env.get_or_insert_with(Vec::new);
            if !env.iter().any(|e| e.name == "REMORA_OUTBOUND") {
                env.push(env_value("REMORA_OUTBOUND", &outbound));
            }
        }
    }

    let mut inits = spec.init_containers.take().unwrap_or_default();
    match t.sidecar_mode {
        // Redirect first, then the proxy, then the user's init containers: they start
        // with the mesh already working.
        SidecarMode::Native => {
            let ours = init.into_iter().chain([proxy]);
            inits.splice(0..0, ours);
        }
        // The proxy is not running during init: redirect last, so the user's init
        // containers keep a working network.
        SidecarMode::Legacy => {
            inits.extend(init);
            spec.containers.insert(0, proxy);
        }
    }
    spec.init_containers = (!inits.is_empty()).then_some(inits);
    spec.volumes
        .get_or_insert_with(Vec::new)
        .extend(volumes.volumes(pod, options));

    let workload = workload_name(pod);
    let meta = &mut out.metadata;
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    // The operator renders `remora-config` for every namespace with a pod so labelled.
    labels.insert(
        annotations::SIDECAR.to_owned(),
        annotations::SIDECAR_INJECTED.to_owned(),
    );
    if !workload.is_empty() {
        labels
            .entry(annotations::WORKLOAD.to_owned())
            .or_insert(workload);
    }
    let ann = meta.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(annotations::INJECTED.into(), template.source.to_string());
    ann.insert(annotations::INJECT_STATUS.into(), "injected".into());
    Ok(Injection { pod: out, warnings })
}

fn container_names(spec: &PodSpec) -> BTreeSet<&str> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| c.name.as_str())
        .collect()
}

/// Our volumes' names: `remora-<role>`, or `remora-<role>-<n>` with the smallest `n` ≥ 2
/// that the pod does not use, when the pod already has a volume of that name.
struct VolumeNames {
    config: String,
    identity: String,
    runtime: String,
    podinfo: String,
}

impl VolumeNames {
    fn choose(spec: &PodSpec) -> Self {
        let taken: BTreeSet<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        let free = |base: &str| {
            if !taken.contains(base) {
                return base.to_owned();
            }
            (2..)
                .map(|n| format!("{base}-{n}"))
                .find(|n| !taken.contains(n.as_str()))
                .expect("some suffix is free")
        };
        Self {
            config: free("remora-config"),
            identity: free("remora-identity"),
            runtime: free("remora-runtime"),
            podinfo: free("remora-podinfo"),
        }
    }

    fn volumes(&self, pod: &Pod, options: &InjectOptions) -> Vec<Volume> {
        vec![
            Volume {
                name: self.config.clone(),
                config_map: Some(ConfigMapVolumeSource {
                    name: options.config_map.clone(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: self.identity.clone(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(identity_secret(pod)),
                    // The pod starts before the operator has issued its certificate.
                    optional: Some(true),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: self.runtime.clone(),
                // Memory-backed: nothing the proxy writes reaches the node's disk.
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    size_limit: Some(K8sQuantity("16Mi".into())),
                }),
                ..Volume::default()
            },
            Volume {
                name: self.podinfo.clone(),
                downward_api: Some(DownwardAPIVolumeSource {
                    items: Some(vec![
                        field_file("labels", "metadata.labels"),
                        field_file("annotations", "metadata.annotations"),
                    ]),
                    ..DownwardAPIVolumeSource::default()
                }),
                ..Volume::default()
            },
        ]
    }

    fn mounts(&self) -> Vec<VolumeMount> {
        let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
            name: name.to_owned(),
            mount_path: path.to_owned(),
            read_only: read_only.then_some(true),
            ..VolumeMount::default()
        };
        vec![
            mount(&self.config, CONFIG_DIR, true),
            mount(&self.identity, IDENTITY_DIR, true),
            mount(&self.runtime, RUNTIME_DIR, false),
            mount(&self.podinfo, PODINFO_DIR, true),
        ]
    }
}

/// The Secret with the workload certificate: the `remora.dev/identity-secret` annotation,
/// else `<serviceAccountName>-tls`, the Secret of a MeshCertificate named after the
/// service account.
pub fn identity_secret(pod: &Pod) -> String {
    if let Some(name) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::IDENTITY_SECRET))
        .filter(|n| !n.trim().is_empty())
    {
        return name.trim().to_owned();
    }
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    format!("{sa}-tls")
}

fn field_file(path: &str, field: &str) -> DownwardAPIVolumeFile {
    DownwardAPIVolumeFile {
        path: path.to_owned(),
        field_ref: Some(ObjectFieldSelector {
            field_path: field.to_owned(),
            api_version: None,
        }),
        ..DownwardAPIVolumeFile::default()
    }
}

/// The environment variables carrying the pod's settings to the proxy, which
/// lays them over the namespace's rendered config (`remora-sidecar run`,
/// `sidecar/src/pod_overrides.rs`).
pub const PROXY_SETTINGS_ENV: [&str; 7] = [
    "REMORA_LOG_LEVEL",
    "REMORA_WORKER_THREADS",
    "REMORA_DRAIN_TIMEOUT",
    "REMORA_CAPTURE_MODE",
    "REMORA_INBOUND_PORT",
    "REMORA_OUTBOUND_PORT",
    "REMORA_ADMIN_PORT",
];

/// Every setting of the template the proxy itself reads, in the order of
/// [`PROXY_SETTINGS_ENV`]. All are passed, not only those that differ from
/// the namespace's default template: the rendered config follows the default
/// template, the pod may use another one.
fn proxy_settings(t: &SidecarTemplateSpec) -> Vec<(&'static str, String)> {
    let capture = match t.capture_mode {
        CaptureMode::Iptables => "iptables",
        CaptureMode::Explicit => "explicit",
    };
    let values = [
        t.log_level.as_str().to_owned(),
        t.concurrency.to_string(),
        t.drain_duration.to_string(),
        capture.to_owned(),
        t.ports.inbound.0.to_string(),
        t.ports.outbound.0.to_string(),
        t.ports.admin.0.to_string(),
    ];
    PROXY_SETTINGS_ENV.into_iter().zip(values).collect()
}

fn proxy_container(
    t: &SidecarTemplateSpec,
    volumes: &VolumeNames,
    options: &InjectOptions,
    warnings: &mut Vec<String>,
) -> Container {
    let admin = i32::from(t.ports.admin.0);
    let mut env = vec![env_value("REMORA_CONFIG", CONFIG_PATH)];
    env.extend(
        proxy_settings(t)
            .into_iter()
            .map(|(name, value)| env_value(name, &value)),
    );
    env.extend([
        env_value("REMORA_IDENTITY_DIR", IDENTITY_DIR),
        env_value("REMORA_RUNTIME_DIR", RUNTIME_DIR),
        env_value("REMORA_POD_LABELS", &format!("{PODINFO_DIR}/labels")),
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        env_field("POD_IP", "status.podIP"),
        env_field("NODE_NAME", "spec.nodeName"),
    ]);
    for (name, value) in &t.env {
        if PROXY_SETTINGS_ENV.contains(&name.as_str()) {
            warnings.push(format!(
                "remora: ignored SidecarTemplate env {name}: the proxy's setting comes from the \
                 template's own field (logLevel, concurrency, drainDuration, captureMode, ports) \
                 so that the webhook, the probes and the proxy agree"
            ));
            continue;
        }
        match env.iter_mut().find(|e| &e.name == name) {
            Some(existing) => *existing = env_value(name, value),
            None => env.push(env_value(name, value)),
        }
    }
    let ready = |period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/ready".into()),
            port: IntOrString::Int(admin),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(1),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let native = t.sidecar_mode == SidecarMode::Native;
    let hold = t.hold_application_until_proxy_starts;
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(t.image.clone()),
        image_pull_policy: Some(pull_policy(t.image_pull_policy).into()),
        args: Some(vec!["run".into(), "--config".into(), CONFIG_PATH.into()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("remora-admin".into()),
            container_port: admin,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        resources: Some(resources(t)),
        // A native sidecar holds the next containers until its startup probe passes.
        startup_probe: (native && hold).then(|| ready(1, 120)),
        readiness_probe: Some(ready(5, 3)),
        // The kubelet starts the next container only when postStart has returned.
        lifecycle: (!native && hold).then(|| Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "remora-sidecar".into(),
                        "wait-ready".into(),
                        "--admin".into(),
                        format!("127.0.0.1:{admin}"),
                        "--timeout".into(),
                        format!("{}s", options.wait_ready_timeout_seconds),
                    ]),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        restart_policy: native.then(|| "Always".into()),
        security_context: Some(SecurityContext {
            run_as_user: Some(t.proxy_uid),
            run_as_group: Some(t.proxy_uid),
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(volumes.mounts()),
        ..Container::default()
    }
}

fn init_container(t: &SidecarTemplateSpec, probe_ports: &BTreeSet<u16>) -> Container {
    let join = |ports: &BTreeSet<u16>| {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    // The admin port (kubelet probes the proxy) and the app's probe ports (kubelet
    // probes come from the node and must reach the app directly) bypass the proxy.
    let mut inbound: BTreeSet<u16> = t.exclude_inbound_ports.iter().map(|p| p.0).collect();
    inbound.insert(t.ports.admin.0);
    inbound.extend(probe_ports);
    let outbound: BTreeSet<u16> = t.exclude_outbound_ports.iter().map(|p| p.0).collect();

    let mut args = vec![
        "init-iptables".to_owned(),
        "--proxy-uid".into(),
        t.proxy_uid.to_string(),
        "--inbound-port".into(),
        t.ports.inbound.0.to_string(),
        "--outbound-port".into(),
        t.ports.outbound.0.to_string(),
        "--exclude-inbound-ports".into(),
        join(&inbound),
    ];
    if !outbound.is_empty() {
        args.extend(["--exclude-outbound-ports".into(), join(&outbound)]);
    }
    if !t.exclude_outbound_cidrs.is_empty() {
        let cidrs: Vec<&str> = t
            .exclude_outbound_cidrs
            .iter()
            .map(|c| c.0.as_str())
            .collect();
        args.extend(["--exclude-outbound-cidrs".into(), cidrs.join(",")]);
    }
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(t.image.clone()),
        image_pull_policy: Some(pull_policy(t.image_pull_policy).into()),
        args: Some(args),
        resources: Some(resources(t)),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn resources(t: &SidecarTemplateSpec) -> ResourceRequirements {
    let r = &t.resources;
    let q = |s: &str| K8sQuantity(s.to_owned());
    let requests = BTreeMap::from([
        ("cpu".to_owned(), q(&r.cpu_request.0)),
        ("memory".to_owned(), q(&r.memory_request.0)),
    ]);
    let mut limits = BTreeMap::new();
    if let Some(cpu) = &r.cpu_limit {
        limits.insert("cpu".to_owned(), q(&cpu.0));
    }
    if let Some(memory) = &r.memory_limit {
        limits.insert("memory".to_owned(), q(&memory.0));
    }
    ResourceRequirements {
        requests: Some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..ResourceRequirements::default()
    }
}

fn pull_policy(p: PullPolicy) -> &'static str {
    match p {
        PullPolicy::Always => "Always",
        PullPolicy::IfNotPresent => "IfNotPresent",
        PullPolicy::Never => "Never",
    }
}

fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

fn env_field(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.to_owned(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// The `remora.dev/workload` label: `app.kubernetes.io/name`, else `app`, else the pod's
/// generated-name prefix without the ReplicaSet hash (`reviews-v1-5d9f8c7b4-` →
/// `reviews-v1`), else its name. Empty when there is nothing to go on.
pub fn workload_name(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k)).cloned();
    let name = label("app.kubernetes.io/name")
        .or_else(|| label("app"))
        .or_else(|| {
            let prefix = meta.generate_name.as_deref()?.trim_end_matches('-');
            let hash = label("pod-template-hash");
            Some(match hash {
                Some(h) => prefix
                    .strip_suffix(h.as_str())
                    .map(|p| p.trim_end_matches('-'))
                    .unwrap_or(prefix)
                    .to_owned(),
                None => prefix.to_owned(),
            })
        })
        .or_else(|| meta.name.clone())
        .unwrap_or_default();
    label_value(&name)
}

/// `s` made a valid label value: at most 63 characters, alphanumeric at both ends.
fn label_value(s: &str) -> String {
    let valid: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(63)
        .collect();
    valid
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn workload_names() {
        let p = pod(json!({"metadata": {"generateName": "reviews-v1-5d9f8c7b4-",
            "labels": {"pod-template-hash": "5d9f8c7b4"}}}));
        assert_eq!(workload_name(&p), "reviews-v1");
        let p = pod(json!({"metadata": {"name": "web-0", "labels": {"app": "web"}}}));
        assert_eq!(workload_name(&p), "web");
        let p = pod(json!({"metadata": {"name": "-x-"}}));
        assert_eq!(workload_name(&p), "x");
        assert_eq!(workload_name(&pod(json!({}))), "");
    }

    #[test]
    fn probe_rewriting_can_be_turned_off_per_pod() {
        let probed = |annotations: serde_json::Value| {
            pod(json!({
                "metadata": {"name": "web", "annotations": annotations},
                "spec": {"containers": [{"name": "web", "image": "web",
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}}]}
            }))
        };
        let template = SelectedTemplate::builtin("remora-sidecar:test");
        let env_of = |p: &Pod| {
            let spec = p.spec.as_ref().unwrap();
            let proxy = spec
                .init_containers
                .iter()
                .flatten()
                .find(|c| c.name == PROXY_CONTAINER)
                .unwrap();
            proxy.env.iter().flatten().any(|e| e.name == APP_PROBES_ENV)
        };
        let on = inject(&probed(json!({})), &template, &InjectOptions::default()).unwrap();
        assert!(env_of(&on.pod));
        let off = inject(
            &probed(json!({annotations::REWRITE_APP_PROBES: "false"})),
            &template,
            &InjectOptions::default(),
        )
        .unwrap();
        assert!(!env_of(&off.pod));
        let web = &off.pod.spec.as_ref().unwrap().containers[0];
        let get = web
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(get.port, IntOrString::Int(8080), "left as it was");
    }

    #[test]
    fn a_served_port_left_out_of_the_capture_is_warned_about() {
        let p = |annotations: serde_json::Value| {
            pod(json!({
                "metadata": {"name": "rpc", "annotations": annotations},
                "spec": {"containers": [{"name": "rpc", "image": "rpc",
                    "ports": [{"containerPort": 50051}, {"containerPort": 8080},
                        {"containerPort": 8443}],
                    "readinessProbe": {"grpc": {"port": 50051}},
                    "livenessProbe": {"httpGet": {"path": "/live", "port": 8080}},
                    "startupProbe": {"httpGet": {"path": "/up", "port": 8443,
                        "host": "10.1.2.3"}}}]}
            }))
        };
        let template = SelectedTemplate::builtin("remora-sidecar:test");
        let out = inject(&p(json!({})), &template, &InjectOptions::default()).unwrap();
        let about = |out: &Injection, port: &str| {
            out.warnings
                .iter()
                .any(|w| w.contains(&format!("serves port {port} ")))
        };
        assert!(!about(&out, "50051"), "gRPC rewritten: {:?}", out.warnings);
        assert!(
            !about(&out, "8080"),
            "rewritten, so captured: {:?}",
            out.warnings
        );
        assert!(about(&out, "8443"), "another host: {:?}", out.warnings);
        let off = inject(
            &p(json!({annotations::REWRITE_APP_PROBES: "false"})),
            &template,
            &InjectOptions::default(),
        )
        .unwrap();
        assert!(
            about(&off, "50051") && about(&off, "8080"),
            "{:?}",
            off.warnings
        );
    }

    #[test]
    fn every_proxy_setting_is_passed_and_template_env_cannot_contradict_it() {
        let p = pod(json!({"metadata": {"name": "web"},
            "spec": {"containers": [{"name": "web", "image": "web"}]}}));
        let mut template = SelectedTemplate::builtin("remora-sidecar:test");
        template.spec.concurrency = 4;
        template.spec.ports.admin = remora_api::crd::Port(16000);
        template
            .spec
            .env
            .insert("REMORA_ADMIN_PORT".into(), "17000".into());
        template.spec.env.insert("EXTRA".into(), "1".into());
        let out = inject(&p, &template, &InjectOptions::default()).unwrap();
        let spec = out.pod.spec.as_ref().unwrap();
        let proxy = spec
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == PROXY_CONTAINER)
            .unwrap();
        let env: BTreeMap<&str, &str> = proxy
            .env
            .iter()
            .flatten()
            .filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?)))
            .collect();
        for name in PROXY_SETTINGS_ENV {
            assert!(env.contains_key(name), "{name} missing: {env:?}");
        }
        assert_eq!(env["REMORA_WORKER_THREADS"], "4");
        assert_eq!(env["REMORA_ADMIN_PORT"], "16000", "the template field wins");
        assert_eq!(env["REMORA_CAPTURE_MODE"], "iptables");
        assert_eq!(env["REMORA_DRAIN_TIMEOUT"], "5s");
        assert_eq!(env["EXTRA"], "1");
        assert!(
            out.warnings.iter().any(|w| w.contains("REMORA_ADMIN_PORT")),
            "{:?}",
            out.warnings
        );
    }

    #[test]
    fn identity_secret_from_annotation_or_service_account() {
        assert_eq!(
            identity_secret(&pod(json!({"spec": {"containers": []}}))),
            "default-tls"
        );
        let p = pod(json!({"spec": {"containers": [], "serviceAccountName": "reviews"}}));
        assert_eq!(identity_secret(&p), "reviews-tls");
        let p = pod(
            json!({"metadata": {"annotations": {"remora.dev/identity-secret": "mine"}},
            "spec": {"containers": []}}),
        );
        assert_eq!(identity_secret(&p), "mine");
    }
}
