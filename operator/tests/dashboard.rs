//! The Grafana dashboard shipped in the chart queries only operator metrics
//! the operator really exports (the sidecar's are checked in sidecar/tests).

use std::collections::BTreeSet;

use remora_operator::metrics::Metrics;
use serde_json::Value;

#[test]
fn every_operator_metric_the_dashboard_queries_is_exported() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/remora/dashboards/remora-mesh.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let metrics = Metrics::default();
    // One of each series, so every family renders its samples.
    drop(metrics.reconcile("mesh_config"));
    metrics.error("mesh_config", "kube");
    metrics
        .config_bytes
        .get_or_create(&remora_operator::metrics::NamespaceLabel {
            namespace: "demo".into(),
        })
        .set(1);
    let text = metrics.render();
    // `# TYPE name kind`: counters are sampled as `name_total`, histograms as
    // `name_bucket`, `_sum`, `_count`.
    let mut have = BTreeSet::new();
    for l in text.lines() {
        let mut w = l.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (w.next(), w.next(), w.next(), w.next())
        {
            match kind {
                "counter" => have.insert(format!("{name}_total")),
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        have.insert(format!("{name}{s}"));
                    }
                    true
                }
                _ => have.insert(name.to_owned()),
            };
        }
    }
    let mut checked = 0;
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("remora_operator_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                checked += 1;
                assert!(
                    have.contains(&name),
                    "the dashboard queries {name}, not exported: {have:?}"
                );
            }
        }
    }
    assert!(checked >= 5, "only {checked} operator metrics checked");
}
