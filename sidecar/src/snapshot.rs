//! A config compiled into the typed structures the hot path reads: route
//! tables indexed by authority, destination address and port, clusters by
//! name, per-listener policy. One `Snapshot` per config version, swapped atomically on reload.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::StatusCode;
use remora_api::config::{
    self, Direction, HashOn, Labels, ListenerProtocol, Protocol, RetryOn, RouteAction,
    SidecarConfig, TlsMode, selector_matches,
};

use crate::{
    Error,
    authz::Authz,
    cluster::Cluster,
    matching::{HeaderEditor, RequestMatcher, header_name},
    metrics::{ListenerMetrics, Registry},
    ratelimit::RateLimiter,
    split::WeightedSplit,
    tls::TlsSlot,
};

pub struct Snapshot {
    pub config: Arc<SidecarConfig>,
    /// `/config_dump`.
    pub json: Bytes,
    pub tables: Vec<Arc<RouteTable>>,
    by_authority: HashMap<String, usize>,
    /// The tables' service addresses on their ports (canonical IPs).
    by_address: HashMap<(IpAddr, u16), usize>,
    /// Tables that list no addresses, by port.
    by_port: HashMap<u16, usize>,
    catch_all: Option<usize>,
    pub clusters: HashMap<String, Arc<Cluster>>,
    pub listeners: HashMap<String, Arc<ListenerPolicy>>,
    pub start_traces: bool,
}

pub struct ListenerPolicy {
    pub name: String,
    pub direction: Direction,
    pub transparent: bool,
    pub protocol: ListenerProtocol,
    pub opaque_ports: Vec<u16>,
    pub default_cluster: Option<Arc<Cluster>>,
    /// Inbound only: the limits whose pod selector matches this pod.
    pub rate_limits: Vec<Arc<RateLimiter>>,
    /// Inbound only: the authorization policies that select this pod.
    pub authz: Option<Arc<Authz>>,
    /// Inbound only: whether callers must, may or may not use mesh TLS.
    pub tls_mode: TlsMode,
    pub metrics: ListenerMetrics,
}

pub struct RouteTable {
    pub name: String,
    pub protocol: Protocol,
    pub routes: Vec<Route>,
    /// Lists no domains: serves every host on its port.
    pub any_host: bool,
}

pub struct Route {
    pub name: String,
    pub matcher: RequestMatcher,
    pub action: Action,
    pub timeout: Option<Duration>,
    pub retry: Option<Arc<Retry>>,
    pub fault: Option<config::Fault>,
    pub mirror: Option<Arc<crate::http::mirror::MirrorPolicy>>,
    pub request_headers: HeaderEditor,
    pub response_headers: HeaderEditor,
}

pub enum Action {
    /// Clusters with their weights, picked in an exact, interleaved order.
    Clusters(WeightedSplit<Arc<Cluster>>),
    Direct {
        status: StatusCode,
        body: Bytes,
    },
}

impl Action {
    /// The route's next cluster in its weighted schedule: over any run of
    /// requests each cluster's share is its weight to within one request.
    pub fn pick(&self) -> Option<&Arc<Cluster>> {
        match self {
            Action::Clusters(split) => split.pick(),
            Action::Direct { .. } => None,
        }
    }
}

pub struct Retry {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: Vec<RetryOn>,
    pub backoff: Duration,
    pub budget: RetryBudget,
}

impl Retry {
    /// One more try after a connection failure or reset, within a 20 %
    /// budget (at least 10 a second).
    pub fn on_connection_failure() -> Self {
        Self {
            attempts: 1,
            per_try_timeout: None,
            on: vec![RetryOn::ConnectFailure, RetryOn::Reset],
            backoff: Duration::ZERO,
            budget: RetryBudget::new(20, 10),
        }
    }

    pub fn on(&self, r: RetryOn) -> bool {
        self.on.contains(&r)
    }

    /// Whether a response status (or trailers-only gRPC status) is retriable.
    pub fn retriable_status(&self, status: u16, grpc_status: Option<u32>) -> bool {
        (self.on(RetryOn::FiveXx) && status >= 500)
            || (self.on(RetryOn::GatewayError) && matches!(status, 502..=504))
            || grpc_status.is_some_and(|code| {
                let r = match code {
                    1 => RetryOn::Cancelled,
                    4 => RetryOn::DeadlineExceeded,
                    8 => RetryOn::ResourceExhausted,
                    13 => RetryOn::Internal,
                    14 => RetryOn::Unavailable,
                    _ => return false,
                };
                self.on(r)
            })
    }
}

/// Retries may add at most `percent` of the requests in flight on the route,
/// but `min_per_second` are always allowed, so retries cannot multiply load
/// during an outage (linkerd's and Envoy's retry budget).
pub struct RetryBudget {
    percent: u64,
    min_per_second: u64,
    pub requests_active: AtomicU64,
    pub retries_active: AtomicU64,
    // (second, retries granted in that second by the minimum).
    window: Mutex<(u64, u64)>,
}

impl RetryBudget {
    pub fn new(percent: u32, min_per_second: u32) -> Self {
        Self {
            percent: percent.into(),
            min_per_second: min_per_second.into(),
            requests_active: AtomicU64::new(0),
            retries_active: AtomicU64::new(0),
            window: Mutex::new((0, 0)),
        }
    }

    /// Takes a retry slot; release it with [`RetryBudget::release`].
    pub fn try_acquire(&self) -> bool {
        self.try_acquire_at(crate::balance::now_ms() / 1000)
    }

    fn try_acquire_at(&self, sec: u64) -> bool {
        let requests = self.requests_active.load(Ordering::Relaxed);
        let retries = self.retries_active.load(Ordering::Relaxed);
        let by_share = (retries + 1) * 100 <= requests * self.percent;
        let ok = by_share || {
            let mut w = self.window.lock().expect("budget lock");
            if w.0 != sec {
                *w = (sec, 0);
            }
            if w.1 < self.min_per_second {
                w.1 += 1;
                true
            } else {
                false
            }
        };
        if ok {
            self.retries_active.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    pub fn release(&self) {
        self.retries_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a cluster's consistent-hash key is taken from a request.
pub fn hash_key<B>(on: &HashOn, req: &http::Request<B>, peer: std::net::SocketAddr) -> Option<u64> {
    use crate::balance::hash_bytes;
    match on {
        HashOn::Header(h) => req
            .headers()
            .get(h.as_str())
            .map(|v| hash_bytes(v.as_bytes())),
        HashOn::Cookie(name) => req
            .headers()
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| hash_bytes(v.as_bytes())),
        HashOn::SourceIp => Some(hash_bytes(peer.ip().to_string().as_bytes())),
    }
}

impl Snapshot {
    /// Compiles a validated config. `previous` donates clusters and rate
    /// limiters whose config did not change, so pools, endpoint state, DNS
    /// tasks and buckets survive a reload.
    pub fn compile(
        config: SidecarConfig,
        previous: Option<&Snapshot>,
        reg: &Registry,
        pod_labels: &Labels,
        tls: &TlsSlot,
    ) -> Result<Self, Error> {
        let mut clusters = HashMap::new();
        let permissive = config.tls.mode == remora_api::config::TlsMode::Permissive;
        for c in &config.clusters {
            let reused = previous
                .and_then(|p| p.clusters.get(&c.name))
                .filter(|old| {
                    old.config == *c
                        && old.plain_until_identity == permissive
                        && !(old.built_without_identity && tls.load().is_some())
                })
                .cloned();
            clusters.insert(
                c.name.clone(),
                reused.unwrap_or_else(|| Cluster::new(c, reg, tls, permissive)),
            );
        }
        let cluster = |name: &str| {
            clusters
                .get(name)
                .cloned()
                .ok_or_else(|| Error::Config(format!("cluster {name:?} is not defined")))
        };

        let mut tables = Vec::new();
        let mut by_authority = HashMap::new();
        let mut by_address = HashMap::new();
        let mut by_port = HashMap::new();
        let mut catch_all = None;
        for (i, t) in config.routes.iter().enumerate() {
            let mut routes = Vec::new();
            for r in &t.routes {
                let action = match &r.action {
                    RouteAction::Clusters(wcs) => {
                        let mut cs = Vec::new();
                        for wc in wcs {
                            cs.push((cluster(&wc.cluster)?, wc.weight));
                        }
                        Action::Clusters(WeightedSplit::new(cs))
                    }
                    RouteAction::Direct(d) => Action::Direct {
                        status: StatusCode::from_u16(d.status)
                            .map_err(|e| Error::Config(format!("route {}: {e}", r.name)))?,
                        body: Bytes::from(d.body.clone()),
                    },
                };
                routes.push(Route {
                    name: r.name.clone(),
                    matcher: RequestMatcher::compile(&r.matches)?,
                    action,
                    timeout: r.timeout.map(|d| d.as_std()),
                    retry: r.retry.as_ref().filter(|p| p.attempts > 0).map(|p| {
                        Arc::new(Retry {
                            attempts: p.attempts,
                            per_try_timeout: p.per_try_timeout.map(|d| d.as_std()),
                            on: p.retry_on.clone(),
                            backoff: p.backoff.as_std(),
                            budget: RetryBudget::new(p.budget_percent, p.min_retries_per_second),
                        })
                    }),
                    fault: r.fault.clone(),
                    mirror: match &r.mirror {
                        Some(m) => Some(Arc::new(crate::http::mirror::MirrorPolicy::new(
                            cluster(&m.cluster)?,
                            m.percentage,
                            reg,
                            &r.name,
                        ))),
                        None => None,
                    },
                    request_headers: HeaderEditor::compile(&r.request_headers)?,
                    response_headers: HeaderEditor::compile(&r.response_headers)?,
                });
            }
            for d in &t.domains {
                if d == "*" {
                    catch_all.get_or_insert(i);
                } else {
                    by_authority.entry(d.to_ascii_lowercase()).or_insert(i);
                }
            }
            if let Some(p) = t.port {
                if t.addresses.is_empty() {
                    by_port.entry(p).or_insert(i);
                }
                for ip in &t.addresses {
                    by_address.entry((ip.to_canonical(), p)).or_insert(i);
                }
            }
            tables.push(Arc::new(RouteTable {
                name: t.name.clone(),
                protocol: t.protocol,
                routes,
                any_host: t.domains.is_empty(),
            }));
        }

        let mut limiters = Vec::new();
        for rl in &config.rate_limits {
            if !selector_matches(&rl.pod_selector, pod_labels) {
                continue;
            }
            let reused = previous
                .into_iter()
                .flat_map(|p| p.listeners.values())
                .flat_map(|l| l.rate_limits.iter())
                .find(|old| old.config == *rl)
                .cloned();
            match reused {
                Some(r) => limiters.push(r),
                None => {
                    if let Some(r) = RateLimiter::compile(rl, reg)? {
                        limiters.push(Arc::new(r));
                    }
                }
            }
        }

        let authz = Authz::compile(&config.authz, pod_labels)?.map(Arc::new);
        let mut listeners = HashMap::new();
        for l in &config.listeners {
            let inbound = l.direction == Direction::Inbound;
            listeners.insert(
                l.name.clone(),
                Arc::new(ListenerPolicy {
                    name: l.name.clone(),
                    direction: l.direction,
                    transparent: l.transparent,
                    protocol: l.protocol,
                    opaque_ports: l.opaque_ports.clone(),
                    default_cluster: l.default_cluster.as_deref().map(cluster).transpose()?,
                    rate_limits: if inbound {
                        limiters.clone()
                    } else {
                        Vec::new()
                    },
                    authz: authz.clone().filter(|_| inbound),
                    tls_mode: if inbound {
                        config.tls.mode
                    } else {
                        TlsMode::Disabled
                    },
                    metrics: ListenerMetrics::new(reg, &l.name),
                }),
            );
        }
        // Validate header names used for hashing now, not per request.
        for c in &config.clusters {
            if let Some(HashOn::Header(h)) = &c.load_balancer.hash_on {
                header_name(h)?;
            }
        }

        let json = Bytes::from(config.to_pretty_json());
        Ok(Self {
            start_traces: config.tracing.start_traces,
            config: Arc::new(config),
            json,
            tables,
            by_authority,
            by_address,
            by_port,
            catch_all,
            clusters,
            listeners,
        })
    }

    /// The route table for a request: by its authority (`host` or
    /// `host:port`), else by `dst`, the original destination of captured
    /// traffic. Opaque TCP has no authority.
    ///
    /// A host name a table lists decides first. Then the table that owns the
    /// destination address and port. Then, when the request names no host
    /// (no authority, or an IP address such as a ClusterIP), a table on that
    /// port that lists no addresses (written by hand: it takes the whole
    /// port); a table without domains takes named hosts on its port too.
    /// Then a `*` table. Anything else, such as another service on a table's
    /// port, is no table's: the listener's default (pass-through) takes it.
    pub fn table(
        &self,
        authority: Option<&str>,
        dst: Option<SocketAddr>,
    ) -> Option<&Arc<RouteTable>> {
        let by_name = authority.and_then(|a| {
            let a = a.to_ascii_lowercase();
            self.by_authority
                .get(&a)
                .or_else(|| self.by_authority.get(strip_port(&a)))
                .copied()
        });
        let unnamed = || {
            authority.is_none_or(|a| {
                strip_port(a)
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok()
            })
        };
        by_name
            .or_else(|| {
                let dst = dst?;
                self.by_address
                    .get(&(dst.ip().to_canonical(), dst.port()))
                    .copied()
                    .or_else(|| {
                        self.by_port
                            .get(&dst.port())
                            .copied()
                            .filter(|i| self.tables[*i].any_host || unnamed())
                    })
            })
            .or(self.catch_all)
            .map(|i| &self.tables[i])
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
fn strip_port(a: &str) -> &str {
    match a.rfind(':') {
        Some(i)
            if a[i + 1..].bytes().all(|b| b.is_ascii_digit())
                && (!a.starts_with('[') || a[..i].ends_with(']')) =>
        {
            &a[..i]
        }
        _ => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("reviews:9080"), "reviews");
        assert_eq!(strip_port("reviews"), "reviews");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn tables_by_host_then_port_for_unnamed_hosts() {
        let config = SidecarConfig::from_json(
            br#"{ "version": 1, "listeners": [],
              "routes": [
                { "name": "reviews", "domains": ["reviews.ns"], "port": 9080, "routes": [] },
                { "name": "any-on-7070", "domains": [], "port": 7070, "routes": [] }
              ] }"#,
        )
        .unwrap();
        let snap = Snapshot::compile(
            config,
            None,
            &Registry::default(),
            &Labels::new(),
            &TlsSlot::default(),
        )
        .unwrap();
        let name = |a: Option<&str>, p| {
            snap.table(a, Some(SocketAddr::from(([10, 96, 0, 12], p))))
                .map(|t| t.name.as_str())
        };
        assert_eq!(name(Some("reviews.ns:9080"), 9080), Some("reviews"));
        // No host, or an IP address (a ClusterIP): the port decides.
        assert_eq!(name(None, 9080), Some("reviews"));
        assert_eq!(name(Some("10.96.0.12:9080"), 9080), Some("reviews"));
        assert_eq!(name(Some("[fd00::1]:9080"), 9080), Some("reviews"));
        // Another service on the same port is not reviews.
        assert_eq!(name(Some("ratings.ns:9080"), 9080), None);
        // A table without domains takes every host on its port.
        assert_eq!(name(Some("anything"), 7070), Some("any-on-7070"));
    }

    fn compile(routes: serde_json::Value) -> Snapshot {
        let doc = serde_json::json!({ "version": 1, "listeners": [], "routes": routes });
        let config = SidecarConfig::from_json(doc.to_string().as_bytes()).unwrap();
        Snapshot::compile(
            config,
            None,
            &Registry::default(),
            &Labels::new(),
            &TlsSlot::default(),
        )
        .unwrap()
    }

    fn dst(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn tables_that_list_addresses_own_only_those() {
        let snap = compile(serde_json::json!([
            { "name": "orders-db", "domains": ["orders-db.ns"], "port": 3306,
              "addresses": ["10.96.0.10", "fd00::10"], "protocol": "tcp", "routes": [] },
            { "name": "users-db", "domains": ["users-db.ns"], "port": 3306,
              "addresses": ["10.96.0.11"], "protocol": "tcp", "routes": [] },
            { "name": "reviews", "domains": ["reviews.ns", "reviews.ns:9080"], "port": 9080,
              "addresses": ["10.96.0.20"], "routes": [] }
        ]));
        let name = |a: Option<&str>, d: &str| snap.table(a, dst(d)).map(|t| t.name.as_str());
        // Opaque TCP: the original destination decides, per address.
        assert_eq!(name(None, "10.96.0.10:3306"), Some("orders-db"));
        assert_eq!(name(None, "[fd00::10]:3306"), Some("orders-db"));
        assert_eq!(name(None, "10.96.0.11:3306"), Some("users-db"));
        // (An IPv4 destination seen through a dual-stack socket.)
        assert_eq!(name(None, "[::ffff:10.96.0.11]:3306"), Some("users-db"));
        // Another database on the same port belongs to no table: pass-through.
        assert_eq!(name(None, "10.96.0.99:3306"), None);
        // The right port of the wrong service, or the wrong port: no table.
        assert_eq!(name(None, "10.96.0.10:9080"), None);
        assert_eq!(name(None, "10.96.0.20:3306"), None);
        // A call by IP follows the address, whatever IP the Host names.
        assert_eq!(
            name(Some("10.96.0.20:9080"), "10.96.0.20:9080"),
            Some("reviews")
        );
        assert_eq!(name(Some("10.96.0.21:9080"), "10.96.0.21:9080"), None);
        assert_eq!(name(Some("[fd00::21]:9080"), "[fd00::21]:9080"), None);
        // A host-named request keeps domain matching ...
        assert_eq!(
            name(Some("reviews.ns:9080"), "10.96.0.99:9080"),
            Some("reviews")
        );
        // ... and a name no table lists, sent to a table's address, is that table's.
        assert_eq!(
            name(Some("reviews.alias"), "10.96.0.20:9080"),
            Some("reviews")
        );
        assert_eq!(name(Some("other.ns:9080"), "10.96.0.21:9080"), None);
        // Without an original destination (explicit listeners) only names count.
        assert_eq!(snap.table(None, None).map(|t| t.name.as_str()), None);
        assert_eq!(
            snap.table(Some("reviews.ns"), None)
                .map(|t| t.name.as_str()),
            Some("reviews")
        );
    }

    #[test]
    fn tables_without_addresses_keep_matching_by_port_only() {
        // Hand-written and local-mode configs list no addresses.
        let snap = compile(serde_json::json!([
            { "name": "db", "domains": [], "port": 3306, "protocol": "tcp", "routes": [] },
            { "name": "owned-db", "domains": [], "port": 3306,
              "addresses": ["10.96.0.10"], "protocol": "tcp", "routes": [] },
            { "name": "web", "domains": ["web.ns"], "port": 8080, "routes": [] },
            { "name": "fallback", "domains": ["*"], "routes": [] }
        ]));
        let name = |a: Option<&str>, d: &str| snap.table(a, dst(d)).map(|t| t.name.as_str());
        // An owned address goes to its owner, every other one to the
        // address-less table on that port.
        assert_eq!(name(None, "10.96.0.10:3306"), Some("owned-db"));
        assert_eq!(name(None, "10.96.0.99:3306"), Some("db"));
        assert_eq!(name(Some("10.96.0.99:3306"), "10.96.0.99:3306"), Some("db"));
        assert_eq!(name(None, "127.0.0.1:8080"), Some("web"));
        assert_eq!(name(Some("127.0.0.1:8080"), "127.0.0.1:8080"), Some("web"));
        // A named host no table lists is not `web`, on any address.
        assert_eq!(
            name(Some("api.ns:8080"), "127.0.0.1:8080"),
            Some("fallback")
        );
        assert_eq!(name(None, "10.96.0.10:7777"), Some("fallback"));
    }

    #[test]
    fn retry_budget_allows_share_and_minimum() {
        let b = RetryBudget::new(20, 2);
        b.requests_active.store(10, Ordering::Relaxed);
        // 20% of 10 = 2 by share, then 2 from the per-second minimum.
        let granted = (0..10).filter(|_| b.try_acquire_at(7)).count();
        assert_eq!(granted, 4);
        b.release();
        assert!(
            !b.try_acquire_at(7),
            "3 active retries already exceed 20% of 10"
        );
        assert!(b.try_acquire_at(8), "a new second refills the minimum");
        for _ in 0..4 {
            b.release();
        }
        assert!(b.try_acquire_at(8), "share slots free up as retries finish");
    }
}
