//! Retries, timeouts, retry budget, outlier ejection, circuit breaking and
//! rate limits, against upstreams that fail or stall.

mod common;

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use remora_sidecar::{Options, Proxy};
use serde_json::json;

fn proxy_addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

async fn statuses(port: u16, host: &str, path: &str, n: usize) -> Vec<u16> {
    let c = h1_client();
    let mut out = Vec::new();
    for _ in 0..n {
        let (s, _, _) = get(&c, proxy_addr(port), host, path, &[]).await.unwrap();
        out.push(s.as_u16());
    }
    out
}

#[tokio::test]
async fn retries_on_5xx_and_connect_failure_reach_a_good_endpoint() {
    let bad = failing_upstream(503).await;
    let good = upstream("good").await;
    let port = free_port();
    // Sequential requests keep one in flight, so the budget's floor decides.
    let retry = json!({ "retry": { "attempts": 2, "retryOn": ["5xx", "connect-failure"], "backoff": "1ms",
        "minRetriesPerSecond": 1000 } });
    let cfg = config(
        json!([outbound(port)]),
        json!([
            one_route("five", "five", retry.clone()),
            one_route("conn", "conn", retry)
        ]),
        json!([
            static_cluster("five", &[bad.addr, good.addr]),
            static_cluster("conn", &[dead_addr(), good.addr])
        ]),
    );
    let proxy = start(&cfg).await;
    assert!(
        statuses(port, "five", "/", 20)
            .await
            .iter()
            .all(|s| *s == 200)
    );
    assert!(
        bad.hits() >= 5,
        "round robin sent tries to the failing endpoint"
    );
    assert!(
        statuses(port, "conn", "/", 20)
            .await
            .iter()
            .all(|s| *s == 200)
    );
    let m = proxy.metrics_text();
    assert!(
        metric(&m, "upstream_request_retry{cluster=\"five\"}") >= 5,
        "{m}"
    );
    assert!(
        metric(&m, "upstream_request_retry{cluster=\"conn\"}") >= 5,
        "{m}"
    );
    assert!(
        metric(&m, "upstream_connection_con_fail{cluster=\"conn\"}") >= 5,
        "{m}"
    );
}

#[tokio::test]
async fn retried_post_body_is_replayed() {
    let bad = failing_upstream(502).await;
    let good = upstream("good").await;
    let port = free_port();
    let cfg = config(
        json!([outbound(port)]),
        json!([one_route(
            "svc",
            "svc",
            json!({ "retry": { "attempts": 1, "retryOn": ["gateway-error"], "backoff": "1ms" } })
        )]),
        json!([static_cluster("svc", &[bad.addr, good.addr])]),
    );
    let _proxy = start(&cfg).await;
    let c = h1_client();
    for i in 0..6 {
        let body = format!("body number {i} ").repeat(100);
        let req = Request::post(format!("http://127.0.0.1:{port}/echo"))
            .header("host", "svc")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let resp = c.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.into_body().collect().await.unwrap().to_bytes(),
            body.as_bytes()
        );
    }
    assert!(bad.hits() >= 2);
}

#[tokio::test]
async fn per_try_timeout_retries_and_route_timeout_answers_504() {
    let stall = stalling_upstream().await;
    let good = upstream("good").await;
    let port = free_port();
    let cfg = config(
        json!([outbound(port)]),
        json!([
            one_route(
                "mixed",
                "mixed",
                json!({ "timeout": "10s",
                "retry": { "attempts": 2, "perTryTimeout": "200ms", "retryOn": ["gateway-error"], "backoff": "1ms" } })
            ),
            one_route("stall", "stall", json!({ "timeout": "300ms" }))
        ]),
        json!([
            static_cluster("mixed", &[stall.addr, good.addr]),
            static_cluster("stall", &[stall.addr])
        ]),
    );
    let proxy = start(&cfg).await;
    assert!(
        statuses(port, "mixed", "/", 6)
            .await
            .iter()
            .all(|s| *s == 200)
    );
    let c = h1_client();
    let (status, headers, _) = get(&c, proxy_addr(port), "stall", "/", &[]).await.unwrap();
    assert_eq!(status, 504);
    assert_eq!(headers["x-remora-flags"], "UT");
    let m = proxy.metrics_text();
    assert!(
        metric(&m, "upstream_request_timeout{cluster=\"mixed\"}") >= 3,
        "{m}"
    );
    assert_eq!(
        metric(&m, "upstream_request_timeout{cluster=\"stall\"}"),
        1,
        "{m}"
    );
}

#[tokio::test]
async fn retry_budget_keeps_retries_from_multiplying_load() {
    let bad = failing_upstream(503).await;
    let port = free_port();
    let cfg = config(
        json!([outbound(port)]),
        json!([one_route(
            "svc",
            "svc",
            json!({ "retry": {
            "attempts": 3, "retryOn": ["5xx"], "budgetPercent": 0, "minRetriesPerSecond": 2, "backoff": "1ms" } })
        )]),
        json!([static_cluster("svc", &[bad.addr])]),
    );
    let proxy = start(&cfg).await;
    let got = statuses(port, "svc", "/", 30).await;
    assert!(got.iter().all(|s| *s == 503));
    // Without a budget: 30 × 4 tries. With it: 30 + 2 per second elapsed.
    assert!(
        bad.hits() < 45,
        "{} upstream tries for 30 requests",
        bad.hits()
    );
    let m = proxy.metrics_text();
    assert!(
        metric(&m, "upstream_request_retry_overflow{cluster=\"svc\"}") > 0,
        "{m}"
    );
}

#[tokio::test]
async fn outlier_detection_ejects_and_caps_at_max_ejection_percent() {
    let bad = failing_upstream(500).await;
    let good = upstream("good").await;
    let (bad1, bad2) = (failing_upstream(500).await, failing_upstream(500).await);
    let port = free_port();
    let od = json!({ "consecutive5xx": 3, "baseEjectionTime": "30s", "maxEjectionPercent": 50 });
    let mut mixed = static_cluster("mixed", &[bad.addr, good.addr]);
    mixed["outlierDetection"] = od.clone();
    let mut allbad = static_cluster("allbad", &[bad1.addr, bad2.addr]);
    allbad["outlierDetection"] = od;
    let cfg = config(
        json!([outbound(port)]),
        json!([
            one_route("mixed", "mixed", json!({})),
            one_route("allbad", "allbad", json!({}))
        ]),
        json!([mixed, allbad]),
    );
    let proxy = start(&cfg).await;
    let got = statuses(port, "mixed", "/", 40).await;
    assert_eq!(bad.hits(), 3, "ejected after 3 consecutive 5xx");
    assert_eq!(got.iter().filter(|s| **s == 200).count(), 37);

    statuses(port, "allbad", "/", 40).await;
    let m = proxy.metrics_text();
    assert_eq!(
        metric(&m, "upstream_request_failure_eject{cluster=\"mixed\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        metric(&m, "upstream_request_failure_eject{cluster=\"allbad\"}"),
        1,
        "never more than 50% of 2 endpoints"
    );
    assert!(bad1.hits().min(bad2.hits()) == 3 && bad1.hits().max(bad2.hits()) >= 30);
}

#[tokio::test]
async fn circuit_breaker_refuses_beyond_max_pending() {
    let up = upstream("slow").await;
    let port = free_port();
    let mut cl = static_cluster("slow", &[up.addr]);
    cl["limits"] = json!({ "maxConnections": 1, "maxPendingRequests": 0 });
    let cfg = config(
        json!([outbound(port)]),
        json!([one_route("slow", "slow", json!({}))]),
        json!([cl]),
    );
    let proxy = start(&cfg).await;
    let first = tokio::spawn(async move {
        let c = h1_client();
        get(&c, proxy_addr(port), "slow", "/slow/1500", &[])
            .await
            .unwrap()
            .0
    });
    assert!(eventually(Duration::from_secs(5), async || up.hits() == 1).await);
    let c = h1_client();
    let (status, headers, _) = get(&c, proxy_addr(port), "slow", "/", &[]).await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(headers["x-remora-flags"], "UO");
    assert_eq!(first.await.unwrap(), 200);
    let m = proxy.metrics_text();
    assert_eq!(
        metric(&m, "upstream_request_pending_overflow{cluster=\"slow\"}"),
        1,
        "{m}"
    );
}

#[tokio::test]
async fn rate_limits_answer_429_with_headers_per_header_and_by_pod_labels() {
    let app = upstream("app").await;
    let port = free_port();
    let mut cfg = config(
        json!([{ "name": "inbound", "direction": "inbound", "address": addr(port), "defaultCluster": "app" }]),
        json!([]),
        json!([static_cluster("app", &[app.addr])]),
    );
    cfg["rateLimits"] = json!([
        { "name": "ns/p/all", "match": { "path": { "prefix": "/all" } },
          "bucket": { "requests": 1, "per": "1h", "burst": 3 },
          "response": { "status": 429, "headers": { "retry-after": "60" } } },
        { "name": "ns/p/user", "match": { "path": { "prefix": "/user" } },
          "bucket": { "requests": 1, "per": "1h", "burst": 2, "perHeader": "x-user" } },
        { "name": "ns/p/other-pods", "podSelector": { "app": "other" },
          "bucket": { "requests": 1, "per": "1h", "burst": 1 } }
    ]);
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels");
    std::fs::write(&labels, "app=\"reviews\"\nversion=\"v1\"\n").unwrap();
    let opts = Options {
        pod_labels: remora_sidecar::ratelimit::read_pod_labels(&labels).unwrap(),
        ..Default::default()
    };
    let proxy = Proxy::start(parse(&cfg), opts).await.unwrap();
    let c = h1_client();
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let (s, h, _) = get(&c, proxy_addr(port), "app", "/all", &[]).await.unwrap();
        assert_eq!(s, 200);
        assert_eq!(h["x-ratelimit-limit"], "1");
        remaining.push(h["x-ratelimit-remaining"].to_str().unwrap().to_string());
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let (s, h, _) = get(&c, proxy_addr(port), "app", "/all", &[]).await.unwrap();
    assert_eq!(s, 429);
    assert_eq!(h["retry-after"], "60");
    assert_eq!(h["x-remora-flags"], "RL");
    assert_eq!(h["x-ratelimit-remaining"], "0");

    for user in ["a", "a"] {
        assert_eq!(
            get(&c, proxy_addr(port), "app", "/user", &[("x-user", user)])
                .await
                .unwrap()
                .0,
            200
        );
    }
    assert_eq!(
        get(&c, proxy_addr(port), "app", "/user", &[("x-user", "a")])
            .await
            .unwrap()
            .0,
        429
    );
    assert_eq!(
        get(&c, proxy_addr(port), "app", "/user", &[("x-user", "b")])
            .await
            .unwrap()
            .0,
        200
    );
    // The limit for app=other does not apply to this pod.
    assert!(
        statuses(port, "app", "/free", 5)
            .await
            .iter()
            .all(|s| *s == 200)
    );

    // gRPC callers get RESOURCE_EXHAUSTED.
    let mut h2 = h2_connect(proxy_addr(port)).await;
    let req = Request::post("http://app/all")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()).map_err(Into::into).boxed())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "8");

    let m = proxy.metrics_text();
    assert_eq!(
        metric(
            &m,
            "ratelimit_requests_total{limit=\"ns/p/all\",result=\"limited\"}"
        ),
        2,
        "{m}"
    );
    assert_eq!(app.hits(), 3 + 3 + 5);
}

#[tokio::test]
async fn grpc_unavailable_is_retried_by_grpc_status() {
    let bad = failing_upstream(200).await;
    let good = upstream("good").await;
    let port = free_port();
    let mut cl = static_cluster("echo", &[bad.addr, good.addr]);
    cl["protocol"] = json!("grpc");
    let cfg = config(
        json!([outbound(port)]),
        json!([one_route(
            "echo.ns:50051",
            "echo",
            json!({ "retry": {
            "attempts": 2, "retryOn": ["unavailable"], "backoff": "1ms", "minRetriesPerSecond": 1000 } })
        )]),
        json!([cl]),
    );
    let proxy = start(&cfg).await;
    let mut c = h2_connect(proxy_addr(port)).await;
    for i in 0..6 {
        let msg = Bytes::from(vec![0, 0, 0, 0, 1, i]);
        let req = Request::post("http://echo.ns:50051/echo.Echo/Unary")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(msg.clone()).map_err(Into::into).boxed())
            .unwrap();
        let resp = c.send_request(req).await.unwrap();
        assert!(
            resp.headers().get("grpc-status").is_none(),
            "not a trailers-only failure"
        );
        let body = resp.into_body().collect().await.unwrap();
        assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(
            body.to_bytes(),
            msg,
            "the replayed request body reached the good endpoint"
        );
    }
    assert!(bad.hits() >= 3);
    assert!(
        metric(
            &proxy.metrics_text(),
            "upstream_request_retry{cluster=\"echo\"}"
        ) >= 3
    );
}
