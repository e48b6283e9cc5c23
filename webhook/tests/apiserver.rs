//! The webhook in-process on 127.0.0.1, registered with a real kube-apiserver through
//! `mutating_webhook_configuration`: pods created through the API server come back
//! injected, and the API server accepts every patch.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use remora_api::crd::SidecarTemplate;
use remora_testkit::{
    ControlPlane, TestNamespace, pod, repo_root, require_control_plane, webhook_serving_cert,
};
use remora_webhook::server::{router, serve_tls};
use remora_webhook::{
    AdmissionResult, Catalog, FailurePolicy, Metrics, Mutator, ReloadingCert, Settings,
    WebhookConfigurationOptions, WebhookEndpoint, mutating_webhook_configuration,
};
use serde::Deserialize;

const RUN_LABEL: &str = "webhook-test.remora.dev/run";
const BUILTIN_IMAGE: &str = "registry.example/remora-sidecar:builtin";

struct Running {
    mutator: Mutator,
    _dir: tempfile::TempDir,
}

/// Starts the webhook and registers it for namespaces labelled `RUN_LABEL=run`.
async fn start_webhook(cp: &ControlPlane, run: &str) -> Running {
    start_webhook_in(cp, run, Settings::default().inject.mtls).await
}

/// [`start_webhook`] for a mesh whose inbound mTLS is `mtls`.
async fn start_webhook_in(
    cp: &ControlPlane,
    run: &str,
    mtls: remora_api::config::TlsMode,
) -> Running {
    cp.install_crds(repo_root().join("crds")).await.unwrap();
    let client = cp.client().await.unwrap();
    let tls = webhook_serving_cert().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), &tls.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &tls.key_pem).unwrap();
    let cert = ReloadingCert::load(dir.path().join("tls.crt"), dir.path().join("tls.key")).unwrap();

    let mut settings = Settings {
        default_image: BUILTIN_IMAGE.into(),
        ..Settings::default()
    };
    settings.inject.mtls = mtls;
    let mutator = Mutator::new(
        Catalog::watch(client.clone()),
        settings,
        Arc::new(Metrics::new()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/mutate", listener.local_addr().unwrap());
    tokio::spawn(serve_tls(
        listener,
        Arc::new(cert.server_config()),
        router(mutator.clone()),
        std::future::pending(),
    ));

    let mut options = WebhookConfigurationOptions::new(WebhookEndpoint::Url(url), tls.ca_pem);
    options.name = format!("remora-test-{run}");
    // Fail, so that a patch the API server refused would fail the test loudly.
    options.failure_policy = FailurePolicy::Fail;
    options.namespace_labels = [(RUN_LABEL.to_owned(), run.to_owned())].into();
    let configuration = mutating_webhook_configuration(&options);
    Api::<MutatingWebhookConfiguration>::all(client)
        .patch(
            &options.name,
            &PatchParams::apply("remora-webhook-test").force(),
            &Patch::Apply(configuration),
        )
        .await
        .unwrap();

    // The API server picks the configuration up from a watch.
    let probe_ns = namespace(cp, run, "probe").await;
    wait_for(
        || async {
            let dry = cp
                .create_pod_dry_run(probe_ns.name(), &pod("probe", "registry.example/app:1"))
                .await
                .unwrap();
            has_sidecar(&dry)
        },
        "the webhook to be called",
    )
    .await;
    Running { mutator, _dir: dir }
}

async fn namespace(cp: &ControlPlane, run: &str, prefix: &str) -> TestNamespace {
    cp.namespace_with_labels(
        prefix,
        &[(RUN_LABEL, run), ("remora.dev/inject", "enabled")],
    )
    .await
    .unwrap()
}

async fn wait_for<F, Fut>(mut check: F, what: &str)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn has_sidecar(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref().unwrap();
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == "remora-proxy")
}

fn proxy_image(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == "remora-proxy")?
        .image
        .clone()
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Every golden input, created through the API server in its own enabled namespace (with
/// its SidecarTemplates): stored as the golden file says — injected or not, with the same
/// containers and status annotation.
#[tokio::test]
async fn golden_pods_are_injected_and_accepted_by_the_api_server() {
    require_control_plane!();
    let cp = ControlPlane::shared().await;
    let webhook = start_webhook(cp, "golden").await;
    // Inputs marked so (the explicit-mode cases) are injected in a mesh with mTLS off.
    let plain = start_webhook_in(cp, "golden-plain", remora_api::config::TlsMode::Disabled).await;
    let inputs = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/inputs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&inputs).unwrap() {
        let path = entry.unwrap().path();
        let case = path.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut docs = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde_json::Value::deserialize(d).unwrap());
        let mut input: Pod = serde_json::from_value(docs.next().unwrap()).unwrap();
        let mtls_off = text.lines().any(|l| l.trim() == "# Mesh mTLS: disabled");
        let (webhook, run) = if mtls_off {
            (&plain, "golden-plain")
        } else {
            (&webhook, "golden")
        };
        let ns = namespace(cp, run, &case).await;
        input.metadata.namespace = None;
        for doc in docs {
            let mut template: SidecarTemplate = serde_json::from_value(doc).unwrap();
            template.metadata.namespace = None;
            template.metadata.generation = None;
            let name = template.metadata.name.clone().unwrap();
            ns.api::<SidecarTemplate>()
                .create(&PostParams::default(), &template)
                .await
                .unwrap();
            wait_for(
                || async {
                    webhook
                        .mutator
                        .catalog()
                        .templates_in(&[ns.name()])
                        .iter()
                        .any(|t| t.metadata.name.as_deref() == Some(name.as_str()))
                },
                "the template to reach the reflector",
            )
            .await;
        }

        let stored = cp
            .create_pod(ns.name(), &input)
            .await
            .unwrap_or_else(|e| panic!("{case}: the API server refused the pod: {e}"));

        let golden_text =
            std::fs::read_to_string(inputs.parent().unwrap().join(format!("{case}.yaml"))).unwrap();
        let golden: Pod = serde_yaml::from_str(&golden_text).unwrap();
        assert_eq!(has_sidecar(&stored), has_sidecar(&golden), "{case}");
        assert_eq!(
            annotation(&stored, "remora.dev/inject-status"),
            annotation(&golden, "remora.dev/inject-status"),
            "{case}"
        );
        let names = |p: &Pod| {
            let spec = p.spec.as_ref().unwrap();
            let init: Vec<String> = spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| c.name.clone())
                .collect();
            let main: Vec<String> = spec.containers.iter().map(|c| c.name.clone()).collect();
            let volumes: Vec<String> = spec
                .volumes
                .iter()
                .flatten()
                .map(|v| v.name.clone())
                .collect();
            (init, main, volumes)
        };
        let (init, main, mut volumes) = names(&stored);
        let (golden_init, golden_main, golden_volumes) = names(&golden);
        assert_eq!((init, main), (golden_init, golden_main), "{case}");
        // The API server adds the service account token volume.
        volumes.retain(|v| !v.starts_with("kube-api-access-"));
        assert_eq!(volumes, golden_volumes, "{case}");
        if has_sidecar(&golden) {
            assert_eq!(proxy_image(&stored), proxy_image(&golden), "{case}");
            let template = annotation(&stored, "remora.dev/injected").unwrap();
            let expected = annotation(&golden, "remora.dev/injected").unwrap();
            // The API server numbers generations and the namespace is the test's own.
            match expected.split_once('/') {
                None => assert_eq!(template, expected, "{case}"),
                Some((_, name_generation)) => {
                    let name = name_generation.split('@').next().unwrap();
                    assert_eq!(template, format!("{}/{name}@1", ns.name()), "{case}");
                }
            }
        }
        checked += 1;
    }
    assert!(checked >= 10);
    let injected = |w: &Running| w.mutator.metrics().admissions(AdmissionResult::Injected);
    assert!(injected(&webhook) + injected(&plain) >= 8);
}

#[tokio::test]
async fn namespaces_without_the_label_and_opted_out_pods_are_untouched() {
    require_control_plane!();
    let cp = ControlPlane::shared().await;
    let webhook = start_webhook(cp, "untouched").await;
    let plain = cp
        .namespace_with_labels("plain", &[(RUN_LABEL, "untouched")])
        .await
        .unwrap();
    let app = pod("app", "registry.example/app:1");
    let stored = cp.create_pod(plain.name(), &app).await.unwrap();
    assert!(!has_sidecar(&stored));
    // Pods that never asked are left exactly as they were: no status annotation.
    assert_eq!(annotation(&stored, "remora.dev/inject-status"), None);

    // ...but a pod can opt in by itself.
    let mut opted_in = pod("opted-in", "registry.example/app:1");
    opted_in.metadata.annotations =
        Some([("remora.dev/inject".to_owned(), "enabled".to_owned())].into());
    let stored = cp.create_pod(plain.name(), &opted_in).await.unwrap();
    assert!(has_sidecar(&stored));
    assert_eq!(proxy_image(&stored).as_deref(), Some(BUILTIN_IMAGE));

    // A pod labelled disabled in an enabled namespace is told why.
    let enabled = namespace(cp, "untouched", "enabled").await;
    let before = webhook
        .mutator
        .metrics()
        .admissions(AdmissionResult::Skipped(
            remora_webhook::SkipReason::PodDisabled,
        ));
    let mut out = pod("out", "registry.example/app:1");
    out.metadata.labels = Some([("remora.dev/inject".to_owned(), "disabled".to_owned())].into());
    let stored = cp.create_pod(enabled.name(), &out).await.unwrap();
    assert!(!has_sidecar(&stored));
    assert_eq!(
        annotation(&stored, "remora.dev/inject-status"),
        Some("skipped: pod-disabled")
    );
    assert_eq!(
        webhook
            .mutator
            .metrics()
            .admissions(AdmissionResult::Skipped(
                remora_webhook::SkipReason::PodDisabled
            )),
        before + 1
    );

    // A namespace labelled disabled is excluded by the namespaceSelector.
    let disabled = cp
        .namespace_with_labels(
            "disabled",
            &[(RUN_LABEL, "untouched"), ("remora.dev/inject", "disabled")],
        )
        .await
        .unwrap();
    let stored = cp.create_pod(disabled.name(), &opted_in).await.unwrap();
    assert!(!has_sidecar(&stored));
    assert_eq!(annotation(&stored, "remora.dev/inject-status"), None);
}

#[tokio::test]
async fn a_new_sidecar_template_changes_the_injected_image() {
    require_control_plane!();
    let cp = ControlPlane::shared().await;
    let webhook = start_webhook(cp, "template").await;
    let ns = namespace(cp, "template", "tmpl").await;
    let app = pod("app", "registry.example/app:1");
    let first = cp.create_pod_dry_run(ns.name(), &app).await.unwrap();
    assert_eq!(proxy_image(&first).as_deref(), Some(BUILTIN_IMAGE));

    let template: SidecarTemplate = serde_json::from_value(serde_json::json!({
        "apiVersion": "mesh.remora.dev/v1alpha1",
        "kind": "SidecarTemplate",
        "metadata": {"name": "default"},
        "spec": {"default": true, "image": "registry.example/remora-sidecar:from-template"},
    }))
    .unwrap();
    ns.api::<SidecarTemplate>()
        .create(&PostParams::default(), &template)
        .await
        .unwrap();
    // Through the reflector: no restart, no API call on the request path.
    wait_for(
        || async {
            let dry = cp.create_pod_dry_run(ns.name(), &app).await.unwrap();
            proxy_image(&dry).as_deref() == Some("registry.example/remora-sidecar:from-template")
        },
        "the template to be used",
    )
    .await;
    let stored = cp.create_pod(ns.name(), &app).await.unwrap();
    assert_eq!(
        annotation(&stored, "remora.dev/injected"),
        Some(format!("{}/default@1", ns.name()).as_str())
    );
    assert!(webhook.mutator.catalog().is_ready());
}
