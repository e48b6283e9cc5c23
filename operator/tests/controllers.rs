//! The operator's controllers against a real kube-apiserver: resources are
//! created, changed and deleted through the API, and the ConfigMaps, Services,
//! Secrets, RBAC and status conditions are observed converging.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use k8s_openapi::api::{
    core::v1::{ConfigMap, Secret, Service},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use remora_api::crd::{MeshCertificate, ServiceRoute};
use remora_operator::ca::certificate_facts;
use remora_testkit::{ControlPlane, require_control_plane};
use serde_json::json;

fn reviews_service() -> &'static str {
    r#"
apiVersion: v1
kind: Service
metadata: {name: reviews}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 9080}]
"#
}

fn reviews_route(subsets: &[&str]) -> String {
    let subsets: String = subsets
        .iter()
        .map(|s| format!("    - {{name: {s}, labels: {{version: {s}}}}}\n"))
        .collect();
    format!(
        r#"
apiVersion: mesh.remora.dev/v1alpha1
kind: ServiceRoute
metadata: {{name: reviews}}
spec:
  service: reviews
  port: 9080
  subsets:
{subsets}  rules:
    - name: canary
      destinations:
        - {{subset: v1, weight: 95}}
        - {{subset: v2, weight: 5}}
"#
    )
}

#[tokio::test]
async fn mesh_namespace_gets_config_rbac_and_subset_services() {
    require_control_plane!();
    let cp = setup().await;
    let ns = cp
        .namespace_with_labels("mesh", &[("remora.dev/inject", "enabled")])
        .await
        .unwrap();
    let name = ns.name();
    let config_maps: Api<ConfigMap> = ns.api();

    // An empty mesh namespace still gets a config, and RBAC for its sidecars.
    let (config, _) = eventually("the first config", || sidecar_config(&config_maps)).await;
    assert_eq!(config.namespace.as_deref(), Some(name));
    assert!(
        config.tls.trust_bundle.contains("BEGIN CERTIFICATE"),
        "trust bundle rendered"
    );
    let role: Role = ns.api().get("remora-config-reader").await.unwrap();
    let rule = &role.rules.unwrap()[0];
    assert_eq!(
        rule.resource_names.as_deref(),
        Some(&["remora-config".to_owned()][..])
    );
    assert_eq!(rule.verbs, ["get", "list", "watch"]);
    let binding: RoleBinding = ns.api().get("remora-config-reader").await.unwrap();
    assert_eq!(
        binding.subjects.unwrap()[0].name,
        format!("system:serviceaccounts:{name}")
    );

    apply(cp, name, reviews_service()).await;
    apply(cp, name, &reviews_route(&["v1", "v2", "v3"])).await;
    let (config, _) = eventually("the route in the config", || async {
        sidecar_config(&config_maps).await.filter(|(c, _)| {
            c.routes
                .iter()
                .any(|t| t.name == format!("reviews.{name}:9080"))
        })
    })
    .await;
    assert!(
        config
            .routes
            .iter()
            .any(|t| t.name == format!("reviews.{name}:9080"))
    );
    assert!(config.cluster(&format!("reviews.{name}:9080|v2")).is_some());

    let services: Api<Service> = ns.api();
    let v2 = eventually("subset Service reviews-v2", || async {
        services.get_opt("reviews-v2").await.ok()?
    })
    .await;
    let spec = v2.spec.clone().unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"), "headless");
    let selector = spec.selector.unwrap();
    assert_eq!(selector.get("app").map(String::as_str), Some("reviews"));
    assert_eq!(selector.get("version").map(String::as_str), Some("v2"));
    assert_eq!(spec.ports.unwrap()[0].port, 9080);
    let routes: Api<ServiceRoute> = ns.api();
    let route = routes.get("reviews").await.unwrap();
    let owner = &v2.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("ServiceRoute", route.uid().unwrap().as_str(), Some(true))
    );

    let status = eventually("route Accepted", || async {
        let r = routes.get("reviews").await.ok()?;
        let s = r.status.clone()?;
        (s.observed_generation == r.metadata.generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Accepted" && c.status == "True"))
        .then_some(s)
    })
    .await;
    assert_eq!(
        status.subset_services,
        ["reviews-v1", "reviews-v2", "reviews-v3"]
    );

    // Dropping a subset removes its Service.
    apply(cp, name, &reviews_route(&["v1", "v2"])).await;
    eventually("reviews-v3 removed", || async {
        services
            .get_opt("reviews-v3")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(services.get_opt("reviews-v1").await.unwrap().is_some());

    // Deleting the route takes it out of the config, and the garbage collector
    // (kube-controller-manager in the testkit) removes its subset Services.
    cp.kubectl_ok(["delete", "serviceroute", "reviews", "-n", name])
        .await
        .unwrap();
    // The collector learns new kinds from discovery every 30 s.
    eventually_within(
        Duration::from_secs(90),
        "subset Services collected",
        || async {
            let left = services.list(&Default::default()).await.ok()?;
            left.items
                .iter()
                .all(|s| !s.name_any().starts_with("reviews-"))
                .then_some(())
        },
    )
    .await;
    eventually("route gone from the config", || async {
        sidecar_config(&config_maps)
            .await
            .filter(|(c, _)| {
                !c.routes
                    .iter()
                    .any(|t| t.name == format!("reviews.{name}:9080"))
            })
            .map(|_| ())
    })
    .await;
}

/// The mesh's ClusterIPs reach every config, for mTLS on pass-through
/// traffic; Services outside the mesh stay out.
#[tokio::test]
async fn mesh_service_addresses_reach_every_config() {
    require_control_plane!();
    let cp = setup().await;
    let a = cp
        .namespace_with_labels("catalog-a", &[("remora.dev/inject", "enabled")])
        .await
        .unwrap();
    let b = cp
        .namespace_with_labels("catalog-b", &[("remora.dev/inject", "enabled")])
        .await
        .unwrap();
    let outside = cp.namespace("catalog-out").await.unwrap();
    apply(cp, a.name(), reviews_service()).await;
    apply(cp, outside.name(), reviews_service()).await;
    let ip = |svc: Service| -> std::net::IpAddr {
        svc.spec.unwrap().cluster_ip.unwrap().parse().unwrap()
    };
    let meshed = ip(a.api::<Service>().get("reviews").await.unwrap());
    let unmeshed = ip(outside.api::<Service>().get("reviews").await.unwrap());

    let b_configs: Api<ConfigMap> = b.api();
    let addresses = |c: &remora_api::config::SidecarConfig| {
        let p = c.cluster("passthrough").expect("a passthrough cluster");
        (p.tls.mode, p.tls.mesh_addresses.clone())
    };
    // Another mesh namespace learns the address (its pass-through goes mTLS there).
    let (mode, list) = eventually("the ClusterIP in catalog-b's config", || async {
        let (c, _) = sidecar_config(&b_configs).await?;
        let (mode, list) = addresses(&c);
        list.contains(&meshed).then_some((mode, list))
    })
    .await;
    assert_eq!(mode, remora_api::config::UpstreamTlsMode::Auto);
    assert!(!list.contains(&unmeshed), "{list:?}");

    // Deleting the Service takes it out again.
    cp.kubectl_ok(["delete", "service", "reviews", "-n", a.name()])
        .await
        .unwrap();
    eventually("the ClusterIP gone", || async {
        let (c, _) = sidecar_config(&b_configs).await?;
        (!addresses(&c).1.contains(&meshed)).then_some(())
    })
    .await;
}

/// A route table owns its Service's ClusterIPs, so that the sidecar routes
/// captured calls by IP and opaque TCP by address, not by port alone.
#[tokio::test]
async fn route_tables_list_their_services_cluster_ips() {
    require_control_plane!();
    let cp = setup().await;
    let ns = cp.namespace("owned-ips").await.unwrap();
    let config_maps: Api<ConfigMap> = ns.api();
    let table = format!("reviews.{}:9080", ns.name());
    let addresses = |c: &remora_api::config::SidecarConfig| {
        c.routes
            .iter()
            .find(|t| t.name == table)
            .map(|t| t.addresses.clone())
    };
    apply(cp, ns.name(), &reviews_route(&["v1", "v2"])).await;
    let before = eventually("the table without a Service", || async {
        addresses(&sidecar_config(&config_maps).await?.0)
    })
    .await;
    assert!(before.is_empty(), "{before:?}");

    apply(cp, ns.name(), reviews_service()).await;
    let svc = ns.api::<Service>().get("reviews").await.unwrap();
    let ips: Vec<std::net::IpAddr> = svc
        .spec
        .unwrap()
        .cluster_ips
        .unwrap()
        .iter()
        .map(|ip| ip.parse().unwrap())
        .collect();
    assert!(!ips.is_empty());
    eventually("the Service's ClusterIPs in its table", || async {
        (addresses(&sidecar_config(&config_maps).await?.0)? == ips).then_some(())
    })
    .await;

    cp.kubectl_ok(["delete", "service", "reviews", "-n", ns.name()])
        .await
        .unwrap();
    eventually("the addresses gone with the Service", || async {
        addresses(&sidecar_config(&config_maps).await?.0)?
            .is_empty()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_route_to_a_missing_service_is_not_accepted_until_it_exists() {
    require_control_plane!();
    let cp = setup().await;
    let ns = cp.namespace("ghost").await.unwrap();
    let routes: Api<ServiceRoute> = ns.api();
    apply(cp, ns.name(), &reviews_route(&["v1", "v2"])).await;
    let message = eventually("ServiceNotFound", || async {
        let s = routes.get("reviews").await.ok()?.status?;
        s.conditions
            .into_iter()
            .find(|c| c.type_ == "Accepted" && c.reason == "ServiceNotFound")
            .map(|c| c.message)
    })
    .await;
    assert_eq!(
        message,
        format!(
            "Service {}/reviews does not exist; create it or fix spec.service",
            ns.name()
        )
    );

    apply(cp, ns.name(), reviews_service()).await;
    eventually("Accepted once the Service exists", || async {
        let s = routes.get("reviews").await.ok()?.status?;
        s.conditions
            .iter()
            .any(|c| c.type_ == "Accepted" && c.status == "True")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_invalid_route_is_reported_and_does_not_disturb_the_others() {
    require_control_plane!();
    let cp = setup().await;
    let ns = cp.namespace("invalid").await.unwrap();
    let name = ns.name();
    apply(cp, name, reviews_service()).await;
    apply(cp, name, &reviews_route(&["v1", "v2"])).await;
    // Valid for the API server (CEL cannot compile regexes), invalid for validate().
    apply(
        cp,
        name,
        r#"
apiVersion: mesh.remora.dev/v1alpha1
kind: ServiceRoute
metadata: {name: users}
spec:
  service: reviews
  port: 9080
  rules:
    - match: [{path: {regex: "/users/(\\d+"}}]
      destinations: [{}]
"#,
    )
    .await;
    let routes: Api<ServiceRoute> = ns.api();
    let message = eventually("InvalidSpec", || async {
        let s = routes.get("users").await.ok()?.status?;
        s.conditions
            .into_iter()
            .find(|c| c.type_ == "Accepted" && c.reason == "InvalidSpec")
            .map(|c| c.message)
    })
    .await;
    assert!(
        message.starts_with(&format!(
            "ServiceRoute {name}/users: spec.rules[0].match[0].path.regex"
        )),
        "{message}"
    );

    let config_maps: Api<ConfigMap> = ns.api();
    let (config, _) = eventually("the valid route rendered", || async {
        sidecar_config(&config_maps).await.filter(|(c, _)| {
            c.routes
                .iter()
                .any(|t| t.name == format!("reviews.{name}:9080"))
        })
    })
    .await;
    let table = config
        .routes
        .iter()
        .find(|t| t.name == format!("reviews.{name}:9080"))
        .unwrap();
    let route_names: Vec<_> = table.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        route_names,
        ["canary"],
        "the invalid route's rules are not rendered"
    );
}

#[tokio::test]
async fn certificates_are_issued_rotated_and_revoked() {
    require_control_plane!();
    let cp = setup().await;
    let ns = cp.namespace("certs").await.unwrap();
    let other = cp
        .namespace_with_labels("certs-peer", &[("remora.dev/inject", "enabled")])
        .await
        .unwrap();
    let name = ns.name();
    apply(
        cp,
        name,
        r#"
apiVersion: mesh.remora.dev/v1alpha1
kind: MeshCertificate
metadata: {name: reviews}
spec:
  serviceAccount: reviews
  ttl: 1h
  rotateBefore: 1m
  warnBefore: 59m58s
  dnsNames: [reviews.example.svc.cluster.local]
"#,
    )
    .await;
    let secrets: Api<Secret> = ns.api();
    let certs: Api<MeshCertificate> = ns.api();
    let pem_of =
        |s: &Secret, key: &str| String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap();
    let first = eventually("the certificate Secret", || async {
        secrets.get_opt("reviews-tls").await.ok()?
    })
    .await;
    let facts = certificate_facts(&pem_of(&first, "tls.crt")).unwrap();
    assert_eq!(
        facts.uris,
        [format!("spiffe://cluster.local/ns/{name}/sa/reviews")]
    );
    assert!(pem_of(&first, "tls.key").contains("PRIVATE KEY"));
    let ca: Secret = Api::namespaced(ns.client(), OPERATOR_NS)
        .get("remora-ca")
        .await
        .unwrap();
    assert_eq!(
        pem_of(&first, "ca.crt"),
        pem_of(&ca, "tls.crt"),
        "ca.crt is the mesh CA"
    );

    // warnBefore 59m58s of a 1h certificate: the warning comes about two seconds in.
    eventually("the ExpiringSoon warning", || async {
        let s = certs.get("reviews").await.ok()?.status?;
        s.conditions
            .iter()
            .any(|c| c.type_ == "ExpiringSoon" && c.status == "True")
            .then_some(())
    })
    .await;
    // Less remaining than rotateBefore: renewed.
    certs
        .patch(
            "reviews",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rotateBefore": "59m58s"}})),
        )
        .await
        .unwrap();
    eventually("rotation", || async {
        let s = secrets.get("reviews-tls").await.ok()?;
        let serial = certificate_facts(&pem_of(&s, "tls.crt")).ok()?.serial;
        (serial != facts.serial).then_some(serial)
    })
    .await;
    // Stop the churn: a normal rotate-before window.
    certs
        .patch(
            "reviews",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rotateBefore": "10m", "warnBefore": "20m"}})),
        )
        .await
        .unwrap();
    let settled = eventually("a settled certificate", || async {
        let c = certs.get("reviews").await.ok()?;
        let s = c.status?;
        (s.observed_generation == c.metadata.generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == "ExpiringSoon" && c.status == "False"))
        .then_some(s.serial?)
    })
    .await;
    assert_ne!(settled, facts.serial);

    // Revocation: the serial reaches every namespace's config, and a fresh certificate is issued.
    certs
        .patch(
            "reviews",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"revoked": true}})),
        )
        .await
        .unwrap();
    let revoked = eventually("the revoked serial in status", || async {
        let s = certs.get("reviews").await.ok()?.status?;
        s.revoked_serials
            .first()
            .cloned()
            .filter(|r| s.serial.as_ref() != Some(r))
    })
    .await;
    let peer_config_maps: Api<ConfigMap> = other.api();
    eventually("the revocation in another namespace's config", || async {
        let (c, _) = sidecar_config(&peer_config_maps).await?;
        c.tls.revoked_serials.contains(&revoked).then_some(())
    })
    .await;
    let current = certificate_facts(&pem_of(
        &secrets.get("reviews-tls").await.unwrap(),
        "tls.crt",
    ))
    .unwrap();
    assert_ne!(
        current.serial, revoked,
        "the Secret holds a fresh certificate"
    );
}

#[tokio::test]
async fn templates_report_their_status() {
    require_control_plane!();
    let cp = setup().await;
    let ns = cp.namespace("templates").await.unwrap();
    apply(
        cp,
        ns.name(),
        r#"
apiVersion: mesh.remora.dev/v1alpha1
kind: SidecarTemplate
metadata: {name: strict}
spec:
  image: remora-sidecar:dev
  excludeInboundPorts: [15000]
"#,
    )
    .await;
    let templates: Api<remora_api::crd::SidecarTemplate> = ns.api();
    let message = eventually("InvalidSpec on the template", || async {
        let s = templates.get("strict").await.ok()?.status?;
        s.conditions
            .into_iter()
            .find(|c| c.type_ == "Accepted" && c.status == "False")
            .map(|c| c.message)
    })
    .await;
    assert!(
        message.contains("spec.excludeInboundPorts[0]: 15000 is one of the sidecar's own ports"),
        "{message}"
    );

    templates
        .patch(
            "strict",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"excludeInboundPorts": [9901]}})),
        )
        .await
        .unwrap();
    eventually("Accepted after the fix", || async {
        let t = templates.get("strict").await.ok()?;
        let s = t.status?;
        (s.observed_generation == t.metadata.generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Accepted" && c.status == "True"))
        .then_some(())
    })
    .await;
}

fn certificate(name: &str) -> String {
    format!(
        r#"
apiVersion: mesh.remora.dev/v1alpha1
kind: MeshCertificate
metadata: {{name: {name}}}
spec:
  serviceAccount: {name}
  ttl: 2h
  rotateBefore: 10m
  warnBefore: 20m
"#
    )
}

/// Revoking, then deleting the MeshCertificate: the serial stays listed in
/// every namespace's config until the certificate would have expired, kept
/// in the operator's revocation store; expired entries are pruned.
#[tokio::test]
async fn revocations_outlive_their_certificate_until_it_expires() {
    require_control_plane!();
    let cp = setup().await;
    let ns = cp.namespace("revoke-delete").await.unwrap();
    let peer = cp
        .namespace_with_labels("revoke-peer", &[("remora.dev/inject", "enabled")])
        .await
        .unwrap();
    apply(cp, ns.name(), &certificate("leaked")).await;
    let certs: Api<MeshCertificate> = ns.api();
    let (first, not_after) = eventually("the first certificate", || async {
        let s = certs.get("leaked").await.ok()?.status?;
        Some((s.serial?, s.not_after?))
    })
    .await;
    let finalizers = certs.get("leaked").await.unwrap().finalizers().to_vec();
    assert_eq!(finalizers, ["mesh.remora.dev/revocations"]);

    certs
        .patch(
            "leaked",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"revoked": true}})),
        )
        .await
        .unwrap();
    let status = eventually("the replacement certificate", || async {
        let s = certs.get("leaked").await.ok()?.status?;
        (s.serial.as_ref() != Some(&first) && s.revoked_at.is_some()).then_some(s)
    })
    .await;
    // The certificate replaced because it was revoked stays revoked, with
    // its own expiry; the replacement is not revoked.
    assert_eq!(status.revoked_serials, std::slice::from_ref(&first));
    assert_eq!(
        status.revocations,
        [remora_api::crd::Revocation {
            serial: first.clone(),
            not_after: not_after.clone()
        }]
    );
    let peer_configs: Api<ConfigMap> = peer.api();
    eventually("the revocation in another namespace", || async {
        let (c, _) = sidecar_config(&peer_configs).await?;
        c.tls.revoked_serials.contains(&first).then_some(())
    })
    .await;

    cp.kubectl_ok(["delete", "meshcertificate", "leaked", "-n", ns.name()])
        .await
        .unwrap();
    eventually("the MeshCertificate gone", || async {
        certs.get_opt("leaked").await.ok()?.is_none().then_some(())
    })
    .await;
    let store: Api<ConfigMap> = Api::namespaced(ns.client(), OPERATOR_NS);
    let kept = eventually("the serial in the revocation store", || async {
        let cm = store.get_opt("remora-revocations").await.ok()??;
        cm.data?.get(&first).cloned()
    })
    .await;
    let kept: serde_json::Value = serde_json::from_str(&kept).unwrap();
    assert_eq!(kept["notAfter"], not_after.as_str());
    assert_eq!(kept["certificate"], format!("{}/leaked", ns.name()));
    // Still listed after deletion (give a wrong render time to happen).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (config, _) = sidecar_config(&peer_configs).await.unwrap();
    assert!(
        config.tls.revoked_serials.contains(&first),
        "deleting the MeshCertificate un-revoked {first}: {:?}",
        config.tls.revoked_serials
    );

    // An entry whose certificate has expired is pruned, from the store and
    // from the configs.
    let expired = "0badc0ffee";
    store
        .patch(
            "remora-revocations",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {expired: r#"{"notAfter":"2020-01-01T00:00:00Z"}"#}})),
        )
        .await
        .unwrap();
    eventually("the expired entry pruned", || async {
        let cm = store.get_opt("remora-revocations").await.ok()??;
        let data = cm.data.unwrap_or_default();
        (!data.contains_key(expired) && data.contains_key(&first)).then_some(())
    })
    .await;
    let (config, _) = sidecar_config(&peer_configs).await.unwrap();
    assert!(!config.tls.revoked_serials.iter().any(|s| s == expired));
    assert!(config.tls.revoked_serials.contains(&first));
}

fn condition<'a>(
    conditions: &'a [remora_api::crd::Condition],
    type_: &str,
) -> Option<&'a remora_api::crd::Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// A second ServiceRoute for a service port is left out of the configs, and
/// its status says so with the render's own message; when the first goes,
/// the second takes over.
#[tokio::test]
async fn a_route_the_render_rejects_is_not_accepted() {
    require_control_plane!();
    let cp = setup().await;
    let ns = cp.namespace("conflict").await.unwrap();
    let peer = cp
        .namespace_with_labels("conflict-peer", &[("remora.dev/inject", "enabled")])
        .await
        .unwrap();
    let name = ns.name();
    apply(cp, name, reviews_service()).await;
    apply(cp, name, &reviews_route(&["v1", "v2"])).await;
    let routes: Api<ServiceRoute> = ns.api();
    // The first is for its own namespace only, the second for the peer's.
    routes
        .patch(
            "reviews",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"exportTo": ["."]}})),
        )
        .await
        .unwrap();
    let second = format!(
        r#"
apiVersion: mesh.remora.dev/v1alpha1
kind: ServiceRoute
metadata: {{name: reviews-too}}
spec:
  service: reviews
  port: 9080
  exportTo: [{}]
  rules: [{{destinations: [{{}}]}}]
"#,
        peer.name()
    );
    apply(cp, name, &second).await;
    let accepted = eventually("the second route refused", || async {
        let s = routes.get("reviews-too").await.ok()?.status?;
        condition(&s.conditions, "Accepted")
            .filter(|c| c.status == "False")
            .cloned()
    })
    .await;
    assert_eq!(accepted.reason, "Conflict");
    // What rendering reports for it (where it is exported), word for word.
    let all = routes.list(&Default::default()).await.unwrap().items;
    let rendered = remora_operator::render::render_sidecar_config(
        &remora_operator::render::RenderContext::new(peer.name()),
        &remora_operator::render::MeshResources {
            routes: all,
            ..Default::default()
        },
    );
    let rejected: Vec<String> = rendered.rejected.iter().map(|r| r.to_string()).collect();
    assert_eq!(rejected, std::slice::from_ref(&accepted.message));
    assert_eq!(
        accepted.message,
        format!(
            "ServiceRoute {name}/reviews-too: spec.port: ServiceRoute reviews already routes reviews.{name}:9080; only the first by name is used"
        )
    );
    let first = routes.get("reviews").await.unwrap().status.unwrap();
    assert_eq!(
        condition(&first.conditions, "Accepted").map(|c| c.status.as_str()),
        Some("True")
    );

    let peer_configs: Api<ConfigMap> = peer.api();
    let table = format!("reviews.{name}:9080");
    let (config, _) = eventually("the peer's config", || sidecar_config(&peer_configs)).await;
    assert!(
        !config.routes.iter().any(|t| t.name == table),
        "the refused route is in no config"
    );

    cp.kubectl_ok(["delete", "serviceroute", "reviews", "-n", name])
        .await
        .unwrap();
    eventually(
        "the second route accepted once the first is gone",
        || async {
            let s = routes.get("reviews-too").await.ok()?.status?;
            condition(&s.conditions, "Accepted")
                .is_some_and(|c| c.status == "True")
                .then_some(())
        },
    )
    .await;
    // And rendered where it is exported, though the deleted route was not.
    eventually("the second route in the peer's config", || async {
        let (c, _) = sidecar_config(&peer_configs).await?;
        c.routes.iter().any(|t| t.name == table).then_some(())
    })
    .await;
}

/// Fields the sidecar does not enforce yet: the resource says so (Degraded,
/// not Ready) and the config does not carry them; RPC protocols are refused;
/// enforced fields (mirror, maxRequestsPerConnection) are rendered, Ready.
#[tokio::test]
async fn fields_the_sidecar_ignores_are_reported_and_not_rendered() {
    require_control_plane!();
    let cp = setup().await;
    let ns = cp.namespace("ignored").await.unwrap();
    let name = ns.name();
    apply(cp, name, reviews_service()).await;
    apply(
        cp,
        name,
        r#"
apiVersion: v1
kind: Service
metadata: {name: rpc}
spec:
  selector: {app: rpc}
  ports: [{name: bolt, port: 12200}]
---
apiVersion: mesh.remora.dev/v1alpha1
kind: ServiceRoute
metadata: {name: reviews}
spec:
  service: reviews
  port: 9080
  connectionPool: {maxRequestsPerConnection: 10}
  rules:
    - destinations: [{}]
      mirror: {destination: {service: reviews}, percentage: 50}
---
apiVersion: mesh.remora.dev/v1alpha1
kind: ServiceRoute
metadata: {name: rpc}
spec:
  service: rpc
  port: 12200
  protocol: bolt
  rules: [{destinations: [{}]}]
---
apiVersion: mesh.remora.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: shed}
spec:
  limits: [{name: all, requests: 100}]
  adaptive: {cpuPercent: 80}
  testTraffic: {header: x-load-test, value: "true"}
"#,
    )
    .await;
    let routes: Api<ServiceRoute> = ns.api();
    // Every route field is enforced now: maxRequestsPerConnection included.
    let s = eventually("the route Ready", || async {
        let s = routes.get("reviews").await.ok()?.status?;
        condition(&s.conditions, "Ready")
            .is_some_and(|r| r.status == "True")
            .then_some(s)
    })
    .await;
    assert!(
        condition(&s.conditions, "Degraded").is_none(),
        "{:?}",
        s.conditions
    );

    let bolt = eventually("the bolt route refused", || async {
        let s = routes.get("rpc").await.ok()?.status?;
        condition(&s.conditions, "Accepted")
            .filter(|c| c.status == "False")
            .cloned()
    })
    .await;
    assert_eq!(bolt.reason, "UnsupportedProtocol");
    assert!(
        bolt.message
            .contains("spec.protocol: bolt is not supported"),
        "{}",
        bolt.message
    );

    let policies: Api<remora_api::crd::RateLimitPolicy> = ns.api();
    let s = eventually("the policy Degraded", || async {
        let s = policies.get("shed").await.ok()?.status?;
        condition(&s.conditions, "Degraded").is_some().then_some(s)
    })
    .await;
    let d = condition(&s.conditions, "Degraded").unwrap();
    assert!(
        d.message.contains("spec.adaptive: is not enforced"),
        "{}",
        d.message
    );
    assert!(
        d.message.contains("spec.testTraffic: is not enforced"),
        "{}",
        d.message
    );
    assert_eq!(condition(&s.conditions, "Ready").unwrap().status, "False");
    assert_eq!(condition(&s.conditions, "Accepted").unwrap().status, "True");

    let config_maps: Api<ConfigMap> = ns.api();
    let (config, _) = eventually("the config with the route and the limit", || async {
        sidecar_config(&config_maps).await.filter(|(c, _)| {
            c.routes
                .iter()
                .any(|t| t.name == format!("reviews.{name}:9080"))
                && !c.rate_limits.is_empty()
        })
    })
    .await;
    assert!(
        !config
            .routes
            .iter()
            .any(|t| t.name == format!("rpc.{name}:12200")),
        "the bolt route is not rendered"
    );
    let table = config
        .routes
        .iter()
        .find(|t| t.name == format!("reviews.{name}:9080"))
        .unwrap();
    assert!(
        table
            .routes
            .iter()
            .all(|r| r.mirror.as_ref().is_some_and(|m| m.percentage == 50.0)),
        "the mirror is rendered"
    );
    let cluster = config.cluster(&format!("reviews.{name}:9080")).unwrap();
    assert_eq!(cluster.limits.max_requests_per_connection, 10);
    assert!(
        config
            .rate_limits
            .iter()
            .all(|l| l.adaptive.is_none() && l.test_traffic.is_none()),
        "{:?}",
        config.rate_limits
    );
    assert_eq!(config.rate_limits.len(), 1, "only the token bucket");
}

/// The real webhook on 127.0.0.1, registered for pods labelled
/// `operator-test.remora.dev/inject-run` only, so other tests' pods are left alone.
async fn start_webhook(cp: &ControlPlane) -> tempfile::TempDir {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use remora_webhook::{
        Catalog, FailurePolicy, Metrics, Mutator, ReloadingCert, Settings,
        WebhookConfigurationOptions, WebhookEndpoint, mutating_webhook_configuration,
        server::{router, serve_tls},
    };
    let client = cp.client().await.unwrap();
    let tls = remora_testkit::webhook_serving_cert().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), &tls.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &tls.key_pem).unwrap();
    let cert = ReloadingCert::load(dir.path().join("tls.crt"), dir.path().join("tls.key")).unwrap();
    let mutator = Mutator::new(
        Catalog::watch(client.clone()),
        Settings {
            default_image: "registry.example/remora-sidecar:test".into(),
            ..Settings::default()
        },
        Arc::new(Metrics::new()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/mutate", listener.local_addr().unwrap());
    tokio::spawn(serve_tls(
        listener,
        Arc::new(cert.server_config()),
        router(mutator),
        std::future::pending(),
    ));
    let mut options = WebhookConfigurationOptions::new(WebhookEndpoint::Url(url), tls.ca_pem);
    options.name = "remora-operator-test".into();
    options.failure_policy = FailurePolicy::Fail;
    let mut configuration = mutating_webhook_configuration(&options);
    configuration.webhooks.as_mut().unwrap()[0].object_selector = Some(LabelSelector {
        match_labels: Some([(INJECT_RUN.to_owned(), "yes".to_owned())].into()),
        match_expressions: None,
    });
    Api::<MutatingWebhookConfiguration>::all(client)
        .patch(
            &options.name,
            &PatchParams::apply("remora-operator-test").force(),
            &Patch::Apply(configuration),
        )
        .await
        .unwrap();
    dir
}

const INJECT_RUN: &str = "operator-test.remora.dev/inject-run";

/// A pod that opts in by its own annotation, in a namespace with no label
/// and no Remora resource, is injected, and the operator renders the
/// ConfigMap its config volume names, so the volume resolves.
#[tokio::test]
async fn a_pod_that_opts_in_alone_gets_the_config_its_volume_names() {
    require_control_plane!();
    let cp = setup().await;
    let _webhook = start_webhook(cp).await;
    let ns = cp.namespace("opt-in-alone").await.unwrap();
    let mut pod = remora_testkit::pod("app", "registry.example/app:1");
    pod.metadata.labels = Some([(INJECT_RUN.to_owned(), "yes".to_owned())].into());
    pod.metadata.annotations =
        Some([("remora.dev/inject".to_owned(), "enabled".to_owned())].into());
    // The API server picks the webhook configuration up from a watch.
    eventually("the webhook to be called", || async {
        let dry = cp.create_pod_dry_run(ns.name(), &pod).await.ok()?;
        let injected = dry
            .metadata
            .annotations
            .as_ref()?
            .get("remora.dev/inject-status")
            .is_some_and(|s| s == "injected");
        injected.then_some(())
    })
    .await;
    let stored = cp.create_pod(ns.name(), &pod).await.unwrap();
    assert_eq!(
        stored
            .labels()
            .get("remora.dev/sidecar")
            .map(String::as_str),
        Some("injected")
    );
    let config_map = stored
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.config_map.as_ref())
        .expect("a ConfigMap volume")
        .clone();
    assert_ne!(config_map.optional, Some(true), "the volume is required");

    let config_maps: Api<ConfigMap> = ns.api();
    let cm = eventually("the ConfigMap the volume names", || async {
        config_maps.get_opt(&config_map.name).await.ok()?
    })
    .await;
    let json = &cm.data.unwrap()["config.json"];
    let config = remora_api::config::SidecarConfig::from_json(json.as_bytes()).unwrap();
    assert_eq!(config.namespace.as_deref(), Some(ns.name()));
}
