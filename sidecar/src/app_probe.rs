//! The app's own probes, which the webhook rewrote to the admin port
//! (`/app-health/<container>/<kind>`), run by the proxy against 127.0.0.1.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use remora_api::config::AppProbe;
use tokio::net::TcpStream;

/// Runs one of the app's original probes against 127.0.0.1 and answers with
/// its result: the app's status for HTTP (the kubelet counts 200–399 as
/// success), 200 for an accepted TCP connection, 503 when the app cannot be
/// reached in the probe's timeout.
pub async fn run(probe: &AppProbe) -> Response<Full<Bytes>> {
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
