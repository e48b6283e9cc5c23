//! AdmissionReview in, AdmissionReview out. Every answer allows the pod: a request we
//! cannot read, or a pod we cannot inject, gets no patch and a warning — never an error
//! that would block the pod (on top of `failurePolicy: Ignore`).

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde::Deserialize;

use crate::annotations;
use crate::catalog::Catalog;
use crate::decision::Intent;
use crate::metrics::{AdmissionResult, Metrics};
use crate::patch::diff;
use crate::verdict::{Outcome, Settings, process_pod};

/// The `/mutate` endpoint's logic, without HTTP.
#[derive(Debug, Clone)]
pub struct Mutator {
    catalog: Catalog,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
}

impl Mutator {
    pub fn new(catalog: Catalog, settings: Settings, metrics: Arc<Metrics>) -> Self {
        Self {
            catalog,
            settings: Arc::new(settings),
            metrics,
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Answers the AdmissionReview in `body`, and records the result and the time taken.
    pub async fn review(&self, body: &[u8]) -> AdmissionReview<DynamicObject> {
        let started = Instant::now();
        let (response, result) = match serde_json::from_slice::<AdmissionReview<Pod>>(body) {
            Ok(review) => match TryInto::<AdmissionRequest<Pod>>::try_into(review) {
                Ok(request) => self.admit(&request).await,
                Err(_) => malformed(body, "the AdmissionReview has no request".into()),
            },
            Err(e) => malformed(body, format!("cannot read the AdmissionReview: {e}")),
        };
        self.metrics.record_admission(result, started.elapsed());
        response.into_review()
    }

    async fn admit(&self, request: &AdmissionRequest<Pod>) -> (AdmissionResponse, AdmissionResult) {
        let response = AdmissionResponse::from(request);
        let pod = match &request.object {
            Some(pod) if request.operation == Operation::Create && request.kind.kind == "Pod" => {
                pod
            }
            _ => return (response, AdmissionResult::Ignored),
        };
        let namespace = request
            .namespace
            .as_deref()
            .or(pod.metadata.namespace.as_deref())
            .unwrap_or("default");
        let labels = self.catalog.namespace_labels(namespace).await;
        let templates = self.catalog.templates_in(&[
            namespace,
            &self.settings.mesh_namespace,
            annotated_template_namespace(pod).unwrap_or(namespace),
        ]);
        let verdict = process_pod(
            pod,
            namespace,
            Intent::of_namespace(labels.as_ref()),
            &templates,
            &self.settings,
        );
        let result = match &verdict.outcome {
            Outcome::Injected(source) => {
                tracing::info!(namespace, pod = %pod_name(pod), template = %source, "injected");
                AdmissionResult::Injected
            }
            Outcome::Skipped(reason) => {
                tracing::debug!(namespace, pod = %pod_name(pod), %reason, "not injected");
                AdmissionResult::Skipped(*reason)
            }
        };
        let mut response = response;
        if !verdict.warnings.is_empty() {
            response.warnings = Some(verdict.warnings);
        }
        let before = serde_json::to_value(pod).expect("a Pod serializes");
        let after = serde_json::to_value(&verdict.pod).expect("a Pod serializes");
        let patch = diff(&before, &after);
        if patch.0.is_empty() {
            return (response, result);
        }
        match response.clone().with_patch(patch) {
            Ok(patched) => (patched, result),
            Err(e) => {
                response
                    .warnings
                    .get_or_insert_with(Vec::new)
                    .push(format!("remora: sidecar not injected: {e}"));
                (response, AdmissionResult::Malformed)
            }
        }
    }
}

/// `x` of a `remora.dev/template: x/name` annotation.
fn annotated_template_namespace(pod: &Pod) -> Option<&str> {
    let value = pod
        .metadata
        .annotations
        .as_ref()?
        .get(annotations::TEMPLATE)?;
    Some(value.trim().split_once('/')?.0)
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.as_ref().map(|g| format!("{g}*")))
        .unwrap_or_default()
}

/// Allows a request we cannot read, echoing its uid when there is one to find.
fn malformed(body: &[u8], warning: String) -> (AdmissionResponse, AdmissionResult) {
    #[derive(Deserialize)]
    struct Uid {
        request: Option<UidRequest>,
    }
    #[derive(Deserialize)]
    struct UidRequest {
        uid: String,
    }
    tracing::warn!(%warning, "malformed AdmissionReview");
    let uid = serde_json::from_slice::<Uid>(body)
        .ok()
        .and_then(|u| u.request)
        .map(|r| r.uid)
        .unwrap_or_default();
    let mut response = AdmissionResponse::invalid("");
    response.uid = uid;
    response.allowed = true;
    response.result = Default::default();
    response.warnings = Some(vec![format!("remora: sidecar not injected: {warning}")]);
    (response, AdmissionResult::Malformed)
}
