//! Circuit breaking with real sockets on 127.0.0.1: each limit admits
//! exactly its number, refuses the next with a local reply and counts it;
//! sockets to the upstream never exceed `maxConnections`, counted both by
//! the upstream's accepts and by `ss`; `maxRequestsPerConnection` retires
//! HTTP/1.1 and HTTP/2 connections.

mod common;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
};

const WAIT: Duration = Duration::from_secs(5);

/// An upstream (HTTP/1.1 and h2c) that holds requests to `/hold...` until
/// released, answers the rest at once, and tells each response which of its
/// connections (numbered from 1 in accept order) carried it (`x-conn`).
struct Gated {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    max_open: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
}

impl Gated {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (release, gate) = watch::channel(false);
        let g = Gated {
            addr,
            accepted: Arc::default(),
            requests: Arc::default(),
            open: Arc::default(),
            max_open: Arc::default(),
            release,
        };
        let (accepted, requests, open, max_open) = (
            g.accepted.clone(),
            g.requests.clone(),
            g.open.clone(),
            g.max_open.clone(),
        );
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let id = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                max_open.fetch_max(now, Ordering::SeqCst);
                let (requests, open, gate) = (requests.clone(), open.clone(), gate.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        requests.fetch_add(1, Ordering::SeqCst);
                        let mut gate = gate.clone();
                        async move {
                            let hold = req.uri().path().starts_with("/hold");
                            let grpc = req
                                .headers()
                                .get("content-type")
                                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                            if hold {
                                let _ = gate.wait_for(|open| *open).await;
                            }
                            let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
                            r.headers_mut().insert("x-conn", id.into());
                            if grpc {
                                r.headers_mut()
                                    .insert("content-type", "application/grpc".parse().unwrap());
                                r.headers_mut().insert("grpc-status", "0".parse().unwrap());
                            }
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        g
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    fn max_open(&self) -> usize {
        self.max_open.load(Ordering::SeqCst)
    }
    fn release(&self) {
        self.release.send_replace(true);
    }
}

/// Established TCP connections to `port` on this host, as `ss` sees them.
fn ss_established(port: u16) -> usize {
    let out = std::process::Command::new("ss")
        .args(["-Htn", "state", "established"])
        .arg(format!("( dport = :{port} )"))
        .output()
        .expect("ss (iproute2) is installed; scripts/e2e-deps.sh installs it");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

fn overflow(proxy: &remora_sidecar::ProxyHandle, cluster: &str, limit: &str) -> u64 {
    metric(
        &proxy.metrics_text(),
        &format!("upstream_overflow_total{{cluster=\"{cluster}\",limit=\"{limit}\"}}"),
    )
}

async fn proxy_for(cluster: Value, port: u16) -> remora_sidecar::ProxyHandle {
    let name = cluster["name"].as_str().unwrap().to_string();
    start(&config(
        json!([outbound(port)]),
        json!([one_route("svc", &name, json!({}))]),
        json!([cluster]),
    ))
    .await
}

/// `n` concurrent HTTP/1.1 GETs of `path` through the proxy, each on its
/// own client connection: (status, flags) as they finish.
fn spawn_gets(
    port: u16,
    path: &'static str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<(StatusCode, String)>> {
    (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let (s, h, _) = get(&h1_client(), local(port), "svc", path, &[])
                    .await
                    .unwrap();
                let flags = h
                    .get("x-remora-flags")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                (s, flags)
            })
        })
        .collect()
}

async fn outcomes(
    tasks: Vec<tokio::task::JoinHandle<(StatusCode, String)>>,
) -> Vec<(StatusCode, String)> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(tokio::time::timeout(WAIT, t).await.unwrap().unwrap());
    }
    out.sort();
    out
}

#[tokio::test]
async fn http1_connections_are_capped_and_one_pending_request_waits() {
    let up = Gated::start().await;
    let port = free_port();
    let mut cl = static_cluster("svc", &[up.addr]);
    cl["limits"] = json!({ "maxConnections": 2, "maxPendingRequests": 1 });
    let proxy = proxy_for(cl, port).await;

    let tasks = spawn_gets(port, "/hold", 4);
    // Two on the two connections, one pending, the fourth refused.
    assert!(eventually(WAIT, async || up.requests() == 2).await);
    assert!(eventually(WAIT, async || overflow(&proxy, "svc", "pending") == 1).await);
    assert_eq!(overflow(&proxy, "svc", "connections"), 2, "3rd and 4th");
    assert_eq!(ss_established(up.addr.port()), 2);
    assert_eq!(up.accepted(), 2);
    let m = proxy.metrics_text();
    assert_eq!(
        metric(&m, "upstream_connection_active{cluster=\"svc\"}"),
        2,
        "{m}"
    );
    assert_eq!(
        metric(&m, "upstream_request_pending_overflow{cluster=\"svc\"}"),
        1
    );

    up.release();
    let got = outcomes(tasks).await;
    assert_eq!(
        got,
        [
            (StatusCode::OK, String::new()),
            (StatusCode::OK, String::new()),
            (StatusCode::OK, String::new()),
            (StatusCode::SERVICE_UNAVAILABLE, "UO".into()),
        ],
        "the pending request is served on a freed connection"
    );
    assert_eq!(up.requests(), 3);
    assert_eq!(up.accepted(), 2, "never a third socket");
    assert_eq!(up.max_open(), 2);
    assert!(ss_established(up.addr.port()) <= 2);
    assert_eq!(overflow(&proxy, "svc", "requests"), 0);
}

#[tokio::test]
async fn in_flight_requests_are_capped_for_http1_and_grpc() {
    let up = Gated::start().await;
    let port = free_port();
    let mut cl = static_cluster("svc", &[up.addr]);
    cl["limits"] = json!({ "maxRequests": 3 });
    let proxy = proxy_for(cl, port).await;

    let tasks = spawn_gets(port, "/hold", 5);
    assert!(eventually(WAIT, async || overflow(&proxy, "svc", "requests") == 2).await);
    assert!(eventually(WAIT, async || up.requests() == 3).await);
    // gRPC callers get UNAVAILABLE while the cap is full.
    let mut h2 = h2_connect(local(port)).await;
    let req = Request::post("http://svc/echo.Echo/Hold")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Empty::<Bytes>::new().map_err(|e| match e {}).boxed())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["grpc-status"], "14");
    assert_eq!(resp.headers()["x-remora-flags"], "UO");
    assert_eq!(overflow(&proxy, "svc", "requests"), 3);
    let m = proxy.metrics_text();
    assert_eq!(metric(&m, "upstream_request_active{cluster=\"svc\"}"), 3);

    up.release();
    let got = outcomes(tasks).await;
    let ok = got.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let refused: Vec<_> = got.iter().filter(|(s, _)| *s != StatusCode::OK).collect();
    assert_eq!(ok, 3, "{got:?}");
    assert_eq!(
        refused,
        [&(StatusCode::SERVICE_UNAVAILABLE, "UO".to_string()); 2]
    );
    assert_eq!(
        up.requests(),
        3,
        "refused requests never reach the upstream"
    );
    // Under the cap again.
    let (s, _, _) = get(&h1_client(), local(port), "svc", "/", &[])
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK);
    assert_eq!(overflow(&proxy, "svc", "requests"), 3);
}

#[tokio::test]
async fn concurrent_retries_are_capped() {
    let stall = stalling_upstream().await;
    let port = free_port();
    let mut cl = static_cluster("svc", &[stall.addr]);
    cl["limits"] = json!({ "maxRetries": 2 });
    let retry = json!({ "retry": {
        "attempts": 1, "perTryTimeout": "400ms", "retryOn": ["reset"],
        "budgetPercent": 100, "backoff": "1ms"
    } });
    let proxy = start(&config(
        json!([outbound(port)]),
        json!([one_route("svc", "svc", retry)]),
        json!([cl]),
    ))
    .await;

    let got = outcomes(spawn_gets(port, "/", 3)).await;
    // Every try times out; two retries run at once, the third is refused
    // and its first answer returned.
    assert_eq!(
        got,
        [
            (StatusCode::GATEWAY_TIMEOUT, "URX".into()),
            (StatusCode::GATEWAY_TIMEOUT, "URX".into()),
            (StatusCode::GATEWAY_TIMEOUT, "UT".into()),
        ]
    );
    assert_eq!(overflow(&proxy, "svc", "retries"), 1);
    let m = proxy.metrics_text();
    assert_eq!(metric(&m, "upstream_request_retry{cluster=\"svc\"}"), 2);
    assert_eq!(
        metric(&m, "upstream_request_retry_overflow{cluster=\"svc\"}"),
        0,
        "the budget allowed all three"
    );
    assert_eq!(stall.hits(), 5, "three tries and two retries");
}

#[tokio::test]
async fn tcp_connections_over_the_cap_are_closed() {
    let echo = tcp_echo().await;
    let port = free_port();
    let mut cl = static_cluster("echo", &[echo]);
    cl["limits"] = json!({ "maxConnections": 2 });
    let proxy = start(&config(
        json!([{ "name": "tcp", "direction": "inbound", "address": addr(port),
                 "protocol": "tcp", "defaultCluster": "echo" }]),
        json!([]),
        json!([cl]),
    ))
    .await;

    async fn echoes(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 4];
        s.write_all(b"ping").await.is_ok()
            && matches!(
                tokio::time::timeout(WAIT, s.read_exact(&mut buf)).await,
                Ok(Ok(4))
            )
            && &buf == b"ping"
    }
    let mut a = TcpStream::connect(local(port)).await.unwrap();
    let mut b = TcpStream::connect(local(port)).await.unwrap();
    assert!(echoes(&mut a).await && echoes(&mut b).await);
    let mut c = TcpStream::connect(local(port)).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WAIT, c.read(&mut buf)).await.unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the third connection is closed"
    );
    assert_eq!(overflow(&proxy, "echo", "connections"), 1);
    assert_eq!(ss_established(echo.port()), 2);

    // A closed connection frees its slot.
    drop(a);
    assert!(eventually(WAIT, async || ss_established(echo.port()) == 1).await);
    let mut d = TcpStream::connect(local(port)).await.unwrap();
    assert!(echoes(&mut d).await);
    assert_eq!(ss_established(echo.port()), 2);
    assert_eq!(overflow(&proxy, "echo", "connections"), 1);
}

/// The `x-conn` of `n` sequential requests through the proxy.
async fn conn_ids_h1(port: u16, n: usize) -> Vec<String> {
    let c = h1_client();
    let mut ids = Vec::new();
    for _ in 0..n {
        let (s, h, _) = get(&c, local(port), "svc", "/", &[]).await.unwrap();
        assert_eq!(s, StatusCode::OK);
        ids.push(h["x-conn"].to_str().unwrap().to_string());
    }
    ids
}

#[tokio::test]
async fn http1_connections_are_retired_after_max_requests_per_connection() {
    let up = Gated::start().await;
    let port = free_port();
    let mut cl = static_cluster("svc", &[up.addr]);
    cl["limits"] = json!({ "maxRequestsPerConnection": 3 });
    let _proxy = proxy_for(cl, port).await;
    assert_eq!(
        conn_ids_h1(port, 7).await,
        ["1", "1", "1", "2", "2", "2", "3"]
    );
    assert_eq!(up.accepted(), 3);
    // Retired connections are closed, not left idle.
    assert!(eventually(WAIT, async || ss_established(up.addr.port()) == 1).await);
}

#[tokio::test]
async fn http2_streams_move_to_a_new_connection_after_max_requests_per_connection() {
    let up = Gated::start().await;
    let port = free_port();
    let mut cl = static_cluster("svc", &[up.addr]);
    cl["protocol"] = json!("http2");
    cl["limits"] = json!({ "maxRequestsPerConnection": 3 });
    let _proxy = proxy_for(cl, port).await;

    let mut h2 = h2_connect(local(port)).await;
    let mut send = |path: &'static str| {
        let req = Request::get(format!("http://svc{path}"))
            .body(Empty::<Bytes>::new().map_err(|e| match e {}).boxed())
            .unwrap();
        h2.send_request(req)
    };
    // A held stream keeps the retired connection open until it finishes.
    let held = tokio::spawn(send("/hold"));
    assert!(eventually(WAIT, async || up.requests() == 1).await);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let resp = send("/").await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        ids.push(resp.headers()["x-conn"].to_str().unwrap().to_string());
    }
    assert_eq!(ids, ["1", "1", "2", "2", "2"]);
    assert_eq!(
        ss_established(up.addr.port()),
        2,
        "the first still has a stream"
    );
    up.release();
    let resp = held.await.unwrap().unwrap();
    assert_eq!(resp.headers()["x-conn"], "1");
    assert!(eventually(WAIT, async || ss_established(up.addr.port()) == 1).await);
    let resp = send("/").await.unwrap();
    assert_eq!(resp.headers()["x-conn"], "3", "the second retired after 3");
    assert_eq!(up.accepted(), 3);
}

#[tokio::test]
async fn http2_pending_requests_wait_for_a_connection_at_the_cap() {
    // Two endpoints, one connection: the second endpoint's requests wait
    // until the first's connection retires and closes.
    let (a, b) = (Gated::start().await, Gated::start().await);
    let port = free_port();
    let mut cl = static_cluster("svc", &[a.addr, b.addr]);
    cl["protocol"] = json!("http2");
    cl["limits"] =
        json!({ "maxConnections": 1, "maxPendingRequests": 1, "maxRequestsPerConnection": 1 });
    let proxy = proxy_for(cl, port).await;

    let tasks = spawn_gets(port, "/hold", 3);
    assert!(eventually(WAIT, async || a.requests() + b.requests() == 1).await);
    assert!(eventually(WAIT, async || overflow(&proxy, "svc", "pending") == 1).await);
    assert_eq!(overflow(&proxy, "svc", "connections"), 2);
    assert_eq!(
        ss_established(a.addr.port()) + ss_established(b.addr.port()),
        1
    );
    a.release();
    b.release();
    let got = outcomes(tasks).await;
    assert_eq!(
        got.iter().filter(|(s, _)| *s == StatusCode::OK).count(),
        2,
        "{got:?}"
    );
    assert_eq!(
        a.accepted() + b.accepted(),
        2,
        "one connection after the other"
    );
}

#[tokio::test]
async fn an_idle_connection_makes_way_for_another_endpoint_at_the_cap() {
    let (a, b) = (Gated::start().await, Gated::start().await);
    let port = free_port();
    let mut cl = static_cluster("svc", &[a.addr, b.addr]);
    cl["limits"] = json!({ "maxConnections": 1, "maxPendingRequests": 1 });
    let proxy = proxy_for(cl, port).await;
    let c = h1_client();
    // Round robin: a, b, a, b — each time the other endpoint's idle
    // connection is closed to free the one socket.
    for _ in 0..4 {
        let (s, _, _) = get(&c, local(port), "svc", "/", &[]).await.unwrap();
        assert_eq!(s, StatusCode::OK);
        assert!(ss_established(a.addr.port()) + ss_established(b.addr.port()) <= 1);
    }
    assert_eq!((a.requests(), b.requests()), (2, 2));
    assert_eq!(a.accepted() + b.accepted(), 4);
    assert_eq!(overflow(&proxy, "svc", "connections"), 3);
    assert_eq!(overflow(&proxy, "svc", "pending"), 0);
}

#[tokio::test]
async fn idle_http1_connections_close_after_the_idle_timeout() {
    let up = Gated::start().await;
    let port = free_port();
    let mut cl = static_cluster("svc", &[up.addr]);
    cl["idleTimeout"] = json!("200ms");
    let proxy = proxy_for(cl, port).await;
    assert_eq!(conn_ids_h1(port, 2).await, ["1", "1"], "reused while fresh");
    assert_eq!(ss_established(up.addr.port()), 1);
    assert!(eventually(WAIT, async || ss_established(up.addr.port()) == 0).await);
    let m = proxy.metrics_text();
    assert_eq!(metric(&m, "upstream_connection_active{cluster=\"svc\"}"), 0);
    assert_eq!(conn_ids_h1(port, 1).await, ["2"]);
}
