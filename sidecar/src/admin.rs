//! The admin port: `/ready`, `/live`, `/metrics`, `/config_dump`, `/drain`, and
//! the app's probes the webhook rewrote to `/app-health/<container>/<kind>`.

use std::sync::{Arc, atomic::Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::proxy::Shared;

pub async fn serve(socket: TcpListener, shared: Arc<Shared>) {
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
                        _ => answer(&req, &shared),
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

fn answer(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/ready") => {
            if shared.ready.load(Ordering::Acquire) && !shared.draining() {
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
        (&Method::GET, "/config_dump") => {
            let mut r = Response::new(Full::new(shared.snapshot.load().json.clone()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        (&Method::POST, "/drain") => {
            shared.start_drain();
            text(StatusCode::OK, "draining\n")
        }
        (_, "/drain") => text(StatusCode::METHOD_NOT_ALLOWED, "POST /drain\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "GET /ready /live /metrics /config_dump; POST /drain\n",
        ),
    }
}
