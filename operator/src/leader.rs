//! Leader election with a coordination.k8s.io Lease, so two replicas never
//! both write. Optimistic concurrency (resourceVersion) decides races.
//!
//! The leader renews every `renew_every`. When a renewal finds another
//! holder, or renewals keep failing until `renew_deadline` after the last
//! good one (client-go's RenewDeadline), it steps down: [`Leadership::lost`]
//! resolves, and the caller stops reconciling. The deadline is shorter than
//! the lease, so it stops before another replica may take over.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio::{sync::watch, time::Instant};
use tracing::{error, info, warn};

use crate::health::{Health, Role};

/// How long a Lease lasts and how it is kept.
#[derive(Clone, Copy, Debug)]
pub struct LeaseTimings {
    pub lease_duration: Duration,
    pub renew_every: Duration,
    /// Step down when no renewal succeeded for this long.
    pub renew_deadline: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(LEASE_SECONDS as u64),
            renew_every: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(10),
        }
    }
}

const LEASE_SECONDS: i32 = 15;

/// The Lease is held; [`Leadership::lost`] says when it no longer is.
pub struct Leadership {
    lost: watch::Receiver<bool>,
}

impl Leadership {
    /// Resolves once this replica has stepped down.
    pub async fn lost(mut self) {
        // An error means the renewer is gone, which only happens on step-down.
        let _ = self.lost.wait_for(|lost| *lost).await;
    }
}

/// [`acquire_with`] with the default timings, for a process that reports
/// its health elsewhere.
pub async fn acquire(
    client: Client,
    namespace: &str,
    name: &str,
    identity: &str,
) -> Result<Leadership, kube::Error> {
    let health = Arc::new(Health::new(Role::Standby));
    acquire_with(
        client,
        namespace,
        name,
        identity,
        health,
        LeaseTimings::default(),
    )
    .await
}

/// Blocks until this process holds the Lease, then keeps renewing it in the
/// background. `health` follows: standby, leader, stepped down.
pub async fn acquire_with(
    client: Client,
    namespace: &str,
    name: &str,
    identity: &str,
    health: Arc<Health>,
    timings: LeaseTimings,
) -> Result<Leadership, kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client, namespace);
    health.set_role(Role::Standby);
    loop {
        match try_hold_for(&leases, name, identity, timings.lease_duration).await {
            Ok(true) => break,
            Ok(false) => {}
            // A standby keeps trying: the API server may come back.
            Err(e) => warn!("taking the leader lease failed: {e}"),
        }
        tokio::time::sleep(timings.renew_every).await;
    }
    info!(%identity, lease = %name, "became leader");
    health.set_role(Role::Leader);
    let (tx, lost) = watch::channel(false);
    let (name, identity) = (name.to_owned(), identity.to_owned());
    tokio::spawn(async move {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(timings.renew_every).await;
            let left = timings
                .renew_deadline
                .saturating_sub(last_renewed.elapsed());
            let attempt = tokio::time::timeout(
                left,
                try_hold_for(&leases, &name, &identity, timings.lease_duration),
            )
            .await;
            match attempt {
                Ok(Ok(true)) => last_renewed = Instant::now(),
                Ok(Ok(false)) => {
                    error!(%identity, "another replica holds the leader lease; stepping down");
                    break;
                }
                Ok(Err(e)) if last_renewed.elapsed() < timings.renew_deadline => {
                    warn!("renewing the leader lease failed, retrying: {e}");
                }
                Ok(Err(e)) => {
                    error!(%identity, "renewing the leader lease failed for {:?}; stepping down: {e}", timings.renew_deadline);
                    break;
                }
                Err(_) => {
                    error!(%identity, "renewing the leader lease timed out; stepping down");
                    break;
                }
            }
        }
        health.set_role(Role::SteppedDown);
        let _ = tx.send(true);
    });
    Ok(Leadership { lost })
}

/// One attempt to take or renew the Lease. True when we hold it afterwards.
pub async fn try_hold(
    leases: &Api<Lease>,
    name: &str,
    identity: &str,
) -> Result<bool, kube::Error> {
    try_hold_for(
        leases,
        name,
        identity,
        Duration::from_secs(LEASE_SECONDS as u64),
    )
    .await
}

/// [`try_hold`] for a Lease of `duration`.
pub async fn try_hold_for(
    leases: &Api<Lease>,
    name: &str,
    identity: &str,
    duration: Duration,
) -> Result<bool, kube::Error> {
    let seconds = i32::try_from(duration.as_secs().max(1)).unwrap_or(LEASE_SECONDS);
    let now = jiff::Timestamp::now();
    let Some(mut lease) = leases.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.into()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let ours = spec.holder_identity.as_deref() == Some(identity);
    let expired = spec.renew_time.as_ref().is_none_or(|t| {
        let ttl = jiff::SignedDuration::from_secs(i64::from(
            spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS),
        ));
        t.0 + ttl < now
    });
    if !ours && !expired {
        return Ok(false);
    }
    if !ours {
        spec.holder_identity = Some(identity.into());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = Some(MicroTime(now));
    // The resourceVersion we read makes this a compare-and-swap.
    match leases.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
