//! Remora's own CRDs on the real API server: they install through kubectl,
//! are Established and structural, accept every example, and refuse what
//! their CEL rules forbid with the rule's message.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use remora_testkit::{ControlPlane, repo_root, require_control_plane};

async fn installed() -> &'static ControlPlane {
    let cp = ControlPlane::shared().await;
    cp.install_crds(repo_root().join("crds"))
        .await
        .expect("crds/ installs");
    cp
}

#[tokio::test]
async fn crds_are_established_and_structural() {
    require_control_plane!();
    let cp = installed().await;
    let crds: Api<CustomResourceDefinition> = Api::all(cp.client().await.unwrap());
    for name in [
        "sidecartemplates.mesh.remora.dev",
        "serviceroutes.mesh.remora.dev",
        "ratelimitpolicies.mesh.remora.dev",
        "meshcertificates.mesh.remora.dev",
    ] {
        let crd = crds.get(name).await.unwrap();
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        let status = |t: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| c.status.clone())
        };
        assert_eq!(
            status("Established").as_deref(),
            Some("True"),
            "{name}: {conditions:?}"
        );
        assert_eq!(
            status("NonStructuralSchema"),
            None,
            "{name}: {conditions:?}"
        );
    }
    // The category works: `kubectl get remora` lists every kind.
    let ns = cp.namespace("category").await.unwrap();
    // Discovery of new kinds lags Established by a moment; allow it 10 s.
    let mut out = cp
        .kubectl(["get", "remora", "-n", ns.name()])
        .await
        .unwrap();
    for _ in 0..20 {
        if out.success() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        out = cp
            .kubectl(["get", "remora", "-n", ns.name()])
            .await
            .unwrap();
    }
    assert!(out.success(), "kubectl get remora: {}", out.stderr);
}

#[tokio::test]
async fn every_example_is_accepted_and_defaulted() {
    require_control_plane!();
    let cp = installed().await;
    let ns = cp.namespace("examples").await.unwrap();
    let examples = repo_root().join("examples");
    for file in [
        "sidecar-template.yaml",
        "reviews-canary.yaml",
        "rate-limit.yaml",
        "mesh-certificate.yaml",
    ] {
        let manifest = std::fs::read_to_string(examples.join(file)).unwrap();
        // Place the example in this test's namespace.
        let manifest =
            manifest.replace("namespace: bookinfo", &format!("namespace: {}", ns.name()));
        let out = cp
            .kubectl_with_stdin(["apply", "-f", "-"], &manifest)
            .await
            .unwrap();
        assert!(out.success(), "{file} refused: {}", out.stderr);
    }
    // Server-side defaulting from the schema: fields left out come back filled in.
    let out = cp
        .kubectl_ok([
            "get",
            "serviceroute",
            "reviews",
            "-n",
            ns.name(),
            "-o",
            "jsonpath={.spec.exportTo}",
        ])
        .await
        .unwrap();
    assert_eq!(out.trim(), r#"["*"]"#);
    let out = cp
        .kubectl_ok([
            "get",
            "sct",
            "default",
            "-n",
            ns.name(),
            "-o",
            "jsonpath={.spec.proxyUid}",
        ])
        .await
        .unwrap();
    assert_eq!(out.trim(), "1337");
    // Printer columns and short names work.
    let out = cp.kubectl_ok(["get", "sr", "-n", ns.name()]).await.unwrap();
    assert!(
        out.contains("SERVICE") && out.contains("reviews") && out.contains("9080"),
        "{out}"
    );
    let out = cp
        .kubectl_ok(["get", "mcert", "-n", ns.name()])
        .await
        .unwrap();
    assert!(
        out.contains("SERVICEACCOUNT") && out.contains("reviews"),
        "{out}"
    );
}

/// Applies a manifest that must be refused, returning kubectl's error.
async fn refused(cp: &ControlPlane, ns: &str, manifest: &str) -> String {
    let manifest = manifest.replace("NAMESPACE", ns);
    let out = cp
        .kubectl_with_stdin(["apply", "-f", "-"], &manifest)
        .await
        .unwrap();
    assert!(
        !out.success(),
        "accepted, but it breaks a rule:\n{manifest}"
    );
    out.stderr
}

#[tokio::test]
async fn cel_rules_refuse_invalid_resources_with_their_messages() {
    require_control_plane!();
    let cp = installed().await;
    let ns = cp.namespace("cel").await.unwrap();
    let ns = ns.name();

    let err = refused(
        cp,
        ns,
        r#"
apiVersion: mesh.remora.dev/v1alpha1
kind: ServiceRoute
metadata: {name: bad-weights, namespace: NAMESPACE}
spec:
  service: reviews
  port: 9080
  rules:
    - destinations:
        - {service: reviews, weight: 90}
        - {service: ratings, weight: 5}
"#,
    )
    .await;
    assert!(err.contains("destination weights must sum to 100"), "{err}");

    let err = refused(
        cp,
        ns,
        r#"
apiVersion: mesh.remora.dev/v1alpha1
kind: ServiceRoute
metadata: {name: both, namespace: NAMESPACE}
spec:
  service: reviews
  port: 9080
  rules:
    - destinations: [{}]
      directResponse: {status: 404}
"#,
    )
    .await;
    assert!(
        err.contains("a rule needs exactly one of destinations or directResponse"),
        "{err}"
    );

    let err = refused(
        cp,
        ns,
        r#"
apiVersion: mesh.remora.dev/v1alpha1
kind: ServiceRoute
metadata: {name: ranges, namespace: NAMESPACE}
spec:
  service: reviews
  port: 70000
  rules:
    - timeout: 2 seconds
      destinations: [{}]
      fault: {abort: {percentage: 101, httpStatus: 503}}
"#,
    )
    .await;
    assert!(err.contains("spec.port"), "{err}");
    assert!(err.contains("spec.rules[0].timeout"), "{err}");
    assert!(
        err.contains("spec.rules[0].fault.abort.percentage"),
        "{err}"
    );

    let err = refused(
        cp,
        ns,
        r#"
apiVersion: mesh.remora.dev/v1alpha1
kind: ServiceRoute
metadata: {name: pool, namespace: NAMESPACE}
spec:
  service: reviews
  port: 9080
  connectionPool: {maxConnections: 0, maxRequests: 2, maxRetries: 3}
  rules: [{destinations: [{}]}]
"#,
    )
    .await;
    assert!(err.contains("spec.connectionPool.maxConnections"), "{err}");
    assert!(
        err.contains("spec.connectionPool.maxRetries must not exceed maxRequests"),
        "{err}"
    );

    let err = refused(
        cp,
        ns,
        r#"
apiVersion: mesh.remora.dev/v1alpha1
kind: SidecarTemplate
metadata: {name: same-ports, namespace: NAMESPACE}
spec:
  image: remora-sidecar:dev
  ports: {inbound: 15001, outbound: 15001, admin: 15000}
"#,
    )
    .await;
    assert!(
        err.contains("inbound, outbound and admin must be three different ports"),
        "{err}"
    );

    let err = refused(
        cp,
        ns,
        r#"
apiVersion: mesh.remora.dev/v1alpha1
kind: SidecarTemplate
metadata: {name: ipv6, namespace: NAMESPACE}
spec:
  image: remora-sidecar:dev
  excludeOutboundCidrs: ["10.0.0.0/8", "fd00::/8"]
"#,
    )
    .await;
    assert!(err.contains("IPv6 CIDRs are refused"), "{err}");

    let err = refused(
        cp,
        ns,
        r#"
apiVersion: mesh.remora.dev/v1alpha1
kind: MeshCertificate
metadata: {name: windows, namespace: NAMESPACE}
spec:
  serviceAccount: reviews
  ttl: 24h
  rotateBefore: 48h
"#,
    )
    .await;
    assert!(
        err.contains("spec.rotateBefore must be shorter than spec.ttl"),
        "{err}"
    );

    let err = refused(
        cp,
        ns,
        r#"
apiVersion: mesh.remora.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: empty, namespace: NAMESPACE}
spec:
  podSelector: {app: ratings}
"#,
    )
    .await;
    assert!(err.contains("set limits, adaptive or both"), "{err}");
}
