//! Which SidecarTemplate a pod is injected from.
//!
//! Precedence: the pod's `remora.dev/template` annotation; a template in the pod's
//! namespace whose `podSelector` matches the pod's labels (the most specific selector
//! wins, then the name); the namespace's `default: true` template; the mesh namespace's
//! default template; the built-in defaults with the webhook's `--default-image`.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use remora_api::crd::{SidecarTemplate, SidecarTemplateSpec};

use crate::annotations;

/// Where the injected template came from, recorded in `remora.dev/injected`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateSource {
    Resource {
        namespace: String,
        name: String,
        generation: Option<i64>,
    },
    Builtin,
}

impl std::fmt::Display for TemplateSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateSource::Resource {
                namespace,
                name,
                generation,
            } => write!(f, "{namespace}/{name}@{}", generation.unwrap_or(0)),
            TemplateSource::Builtin => f.write_str("builtin"),
        }
    }
}

/// A template chosen for a pod, before the pod's annotation overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct SelectedTemplate {
    pub source: TemplateSource,
    pub spec: SidecarTemplateSpec,
}

impl SelectedTemplate {
    pub fn from_resource(template: &SidecarTemplate) -> Self {
        Self {
            source: TemplateSource::Resource {
                namespace: template.namespace().unwrap_or_default(),
                name: template.name_any(),
                generation: template.metadata.generation,
            },
            spec: template.spec.clone(),
        }
    }

    pub fn builtin(default_image: &str) -> Self {
        Self {
            source: TemplateSource::Builtin,
            spec: builtin_template(default_image),
        }
    }
}

/// The defaults every field of a SidecarTemplate has, with `image`.
pub fn builtin_template(image: &str) -> SidecarTemplateSpec {
    serde_json::from_value(serde_json::json!({ "image": image }))
        .expect("a SidecarTemplate with only an image deserializes")
}

/// The pod names a template that does not exist.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("SidecarTemplate {namespace}/{name} (from annotation remora.dev/template) not found")]
pub struct TemplateNotFound {
    pub namespace: String,
    pub name: String,
}

/// Chooses the template for `pod` in `namespace` among `templates` (any namespaces).
pub fn select_template(
    pod: &Pod,
    namespace: &str,
    templates: &[Arc<SidecarTemplate>],
    mesh_namespace: &str,
    default_image: &str,
) -> Result<SelectedTemplate, TemplateNotFound> {
    let live = || {
        templates
            .iter()
            .map(Arc::as_ref)
            .filter(|t| t.metadata.deletion_timestamp.is_none())
    };
    let in_ns = |ns: &str| {
        let ns = ns.to_owned();
        live().filter(move |t| t.metadata.namespace.as_deref() == Some(ns.as_str()))
    };

    if let Some(wanted) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::TEMPLATE))
    {
        let (ns, name) = wanted
            .trim()
            .split_once('/')
            .unwrap_or((namespace, wanted.trim()));
        return in_ns(ns)
            .find(|t| t.metadata.name.as_deref() == Some(name))
            .map(SelectedTemplate::from_resource)
            .ok_or_else(|| TemplateNotFound {
                namespace: ns.to_owned(),
                name: name.to_owned(),
            });
    }

    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let by_selector = in_ns(namespace)
        .filter(|t| {
            !t.spec.pod_selector.is_empty()
                && t.spec
                    .pod_selector
                    .iter()
                    .all(|(k, v)| labels.get(k) == Some(v))
        })
        .min_by(|a, b| {
            // Most specific selector first, then by name: deterministic.
            b.spec
                .pod_selector
                .len()
                .cmp(&a.spec.pod_selector.len())
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        });
    if let Some(t) = by_selector {
        return Ok(SelectedTemplate::from_resource(t));
    }
    for ns in [namespace, mesh_namespace] {
        let default = in_ns(ns)
            .filter(|t| t.spec.default)
            .min_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        if let Some(t) = default {
            return Ok(SelectedTemplate::from_resource(t));
        }
    }
    Ok(SelectedTemplate::builtin(default_image))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use serde_json::json;

    fn template(ns: &str, name: &str, spec: serde_json::Value) -> Arc<SidecarTemplate> {
        let mut spec = spec;
        spec["image"] = json!(format!("{ns}-{name}"));
        Arc::new(SidecarTemplate {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                generation: Some(3),
                ..ObjectMeta::default()
            },
            spec: serde_json::from_value(spec).unwrap(),
            status: None,
        })
    }

    fn pod(labels: serde_json::Value, annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"labels": labels, "annotations": annotations},
            "spec": {"containers": [{"name": "app"}]},
        }))
        .unwrap()
    }

    fn chosen(p: &Pod, templates: &[Arc<SidecarTemplate>]) -> String {
        select_template(p, "shop", templates, "remora-system", "builtin-image")
            .unwrap()
            .spec
            .image
    }

    #[test]
    fn precedence_annotation_selector_default_mesh_default_builtin() {
        let all = vec![
            template("shop", "named", json!({})),
            template("shop", "web", json!({"podSelector": {"app": "web"}})),
            template(
                "shop",
                "web-v2",
                json!({"podSelector": {"app": "web", "v": "2"}}),
            ),
            template("shop", "zz-default", json!({"default": true})),
            template("shop", "aa-default", json!({"default": true})),
            template("other", "default", json!({"default": true})),
            template("remora-system", "mesh", json!({"default": true})),
        ];
        let annotated = pod(
            json!({"app": "web"}),
            json!({"remora.dev/template": "named"}),
        );
        assert_eq!(chosen(&annotated, &all), "shop-named");
        let qualified = pod(json!({}), json!({"remora.dev/template": "other/default"}));
        assert_eq!(chosen(&qualified, &all), "other-default");
        assert_eq!(
            chosen(&pod(json!({"app": "web"}), json!({})), &all),
            "shop-web"
        );
        assert_eq!(
            chosen(&pod(json!({"app": "web", "v": "2"}), json!({})), &all),
            "shop-web-v2"
        );
        assert_eq!(chosen(&pod(json!({}), json!({})), &all), "shop-aa-default");
        assert_eq!(
            chosen(&pod(json!({}), json!({})), &all[5..]),
            "remora-system-mesh"
        );
        assert_eq!(
            chosen(&pod(json!({}), json!({})), &all[5..6]),
            "builtin-image"
        );
    }

    #[test]
    fn unknown_annotated_template_is_an_error() {
        let p = pod(json!({}), json!({"remora.dev/template": "nope"}));
        let err = select_template(&p, "shop", &[], "remora-system", "img").unwrap_err();
        assert_eq!(
            err.to_string(),
            "SidecarTemplate shop/nope (from annotation remora.dev/template) not found"
        );
    }

    #[test]
    fn source_is_recorded_with_generation() {
        let all = vec![template("shop", "web", json!({"default": true}))];
        let s = select_template(&pod(json!({}), json!({})), "shop", &all, "m", "i").unwrap();
        assert_eq!(s.source.to_string(), "shop/web@3");
        assert_eq!(TemplateSource::Builtin.to_string(), "builtin");
    }
}
