//! Admission latency of the handler: 10,000 AdmissionReviews of a realistic Deployment
//! pod, timed from request bytes to response bytes (parse, decide, select, inject, diff,
//! patch, serialize), as `/mutate` runs it minus HTTP and TLS. Results go in
//! bench/RESULTS.md.
//!
//! Two clocks: wall time, and the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), which
//! leaves out time the thread was preempted — on a shared 2-core machine, other processes
//! take the core for a scheduler slice (~4 ms) now and then, and that is not handler work.
//!
//! ```sh
//! cargo run --release -p remora-webhook --example admission_latency
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use remora_api::crd::SidecarTemplate;
use remora_webhook::{Catalog, Metrics, Mutator, Settings};
use serde_json::json;

const REVIEWS: usize = 10_000;
const WARMUP: usize = 1_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // 200 namespaces with 3 templates each, as a large cluster would have.
    let mut templates = Vec::new();
    let mut namespaces = Vec::new();
    for n in 0..200 {
        let ns = format!("team-{n}");
        for (name, spec) in [
            (
                "default",
                json!({"default": true, "image": "registry.example/remora-sidecar:0.1.0",
                "excludeOutboundCidrs": ["169.254.169.254/32"]}),
            ),
            (
                "batch",
                json!({"image": "registry.example/remora-sidecar:0.1.0", "podSelector": {"tier": "batch"}}),
            ),
            (
                "legacy",
                json!({"image": "registry.example/remora-sidecar:0.1.0", "sidecarMode": "legacy"}),
            ),
        ] {
            let t: SidecarTemplate = serde_json::from_value(json!({
                "apiVersion": "mesh.remora.dev/v1alpha1", "kind": "SidecarTemplate",
                "metadata": {"name": name, "namespace": ns, "generation": 2}, "spec": spec,
            }))
            .unwrap();
            templates.push(t);
        }
        namespaces.push((
            ns,
            [("remora.dev/inject".to_owned(), "enabled".to_owned())].into(),
        ));
    }
    let mutator = Mutator::new(
        Catalog::fixed(templates, namespaces),
        Settings::default(),
        Arc::new(Metrics::new()),
    );
    let body = review().to_string();
    println!("AdmissionReview body: {} bytes", body.len());

    let first = runtime.block_on(mutator.review(body.as_bytes()));
    let response = first.response.as_ref().unwrap();
    assert!(response.allowed);
    let patch_len = response.patch.as_ref().map_or(0, Vec::len);
    assert!(patch_len > 0, "the benchmark pod must be injected");
    println!("JSON patch: {patch_len} bytes");

    let mut samples = Vec::with_capacity(REVIEWS);
    let mut cpu_samples = Vec::with_capacity(REVIEWS);
    runtime.block_on(async {
        for _ in 0..WARMUP {
            std::hint::black_box(mutator.review(body.as_bytes()).await);
        }
        for _ in 0..REVIEWS {
            let cpu_started = thread_cpu_time();
            let started = Instant::now();
            let answer = mutator.review(body.as_bytes()).await;
            // Serializing the answer is part of the handler's work.
            let bytes = serde_json::to_vec(&answer).unwrap();
            samples.push(started.elapsed());
            cpu_samples.push(thread_cpu_time() - cpu_started);
            std::hint::black_box(bytes);
        }
    });
    report("wall", &mut samples);
    report("cpu ", &mut cpu_samples);
}

fn report(clock: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{clock}: {REVIEWS} reviews: p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs, mean {:.0} µs",
        us(at(0.50)),
        us(at(0.90)),
        us(at(0.99)),
        us(at(0.999)),
        us(*samples.last().unwrap()),
        us(mean),
    );
}

/// CPU time consumed by the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A pod as the API server sends it for a Deployment: defaults applied, two containers
/// with ports, probes, resources and env, the service account token volume.
fn review() -> serde_json::Value {
    let container = |name: &str, port: i32| {
        json!({
            "name": name,
            "image": format!("registry.example/{name}:1.4.2"),
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
            "env": [
                {"name": "JAVA_OPTS", "value": "-Xmx512m -XX:+UseG1GC"},
                {"name": "DB_HOST", "value": "postgres.data.svc.cluster.local"},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
            ],
            "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
            "livenessProbe": {"httpGet": {"path": "/health/live", "port": "http", "scheme": "HTTP"},
                "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
            "readinessProbe": {"httpGet": {"path": "/health/ready", "port": port, "scheme": "HTTP"},
                "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
            "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": true,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
        })
    };
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "reviews-v2-7c9d6b5f4-",
            "namespace": "team-42",
            "labels": {"app": "reviews", "version": "v2", "pod-template-hash": "7c9d6b5f4"},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9080"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "reviews-v2-7c9d6b5f4", "uid": "0b6c3e8e-2a51-4b7c-9a51-7f0f5d6a8b11",
                "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": {
            "containers": [container("reviews", 9080), container("cache-warmer", 9081)],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "reviews",
            "serviceAccount": "reviews",
            "securityContext": {"runAsNonRoot": true, "fsGroup": 2000},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
            "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ]}}],
        },
        "status": {"phase": "Pending", "qosClass": "Burstable"},
    });
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "5c1b3a2d-8e7f-4a6b-9c0d-1e2f3a4b5c6d",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-42",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "3f1c2b4a-0000-4000-8000-00000000abcd",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        }
    })
}
