//! The demo's gRPC service, `remora.demo.Greeter`, with tonic on both sides.
//!
//! The glue is what tonic's codegen emits for the proto below, written by
//! hand so the build needs neither protoc nor a build script:
//!
//! ```proto
//! package remora.demo;
//! service Greeter { rpc SayHello(HelloRequest) returns (HelloReply); }
//! message HelloRequest { string name = 1; }
//! message HelloReply { string message = 1; string caller = 2; }
//! ```
//!
//! `caller` is the `x-forwarded-client-cert` the server received: the
//! identity its sidecar verified, as the app sees it.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::uri::PathAndQuery;
use tonic::{
    Request, Response, Status,
    server::NamedService,
    transport::{Channel, Endpoint, server::TcpIncoming},
};
use tonic_prost::ProstCodec;

pub const SERVICE: &str = "remora.demo.Greeter";
const SAY_HELLO: &str = "/remora.demo.Greeter/SayHello";

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    #[prost(string, tag = "1")]
    pub message: String,
    /// The `x-forwarded-client-cert` the server saw (empty without one).
    #[prost(string, tag = "2")]
    pub caller: String,
}

#[derive(Clone, Default)]
struct Greeter;

impl NamedService for Greeter {
    const NAME: &'static str = SERVICE;
}

async fn say_hello(req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
    let caller = req
        .metadata()
        .get("x-forwarded-client-cert")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let name = req.into_inner().name;
    Ok(Response::new(HelloReply {
        message: format!("hello, {name}"),
        caller,
    }))
}

struct SayHello;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tonic::server::UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = BoxFuture<Result<Response<HelloReply>, Status>>;
    fn call(&mut self, req: Request<HelloRequest>) -> Self::Future {
        Box::pin(say_hello(req))
    }
}

impl<B> tower_service::Service<http::Request<B>> for Greeter
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
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
            Ok(match req.uri().path() {
                SAY_HELLO => grpc.unary(SayHello, req).await,
                other => Status::unimplemented(format!("no method {other}")).into_http(),
            })
        })
    }
}

/// Serves the greeter on `listener` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .serve_with_incoming(Greeter, TcpIncoming::from(listener))
        .await
}

/// A greeter client as an app in the mesh has it: connected to its own
/// sidecar's outbound listener, every call carrying `:authority`
/// `authority` (`greeter:50051`).
#[derive(Clone)]
pub struct GreeterClient(tonic::client::Grpc<Channel>);

impl GreeterClient {
    /// A lazy channel: it connects on the first call, and again after a failure.
    pub fn new(sidecar: SocketAddr, authority: &str) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(format!("http://{sidecar}"))?
            .origin(format!("http://{authority}").parse()?)
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        Ok(Self(tonic::client::Grpc::new(channel)))
    }

    pub async fn say_hello(&mut self, name: &str) -> Result<HelloReply, Status> {
        self.0
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
        let req = Request::new(HelloRequest { name: name.into() });
        let path = PathAndQuery::from_static(SAY_HELLO);
        Ok(self
            .0
            .unary(req, path, ProstCodec::default())
            .await?
            .into_inner())
    }
}
