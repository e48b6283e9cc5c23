//! The codec seam: a protocol is something that can recognise its first
//! bytes and serve a connection. Listeners, clusters, pools, balancing and
//! metrics know nothing of the protocol; SOFA Bolt or Dubbo slot in here as
//! further `Codec`s (decode/encode frames, request ids, heartbeats).

use std::{future::Future, pin::Pin, sync::Arc};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;

use crate::{http::Downstream, tls::Io};

pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    Match,
    NoMatch,
    /// The prefix is too short to say.
    NeedMore,
}

pub trait Codec: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Looks at the first bytes the client sent (never consumed).
    fn detect(&self, prefix: &[u8]) -> Detection;
    /// Serves the connection until it closes or drains.
    fn serve(&self, io: Io, conn: Arc<Downstream>, drain: watch::Receiver<bool>) -> BoxFuture;
}

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub struct Http2;
pub struct Http1;
/// Opaque bytes to the chosen endpoint; also what TLS we do not terminate gets.
pub struct Tcp;

impl Codec for Http2 {
    fn name(&self) -> &'static str {
        "HTTP/2"
    }

    fn detect(&self, prefix: &[u8]) -> Detection {
        let n = prefix.len().min(H2_PREFACE.len());
        if prefix[..n] != H2_PREFACE[..n] {
            Detection::NoMatch
        } else if n < H2_PREFACE.len() {
            Detection::NeedMore
        } else {
            Detection::Match
        }
    }

    fn serve(&self, io: Io, conn: Arc<Downstream>, mut drain: watch::Receiver<bool>) -> BoxFuture {
        Box::pin(async move {
            let svc = service_fn(move |req| crate::http::handle(req, conn.clone()));
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new());
            let c = b.serve_connection(TokioIo::new(io), svc);
            serve_until_drained(c, |c| c.graceful_shutdown(), &mut drain, "h2").await;
        })
    }
}

/// Drives a hyper connection to its end, or, once draining starts, asks it to
/// finish its in-flight requests and close. (HTTP/1 with upgrades and HTTP/2
/// connections share no trait for this, hence the `shutdown` function.)
async fn serve_until_drained<C, E>(
    conn: C,
    shutdown: fn(Pin<&mut C>),
    drain: &mut watch::Receiver<bool>,
    protocol: &str,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("{protocol} connection: {e}");
            }
        }
        _ = crate::proxy::until_true(drain) => {
            shutdown(conn.as_mut());
            let _ = conn.await;
        }
    }
}

/// HTTP/1 request lines start with an upper-case method and a space.
impl Codec for Http1 {
    fn name(&self) -> &'static str {
        "HTTP/1.1"
    }

    fn detect(&self, prefix: &[u8]) -> Detection {
        for (i, b) in prefix.iter().enumerate() {
            match b {
                b'A'..=b'Z' | b'-' if i < 16 => {}
                b' ' if i > 0 => return Detection::Match,
                _ => return Detection::NoMatch,
            }
        }
        if prefix.len() >= 16 {
            Detection::NoMatch
        } else {
            Detection::NeedMore
        }
    }

    fn serve(&self, io: Io, conn: Arc<Downstream>, mut drain: watch::Receiver<bool>) -> BoxFuture {
        Box::pin(async move {
            let keep_alive = !conn.accepted_draining;
            let svc = service_fn(move |req| crate::http::handle(req, conn.clone()));
            let c = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(keep_alive)
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades();
            serve_until_drained(c, |c| c.graceful_shutdown(), &mut drain, "h1").await;
        })
    }
}

impl Codec for Tcp {
    fn name(&self) -> &'static str {
        "TCP"
    }

    fn detect(&self, _: &[u8]) -> Detection {
        Detection::Match
    }

    fn serve(&self, io: Io, conn: Arc<Downstream>, drain: watch::Receiver<bool>) -> BoxFuture {
        Box::pin(crate::tcp::proxy(io, conn, drain))
    }
}

/// Picks the first codec that recognises `prefix`; `None` while undecided.
pub fn choose<'a>(
    codecs: &'a [&'a dyn Codec],
    prefix: &[u8],
    complete: bool,
) -> Option<&'a dyn Codec> {
    let mut undecided = false;
    for c in codecs {
        match c.detect(prefix) {
            Detection::Match => return Some(*c),
            Detection::NeedMore if !complete => undecided = true,
            _ => {}
        }
        if undecided {
            return None;
        }
    }
    Some(&Tcp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTO: [&dyn Codec; 2] = [&Http2, &Http1];

    #[test]
    fn detects_h2_h1_tls_and_opaque() {
        assert_eq!(choose(&AUTO, H2_PREFACE, false).unwrap().name(), "HTTP/2");
        assert!(choose(&AUTO, b"PRI * HT", false).is_none(), "needs more");
        assert_eq!(
            choose(&AUTO, b"GET / HTTP/1.1\r\n", false).unwrap().name(),
            "HTTP/1.1"
        );
        assert_eq!(choose(&AUTO, b"POST /x", false).unwrap().name(), "HTTP/1.1");
        assert_eq!(
            choose(&AUTO, &[0x16, 0x03, 0x01, 0x02], false)
                .unwrap()
                .name(),
            "TCP"
        );
        assert_eq!(
            choose(&AUTO, b"\x00\x00\x01hello", false).unwrap().name(),
            "TCP"
        );
        assert_eq!(
            choose(&AUTO, b"GE", true).unwrap().name(),
            "TCP",
            "closed early"
        );
    }
}
