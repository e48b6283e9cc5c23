//! Leader election on the real API server: one holder at a time, renewals
//! keep it, an expired lease can be taken over, and a leader that loses it
//! or cannot renew it steps down.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use remora_operator::{
    health::{Health, Role},
    leader::{Leadership, LeaseTimings, acquire_with, try_hold},
};
use remora_testkit::{ControlPlane, repo_root, require_control_plane};

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

/// Short timings, so a step-down shows within seconds.
fn quick() -> LeaseTimings {
    LeaseTimings {
        lease_duration: Duration::from_secs(4),
        renew_every: Duration::from_millis(300),
        renew_deadline: Duration::from_secs(2),
    }
}

async fn lost_within(leadership: Leadership, limit: Duration) -> bool {
    tokio::time::timeout(limit, leadership.lost()).await.is_ok()
}

#[tokio::test]
async fn the_leader_steps_down_when_another_replica_holds_the_lease() {
    require_control_plane!();
    let cp = ControlPlane::shared().await;
    let ns = cp.namespace("takeover").await.unwrap();
    let health = Arc::new(Health::new(Role::Standby));
    let leadership = acquire_with(
        cp.client().await.unwrap(),
        ns.name(),
        "remora-operator",
        "replica-a",
        health.clone(),
        quick(),
    )
    .await
    .unwrap();
    assert_eq!(health.role(), Role::Leader);

    // Another holder writes itself in (as after a partition, or by hand).
    let leases: Api<Lease> = ns.api();
    let mut lease = leases.get("remora-operator").await.unwrap();
    lease.spec.as_mut().unwrap().holder_identity = Some("replica-b".into());
    lease.spec.as_mut().unwrap().renew_time.as_mut().unwrap().0 = jiff::Timestamp::now();
    leases
        .replace("remora-operator", &Default::default(), &lease)
        .await
        .unwrap();

    assert!(
        lost_within(leadership, Duration::from_secs(5)).await,
        "replica-a kept leading after replica-b took the lease"
    );
    assert_eq!(health.role(), Role::SteppedDown);
    assert!(
        !health.readiness().0,
        "a replica that stepped down is not ready"
    );
}

#[tokio::test]
async fn the_leader_steps_down_when_renewing_keeps_failing() {
    require_control_plane!();
    let cp = ControlPlane::shared().await;
    let ns = cp.namespace("renew-fails").await.unwrap();
    let health = Arc::new(Health::new(Role::Standby));
    let leadership = acquire_with(
        cp.client().await.unwrap(),
        ns.name(),
        "remora-operator",
        "replica-a",
        health.clone(),
        quick(),
    )
    .await
    .unwrap();

    // The namespace goes: every renewal now fails (its Lease is deleted and
    // a new one cannot be created in a terminating or missing namespace).
    cp.kubectl_ok(["delete", "namespace", ns.name(), "--wait=false"])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert!(
        lost_within(leadership, Duration::from_secs(10)).await,
        "replica-a kept leading while every renewal failed"
    );
    // Not at the first error: it retries until the renew deadline.
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "stepped down after {:?}",
        started.elapsed()
    );
    assert_eq!(health.role(), Role::SteppedDown);
}

/// The real binary: `/readyz` says leader once its caches synced, and a
/// second replica is ready as a standby (what a Deployment of two with a
/// PodDisruptionBudget needs) until the leader goes.
#[tokio::test]
async fn readyz_reports_leadership_and_synced_caches() {
    require_control_plane!();
    let cp = ControlPlane::shared().await;
    cp.install_crds(repo_root().join("crds")).await.unwrap();
    let ns = cp.namespace("readyz").await.unwrap();
    let a = Replica::start(cp, ns.name(), "replica-a");
    let body = a
        .wait_for_readyz(|code, body| code == 200 && body == "leader: caches synced")
        .await;
    assert_eq!(body, (200, "leader: caches synced".into()));

    let b = Replica::start(cp, ns.name(), "replica-b");
    let (code, body) = b
        .wait_for_readyz(|code, body| code == 200 && body.starts_with("standby"))
        .await;
    assert_eq!(
        (code, body.as_str()),
        (200, "standby: another replica holds the leader lease")
    );

    drop(a);
    // The lease expires 15 s after the last renewal; then b takes over.
    let (code, body) = b
        .wait_for_readyz(|code, body| code == 200 && body.starts_with("leader"))
        .await;
    assert_eq!((code, body.as_str()), (200, "leader: caches synced"));
}

struct Replica {
    child: std::process::Child,
    port: u16,
    /// The replica's log, shown when a test fails.
    log: std::path::PathBuf,
}

impl Replica {
    fn start(cp: &ControlPlane, namespace: &str, identity: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = cp
            .dir()
            .join(format!("operator-{namespace}-{identity}.log"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_remora-operator"))
            .args([
                "--leader-election=true",
                "--log=info",
                &format!("--namespace={namespace}"),
                &format!("--http-addr=127.0.0.1:{port}"),
            ])
            .env("KUBECONFIG", cp.kubeconfig_path())
            .env("POD_NAME", identity)
            // Logs go to stdout.
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Self { child, port, log }
    }

    /// `GET /readyz`: status code and body, or None while nothing listens.
    async fn readyz(&self) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .ok()?
            .ok()?;
        let code = out.split(' ').nth(1)?.parse().ok()?;
        let body = out.split_once("\r\n\r\n")?.1.to_owned();
        Some((code, body))
    }

    async fn wait_for_readyz(&self, want: impl Fn(u16, &str) -> bool) -> (u16, String) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut last = None;
        while std::time::Instant::now() < deadline {
            if let Some((code, body)) = self.readyz().await {
                if want(code, &body) {
                    return (code, body);
                }
                last = Some((code, body));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        panic!("/readyz never answered as wanted; last answer {last:?}\n{log}");
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
