//! Every `validate()` message of the custom resources, each from the smallest
//! spec that triggers it. (The files in `tests/invalid/` cover the rest, as
//! users would write them.)

#[allow(dead_code)]
mod common;

use remora_api::crd::MeshResource;
use serde_json::{Value, json};

fn resource(kind: &str, spec: Value) -> MeshResource {
    MeshResource::from_value(json!({
        "apiVersion": "mesh.remora.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "t"},
        "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn errors(kind: &str, spec: Value) -> String {
    match resource(kind, spec.clone()).validate() {
        Ok(()) => panic!("{kind} accepted: {spec}"),
        Err(e) => e.to_string(),
    }
}

fn route(extra: Value) -> Value {
    let mut spec = json!({"service": "reviews", "port": 9080, "rules": [{"destinations": [{}]}]});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    spec
}

#[test]
fn every_service_route_message() {
    let cases = [
        (
            route(
                json!({"subsets": [{"name": "v1", "labels": {"a": "b"}}, {"name": "v1", "labels": {"a": "c"}}]}),
            ),
            "spec.subsets[1].name: subset \"v1\" is defined twice",
        ),
        (
            route(
                json!({"service": "a-very-long-service-name-that-is-close-to-the-limit-of-63", "subsets": [{"name": "canary-x", "labels": {"a": "b"}}]}),
            ),
            "spec.subsets[0].name: the subset Service name",
        ),
        (
            route(json!({"subsets": [{"name": "v1", "labels": {}}]})),
            "spec.subsets[0].labels: a subset needs at least one label",
        ),
        (
            route(json!({"rules": [{"destinations": []}]})),
            "spec.rules[0].destinations: list at least one destination",
        ),
        (
            route(json!({"rules": [{"destinations": [{"weight": 101}]}]})),
            "spec.rules[0].destinations[0].weight: 101 is more than 100",
        ),
        (
            route(json!({"rules": [{"destinations": [{}], "retries": {"attempts": 11}}]})),
            "spec.rules[0].retries.attempts: 11 retries is too many; at most 10",
        ),
        (
            route(
                json!({"rules": [{"destinations": [{}], "fault": {"delay": {"percentage": 120, "fixedDelay": "1s"}}}]}),
            ),
            "spec.rules[0].fault.delay.percentage: 120 is not a percentage (0-100)",
        ),
        (
            route(
                json!({"rules": [{"destinations": [{}], "fault": {"abort": {"percentage": -1, "httpStatus": 503}}}]}),
            ),
            "spec.rules[0].fault.abort.percentage: -1 is not a percentage (0-100)",
        ),
        (
            route(
                json!({"rules": [{"destinations": [{}], "headers": {"request": {"set": {"bad header": "x"}}}}]}),
            ),
            "spec.rules[0].headers.request: \"bad header\" is not a valid header name",
        ),
        (
            route(
                json!({"rules": [{"match": [{"headers": [{"name": "bad:name"}]}], "destinations": [{}]}]}),
            ),
            "spec.rules[0].match[0].headers[0].name: \"bad:name\" is not a valid header name",
        ),
        (
            route(
                json!({"rules": [{"match": [{"queryParams": [{"name": "q", "value": {"regex": "["}}]}], "destinations": [{}]}]}),
            ),
            "spec.rules[0].match[0].queryParams[0].value.regex: regex \"[\" does not compile",
        ),
        (
            route(
                json!({"loadBalancer": {"policy": "Maglev", "hash": {"header": "x-user", "sourceIp": true}}}),
            ),
            "spec.loadBalancer.hash: set exactly one of header, cookie or sourceIp",
        ),
        (
            route(
                json!({"subsets": [{"name": "v1", "labels": {"a": "b"}}], "rules": [{"destinations": [{"service": "ratings", "subset": "v1"}]}]}),
            ),
            "spec.rules[0].destinations[0].subset: subsets are defined for spec.service \"reviews\" only",
        ),
        (
            route(
                json!({"rules": [{"destinations": [{}], "mirror": {"destination": {"subset": "nope"}, "percentage": 10}}]}),
            ),
            "spec.rules[0].mirror.destination.subset: subset \"nope\" is not defined in spec.subsets",
        ),
        (
            route(json!({"connectionPool": {"maxRequests": 0}})),
            "spec.connectionPool.maxRequests: 0 is out of range, must be 1 to 1000000",
        ),
        (
            route(json!({"connectionPool": {"maxRequests": 2, "maxRetries": 3}})),
            "spec.connectionPool.maxRetries: 3 is more than maxRequests 2: every retry is also a request in flight",
        ),
    ];
    for (spec, want) in cases {
        let got = errors("ServiceRoute", spec);
        assert!(got.contains(want), "wanted {want}\n   got {got}");
    }
}

#[test]
fn every_sidecar_template_message() {
    let cases = [
        (
            json!({"image": "i", "env": {"1BAD": "x"}}),
            "spec.env[1BAD]: \"1BAD\" is not a valid environment variable name",
        ),
        (
            json!({"image": "i", "drainDuration": "11m"}),
            "spec.drainDuration: longer than 10m would hold pod deletion too long",
        ),
        (
            json!({"image": "i", "ports": {"inbound": 15006, "outbound": 15001, "admin": 15001}}),
            "spec.ports: inbound, outbound and admin must be three different ports",
        ),
        (
            json!({"image": "i", "excludeOutboundCidrs": ["10.0.0.0/8", "fd00::/8"]}),
            "spec.excludeOutboundCidrs[1]: \"fd00::/8\" is an IPv6 CIDR: Remora captures IPv4 only",
        ),
    ];
    for (spec, want) in cases {
        let got = errors("SidecarTemplate", spec);
        assert!(got.contains(want), "wanted {want}\n   got {got}");
    }
}

#[test]
fn every_rate_limit_policy_message() {
    let cases = [
        (
            json!({"limits": [{"name": "a", "requests": 0}]}),
            "spec.limits[0].requests: must be at least 1",
        ),
        (
            json!({"limits": [{"name": "a", "requests": 1, "per": "0"}]}),
            "spec.limits[0].per: must be longer than 0",
        ),
        (
            json!({"limits": [{"name": "a", "requests": 1, "match": {"path": {"regex": "("}}}]}),
            "spec.limits[0].match.path.regex: regex \"(\" does not compile",
        ),
        (
            json!({"adaptive": {"cpuPercent": 150}}),
            "spec.adaptive.cpuPercent: 150 is not a percentage (0-100)",
        ),
        (
            json!({"adaptive": {"maxConcurrency": 10, "window": "0"}}),
            "spec.adaptive.window: must be longer than 0",
        ),
        (
            json!({"adaptive": {"maxConcurrency": 10}, "testTraffic": {"header": "x-test", "maxSharePercent": 101}}),
            "spec.testTraffic.maxSharePercent: 101 is not a percentage (0-100)",
        ),
    ];
    for (spec, want) in cases {
        let got = errors("RateLimitPolicy", spec);
        assert!(got.contains(want), "wanted {want}\n   got {got}");
    }
}

#[test]
fn every_mesh_certificate_message() {
    let cases = [
        (
            json!({"serviceAccount": "a", "ttl": "30m", "rotateBefore": "10m", "warnBefore": "20m"}),
            "spec.ttl: 30m is too short; at least 1h",
        ),
        (
            json!({"serviceAccount": "a", "uris": ["not-a-uri"]}),
            "spec.uris[0]: \"not-a-uri\" is not an absolute URI",
        ),
        (
            json!({"serviceAccount": "a", "dnsNames": ["-bad.example"]}),
            "spec.dnsNames[0]: \"-bad.example\" is not a DNS name",
        ),
    ];
    for (spec, want) in cases {
        let got = errors("MeshCertificate", spec);
        assert!(got.contains(want), "wanted {want}\n   got {got}");
    }
}

#[test]
fn valid_minimal_specs_pass() {
    resource("ServiceRoute", route(json!({})))
        .validate()
        .unwrap();
    resource("SidecarTemplate", json!({"image": "i"}))
        .validate()
        .unwrap();
    resource(
        "RateLimitPolicy",
        json!({"limits": [{"name": "a", "requests": 1}]}),
    )
    .validate()
    .unwrap();
    resource("MeshCertificate", json!({"serviceAccount": "a"}))
        .validate()
        .unwrap();
}

#[test]
fn explicit_capture_is_refused_while_the_meshs_mtls_is_on() {
    use remora_api::config::TlsMode;
    let spec: remora_api::crd::SidecarTemplateSpec =
        serde_json::from_value(json!({"image": "i", "captureMode": "explicit"})).unwrap();
    spec.validate().unwrap();
    spec.validate_in_mesh(TlsMode::Disabled).unwrap();
    for mtls in [TlsMode::Permissive, TlsMode::Strict] {
        let err = spec.validate_in_mesh(mtls).unwrap_err().to_string();
        assert!(
            err.contains("spec.captureMode: captureMode explicit has no inbound listener"),
            "{err}"
        );
    }
    let iptables: remora_api::crd::SidecarTemplateSpec =
        serde_json::from_value(json!({"image": "i"})).unwrap();
    iptables.validate_in_mesh(TlsMode::Strict).unwrap();
}
