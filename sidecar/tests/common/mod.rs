//! Test upstreams, clients and config builders; everything on 127.0.0.1.
#![allow(dead_code)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use remora_api::config::SidecarConfig;
use remora_sidecar::{Options, Proxy, ProxyHandle};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// 127.0.0.1:`port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// A hyper server (HTTP/1.1 and h2c) that answers by path:
/// `/status/N`, `/slow/MS`, `/echo` (streams the body back), `/headers`
/// (request headers as `name: value` lines), `/ws` (upgrade, then echo),
/// gRPC (`application/grpc`: frames echoed, `grpc-status: 0` trailers),
/// anything else: its name. Counts the requests it gets.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub name: String,
}

impl Upstream {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

pub async fn upstream(name: &str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let (n, h) = (name.to_string(), hits.clone());
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let (n, h) = (n.clone(), h.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    h.fetch_add(1, Ordering::SeqCst);
                    answer(req, n.clone())
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        hits,
        name: name.to_string(),
    }
}

fn text(status: u16, body: impl Into<Bytes>, name: &str) -> Response<TestBody> {
    let mut r = Response::new(Full::new(body.into()).map_err(|e| match e {}).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert("x-upstream", name.parse().unwrap());
    r
}

async fn answer(
    mut req: Request<Incoming>,
    name: String,
) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_string();
    if req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    {
        if path.ends_with("/Fail") {
            let mut r = text(200, "", &name);
            r.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            r.headers_mut().insert("grpc-status", "14".parse().unwrap());
            return Ok(r);
        }
        let mut r = Response::new(
            GrpcEcho {
                inner: req.into_body(),
                done: false,
            }
            .boxed(),
        );
        r.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        r.headers_mut().insert("x-upstream", name.parse().unwrap());
        return Ok(r);
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return Ok(text(
            code.parse().unwrap_or(500),
            format!("{name} {code}"),
            &name,
        ));
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
        return Ok(text(200, name.clone(), &name));
    }
    match path.as_str() {
        // The authority the request arrived with (`:authority` or `Host`).
        "/authority" => {
            let a = req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .or_else(|| {
                    req.headers()
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_string)
                })
                .unwrap_or_default();
            Ok(text(200, format!("{a} {:?}", req.version()), &name))
        }
        "/echo" => {
            let mut r = Response::new(req.into_body().map_err(Into::into).boxed());
            r.headers_mut().insert("x-upstream", name.parse().unwrap());
            Ok(r)
        }
        "/headers" => {
            let mut s = String::new();
            for (k, v) in req.headers() {
                s.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            Ok(text(200, s, &name))
        }
        "/ws" => {
            let up = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(u) = up.await {
                    let mut io = TokioIo::new(u);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut r = text(101, "", &name);
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            r.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            Ok(r)
        }
        _ => Ok(text(200, name.clone(), &name)),
    }
}

/// Echoes request data frames and ends with `grpc-status: 0` trailers.
struct GrpcEcho {
    inner: Incoming,
    done: bool,
}

impl Body for GrpcEcho {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            return match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(f))) if f.is_data() => Poll::Ready(Some(Ok(f))),
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => {
                    self.done = true;
                    let mut t = HeaderMap::new();
                    t.insert("grpc-status", "0".parse().unwrap());
                    Poll::Ready(Some(Ok(Frame::trailers(t))))
                }
            };
        }
    }
}

/// A TCP echo server.
pub async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

pub fn h1_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// GET through the proxy with a Host header; returns status, headers, body.
pub async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    proxy: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, HeaderMap, String), String> {
    let mut b = Request::get(format!("http://{proxy}{path}")).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client
        .request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

/// A complete config from listeners, route tables and clusters.
pub fn config(listeners: Value, routes: Value, clusters: Value) -> Value {
    json!({
        "version": 1,
        "listeners": listeners,
        "admin": { "address": addr(free_port()), "controlAddress": addr(free_port()) },
        "routes": routes,
        "clusters": clusters,
        "accessLog": { "enabled": false },
    })
}

pub fn outbound(port: u16) -> Value {
    json!({ "name": "outbound", "direction": "outbound", "address": addr(port) })
}

pub fn static_cluster(name: &str, addrs: &[SocketAddr]) -> Value {
    let eps: Vec<Value> = addrs
        .iter()
        .map(|a| json!({ "address": a.to_string() }))
        .collect();
    json!({ "name": name, "endpoints": { "static": eps } })
}

pub fn parse(v: &Value) -> SidecarConfig {
    SidecarConfig::from_json(&serde_json::to_vec(v).unwrap()).unwrap_or_else(|e| panic!("{e}"))
}

pub async fn start(v: &Value) -> ProxyHandle {
    Proxy::start(parse(v), Options::default()).await.unwrap()
}

/// The value of one metric series from `/metrics` text (0 when absent).
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

pub async fn curl(args: &[&str]) -> (String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect("curl is installed");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A request body fed from a channel (streaming clients).
pub struct ChannelBody(
    pub tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>,
);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx)
    }
}

/// An HTTP/2 (prior knowledge) connection to `addr`; requests carry their
/// own `:authority`, independent of the address connected to.
pub async fn h2_connect(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// A server that answers every request with `status` (200 means a gRPC
/// `UNAVAILABLE`), counting requests.
pub async fn failing_upstream(status: u16) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    h.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let mut r = text(status, "failing", "failing");
                        if status == 200 {
                            // A gRPC server that is UNAVAILABLE (trailers-only).
                            r = text(200, "", "failing");
                            r.headers_mut()
                                .insert("content-type", "application/grpc".parse().unwrap());
                            r.headers_mut().insert("grpc-status", "14".parse().unwrap());
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        hits,
        name: "failing".into(),
    }
}

/// Accepts connections and never answers (counts connections).
pub async fn stalling_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            h.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    Upstream {
        addr,
        hits,
        name: "stalling".into(),
    }
}

/// A port nothing listens on.
pub fn dead_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// A route table for `domain` sending everything to `cluster`, with extra
/// route fields merged in.
pub fn one_route(domain: &str, cluster: &str, extra: Value) -> Value {
    let mut r =
        json!({ "name": "all", "action": { "clusters": [{ "cluster": cluster, "weight": 100 }] } });
    if let (Some(r), Some(extra)) = (r.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            r.insert(k.clone(), v.clone());
        }
    }
    json!({ "name": domain, "domains": [domain], "routes": [r] })
}

/// One gRPC message frame (uncompressed).
pub fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut v = vec![0u8];
    v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    v.extend_from_slice(msg);
    Bytes::from(v)
}

/// A call to the test upstream's `echo.Echo` service.
pub fn grpc_request(authority: &str, method: &str, body: TestBody) -> Request<TestBody> {
    Request::post(format!("http://{authority}/echo.Echo/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap()
}

/// A static cluster whose endpoints speak gRPC (h2c upstream).
pub fn grpc_cluster(name: &str, addrs: &[SocketAddr]) -> Value {
    let mut c = static_cluster(name, addrs);
    c["protocol"] = json!("grpc");
    c
}

/// A gRPC route table for `domain` sending calls to `service` to `cluster`,
/// with extra route fields merged in.
pub fn grpc_table(domain: &str, service: &str, cluster: &str, extra: Value) -> Value {
    let mut extra = extra;
    extra["match"] = json!({ "rpc": { "service": service } });
    let mut t = one_route(domain, cluster, extra);
    t["protocol"] = json!("grpc");
    t
}
