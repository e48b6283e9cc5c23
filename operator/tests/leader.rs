//! Leader election on the real API server: one holder at a time, renewals
//! keep it, an expired lease can be taken over.

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use remora_operator::leader::try_hold;
use remora_testkit::{ControlPlane, require_control_plane};

#[tokio::test]
async fn one_replica_holds_the_lease_until_it_expires() {
    require_control_plane!();
    let cp = ControlPlane::shared().await;
    let ns = cp.namespace("leader").await.unwrap();
    let leases: Api<Lease> = ns.api();

    assert!(
        try_hold(&leases, "remora-operator", "replica-a")
            .await
            .unwrap(),
        "the first replica takes a new lease"
    );
    assert!(
        !try_hold(&leases, "remora-operator", "replica-b")
            .await
            .unwrap(),
        "a held lease is not taken"
    );
    assert!(
        try_hold(&leases, "remora-operator", "replica-a")
            .await
            .unwrap(),
        "the holder renews"
    );

    // Pretend replica-a stopped renewing 20 s ago (the lease lasts 15 s).
    let mut lease = leases.get("remora-operator").await.unwrap();
    let spec = lease.spec.as_mut().unwrap();
    spec.renew_time.as_mut().unwrap().0 =
        jiff::Timestamp::now() - jiff::SignedDuration::from_secs(20);
    leases
        .replace("remora-operator", &Default::default(), &lease)
        .await
        .unwrap();

    assert!(
        try_hold(&leases, "remora-operator", "replica-b")
            .await
            .unwrap(),
        "an expired lease is taken over"
    );
    let lease = leases.get("remora-operator").await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(lease.lease_transitions, Some(1));
    assert!(
        !try_hold(&leases, "remora-operator", "replica-a")
            .await
            .unwrap(),
        "the old holder is out"
    );
}
