//! Per namespace: render the sidecar config into `remora-config`.
//!
//! A namespace is in the mesh when it carries `remora.dev/inject=enabled` or
//! holds a Remora resource. Any change to a resource re-renders only the
//! namespaces it affects (its own; for a ServiceRoute, those in `exportTo`;
//! for a revocation, all; for a Service in a mesh namespace or a namespace
//! joining or leaving, all, since every config lists the mesh's ClusterIPs
//! for mTLS on pass-through traffic, and the ClusterIPs of routed Services
//! for the route tables). An unchanged hash is never rewritten.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{ConfigMap, Namespace, Pod, Service},
    rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ObjectMeta, PartialObjectMeta, Patch, PatchParams},
    runtime::{
        WatchStreamExt, controller,
        controller::Action,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use remora_api::{
    crd::{MeshCertificate, RateLimitPolicy, ServiceRoute, SidecarTemplate},
    labels::{InjectIntent, SIDECAR, SIDECAR_INJECTED},
};
use tracing::{info, warn};

use super::{
    CONFIG_KEY, CONFIG_MAP, Context, Error, FIELD_MANAGER, HASH_ANNOTATION, INJECT_LABEL,
    MANAGED_BY, Result, revocations,
};
use crate::render::{MeshResources, RenderContext, render_sidecar_config};

const CONTROLLER: &str = "mesh_config";
const READER_ROLE: &str = "remora-config-reader";

/// Caches of every Remora resource in the cluster, shared by reconciles.
pub struct MeshStores {
    pub namespaces: Store<Namespace>,
    pub templates: Store<SidecarTemplate>,
    pub routes: Store<ServiceRoute>,
    pub rate_limits: Store<RateLimitPolicy>,
    pub certificates: Store<MeshCertificate>,
    pub services: Store<Service>,
    /// Pods the webhook injected (metadata only, by label).
    pub injected_pods: Store<PartialObjectMeta<Pod>>,
    /// The revocation store (`revocations::STORE`), a list of at most one.
    pub revocations: Store<ConfigMap>,
}

impl MeshStores {
    /// The ClusterIPs of Services in mesh namespaces: destinations that have
    /// sidecars behind them.
    fn mesh_addresses(&self) -> BTreeSet<IpAddr> {
        // Namespaces whose pods the webhook injects (the label, as the
        // webhook reads it), not those that merely hold a Remora resource.
        let meshed: BTreeSet<String> = self
            .namespaces
            .state()
            .iter()
            .filter(|n| injected(n))
            .map(|n| n.name_any())
            .collect();
        self.services
            .state()
            .iter()
            .filter(|s| s.namespace().is_some_and(|n| meshed.contains(&n)))
            .flat_map(|s| cluster_ips(s))
            .collect()
    }

    /// The ClusterIPs of the Services that ServiceRoutes name, by
    /// (namespace, name): each route table owns its Service's addresses.
    fn service_addresses(&self) -> BTreeMap<(String, String), Vec<IpAddr>> {
        let routed: BTreeSet<(String, String)> = self
            .routes
            .state()
            .iter()
            .map(|r| (r.namespace().unwrap_or_default(), r.spec.service.clone()))
            .collect();
        self.services
            .state()
            .iter()
            .map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), s))
            .filter(|(key, _)| routed.contains(key))
            .map(|(key, s)| (key, cluster_ips(s)))
            .filter(|(_, ips)| !ips.is_empty())
            .collect()
    }

    /// What Services put into configs; a Service event that leaves it
    /// unchanged re-renders nothing.
    fn service_view(&self, mtls_on: bool) -> ServiceView {
        ServiceView {
            mesh: if mtls_on {
                self.mesh_addresses()
            } else {
                BTreeSet::new()
            },
            routed: self.service_addresses(),
        }
    }

    fn holds_resources(&self, ns: &str) -> bool {
        let in_ns = |o: Option<String>| o.as_deref() == Some(ns);
        self.templates.state().iter().any(|r| in_ns(r.namespace()))
            || self.routes.state().iter().any(|r| in_ns(r.namespace()))
            || self
                .rate_limits
                .state()
                .iter()
                .any(|r| in_ns(r.namespace()))
            || self
                .certificates
                .state()
                .iter()
                .any(|r| in_ns(r.namespace()))
    }

    /// The serials revoked across the mesh: those of live MeshCertificates,
    /// and those kept in the revocation store after theirs were deleted,
    /// until they expire.
    fn revoked_serials(&self) -> BTreeSet<String> {
        let now = jiff::Timestamp::now();
        let live = self
            .certificates
            .state()
            .iter()
            .filter_map(|c| c.status.as_ref())
            .flat_map(|s| s.revoked_serials.clone())
            .collect::<Vec<_>>();
        let kept = self
            .revocations
            .state()
            .iter()
            .flat_map(|cm| revocations::entries(cm))
            .filter(|(_, not_after)| revocations::in_force(*not_after, now))
            .map(|(serial, _)| serial)
            .collect::<Vec<_>>();
        live.into_iter().chain(kept).collect()
    }

    /// Namespaces with at least one injected pod: their sidecars mount
    /// `remora-config`, so they get one whatever else they hold.
    fn namespaces_with_injected_pods(&self) -> BTreeSet<String> {
        self.injected_pods
            .state()
            .iter()
            .filter_map(|p| p.namespace())
            .collect()
    }

    fn resources(&self, ns: &str) -> MeshResources {
        let own = |o: Option<String>| o.as_deref() == Some(ns);
        MeshResources {
            templates: self
                .templates
                .state()
                .iter()
                .filter(|r| own(r.namespace()))
                .map(|r| (**r).clone())
                .collect(),
            routes: self.routes.state().iter().map(|r| (**r).clone()).collect(),
            rate_limits: self
                .rate_limits
                .state()
                .iter()
                .filter(|r| own(r.namespace()))
                .map(|r| (**r).clone())
                .collect(),
            certificates: self
                .certificates
                .state()
                .iter()
                .map(|r| (**r).clone())
                .collect(),
        }
    }
}

/// A Service's ClusterIPs (`spec.clusterIPs`, else `spec.clusterIP`); none
/// for a headless Service.
fn cluster_ips(s: &Service) -> Vec<IpAddr> {
    let Some(spec) = s.spec.as_ref() else {
        return Vec::new();
    };
    spec.cluster_ips
        .clone()
        .unwrap_or_else(|| spec.cluster_ip.clone().into_iter().collect())
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

/// The Service addresses that configs list: the mesh's (with mTLS on) and
/// the routed Services'.
#[derive(PartialEq)]
struct ServiceView {
    mesh: BTreeSet<IpAddr>,
    routed: BTreeMap<(String, String), Vec<IpAddr>>,
}

/// What a watch last saw (Service addresses, namespaces with injected pods),
/// so that only a change of it triggers renders.
struct LastSeen<T>(std::sync::Mutex<Option<T>>);

impl<T> Default for LastSeen<T> {
    fn default() -> Self {
        Self(std::sync::Mutex::new(None))
    }
}

impl<T: Ord + Clone> LastSeen<BTreeSet<T>> {
    /// Records `now`; the members that joined or left since the last set seen.
    fn difference(&self, now: BTreeSet<T>) -> BTreeSet<T> {
        let mut last = self.0.lock().expect("last seen");
        let before = last.take().unwrap_or_default();
        let diff = before.symmetric_difference(&now).cloned().collect();
        *last = Some(now);
        diff
    }
}

impl<T: PartialEq> LastSeen<T> {
    /// Records `now`; true when it differs from the last one seen.
    fn changed(&self, now: T) -> bool {
        let mut last = self.0.lock().expect("last addresses");
        if last.as_ref() == Some(&now) {
            return false;
        }
        *last = Some(now);
        true
    }
}

struct MeshConfigContext {
    ctx: Arc<Context>,
    stores: Arc<MeshStores>,
}

/// Whether the webhook injects this namespace's pods (`remora.dev/inject`
/// = `enabled` or `true`, any case).
fn injected(ns: &Namespace) -> bool {
    InjectIntent::parse(ns.labels().get(INJECT_LABEL).map(String::as_str)) == InjectIntent::Enabled
}

/// Labelled for injection, holding a Remora resource, or running a pod
/// that opted in on its own: each needs a config.
pub fn in_mesh(ns: &Namespace, stores: &MeshStores) -> bool {
    let name = ns.name_any();
    injected(ns)
        || stores.holds_resources(&name)
        || stores.namespaces_with_injected_pods().contains(&name)
}

async fn reconcile(ns: Arc<Namespace>, cx: Arc<MeshConfigContext>) -> Result<Action> {
    let ctx = &cx.ctx;
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let name = ns.name_any();
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    if !in_mesh(&ns, &cx.stores) {
        // Left the mesh: take back what we gave it.
        if config_maps
            .get_opt(CONFIG_MAP)
            .await?
            .is_some_and(|cm| managed(&cm.metadata))
        {
            delete_ignoring_missing(&config_maps, CONFIG_MAP).await?;
            delete_ignoring_missing(
                &Api::<Role>::namespaced(ctx.client.clone(), &name),
                READER_ROLE,
            )
            .await?;
            delete_ignoring_missing(
                &Api::<RoleBinding>::namespaced(ctx.client.clone(), &name),
                READER_ROLE,
            )
            .await?;
            info!(namespace = %name, "namespace left the mesh; removed its sidecar config");
        }
        return Ok(Action::await_change());
    }

    let mut render_ctx = RenderContext::new(&name);
    render_ctx.trust_domain = ctx.config.trust_domain.clone();
    render_ctx.cluster_domain = ctx.config.cluster_domain.clone();
    render_ctx.mtls = ctx.config.mtls;
    render_ctx.trust_bundle = ctx.ca.cert_pem().to_owned();
    render_ctx.revoked_serials = cx.stores.revoked_serials();
    if render_ctx.mtls != remora_api::config::TlsMode::Disabled {
        render_ctx.mesh_addresses = cx.stores.mesh_addresses();
    }
    render_ctx.service_addresses = cx.stores.service_addresses();
    let rendered = render_sidecar_config(&render_ctx, &cx.stores.resources(&name));
    let json = rendered.config.to_pretty_json();
    let hash = rendered.config.hash.clone().unwrap_or_default();
    ctx.metrics
        .config_bytes
        .get_or_create(&crate::metrics::NamespaceLabel {
            namespace: name.clone(),
        })
        .set(json.len() as i64);

    let current = config_maps.get_opt(CONFIG_MAP).await?;
    let current_hash = current
        .as_ref()
        .and_then(|cm| cm.annotations().get(HASH_ANNOTATION).cloned());
    if current_hash.as_deref() == Some(hash.as_str()) {
        return Ok(Action::requeue(Duration::from_secs(600)));
    }

    let owner = ns.controller_owner_ref(&()).expect("namespaces have a uid");
    let meta = |name: &str| ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.name_any()),
        labels: Some([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())].into()),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    };
    let mut cm_meta = meta(CONFIG_MAP);
    cm_meta.annotations = Some([(HASH_ANNOTATION.to_owned(), hash.clone())].into());
    let config_map = ConfigMap {
        metadata: cm_meta,
        data: Some([(CONFIG_KEY.to_owned(), json)].into()),
        ..ConfigMap::default()
    };
    let role = Role {
        metadata: meta(READER_ROLE),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            resource_names: Some(vec![CONFIG_MAP.into()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..PolicyRule::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: meta(READER_ROLE),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: READER_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Group".into(),
            name: format!("system:serviceaccounts:{name}"),
            namespace: None,
        }]),
    };
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    Api::<Role>::namespaced(ctx.client.clone(), &name)
        .patch(READER_ROLE, &pp, &Patch::Apply(&role))
        .await?;
    Api::<RoleBinding>::namespaced(ctx.client.clone(), &name)
        .patch(READER_ROLE, &pp, &Patch::Apply(&binding))
        .await?;
    config_maps
        .patch(CONFIG_MAP, &pp, &Patch::Apply(&config_map))
        .await?;
    ctx.metrics.config_writes.inc();
    for r in &rendered.rejected {
        warn!(namespace = %name, "left out of the sidecar config: {r}");
    }
    info!(namespace = %name, %hash, "wrote sidecar config");
    ctx.succeeded(&ObjectRef::from_obj(&*ns));
    Ok(Action::requeue(Duration::from_secs(600)))
}

fn managed(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY.0))
        .map(String::as_str)
        == Some(MANAGED_BY.1)
}

async fn delete_ignoring_missing<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn error_policy(ns: Arc<Namespace>, err: &Error, cx: Arc<MeshConfigContext>) -> Action {
    cx.ctx.reconcile_failed(CONTROLLER, &*ns, err)
}

fn watch_config() -> watcher::Config {
    watcher::Config::default().any_semantic()
}

/// Runs the controller until the process stops.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let (templates, template_events) = cached(Api::<SidecarTemplate>::all(client.clone())).await;
    let (routes, route_events) = cached(Api::<ServiceRoute>::all(client.clone())).await;
    let (rate_limits, limit_events) = cached(Api::<RateLimitPolicy>::all(client.clone())).await;
    let (certificates, cert_events) = cached(Api::<MeshCertificate>::all(client.clone())).await;
    let (services, service_events) = cached(Api::<Service>::all(client.clone())).await;
    // Metadata only: the label is all that is read, and pods are many.
    let (injected_pods, pod_events) = cached_events(watcher(
        Api::<PartialObjectMeta<Pod>>::all(client.clone()),
        injected_pods_watch(),
    ))
    .await;
    let (revocation_store, revocation_events) = cached_events(watcher(
        Api::<ConfigMap>::namespaced(client.clone(), &ctx.config.namespace),
        revocations::store_watch(),
    ))
    .await;

    // A short trailing debounce (as Istio debounces pushes) folds bursts of
    // changes that touch every namespace, such as Services being created,
    // into one render per namespace.
    let controller = ctx
        .controller(
            CONTROLLER,
            Api::<Namespace>::all(client.clone()),
            watch_config(),
        )
        .with_config(controller::Config::default().debounce(Duration::from_millis(100)));
    let namespaces = controller.store();
    let stores = Arc::new(MeshStores {
        namespaces: namespaces.clone(),
        templates,
        routes,
        rate_limits,
        certificates,
        services,
        injected_pods,
        revocations: revocation_store,
    });
    let all_namespaces = move || {
        namespaces
            .state()
            .iter()
            .map(|n| ObjectRef::new(&n.name_any()))
            .collect::<Vec<_>>()
    };
    let all_for_routes = all_namespaces.clone();
    let all_for_services = all_namespaces.clone();
    let all_for_namespaces = all_namespaces.clone();
    let all_for_revocations = all_namespaces.clone();
    let stores_for_services = stores.clone();
    let stores_for_pods = stores.clone();
    let stores_for_routes = stores.clone();
    let last_addresses = LastSeen::default();
    let last_pod_namespaces = LastSeen::default();
    let mtls_on = ctx.config.mtls != remora_api::config::TlsMode::Disabled;
    let own = |ns: Option<String>| ns.map(|n| ObjectRef::<Namespace>::new(&n));

    let managed_config_maps =
        watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    controller
        // Not `owns`: it would key the owner Namespace by the ConfigMap's
        // namespace, a second key for the same Namespace, and two reconciles
        // of one namespace could then run at once.
        .watches(
            Api::<ConfigMap>::all(client.clone()),
            managed_config_maps,
            move |cm: ConfigMap| own(cm.namespace()),
        )
        .watches_stream(
            template_events,
            move |t: SidecarTemplate| own(t.namespace()),
        )
        .watches_stream(limit_events, move |p: RateLimitPolicy| own(p.namespace()))
        // A pod injected where nothing else asks for a config: its namespace
        // needs one. Only a change of the set of such namespaces triggers, not
        // every update of every injected pod.
        .watches_stream(pod_events, move |_: PartialObjectMeta<Pod>| {
            // The namespaces that joined (their first pod) or left (their last).
            last_pod_namespaces
                .difference(stores_for_pods.namespaces_with_injected_pods())
                .into_iter()
                .map(|ns| ObjectRef::<Namespace>::new(&ns))
                .collect::<Vec<_>>()
        })
        // Revocations kept after deletion, or pruned: every sidecar.
        .watches_stream(revocation_events, move |_: ConfigMap| all_for_revocations())
        // Every config lists the mesh's ClusterIPs (with mTLS on) and the
        // ClusterIPs of routed Services: a Service in a mesh namespace, a
        // routed Service, or a namespace joining or leaving, touches them all.
        .watches_stream(service_events, move |_: Service| {
            // Only when those addresses changed: other Service updates
            // (annotations, status, headless Services) touch no config, and
            // must not keep the debounce from ever firing.
            if last_addresses.changed(stores_for_services.service_view(mtls_on)) {
                all_for_services()
            } else {
                Vec::new()
            }
        })
        .watches(
            Api::<Namespace>::all(client.clone()),
            watch_config(),
            move |_: Namespace| {
                if mtls_on {
                    all_for_namespaces()
                } else {
                    Vec::new()
                }
            },
        )
        .watches_stream(route_events, move |r: ServiceRoute| {
            // Its own namespace always: the namespace cache may not have seen
            // a namespace created a moment before the route.
            let mut out = vec![ObjectRef::new(&r.namespace().unwrap_or_default())];
            // A change can settle a conflict over the service port (only the
            // first route by name is rendered): the others' namespaces too.
            let same_port: Vec<_> = stores_for_routes
                .routes
                .state()
                .into_iter()
                .filter(|o| o.namespace() == r.namespace() && o.spec.service == r.spec.service)
                .collect();
            let export_to = r
                .spec
                .export_to
                .iter()
                .chain(same_port.iter().flat_map(|o| o.spec.export_to.iter()));
            let mut all = false;
            for e in export_to {
                match e.as_str() {
                    "*" => all = true,
                    "." => {}
                    ns => out.push(ObjectRef::new(ns)),
                }
            }
            if all {
                out.extend(all_for_routes());
            }
            out
        })
        .watches_stream(cert_events, move |c: MeshCertificate| {
            // A revocation must reach every sidecar.
            if c.status
                .as_ref()
                .is_some_and(|s| !s.revoked_serials.is_empty())
            {
                all_namespaces()
            } else {
                own(c.namespace()).into_iter().collect()
            }
        })
        .run(
            reconcile,
            error_policy,
            Arc::new(MeshConfigContext { ctx, stores }),
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// A cache of every `K`, filled before this returns (rendering from a
/// half-filled cache would write a wrong config), and the stream of changed
/// objects that triggers re-renders. The cache is driven by a task of its
/// own, so readiness never depends on the controller polling it.
async fn cached<K>(
    api: Api<K>,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    cached_events(watcher(api, watch_config())).await
}

/// The pods the webhook injected, by the label it sets on each.
fn injected_pods_watch() -> watcher::Config {
    watcher::Config::default().labels(&format!("{SIDECAR}={SIDECAR_INJECTED}"))
}

/// [`cached`] for any watch: metadata-only, or selected by label or field.
async fn cached_events<K, W>(
    watch: W,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
    W: futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
{
    let (store, writer) = reflector::store();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let events = reflector::reflector(writer, watch)
            .default_backoff()
            .touched_objects();
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            if let Ok(obj) = event
                && tx.send(obj).is_err()
            {
                break;
            }
        }
    });
    store
        .wait_until_ready()
        .await
        .expect("the reflector task keeps its writer");
    let changes = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|obj| (Ok(obj), rx))
    });
    (store, changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inject_label_is_read_as_the_webhook_reads_it() {
        let ns = |v: Option<&str>| Namespace {
            metadata: ObjectMeta {
                name: Some("n".into()),
                labels: v.map(|v| [(INJECT_LABEL.to_string(), v.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        for yes in ["enabled", "true", "TRUE", " Enabled "] {
            assert!(injected(&ns(Some(yes))), "{yes:?}");
        }
        for no in [Some("disabled"), Some("false"), Some("yes"), None] {
            assert!(!injected(&ns(no)), "{no:?}");
        }
    }
}
