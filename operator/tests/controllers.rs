//! The operator's controllers against a real kube-apiserver: resources are
//! created, changed and deleted through the API, and the ConfigMaps, Services,
//! Secrets, RBAC and status conditions are observed converging.

mod common;

use std::time::Duration;

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
use remora_testkit::require_control_plane;
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
