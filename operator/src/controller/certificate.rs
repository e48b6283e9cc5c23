//! MeshCertificates: the operator is the mesh CA.
//!
//! Issues a leaf certificate per MeshCertificate into its Secret, renews it
//! when less than `rotateBefore` remains, warns from `warnBefore`, re-issues
//! when the spec or the CA changes, and on `revoked: true` records the
//! serial (rendered into every namespace's config) and issues a fresh one.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::StreamExt;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{
        controller::Action,
        events::EventType,
        finalizer::{Event as FinalizerEvent, finalizer},
        reflector::ObjectRef,
        watcher,
    },
};
use remora_api::crd::{MeshCertificate, MeshCertificateSpec, MeshCertificateStatus, Revocation};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::info;

use super::{
    Context, Error, FIELD_MANAGER, MANAGED_BY, OperatorConfig, Result, condition, revocations,
    set_condition,
};
use crate::ca::{LeafRequest, MeshCa, certificate_facts};

const CONTROLLER: &str = "mesh_certificate";
/// The hash of the spec fields a certificate is issued from.
const SPEC_HASH: &str = "remora.dev/certificate-spec-hash";
/// The DESIGN's hourly check of certificate state.
const RECHECK: Duration = Duration::from_secs(3600);
/// Held until the certificate's revocations are in the revocation store.
pub const FINALIZER: &str = "mesh.remora.dev/revocations";

/// Loads the CA from its Secret, creating a new CA there on first start.
pub async fn load_or_create_ca(client: Client, config: &OperatorConfig) -> Result<MeshCa> {
    let secrets: Api<Secret> = Api::namespaced(client, &config.namespace);
    for _ in 0..3 {
        if let Some(secret) = secrets.get_opt(&config.ca_secret).await? {
            let field = |k: &str| {
                secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(k))
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    .unwrap_or_default()
            };
            return Ok(MeshCa::from_pem(&field("tls.crt"), &field("tls.key"))?);
        }
        let ca = MeshCa::generate(&config.trust_domain)?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(config.ca_secret.clone()),
                namespace: Some(config.namespace.clone()),
                labels: Some([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())].into()),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(
                [
                    (
                        "tls.crt".to_owned(),
                        ByteString(ca.cert_pem().as_bytes().to_vec()),
                    ),
                    (
                        "tls.key".to_owned(),
                        ByteString(ca.key_pem().as_bytes().to_vec()),
                    ),
                    (
                        "ca.crt".to_owned(),
                        ByteString(ca.cert_pem().as_bytes().to_vec()),
                    ),
                ]
                .into(),
            ),
            ..Secret::default()
        };
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                info!(secret = %config.ca_secret, namespace = %config.namespace, "created the mesh CA");
                return Ok(ca);
            }
            // Another replica won the race: read theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::NoNamespace(format!(
        "CA Secret {}/{} could not be read or created",
        config.namespace, config.ca_secret
    )))
}

fn spec_hash(spec: &MeshCertificateSpec, ca_pem: &str) -> String {
    let mut h = Sha256::new();
    h.update(
        serde_json::to_vec(&(&spec.service_account, spec.ttl, &spec.dns_names, &spec.uris))
            .expect("serializes"),
    );
    h.update(ca_pem.as_bytes());
    hex::encode(&h.finalize()[..16])
}

fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Why a new certificate is needed, if it is.
fn reissue_reason(
    secret: Option<&Secret>,
    want_hash: &str,
    status: &MeshCertificateStatus,
    rotate_before: Duration,
    now: SystemTime,
) -> Option<&'static str> {
    let Some(secret) = secret else {
        return Some("Issued");
    };
    let pem = secret
        .data
        .as_ref()
        .and_then(|d| d.get("tls.crt"))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned());
    let Some(facts) = pem.and_then(|p| certificate_facts(&p).ok()) else {
        return Some("Issued");
    };
    if secret.annotations().get(SPEC_HASH).map(String::as_str) != Some(want_hash) {
        return Some("Reissued");
    }
    if status.revoked_serials.contains(&facts.serial) {
        return Some("Reissued");
    }
    if facts.not_after.duration_since(now).unwrap_or_default() <= rotate_before {
        return Some("Renewed");
    }
    None
}

/// The finalizer is the only top-level action: on delete, the certificate's
/// revocations move to the mesh's revocation store before the object goes.
async fn reconcile(cert: Arc<MeshCertificate>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let ns = cert
        .namespace()
        .ok_or_else(|| Error::NoNamespace(cert.name_any()))?;
    let certs: Api<MeshCertificate> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&certs, FINALIZER, cert, |event| async {
        match event {
            FinalizerEvent::Apply(cert) => apply(cert, &ctx).await,
            FinalizerEvent::Cleanup(cert) => cleanup(&cert, &ctx).await,
        }
    })
    .await
    .map_err(Error::from_finalizer)
}

/// Moves the revocations of a MeshCertificate being deleted into the store,
/// including one asked for (`revoked: true`) but not yet acted on.
async fn cleanup(cert: &MeshCertificate, ctx: &Context) -> Result<Action> {
    let ns = cert.namespace().unwrap_or_default();
    let name = cert.name_any();
    let status = cert.status.clone().unwrap_or_default();
    let mut revocations = status.revocations.clone();
    let ttl = jiff::SignedDuration::try_from(cert.spec.ttl.as_std()).unwrap_or_default();
    // Serials from before revocations carried their expiry: a certificate
    // issued before now expires within one TTL from now.
    for serial in &status.revoked_serials {
        if !revocations.iter().any(|r| &r.serial == serial) {
            revocations.push(Revocation {
                serial: serial.clone(),
                not_after: (jiff::Timestamp::now() + ttl).to_string(),
            });
        }
    }
    if cert.spec.revoked && status.revoked_at.is_none() {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        let secret = secrets.get_opt(&cert.spec.secret_name_for(&name)).await?;
        if let Some(current) = secret.as_ref().and_then(current_certificate)
            && !revocations.iter().any(|r| r.serial == current.serial)
        {
            revocations.push(Revocation {
                serial: current.serial,
                not_after: rfc3339(current.not_after),
            });
        }
    }
    let now = jiff::Timestamp::now();
    revocations.retain(|r| revocations::in_force(r.not_after.parse().ok(), now));
    revocations::record(ctx, &format!("{ns}/{name}"), &revocations).await?;
    Ok(Action::await_change())
}

/// The certificate in a Secret, when it holds a readable one.
fn current_certificate(secret: &Secret) -> Option<crate::ca::CertificateFacts> {
    let pem = secret.data.as_ref()?.get("tls.crt")?;
    certificate_facts(&String::from_utf8_lossy(&pem.0)).ok()
}

async fn apply(cached: Arc<MeshCertificate>, ctx: &Context) -> Result<Action> {
    let ns = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let certs: Api<MeshCertificate> = Api::namespaced(ctx.client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    // The status is this controller's memory of what it revoked: read it
    // fresh, as a cache a moment behind our last write would revoke the
    // replacement certificate too and drop the serial revoked before it.
    let Some(cert) = certs.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    let cert = &cert;
    let generation = cert.metadata.generation;
    let mut status = cert.status.clone().unwrap_or_default();

    if let Err(errs) = cert.spec.validate() {
        let message = format!("MeshCertificate {ns}/{name}: {errs}");
        set_condition(
            &mut status.conditions,
            condition("Accepted", false, "InvalidSpec", message, generation),
        );
        return finish(ctx, &certs, cert, status, Action::await_change()).await;
    }
    set_condition(
        &mut status.conditions,
        condition(
            "Accepted",
            true,
            "Accepted",
            "the spec is valid",
            generation,
        ),
    );

    let secret_name = cert.spec.secret_name_for(&name);
    let mut secret = secrets.get_opt(&secret_name).await?;
    let current = secret.as_ref().and_then(current_certificate);
    let now = SystemTime::now();
    let ttl = cert.spec.ttl.as_std();
    keep_revocations_in_force(&mut status, now, ttl);

    // Revocation: the certificate current when `revoked` turned true goes on
    // the list, once; a fresh one is issued below because its serial is listed.
    let mut revoked_now = false;
    if !cert.spec.revoked {
        status.revoked_at = None;
    } else if status.revoked_at.is_none() {
        if let Some(current) = &current
            && !status
                .revocations
                .iter()
                .any(|r| r.serial == current.serial)
        {
            status.revocations.push(Revocation {
                serial: current.serial.clone(),
                not_after: rfc3339(current.not_after),
            });
            status.revoked_serials = serials(&status.revocations);
        }
        status.revoked_at = Some(super::status::now());
        revoked_now = true;
        // Recorded before the replacement is issued: if issuing fails, the
        // retry must not mistake the new certificate for the revoked one.
        write_status(&certs, cert, &mut status).await?;
    }

    let want_hash = spec_hash(&cert.spec, ctx.ca.cert_pem());
    let spiffe_id = cert.spec.spiffe_id(&ctx.config.trust_domain, &ns);
    if let Some(reason) = reissue_reason(
        secret.as_ref(),
        &want_hash,
        &status,
        cert.spec.rotate_before.as_std(),
        now,
    ) {
        let leaf = ctx.ca.issue(&LeafRequest {
            spiffe_id: spiffe_id.clone(),
            dns_names: cert.spec.dns_names.clone(),
            extra_uris: cert.spec.uris.clone(),
            ttl: cert.spec.ttl.as_std(),
        })?;
        let owner = cert
            .controller_owner_ref(&())
            .expect("resources have a uid");
        let new_secret = Secret {
            metadata: ObjectMeta {
                name: Some(secret_name.clone()),
                namespace: Some(ns.clone()),
                labels: Some(
                    [
                        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                        ("remora.dev/certificate".to_owned(), name.clone()),
                    ]
                    .into(),
                ),
                annotations: Some(
                    [
                        (SPEC_HASH.to_owned(), want_hash.clone()),
                        ("remora.dev/spiffe-id".to_owned(), spiffe_id.clone()),
                    ]
                    .into(),
                ),
                owner_references: Some(vec![owner]),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(
                [
                    ("tls.crt".to_owned(), ByteString(leaf.cert_pem.into_bytes())),
                    ("tls.key".to_owned(), ByteString(leaf.key_pem.into_bytes())),
                    (
                        "ca.crt".to_owned(),
                        ByteString(ctx.ca.cert_pem().as_bytes().to_vec()),
                    ),
                ]
                .into(),
            ),
            ..Secret::default()
        };
        secret = Some(
            secrets
                .patch(
                    &secret_name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&new_secret),
                )
                .await?,
        );
        ctx.metrics.certificates_issued.inc();
        let reason = if revoked_now { "Revoked" } else { reason };
        let note = format!(
            "issued serial {} for {spiffe_id}, valid until {}",
            leaf.serial,
            rfc3339(leaf.not_after)
        );
        info!(certificate = %format!("{ns}/{name}"), "{reason}: {note}");
        ctx.publish(cert, EventType::Normal, reason, &note).await;
    }

    // Status from the certificate actually in the Secret.
    let pem = secret
        .as_ref()
        .and_then(|s| s.data.as_ref()?.get("tls.crt"))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default();
    let facts = certificate_facts(&pem)?;
    let renewal = facts
        .not_after
        .checked_sub(cert.spec.rotate_before.as_std())
        .unwrap_or(now);
    let warn_at = facts
        .not_after
        .checked_sub(cert.spec.warn_before.as_std())
        .unwrap_or(now);
    status.spiffe_id = Some(spiffe_id);
    status.serial = Some(facts.serial.clone());
    status.not_before = Some(rfc3339(facts.not_before));
    status.not_after = Some(rfc3339(facts.not_after));
    status.renewal_time = Some(rfc3339(renewal));
    let remaining = facts.not_after.duration_since(now).unwrap_or_default();
    if now >= warn_at {
        let message = format!(
            "certificate expires in {}, at {}",
            remora_api::Duration(Duration::from_secs(remaining.as_secs())),
            rfc3339(facts.not_after)
        );
        let changed = set_condition(
            &mut status.conditions,
            condition("ExpiringSoon", true, "ExpiringSoon", &message, generation),
        );
        if changed {
            ctx.publish(cert, EventType::Warning, "ExpiringSoon", &message)
                .await;
        }
    } else {
        set_condition(
            &mut status.conditions,
            condition("ExpiringSoon", false, "Valid", "", generation),
        );
    }
    set_condition(
        &mut status.conditions,
        condition(
            "Ready",
            true,
            "Issued",
            format!("serial {} in Secret {secret_name}", facts.serial),
            generation,
        ),
    );

    // Wake at the next thing to do: warn, renew, prune a revocation, or the
    // hourly check.
    let revocation_ends = status
        .revocations
        .iter()
        .filter_map(|r| r.not_after.parse::<jiff::Timestamp>().ok())
        .map(SystemTime::from);
    let next = [warn_at, renewal]
        .into_iter()
        .chain(revocation_ends)
        .filter_map(|t| t.duration_since(now).ok())
        .filter(|d| !d.is_zero())
        .chain([RECHECK])
        .min()
        .unwrap_or(RECHECK);
    finish(
        ctx,
        &certs,
        cert,
        status,
        Action::requeue(next + Duration::from_secs(1)),
    )
    .await
}

/// Drops revocations of certificates that have expired (nothing accepts
/// them any more), and gives serials listed without an expiry, from before
/// revocations carried one, the latest expiry possible: one TTL from now.
fn keep_revocations_in_force(status: &mut MeshCertificateStatus, now: SystemTime, ttl: Duration) {
    for serial in &status.revoked_serials {
        if !status.revocations.iter().any(|r| &r.serial == serial) {
            status.revocations.push(Revocation {
                serial: serial.clone(),
                not_after: rfc3339(now + ttl),
            });
        }
    }
    let now = jiff::Timestamp::try_from(now).unwrap_or_else(|_| jiff::Timestamp::now());
    status
        .revocations
        .retain(|r| revocations::in_force(r.not_after.parse().ok(), now));
    status.revoked_serials = serials(&status.revocations);
}

fn serials(revocations: &[Revocation]) -> Vec<String> {
    revocations.iter().map(|r| r.serial.clone()).collect()
}

async fn write_status(
    api: &Api<MeshCertificate>,
    cert: &MeshCertificate,
    status: &mut MeshCertificateStatus,
) -> Result<()> {
    status.observed_generation = cert.metadata.generation;
    if cert.status.as_ref() != Some(status) {
        api.patch_status(
            &cert.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await?;
    }
    Ok(())
}

async fn finish(
    ctx: &Context,
    api: &Api<MeshCertificate>,
    cert: &MeshCertificate,
    mut status: MeshCertificateStatus,
    action: Action,
) -> Result<Action> {
    write_status(api, cert, &mut status).await?;
    ctx.succeeded(&ObjectRef::from_obj(cert));
    Ok(action)
}

fn error_policy(cert: Arc<MeshCertificate>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.reconcile_failed(CONTROLLER, &*cert, err)
}

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    ctx.controller(
        CONTROLLER,
        Api::<MeshCertificate>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .owns(
        Api::<Secret>::all(client),
        watcher::Config::default().labels("remora.dev/certificate"),
    )
    .run(reconcile, error_policy, ctx)
    .for_each(|_| futures::future::ready(()))
    .await;
}
