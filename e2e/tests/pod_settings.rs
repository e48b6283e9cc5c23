//! Per-pod settings reach the running proxy.
//!
//! The operator renders one config per namespace from its default
//! SidecarTemplate; a pod may use another template and override it with
//! annotations. Here a pod is injected by the webhook's own `inject` with a
//! template and annotations that change every setting the proxy reads (log
//! level, worker threads, drain timeout, capture mode, the three ports), and
//! the proxy container is run as the kubelet would: the real `remora-sidecar`
//! binary with exactly the injected args and env (volume mounts mapped to
//! temporary directories, the downward API filled in), against the operator's
//! rendered config, on 127.0.0.1. Each setting must show in what the proxy
//! does: ports bound, threads started, log lines, the effective config.
//!
//! Needs the binaries: `cargo build -p remora-sidecar` (or `cargo test --workspace`).

use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Container, Pod};
use remora_api::config::{SidecarConfig, TlsMode};
use remora_api::crd::SidecarTemplate;
use remora_e2e::workspace_bin;
use remora_operator::render::{MeshResources, RenderContext, render_sidecar_config};
use remora_webhook::inject::{InjectOptions, PROXY_CONTAINER, inject};
use remora_webhook::templates::SelectedTemplate;
use serde_json::{Value, json};

const NAMESPACE: &str = "shop";

/// One proxy at a time: each binds the proxy's fixed loopback ports.
static SERIAL: Mutex<()> = Mutex::new(());

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn template(name: &str, spec: Value) -> SidecarTemplate {
    serde_json::from_value(json!({
        "apiVersion": "mesh.remora.dev/v1alpha1", "kind": "SidecarTemplate",
        "metadata": {"name": name, "namespace": NAMESPACE, "generation": 1},
        "spec": spec,
    }))
    .unwrap()
}

/// The namespace's config, rendered from its default template by the operator's code.
fn rendered(default_template: Value) -> SidecarConfig {
    let mut spec = default_template;
    spec["default"] = true.into();
    let resources = MeshResources {
        templates: vec![template("namespace-default", spec)],
        ..MeshResources::default()
    };
    let out = render_sidecar_config(&RenderContext::new(NAMESPACE), &resources);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    out.config
}

fn injected_proxy(pod_template: Value, annotations: Value) -> Container {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0", "namespace": NAMESPACE, "annotations": annotations,
            "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "web:1",
            "ports": [{"containerPort": 8080}]}]}
    }))
    .unwrap();
    let selected = SelectedTemplate::from_resource(&template("tuned", pod_template));
    // The operator's RenderContext::new renders with mTLS disabled; so does this mesh
    // (explicit capture is refused otherwise).
    let options = InjectOptions {
        mtls: TlsMode::Disabled,
        ..InjectOptions::default()
    };
    let injection = inject(&pod, &selected, &options).unwrap();
    let spec = injection.pod.spec.unwrap();
    spec.init_containers
        .into_iter()
        .flatten()
        .chain(spec.containers)
        .find(|c| c.name == PROXY_CONTAINER)
        .expect("the proxy container")
}

/// The proxy container, started as the kubelet would start it.
struct RunningProxy {
    child: Child,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RunningProxy {
    fn start(proxy: &Container, config: &SidecarConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Each volume mount becomes a directory; the kubelet's content goes in it.
        let mounts: Vec<(String, PathBuf)> = proxy
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                let path = dir.path().join(&m.name);
                fs::create_dir_all(&path).unwrap();
                (m.mount_path.clone(), path)
            })
            .collect();
        let map = |s: &str| -> String {
            for (from, to) in &mounts {
                if let Some(rest) = s.strip_prefix(from.as_str()) {
                    return format!("{}{rest}", to.display());
                }
            }
            s.to_owned()
        };
        let config_path = map(remora_webhook::inject::CONFIG_PATH);
        fs::write(&config_path, config.to_pretty_json()).unwrap();
        let labels = map(&format!("{}/labels", remora_webhook::inject::PODINFO_DIR));
        fs::write(&labels, "app=\"web\"\n").unwrap();

        let mut cmd = Command::new(workspace_bin("remora-sidecar"));
        // A container has only the env it is given.
        cmd.env_clear();
        cmd.args(proxy.args.iter().flatten().map(|a| map(a)));
        for e in proxy.env.iter().flatten() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => map(v),
                (None, Some(from)) => {
                    match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                        Some("metadata.name") => "web-0".into(),
                        Some("metadata.namespace") => NAMESPACE.into(),
                        Some("spec.serviceAccountName") => "default".into(),
                        Some("status.podIP") => "127.0.0.1".into(),
                        Some("spec.nodeName") => "node".into(),
                        other => panic!("unexpected downward API field {other:?}"),
                    }
                }
                _ => continue,
            };
            cmd.env(&e.name, value);
        }
        let stderr = dir.path().join("stderr");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap());
        let child = cmd.spawn().expect("remora-sidecar starts");
        Self {
            child,
            stderr,
            _dir: dir,
        }
    }

    fn wait_ready(&mut self, admin: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("remora-sidecar exited with {status}: {}", self.log());
            }
            if get(admin, "/ready").is_some_and(|(s, _)| s == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not ready on admin port {admin}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn threads(&self) -> usize {
        fs::read_dir(format!("/proc/{}/task", self.child.id()))
            .unwrap()
            .count()
    }
}

/// One HTTP/1.1 GET on 127.0.0.1; `(status, body)`, or `None` when nothing answers.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// The proxy's effective config, from the control port (`admin.controlAddress`,
/// 127.0.0.1:15009 by default); the pod-reachable admin port refuses it.
fn config_dump(admin: u16) -> Value {
    let (status, _) = get(admin, "/config_dump").expect("the admin port answers");
    assert_eq!(
        status, 404,
        "config_dump is not served on the pod-reachable port"
    );
    let (status, body) = get(15009, "/config_dump").expect("config_dump answers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn bound(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

fn listener_names(dump: &Value) -> Vec<String> {
    dump["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_per_pod_setting_changes_the_running_proxy() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (inbound, outbound, admin) = (free_port(), free_port(), free_port());
    // The namespace runs the defaults: iptables, info, one worker, 5 s drain.
    let config = rendered(json!({"image": "remora-sidecar:test"}));
    // The pod: another template, and annotations over it.
    let proxy = injected_proxy(
        json!({"image": "remora-sidecar:test", "concurrency": 3, "drainDuration": "7s",
            "ports": {"inbound": inbound, "outbound": outbound, "admin": admin}}),
        json!({"remora.dev/log-level": "warn", "remora.dev/capture-mode": "explicit"}),
    );
    let mut p = RunningProxy::start(&proxy, &config);
    p.wait_ready(admin);

    let dump = config_dump(admin);
    let runtime = &dump["runtime"];
    assert_eq!(runtime["workerThreads"], 3, "{runtime}");
    assert_eq!(runtime["drainTimeout"], "7s", "{runtime}");
    assert_eq!(runtime["logLevel"], "warn", "{runtime}");
    assert_eq!(
        dump["admin"]["address"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next(),
        Some(admin.to_string().as_str())
    );
    // Explicit capture: apps call the outbound listener; there is no inbound one.
    assert_eq!(listener_names(&dump), ["outbound"], "{dump}");
    assert_eq!(dump["listeners"][0]["transparent"], false);
    assert!(bound(outbound), "outbound listener on {outbound}");
    assert!(!bound(inbound), "no inbound listener in explicit mode");
    // Three workers besides the main thread.
    assert!(p.threads() >= 4, "{} threads", p.threads());
    // `warn`: the proxy's info lines (listening, ready) are not logged.
    let log = p.log();
    assert!(!log.contains("INFO"), "log level warn, yet:\n{log}");
}

#[test]
fn iptables_capture_in_a_namespace_rendered_for_explicit_mode() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (inbound, outbound, admin) = (free_port(), free_port(), free_port());
    let config = rendered(
        json!({"image": "remora-sidecar:test", "captureMode": "explicit",
        "logLevel": "error"}),
    );
    assert!(
        config.listeners.iter().all(|l| l.name != "inbound"),
        "rendered for explicit mode"
    );
    let proxy = injected_proxy(
        json!({"image": "remora-sidecar:test",
            "ports": {"inbound": inbound, "outbound": outbound, "admin": admin}}),
        json!({"remora.dev/log-level": "info"}),
    );
    let env: BTreeMap<&str, &str> = proxy
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?)))
        .collect();
    assert_eq!(env.get("REMORA_CAPTURE_MODE"), Some(&"iptables"));
    let mut p = RunningProxy::start(&proxy, &config);
    p.wait_ready(admin);

    let dump = config_dump(admin);
    assert_eq!(listener_names(&dump), ["outbound", "inbound"], "{dump}");
    assert_eq!(dump["listeners"][0]["transparent"], true);
    assert_eq!(dump["runtime"]["workerThreads"], 1);
    assert!(bound(inbound), "inbound listener on {inbound}");
    assert!(bound(outbound), "outbound listener on {outbound}");
    assert!(
        p.log().contains("remora-sidecar ready"),
        "log level info from the annotation:\n{}",
        p.log()
    );
}
