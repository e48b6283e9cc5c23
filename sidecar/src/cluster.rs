//! Runtime clusters: endpoints (static, DNS, original destination), the
//! balancer, the upstream connection pools and circuit-breaking limits.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, Uri, uri::Scheme};
use http_body_util::combinators::BoxBody;
use hyper::{body::Incoming, client::conn::http2};
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection, HttpConnector},
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use remora_api::config::{self, Endpoints, Protocol, UpstreamTlsMode};
use tokio::net::TcpStream;

use crate::{
    BoxError, Error,
    balance::{Balancer, Endpoint},
    metrics::{ClusterMetrics, GaugeGuard, Registry},
    tls::{Alpn, Io, TlsSlot},
};

pub type UpstreamBody = BoxBody<Bytes, BoxError>;
pub type UpstreamClient = Client<CountingConnector, UpstreamBody>;

/// Why an upstream request failed: before a connection was had (retriable as
/// `connect-failure`), or after (`reset`).
#[derive(Debug)]
pub enum SendError {
    Connect(BoxError),
    Request(BoxError),
}

/// HTTP/2 upstream connections: one per endpoint, multiplexed. Requests keep
/// the `:authority` the client used (hyper-util's pool keys connections by
/// the request URI, so through it `:authority` would be the endpoint address).
#[derive(Default)]
struct H2Pool {
    conns: Mutex<HashMap<SocketAddr, H2Slot>>,
}

/// An endpoint's connection, locked while it is being (re)opened.
type H2Slot = Arc<tokio::sync::Mutex<Option<http2::SendRequest<UpstreamBody>>>>;

/// Where a cluster's endpoints come from, at run time.
pub enum Targets {
    Balanced(Arc<Balancer>),
    /// The destination the client meant (transparent capture).
    OriginalDestination,
    /// 127.0.0.1 at the original destination port (inbound to the app).
    LocalApp,
}

/// The endpoint a request goes to.
#[derive(Clone)]
pub enum Target {
    Endpoint(Arc<Endpoint>),
    Addr(SocketAddr),
}

impl Target {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Target::Endpoint(e) => e.addr,
            Target::Addr(a) => *a,
        }
    }

    /// The address as a URI authority (cached for balanced endpoints).
    pub fn authority(&self) -> http::uri::Authority {
        match self {
            Target::Endpoint(e) => e.authority.clone(),
            Target::Addr(a) => crate::balance::authority_of(*a),
        }
    }
}

pub struct Cluster {
    pub name: String,
    /// The config this cluster was built from; an equal config on reload
    /// keeps this cluster (its pools, endpoint state and DNS task).
    pub config: config::Cluster,
    pub protocol: Protocol,
    pub targets: Targets,
    pub metrics: ClusterMetrics,
    h1: UpstreamClient,
    h1_connector: CountingConnector,
    h2_connector: CountingConnector,
    h2: H2Pool,
    pub connect_timeout: Duration,
    /// Circuit breaking: requests beyond this many in flight are refused.
    pub max_in_flight: u64,
    /// Mesh mTLS to this cluster's endpoints.
    tls: Option<UpstreamTls>,
    /// The retry safe requests get without a route policy: once, on a
    /// failed or reset connection.
    pub connect_retry: Arc<crate::snapshot::Retry>,
    pub plain_until_identity: bool,
    /// Built while the sidecar had no identity: its pools may hold
    /// plaintext connections, so it is rebuilt once the identity arrives.
    pub built_without_identity: bool,
}

/// How a cluster's connections are secured (modes `mesh` and `auto`).
#[derive(Clone)]
struct UpstreamTls {
    slot: TlsSlot,
    /// The SPIFFE ID endpoints must present, when the config pins one.
    expect: Option<Arc<str>>,
    /// Mode `auto`: only these destinations have sidecars.
    only: Option<Arc<HashSet<IpAddr>>>,
    /// For messages.
    cluster: Arc<str>,
    /// The mesh is `permissive`: until this sidecar has its identity, it
    /// calls in plaintext (which permissive servers accept) rather than fail.
    plain_until_identity: bool,
}

impl UpstreamTls {
    fn of(c: &config::Cluster, slot: &TlsSlot, plain_until_identity: bool) -> Option<Self> {
        let only = match c.tls.mode {
            UpstreamTlsMode::Disabled => return None,
            UpstreamTlsMode::Mesh => None,
            UpstreamTlsMode::Auto => Some(Arc::new(c.tls.mesh_addresses.iter().copied().collect())),
        };
        Some(Self {
            slot: slot.clone(),
            expect: c.tls.identity.as_deref().map(Arc::from),
            only,
            cluster: c.name.as_str().into(),
            plain_until_identity,
        })
    }

    /// Mesh TLS over `tcp`, or plaintext when `auto` and the peer has no
    /// sidecar.
    async fn secure(&self, tcp: TcpStream, alpn: Alpn) -> Result<Io, BoxError> {
        if let Some(only) = &self.only
            && !only.contains(&tcp.peer_addr()?.ip())
        {
            return Ok(Io::plain(tcp));
        }
        let Some(tls) = self.slot.load_full() else {
            if self.plain_until_identity {
                return Ok(Io::plain(tcp));
            }
            return Err(format!(
                "cluster {}: tls.mode needs the sidecar's workload certificate, but the config's tls section loads none",
                self.cluster
            )
            .into());
        };
        let (io, _peer) = tls.connect(tcp, alpn, self.expect.as_deref()).await?;
        Ok(io)
    }
}

impl Cluster {
    /// `plain_until_identity`: the mesh is permissive, so calls go out in
    /// plaintext while the sidecar has no workload certificate yet.
    pub fn new(
        c: &config::Cluster,
        reg: &Registry,
        tls: &TlsSlot,
        plain_until_identity: bool,
    ) -> Arc<Self> {
        let metrics = ClusterMetrics::new(reg, &c.name);
        let upstream_tls = UpstreamTls::of(c, tls, plain_until_identity);
        let targets = match &c.endpoints {
            Endpoints::Static(eps) => Targets::Balanced(Arc::new(Balancer::new(
                c.load_balancer.policy,
                eps.iter().map(|e| (e.address, e.weight)).collect(),
                c.outlier_detection.clone(),
                metrics.request_failure_eject.clone(),
            ))),
            Endpoints::Dns(_) => Targets::Balanced(Arc::new(Balancer::new(
                c.load_balancer.policy,
                Vec::new(),
                c.outlier_detection.clone(),
                metrics.request_failure_eject.clone(),
            ))),
            Endpoints::OriginalDestination => Targets::OriginalDestination,
            Endpoints::LocalApp => Targets::LocalApp,
        };
        let connector = |h2: bool| {
            let mut http = HttpConnector::new();
            http.set_connect_timeout(Some(c.connect_timeout.as_std()));
            http.set_nodelay(true);
            CountingConnector {
                inner: http,
                shared: Arc::new(ConnectorShared {
                    metrics: metrics.clone(),
                    tls: upstream_tls
                        .clone()
                        .map(|t| (t, if h2 { Alpn::Http2 } else { Alpn::Http1 })),
                }),
            }
        };
        let built_without_identity = upstream_tls.is_some() && tls.load().is_none();
        let h1 = h1_client(c.idle_timeout.as_std(), connector(false));
        let cluster = Arc::new(Self {
            name: c.name.clone(),
            config: c.clone(),
            protocol: c.protocol,
            targets,
            h1,
            h1_connector: connector(false),
            h2_connector: connector(true),
            h2: H2Pool::default(),
            connect_timeout: c.connect_timeout.as_std(),
            max_in_flight: u64::from(c.limits.max_connections)
                + u64::from(c.limits.max_pending_requests),
            metrics,
            tls: upstream_tls,
            connect_retry: Arc::new(crate::snapshot::Retry::on_connection_failure()),
            plain_until_identity,
            built_without_identity,
        });
        if let Endpoints::Dns(dns) = &c.endpoints {
            tokio::spawn(refresh_dns(
                Arc::downgrade(&cluster),
                dns.name.clone(),
                dns.port,
                dns.refresh.as_std(),
            ));
        }
        cluster
    }

    /// Resolves DNS endpoints once now, so a new config serves at once.
    pub async fn resolve_now(&self) {
        if let (Endpoints::Dns(dns), Targets::Balanced(b)) = (&self.config.endpoints, &self.targets)
        {
            match resolve(&dns.name, dns.port).await {
                Ok(addrs) => b.update(addrs),
                Err(e) => {
                    tracing::warn!(cluster = %self.name, name = %dns.name, "DNS lookup failed: {e}")
                }
            }
        }
    }

    /// Chooses where this request goes. `original` is the destination the
    /// client meant (for transparent and inbound listeners).
    pub fn pick(&self, hash: Option<u64>, original: SocketAddr) -> Option<Target> {
        match &self.targets {
            Targets::Balanced(b) => b.pick(hash).map(Target::Endpoint),
            Targets::OriginalDestination => Some(Target::Addr(original)),
            Targets::LocalApp => Some(Target::Addr(SocketAddr::from((
                [127, 0, 0, 1],
                original.port(),
            )))),
        }
    }

    /// An HTTP/1.1 client with a pool of its own, for one downstream
    /// connection's requests to its original destination. Sharing the
    /// cluster's pool there would pin every caller of a ClusterIP to the one
    /// pod kube-proxy chose for the first pooled connection; a connection of
    /// our own per downstream connection keeps Kubernetes' own balancing
    /// (kube-proxy picks per connection), as if the sidecar were not there.
    pub fn connection_client(&self) -> UpstreamClient {
        h1_client(self.config.idle_timeout.as_std(), self.h1_connector.clone())
    }

    /// Whether requests go where the client meant (transparent capture).
    pub fn is_original_destination(&self) -> bool {
        matches!(self.targets, Targets::OriginalDestination)
    }

    pub fn balancer(&self) -> Option<&Balancer> {
        match &self.targets {
            Targets::Balanced(b) => Some(b),
            _ => None,
        }
    }

    /// Sends a request to the endpoint `addr`. HTTP/1.1 requests go through
    /// the keep-alive pool with the endpoint in their URI (their `Host`
    /// header names the service); HTTP/2 requests keep their own authority.
    /// `own` is a client of the downstream connection's own
    /// ([`Cluster::connection_client`]) to use instead of the shared pool.
    pub async fn send(
        &self,
        h2: bool,
        addr: SocketAddr,
        req: Request<UpstreamBody>,
        own: Option<&UpstreamClient>,
    ) -> Result<Response<Incoming>, SendError> {
        if !h2 {
            return own.unwrap_or(&self.h1).request(req).await.map_err(|e| {
                if e.is_connect() {
                    SendError::Connect(e.into())
                } else {
                    SendError::Request(e.into())
                }
            });
        }
        let mut sender = self.h2_sender(addr).await.map_err(SendError::Connect)?;
        sender
            .ready()
            .await
            .map_err(|e| SendError::Request(e.into()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| SendError::Request(e.into()))
    }

    /// The endpoint's HTTP/2 connection, opened (once, however many requests
    /// wait for it) when there is none or it closed.
    async fn h2_sender(
        &self,
        addr: SocketAddr,
    ) -> Result<http2::SendRequest<UpstreamBody>, BoxError> {
        let slot = self
            .h2
            .conns
            .lock()
            .expect("h2 pool")
            .entry(addr)
            .or_default()
            .clone();
        let mut current = slot.lock().await;
        if let Some(s) = current.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(crate::balance::authority_of(addr));
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        let io =
            tower_service::Service::call(&mut self.h2_connector.clone(), Uri::from_parts(uri)?)
                .await?;
        let mut b = http2::Builder::new(TokioExecutor::new());
        // Pings find a connection whose peer vanished without a reset (a
        // node gone): it closes, and the next request opens a new one.
        b.timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let (sender, conn) = tokio::time::timeout(self.connect_timeout, b.handshake(io))
            .await
            .map_err(|_| "HTTP/2 handshake timed out")??;
        let cluster = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%cluster, %addr, "upstream HTTP/2 connection: {e}");
            }
        });
        *current = Some(sender.clone());
        Ok(sender)
    }

    /// Speaks HTTP/2 upstream when the cluster says so, for gRPC, and for
    /// pass-through clusters when the client spoke HTTP/2.
    pub fn wants_h2(&self, downstream_h2: bool, grpc: bool) -> bool {
        matches!(self.protocol, Protocol::Http2 | Protocol::Grpc)
            || grpc
            || (downstream_h2 && !matches!(self.targets, Targets::Balanced(_)))
    }

    /// A connection for opaque pass-through (mesh TLS when the cluster uses
    /// it), counted like pooled ones.
    pub async fn connect_tcp(&self, addr: SocketAddr) -> Result<(Io, GaugeGuard), Error> {
        let connect = async {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => Ok(Io::plain(tcp)),
                Some(t) => t.secure(tcp, Alpn::Opaque).await,
            }
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(io)) => {
                self.metrics.connection_total.inc();
                Ok((io, self.metrics.connection_active.track()))
            }
            Ok(Err(e)) => {
                self.metrics.connect_fail.inc();
                Err(Error::Connect(format!("{addr}: {e}")))
            }
            Err(_) => {
                self.metrics.connect_fail.inc();
                Err(Error::Connect(format!("{addr}: connect timeout")))
            }
        }
    }
}

async fn resolve(name: &str, port: u16) -> std::io::Result<Vec<(SocketAddr, u32)>> {
    let mut addrs: Vec<_> = tokio::net::lookup_host((name, port))
        .await?
        .map(|a| (a, 1))
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// Re-resolves a DNS cluster every `refresh` while the cluster is in use;
/// a headless Service name yields every pod IP.
async fn refresh_dns(cluster: Weak<Cluster>, name: String, port: u16, refresh: Duration) {
    loop {
        tokio::time::sleep(refresh).await;
        let Some(c) = cluster.upgrade() else { return };
        let Targets::Balanced(b) = &c.targets else {
            return;
        };
        let b = b.clone();
        drop(c);
        match resolve(&name, port).await {
            Ok(addrs) if !addrs.is_empty() => b.update(addrs),
            Ok(_) => tracing::warn!(%name, "DNS returned no addresses; keeping the last ones"),
            Err(e) => tracing::warn!(%name, "DNS lookup failed, keeping the last addresses: {e}"),
        }
    }
}

/// `HttpConnector` that counts upstream connections (open and opened) and
/// secures them with mesh TLS when the cluster uses it.
///
/// hyper-util clones the connector for every request (a connect races each
/// pool checkout), so everything but the `HttpConnector` sits behind one `Arc`.
fn h1_client(idle_timeout: Duration, connector: CountingConnector) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

#[derive(Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
    shared: Arc<ConnectorShared>,
}

struct ConnectorShared {
    metrics: ClusterMetrics,
    tls: Option<(UpstreamTls, Alpn)>,
}

impl tower_service::Service<Uri> for CountingConnector {
    type Response = Counted;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Counted, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let fut = self.inner.call(uri);
        let shared = self.shared.clone();
        Box::pin(async move {
            let m = &shared.metrics;
            let connected = async {
                let tcp = fut.await?.into_inner();
                match &shared.tls {
                    None => Ok::<_, BoxError>((Io::plain(tcp), false)),
                    Some((t, alpn)) => {
                        let io = t.secure(tcp, *alpn).await?;
                        let h2 = io.is_tls() && *alpn == Alpn::Http2;
                        Ok((io, h2))
                    }
                }
            };
            match connected.await {
                Ok((io, h2)) => {
                    m.connection_total.inc();
                    Ok(Counted {
                        io: TokioIo::new(io),
                        h2,
                        _active: m.connection_active.track(),
                    })
                }
                Err(e) => {
                    m.connect_fail.inc();
                    Err(e)
                }
            }
        })
    }
}

pub struct Counted {
    io: TokioIo<Io>,
    /// ALPN chose HTTP/2.
    h2: bool,
    _active: GaugeGuard,
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.h2 { c.negotiated_h2() } else { c }
    }
}

impl hyper::rt::Read for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
