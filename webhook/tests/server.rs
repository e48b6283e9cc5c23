//! The HTTPS server without a cluster: AdmissionReviews (well-formed and not), health and
//! metrics endpoints, and a certificate rotated on disk being served without a restart.

use std::sync::Arc;

use remora_testkit::webhook_serving_cert;
use remora_webhook::server::{router, serve_tls};
use remora_webhook::{
    AdmissionResult, Catalog, Metrics, Mutator, ReloadingCert, Settings, SkipReason,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

fn mutator(namespaces: &[(&str, &str)]) -> Mutator {
    let namespaces = namespaces
        .iter()
        .map(|(name, inject)| {
            (
                name.to_string(),
                [("remora.dev/inject".to_owned(), inject.to_string())].into(),
            )
        })
        .collect();
    Mutator::new(
        Catalog::fixed(Vec::new(), namespaces),
        Settings::default(),
        Arc::new(Metrics::new()),
    )
}

fn review(namespace: &str, pod: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "7f3a1c2e-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "test"},
            "object": pod,
            "dryRun": false,
        }
    })
}

async fn answer(m: &Mutator, body: &Value) -> Value {
    serde_json::to_value(m.review(body.to_string().as_bytes()).await).unwrap()
}

fn app_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app"},
           "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}})
}

#[tokio::test]
async fn injects_with_a_json_patch_that_applies() {
    let m = mutator(&[("shop", "enabled")]);
    let out = answer(&m, &review("shop", app_pod())).await;
    let response = &out["response"];
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(response["uid"], "7f3a1c2e-0000-4000-8000-000000000001");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    // kube-core writes the patch bytes as a JSON array, which the API server's Go
    // decoder accepts for []byte as it does base64 (the apiserver tests prove it).
    let bytes: Vec<u8> = serde_json::from_value(response["patch"].clone()).unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut pod = app_pod();
    json_patch::patch(&mut pod, &patch.0).unwrap();
    assert_eq!(pod["spec"]["initContainers"][1]["name"], "remora-proxy");
    assert_eq!(
        pod["metadata"]["annotations"]["remora.dev/inject-status"],
        "injected"
    );
    assert_eq!(m.metrics().admissions(AdmissionResult::Injected), 1);

    // The injected pod comes back (reinvocation): allowed, no patch.
    let again = answer(&m, &review("shop", pod)).await;
    assert_eq!(again["response"]["allowed"], true);
    assert!(again["response"].get("patch").is_none());
    assert_eq!(
        m.metrics()
            .admissions(AdmissionResult::Skipped(SkipReason::AlreadyInjected)),
        1
    );
}

#[tokio::test]
async fn namespaces_not_enabled_get_no_patch() {
    let m = mutator(&[("plain", "whatever")]);
    for ns in ["plain", "unknown-namespace", "kube-system", "remora-system"] {
        let out = answer(&m, &review(ns, app_pod())).await;
        assert_eq!(out["response"]["allowed"], true, "{ns}");
        assert!(out["response"].get("patch").is_none(), "{ns}");
    }
}

#[tokio::test]
async fn templates_come_from_the_pod_mesh_and_annotated_namespaces() {
    let template = |ns: &str, name: &str, spec: Value| -> remora_api::crd::SidecarTemplate {
        serde_json::from_value(json!({
            "apiVersion": "mesh.remora.dev/v1alpha1", "kind": "SidecarTemplate",
            "metadata": {"name": name, "namespace": ns, "generation": 7}, "spec": spec,
        }))
        .unwrap()
    };
    let enabled = |ns: &str| {
        (
            ns.to_owned(),
            [("remora.dev/inject".to_owned(), "enabled".to_owned())].into(),
        )
    };
    let m = Mutator::new(
        Catalog::fixed(
            vec![
                template(
                    "remora-system",
                    "mesh",
                    json!({"default": true, "image": "mesh-default"}),
                ),
                template("shared", "special", json!({"image": "shared-special"})),
                template(
                    "shop",
                    "web",
                    json!({"image": "shop-web", "podSelector": {"app": "web"}}),
                ),
            ],
            vec![enabled("shop"), enabled("plain")],
        ),
        Settings::default(),
        Arc::new(Metrics::new()),
    );
    let image = |out: &Value, sent: &Value| {
        let patch: Vec<u8> = serde_json::from_value(out["response"]["patch"].clone()).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        let mut pod = sent.clone();
        json_patch::patch(&mut pod, &patch.0).unwrap();
        (
            pod["spec"]["initContainers"][1]["image"]
                .as_str()
                .unwrap()
                .to_owned(),
            pod["metadata"]["annotations"]["remora.dev/injected"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    };
    let out = answer(&m, &review("plain", app_pod())).await;
    assert_eq!(
        image(&out, &app_pod()),
        ("mesh-default".into(), "remora-system/mesh@7".into())
    );
    let mut web = app_pod();
    web["metadata"]["labels"] = json!({"app": "web"});
    let out = answer(&m, &review("shop", web.clone())).await;
    assert_eq!(image(&out, &web).0, "shop-web");
    let mut special = app_pod();
    special["metadata"]["annotations"] = json!({"remora.dev/template": "shared/special"});
    let out = answer(&m, &review("shop", special.clone())).await;
    assert_eq!(
        image(&out, &special),
        ("shared-special".into(), "shared/special@7".into())
    );
}

#[tokio::test]
async fn unknown_template_is_allowed_with_a_warning() {
    let m = mutator(&[("shop", "enabled")]);
    let mut pod = app_pod();
    pod["metadata"]["annotations"] = json!({"remora.dev/template": "nope"});
    let out = answer(&m, &review("shop", pod)).await;
    let response = &out["response"];
    assert_eq!(response["allowed"], true);
    let warning = response["warnings"][0].as_str().unwrap();
    assert!(warning.contains("SidecarTemplate shop/nope"), "{warning}");
    assert_eq!(
        m.metrics()
            .admissions(AdmissionResult::Skipped(SkipReason::TemplateNotFound)),
        1
    );
}

#[tokio::test]
async fn malformed_reviews_are_allowed_with_a_warning() {
    let m = mutator(&[("shop", "enabled")]);
    // A uid we can find is echoed; the pod does not parse (containers is not a list).
    let bad_pod = json!({"metadata": {"name": "x"}, "spec": {"containers": "nope"}});
    let out = answer(&m, &review("shop", bad_pod)).await;
    assert_eq!(
        out["response"]["uid"],
        "7f3a1c2e-0000-4000-8000-000000000001"
    );
    assert_eq!(out["response"]["allowed"], true);
    assert!(out["response"].get("patch").is_none());
    assert!(
        out["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("cannot read")
    );

    let garbage = m.review(b"{not json").await;
    let garbage = serde_json::to_value(garbage).unwrap();
    assert_eq!(garbage["response"]["allowed"], true);
    assert_eq!(m.metrics().admissions(AdmissionResult::Malformed), 2);

    // Not a CREATE: allowed untouched.
    let mut update = review("shop", app_pod());
    update["request"]["operation"] = json!("UPDATE");
    let out = answer(&m, &update).await;
    assert!(out["response"].get("patch").is_none());
    assert_eq!(m.metrics().admissions(AdmissionResult::Ignored), 1);
}

/// One HTTP/1.1 request over TLS; returns the peer certificate and the response text.
async fn https(port: u16, ca_pem: &str, request: &str) -> (CertificateDer<'static>, String) {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let peer = tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.unwrap();
    (peer, out)
}

#[tokio::test]
async fn serves_health_metrics_and_a_rotated_certificate() {
    let first = webhook_serving_cert().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, &first.cert_pem).unwrap();
    std::fs::write(&key_path, &first.key_pem).unwrap();
    let cert = ReloadingCert::load(&cert_path, &key_path).unwrap();
    let m = mutator(&[("shop", "enabled")]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve_tls(
        listener,
        Arc::new(cert.clone().server_config()),
        router(m.clone()),
        std::future::pending(),
    ));

    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let (_, health) = https(port, &first.ca_pem, &get("/healthz")).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let (_, ready) = https(port, &first.ca_pem, &get("/readyz")).await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    let body = review("shop", app_pod()).to_string();
    let post = format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (served, reply) = https(port, &first.ca_pem, &post).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"patchType\":\"JSONPatch\""), "{reply}");

    let (_, metrics) = https(port, &first.ca_pem, &get("/metrics")).await;
    assert!(
        metrics.contains("remora_webhook_admissions_total{result=\"injected\",reason=\"\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("remora_webhook_admission_duration_seconds_count 1"),
        "{metrics}"
    );

    // Rotate: a new key and certificate from a new CA. A half-written pair is refused and
    // the old certificate keeps serving.
    let second = webhook_serving_cert().unwrap();
    std::fs::write(&cert_path, &second.cert_pem).unwrap();
    assert!(cert.reload().is_err());
    let (still, _) = https(port, &first.ca_pem, &get("/healthz")).await;
    assert_eq!(still, served);
    std::fs::write(&key_path, &second.key_pem).unwrap();
    assert!(cert.reload().unwrap());
    assert!(!cert.reload().unwrap(), "unchanged files are not reloaded");
    let (rotated, health) = https(port, &second.ca_pem, &get("/healthz")).await;
    assert_ne!(rotated, served);
    assert!(health.starts_with("HTTP/1.1 200"));
}
