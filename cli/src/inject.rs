//! `remoractl inject`: prints the manifests with the sidecar injected into every pod
//! template, as the webhook would inject the pods — like `linkerd inject --manual`.
//!
//! The same code as the webhook decides and injects (`remora_webhook::process_pod`), and
//! the result is applied to each document as the webhook's JSON patch, so everything the
//! injection does not touch (field order, fields unknown to our Kubernetes types) stays as
//! written. SidecarTemplates among the inputs are used to choose the template.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::Pod;
use remora_api::config::TlsMode;
use remora_api::crd::SidecarTemplate;
use remora_webhook::patch::diff;
use remora_webhook::{Intent, Outcome, Settings, process_pod};
use serde::Deserialize;
use serde_yaml::Value as Yaml;

use crate::manifests;

pub struct InjectArgs {
    pub files: Vec<PathBuf>,
    pub default_image: String,
    pub namespace: String,
    pub mesh_namespace: String,
    /// The mesh's inbound mTLS mode: explicit capture is refused unless disabled.
    pub mtls: TlsMode,
}

pub fn inject(args: InjectArgs) -> Result<ExitCode> {
    let mut docs = Vec::new();
    for file in manifests::files(&args.files)? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = Yaml::deserialize(doc).with_context(|| {
                format!("{}: document {} is not valid YAML", file.display(), i + 1)
            })?;
            if !value.is_null() {
                docs.push(value);
            }
        }
    }
    let mut templates = Vec::new();
    for doc in &docs {
        if kind(doc) == "SidecarTemplate" && api_version(doc).starts_with("mesh.remora.dev/") {
            let mut t: SidecarTemplate = serde_yaml::from_value(doc.clone())
                .with_context(|| format!("SidecarTemplate {}", name(doc)))?;
            t.metadata
                .namespace
                .get_or_insert_with(|| args.namespace.clone());
            templates.push(Arc::new(t));
        }
    }
    let mut settings = Settings {
        default_image: args.default_image,
        mesh_namespace: args.mesh_namespace,
        ..Settings::default()
    };
    settings.inject.mtls = args.mtls;

    let mut out = String::new();
    let mut failed = false;
    for mut doc in docs {
        let namespace = doc_namespace(&doc).unwrap_or_else(|| args.namespace.clone());
        for path in pod_template_paths(&doc) {
            let label = format!("{}/{}", kind(&doc).to_lowercase(), name(&doc));
            let target = at_mut(&mut doc, &path).expect("path found by pod_template_paths");
            match inject_one(target, &label, &namespace, &templates, &settings) {
                Ok(()) => {}
                Err(e) => {
                    eprintln!("{label}: {e:#}");
                    failed = true;
                }
            }
        }
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&doc)?);
    }
    print!("{out}");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Injects the pod (or pod template) at `target` in place and reports on stderr.
fn inject_one(
    target: &mut Yaml,
    label: &str,
    namespace: &str,
    templates: &[Arc<SidecarTemplate>],
    settings: &Settings,
) -> Result<()> {
    let mut pod: Pod =
        serde_yaml::from_value(target.clone()).context("not a valid pod template")?;
    // A template has no name: the workload's name stands in for it (remora.dev/workload).
    if pod.metadata.name.is_none() && pod.metadata.generate_name.is_none() {
        pod.metadata.name = label.split_once('/').map(|(_, n)| n.to_owned());
    }
    let verdict = process_pod(&pod, namespace, Intent::Enabled, templates, settings);
    for w in &verdict.warnings {
        eprintln!("{label}: warning: {w}");
    }
    match &verdict.outcome {
        Outcome::Injected(source) => eprintln!("{label}: injected ({source})"),
        Outcome::Skipped(reason) => eprintln!("{label}: not injected: {reason}"),
    }
    let before = serde_json::to_value(&pod)?;
    let after = serde_json::to_value(&verdict.pod)?;
    let patch = diff(&before, &after);
    // The typed pod always has metadata; a written template may not.
    if let Some(m) = target.as_mapping_mut()
        && !patch.0.is_empty()
        && !m.contains_key("metadata")
    {
        m.insert(
            Yaml::String("metadata".into()),
            Yaml::Mapping(Default::default()),
        );
    }
    for op in &patch.0 {
        apply(target, op).with_context(|| format!("applying {op:?}"))?;
    }
    Ok(())
}

/// Where the pods are: the document itself for a Pod, `spec.template` for workloads,
/// `spec.jobTemplate.spec.template` for CronJobs, and inside `items` of a List.
fn pod_template_paths(doc: &Yaml) -> Vec<Vec<Yaml>> {
    let s = |k: &str| Yaml::String(k.to_owned());
    match kind(doc) {
        "Pod" => vec![vec![]],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => vec![vec![s("spec"), s("template")]],
        "CronJob" => vec![vec![s("spec"), s("jobTemplate"), s("spec"), s("template")]],
        "List" if api_version(doc) == "v1" => doc["items"]
            .as_sequence()
            .into_iter()
            .flatten()
            .enumerate()
            .flat_map(|(i, item)| {
                pod_template_paths(item).into_iter().map(move |mut p| {
                    p.splice(0..0, [s("items"), Yaml::Number(i.into())]);
                    p
                })
            })
            .collect(),
        _ => Vec::new(),
    }
    .into_iter()
    .filter(|p| at(doc, p).is_some_and(Yaml::is_mapping))
    .collect()
}

fn at<'a>(doc: &'a Yaml, path: &[Yaml]) -> Option<&'a Yaml> {
    path.iter().try_fold(doc, |v, key| match key {
        Yaml::Number(n) => v.as_sequence()?.get(n.as_u64()? as usize),
        key => v.as_mapping()?.get(key),
    })
}

fn at_mut<'a>(doc: &'a mut Yaml, path: &[Yaml]) -> Option<&'a mut Yaml> {
    path.iter().try_fold(doc, |v, key| match key {
        Yaml::Number(n) => v.as_sequence_mut()?.get_mut(n.as_u64()? as usize),
        key => v.as_mapping_mut()?.get_mut(key),
    })
}

/// Applies one JSON patch operation (add, remove, replace: all the diff produces) to YAML.
fn apply(doc: &mut Yaml, op: &PatchOperation) -> Result<()> {
    let (parent, last) = op
        .path()
        .split_back()
        .context("the patch targets the whole document")?;
    let last = last.decoded().into_owned();
    let mut target = doc;
    for token in parent.tokens() {
        let token = token.decoded();
        target = match target {
            Yaml::Mapping(m) => m.get_mut(token.as_ref()),
            Yaml::Sequence(s) => token.parse::<usize>().ok().and_then(|i| s.get_mut(i)),
            _ => None,
        }
        .with_context(|| format!("no {token} in the document"))?;
    }
    let value = |v: &serde_json::Value| serde_yaml::to_value(v);
    match (op, target) {
        (PatchOperation::Add(a), Yaml::Mapping(m)) => {
            m.insert(Yaml::String(last), value(&a.value)?);
        }
        (PatchOperation::Replace(r), Yaml::Mapping(m)) => {
            m.insert(Yaml::String(last), value(&r.value)?);
        }
        (PatchOperation::Remove(_), Yaml::Mapping(m)) => {
            m.remove(last.as_str());
        }
        (PatchOperation::Add(a), Yaml::Sequence(s)) => {
            let i = if last == "-" { s.len() } else { last.parse()? };
            if i > s.len() {
                bail!("index {i} past the end");
            }
            s.insert(i, value(&a.value)?);
        }
        (PatchOperation::Replace(r), Yaml::Sequence(s)) => {
            *s.get_mut(last.parse::<usize>()?).context("no such index")? = value(&r.value)?;
        }
        (PatchOperation::Remove(_), Yaml::Sequence(s)) => {
            let i: usize = last.parse()?;
            if i >= s.len() {
                bail!("index {i} past the end");
            }
            s.remove(i);
        }
        (op, _) => bail!("cannot apply {op:?} here"),
    }
    Ok(())
}

fn kind(doc: &Yaml) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

fn api_version(doc: &Yaml) -> &str {
    doc["apiVersion"].as_str().unwrap_or("")
}

fn name(doc: &Yaml) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("")
}

fn doc_namespace(doc: &Yaml) -> Option<String> {
    doc["metadata"]["namespace"].as_str().map(str::to_owned)
}
