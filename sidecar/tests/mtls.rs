//! Sidecar-to-sidecar mTLS with certificates from the operator's issuing code
//! (`remora-ca`): identity, trust, revocation, strict/permissive, rotation
//! under load, and authorization. Two sidecars on 127.0.0.1: a client side
//! (outbound listener, cluster in `mesh` TLS mode) and a server side
//! (inbound listener in front of a test app).

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use common::*;
use http_body_util::{BodyExt, Full};
use remora_ca::{IssuedLeaf, LeafRequest, MeshCa};
use remora_sidecar::{Options, Proxy, ProxyHandle};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TD: &str = "cluster.local";

fn spiffe(sa: &str) -> String {
    format!("spiffe://{TD}/ns/demo/sa/{sa}")
}

/// A workload's mounted certificate Secret, laid out as the kubelet does:
/// `tls.crt` → `..data/tls.crt`, with `..data` a symlink swapped atomically
/// on every update.
struct Mount {
    dir: PathBuf,
    generation: usize,
}

impl Mount {
    fn new(root: &Path, name: &str, leaf: &IssuedLeaf, ca_pem: &str) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
        }
        let mut m = Self { dir, generation: 0 };
        m.write(leaf, ca_pem);
        m
    }

    fn write(&mut self, leaf: &IssuedLeaf, ca_pem: &str) {
        self.generation += 1;
        let g = format!("..gen{}", self.generation);
        let gdir = self.dir.join(&g);
        std::fs::create_dir(&gdir).unwrap();
        std::fs::write(gdir.join("tls.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(gdir.join("tls.key"), &leaf.key_pem).unwrap();
        std::fs::write(gdir.join("ca.crt"), ca_pem).unwrap();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&g, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }

    fn tls(&self, mode: &str) -> Value {
        let p = |f: &str| self.dir.join(f).to_string_lossy().into_owned();
        json!({
            "mode": mode,
            "trustDomain": TD,
            "certFile": p("tls.crt"),
            "keyFile": p("tls.key"),
            "caFile": p("ca.crt"),
        })
    }
}

fn issue(ca: &MeshCa, sa: &str, ttl: Duration) -> IssuedLeaf {
    ca.issue(&LeafRequest {
        spiffe_id: spiffe(sa),
        dns_names: vec![],
        extra_uris: vec![],
        ttl,
    })
    .unwrap()
}

const HOUR: Duration = Duration::from_secs(3600);

/// The server side's access log, in the mesh's temporary directory.
fn access_log(root: &Path) -> Value {
    json!({ "enabled": true, "path": root.join("server-access.log").to_string_lossy() })
}

/// The server side: an inbound listener in front of `app` (HTTP) and
/// `echo` (opaque TCP on its own listener).
fn server_config(port: u16, tcp_port: u16, app: SocketAddr, echo: SocketAddr, tls: Value) -> Value {
    let mut cfg = config(
        json!([
            { "name": "inbound", "direction": "inbound", "address": addr(port), "defaultCluster": "app" },
            { "name": "inbound-tcp", "direction": "inbound", "address": addr(tcp_port),
              "protocol": "tcp", "defaultCluster": "echo" }
        ]),
        json!([]),
        json!([
            static_cluster("app", &[app]),
            static_cluster("echo", &[echo])
        ]),
    );
    cfg["tls"] = tls;
    cfg
}

/// The client side: `svc` (HTTP, and gRPC for `grpc.svc`) and an opaque TCP
/// listener, all to the server sidecar over mesh TLS.
fn client_config(
    port: u16,
    tcp_port: u16,
    server: SocketAddr,
    server_tcp: SocketAddr,
    tls: Value,
    expect: Option<&str>,
) -> Value {
    let mesh = |name: &str, at: SocketAddr, protocol: &str| {
        let mut c = static_cluster(name, &[at]);
        c["protocol"] = json!(protocol);
        c["tls"] = json!({ "mode": "mesh" });
        if let Some(id) = expect {
            c["tls"]["identity"] = json!(id);
        }
        c
    };
    let mut cfg = config(
        json!([
            outbound(port),
            { "name": "outbound-tcp", "direction": "outbound", "address": addr(tcp_port),
              "protocol": "tcp", "defaultCluster": "server-tcp" }
        ]),
        json!([
            one_route("svc", "server", json!({})),
            { "name": "grpc", "domains": ["grpc.svc"], "protocol": "grpc", "routes": [
                { "name": "all", "action": { "clusters": [{ "cluster": "server-grpc", "weight": 100 }] } }
            ]}
        ]),
        json!([
            mesh("server", server, "http1"),
            mesh("server-grpc", server, "grpc"),
            mesh("server-tcp", server_tcp, "tcp"),
        ]),
    );
    cfg["tls"] = tls;
    cfg
}

struct Mesh {
    root: tempfile::TempDir,
    ca: MeshCa,
    app: Upstream,
    echo: SocketAddr,
    server_mount: Mount,
    client_mount: Mount,
    server_port: u16,
    server_tcp_port: u16,
    client_port: u16,
    client_tcp_port: u16,
    server: ProxyHandle,
    client: ProxyHandle,
}

impl Mesh {
    async fn start(server_mode: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let ca = MeshCa::generate(TD).unwrap();
        let server_mount = Mount::new(
            root.path(),
            "server",
            &issue(&ca, "server", HOUR),
            ca.cert_pem(),
        );
        let client_mount = Mount::new(
            root.path(),
            "client",
            &issue(&ca, "client", HOUR),
            ca.cert_pem(),
        );
        let (app, echo) = (upstream("app").await, tcp_echo().await);
        let (server_port, server_tcp_port) = (free_port(), free_port());
        let (client_port, client_tcp_port) = (free_port(), free_port());
        let fast = || Options {
            watch_interval: Some(Duration::from_millis(50)),
            ..Default::default()
        };
        let mut cfg = server_config(
            server_port,
            server_tcp_port,
            app.addr,
            echo,
            server_mount.tls(server_mode),
        );
        cfg["accessLog"] = access_log(root.path());
        let server = Proxy::start(parse(&cfg), fast()).await.unwrap();
        let client = Proxy::start(
            parse(&client_config(
                client_port,
                client_tcp_port,
                local(server_port),
                local(server_tcp_port),
                client_mount.tls("disabled"),
                Some(&spiffe("server")),
            )),
            fast(),
        )
        .await
        .unwrap();
        Self {
            root,
            ca,
            app,
            echo,
            server_mount,
            client_mount,
            server_port,
            server_tcp_port,
            client_port,
            client_tcp_port,
            server,
            client,
        }
    }

    fn server_config(&self, tls: Value) -> Value {
        let mut cfg = server_config(
            self.server_port,
            self.server_tcp_port,
            self.app.addr,
            self.echo,
            tls,
        );
        cfg["accessLog"] = access_log(self.root.path());
        cfg
    }

    /// The server side's access log records so far.
    fn access_records(&self) -> Vec<Value> {
        let text =
            std::fs::read_to_string(self.root.path().join("server-access.log")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Another client-side sidecar calling this server with `mount`'s
    /// certificate; returns it with its HTTP and TCP listener ports.
    async fn caller(&self, mount: &Mount, expect: Option<&str>) -> (ProxyHandle, u16, u16) {
        let (port, tcp_port) = (free_port(), free_port());
        let cfg = client_config(
            port,
            tcp_port,
            local(self.server_port),
            local(self.server_tcp_port),
            mount.tls("disabled"),
            expect,
        );
        let proxy = Proxy::start(parse(&cfg), Options::default()).await.unwrap();
        (proxy, port, tcp_port)
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let (s, _, body) = get(&h1_client(), local(self.client_port), "svc", path, headers)
            .await
            .unwrap();
        (s.as_u16(), body)
    }

    /// A fresh TCP connection through both sidecars: send, read the echo.
    async fn tcp_roundtrip(&self, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        roundtrip(self.client_tcp_port, msg).await
    }
}

fn handshakes(p: &ProxyHandle, direction: &str, result: &str) -> u64 {
    metric(
        &p.metrics_text(),
        &format!("tls_handshake_total{{direction=\"{direction}\",result=\"{result}\"}}"),
    )
}

#[tokio::test]
async fn mtls_carries_the_client_identity_to_the_app() {
    let mesh = Mesh::start("strict").await;
    let (status, body) = mesh.get("/headers", &[]).await;
    assert_eq!(status, 200, "{body}");
    let xfcc = format!(
        "x-forwarded-client-cert: By={};URI={}",
        spiffe("server"),
        spiffe("client")
    );
    assert!(body.contains(&xfcc), "app saw:\n{body}");
    assert_eq!(mesh.app.hits(), 1);
    assert_eq!(handshakes(&mesh.server, "inbound", "success"), 1);
    assert_eq!(handshakes(&mesh.client, "outbound", "success"), 1);

    // Opaque TCP rides the same mTLS (ALPN remora-tcp).
    assert_eq!(mesh.tcp_roundtrip(b"ping").await.unwrap(), b"ping");
    assert_eq!(handshakes(&mesh.server, "inbound", "success"), 2);

    // gRPC over HTTP/2 (ALPN h2), with trailers.
    let mut h2 = h2_connect(local(mesh.client_port)).await;
    let body = Full::new(grpc_frame(b"hi")).map_err(Into::into).boxed();
    let resp = h2
        .send_request(grpc_request("grpc.svc", "Unary", body))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.into_body().collect().await.unwrap();
    assert_eq!(got.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(got.to_bytes(), grpc_frame(b"hi"));

    // The certificate's expiry is exported (within the hour it was issued for).
    let expiry = metric(
        &mesh.server.metrics_text(),
        "tls_certificate_expiration_timestamp_seconds",
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expiry > now && expiry <= now + 3600 + 300,
        "{expiry} vs {now}"
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_both_ways() {
    let mesh = Mesh::start("strict").await;
    // The client's certificate comes from a stranger CA; it still trusts
    // the mesh CA, so only the server can refuse it.
    let stranger = MeshCa::generate(TD).unwrap();
    let mut mount = Mount::new(
        mesh.root.path(),
        "impostor",
        &issue(&stranger, "client", HOUR),
        mesh.ca.cert_pem(),
    );
    let (impostor, port, _) = mesh.caller(&mount, None).await;
    let (s, _, body) = get(&h1_client(), local(port), "svc", "/", &[])
        .await
        .unwrap();
    // TLS 1.3 clients finish their side before the server has checked
    // their certificate: the refusal arrives as an alert on first read.
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("alert"), "{body}");
    assert_eq!(mesh.app.hits(), 0);
    // 2: a failed connection is tried once more by default.
    assert_eq!(handshakes(&mesh.server, "inbound", "untrusted"), 2);
    drop(impostor);

    // A client that trusts only the stranger CA refuses the real server.
    mount.write(&issue(&stranger, "client", HOUR), stranger.cert_pem());
    let (wary, port, _) = mesh.caller(&mount, None).await;
    let (s, _, _) = get(&h1_client(), local(port), "svc", "/", &[])
        .await
        .unwrap();
    assert_eq!(s, 503);
    assert_eq!(handshakes(&wary, "outbound", "untrusted"), 2);
    assert_eq!(mesh.app.hits(), 0);
}

#[tokio::test]
async fn a_pinned_identity_must_match() {
    let mesh = Mesh::start("strict").await;
    let (pinned, port, _) = mesh
        .caller(&mesh.client_mount, Some(&spiffe("ratings")))
        .await;
    let (s, _, body) = get(&h1_client(), local(port), "svc", "/", &[])
        .await
        .unwrap();
    assert_eq!(s, 503);
    assert!(body.contains("was expected"), "{body}");
    // Once, then once more by the default retry of a failed connection.
    assert_eq!(handshakes(&pinned, "outbound", "identity_mismatch"), 2);
}

#[tokio::test]
async fn revocation_refuses_new_handshakes_and_cuts_open_connections() {
    let mesh = Mesh::start("strict").await;
    assert_eq!(mesh.get("/", &[]).await.0, 200);
    let client_serial = remora_ca::certificate_facts(
        &std::fs::read_to_string(mesh.client_mount.dir.join("tls.crt")).unwrap(),
    )
    .unwrap()
    .serial;
    // An opaque stream stays open across the revocation.
    let mut open = tokio::net::TcpStream::connect(local(mesh.client_tcp_port))
        .await
        .unwrap();
    open.write_all(b"a").await.unwrap();
    let mut b = [0u8; 1];
    open.read_exact(&mut b).await.unwrap();

    let mut tls = mesh.server_mount.tls("strict");
    tls["revokedSerials"] = json!([client_serial]);
    mesh.server
        .reload(parse(&mesh.server_config(tls)))
        .await
        .unwrap();

    // Both open connections (the pooled HTTP one and the stream) are cut.
    let closed = metric(
        &mesh.server.metrics_text(),
        "tls_revoked_connections_closed_total",
    );
    assert_eq!(closed, 2, "{}", mesh.server.metrics_text());
    let n = tokio::time::timeout(Duration::from_secs(5), open.read(&mut b))
        .await
        .expect("the stream is closed promptly");
    assert!(matches!(n, Ok(0) | Err(_)), "stream still open: {n:?}");

    // New handshakes are refused.
    let hits = mesh.app.hits();
    let (s, body) = mesh.get("/", &[]).await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(mesh.app.hits(), hits);
    assert!(handshakes(&mesh.server, "inbound", "revoked") >= 1);
}

#[tokio::test]
async fn strict_refuses_plaintext_and_permissive_accepts_both() {
    let mesh = Mesh::start("strict").await;
    let plain = h1_client();
    let direct = || {
        get(
            &plain,
            local(mesh.server_port),
            "app",
            "/headers",
            &[("x-forwarded-client-cert", "URI=spiffe://forged")],
        )
    };
    assert!(
        direct().await.is_err(),
        "strict closes plaintext connections"
    );
    assert_eq!(handshakes(&mesh.server, "inbound", "plaintext_refused"), 1);
    assert_eq!(mesh.app.hits(), 0);

    mesh.server
        .reload(parse(
            &mesh.server_config(mesh.server_mount.tls("permissive")),
        ))
        .await
        .unwrap();
    let (s, _, body) = direct().await.unwrap();
    assert_eq!(s, 200);
    assert!(
        !body.contains("x-forwarded-client-cert"),
        "a plaintext caller cannot claim an identity:\n{body}"
    );
    let (s, body) = mesh.get("/headers", &[]).await;
    assert_eq!(s, 200);
    assert!(
        body.contains(&format!("URI={}", spiffe("client"))),
        "{body}"
    );
}

#[tokio::test]
async fn rotation_under_load_fails_nothing() {
    let mesh = Arc::new(Mesh::start("strict").await);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut load = Vec::new();
    for worker in 0..4 {
        let (mesh, stop, ok, failed) = (mesh.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let http = h1_client();
            for i in 0..5_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                // Half the workers open a new mTLS stream per round trip, so
                // handshakes happen while the files change.
                let good = if worker % 2 == 0 {
                    mesh.tcp_roundtrip(format!("{worker}-{i}").as_bytes())
                        .await
                        .is_ok_and(|b| b == format!("{worker}-{i}").as_bytes())
                } else {
                    matches!(get(&http, local(mesh.client_port), "svc", "/", &[]).await, Ok((s, _, _)) if s == 200)
                };
                if good { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Rotate both workloads three times while the load runs.
    let serial_in = |m: &Mount| {
        let pem = std::fs::read_to_string(m.dir.join("tls.crt")).unwrap();
        remora_ca::certificate_facts(&pem).unwrap().serial
    };
    let mut old_client_serials = vec![serial_in(&mesh.client_mount)];
    let mut server_mount = Mount {
        dir: mesh.server_mount.dir.clone(),
        generation: 1,
    };
    let mut client_mount = Mount {
        dir: mesh.client_mount.dir.clone(),
        generation: 1,
    };
    for round in 1..=3u32 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ttl = HOUR * (1 + round);
        server_mount.write(&issue(&mesh.ca, "server", ttl), mesh.ca.cert_pem());
        let leaf = issue(&mesh.ca, "client", ttl);
        client_mount.write(&leaf, mesh.ca.cert_pem());
        if round < 3 {
            old_client_serials.push(leaf.serial);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{ok} ok");
    assert!(ok > 100, "only {ok} requests ran");
    for p in [&mesh.server, &mesh.client] {
        let m = p.metrics_text();
        assert!(
            metric(&m, "tls_certificate_reload_total{result=\"applied\"}") >= 1,
            "{m}"
        );
    }
    // The server now presents the newest certificate (4 h TTL) ...
    let expiry = metric(
        &mesh.server.metrics_text(),
        "tls_certificate_expiration_timestamp_seconds",
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(expiry > now + 3 * 3600, "{expiry}");
    // ... and the client presents its newest one on new connections: with
    // every older client serial revoked, new streams still get through.
    assert!(handshakes(&mesh.server, "inbound", "success") > 10);
    let mut tls = server_mount.tls("strict");
    tls["revokedSerials"] = json!(old_client_serials);
    mesh.server
        .reload(parse(&mesh.server_config(tls)))
        .await
        .unwrap();
    assert_eq!(mesh.tcp_roundtrip(b"after").await.unwrap(), b"after");
    assert_eq!(handshakes(&mesh.server, "inbound", "revoked"), 0);
}

#[tokio::test]
async fn authorization_allows_one_identity_and_denies_another() {
    let mesh = Mesh::start("strict").await;
    let mut cfg = mesh.server_config(mesh.server_mount.tls("strict"));
    cfg["authz"] = json!([{
        "name": "reviews-callers",
        "rules": [{ "from": [spiffe("client")], "to": [{ "path": { "prefix": "/" } }] }]
    }]);
    mesh.server.reload(parse(&cfg)).await.unwrap();
    assert_eq!(mesh.get("/", &[]).await.0, 200);

    // Another workload of the same mesh, not named by the policy.
    let mount = Mount::new(
        mesh.root.path(),
        "other",
        &issue(&mesh.ca, "other", HOUR),
        mesh.ca.cert_pem(),
    );
    let (other, port, tcp_port) = mesh.caller(&mount, None).await;
    let hits = mesh.app.hits();
    let (s, _, body) = get(&h1_client(), local(port), "svc", "/", &[])
        .await
        .unwrap();
    assert_eq!(s, 403, "{body}");
    assert!(
        body.contains(&spiffe("other")) && body.contains("reviews-callers"),
        "{body}"
    );
    assert_eq!(mesh.app.hits(), hits, "the app never saw it");

    // gRPC callers get PERMISSION_DENIED.
    let mut h2 = h2_connect(local(port)).await;
    let body = Full::new(grpc_frame(b"x")).map_err(Into::into).boxed();
    let resp = h2
        .send_request(grpc_request("grpc.svc", "Unary", body))
        .await
        .unwrap();
    assert_eq!(resp.headers()["grpc-status"], "7");

    // Opaque streams need a rule without `to`: this policy has none.
    let mut s = tokio::net::TcpStream::connect(local(tcp_port))
        .await
        .unwrap();
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
        .await
        .unwrap();
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "stream should be closed: {n:?}"
    );

    let m = mesh.server.metrics_text();
    assert_eq!(
        metric(&m, "downstream_authz_denied_total{listener=\"inbound\"}"),
        2,
        "{m}"
    );
    // The access log flags the refusals and names who was refused (and who was let in).
    let logged = eventually(Duration::from_secs(5), async || {
        mesh.access_records()
            .iter()
            .filter(|r| r["response_flags"] == "AZ")
            .count()
            == 2
    })
    .await;
    let records = mesh.access_records();
    assert!(logged, "{records:?}");
    for r in records.iter().filter(|r| r["response_flags"] == "AZ") {
        assert_eq!(r["downstream.identity"], spiffe("other"), "{r}");
        // gRPC refusals are HTTP 200 with grpc-status 7 (PERMISSION_DENIED).
        let code = if r["downstream.protocol"] == "gRPC" {
            200
        } else {
            403
        };
        assert_eq!(r["response_code"], code, "{r}");
    }
    assert!(
        records
            .iter()
            .any(|r| r["downstream.identity"] == spiffe("client") && r["response_code"] == 200),
        "{records:?}"
    );
    assert_eq!(
        metric(
            &m,
            "downstream_authz_denied_total{listener=\"inbound-tcp\"}"
        ),
        1
    );
    drop(other);
}

/// A plain TCP echo server on another loopback address (no sidecar there).
async fn plain_echo_on(ip: [u8; 4]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((ip, 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Sends `msg` over a fresh connection to 127.0.0.1:`port` and reads its echo.
async fn roundtrip(port: u16, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(local(port)).await?;
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(back)
}

#[tokio::test]
async fn auto_mode_uses_mtls_only_towards_mesh_addresses() {
    let mesh = Mesh::start("strict").await;
    let plain = plain_echo_on([127, 0, 0, 2]).await;
    let (to_mesh, to_plain) = (free_port(), free_port());
    let auto = |name: &str, at: SocketAddr| {
        let mut c = static_cluster(name, &[at]);
        c["protocol"] = json!("tcp");
        c["tls"] = json!({ "mode": "auto", "meshAddresses": ["127.0.0.1"] });
        c
    };
    let mut cfg = config(
        json!([
            { "name": "to-mesh", "direction": "outbound", "address": addr(to_mesh),
              "protocol": "tcp", "defaultCluster": "mesh" },
            { "name": "to-plain", "direction": "outbound", "address": addr(to_plain),
              "protocol": "tcp", "defaultCluster": "plain" }
        ]),
        json!([]),
        json!([
            auto("mesh", local(mesh.server_tcp_port)),
            auto("plain", plain)
        ]),
    );
    cfg["tls"] = mesh.client_mount.tls("disabled");
    let client = Proxy::start(parse(&cfg), Options::default()).await.unwrap();

    // A meshed destination gets mTLS (the strict server would refuse anything else) ...
    assert_eq!(roundtrip(to_mesh, b"secure").await.unwrap(), b"secure");
    assert_eq!(handshakes(&client, "outbound", "success"), 1);
    assert_eq!(handshakes(&mesh.server, "inbound", "success"), 1);
    // ... and one without a sidecar gets the plaintext it expects (an echo of a
    // ClientHello would have failed the handshake).
    assert_eq!(roundtrip(to_plain, b"plain").await.unwrap(), b"plain");
    assert_eq!(handshakes(&client, "outbound", "success"), 1);
    let m = client.metrics_text();
    assert!(!m.contains("result=\"error\""), "{m}");
}

/// The first flight of a TLS client that is not a sidecar (ALPN `h2`).
fn foreign_client_hello() -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec()];
    let mut conn =
        rustls::ClientConnection::new(Arc::new(c), "app.example".try_into().unwrap()).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// Permissive mode terminates only peer sidecars' TLS (mesh ALPN); anyone
/// else's TLS — an app's own, the API server calling a webhook, a scraper —
/// passes through to the app untouched. Strict refuses it.
#[tokio::test]
async fn permissive_passes_other_tls_through_and_strict_refuses_it() {
    let mesh = Mesh::start("permissive").await;
    let hello = foreign_client_hello();
    let mut s = tokio::net::TcpStream::connect(local(mesh.server_tcp_port))
        .await
        .unwrap();
    s.write_all(&hello).await.unwrap();
    let mut back = vec![0u8; hello.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("echoed in time")
        .unwrap();
    assert_eq!(
        back, hello,
        "the echo app got the ClientHello as it was sent"
    );
    let m = mesh.server.metrics_text();
    assert!(!m.contains("direction=\"inbound\""), "no handshake: {m}");
    // Mesh traffic on the same listener is still terminated.
    assert_eq!(mesh.tcp_roundtrip(b"mesh").await.unwrap(), b"mesh");
    assert_eq!(handshakes(&mesh.server, "inbound", "success"), 1);

    mesh.server
        .reload(parse(&mesh.server_config(mesh.server_mount.tls("strict"))))
        .await
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(local(mesh.server_tcp_port))
        .await
        .unwrap();
    s.write_all(&hello).await.unwrap();
    let mut b = [0u8; 6];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b)).await;
    // The sidecar itself answers (a ServerHello, handshake type 2, asking for
    // a client certificate the foreign client does not have), or closes:
    // never the app's echo of the ClientHello (handshake type 1).
    if let Ok(Ok(_)) = n {
        assert_ne!(&b[..], &hello[..6], "strict passed foreign TLS through");
        assert_eq!(b[5], 2, "{b:?}");
    }
}

/// The default install: `permissive`, and the workload certificate not
/// mounted yet. The sidecar starts and serves (and calls) in plaintext; in
/// `strict` it starts but refuses inbound and is not ready. Both pick the
/// identity up when the files appear.
#[tokio::test]
async fn identity_arriving_after_start_permissive_serves_plaintext_meanwhile_strict_waits() {
    let root = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate(TD).unwrap();
    let (app, echo) = (upstream("app").await, tcp_echo().await);
    let fast = || Options {
        watch_interval: Some(Duration::from_millis(50)),
        ..Default::default()
    };
    // Where the kubelet will mount the certificate later.
    let pending = |name: &str, mode: &str| {
        let p = |f: &str| {
            root.path()
                .join(name)
                .join(f)
                .to_string_lossy()
                .into_owned()
        };
        json!({ "mode": mode, "trustDomain": TD,
                "certFile": p("tls.crt"), "keyFile": p("tls.key"), "caFile": p("ca.crt") })
    };
    let ready = async |p: &ProxyHandle| {
        let c = h1_client();
        get(&c, p.admin_addr(), "admin", "/ready", &[])
            .await
            .unwrap()
            .0
    };
    let (pp, pt, sp, st) = (free_port(), free_port(), free_port(), free_port());
    let permissive = Proxy::start(
        parse(&server_config(
            pp,
            pt,
            app.addr,
            echo,
            pending("server", "permissive"),
        )),
        fast(),
    )
    .await
    .expect("permissive starts without its identity");
    let strict = Proxy::start(
        parse(&server_config(
            sp,
            st,
            app.addr,
            echo,
            pending("server", "strict"),
        )),
        fast(),
    )
    .await
    .expect("strict starts without its identity");
    assert_eq!(ready(&permissive).await, 200);
    assert_eq!(ready(&strict).await, 503);
    let c = h1_client();
    let (s, _, body) = get(&c, local(pp), "svc", "/", &[]).await.unwrap();
    assert_eq!(
        (s.as_u16(), body.as_str()),
        (200, "app"),
        "permissive: plaintext"
    );
    assert!(
        get(&h1_client(), local(sp), "svc", "/", &[]).await.is_err(),
        "strict refuses plaintext while it has no identity"
    );
    // A permissive caller without its identity calls in plaintext too.
    let mut caller_cfg = client_config(
        free_port(),
        free_port(),
        local(pp),
        local(pt),
        pending("client", "permissive"),
        None,
    );
    caller_cfg["listeners"][0]["address"] = json!(addr(free_port()));
    let caller_port: u16 = caller_cfg["listeners"][0]["address"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let caller = Proxy::start(parse(&caller_cfg), fast()).await.unwrap();
    let (s, _, body) = get(&c, local(caller_port), "svc", "/", &[]).await.unwrap();
    assert_eq!((s.as_u16(), body.as_str()), (200, "app"));

    // The certificates are mounted: both servers and the caller pick them up.
    Mount::new(
        root.path(),
        "server",
        &issue(&ca, "server", HOUR),
        ca.cert_pem(),
    );
    Mount::new(
        root.path(),
        "client",
        &issue(&ca, "client", HOUR),
        ca.cert_pem(),
    );
    assert!(eventually(Duration::from_secs(5), async || ready(&strict).await == 200).await);
    let meshed = Proxy::start(
        parse(&client_config(
            free_port(),
            free_port(),
            local(sp),
            local(st),
            pending("client", "disabled"),
            Some(&spiffe("server")),
        )),
        fast(),
    )
    .await
    .unwrap();
    let meshed_port: u16 = meshed.listener_addr("outbound").await.unwrap().port();
    let (s, h, _) = get(&c, local(meshed_port), "svc", "/headers", &[])
        .await
        .unwrap();
    assert_eq!(s, 200, "{h:?}");
    let (_, _, seen) = get(&c, local(meshed_port), "svc", "/headers", &[])
        .await
        .unwrap();
    assert!(
        seen.contains(&spiffe("client")),
        "the strict server saw the caller's identity: {seen}"
    );
    // The permissive caller now speaks mTLS: the server sees its identity.
    let with_id = eventually(Duration::from_secs(5), async || {
        get(&c, local(caller_port), "svc", "/headers", &[])
            .await
            .is_ok_and(|(_, _, seen)| seen.contains(&spiffe("client")))
    })
    .await;
    assert!(with_id, "the caller never switched to mTLS");
    drop((permissive, caller));
}
