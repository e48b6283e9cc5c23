//! Registering a mutating webhook with the test API server, and creating pods through it.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};

use crate::{ControlPlane, Error};

const FIELD_MANAGER: &str = "remora-testkit";

/// What the API server does when the webhook cannot be called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    Ignore,
    Fail,
}

impl FailurePolicy {
    fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Ignore => "Ignore",
            FailurePolicy::Fail => "Fail",
        }
    }
}

/// A MutatingWebhookConfiguration with one webhook, called for pod CREATE at a URL
/// (typically `https://127.0.0.1:<port>/mutate`, served with [`crate::webhook_serving_cert`]).
#[derive(Debug, Clone)]
pub struct WebhookRegistration {
    name: String,
    url: String,
    ca_bundle_pem: String,
    namespace_selector: Option<LabelSelector>,
    object_selector: Option<LabelSelector>,
    failure_policy: FailurePolicy,
    timeout_seconds: i32,
}

impl WebhookRegistration {
    /// `name` names the configuration (a DNS subdomain); the webhook inside it is
    /// `<name>.testkit.remora.dev`. Defaults: every namespace, `failurePolicy: Fail` (a
    /// test should see a broken webhook), 10 s timeout.
    pub fn new(name: &str, url: &str, ca_bundle_pem: &str) -> Self {
        Self {
            name: name.to_string(),
            url: url.to_string(),
            ca_bundle_pem: ca_bundle_pem.to_string(),
            namespace_selector: None,
            object_selector: None,
            failure_policy: FailurePolicy::Fail,
            timeout_seconds: 10,
        }
    }

    /// Only namespaces carrying all these labels.
    pub fn namespace_labels(mut self, labels: &[(&str, &str)]) -> Self {
        self.namespace_selector = Some(match_labels(labels));
        self
    }

    pub fn namespace_selector(mut self, selector: LabelSelector) -> Self {
        self.namespace_selector = Some(selector);
        self
    }

    pub fn object_selector(mut self, selector: LabelSelector) -> Self {
        self.object_selector = Some(selector);
        self
    }

    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// Between 1 and 30, as the API server requires.
    pub fn timeout_seconds(mut self, seconds: i32) -> Self {
        self.timeout_seconds = seconds;
        self
    }

    /// The configuration this registration applies.
    pub fn to_configuration(&self) -> MutatingWebhookConfiguration {
        MutatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..ObjectMeta::default()
            },
            webhooks: Some(vec![MutatingWebhook {
                name: format!("{}.testkit.remora.dev", self.name),
                client_config: WebhookClientConfig {
                    url: Some(self.url.clone()),
                    ca_bundle: Some(ByteString(self.ca_bundle_pem.as_bytes().to_vec())),
                    service: None,
                },
                rules: Some(vec![RuleWithOperations {
                    api_groups: Some(vec![String::new()]),
                    api_versions: Some(vec!["v1".into()]),
                    operations: Some(vec!["CREATE".into()]),
                    resources: Some(vec!["pods".into()]),
                    scope: Some("Namespaced".into()),
                }]),
                namespace_selector: self.namespace_selector.clone(),
                object_selector: self.object_selector.clone(),
                failure_policy: Some(self.failure_policy.as_str().into()),
                timeout_seconds: Some(self.timeout_seconds),
                side_effects: "None".into(),
                admission_review_versions: vec!["v1".into()],
                reinvocation_policy: Some("Never".into()),
                ..MutatingWebhook::default()
            }]),
        }
    }
}

impl ControlPlane {
    /// Creates or replaces (server-side apply) the webhook configuration.
    ///
    /// The API server picks up webhook configurations from a watch, so the first pods
    /// created right after may not be sent to the webhook yet; poll with
    /// [`ControlPlane::create_pod_dry_run`] until the mutation shows.
    pub async fn register_mutating_webhook(
        &self,
        registration: &WebhookRegistration,
    ) -> Result<MutatingWebhookConfiguration, Error> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client().await?);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let applied = api
            .patch(
                &registration.name,
                &params,
                &Patch::Apply(registration.to_configuration()),
            )
            .await?;
        Ok(applied)
    }

    /// Creates `pod` in `namespace` through the API server (so admission webhooks run) and
    /// returns the stored pod.
    pub async fn create_pod(&self, namespace: &str, pod: &Pod) -> Result<Pod, Error> {
        let api: Api<Pod> = Api::namespaced(self.client().await?, namespace);
        Ok(api.create(&PostParams::default(), pod).await?)
    }

    /// Like [`ControlPlane::create_pod`] with `dryRun=All`: admission runs (webhooks with
    /// `sideEffects: None` are called) and the result is returned, but nothing is stored.
    pub async fn create_pod_dry_run(&self, namespace: &str, pod: &Pod) -> Result<Pod, Error> {
        let api: Api<Pod> = Api::namespaced(self.client().await?, namespace);
        let params = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        Ok(api.create(&params, pod).await?)
    }
}

/// A pod named `name` with one container `app` running `image`: the smallest pod the API
/// server accepts.
pub fn pod(name: &str, image: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some(image.to_string()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn match_labels(labels: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        match_expressions: None,
    }
}
