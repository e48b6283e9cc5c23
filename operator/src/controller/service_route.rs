//! ServiceRoutes: their subset Services, and whether they are accepted.
//!
//! Each subset becomes a headless Service `<service>-<subset>` selecting the
//! Service's pods plus the subset labels, owned by the route, so sidecars
//! resolve the subset's pod IPs through cluster DNS.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams},
    runtime::{
        controller::Action,
        events::EventType,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use remora_api::crd::{ServiceRoute, ServiceRouteStatus};
use serde_json::json;

use super::{Context, Error, FIELD_MANAGER, MANAGED_BY, Result, condition, set_condition};
use crate::acceptance;

const CONTROLLER: &str = "service_route";
/// How soon a route refused for a conflict over its port is looked at again.
const CONFLICT_RECHECK: Duration = Duration::from_secs(2);
/// Label on subset Services naming the ServiceRoute that owns them.
pub const ROUTE_LABEL: &str = "remora.dev/service-route";
pub const SUBSET_LABEL: &str = "remora.dev/subset";

/// A route's fate depends on the other routes of its service port.
struct RouteContext {
    ctx: Arc<Context>,
    routes: Store<ServiceRoute>,
}

fn remove_condition(status: &mut ServiceRouteStatus, type_: &str) {
    status.conditions.retain(|c| c.type_ != type_);
}

async fn reconcile(route: Arc<ServiceRoute>, cx: Arc<RouteContext>) -> Result<Action> {
    let ctx = cx.ctx.clone();
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let ns = route
        .namespace()
        .ok_or_else(|| Error::NoNamespace(route.name_any()))?;
    let name = route.name_any();
    let generation = route.metadata.generation;
    let routes: Api<ServiceRoute> = Api::namespaced(ctx.client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let mut status = route.status.clone().unwrap_or_default();

    // Refused routes (invalid, an unsupported protocol, a second route for
    // the port) are reported as rendering reports them, and their existing
    // children left alone: a typo must not take a working canary down.
    let same_service: Vec<ServiceRoute> = cx
        .routes
        .state()
        .iter()
        .filter(|r| r.namespace() == route.namespace() && r.spec.service == route.spec.service)
        .map(|r| (**r).clone())
        .collect();
    if let Some(refusal) = acceptance::refuse_route(&route, &same_service) {
        let message = format!("ServiceRoute {ns}/{name}: {}", refusal.errors);
        set_condition(
            &mut status.conditions,
            condition("Accepted", false, refusal.reason, &message, generation),
        );
        set_condition(
            &mut status.conditions,
            condition(
                "Ready",
                false,
                refusal.reason,
                "not in any sidecar config; see the Accepted condition",
                generation,
            ),
        );
        remove_condition(&mut status, "Degraded");
        publish_once(&ctx, &route, &status, refusal.reason, &message).await;
        let action = finish(&ctx, &routes, &route, status).await?;
        // The deletion that settles a conflict triggers this reconcile through
        // a second watch, which may run before the store above has dropped the
        // deleted route: look again soon rather than at the next resync.
        return Ok(if refusal.reason == "Conflict" {
            Action::requeue(CONFLICT_RECHECK)
        } else {
            action
        });
    }

    let Some(target) = services.get_opt(&route.spec.service).await? else {
        let message = format!(
            "Service {ns}/{} does not exist; create it or fix spec.service",
            route.spec.service
        );
        set_condition(
            &mut status.conditions,
            condition("Accepted", false, "ServiceNotFound", &message, generation),
        );
        set_condition(
            &mut status.conditions,
            condition("Ready", false, "ServiceNotFound", &message, generation),
        );
        publish_once(&ctx, &route, &status, "ServiceNotFound", &message).await;
        return finish(&ctx, &routes, &route, status).await;
    };
    let target_spec = target.spec.clone().unwrap_or_default();
    let ports = target_spec.ports.clone().unwrap_or_default();
    if !ports.iter().any(|p| p.port == i32::from(route.spec.port.0)) {
        let message = format!(
            "Service {ns}/{} has no port {}",
            route.spec.service, route.spec.port.0
        );
        set_condition(
            &mut status.conditions,
            condition("Accepted", false, "PortNotFound", &message, generation),
        );
        set_condition(
            &mut status.conditions,
            condition("Ready", false, "PortNotFound", &message, generation),
        );
        return finish(&ctx, &routes, &route, status).await;
    }

    // Desired subset Services.
    let owner = route.controller_owner_ref(&()).expect("routes have a uid");
    let mut desired = Vec::new();
    for subset in &route.spec.subsets {
        let svc_name = route.spec.subset_service_name(&subset.name);
        let mut selector: BTreeMap<String, String> =
            target_spec.selector.clone().unwrap_or_default();
        selector.extend(subset.labels.clone());
        let svc = Service {
            metadata: ObjectMeta {
                name: Some(svc_name.clone()),
                namespace: Some(ns.clone()),
                labels: Some(
                    [
                        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                        (ROUTE_LABEL.to_owned(), name.clone()),
                        (SUBSET_LABEL.to_owned(), subset.name.clone()),
                    ]
                    .into(),
                ),
                owner_references: Some(vec![owner.clone()]),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                selector: Some(selector),
                ports: Some(
                    ports
                        .iter()
                        .map(|p| ServicePort {
                            name: p.name.clone(),
                            port: p.port,
                            target_port: p.target_port.clone(),
                            protocol: p.protocol.clone(),
                            app_protocol: p.app_protocol.clone(),
                            ..ServicePort::default()
                        })
                        .collect(),
                ),
                publish_not_ready_addresses: Some(false),
                ..ServiceSpec::default()
            }),
            status: None,
        };
        services
            .patch(
                &svc_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&svc),
            )
            .await?;
        desired.push(svc_name);
    }
    // Subsets removed from the spec lose their Service.
    let owned = services
        .list(&ListParams::default().labels(&format!("{ROUTE_LABEL}={name}")))
        .await?;
    for svc in owned {
        let svc_name = svc.name_any();
        if !desired.contains(&svc_name) {
            services.delete(&svc_name, &DeleteParams::default()).await?;
        }
    }

    set_condition(
        &mut status.conditions,
        condition(
            "Accepted",
            true,
            "Accepted",
            "routes are in the sidecar config of every namespace in exportTo",
            generation,
        ),
    );
    let ready_message = format!("{} subset Service(s) in place", desired.len());
    set_condition(
        &mut status.conditions,
        condition("Ready", true, "SubsetsReady", ready_message, generation),
    );
    // Every field is enforced: a Degraded left by an older operator goes.
    remove_condition(&mut status, "Degraded");
    status.subset_services = desired;
    finish(&ctx, &routes, &route, status).await
}

/// Writes the status when it changed; success resets the back-off.
async fn finish(
    ctx: &Context,
    api: &Api<ServiceRoute>,
    route: &ServiceRoute,
    mut status: ServiceRouteStatus,
) -> Result<Action> {
    status.observed_generation = route.metadata.generation;
    if route.status.as_ref() != Some(&status) {
        let patch = json!({ "status": status });
        api.patch_status(
            &route.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    ctx.succeeded(&ObjectRef::from_obj(route));
    Ok(Action::requeue(Duration::from_secs(600)))
}

/// An Event, once per change of the Accepted condition.
async fn publish_once(
    ctx: &Context,
    route: &ServiceRoute,
    status: &ServiceRouteStatus,
    reason: &str,
    message: &str,
) {
    let before = route
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Accepted"))
        .map(|c| (&c.reason, &c.message));
    let now = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Accepted")
        .map(|c| (&c.reason, &c.message));
    if before == now {
        return;
    }
    ctx.publish(route, EventType::Warning, reason, message)
        .await;
}

fn error_policy(route: Arc<ServiceRoute>, err: &Error, cx: Arc<RouteContext>) -> Action {
    cx.ctx.reconcile_failed(CONTROLLER, &*route, err)
}

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let controller = ctx.controller(
        CONTROLLER,
        Api::<ServiceRoute>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    );
    let routes = controller.store();
    let same_port = routes.clone();
    let cx = Arc::new(RouteContext {
        ctx,
        routes: routes.clone(),
    });
    controller
        .owns(
            Api::<Service>::all(client.clone()),
            watcher::Config::default().labels(ROUTE_LABEL),
        )
        // A route waiting for its Service is accepted as soon as it appears.
        .watches(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            move |svc: Service| {
                let ns = svc.namespace();
                routes
                    .state()
                    .iter()
                    .filter(|r| r.namespace() == ns && r.spec.service == svc.name_any())
                    .map(|r| ObjectRef::from_obj(&**r))
                    .collect::<Vec<_>>()
            },
        )
        // A route changed or deleted can settle a conflict over its service
        // port: the others for that port are looked at again.
        .watches(
            Api::<ServiceRoute>::all(client.clone()),
            watcher::Config::default(),
            move |changed: ServiceRoute| {
                same_port
                    .state()
                    .iter()
                    .filter(|r| {
                        r.namespace() == changed.namespace()
                            && r.spec.service == changed.spec.service
                            && r.name_any() != changed.name_any()
                    })
                    .map(|r| ObjectRef::from_obj(&**r))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile, error_policy, cx)
        .for_each(|_| futures::future::ready(()))
        .await;
}
