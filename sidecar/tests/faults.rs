//! Fault injection: delay and abort shares hold over 10,000 requests, a
//! header-triggered fault hits only the marked requests, and gRPC callers get
//! the configured gRPC status.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn route(name: &str, extra: Value) -> Value {
    let mut r =
        json!({ "name": name, "action": { "clusters": [{ "cluster": "app", "weight": 100 }] } });
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_and_delay_shares_hold_and_header_faults_hit_only_marked_requests() {
    const N: usize = 10_000;
    let app = upstream("app").await;
    let port = free_port();
    let cfg = config(
        json!([outbound(port)]),
        json!([{ "name": "svc", "domains": ["svc"], "routes": [
            // Marked requests (a header, as a chaos test sends) always fail.
            route("marked", json!({
                "match": { "headers": [{ "name": "x-chaos", "value": { "exact": "on" } }] },
                "fault": { "abort": { "percentage": 100.0, "httpStatus": 418 } } })),
            route("all", json!({ "fault": {
                "abort": { "percentage": 20.0, "httpStatus": 503 },
                "delay": { "percentage": 10.0, "delay": "20ms" } } })),
        ]}]),
        json!([static_cluster("app", &[app.addr])]),
    );
    let proxy = start(&cfg).await;

    let mut workers = Vec::new();
    for w in 0..16 {
        workers.push(tokio::spawn(async move {
            let c = h1_client();
            let (mut aborted, mut delayed, mut ok) = (0usize, 0usize, 0usize);
            for _ in (w..N).step_by(16) {
                let t = Instant::now();
                let (s, h, _) = get(&c, local(port), "svc", "/", &[]).await.unwrap();
                match s.as_u16() {
                    503 => {
                        assert_eq!(h.get("x-remora-flags").unwrap(), "FI");
                        aborted += 1;
                    }
                    200 => ok += 1,
                    other => panic!("unexpected status {other}"),
                }
                // The delay is decided independently of the abort.
                if t.elapsed() >= Duration::from_millis(20) {
                    delayed += 1;
                }
            }
            (aborted, delayed, ok)
        }));
    }
    let (mut aborted, mut delayed, mut ok) = (0, 0, 0);
    for w in workers {
        let (a, d, o) = w.await.unwrap();
        (aborted, delayed, ok) = (aborted + a, delayed + d, ok + o);
    }
    assert_eq!(aborted + ok, N);
    assert_eq!(app.hits(), ok, "aborted requests never reach the app");
    // 20 % ± 1 % of 10,000 (σ = 40, so ±100 is 2.5 σ), 10 % ± 1 % (σ = 30).
    assert!((1900..=2100).contains(&aborted), "{aborted} aborted of {N}");
    let m = proxy.metrics_text();
    let injected = |kind: &str| {
        metric(
            &m,
            &format!("downstream_fault_injected_total{{listener=\"outbound\",kind=\"{kind}\"}}"),
        ) as usize
    };
    assert_eq!(injected("abort"), aborted);
    let delays = injected("delay");
    assert!((900..=1100).contains(&delays), "{delays} delayed of {N}");
    // Every delayed request really waited (a busy machine may slow others too).
    assert!(
        delayed >= delays,
        "{delayed} requests took 20 ms, {delays} were delayed"
    );

    let c = h1_client();
    for _ in 0..200 {
        let (s, h, _) = get(&c, local(port), "svc", "/", &[("x-chaos", "on")])
            .await
            .unwrap();
        assert_eq!(s, 418);
        assert_eq!(h.get("x-remora-flags").unwrap(), "FI");
    }
    let before = app.hits();
    let (s, _, _) = get(&c, local(port), "svc", "/", &[("x-chaos", "off")])
        .await
        .unwrap();
    assert!(
        matches!(s.as_u16(), 200 | 503),
        "unmarked requests take the shared route"
    );
    assert!(app.hits() <= before + 1);
}

#[tokio::test]
async fn grpc_callers_get_the_faults_grpc_status() {
    let app = upstream("app").await;
    let port = free_port();
    let cfg = config(
        json!([outbound(port)]),
        json!([grpc_table(
            "grpc.svc",
            "echo.Echo",
            "app",
            json!({
            "fault": { "abort": { "percentage": 100.0, "httpStatus": 503, "grpcStatus": 14 } } })
        )]),
        json!([grpc_cluster("app", &[app.addr])]),
    );
    let _proxy = start(&cfg).await;
    let mut send = h2_connect(local(port)).await;
    let req = grpc_request(
        "grpc.svc",
        "Say",
        http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(
            http_body_util::Full::new(grpc_frame(b"hi")),
            |e| match e {},
        )),
    );
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "gRPC errors travel in a 200");
    assert_eq!(resp.headers().get("grpc-status").unwrap(), "14");
    assert_eq!(app.hits(), 0);
}
