//! Runtime clusters: endpoints (static, DNS, original destination), the
//! balancer, the upstream connections ([`crate::pool`]) and their
//! circuit-breaking limits ([`crate::breaker`]).

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Weak},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri, header::CONNECTION, uri::PathAndQuery};
use http_body_util::combinators::BoxBody;
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use remora_api::config::{self, Endpoints, Protocol, UpstreamTlsMode};
use tokio::net::TcpStream;

use crate::{
    BoxError, Error,
    balance::{Balancer, Endpoint},
    breaker::{Breaker, ConnectionSlot, Limit},
    metrics::{ClusterMetrics, Registry},
    pool::{H1Pool, H2Conn, H2Pool, Pending},
    tls::{Alpn, Io, TlsSlot},
};

pub type UpstreamBody = BoxBody<Bytes, BoxError>;

/// Why an upstream request failed: before a connection was had (retriable as
/// `connect-failure`), or after (`reset`), or refused by a circuit-breaking
/// limit (never retried).
#[derive(Debug)]
pub enum SendError {
    Connect(BoxError),
    Request(BoxError),
    Overflow(Limit),
}

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
    /// Circuit breaking: every connection and request of the cluster.
    pub breaker: Arc<Breaker>,
    h1: Arc<H1Pool>,
    h2: H2Pool,
    pub connect_timeout: Duration,
    idle_timeout: Duration,
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
        let built_without_identity = upstream_tls.is_some() && tls.load().is_none();
        let breaker = Breaker::new(&c.limits, reg, &c.name, metrics.connection_active.clone());
        let cluster = Arc::new(Self {
            name: c.name.clone(),
            config: c.clone(),
            protocol: c.protocol,
            targets,
            breaker: Arc::new(breaker),
            h1: Arc::default(),
            h2: H2Pool::default(),
            connect_timeout: c.connect_timeout.as_std(),
            idle_timeout: c.idle_timeout.as_std(),
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

    /// Whether requests go where the client meant (transparent capture).
    /// HTTP/1.1 there travels over a pool of the downstream connection's own
    /// (`Downstream::original_h1`): the original destination is usually a
    /// ClusterIP, where kube-proxy picks a pod per connection, and a pool
    /// shared by all callers would pin every caller to the pod chosen for the
    /// first pooled connection. One upstream connection per downstream
    /// connection keeps the balancing the client would get without us.
    pub fn is_original_destination(&self) -> bool {
        matches!(self.targets, Targets::OriginalDestination)
    }

    pub fn balancer(&self) -> Option<&Balancer> {
        match &self.targets {
            Targets::Balanced(b) => Some(b),
            _ => None,
        }
    }

    /// Sends a request to the endpoint `addr` on a pooled connection, under
    /// the connection limits. HTTP/1.1 requests keep the client's `Host`;
    /// HTTP/2 requests keep their own authority. `own` is a pool of the
    /// downstream connection's own for HTTP/1.1 (see
    /// [`Cluster::is_original_destination`]); the cluster's limits hold for
    /// it all the same.
    pub async fn send(
        &self,
        h2: bool,
        addr: SocketAddr,
        req: Request<UpstreamBody>,
        own: Option<&Arc<H1Pool>>,
    ) -> Result<Response<Incoming>, SendError> {
        if !h2 {
            return self.send_h1(own.unwrap_or(&self.h1), addr, req).await;
        }
        let mut sender = self.h2_stream(addr).await?;
        sender
            .ready()
            .await
            .map_err(|e| SendError::Request(e.into()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| SendError::Request(e.into()))
    }

    /// One request on an idle pooled connection, a new one, or — at
    /// `maxConnections` — the first to free up. The connection goes back
    /// to the pool when the response body is done, unless it has carried
    /// `maxRequestsPerConnection` (that request says `Connection: close`).
    async fn send_h1(
        &self,
        pool: &Arc<H1Pool>,
        addr: SocketAddr,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, SendError> {
        // On its own connection a request names only the path.
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
        let max = self.breaker.limits.max_requests_per_connection;
        let mut pending = Pending::new(&self.breaker);
        loop {
            let (mut sender, uses, pooled) = if let Some(c) = pool.take(addr, self.idle_timeout) {
                (c.sender, c.uses, true)
            } else if let Some(slot) = self.breaker.connection() {
                let sender = self
                    .h1_connect(addr, slot)
                    .await
                    .map_err(SendError::Connect)?;
                (sender, 0, false)
            } else {
                pending.wait(&self.h1).await.map_err(SendError::Overflow)?;
                continue;
            };
            let uses = uses + 1;
            let last = max != 0 && uses >= max;
            if last {
                req.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            } else {
                req.headers_mut().remove(CONNECTION);
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    if !last {
                        let (pool, breaker) = (pool.clone(), self.breaker.clone());
                        let idle = self.idle_timeout;
                        tokio::spawn(async move {
                            // Ready again once the response body is read.
                            if sender.ready().await.is_ok() {
                                pool.put(addr, sender, uses, idle);
                                breaker.wake_pending();
                            }
                        });
                    }
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // A pooled connection closed under us before the
                    // request went out: another connection takes it.
                    Some(r) if pooled => req = r,
                    Some(_) => return Err(SendError::Connect(e.into_error().into())),
                    None => return Err(SendError::Request(e.into_error().into())),
                },
            }
        }
    }

    async fn h1_connect(
        &self,
        addr: SocketAddr,
        slot: ConnectionSlot,
    ) -> Result<http1::SendRequest<UpstreamBody>, BoxError> {
        let io = self.connect(addr, Alpn::Http1, slot).await?;
        let (sender, conn) = http1::Builder::new().handshake(Counted::new(io)).await?;
        let cluster = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%cluster, %addr, "upstream HTTP/1.1 connection: {e}");
            }
        });
        Ok(sender)
    }

    /// A stream on the endpoint's HTTP/2 connection, opened (once, however
    /// many requests wait for it) when there is none, it closed, or it has
    /// carried `maxRequestsPerConnection` streams.
    async fn h2_stream(
        &self,
        addr: SocketAddr,
    ) -> Result<http2::SendRequest<UpstreamBody>, SendError> {
        let slot = self.h2.slot(addr);
        let max = self.breaker.limits.max_requests_per_connection;
        let mut pending = Pending::new(&self.breaker);
        loop {
            {
                let mut current = slot.lock().await;
                if let Some(s) = current.as_mut().and_then(|c| c.stream(max)) {
                    return Ok(s);
                }
                // Closed or retired: without our handle it closes once its
                // streams are done.
                *current = None;
                if let Some(conn) = self.breaker.connection() {
                    let sender = self
                        .h2_connect(addr, conn)
                        .await
                        .map_err(SendError::Connect)?;
                    let mut c = H2Conn { sender, streams: 0 };
                    let s = c.stream(max).expect("a new connection takes a stream");
                    *current = Some(c);
                    return Ok(s);
                }
            }
            pending.wait(&self.h1).await.map_err(SendError::Overflow)?;
        }
    }

    async fn h2_connect(
        &self,
        addr: SocketAddr,
        slot: ConnectionSlot,
    ) -> Result<http2::SendRequest<UpstreamBody>, BoxError> {
        let io = self.connect(addr, Alpn::Http2, slot).await?;
        let mut b = http2::Builder::new(TokioExecutor::new());
        // Pings find a connection whose peer vanished without a reset (a
        // node gone): it closes, and the next request opens a new one.
        b.timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let (sender, conn) =
            tokio::time::timeout(self.connect_timeout, b.handshake(Counted::new(io)))
                .await
                .map_err(|_| "HTTP/2 handshake timed out")??;
        let cluster = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%cluster, %addr, "upstream HTTP/2 connection: {e}");
            }
        });
        Ok(sender)
    }

    /// A new socket to `addr` holding `slot` (mesh TLS when the cluster
    /// uses it), within the connect timeout, counted.
    async fn connect(
        &self,
        addr: SocketAddr,
        alpn: Alpn,
        slot: ConnectionSlot,
    ) -> Result<(Io, ConnectionSlot), BoxError> {
        let connect = async {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => Ok::<_, BoxError>(Io::plain(tcp)),
                Some(t) => t.secure(tcp, alpn).await,
            }
        };
        let result = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(format!("{addr}: connect timeout").into()),
        };
        match result {
            Ok(io) => {
                self.metrics.connection_total.inc();
                Ok((io, slot))
            }
            Err(e) => {
                self.metrics.connect_fail.inc();
                Err(e)
            }
        }
    }

    /// Speaks HTTP/2 upstream when the cluster says so, for gRPC, and for
    /// pass-through clusters when the client spoke HTTP/2.
    pub fn wants_h2(&self, downstream_h2: bool, grpc: bool) -> bool {
        matches!(self.protocol, Protocol::Http2 | Protocol::Grpc)
            || grpc
            || (downstream_h2 && !matches!(self.targets, Targets::Balanced(_)))
    }

    /// A connection for opaque pass-through (mesh TLS when the cluster uses
    /// it), counted like pooled ones and refused at `maxConnections`.
    pub async fn connect_tcp(&self, addr: SocketAddr) -> Result<(Io, ConnectionSlot), Error> {
        let Some(slot) = self.breaker.connection() else {
            self.breaker.overflowed(Limit::Connections);
            return Err(Error::Overflow {
                cluster: self.name.clone(),
                limit: Limit::Connections,
            });
        };
        self.connect(addr, Alpn::Opaque, slot)
            .await
            .map_err(|e| Error::Connect(format!("{addr}: {e}")))
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

/// An upstream socket for hyper, holding its circuit-breaker slot until it
/// is dropped (also when an upgrade carries it off).
pub struct Counted {
    io: TokioIo<Io>,
    _slot: ConnectionSlot,
}

impl Counted {
    fn new((io, slot): (Io, ConnectionSlot)) -> Self {
        Self {
            io: TokioIo::new(io),
            _slot: slot,
        }
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
