//! gRPC through the sidecar with a real implementation: a tonic client calls
//! a tonic server via the outbound listener, `:authority` `echo.ns:50051`.
//!
//! The service glue is what tonic's codegen emits for the proto below,
//! written by hand so the tests need neither protoc nor a build script:
//!
//! ```proto
//! service Echo {
//!   rpc Unary(EchoRequest) returns (EchoReply);
//!   rpc Chat(stream EchoRequest) returns (stream EchoReply);
//!   rpc Many(EchoRequest) returns (stream EchoReply);
//!   rpc Fail(EchoRequest) returns (EchoReply);
//!   rpc Slow(EchoRequest) returns (EchoReply);
//! }
//! ```

mod common;

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use common::*;
use http::uri::PathAndQuery;
use serde_json::json;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{
    Code, Request, Response, Status, Streaming,
    metadata::MetadataMap,
    server::NamedService,
    transport::{Channel, Endpoint, server::TcpIncoming},
};
use tonic_prost::ProstCodec;

const ECHO: &str = "echo.ns:50051";
/// Same service, behind a route with `timeout: 300ms`.
const DEADLINE: &str = "deadline.ns:50051";
/// Same service, routed to a cluster whose endpoint refuses connections.
const DEAD: &str = "dead.ns:50051";
/// How long `Slow` takes when nobody gives up.
const SLOW: Duration = Duration::from_secs(10);

// ---- Messages ----

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    /// `Many`: how many replies to stream.
    #[prost(uint32, tag = "2")]
    pub count: u32,
    /// `Many`: end the stream with `ABORTED` instead of `OK`.
    #[prost(bool, tag = "3")]
    pub abort: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint32, tag = "2")]
    pub seq: u32,
}

fn echo_request(message: impl Into<String>) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        ..Default::default()
    }
}

// ---- Server ----

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

/// What the tonic server saw, for the assertions.
#[derive(Default)]
struct Seen {
    /// HTTP requests that reached the server, any path.
    calls: AtomicUsize,
    /// The `grpc-timeout` header of the last `Slow` call.
    grpc_timeout: Mutex<Option<String>>,
    slow_finished: AtomicUsize,
    /// `Slow` handlers dropped before their answer (the call was cancelled).
    slow_abandoned: AtomicUsize,
}

impl Seen {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[derive(Clone, Default)]
struct EchoServer {
    seen: Arc<Seen>,
}

impl NamedService for EchoServer {
    const NAME: &'static str = "echo.Echo";
}

impl EchoServer {
    /// Echoes the message and the `x-tag` request metadata.
    async fn unary(self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let tag = req.metadata().get("x-tag").cloned();
        let mut resp = Response::new(EchoReply {
            message: req.into_inner().message,
            seq: 0,
        });
        if let Some(tag) = tag {
            resp.metadata_mut().insert("x-tag", tag);
        }
        resp.metadata_mut()
            .insert("x-served-by", "tonic".parse().unwrap());
        Ok(resp)
    }

    /// Replies to each message as soon as it arrives.
    async fn chat(
        self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for seq in 0.. {
                let reply = match inbound.message().await {
                    Ok(Some(m)) => Ok(EchoReply {
                        message: m.message,
                        seq,
                    }),
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// `count` copies of the message, then `OK` or (`abort`) `ABORTED` with
    /// `x-sent` metadata, both in the trailers.
    async fn many(self, req: Request<EchoRequest>) -> Result<Response<ReplyStream>, Status> {
        let EchoRequest {
            message,
            count,
            abort,
        } = req.into_inner();
        let replies = tokio_stream::iter(0..count).map(move |seq| {
            Ok(EchoReply {
                message: message.clone(),
                seq,
            })
        });
        let end = abort.then(|| {
            let mut md = MetadataMap::new();
            md.insert("x-sent", count.into());
            Err(Status::with_metadata(
                Code::Aborted,
                format!("stopped after {count}"),
                md,
            ))
        });
        Ok(Response::new(Box::pin(
            replies.chain(tokio_stream::iter(end)),
        )))
    }

    /// Always `NOT_FOUND`, with a message that needs percent-encoding.
    async fn fail(self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let mut md = MetadataMap::new();
        md.insert("x-reason", "missing".parse().unwrap());
        Err(Status::with_metadata(
            Code::NotFound,
            format!("no echo for “{}” (100% sure)", req.into_inner().message),
            md,
        ))
    }

    /// Answers after `SLOW`, recording its `grpc-timeout` and whether it was
    /// abandoned first.
    async fn slow(self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        *self.seen.grpc_timeout.lock().unwrap() = req
            .metadata()
            .get("grpc-timeout")
            .map(|v| v.to_str().unwrap().to_string());
        let mut guard = SlowCall {
            seen: self.seen.clone(),
            finished: false,
        };
        tokio::time::sleep(SLOW).await;
        guard.finished = true;
        Ok(Response::new(EchoReply {
            message: req.into_inner().message,
            seq: 0,
        }))
    }
}

/// Counts a `Slow` call as finished or abandoned when its handler ends.
struct SlowCall {
    seen: Arc<Seen>,
    finished: bool,
}

impl Drop for SlowCall {
    fn drop(&mut self) {
        let counter = if self.finished {
            &self.seen.slow_finished
        } else {
            &self.seen.slow_abandoned
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// Adapters from a handler to `tonic::server`'s per-shape service traits
/// (codegen emits one such struct per method).
struct Unary<F>(EchoServer, F);
struct ServerStreaming<F>(EchoServer, F);
struct BidiStreaming<F>(EchoServer, F);

impl<F, Fut> tonic::server::UnaryService<EchoRequest> for Unary<F>
where
    F: Fn(EchoServer, Request<EchoRequest>) -> Fut,
    Fut: Future<Output = Result<Response<EchoReply>, Status>> + Send + 'static,
{
    type Response = EchoReply;
    type Future = BoxFuture<Result<Response<EchoReply>, Status>>;
    fn call(&mut self, req: Request<EchoRequest>) -> Self::Future {
        Box::pin((self.1)(self.0.clone(), req))
    }
}

impl<F, Fut> tonic::server::ServerStreamingService<EchoRequest> for ServerStreaming<F>
where
    F: Fn(EchoServer, Request<EchoRequest>) -> Fut,
    Fut: Future<Output = Result<Response<ReplyStream>, Status>> + Send + 'static,
{
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Result<Response<ReplyStream>, Status>>;
    fn call(&mut self, req: Request<EchoRequest>) -> Self::Future {
        Box::pin((self.1)(self.0.clone(), req))
    }
}

impl<F, Fut> tonic::server::StreamingService<EchoRequest> for BidiStreaming<F>
where
    F: Fn(EchoServer, Request<Streaming<EchoRequest>>) -> Fut,
    Fut: Future<Output = Result<Response<ReplyStream>, Status>> + Send + 'static,
{
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Result<Response<ReplyStream>, Status>>;
    fn call(&mut self, req: Request<Streaming<EchoRequest>>) -> Self::Future {
        Box::pin((self.1)(self.0.clone(), req))
    }
}

impl<B> tower_service::Service<http::Request<B>> for EchoServer
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.seen.calls.fetch_add(1, Ordering::SeqCst);
        let me = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
            let path = req.uri().path().to_string();
            Ok(match path.as_str() {
                "/echo.Echo/Unary" => grpc.unary(Unary(me, EchoServer::unary), req).await,
                "/echo.Echo/Fail" => grpc.unary(Unary(me, EchoServer::fail), req).await,
                "/echo.Echo/Slow" => grpc.unary(Unary(me, EchoServer::slow), req).await,
                "/echo.Echo/Many" => {
                    let svc = ServerStreaming(me, EchoServer::many);
                    grpc.server_streaming(svc, req).await
                }
                "/echo.Echo/Chat" => {
                    let svc = BidiStreaming(me, EchoServer::chat);
                    grpc.streaming(svc, req).await
                }
                _ => Status::unimplemented(format!("no method {path}")).into_http(),
            })
        })
    }
}

/// A tonic server for `echo.Echo` on 127.0.0.1.
async fn echo_server() -> (SocketAddr, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = EchoServer::default();
    let seen = server.seen.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .serve_with_incoming(server, TcpIncoming::from(listener)),
    );
    (addr, seen)
}

// ---- Client ----

/// What codegen emits for the client: one method per RPC over
/// `tonic::client::Grpc`.
#[derive(Clone)]
struct EchoClient(tonic::client::Grpc<Channel>);

impl EchoClient {
    /// Connects to `proxy` (the sidecar's outbound listener) while every
    /// request carries `:authority` `authority`, as an app calling the
    /// service through its sidecar does.
    async fn connect(proxy: SocketAddr, authority: &str) -> Self {
        let channel = Endpoint::from_shared(format!("http://{proxy}"))
            .unwrap()
            .origin(format!("http://{authority}").parse().unwrap())
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("the sidecar accepts the connection");
        Self(tonic::client::Grpc::new(channel))
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.0
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))
    }

    /// A unary call to `path` (`/package.Service/Method`).
    async fn unary(
        &mut self,
        path: &'static str,
        req: Request<EchoRequest>,
    ) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static(path);
        self.0.unary(req, path, ProstCodec::default()).await
    }

    async fn chat(
        &mut self,
        req: Request<impl Stream<Item = EchoRequest> + Send + 'static>,
    ) -> Result<Response<Streaming<EchoReply>>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/echo.Echo/Chat");
        self.0.streaming(req, path, ProstCodec::default()).await
    }

    async fn many(
        &mut self,
        req: Request<EchoRequest>,
    ) -> Result<Response<Streaming<EchoReply>>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/echo.Echo/Many");
        self.0
            .server_streaming(req, path, ProstCodec::default())
            .await
    }
}

// ---- Setup ----

/// A tonic server behind a sidecar: `echo.ns:50051` and `deadline.ns:50051`
/// route `echo.Echo` to it, `dead.ns:50051` to a port nobody listens on.
struct Mesh {
    proxy: SocketAddr,
    seen: Arc<Seen>,
    _handle: remora_sidecar::ProxyHandle,
}

impl Mesh {
    async fn client(&self, authority: &str) -> EchoClient {
        EchoClient::connect(self.proxy, authority).await
    }
}

async fn mesh() -> Mesh {
    let (server, seen) = echo_server().await;
    let port = free_port();
    let svc = EchoServer::NAME;
    let cfg = config(
        json!([outbound(port)]),
        json!([
            grpc_table(ECHO, svc, "echo", json!({})),
            grpc_table(DEADLINE, svc, "echo", json!({ "timeout": "300ms" })),
            grpc_table(DEAD, svc, "dead", json!({})),
        ]),
        json!([
            grpc_cluster("echo", &[server]),
            grpc_cluster("dead", &[dead_addr()])
        ]),
    );
    Mesh {
        proxy: addr(port).parse().unwrap(),
        seen,
        _handle: start(&cfg).await,
    }
}

/// Bounds every await of the tests.
async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("finishes within 10 s")
}

fn md<'a>(md: &'a MetadataMap, key: &str) -> Option<&'a str> {
    md.get(key).map(|v| v.to_str().unwrap())
}

// ---- Tests ----

#[tokio::test]
async fn grpc_unary_echoes_message_and_metadata() {
    let m = mesh().await;
    let mut c = m.client(ECHO).await;

    let mut req = Request::new(echo_request("hello"));
    req.metadata_mut().insert("x-tag", "t-1".parse().unwrap());
    let resp = within(c.unary("/echo.Echo/Unary", req)).await.unwrap();
    assert_eq!(resp.get_ref().message, "hello");
    assert_eq!(
        md(resp.metadata(), "x-tag"),
        Some("t-1"),
        "request metadata"
    );
    assert_eq!(md(resp.metadata(), "x-served-by"), Some("tonic"));
    assert_eq!(md(resp.metadata(), "x-remora-flags"), None);
    assert_eq!(m.seen.calls(), 1);

    // Concurrent calls multiplexed on the one channel each get their own echo.
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let mut req = Request::new(echo_request(format!("call {i}")));
                req.metadata_mut().insert("x-tag", i.into());
                let resp = c.unary("/echo.Echo/Unary", req).await.unwrap();
                assert_eq!(resp.get_ref().message, format!("call {i}"));
                assert_eq!(md(resp.metadata(), "x-tag"), Some(i.to_string().as_str()));
            })
        })
        .collect();
    for call in calls {
        within(call).await.unwrap();
    }
    assert_eq!(m.seen.calls(), 21);
}

#[tokio::test]
async fn grpc_bidi_stream_interleaves_messages_and_replies() {
    let m = mesh().await;
    let mut c = m.client(ECHO).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let resp = within(c.chat(Request::new(ReceiverStream::new(rx))))
        .await
        .unwrap();
    let mut replies = resp.into_inner();
    // The next message is only sent once the reply to the previous one is
    // back: a proxy that buffered either direction would stall here.
    for i in 0..10 {
        tx.send(echo_request(format!("message {i}"))).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .unwrap_or_else(|_| panic!("reply {i} arrives while the request stream is open"))
            .unwrap()
            .expect("a reply, not the end of the stream");
        assert_eq!(reply.message, format!("message {i}"));
        assert_eq!(
            reply.seq,
            i,
            "the server had seen exactly {} messages",
            i + 1
        );
    }
    drop(tx);
    assert_eq!(within(replies.message()).await.unwrap(), None);
    let trailers = within(replies.trailers()).await.unwrap().unwrap();
    assert_eq!(md(&trailers, "grpc-status"), Some("0"));
    assert_eq!(m.seen.calls(), 1);
}

#[tokio::test]
async fn grpc_server_streaming_many_messages_then_trailer_status() {
    let m = mesh().await;
    let mut c = m.client(ECHO).await;

    // 2,000 × 1 KiB: well past the HTTP/2 flow-control windows on both hops.
    let payload = "x".repeat(1024);
    let req = EchoRequest {
        message: payload.clone(),
        count: 2000,
        abort: false,
    };
    let mut stream = within(c.many(Request::new(req)))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(reply) = within(stream.message()).await.unwrap() {
        assert_eq!(reply.seq, n, "in order");
        assert_eq!(reply.message, payload);
        n += 1;
        assert!(n <= 2000, "no more than asked for");
    }
    assert_eq!(n, 2000);
    let trailers = within(stream.trailers()).await.unwrap().unwrap();
    assert_eq!(md(&trailers, "grpc-status"), Some("0"));

    // A non-OK status after data travels in the trailers, with its metadata.
    let req = EchoRequest {
        message: "part".into(),
        count: 50,
        abort: true,
    };
    let mut stream = within(c.many(Request::new(req)))
        .await
        .unwrap()
        .into_inner();
    for seq in 0..50 {
        let reply = within(stream.message()).await.unwrap().unwrap();
        assert_eq!((reply.seq, reply.message.as_str()), (seq, "part"));
    }
    let status = within(stream.message()).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.message(), "stopped after 50");
    assert_eq!(md(status.metadata(), "x-sent"), Some("50"));
}

#[tokio::test]
async fn grpc_server_error_status_reaches_client_intact() {
    let m = mesh().await;
    let mut c = m.client(ECHO).await;
    let status = within(c.unary("/echo.Echo/Fail", Request::new(echo_request("x"))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // Percent-encoded on the wire by the server, decoded by the client.
    assert_eq!(status.message(), "no echo for “x” (100% sure)");
    assert_eq!(md(status.metadata(), "x-reason"), Some("missing"));
    assert_eq!(
        md(status.metadata(), "x-remora-flags"),
        None,
        "the server's status, not a local reply"
    );
    assert_eq!(m.seen.calls(), 1);
}

#[tokio::test]
async fn grpc_no_route_is_unimplemented_from_the_sidecar() {
    let m = mesh().await;

    // No table for the authority.
    let mut c = m.client("nobody.ns:1").await;
    let status = within(c.unary("/echo.Echo/Unary", Request::new(echo_request("x"))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(status.message(), "no route for nobody.ns:1");
    assert_eq!(md(status.metadata(), "x-remora-flags"), Some("NR"));

    // A table, but no route for the service.
    let mut c = m.client(ECHO).await;
    let status = within(c.unary("/other.Svc/Unary", Request::new(echo_request("x"))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(status.message(), format!("no route in {ECHO} matches"));
    assert_eq!(md(status.metadata(), "x-remora-flags"), Some("NR"));

    assert_eq!(m.seen.calls(), 0, "the server never saw these calls");
}

#[tokio::test]
async fn grpc_unreachable_upstream_is_unavailable_from_the_sidecar() {
    let m = mesh().await;
    let mut c = m.client(DEAD).await;
    let status = within(c.unary("/echo.Echo/Unary", Request::new(echo_request("x"))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().starts_with("upstream connect error"),
        "{status:?}"
    );
    assert_eq!(md(status.metadata(), "x-remora-flags"), Some("UF"));
    assert_eq!(m.seen.calls(), 0);
    // Only that cluster is down: a call to the live one works.
    let mut c = m.client(ECHO).await;
    within(c.unary("/echo.Echo/Unary", Request::new(echo_request("ok"))))
        .await
        .unwrap();
    assert_eq!(m.seen.calls(), 1);
}

/// The sidecar forwards `grpc-timeout` and also enforces it (see
/// `grpc_timeout_header_is_enforced_by_the_sidecar` in protocols.rs), but
/// tonic's client enforces it too, and its timer, started first, fires first:
/// tonic reports that as `CANCELLED` "Timeout expired" (its `TimeoutExpired`
/// error), not `DEADLINE_EXCEEDED`. Either way the slow handler is abandoned,
/// not finished.
#[tokio::test]
async fn grpc_timeout_header_deadline_cancels_the_call() {
    let m = mesh().await;
    let mut c = m.client(ECHO).await;
    let mut req = Request::new(echo_request("slow"));
    req.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = within(c.unary("/echo.Echo/Slow", req)).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert_eq!(status.message(), "Timeout expired");
    assert_eq!(
        md(status.metadata(), "x-remora-flags"),
        None,
        "no sidecar reply"
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "ends at the deadline, not when the server would answer: {took:?}"
    );
    assert_eq!(
        m.seen.grpc_timeout.lock().unwrap().as_deref(),
        Some("300000u"),
        "the deadline reached the server"
    );
    assert!(
        eventually(Duration::from_secs(3), async || {
            m.seen.slow_abandoned.load(Ordering::SeqCst) == 1
        })
        .await,
        "the server stops working on the call"
    );
    assert_eq!(m.seen.slow_finished.load(Ordering::SeqCst), 0);
}

/// The route's `timeout` is the sidecar's own deadline: a local reply with
/// `DEADLINE_EXCEEDED` and flag `UT`; the upstream call is abandoned.
#[tokio::test]
async fn grpc_route_timeout_is_deadline_exceeded_from_the_sidecar() {
    let m = mesh().await;
    let mut c = m.client(DEADLINE).await;
    let started = Instant::now();
    let status = within(c.unary("/echo.Echo/Slow", Request::new(echo_request("slow"))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "upstream request timeout");
    assert_eq!(md(status.metadata(), "x-remora-flags"), Some("UT"));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(m.seen.grpc_timeout.lock().unwrap().as_deref(), None);
    assert!(
        eventually(Duration::from_secs(3), async || {
            m.seen.slow_abandoned.load(Ordering::SeqCst) == 1
        })
        .await,
        "the sidecar resets the upstream stream"
    );
    assert_eq!(m.seen.slow_finished.load(Ordering::SeqCst), 0);
}

/// A client that gives up (no deadline sent) resets its stream; the sidecar
/// passes the reset on, so the server stops working on the call.
#[tokio::test]
async fn grpc_client_cancellation_reaches_the_server() {
    let m = mesh().await;
    let mut c = m.client(ECHO).await;
    let call = c.unary("/echo.Echo/Slow", Request::new(echo_request("slow")));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), call)
            .await
            .is_err(),
        "Slow does not answer within 300 ms"
    );
    assert!(
        eventually(Duration::from_secs(3), async || {
            m.seen.slow_abandoned.load(Ordering::SeqCst) == 1
        })
        .await,
        "the server's handler is dropped"
    );
    assert_eq!(m.seen.grpc_timeout.lock().unwrap().as_deref(), None);
    assert_eq!(m.seen.slow_finished.load(Ordering::SeqCst), 0);
}

/// The webhook rewrites a `grpc` probe to `GET <admin>/app-health/...`; the
/// proxy runs a real `grpc.health.v1.Health/Check` (with the probe's
/// `service`) against the app's tonic health server on 127.0.0.1, so the
/// app's gRPC port stays inside the capture: 200 when `SERVING`, else 503.
#[tokio::test]
async fn admin_runs_the_apps_grpc_health_probe() {
    use tonic_health::ServingStatus;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop.v1.Cart", ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("shop.v1.Stock", ServingStatus::NotServing)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .serve_with_incoming(health, TcpIncoming::from(listener)),
    );
    let http1 = upstream("not-grpc").await;
    let probes: remora_api::config::AppProbes = serde_json::from_value(json!({
        "/app-health/rpc/readyz": { "grpc": { "port": port } },
        "/app-health/rpc/livez": { "grpc": { "port": port, "service": "shop.v1.Cart" } },
        "/app-health/rpc/startupz": { "grpc": { "port": port, "service": "shop.v1.Stock" } },
        "/app-health/other/readyz": { "grpc": { "port": port, "service": "shop.v1.Nope" } },
        "/app-health/dead/readyz": { "grpc": { "port": dead_addr().port() } },
        "/app-health/h1/readyz": { "grpc": { "port": http1.addr.port() } }
    }))
    .unwrap();
    let opts = remora_sidecar::Options {
        app_probes: probes,
        ..Default::default()
    };
    let cfg = config(json!([]), json!([]), json!([]));
    let proxy = remora_sidecar::Proxy::start(parse(&cfg), opts)
        .await
        .unwrap();
    let admin = proxy.admin_addr();
    let probe = async |path: &str| {
        let (status, _, body) = get(&h1_client(), admin, "admin", path, &[]).await.unwrap();
        (status.as_u16(), body)
    };

    let (status, body) = probe("/app-health/rpc/readyz").await;
    assert_eq!(status, 200, "the server as a whole is SERVING: {body}");
    assert_eq!(probe("/app-health/rpc/livez").await.0, 200);
    let (status, body) = probe("/app-health/rpc/startupz").await;
    assert_eq!(status, 503);
    assert!(body.contains("NOT_SERVING"), "{body}");
    let (status, body) = probe("/app-health/other/readyz").await;
    assert_eq!(status, 503, "an unknown service: {body}");
    assert_eq!(probe("/app-health/dead/readyz").await.0, 503);
    assert_eq!(probe("/app-health/h1/readyz").await.0, 503, "not gRPC");
    // The answer follows the app, call by call.
    reporter
        .set_service_status("shop.v1.Stock", ServingStatus::Serving)
        .await;
    assert_eq!(probe("/app-health/rpc/startupz").await.0, 200);
}
