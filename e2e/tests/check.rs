//! `remoractl check`, `stat`, `top` and `dashboard` against the testkit's real kube-apiserver
//! with the chart installed by real helm, the operator running (in this process,
//! with the chart's settings) and one injected pod whose real `remora-sidecar`
//! is read through the API server's pod proxy.
//!
//! There is no kubelet here: the test plays it. It writes Deployment and Pod
//! *status* through the status subresource as the kubelet and the Deployment
//! controller would, and runs the pod as a network namespace joined to the
//! host by a veth pair ([`Node::add_host_pod`]), whose address it writes as
//! `status.podIP`: the API server refuses loopback pod IPs, and this way its
//! pod proxy really connects to the sidecar's admin port. The only capture
//! rule installed is the inbound redirect remora-init would add for the app's
//! port, so the test's calls from the host reach the app through the sidecar.
//!
//! One test, in steps, because the broken parts (a deleted CRD, a replaced
//! webhook certificate) are cluster-wide: healthy first, then each broken part
//! is reported with its fix, and repaired before the next.
//!
//! Needs root (network namespaces), helm (`REMORA_TOOLS_BIN`) and the control
//! plane; `REMORA_SKIP_NETNS=1`, `REMORA_SKIP_TOOLS=1` and
//! `REMORA_SKIP_CONTROL_PLANE=1` skip, loudly. The binaries come from the
//! workspace's target directory: `cargo build -p remora-cli -p remora-sidecar
//! -p remora-e2e` first, or run `cargo test --workspace`.

#[path = "chart/tools.rs"]
#[allow(dead_code)] // shared with chart.rs, which uses the rest
mod tools;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use remora_e2e::netns::{self, Node};
use remora_e2e::workspace_bin;
use remora_operator::ca::{LeafRequest, MeshCa};
use remora_testkit::{ControlPlane, require_control_plane};
use serde_json::{Value, json};
use tools::{eventually, helm_on, repo_root};

const CHART: &str = "charts/remora";
const RELEASE: &str = "remora";
const APP_PORT: u16 = 8080;
const CALLS: usize = 20;

struct Remoractl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Remoractl {
    /// Runs remoractl against the control plane: (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env_remove("KUBECONFIG")
            .output()
            .expect("running remoractl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `check -o json`: the exit code and the outcomes.
    fn check(&self, system: &str) -> (i32, Vec<Value>) {
        let (code, stdout, stderr) = self.run(&["check", "-n", system, "-o", "json"]);
        let outcomes: Vec<Value> = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("check -o json printed no JSON ({e}):\n{stdout}\n{stderr}"));
        for o in &outcomes {
            for key in ["category", "name", "ok", "message", "hint"] {
                assert!(o.get(key).is_some(), "{key} missing in {o}");
            }
        }
        (code, outcomes)
    }
}

fn failed(outcomes: &[Value]) -> Vec<&Value> {
    outcomes.iter().filter(|o| o["ok"] == false).collect()
}

/// The outcome with this category and name.
fn outcome<'a>(outcomes: &'a [Value], category: &str, name: &str) -> &'a Value {
    outcomes
        .iter()
        .find(|o| o["category"] == category && o["name"] == name)
        .unwrap_or_else(|| panic!("no {category}/{name} in {outcomes:#?}"))
}

/// Waits until `check` exits 1 with exactly the failures `expect` names
/// (category, name, a phrase of the message, a phrase of the hint).
async fn expect_failures(
    ctl: &Remoractl,
    system: &str,
    expect: &[(&str, &str, &str, &str)],
) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let (code, outcomes) = ctl.check(system);
        let fails = failed(&outcomes);
        let matches = fails.len() == expect.len()
            && expect.iter().all(|(c, n, m, h)| {
                fails.iter().any(|o| {
                    o["category"] == *c
                        && o["name"] == *n
                        && o["message"].as_str().unwrap().contains(m)
                        && o["hint"].as_str().is_some_and(|hint| hint.contains(h))
                })
            });
        if matches {
            let want = if expect.is_empty() { 0 } else { 1 };
            assert_eq!(code, want, "exit code 1 when a check fails, else 0");
            return outcomes;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "expected failures {expect:?}, got (exit {code}) {fails:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn expect_healthy(ctl: &Remoractl, system: &str) -> Vec<Value> {
    expect_failures(ctl, system, &[]).await
}

fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// What the kubelet reports for a started pod: Running and Ready, at `ip`.
async fn report_running(pods: &Api<Pod>, name: &str, ip: Option<&str>, ready: bool) {
    let ready = if ready { "True" } else { "False" };
    let mut status = json!({
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    });
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .unwrap();
}

/// What the Deployment controller reports: `available` of one replica.
async fn report_available(deploys: &Api<Deployment>, name: &str, available: bool) {
    let (n, s) = if available { (1, "True") } else { (0, "False") };
    deploys
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "replicas": 1, "readyReplicas": n, "availableReplicas": n, "updatedReplicas": 1,
                "conditions": [{"type": "Available", "status": s, "reason": "Test",
                    "lastTransitionTime": "2026-01-01T00:00:00Z", "lastUpdateTime": "2026-01-01T00:00:00Z"}],
            }})),
        )
        .await
        .unwrap();
}

/// The operator's pod, as its ReplicaSet would create it and the kubelet report it.
async fn operator_pod(client: &Client, system: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), system);
    let pod: Pod = from_json(json!({
        "metadata": {"name": "remora-operator-0", "labels": {
            "app.kubernetes.io/name": "remora-operator", "app.kubernetes.io/instance": RELEASE}},
        "spec": {"containers": [{"name": "operator", "image": "ghcr.io/remora-mesh/remora-operator:0.1.0"}]},
    }));
    pods.create(&PostParams::default(), &pod).await.unwrap();
    report_running(&pods, "remora-operator-0", None, true).await;
}

/// A Deployment `reviews-v1`, its ReplicaSet and one injected pod of it, the
/// sidecar declared as the webhook injects it (a native sidecar with the
/// `remora-admin` port).
async fn reviews_pod(client: &Client, ns: &str) -> String {
    let labels = json!({"app": "reviews", "version": "v1"});
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let containers =
        json!([{"name": "app", "image": "remora-echo", "ports": [{"containerPort": APP_PORT}]}]);
    let d = deploys
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": {"name": "reviews-v1"},
                "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}, "spec": {"containers": containers}}},
            })),
        )
        .await
        .unwrap();
    let owner = |kind: &str, name: String, uid: Option<String>| json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true}]);
    let rs_labels = json!({"app": "reviews", "version": "v1", "pod-template-hash": "5d8f7"});
    let rs = Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": {"name": "reviews-v1-5d8f7", "labels": rs_labels,
                    "ownerReferences": owner("Deployment", d.name_any(), d.uid())},
                "spec": {"replicas": 0, "selector": {"matchLabels": rs_labels},
                    "template": {"metadata": {"labels": rs_labels}, "spec": {"containers": containers}}},
            })),
        )
        .await
        .unwrap();
    let mut pod_labels = rs_labels.clone();
    pod_labels["remora.dev/sidecar"] = json!("injected");
    let pod: Pod = from_json(json!({
        "metadata": {"name": "reviews-v1-5d8f7-x2p4q", "labels": pod_labels,
            "ownerReferences": owner("ReplicaSet", rs.name_any(), rs.uid())},
        "spec": {
            "initContainers": [{"name": "remora-proxy", "image": "ghcr.io/remora-mesh/remora-sidecar:0.1.0",
                "restartPolicy": "Always", "args": ["run", "--config", "/etc/remora/config/config.json"],
                "ports": [{"name": "remora-admin", "containerPort": 15000}]}],
            "containers": containers,
        },
    }));
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap()
        .name_any()
}

/// The rendered config of `ns` and its hash annotation, once the operator
/// has settled (the same hash for 2 s: the CA and each applied resource
/// make a new render).
async fn rendered(client: &Client, ns: &str) -> (String, String) {
    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut last: Option<(String, String)> = None;
    let mut since = Instant::now();
    let started = Instant::now();
    loop {
        let cm = eventually("remora-config", || async {
            configs.get_opt("remora-config").await.unwrap()
        })
        .await;
        let hash = cm.annotations()["remora.dev/config-hash"].clone();
        let now = (cm.data.unwrap()["config.json"].clone(), hash);
        if last.as_ref() != Some(&now) {
            (last, since) = (Some(now), Instant::now());
        } else if since.elapsed() >= Duration::from_secs(2) {
            return now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "remora-config in {ns} never settled"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Calls the app from the host: each call is captured into the sidecar's
/// inbound listener, which forwards it to the app.
fn call_app(ip: &str, n: usize) {
    for i in 0..n {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", "-o", "/dev/null"])
            .arg(format!("http://{ip}:{APP_PORT}/reviews/{i}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "call {i} to the app failed: {out:?}");
    }
}

/// Runs `remoractl dashboard -n ns` and calls the app until `want` finds
/// what it looks for in the page's `/api/graph` (within 60 s).
fn dashboard_until(
    ctl: &Remoractl,
    ns: &str,
    ip: &str,
    want: impl Fn(&Value) -> Option<Value>,
) -> Value {
    use std::io::{BufRead, BufReader};
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(
        Command::new(&ctl.bin)
            .args([
                "dashboard",
                "-n",
                ns,
                "--listen",
                "127.0.0.1:0",
                "--kubeconfig",
            ])
            .arg(&ctl.kubeconfig)
            .env_remove("KUBECONFIG")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting remoractl dashboard"),
    );
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap()).lines();
    let url = stderr
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            let rest = l.split_once("open http://")?.1;
            Some(format!("http://{}api/graph", rest.split_once(' ')?.0))
        })
        .expect("remoractl dashboard printed no URL");
    // Its further logs, passed on (a closed pipe would fail its writes).
    std::thread::spawn(move || {
        stderr
            .map_while(Result::ok)
            .for_each(|l| eprintln!("dashboard: {l}"))
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        call_app(ip, 3);
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", &url])
            .output()
            .unwrap();
        if out.status.success() {
            last = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(last["source"], "cluster", "{last}");
            assert_eq!(last["errors"], json!([]), "{last}");
            if let Some(found) = want(&last) {
                return found;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("the dashboard's graph never showed what the test waits for:\n{last}");
}

fn leaf(ca: &MeshCa, dns: &str, ttl: Duration) -> String {
    ca.issue(&LeafRequest {
        spiffe_id: "spiffe://cluster.local/ns/remora-system/sa/remora-webhook".into(),
        dns_names: vec![dns.into()],
        extra_uris: vec![],
        ttl,
    })
    .unwrap()
    .cert_pem
}

async fn set_ca_bundle(configs: &Api<MutatingWebhookConfiguration>, name: &str, pem: &[u8]) {
    let mut c = configs.get(name).await.unwrap();
    for w in c.webhooks.iter_mut().flatten() {
        w.client_config.ca_bundle = Some(ByteString(pem.to_vec()));
    }
    configs
        .replace(name, &PostParams::default(), &c)
        .await
        .unwrap();
}

async fn set_serving_cert(secrets: &Api<Secret>, name: &str, pem: &[u8]) {
    let mut s = secrets.get(name).await.unwrap();
    s.data
        .get_or_insert_with(Default::default)
        .insert("tls.crt".into(), ByteString(pem.to_vec()));
    secrets
        .replace(name, &PostParams::default(), &s)
        .await
        .unwrap();
}

#[tokio::test]
async fn check_stat_and_top_on_a_cluster_with_the_chart_installed() {
    if tools::skip_requested() {
        return;
    }
    require_control_plane!();
    if !netns::preflight("check_stat_and_top_on_a_cluster_with_the_chart_installed") {
        return;
    }
    let ctl = Remoractl {
        bin: workspace_bin("remoractl"),
        kubeconfig: ControlPlane::shared().await.kubeconfig_path().to_owned(),
    };
    let sidecar = workspace_bin("remora-sidecar");
    let echo = workspace_bin("remora-echo");
    let cp = ControlPlane::shared().await;
    let crds = repo_root().join(CHART).join("crds");
    cp.install_crds(&crds).await.unwrap();
    let client = cp.client().await.unwrap();

    // Before install: the API server is new enough and we may create everything.
    let (code, stdout, stderr) = ctl.run(&["check", "--pre", "-o", "json"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let pre: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    let version = outcome(&pre, "kubernetes-api", "version");
    assert!(
        version["message"].as_str().unwrap().contains("v1.33"),
        "{version}"
    );
    outcome(
        &pre,
        "pre-install-permissions",
        "customresourcedefinitions.apiextensions.k8s.io",
    );
    let crd = outcome(&pre, "pre-install-crds", "serviceroutes.mesh.remora.dev");
    assert!(
        crd["message"].as_str().unwrap().contains("v1alpha1"),
        "{crd}"
    );

    // helm install, fail-open with a short timeout: no webhook process runs here.
    let system_ns = cp.namespace("check-system").await.unwrap();
    let system = system_ns.name();
    helm_on(
        cp,
        &[
            "install",
            RELEASE,
            CHART,
            "--namespace",
            system,
            "--set",
            "webhook.failurePolicy=Ignore",
            "--set",
            "webhook.timeoutSeconds=1",
        ],
    );
    // The operator, with the chart's settings (one replica: no leader election).
    let mut config = remora_operator::controller::OperatorConfig::new(system);
    config.ca_secret = "remora-ca".into();
    let metrics = Arc::new(remora_operator::metrics::Metrics::default());
    let operator = tokio::spawn(remora_operator::run(client.clone(), config, metrics));

    // Nothing runs yet: the operator's Deployment is not available.
    expect_failures(
        &ctl,
        system,
        &[
            (
                "remora-operator",
                "deployment",
                "is not available",
                "logs deploy/remora-operator",
            ),
            (
                "remora-operator",
                "ready",
                "0/0 operator pods Ready",
                "describe deploy/remora-operator",
            ),
        ],
    )
    .await;

    // The kubelet's part for the control plane.
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), system);
    report_available(&deploys, "remora-operator", true).await;
    operator_pod(&client, system).await;

    // A mesh namespace with one injected pod, run for real in a network namespace.
    let mesh_ns = cp
        .namespace_with_labels("check-mesh", &[("remora.dev/inject", "enabled")])
        .await
        .unwrap();
    let mesh = mesh_ns.name();
    let (document, hash) = rendered(&client, mesh).await;
    let mut node = Node::new("check").unwrap();
    let (net, _host) = node.add_host_pod("reviews").unwrap();
    let ip = net.ip.to_string();
    let config_file = node.dir().join("config.json");
    std::fs::write(&config_file, &document).unwrap();
    let app = node.command(
        &net,
        None,
        &[
            echo.display().to_string(),
            "--listen".into(),
            format!("0.0.0.0:{APP_PORT}"),
        ],
    );
    node.spawn(&net, "app", app).unwrap();
    let proxy = node.command(
        &net,
        None,
        &[
            sidecar.display().to_string(),
            "run".into(),
            "--config".into(),
            config_file.display().to_string(),
        ],
    );
    node.spawn(&net, "sidecar", proxy).unwrap();
    node.redirect_inbound(&net, APP_PORT, 15006).unwrap();
    let wait = node.command(
        &net,
        None,
        &[
            sidecar.display().to_string(),
            "wait-ready".into(),
            "--admin".into(),
            "127.0.0.1:15000".into(),
            "--timeout".into(),
            "20s".into(),
        ],
    );
    let out = node.run(wait, Duration::from_secs(30)).unwrap();
    node.check_running().unwrap();
    assert!(
        out.status.success(),
        "the sidecar never became ready: {out:?}"
    );
    let pod_name = reviews_pod(&client, mesh).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), mesh);
    report_running(&pods, &pod_name, Some(&ip), true).await;

    // Healthy: every check passes, the sidecar's hash read through the pod proxy.
    let healthy = expect_healthy(&ctl, system).await;
    for crd in [
        "sidecartemplates",
        "serviceroutes",
        "ratelimitpolicies",
        "meshcertificates",
    ] {
        let o = outcome(&healthy, "remora-crds", &format!("{crd}.mesh.remora.dev"));
        assert!(o["message"].as_str().unwrap().contains("v1alpha1"), "{o}");
    }
    let leader = outcome(&healthy, "remora-operator", "leader");
    assert!(
        leader["message"]
            .as_str()
            .unwrap()
            .contains("leader election is off"),
        "{leader}"
    );
    for name in [
        "configuration",
        "ca-bundle",
        "certificate-names",
        "certificate-validity",
    ] {
        outcome(&healthy, "remora-webhook", name);
    }
    let validity = outcome(&healthy, "remora-webhook", "certificate-validity");
    assert_eq!(
        validity["warning"], false,
        "the chart's certificate lasts 10 years: {validity}"
    );
    let sidecars = outcome(&healthy, "remora-data-plane", &format!("{mesh} sidecars"));
    let short: String = hash.chars().take(19).collect();
    assert!(
        sidecars["message"]
            .as_str()
            .unwrap()
            .contains(&format!("1 sidecars run the operator's config {short}")),
        "{sidecars}"
    );
    let versions = outcome(
        &healthy,
        "remora-data-plane",
        &format!("{mesh} sidecar versions"),
    );
    assert!(
        versions["message"].as_str().unwrap().contains("0.1.0"),
        "{versions}"
    );
    let (code, text, _) = ctl.run(&["check", "-n", system]);
    eprintln!("remoractl check, healthy:\n{text}");
    assert_eq!(code, 0);
    assert!(
        text.contains("remora-data-plane\n-----------------\n"),
        "{text}"
    );
    assert!(text.contains("\n✔ deployment: "), "{text}");
    assert!(
        text.ends_with(&format!(
            "Status check results are ✔ ({} checks, 0 warnings)\n",
            healthy.len()
        )),
        "{text}"
    );

    // stat and top through the pod proxy, per workload.
    call_app(&ip, CALLS);
    let (code, stdout, stderr) = ctl.run(&[
        "stat",
        "-n",
        mesh,
        "deploy/reviews-v1",
        "--interval",
        "300ms",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let stat: Value = serde_json::from_str(&stdout).unwrap();
    let w = &stat[0];
    assert_eq!(w["workload"], format!("{mesh}/deploy/reviews-v1"), "{stat}");
    assert_eq!(w["pods"], json!([pod_name]));
    let inbound = w["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["listener"] == "inbound")
        .unwrap();
    assert_eq!(inbound["requests"], CALLS as f64, "{inbound}");
    assert_eq!(inbound["success_percent"], 100.0, "{inbound}");
    assert!(inbound["p99_ms"].as_f64().unwrap() > 0.0, "{inbound}");
    let (code, table, _) = ctl.run(&[
        "stat",
        "-n",
        mesh,
        &format!("pod/{pod_name}"),
        "--interval",
        "200ms",
    ]);
    assert_eq!(code, 0);
    assert!(
        table.starts_with(&format!("{mesh}/deploy/reviews-v1 (1 pods: {pod_name})\n")),
        "{table}"
    );
    let (code, frames, stderr) = ctl.run(&[
        "top",
        "-n",
        mesh,
        "--interval",
        "300ms",
        "--count",
        "2",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let frames: Vec<Value> = frames
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(
        frames[1][0]["workload"],
        format!("{mesh}/deploy/reviews-v1")
    );
    let (code, _, stderr) = ctl.run(&["stat", "-n", mesh, "svc/reviews"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("kind \"svc\" is not deploy or pod"),
        "{stderr}"
    );

    // The dashboard on the cluster: the pod's sidecar, read through the pod
    // proxy, is the `reviews` service's v1 workload, serving the calls.
    let doc = dashboard_until(&ctl, mesh, &ip, |doc| {
        let node = doc["graph"]["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["service"] == "reviews")?;
        (node["requests_per_second"].as_f64()? > 0.0).then(|| node.clone())
    });
    assert_eq!(
        doc["workloads"],
        json!([{"name": format!("{mesh}/{pod_name}"), "version": "v1",
            "identity": null, "has_certificate": false}]),
        "{doc}"
    );
    assert_eq!(doc["success_percent"], 100.0, "{doc}");

    // A stale config hash: the operator renders a new config (a route and a
    // limit arrive), the sidecar still runs the old one.
    let services: Api<Service> = Api::namespaced(client.clone(), mesh);
    services
        .create(&PostParams::default(), &from_json(json!({
            "metadata": {"name": "echo"}, "spec": {"selector": {"app": "echo"}, "ports": [{"port": 8080}]}})))
        .await
        .unwrap();
    let samples =
        std::fs::read_to_string(repo_root().join("e2e/kind/manifests/mesh.yaml")).unwrap();
    cp.kubectl_with_stdin(["apply", "-n", mesh, "-f", "-"], &samples)
        .await
        .unwrap();
    let stale = expect_failures(
        &ctl,
        system,
        &[(
            "remora-data-plane",
            &format!("{mesh} sidecars"),
            "1 of 1 sidecars do not run the config the operator wrote",
            "delete pod",
        )],
    )
    .await;
    let msg = outcome(&stale, "remora-data-plane", &format!("{mesh} sidecars"))["message"].clone();
    assert!(
        msg.as_str()
            .unwrap()
            .contains(&format!("{pod_name} runs {short}")),
        "{msg}"
    );
    // The sidecar reloads the new document (as its ConfigMap watch would) and
    // reports the new hash: healthy again.
    let (document, new_hash) = rendered(&client, mesh).await;
    assert_ne!(new_hash, hash);
    std::fs::write(&config_file, &document).unwrap();
    expect_healthy(&ctl, system).await;

    // The operator not ready.
    report_available(&deploys, "remora-operator", false).await;
    report_running(
        &Api::namespaced(client.clone(), system),
        "remora-operator-0",
        None,
        false,
    )
    .await;
    expect_failures(
        &ctl,
        system,
        &[
            (
                "remora-operator",
                "deployment",
                "is not available (0/1 replicas)",
                "kubectl -n",
            ),
            (
                "remora-operator",
                "ready",
                "0/1 operator pods Ready",
                "logs deploy/remora-operator",
            ),
        ],
    )
    .await;
    report_available(&deploys, "remora-operator", true).await;
    report_running(
        &Api::namespaced(client.clone(), system),
        "remora-operator-0",
        None,
        true,
    )
    .await;
    expect_healthy(&ctl, system).await;

    // The webhook certificate signed by a CA the caBundle does not hold.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), system);
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let (secret, config_name) = ("remora-webhook-tls", "remora-sidecar-injector");
    let original = secrets.get(secret).await.unwrap().data.unwrap();
    let dns = format!("remora-webhook.{system}.svc");
    let stranger = MeshCa::generate("cluster.local").unwrap();
    let foreign = leaf(&stranger, &dns, Duration::from_secs(365 * 86_400));
    set_serving_cert(&secrets, secret, foreign.as_bytes()).await;
    expect_failures(
        &ctl,
        system,
        &[(
            "remora-webhook",
            "ca-bundle",
            "did not sign the serving certificate",
            "helm upgrade",
        )],
    )
    .await;
    // An expired certificate from the CA the caBundle holds.
    let own = MeshCa::generate("cluster.local").unwrap();
    set_ca_bundle(&configs, config_name, own.cert_pem().as_bytes()).await;
    set_serving_cert(
        &secrets,
        secret,
        leaf(&own, &dns, Duration::from_secs(1)).as_bytes(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    expect_failures(
        &ctl,
        system,
        &[(
            "remora-webhook",
            "certificate-validity",
            "expired",
            "delete the Secret",
        )],
    )
    .await;
    set_serving_cert(&secrets, secret, &original["tls.crt"].0).await;
    set_ca_bundle(&configs, config_name, &original["ca.crt"].0).await;
    expect_healthy(&ctl, system).await;

    // A CRD missing. Last: the operator's watch of it ends with it.
    cp.kubectl_ok([
        "delete",
        "crd",
        "meshcertificates.mesh.remora.dev",
        "--wait",
    ])
    .await
    .unwrap();
    let (code, text, _) = ctl.run(&["check", "-n", system]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("✘ meshcertificates.mesh.remora.dev: CustomResourceDefinition not found\n    fix: kubectl apply --server-side -f charts/remora/crds/"),
        "{text}"
    );
    cp.install_crds(&crds).await.unwrap();

    assert!(
        !operator.is_finished(),
        "the operator stopped: {:?}",
        operator.await
    );
    operator.abort();
    node.check_running().unwrap();
    drop(node);
    helm_on(cp, &["uninstall", RELEASE, "--namespace", system]);
}
