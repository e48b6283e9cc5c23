//! The Grafana dashboard shipped in the chart queries only metrics the
//! sidecar really exports (the operator's are checked in operator/tests).

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{Value, json};

/// Metric names a PromQL expression selects: a name followed by `{` or `[`,
/// or the first argument of `label_values(`.
pub fn selected_metrics(expr: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(
        r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[\{\[]|label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)",
    )
    .unwrap();
    re.captures_iter(expr)
        .filter_map(|c| c.get(1).or(c.get(2)).map(|m| m.as_str().to_owned()))
        .collect()
}

/// Every expression and templating query of the dashboard.
fn queries(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        let targets = p["targets"].as_array().expect("every panel has targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            out.push(t["expr"].as_str().expect("a PromQL expr").to_owned());
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            out.push(v["query"].as_str().unwrap().to_owned());
        }
    }
    out
}

/// Sample names in Prometheus text (`name{...} v` or `name v`).
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_sidecar_metric_the_dashboard_queries_is_exported() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/remora/dashboards/remora-mesh.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    // A sidecar with every feature the dashboard shows: a route with a
    // mirror and a fault, retries, a rate limit, an inbound listener.
    let (app, shadow) = (upstream("app").await, upstream("shadow").await);
    let mut cfg = config(
        json!([outbound(free_port()),
               { "name": "inbound", "direction": "inbound", "address": addr(free_port()),
                 "defaultCluster": "app" }]),
        json!([one_route(
            "svc",
            "app",
            json!({
            "retry": { "attempts": 1, "retryOn": ["5xx"] },
            "mirror": { "cluster": "shadow", "percentage": 1.0 },
            "fault": { "abort": { "percentage": 1.0, "httpStatus": 503 } } })
        )]),
        json!([
            static_cluster("app", &[app.addr]),
            static_cluster("shadow", &[shadow.addr])
        ]),
    );
    cfg["rateLimits"] =
        json!([{ "name": "all", "bucket": { "requests": 100, "per": "1s", "burst": 100 } }]);
    let proxy = start(&cfg).await;
    let have = exported(&proxy.metrics_text());
    // TLS series exist once an identity is loaded; their names are fixed in tls.rs.
    let tls = [
        "tls_handshake_total",
        "tls_certificate_expiration_timestamp_seconds",
    ];
    let tls_source = include_str!("../src/tls.rs");
    let mut checked = 0;
    for q in queries(&dashboard) {
        for m in selected_metrics(&q) {
            if m.starts_with("remora_operator_") {
                continue;
            }
            checked += 1;
            if tls.contains(&m.as_str()) {
                assert!(
                    tls_source.contains(&format!("\"{m}\"")),
                    "{m} is not a TLS metric"
                );
                continue;
            }
            assert!(
                have.contains(&m),
                "the dashboard queries {m}, which the sidecar does not export: {q}"
            );
        }
    }
    assert!(checked >= 15, "only {checked} sidecar metrics checked");
}
