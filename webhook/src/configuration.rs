//! The MutatingWebhookConfiguration that registers the webhook: used by the tests, and
//! the source of truth for the Helm chart's template.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::ObjectMeta;

use crate::annotations;
use crate::decision::SYSTEM_NAMESPACES;

/// The name of the one webhook in the configuration (`remoractl check` looks
/// it up by this name).
pub const INJECTOR_WEBHOOK: &str = "sidecar-injector.remora.dev";

/// Where the API server reaches the webhook.
#[derive(Clone, Debug)]
pub enum WebhookEndpoint {
    /// In-cluster: `https://<name>.<namespace>.svc:<port>/mutate`.
    Service {
        namespace: String,
        name: String,
        port: i32,
    },
    /// A URL, e.g. `https://127.0.0.1:8443/mutate` in tests.
    Url(String),
}

/// What the API server does when the webhook cannot be reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Create the pod without a sidecar (the default: the mesh never blocks a deploy).
    #[default]
    Ignore,
    /// Refuse the pod.
    Fail,
}

#[derive(Clone, Debug)]
pub struct WebhookConfigurationOptions {
    /// Name of the configuration object.
    pub name: String,
    pub endpoint: WebhookEndpoint,
    /// PEM of the CA that signed the webhook's serving certificate.
    pub ca_bundle: String,
    pub failure_policy: FailurePolicy,
    /// 1–30; kept short so a slow webhook delays a pod by little.
    pub timeout_seconds: i32,
    /// The control plane's namespace, excluded like kube-system.
    pub mesh_namespace: String,
    /// Extra labels a namespace must carry (tests use it to see only their namespace).
    pub namespace_labels: BTreeMap<String, String>,
}

impl WebhookConfigurationOptions {
    pub fn new(endpoint: WebhookEndpoint, ca_bundle: impl Into<String>) -> Self {
        Self {
            name: "remora-sidecar-injector".into(),
            endpoint,
            ca_bundle: ca_bundle.into(),
            failure_policy: FailurePolicy::Ignore,
            timeout_seconds: 5,
            mesh_namespace: "remora-system".into(),
            namespace_labels: BTreeMap::new(),
        }
    }
}

/// The configuration: pod CREATE in every namespace except kube-system, kube-public,
/// kube-node-lease, the mesh namespace and namespaces labelled `remora.dev/inject=disabled`.
/// The webhook decides the rest (namespace label `enabled`, pod opt-in and opt-out), so
/// that a pod can opt in on its own and an opted-out pod is told why in its annotation.
pub fn mutating_webhook_configuration(
    o: &WebhookConfigurationOptions,
) -> MutatingWebhookConfiguration {
    let not_in = |key: &str, values: Vec<String>| LabelSelectorRequirement {
        key: key.to_owned(),
        operator: "NotIn".into(),
        values: Some(values),
    };
    let mut excluded: Vec<String> = SYSTEM_NAMESPACES.iter().map(|s| s.to_string()).collect();
    excluded.push(o.mesh_namespace.clone());
    let client_config = match &o.endpoint {
        WebhookEndpoint::Service {
            namespace,
            name,
            port,
        } => WebhookClientConfig {
            service: Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some("/mutate".into()),
                port: Some(*port),
            }),
            url: None,
            ca_bundle: Some(ByteString(o.ca_bundle.as_bytes().to_vec())),
        },
        WebhookEndpoint::Url(url) => WebhookClientConfig {
            service: None,
            url: Some(url.clone()),
            ca_bundle: Some(ByteString(o.ca_bundle.as_bytes().to_vec())),
        },
    };
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(o.name.clone()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_owned(),
                "remora".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: INJECTOR_WEBHOOK.into(),
            client_config,
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["pods".into()]),
                scope: Some("Namespaced".into()),
            }]),
            namespace_selector: Some(LabelSelector {
                match_labels: (!o.namespace_labels.is_empty()).then(|| o.namespace_labels.clone()),
                match_expressions: Some(vec![
                    not_in("kubernetes.io/metadata.name", excluded),
                    not_in(annotations::INJECT, vec!["disabled".into()]),
                ]),
            }),
            failure_policy: Some(
                match o.failure_policy {
                    FailurePolicy::Ignore => "Ignore",
                    FailurePolicy::Fail => "Fail",
                }
                .into(),
            ),
            match_policy: Some("Equivalent".into()),
            timeout_seconds: Some(o.timeout_seconds),
            side_effects: "None".into(),
            admission_review_versions: vec!["v1".into()],
            reinvocation_policy: Some("IfNeeded".into()),
            ..MutatingWebhook::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fail_open_and_exclude_system_and_mesh_namespaces() {
        let endpoint = WebhookEndpoint::Service {
            namespace: "remora-system".into(),
            name: "remora-webhook".into(),
            port: 443,
        };
        let c = mutating_webhook_configuration(&WebhookConfigurationOptions::new(endpoint, "PEM"));
        let w = &c.webhooks.as_ref().unwrap()[0];
        assert_eq!(w.failure_policy.as_deref(), Some("Ignore"));
        assert_eq!(w.side_effects, "None");
        assert_eq!(w.reinvocation_policy.as_deref(), Some("IfNeeded"));
        assert_eq!(w.timeout_seconds, Some(5));
        let service = w.client_config.service.as_ref().unwrap();
        assert_eq!(service.path.as_deref(), Some("/mutate"));
        let selector = w.namespace_selector.as_ref().unwrap();
        let exprs = selector.match_expressions.as_ref().unwrap();
        let excluded = exprs[0].values.as_ref().unwrap();
        for ns in [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "remora-system",
        ] {
            assert!(excluded.iter().any(|e| e == ns), "{ns}");
        }
        assert_eq!(exprs[1].key, "remora.dev/inject");
        assert_eq!(
            exprs[1].values.as_deref(),
            Some(&["disabled".to_owned()][..])
        );
        assert!(selector.match_labels.is_none());
    }
}
