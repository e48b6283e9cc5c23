//! Responses the proxy makes itself, and the response body wrapper that
//! counts bytes and writes the access-log record when the body ends.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};

use super::{GRPC_MESSAGE, GRPC_STATUS, X_FLAGS};
use crate::{BoxError, access_log::AccessRecord, metrics::GaugeGuard};

pub type RespBody = BoxBody<Bytes, BoxError>;

/// A reply the proxy makes itself, with an Envoy-style response flag.
#[derive(Debug)]
pub struct LocalReply {
    pub status: StatusCode,
    pub flag: &'static str,
    pub message: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl LocalReply {
    pub fn new(status: StatusCode, flag: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            status,
            flag,
            body: Bytes::from(format!("{message}\n")),
            message,
            headers: Vec::new(),
        }
    }

    /// gRPC clients get HTTP 200 with `grpc-status` (trailers-only response).
    pub fn into_response(self, grpc: bool) -> Response<RespBody> {
        let mut resp = if grpc {
            let code = match self.status.as_u16() {
                400 => 3,
                401 => 16,
                403 => 7,
                404 => 12,
                429 => 8,
                502..=503 => 14,
                504 => 4,
                _ => 2,
            };
            let mut r = Response::new(empty());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            r.headers_mut()
                .insert(GRPC_STATUS.clone(), HeaderValue::from(code));
            if let Ok(v) = HeaderValue::from_str(&pct_encode(&self.message)) {
                r.headers_mut().insert(GRPC_MESSAGE.clone(), v);
            }
            r
        } else {
            let mut r = Response::new(full(self.body));
            *r.status_mut() = self.status;
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r
        };
        if !self.flag.is_empty() {
            resp.headers_mut()
                .insert(X_FLAGS.clone(), HeaderValue::from_static(self.flag));
        }
        for (k, v) in self.headers {
            resp.headers_mut().append(k, v);
        }
        resp
    }
}

fn pct_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> RespBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

pub(super) struct PendingLog {
    pub(super) rec: AccessRecord,
    pub(super) start: Instant,
    pub(super) headers_at: Instant,
    pub(super) log: crate::access_log::AccessLog,
}

/// The response body, counting bytes; the access-log record is written
/// when the body is finished (or dropped), so `duration` covers streaming.
pub struct LoggedBody {
    pub(super) inner: RespBody,
    pub(super) pending: Option<Box<PendingLog>>,
    pub(super) _active: Option<GaugeGuard>,
}

impl LoggedBody {
    pub fn plain(inner: RespBody) -> Self {
        Self {
            inner,
            pending: None,
            _active: None,
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(f))), Some(p)) = (&r, self.pending.as_mut())
            && let Some(d) = f.data_ref()
        {
            p.rec.response_size += d.len() as u64;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(mut p) = self.pending.take() {
            p.rec.duration = p.start.elapsed().as_nanos() as u64;
            p.rec.proxy_process_response_duration = p.headers_at.elapsed().as_nanos() as u64;
            p.log.log(p.rec);
        }
    }
}
