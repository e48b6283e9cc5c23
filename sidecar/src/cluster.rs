//! Runtime clusters: endpoints (static, DNS, original destination), the
//! balancer, the upstream connection pools and circuit-breaking limits.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Weak},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::Uri;
use http_body_util::combinators::BoxBody;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection, HttpConnector},
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use remora_api::config::{self, Endpoints, Protocol};
use tokio::net::TcpStream;

use crate::{
    BoxError, Error,
    balance::{Balancer, Endpoint},
    metrics::{ClusterMetrics, GaugeGuard, Registry},
};

pub type UpstreamBody = BoxBody<Bytes, BoxError>;
pub type UpstreamClient = Client<CountingConnector, UpstreamBody>;

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
    h2: UpstreamClient,
    pub connect_timeout: Duration,
    /// Circuit breaking: requests beyond this many in flight are refused.
    pub max_in_flight: u64,
}

impl Cluster {
    pub fn new(c: &config::Cluster, reg: &Registry) -> Arc<Self> {
        let metrics = ClusterMetrics::new(reg, &c.name);
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
        let client = |h2: bool| {
            let mut http = HttpConnector::new();
            http.set_connect_timeout(Some(c.connect_timeout.as_std()));
            http.set_nodelay(true);
            let connector = CountingConnector {
                inner: http,
                metrics: metrics.clone(),
            };
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(c.idle_timeout.as_std())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .http2_only(h2)
                .build(connector)
        };
        let cluster = Arc::new(Self {
            name: c.name.clone(),
            config: c.clone(),
            protocol: c.protocol,
            targets,
            h1: client(false),
            h2: client(true),
            connect_timeout: c.connect_timeout.as_std(),
            max_in_flight: u64::from(c.limits.max_connections)
                + u64::from(c.limits.max_pending_requests),
            metrics,
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

    pub fn balancer(&self) -> Option<&Balancer> {
        match &self.targets {
            Targets::Balanced(b) => Some(b),
            _ => None,
        }
    }

    pub fn client(&self, h2: bool) -> &UpstreamClient {
        if h2 { &self.h2 } else { &self.h1 }
    }

    /// Speaks HTTP/2 upstream when the cluster says so, for gRPC, and for
    /// pass-through clusters when the client spoke HTTP/2.
    pub fn wants_h2(&self, downstream_h2: bool, grpc: bool) -> bool {
        matches!(self.protocol, Protocol::Http2 | Protocol::Grpc)
            || grpc
            || (downstream_h2 && !matches!(self.targets, Targets::Balanced(_)))
    }

    /// A TCP connection for opaque pass-through, counted like pooled ones.
    pub async fn connect_tcp(&self, addr: SocketAddr) -> Result<(TcpStream, GaugeGuard), Error> {
        match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                self.metrics.connection_total.inc();
                Ok((s, self.metrics.connection_active.track()))
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

/// `HttpConnector` that counts upstream connections (open and opened).
#[derive(Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
    metrics: ClusterMetrics,
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
        let m = self.metrics.clone();
        Box::pin(async move {
            match fut.await {
                Ok(io) => {
                    m.connection_total.inc();
                    Ok(Counted {
                        io,
                        _active: m.connection_active.track(),
                    })
                }
                Err(e) => {
                    m.connect_fail.inc();
                    Err(e.into())
                }
            }
        })
    }
}

pub struct Counted {
    io: TokioIo<TcpStream>,
    _active: GaugeGuard,
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        self.io.connected()
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
