//! Every file in `examples/` parses and validates.

#[allow(dead_code)]
mod common;

use remora_api::{config::SidecarConfig, crd::MeshResource};

#[test]
fn every_example_parses_and_validates() {
    let dir = common::repo_root().join("examples");
    let mut kinds = std::collections::BTreeSet::new();
    let mut configs = 0;
    for path in common::files(&dir, &["yaml", "yml", "json"]) {
        if path.extension().unwrap() == "json" {
            let bytes = std::fs::read(&path).unwrap();
            let config = SidecarConfig::from_json(&bytes)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                !config.listeners.is_empty(),
                "{}: no listeners",
                path.display()
            );
            configs += 1;
            continue;
        }
        for doc in common::yaml_documents(&path) {
            let resource =
                MeshResource::from_value(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            resource
                .validate()
                .unwrap_or_else(|e| panic!("{}: {}: {e}", path.display(), resource.object_name()));
            kinds.insert(resource.object_name().split(' ').next().unwrap().to_owned());
        }
    }
    let expected = [
        "MeshCertificate",
        "RateLimitPolicy",
        "ServiceRoute",
        "SidecarTemplate",
    ];
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        expected,
        "examples/ should show every kind"
    );
    assert!(
        configs >= 1,
        "examples/ should hold a sidecar config for local mode"
    );
}

#[test]
fn the_canary_example_sends_five_percent_to_v2() {
    let path = common::repo_root().join("examples/reviews-canary.yaml");
    let doc = common::yaml_documents(&path).remove(0);
    let MeshResource::ServiceRoute(route) = MeshResource::from_value(doc).unwrap() else {
        panic!("not a ServiceRoute")
    };
    let canary = route
        .spec
        .rules
        .iter()
        .find(|r| r.name.as_deref() == Some("canary"))
        .unwrap();
    let split: Vec<_> = canary
        .destinations
        .as_ref()
        .unwrap()
        .iter()
        .map(|d| (d.subset.clone().unwrap(), d.weight.unwrap()))
        .collect();
    assert_eq!(split, [("v1".to_owned(), 95), ("v2".to_owned(), 5)]);
    let v2 = route.spec.subsets.iter().find(|s| s.name == "v2").unwrap();
    assert_eq!(v2.labels.get("version").map(String::as_str), Some("v2"));
}
