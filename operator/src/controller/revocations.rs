//! The mesh's revocation list that outlives MeshCertificates.
//!
//! A revoked certificate stays valid until its notAfter, whether or not its
//! MeshCertificate still exists. When one is deleted, its finalizer moves its
//! revocations here: ConfigMap `remora-revocations` in the operator's
//! namespace, one key per serial, whose value says until when. Every
//! namespace's config lists these serials next to those of live
//! MeshCertificates; this controller prunes entries that have expired, so the
//! list never grows without bound.
//!
//! Entries are added and removed with JSON merge patches of single keys: two
//! certificates deleted at once never overwrite each other's entries, and
//! nothing is read, modified and written back.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{ObjectMeta, Patch, PatchParams},
    runtime::{controller::Action, reflector::ObjectRef, watcher},
};
use remora_api::crd::Revocation;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::info;

use super::{Context, Error, FIELD_MANAGER, MANAGED_BY, Result};

const CONTROLLER: &str = "revocations";
/// The ConfigMap, in the operator's namespace.
pub const STORE: &str = "remora-revocations";
/// Pruning happens at the next expiry, and at least this often.
const RECHECK: Duration = Duration::from_secs(3600);

/// One entry's value: JSON, so a person reading the ConfigMap sees whose it was.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StoredRevocation {
    pub not_after: String,
    /// `namespace/name` of the MeshCertificate it came from.
    #[serde(default)]
    pub certificate: String,
}

/// The store's entries, serial to entry. Values that do not parse are kept
/// with no expiry readable, and so are listed until someone fixes them:
/// failing closed is the safe side for a revocation list.
pub fn entries(cm: &ConfigMap) -> BTreeMap<String, Option<jiff::Timestamp>> {
    cm.data
        .iter()
        .flatten()
        .map(|(serial, value)| {
            let not_after = serde_json::from_str::<StoredRevocation>(value)
                .ok()
                .and_then(|v| v.not_after.parse().ok());
            (serial.clone(), not_after)
        })
        .collect()
}

/// Whether a revocation that ends at `not_after` still needs listing.
pub fn in_force(not_after: Option<jiff::Timestamp>, now: jiff::Timestamp) -> bool {
    not_after.is_none_or(|t| t > now)
}

/// Adds `revocations` (of the MeshCertificate `certificate`) to the store,
/// creating it first when it does not exist.
pub async fn record(ctx: &Context, certificate: &str, revocations: &[Revocation]) -> Result<()> {
    if revocations.is_empty() {
        return Ok(());
    }
    let data: BTreeMap<&str, String> = revocations
        .iter()
        .map(|r| {
            let value = StoredRevocation {
                not_after: r.not_after.clone(),
                certificate: certificate.to_owned(),
            };
            Ok((r.serial.as_str(), serde_json::to_string(&value)?))
        })
        .collect::<Result<_>>()?;
    let patch = json!({ "data": data });
    let api = store_api(ctx);
    for _ in 0..2 {
        match api
            .patch(STORE, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                info!(%certificate, serials = ?data.keys().collect::<Vec<_>>(), "kept revocations after deletion");
                return Ok(());
            }
            Err(kube::Error::Api(e)) if e.code == 404 => ensure_store(ctx).await?,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::NoNamespace(format!(
        "ConfigMap {}/{STORE} could not be created",
        ctx.config.namespace
    )))
}

fn store_api(ctx: &Context) -> Api<ConfigMap> {
    Api::namespaced(ctx.client.clone(), &ctx.config.namespace)
}

/// Creates the store with server-side apply. The apply owns no data keys, so
/// applying it again never removes an entry.
async fn ensure_store(ctx: &Context) -> Result<()> {
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(STORE.into()),
            namespace: Some(ctx.config.namespace.clone()),
            labels: Some([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())].into()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    store_api(ctx)
        .patch(
            STORE,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await?;
    Ok(())
}

/// Prunes expired entries, then sleeps until the next one expires.
async fn reconcile(cm: Arc<ConfigMap>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let now = jiff::Timestamp::now();
    let entries = entries(&cm);
    let expired: BTreeMap<&str, serde_json::Value> = entries
        .iter()
        .filter(|(_, t)| !in_force(**t, now))
        .map(|(s, _)| (s.as_str(), serde_json::Value::Null))
        .collect();
    if !expired.is_empty() {
        store_api(&ctx)
            .patch(
                STORE,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "data": expired })),
            )
            .await?;
        info!(serials = ?expired.keys().collect::<Vec<_>>(), "pruned expired revocations");
    }
    ctx.succeeded(&ObjectRef::from_obj(&*cm));
    let next = entries
        .values()
        .flatten()
        .filter(|t| **t > now)
        .filter_map(|t| Duration::try_from(t.duration_since(now)).ok())
        .min()
        .map_or(RECHECK, |d| d.min(RECHECK));
    Ok(Action::requeue(next + Duration::from_secs(1)))
}

fn error_policy(cm: Arc<ConfigMap>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.reconcile_failed(CONTROLLER, &*cm, err)
}

/// The watch of the store alone, by name.
pub fn store_watch() -> watcher::Config {
    watcher::Config::default().fields(&format!("metadata.name={STORE}"))
}

pub async fn run(ctx: Arc<Context>) {
    ctx.controller(CONTROLLER, store_api(&ctx), store_watch())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_and_unreadable_entries() {
        let cm = ConfigMap {
            data: Some(
                [
                    (
                        "aa".to_owned(),
                        r#"{"notAfter":"2020-01-01T00:00:00Z","certificate":"a/b"}"#.to_owned(),
                    ),
                    (
                        "bb".to_owned(),
                        r#"{"notAfter":"2999-01-01T00:00:00Z"}"#.to_owned(),
                    ),
                    ("cc".to_owned(), "garbage".to_owned()),
                ]
                .into(),
            ),
            ..ConfigMap::default()
        };
        let now = jiff::Timestamp::now();
        let in_force: Vec<_> = entries(&cm)
            .into_iter()
            .filter(|(_, t)| in_force(*t, now))
            .map(|(s, _)| s)
            .collect();
        assert_eq!(in_force, ["bb", "cc"], "unreadable entries fail closed");
    }
}
