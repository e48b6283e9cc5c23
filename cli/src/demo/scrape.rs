//! Reading the sidecars' admin endpoints: `/ready` and `/metrics`.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
pub use remora_e2e::prometheus::{Sample, parse, sum};

/// `GET path` on `addr`: the status and body, within two seconds.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let fetch = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let resp = send.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out"))?
        .with_context(|| format!("GET http://{addr}{path}"))
}

pub async fn ready(admin: SocketAddr) -> bool {
    matches!(get(admin, "/ready").await, Ok((200, _)))
}

pub async fn metrics(admin: SocketAddr) -> Result<Vec<Sample>> {
    let (status, body) = get(admin, "/metrics").await?;
    anyhow::ensure!(
        status == 200,
        "GET http://{admin}/metrics answered {status}"
    );
    Ok(parse(&body))
}

/// The `q` quantile (0..=1) of a Prometheus histogram, interpolated within
/// its bucket as PromQL's `histogram_quantile` does; None without samples.
pub fn histogram_quantile(
    samples: &[Sample],
    name: &str,
    labels: &[(&str, &str)],
    q: f64,
) -> Option<f64> {
    let bucket = format!("{name}_bucket");
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name == bucket)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .filter_map(|s| {
            let le = s.labels.get("le")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, s.value))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in &buckets {
        if count >= rank {
            if le.is_infinite() {
                // Past the last finite bucket: its bound is the best we know.
                return Some(prev.0);
            }
            let width = le - prev.0;
            let inside = count - prev.1;
            return Some(if inside > 0.0 {
                prev.0 + width * (rank - prev.1) / inside
            } else {
                le
            });
        }
        prev = (le, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let text = "d_bucket{listener=\"inbound\",le=\"0.001\"} 50\n\
                    d_bucket{listener=\"inbound\",le=\"0.002\"} 90\n\
                    d_bucket{listener=\"inbound\",le=\"0.004\"} 100\n\
                    d_bucket{listener=\"inbound\",le=\"+Inf\"} 100\n\
                    d_bucket{listener=\"outbound\",le=\"+Inf\"} 0\n";
        let s = parse(text);
        let q = |q| histogram_quantile(&s, "d", &[("listener", "inbound")], q).unwrap();
        assert!((q(0.5) - 0.001).abs() < 1e-12);
        assert!((q(0.7) - 0.0015).abs() < 1e-12);
        assert!((q(0.95) - 0.003).abs() < 1e-12);
        assert_eq!(
            histogram_quantile(&s, "d", &[("listener", "outbound")], 0.5),
            None
        );
        assert_eq!(histogram_quantile(&s, "missing", &[], 0.5), None);
    }
}
