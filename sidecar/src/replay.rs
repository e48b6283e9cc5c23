//! A request body that can be sent again: frames are kept (up to a limit)
//! as they stream to the first try, so a retry replays them and then goes
//! on reading the client. Bodies larger than the limit stream unbuffered and
//! are not retried (linkerd2-proxy's `ReplayBody`, simplified).

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::BoxError;

/// Request bodies up to this size are kept for retries.
pub const MAX_REPLAY_BYTES: usize = 64 * 1024;

struct State {
    inner: Incoming,
    frames: Vec<Bytes>,
    buffered: usize,
    overflow: bool,
    ended: bool,
    trailers: Option<HeaderMap>,
}

#[derive(Clone)]
pub struct ReplayBody {
    state: Arc<Mutex<State>>,
    pos: usize,
    trailers_sent: bool,
}

impl ReplayBody {
    pub fn new(inner: Incoming) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                inner,
                frames: Vec::new(),
                buffered: 0,
                overflow: false,
                ended: false,
                trailers: None,
            })),
            pos: 0,
            trailers_sent: false,
        }
    }

    /// A fresh reader for the next try, or `None` when the body outgrew the
    /// buffer and cannot be sent again.
    pub fn replay(&self) -> Option<Self> {
        let s = self.state.lock().expect("replay lock");
        (!s.overflow).then(|| Self {
            state: self.state.clone(),
            pos: 0,
            trailers_sent: false,
        })
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        // Held only for this synchronous poll, never across an await.
        let mut s = this.state.lock().expect("replay lock");
        if !s.overflow && this.pos < s.frames.len() {
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(s.frames[this.pos - 1].clone()))));
        }
        if s.ended {
            if !this.trailers_sent
                && let Some(t) = &s.trailers
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
            }
            return Poll::Ready(None);
        }
        match Pin::new(&mut s.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    if !s.overflow {
                        if s.buffered + data.len() <= MAX_REPLAY_BYTES {
                            s.buffered += data.len();
                            s.frames.push(data.clone());
                            this.pos += 1;
                        } else {
                            s.overflow = true;
                            s.frames = Vec::new();
                        }
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    if let Some(t) = frame.trailers_ref() {
                        s.trailers = Some(t.clone());
                        this.trailers_sent = true;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.state.lock().expect("replay lock");
        s.ended
            && !s.overflow
            && self.pos >= s.frames.len()
            && (self.trailers_sent || s.trailers.is_none())
            || (self.pos == 0 && s.frames.is_empty() && s.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let s = self.state.lock().expect("replay lock");
        if self.pos == 0 && !s.overflow && s.frames.is_empty() {
            s.inner.size_hint()
        } else {
            SizeHint::default()
        }
    }
}
