//! The data plane's checks: every mesh namespace has its rendered config,
//! and every injected pod's sidecar runs the config hash the operator wrote
//! and the operator's version — read from `sidecar_config_info` on the
//! sidecar's `/metrics`, through the API server's pod proxy.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::{Api, Client, ResourceExt, api::ListParams};
use remora_api::{
    crd::{MeshCertificate, RateLimitPolicy, ServiceRoute, SidecarTemplate},
    labels::{CONFIG_HASH, CONFIG_MAP, INJECT},
};

use super::{Outcome, control_plane::api_failure};
use crate::cluster;

const DATA_PLANE: &str = "remora-data-plane";
/// How many offending pods a failure names.
const SHOWN: usize = 5;

pub async fn checks(client: &Client, operator_version: Option<&str>) -> Vec<Outcome> {
    let pods = match cluster::injected_pods(client, None, None).await {
        Ok(p) => p,
        Err(e) => {
            return vec![Outcome::fail(
                DATA_PLANE,
                "pods",
                format!("{e:#}"),
                "remoractl needs to list pods in every namespace (`kubectl auth can-i list pods -A`)",
            )];
        }
    };
    let namespaces = match mesh_namespaces(client, &pods).await {
        Ok(n) => n,
        Err(e) => {
            return vec![api_failure(
                DATA_PLANE,
                "namespaces",
                "listing namespaces",
                &e,
            )];
        }
    };
    if namespaces.is_empty() {
        return vec![Outcome::pass(
            DATA_PLANE,
            "namespaces",
            format!("no namespace is in the mesh yet (label one {INJECT}=enabled)"),
        )];
    }
    let mut by_namespace: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for p in pods {
        by_namespace
            .entry(p.namespace().unwrap_or_default())
            .or_default()
            .push(p);
    }
    let mut out = Vec::new();
    for ns in &namespaces {
        let hash = match rendered_hash(client, ns).await {
            Ok(Some(h)) => {
                out.push(Outcome::pass(
                    DATA_PLANE,
                    format!("{ns} config"),
                    format!("{CONFIG_MAP} rendered, {}", short(&h)),
                ));
                Some(h)
            }
            Ok(None) => {
                out.push(Outcome::fail(
                    DATA_PLANE,
                    format!("{ns} config"),
                    format!(
                        "ConfigMap {ns}/{CONFIG_MAP} (with annotation {CONFIG_HASH}) is missing"
                    ),
                    "the operator renders it: is it running and leading (see remora-operator \
                     above), and what do `kubectl get remora -n NS` conditions say?",
                ));
                None
            }
            Err(e) => {
                out.push(api_failure(
                    DATA_PLANE,
                    &format!("{ns} config"),
                    "reading the ConfigMap",
                    &e,
                ));
                None
            }
        };
        let pods = by_namespace.remove(ns).unwrap_or_default();
        if !pods.is_empty() {
            out.extend(sidecars(client, ns, &pods, hash.as_deref(), operator_version).await);
        }
    }
    out
}

/// Namespaces labelled for injection, holding injected pods, or holding a
/// Remora resource: those the operator renders a config for.
async fn mesh_namespaces(client: &Client, pods: &[Pod]) -> Result<BTreeSet<String>, kube::Error> {
    let mut out: BTreeSet<String> = pods.iter().filter_map(|p| p.namespace()).collect();
    let labelled: Api<Namespace> = Api::all(client.clone());
    for ns in labelled
        .list(&ListParams::default().labels(&format!("{INJECT}=enabled")))
        .await?
    {
        out.insert(ns.name_any());
    }
    // Missing CRDs are reported above; here they only mean no resources.
    macro_rules! holding {
        ($kind:ty) => {
            if let Ok(list) = Api::<$kind>::all(client.clone())
                .list(&ListParams::default())
                .await
            {
                out.extend(list.items.iter().filter_map(|r| r.namespace()));
            }
        };
    }
    holding!(ServiceRoute);
    holding!(RateLimitPolicy);
    holding!(MeshCertificate);
    holding!(SidecarTemplate);
    Ok(out)
}

async fn rendered_hash(client: &Client, ns: &str) -> Result<Option<String>, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    Ok(api
        .get_opt(CONFIG_MAP)
        .await?
        .and_then(|cm| cm.annotations().get(CONFIG_HASH).cloned()))
}

/// `sha256:0123456789ab`.
fn short(hash: &str) -> String {
    hash.chars().take(19).collect()
}

fn named(pods: &[String]) -> String {
    let mut s = pods
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if pods.len() > SHOWN {
        s.push_str(&format!(" and {} more", pods.len() - SHOWN));
    }
    s
}

async fn sidecars(
    client: &Client,
    ns: &str,
    pods: &[Pod],
    want_hash: Option<&str>,
    operator_version: Option<&str>,
) -> Vec<Outcome> {
    let mut not_running = Vec::new();
    let mut unreadable = Vec::new();
    let mut stale = Vec::new();
    let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = 0;
    for p in pods {
        let name = p.name_any();
        if !cluster::has_ip(p) {
            not_running.push(name);
            continue;
        }
        let info = match cluster::sidecar_metrics(client, p).await {
            Ok(samples) => cluster::config_info(&samples),
            Err(e) => {
                unreadable.push(format!("{name} ({e:#})"));
                continue;
            }
        };
        let Some(info) = info else {
            unreadable.push(format!(
                "{name} (no sidecar_config_info: a sidecar older than 0.1)"
            ));
            continue;
        };
        versions
            .entry(info.version.clone())
            .or_default()
            .push(name.clone());
        match want_hash {
            Some(h) if h != info.hash => stale.push(format!("{name} runs {}", short(&info.hash))),
            _ => current += 1,
        }
    }
    let mut out = Vec::new();
    let what = format!("{ns} sidecars");
    if !unreadable.is_empty() {
        out.push(Outcome::fail(
            DATA_PLANE,
            what.clone(),
            format!("cannot read /metrics of {}", named(&unreadable)),
            format!(
                "kubectl -n {ns} logs POD -c remora-proxy; the admin port must answer on the pod IP \
                 (the API server's pod proxy reads it)"
            ),
        ));
    }
    if let Some(h) = want_hash {
        if !stale.is_empty() {
            out.push(Outcome::fail(
                DATA_PLANE,
                what.clone(),
                format!(
                    "{} of {} sidecars do not run the config the operator wrote ({}): {}",
                    stale.len(),
                    stale.len() + current,
                    short(h),
                    named(&stale)
                ),
                format!(
                    "a sidecar reloads a new config within a second; one that does not logs why \
                     (kubectl -n {ns} logs POD -c remora-proxy | grep reload). Restarting the pod \
                     (kubectl -n {ns} delete pod POD) starts it on the current config"
                ),
            ));
        } else if current > 0 {
            out.push(Outcome::pass(
                DATA_PLANE,
                what.clone(),
                format!("{current} sidecars run the operator's config {}", short(h)),
            ));
        }
    }
    if !not_running.is_empty() {
        out.push(Outcome::warn(
            DATA_PLANE,
            what.clone(),
            format!("not running yet, not checked: {}", named(&not_running)),
            format!("kubectl -n {ns} get pods; kubectl -n {ns} describe pod POD"),
        ));
    }
    match operator_version {
        Some(v) => {
            let other: Vec<String> = versions
                .iter()
                .filter(|(version, _)| version.as_str() != v)
                .flat_map(|(version, pods)| pods.iter().map(move |p| format!("{p} ({version})")))
                .collect();
            let same = versions.get(v).map_or(0, Vec::len);
            if !other.is_empty() {
                out.push(Outcome::fail(
                    DATA_PLANE,
                    format!("{ns} sidecar versions"),
                    format!("not at the operator's version {v}: {}", named(&other)),
                    format!(
                        "pods keep the sidecar they were created with: restart them \
                         (kubectl -n {ns} rollout restart deploy) to get the current one"
                    ),
                ));
            } else if same > 0 {
                out.push(Outcome::pass(
                    DATA_PLANE,
                    format!("{ns} sidecar versions"),
                    format!("{same} sidecars at the operator's version {v}"),
                ));
            }
        }
        None if !versions.is_empty() => out.push(Outcome::warn(
            DATA_PLANE,
            format!("{ns} sidecar versions"),
            "the operator's version is unknown (no operator Deployment): not compared",
            "see remora-operator above",
        )),
        None => {}
    }
    out
}
