//! From a pod to the pod the API server should store: decide, select the template,
//! inject, or record why not. Pure; shared by the webhook and `remoractl inject`.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use remora_api::crd::SidecarTemplate;

use crate::annotations;
use crate::decision::{Intent, SkipReason, decide};
use crate::inject::{InjectError, InjectOptions, inject};
use crate::templates::{TemplateSource, select_template};

/// The webhook's settings, from its flags.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The control plane's namespace: never injected; its default template applies
    /// cluster-wide.
    pub mesh_namespace: String,
    /// The sidecar image when no SidecarTemplate applies.
    pub default_image: String,
    pub inject: InjectOptions,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mesh_namespace: "remora-system".into(),
            default_image: "ghcr.io/remora-mesh/remora-sidecar:0.1.0".into(),
            inject: InjectOptions::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected(TemplateSource),
    Skipped(SkipReason),
}

/// What becomes of a pod.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The pod to store: injected, annotated with the skip reason, or unchanged.
    pub pod: Pod,
    pub outcome: Outcome,
    /// For the user (AdmissionResponse warnings, stderr of `remoractl inject`).
    pub warnings: Vec<String>,
}

/// Decides and injects `pod`, created in `namespace` whose `remora.dev/inject` label says
/// `namespace_intent`, choosing among `templates` (any namespaces).
pub fn process_pod(
    pod: &Pod,
    namespace: &str,
    namespace_intent: Intent,
    templates: &[Arc<SidecarTemplate>],
    settings: &Settings,
) -> Verdict {
    let skip = |reason: SkipReason, warnings: Vec<String>| {
        let mut pod = pod.clone();
        if reason.annotated() {
            pod.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(
                    annotations::INJECT_STATUS.into(),
                    format!("skipped: {reason}"),
                );
        }
        Verdict {
            pod,
            outcome: Outcome::Skipped(reason),
            warnings,
        }
    };
    if let Err(reason) = decide(pod, namespace, namespace_intent, &settings.mesh_namespace) {
        let warnings = match reason {
            SkipReason::NameConflict => vec![format!(
                "remora: sidecar not injected: {}",
                InjectError::NameConflict(crate::inject::INIT_CONTAINER)
            )],
            _ => Vec::new(),
        };
        return skip(reason, warnings);
    }
    let template = match select_template(
        pod,
        namespace,
        templates,
        &settings.mesh_namespace,
        &settings.default_image,
    ) {
        Ok(t) => t,
        Err(e) => return skip(SkipReason::TemplateNotFound, vec![format!("remora: {e}")]),
    };
    if let Err(errors) = template.spec.validate() {
        let warning = format!(
            "remora: SidecarTemplate {} is invalid: {errors}",
            template.source
        );
        return skip(SkipReason::TemplateInvalid, vec![warning]);
    }
    match inject(pod, &template, &settings.inject) {
        Ok(done) => Verdict {
            pod: done.pod,
            outcome: Outcome::Injected(template.source),
            warnings: done.warnings,
        },
        Err(InjectError::AlreadyInjected) => skip(SkipReason::AlreadyInjected, Vec::new()),
        Err(InjectError::NoPodSpec) => skip(SkipReason::NoPodSpec, Vec::new()),
        Err(e @ InjectError::NameConflict(_)) => skip(
            SkipReason::NameConflict,
            vec![format!("remora: sidecar not injected: {e}")],
        ),
        Err(e @ InjectError::ExplicitCaptureWithMtls(_)) => skip(
            SkipReason::ExplicitCaptureWithMtls,
            vec![format!("remora: sidecar not injected: {e}")],
        ),
    }
}
