//! Talking to a real cluster: the kube client as kubectl would build it, the
//! injected pods, and each sidecar's admin `/metrics` read through the API
//! server's pod proxy (`/api/v1/namespaces/{ns}/pods/{name}:{port}/proxy/metrics`),
//! so no port-forward and no route to the pod network is needed. `check`,
//! `stat` and `top` use it; so can anything else that reads sidecars.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::Args;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::{
    Api, Client, Config, ResourceExt,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
};
use remora_api::labels::{SIDECAR, SIDECAR_INJECTED};
use remora_e2e::prometheus::{Sample, parse};
use remora_webhook::inject::PROXY_CONTAINER;

/// The admin port when neither the container nor its env says otherwise
/// (the SidecarTemplate default, docs/sidecar.md).
pub const DEFAULT_ADMIN_PORT: u16 = 15000;
/// How long one call through the API server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Which cluster: kubeconfig and context, found as kubectl finds them.
#[derive(Args, Clone, Debug, Default)]
pub struct KubeArgs {
    /// Path to the kubeconfig (default: $KUBECONFIG, then ~/.kube/config,
    /// then the in-cluster service account).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
}

impl KubeArgs {
    /// A client for the chosen cluster, with a request timeout.
    pub async fn client(&self) -> Result<Client> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let mut config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .with_context(|| format!("loading kubeconfig {}", path.display()))?
            }
            None if self.context.is_some() => Config::from_kubeconfig(&options)
                .await
                .context("loading the kubeconfig")?,
            None => Config::infer()
                .await
                .context("finding a cluster (set --kubeconfig or $KUBECONFIG)")?,
        };
        config.read_timeout = Some(REQUEST_TIMEOUT);
        config.write_timeout = Some(REQUEST_TIMEOUT);
        config.connect_timeout = Some(REQUEST_TIMEOUT);
        Client::try_from(config).context("building the Kubernetes client")
    }
}

/// Pods the webhook injected (label `remora.dev/sidecar=injected`), in one
/// namespace or all, with an extra label selector.
pub async fn injected_pods(
    client: &Client,
    namespace: Option<&str>,
    selector: Option<&str>,
) -> Result<Vec<Pod>> {
    let api: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut labels = format!("{SIDECAR}={SIDECAR_INJECTED}");
    if let Some(s) = selector {
        labels.push(',');
        labels.push_str(s);
    }
    let list = api
        .list(&ListParams::default().labels(&labels))
        .await
        .with_context(|| format!("listing pods with {labels}"))?;
    Ok(list.items)
}

/// The sidecar container of an injected pod: a native sidecar (an init
/// container) or, in legacy mode, a regular one.
pub fn proxy_container(pod: &Pod) -> Option<&Container> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == PROXY_CONTAINER)
}

/// The sidecar's admin port: its `remora-admin` container port, else its
/// `REMORA_ADMIN_PORT`, else [`DEFAULT_ADMIN_PORT`].
pub fn admin_port(pod: &Pod) -> u16 {
    let Some(c) = proxy_container(pod) else {
        return DEFAULT_ADMIN_PORT;
    };
    let from_port = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("remora-admin"))
        .and_then(|p| u16::try_from(p.container_port).ok());
    let from_env = || {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == "REMORA_ADMIN_PORT")
            .and_then(|e| e.value.as_deref()?.parse().ok())
    };
    from_port.or_else(from_env).unwrap_or(DEFAULT_ADMIN_PORT)
}

/// `namespace/name` of a pod.
pub fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// Whether the pod has an IP to proxy to (the kubelet reported it running).
pub fn has_ip(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty())
}

/// GET `path` on the pod's `port` through the API server's pod proxy.
pub async fn pod_get(client: &Client, pod: &Pod, port: u16, path: &str) -> Result<String> {
    let ns = pod.namespace().unwrap_or_default();
    let uri = format!(
        "/api/v1/namespaces/{ns}/pods/{}:{port}/proxy{path}",
        pod.name_any()
    );
    let request = http::Request::get(&uri)
        .body(Vec::new())
        .context("building the pod proxy request")?;
    tokio::time::timeout(REQUEST_TIMEOUT, client.request_text(request))
        .await
        .with_context(|| format!("GET {uri} timed out"))?
        .with_context(|| format!("GET {uri} (pod proxy)"))
}

/// The sidecar's `/metrics`, read through the pod proxy.
pub async fn sidecar_metrics(client: &Client, pod: &Pod) -> Result<Vec<Sample>> {
    let text = pod_get(client, pod, admin_port(pod), "/metrics").await?;
    Ok(parse(&text))
}

/// What a sidecar reports about itself in `sidecar_config_info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigInfo {
    pub hash: String,
    pub version: String,
}

/// The `sidecar_config_info{hash,version}` series; None from a sidecar too
/// old to export it.
pub fn config_info(samples: &[Sample]) -> Option<ConfigInfo> {
    let s = samples
        .iter()
        .find(|s| s.name == "sidecar_config_info" && s.value > 0.0)?;
    Some(ConfigInfo {
        hash: s.labels.get("hash")?.clone(),
        version: s.labels.get("version").cloned().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injected(container: serde_json::Value, native: bool) -> Pod {
        let key = if native {
            "initContainers"
        } else {
            "containers"
        };
        let mut spec = serde_json::json!({"containers": [{"name": "app", "image": "app"}]});
        if native {
            spec[key] = serde_json::json!([container]);
        } else {
            spec[key].as_array_mut().unwrap().push(container);
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn the_admin_port_comes_from_the_container_port_then_env_then_default() {
        let port = serde_json::json!({"name": PROXY_CONTAINER, "image": "s",
            "ports": [{"name": "remora-admin", "containerPort": 16000}],
            "env": [{"name": "REMORA_ADMIN_PORT", "value": "17000"}]});
        assert_eq!(admin_port(&injected(port, true)), 16000);
        let env = serde_json::json!({"name": PROXY_CONTAINER, "image": "s",
            "env": [{"name": "REMORA_ADMIN_PORT", "value": "17000"}]});
        assert_eq!(admin_port(&injected(env, false)), 17000);
        let bare = serde_json::json!({"name": PROXY_CONTAINER, "image": "s"});
        assert_eq!(admin_port(&injected(bare, true)), DEFAULT_ADMIN_PORT);
        let other = serde_json::json!({"name": "not-the-proxy", "image": "s",
            "ports": [{"name": "remora-admin", "containerPort": 16000}]});
        assert_eq!(admin_port(&injected(other, true)), DEFAULT_ADMIN_PORT);
    }

    #[test]
    fn config_info_is_read_from_the_info_series() {
        let s = parse(
            "sidecar_config_info{hash=\"sha256:ab\",version=\"0.1.0\"} 1\n\
             downstream_request_total{listener=\"inbound\"} 3\n",
        );
        assert_eq!(
            config_info(&s),
            Some(ConfigInfo {
                hash: "sha256:ab".into(),
                version: "0.1.0".into()
            })
        );
        assert_eq!(config_info(&parse("downstream_request_total 3\n")), None);
    }
}
