//! What the operator refuses, and what it accepts without the sidecar
//! enforcing it yet. Rendering and the status controllers both ask here, so
//! a resource's status says exactly what its sidecars do.
//!
//! - Refused (`Accepted=False`, left out of every config): specs that fail
//!   `validate()`; routes for protocols the sidecar only proxies as opaque
//!   TCP (`bolt`, `dubbo`: their rules, weights and RPC matches would all be
//!   ignored); a second ServiceRoute for a service port that an earlier one
//!   (by name) already routes.
//! - Not enforced (`Degraded=True`, rendered without the field):
//!   RateLimitPolicy `adaptive` and `testTraffic`. The rest of the resource
//!   works as written. Every ServiceRoute field the schema accepts is
//!   enforced.

use kube::ResourceExt;
use remora_api::{
    FieldErrors,
    crd::{RateLimitPolicySpec, RouteProtocol, ServiceRoute, ServiceRouteSpec},
};

/// Why a resource is left out of the config: a condition reason and the
/// fields at fault.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// `InvalidSpec`, `UnsupportedProtocol` or `Conflict`.
    pub reason: &'static str,
    pub errors: FieldErrors,
}

const NOT_ENFORCED: &str = "is not enforced by the sidecar yet; it is left out of the config";

/// Whether `route` is refused, seen among every ServiceRoute of the mesh.
pub fn refuse_route(route: &ServiceRoute, routes: &[ServiceRoute]) -> Option<Refusal> {
    if let Err(errors) = route.spec.validate() {
        return Some(Refusal {
            reason: "InvalidSpec",
            errors,
        });
    }
    if let Some(errors) = unsupported_protocol(&route.spec) {
        return Some(Refusal {
            reason: "UnsupportedProtocol",
            errors,
        });
    }
    let first = first_route_for_port(route, routes)?;
    let spec = &route.spec;
    let mut errors = FieldErrors::default();
    errors.push(
        "spec.port",
        format!(
            "ServiceRoute {} already routes {}.{}:{}; only the first by name is used",
            first.name_any(),
            spec.service,
            route.namespace().unwrap_or_default(),
            spec.port.0
        ),
    );
    Some(Refusal {
        reason: "Conflict",
        errors,
    })
}

fn unsupported_protocol(spec: &ServiceRouteSpec) -> Option<FieldErrors> {
    let name = match spec.protocol {
        RouteProtocol::Bolt => "bolt",
        RouteProtocol::Dubbo => "dubbo",
        _ => return None,
    };
    let mut errors = FieldErrors::default();
    errors.push(
        "spec.protocol",
        format!(
            "{name} is not supported by the sidecar yet (it would pass as opaque TCP, ignoring \
             the rules); use protocol tcp for plain forwarding"
        ),
    );
    Some(errors)
}

/// The valid route, other than `route`, that comes first by name among those
/// of its namespace for the same service port, when it sorts before `route`.
fn first_route_for_port<'a>(
    route: &ServiceRoute,
    routes: &'a [ServiceRoute],
) -> Option<&'a ServiceRoute> {
    let key = |r: &ServiceRoute| (r.namespace(), r.spec.service.clone(), r.spec.port.0);
    routes
        .iter()
        .filter(|r| key(r) == key(route) && r.name_any() < route.name_any())
        .filter(|r| r.spec.validate().is_ok() && unsupported_protocol(&r.spec).is_none())
        .min_by_key(|r| r.name_any())
}

/// The fields of an accepted rate limit policy that the sidecar does not
/// enforce yet.
pub fn rate_limit_not_enforced(spec: &RateLimitPolicySpec) -> FieldErrors {
    let mut errors = FieldErrors::default();
    if spec.adaptive.is_some() {
        errors.push("spec.adaptive", NOT_ENFORCED);
    }
    if spec.test_traffic.is_some() {
        errors.push("spec.testTraffic", NOT_ENFORCED);
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(ns: &str, name: &str, yaml: &str) -> ServiceRoute {
        let mut r: ServiceRoute = serde_yaml::from_str(&format!(
            "apiVersion: mesh.remora.dev/v1alpha1\nkind: ServiceRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{yaml}"
        ))
        .unwrap();
        r.metadata.namespace = Some(ns.into());
        r
    }

    const REVIEWS: &str = "  service: reviews\n  port: 9080\n  rules: [{destinations: [{}]}]\n";

    #[test]
    fn a_second_route_for_a_port_is_refused_and_names_the_first() {
        let a = route("shop", "a", REVIEWS);
        let b = route("shop", "b", REVIEWS);
        let elsewhere = route("other", "0", REVIEWS);
        let all = [b.clone(), a.clone(), elsewhere.clone()];
        assert_eq!(refuse_route(&a, &all), None);
        assert_eq!(refuse_route(&elsewhere, &all), None, "another namespace");
        let refusal = refuse_route(&b, &all).expect("b is refused");
        assert_eq!(refusal.reason, "Conflict");
        assert_eq!(
            refusal.errors.to_string(),
            "spec.port: ServiceRoute a already routes reviews.shop:9080; only the first by name is used"
        );
    }

    #[test]
    fn an_invalid_first_route_does_not_block_the_next() {
        let bad = route(
            "shop",
            "a",
            "  service: reviews\n  port: 9080\n  rules: [{match: [{path: {regex: \"(\"}}], destinations: [{}]}]\n",
        );
        let good = route("shop", "b", REVIEWS);
        let all = [bad.clone(), good.clone()];
        assert_eq!(refuse_route(&bad, &all).unwrap().reason, "InvalidSpec");
        assert_eq!(refuse_route(&good, &all), None);
    }

    #[test]
    fn rpc_protocols_are_refused() {
        let bolt = route(
            "shop",
            "a",
            "  service: reviews\n  port: 12200\n  protocol: bolt\n  rules: [{destinations: [{}]}]\n",
        );
        let refusal = refuse_route(&bolt, std::slice::from_ref(&bolt)).unwrap();
        assert_eq!(refusal.reason, "UnsupportedProtocol");
        assert!(
            refusal
                .errors
                .to_string()
                .starts_with("spec.protocol: bolt")
        );
    }
}
