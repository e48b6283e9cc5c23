//! Remora's mutating admission webhook: injects the sidecar into pods.
//!
//! - [`inject()`]: the pure injection, `(pod, template, options) -> pod`.
//! - [`process_pod`]: decide, choose the template, inject or record why not; shared by
//!   the webhook and `remoractl inject`.
//! - [`patch::diff`]: the JSON patch from the received pod to the injected one.
//! - [`Mutator`]: AdmissionReview in, AdmissionReview out; [`server`] puts it on HTTPS.
//! - [`mutating_webhook_configuration`]: the registration.

pub mod admission;
pub mod annotations;
pub mod catalog;
pub mod configuration;
pub mod decision;
pub mod inject;
pub mod metrics;
pub mod overrides;
pub mod patch;
pub mod probes;
pub mod server;
pub mod templates;
pub mod tls;
pub mod verdict;

pub use admission::Mutator;
pub use catalog::Catalog;
pub use configuration::{
    FailurePolicy, WebhookConfigurationOptions, WebhookEndpoint, mutating_webhook_configuration,
};
pub use decision::{Intent, SkipReason, decide};
pub use inject::{InjectError, InjectOptions, Injection, inject};
pub use metrics::{AdmissionResult, Metrics};
pub use templates::{SelectedTemplate, TemplateSource, builtin_template, select_template};
pub use tls::ReloadingCert;
pub use verdict::{Outcome, Settings, Verdict, process_pod};
