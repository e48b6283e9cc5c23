//! The demo's summary in words: one line per thing the mesh did, marked
//! ✔ or ✘, from the same [`Report`] that `--output json` prints.

use std::fmt::Write as _;

use super::report::{Report, short_hash, thousands};

/// How far the canary split may be from its target and still be called
/// on target: the issue's ±1.5 percentage points.
pub const CANARY_TOLERANCE_PERCENT: f64 = 1.5;

fn mark(ok: bool) -> char {
    if ok { '✔' } else { '✘' }
}

/// The summary in words.
pub fn summary(r: &Report) -> String {
    const PAD: &str = "              ";
    let mut o = String::new();
    let total: u64 = r.routes.iter().map(|x| x.requests).sum();
    let per_second = if r.duration_seconds > 0.0 {
        total as f64 / r.duration_seconds
    } else {
        0.0
    };
    let _ = writeln!(
        o,
        "\nWhat you just saw: {} calls in {:.1} s ({:.0}/s{}) through {} real sidecars with {} mTLS,\n\
         configured by the operator's render of examples/ (config {}).\n",
        thousands(total),
        r.duration_seconds,
        per_second,
        if r.interrupted { ", stopped early" } else { "" },
        r.pods.len(),
        r.mtls.mode,
        short_hash(&r.config.hash),
    );
    if let Some(c) = &r.canary {
        let parts: Vec<String> = c
            .served
            .iter()
            .map(|(k, n)| format!("{} → {k} ({:.1} %)", thousands(*n), c.percent[k]))
            .collect();
        let target: Vec<String> = c.target.values().map(u32::to_string).collect();
        let sidecar: Vec<String> = c
            .sidecar_upstream
            .values()
            .map(|v| thousands(*v as u64))
            .collect();
        let _ = writeln!(
            o,
            "  {} Canary    {}: {}, target {}\n{PAD}{:.0} call(s) off the exact split: the client's sidecar interleaves the subsets\n\
             {PAD}in a fixed order, not at random; it sent {} requests to them (retries included)",
            mark(c.total > 0 && c.max_deviation_percent() <= CANARY_TOLERANCE_PERCENT),
            c.service,
            parts.join(", "),
            target.join("/"),
            c.off_by_calls,
            sidecar.join(" / "),
        );
    }
    if let Some(l) = &r.rate_limit {
        let mut over_limited = false;
        let mut under_clean = true;
        let tenants: Vec<String> = l
            .tenants
            .iter()
            .map(|(t, x)| {
                if x.sent_per_second > l.requests_per_second {
                    over_limited |= x.limited_429 > 0;
                } else {
                    under_clean &= x.limited_429 == 0;
                }
                format!(
                    "{t} sent {:.0}/s → {} of {} answered 429",
                    x.sent_per_second,
                    thousands(x.limited_429),
                    thousands(x.sent)
                )
            })
            .collect();
        let _ = writeln!(
            o,
            "  {} Limit     {} accepts {} writes/s per {} (burst {}, {}):\n{PAD}{}\n\
             {PAD}the {} sidecar counted {} limited, {} allowed",
            mark(over_limited && under_clean),
            l.service,
            l.requests_per_second,
            l.per_header.as_deref().unwrap_or("pod"),
            l.burst,
            l.limit,
            tenants.join("; "),
            l.service,
            thousands(l.sidecar_limited as u64),
            thousands(l.sidecar_allowed as u64),
        );
    }
    let mut callers: Vec<&str> = r
        .mtls
        .servers
        .iter()
        .flat_map(|s| s.callers.keys().map(String::as_str))
        .collect();
    callers.sort_unstable();
    callers.dedup();
    let all_saw = r.mtls.servers.iter().all(|s| !s.callers.is_empty());
    let refused = r.mtls.plaintext_probe.as_ref().is_some_and(|p| p.refused);
    let _ = writeln!(
        o,
        "  {} mTLS      {} of {} servers' apps received the caller {}\n\
         {PAD}in x-forwarded-client-cert, verified by their sidecars; {} handshakes, {} failed",
        mark(all_saw && refused && r.mtls.failed_handshakes() == 0.0),
        r.mtls
            .servers
            .iter()
            .filter(|s| !s.callers.is_empty())
            .count(),
        r.mtls.servers.len(),
        if callers.is_empty() {
            "(none)".to_owned()
        } else {
            callers.join(", ")
        },
        thousands(r.mtls.successful_handshakes() as u64),
        thousands(r.mtls.failed_handshakes() as u64),
    );
    if let Some(p) = &r.mtls.plaintext_probe {
        let _ = writeln!(
            o,
            "{PAD}a plaintext call straight to {}'s sidecar ({}) was {}: {}",
            p.pod,
            p.address,
            if p.refused { "refused" } else { "ANSWERED" },
            p.answer
        );
    }
    for (i, route) in r.routes.iter().enumerate() {
        let answered = route.ok + route.limited + route.failed;
        let _ = writeln!(
            o,
            "  {} {:<9} {:<8} {:<8} {} of {} ok, p50 {}, p99 {}{}",
            mark(route.failed == 0 && answered > 0),
            if i == 0 { "Protocols" } else { "" },
            route.protocol,
            route.service,
            thousands(route.ok),
            thousands(route.requests),
            ms(route.p50_ms),
            ms(route.p99_ms),
            if route.limited > 0 {
                format!(", {} limited", thousands(route.limited))
            } else {
                String::new()
            },
        );
        if route.skipped > 0 {
            let _ = writeln!(
                o,
                "{PAD}{} calls not sent: {} were already in flight (this machine is slower than --rate {})",
                thousands(route.skipped),
                super::traffic::MAX_IN_FLIGHT,
                r.rate
            );
        }
    }
    let _ = writeln!(
        o,
        "\nCleaned up: {} processes stopped, {} {}.",
        r.cleanup.processes_stopped,
        r.cleanup.work_dir,
        if r.cleanup.work_dir_removed {
            "removed"
        } else {
            "NOT removed"
        }
    );
    o
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1} ms"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::demo::report::{Canary, Cleanup, ConfigFacts, Mtls, PlaintextProbe, ServerIdentity};

    fn report(v1: u64, v2: u64) -> Report {
        let n = (v1 + v2) as f64;
        let map = |a: u64, b: u64| BTreeMap::from([("v1".to_owned(), a), ("v2".to_owned(), b)]);
        Report {
            duration_seconds: 20.0,
            rate: 300,
            interrupted: false,
            config: ConfigFacts {
                rendered_from: vec![],
                namespace: "bookinfo".into(),
                hash: "sha256:0123456789abcdef".into(),
                mtls: "strict".into(),
            },
            pods: vec![],
            routes: vec![],
            canary: Some(Canary {
                service: "reviews".into(),
                target: BTreeMap::from([("v1".to_owned(), 95), ("v2".to_owned(), 5)]),
                served: map(v1, v2),
                sidecar_upstream: BTreeMap::from([
                    ("v1".to_owned(), v1 as f64),
                    ("v2".to_owned(), v2 as f64),
                ]),
                total: v1 + v2,
                percent: BTreeMap::from([
                    ("v1".to_owned(), 100.0 * v1 as f64 / n),
                    ("v2".to_owned(), 100.0 * v2 as f64 / n),
                ]),
                off_by_calls: (v2 as f64 - 0.05 * n).abs(),
            }),
            rate_limit: None,
            mtls: Mtls {
                mode: "strict".into(),
                servers: vec![ServerIdentity {
                    pod: "reviews-v1".into(),
                    identity: "spiffe://cluster.local/ns/bookinfo/sa/reviews".into(),
                    callers: BTreeMap::from([(
                        "spiffe://cluster.local/ns/bookinfo/sa/productpage".to_owned(),
                        v1,
                    )]),
                }],
                handshakes: BTreeMap::from([
                    ("inbound/success".to_owned(), 4.0),
                    ("outbound/success".to_owned(), 4.0),
                ]),
                plaintext_probe: Some(PlaintextProbe {
                    pod: "reviews-v1".into(),
                    address: "127.0.0.11:15006".into(),
                    refused: true,
                    answer: "the connection was closed without an answer".into(),
                }),
            },
            cleanup: Cleanup {
                work_dir: "/tmp/remora-demo-x".into(),
                work_dir_removed: true,
                pids: vec![1, 2],
                processes_stopped: 2,
            },
        }
    }

    #[test]
    fn says_the_split_in_words_and_marks_it() {
        let text = summary(&report(1903, 97));
        assert!(
            text.contains("✔ Canary    reviews: 1,903 → v1 (95.2 %), 97 → v2 (4.8 %), target 95/5"),
            "{text}"
        );
        assert!(text.contains("3 call(s) off the exact split"), "{text}");
        assert!(text.contains("✔ mTLS      1 of 1 servers' apps received the caller spiffe://cluster.local/ns/bookinfo/sa/productpage"), "{text}");
        assert!(text.contains("4 handshakes, 0 failed"), "{text}");
        assert!(text.contains("(127.0.0.11:15006) was refused"), "{text}");
        assert!(
            text.contains("Cleaned up: 2 processes stopped, /tmp/remora-demo-x removed."),
            "{text}"
        );

        // 7 % to v2 is off target by more than 1.5 points.
        let text = summary(&report(1860, 140));
        assert!(text.contains("✘ Canary"), "{text}");
    }
}
