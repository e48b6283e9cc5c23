//! Invalid resources and configs are refused with messages that name the field.

#[allow(dead_code)]
mod common;

use remora_api::{config::SidecarConfig, crd::MeshResource};

/// Each file under `tests/invalid/` lists the messages it must produce in
/// `# expect:` lines; every one must appear.
#[test]
fn invalid_resources_are_rejected_naming_the_field() {
    let files = common::files(&common::repo_root().join("api/tests/invalid"), &["yaml"]);
    assert!(
        files.len() >= 8,
        "expected the invalid examples, found {files:?}"
    );
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{}: no `# expect:` lines",
            path.display()
        );
        let doc = common::yaml_documents(&path).remove(0);
        let message = match MeshResource::from_value(doc) {
            Err(parse) => parse.to_string(),
            Ok(resource) => match resource.validate() {
                Ok(()) => panic!("{}: accepted, but it is invalid", path.display()),
                Err(errs) => format!("{} {}", resource.object_name(), errs),
            },
        };
        for want in expected {
            assert!(
                message.contains(want),
                "{}:\n  wanted: {want}\n  got:    {message}",
                path.display()
            );
        }
    }
}

fn config_error(json: serde_json::Value) -> String {
    match SidecarConfig::from_json(json.to_string().as_bytes()) {
        Ok(_) => panic!("accepted an invalid config: {json}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_typo_in_a_config_field_is_an_error_with_its_path() {
    let err = config_error(serde_json::json!({
        "version": 1,
        "listeners": [{ "name": "out", "direction": "outbound", "adress": "127.0.0.1:1" }]
    }));
    assert!(err.contains("listeners[0]"), "{err}");
    assert!(err.contains("unknown field `adress`"), "{err}");
}

#[test]
fn config_references_weights_and_regexes_are_checked_together() {
    let err = config_error(serde_json::json!({
        "version": 1,
        "listeners": [{ "name": "out", "direction": "outbound", "address": "127.0.0.1:15001", "defaultCluster": "nowhere" }],
        "routes": [{
            "name": "r", "domains": ["svc"],
            "routes": [{
                "name": "split",
                "match": { "path": { "regex": "(" } },
                "action": { "clusters": [{ "cluster": "a", "weight": 60 }, { "cluster": "b", "weight": 30 }] }
            }]
        }],
        "clusters": [{ "name": "a", "endpoints": { "static": [{ "address": "127.0.0.1:1" }] }, "loadBalancer": { "policy": "maglev" } }]
    }));
    for want in [
        "listeners[0].defaultCluster: cluster \"nowhere\" is not defined in clusters",
        "routes[0].routes[0].match.path.regex: regex \"(\" does not compile",
        "routes[0].routes[0].action.clusters[1].cluster: cluster \"b\" is not defined in clusters",
        "routes[0].routes[0].action.clusters: weights sum to 90, must be 100",
        "clusters[0].loadBalancer.hashOn: ringHash and maglev need hashOn",
    ] {
        assert!(err.contains(want), "wanted {want}\ngot {err}");
    }
}

#[test]
fn a_config_with_another_version_or_a_wrong_hash_is_refused() {
    let err = config_error(serde_json::json!({ "version": 2, "listeners": [] }));
    assert!(err.contains("version 2"), "{err}");

    let good = serde_json::json!({ "version": 1, "listeners": [] });
    let sealed = SidecarConfig::from_json(good.to_string().as_bytes())
        .unwrap()
        .seal();
    let mut tampered = serde_json::to_value(&sealed).unwrap();
    tampered["runtime"]["logLevel"] = "debug".into();
    let err = config_error(tampered);
    assert!(err.contains("hash mismatch"), "{err}");
    // The untampered, sealed document loads.
    SidecarConfig::from_json(sealed.to_pretty_json().as_bytes()).unwrap();
}

#[test]
fn config_tls_settings_are_checked() {
    let err = config_error(serde_json::json!({
        "version": 1,
        "listeners": [],
        "clusters": [
            { "name": "a", "endpoints": { "static": [{ "address": "127.0.0.1:1" }] },
              "tls": { "mode": "mesh", "identity": "reviews", "meshAddresses": ["10.96.0.10"] } },
            { "name": "b", "endpoints": "originalDestination",
              "tls": { "mode": "auto", "identity": "spiffe://cluster.local/ns/a/sa/b" } }
        ],
        "tls": { "trustDomain": "a/b", "revokedSerials": ["ABC"] }
    }));
    for want in [
        "clusters[0].tls.meshAddresses: only applies to tls.mode auto",
        "clusters[0].tls.identity: \"reviews\" is not a SPIFFE ID",
        "clusters[1].tls.identity: only applies to tls.mode mesh",
        "tls.trustBundle: mTLS is on but there is no trust bundle (trustBundle or caFile)",
        "tls.trustDomain: \"a/b\" is not a trust domain",
        "tls.revokedSerials[0]: \"ABC\" is not a lower-case hex serial number",
    ] {
        assert!(err.contains(want), "wanted {want}\ngot {err}");
    }
}

#[test]
fn route_table_addresses_need_a_port_and_one_owner() {
    let err = config_error(serde_json::json!({
        "version": 1,
        "listeners": [],
        "routes": [
            { "name": "a", "domains": ["a"], "addresses": ["10.96.0.10"], "routes": [] },
            { "name": "b", "domains": [], "port": 3306, "addresses": ["10.96.0.11", "::ffff:10.96.0.12"], "routes": [] },
            { "name": "c", "domains": [], "port": 3306, "addresses": ["10.96.0.12"], "routes": [] }
        ]
    }));
    for want in [
        "routes[0].addresses: addresses select traffic to a port; set port",
        "routes[2].addresses[0]: 10.96.0.12:3306 is already owned by route table \"b\"",
    ] {
        assert!(err.contains(want), "wanted {want}\ngot {err}");
    }
    assert!(!err.contains("routes[1]"), "{err}");
}
