//! The admin port: `/ready`, `/live`, `/metrics`, `/config_dump`, `/drain`, and
//! the app's probes the webhook rewrote to `/app-health/<container>/<kind>`.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use remora_api::config::AppProbe;
use tokio::net::{TcpListener, TcpStream};

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
                        Some(p) if req.method() == Method::GET => app_probe(p).await,
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

/// Runs one of the app's original probes against 127.0.0.1 and answers with
/// its result: the app's status for HTTP (the kubelet counts 200–399 as
/// success), 200 for an accepted TCP connection, 503 when the app cannot be
/// reached in the probe's timeout.
async fn app_probe(probe: &AppProbe) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    let (port, timeout) = match probe {
        AppProbe::HttpGet {
            port,
            timeout_seconds,
            ..
        }
        | AppProbe::TcpSocket {
            port,
            timeout_seconds,
        } => (
            *port,
            Duration::from_secs(u64::from((*timeout_seconds).max(1))),
        ),
    };
    let attempt = async {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        let AppProbe::HttpGet { path, headers, .. } = probe else {
            return Ok::<_, crate::BoxError>(StatusCode::OK);
        };
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut req = Request::get(path.as_str()).body(Empty::<Bytes>::new())?;
        let h = req.headers_mut();
        h.insert(header::HOST, format!("127.0.0.1:{port}").parse()?);
        h.insert(
            header::USER_AGENT,
            header::HeaderValue::from_static("remora-probe"),
        );
        // The probe's own headers replace ours (a `Host` of its own, say), as
        // the kubelet does.
        for probe_header in headers {
            h.insert(
                header::HeaderName::from_bytes(probe_header.name.as_bytes())?,
                probe_header.value.parse()?,
            );
        }
        let resp = send.send_request(req).await?;
        let status = resp.status();
        // Read the body so the app sees a complete exchange.
        let _ = resp.into_body().collect().await;
        Ok(status)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(status)) => reply(status, format!("app probe: {status}\n")),
        Ok(Err(e)) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("app probe on port {port} failed: {e}\n"),
        ),
        Err(_) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("app probe on port {port} timed out after {timeout:?}\n"),
        ),
    }
}
