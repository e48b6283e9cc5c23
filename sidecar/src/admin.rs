//! The admin ports. The public one (`admin.address`, reachable in the pod's
//! network) answers what the kubelet and Prometheus need: `/ready`, `/live`,
//! `/metrics` and the app's probes the webhook rewrote to
//! `/app-health/<container>/<kind>`. The control one (`admin.controlAddress`,
//! loopback only) also answers what changes or reveals state: `POST /drain`,
//! `GET /config_dump`, `GET`/`POST /logging`.

use std::sync::{Arc, atomic::Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::proxy::Shared;

/// Which admin port a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Health, metrics, app probes.
    Public,
    /// Everything, on loopback only.
    Control,
}

pub async fn serve(socket: TcpListener, shared: Arc<Shared>, scope: Scope) {
    loop {
        let Ok((stream, _)) = socket.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move {
                    let resp = match shared.app_probes.get(req.uri().path()) {
                        Some(p) if req.method() == Method::GET => crate::app_probe::run(p).await,
                        _ => answer(&req, &shared, scope),
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

fn answer(req: &Request<Incoming>, shared: &Arc<Shared>, scope: Scope) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => {
            if shared.live() {
                text(StatusCode::OK, "live\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "drained: past the drain's grace and timeout\n",
                )
            }
        }
        (&Method::GET, "/ready") => {
            if !shared.has_needed_identity() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: strict mTLS and no workload identity yet\n",
                )
            } else if shared.ready.load(Ordering::Acquire) && !shared.draining() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(shared.registry.render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (_, "/config_dump" | "/drain" | "/logging") if scope == Scope::Public => text(
            StatusCode::NOT_FOUND,
            "served on the control port (admin.controlAddress, 127.0.0.1) only\n",
        ),
        (&Method::GET, "/config_dump") => {
            let mut r = Response::new(Full::new(shared.snapshot.load().json.clone()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        (&Method::POST, "/drain") => {
            let grace = shared.snapshot.load().config.runtime.drain_grace.as_std();
            shared.drain_gracefully(grace);
            text(StatusCode::OK, "draining\n")
        }
        (_, "/drain") => text(StatusCode::METHOD_NOT_ALLOWED, "POST /drain\n"),
        (method @ (&Method::GET | &Method::POST), "/logging") => logging(req, shared, method),
        _ => text(
            StatusCode::NOT_FOUND,
            match scope {
                Scope::Public => "GET /ready /live /metrics /app-health/...\n",
                Scope::Control => {
                    "GET /ready /live /metrics /config_dump /logging; POST /drain /logging?level=\n"
                }
            },
        ),
    }
}

/// `GET /logging` reports the log level; `POST /logging?level=debug` sets it
/// (a level or an `EnvFilter` directive such as `remora_sidecar=debug,info`).
fn logging(req: &Request<Incoming>, shared: &Shared, method: &Method) -> Response<Full<Bytes>> {
    let Some(handle) = &shared.log_level else {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "this proxy was started without a reloadable log filter\n",
        );
    };
    let level = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("level=")));
    let result = match (method, level) {
        (&Method::POST, None) => {
            return text(StatusCode::BAD_REQUEST, "POST /logging?level=LEVEL\n");
        }
        (&Method::POST, Some(l)) => (handle.0)(Some(l)),
        _ => (handle.0)(None),
    };
    match result {
        Ok(now) => text(StatusCode::OK, format!("{now}\n")),
        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}
