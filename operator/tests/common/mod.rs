#![allow(dead_code)]
//! Running the operator in-process against the testkit's API server.

use std::{
    future::Future,
    sync::{Arc, OnceLock},
    time::Duration,
};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, ResourceExt};
use remora_api::config::SidecarConfig;
use remora_operator::{controller::OperatorConfig, metrics::Metrics};
use remora_testkit::{ControlPlane, repo_root};
use serde_json::json;

pub const OPERATOR_NS: &str = "remora-system";

/// One operator per test binary, on a runtime of its own so it outlives
/// each test's runtime.
pub fn operator(cp: &'static ControlPlane) -> Arc<Metrics> {
    static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();
    METRICS
        .get_or_init(|| {
            let metrics = Arc::new(Metrics::default());
            let m = metrics.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
                rt.block_on(async move {
                    let filter = tracing_subscriber::EnvFilter::try_from_env("REMORA_TEST_LOG").unwrap_or_else(|_| "off".into());
                    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
                    let client = cp.client().await.unwrap();
                    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}});
                    let out = cp.kubectl_with_stdin(["apply", "-f", "-"], &ns.to_string()).await.unwrap();
                    assert!(out.success(), "creating {OPERATOR_NS}: {}", out.stderr);
                    if let Err(e) = remora_operator::run(client, OperatorConfig::new(OPERATOR_NS), m).await {
                        eprintln!("the operator stopped: {e}");
                        std::process::exit(1);
                    }
                });
            });
            metrics
        })
        .clone()
}

pub async fn setup() -> &'static ControlPlane {
    let cp = ControlPlane::shared().await;
    cp.install_crds(repo_root().join("crds")).await.unwrap();
    operator(cp);
    cp
}

/// Polls `check` until it returns Some, for up to 30 s.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(Duration::from_secs(30), what, check).await
}

/// Polls `check` every 200 ms until it returns Some, for up to `limit`.
pub async fn eventually_within<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

pub async fn apply(cp: &ControlPlane, ns: &str, yaml: &str) {
    let out = cp
        .kubectl_with_stdin(["apply", "-n", ns, "-f", "-"], yaml)
        .await
        .unwrap();
    assert!(
        out.success(),
        "kubectl apply failed: {}\n{yaml}",
        out.stderr
    );
}

pub async fn sidecar_config(api: &Api<ConfigMap>) -> Option<(SidecarConfig, String)> {
    let cm = api.get_opt("remora-config").await.ok()??;
    let json = cm.data.as_ref()?.get("config.json")?;
    let config =
        SidecarConfig::from_json(json.as_bytes()).expect("the operator writes valid configs");
    Some((config, cm.resource_version().unwrap_or_default()))
}
