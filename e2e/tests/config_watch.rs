//! Issue #14, config by watch: a real `remora-sidecar` in a pod follows its
//! namespace's rendered config through the testkit's real kube-apiserver,
//! with a real ServiceAccount token (TokenRequest) and the operator's own
//! Role, while the mounted file never changes.
//!
//! The pod is a network namespace joined to the host by a veth pair
//! ([`Node::add_host_pod`]); it reaches the API server through a TCP relay
//! on the host end of that pair, as a pod reaches the `kubernetes` Service.
//! Stopping the relay is the API server becoming unreachable for this pod:
//! the sidecar must keep serving its last config, say so in
//! `config_watch_synced`, and pick up what changed meanwhile once the relay
//! is back on the same address.
//!
//! Needs root (network namespaces), iptables, curl and the control plane;
//! `REMORA_SKIP_NETNS=1` and `REMORA_SKIP_CONTROL_PLANE=1` skip, loudly.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use remora_e2e::netns::{self, Node, Pod};
use remora_e2e::prometheus::{self, Sample};
use remora_e2e::workspace_bin;
use remora_testkit::{ControlPlane, repo_root, require_control_plane};
use serde_json::json;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;

const APP_PORT: u16 = 8080;
const ADMIN_PORT: u16 = 15000;
const HASH: &str = "remora.dev/config-hash";

/// A TCP relay from the pod's side of the host to the API server, that the
/// test can stop (listener and open connections gone) and start again on
/// the same address.
struct Relay {
    listen: SocketAddr,
    upstream: SocketAddr,
    tasks: Option<JoinSet<()>>,
}

impl Relay {
    async fn start(listen: SocketAddr, upstream: SocketAddr) -> Self {
        let mut r = Self {
            listen,
            upstream,
            tasks: None,
        };
        r.resume().await;
        r
    }

    async fn resume(&mut self) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.listen).unwrap();
        let listener: TcpListener = socket.listen(64).unwrap();
        self.listen = listener.local_addr().unwrap();
        let upstream = self.upstream;
        let mut tasks = JoinSet::new();
        let conns = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let held = conns.clone();
        tasks.spawn(async move {
            // The connections' set lives as long as the accept loop: when
            // the relay stops, both go.
            let _held = held;
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                conns.lock().unwrap().spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
        });
        self.tasks = Some(tasks);
    }

    fn stop(&mut self) {
        // Dropping the set aborts the accept loop, which drops the
        // connections' set and so every relayed connection.
        self.tasks = None;
    }
}

/// The sidecar's metrics, read from the host through its admin port.
fn metrics(pod: &Pod) -> Option<Vec<Sample>> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "3"])
        .arg(format!("http://{}:{ADMIN_PORT}/metrics", pod.ip))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| prometheus::parse(&String::from_utf8_lossy(&out.stdout)))
}

fn running_hash(samples: &[Sample]) -> Option<String> {
    samples
        .iter()
        .find(|s| s.name == "sidecar_config_info" && s.value > 0.0)
        .and_then(|s| s.labels.get("hash").cloned())
}

fn value(samples: &[Sample], name: &str) -> f64 {
    prometheus::sum(samples, name, &[])
}

/// Polls the sidecar's metrics until `want` holds, for up to `limit`.
async fn sidecar_until(
    pod: &Pod,
    limit: Duration,
    what: &str,
    want: impl Fn(&[Sample]) -> bool,
) -> Vec<Sample> {
    let deadline = Instant::now() + limit;
    let mut last = Vec::new();
    while Instant::now() < deadline {
        if let Some(m) = metrics(pod) {
            if want(&m) {
                return m;
            }
            last = m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown: Vec<String> = last
        .iter()
        .filter(|s| s.name.starts_with("config_") || s.name == "sidecar_config_info")
        .map(|s| format!("{} {:?} {}", s.name, s.labels, s.value))
        .collect();
    panic!(
        "the sidecar never got to: {what}; its config metrics:\n{}",
        shown.join("\n")
    );
}

/// The rendered config's document and hash, once it has a hash other than
/// `not`.
async fn config_map(client: &Client, ns: &str, not: Option<&str>) -> (String, String) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(cm) = api.get_opt("remora-config").await.unwrap() {
            let hash = cm.annotations().get(HASH).cloned().unwrap_or_default();
            if !hash.is_empty() && Some(hash.as_str()) != not {
                return (cm.data.unwrap()["config.json"].clone(), hash);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the operator never wrote a new remora-config in {ns}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn call_app(pod: &Pod, n: usize) {
    for i in 0..n {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", "-o", "/dev/null"])
            .arg(format!("http://{}:{APP_PORT}/watch/{i}", pod.ip))
            .output()
            .unwrap();
        assert!(out.status.success(), "call {i} to the app failed: {out:?}");
    }
}

async fn kubectl_apply(cp: &ControlPlane, ns: &str, doc: serde_json::Value) {
    let out = cp
        .kubectl_with_stdin(["apply", "-n", ns, "-f", "-"], &doc.to_string())
        .await
        .unwrap();
    assert!(out.success(), "kubectl apply: {}", out.stderr);
}

fn route(weights: (u32, u32)) -> serde_json::Value {
    json!({
        "apiVersion": "mesh.remora.dev/v1alpha1", "kind": "ServiceRoute",
        "metadata": {"name": "reviews"},
        "spec": {
            "service": "reviews", "port": 9080, "protocol": "http1",
            "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                        {"name": "v2", "labels": {"version": "v2"}}],
            "rules": [{"name": "split", "destinations": [
                {"subset": "v1", "weight": weights.0}, {"subset": "v2", "weight": weights.1}]}],
        },
    })
}

#[tokio::test]
async fn a_sidecar_follows_its_config_through_the_api_server() {
    require_control_plane!();
    if !netns::preflight("a_sidecar_follows_its_config_through_the_api_server") {
        return;
    }
    let cp = ControlPlane::shared().await;
    cp.install_crds(repo_root().join("crds")).await.unwrap();
    let client = cp.client().await.unwrap();

    // The operator, in this process, for its own system namespace.
    let system = cp.namespace("watch-system").await.unwrap();
    let config = remora_operator::controller::OperatorConfig::new(system.name());
    let metrics_ = Arc::new(remora_operator::metrics::Metrics::default());
    let operator = tokio::spawn(remora_operator::run(client.clone(), config, metrics_));

    let mesh_ns = cp
        .namespace_with_labels("watch-mesh", &[("remora.dev/inject", "enabled")])
        .await
        .unwrap();
    let mesh = mesh_ns.name();
    let services = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews"},
        "spec": {"selector": {"app": "reviews"}, "ports": [{"port": 9080}]}});
    kubectl_apply(cp, mesh, services).await;
    let (bootstrap, first) = config_map(&client, mesh, None).await;

    // The pod's ServiceAccount and a real token for it (what the kubelet
    // projects into the pod).
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), mesh);
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "reviews"}})).unwrap(),
    )
    .await
    .unwrap();
    let token = sas
        .create_token_request(
            "reviews",
            &PostParams::default(),
            &serde_json::from_value::<TokenRequest>(
                json!({"spec": {"audiences": [], "expirationSeconds": 3600}}),
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;

    let mut node = Node::new("cwatch").unwrap();
    let (pod, host) = node.add_host_pod("reviews").unwrap();
    let dir = node.dir().to_owned();
    std::fs::write(dir.join("token"), &token).unwrap();
    std::fs::write(dir.join("ca.crt"), cp.ca_pem()).unwrap();
    let config_file = dir.join("config.json");
    std::fs::write(&config_file, &bootstrap).unwrap();

    let api_port: u16 = cp.server_url().rsplit(':').next().unwrap().parse().unwrap();
    let mut relay = Relay::start(
        SocketAddr::from((host, 0)),
        SocketAddr::from((Ipv4Addr::LOCALHOST, api_port)),
    )
    .await;
    let relay_addr = relay.listen;

    let echo = workspace_bin("remora-echo");
    let app = node.command(
        &pod,
        None,
        &[
            echo.display().to_string(),
            "--listen".into(),
            format!("0.0.0.0:{APP_PORT}"),
        ],
    );
    node.spawn(&pod, "app", app).unwrap();
    let mut proxy = node.command(
        &pod,
        None,
        &[
            workspace_bin("remora-sidecar").display().to_string(),
            "run".into(),
            "--config".into(),
            config_file.display().to_string(),
            "--config-watch".into(),
            "on".into(),
        ],
    );
    proxy
        .env("KUBERNETES_SERVICE_HOST", host.to_string())
        .env("KUBERNETES_SERVICE_PORT", relay_addr.port().to_string())
        .env("REMORA_KUBE_SERVER_NAME", "127.0.0.1")
        .env("REMORA_KUBE_CA_FILE", dir.join("ca.crt"))
        .env("REMORA_KUBE_TOKEN_FILE", dir.join("token"))
        .env("REMORA_KUBE_NAMESPACE", mesh);
    node.spawn(&pod, "sidecar", proxy).unwrap();
    node.redirect_inbound(&pod, APP_PORT, 15006).unwrap();

    let result = async {
        // Synced, on the operator's config.
        sidecar_until(
            &pod,
            Duration::from_secs(30),
            "synced on the first config",
            |m| {
                value(m, "config_watch_synced") == 1.0
                    && running_hash(m).as_deref() == Some(first.as_str())
            },
        )
        .await;
        call_app(&pod, 5);

        // A ServiceRoute arrives: the operator renders, the sidecar applies
        // it through the watch. The mounted file is never rewritten.
        kubectl_apply(cp, mesh, route((95, 5))).await;
        let (_, second) = config_map(&client, mesh, Some(&first)).await;
        let written = Instant::now();
        let m = sidecar_until(
            &pod,
            Duration::from_secs(20),
            "applied the ServiceRoute",
            |m| running_hash(m).as_deref() == Some(second.as_str()),
        )
        .await;
        eprintln!(
            "config by watch: the operator's write applied within {:?} (polled every 100 ms)",
            written.elapsed()
        );
        assert_eq!(std::fs::read_to_string(&config_file).unwrap(), bootstrap);
        assert!(value(&m, "config_watch_events_total") >= 2.0);
        let applied = prometheus::sum(&m, "config_reload_total", &[("result", "applied")]);
        assert!(
            applied >= 1.0,
            "the watch's document went through the reload"
        );

        // The API server unreachable: the last config keeps serving.
        relay.stop();
        let m = sidecar_until(
            &pod,
            Duration::from_secs(30),
            "noticed the API server is gone",
            |m| value(m, "config_watch_synced") == 0.0,
        )
        .await;
        let errors_while_down = value(&m, "config_watch_errors_total");
        assert!(errors_while_down >= 1.0);
        call_app(&pod, 5);
        // What changes meanwhile cannot reach it...
        kubectl_apply(cp, mesh, route((50, 50))).await;
        let (_, third) = config_map(&client, mesh, Some(&second)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let m = metrics(&pod).expect("the sidecar answers while the API server is gone");
        assert_eq!(
            running_hash(&m).as_deref(),
            Some(second.as_str()),
            "static stability"
        );
        call_app(&pod, 5);

        // ...until the API server is back: the watch resumes and applies it.
        relay.resume().await;
        assert_eq!(relay.listen, relay_addr);
        sidecar_until(
            &pod,
            Duration::from_secs(60),
            "resumed and applied the change",
            |m| {
                value(m, "config_watch_synced") == 1.0
                    && running_hash(m).as_deref() == Some(third.as_str())
            },
        )
        .await;
        call_app(&pod, 5);
    };
    // A panic inside prints the pods' logs (the node's drop does).
    let outcome = tokio::time::timeout(Duration::from_secs(240), result).await;
    assert!(outcome.is_ok(), "the test took longer than 240 s");
    node.check_running().unwrap_or_else(|e| {
        node.print_logs();
        panic!("{e}")
    });
    operator.abort();
}
