//! SidecarTemplates and RateLimitPolicies have no children of their own:
//! their effect is the rendered config. This controller tells users whether
//! each one was accepted, and why not.

use std::{fmt::Debug, sync::Arc, time::Duration};

use futures::StreamExt;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{controller::Action, reflector::ObjectRef, watcher},
};
use remora_api::{
    FieldErrors,
    crd::{CommonStatus, RateLimitPolicy, SidecarTemplate},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

use super::{Context, Error, Result, condition, set_condition};

/// What the two kinds share for this controller.
pub trait PolicyResource:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const CONTROLLER: &'static str;
    fn check(&self, ctx: &Context) -> Result<(), FieldErrors>;
    fn status(&self) -> Option<&CommonStatus>;
    /// Accepted fields the sidecar does not enforce yet.
    fn not_enforced(&self) -> FieldErrors {
        FieldErrors::default()
    }
}

impl PolicyResource for SidecarTemplate {
    const CONTROLLER: &'static str = "sidecar_template";
    /// Explicit capture is refused while the mesh's mTLS is on (the webhook
    /// skips such pods too).
    fn check(&self, ctx: &Context) -> Result<(), FieldErrors> {
        self.spec.validate_in_mesh(ctx.config.mtls)
    }
    fn status(&self) -> Option<&CommonStatus> {
        self.status.as_ref()
    }
}

impl PolicyResource for RateLimitPolicy {
    const CONTROLLER: &'static str = "rate_limit_policy";
    fn check(&self, _ctx: &Context) -> Result<(), FieldErrors> {
        self.spec.validate()
    }
    fn status(&self) -> Option<&CommonStatus> {
        self.status.as_ref()
    }
    fn not_enforced(&self) -> FieldErrors {
        crate::acceptance::rate_limit_not_enforced(&self.spec)
    }
}

async fn reconcile<K: PolicyResource>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(K::CONTROLLER);
    let ns = obj
        .namespace()
        .ok_or_else(|| Error::NoNamespace(obj.name_any()))?;
    let generation = obj.meta().generation;
    let mut status = obj.status().cloned().unwrap_or_default();
    let (ok, reason, message) = match obj.check(&ctx) {
        Ok(()) => (
            true,
            "Accepted",
            "rendered into the sidecar config of this namespace".to_owned(),
        ),
        Err(errs) => (
            false,
            "InvalidSpec",
            format!("{} {ns}/{}: {errs}", K::kind(&()), obj.name_any()),
        ),
    };
    set_condition(
        &mut status.conditions,
        condition("Accepted", ok, reason, &message, generation),
    );
    let not_enforced = obj.not_enforced();
    if ok && !not_enforced.is_empty() {
        // Only part of its effect is in place: not Ready, and Degraded says
        // which fields are missing.
        let degraded = format!("{} {ns}/{}: {not_enforced}", K::kind(&()), obj.name_any());
        set_condition(
            &mut status.conditions,
            condition("Degraded", true, "NotEnforced", degraded, generation),
        );
        set_condition(
            &mut status.conditions,
            condition(
                "Ready",
                false,
                "NotEnforced",
                "rendered without fields the sidecar does not enforce yet; see the Degraded condition",
                generation,
            ),
        );
    } else {
        status.conditions.retain(|c| c.type_ != "Degraded");
        set_condition(
            &mut status.conditions,
            condition("Ready", ok, reason, &message, generation),
        );
    }
    status.observed_generation = generation;
    if obj.status() != Some(&status) {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await?;
    }
    ctx.succeeded(&ObjectRef::from_obj(&*obj));
    Ok(Action::requeue(Duration::from_secs(3600)))
}

fn error_policy<K: PolicyResource>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.reconcile_failed(K::CONTROLLER, &*obj, err)
}

pub async fn run<K: PolicyResource>(ctx: Arc<Context>) {
    ctx.controller(
        K::CONTROLLER,
        Api::<K>::all(ctx.client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .run(reconcile::<K>, error_policy::<K>, ctx)
    .for_each(|_| futures::future::ready(()))
    .await;
}
