//! JSON-lines access log with the MOSN white paper's fields.
//!
//! Records go through a bounded channel to one writer task, so a slow disk
//! or pipe never blocks a request; when the channel is full the record is
//! dropped and counted.

use std::{io::Write, net::SocketAddr};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::metrics::{Counter, Registry};

#[derive(Serialize, Debug, Default, Clone)]
pub struct AccessRecord {
    pub start_time: String,
    pub appname: String,
    #[serde(rename = "source.app")]
    pub source_app: String,
    #[serde(rename = "target.app")]
    pub target_app: String,
    pub listener: String,
    pub hijack: bool,
    #[serde(rename = "rpc.service")]
    pub rpc_service: String,
    #[serde(rename = "rpc.method")]
    pub rpc_method: String,
    #[serde(rename = "upstream.cluster")]
    pub upstream_cluster: String,
    #[serde(rename = "upstream.address")]
    pub upstream_address: String,
    #[serde(rename = "downstream.address")]
    pub downstream_address: String,
    #[serde(rename = "downstream.protocol")]
    pub downstream_protocol: &'static str,
    /// The caller's SPIFFE ID, when it connected with mesh mTLS.
    #[serde(
        rename = "downstream.identity",
        skip_serializing_if = "String::is_empty"
    )]
    pub downstream_identity: String,
    #[serde(rename = "upstream.protocol")]
    pub upstream_protocol: &'static str,
    #[serde(rename = "host.name")]
    pub host_name: String,
    #[serde(rename = "request.size")]
    pub request_size: u64,
    #[serde(rename = "response.size")]
    pub response_size: u64,
    /// Nanoseconds, request start to the end of the response body.
    pub duration: u64,
    #[serde(rename = "proxy.process.duration")]
    pub proxy_process_duration: u64,
    #[serde(rename = "proxy.process.request.duration")]
    pub proxy_process_request_duration: u64,
    #[serde(rename = "proxy.process.response.duration")]
    pub proxy_process_response_duration: u64,
    #[serde(rename = "proxy.process.fail")]
    pub proxy_process_fail: bool,
    #[serde(rename = "http.url")]
    pub http_url: String,
    #[serde(rename = "http.method")]
    pub http_method: String,
    pub route: String,
    pub request_id: String,
    pub trace_id: String,
    pub response_code: u16,
    pub response_flags: String,
    pub retries: u32,
}

#[derive(Clone)]
pub struct AccessLog {
    tx: Option<mpsc::Sender<AccessRecord>>,
    dropped: Counter,
    pub appname: String,
}

impl AccessLog {
    pub fn disabled() -> Self {
        Self {
            tx: None,
            dropped: Counter::default(),
            appname: String::new(),
        }
    }

    /// `path` is `-` for standard output or a file appended to.
    pub fn start(path: &str, reg: &Registry, appname: String) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = if path == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        };
        let (tx, mut rx) = mpsc::channel::<AccessRecord>(4096);
        // Blocking writes happen on a blocking-pool thread, off the proxy's workers.
        tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(64 * 1024);
            while let Some(r) = rx.blocking_recv() {
                buf.clear();
                let _ = serde_json::to_writer(&mut buf, &r);
                buf.push(b'\n');
                while let Ok(r) = rx.try_recv() {
                    let _ = serde_json::to_writer(&mut buf, &r);
                    buf.push(b'\n');
                    if buf.len() > 60 * 1024 {
                        break;
                    }
                }
                let _ = out.write_all(&buf);
                let _ = out.flush();
            }
        });
        Ok(Self {
            tx: Some(tx),
            dropped: reg.counter(
                "access_log_dropped_total",
                "Access log records dropped (writer too slow)",
                vec![],
            ),
            appname,
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn log(&self, mut r: AccessRecord) {
        if let Some(tx) = &self.tx {
            r.appname.clone_from(&self.appname);
            if tx.try_send(r).is_err() {
                self.dropped.inc();
            }
        }
    }
}

pub fn addr_string(a: Option<SocketAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_default()
}

/// RFC 3339 UTC time with milliseconds, without a date crate.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_shape() {
        let s = super::now_rfc3339();
        assert_eq!(s.len(), 24, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z'));
    }
}
