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
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use hyper::client::conn::{http1, http2};

use crate::{
    breaker::{Breaker, Freed, Limit, Permit},
    cluster::UpstreamBody,
};

/// An idle HTTP/1.1 connection and how many requests it has carried.
pub struct IdleH1 {
    pub sender: http1::SendRequest<UpstreamBody>,
    pub uses: u32,
    since: Instant,
}

#[derive(Default)]
pub struct H1Pool {
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    conns: HashMap<SocketAddr, Vec<IdleH1>>,
    /// A task closes expired connections while any are idle.
    sweeping: bool,
}

impl H1Pool {
    /// The most recently used live idle connection to `addr`; stale and
    /// closed ones met on the way are dropped (closing their sockets).
    pub fn take(&self, addr: SocketAddr, idle_timeout: Duration) -> Option<IdleH1> {
        let mut idle = self.idle.lock().expect("h1 pool");
        let conns = idle.conns.get_mut(&addr)?;
        while let Some(c) = conns.pop() {
            if c.sender.is_ready() && c.since.elapsed() < idle_timeout {
                return Some(c);
            }
        }
        None
    }

    /// Keeps a connection whose exchange finished for the next request; one
    /// still unused after `idle_timeout` is closed by the sweeper (within a
    /// quarter of `idle_timeout` more).
    pub fn put(
        self: &Arc<Self>,
        addr: SocketAddr,
        sender: http1::SendRequest<UpstreamBody>,
        uses: u32,
        idle_timeout: Duration,
    ) {
        let mut idle = self.idle.lock().expect("h1 pool");
        idle.conns.entry(addr).or_default().push(IdleH1 {
            sender,
            uses,
            since: Instant::now(),
        });
        if !idle.sweeping {
            idle.sweeping = true;
            tokio::spawn(sweep(Arc::downgrade(self), idle_timeout));
        }
    }

    /// Closes one idle connection (the oldest) to free its socket for a
    /// request to another endpoint. Whether there was one.
    fn evict_one(&self) -> bool {
        let mut idle = self.idle.lock().expect("h1 pool");
        let oldest = idle
            .conns
            .iter()
            .filter_map(|(a, cs)| cs.first().map(|c| (c.since, *a)))
            .min();
        match oldest {
            Some((_, addr)) => {
                idle.conns.get_mut(&addr).expect("present").remove(0);
                true
            }
            None => false,
        }
    }
}

/// Closes idle connections older than `idle_timeout` every quarter of it,
/// until none is idle (the next `put` starts it again) or the pool is gone.
async fn sweep(pool: Weak<H1Pool>, idle_timeout: Duration) {
    let period = (idle_timeout / 4).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = pool.idle.lock().expect("h1 pool");
        idle.conns.retain(|_, cs| {
            cs.retain(|c| c.since.elapsed() < idle_timeout && !c.sender.is_closed());
            !cs.is_empty()
        });
        if idle.conns.is_empty() {
            idle.sweeping = false;
            return;
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
