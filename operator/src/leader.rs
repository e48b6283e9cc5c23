//! Leader election with a coordination.k8s.io Lease, so two replicas never
//! both write. Optimistic concurrency (resourceVersion) decides races.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tracing::{error, info};

const LEASE_SECONDS: i32 = 15;
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// Blocks until this process holds the Lease, then keeps renewing it in the
/// background. Losing it ends the process: a replica that might be stale
/// must not keep writing, and its restart rejoins the election.
pub async fn acquire(
    client: Client,
    namespace: &str,
    name: &str,
    identity: &str,
) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client, namespace);
    loop {
        if try_hold(&leases, name, identity).await? {
            info!(%identity, lease = %name, "became leader");
            break;
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
    let (leases, name, identity) = (leases.clone(), name.to_owned(), identity.to_owned());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match try_hold(&leases, &name, &identity).await {
                Ok(true) => {}
                Ok(false) => {
                    error!(%identity, "lost the leader lease; exiting");
                    std::process::exit(1);
                }
                Err(e) => error!("renewing the leader lease failed: {e}"),
            }
        }
    });
    Ok(())
}

/// One attempt to take or renew the Lease. True when we hold it afterwards.
pub async fn try_hold(
    leases: &Api<Lease>,
    name: &str,
    identity: &str,
) -> Result<bool, kube::Error> {
    let now = jiff::Timestamp::now();
    let Some(mut lease) = leases.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.into()),
                lease_duration_seconds: Some(LEASE_SECONDS),
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
    spec.lease_duration_seconds = Some(LEASE_SECONDS);
    spec.renew_time = Some(MicroTime(now));
    // The resourceVersion we read makes this a compare-and-swap.
    match leases.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
