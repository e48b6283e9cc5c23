//! kubeconform's JSON schemas, generated offline.
//!
//! kubeconform normally downloads schemas that `openapi2jsonschema` derived from
//! Kubernetes' OpenAPI document. We derive the same thing here, from the document
//! Kubernetes ships in its Go module (`api/openapi-spec/swagger.json`, copied by
//! scripts/tools.sh, the same release the test API server runs) and from our CRDs,
//! into kubeconform's `-schema-location` layout `{{.ResourceKind}}{{.KindSuffix}}.json`:
//!
//! - one file per group/version/kind, self-contained: the definitions it refers to
//!   travel with it under `definitions` (references stay `#/definitions/<name>`);
//! - strict: every object with `properties` gets `additionalProperties: false`
//!   unless it preserves unknown fields, so a misspelt field is an error;
//! - `apiVersion` and `kind` are pinned to the file's own;
//! - the wire forms the API server accepts: int-or-string and quantities take a
//!   number or a string, and `null` is accepted where a value may be omitted.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Map, Value, json};

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";

/// kubeconform's file name for a kind: `deployment-apps-v1.json`, `service-v1.json`,
/// `serviceroute-mesh-v1alpha1.json` (pkg/registry/registry.go, `schemaPath`).
pub fn file_name(kind: &str, api_version: &str) -> String {
    let group_parts: Vec<&str> = api_version.split('/').collect();
    let first = group_parts[0].split('.').next().unwrap_or_default();
    let mut suffix = format!("-{}", first.to_lowercase());
    if group_parts.len() > 1 {
        suffix.push('-');
        suffix.push_str(&group_parts[1].to_lowercase());
    }
    format!("{}{suffix}.json", kind.to_lowercase())
}

/// Writes a schema for every kind in `swagger` and in the CRD files of `crd_dir`
/// into `out`; returns how many files it wrote.
pub fn generate(swagger: &Path, crd_dir: &Path, out: &Path) -> Result<usize, String> {
    let doc: Value = serde_json::from_slice(
        &std::fs::read(swagger).map_err(|e| format!("reading {}: {e}", swagger.display()))?,
    )
    .map_err(|e| format!("{}: {e}", swagger.display()))?;
    let definitions = doc["definitions"]
        .as_object()
        .ok_or_else(|| format!("{} has no definitions", swagger.display()))?;
    let mut written = BTreeSet::new();

    for def in definitions.values() {
        let Some(gvks) = def["x-kubernetes-group-version-kind"].as_array() else {
            continue;
        };
        for gvk in gvks {
            let (group, version, kind) = (
                gvk["group"].as_str().unwrap_or_default(),
                gvk["version"].as_str().unwrap_or_default(),
                gvk["kind"].as_str().unwrap_or_default(),
            );
            let api_version = if group.is_empty() {
                version.to_owned()
            } else {
                format!("{group}/{version}")
            };
            let mut schema = convert(def, Origin::OpenApi, true);
            pin_type(&mut schema, &api_version, kind);
            let schema = with_definitions(schema, definitions)?;
            write(out, &file_name(kind, &api_version), &schema, &mut written)?;
        }
    }

    let mut crd_files: Vec<_> = std::fs::read_dir(crd_dir)
        .map_err(|e| format!("reading {}: {e}", crd_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    crd_files.sort();
    for path in crd_files {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let crd: Value =
            serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let group = crd["spec"]["group"].as_str().unwrap_or_default();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap_or_default();
        let versions = crd["spec"]["versions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for v in versions {
            let version = v["name"].as_str().unwrap_or_default();
            let openapi = &v["schema"]["openAPIV3Schema"];
            if openapi.is_null() {
                return Err(format!(
                    "{}: version {version} has no schema",
                    path.display()
                ));
            }
            let api_version = format!("{group}/{version}");
            let mut schema = convert(openapi, Origin::Crd, true);
            pin_type(&mut schema, &api_version, kind);
            // A CRD's schema says only `metadata: {type: object}`; check it as ObjectMeta.
            schema["properties"]["metadata"] =
                json!({"$ref": format!("#/definitions/{OBJECT_META}")});
            let schema = with_definitions(schema, definitions)?;
            write(out, &file_name(kind, &api_version), &schema, &mut written)?;
        }
    }
    Ok(written.len())
}

fn write(
    out: &Path,
    file: &str,
    schema: &Value,
    written: &mut BTreeSet<String>,
) -> Result<(), String> {
    if !written.insert(file.to_owned()) {
        return Err(format!("two kinds map to the schema file {file}"));
    }
    let path = out.join(file);
    std::fs::write(&path, serde_json::to_vec(schema).expect("serializes"))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

fn pin_type(schema: &mut Value, api_version: &str, kind: &str) {
    let props = schema["properties"].as_object_mut();
    if let Some(props) = props {
        props.insert("apiVersion".into(), json!({"enum": [api_version]}));
        props.insert("kind".into(), json!({"enum": [kind]}));
    }
    schema["required"] = json!(["apiVersion", "kind"]);
}

/// Adds every definition `schema` refers to, transitively, converted.
fn with_definitions(mut schema: Value, all: &Map<String, Value>) -> Result<Value, String> {
    let mut wanted = BTreeSet::new();
    let mut queue = Vec::new();
    refs(&schema, &mut queue);
    let mut defs = Map::new();
    while let Some(name) = queue.pop() {
        if !wanted.insert(name.clone()) {
            continue;
        }
        let def = all
            .get(&name)
            .ok_or_else(|| format!("reference to a missing definition {name}"))?;
        let converted = if name == QUANTITY {
            // 500m, "1Gi" or a plain number: the API server takes all of them.
            json!({"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}]})
        } else {
            convert(def, Origin::OpenApi, false)
        };
        refs(&converted, &mut queue);
        defs.insert(name, converted);
    }
    schema["$schema"] = json!("http://json-schema.org/draft-07/schema#");
    if !defs.is_empty() {
        schema["definitions"] = Value::Object(defs);
    }
    Ok(schema)
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(name) = m
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/definitions/"))
            {
                out.push(name.to_owned());
            }
            m.values().for_each(|v| refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Origin {
    /// Kubernetes' swagger.json (OpenAPI v2).
    OpenApi,
    /// A CRD's `openAPIV3Schema` (structural schema with `x-kubernetes-*` extensions).
    Crd,
}

/// One schema node, converted; walks only schema positions (a property may well be
/// named `type` or `format`).
fn convert(node: &Value, origin: Origin, root: bool) -> Value {
    let Some(src) = node.as_object() else {
        return node.clone();
    };
    if src.get("format").and_then(Value::as_str) == Some("int-or-string")
        || src.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
    {
        return json!({"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]});
    }
    let mut out = Map::new();
    for (key, value) in src {
        let converted = match key.as_str() {
            // Documentation and API-server-only extensions do not validate anything.
            "description" | "x-kubernetes-validations" => continue,
            "properties" | "patternProperties" | "definitions" => Value::Object(
                value
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), convert(v, origin, false)))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            "items" | "additionalProperties" | "not" => convert(value, origin, false),
            "allOf" | "anyOf" | "oneOf" => Value::Array(
                value
                    .as_array()
                    .map(|a| a.iter().map(|v| convert(v, origin, false)).collect())
                    .unwrap_or_default(),
            ),
            _ => value.clone(),
        };
        out.insert(key.clone(), converted);
    }
    let preserves = src.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if out.contains_key("properties") && !out.contains_key("additionalProperties") && !preserves {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    // Omitting a field and sending null are the same to the API server (OpenAPI v2 has
    // no `nullable`); CRDs say so with `nullable: true`. Our YAML and Helm output may
    // carry nulls for empty values, so the built-in types accept them.
    let nullable = match origin {
        Origin::OpenApi => !root,
        Origin::Crd => src.get("nullable") == Some(&Value::Bool(true)),
    };
    if let (true, Some(Value::String(t))) = (nullable, out.get("type").cloned()) {
        out.insert("type".into(), json!([t, "null"]));
    }
    Value::Object(out)
}
