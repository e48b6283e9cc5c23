//! Issue #8: the mesh end to end, with pods as network namespaces.
//!
//! Three pods on one node (docs/e2e-netns.md): `productpage` (the client) and
//! `reviews-v1`/`reviews-v2` (the server, two subsets). Everything a cluster
//! would compute comes from the real code: the sidecar config is what the
//! operator renders from the manifests in `netns/pods.rs`, the capture rules and the sidecar's
//! user, arguments and environment are what the webhook injects into each
//! Pod, and the rules are installed by the real `remora-sidecar
//! init-iptables`. Only what a volume mount or cluster service would provide
//! is stood in for: files for the mounts, `/etc/hosts` for cluster DNS, a
//! DNAT at the node for the ClusterIP.
//!
//! Needs root, `ip`, `setpriv`, `iptables` and `curl` (scripts/e2e-deps.sh),
//! and the binaries (`cargo build -p remora-sidecar -p remora-e2e`).
//! `REMORA_SKIP_NETNS=1` skips, loudly.

#[path = "netns/pods.rs"]
mod pods;

use std::{
    collections::BTreeMap,
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use remora_api::{config::TlsMode, crd::SidecarTemplate};
use remora_e2e::{
    netns::{self, Node},
    prometheus, workspace_bin,
};
use remora_operator::{
    ca::MeshCa,
    render::{RenderContext, render_sidecar_config},
};
use remora_webhook::{InjectOptions, SelectedTemplate, inject};

use pods::{NAMESPACE, Workload, cluster_dns, manifests, start_pod};

const REVIEWS: &str = "http://reviews.bookinfo.svc.cluster.local:9080";
/// Requests of the canary run, and the bound on how long they may take.
const CANARY_REQUESTS: usize = 2_000;
const CANARY_DEADLINE: Duration = Duration::from_secs(180);
/// A forged caller identity the client app sends; no sidecar may pass it on.
const FORGED_XFCC: &str = "URI=spiffe://cluster.local/ns/evil/sa/mallory";

#[test]
fn plaintext_mesh_captures_routes_limits_and_measures() {
    if !netns::preflight("plaintext_mesh_captures_routes_limits_and_measures") {
        return;
    }
    let mut mesh = Mesh::start("plain", TlsMode::Disabled)
        .unwrap_or_else(|e| panic!("starting the mesh: {e:#}"));
    mesh.check()
        .unwrap_or_else(|e| panic!("the mesh end to end: {e:#}"));
}

#[test]
fn strict_mtls_mesh_captures_routes_limits_and_measures() {
    if !netns::preflight("strict_mtls_mesh_captures_routes_limits_and_measures") {
        return;
    }
    let mut mesh =
        Mesh::start("mtls", TlsMode::Strict).unwrap_or_else(|e| panic!("starting the mesh: {e:#}"));
    mesh.check()
        .unwrap_or_else(|e| panic!("the mesh end to end with strict mTLS: {e:#}"));
}

struct Mesh {
    node: Node,
    mtls: TlsMode,
    client: Workload,
    v1: Workload,
    v2: Workload,
}

impl Mesh {
    fn start(tag: &str, mtls: TlsMode) -> Result<Self> {
        let sidecar = workspace_bin("remora-sidecar");
        let echo = PathBuf::from(env!("CARGO_BIN_EXE_remora-echo"));
        let built = fs::metadata(&sidecar)?
            .modified()?
            .elapsed()
            .unwrap_or_default();
        eprintln!(
            "[{mtls:?}] using {} (built {}s ago)",
            sidecar.display(),
            built.as_secs()
        );
        let m = manifests();

        // The operator's side: the CA, the rendered config.
        let ca = MeshCa::generate("cluster.local")?;
        let mut ctx = RenderContext::new(NAMESPACE);
        ctx.mtls = mtls;
        if mtls != TlsMode::Disabled {
            ctx.trust_bundle = ca.cert_pem().to_owned();
            // What the operator lists for a mesh namespace: its Services' ClusterIPs.
            ctx.mesh_addresses = m
                .services
                .iter()
                .filter_map(|s| s.spec.as_ref()?.cluster_ip.as_ref()?.parse().ok())
                .collect();
        }
        // As the operator does: each routed Service's ClusterIPs.
        for s in &m.services {
            let ips = s.spec.as_ref().and_then(|spec| spec.cluster_ip.as_ref());
            if let (Some(name), Some(ip)) = (&s.metadata.name, ips) {
                ctx.service_addresses.insert(
                    (NAMESPACE.to_owned(), name.clone()),
                    vec![ip.parse().context("a ClusterIP")?],
                );
            }
        }
        let rendered = render_sidecar_config(&ctx, &m.mesh);
        ensure!(
            rendered.rejected.is_empty(),
            "the operator rejected: {:?}",
            rendered.rejected
        );

        // The cluster's side: pods on a node, their DNS and the ClusterIP.
        let mut node = Node::new(tag)?;
        let mut pods = BTreeMap::new();
        for p in &m.pods {
            let name = p.metadata.name.clone().unwrap_or_default();
            pods.insert(name.clone(), node.add_pod(&name)?);
        }
        let (hosts, cluster_ips) = cluster_dns(&m, &pods);
        node.set_hosts(&hosts)?;
        for (ip, port, backends) in cluster_ips {
            node.add_cluster_ip(ip, port, &backends)?;
        }

        // The webhook's side, then the kubelet's: init container, sidecar, app.
        let template: &SidecarTemplate = &m.mesh.templates[0];
        let selected = SelectedTemplate::from_resource(template);
        let mut workloads = BTreeMap::new();
        for p in &m.pods {
            let injected = inject::inject(p, &selected, &InjectOptions::default())?.pod;
            let pod = pods[&injected.metadata.name.clone().unwrap_or_default()].clone();
            let w = start_pod(
                &mut node,
                &pod,
                &injected,
                &rendered.config,
                &ca,
                &m.mesh,
                &sidecar,
                &echo,
            )
            .with_context(|| format!("starting pod {}", pod.name))?;
            workloads.insert(pod.name.clone(), w);
        }
        node.check_running()?;
        let mut take = |name: &str| workloads.remove(name).expect("pod in manifests");
        Ok(Self {
            mtls,
            client: take("productpage"),
            v1: take("reviews-v1"),
            v2: take("reviews-v2"),
            node,
        })
    }

    /// Runs every check, in an order where none disturbs the next.
    fn check(&mut self) -> Result<()> {
        let t = Instant::now();
        self.transparent_capture()?;
        self.default_route_through_the_cluster_ip()?;
        self.unrouted_service_through_passthrough()?;
        self.calls_by_ip_follow_the_destination_address()?;
        self.rate_limit()?;
        self.proxy_traffic_is_not_recaptured()?;
        self.kubelet_probe_through_the_sidecar()?;
        self.canary_split_and_metrics()?;
        self.node.check_running()?;
        eprintln!("[{:?}] all checks passed in {:?}", self.mtls, t.elapsed());
        Ok(())
    }

    /// The client app calls the Service by name; it never talks to a sidecar
    /// itself, yet the request is routed by its sidecar and delivered through
    /// the server's.
    fn transparent_capture(&self) -> Result<()> {
        for http2 in [false, true] {
            let forged = format!("x-forwarded-client-cert: {FORGED_XFCC}");
            let mut args = vec!["-H", forged.as_str()];
            if http2 {
                args.push("--http2-prior-knowledge");
            }
            let url = format!("{REVIEWS}/reviews/1");
            args.push(&url);
            let r = self.curl_as_app(&args)?;
            ensure!(r.status == 200, "GET {url} (h2c: {http2}): {r:?}");
            let body = r.json()?;
            ensure!(body["path"] == "/reviews/1", "{body}");
            let version = r.header("x-echo-version");
            ensure!(version == "v1" || version == "v2", "{r:?}");
            // Routed by the client's sidecar (the canary rule's header edit) ...
            ensure!(
                body["headers"]["x-routed-by"] == "remora",
                "not routed by the client's sidecar: {body}"
            );
            ensure!(body["headers"]["x-request-id"].is_string(), "{body}");
            // ... and delivered by the server's: the app sees a loopback peer.
            let peer = body["peer"].as_str().unwrap_or_default();
            ensure!(
                peer.starts_with("127.0.0.1:"),
                "the app was reached from {peer}, not through its sidecar: {body}"
            );
            // Only the server's sidecar says who called; a forged header never passes.
            let xfcc = body["headers"]["x-forwarded-client-cert"].as_str();
            match self.mtls {
                TlsMode::Disabled => ensure!(
                    xfcc.is_none(),
                    "plaintext: a caller identity reached the app: {body}"
                ),
                _ => {
                    let xfcc = xfcc.unwrap_or_default();
                    ensure!(
                        xfcc.contains("URI=spiffe://cluster.local/ns/bookinfo/sa/productpage")
                            && !xfcc.contains(FORGED_XFCC),
                        "mTLS: x-forwarded-client-cert {xfcc:?} does not name the client: {body}"
                    );
                }
            }
        }
        Ok(())
    }

    /// A path no rule matches takes the route's default, the Service itself:
    /// the sidecar dials the ClusterIP and the node's DNAT picks a pod.
    fn default_route_through_the_cluster_ip(&self) -> Result<()> {
        let url = format!("{REVIEWS}/details/7");
        let r = self.curl_as_app(&[&url])?;
        ensure!(r.status == 200, "GET {url}: {r:?}");
        let body = r.json()?;
        ensure!(body["headers"]["x-routed-by"].is_null(), "{body}");
        ensure!(
            body["peer"]
                .as_str()
                .unwrap_or_default()
                .starts_with("127.0.0.1:"),
            "{body}"
        );
        Ok(())
    }

    /// A Service no ServiceRoute names is reached through the pass-through
    /// cluster (the original destination, its ClusterIP); with mTLS on, its
    /// ClusterIP is in the mesh catalog, so the hop is mTLS and a strict
    /// server accepts it.
    fn unrouted_service_through_passthrough(&self) -> Result<()> {
        let url = "http://ratings.bookinfo.svc.cluster.local:9080/ratings/1";
        let r = self.curl_as_app(&[url])?;
        ensure!(r.status == 200, "GET {url}: {r:?}");
        ensure!(r.header("x-echo-version") == "v1", "{r:?}");
        let body = r.json()?;
        ensure!(body["headers"]["x-routed-by"].is_null(), "{body}");
        let xfcc = body["headers"]["x-forwarded-client-cert"].as_str();
        match self.mtls {
            TlsMode::Disabled => ensure!(xfcc.is_none(), "{body}"),
            _ => ensure!(
                xfcc.is_some_and(|x| x.contains("sa/productpage")),
                "pass-through to a meshed Service was not mTLS: {body}"
            ),
        }
        Ok(())
    }

    /// Calls by ClusterIP: reviews and ratings share port 9080, and only
    /// reviews has a ServiceRoute. Its table owns reviews' ClusterIP, so a
    /// call to ratings' ClusterIP, even on a path reviews' rules match, is not
    /// routed by it and passes through to ratings.
    fn calls_by_ip_follow_the_destination_address(&self) -> Result<()> {
        for (ip, routed) in [("10.251.128.10", true), ("10.251.128.11", false)] {
            let url = format!("http://{ip}:9080/reviews/1");
            let r = self.curl_as_app(&[&url])?;
            ensure!(r.status == 200, "GET {url}: {r:?}");
            let body = r.json()?;
            let by_reviews = body["headers"]["x-routed-by"] == "remora";
            ensure!(
                by_reviews == routed,
                "GET {url}: routed by reviews' table: {by_reviews}, expected {routed}: {body}"
            );
            if !routed {
                // ratings selects reviews-v1 only.
                ensure!(r.header("x-echo-version") == "v1", "{r:?}");
            }
        }
        Ok(())
    }

    /// The kubelet's view of reviews-v1's readiness probe, which the webhook
    /// rewrote to the admin port: a direct connection from outside the pod
    /// (as the client's proxy uid, which is not captured) gets the app's answer
    /// through the sidecar, while the probed port itself stays in the mesh
    /// (see `proxy_traffic_is_not_recaptured`: strict still refuses plaintext on it).
    fn kubelet_probe_through_the_sidecar(&self) -> Result<()> {
        let url = format!("http://{}:15000/app-health/reviews/readyz", self.v1.pod.ip);
        let r = self.curl(&self.client, self.client.proxy_uid, &[&url])?;
        ensure!(r.status == 200, "kubelet-style probe {url}: {r:?}");
        Ok(())
    }

    /// `/limited` goes to v1 only, where the policy allows 5 per minute.
    fn rate_limit(&self) -> Result<()> {
        let mut statuses = Vec::new();
        for i in 0..8 {
            let url = format!("{REVIEWS}/limited/{i}");
            let r = self.curl_as_app(&[&url])?;
            statuses.push(r.status);
            ensure!(
                !r.header("x-ratelimit-limit").is_empty(),
                "no x-ratelimit-limit on {url}: {r:?}"
            );
            if r.status == 429 {
                ensure!(r.header("retry-after") == "60", "{r:?}");
                ensure!(r.header("x-ratelimit-remaining") == "0", "{r:?}");
                ensure!(r.header("x-remora-flags").contains("RL"), "{r:?}");
            } else {
                ensure!(r.header("x-echo-version") == "v1", "{r:?}");
            }
        }
        ensure!(
            statuses == [200, 200, 200, 200, 200, 429, 429, 429],
            "5 of 8 allowed, then 429: {statuses:?}"
        );
        let m = self.metrics(&self.v1)?;
        let limit = [("limit", "bookinfo/reviews/limited")];
        let counted = |result| {
            let labels = [limit[0], ("result", result)];
            prometheus::sum(&m, "ratelimit_requests_total", &labels)
        };
        ensure!(
            counted("allowed") == 5.0 && counted("limited") == 3.0,
            "ratelimit_requests_total on reviews-v1: allowed {}, limited {}",
            counted("allowed"),
            counted("limited")
        );
        Ok(())
    }

    /// The same call to a pod IP is captured for the app's user and not for
    /// the proxy's (the owner match of init-iptables), so the sidecar's own
    /// upstream connections leave the pod as they are.
    fn proxy_traffic_is_not_recaptured(&self) -> Result<()> {
        let url = format!("http://{}:9080/reviews/2", self.v1.pod.ip);
        let outbound = || -> Result<f64> {
            let m = self.metrics(&self.client)?;
            Ok(prometheus::sum(
                &m,
                "downstream_request_total",
                &[("listener", "outbound")],
            ))
        };

        // The app dialling a pod IP directly is still captured. No route
        // table owns a pod IP, so it passes through to the pod it dialled
        // (plaintext: pod IPs are not mesh addresses, docs/sidecar.md).
        let before = outbound()?;
        let r = self.curl_as_app(&[&url]);
        if self.mtls == TlsMode::Disabled {
            let r = r?;
            ensure!(r.status == 200, "app → {url}: {r:?}");
            ensure!(r.header("x-echo-version") == "v1", "{r:?}");
            ensure!(r.json()?["headers"]["x-routed-by"].is_null(), "{r:?}");
        }
        ensure!(
            outbound()? == before + 1.0,
            "the app's call was not captured"
        );
        let refused = [("direction", "inbound"), ("result", "plaintext_refused")];
        let refused_before =
            prometheus::sum(&self.metrics(&self.v1)?, "tls_handshake_total", &refused);

        // The proxy's user is not: the call bypasses the client's sidecar.
        let before = outbound()?;
        let direct = self.curl(&self.client, self.client.proxy_uid, &[&url]);
        match self.mtls {
            TlsMode::Disabled => {
                let r = direct?;
                ensure!(r.status == 200, "proxy uid → {url}: {r:?}");
                let body = r.json()?;
                ensure!(
                    body["headers"]["x-routed-by"].is_null(),
                    "the proxy's own call went through its sidecar: {body}"
                );
            }
            // Strict: the server's sidecar refuses plaintext, which shows the
            // call left the client pod unencrypted, i.e. not through its sidecar.
            _ => {
                ensure!(
                    !matches!(&direct, Ok(r) if r.status == 200),
                    "strict mTLS: a plaintext call reached the app: {direct:?}"
                );
                let n = prometheus::sum(&self.metrics(&self.v1)?, "tls_handshake_total", &refused);
                ensure!(
                    n > refused_before,
                    "reviews-v1 counted no plaintext_refused handshake"
                );
            }
        }
        ensure!(
            outbound()? == before,
            "the proxy uid's call was captured by the client's sidecar"
        );

        // And the kernel agrees: the owner rule let packets through.
        let rules = self.node.exec_in_pod(
            &self.client.pod,
            &["iptables", "-w", "-t", "nat", "-v", "-S", "REMORA_OUTPUT"],
        )?;
        let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
        let owner = format!("-m owner --uid-owner {}", self.client.proxy_uid);
        let own_return = rules
            .lines()
            .find(|l| {
                l.contains(&owner)
                    && l.ends_with("-j RETURN")
                    && !l.contains(" ! ")
                    && !l.contains("-o lo")
            })
            .with_context(|| format!("no owner RETURN rule in\n{rules}"))?;
        ensure!(
            counter(own_return) > 0,
            "the proxy uid's RETURN rule matched nothing:\n{rules}"
        );
        Ok(())
    }

    /// ~2,000 calls: 95/5 within a few percent, and every sidecar counted them.
    fn canary_split_and_metrics(&self) -> Result<()> {
        let client_before = self.metrics(&self.client)?;
        let v1_before = self.metrics(&self.v1)?;
        let v2_before = self.metrics(&self.v2)?;

        let t = Instant::now();
        let url = format!("{REVIEWS}/reviews/[1-{CANARY_REQUESTS}]");
        let cmd = self.node.command(
            &self.client.pod,
            Some(self.client.app_uid),
            &[
                "curl",
                "-sS",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %header{x-echo-version}\\n",
                &url,
            ],
        );
        let out = self.node.run(cmd, CANARY_DEADLINE)?;
        let elapsed = t.elapsed();
        ensure!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut by_answer: BTreeMap<String, usize> = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            *by_answer.entry(line.trim().to_owned()).or_default() += 1;
        }
        let v1 = by_answer.get("200 v1").copied().unwrap_or(0);
        let v2 = by_answer.get("200 v2").copied().unwrap_or(0);
        eprintln!(
            "[{:?}] {CANARY_REQUESTS} requests in {elapsed:?}: {by_answer:?}",
            self.mtls
        );
        ensure!(
            v1 + v2 == CANARY_REQUESTS,
            "every request answered 200 by v1 or v2: {by_answer:?}"
        );
        let share = v2 as f64 / CANARY_REQUESTS as f64;
        ensure!(
            (0.03..=0.07).contains(&share),
            "v2 got {:.1}% of the traffic, want 5% ± 2: {by_answer:?}",
            share * 100.0
        );

        let delta = |before: &[prometheus::Sample],
                     after: &[prometheus::Sample],
                     name,
                     labels: &[(&str, &str)]| {
            prometheus::sum(after, name, labels) - prometheus::sum(before, name, labels)
        };
        let client = self.metrics(&self.client)?;
        let outbound = [("listener", "outbound")];
        ensure!(
            delta(
                &client_before,
                &client,
                "downstream_request_total",
                &outbound
            ) == CANARY_REQUESTS as f64,
            "the client's outbound listener counted {} requests, sent {CANARY_REQUESTS}",
            delta(
                &client_before,
                &client,
                "downstream_request_total",
                &outbound
            )
        );
        for (subset, n) in [("v1", v1), ("v2", v2)] {
            let cluster = format!("reviews.bookinfo:9080|{subset}");
            let counted = delta(
                &client_before,
                &client,
                "upstream_request_total",
                &[("cluster", &cluster)],
            );
            ensure!(
                counted == n as f64,
                "upstream_request_total{{cluster={cluster:?}}} grew by {counted}, {n} answered"
            );
        }
        for (w, before, n) in [(&self.v1, &v1_before, v1), (&self.v2, &v2_before, v2)] {
            let after = self.metrics(w)?;
            let inbound = [("listener", "inbound")];
            let counted = delta(before, &after, "downstream_request_total", &inbound);
            ensure!(
                counted == n as f64,
                "{}'s inbound listener counted {counted}, {n} answered",
                w.pod.name
            );
            let app = delta(
                before,
                &after,
                "upstream_request_total",
                &[("cluster", "inbound|app")],
            );
            ensure!(
                app == n as f64,
                "{}: inbound|app grew by {app}, want {n}",
                w.pod.name
            );
            if self.mtls != TlsMode::Disabled && n > 0 {
                let ok = [("direction", "inbound"), ("result", "success")];
                let shakes = prometheus::sum(&after, "tls_handshake_total", &ok);
                ensure!(shakes >= 1.0, "{}: no inbound mTLS handshake", w.pod.name);
            }
        }
        if self.mtls != TlsMode::Disabled {
            let ok = [("direction", "outbound"), ("result", "success")];
            let shakes = prometheus::sum(&client, "tls_handshake_total", &ok);
            ensure!(
                shakes >= 2.0,
                "the client made {shakes} outbound mTLS handshakes, want one per subset at least"
            );
        }
        Ok(())
    }

    fn curl_as_app(&self, args: &[&str]) -> Result<Reply> {
        self.curl(&self.client, self.client.app_uid, args)
    }

    /// One curl in `w`'s pod as `uid`, with the response head parsed.
    fn curl(&self, w: &Workload, uid: u32, args: &[&str]) -> Result<Reply> {
        let mut argv = vec!["curl", "-sS", "-i", "--max-time", "10"];
        argv.extend(args);
        let out = self.node.run(
            self.node.command(&w.pod, Some(uid), &argv),
            Duration::from_secs(20),
        )?;
        if !out.status.success() {
            bail!(
                "curl {args:?} in {} as uid {uid}: {} {}",
                w.pod.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Reply::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// The sidecar's admin `/metrics`, read from inside its pod.
    fn metrics(&self, w: &Workload) -> Result<Vec<prometheus::Sample>> {
        let cmd = self.node.command(
            &w.pod,
            None,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "http://127.0.0.1:15000/metrics",
            ],
        );
        let out = self.node.run(cmd, Duration::from_secs(10))?;
        ensure!(
            out.status.success(),
            "metrics of {}: {}",
            w.pod.name,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(prometheus::parse(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// The packet counter of an `iptables -v -S` rule (`... -c <packets> <bytes> ...`).
fn counter(rule: &str) -> u64 {
    let mut words = rule.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-c" {
            return words.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        }
    }
    0
}

/// A response as `curl -i` prints it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Reply {
    fn parse(text: &str) -> Result<Self> {
        let (head, body) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("not an HTTP response: {text:?}"))?;
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status line: {head:?}"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Ok(Self {
            status,
            headers,
            body: body.to_owned(),
        })
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {:?}", self.body))
    }
}
