//! The dashboard's cluster source: every injected pod's sidecar, read
//! through the API server's pod proxy ([`crate::cluster`]), as one
//! [`Workload`] per pod.
//!
//! Who a pod is comes from the API, not from guesses: its service is the
//! Service whose selector matches its labels (the operator's own subset
//! Services are skipped, they select the same pods), its version its
//! `version` label, and its identity `spiffe://<trust domain>/ns/<ns>/sa/<sa>`
//! with the trust domain of the namespace's rendered config, shown only when
//! the sidecar reports a workload certificate.
//!
//! Pods, Services and configs are listed every [`RELIST`]; metrics are read
//! every scrape, a few pods at a time.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::{Api, Client, ResourceExt, api::ListParams};
use remora_api::labels::{CONFIG_KEY, CONFIG_MAP};
use remora_operator::controller::service_route::SUBSET_LABEL;
use tokio::task::JoinSet;

use super::{Scrape, Workload};
use crate::cluster;

/// How often the pods, Services and configs are listed again.
const RELIST: Duration = Duration::from_secs(5);
/// Sidecars read at once through the API server.
const PARALLEL: usize = 8;

/// A pod to read, and who it is.
#[derive(Clone, Debug)]
struct Target {
    pod: Pod,
    key: String,
    service: String,
    version: Option<String>,
    /// The SPIFFE ID its certificate carries, if it has one.
    identity: String,
}

pub struct ClusterSource {
    client: Client,
    /// None: every namespace.
    namespace: Option<String>,
    targets: Arc<Vec<Target>>,
    listed: Option<Instant>,
    list_error: Option<String>,
}

impl ClusterSource {
    pub fn new(client: Client, namespace: Option<String>) -> Self {
        Self {
            client,
            namespace,
            targets: Arc::default(),
            listed: None,
            list_error: None,
        }
    }

    fn scope(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("namespace {ns}"),
            None => "any namespace".into(),
        }
    }

    async fn relist(&mut self) -> Result<()> {
        let ns = self.namespace.as_deref();
        let pods = cluster::injected_pods(&self.client, ns, None).await?;
        let services: Vec<Service> = list(&self.client, ns, "Services").await?;
        let mut trust_domains = BTreeMap::new();
        for cm in list::<ConfigMap>(&self.client, ns, "ConfigMaps").await? {
            if cm.name_any() != CONFIG_MAP {
                continue;
            }
            if let Some(td) = trust_domain(&cm) {
                trust_domains.insert(cm.namespace().unwrap_or_default(), td);
            }
        }
        let targets = pods
            .into_iter()
            .filter(cluster::has_ip)
            .map(|pod| target(pod, &services, &trust_domains))
            .collect();
        self.targets = Arc::new(targets);
        Ok(())
    }

    /// One read of every injected pod's sidecar.
    pub async fn scrape(&mut self) -> Scrape {
        if self.listed.is_none_or(|t| t.elapsed() >= RELIST) {
            self.listed = Some(Instant::now());
            self.list_error = self
                .relist()
                .await
                .with_context(|| format!("listing the mesh's pods in {}", self.scope()))
                .err()
                .map(|e| format!("{e:#}"));
        }
        let at = Instant::now();
        let mut errors: Vec<String> = self.list_error.iter().cloned().collect();
        if self.targets.is_empty() && errors.is_empty() {
            errors.push(format!(
                "no running pod with a Remora sidecar in {}",
                self.scope()
            ));
        }
        let mut workloads = Vec::new();
        let mut reads = JoinSet::new();
        let mut next = 0;
        let targets = self.targets.clone();
        loop {
            while reads.len() < PARALLEL && next < targets.len() {
                let (client, targets, i) = (self.client.clone(), targets.clone(), next);
                reads.spawn(async move {
                    let read = cluster::sidecar_metrics(&client, &targets[i].pod).await;
                    (i, read)
                });
                next += 1;
            }
            let Some(done) = reads.join_next().await else {
                break;
            };
            let Ok((i, read)) = done else { continue };
            let t = &targets[i];
            match read {
                Ok(samples) => workloads.push(Workload {
                    name: t.key.clone(),
                    service: t.service.clone(),
                    version: t.version.clone(),
                    identity: super::graph::has_certificate(&samples).then(|| t.identity.clone()),
                    samples,
                }),
                Err(e) => errors.push(format!("pod {}: {e:#}", t.key)),
            }
        }
        // Pods in a stable order, so graphs of equal scrapes are equal.
        workloads.sort_by(|a, b| a.name.cmp(&b.name));
        errors.sort();
        Scrape {
            at,
            workloads,
            errors,
        }
    }
}

async fn list<K>(client: &Client, ns: Option<&str>, what: &str) -> Result<Vec<K>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    Ok(api
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing {what}"))?
        .items)
}

/// `tls.trustDomain` of a rendered config.
fn trust_domain(cm: &ConfigMap) -> Option<String> {
    let json = cm.data.as_ref()?.get(CONFIG_KEY)?;
    let doc: serde_json::Value = serde_json::from_str(json).ok()?;
    Some(doc.get("tls")?.get("trustDomain")?.as_str()?.to_owned())
}

fn target(pod: Pod, services: &[Service], trust_domains: &BTreeMap<String, String>) -> Target {
    let ns = pod.namespace().unwrap_or_default();
    let labels = pod.labels();
    let service = service_of(&pod, services)
        .unwrap_or_else(|| labels.get("app").cloned().unwrap_or_else(|| pod.name_any()));
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let td = trust_domains
        .get(&ns)
        .map_or(remora_api::config::DEFAULT_TRUST_DOMAIN, String::as_str);
    Target {
        key: cluster::pod_key(&pod),
        version: labels.get("version").cloned(),
        identity: format!("spiffe://{td}/ns/{ns}/sa/{sa}"),
        service,
        pod,
    }
}

/// The Service in the pod's namespace whose selector matches its labels:
/// the one named like its `app` label when several do, else the first by
/// name. The operator's subset Services are not the pod's service.
fn service_of(pod: &Pod, services: &[Service]) -> Option<String> {
    let ns = pod.namespace();
    let labels = pod.labels();
    let mut matching: Vec<String> = services
        .iter()
        .filter(|s| s.namespace() == ns && !s.labels().contains_key(SUBSET_LABEL))
        .filter(|s| {
            let selector = s.spec.as_ref().and_then(|s| s.selector.as_ref());
            selector.is_some_and(|sel| {
                !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
        })
        .map(ResourceExt::name_any)
        .collect();
    matching.sort();
    let app = labels.get("app");
    match matching.iter().position(|n| Some(n) == app) {
        Some(i) => Some(matching.swap_remove(i)),
        None => matching.into_iter().next(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(labels: serde_json::Value, sa: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "reviews-v2-abc", "namespace": "shop", "labels": labels},
            "spec": {"containers": [{"name": "app", "image": "a"}], "serviceAccountName": sa},
        }))
        .unwrap()
    }

    fn service(name: &str, ns: &str, selector: serde_json::Value, subset: bool) -> Service {
        let labels = if subset {
            serde_json::json!({ SUBSET_LABEL: "reviews" })
        } else {
            serde_json::json!({})
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"selector": selector},
        }))
        .unwrap()
    }

    #[test]
    fn a_pods_service_is_the_one_selecting_it_and_not_a_subset_service() {
        let p = pod(json_labels(), Some("reviews"));
        let services = [
            service(
                "reviews-v2",
                "shop",
                serde_json::json!({"app": "reviews", "version": "v2"}),
                true,
            ),
            service(
                "ratings",
                "shop",
                serde_json::json!({"app": "ratings"}),
                false,
            ),
            service(
                "reviews",
                "other",
                serde_json::json!({"app": "reviews"}),
                false,
            ),
            service("all", "shop", serde_json::json!({}), false),
            service(
                "reviews",
                "shop",
                serde_json::json!({"app": "reviews"}),
                false,
            ),
            service(
                "aaa-reviews",
                "shop",
                serde_json::json!({"version": "v2"}),
                false,
            ),
        ];
        // Two Services select it; the one named like its app label wins.
        assert_eq!(service_of(&p, &services).as_deref(), Some("reviews"));
        // Without that one, the first matching by name.
        let others = [services[5].clone(), services[1].clone()];
        assert_eq!(service_of(&p, &others).as_deref(), Some("aaa-reviews"));
        assert_eq!(
            service_of(&p, &services[..4]).as_deref(),
            None,
            "subset, other-namespace, non-matching and empty selectors never match"
        );
        let t = target(
            p,
            &services[..4],
            &BTreeMap::from([("shop".into(), "corp.example".into())]),
        );
        assert_eq!(t.service, "reviews", "no Service: the app label");
        assert_eq!(t.version.as_deref(), Some("v2"));
        assert_eq!(t.identity, "spiffe://corp.example/ns/shop/sa/reviews");
        assert_eq!(t.key, "shop/reviews-v2-abc");
        let bare = target(pod(serde_json::json!({}), None), &[], &BTreeMap::new());
        assert_eq!(bare.service, "reviews-v2-abc");
        assert_eq!(bare.identity, "spiffe://cluster.local/ns/shop/sa/default");
    }

    fn json_labels() -> serde_json::Value {
        serde_json::json!({"app": "reviews", "version": "v2"})
    }

    #[test]
    fn the_trust_domain_is_read_from_the_rendered_config() {
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": CONFIG_MAP},
            "data": {CONFIG_KEY: "{\"tls\":{\"trustDomain\":\"corp.example\"},\"listeners\":[]}"},
        }))
        .unwrap();
        assert_eq!(trust_domain(&cm).as_deref(), Some("corp.example"));
        let empty: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {}})).unwrap();
        assert_eq!(trust_domain(&empty), None);
    }
}
