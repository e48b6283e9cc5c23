//! Network layer: accept, find the original destination, detect the protocol
//! and hand the connection to its codec.

use std::{
    net::{SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::AsRawFd,
    sync::Arc,
    time::Duration,
};

use remora_api::config::{ListenerProtocol, TlsMode};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

use crate::{
    codec::{self, Codec},
    http::Downstream,
    proxy::Shared,
    tls::{Alpn, HANDSHAKE_TIMEOUT, Hello, Io, TLS_HANDSHAKE, classify_hello},
};

/// How long to wait for a client's first bytes before treating the
/// connection as opaque TCP (server-first protocols such as MySQL send nothing).
pub const DETECT_TIMEOUT: Duration = Duration::from_millis(300);

pub async fn accept_loop(
    socket: TcpListener,
    name: String,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut closed = shared.closed.subscribe();
    loop {
        let (stream, peer) = tokio::select! {
            r = socket.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::proxy::until_true(&mut stop) => break,
            _ = crate::proxy::until_true(&mut closed) => break,
        };
        let shared = shared.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            serve_connection(stream, peer, name, shared).await;
        });
    }
    tracing::info!(listener = %name, "stopped accepting");
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    listener: String,
    shared: Arc<Shared>,
) {
    let _tracked = shared.track_connection();
    // Accepted while draining: serve, but do not keep the connection.
    let accepted_draining = shared.draining();
    let Some(policy) = shared.snapshot.load().listeners.get(&listener).cloned() else {
        return;
    };
    policy.metrics.connection_total.inc();
    let _active = policy.metrics.connection_active.track();
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let original = if policy.transparent {
        original_dst(&stream).unwrap_or(local)
    } else {
        local
    };
    // Inbound mesh TLS: a ClientHello is terminated here (its ALPN names the
    // inner protocol); plaintext passes in `permissive` mode only.
    let (io, alpn, peer_identity) = match (policy.tls_mode, shared.tls.load_full()) {
        (mode, Some(tls)) if mode != TlsMode::Disabled => {
            let strict = mode == TlsMode::Strict;
            let wait = if strict {
                HANDSHAKE_TIMEOUT
            } else {
                DETECT_TIMEOUT
            };
            let hello = if first_byte(&stream, wait).await == Some(TLS_HANDSHAKE) {
                // Strict: all TLS must be mesh mTLS. Permissive: only a peer
                // sidecar's ClientHello is ours; other TLS passes through.
                if strict {
                    Hello::Mesh
                } else {
                    peek_hello(&stream).await
                }
            } else {
                Hello::Other
            };
            if hello == Hello::Mesh {
                match tls.accept(stream).await {
                    Ok((s, peer, alpn)) => (s, alpn, Some(peer.identity)),
                    Err(e) => {
                        tracing::debug!(listener = %listener, %peer, "TLS handshake failed: {e}");
                        return;
                    }
                }
            } else if strict {
                // (A strict listener only gets here without a ClientHello.)
                tls.refuse_plaintext();
                tracing::debug!(listener = %listener, %peer, "plaintext refused (strict mTLS)");
                return;
            } else {
                (Io::plain(stream), None, None)
            }
        }
        (TlsMode::Strict, None) => {
            // No workload identity yet: strict serves nothing (and `/ready`
            // fails) until it arrives.
            tracing::debug!(listener = %listener, %peer, "refused: strict mTLS and no identity yet");
            return;
        }
        _ => (Io::plain(stream), None, None),
    };
    let codecs: &[&dyn Codec] = match policy.protocol {
        ListenerProtocol::Tcp => &[],
        ListenerProtocol::Http1 => &[&codec::Http1],
        ListenerProtocol::Http2 => &[&codec::Http2],
        ListenerProtocol::Auto => &[&codec::Http2, &codec::Http1],
    };
    let codec: &dyn Codec = if codecs.is_empty() || policy.opaque_ports.contains(&original.port()) {
        &codec::Tcp
    } else if io.is_tls() {
        match alpn {
            Some(Alpn::Http2) => &codec::Http2,
            Some(Alpn::Http1) => &codec::Http1,
            Some(Alpn::Opaque) => &codec::Tcp,
            // A TLS client without ALPN: the listener's protocol if it has one.
            None if codecs.len() == 1 => codecs[0],
            None => &codec::Tcp,
        }
    } else if codecs.len() == 1 {
        codecs[0]
    } else {
        detect(io.tcp().expect("plaintext"), codecs).await
    };
    let conn = Arc::new(Downstream {
        shared: shared.clone(),
        listener,
        peer,
        original_dst: original,
        local,
        h2: codec.name() == "HTTP/2",
        protocol: codec.name(),
        peer_identity,
        accepted_draining,
        original_h1: Default::default(),
    });
    drop(policy);
    // A connection opened during the drain's grace is closed with the
    // listeners, not at once (it has not served its request yet).
    let close_when = if accepted_draining {
        shared.closed.subscribe()
    } else {
        shared.drain.subscribe()
    };
    codec.serve(io, conn, close_when).await;
}

/// Whether the ClientHello waiting on `stream` is a peer sidecar's. A hello
/// that does not complete within the detection window counts as `Other`.
async fn peek_hello(stream: &TcpStream) -> Hello {
    // A TLS record is at most 16 KiB plus its 5-byte header.
    let mut buf = vec![0u8; 5 + (1 << 14)];
    let deadline = tokio::time::Instant::now() + DETECT_TIMEOUT;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return Hello::Other,
        };
        match classify_hello(&buf[..n]) {
            Hello::Incomplete if n > 0 => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Hello::Incomplete => return Hello::Other,
            decided => return decided,
        }
    }
}

/// The first byte the client sent, or `None` if it sent nothing in time.
async fn first_byte(stream: &TcpStream, wait: Duration) -> Option<u8> {
    let mut b = [0u8; 1];
    match tokio::time::timeout(wait, stream.peek(&mut b)).await {
        Ok(Ok(1)) => Some(b[0]),
        _ => None,
    }
}

async fn detect<'a>(stream: &TcpStream, codecs: &'a [&'a dyn Codec]) -> &'a dyn Codec {
    let mut buf = [0u8; 24];
    let deadline = tokio::time::Instant::now() + DETECT_TIMEOUT;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return &codec::Tcp,
        };
        let complete = n == 0 || tokio::time::Instant::now() >= deadline;
        if let Some(c) = codec::choose(codecs, &buf[..n], complete) {
            return c;
        }
        // More bytes are on their way; peek returns at once, so pace it.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

const SO_ORIGINAL_DST: libc::c_int = 80;
const IP6T_SO_ORIGINAL_DST: libc::c_int = 80;

/// The destination an iptables REDIRECT rewrote, or `None` when the
/// connection was not redirected (or this is not Linux netfilter).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let fd = stream.as_raw_fd();
    let local = stream.local_addr().ok()?;
    let addr = if local.is_ipv4() {
        // SAFETY: a zeroed sockaddr_in is valid; getsockopt writes at most `len` bytes.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IP,
                SO_ORIGINAL_DST,
                (&raw mut sa).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return None;
        }
        SocketAddr::V4(SocketAddrV4::new(
            u32::from_be(sa.sin_addr.s_addr).into(),
            u16::from_be(sa.sin_port),
        ))
    } else {
        // SAFETY: as above, for sockaddr_in6.
        let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                IP6T_SO_ORIGINAL_DST,
                (&raw mut sa).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return None;
        }
        SocketAddr::V6(SocketAddrV6::new(
            sa.sin6_addr.s6_addr.into(),
            u16::from_be(sa.sin6_port),
            0,
            0,
        ))
    };
    (addr != local).then_some(addr)
}
