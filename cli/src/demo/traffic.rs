//! The client pod's app: fixed-rate calls to each route through the client's
//! own sidecar (outbound listener), as an app in explicit mode makes them,
//! recording what came back, including what the servers saw.

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use tokio::{net::TcpStream, sync::Semaphore, task::JoinSet};

use super::greeter::GreeterClient;

/// How long one call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Calls in flight per route; past it a tick is skipped (and counted), so a
/// slow machine sends fewer calls instead of queueing without bound. It also
/// bounds the HTTP/1.1 connections (one per call in flight) and so the TLS
/// handshakes between the sidecars.
pub const MAX_IN_FLIGHT: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Grpc,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
            Protocol::Grpc => "gRPC",
        }
    }
}

/// One route the client calls.
#[derive(Clone, Copy, Debug)]
pub struct RouteSpec {
    /// The Service called (and the route's name in the view).
    pub service: &'static str,
    pub port: u16,
    pub protocol: Protocol,
    /// Share of `--rate`.
    pub share: f64,
    /// What the route shows.
    pub shows: &'static str,
}

/// The calls the demo makes: mostly `reviews`, so the canary split is
/// measured on thousands of calls; writes to `ratings` from two tenants, one
/// above the example's 20 writes per second per tenant and one below; and
/// a trickle over HTTP/2 and gRPC.
pub const ROUTES: [RouteSpec; 4] = [
    RouteSpec {
        service: "reviews",
        port: 9080,
        protocol: Protocol::Http1,
        share: 0.75,
        shows: "canary 95/5",
    },
    RouteSpec {
        service: "ratings",
        port: 9080,
        protocol: Protocol::Http1,
        share: 0.15,
        shows: "rate limit",
    },
    RouteSpec {
        service: "details",
        port: 9080,
        protocol: Protocol::Http2,
        share: 0.05,
        shows: "HTTP/2",
    },
    RouteSpec {
        service: "greeter",
        port: 50051,
        protocol: Protocol::Grpc,
        share: 0.05,
        shows: "gRPC",
    },
];

/// The header the example's per-tenant limit counts by, and the demo's
/// tenants with their share of the `ratings` writes.
pub const TENANT_HEADER: &str = "x-tenant";
pub const TENANTS: [(&str, u64); 2] = [("acme", 4), ("globex", 1)];

/// The tenant of the `n`th write: `acme` four times in five.
pub fn tenant_of(n: u64) -> &'static str {
    let cycle: u64 = TENANTS.iter().map(|(_, w)| w).sum();
    let mut at = n % cycle;
    for (name, w) in TENANTS {
        if at < w {
            return name;
        }
        at -= w;
    }
    TENANTS[0].0
}

/// What one route's calls gave.
#[derive(Clone, Debug, Default)]
pub struct RouteStats {
    pub sent: u64,
    /// Ticks with `MAX_IN_FLIGHT` calls already out.
    pub skipped: u64,
    pub ok: u64,
    pub limited: u64,
    pub failed: u64,
    /// `200`, `429`, `grpc OK`, `error: ...`.
    pub outcomes: BTreeMap<String, u64>,
    pub latencies_us: Vec<u32>,
    /// Which version answered (the echo's `x-echo-version`).
    pub versions: BTreeMap<String, u64>,
    /// `(answering version, caller identity)` from the
    /// `x-forwarded-client-cert` the app received.
    pub callers: BTreeMap<(String, String), u64>,
    /// The identity of the sidecar that answered (`By=` of the header), by version.
    pub servers: BTreeMap<String, String>,
    /// Per tenant (`ratings` writes): calls sent and answered 429.
    pub tenants: BTreeMap<String, (u64, u64)>,
}

impl RouteStats {
    /// `q` in 0..=1 of the latencies, in milliseconds.
    pub fn percentile_ms(&self, q: f64) -> Option<f64> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        Some(f64::from(v[i]) / 1000.0)
    }
}

pub type Stats = Arc<Vec<Mutex<RouteStats>>>;

pub fn new_stats() -> Stats {
    Arc::new(ROUTES.iter().map(|_| Mutex::default()).collect())
}

/// What a call learnt from the app's answer.
#[derive(Default)]
struct Answer {
    outcome: String,
    ok: bool,
    limited: bool,
    version: Option<String>,
    xfcc: Option<String>,
    tenant: Option<&'static str>,
}

/// The client's connections: every one goes to its own sidecar, whatever
/// the request's authority (that is how an app calls in explicit mode).
#[derive(Clone)]
struct ToSidecar(SocketAddr);

impl tower_service::Service<Uri> for ToSidecar {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(TokioIo::new(s))
        })
    }
}

#[derive(Clone)]
struct Clients {
    http1: Client<ToSidecar, Empty<Bytes>>,
    http2: Client<ToSidecar, Empty<Bytes>>,
    grpc: GreeterClient,
}

impl Clients {
    fn new(sidecar: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            http1: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(ToSidecar(sidecar)),
            http2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(ToSidecar(sidecar)),
            grpc: GreeterClient::new(sidecar, "greeter:50051")?,
        })
    }

    async fn call(&self, route: &RouteSpec, n: u64) -> Answer {
        match route.protocol {
            Protocol::Http1 | Protocol::Http2 => {
                let client = if route.protocol == Protocol::Http1 {
                    &self.http1
                } else {
                    &self.http2
                };
                // The authority is the Service, as the app would write it.
                let uri = format!(
                    "http://{}:{}/{}/{n}",
                    route.service, route.port, route.service
                );
                let req = if route.shows == "rate limit" {
                    hyper::Request::post(uri).header(TENANT_HEADER, tenant_of(n))
                } else {
                    hyper::Request::get(uri)
                };
                let req = req.body(Empty::new()).expect("a valid request");
                let mut answer = match client.request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                        let mut a = Answer {
                            outcome: status.as_u16().to_string(),
                            ok: status.is_success(),
                            limited: status.as_u16() == 429,
                            ..Answer::default()
                        };
                        if let (true, Ok(body)) = (a.ok, body)
                            && let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body)
                        {
                            a.version = json["version"].as_str().map(str::to_owned);
                            a.xfcc = json["headers"]["x-forwarded-client-cert"]
                                .as_str()
                                .map(str::to_owned);
                        }
                        a
                    }
                    Err(e) => failure(&e),
                };
                if route.shows == "rate limit" {
                    answer.tenant = Some(tenant_of(n));
                }
                answer
            }
            Protocol::Grpc => match self.grpc.clone().say_hello(&format!("call {n}")).await {
                Ok(reply) => Answer {
                    outcome: "grpc OK".into(),
                    ok: true,
                    version: Some("v1".into()),
                    xfcc: (!reply.caller.is_empty()).then_some(reply.caller),
                    ..Answer::default()
                },
                Err(status) => Answer {
                    outcome: format!("grpc {:?}", status.code()),
                    limited: status.code() == tonic::Code::ResourceExhausted,
                    ..Answer::default()
                },
            },
        }
    }
}

fn failure(e: &dyn std::error::Error) -> Answer {
    // The innermost cause says what happened (connection refused, reset).
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    Answer {
        outcome: format!("error: {cause}"),
        ..Answer::default()
    }
}

/// `By=<server>;URI=<caller>` as the sidecar writes `x-forwarded-client-cert`.
pub fn parse_xfcc(v: &str) -> (Option<String>, Option<String>) {
    let mut by = None;
    let mut uri = None;
    for part in v.split(';') {
        match part.split_once('=') {
            Some(("By", id)) => by = Some(id.to_owned()),
            Some(("URI", id)) => uri = Some(id.to_owned()),
            _ => {}
        }
    }
    (by, uri)
}

fn record(stats: &Mutex<RouteStats>, answer: Answer, took: Duration) {
    let mut s = stats.lock().expect("stats lock");
    if let Some(t) = answer.tenant {
        let e = s.tenants.entry(t.to_owned()).or_default();
        e.0 += 1;
        e.1 += u64::from(answer.limited);
    }
    *s.outcomes.entry(answer.outcome).or_default() += 1;
    if answer.ok {
        s.ok += 1;
    } else if answer.limited {
        s.limited += 1;
    } else {
        s.failed += 1;
    }
    s.latencies_us
        .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
    let version = answer.version.unwrap_or_else(|| "-".into());
    if answer.ok {
        *s.versions.entry(version.clone()).or_default() += 1;
    }
    if let Some(xfcc) = answer.xfcc {
        let (by, caller) = parse_xfcc(&xfcc);
        if let Some(by) = by {
            s.servers.insert(version.clone(), by);
        }
        let caller = caller.unwrap_or_else(|| "(no identity)".into());
        *s.callers.entry((version, caller)).or_default() += 1;
    }
}

/// One call per route, not counted: opens the connections (and the TLS
/// sessions between the sidecars) before the clock starts.
pub async fn warm_up(sidecar: SocketAddr) -> anyhow::Result<()> {
    let clients = Clients::new(sidecar)?;
    for (i, route) in ROUTES.iter().enumerate() {
        let answer = tokio::time::timeout(CALL_TIMEOUT, clients.call(route, i as u64))
            .await
            .map_err(|_| anyhow::anyhow!("the first call to {} timed out", route.service))?;
        anyhow::ensure!(
            answer.ok,
            "the first call to {} failed: {}",
            route.service,
            answer.outcome
        );
    }
    Ok(())
}

/// Sends `rate` calls per second for `duration` (or until `stop` turns
/// true) and waits, bounded, for the last answers.
pub async fn drive(
    sidecar: SocketAddr,
    rate: u32,
    duration: Duration,
    stats: Stats,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let clients = Clients::new(sidecar)?;
    let end = Instant::now() + duration;
    let mut tickers = JoinSet::new();
    for (i, route) in ROUTES.iter().enumerate() {
        let per_second = f64::from(rate) * route.share;
        if per_second <= 0.0 {
            continue;
        }
        let clients = clients.clone();
        let stats = stats.clone();
        let route = *route;
        let mut stop = stop.clone();
        tickers.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
            // Behind schedule (a busy machine): no burst to catch up, which
            // would open a connection per call; the rate achieved shows it.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
            let mut calls = JoinSet::new();
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                if Instant::now() >= end {
                    break;
                }
                n += 1;
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    stats[i].lock().expect("stats lock").skipped += 1;
                    continue;
                };
                stats[i].lock().expect("stats lock").sent += 1;
                let clients = clients.clone();
                let stats = stats.clone();
                calls.spawn(async move {
                    let started = Instant::now();
                    let answer =
                        match tokio::time::timeout(CALL_TIMEOUT, clients.call(&route, n)).await {
                            Ok(a) => a,
                            Err(_) => Answer {
                                outcome: "error: timed out".into(),
                                ..Answer::default()
                            },
                        };
                    record(&stats[i], answer, started.elapsed());
                    drop(permit);
                });
                // Reap finished calls so the set stays small.
                while calls.try_join_next().is_some() {}
            }
            // Calls are bounded by CALL_TIMEOUT; this waits for their answers.
            while calls.join_next().await.is_some() {}
        });
    }
    // Each ticker ends at the deadline or on `stop`, after its last answers.
    while tickers.join_next().await.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfcc_gives_server_and_caller() {
        let (by, uri) = parse_xfcc(
            "By=spiffe://cluster.local/ns/bookinfo/sa/reviews;URI=spiffe://cluster.local/ns/bookinfo/sa/productpage",
        );
        assert_eq!(
            by.as_deref(),
            Some("spiffe://cluster.local/ns/bookinfo/sa/reviews")
        );
        assert_eq!(
            uri.as_deref(),
            Some("spiffe://cluster.local/ns/bookinfo/sa/productpage")
        );
        assert_eq!(parse_xfcc("garbage"), (None, None));
    }

    #[test]
    fn tenants_take_their_share_of_writes() {
        let acme = (0..100).filter(|n| tenant_of(*n) == "acme").count();
        assert_eq!(acme, 80);
        assert_eq!(tenant_of(4), "globex");
    }

    #[test]
    fn shares_add_up_to_the_rate() {
        let total: f64 = ROUTES.iter().map(|r| r.share).sum();
        assert!((total - 1.0).abs() < 1e-9);
    }

    #[test]
    fn percentiles_pick_from_sorted_latencies() {
        let s = RouteStats {
            latencies_us: (1..=100).rev().map(|ms| ms * 1000).collect(),
            ..RouteStats::default()
        };
        assert_eq!(s.percentile_ms(0.5), Some(51.0));
        assert_eq!(s.percentile_ms(0.99), Some(99.0));
        assert_eq!(RouteStats::default().percentile_ms(0.5), None);
    }
}
