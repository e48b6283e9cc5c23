//! Opaque TCP pass-through through the same clusters, balancers and metrics
//! as HTTP: the table for the original destination (the one that owns its
//! address and port, else an address-less table on its port) picks the
//! cluster, else the listener's default cluster.

use std::sync::Arc;

use remora_api::config::HashOn;
use tokio::sync::watch;

use crate::{
    balance::{Outcome, hash_bytes},
    cluster::Target,
    http::Downstream,
    snapshot::Action,
    tls::Io,
};

/// Endpoints tried before giving up on a connection.
const CONNECT_TRIES: usize = 3;

/// Opaque streams have no request boundary, so draining does not cut them:
/// they run until they close or the drain deadline ends the process.
pub async fn proxy(mut down: Io, conn: Arc<Downstream>, _drain: watch::Receiver<bool>) {
    let snap = conn.shared.snapshot.load_full();
    let Some(policy) = snap.listeners.get(&conn.listener).cloned() else {
        return;
    };
    if let Some(authz) = &policy.authz
        && !authz.allows_connection(conn.peer_identity.as_deref())
    {
        policy.metrics.authz_denied.inc();
        tracing::info!(
            listener = %conn.listener,
            peer = conn.peer_identity.as_deref().unwrap_or("-"),
            "connection refused by authorization policy"
        );
        return;
    }
    let routed = snap
        .table(None, Some(conn.original_dst))
        .and_then(|t| t.routes.first())
        .filter(|r| matches!(r.action, Action::Clusters(_)))
        .and_then(|r| r.action.pick().cloned());
    let Some(cluster) = routed.or_else(|| policy.default_cluster.clone()) else {
        tracing::debug!(listener = %conn.listener, dst = %conn.original_dst, "no cluster for TCP connection");
        return;
    };
    drop(snap);
    let hash = match &cluster.config.load_balancer.hash_on {
        Some(HashOn::SourceIp) => Some(hash_bytes(conn.peer.ip().to_string().as_bytes())),
        _ => None,
    };
    let m = &cluster.metrics;
    m.request_total.inc();
    let _active = m.request_active.track();
    for _ in 0..CONNECT_TRIES {
        let Some(target) = cluster.pick(hash, conn.original_dst) else {
            return;
        };
        if target.addr() == conn.local {
            tracing::warn!(cluster = %cluster.name, "TCP connection would loop back to this listener");
            return;
        }
        match cluster.connect_tcp(target.addr()).await {
            Ok((mut up, _slot)) => {
                if let (Target::Endpoint(ep), Some(b)) = (&target, cluster.balancer()) {
                    b.record(ep, Outcome::Success);
                }
                if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                    tracing::debug!("tcp proxy: {e}");
                }
                return;
            }
            Err(e @ crate::Error::Overflow { .. }) => {
                // Circuit breaking: the downstream connection is closed.
                tracing::debug!(peer = %conn.peer, "{e}; closing the connection");
                return;
            }
            Err(e) => {
                tracing::debug!(cluster = %cluster.name, "{e}");
                if let (Target::Endpoint(ep), Some(b)) = (&target, cluster.balancer()) {
                    b.record(ep, Outcome::ConnectFailure);
                }
            }
        }
    }
}
