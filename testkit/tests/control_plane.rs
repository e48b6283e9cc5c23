//! The testkit against the real kube-apiserver it starts.

use std::path::Path;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use remora_testkit::{ControlPlane, pod, require_control_plane};

/// Server URLs seen by the tests of this binary; they must all be the same.
static SEEN_SERVERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn fixture_crds() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/crds"))
}

#[tokio::test]
async fn creates_a_pod_in_a_fresh_namespace_and_reads_it_back() {
    require_control_plane!();
    let cp = ControlPlane::shared().await;
    let ns = cp.namespace("pods").await.unwrap();

    let mut app = pod("app", "registry.invalid/app:1");
    app.metadata.labels = Some([("app".to_string(), "demo".to_string())].into());
    let created = cp.create_pod(ns.name(), &app).await.unwrap();
    assert_eq!(created.metadata.namespace.as_deref(), Some(ns.name()));
    assert!(
        created.metadata.uid.is_some(),
        "the API server assigns a uid"
    );

    let read: Pod = ns.api::<Pod>().get("app").await.unwrap();
    assert_eq!(read.metadata.uid, created.metadata.uid);
    assert_eq!(
        read.metadata.labels.unwrap().get("app").map(String::as_str),
        Some("demo")
    );
    let spec = read.spec.unwrap();
    assert_eq!(spec.containers.len(), 1);
    assert_eq!(spec.containers[0].name, "app");
    assert_eq!(
        spec.containers[0].image.as_deref(),
        Some("registry.invalid/app:1")
    );
    // Defaulting ran on the server: these are not in the pod we sent.
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        spec.containers[0].termination_message_path.as_deref(),
        Some("/dev/termination-log")
    );
    // No scheduler: the pod stays Pending with no node.
    assert_eq!(spec.node_name, None);
    assert_eq!(read.status.unwrap().phase.as_deref(), Some("Pending"));

    // And kubectl sees the same object through the exposed kubeconfig.
    let out = cp
        .kubectl_ok([
            "get",
            "pod",
            "app",
            "-n",
            ns.name(),
            "-o",
            "jsonpath={.spec.containers[0].image}",
        ])
        .await
        .unwrap();
    assert_eq!(out, "registry.invalid/app:1");
    record_server(cp);
}

#[tokio::test]
async fn tests_share_one_control_plane_with_separate_namespaces() {
    require_control_plane!();
    let cp = ControlPlane::shared().await;
    let again = ControlPlane::shared().await;
    assert!(std::ptr::eq(cp, again));
    assert!(cp.server_url().starts_with("https://127.0.0.1:"));

    let a = cp
        .namespace_with_labels("shared", &[("remora.dev/test", "a")])
        .await
        .unwrap();
    let b = cp.namespace("shared").await.unwrap();
    assert_ne!(a.name(), b.name());
    assert!(a.name().starts_with("shared-") && b.name().starts_with("shared-"));

    let namespaces: Api<Namespace> = Api::all(cp.client().await.unwrap());
    let stored_a = namespaces.get(a.name()).await.unwrap();
    assert_eq!(
        stored_a
            .metadata
            .labels
            .unwrap()
            .get("remora.dev/test")
            .map(String::as_str),
        Some("a")
    );
    namespaces.get(b.name()).await.unwrap();

    // A pod in one namespace is invisible from the other.
    cp.create_pod(a.name(), &pod("only-in-a", "registry.invalid/app:1"))
        .await
        .unwrap();
    let in_b = b.api::<Pod>().list(&Default::default()).await.unwrap();
    assert!(in_b.items.is_empty());
    record_server(cp);
}

#[tokio::test]
async fn applied_crd_becomes_established_and_serves_custom_resources() {
    require_control_plane!();
    let cp = ControlPlane::shared().await;
    let names = cp.install_crds(fixture_crds()).await.unwrap();
    assert_eq!(names, ["widgets.testkit.remora.dev"]);

    // Installing again is a no-op that still succeeds (server-side apply).
    cp.install_crds(fixture_crds()).await.unwrap();

    let ns = cp.namespace("crds").await.unwrap();
    let widget = "apiVersion: testkit.remora.dev/v1alpha1\n\
                  kind: Widget\n\
                  metadata:\n  name: small\n\
                  spec:\n  size: 3\n";
    let applied = cp
        .kubectl_with_stdin(["apply", "-n", ns.name(), "-f", "-"], widget)
        .await
        .unwrap();
    assert!(applied.success(), "{}", applied.stderr);
    let size = cp
        .kubectl_ok([
            "get",
            "wdg",
            "small",
            "-n",
            ns.name(),
            "-o",
            "jsonpath={.spec.size}",
        ])
        .await
        .unwrap();
    assert_eq!(size, "3");

    // The schema is enforced by the API server.
    let too_big = widget.replace("size: 3", "size: 11");
    let refused = cp
        .kubectl_with_stdin(["apply", "-n", ns.name(), "-f", "-"], &too_big)
        .await
        .unwrap();
    assert!(!refused.success());
    assert!(
        refused.stderr.contains("spec.size") && refused.stderr.contains("10"),
        "unexpected error: {}",
        refused.stderr
    );
    record_server(cp);
}

#[tokio::test]
async fn install_crds_reports_a_directory_without_crds() {
    require_control_plane!();
    let cp = ControlPlane::shared().await;
    let dir = cp.dir().join("no-crds");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("configmap.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: not-a-crd\n  namespace: default\n",
    )
    .unwrap();
    let err = cp.install_crds(&dir).await.unwrap_err();
    assert!(matches!(err, remora_testkit::Error::NoCrds { .. }), "{err}");
    record_server(cp);
}

fn record_server(cp: &ControlPlane) {
    let mut seen = SEEN_SERVERS.lock().unwrap();
    seen.push(cp.server_url().to_string());
    seen.dedup();
    assert_eq!(
        seen.len(),
        1,
        "tests saw different control planes: {seen:?}"
    );
}
