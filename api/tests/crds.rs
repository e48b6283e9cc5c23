//! The committed CRDs are what the code generates, and their schemas are
//! structural (the API server would otherwise refuse or degrade them).

#[allow(dead_code)]
mod common;

use remora_api::crd::{all_crds, crd_yaml};
use serde_json::Value;

#[test]
fn committed_crds_match_the_code() {
    let dir = common::repo_root().join("crds");
    for (file, crd) in all_crds() {
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            committed == crd_yaml(&crd),
            "crds/{file} is stale; regenerate with: cargo run -p remora-cli -- crds --out crds"
        );
    }
    let on_disk = common::files(&dir, &["yaml"]).len();
    assert_eq!(
        on_disk,
        all_crds().len(),
        "crds/ holds files that no CRD generates"
    );
}

/// The structural-schema rules of apiextensions.k8s.io/v1 that a generator
/// can break: every node has a type (or preserves unknown fields), no
/// `anyOf`/`oneOf`/`allOf` branch sets `type`, no `enum` admits null, and no
/// `$ref` is left unresolved.
fn structural_problems(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else { return };
    let typed = obj.contains_key("type")
        || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        || obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if !typed {
        out.push(format!(
            "{path}: no type and no x-kubernetes-preserve-unknown-fields"
        ));
    }
    if obj.contains_key("$ref") {
        out.push(format!("{path}: unresolved $ref"));
    }
    if let Some(values) = obj.get("enum").and_then(Value::as_array)
        && values.iter().any(Value::is_null)
    {
        out.push(format!("{path}: enum contains null"));
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        for (i, branch) in obj
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            for forbidden in ["type", "default", "nullable", "description"] {
                if branch.get(forbidden).is_some() {
                    out.push(format!("{path}.{key}[{i}]: sets {forbidden}"));
                }
            }
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            structural_problems(child, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = obj.get("items") {
        structural_problems(items, &format!("{path}[]"), out);
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        structural_problems(extra, &format!("{path}{{}}"), out);
    }
}

#[test]
fn generated_schemas_are_structural() {
    for (file, crd) in all_crds() {
        for version in &crd.spec.versions {
            let schema =
                serde_json::to_value(&version.schema.as_ref().unwrap().open_api_v3_schema).unwrap();
            let mut problems = Vec::new();
            structural_problems(&schema, "", &mut problems);
            assert!(
                problems.is_empty(),
                "{file} ({}) is not structural:\n{}",
                version.name,
                problems.join("\n")
            );
        }
    }
}

#[test]
fn the_structural_check_catches_what_it_should() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "untyped": {},
            "mode": { "type": "string", "enum": ["a", null] },
            "either": { "type": "object", "oneOf": [{ "type": "string" }] }
        }
    });
    let mut problems = Vec::new();
    structural_problems(&bad, "", &mut problems);
    assert_eq!(
        problems,
        [
            ".either.oneOf[0]: sets type",
            ".mode: enum contains null",
            ".untyped: no type and no x-kubernetes-preserve-unknown-fields"
        ]
    );
}

#[test]
fn every_crd_has_the_names_users_type() {
    for (_, crd) in all_crds() {
        let names = &crd.spec.names;
        assert_eq!(crd.spec.group, "mesh.remora.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(
            names.categories.as_deref(),
            Some(&["remora".to_owned()][..]),
            "{}",
            names.kind
        );
        assert!(
            names.short_names.as_ref().is_some_and(|s| !s.is_empty()),
            "{}",
            names.kind
        );
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{}: status subresource",
            names.kind
        );
        let columns = v
            .additional_printer_columns
            .as_ref()
            .map(Vec::len)
            .unwrap_or(0);
        assert!(columns >= 3, "{}: printer columns", names.kind);
        let schema = serde_json::to_value(&v.schema.as_ref().unwrap().open_api_v3_schema).unwrap();
        let status = &schema["properties"]["status"]["properties"];
        assert!(
            status.get("conditions").is_some() && status.get("observedGeneration").is_some(),
            "{}: status shape",
            names.kind
        );
    }
}
