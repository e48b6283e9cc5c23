//! Hot reload, draining, graceful shutdown, the admin port and the access
//! log; and the real binary (`run`, `wait-ready`, SIGTERM, `init-iptables`).

mod common;

use std::{net::SocketAddr, process::Stdio, time::Duration};

use common::*;
use remora_sidecar::{Options, Proxy};
use serde_json::{Value, json};

fn proxy_addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

fn two_cluster_config(port: u16, admin: u16, a: SocketAddr, b: SocketAddr, to: &str) -> Value {
    let mut cfg = config(
        json!([outbound(port)]),
        json!([one_route("svc", to, json!({}))]),
        json!([static_cluster("a", &[a]), static_cluster("b", &[b])]),
    );
    cfg["admin"] = json!({ "address": addr(admin), "controlAddress": addr(free_port()) });
    cfg
}

async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let c = h1_client();
    let (s, _, body) = get(&c, admin, "admin", path, &[]).await.unwrap();
    (s.as_u16(), body)
}

#[tokio::test]
async fn reload_under_load_drops_nothing_and_switches_routes() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let (port, admin) = (free_port(), free_port());
    let proxy = start(&two_cluster_config(port, admin, a.addr, b.addr, "a")).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let c = h1_client();
            let (mut ok, mut failed) = (0, 0);
            for _ in 0..3000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match get(&c, proxy_addr(port), "svc", "/", &[]).await {
                    Ok((s, _, _)) if s == 200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let to = if i % 2 == 0 { "b" } else { "a" };
        proxy
            .reload(parse(&two_cluster_config(port, admin, a.addr, b.addr, to)))
            .await
            .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for t in load {
        let (o, f) = t.await.unwrap();
        ok += o;
        failed += f;
    }
    assert_eq!(failed, 0, "{ok} ok");
    assert!(a.hits() > 0 && b.hits() > 0);
    // The last reload routed to "a".
    let before = b.hits();
    let c = h1_client();
    for _ in 0..10 {
        assert_eq!(
            get(&c, proxy_addr(port), "svc", "/", &[]).await.unwrap().2,
            "a"
        );
    }
    assert_eq!(b.hits(), before);
    let m = proxy.metrics_text();
    assert_eq!(metric(&m, "config_reload_total{result=\"applied\"}"), 10);
}

#[tokio::test]
async fn watched_file_reloads_and_invalid_file_is_refused() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let good = two_cluster_config(port, admin, a.addr, b.addr, "a");
    std::fs::write(&path, serde_json::to_vec_pretty(&good).unwrap()).unwrap();
    let opts = Options {
        config_path: Some(path.clone()),
        watch_interval: Some(Duration::from_millis(50)),
        ..Default::default()
    };
    let proxy = Proxy::start(parse(&good), opts).await.unwrap();
    let c = h1_client();
    assert_eq!(
        get(&c, proxy_addr(port), "svc", "/", &[]).await.unwrap().2,
        "a"
    );

    // Invalid: a route to a cluster that does not exist.
    let mut bad = two_cluster_config(port, admin, a.addr, b.addr, "missing");
    bad["routes"][0]["routes"][0]["action"]["clusters"][0]["cluster"] = json!("nope");
    std::fs::write(&path, serde_json::to_vec(&bad).unwrap()).unwrap();
    let rejected = eventually(Duration::from_secs(10), async || {
        metric(
            &proxy.metrics_text(),
            "config_reload_total{result=\"rejected\"}",
        ) == 1
    })
    .await;
    assert!(rejected, "{}", proxy.metrics_text());
    assert_eq!(
        get(&c, proxy_addr(port), "svc", "/", &[]).await.unwrap().2,
        "a",
        "old config serves"
    );
    // Truncated JSON is refused too.
    std::fs::write(&path, b"{\"version\": 1, \"listen").unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            metric(
                &proxy.metrics_text(),
                "config_reload_total{result=\"rejected\"}",
            ) == 2
        })
        .await
    );

    std::fs::write(
        &path,
        serde_json::to_vec(&two_cluster_config(port, admin, a.addr, b.addr, "b")).unwrap(),
    )
    .unwrap();
    let switched = eventually(Duration::from_secs(10), async || {
        get(&c, proxy_addr(port), "svc", "/", &[])
            .await
            .is_ok_and(|r| r.2 == "b")
    })
    .await;
    assert!(switched);
    let (_, dump) = admin_get(proxy.control_addr(), "/config_dump").await;
    let dumped: Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dumped["routes"][0]["routes"][0]["action"]["clusters"][0]["cluster"],
        "b"
    );
}

#[tokio::test]
async fn reload_adds_and_removes_listeners() {
    let a = upstream("a").await;
    let (port, port2, admin) = (free_port(), free_port(), free_port());
    let cfg = two_cluster_config(port, admin, a.addr, a.addr, "a");
    let proxy = start(&cfg).await;
    let mut next = cfg.clone();
    next["listeners"] =
        json!([{ "name": "second", "direction": "outbound", "address": addr(port2) }]);
    proxy.reload(parse(&next)).await.unwrap();
    let c = h1_client();
    assert_eq!(
        get(&c, proxy_addr(port2), "svc", "/", &[]).await.unwrap().2,
        "a"
    );
    let refused = eventually(Duration::from_secs(5), async || {
        tokio::net::TcpStream::connect(proxy_addr(port))
            .await
            .is_err()
    })
    .await;
    assert!(refused, "removed listener stops accepting");
    assert_eq!(proxy.listener_addr("second").await, Some(proxy_addr(port2)));
    assert_eq!(proxy.listener_addr("outbound").await, None);
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let up = upstream("slow").await;
    let port = free_port();
    let cfg = config(
        json!([outbound(port)]),
        json!([one_route("svc", "svc", json!({}))]),
        json!([static_cluster("svc", &[up.addr])]),
    );
    let proxy = start(&cfg).await;
    let mut inflight = Vec::new();
    for _ in 0..10 {
        inflight.push(tokio::spawn(async move {
            let c = h1_client();
            get(&c, proxy_addr(port), "svc", "/slow/400", &[]).await
        }));
    }
    assert!(eventually(Duration::from_secs(5), async || up.hits() == 10).await);
    let left = proxy.shutdown(Duration::from_secs(10)).await;
    assert_eq!(left, 0);
    for t in inflight {
        let (status, _, body) = t.await.unwrap().expect("in-flight request completes");
        assert_eq!((status.as_u16(), body.as_str()), (200, "slow"));
    }
    assert!(
        tokio::net::TcpStream::connect(proxy_addr(port))
            .await
            .is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn admin_endpoints_and_access_log() {
    let up = upstream("app").await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mut cfg = config(
        json!([outbound(port)]),
        json!([one_route("svc", "svc", json!({}))]),
        json!([static_cluster("svc", &[up.addr])]),
    );
    cfg["accessLog"] = json!({ "enabled": true, "path": log.display().to_string() });
    let proxy = start(&cfg).await;
    let admin = proxy.admin_addr();
    assert_eq!(admin_get(admin, "/ready").await.0, 200);
    assert_eq!(admin_get(admin, "/live").await.0, 200);
    let c = h1_client();
    let (s, _, _) = get(
        &c,
        proxy_addr(port),
        "svc",
        "/hello?x=1",
        &[("x-request-id", "req-1")],
    )
    .await
    .unwrap();
    assert_eq!(s, 200);
    let (_, m) = admin_get(admin, "/metrics").await;
    for name in [
        "downstream_connection_active{listener=\"outbound\"}",
        "downstream_request_active{listener=\"outbound\"}",
        "downstream_request_total{listener=\"outbound\"} 1",
        "downstream_request_time_total{listener=\"outbound\"}",
        "downstream_process_time_total{listener=\"outbound\"}",
        "downstream_request_failed{listener=\"outbound\"} 0",
        "upstream_connection_active{cluster=\"svc\"} 1",
        "upstream_request_active{cluster=\"svc\"} 0",
        "upstream_request_total{cluster=\"svc\"} 1",
        "upstream_request_duration_time_total{cluster=\"svc\"}",
        "upstream_request_failure_eject{cluster=\"svc\"} 0",
        "upstream_request_timeout{cluster=\"svc\"} 0",
        "upstream_request_retry{cluster=\"svc\"} 0",
        "downstream_request_duration_seconds_count{listener=\"outbound\"} 1",
    ] {
        assert!(m.contains(name), "missing {name}:\n{m}");
    }
    let control = proxy.control_addr();
    assert!(control.ip().is_loopback());
    let (_, dump) = admin_get(control, "/config_dump").await;
    assert_eq!(parse(&serde_json::from_str(&dump).unwrap()), parse(&cfg));

    let logged = eventually(Duration::from_secs(5), async || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.contains("req-1"))
    })
    .await;
    assert!(logged);
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["http.url"], "/hello?x=1");
    assert_eq!(line["http.method"], "GET");
    assert_eq!(line["response_code"], 200);
    assert_eq!(line["upstream.address"], up.addr.to_string());
    assert_eq!(line["downstream.protocol"], "HTTP/1.1");
    assert_eq!(line["host.name"], "svc");
    assert_eq!(line["response.size"], 3);
    assert_eq!(line["proxy.process.fail"], false);
    assert!(line["duration"].as_u64().unwrap() > 0);

    let c = h1_client();
    let resp = c
        .request(
            http::Request::post(format!("http://{control}/drain"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(admin_get(admin, "/ready").await.0, 503);
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_remora-sidecar")
}

#[tokio::test]
async fn binary_runs_reports_ready_serves_and_exits_0_on_sigterm() {
    let up = upstream("app").await;
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let mut cfg = two_cluster_config(port, admin, up.addr, up.addr, "a");
    cfg["runtime"] = json!({ "drainTimeout": "5s" });
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let mut child = tokio::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ready = tokio::process::Command::new(bin())
        .args(["wait-ready", "--admin", &addr(admin), "--timeout", "20s"])
        .output()
        .await
        .unwrap();
    assert!(
        ready.status.success(),
        "{}",
        String::from_utf8_lossy(&ready.stderr)
    );
    let (out, err) = curl(&["-H", "Host: svc", &format!("http://127.0.0.1:{port}/")]).await;
    assert_eq!(out, "app", "{err}");
    // A request in flight at SIGTERM still completes.
    let slow = tokio::spawn(curl_owned(format!("http://127.0.0.1:{port}/slow/500")));
    assert!(eventually(Duration::from_secs(5), async || up.hits() >= 2).await);
    let pid = child.id().unwrap() as i32;
    // SAFETY: sending a signal to the child we spawned.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(slow.await.unwrap().0, "app");
}

async fn curl_owned(url: String) -> (String, String) {
    curl(&["-H", "Host: svc", &url]).await
}

#[tokio::test]
async fn binary_wait_ready_times_out_and_init_iptables_dry_run() {
    let out = tokio::process::Command::new(bin())
        .args([
            "wait-ready",
            "--admin",
            &addr(free_port()),
            "--timeout",
            "300ms",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let out = tokio::process::Command::new(bin())
        .args([
            "init-iptables",
            "--proxy-uid",
            "1337",
            "--inbound-port",
            "15006",
            "--outbound-port",
            "15001",
            "--exclude-inbound-ports",
            "15000,15020",
            "--exclude-outbound-cidrs",
            "10.96.0.1/32",
            "--dry-run",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let rules = String::from_utf8(out.stdout).unwrap();
    assert!(
        rules.contains("-A REMORA_INBOUND -p tcp --dport 15020 -j RETURN"),
        "{rules}"
    );
    assert!(
        rules.contains("-A REMORA_OUTPUT -d 10.96.0.1/32 -j RETURN"),
        "{rules}"
    );
    assert!(rules.ends_with("COMMIT\n"));
    // IPv6 is refused before any rule is written: only IPv4 is captured.
    let out = tokio::process::Command::new(bin())
        .args([
            "init-iptables",
            "--proxy-uid",
            "1337",
            "--inbound-port",
            "15006",
            "--outbound-port",
            "15001",
            "--exclude-outbound-cidrs",
            "10.96.0.1/32,fd00::/8",
            "--dry-run",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no rules at all");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"fd00::/8\" is an IPv6 CIDR"), "{err}");
    let out = tokio::process::Command::new(bin())
        .args([
            "init-iptables",
            "--proxy-uid",
            "1",
            "--inbound-port",
            "1",
            "--outbound-port",
            "2",
            "--exclude-outbound-cidrs",
            "nope",
            "--dry-run",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test]
async fn example_local_config_loads_and_transparent_falls_back_to_local_address() {
    let example = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/local/sidecar-config.json"
    ))
    .unwrap();
    let mut v: Value = serde_json::from_slice(&example).unwrap();
    // Same document on free ports, access log off.
    v["listeners"][0]["address"] = json!(addr(free_port()));
    v["listeners"][1]["address"] = json!(addr(free_port()));
    v["admin"]["address"] = json!(addr(free_port()));
    v["admin"]["controlAddress"] = json!(addr(free_port()));
    v["accessLog"]["enabled"] = json!(false);
    let proxy = start(&v).await;
    assert_eq!(admin_get(proxy.admin_addr(), "/ready").await.0, 200);

    // Transparent outbound without an iptables redirect: the original
    // destination is the listener itself, so the table for its port routes.
    let up = upstream("by-port").await;
    let port = free_port();
    let mut t = one_route("by-port", "svc", json!({}));
    t["domains"] = json!([]);
    t["port"] = json!(port);
    let cfg = config(
        json!([{ "name": "capture", "direction": "outbound", "address": addr(port), "transparent": true }]),
        json!([t]),
        json!([static_cluster("svc", &[up.addr])]),
    );
    let _p = start(&cfg).await;
    let c = h1_client();
    assert_eq!(
        get(&c, proxy_addr(port), "anything", "/", &[])
            .await
            .unwrap()
            .2,
        "by-port"
    );

    // A pass-through cluster on a connection that was not redirected would
    // loop back to the listener: refused with a flag instead.
    let port = free_port();
    let cfg = config(
        json!([{ "name": "capture", "direction": "outbound", "address": addr(port),
                 "transparent": true, "defaultCluster": "passthrough" }]),
        json!([]),
        json!([{ "name": "passthrough", "endpoints": "originalDestination" }]),
    );
    let _p = start(&cfg).await;
    let (status, headers, _) = get(&c, proxy_addr(port), "anything", "/", &[])
        .await
        .unwrap();
    assert_eq!(status, 502);
    assert_eq!(headers["x-remora-flags"], "LOOP");
}

#[tokio::test]
async fn taken_addresses_fail_start_and_reject_reload() {
    let a = upstream("a").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let (port, admin) = (free_port(), free_port());
    let cfg = two_cluster_config(taken_port, admin, a.addr, a.addr, "a");
    let err = Proxy::start(parse(&cfg), Options::default())
        .await
        .err()
        .expect("bind fails");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{taken_port}")),
        "{err}"
    );

    let proxy = start(&two_cluster_config(port, free_port(), a.addr, a.addr, "a")).await;
    let mut next = two_cluster_config(port, admin, a.addr, a.addr, "a");
    next["listeners"] = json!([outbound(port), { "name": "extra", "direction": "outbound", "address": addr(taken_port) }]);
    assert!(proxy.reload(parse(&next)).await.is_err());
    let c = h1_client();
    assert_eq!(
        get(&c, proxy_addr(port), "svc", "/", &[]).await.unwrap().2,
        "a"
    );
    assert_eq!(
        metric(
            &proxy.metrics_text(),
            "config_reload_total{result=\"rejected\"}"
        ),
        1
    );
}

/// The webhook rewrites the app's probes to the admin port; the proxy runs the
/// originals against 127.0.0.1 and answers with their result.
#[tokio::test]
async fn admin_answers_the_apps_rewritten_probes() {
    let app = upstream("app").await;
    let probes: remora_api::config::AppProbes = serde_json::from_value(json!({
        "/app-health/web/readyz": { "httpGet": { "path": "/headers", "port": app.addr.port(),
            "headers": [{ "name": "x-probe", "value": "ready" }] } },
        "/app-health/web/livez": { "httpGet": { "path": "/status/503", "port": app.addr.port() } },
        "/app-health/web/startupz": { "tcpSocket": { "port": app.addr.port() } },
        "/app-health/db/readyz": { "tcpSocket": { "port": dead_addr().port() } },
        "/app-health/slow/readyz": { "httpGet": { "path": "/slow/5000", "port": app.addr.port(),
            "timeoutSeconds": 1 } }
    }))
    .unwrap();
    let cfg = config(json!([]), json!([]), json!([]));
    let opts = Options {
        app_probes: probes,
        ..Default::default()
    };
    let proxy = Proxy::start(parse(&cfg), opts).await.unwrap();
    let admin = proxy.admin_addr();

    let (status, body) = admin_get(admin, "/app-health/web/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.hits(), 1, "the probe reached the app");
    // The app's own answer decides.
    assert_eq!(admin_get(admin, "/app-health/web/livez").await.0, 503);
    assert_eq!(admin_get(admin, "/app-health/web/startupz").await.0, 200);
    let (status, body) = admin_get(admin, "/app-health/db/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("failed"), "{body}");
    let started = std::time::Instant::now();
    let (status, body) = admin_get(admin, "/app-health/slow/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("timed out"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the probe's own timeout"
    );
    assert_eq!(admin_get(admin, "/app-health/nope/readyz").await.0, 404);
}

/// An app serving HTTPS with a certificate nobody trusts (signed by a CA of
/// its own, for another name), answering `GET /secure` with 204 and the rest
/// with 500.
async fn https_app() -> SocketAddr {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let ca = remora_ca::MeshCa::generate("elsewhere.example").unwrap();
    let leaf = ca
        .issue(&remora_ca::LeafRequest {
            spiffe_id: "spiffe://elsewhere.example/ns/x/sa/y".into(),
            dns_names: vec!["app.elsewhere.example".into()],
            extra_uris: vec![],
            ttl: Duration::from_secs(3600),
        })
        .unwrap();
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        // Bounded: this test makes two probes.
        for _ in 0..16 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let status = if req.uri().path() == "/secure" {
                            204
                        } else {
                            500
                        };
                        let mut r =
                            http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(r)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// `scheme: HTTPS` probes run in the proxy too, without verifying the app's
/// certificate (as the kubelet does), so the app's HTTPS port stays captured.
#[tokio::test]
async fn admin_runs_the_apps_https_probes() {
    let app = https_app().await;
    let plain = upstream("plain").await;
    let probes: remora_api::config::AppProbes = serde_json::from_value(json!({
        "/app-health/web/readyz": { "httpGet": { "path": "/secure", "port": app.port(), "https": true } },
        "/app-health/web/livez": { "httpGet": { "path": "/other", "port": app.port(), "https": true } },
        "/app-health/plain/readyz": { "httpGet": { "path": "/", "port": plain.addr.port(), "https": true } }
    }))
    .unwrap();
    let opts = Options {
        app_probes: probes,
        ..Default::default()
    };
    let proxy = Proxy::start(parse(&config(json!([]), json!([]), json!([]))), opts)
        .await
        .unwrap();
    let admin = proxy.admin_addr();
    let (status, body) = admin_get(admin, "/app-health/web/readyz").await;
    assert_eq!(status, 204, "the app's own status, over TLS: {body}");
    assert_eq!(admin_get(admin, "/app-health/web/livez").await.0, 500);
    let (status, body) = admin_get(admin, "/app-health/plain/readyz").await;
    assert_eq!(status, 503, "no TLS there: {body}");
    assert_eq!(plain.hits(), 0, "a TLS ClientHello is not an HTTP request");
}

/// The pod's own settings (from the webhook's env) survive every reload: the
/// namespace's new document is laid under them again, listeners included.
#[tokio::test]
async fn reloaded_configs_keep_the_pods_own_settings() {
    use remora_sidecar::pod_overrides::{LogLevel, PodOverrides};
    let (rendered, own, moved) = (free_port(), free_port(), free_port());
    let opts = Options {
        overrides: PodOverrides {
            log_level: Some(LogLevel::Warn),
            worker_threads: Some(3),
            drain_timeout: Some("9s".parse().unwrap()),
            outbound_port: Some(own),
            ..PodOverrides::default()
        },
        ..Default::default()
    };
    let cfg = |port: u16, workers: u16| {
        let mut c = config(json!([outbound(port)]), json!([]), json!([]));
        c["runtime"] = json!({ "workerThreads": workers, "logLevel": "debug" });
        c
    };
    let proxy = Proxy::start(parse(&cfg(rendered, 1)), opts).await.unwrap();
    assert_eq!(
        proxy.listener_addr("outbound").await.unwrap().port(),
        own,
        "the pod's port, not the rendered one"
    );
    // The namespace's config changes: another port, other runtime settings.
    proxy.reload(parse(&cfg(moved, 2))).await.unwrap();
    assert_eq!(proxy.listener_addr("outbound").await.unwrap().port(), own);
    let effective = proxy.shared.snapshot.load().config.clone();
    assert_eq!(effective.runtime.worker_threads, 3);
    assert_eq!(effective.runtime.log_level, "warn");
    assert_eq!(effective.runtime.drain_timeout.to_string(), "9s");
    assert!(std::net::TcpStream::connect(("127.0.0.1", own)).is_ok());
}
