//! Checks on a parsed config document that the type system cannot express.

use std::collections::{BTreeSet, HashSet};

use super::*;
use crate::FieldErrors;

impl SidecarConfig {
    /// Returns every problem at once, each under its field path.
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut errs = FieldErrors::default();

        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let at = format!("listeners[{i}]");
            check_name(&mut errs, &format!("{at}.name"), &l.name);
            if !names.insert(l.name.as_str()) {
                errs.push(
                    format!("{at}.name"),
                    format!("duplicate listener name {:?}", l.name),
                );
            }
            if !addresses.insert(l.address) || self.admin.uses(l.address) {
                errs.push(
                    format!("{at}.address"),
                    format!("address {} is used twice", l.address),
                );
            }
            if let Some(c) = &l.default_cluster {
                self.check_cluster_ref(&mut errs, &format!("{at}.defaultCluster"), c);
            }
            check_ports(&mut errs, &format!("{at}.opaquePorts"), &l.opaque_ports);
        }

        let cluster_names = self.check_clusters(&mut errs);
        let mut tables = HashSet::new();
        let mut owners = std::collections::HashMap::new();
        for (i, t) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            check_name(&mut errs, &format!("{at}.name"), &t.name);
            if !tables.insert(t.name.as_str()) {
                errs.push(
                    format!("{at}.name"),
                    format!("duplicate route table {:?}", t.name),
                );
            }
            if t.domains.is_empty() && t.port.is_none() {
                errs.push(
                    format!("{at}.domains"),
                    "a route table needs domains or a port",
                );
            }
            if t.port == Some(0) {
                errs.push(format!("{at}.port"), "port must be 1-65535");
            }
            match t.port {
                None if !t.addresses.is_empty() => errs.push(
                    format!("{at}.addresses"),
                    "addresses select traffic to a port; set port",
                ),
                None => {}
                Some(port) => {
                    // One owner per address and port: the sidecar picks a
                    // table by it, so a second owner would be ignored silently.
                    for (k, ip) in t.addresses.iter().enumerate() {
                        let key = (ip.to_canonical(), port);
                        if let Some(owner) = owners.get(&key)
                            && *owner != t.name
                        {
                            errs.push(
                                format!("{at}.addresses[{k}]"),
                                format!(
                                    "{} is already owned by route table {owner:?}",
                                    std::net::SocketAddr::new(key.0, port)
                                ),
                            );
                        } else {
                            owners.insert(key, t.name.as_str());
                        }
                    }
                }
            }
            let mut route_names = HashSet::new();
            for (j, r) in t.routes.iter().enumerate() {
                let at = format!("{at}.routes[{j}]");
                if !route_names.insert(r.name.as_str()) {
                    errs.push(
                        format!("{at}.name"),
                        format!("duplicate route name {:?}", r.name),
                    );
                }
                self.check_route(&mut errs, &at, r, &cluster_names);
            }
        }

        for (i, rl) in self.rate_limits.iter().enumerate() {
            check_rate_limit(&mut errs, &format!("rateLimits[{i}]"), rl);
        }
        self.check_tls(&mut errs);
        for (i, p) in self.authz.iter().enumerate() {
            let at = format!("authz[{i}]");
            if p.rules.is_empty() {
                errs.push(
                    format!("{at}.rules"),
                    "a policy with no rules would deny every call; list at least one rule",
                );
            }
            for (j, rule) in p.rules.iter().enumerate() {
                if rule.from.is_empty() {
                    errs.push(
                        format!("{at}.rules[{j}].from"),
                        "list at least one caller identity",
                    );
                }
                for (k, m) in rule.to.iter().enumerate() {
                    check_request_match(&mut errs, &format!("{at}.rules[{j}].to[{k}]"), m);
                }
            }
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&self.runtime.log_level.as_str()) {
            errs.push(
                "runtime.logLevel",
                format!(
                    "unknown log level {:?}; use error, warn, info, debug or trace",
                    self.runtime.log_level
                ),
            );
        }
        let control = self.admin.control_address;
        if !control.ip().is_loopback() {
            errs.push(
                "admin.controlAddress",
                format!(
                    "{control} is not a loopback address; the control port drains the proxy and \
                     dumps its config, so it binds 127.0.0.1 or ::1 only"
                ),
            );
        }
        if control.port() != 0 && control == self.admin.address {
            errs.push(
                "admin.controlAddress",
                format!("{control} is also admin.address; use another port"),
            );
        }
        if self.runtime.worker_threads == 0 {
            errs.push("runtime.workerThreads", "must be at least 1");
        }
        errs.into_result()
    }

    fn check_clusters<'a>(&'a self, errs: &mut FieldErrors) -> BTreeSet<&'a str> {
        let mut names = BTreeSet::new();
        for (i, c) in self.clusters.iter().enumerate() {
            let at = format!("clusters[{i}]");
            check_name(errs, &format!("{at}.name"), &c.name);
            if !names.insert(c.name.as_str()) {
                errs.push(
                    format!("{at}.name"),
                    format!("duplicate cluster name {:?}", c.name),
                );
            }
            match &c.endpoints {
                Endpoints::Static(eps) => {
                    for (j, ep) in eps.iter().enumerate() {
                        if ep.address.port() == 0 {
                            errs.push(
                                format!("{at}.endpoints.static[{j}].address"),
                                "port must be 1-65535",
                            );
                        }
                        if ep.weight == 0 {
                            errs.push(
                                format!("{at}.endpoints.static[{j}].weight"),
                                "weight must be at least 1",
                            );
                        }
                    }
                }
                Endpoints::Dns(dns) => {
                    if dns.name.is_empty() {
                        errs.push(format!("{at}.endpoints.dns.name"), "must not be empty");
                    }
                    if dns.port == 0 {
                        errs.push(format!("{at}.endpoints.dns.port"), "port must be 1-65535");
                    }
                    if dns.refresh.is_zero() {
                        errs.push(
                            format!("{at}.endpoints.dns.refresh"),
                            "must be longer than 0",
                        );
                    }
                }
                Endpoints::OriginalDestination | Endpoints::LocalApp => {}
            }
            let lb = &c.load_balancer;
            if lb.policy.needs_hash() && lb.hash_on.is_none() {
                errs.push(
                    format!("{at}.loadBalancer.hashOn"),
                    "ringHash and maglev need hashOn (header, cookie or sourceIp)",
                );
            }
            if !lb.policy.needs_hash() && lb.hash_on.is_some() {
                errs.push(
                    format!("{at}.loadBalancer.hashOn"),
                    "hashOn is only used by ringHash and maglev",
                );
            }
            if c.connect_timeout.is_zero() {
                errs.push(format!("{at}.connectTimeout"), "must be longer than 0");
            }
            if c.limits.max_connections == 0 {
                errs.push(format!("{at}.limits.maxConnections"), "must be at least 1");
            }
            if c.limits.max_requests == 0 {
                errs.push(format!("{at}.limits.maxRequests"), "must be at least 1");
            }
            if let Some(od) = &c.outlier_detection {
                check_percent(
                    errs,
                    &format!("{at}.outlierDetection.maxEjectionPercent"),
                    f64::from(od.max_ejection_percent),
                );
                if od.base_ejection_time.is_zero() {
                    errs.push(
                        format!("{at}.outlierDetection.baseEjectionTime"),
                        "must be longer than 0",
                    );
                }
            }
            if let Some(hc) = &c.health_check
                && (hc.interval.is_zero() || hc.timeout.is_zero())
            {
                errs.push(
                    format!("{at}.healthCheck"),
                    "interval and timeout must be longer than 0",
                );
            }
            if c.tls.identity.is_some() && c.tls.mode != UpstreamTlsMode::Mesh {
                errs.push(
                    format!("{at}.tls.identity"),
                    "only applies to tls.mode mesh (auto may fall back to plaintext, which has no identity to check)",
                );
            }
            if !c.tls.mesh_addresses.is_empty() && c.tls.mode != UpstreamTlsMode::Auto {
                errs.push(
                    format!("{at}.tls.meshAddresses"),
                    "only applies to tls.mode auto",
                );
            }
            if let Some(id) = &c.tls.identity
                && !id.starts_with("spiffe://")
            {
                errs.push(
                    format!("{at}.tls.identity"),
                    format!("{id:?} is not a SPIFFE ID (spiffe://<trust-domain>/ns/<ns>/sa/<sa>)"),
                );
            }
        }
        names
    }

    fn check_cluster_ref(&self, errs: &mut FieldErrors, path: &str, name: &str) {
        if self.cluster(name).is_none() {
            errs.push(path, format!("cluster {name:?} is not defined in clusters"));
        }
    }

    fn check_route(&self, errs: &mut FieldErrors, at: &str, r: &Route, clusters: &BTreeSet<&str>) {
        check_request_match(errs, &format!("{at}.match"), &r.matches);
        match &r.action {
            RouteAction::Clusters(wcs) => {
                if wcs.is_empty() {
                    errs.push(format!("{at}.action.clusters"), "list at least one cluster");
                }
                for (k, wc) in wcs.iter().enumerate() {
                    if !clusters.contains(wc.cluster.as_str()) {
                        errs.push(
                            format!("{at}.action.clusters[{k}].cluster"),
                            format!("cluster {:?} is not defined in clusters", wc.cluster),
                        );
                    }
                }
                let sum: u32 = wcs.iter().map(|w| w.weight).sum();
                if !wcs.is_empty() && sum != 100 {
                    errs.push(
                        format!("{at}.action.clusters"),
                        format!("weights sum to {sum}, must be 100"),
                    );
                }
            }
            RouteAction::Direct(d) => {
                check_status(errs, &format!("{at}.action.direct.status"), d.status)
            }
        }
        if let Some(retry) = &r.retry {
            if retry.attempts > 10 {
                errs.push(
                    format!("{at}.retry.attempts"),
                    format!("{} retries is too many; at most 10", retry.attempts),
                );
            }
            if retry.attempts > 0 && retry.retry_on.is_empty() {
                errs.push(
                    format!("{at}.retry.retryOn"),
                    "say when to retry (e.g. connect-failure, 5xx)",
                );
            }
            check_percent(
                errs,
                &format!("{at}.retry.budgetPercent"),
                f64::from(retry.budget_percent),
            );
            if let (Some(per_try), Some(total)) = (retry.per_try_timeout, r.timeout)
                && per_try > total
            {
                errs.push(
                    format!("{at}.retry.perTryTimeout"),
                    format!("{per_try} is longer than the route timeout {total}"),
                );
            }
        }
        if let Some(fault) = &r.fault {
            if let Some(d) = &fault.delay {
                check_percent(errs, &format!("{at}.fault.delay.percentage"), d.percentage);
            }
            if let Some(a) = &fault.abort {
                check_percent(errs, &format!("{at}.fault.abort.percentage"), a.percentage);
                check_status(errs, &format!("{at}.fault.abort.httpStatus"), a.http_status);
                if a.grpc_status.is_some_and(|c| c > 16) {
                    errs.push(
                        format!("{at}.fault.abort.grpcStatus"),
                        "gRPC status codes are 0-16",
                    );
                }
            }
        }
        if let Some(m) = &r.mirror {
            check_percent(errs, &format!("{at}.mirror.percentage"), m.percentage);
            if !clusters.contains(m.cluster.as_str()) {
                errs.push(
                    format!("{at}.mirror.cluster"),
                    format!("cluster {:?} is not defined in clusters", m.cluster),
                );
            }
        }
        check_header_names(errs, &format!("{at}.requestHeaders"), &r.request_headers);
        check_header_names(errs, &format!("{at}.responseHeaders"), &r.response_headers);
    }

    fn check_tls(&self, errs: &mut FieldErrors) {
        let tls = &self.tls;
        let needs_certs = tls.mode != TlsMode::Disabled
            || self
                .clusters
                .iter()
                .any(|c| c.tls.mode != UpstreamTlsMode::Disabled);
        if needs_certs && tls.trust_bundle.is_empty() && tls.ca_file.is_none() {
            errs.push(
                "tls.trustBundle",
                "mTLS is on but there is no trust bundle (trustBundle or caFile)",
            );
        }
        if !tls.trust_bundle.is_empty() && !tls.trust_bundle.contains("-----BEGIN CERTIFICATE-----")
        {
            errs.push("tls.trustBundle", "is not a PEM certificate bundle");
        }
        if tls.trust_domain.is_empty() || tls.trust_domain.contains('/') {
            errs.push(
                "tls.trustDomain",
                format!(
                    "{:?} is not a trust domain (e.g. cluster.local)",
                    tls.trust_domain
                ),
            );
        }
        for (i, s) in tls.revoked_serials.iter().enumerate() {
            if s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                errs.push(
                    format!("tls.revokedSerials[{i}]"),
                    format!("{s:?} is not a lower-case hex serial number"),
                );
            }
        }
    }
}

fn check_rate_limit(errs: &mut FieldErrors, at: &str, rl: &RateLimit) {
    check_request_match(errs, &format!("{at}.match"), &rl.matches);
    if let Some(b) = &rl.bucket {
        if b.requests == 0 {
            errs.push(format!("{at}.bucket.requests"), "must be at least 1");
        }
        if b.per.is_zero() {
            errs.push(format!("{at}.bucket.per"), "must be longer than 0");
        }
        if b.burst == 0 {
            errs.push(format!("{at}.bucket.burst"), "must be at least 1");
        }
    } else if rl.adaptive.is_none() {
        errs.push(at, "a rate limit needs a bucket, adaptive settings or both");
    }
    check_status(errs, &format!("{at}.response.status"), rl.response.status);
    if let Some(t) = &rl.test_traffic {
        check_percent(
            errs,
            &format!("{at}.testTraffic.maxSharePercent"),
            f64::from(t.max_share_percent),
        );
    }
    if let Some(a) = &rl.adaptive {
        if let Some(cpu) = a.cpu_percent {
            check_percent(errs, &format!("{at}.adaptive.cpuPercent"), f64::from(cpu));
        }
        if a.cpu_percent.is_none() && a.max_concurrency.is_none() {
            errs.push(
                format!("{at}.adaptive"),
                "set cpuPercent, maxConcurrency or both",
            );
        }
        if a.window.is_zero() {
            errs.push(format!("{at}.adaptive.window"), "must be longer than 0");
        }
    }
}

fn check_request_match(errs: &mut FieldErrors, at: &str, m: &RequestMatch) {
    if let Some(p) = &m.path {
        check_string_match(errs, &format!("{at}.path"), p);
    }
    if let Some(method) = &m.method
        && (method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()))
    {
        errs.push(
            format!("{at}.method"),
            format!("{method:?} is not an upper-case HTTP method"),
        );
    }
    for (kind, list) in [("headers", &m.headers), ("query", &m.query)] {
        for (i, km) in list.iter().enumerate() {
            if km.name.is_empty() {
                errs.push(format!("{at}.{kind}[{i}].name"), "must not be empty");
            }
            if let Some(v) = &km.value {
                check_string_match(errs, &format!("{at}.{kind}[{i}].value"), v);
            }
        }
    }
}

fn check_string_match(errs: &mut FieldErrors, at: &str, m: &StringMatch) {
    if let StringMatch::Regex(re) = m {
        errs.check_regex(format!("{at}.regex"), re);
    }
}

fn check_header_names(errs: &mut FieldErrors, at: &str, edits: &HeaderEdits) {
    let names = edits
        .remove
        .iter()
        .chain(edits.set.keys())
        .chain(edits.add.keys());
    for name in names {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b))
        {
            errs.push(at, format!("{name:?} is not a valid header name"));
        }
    }
}

fn check_name(errs: &mut FieldErrors, at: &str, name: &str) {
    if name.is_empty() {
        errs.push(at, "must not be empty");
    }
}

fn check_ports(errs: &mut FieldErrors, at: &str, ports: &[u16]) {
    for (i, p) in ports.iter().enumerate() {
        if *p == 0 {
            errs.push(format!("{at}[{i}]"), "port must be 1-65535");
        }
    }
}

pub(crate) fn check_percent(errs: &mut FieldErrors, at: &str, value: f64) {
    if !(0.0..=100.0).contains(&value) {
        errs.push(at, format!("{value} is not a percentage (0-100)"));
    }
}

fn check_status(errs: &mut FieldErrors, at: &str, status: u16) {
    if !(200..=599).contains(&status) {
        errs.push(
            at,
            format!("{status} is not an HTTP status a proxy may send (200-599)"),
        );
    }
}
