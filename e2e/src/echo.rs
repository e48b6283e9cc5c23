//! The echo application: answers every HTTP/1.1 and h2c (prior knowledge)
//! request with 200, `x-echo-version: <version>` and a JSON body
//! `{"version","host","path","method","headers":{..},"peer","protocol"}`, so
//! a caller sees which subset answered and what the sidecars added on the way
//! (`x-request-id`, `x-forwarded-client-cert`, route header edits).
//! `GET /healthz` answers `{"status":"ok","version":..}`, for probes (503
//! `{"status":"starting"}` until the app is ready, see [`serve_ready_at`]).
//!
//! The `remora-echo` binary (netns test, kind images) and `remoractl demo`
//! serve it.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, header::HeaderValue, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

/// Serves the echo app on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, version: Arc<str>) {
    serve_ready_at(listener, version, None).await
}

/// [`serve`], for an app that is slow to start: it answers requests at once
/// but reports itself ready on `/healthz` only from `ready_at` on, so a test
/// can tell whether anything sent it traffic before its pod was Ready.
pub async fn serve_ready_at(listener: TcpListener, version: Arc<str>, ready_at: Option<Instant>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("remora-echo: accept: {e}");
                continue;
            }
        };
        let version = version.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| echo(req, version.clone(), peer, ready_at));
            // Errors are the client's business (resets, bad requests).
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn echo(
    req: Request<Incoming>,
    version: Arc<str>,
    peer: SocketAddr,
    ready_at: Option<Instant>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    // Read the body so keep-alive connections stay usable; its content is not echoed.
    let _ = body.collect().await;
    let health = parts.method == hyper::Method::GET && parts.uri.path() == "/healthz";
    let starting = health && ready_at.is_some_and(|at| Instant::now() < at);
    let body = if starting {
        serde_json::json!({ "status": "starting", "version": &*version })
    } else if health {
        serde_json::json!({ "status": "ok", "version": &*version })
    } else {
        let mut headers = serde_json::Map::new();
        for name in parts.headers.keys() {
            let values: Vec<&str> = parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap_or("<binary>"))
                .collect();
            headers.insert(name.as_str().to_owned(), values.join(", ").into());
        }
        let host = parts
            .headers
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_default();
        serde_json::json!({
            "version": &*version,
            "host": host,
            "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            "method": parts.method.as_str(),
            "headers": headers,
            "peer": peer.to_string(),
            "protocol": format!("{:?}", parts.version),
        })
    };
    let mut bytes = serde_json::to_vec(&body).expect("JSON serializes");
    bytes.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    if starting {
        *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
    }
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&version) {
        h.insert("x-echo-version", v);
    }
    Ok(resp)
}
