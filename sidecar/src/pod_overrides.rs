//! Per-pod settings over the namespace's rendered config.
//!
//! The operator renders one config per namespace, from the namespace's
//! default SidecarTemplate. A pod may use another template or override it
//! with annotations (log level, worker threads, drain timeout, capture mode,
//! ports); the webhook passes the pod's effective settings to the proxy
//! container as `REMORA_*` environment variables, and [`PodOverrides::apply`]
//! lays them over every config the proxy loads: at start and at each reload.

use std::net::SocketAddr;

use remora_api::config::{
    Direction, Labels, Listener, ListenerProtocol, SidecarConfig, TlsMode, selector_matches,
};

/// The listeners and clusters the operator renders (`operator::render`); the
/// capture mode adds or removes them.
pub const OUTBOUND_LISTENER: &str = "outbound";
pub const INBOUND_LISTENER: &str = "inbound";
pub const INBOUND_APP_CLUSTER: &str = "inbound|app";
pub const PASSTHROUGH_CLUSTER: &str = "passthrough";
const DEFAULT_INBOUND_PORT: u16 = 15006;

/// How the pod's traffic reaches the proxy (the SidecarTemplate's `captureMode`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureMode {
    /// iptables redirects inbound and outbound traffic: a transparent outbound
    /// listener and an inbound listener in front of the app.
    Iptables,
    /// No redirect: apps call the outbound listener at 127.0.0.1; no inbound listener.
    Explicit,
}

/// The sidecar's log level (the SidecarTemplate's `logLevel`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// The pod's own settings; `None` keeps the config's value.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct PodOverrides {
    /// Log level (`runtime.logLevel`).
    #[arg(long, env = "REMORA_LOG_LEVEL", value_enum, ignore_case = true)]
    pub log_level: Option<LogLevel>,
    /// Worker threads (`runtime.workerThreads`), 1-64.
    #[arg(long, env = "REMORA_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub worker_threads: Option<u16>,
    /// How long shutdown waits for in-flight requests (`runtime.drainTimeout`).
    #[arg(long, env = "REMORA_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<remora_api::Duration>,
    /// `iptables` or `explicit`: adds or removes the inbound listener and
    /// sets whether the outbound listener is transparent.
    #[arg(long, env = "REMORA_CAPTURE_MODE", value_enum, ignore_case = true)]
    pub capture_mode: Option<CaptureMode>,
    /// Port of the inbound listener (iptables mode).
    #[arg(long, env = "REMORA_INBOUND_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub inbound_port: Option<u16>,
    /// Port of the outbound listener.
    #[arg(long, env = "REMORA_OUTBOUND_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub outbound_port: Option<u16>,
    /// Port of the pod-reachable admin address (probes, metrics).
    #[arg(long, env = "REMORA_ADMIN_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub admin_port: Option<u16>,
}

impl PodOverrides {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Lays the pod's settings over `config`. Pure and idempotent: applying
    /// twice gives what applying once does.
    pub fn apply(&self, config: &mut SidecarConfig) {
        let runtime = &mut config.runtime;
        if let Some(level) = self.log_level {
            runtime.log_level = level.as_str().to_owned();
        }
        if let Some(n) = self.worker_threads {
            runtime.worker_threads = n;
        }
        if let Some(d) = self.drain_timeout {
            runtime.drain_timeout = d;
        }
        match self.capture_mode {
            Some(CaptureMode::Explicit) => explicit(config),
            Some(CaptureMode::Iptables) => iptables(config, self.inbound_port),
            None => {}
        }
        for l in &mut config.listeners {
            let port = match l.name.as_str() {
                OUTBOUND_LISTENER => self.outbound_port,
                INBOUND_LISTENER => self.inbound_port,
                _ => None,
            };
            if let Some(p) = port {
                l.address.set_port(p);
            }
        }
        if let Some(p) = self.admin_port {
            config.admin.address.set_port(p);
        }
    }
}

/// The inbound policies (rate limits, authorization) that select this pod
/// but cannot run because the config has no inbound listener (explicit
/// capture). The webhook refuses explicit capture while mTLS is on; policies
/// are the operator's and can select such a pod still, so they are named
/// loudly at every load instead of being skipped in silence.
pub fn unenforced_inbound_policies(config: &SidecarConfig, pod_labels: &Labels) -> Vec<String> {
    if config
        .listeners
        .iter()
        .any(|l| l.direction == Direction::Inbound)
    {
        return Vec::new();
    }
    let limits = config
        .rate_limits
        .iter()
        .filter(|r| selector_matches(&r.pod_selector, pod_labels))
        .map(|r| format!("rate limit {}", r.name));
    let authz = config
        .authz
        .iter()
        .filter(|a| selector_matches(&a.pod_selector, pod_labels))
        .map(|a| format!("authorization policy {}", a.name));
    limits.chain(authz).collect()
}

/// Logs each policy [`unenforced_inbound_policies`] finds, as an error.
pub fn warn_unenforced(config: &SidecarConfig, pod_labels: &Labels) {
    for policy in unenforced_inbound_policies(config, pod_labels) {
        tracing::error!(
            "{policy} selects this pod but is NOT enforced: explicit capture has no inbound \
             listener, so calls reach the app directly; use captureMode iptables"
        );
    }
}

/// No redirect: the app calls the outbound listener, which then cannot read
/// an original destination; nothing arrives for an inbound listener.
fn explicit(config: &mut SidecarConfig) {
    config.listeners.retain(|l| l.name != INBOUND_LISTENER);
    for l in &mut config.listeners {
        if l.name == OUTBOUND_LISTENER {
            l.transparent = false;
            if l.default_cluster.as_deref() == Some(PASSTHROUGH_CLUSTER) {
                l.default_cluster = None;
            }
        }
    }
}

/// Redirected traffic: a transparent outbound listener with pass-through for
/// unrouted calls, and the inbound listener in front of the app. A namespace
/// rendered for explicit mode lacks them; they are added as the operator
/// renders them.
fn iptables(config: &mut SidecarConfig, inbound_port: Option<u16>) {
    for l in &mut config.listeners {
        if l.name == OUTBOUND_LISTENER {
            l.transparent = true;
            l.default_cluster
                .get_or_insert_with(|| PASSTHROUGH_CLUSTER.to_owned());
        }
    }
    if !config.listeners.iter().any(|l| l.name == INBOUND_LISTENER) {
        let port = inbound_port.unwrap_or(DEFAULT_INBOUND_PORT);
        config.listeners.push(Listener {
            name: INBOUND_LISTENER.into(),
            direction: Direction::Inbound,
            address: SocketAddr::from(([0, 0, 0, 0], port)),
            transparent: true,
            protocol: ListenerProtocol::Auto,
            default_cluster: Some(INBOUND_APP_CLUSTER.into()),
            opaque_ports: Vec::new(),
        });
    }
    let missing = |name: &str| config.cluster(name).is_none();
    let mut add = Vec::new();
    if missing(INBOUND_APP_CLUSTER) {
        add.push(serde_json::json!({
            "name": INBOUND_APP_CLUSTER, "protocol": "http1", "endpoints": "localApp"
        }));
    }
    if missing(PASSTHROUGH_CLUSTER) {
        // The operator lists the mesh's addresses only in a config rendered for
        // iptables mode; without them unrouted calls go out in plaintext.
        let tls = if config.tls.mode == TlsMode::Disabled {
            "disabled"
        } else {
            "auto"
        };
        add.push(serde_json::json!({
            "name": PASSTHROUGH_CLUSTER, "protocol": "tcp",
            "endpoints": "originalDestination", "tls": {"mode": tls}
        }));
    }
    for c in add {
        config
            .clusters
            .push(serde_json::from_value(c).expect("a cluster the operator renders"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(iptables: bool) -> SidecarConfig {
        let mut listeners = vec![serde_json::json!({
            "name": "outbound", "direction": "outbound", "address": "127.0.0.1:15001",
            "transparent": iptables
        })];
        let mut clusters = Vec::new();
        if iptables {
            listeners[0]["defaultCluster"] = "passthrough".into();
            listeners.push(serde_json::json!({
                "name": "inbound", "direction": "inbound", "address": "0.0.0.0:15006",
                "transparent": true, "defaultCluster": "inbound|app"
            }));
            clusters.push(serde_json::json!({
                "name": "inbound|app", "protocol": "http1", "endpoints": "localApp"
            }));
            clusters.push(serde_json::json!({
                "name": "passthrough", "protocol": "tcp",
                "endpoints": "originalDestination"
            }));
        }
        let doc = serde_json::json!({
            "version": 1, "listeners": listeners, "clusters": clusters,
            "admin": {"address": "0.0.0.0:15000"}
        });
        SidecarConfig::from_json(doc.to_string().as_bytes()).unwrap()
    }

    fn every() -> PodOverrides {
        PodOverrides {
            log_level: Some(LogLevel::Debug),
            worker_threads: Some(4),
            drain_timeout: Some("12s".parse().unwrap()),
            capture_mode: Some(CaptureMode::Explicit),
            inbound_port: Some(16006),
            outbound_port: Some(16001),
            admin_port: Some(16000),
        }
    }

    #[test]
    fn inbound_policies_of_an_explicit_pod_are_named() {
        let mut c = config(true);
        c.rate_limits = serde_json::from_value(serde_json::json!([
            {"name": "shop/cart/all", "podSelector": {"app": "cart"},
             "bucket": {"requests": 10, "per": "1s", "burst": 10}},
            {"name": "shop/other/all", "podSelector": {"app": "other"},
             "bucket": {"requests": 10, "per": "1s", "burst": 10}}
        ]))
        .unwrap();
        let labels = Labels::from([("app".to_owned(), "cart".to_owned())]);
        assert!(
            unenforced_inbound_policies(&c, &labels).is_empty(),
            "iptables"
        );
        PodOverrides {
            capture_mode: Some(CaptureMode::Explicit),
            ..PodOverrides::default()
        }
        .apply(&mut c);
        assert_eq!(
            unenforced_inbound_policies(&c, &labels),
            ["rate limit shop/cart/all"]
        );
    }

    #[test]
    fn nothing_to_apply_changes_nothing() {
        let mut c = config(true);
        PodOverrides::default().apply(&mut c);
        assert_eq!(c, config(true));
    }

    #[test]
    fn every_setting_lands_in_the_config() {
        let mut c = config(true);
        every().apply(&mut c);
        assert_eq!(c.runtime.log_level, "debug");
        assert_eq!(c.runtime.worker_threads, 4);
        assert_eq!(c.runtime.drain_timeout.to_string(), "12s");
        assert_eq!(c.admin.address.port(), 16000);
        let names: Vec<&str> = c.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["outbound"], "explicit: no inbound listener");
        assert_eq!(c.listeners[0].address.port(), 16001);
        assert!(!c.listeners[0].transparent);
        assert_eq!(c.listeners[0].default_cluster, None);
        c.validate().unwrap();
        // Applying again (as every reload does) changes nothing.
        let once = c.clone();
        every().apply(&mut c);
        assert_eq!(c, once);
    }

    #[test]
    fn iptables_on_a_config_rendered_for_explicit_mode_adds_the_capture_path() {
        let mut c = config(false);
        let o = PodOverrides {
            capture_mode: Some(CaptureMode::Iptables),
            inbound_port: Some(16006),
            ..PodOverrides::default()
        };
        o.apply(&mut c);
        c.validate().unwrap();
        let inbound = c.listeners.iter().find(|l| l.name == "inbound").unwrap();
        assert_eq!(inbound.address, "0.0.0.0:16006".parse().unwrap());
        assert!(inbound.transparent);
        assert!(c.listeners[0].transparent);
        assert_eq!(
            c.listeners[0].default_cluster.as_deref(),
            Some("passthrough")
        );
        assert!(c.cluster("inbound|app").is_some() && c.cluster("passthrough").is_some());
        let once = c.clone();
        o.apply(&mut c);
        assert_eq!(c, once);
        // And back.
        let mut back = c.clone();
        PodOverrides {
            capture_mode: Some(CaptureMode::Explicit),
            ..PodOverrides::default()
        }
        .apply(&mut back);
        assert!(back.listeners.iter().all(|l| l.name != "inbound"));
    }
}
