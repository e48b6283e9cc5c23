//! `remora-echo`: the test application behind the sidecars.
//!
//! `remora-echo --listen 0.0.0.0:8080 --version v1` answers every HTTP/1.1 and
//! h2c (prior knowledge) request with 200, `x-echo-version: <version>` and a
//! JSON body `{"version","host","path","method","headers":{..},"peer","protocol"}`,
//! so a test sees which subset answered and what the sidecars added on the way
//! (`x-request-id`, `x-forwarded-client-cert`, route header edits). `GET /healthz`
//! answers 200 too (`{"status":"ok","version":..}`), for probes.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, header::HeaderValue, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

// No `version` in `command`: `--version` is ours (the subset), not clap's.
#[derive(Parser, Debug)]
#[command(
    name = "remora-echo",
    about = "Echoes every HTTP/1.1 and h2c request as JSON"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Reported in `x-echo-version` and the body's `version`, e.g. the subset.
    #[arg(long, default_value = "v1")]
    version: String,
    /// A second address answering the same way, for kubelet probes: the
    /// webhook leaves probed ports out of the sidecar's capture, so probes
    /// belong on a port of their own.
    #[arg(long)]
    health_listen: Option<SocketAddr>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!(
        "remora-echo {} listening on {}",
        args.version,
        listener.local_addr()?
    );
    let version: Arc<str> = args.version.into();
    if let Some(addr) = args.health_listen {
        let health = TcpListener::bind(addr).await?;
        tokio::spawn(serve(health, version.clone()));
    }
    // As PID 1 in a container the default SIGTERM action does not apply: exit
    // on it explicitly so pods stop at once.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = serve(listener, version) => Ok(()),
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

async fn serve(listener: TcpListener, version: Arc<str>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("remora-echo: accept: {e}");
                continue;
            }
        };
        let version = version.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| echo(req, version.clone(), peer));
            // Errors are the client's business (resets, bad requests).
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn echo(
    req: Request<Incoming>,
    version: Arc<str>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    // Read the body so keep-alive connections stay usable; its content is not echoed.
    let _ = body.collect().await;
    let body = if parts.method == hyper::Method::GET && parts.uri.path() == "/healthz" {
        serde_json::json!({ "status": "ok", "version": &*version })
    } else {
        let mut headers = serde_json::Map::new();
        for name in parts.headers.keys() {
            let values: Vec<&str> = parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap_or("<binary>"))
                .collect();
            headers.insert(name.as_str().to_owned(), values.join(", ").into());
        }
        let host = parts
            .headers
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_default();
        serde_json::json!({
            "version": &*version,
            "host": host,
            "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            "method": parts.method.as_str(),
            "headers": headers,
            "peer": peer.to_string(),
            "protocol": format!("{:?}", parts.version),
        })
    };
    let mut bytes = serde_json::to_vec(&body).expect("JSON serializes");
    bytes.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&version) {
        h.insert("x-echo-version", v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn keeps_the_interface_the_images_use() {
        Args::command().debug_assert();
        let a =
            Args::try_parse_from(["remora-echo", "--listen", "0.0.0.0:8080", "--version", "v2"])
                .unwrap();
        assert_eq!(a.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(a.version, "v2");
        assert_eq!(a.health_listen, None);
        let b = Args::try_parse_from(["remora-echo", "--health-listen", "0.0.0.0:8081"]).unwrap();
        assert_eq!(b.health_listen, Some("0.0.0.0:8081".parse().unwrap()));
    }
}
