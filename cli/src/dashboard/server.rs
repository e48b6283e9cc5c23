//! The dashboard's web server: the page (HTML, CSS and JS compiled into
//! remoractl, nothing fetched from elsewhere) and `GET /api/graph`.
//!
//! It listens on loopback only and answers only requests addressed to a
//! loopback name, so a web page elsewhere cannot read the mesh's state
//! through a DNS name rebound to 127.0.0.1.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use tokio::sync::watch;

use super::graph::Graph;

const HTML: &str = include_str!("page.html");
const CSS: &str = include_str!("page.css");
const JS: &str = include_str!("page.js");

/// What `GET /api/graph` answers.
#[derive(Serialize, Debug, Clone, Default)]
pub struct GraphDoc {
    /// `cluster` (pods through the API server), `demo`, or `admin`
    /// (sidecar admin addresses).
    pub source: String,
    pub generated_unix_ms: u64,
    pub graph: Graph,
    /// Sidecars that could not be read this round, with why.
    pub errors: Vec<String>,
}

type Latest = watch::Receiver<Arc<GraphDoc>>;

/// The page with its style, script and the current graph inlined, so the
/// first paint needs no second request.
fn page(doc: &GraphDoc) -> String {
    let initial = serde_json::to_string(doc)
        .unwrap_or_else(|_| "{}".into())
        // Inside <script>: a `</script>` in a name must not end it.
        .replace("</", "<\\/");
    HTML.replacen("/*CSS*/", CSS, 1)
        .replacen("/*JS*/", JS, 1)
        .replacen("/*INITIAL*/", &initial, 1)
}

async fn index(State(latest): State<Latest>) -> Response {
    let doc = latest.borrow().clone();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        page(&doc),
    )
        .into_response()
}

async fn api_graph(State(latest): State<Latest>) -> Response {
    let doc = latest.borrow().clone();
    match serde_json::to_vec(&*doc) {
        Ok(body) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// True for `localhost`, `127.x.y.z` and `[::1]`, with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn loopback_only(req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !is_loopback_host(host) {
        return (
            StatusCode::FORBIDDEN,
            format!("the dashboard answers loopback names only, not Host {host:?}\n"),
        )
            .into_response();
    }
    next.run(req).await
}

pub fn router(latest: Latest) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/graph", get(api_graph))
        .layer(middleware::from_fn(loopback_only))
        .with_state(latest)
}

/// Binds `addr`, which must be a loopback address: the page shows the
/// mesh's state and has no authentication.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "--listen {addr}: the dashboard shows the mesh's state without authentication, \
                 so it listens on loopback only (127.0.0.0/8 or [::1]); reach it from elsewhere \
                 with `ssh -L 15050:{addr} …`"
            ),
        ));
    }
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot listen on {addr}: {e}. Fix: choose another with --listen 127.0.0.1:PORT"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_are_answered() {
        for ok in [
            "127.0.0.1:15050",
            "127.0.0.1",
            "localhost:15050",
            "LOCALHOST",
            "[::1]:15050",
            "127.1.2.3:80",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example:15050",
            "10.0.0.1:15050",
            "[2001:db8::1]:1",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn the_page_inlines_its_assets_and_the_graph() {
        let doc = GraphDoc {
            source: "</script><b>".into(),
            ..GraphDoc::default()
        };
        let html = page(&doc);
        assert!(html.contains("function render(doc)"));
        assert!(html.contains(".edge-line.mtls"));
        assert!(!html.contains("/*JS*/") && !html.contains("/*CSS*/"));
        assert!(html.contains(r#"<\/script><b>"#), "the source is escaped");
        // No asset from anywhere else: no src= or href= at all.
        assert!(!html.contains("src=") && !html.contains("href="));
    }
}
