//! Config by watch: the sidecar follows its namespace's rendered config
//! (`ConfigMap remora-config`, key `config.json`) through the API server,
//! with the pod's own ServiceAccount token, so an operator write reaches it
//! in milliseconds instead of the kubelet's minute-long volume sync.
//!
//! A small client of our own (hyper's HTTP/1 connection over rustls): the
//! proxy carries no `kube` or `k8s-openapi`. The protocol is Kubernetes'
//! list-then-watch:
//! - list the one object (`fieldSelector=metadata.name=…`, which the
//!   operator's Role allows with `resourceNames`), apply its document, note
//!   the list's `resourceVersion`;
//! - watch from there (`allowWatchBookmarks`, a server-side timeout of about
//!   five minutes, so tokens are re-read and dead connections noticed);
//!   `ADDED`/`MODIFIED` apply, `BOOKMARK` moves the version on, `DELETED`
//!   keeps the running config;
//! - `410 Gone` (the version was compacted) lists again; any other failure
//!   backs off (0.2 s doubling to 30 s, with jitter) and resumes.
//!
//! The mounted file stays the bootstrap and the fallback: while the watch is
//! synced, changes of the file are only noted (a kubelet sync lagging behind
//! must not roll the config back); while the API server cannot be reached,
//! the sidecar keeps its last good config, `config_watch_synced` is 0, and a
//! change of the file applies as before. Documents go through the same
//! reload as the file's: a bad one is refused and counted, never applied.

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::BytesMut;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use remora_api::{
    config::SidecarConfig,
    labels::{CONFIG_KEY, CONFIG_MAP},
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::{
    balance::hash_bytes,
    metrics::{Counter, Gauge},
    proxy::{Shared, until_true},
};

/// Where a pod finds its ServiceAccount's token, CA and namespace.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Connecting and each plain request (the list) may take this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The API server ends each watch after this long (plus jitter).
const WATCH_SECONDS: u64 = 300;
/// No byte for this long on a watch (bookmarks come every minute): the
/// connection is taken as dead.
const WATCH_IDLE: Duration = Duration::from_secs(WATCH_SECONDS + 60);
/// A list or event larger than this is refused (a ConfigMap holds 1 MiB;
/// JSON escaping can double it).
const MAX_DOCUMENT: usize = 4 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("config watch set-up: {0}")]
    Setup(String),
    #[error("connecting to the API server at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("the API server: {0}")]
    Http(String),
    #[error("the API server answered {status} to {what}: {body}")]
    Status {
        status: StatusCode,
        what: &'static str,
        body: String,
    },
    #[error("the watch's resourceVersion is too old (410 Gone)")]
    Gone,
    #[error("the API server's answer: {0}")]
    Decode(String),
}

/// Which API server, as whom, and which ConfigMap.
#[derive(Clone, Debug)]
pub struct WatchTarget {
    /// `host:port` of the API server.
    pub address: String,
    pub server_name: ServerName<'static>,
    pub ca_file: PathBuf,
    /// Re-read at every connection: the kubelet rotates projected tokens.
    pub token_file: PathBuf,
    pub namespace: String,
    pub config_map: String,
}

impl WatchTarget {
    /// The in-cluster settings: `KUBERNETES_SERVICE_HOST`/`_PORT` and the
    /// ServiceAccount mount, each overridable (`REMORA_KUBE_CA_FILE`,
    /// `REMORA_KUBE_TOKEN_FILE`, `REMORA_KUBE_NAMESPACE`,
    /// `REMORA_CONFIG_MAP`, and `REMORA_KUBE_SERVER_NAME`, the name the API
    /// server's certificate is checked for when it is not the host, like
    /// kubeconfig's `tls-server-name`). None outside a pod.
    pub fn from_env() -> Result<Option<Self>, WatchError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, WatchError> {
        let var = |k: &str| lookup(k).filter(|v| !v.is_empty());
        let Some(host) = var("KUBERNETES_SERVICE_HOST") else {
            return Ok(None);
        };
        let port = var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
        let sa = PathBuf::from(SERVICE_ACCOUNT_DIR);
        let token_file = var("REMORA_KUBE_TOKEN_FILE").map_or(sa.join("token"), PathBuf::from);
        let ca_file = var("REMORA_KUBE_CA_FILE").map_or(sa.join("ca.crt"), PathBuf::from);
        let namespace = match var("REMORA_KUBE_NAMESPACE") {
            Some(ns) => ns,
            None => std::fs::read_to_string(sa.join("namespace"))
                .map(|s| s.trim().to_owned())
                .map_err(|e| {
                    WatchError::Setup(format!(
                        "reading the pod's namespace from {SERVICE_ACCOUNT_DIR}/namespace: {e} \
                         (set REMORA_KUBE_NAMESPACE, or run with --config-watch off)"
                    ))
                })?,
        };
        let (name_var, name) = match var("REMORA_KUBE_SERVER_NAME") {
            Some(n) => ("REMORA_KUBE_SERVER_NAME", n),
            None => ("KUBERNETES_SERVICE_HOST", host.clone()),
        };
        let server_name = ServerName::try_from(name.clone()).map_err(|e| {
            WatchError::Setup(format!("{name_var} {name:?} is not a host name: {e}"))
        })?;
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Some(Self {
            address,
            server_name,
            ca_file,
            token_file,
            namespace,
            config_map: var("REMORA_CONFIG_MAP").unwrap_or_else(|| CONFIG_MAP.into()),
        }))
    }

    fn path(&self, query: &str) -> String {
        format!(
            "/api/v1/namespaces/{}/configmaps?fieldSelector=metadata.name%3D{}{query}",
            self.namespace, self.config_map
        )
    }
}

/// What the watch reports about itself.
#[derive(Clone)]
pub struct WatchMetrics {
    pub synced: Gauge,
    pub errors: Counter,
    pub events: Counter,
}

impl WatchMetrics {
    pub fn new(reg: &crate::metrics::Registry) -> Self {
        Self {
            synced: reg.gauge(
                "config_watch_synced",
                "1 while the config watch through the API server is synced; 0: the sidecar serves its last good config",
                vec![],
            ),
            errors: reg.counter(
                "config_watch_errors_total",
                "Failed lists and watches of the config through the API server",
                vec![],
            ),
            events: reg.counter(
                "config_watch_events_total",
                "Config documents received through the API server (list and watch)",
                vec![],
            ),
        }
    }
}

#[derive(Deserialize)]
struct Meta {
    #[serde(rename = "resourceVersion", default)]
    resource_version: String,
}

#[derive(Deserialize)]
struct ConfigMapObject {
    metadata: Meta,
    #[serde(default)]
    data: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct List {
    metadata: Meta,
    #[serde(default)]
    items: Vec<ConfigMapObject>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

/// A connection to the API server, one request at a time.
struct Client {
    target: WatchTarget,
    tls: TlsConnector,
}

impl Client {
    fn new(target: WatchTarget) -> Result<Self, WatchError> {
        let pem = std::fs::read(&target.ca_file).map_err(|e| {
            WatchError::Setup(format!(
                "reading the API server's CA {}: {e}",
                target.ca_file.display()
            ))
        })?;
        let mut roots = RootCertStore::empty();
        let (added, _) = roots
            .add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok));
        if added == 0 {
            return Err(WatchError::Setup(format!(
                "{} holds no PEM certificate",
                target.ca_file.display()
            )));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| WatchError::Setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            target,
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    async fn get(
        &self,
        path: &str,
        what: &'static str,
    ) -> Result<http::Response<Incoming>, WatchError> {
        let token = std::fs::read_to_string(&self.target.token_file).map_err(|e| {
            WatchError::Setup(format!(
                "reading the ServiceAccount token {}: {e}",
                self.target.token_file.display()
            ))
        })?;
        let addr = self.target.address.clone();
        let connect = async {
            let tcp = TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            self.tls.connect(self.target.server_name.clone(), tcp).await
        };
        let tls = tokio::time::timeout(REQUEST_TIMEOUT, connect)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))
            .and_then(|r| r)
            .map_err(|source| WatchError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| WatchError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = Request::get(path)
            .header(header::HOST, &addr)
            .header(header::AUTHORIZATION, format!("Bearer {}", token.trim()))
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("remora-sidecar/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| WatchError::Http(e.to_string()))?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| WatchError::Http(format!("{what}: no answer within {REQUEST_TIMEOUT:?}")))?
            .map_err(|e| WatchError::Http(e.to_string()))?;
        match response.status() {
            StatusCode::OK => Ok(response),
            StatusCode::GONE => Err(WatchError::Gone),
            status => {
                let body = read_body(response.into_body(), 4096)
                    .await
                    .unwrap_or_default();
                Err(WatchError::Status {
                    status,
                    what,
                    body: String::from_utf8_lossy(&body).trim().to_owned(),
                })
            }
        }
    }
}

async fn read_body(mut body: Incoming, limit: usize) -> Result<Vec<u8>, WatchError> {
    let mut out = Vec::new();
    while let Some(frame) = tokio::time::timeout(REQUEST_TIMEOUT, body.frame())
        .await
        .map_err(|_| WatchError::Http("the body stalled".into()))?
    {
        let frame = frame.map_err(|e| WatchError::Http(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > limit {
                return Err(WatchError::Decode(format!("more than {limit} bytes")));
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out)
}

/// What one connection's work ended with.
enum Ended {
    /// The server closed the watch (its timeout): watch again from here.
    Closed,
    /// Watch no more: the proxy is shutting down.
    Shutdown,
}

/// Follows the config until the proxy shuts down. Never returns an error:
/// every failure is logged, counted and retried.
pub(crate) async fn run(target: WatchTarget, shared: Arc<Shared>, metrics: WatchMetrics) {
    let mut closed = shared.closed.subscribe();
    let client = match Client::new(target) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("the config watch cannot start, the config file alone applies: {e}");
            metrics.errors.inc();
            return;
        }
    };
    let mut applier = Applier::default();
    let mut version: Option<String> = None;
    let mut backoff = BACKOFF_MIN;
    let mut failing = false;
    loop {
        let work = async {
            if version.is_none() {
                let rv = list(&client, &shared, &metrics, &mut applier).await?;
                version = Some(rv);
            }
            metrics.synced.set(1);
            shared.api_synced.store(true, Ordering::Release);
            if failing {
                tracing::info!("config watch resumed");
                failing = false;
            }
            let rv = version.as_mut().expect("listed above");
            watch(&client, &shared, &metrics, &mut applier, rv).await
        };
        let result = tokio::select! {
            r = work => r,
            _ = until_true(&mut closed) => Ok(Ended::Shutdown),
        };
        match result {
            Ok(Ended::Shutdown) => return,
            Ok(Ended::Closed) => {
                backoff = BACKOFF_MIN;
                continue;
            }
            Err(WatchError::Gone) => {
                tracing::debug!("config watch: resourceVersion compacted, listing again");
                version = None;
                continue;
            }
            Err(e) => {
                metrics.errors.inc();
                metrics.synced.set(0);
                shared.api_synced.store(false, Ordering::Release);
                if !failing {
                    tracing::warn!("config watch lost, serving the last good config: {e}");
                    failing = true;
                } else {
                    tracing::debug!("config watch still failing: {e}");
                }
            }
        }
        let pause = jitter(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = until_true(&mut closed) => return,
        }
    }
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.5..1.0))
}

/// Lists the ConfigMap, applies it, returns the list's resourceVersion.
async fn list(
    client: &Client,
    shared: &Arc<Shared>,
    metrics: &WatchMetrics,
    applier: &mut Applier,
) -> Result<String, WatchError> {
    let response = client
        .get(&client.target.path(""), "the config list")
        .await?;
    let body = read_body(response.into_body(), MAX_DOCUMENT).await?;
    let list: List =
        serde_json::from_slice(&body).map_err(|e| WatchError::Decode(e.to_string()))?;
    match list.items.into_iter().next() {
        Some(cm) => {
            metrics.events.inc();
            applier.offer(shared, &client.target, &cm).await;
        }
        None => tracing::warn!(
            namespace = %client.target.namespace,
            "ConfigMap {} does not exist yet: serving the config file until it does",
            client.target.config_map
        ),
    }
    Ok(list.metadata.resource_version)
}

/// Watches from `rv`, applying each change, until the server ends the watch.
async fn watch(
    client: &Client,
    shared: &Arc<Shared>,
    metrics: &WatchMetrics,
    applier: &mut Applier,
    rv: &mut String,
) -> Result<Ended, WatchError> {
    let seconds = WATCH_SECONDS + rand::random_range(0..60);
    let query = format!(
        "&watch=true&allowWatchBookmarks=true&timeoutSeconds={seconds}&resourceVersion={rv}"
    );
    let response = client
        .get(&client.target.path(&query), "the config watch")
        .await?;
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(WATCH_IDLE, body.frame()).await {
            Err(_) => return Err(WatchError::Http(format!("no data for {WATCH_IDLE:?}"))),
            Ok(None) => return Ok(Ended::Closed),
            Ok(Some(f)) => f.map_err(|e| WatchError::Http(e.to_string()))?,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line = buf.split_to(end + 1);
            handle_event(&line[..end], client, shared, metrics, applier, rv).await?;
        }
        if buf.len() > MAX_DOCUMENT {
            return Err(WatchError::Decode(format!(
                "a watch event longer than {MAX_DOCUMENT} bytes"
            )));
        }
    }
}

/// What one watch event asks for.
enum Step {
    /// A new document (ADDED, MODIFIED).
    Apply(ConfigMapObject),
    /// The object was deleted: keep the running config, move on from here.
    Deleted(String),
    /// A bookmark: nothing changed up to this version.
    Version(String),
    /// An event type this client does not act on.
    Ignore(String),
}

fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, WatchError> {
    serde_json::from_value(v).map_err(|e| WatchError::Decode(e.to_string()))
}

/// One line of a watch: an event, or the error that ends the watch.
fn parse_event(line: &[u8]) -> Result<Step, WatchError> {
    let mut event: Event =
        serde_json::from_slice(line).map_err(|e| WatchError::Decode(e.to_string()))?;
    let meta = |e: &mut Event| decode::<Meta>(e.object["metadata"].take());
    Ok(match event.kind.as_str() {
        "ADDED" | "MODIFIED" => Step::Apply(decode(event.object)?),
        "BOOKMARK" => Step::Version(meta(&mut event)?.resource_version),
        "DELETED" => Step::Deleted(meta(&mut event)?.resource_version),
        "ERROR" => {
            let code = event.object["code"].as_u64();
            if code == Some(410) {
                return Err(WatchError::Gone);
            }
            let message = event.object["message"].as_str().unwrap_or("");
            return Err(WatchError::Http(format!("watch error {code:?}: {message}")));
        }
        other => Step::Ignore(other.to_owned()),
    })
}

async fn handle_event(
    line: &[u8],
    client: &Client,
    shared: &Arc<Shared>,
    metrics: &WatchMetrics,
    applier: &mut Applier,
    rv: &mut String,
) -> Result<(), WatchError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match parse_event(line)? {
        Step::Apply(cm) => {
            rv.clone_from(&cm.metadata.resource_version);
            metrics.events.inc();
            applier.offer(shared, &client.target, &cm).await;
        }
        Step::Version(v) => *rv = v,
        Step::Deleted(v) => {
            tracing::warn!(
                namespace = %client.target.namespace,
                "ConfigMap {} was deleted: keeping the running config",
                client.target.config_map
            );
            *rv = v;
        }
        Step::Ignore(kind) => tracing::debug!("config watch: ignoring a {kind} event"),
    }
    Ok(())
}

/// Offers documents to the proxy once each: the same bytes are not parsed
/// or counted again (a relist after a reconnect sends them again).
#[derive(Default)]
struct Applier {
    offered: Option<u64>,
}

impl Applier {
    async fn offer(&mut self, shared: &Arc<Shared>, target: &WatchTarget, cm: &ConfigMapObject) {
        let Some(doc) = cm.data.get(CONFIG_KEY) else {
            tracing::error!(
                namespace = %target.namespace,
                "ConfigMap {} has no {CONFIG_KEY}: keeping the running config",
                target.config_map
            );
            return;
        };
        let h = hash_bytes(doc.as_bytes());
        if self.offered == Some(h) {
            return;
        }
        let running = shared.snapshot.load().config.content_hash();
        let parsed = SidecarConfig::from_json(doc.as_bytes()).map(|mut c| {
            shared.overrides.apply(&mut c);
            c
        });
        let result = match parsed {
            Ok(c) if c.content_hash() == running => Ok(()),
            Ok(c) => shared.reload(c).await,
            Err(_) => shared.reload_json(doc.as_bytes()).await,
        };
        match result {
            // A port still held, certificates not mounted yet: the next
            // event or relist offers the same bytes again.
            Err(e) if e.is_transient() => self.offered = None,
            _ => self.offered = Some(h),
        }
        tracing::debug!(resource_version = %cm.metadata.resource_version, "config document offered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_read_from_the_pods_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(
            WatchTarget::from_vars(env(&[])).unwrap().is_none(),
            "outside a pod"
        );
        let pod = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "6443"),
            ("REMORA_KUBE_NAMESPACE", "shop"),
            ("REMORA_KUBE_TOKEN_FILE", "/run/t"),
        ];
        let t = WatchTarget::from_vars(env(Box::leak(Box::new(pod))))
            .unwrap()
            .unwrap();
        assert_eq!(t.address, "10.96.0.1:6443");
        assert_eq!(t.namespace, "shop");
        assert_eq!(t.config_map, CONFIG_MAP);
        assert_eq!(t.token_file, PathBuf::from("/run/t"));
        assert_eq!(t.ca_file, PathBuf::from(SERVICE_ACCOUNT_DIR).join("ca.crt"));
        assert_eq!(
            t.path("&watch=true"),
            "/api/v1/namespaces/shop/configmaps?fieldSelector=metadata.name%3Dremora-config&watch=true"
        );
        let v6 = [
            ("KUBERNETES_SERVICE_HOST", "fd00::1"),
            ("REMORA_KUBE_NAMESPACE", "shop"),
        ];
        let t = WatchTarget::from_vars(env(Box::leak(Box::new(v6))))
            .unwrap()
            .unwrap();
        assert_eq!(t.address, "[fd00::1]:443");
        let named = [
            ("KUBERNETES_SERVICE_HOST", "10.253.0.1"),
            ("REMORA_KUBE_SERVER_NAME", "kubernetes.default.svc"),
            ("REMORA_KUBE_NAMESPACE", "shop"),
        ];
        let t = WatchTarget::from_vars(env(Box::leak(Box::new(named))))
            .unwrap()
            .unwrap();
        assert_eq!(t.address, "10.253.0.1:443");
        assert_eq!(
            t.server_name,
            ServerName::try_from("kubernetes.default.svc").unwrap()
        );
        let bad = [
            ("KUBERNETES_SERVICE_HOST", "not a host"),
            ("REMORA_KUBE_NAMESPACE", "shop"),
        ];
        let e = WatchTarget::from_vars(env(Box::leak(Box::new(bad)))).unwrap_err();
        assert!(
            e.to_string()
                .contains("KUBERNETES_SERVICE_HOST \"not a host\""),
            "{e}"
        );
    }

    #[test]
    fn watch_events_are_read_as_kubernetes_sends_them() {
        let added = br#"{"type":"ADDED","object":{"kind":"ConfigMap","metadata":{"name":"remora-config","resourceVersion":"41"},"data":{"config.json":"{}"}}}"#;
        let Step::Apply(cm) = parse_event(added).unwrap() else {
            panic!("ADDED is a document")
        };
        assert_eq!(cm.metadata.resource_version, "41");
        assert_eq!(cm.data[CONFIG_KEY], "{}");
        let bookmark = br#"{"type":"BOOKMARK","object":{"kind":"ConfigMap","metadata":{"resourceVersion":"57"}}}"#;
        assert!(matches!(parse_event(bookmark).unwrap(), Step::Version(v) if v == "57"));
        let deleted =
            br#"{"type":"DELETED","object":{"metadata":{"resourceVersion":"60"},"data":{}}}"#;
        assert!(matches!(parse_event(deleted).unwrap(), Step::Deleted(v) if v == "60"));
        let gone = br#"{"type":"ERROR","object":{"kind":"Status","status":"Failure","message":"too old resource version: 1 (40)","reason":"Expired","code":410}}"#;
        assert!(matches!(parse_event(gone), Err(WatchError::Gone)));
        let denied =
            br#"{"type":"ERROR","object":{"kind":"Status","message":"forbidden","code":403}}"#;
        let Err(e) = parse_event(denied) else {
            panic!("an ERROR event ends the watch")
        };
        assert!(
            e.to_string().contains("watch error Some(403): forbidden"),
            "{e}"
        );
        assert!(matches!(
            parse_event(b"{not json"),
            Err(WatchError::Decode(_))
        ));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "not a certificate").unwrap();
        let target = WatchTarget {
            address: "127.0.0.1:1".into(),
            server_name: ServerName::try_from("127.0.0.1").unwrap(),
            ca_file: ca.clone(),
            token_file: dir.path().join("token"),
            namespace: "shop".into(),
            config_map: CONFIG_MAP.into(),
        };
        let Err(e) = Client::new(target) else {
            panic!("accepted a CA file without a certificate")
        };
        assert!(
            e.to_string()
                .contains(&format!("{} holds no PEM certificate", ca.display())),
            "{e}"
        );
    }
}
