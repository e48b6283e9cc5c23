//! HTTP/1.1, h2c, gRPC and TCP through the proxy, with routing.

mod common;

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn http1_routes_by_host_path_method_header_and_query_with_curl() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let port = free_port();
    let cfg = config(
        json!([outbound(port)]),
        json!([{
            "name": "svc", "domains": ["svc", "svc.ns.svc.cluster.local:8080"],
            "routes": [
                { "name": "exact", "match": { "path": { "exact": "/exact" } },
                  "action": { "clusters": [{ "cluster": "b", "weight": 100 }] } },
                { "name": "regex", "match": { "path": { "regex": "/v[0-9]+/items" } },
                  "action": { "clusters": [{ "cluster": "b", "weight": 100 }] } },
                { "name": "post", "match": { "method": "POST" },
                  "action": { "clusters": [{ "cluster": "b", "weight": 100 }] } },
                { "name": "hdr", "match": { "headers": [{ "name": "x-canary", "value": { "exact": "yes" } }] },
                  "action": { "clusters": [{ "cluster": "b", "weight": 100 }] } },
                { "name": "query", "match": { "query": [{ "name": "debug", "invert": true }], "path": { "prefix": "/q" } },
                  "action": { "clusters": [{ "cluster": "b", "weight": 100 }] } },
                { "name": "rest", "match": { "path": { "prefix": "/" } },
                  "action": { "clusters": [{ "cluster": "a", "weight": 100 }] } }
            ]
        }, {
            "name": "direct", "domains": ["static.local"],
            "routes": [{ "name": "teapot", "action": { "direct": { "status": 418, "body": "short and stout" } } }]
        }]),
        json!([
            static_cluster("a", &[a.addr]),
            static_cluster("b", &[b.addr])
        ]),
    );
    let _proxy = start(&cfg).await;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let cases: [(&[&str], &str); 10] = [
        (&["-H", "Host: svc"], "/exact"),
        (&["-H", "Host: svc"], "/exact/no"),
        (&["-H", "Host: svc:9999"], "/v12/items"),
        (&["-H", "Host: svc"], "/v12/items/x"),
        (
            &[
                "-H",
                "Host: svc.ns.svc.cluster.local:8080",
                "-X",
                "POST",
                "-d",
                "x",
            ],
            "/any",
        ),
        (&["-H", "Host: svc", "-H", "x-canary: yes"], "/any"),
        (&["-H", "Host: svc"], "/q?x=1"),
        (&["-H", "Host: svc"], "/q?debug=1"),
        (&["-H", "Host: static.local", "-w", " %{http_code}"], "/"),
        (&["-H", "Host: unknown", "-w", " %{http_code}"], "/"),
    ];
    let mut got = Vec::new();
    for (args, path) in cases {
        let mut a: Vec<&str> = args.to_vec();
        let u = url(path);
        a.push(&u);
        got.push(curl(&a).await.0);
    }
    assert_eq!(got[0], "b", "exact path");
    assert_eq!(got[1], "a", "exact is not prefix");
    assert_eq!(got[2], "b", "host with another port, regex path");
    assert_eq!(got[3], "a", "regex is anchored");
    assert_eq!(got[4], "b", "method, authority with port");
    assert_eq!(got[5], "b", "header");
    assert_eq!(got[6], "b", "inverted query match: parameter absent");
    assert_eq!(got[7], "a", "inverted query match: parameter present");
    assert_eq!(got[8], "short and stout 418", "direct response");
    assert!(got[9].ends_with(" 404"), "no route: {}", got[9]);
}

#[tokio::test]
async fn weighted_split_95_5_holds_over_10000_requests() {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let port = free_port();
    let cfg = config(
        json!([outbound(port)]),
        json!([{ "name": "reviews", "domains": ["reviews"], "routes": [{
            "name": "canary",
            "action": { "clusters": [{ "cluster": "v1", "weight": 95 }, { "cluster": "v2", "weight": 5 }] }
        }]}]),
        json!([
            static_cluster("v1", &[v1.addr]),
            static_cluster("v2", &[v2.addr])
        ]),
    );
    let _proxy = start(&cfg).await;
    let proxy = format!("127.0.0.1:{port}").parse().unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let c = h1_client();
            let mut ok = 0;
            for _ in 0..1250 {
                if let Ok((s, _, _)) = get(&c, proxy, "reviews", "/", &[]).await
                    && s == 200
                {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert_eq!(ok, 10_000);
    assert_eq!(v1.hits() + v2.hits(), 10_000);
    // The split is a schedule, not a dice roll: exactly 5 % from 8
    // concurrent clients (docs/sidecar.md#weighted-splits).
    assert_eq!(v2.hits(), 500, "v2 got {} of 10,000 (want 500)", v2.hits());
}

#[tokio::test]
async fn h2c_prior_knowledge_with_curl_and_hyper() {
    let up = upstream("h2up").await;
    let port = free_port();
    let mut cl = static_cluster("h2", &[up.addr]);
    cl["protocol"] = json!("http2");
    let cfg = config(
        json!([outbound(port)]),
        json!([{ "name": "t", "domains": ["h2svc"], "routes": [{ "name": "all",
            "action": { "clusters": [{ "cluster": "h2", "weight": 100 }] } }] },
            one_route("h1svc", "h1", json!({}))]),
        json!([cl, static_cluster("h1", &[up.addr])]),
    );
    let _proxy = start(&cfg).await;
    let (out, err) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: h2svc",
        "-w",
        " %{http_version}",
        &format!("http://127.0.0.1:{port}/hello"),
    ])
    .await;
    assert_eq!(out, "h2up 2", "{err}");
    // The upstream HTTP/2 request keeps the caller's authority, whether the
    // caller spoke HTTP/2 or HTTP/1.1.
    let (out, err) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: h2svc",
        &format!("http://127.0.0.1:{port}/authority"),
    ])
    .await;
    assert_eq!(out, "h2svc HTTP/2.0", "{err}");
    let (_, _, body) = get(&h1_client(), local(port), "h2svc", "/authority", &[])
        .await
        .unwrap();
    assert_eq!(body, "h2svc HTTP/2.0");
    // An HTTP/2 client to an HTTP/1.1 cluster: translated, Host from :authority.
    let (out, err) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: h1svc",
        &format!("http://127.0.0.1:{port}/headers"),
    ])
    .await;
    assert!(out.contains("host: h1svc"), "{out}{err}");

    // Many concurrent streams on one client connection.
    let c = h2_connect(format!("127.0.0.1:{port}").parse().unwrap()).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let body = format!("payload-{i}");
            let req = Request::post("http://h2svc/echo")
                .body(
                    Full::new(Bytes::from(body.clone()))
                        .map_err(Into::into)
                        .boxed(),
                )
                .unwrap();
            let resp = c.send_request(req).await.unwrap();
            let got = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(got, body.as_bytes());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn grpc_setup() -> (Upstream, u16, remora_sidecar::ProxyHandle) {
    let up = upstream("grpc").await;
    let port = free_port();
    let mut cl = static_cluster("echo", &[up.addr]);
    cl["protocol"] = json!("grpc");
    let cfg = config(
        json!([outbound(port)]),
        json!([{ "name": "echo", "domains": ["echo.ns:50051"], "protocol": "grpc", "routes": [
            { "name": "svc", "match": { "rpc": { "service": "echo.Echo" } },
              "action": { "clusters": [{ "cluster": "echo", "weight": 100 }] } }
        ]}]),
        json!([cl]),
    );
    let proxy = start(&cfg).await;
    (up, port, proxy)
}

#[tokio::test]
async fn grpc_unary_and_bidi_streaming_with_trailers() {
    let (_up, port, _proxy) = grpc_setup().await;
    let mut c = h2_connect(format!("127.0.0.1:{port}").parse().unwrap()).await;

    // Unary.
    let body = Full::new(grpc_frame(b"hello")).map_err(Into::into).boxed();
    let resp = c
        .send_request(grpc_request("echo.ns:50051", "Unary", body))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), grpc_frame(b"hello"));

    // Bidi: each message is echoed before the next is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>,
    >(4);
    let body = ChannelBody(rx).boxed();
    let resp = c
        .send_request(grpc_request("echo.ns:50051", "Chat", body))
        .await
        .unwrap();
    let mut body = resp.into_body();
    for i in 0..5 {
        let msg = format!("message {i}");
        tx.send(Ok(Frame::data(grpc_frame(msg.as_bytes()))))
            .await
            .unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("echo arrives while the stream is open")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), grpc_frame(msg.as_bytes()));
    }
    drop(tx);
    let rest = body.collect().await.unwrap();
    assert_eq!(rest.trailers().unwrap()["grpc-status"], "0");
}

#[tokio::test]
async fn grpc_local_errors_carry_grpc_status() {
    let (_up, port, _proxy) = grpc_setup().await;
    let mut c = h2_connect(format!("127.0.0.1:{port}").parse().unwrap()).await;
    let body = || Full::new(grpc_frame(b"x")).map_err(Into::into).boxed();
    let resp = c
        .send_request(grpc_request("nobody.ns:1", "Unary", body()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["grpc-status"],
        "12",
        "no route: UNIMPLEMENTED"
    );
    let mut req = grpc_request("echo.ns:50051", "Unary", body());
    *req.uri_mut() = "http://echo.ns:50051/other.Svc/Unary".parse().unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(
        resp.headers()["grpc-status"],
        "12",
        "no matching route in table"
    );
}

/// A caller's `grpc-timeout` bounds the call in the sidecar too: a stalled
/// upstream ends in DEADLINE_EXCEEDED from the sidecar at the caller's deadline.
#[tokio::test]
async fn grpc_timeout_header_is_enforced_by_the_sidecar() {
    let stalled = stalling_upstream().await;
    let port = free_port();
    let mut cl = static_cluster("stalled", &[stalled.addr]);
    cl["protocol"] = json!("grpc");
    cl["connectTimeout"] = json!("10s");
    let cfg = config(
        json!([outbound(port)]),
        json!([{ "name": "slow", "domains": ["slow.ns:50051"], "protocol": "grpc", "routes": [
            { "name": "all", "action": { "clusters": [{ "cluster": "stalled", "weight": 100 }] } }
        ]}]),
        json!([cl]),
    );
    let _proxy = start(&cfg).await;
    let mut c = h2_connect(format!("127.0.0.1:{port}").parse().unwrap()).await;
    let mut req = grpc_request(
        "slow.ns:50051",
        "Unary",
        Full::new(grpc_frame(b"x")).map_err(Into::into).boxed(),
    );
    req.headers_mut()
        .insert("grpc-timeout", "300m".parse().unwrap());
    let started = std::time::Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(5), c.send_request(req))
        .await
        .expect("the sidecar answers before the test gives up")
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
    assert_eq!(resp.headers()["x-remora-flags"], "UT");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn tcp_pass_through_explicit_and_detected() {
    let echo = tcp_echo().await;
    let (tcp_port, auto_port) = (free_port(), free_port());
    let cfg = config(
        json!([
            { "name": "tcp", "direction": "inbound", "address": addr(tcp_port), "protocol": "tcp", "defaultCluster": "echo" },
            { "name": "auto", "direction": "inbound", "address": addr(auto_port), "defaultCluster": "echo" }
        ]),
        json!([]),
        json!([static_cluster("echo", &[echo])]),
    );
    let proxy = start(&cfg).await;
    for port in [tcp_port, auto_port] {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        // Binary, TLS-like first bytes: not HTTP, so opaque.
        let payload = b"\x16\x03\x01\x00\x05hello-opaque";
        s.write_all(payload).await.unwrap();
        let mut got = vec![0u8; payload.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, payload);
    }
    let m = proxy.metrics_text();
    assert!(
        metric(&m, "upstream_connection_total{cluster=\"echo\"}") >= 2,
        "{m}"
    );
}

/// `Upgrade: h2c` would turn the connection into a tunnel of HTTP/2 streams
/// past routing and authorization: the proxy drops those headers and
/// proxies the request as plain HTTP/1.1.
#[tokio::test]
async fn h2c_upgrade_requests_are_proxied_as_plain_http1() {
    let up = upstream("app").await;
    let port = free_port();
    let cfg = config(
        json!([outbound(port)]),
        json!([one_route("app", "app", json!({}))]),
        json!([static_cluster("app", &[up.addr])]),
    );
    let _proxy = start(&cfg).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(
        b"GET /headers HTTP/1.1\r\nHost: app\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("x-request-id") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(
        !text.contains("upgrade: h2c"),
        "the app saw the upgrade: {text}"
    );
    assert!(!text.contains("http2-settings"), "{text}");
}

#[tokio::test]
async fn websocket_upgrade_expect_continue_and_chunked() {
    let up = upstream("ws").await;
    let port = free_port();
    let cfg = config(
        json!([outbound(port)]),
        json!([{ "name": "t", "domains": ["ws"], "routes": [{ "name": "all",
            "action": { "clusters": [{ "cluster": "ws", "weight": 100 }] } }] }]),
        json!([static_cluster("ws", &[up.addr])]),
    );
    let _proxy = start(&cfg).await;

    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: ws\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for msg in [&b"ping"[..], b"frames after the upgrade"] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, msg);
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big");
    let big: String = (0..50_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    std::fs::write(&file, &big).unwrap();
    let data = format!("@{}", file.display());
    let url = format!("http://127.0.0.1:{port}/echo");
    let (out, err) = curl(&[
        "-H",
        "Host: ws",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &data,
        &url,
    ])
    .await;
    assert_eq!(out.len(), big.len(), "{err}");
    assert_eq!(out, big);
    let (out, err) = curl(&[
        "-H",
        "Host: ws",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &data,
        &url,
    ])
    .await;
    assert_eq!(out, big, "{err}");
}

#[tokio::test]
async fn ring_hash_on_header_is_sticky_and_spreads() {
    let ups = [
        upstream("r0").await,
        upstream("r1").await,
        upstream("r2").await,
    ];
    let port = free_port();
    let mut cl = static_cluster("ring", &[ups[0].addr, ups[1].addr, ups[2].addr]);
    cl["loadBalancer"] = json!({ "policy": "ringHash", "hashOn": { "header": "x-user" } });
    let cfg = config(
        json!([outbound(port)]),
        json!([{ "name": "t", "domains": ["ring"], "routes": [{ "name": "all",
            "action": { "clusters": [{ "cluster": "ring", "weight": 100 }] } }] }]),
        json!([cl]),
    );
    let _proxy = start(&cfg).await;
    let c = h1_client();
    let proxy = format!("127.0.0.1:{port}").parse().unwrap();
    let mut chosen: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for user in 0..30 {
            let u = format!("user-{user}");
            let (_, _, body) = get(&c, proxy, "ring", "/", &[("x-user", &u)])
                .await
                .unwrap();
            if round == 0 {
                chosen.insert(u, body);
            } else {
                assert_eq!(chosen[&u], body, "same key, same endpoint");
            }
        }
    }
    let distinct: std::collections::HashSet<_> = chosen.values().collect();
    assert_eq!(distinct.len(), 3, "30 keys use all 3 endpoints");
}

#[tokio::test]
async fn dns_endpoints_and_header_edits_and_request_ids() {
    let up = upstream("dns").await;
    let port = free_port();
    let cfg = config(
        json!([outbound(port)]),
        json!([{ "name": "t", "domains": ["d"], "routes": [{ "name": "all",
            "action": { "clusters": [{ "cluster": "dns", "weight": 100 }] },
            "requestHeaders": { "set": { "x-routed-by": "remora" }, "add": { "x-multi": "two" }, "remove": ["x-secret"] },
            "responseHeaders": { "set": { "x-resp": "edited" } } }] }]),
        json!([{ "name": "dns", "endpoints": { "dns": { "name": "localhost", "port": up.addr.port(), "refresh": "1s" } } }]),
    );
    let mut cfg = cfg;
    cfg["tracing"] = json!({ "startTraces": true });
    let _proxy = start(&cfg).await;
    let c = h1_client();
    let proxy = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, headers, body) = get(
        &c,
        proxy,
        "d",
        "/headers",
        &[("x-secret", "s"), ("x-multi", "one")],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("x-routed-by: remora"), "{body}");
    assert!(body.contains("x-multi: one\nx-multi: two"), "{body}");
    assert!(!body.contains("x-secret"), "{body}");
    assert!(
        body.contains("x-request-id: "),
        "request id started: {body}"
    );
    assert!(body.contains("traceparent: 00-"), "trace started: {body}");
    assert_eq!(headers["x-resp"], "edited");

    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (_, _, body) = get(
        &c,
        proxy,
        "d",
        "/headers",
        &[("traceparent", tp), ("x-request-id", "abc")],
    )
    .await
    .unwrap();
    assert!(body.contains(&format!("traceparent: {tp}")), "{body}");
    assert!(body.contains("x-request-id: abc"), "{body}");
}
