//! Scale run (a benchmark, not a timed test): 1,000 ServiceRoutes across 50
//! namespaces converge on the real API server. Run it with
//!
//!     cargo test -p remora-operator --release --test scale -- --ignored --nocapture
//!
//! It starts the real `remora-operator` binary against the testkit's API
//! server and prints the time to converge, the operator's peak RSS and the
//! number of ConfigMap writes (scraped from its /metrics).

use std::{
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use remora_api::config::SidecarConfig;
use remora_testkit::{ControlPlane, repo_root};

const NAMESPACES: usize = 50;
const ROUTES_PER_NAMESPACE: usize = 20;

fn manifests(ns: &str) -> String {
    let mut out = String::new();
    for i in 0..ROUTES_PER_NAMESPACE {
        out.push_str(&format!(
            r#"---
apiVersion: v1
kind: Service
metadata: {{name: svc-{i}, namespace: {ns}}}
spec:
  clusterIP: None
  selector: {{app: svc-{i}}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: mesh.remora.dev/v1alpha1
kind: ServiceRoute
metadata: {{name: svc-{i}, namespace: {ns}}}
spec:
  service: svc-{i}
  port: 8080
  exportTo: ["."]
  subsets:
    - {{name: v1, labels: {{version: v1}}}}
    - {{name: v2, labels: {{version: v2}}}}
  rules:
    - match: [{{headers: [{{name: x-canary, value: {{exact: "yes"}}}}]}}]
      destinations: [{{subset: v2}}]
    - destinations:
        - {{subset: v1, weight: 95}}
        - {{subset: v2, weight: 5}}
      timeout: 2s
      retries: {{attempts: 2, retryOn: [connect-failure, gateway-error]}}
"#
        ));
    }
    out
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
#[ignore = "scale benchmark; see the module docs for the command"]
async fn thousand_routes_across_fifty_namespaces_converge() {
    let cp = ControlPlane::shared().await;
    cp.install_crds(repo_root().join("crds")).await.unwrap();
    cp.kubectl_with_stdin(
        ["apply", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: remora-system}\n",
    )
    .await
    .unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut operator = Command::new(env!("CARGO_BIN_EXE_remora-operator"))
        .args([
            "--leader-election=false",
            "--log=warn",
            &format!("--http-addr=127.0.0.1:{port}"),
        ])
        .env("KUBECONFIG", cp.kubeconfig_path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    let mut namespaces = Vec::new();
    for _ in 0..NAMESPACES {
        namespaces.push(
            cp.namespace_with_labels("scale", &[("remora.dev/inject", "enabled")])
                .await
                .unwrap(),
        );
    }
    let start = Instant::now();
    for ns in &namespaces {
        let out = cp
            .kubectl_with_stdin(["apply", "-f", "-"], &manifests(ns.name()))
            .await
            .unwrap();
        assert!(out.success(), "{}", out.stderr);
    }
    let applied = start.elapsed();

    // Converged: every namespace's config holds all of its routes.
    let mut pending: Vec<_> = namespaces.iter().collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} namespaces did not converge",
            pending.len()
        );
        let mut still = Vec::new();
        for ns in pending {
            let cms: Api<ConfigMap> = ns.api();
            let done = match cms.get_opt("remora-config").await.unwrap() {
                Some(cm) => {
                    let json = &cm.data.unwrap()["config.json"];
                    SidecarConfig::from_json(json.as_bytes())
                        .unwrap()
                        .routes
                        .len()
                        == ROUTES_PER_NAMESPACE
                }
                None => false,
            };
            if !done {
                still.push(ns);
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let converged = start.elapsed();
    // Let it settle, then read what it wrote.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let metrics = reqwest_get(port).await;
    let writes = metrics
        .lines()
        .find(|l| l.starts_with("remora_operator_config_writes_total"))
        .unwrap_or("?")
        .to_owned();
    let rss = peak_rss_kib(operator.id());
    operator.kill().unwrap();
    let _ = operator.wait();
    println!(
        "scale: {} routes in {NAMESPACES} namespaces; applied in {:.1} s; converged {:.1} s after the first apply; operator peak RSS {} MiB; {writes}",
        NAMESPACES * ROUTES_PER_NAMESPACE,
        applied.as_secs_f64(),
        converged.as_secs_f64(),
        rss / 1024
    );
}

/// A tiny HTTP/1.0 GET, to read /metrics without another client crate.
async fn reqwest_get(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
