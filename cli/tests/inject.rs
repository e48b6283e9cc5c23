//! `remoractl inject -f`, as a user runs it.

use std::io::Write;
use std::process::Command;

use serde::Deserialize;

const MANIFESTS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: reviews
  namespace: shop
spec:
  selector:
    matchLabels: {app: reviews}
  template:
    metadata:
      labels: {app: reviews}
    spec:
      containers:
      - name: reviews
        image: registry.example/reviews:1
        fieldFromTheFuture: kept
        readinessProbe:
          httpGet: {path: /ready, port: 9080}
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
  namespace: shop
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: job
            image: registry.example/job:1
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: node-agent
  namespace: shop
spec:
  selector:
    matchLabels: {app: agent}
  template:
    metadata:
      labels: {app: agent}
    spec:
      hostNetwork: true
      containers:
      - name: agent
        image: registry.example/agent:1
---
apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: shop
spec:
  ports: [{port: 9080}]
---
apiVersion: mesh.remora.dev/v1alpha1
kind: SidecarTemplate
metadata:
  name: default
  namespace: shop
spec:
  default: true
  image: registry.example/remora-sidecar:from-file
"#;

fn inject(manifests: &str) -> (std::process::Output, Vec<serde_yaml::Value>) {
    inject_with(manifests, &[])
}

fn inject_with(manifests: &str, flags: &[&str]) -> (std::process::Output, Vec<serde_yaml::Value>) {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    file.write_all(manifests.as_bytes()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_remoractl"))
        .args(["inject", "-f"])
        .arg(file.path())
        .args(flags)
        .output()
        .unwrap();
    let docs = serde_yaml::Deserializer::from_slice(&out.stdout)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .collect();
    (out, docs)
}

fn container_names(pod_spec: &serde_yaml::Value, key: &str) -> Vec<String> {
    pod_spec[key]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn injects_pod_templates_of_workloads() {
    let (out, docs) = inject(MANIFESTS);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(docs.len(), 5);

    let deployment = &docs[0]["spec"]["template"];
    assert_eq!(
        container_names(&deployment["spec"], "initContainers"),
        ["remora-init", "remora-proxy"]
    );
    assert_eq!(
        deployment["spec"]["initContainers"][1]["image"].as_str(),
        Some("registry.example/remora-sidecar:from-file")
    );
    assert_eq!(
        deployment["metadata"]["labels"]["remora.dev/workload"].as_str(),
        Some("reviews")
    );
    // The probe goes through the proxy's admin port, so its port stays captured;
    // fields unknown to us survive.
    let args = deployment["spec"]["initContainers"][0]["args"]
        .as_sequence()
        .unwrap();
    let excluded = args
        .iter()
        .position(|a| a == "--exclude-inbound-ports")
        .unwrap();
    assert_eq!(args[excluded + 1].as_str(), Some("15000"));
    let probe = &deployment["spec"]["containers"][0]["readinessProbe"]["httpGet"];
    assert_eq!(probe["port"].as_u64(), Some(15000), "{probe:?}");
    assert_eq!(
        probe["path"].as_str(),
        Some("/app-health/reviews/readyz"),
        "{probe:?}"
    );
    assert_eq!(
        deployment["spec"]["containers"][0]["fieldFromTheFuture"].as_str(),
        Some("kept")
    );
    // Written order is kept: apiVersion first, as in the input.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("---\napiVersion: apps/v1\nkind: Deployment\n"),
        "{text}"
    );

    let cron = &docs[1]["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(
        container_names(&cron["spec"], "initContainers"),
        ["remora-init", "remora-proxy"]
    );
    assert_eq!(
        cron["metadata"]["labels"]["remora.dev/workload"].as_str(),
        Some("nightly")
    );

    let daemon = &docs[2]["spec"]["template"];
    assert!(container_names(&daemon["spec"], "initContainers").is_empty());
    assert_eq!(
        daemon["metadata"]["annotations"]["remora.dev/inject-status"].as_str(),
        Some("skipped: host-network")
    );
    assert_eq!(docs[3]["kind"].as_str(), Some("Service"));
    assert!(
        stderr.contains("deployment/reviews: injected (shop/default@0)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("daemonset/node-agent: not injected: host-network"),
        "{stderr}"
    );
}

#[test]
fn injecting_injected_manifests_changes_nothing() {
    let (first, _) = inject(MANIFESTS);
    assert!(first.status.success());
    let once = String::from_utf8(first.stdout).unwrap();
    let (second, _) = inject(&once);
    assert!(second.status.success());
    assert_eq!(String::from_utf8(second.stdout).unwrap(), once);
    assert!(String::from_utf8_lossy(&second.stderr).contains("not injected: already-injected"));
}

const EXPLICIT: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: shop
  annotations: {remora.dev/capture-mode: explicit, remora.dev/log-level: debug}
spec:
  containers:
    - name: client
      image: registry.example/client:1
"#;

/// Explicit capture has no inbound listener: refused while the mesh's mTLS is on
/// (the default, as the operator's), injected with `--mtls disabled`.
#[test]
fn explicit_capture_is_refused_unless_mtls_is_disabled() {
    let (out, docs) = inject(EXPLICIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        docs[0]["metadata"]["annotations"]["remora.dev/inject-status"].as_str(),
        Some("skipped: explicit-capture-with-mtls")
    );
    assert!(container_names(&docs[0]["spec"], "initContainers").is_empty());
    assert!(
        stderr.contains("captureMode explicit has no inbound listener")
            && stderr.contains("mTLS is permissive"),
        "{stderr}"
    );

    let (out, docs) = inject_with(EXPLICIT, &["--mtls", "disabled"]);
    assert!(out.status.success());
    let spec = &docs[0]["spec"];
    assert_eq!(container_names(spec, "initContainers"), ["remora-proxy"]);
    // The pod's settings go to the proxy, which lays them over the namespace's config.
    let env = spec["initContainers"][0]["env"].as_sequence().unwrap();
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
    };
    assert_eq!(value("REMORA_CAPTURE_MODE"), Some("explicit"));
    assert_eq!(value("REMORA_LOG_LEVEL"), Some("debug"));
    assert_eq!(value("REMORA_OUTBOUND_PORT"), Some("15001"));
}
