//! Reading manifests from files and directories, as `kubectl -f` does.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use remora_api::crd::{ManifestError, MeshResource};
use serde::Deserialize;

/// A document found in the inputs.
pub enum Document {
    Resource {
        source: PathBuf,
        resource: Box<MeshResource>,
    },
    /// A sidecar config (`.json` whose top level has `listeners`).
    SidecarConfig { source: PathBuf, bytes: Vec<u8> },
}

/// Every file under `paths` (directories are walked, sorted, not recursed
/// into hidden entries) with a `.yaml`, `.yml` or `.json` extension.
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        collect(p, &mut out).with_context(|| format!("reading {}", p.display()))?;
    }
    if out.is_empty() {
        bail!(
            "no .yaml, .yml or .json files in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(out)
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if p.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for e in entries {
            let hidden = e
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !hidden {
                collect(&e, out)?;
            }
        }
    } else if matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    ) {
        out.push(p.to_owned());
    } else if !p.exists() {
        bail!("no such file or directory");
    }
    Ok(())
}

/// Reads every document. Manifests of other API groups (a Deployment next to
/// the routes) are skipped; Remora manifests that do not parse are errors.
pub fn read(paths: &[PathBuf]) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for file in files(paths)? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let is_json = file.extension().is_some_and(|e| e == "json");
        if is_json {
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", file.display()))?;
            if value.get("listeners").is_some() {
                docs.push(Document::SidecarConfig {
                    source: file,
                    bytes: text.into_bytes(),
                });
                continue;
            }
            push_manifest(&mut docs, &file, value)?;
            continue;
        }
        for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = serde_json::Value::deserialize(de).with_context(|| {
                format!("{} document {} is not valid YAML", file.display(), i + 1)
            })?;
            if value.is_null() {
                continue;
            }
            push_manifest(&mut docs, &file, value)?;
        }
    }
    Ok(docs)
}

fn push_manifest(docs: &mut Vec<Document>, file: &Path, value: serde_json::Value) -> Result<()> {
    match MeshResource::from_value(value) {
        Ok(resource) => docs.push(Document::Resource {
            source: file.to_owned(),
            resource: Box::new(resource),
        }),
        Err(ManifestError::Foreign { .. }) => {}
        Err(e) => bail!("{}: {e}", file.display()),
    }
    Ok(())
}
