//! Mirroring (after routing, in MOSN's order): a share of a route's requests
//! is copied to another cluster, fire-and-forget. The copy's head is cloned;
//! its body is teed from the primary's as the primary sends it (up to
//! [`MAX_MIRROR_BODY`]), through a bounded channel the primary never waits
//! on. The copy's answer is read and dropped; nothing about it reaches the
//! caller, and a slow or dead mirror costs a counter, not latency.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Uri, header::HOST, uri::Scheme};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use crate::{
    BoxError,
    cluster::{Cluster, UpstreamBody},
    metrics::{Counter, Registry},
};

/// Request bodies up to this size are mirrored with the request; a larger
/// one ends the copy (counted as `too_large`).
pub const MAX_MIRROR_BODY: usize = 64 * 1024;
/// How long a copy may take before it is given up.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames the tee may run ahead of the mirror before the copy is dropped.
const TEE_FRAMES: usize = 32;
/// Copies in flight per route; more are dropped, so a stalled mirror holds
/// a bounded number of sockets and tasks.
pub const MAX_MIRRORS_IN_FLIGHT: usize = 100;

/// A route's mirror, compiled once with its metric handles.
pub struct MirrorPolicy {
    pub cluster: Arc<Cluster>,
    /// Share of requests copied, 0–100.
    pub percentage: f64,
    sent: Counter,
    failed: Counter,
    dropped: Counter,
    in_flight: AtomicUsize,
}

impl MirrorPolicy {
    pub fn new(cluster: Arc<Cluster>, percentage: f64, reg: &Registry, route: &str) -> Self {
        let help = "Mirrored request copies by outcome";
        let c = |result: &'static str| {
            reg.counter(
                "upstream_request_mirror_total",
                help,
                vec![
                    ("cluster", cluster.name.clone()),
                    ("route", route.to_owned()),
                    ("result", result.into()),
                ],
            )
        };
        Self {
            sent: c("sent"),
            failed: c("failed"),
            dropped: c("dropped"),
            cluster: cluster.clone(),
            percentage,
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Starts the copy of `req` and returns the tap its body must go
    /// through (none for a request without a body).
    pub fn start<B: Body>(self: &Arc<Self>, req: &Request<B>, h2: bool) -> Option<Tap> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_MIRRORS_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.dropped.inc();
            return None;
        }
        let mut head = Request::new(());
        *head.method_mut() = req.method().clone();
        *head.version_mut() = req.version();
        *head.headers_mut() = req.headers().clone();
        super::strip_hop_by_hop(head.headers_mut(), false);
        // Envoy's convention: the copy's authority says it is a shadow.
        let host = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        if let Some(h) = host
            && let Ok(v) = HeaderValue::from_str(&shadow_host(h))
        {
            head.headers_mut().insert(HOST, v);
        }
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let (tap, body) = if req.body().is_end_stream() {
            (
                None,
                http_body_util::Empty::new().map_err(|e| match e {}).boxed(),
            )
        } else {
            let (tx, rx) = mpsc::channel(TEE_FRAMES);
            let tap = Tap {
                tx: Some(tx),
                sent: 0,
                policy: self.clone(),
            };
            (Some(tap), Mirrored(rx).boxed())
        };
        let (parts, ()) = head.into_parts();
        let copy = Request::from_parts(parts, body);
        let policy = self.clone();
        tokio::spawn(async move {
            policy.send(copy, path, h2).await;
            policy.in_flight.fetch_sub(1, Ordering::AcqRel);
        });
        tap
    }

    async fn send(&self, mut req: Request<UpstreamBody>, path: String, h2: bool) {
        let Some(target) = self
            .cluster
            .pick(None, std::net::SocketAddr::from(([0; 4], 0)))
        else {
            self.failed.inc();
            return;
        };
        let addr = target.addr();
        let authority = if h2 {
            req.headers_mut()
                .remove(HOST)
                .and_then(|h| h.to_str().ok().and_then(|s| s.parse().ok()))
        } else {
            None
        };
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(authority.unwrap_or_else(|| target.authority()));
        uri.path_and_query = path.parse().ok();
        let Ok(uri) = Uri::from_parts(uri) else {
            self.failed.inc();
            return;
        };
        *req.uri_mut() = uri;
        *req.version_mut() = if h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        let exchange = async {
            let resp = self.cluster.send(h2, addr, req, None).await.ok()?;
            // Read the answer so the connection can be reused, then drop it.
            resp.into_body().collect().await.ok()
        };
        match tokio::time::timeout(MIRROR_TIMEOUT, exchange).await {
            Ok(Some(_)) => self.sent.inc(),
            _ => self.failed.inc(),
        }
    }
}

fn shadow_host(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => format!("{h}-shadow:{port}"),
        _ => format!("{host}-shadow"),
    }
}

/// Where the primary request's body frames are copied to the mirror.
pub struct Tap {
    tx: Option<mpsc::Sender<Result<Frame<Bytes>, BoxError>>>,
    sent: usize,
    policy: Arc<MirrorPolicy>,
}

impl Tap {
    fn copy(&mut self, frame: &Frame<Bytes>) {
        let Some(tx) = &self.tx else { return };
        let copy = match frame.data_ref() {
            Some(d) => {
                self.sent += d.len();
                if self.sent > MAX_MIRROR_BODY {
                    self.give_up("the request body is larger than the mirror's bound");
                    return;
                }
                Frame::data(d.clone())
            }
            None => match frame.trailers_ref() {
                Some(t) => Frame::trailers(t.clone()),
                None => return,
            },
        };
        if tx.try_send(Ok(copy)).is_err() {
            // The mirror fell behind (or is gone): it never slows the primary.
            self.give_up("the mirror fell behind");
        }
    }

    fn give_up(&mut self, why: &str) {
        if let Some(tx) = self.tx.take() {
            self.policy.dropped.inc();
            let _ = tx.try_send(Err(why.into()));
        }
    }

    /// Wraps the primary's body so every frame is also sent to the mirror.
    pub fn tee(self, inner: UpstreamBody) -> UpstreamBody {
        Tee { inner, tap: self }.boxed()
    }
}

struct Tee {
    inner: UpstreamBody,
    tap: Tap,
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => this.tap.copy(frame),
            Poll::Ready(Some(Err(_))) => this.tap.give_up("the request body failed"),
            // The end: dropping the sender ends the copy's body.
            Poll::Ready(None) => this.tap.tx = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The copy's body: the frames the tee sends.
struct Mirrored(mpsc::Receiver<Result<Frame<Bytes>, BoxError>>);

impl Body for Mirrored {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_hosts_keep_their_port() {
        assert_eq!(shadow_host("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_host("reviews"), "reviews-shadow");
        assert_eq!(shadow_host("[fd00::1]:80"), "[fd00::1]-shadow:80");
    }
}
