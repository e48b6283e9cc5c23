//! Mirroring: a route's share of requests copied to another cluster, bodies
//! included, fire-and-forget; a stalled mirror never delays the primary.

mod common;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

/// What a mirror server saw: (method, host, path, body).
type Seen = Arc<Mutex<Vec<(String, String, String, Bytes)>>>;

/// A server that records every request it gets and answers 200.
async fn recording_server() -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let s = s.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let host = parts
                            .headers
                            .get("host")
                            .map(|h| h.to_str().unwrap().to_owned())
                            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
                            .unwrap_or_default();
                        s.lock().unwrap().push((
                            parts.method.to_string(),
                            host,
                            parts.uri.path().to_owned(),
                            body,
                        ));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"shadow"))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(conn), svc)
                    .await;
            });
        }
    });
    (at, seen)
}

fn mirrored_config(
    port: u16,
    primary: SocketAddr,
    mirror: SocketAddr,
    pct: f64,
) -> serde_json::Value {
    config(
        json!([outbound(port)]),
        json!([one_route(
            "svc",
            "primary",
            json!({ "mirror": { "cluster": "shadow", "percentage": pct } })
        )]),
        json!([
            static_cluster("primary", &[primary]),
            static_cluster("shadow", &[mirror])
        ]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_gets_its_share_with_bodies_and_the_caller_sees_only_the_primary() {
    const N: usize = 10_000;
    let primary = upstream("primary").await;
    let (mirror, seen) = recording_server().await;
    let port = free_port();
    let proxy = start(&mirrored_config(port, primary.addr, mirror, 10.0)).await;

    // 10,000 GETs over 16 keep-alive connections, bounded in count.
    let mut workers = Vec::new();
    for w in 0..16 {
        workers.push(tokio::spawn(async move {
            let c = h1_client();
            let mut ok = 0;
            for i in (w..N).step_by(16) {
                let (s, h, body) = get(&c, local(port), "svc", &format!("/item/{i}"), &[])
                    .await
                    .unwrap();
                assert_eq!((s.as_u16(), body.as_str()), (200, "primary"));
                assert_eq!(h.get("x-upstream").unwrap(), "primary");
                ok += 1;
            }
            ok
        }));
    }
    let mut ok = 0;
    for w in workers {
        ok += w.await.unwrap();
    }
    assert_eq!(ok, N);
    assert_eq!(primary.hits(), N, "every request reached the primary once");
    let settled = eventually(Duration::from_secs(10), async || {
        let m = proxy.metrics_text();
        let sent = metric(
            &m,
            "upstream_request_mirror_total{cluster=\"shadow\",route=\"all\",result=\"sent\"}",
        );
        sent as usize == seen.lock().unwrap().len() && sent > 0
    })
    .await;
    assert!(settled, "{}", proxy.metrics_text());
    let copies = seen.lock().unwrap().len();
    // 10 % of 10,000 = 1,000; ±1 % of the requests is ±100 (3.3 σ).
    assert!(
        (900..=1100).contains(&copies),
        "{copies} copies of {N} requests at 10 %"
    );
    {
        let seen = seen.lock().unwrap();
        assert!(seen.iter().all(|(m, host, path, _)| m == "GET"
            && host == "svc-shadow"
            && path.starts_with("/item/")));
    }

    // Bodies are copied too: a route mirroring everything.
    seen.lock().unwrap().clear();
    let port2 = free_port();
    let _all = start(&mirrored_config(port2, primary.addr, mirror, 100.0)).await;
    let c = h1_client();
    for i in 0..20u8 {
        let body = Bytes::from(vec![b'a' + i; 1024 * (1 + usize::from(i))]);
        let resp = c
            .request(
                Request::post(format!("http://{}/echo", local(port2)))
                    .header("host", "svc")
                    .body(Full::new(body.clone()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let echoed = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(echoed, body, "the primary got the whole body");
    }
    assert!(
        eventually(Duration::from_secs(5), async || seen.lock().unwrap().len()
            == 20)
        .await
    );
    let seen = seen.lock().unwrap();
    for i in 0..20u8 {
        let want = vec![b'a' + i; 1024 * (1 + usize::from(i))];
        assert!(
            seen.iter()
                .any(|(m, _, p, b)| m == "POST" && p == "/echo" && b[..] == want[..]),
            "copy {i} with its body"
        );
    }
}

#[tokio::test]
async fn a_stalled_mirror_never_delays_the_primary() {
    let primary = upstream("primary").await;
    let stalled = stalling_upstream().await;
    let port = free_port();
    let proxy = start(&mirrored_config(port, primary.addr, stalled.addr, 100.0)).await;
    let c = h1_client();
    let mut slowest = Duration::ZERO;
    for i in 0..300 {
        let t = Instant::now();
        let (s, _, body) = get(&c, local(port), "svc", &format!("/{i}"), &[])
            .await
            .unwrap();
        slowest = slowest.max(t.elapsed());
        assert_eq!((s.as_u16(), body.as_str()), (200, "primary"));
    }
    // The copies hang for the mirror's 10 s timeout; the primary does not wait.
    assert!(
        slowest < Duration::from_secs(1),
        "slowest primary request: {slowest:?}"
    );
    let m = proxy.metrics_text();
    let dropped = metric(
        &m,
        "upstream_request_mirror_total{cluster=\"shadow\",route=\"all\",result=\"dropped\"}",
    );
    // At most 100 copies in flight: the rest are dropped and counted.
    assert!(dropped >= 200, "{m}");
    assert!(
        stalled.hits() <= 100,
        "{} sockets held by the stalled mirror",
        stalled.hits()
    );
}
