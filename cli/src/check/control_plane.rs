//! The control plane's checks: the CRDs this remoractl was built with, the
//! operator (Deployment, leader Lease, readiness) and the webhook
//! (registration, serving certificate).

use std::time::{Duration, SystemTime};

use k8s_openapi::{
    api::{
        admissionregistration::v1::MutatingWebhookConfiguration,
        apps::v1::Deployment,
        coordination::v1::Lease,
        core::v1::{Pod, Secret},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{Api, Client, ResourceExt, api::ListParams};
use remora_api::crd::all_crds;
use remora_webhook::configuration::INJECTOR_WEBHOOK;

use super::Outcome;

const CRDS: &str = "remora-crds";
const OPERATOR: &str = "remora-operator";
const WEBHOOK: &str = "remora-webhook";

/// The selector labels of the chart's components.
const OPERATOR_LABELS: &str = "app.kubernetes.io/name=remora-operator";
const WEBHOOK_LABELS: &str = "app.kubernetes.io/name=remora-webhook";
/// The Lease the operator's replicas elect a leader with (operator/src/main.rs).
const LEADER_LEASE: &str = "remora-operator";
/// Below this the webhook certificate gets a warning.
const CERT_WARN_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

const APPLY_CRDS: &str = "kubectl apply --server-side -f charts/remora/crds/ \
                          (or `remoractl crds | kubectl apply --server-side -f -`)";

pub async fn checks(client: &Client, namespace: &str) -> Vec<Outcome> {
    let mut all = crds(client).await;
    all.extend(operator(client, namespace).await);
    all.extend(webhook(client, namespace).await);
    all
}

/// Every Remora CRD present, established and serving the version and schema
/// this remoractl generates (`remoractl crds`).
pub async fn crds(client: &Client) -> Vec<Outcome> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut out = Vec::new();
    for (_, want) in all_crds() {
        let name = want.name_any();
        let have = match api.get_opt(&name).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                out.push(Outcome::fail(
                    CRDS,
                    &name,
                    "CustomResourceDefinition not found",
                    APPLY_CRDS,
                ));
                continue;
            }
            Err(e) => {
                out.push(api_failure(CRDS, &name, "reading the CRD", &e));
                continue;
            }
        };
        out.push(crd_outcome(&want, &have));
    }
    out
}

fn crd_outcome(want: &CustomResourceDefinition, have: &CustomResourceDefinition) -> Outcome {
    let name = want.name_any();
    let established = have
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
    if !established {
        return Outcome::fail(
            CRDS,
            name,
            "not Established: the API server does not serve it",
            "kubectl describe crd NAME shows why (conditions NamesAccepted/Established)",
        );
    }
    let mut served = Vec::new();
    for v in &want.spec.versions {
        let Some(h) = have.spec.versions.iter().find(|h| h.name == v.name) else {
            return Outcome::fail(
                CRDS,
                name,
                format!(
                    "does not have version {} that this remoractl uses (it has {})",
                    v.name,
                    version_list(have)
                ),
                APPLY_CRDS,
            );
        };
        if !h.served {
            return Outcome::fail(
                CRDS,
                name,
                format!("version {} is not served", v.name),
                APPLY_CRDS,
            );
        }
        let same = serde_json::to_value(&v.schema).ok() == serde_json::to_value(&h.schema).ok();
        if !same {
            return Outcome::fail(
                CRDS,
                name,
                format!(
                    "version {}'s schema differs from this remoractl's (another Remora release's CRDs?)",
                    v.name
                ),
                format!(
                    "{APPLY_CRDS}, from the same release as the operator (remoractl {})",
                    env!("CARGO_PKG_VERSION")
                ),
            );
        }
        served.push(v.name.as_str());
    }
    Outcome::pass(
        CRDS,
        name,
        format!(
            "established, serves {} with this remoractl's schema",
            served.join(", ")
        ),
    )
}

pub(super) fn version_list(crd: &CustomResourceDefinition) -> String {
    let v: Vec<&str> = crd.spec.versions.iter().map(|v| v.name.as_str()).collect();
    v.join(", ")
}

pub(super) fn api_failure(
    category: &'static str,
    name: &str,
    doing: &str,
    e: &kube::Error,
) -> Outcome {
    let hint = match e {
        kube::Error::Api(s) if s.code == 403 => {
            "your credentials may not read this: check with `kubectl auth can-i`"
        }
        _ => "is the API server reachable? `kubectl cluster-info`",
    };
    Outcome::fail(category, name, format!("{doing}: {e}"), hint)
}

async fn operator_deployment(client: &Client, ns: &str) -> Result<Option<Deployment>, kube::Error> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default().labels(OPERATOR_LABELS))
        .await?;
    Ok(list.items.into_iter().next())
}

/// The operator's version: the release's `app.kubernetes.io/version` label
/// on its Deployment (the chart's appVersion), else its image tag when that
/// is a version (a `dev` or digest-pinned image says nothing).
pub async fn operator_version(client: &Client, ns: &str) -> Option<String> {
    let d = operator_deployment(client, ns).await.ok()??;
    if let Some(v) = d.labels().get("app.kubernetes.io/version") {
        return Some(v.trim_start_matches('v').to_owned());
    }
    let spec = d.spec?.template.spec?;
    let image = spec.containers.first()?.image.clone()?;
    let (_, tag) = image.rsplit_once(':')?;
    let tag = tag.trim_start_matches('v');
    tag.starts_with(|c: char| c.is_ascii_digit())
        .then(|| tag.to_owned())
}

/// The Deployment available, the leader Lease held and renewed, the pods Ready.
pub async fn operator(client: &Client, ns: &str) -> Vec<Outcome> {
    let install = format!(
        "helm install remora charts/remora --namespace {ns} --create-namespace \
         (or pass the namespace Remora is in with --namespace)"
    );
    let deploy = match operator_deployment(client, ns).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            return vec![Outcome::fail(
                OPERATOR,
                "deployment",
                format!("no Deployment labelled {OPERATOR_LABELS} in namespace {ns}"),
                install,
            )];
        }
        Err(e) => {
            return vec![api_failure(
                OPERATOR,
                "deployment",
                "listing Deployments",
                &e,
            )];
        }
    };
    let name = deploy.name_any();
    let logs =
        format!("kubectl -n {ns} describe deploy/{name}; kubectl -n {ns} logs deploy/{name}");
    let mut out = Vec::new();

    let status = deploy.status.clone().unwrap_or_default();
    let wanted = deploy.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let available = status.available_replicas.unwrap_or(0);
    let available_condition = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Available" && c.status == "True");
    out.push(if available_condition && available > 0 {
        Outcome::pass(
            OPERATOR,
            "deployment",
            format!("{ns}/{name} available ({available}/{wanted} replicas)"),
        )
    } else {
        Outcome::fail(
            OPERATOR,
            "deployment",
            format!("{ns}/{name} is not available ({available}/{wanted} replicas)"),
            logs.clone(),
        )
    });

    out.push(leader_lease(client, ns, &deploy).await);

    // Readiness as the kubelet sees it: the pods' Ready condition is the
    // result of the readinessProbe on the operator's /readyz.
    let selector = deploy
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => {
            let total = list.items.len();
            let ready = list.items.iter().filter(|p| pod_ready(p)).count();
            out.push(if ready > 0 {
                Outcome::pass(
                    OPERATOR,
                    "ready",
                    format!("{ready}/{total} operator pods Ready (their /readyz probe passes)"),
                )
            } else {
                Outcome::fail(
                    OPERATOR,
                    "ready",
                    format!(
                        "{ready}/{total} operator pods Ready: /readyz fails (caches not synced, \
                         or no replica holds the Lease)"
                    ),
                    logs,
                )
            });
        }
        Err(e) => out.push(api_failure(
            OPERATOR,
            "ready",
            "listing the operator's pods",
            &e,
        )),
    }
    out
}

pub(super) fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `--leader-election` from the operator's args (its default is true).
fn leader_election(deploy: &Deployment) -> bool {
    let args = deploy
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.args.clone())
        .unwrap_or_default();
    !args.iter().any(|a| a == "--leader-election=false")
}

async fn leader_lease(client: &Client, ns: &str, deploy: &Deployment) -> Outcome {
    if !leader_election(deploy) {
        return Outcome::pass(
            OPERATOR,
            "leader",
            "leader election is off (one replica, Recreate strategy): no Lease needed",
        );
    }
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let hint = format!(
        "no replica renews the Lease: kubectl -n {ns} logs deploy/{} (look for \"leader lease\")",
        deploy.name_any()
    );
    let lease = match api.get_opt(LEADER_LEASE).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            return Outcome::fail(
                OPERATOR,
                "leader",
                format!("Lease {ns}/{LEADER_LEASE} not found: no replica became leader"),
                hint,
            );
        }
        Err(e) => return api_failure(OPERATOR, "leader", "reading the leader Lease", &e),
    };
    let spec = lease.spec.unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let age = spec.renew_time.map(|t| now - t.0.as_second());
    match age {
        Some(age) if !holder.is_empty() && age <= duration => Outcome::pass(
            OPERATOR,
            "leader",
            format!("{holder} holds Lease {LEADER_LEASE}, renewed {age}s ago (lasts {duration}s)"),
        ),
        Some(age) => Outcome::fail(
            OPERATOR,
            "leader",
            format!(
                "Lease {LEADER_LEASE} was last renewed {age}s ago by {holder:?}, longer than its \
                 {duration}s: no leader is reconciling"
            ),
            hint,
        ),
        None => Outcome::fail(
            OPERATOR,
            "leader",
            format!("Lease {LEADER_LEASE} has never been renewed"),
            hint,
        ),
    }
}

/// The registration present, its caBundle verifying the serving certificate,
/// which names the Service and is valid for 30 days more.
pub async fn webhook(client: &Client, ns: &str) -> Vec<Outcome> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let configs = match api.list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(e) => {
            return vec![api_failure(
                WEBHOOK,
                "configuration",
                "listing MutatingWebhookConfigurations",
                &e,
            )];
        }
    };
    // The registration whose webhook calls a Service in our namespace.
    let found = configs.iter().find_map(|c| {
        let hook = c.webhooks.iter().flatten().find(|w| {
            w.name == INJECTOR_WEBHOOK
                && w.client_config
                    .service
                    .as_ref()
                    .is_some_and(|s| s.namespace == ns)
        })?;
        Some((c.name_any(), hook.clone()))
    });
    let Some((config_name, hook)) = found else {
        return vec![Outcome::fail(
            WEBHOOK,
            "configuration",
            format!(
                "no MutatingWebhookConfiguration has webhook {INJECTOR_WEBHOOK} calling a Service in {ns}"
            ),
            format!("helm upgrade --install remora charts/remora -n {ns} (the chart registers it)"),
        )];
    };
    let service = hook
        .client_config
        .service
        .clone()
        .expect("found by service");
    let mut out = vec![Outcome::pass(
        WEBHOOK,
        "configuration",
        format!(
            "{config_name} calls Service {ns}/{} on {}",
            service.name,
            service.path.as_deref().unwrap_or("/")
        ),
    )];
    let secret_name = webhook_secret_name(client, ns, &service.name).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = match secrets.get_opt(&secret_name).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            out.push(Outcome::fail(
                WEBHOOK,
                "certificate",
                format!("the serving certificate Secret {ns}/{secret_name} is missing"),
                format!(
                    "helm upgrade remora charts/remora -n {ns} --reuse-values generates a new one"
                ),
            ));
            return out;
        }
        Err(e) => {
            out.push(api_failure(
                WEBHOOK,
                "certificate",
                "reading the TLS Secret",
                &e,
            ));
            return out;
        }
    };
    let cert = secret
        .data
        .as_ref()
        .and_then(|d| d.get("tls.crt"))
        .map(|b| b.0.clone())
        .unwrap_or_default();
    let bundle = hook
        .client_config
        .ca_bundle
        .map(|b| b.0)
        .unwrap_or_default();
    let dns = format!("{}.{ns}.svc", service.name);
    out.extend(super::webhook_cert::check(
        &cert,
        &bundle,
        &dns,
        &format!("{ns}/{secret_name}"),
        &config_name,
        SystemTime::now(),
        CERT_WARN_BEFORE,
    ));
    out
}

/// The Secret the webhook Deployment mounts; the chart's name for it otherwise.
async fn webhook_secret_name(client: &Client, ns: &str, service: &str) -> String {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let mounted = api
        .list(&ListParams::default().labels(WEBHOOK_LABELS))
        .await
        .ok()
        .and_then(|l| l.items.into_iter().next())
        .and_then(|d| d.spec?.template.spec?.volumes)
        .and_then(|v| v.into_iter().find_map(|v| v.secret?.secret_name));
    mounted.unwrap_or_else(|| format!("{service}-tls"))
}
