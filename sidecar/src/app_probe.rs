//! The app's own probes and `httpGet` lifecycle hooks, which the webhook
//! rewrote to the admin port (`/app-health/<container>/<kind>`), run by the
//! proxy against 127.0.0.1 as the kubelet would run them.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use remora_api::config::{AppProbe, ProbeHeader};
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use crate::BoxError;

/// Runs one of the app's original probes against 127.0.0.1 and answers with
/// its result: the app's status for HTTP(S) (the kubelet counts 200–399 as
/// success), 200 for an accepted TCP connection or a gRPC `SERVING`, 503 when
/// the app cannot be reached in the probe's timeout or is not serving.
pub async fn run(probe: &AppProbe) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    let port = probe.port();
    let timeout = Duration::from_secs(u64::from(probe.timeout_seconds().max(1)));
    let attempt = async {
        let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        match probe {
            AppProbe::TcpSocket { .. } => Ok::<_, BoxError>(StatusCode::OK),
            AppProbe::HttpGet {
                path,
                headers,
                https: false,
                ..
            } => http_get(TokioIo::new(tcp), port, path, headers).await,
            AppProbe::HttpGet {
                path,
                headers,
                https: true,
                ..
            } => {
                let server = ServerName::IpAddress(IpAddr::from(Ipv4Addr::LOCALHOST).into());
                let tls = tokio_rustls::TlsConnector::from(any_certificate())
                    .connect(server, tcp)
                    .await?;
                http_get(TokioIo::new(tls), port, path, headers).await
            }
            AppProbe::Grpc { service, .. } => grpc_health(tcp, port, service).await,
        }
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

async fn http_get<IO>(
    io: TokioIo<IO>,
    port: u16,
    path: &str,
    headers: &[ProbeHeader],
) -> Result<StatusCode, BoxError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let mut req = Request::get(path).body(Empty::<Bytes>::new())?;
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
}

/// `grpc.health.v1.Health/Check` over plaintext HTTP/2, as the kubelet's
/// gRPC probe does: 200 when the answer is `SERVING`, 503 otherwise.
async fn grpc_health(tcp: TcpStream, port: u16, service: &str) -> Result<StatusCode, BoxError> {
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = Request::post(format!(
        "http://127.0.0.1:{port}/grpc.health.v1.Health/Check"
    ))
    .header(header::CONTENT_TYPE, "application/grpc")
    .header(header::TE, "trailers")
    .header(header::USER_AGENT, "remora-probe")
    .body(Full::new(health_check_request(service)))?;
    let resp = send.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?;
    // A trailers-only answer carries grpc-status in the headers.
    let grpc_status = body
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if parts.status != StatusCode::OK || grpc_status != "0" {
        return Err(format!(
            "health check answered HTTP {} grpc-status {grpc_status:?}",
            parts.status
        )
        .into());
    }
    match serving_status(body.to_bytes())? {
        SERVING => Ok(StatusCode::OK),
        other => Err(format!(
            "health check answered {} for service {service:?}",
            status_name(other)
        )
        .into()),
    }
}

/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

fn status_name(status: u64) -> String {
    match status {
        0 => "UNKNOWN".into(),
        1 => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        n => format!("status {n}"),
    }
}

/// A gRPC frame with `HealthCheckRequest { string service = 1; }`.
fn health_check_request(service: &str) -> Bytes {
    let mut msg = BytesMut::new();
    if !service.is_empty() {
        msg.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.put_slice(service.as_bytes());
    }
    let mut frame = BytesMut::with_capacity(5 + msg.len());
    frame.put_u8(0); // not compressed
    frame.put_u32(msg.len() as u32);
    frame.put_slice(&msg);
    frame.freeze()
}

/// `status` (field 1, an enum) of the `HealthCheckResponse` in one gRPC
/// frame; absent means 0 (`UNKNOWN`), as in proto3.
fn serving_status(mut frame: Bytes) -> Result<u64, BoxError> {
    if frame.len() < 5 {
        return Err("health check answered no message".into());
    }
    if frame.get_u8() != 0 {
        return Err("health check answer is compressed".into());
    }
    let len = frame.get_u32() as usize;
    if frame.len() < len {
        return Err("health check answer is truncated".into());
    }
    let mut msg = frame.split_to(len);
    let mut status = 0;
    while msg.has_remaining() {
        let key = varint(&mut msg)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut msg)?,
            (_, 0) => {
                varint(&mut msg)?;
            }
            (_, 1) => skip(&mut msg, 8)?,
            (_, 2) => {
                let n = varint(&mut msg)? as usize;
                skip(&mut msg, n)?;
            }
            (_, 5) => skip(&mut msg, 4)?,
            (_, wire) => return Err(format!("health check answer: wire type {wire}").into()),
        }
    }
    Ok(status)
}

fn put_varint(buf: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        buf.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    buf.put_u8(n as u8);
}

fn varint(buf: &mut Bytes) -> Result<u64, BoxError> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            break;
        }
        let b = buf.get_u8();
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err("health check answer: bad varint".into())
}

fn skip(buf: &mut Bytes, n: usize) -> Result<(), BoxError> {
    if buf.remaining() < n {
        return Err("health check answer is truncated".into());
    }
    buf.advance(n);
    Ok(())
}

/// TLS for HTTPS probes only: like the kubelet, it does not verify the app's
/// certificate (the handshake's signature still is). Never used for mesh traffic.
fn any_certificate() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = Arc::new(AnyCertificate(provider.clone()));
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_messages() {
        let req = health_check_request("a.B");
        assert_eq!(&req[..], &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']);
        assert_eq!(&health_check_request("")[..], &[0, 0, 0, 0, 0]);
        // status = NOT_SERVING, after an unknown string field 2.
        let answer = Bytes::from_static(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 2]);
        assert_eq!(serving_status(answer).unwrap(), 2);
        assert_eq!(
            serving_status(Bytes::from_static(&[0, 0, 0, 0, 0])).unwrap(),
            0
        );
        assert!(serving_status(Bytes::from_static(&[0, 0, 0, 0, 3, 0x08])).is_err());
    }
}
