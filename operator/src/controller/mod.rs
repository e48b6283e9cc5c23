//! The operator's controllers, one per concern, in the shape of
//! kube-rs/controller-rs: `reconcile`, `error_policy`, `run` per file.
//!
//! - [`mesh_config`]: per namespace, renders the sidecar config into the
//!   `remora-config` ConfigMap, plus the Role that lets sidecars read it.
//! - [`service_route`]: subset Services and route status.
//! - [`certificate`]: the mesh CA issuing, rotating and revoking MeshCertificates.
//! - [`policy_status`]: status of SidecarTemplates and RateLimitPolicies.
//! - [`revocations`]: revoked serials kept after their MeshCertificate is gone.

pub mod certificate;
pub mod mesh_config;
pub mod policy_status;
pub mod revocations;
pub mod service_route;
pub mod status;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use kube::{
    Api, Client,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef, reflector},
        watcher,
    },
};
use remora_api::config::TlsMode;

pub use status::{condition, set_condition};

use crate::{ca::MeshCa, health::Health, metrics::Metrics};

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "remora-operator";
/// Label on every object the operator creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "remora-operator");
/// The namespace label that puts a namespace in the mesh.
pub use remora_api::labels::INJECT as INJECT_LABEL;
/// The ConfigMap every mesh namespace gets, and its key.
pub use remora_api::labels::{CONFIG_HASH as HASH_ANNOTATION, CONFIG_KEY, CONFIG_MAP};

/// Settings of the whole mesh, from flags (and so from the Helm chart values).
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// The operator's own namespace: the CA Secret lives here.
    pub namespace: String,
    pub trust_domain: String,
    pub cluster_domain: String,
    pub mtls: TlsMode,
    /// The Secret holding the CA (`tls.crt`, `tls.key`, optional `ca.crt`).
    pub ca_secret: String,
}

impl OperatorConfig {
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            trust_domain: remora_api::config::DEFAULT_TRUST_DOMAIN.into(),
            cluster_domain: "cluster.local".into(),
            mtls: TlsMode::Permissive,
            ca_secret: "remora-ca".into(),
        }
    }
}

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub ca: Arc<MeshCa>,
    pub metrics: Arc<Metrics>,
    /// `/readyz`: each controller reports when its caches have synced.
    pub health: Arc<Health>,
    pub recorder: Recorder,
    backoff: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        config: OperatorConfig,
        ca: Arc<MeshCa>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            ca,
            metrics,
            health,
            backoff: Mutex::default(),
        })
    }

    /// `Controller::new`, except that its watch tells `/readyz` when its
    /// first list is in. (Not `Store::wait_until_ready`: the store wakes only
    /// its last waiter, and the controller itself waits on it.)
    pub fn controller<K>(
        &self,
        name: &'static str,
        api: Api<K>,
        wc: watcher::Config,
    ) -> Controller<K>
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let (reader, writer) = reflector::store();
        let health = self.health.clone();
        let events = watcher(api, wc).default_backoff().inspect(move |event| {
            if let Ok(watcher::Event::InitDone) = event {
                health.synced(name);
            }
        });
        Controller::for_stream(reflector(writer, events).applied_objects(), reader)
    }

    /// Exponential back-off per object: 1 s, 2 s, 4 s ... capped at 5 minutes.
    pub fn failed<K: kube::Resource>(&self, obj: &ObjectRef<K>) -> Action
    where
        K::DynamicType: Eq + std::hash::Hash,
    {
        let mut map = self.backoff.lock().expect("backoff lock");
        let n = map.entry(obj.to_string()).or_insert(0);
        *n = (*n + 1).min(9);
        Action::requeue(Duration::from_secs(1 << (*n - 1)).min(Duration::from_secs(300)))
    }

    /// What every error policy does: log, count, and back off.
    pub fn reconcile_failed<K>(&self, controller: &'static str, obj: &K, err: &Error) -> Action
    where
        K: kube::Resource<DynamicType = ()>,
    {
        tracing::warn!(controller, object = %ObjectRef::from_obj(obj), "reconcile failed: {err}");
        self.metrics.error(controller, err.metric_label());
        self.failed(&ObjectRef::from_obj(obj))
    }

    /// Publishes a Kubernetes Event about `obj`; failing to is only logged.
    pub async fn publish<K>(&self, obj: &K, type_: EventType, reason: &str, note: &str)
    where
        K: kube::Resource<DynamicType = ()>,
    {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!("could not publish event: {e}");
        }
    }

    pub fn succeeded<K: kube::Resource>(&self, obj: &ObjectRef<K>)
    where
        K::DynamicType: Eq + std::hash::Hash,
    {
        self.backoff
            .lock()
            .expect("backoff lock")
            .remove(&obj.to_string());
    }
}

/// Everything that can go wrong in a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("certificate: {0}")]
    Certificate(#[from] crate::ca::CaError),
    #[error("serializing: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("{0} has no namespace")]
    NoNamespace(String),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// What went wrong inside a finalizer's reconcile, or with the
    /// finalizer itself.
    pub fn from_finalizer(e: kube::runtime::finalizer::Error<Error>) -> Self {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(e) | F::CleanupFailed(e) => e,
            F::AddFinalizer(e) | F::RemoveFinalizer(e) => Error::Kube(e),
            other => Error::Finalizer(other.to_string()),
        }
    }
}

impl Error {
    /// A short, bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Certificate(_) => "certificate",
            Error::Serialize(_) => "serialize",
            Error::NoNamespace(_) => "no_namespace",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
