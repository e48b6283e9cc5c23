//! Circuit breaking: per-cluster caps on open upstream connections, requests
//! waiting for one, requests in flight and retries in flight, each refusal
//! counted in `upstream_overflow_total{cluster,limit}`.
//!
//! Every cap is a semaphore taken with `try_acquire`, so a limit admits
//! exactly its number and refuses the next one at once, however many tasks
//! race for it. A connection's permit lives inside its socket wrapper
//! ([`ConnectionSlot`]), so it is returned when the socket is closed, not
//! when a pool forgets the connection.

use std::sync::Arc;

use remora_api::config::ConnectionLimits;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, SemaphorePermit};

use crate::metrics::{Counter, Gauge, GaugeGuard, Registry};

/// Which cap refused a request or connection (the metric's `limit` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Connections,
    Pending,
    Requests,
    Retries,
}

impl Limit {
    pub fn label(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::Pending => "pending",
            Limit::Requests => "requests",
            Limit::Retries => "retries",
        }
    }

    /// The config field, for messages.
    pub fn field(self) -> &'static str {
        match self {
            Limit::Connections => "maxConnections",
            Limit::Pending => "maxPendingRequests",
            Limit::Requests => "maxRequests",
            Limit::Retries => "maxRetries",
        }
    }
}

pub struct Breaker {
    connections: Arc<Semaphore>,
    /// Woken when a connection closes or goes back to the pool idle, so
    /// requests waiting for a connection look again.
    freed: Arc<Notify>,
    pending: Semaphore,
    requests: Semaphore,
    retries: Semaphore,
    /// Per [`Limit`], in its order.
    overflow: [Counter; 4],
    /// `upstream_connection_active`: one per open socket.
    open: Gauge,
    pub limits: ConnectionLimits,
}

impl Breaker {
    pub fn new(limits: &ConnectionLimits, reg: &Registry, cluster: &str, open: Gauge) -> Self {
        let counter = |l: Limit| {
            reg.counter(
                "upstream_overflow_total",
                "Requests, retries and connections refused by a circuit-breaking limit",
                vec![
                    ("cluster", cluster.to_string()),
                    ("limit", l.label().into()),
                ],
            )
        };
        let sem = |n: u32| Semaphore::new(n as usize);
        Self {
            connections: Arc::new(sem(limits.max_connections)),
            freed: Arc::new(Notify::new()),
            pending: sem(limits.max_pending_requests),
            requests: sem(limits.max_requests),
            retries: sem(limits.max_retries),
            overflow: [
                counter(Limit::Connections),
                counter(Limit::Pending),
                counter(Limit::Requests),
                counter(Limit::Retries),
            ],
            open,
            limits: limits.clone(),
        }
    }

    pub fn overflowed(&self, l: Limit) {
        self.overflow[l as usize].inc();
    }

    fn take<'a>(&'a self, sem: &'a Semaphore, l: Limit) -> Option<Permit<'a>> {
        match sem.try_acquire() {
            Ok(p) => Some(Permit(p)),
            Err(_) => {
                self.overflowed(l);
                None
            }
        }
    }

    /// A request in flight (each try), or `None` (counted) at `maxRequests`.
    pub fn request(&self) -> Option<Permit<'_>> {
        self.take(&self.requests, Limit::Requests)
    }

    /// A retry in flight, or `None` (counted) at `maxRetries`.
    pub fn retry(&self) -> Option<Permit<'_>> {
        self.take(&self.retries, Limit::Retries)
    }

    /// A place in the queue for a connection, or `None` (counted) at
    /// `maxPendingRequests`.
    pub fn pending(&self) -> Option<Permit<'_>> {
        self.take(&self.pending, Limit::Pending)
    }

    /// A new upstream socket, or `None` at `maxConnections` (not counted: an
    /// HTTP request may still get a pooled connection or wait for one).
    pub fn connection(&self) -> Option<ConnectionSlot> {
        let permit = self.connections.clone().try_acquire_owned().ok()?;
        Some(ConnectionSlot {
            permit: Some(permit),
            _open: self.open.track(),
            freed: self.freed.clone(),
        })
    }

    /// Wakes requests waiting for a connection (one went back to the pool).
    pub fn wake_pending(&self) {
        self.freed.notify_waiters();
    }

    /// Resolves at the next [`Breaker::wake_pending`] or socket close after
    /// this call: take it, look once more, then wait, so no wake-up is
    /// missed. Only requests that found the cluster at its cap take one.
    pub fn freed(&self) -> Freed {
        let mut n = Box::pin(self.freed.clone().notified_owned());
        n.as_mut().enable();
        n
    }
}

pub type Freed = std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>;

/// A held place under one of the caps, released on drop.
pub struct Permit<'a>(#[allow(dead_code)] SemaphorePermit<'a>);

/// The right to one open upstream socket; it travels with the socket and is
/// given back (waking waiting requests) when the socket is dropped.
pub struct ConnectionSlot {
    permit: Option<OwnedSemaphorePermit>,
    _open: GaugeGuard,
    freed: Arc<Notify>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        // The permit first, so a woken request finds it free.
        drop(self.permit.take());
        self.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(limits: serde_json::Value) -> (Registry, Breaker) {
        let reg = Registry::default();
        let limits: ConnectionLimits = serde_json::from_value(limits).unwrap();
        let open = reg.gauge("upstream_connection_active", "open", vec![]);
        let b = Breaker::new(&limits, &reg, "c", open);
        (reg, b)
    }

    fn overflow(reg: &Registry, limit: &str) -> u64 {
        let text = reg.render();
        let series = format!("upstream_overflow_total{{cluster=\"c\",limit=\"{limit}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
            .unwrap()
    }

    #[test]
    fn each_cap_admits_exactly_its_number_and_counts_the_rest() {
        let (reg, b) = breaker(serde_json::json!({
            "maxConnections": 2, "maxPendingRequests": 1, "maxRequests": 3, "maxRetries": 0
        }));
        let held: Vec<_> = (0..3)
            .map(|_| b.request().expect("under the cap"))
            .collect();
        assert!(b.request().is_none());
        assert!(b.request().is_none());
        assert_eq!(overflow(&reg, "requests"), 2);
        drop(held);
        assert!(b.request().is_some(), "released on drop");

        assert!(b.retry().is_none(), "maxRetries 0: no retries");
        assert_eq!(overflow(&reg, "retries"), 1);

        let p = b.pending().unwrap();
        assert!(b.pending().is_none());
        assert_eq!(overflow(&reg, "pending"), 1);
        drop(p);

        let conns: Vec<_> = (0..2).map(|_| b.connection().unwrap()).collect();
        assert!(b.connection().is_none());
        assert_eq!(b.open.get(), 2);
        assert_eq!(overflow(&reg, "connections"), 0, "the caller counts");
        drop(conns);
        assert_eq!(b.open.get(), 0);
        assert!(b.connection().is_some());
    }

    #[tokio::test]
    async fn a_closed_socket_wakes_a_waiting_request_with_its_permit_free() {
        let (_reg, b) = breaker(serde_json::json!({ "maxConnections": 1 }));
        let b = Arc::new(b);
        let slot = b.connection().unwrap();
        let freed = b.freed();
        assert!(b.connection().is_none());
        drop(slot);
        freed.await;
        assert!(b.connection().is_some());
    }
}
