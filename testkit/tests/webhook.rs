//! A mutating webhook on 127.0.0.1, registered with the test API server, is really called.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Pod;
use remora_testkit::{
    ControlPlane, FailurePolicy, WebhookRegistration, WebhookTls, pod, require_control_plane,
    webhook_serving_cert,
};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

const MUTATED: &str = "testkit.remora.dev/mutated";

#[tokio::test]
async fn registered_webhook_mutates_pods_in_selected_namespaces_only() {
    require_control_plane!();
    let cp = ControlPlane::shared().await;
    let tls = webhook_serving_cert().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let url = serve_annotating_webhook(&tls, calls.clone()).await;

    let label = [("testkit.remora.dev/webhook", "annotate")];
    let selected = cp
        .namespace_with_labels("webhook-on", &label)
        .await
        .unwrap();
    let other = cp.namespace("webhook-off").await.unwrap();
    let registration = WebhookRegistration::new("testkit-annotate", &url, &tls.ca_pem)
        .namespace_labels(&label)
        .failure_policy(FailurePolicy::Fail)
        .timeout_seconds(5);
    let stored = cp.register_mutating_webhook(&registration).await.unwrap();
    let webhook = &stored.webhooks.unwrap()[0];
    assert_eq!(webhook.client_config.url.as_deref(), Some(url.as_str()));
    assert_eq!(webhook.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(webhook.side_effects, "None");

    // The API server learns of new webhook configurations from a watch: wait for it.
    let app = pod("app", "registry.invalid/app:1");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let dry = cp.create_pod_dry_run(selected.name(), &app).await.unwrap();
        if annotation(&dry).is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "webhook never called");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let created = cp.create_pod(selected.name(), &app).await.unwrap();
    assert_eq!(annotation(&created).as_deref(), Some(selected.name()));
    let untouched = cp.create_pod(other.name(), &app).await.unwrap();
    assert_eq!(annotation(&untouched), None);
    assert!(calls.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn unreachable_webhook_with_fail_policy_refuses_pods() {
    require_control_plane!();
    let cp = ControlPlane::shared().await;
    let tls = webhook_serving_cert().unwrap();
    let closed_port = {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("https://127.0.0.1:{closed_port}/mutate");
    let label = [("testkit.remora.dev/webhook", "unreachable")];
    let ns = cp
        .namespace_with_labels("webhook-down", &label)
        .await
        .unwrap();
    let registration = WebhookRegistration::new("testkit-unreachable", &url, &tls.ca_pem)
        .namespace_labels(&label)
        .failure_policy(FailurePolicy::Fail)
        .timeout_seconds(2);
    cp.register_mutating_webhook(&registration).await.unwrap();

    let app = pod("app", "registry.invalid/app:1");
    let deadline = Instant::now() + Duration::from_secs(20);
    let message = loop {
        match cp.create_pod_dry_run(ns.name(), &app).await {
            Err(e) => break e.to_string(),
            Ok(_) => assert!(Instant::now() < deadline, "the webhook was never called"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(message.contains("failed calling webhook"), "{message}");
    assert!(message.contains(&url), "{message}");
}

fn annotation(pod: &Pod) -> Option<String> {
    pod.metadata.annotations.as_ref()?.get(MUTATED).cloned()
}

/// An HTTPS AdmissionReview endpoint that adds the annotation `MUTATED: <namespace>` to
/// every pod. Returns its URL.
async fn serve_annotating_webhook(tls: &WebhookTls, calls: Arc<AtomicUsize>) -> String {
    let certs = vec![CertificateDer::from_pem_slice(tls.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let url = format!("https://{}/mutate", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(tcp).await {
                    let _ = answer_reviews(stream, &calls).await;
                }
            });
        }
    });
    url
}

/// HTTP/1.1 keep-alive, one AdmissionReview per request (no ALPN h2 is offered).
async fn answer_reviews<S>(stream: S, calls: &AtomicUsize) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut stream = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut content_length = 0;
        loop {
            line.clear();
            stream.read_line(&mut line).await?;
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; content_length];
        stream.read_exact(&mut body).await?;
        calls.fetch_add(1, Ordering::SeqCst);

        let review: serde_json::Value = serde_json::from_slice(&body)?;
        let request = &review["request"];
        let patch = json!([{
            "op": "add",
            "path": "/metadata/annotations",
            "value": { MUTATED: request["namespace"] },
        }]);
        let response = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": request["uid"],
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": ByteString(patch.to_string().into_bytes()),
            },
        })
        .to_string();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            response.len()
        );
        stream.get_mut().write_all(head.as_bytes()).await?;
        stream.get_mut().write_all(response.as_bytes()).await?;
        stream.get_mut().flush().await?;
    }
}
