//! The HTTP stream/proxy layer for HTTP/1.1, HTTP/2 and gRPC: filters in
//! MOSN's order (rate limit → route → faults and header edits → balance →
//! circuit breaker / outlier), retries with a budget, timeouts, upgrades,
//! local replies (with `grpc-status` for gRPC), metrics and access log.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version,
    header::{self, HOST},
};
use hyper::body::Incoming;
use rand::Rng;
use remora_api::config::Direction;

pub mod mirror;
mod reply;
mod upstream;

use reply::PendingLog;
pub use reply::{LocalReply, LoggedBody, RespBody, empty, full};
use upstream::forward;

use crate::{
    access_log::{AccessRecord, now_rfc3339},
    cluster::Cluster,
    proxy::Shared,
    ratelimit::Decision,
    snapshot::{Action, Route, Snapshot},
};

/// One accepted downstream connection.
pub struct Downstream {
    pub shared: Arc<Shared>,
    pub listener: String,
    pub peer: SocketAddr,
    /// The destination the client meant (`SO_ORIGINAL_DST`), else the local address.
    pub original_dst: SocketAddr,
    /// The listener's own address (to refuse proxying to ourselves).
    pub local: SocketAddr,
    pub h2: bool,
    pub protocol: &'static str,
    /// The caller's SPIFFE ID, when it connected with mesh TLS.
    pub peer_identity: Option<Arc<str>>,
    /// Accepted while the proxy drains: HTTP/1 serves one request and closes.
    pub accepted_draining: bool,
    /// HTTP/1.1 to the original destination goes over this connection's own
    /// upstream connections (see `Cluster::is_original_destination`).
    pub original_h1: std::sync::OnceLock<Arc<crate::pool::H1Pool>>,
}

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) static X_FLAGS: HeaderName = HeaderName::from_static("x-remora-flags");
pub(crate) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub(crate) static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub(crate) static RL_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub(crate) static RL_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// The verified caller, for the app (Envoy's and Istio's header).
pub(crate) static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Everything the access log and metrics learn while a request is proxied.
struct Exchange {
    rec: AccessRecord,
    logging: bool,
    upstream_time: Duration,
    /// Rate-limit headers to add to the response.
    rl_headers: Option<(HeaderValue, u64)>,
}

/// Entry point for each request on a downstream connection.
pub async fn handle(
    mut req: Request<Incoming>,
    conn: Arc<Downstream>,
) -> Result<Response<LoggedBody>, Infallible> {
    let start = Instant::now();
    let snap = conn.shared.snapshot.load_full();
    let Some(policy) = snap.listeners.get(&conn.listener).cloned() else {
        let r = LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, "LR", "listener removed")
            .into_response(false);
        return Ok(r.map(LoggedBody::plain));
    };
    let m = &policy.metrics;
    m.request_total.inc();
    let active = m.request_active.track();
    let grpc = is_grpc(&req);

    if !req.headers().contains_key(&X_REQUEST_ID) {
        let id = random_hex(16);
        req.headers_mut().insert(
            X_REQUEST_ID.clone(),
            HeaderValue::from_str(&id).expect("hex"),
        );
    }
    let traced = req
        .headers()
        .get(&TRACEPARENT)
        .is_some_and(|tp| tp.len() >= 55);
    if !traced && snap.start_traces {
        let tp = format!("00-{}-{}-01", random_hex(16), random_hex(8));
        req.headers_mut().insert(
            TRACEPARENT.clone(),
            HeaderValue::from_str(&tp).expect("hex"),
        );
    }
    let logging = conn.shared.access_log.enabled();
    let mut ex = Exchange {
        // Only filled (and allocated) when there is an access log to write.
        rec: if logging {
            access_record(&req, &conn, &policy, grpc)
        } else {
            AccessRecord::default()
        },
        logging,
        upstream_time: Duration::ZERO,
        rl_headers: None,
    };

    let resp = match proxy(req, &snap, &policy, &conn, &mut ex, grpc).await {
        Ok(r) => r,
        Err(local) => {
            ex.rec.response_flags = local.flag.to_string();
            ex.rec.proxy_process_fail = true;
            local.into_response(grpc)
        }
    };
    let (mut parts, body) = resp.into_parts();
    if let Some((limit, remaining)) = ex.rl_headers.take() {
        parts.headers.insert(RL_LIMIT.clone(), limit);
        parts
            .headers
            .insert(RL_REMAINING.clone(), HeaderValue::from(remaining));
    }
    let elapsed = start.elapsed();
    m.request_time_total.add(elapsed.as_nanos() as u64);
    m.process_time_total
        .add(elapsed.saturating_sub(ex.upstream_time).as_nanos() as u64);
    m.request_duration.observe(elapsed);
    let status = parts.status.as_u16();
    if status >= 500 || ex.rec.proxy_process_fail {
        m.request_failed.inc();
    }
    ex.rec.response_code = status;
    ex.rec.proxy_process_request_duration =
        elapsed.saturating_sub(ex.upstream_time).as_nanos() as u64;
    ex.rec.proxy_process_duration = ex.rec.proxy_process_request_duration;
    let logged = LoggedBody {
        inner: body,
        pending: conn.shared.access_log.enabled().then(|| {
            Box::new(PendingLog {
                rec: ex.rec,
                start,
                headers_at: Instant::now(),
                log: conn.shared.access_log.clone(),
            })
        }),
        _active: Some(active),
    };
    Ok(Response::from_parts(parts, logged))
}

fn access_record(
    req: &Request<Incoming>,
    conn: &Downstream,
    policy: &crate::snapshot::ListenerPolicy,
    grpc: bool,
) -> AccessRecord {
    let header = |n: &HeaderName| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let request_id = header(&X_REQUEST_ID).to_string();
    let trace_id = Some(header(&TRACEPARENT))
        .filter(|tp| tp.len() >= 55)
        .and_then(|tp| tp.get(3..35))
        .unwrap_or_default()
        .to_string();
    let (rpc_service, rpc_method) = if grpc {
        let mut p = req.uri().path().trim_start_matches('/').splitn(2, '/');
        let s = p.next().unwrap_or("").to_string();
        (s, p.next().unwrap_or("").to_string())
    } else {
        (String::new(), String::new())
    };
    let app = &conn.shared.access_log.appname;
    let outbound = policy.direction == Direction::Outbound;
    AccessRecord {
        start_time: now_rfc3339(),
        listener: conn.listener.clone(),
        source_app: if outbound { app.clone() } else { String::new() },
        target_app: if outbound { String::new() } else { app.clone() },
        hijack: policy.transparent,
        rpc_service,
        rpc_method,
        downstream_address: conn.peer.to_string(),
        downstream_protocol: if grpc { "gRPC" } else { conn.protocol },
        downstream_identity: conn
            .peer_identity
            .as_deref()
            .unwrap_or_default()
            .to_string(),
        host_name: authority(req).unwrap_or_default().to_string(),
        request_size: req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0),
        http_url: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        http_method: req.method().to_string(),
        request_id,
        trace_id,
        ..Default::default()
    }
}

fn authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(HOST).and_then(|v| v.to_str().ok()))
}

/// `bytes` (at most 16) random bytes as lower-case hex.
fn random_hex(bytes: usize) -> String {
    debug_assert!(bytes <= 16);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut v: u128 = rand::rng().random();
    let mut s = String::with_capacity(bytes * 2);
    for _ in 0..bytes * 2 {
        s.push(HEX[(v & 15) as usize] as char);
        v >>= 4;
    }
    s
}

enum Selected<'a> {
    Route(&'a Route),
    Cluster(&'a Arc<Cluster>),
}

async fn proxy(
    mut req: Request<Incoming>,
    snap: &Snapshot,
    policy: &crate::snapshot::ListenerPolicy,
    conn: &Downstream,
    ex: &mut Exchange,
    grpc: bool,
) -> Result<Response<RespBody>, LocalReply> {
    // Before routing: local rate limits (inbound).
    for rl in &policy.rate_limits {
        match rl.check(&req) {
            Decision::Skip => {}
            Decision::Allowed { remaining } => {
                ex.rl_headers
                    .get_or_insert((rl.limit_header().clone(), remaining));
            }
            Decision::Limited => {
                let mut r =
                    LocalReply::new(rl.status, "RL", format!("rate limited by {}", rl.name()));
                r.body = if rl.body.is_empty() {
                    r.body
                } else {
                    rl.body.clone()
                };
                r.headers = rl.headers.clone();
                r.headers
                    .push((RL_LIMIT.clone(), rl.limit_header().clone()));
                r.headers
                    .push((RL_REMAINING.clone(), HeaderValue::from_static("0")));
                return Err(r);
            }
        }
    }

    // Inbound: who is calling, and may they?
    if policy.direction == Direction::Inbound {
        // Only this sidecar may say who the caller is.
        req.headers_mut().remove(&XFCC);
        if let Some(peer) = &conn.peer_identity {
            let own = conn.shared.tls.load().as_ref().map(|t| t.identity());
            let v = match own {
                Some(own) => format!("By={own};URI={peer}"),
                None => format!("URI={peer}"),
            };
            if let Ok(v) = HeaderValue::from_str(&v) {
                req.headers_mut().insert(XFCC.clone(), v);
            }
        }
        if let Some(authz) = &policy.authz
            && !authz.allows(conn.peer_identity.as_deref(), &req)
        {
            policy.metrics.authz_denied.inc();
            let who = conn
                .peer_identity
                .as_deref()
                .unwrap_or("an unauthenticated caller");
            return Err(LocalReply::new(
                StatusCode::FORBIDDEN,
                "AZ",
                format!(
                    "access denied: {who} is not allowed by {}",
                    authz.policies.join(", ")
                ),
            ));
        }
    }

    // Route selection.
    let selected = match policy.direction {
        Direction::Inbound => policy.default_cluster.as_ref().map(Selected::Cluster),
        Direction::Outbound => {
            let dst = policy.transparent.then_some(conn.original_dst);
            match snap.table(authority(&req), dst) {
                Some(t) => match t.routes.iter().find(|r| r.matcher.matches(&req)) {
                    Some(r) => Some(Selected::Route(r)),
                    None => {
                        return Err(LocalReply::new(
                            StatusCode::NOT_FOUND,
                            "NR",
                            format!("no route in {} matches", t.name),
                        ));
                    }
                },
                None => policy.default_cluster.as_ref().map(Selected::Cluster),
            }
        }
    };
    let Some(selected) = selected else {
        let host = authority(&req).unwrap_or("-");
        return Err(LocalReply::new(
            StatusCode::NOT_FOUND,
            "NR",
            format!("no route for {host}"),
        ));
    };

    let (route, cluster) = match selected {
        Selected::Cluster(c) => (None, c),
        Selected::Route(r) => {
            if ex.logging {
                ex.rec.route.clone_from(&r.name);
            }
            // After routing: faults, then direct responses.
            if let Some(f) = &r.fault {
                if let Some(d) = &f.delay
                    && rand::rng().random_bool((d.percentage / 100.0).clamp(0.0, 1.0))
                {
                    policy.metrics.fault_delays.inc();
                    tokio::time::sleep(d.delay.as_std()).await;
                }
                if let Some(a) = &f.abort
                    && rand::rng().random_bool((a.percentage / 100.0).clamp(0.0, 1.0))
                {
                    policy.metrics.fault_aborts.inc();
                    let status = StatusCode::from_u16(a.http_status)
                        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                    let mut reply = LocalReply::new(status, "FI", "fault injected");
                    if let (true, Some(code)) = (grpc, a.grpc_status) {
                        let mut resp = reply.into_response(true);
                        resp.headers_mut()
                            .insert(GRPC_STATUS.clone(), HeaderValue::from(code));
                        return Ok(resp);
                    }
                    reply.flag = "FI";
                    return Err(reply);
                }
            }
            match &r.action {
                Action::Direct { status, body } => {
                    let mut resp = Response::new(full(body.clone()));
                    *resp.status_mut() = *status;
                    r.response_headers.apply(resp.headers_mut());
                    return Ok(resp);
                }
                Action::Clusters(_) => {
                    let c = r.action.pick().expect("clusters route has a cluster");
                    (Some(r), c)
                }
            }
        }
    };
    if ex.logging {
        ex.rec.upstream_cluster.clone_from(&cluster.name);
    }

    let mut req = req;
    if let Some(r) = route {
        r.request_headers.apply(req.headers_mut());
    }
    // After routing: a share of the route's requests is copied to its mirror.
    let tap = route
        .and_then(|r| r.mirror.as_ref())
        .filter(|m| rand::rng().random_bool((m.percentage / 100.0).clamp(0.0, 1.0)))
        .and_then(|m| m.start(&req, m.cluster.wants_h2(conn.h2, grpc)));
    let mut resp = forward(req, cluster, route, conn, ex, grpc, tap).await?;
    if let Some(r) = route {
        r.response_headers.apply(resp.headers_mut());
    }
    Ok(resp)
}

/// Connection-level headers that apply to one hop only.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in [
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "proxy-authenticate",
        "proxy-authorization",
    ] {
        h.remove(n);
    }
    if !keep_upgrade {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
    // HTTP/2 allows only `te: trailers` (gRPC needs it).
    if h.get(header::TE).is_some_and(|v| v != "trailers") {
        h.remove(header::TE);
    }
}

/// A protocol upgrade the proxy passes through (WebSocket and the like).
/// `Upgrade: h2c` is not one: after it the connection would be a tunnel of
/// HTTP/2 streams that no route, limit or authorization policy sees, so its
/// upgrade headers are dropped (as Envoy does) and the request is proxied as
/// plain HTTP/1.1.
fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|u| !u.as_bytes().eq_ignore_ascii_case(b"h2c"))
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("upgrade"))
        })
}
