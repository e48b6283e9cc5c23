//! In a control plane of its own (nothing else changes the mesh here): a
//! change that renders the same config does not rewrite the ConfigMap.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use remora_api::crd::RateLimitPolicy;
use remora_testkit::require_control_plane;
use serde_json::json;

#[tokio::test]
async fn policies_get_status_and_unchanged_configs_are_not_rewritten() {
    require_control_plane!();
    let cp = setup().await;
    // No inject label: holding a Remora resource puts the namespace in the mesh.
    let ns = cp.namespace("quiet").await.unwrap();
    apply(
        cp,
        ns.name(),
        r#"
apiVersion: mesh.remora.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: dupes}
spec:
  limits:
    - {name: all, requests: 10}
    - {name: all, requests: 5}
"#,
    )
    .await;
    let policies: Api<RateLimitPolicy> = ns.api();
    let message = eventually("InvalidSpec on the policy", || async {
        let s = policies.get("dupes").await.ok()?.status?;
        s.conditions
            .into_iter()
            .find(|c| c.type_ == "Accepted" && c.status == "False")
            .map(|c| c.message)
    })
    .await;
    assert!(
        message.contains("spec.limits[1].name: limit \"all\" is defined twice"),
        "{message}"
    );

    let config_maps: Api<ConfigMap> = ns.api();
    let (_, version) = eventually("config in a namespace that only holds a policy", || {
        sidecar_config(&config_maps)
    })
    .await;
    // A change that renders the same config (an annotation) is not written again.
    policies
        .patch(
            "dupes",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, after) = sidecar_config(&config_maps).await.unwrap();
    assert_eq!(version, after, "an unchanged config must not be rewritten");
}
