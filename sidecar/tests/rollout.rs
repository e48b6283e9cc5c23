//! A rolling restart behind two sidecars loses no request: a client-side
//! sidecar calls a server through that server's sidecar while, under
//! fixed-rate load, the server is replaced twice the way a Deployment rolls
//! (new pod ready, endpoints updated, old pod sent SIGTERM, its endpoint
//! removed a moment later as EndpointSlices and kube-proxy catch up).
//! Real `remora-sidecar` processes; traffic stays on 127.0.0.1.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::*;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const RATE_PER_SECOND: u64 = 100;
const LOAD: Duration = Duration::from_secs(22);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_remora-sidecar")
}

struct Sidecar {
    child: Child,
    config: PathBuf,
}

impl Sidecar {
    async fn spawn(dir: &Path, name: &str, cfg: &Value) -> Self {
        let config = dir.join(format!("{name}.json"));
        write_atomically(&config, cfg);
        let admin = cfg["admin"]["address"].as_str().unwrap().to_string();
        let child = Command::new(bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let ready = Command::new(bin())
            .args(["wait-ready", "--admin", &admin, "--timeout", "20s"])
            .output()
            .await
            .unwrap();
        assert!(ready.status.success(), "{name} never became ready");
        Self { child, config }
    }

    fn sigterm(&self) {
        let pid = self.child.id().unwrap() as i32;
        // SAFETY: signalling a child this test spawned.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

/// As the kubelet updates a mounted ConfigMap: write aside, then rename.
fn write_atomically(path: &Path, v: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(v).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The server pod's sidecar: inbound to its app, draining with a grace.
fn server_config(inbound: u16, app: std::net::SocketAddr) -> Value {
    let mut cfg = config(
        json!([{ "name": "inbound", "direction": "inbound", "address": addr(inbound),
                 "defaultCluster": "app" }]),
        json!([]),
        json!([static_cluster("app", &[app])]),
    );
    cfg["runtime"] = json!({ "drainGrace": "3s", "drainTimeout": "5s" });
    cfg
}

/// The caller's sidecar: `reviews` at the given server sidecars.
fn client_config(outbound: u16, admin: u16, control: u16, servers: &[u16]) -> Value {
    let eps: Vec<_> = servers.iter().map(|p| local(*p)).collect();
    let mut cfg = config(
        json!([outbound_listener(outbound)]),
        json!([one_route("reviews", "reviews", json!({}))]),
        json!([static_cluster("reviews", &eps)]),
    );
    cfg["admin"] = json!({ "address": addr(admin), "controlAddress": addr(control) });
    cfg
}

fn outbound_listener(port: u16) -> Value {
    json!({ "name": "outbound", "direction": "outbound", "address": addr(port) })
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: Vec<String>,
    latencies_us: Vec<u64>,
    by_server: std::collections::BTreeMap<String, u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_behind_two_sidecars_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let apps = [
        upstream("v1").await,
        upstream("v2").await,
        upstream("v3").await,
    ];
    let inbound: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let (out_port, client_admin, client_control) = (free_port(), free_port(), free_port());

    let first = Sidecar::spawn(
        dir.path(),
        "server-1",
        &server_config(inbound[0], apps[0].addr),
    )
    .await;
    let client_cfg =
        |servers: &[u16]| client_config(out_port, client_admin, client_control, servers);
    let client = Sidecar::spawn(dir.path(), "client", &client_cfg(&inbound[..1])).await;

    // Fixed-rate load through the client sidecar: one request every 10 ms,
    // keep-alive connections from one pooled client, bounded in count and time.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let load = {
        let tally = tally.clone();
        tokio::spawn(async move {
            let c = h1_client();
            let total = RATE_PER_SECOND * LOAD.as_secs();
            let mut tick =
                tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_SECOND));
            let mut calls = tokio::task::JoinSet::new();
            for _ in 0..total {
                tick.tick().await;
                let (c, tally) = (c.clone(), tally.clone());
                calls.spawn(async move {
                    let start = Instant::now();
                    let r = tokio::time::timeout(
                        Duration::from_secs(5),
                        get(&c, local(out_port), "reviews", "/reviews/1", &[]),
                    )
                    .await;
                    let mut t = tally.lock().unwrap();
                    match r {
                        Ok(Ok((s, _, body))) if s == 200 => {
                            t.ok += 1;
                            t.latencies_us.push(start.elapsed().as_micros() as u64);
                            *t.by_server.entry(body).or_default() += 1;
                        }
                        Ok(Ok((s, h, body))) => t
                            .failed
                            .push(format!("{s} {:?} {body}", h.get("x-remora-flags"))),
                        Ok(Err(e)) => t.failed.push(e),
                        Err(_) => t.failed.push("timed out".into()),
                    }
                });
            }
            while calls.join_next().await.is_some() {}
        })
    };

    // Roll twice: server-1 → server-2 → server-3.
    let mut old = first;
    for (i, next) in [(1usize, 0usize), (2, 1)] {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let new = Sidecar::spawn(
            dir.path(),
            &format!("server-{}", i + 1),
            &server_config(inbound[i], apps[i].addr),
        )
        .await;
        // The new pod is ready: it joins the endpoints.
        write_atomically(&client.config, &client_cfg(&[inbound[next], inbound[i]]));
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The old pod is deleted: SIGTERM now, its endpoint leaves a second later.
        old.sigterm();
        tokio::time::sleep(Duration::from_secs(1)).await;
        write_atomically(&client.config, &client_cfg(&[inbound[i]]));
        let exit = tokio::time::timeout(Duration::from_secs(15), old.child.wait())
            .await
            .expect("the drained sidecar exits")
            .unwrap();
        assert!(exit.success(), "{exit}");
        old = new;
    }
    load.await.unwrap();

    let t = tally.lock().unwrap();
    let total = RATE_PER_SECOND * LOAD.as_secs();
    let mut lat = t.latencies_us.clone();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "rollout: {} requests at {RATE_PER_SECOND}/s over {LOAD:?}: {} ok, {} failed; \
         p50 {} µs, p99 {} µs, max {} µs; by server {:?}",
        total,
        t.ok,
        t.failed.len(),
        pct(0.50),
        pct(0.99),
        lat.last().unwrap(),
        t.by_server
    );
    assert!(t.failed.is_empty(), "failed requests: {:?}", t.failed);
    assert_eq!(t.ok, total);
    for v in ["v1", "v2", "v3"] {
        assert!(
            t.by_server.get(v).copied().unwrap_or(0) > 100,
            "{v} served too little: {:?}",
            t.by_server
        );
    }
    drop((old, client));
}
