//! Upstream HTTP connection pools under the cluster's circuit breaker.
//!
//! HTTP/1.1: keep-alive connections per endpoint, one request at a time,
//! retired after `maxRequestsPerConnection`, closed after `idleTimeout`
//! unused. HTTP/2: one multiplexed connection per endpoint, which takes no
//! new stream after `maxRequestsPerConnection` and closes once its streams
//! finish. Both draw sockets from the same [`Breaker`]; a request that finds
//! the cluster at `maxConnections` waits as *pending* for a connection to
//! close or go idle.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hyper::client::conn::{http1, http2};

use crate::{
    breaker::{Breaker, Freed, Limit, Permit},
    cluster::UpstreamBody,
};

/// An idle HTTP/1.1 connection and how many requests it has carried.
pub struct IdleH1 {
    id: u64,
    pub sender: http1::SendRequest<UpstreamBody>,
    pub uses: u32,
    since: Instant,
}

#[derive(Default)]
pub struct H1Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<IdleH1>>>,
    next_id: AtomicU64,
}

impl H1Pool {
    /// The most recently used live idle connection to `addr`; stale and
    /// closed ones met on the way are dropped (closing their sockets).
    pub fn take(&self, addr: SocketAddr, idle_timeout: Duration) -> Option<IdleH1> {
        let mut idle = self.idle.lock().expect("h1 pool");
        let conns = idle.get_mut(&addr)?;
        while let Some(c) = conns.pop() {
            if c.sender.is_ready() && c.since.elapsed() < idle_timeout {
                return Some(c);
            }
        }
        None
    }

    /// Keeps a connection whose exchange finished for the next request, and
    /// closes it if it is still unused after `idle_timeout`.
    pub fn put(
        self: &Arc<Self>,
        addr: SocketAddr,
        sender: http1::SendRequest<UpstreamBody>,
        uses: u32,
        idle_timeout: Duration,
    ) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.idle
            .lock()
            .expect("h1 pool")
            .entry(addr)
            .or_default()
            .push(IdleH1 {
                id,
                sender,
                uses,
                since: Instant::now(),
            });
        let pool: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(idle_timeout).await;
            if let Some(pool) = pool.upgrade() {
                let mut idle = pool.idle.lock().expect("h1 pool");
                if let Some(conns) = idle.get_mut(&addr) {
                    conns.retain(|c| c.id != id);
                }
            }
        });
    }

    /// Closes one idle connection (the oldest) to free its socket for a
    /// request to another endpoint. Whether there was one.
    fn evict_one(&self) -> bool {
        let mut idle = self.idle.lock().expect("h1 pool");
        let oldest = idle
            .iter()
            .filter_map(|(a, cs)| cs.first().map(|c| (c.since, *a)))
            .min();
        match oldest {
            Some((_, addr)) => {
                idle.get_mut(&addr).expect("present").remove(0);
                true
            }
            None => false,
        }
    }
}

/// A request looking for a connection. At the cluster's `maxConnections` it
/// registers for a wake-up and looks once more, then waits as pending,
/// holding a `maxPendingRequests` place from its first wait on.
pub struct Pending<'a> {
    breaker: &'a Breaker,
    freed: Option<Freed>,
    place: Option<Permit<'a>>,
}

impl<'a> Pending<'a> {
    pub fn new(breaker: &'a Breaker) -> Self {
        Self {
            breaker,
            freed: None,
            place: None,
        }
    }

    /// Called when no connection was to be had: the first time it only
    /// registers (the caller looks again); then it queues (or refuses at
    /// `maxPendingRequests`), closes an idle HTTP/1.1 connection so its
    /// socket frees a slot, and waits for a socket to close or a connection
    /// to go idle.
    pub async fn wait(&mut self, h1: &H1Pool) -> Result<(), Limit> {
        let Some(freed) = self.freed.take() else {
            self.freed = Some(self.breaker.freed());
            return Ok(());
        };
        if self.place.is_none() {
            self.breaker.overflowed(Limit::Connections);
            self.place = Some(self.breaker.pending().ok_or(Limit::Pending)?);
        }
        h1.evict_one();
        self.freed = Some(self.breaker.freed());
        freed.await;
        Ok(())
    }
}

/// An endpoint's HTTP/2 connection and the streams it has been given.
pub struct H2Conn {
    pub sender: http2::SendRequest<UpstreamBody>,
    pub streams: u32,
}

/// An endpoint's connection, locked while it is being (re)opened.
pub type H2Slot = Arc<tokio::sync::Mutex<Option<H2Conn>>>;

/// HTTP/2 upstream connections: one per endpoint, multiplexed. Requests keep
/// the `:authority` the client used (a pool keyed by the request URI would
/// make `:authority` the endpoint address).
#[derive(Default)]
pub struct H2Pool {
    conns: Mutex<HashMap<SocketAddr, H2Slot>>,
}

impl H2Pool {
    pub fn slot(&self, addr: SocketAddr) -> H2Slot {
        self.conns
            .lock()
            .expect("h2 pool")
            .entry(addr)
            .or_default()
            .clone()
    }
}

impl H2Conn {
    /// A stream on this connection, unless it closed or has carried
    /// `max_streams` (0: unlimited).
    pub fn stream(&mut self, max_streams: u32) -> Option<http2::SendRequest<UpstreamBody>> {
        if self.sender.is_closed() || (max_streams != 0 && self.streams >= max_streams) {
            return None;
        }
        self.streams += 1;
        Some(self.sender.clone())
    }
}
