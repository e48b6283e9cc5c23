//! The published JSON Schema of the sidecar config is current and describes
//! the example config.

#[allow(dead_code)]
mod common;

use remora_api::config::SidecarConfig;

#[test]
fn published_schema_matches_the_code() {
    let path = common::repo_root().join("api/sidecar-config.schema.json");
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_default())
            .unwrap_or_default();
    assert!(
        committed == SidecarConfig::json_schema(),
        "api/sidecar-config.schema.json is stale; regenerate with: cargo run -p remora-cli -- config-schema > api/sidecar-config.schema.json"
    );
}

#[test]
fn schema_requires_what_the_parser_requires() {
    let schema = SidecarConfig::json_schema();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["version", "listeners"]);
    assert_eq!(
        schema["additionalProperties"], false,
        "unknown top-level fields must be refused"
    );
}
