//! `remoractl dashboard --demo` in a real headless Chromium: the page the
//! CLI serves, its script drawing the graph from `/api/graph`, the demo's
//! services and the canary edge with its split. The screenshot is saved as
//! `target/remora-artifacts/dashboard.png`.
//!
//! Chromium comes from Debian's packages (`scripts/e2e-deps.sh` installs
//! `chromium-headless-shell`); without it the test fails, unless
//! `REMORA_SKIP_BROWSER=1` says to skip it.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The demo's pods go here, away from a demo the user (or demo.rs) runs.
const FIRST_ADDRESS: &str = "127.0.5.10";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REMORA_CHROMIUM") {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH")?;
    ["chromium-headless-shell", "chromium"]
        .iter()
        .find_map(|name| {
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
}

/// `GET path` with `host` as the Host header: status and body.
fn get(addr: SocketAddr, path: &str, host: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Runs `cmd` for at most `limit`, killing it past that.
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if flag.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: kill(2) on the pid of our own child, which we have not
        // reaped yet (wait_with_output below still holds it).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let out = child.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watchdog.join().unwrap();
    out
}

/// A running `remoractl dashboard ARGS`, stopped with SIGINT when dropped.
struct Dashboard {
    child: Child,
    addr: SocketAddr,
}

impl Dashboard {
    fn start(args: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_remoractl"))
            .arg("dashboard")
            .args(args)
            .args(["--listen", &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self { child, addr }
    }

    /// The productpage → reviews edge of `/api/graph` once `ready` holds
    /// for it, within `limit`; and the whole document.
    fn reviews_edge(&mut self, limit: Duration, ready: impl Fn(&Value) -> bool) -> (Value, Value) {
        let deadline = Instant::now() + limit;
        loop {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "remoractl dashboard exited early"
            );
            if let Ok((200, body)) = get(self.addr, "/api/graph", "localhost") {
                let doc: Value = serde_json::from_str(&body).unwrap();
                let edge = doc["graph"]["edges"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["from"] == "productpage" && e["to"] == "reviews")
                    .filter(|e| ready(e))
                    .cloned();
                if let Some(e) = edge {
                    return (doc, e);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no ready productpage → reviews edge in /api/graph after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        // SIGINT: the demo stops its children and cleans up.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn split_of(edge: &Value, subset: &str) -> f64 {
    edge["split"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subset"] == subset)
        .and_then(|s| s["percent"].as_f64())
        .unwrap_or(0.0)
}

#[test]
fn the_demos_mesh_is_drawn_in_headless_chromium() {
    let Some(browser) = chromium() else {
        if std::env::var_os("REMORA_SKIP_BROWSER").is_some_and(|v| v == "1") {
            eprintln!(
                "SKIPPED: no chromium-headless-shell or chromium on PATH (REMORA_SKIP_BROWSER=1)"
            );
            return;
        }
        panic!(
            "no chromium-headless-shell or chromium on PATH: run scripts/e2e-deps.sh \
             (or set REMORA_CHROMIUM, or REMORA_SKIP_BROWSER=1 to skip this test)"
        );
    };
    let mut dash = Dashboard::start(&[
        "--demo",
        "--duration",
        "90s",
        "--output",
        "json",
        "--first-address",
        FIRST_ADDRESS,
    ]);
    let addr = dash.addr;
    let url = format!("http://{addr}/");
    // Enough calls on the canary edge to show a split (bounded: the demo's
    // start plus a few seconds of traffic).
    let (graph, reviews) = dash.reviews_edge(Duration::from_secs(60), |e| {
        e["requests"].as_f64().unwrap_or(0.0) >= 400.0
    });
    assert_eq!(reviews["mtls"], "mtls", "{reviews}");
    assert!((split_of(&reviews, "v2") - 5.0).abs() <= 1.5, "{reviews}");
    assert_eq!(graph["source"], "demo");

    // Not for other names: a rebound DNS name gets nothing.
    let (status, _) = get(addr, "/api/graph", "rebound.example:80").unwrap();
    assert_eq!(status, 403);

    // The page, in a real browser: its script draws the graph from the
    // inlined document and redraws it from /api/graph.
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1280,720",
        "--virtual-time-budget=3000",
    ];
    let mut cmd = Command::new(&browser);
    cmd.args(flags).arg("--dump-dom").arg(&url);
    let out = run_bounded(cmd, Duration::from_secs(90));
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && dom.contains("<svg"),
        "chromium --dump-dom failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for service in ["productpage", "reviews", "ratings", "details", "greeter"] {
        assert!(
            dom.contains(&format!(r#"class="node" data-service="{service}""#))
                || dom.contains(&format!(r#"class="node client" data-service="{service}""#)),
            "the page shows no node for {service}: {dom}"
        );
    }
    let edge_start = dom
        .find(r#"data-from="productpage" data-to="reviews" data-mtls="mtls""#)
        .unwrap_or_else(|| panic!("no mTLS edge productpage → reviews: {dom}"));
    let edge = &dom[edge_start..];
    let edge = &edge[..edge.find("</g>").unwrap()];
    let split_text = edge
        .split(r#"class="split""#)
        .nth(1)
        .and_then(|t| t.split('>').nth(1))
        .and_then(|t| t.split('<').next())
        .unwrap_or_else(|| panic!("the canary edge shows no split: {edge}"));
    // "v1 95.0 % · v2 5.0 %"
    let percent_of = |subset: &str| -> f64 {
        split_text
            .split(" · ")
            .find_map(|p| p.strip_prefix(&format!("{subset} ")))
            .and_then(|p| p.trim_end_matches(" %").parse().ok())
            .unwrap_or_else(|| panic!("no {subset} share in {split_text:?}"))
    };
    assert!((percent_of("v1") - 95.0).abs() <= 1.5, "{split_text}");
    assert!((percent_of("v2") - 5.0).abs() <= 1.5, "{split_text}");
    assert!(
        edge.contains(r#"class="lock""#),
        "no lock on the mTLS edge: {edge}"
    );
    assert!(dom.contains("source: demo"), "the status line: {dom}");

    // The screenshot, kept as the test's artifact.
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_remoractl"));
    let target = exe.parent().and_then(|d| d.parent()).unwrap();
    let artifacts = target.join("remora-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    let mut cmd = Command::new(&browser);
    cmd.args(flags)
        .arg(format!("--screenshot={}", png.display()))
        .arg(&url);
    let out = run_bounded(cmd, Duration::from_secs(90));
    assert!(
        out.status.success(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(bytes.len() > 10_000, "a blank page? {} bytes", bytes.len());
    eprintln!("screenshot: {} ({} bytes)", png.display(), bytes.len());

    // The second source: the same sidecars read by their admin addresses.
    let prefix = FIRST_ADDRESS.rsplit_once('.').unwrap().0;
    let mut by_admin = Dashboard::start(&[
        "--admin",
        &format!("productpage={prefix}.10:15000"),
        "--admin",
        &format!("reviews/v1={prefix}.11:15000"),
        "--admin",
        &format!("reviews/v2={prefix}.12:15000"),
    ]);
    let (_, edge) = by_admin.reviews_edge(Duration::from_secs(20), |e| {
        e["requests_per_second"].as_f64().unwrap_or(0.0) > 0.0
    });
    assert_eq!(edge["mtls"], "mtls", "{edge}");
    assert!(
        edge["p99_ms"].as_f64().is_some(),
        "both reviews pods were read: {edge}"
    );
    assert!((split_of(&edge, "v2") - 5.0).abs() <= 1.5, "{edge}");
    drop(by_admin);
    drop(dash);
}

#[test]
fn the_dashboard_listens_on_loopback_only() {
    let out = Command::new(env!("CARGO_BIN_EXE_remoractl"))
        .args([
            "dashboard",
            "--admin",
            "127.0.0.1:1",
            "--listen",
            "0.0.0.0:15050",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--listen 0.0.0.0:15050") && stderr.contains("loopback only"),
        "{stderr}"
    );
    // No source flag: a cluster; with none to be found, the error names
    // the other sources.
    let out = Command::new(env!("CARGO_BIN_EXE_remoractl"))
        .args(["dashboard", "--kubeconfig", "/nonexistent/kubeconfig"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--demo") && stderr.contains("--admin"),
        "{stderr}"
    );
}
