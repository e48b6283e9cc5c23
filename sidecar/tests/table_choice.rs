//! Captured traffic picks its route table by the original destination address
//! and port, not the port alone: two services on one port do not collide.
//!
//! Without an iptables redirect a transparent listener's original
//! destination is its own address, so listeners on 127.0.0.2:P and
//! 127.0.0.3:P stand for the ClusterIPs of two services A and B on one port
//! P. The listeners' default cluster stands for the pass-through to B's own
//! original destination: in a pod it dials 127.0.0.3:P, which the listener
//! occupies here, so B's server listens elsewhere and the default points there.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::*;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const A_IP: [u8; 4] = [127, 0, 0, 2];
const B_IP: [u8; 4] = [127, 0, 0, 3];

/// A port free on both service addresses.
fn shared_port() -> u16 {
    for _ in 0..50 {
        let a = std::net::TcpListener::bind(SocketAddr::from((A_IP, 0))).unwrap();
        let port = a.local_addr().unwrap().port();
        if std::net::TcpListener::bind(SocketAddr::from((B_IP, port))).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

/// A server-first service (as MySQL is): greets with its name, then echoes.
async fn greeting_server(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if s.write_all(format!("{name}\n").as_bytes()).await.is_ok() {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    addr
}

/// Connects to `to` as a client that waits for the server to speak first,
/// and returns the greeting it gets (empty when the proxy closes).
async fn greeting(to: SocketAddr) -> String {
    let mut s = TcpStream::connect(to).await.unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    let read = async {
        while s.read(&mut b).await.unwrap_or(0) == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("greeting within 5 s");
    String::from_utf8(line).unwrap()
}

/// Two captured "ClusterIPs" on `port`, falling back to `default`.
fn captured(port: u16, default: &str) -> Value {
    json!([
        { "name": "capture-a", "direction": "outbound", "transparent": true,
          "address": SocketAddr::from((A_IP, port)), "defaultCluster": default },
        { "name": "capture-b", "direction": "outbound", "transparent": true,
          "address": SocketAddr::from((B_IP, port)), "defaultCluster": default },
    ])
}

fn table(name: &str, port: u16, protocol: &str, cluster: &str) -> Value {
    json!({
        "name": format!("{name}.ns:{port}"),
        "domains": [format!("{name}.ns"), format!("{name}.ns:{port}")],
        "port": port,
        "addresses": ["127.0.0.2"],
        "protocol": protocol,
        "routes": [{ "name": "all",
                     "action": { "clusters": [{ "cluster": cluster, "weight": 100 }] } }],
    })
}

#[tokio::test]
async fn a_tcp_table_does_not_capture_another_service_on_its_port() {
    let (db_a, db_b) = (greeting_server("db-a").await, greeting_server("db-b").await);
    let port = shared_port();
    let cfg = config(
        captured(port, "passthrough"),
        json!([table("db-a", port, "tcp", "db-a")]),
        json!([
            static_cluster("db-a", &[db_a]),
            static_cluster("passthrough", &[db_b])
        ]),
    );
    let proxy = start(&cfg).await;

    assert_eq!(greeting(SocketAddr::from((A_IP, port))).await, "db-a");
    // B shares A's port but not its address: it passes through.
    assert_eq!(greeting(SocketAddr::from((B_IP, port))).await, "db-b");

    // Data flows both ways on the pass-through connection.
    let mut s = TcpStream::connect(SocketAddr::from((B_IP, port)))
        .await
        .unwrap();
    let mut hello = [0u8; 5];
    s.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"db-b\n");
    s.write_all(b"select 1").await.unwrap();
    let mut echoed = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed))
        .await
        .expect("echo within 5 s")
        .unwrap();
    assert_eq!(&echoed, b"select 1");

    let m = proxy.metrics_text();
    assert_eq!(
        metric(&m, "upstream_connection_total{cluster=\"db-a\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        metric(&m, "upstream_connection_total{cluster=\"passthrough\"}"),
        2,
        "{m}"
    );
}

#[tokio::test]
async fn an_ip_addressed_http_call_is_routed_by_the_table_that_owns_the_ip() {
    let (a, b) = (upstream("svc-a").await, upstream("svc-b").await);
    let port = shared_port();
    let cfg = config(
        captured(port, "passthrough"),
        json!([table("svc-a", port, "http1", "svc-a")]),
        json!([
            static_cluster("svc-a", &[a.addr]),
            static_cluster("passthrough", &[b.addr])
        ]),
    );
    let _proxy = start(&cfg).await;
    let c = h1_client();
    let call = |ip: [u8; 4], host: String| {
        let c = c.clone();
        async move {
            let (status, _, body) = get(&c, SocketAddr::from((ip, port)), &host, "/", &[])
                .await
                .unwrap();
            assert_eq!(status, 200, "{body}");
            body
        }
    };
    // By ClusterIP: the destination address decides.
    assert_eq!(call(A_IP, format!("127.0.0.2:{port}")).await, "svc-a");
    assert_eq!(call(B_IP, format!("127.0.0.3:{port}")).await, "svc-b");
    // By name: the Host decides, as before.
    assert_eq!(call(B_IP, format!("svc-a.ns:{port}")).await, "svc-a");
    assert_eq!(a.hits(), 2);
    assert_eq!(b.hits(), 1);
}
