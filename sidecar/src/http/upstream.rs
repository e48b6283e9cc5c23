//! The upstream half of an HTTP exchange: retries with a budget and a
//! replayable body, per-try and route timeouts, upgrades, circuit breaking,
//! balancing and outlier bookkeeping.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use http::{
    HeaderValue, Request, Response, StatusCode, Uri, Version,
    header::HOST,
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rand::Rng;
use remora_api::config::RetryOn;

use super::{
    Downstream, Exchange, GRPC_STATUS, LocalReply, RespBody, empty, is_upgrade, strip_hop_by_hop,
};
use crate::{
    balance::Outcome,
    breaker::Limit,
    cluster::{Cluster, SendError, Target, UpstreamBody},
    metrics::GaugeGuard,
    replay::ReplayBody,
    snapshot::{Retry, Route, hash_key},
};

enum TryResult {
    Response(Response<Incoming>),
    ConnectFailure(String),
    Reset(String),
    Timeout,
}

pub(super) async fn forward(
    mut req: Request<Incoming>,
    cluster: &Arc<Cluster>,
    route: Option<&Route>,
    conn: &Downstream,
    ex: &mut Exchange,
    grpc: bool,
    mut mirror: Option<super::mirror::Tap>,
) -> Result<Response<RespBody>, LocalReply> {
    let upgrading = is_upgrade(&req);
    let downstream_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let h2 = cluster.wants_h2(conn.h2, grpc) && !upgrading;
    ex.rec.upstream_protocol = if grpc {
        "gRPC"
    } else if h2 {
        "HTTP/2"
    } else {
        "HTTP/1.1"
    };
    let hash = cluster
        .config
        .load_balancer
        .hash_on
        .as_ref()
        .and_then(|on| hash_key(on, &req, conn.peer));

    let (mut parts, body) = req.into_parts();
    if parts.headers.get(HOST).is_none()
        && let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(HOST, v);
    }
    strip_hop_by_hop(&mut parts.headers, upgrading);
    // HTTP/2 carries the authority as `:authority` instead of `Host`.
    let authority = if h2 {
        parts
            .headers
            .remove(HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .or_else(|| parts.uri.authority().cloned())
    } else {
        None
    };
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));

    // A gRPC caller's own deadline (`grpc-timeout`) caps the route's timeout,
    // as Istio configures Envoy to do.
    let deadline = grpc.then(|| grpc_timeout(&parts.headers)).flatten();
    // Without a retry policy, a request with no body to resend and a safe
    // method still gets one more try when its connection fails (an endpoint
    // going away during a rollout), as Envoy and Linkerd do by default.
    let bodiless = http_body::Body::is_end_stream(&body);
    let retry = route
        .and_then(|r| r.retry.as_ref())
        .or_else(|| (bodiless && is_safe(&parts.method)).then_some(&cluster.connect_retry))
        .filter(|_| !upgrading);
    let mut replay: Option<ReplayBody> = None;
    let mut body = Some(body);
    let budget = retry.map(|r| &r.budget);
    if let Some(b) = budget {
        b.requests_active.fetch_add(1, Ordering::Relaxed);
    }
    let _budget_guard = BudgetGuard(budget);

    let attempt = async {
        let mut tries = 0u32;
        // The budget slot of the retry in flight, released when it is done.
        let mut retry_slot: Option<RetrySlot> = None;
        loop {
            let upstream_body: UpstreamBody = match (body.take(), &replay) {
                _ if bodiless => empty(),
                (Some(b), _) if retry.is_some() => {
                    let r = ReplayBody::new(b);
                    replay = Some(r.clone());
                    r.boxed()
                }
                (Some(b), _) => b.map_err(Into::into).boxed(),
                // Retries are only attempted when the body can be replayed.
                (None, Some(r)) => match r.replay() {
                    Some(again) => again.boxed(),
                    None => empty(),
                },
                (None, None) => empty(),
            };
            // The first try's body is also copied to the mirror.
            let upstream_body = match mirror.take() {
                Some(tap) => tap.tee(upstream_body),
                None => upstream_body,
            };
            let mut up = Request::new(upstream_body);
            *up.method_mut() = parts.method.clone();
            // Only a retry needs the headers again.
            *up.headers_mut() = if retry.is_some() {
                parts.headers.clone()
            } else {
                std::mem::take(&mut parts.headers)
            };
            *up.version_mut() = if h2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            };
            let per_try = retry.and_then(|r| r.per_try_timeout);
            let dest = Dest {
                path: &path,
                authority: authority.as_ref(),
            };
            let (result, target) = try_once(cluster, up, dest, hash, conn, h2, per_try).await?;
            drop(retry_slot.take());
            if ex.logging {
                ex.rec.upstream_address = target.map(|t| t.to_string()).unwrap_or_default();
            }

            let retriable = match (&result, retry) {
                (_, None) => false,
                (TryResult::Response(r), Some(p)) => {
                    let gs = r
                        .headers()
                        .get(&GRPC_STATUS)
                        .and_then(|v| v.to_str().ok()?.parse().ok());
                    p.retriable_status(r.status().as_u16(), gs)
                }
                (TryResult::ConnectFailure(_), Some(p)) => {
                    p.on(RetryOn::ConnectFailure)
                        || p.on(RetryOn::FiveXx)
                        || p.on(RetryOn::GatewayError)
                }
                (TryResult::Reset(_), Some(p)) => p.on(RetryOn::Reset) || p.on(RetryOn::FiveXx),
                (TryResult::Timeout, Some(p)) => {
                    p.on(RetryOn::FiveXx) || p.on(RetryOn::GatewayError) || p.on(RetryOn::Reset)
                }
            };
            let can_retry = retriable
                && retry.is_some_and(|p| tries < p.attempts)
                && (bodiless || replay.as_ref().is_some_and(|r| r.replay().is_some()));
            if can_retry {
                let p: &Retry = retry.expect("checked");
                let granted = if p.budget.try_acquire() {
                    // Released again if maxRetries refuses (it counts its own overflow).
                    let budget = BudgetClaim(&p.budget);
                    cluster.breaker.retry().map(|cap| RetrySlot {
                        _budget: budget,
                        _cap: cap,
                    })
                } else {
                    cluster.metrics.request_retry_overflow.inc();
                    None
                };
                if let Some(slot) = granted {
                    retry_slot = Some(slot);
                    tries += 1;
                    ex.rec.retries = tries;
                    cluster.metrics.request_retry.inc();
                    let cap = p.backoff.saturating_mul(1 << (tries - 1).min(6));
                    let jitter = rand::rng().random_range(0..=cap.as_millis() as u64);
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                    continue;
                }
            }
            let flagged = |status, flag: &'static str, msg: String| {
                let mut r = LocalReply::new(status, flag, msg);
                if tries > 0 {
                    r.flag = "URX";
                }
                r
            };
            return match result {
                TryResult::Response(r) => Ok(r),
                TryResult::ConnectFailure(e) => Err(flagged(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UF",
                    format!("upstream connect error: {e}"),
                )),
                TryResult::Reset(e) => Err(flagged(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UC",
                    format!("upstream reset before response: {e}"),
                )),
                TryResult::Timeout => Err(flagged(
                    StatusCode::GATEWAY_TIMEOUT,
                    "UT",
                    "upstream per-try timeout".into(),
                )),
            };
        }
    };
    let upstream_start = Instant::now();
    let timeout = match (route.and_then(|r| r.timeout), deadline) {
        (Some(r), Some(d)) => Some(r.min(d)),
        (r, d) => r.or(d),
    };
    let result = match timeout {
        Some(t) => match tokio::time::timeout(t, attempt).await {
            Ok(r) => r,
            Err(_) => {
                cluster.metrics.request_timeout.inc();
                let by_caller = deadline.is_some_and(|d| Some(d) == timeout);
                Err(LocalReply::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "UT",
                    if by_caller {
                        "the caller's grpc-timeout passed"
                    } else {
                        "upstream request timeout"
                    },
                ))
            }
        },
        None => attempt.await,
    };
    ex.upstream_time = upstream_start.elapsed();
    let mut resp = result?;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(down) = downstream_upgrade
    {
        let up = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(down, up) {
                Ok((d, u)) => {
                    let mut d = hyper_util::rt::TokioIo::new(d);
                    let mut u = hyper_util::rt::TokioIo::new(u);
                    let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                }
                Err(e) => tracing::debug!("upgrade failed: {e}"),
            }
        });
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, empty()));
    }
    strip_hop_by_hop(resp.headers_mut(), false);
    Ok(resp.map(|b| b.map_err(Into::into).boxed()))
}

/// GET, HEAD, OPTIONS and TRACE: safe to send twice.
fn is_safe(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::TRACE
    )
}

/// A retry's claim on the budget and on the cluster's `maxRetries`, from
/// its grant until its try returns.
struct RetrySlot<'a> {
    _budget: BudgetClaim<'a>,
    _cap: crate::breaker::Permit<'a>,
}

/// A granted retry's share of the route's budget, released on drop.
struct BudgetClaim<'a>(&'a crate::snapshot::RetryBudget);

impl Drop for BudgetClaim<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

struct BudgetGuard<'a>(Option<&'a crate::snapshot::RetryBudget>);

impl Drop for BudgetGuard<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.0 {
            b.requests_active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// What the upstream request's URI is built from.
struct Dest<'a> {
    path: &'a PathAndQuery,
    /// The caller's authority, for HTTP/2 upstreams.
    authority: Option<&'a Authority>,
}

/// One try against one endpoint: circuit breaker, balancing, the pooled
/// request, and outlier bookkeeping.
async fn try_once(
    cluster: &Arc<Cluster>,
    mut req: Request<UpstreamBody>,
    dest: Dest<'_>,
    hash: Option<u64>,
    conn: &Downstream,
    h2: bool,
    per_try: Option<Duration>,
) -> Result<(TryResult, Option<SocketAddr>), LocalReply> {
    let m = &cluster.metrics;
    let Some(_in_flight) = cluster.breaker.request() else {
        return Err(overflow(cluster, Limit::Requests));
    };
    let Some(target) = cluster.pick(hash, conn.original_dst) else {
        return Err(LocalReply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UH",
            format!("cluster {} has no healthy endpoint", cluster.name),
        ));
    };
    let addr = target.addr();
    if addr == conn.local {
        // An original-destination or local-app cluster on a connection that
        // was not redirected would send the request back to this listener.
        return Err(LocalReply::new(
            StatusCode::BAD_GATEWAY,
            "LOOP",
            format!(
                "cluster {} resolves to this listener ({addr}); was the connection redirected?",
                cluster.name
            ),
        ));
    }
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    // HTTP/1.1 requests are pooled by the URI's authority, so it names the
    // endpoint (`Host` names the service); HTTP/2 sends the caller's.
    uri.authority = Some(match dest.authority {
        Some(a) => a.clone(),
        None => target.authority(),
    });
    uri.path_and_query = Some(dest.path.clone());
    *req.uri_mut() = Uri::from_parts(uri).map_err(|e| {
        LocalReply::new(
            StatusCode::BAD_REQUEST,
            "DPE",
            format!("bad request path: {e}"),
        )
    })?;
    let _ep_active = EndpointActive::new(&target);
    m.request_total.inc();
    let _active: GaugeGuard = m.request_active.track();
    let start = Instant::now();
    let own = (cluster.is_original_destination() && !h2)
        .then(|| conn.original_h1.get_or_init(Default::default));
    let fut = cluster.send(h2, addr, req, own);
    let result = match per_try {
        Some(t) => tokio::time::timeout(t, fut).await.ok(),
        None => Some(fut.await),
    };
    m.request_duration_time_total
        .add(start.elapsed().as_nanos() as u64);
    let (result, outcome) = match result {
        None => {
            m.request_timeout.inc();
            (TryResult::Timeout, Outcome::ServerError)
        }
        Some(Ok(r)) => {
            let o = if r.status().is_server_error() {
                Outcome::ServerError
            } else {
                Outcome::Success
            };
            (TryResult::Response(r), o)
        }
        Some(Err(SendError::Connect(e))) => (
            TryResult::ConnectFailure(error_chain(&*e)),
            Outcome::ConnectFailure,
        ),
        Some(Err(SendError::Request(e))) => {
            (TryResult::Reset(error_chain(&*e)), Outcome::ServerError)
        }
        // Refused before reaching the endpoint: no outlier bookkeeping.
        Some(Err(SendError::Overflow(limit))) => {
            if limit == Limit::Pending {
                m.request_pending_overflow.inc();
            }
            return Err(overflow(cluster, limit));
        }
    };
    if let (Target::Endpoint(ep), Some(b)) = (&target, cluster.balancer()) {
        b.record(ep, outcome);
    }
    Ok((result, Some(addr)))
}

/// The local reply for a request refused by a circuit-breaking limit.
fn overflow(cluster: &Cluster, limit: Limit) -> LocalReply {
    LocalReply::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "UO",
        format!("cluster {} is at its {}", cluster.name, limit.field()),
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

struct EndpointActive(Option<Arc<crate::balance::Endpoint>>);

impl EndpointActive {
    fn new(t: &Target) -> Self {
        match t {
            Target::Endpoint(e) => {
                e.active.fetch_add(1, Ordering::Relaxed);
                Self(Some(e.clone()))
            }
            Target::Addr(_) => Self(None),
        }
    }
}

impl Drop for EndpointActive {
    fn drop(&mut self) {
        if let Some(e) = &self.0 {
            e.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The `grpc-timeout` header: up to 8 digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`), per the gRPC over HTTP/2 spec.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_per_the_spec() {
        let t = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_str(v).unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(t("300m"), Some(Duration::from_millis(300)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(t("123456789m"), None, "more than 8 digits");
        assert_eq!(t("5x"), None);
        assert_eq!(t("m"), None);
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}
