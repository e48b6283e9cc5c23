//! Endpoints, load balancing and outlier ejection for one cluster.
//!
//! An [`EndpointSet`] is immutable: DNS refreshes build a new one (keeping the
//! per-endpoint state of addresses that stay) and swap it in atomically.

use std::{
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use rand::Rng;
use remora_api::config::{LbPolicy, OutlierDetection};

use crate::metrics::Counter;

/// Milliseconds since the process started (monotonic), for ejection deadlines.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `addr` as a URI authority, parsed once (the pool key of requests).
    pub authority: http::uri::Authority,
    pub weight: u32,
    /// Requests in flight, for least-request balancing.
    pub active: AtomicU64,
    consecutive_5xx: AtomicU32,
    consecutive_connect_failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, weight: u32) -> Self {
        Self {
            addr,
            authority: authority_of(addr),
            weight: weight.max(1),
            active: AtomicU64::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_connect_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
        }
    }

    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now
    }
}

/// What happened to a request sent to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    ServerError,
    ConnectFailure,
}

const RING_ENTRIES_PER_WEIGHT: usize = 64;
const MAGLEV_SIZE: usize = 65537;

#[derive(Debug)]
enum Table {
    /// Round robin over a weight-expanded schedule.
    Schedule(Vec<u32>),
    None,
    /// Sorted `(hash, endpoint index)`.
    Ring(Vec<(u64, u32)>),
    Maglev(Vec<u32>),
}

/// A socket address as a URI authority (`10.0.0.1:80`, `[::1]:80`).
pub fn authority_of(addr: SocketAddr) -> http::uri::Authority {
    http::uri::Authority::try_from(addr.to_string()).expect("a socket address is an authority")
}

#[derive(Debug)]
pub struct EndpointSet {
    pub endpoints: Vec<Arc<Endpoint>>,
    table: Table,
    uniform: bool,
}

impl EndpointSet {
    pub fn new(policy: LbPolicy, endpoints: Vec<Arc<Endpoint>>) -> Self {
        let uniform = endpoints.windows(2).all(|w| w[0].weight == w[1].weight);
        let table = match policy {
            LbPolicy::RoundRobin => {
                let g = endpoints.iter().fold(0, |g, e| gcd(g, e.weight)).max(1);
                let mut s = Vec::new();
                // Interleave so weights 3:1 give a,b,a,a rather than a,a,a,b.
                let max = endpoints.iter().map(|e| e.weight / g).max().unwrap_or(0);
                for round in 0..max.min(1000) {
                    for (i, e) in endpoints.iter().enumerate() {
                        if e.weight / g > round {
                            s.push(i as u32);
                        }
                    }
                }
                Table::Schedule(s)
            }
            LbPolicy::RingHash => {
                let mut ring = Vec::new();
                for (i, e) in endpoints.iter().enumerate() {
                    let n = RING_ENTRIES_PER_WEIGHT * e.weight.min(100) as usize;
                    for k in 0..n {
                        ring.push((hash_bytes(format!("{}_{k}", e.addr).as_bytes()), i as u32));
                    }
                }
                ring.sort_unstable();
                Table::Ring(ring)
            }
            LbPolicy::Maglev => Table::Maglev(maglev_table(&endpoints)),
            LbPolicy::LeastRequest | LbPolicy::Random => Table::None,
        };
        Self {
            endpoints,
            table,
            uniform,
        }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn maglev_table(endpoints: &[Arc<Endpoint>]) -> Vec<u32> {
    let n = endpoints.len();
    let mut table = vec![u32::MAX; MAGLEV_SIZE];
    if n == 0 {
        return table;
    }
    let m = MAGLEV_SIZE as u64;
    let perms: Vec<(u64, u64)> = endpoints
        .iter()
        .map(|e| {
            let name = e.addr.to_string();
            let offset = hash_bytes(name.as_bytes()) % m;
            let skip = hash_bytes(format!("{name}#skip").as_bytes()) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_w = endpoints.iter().map(|e| e.weight).max().unwrap_or(1) as u64;
    let mut next = vec![0u64; n];
    let mut filled = 0;
    let mut round = 0u64;
    while filled < MAGLEV_SIZE {
        round += 1;
        for i in 0..n {
            // Weighted Maglev: an endpoint takes a turn in proportion to its weight.
            if (endpoints[i].weight as u64 * round) / max_w
                == (endpoints[i].weight as u64 * (round - 1)) / max_w
            {
                continue;
            }
            let (offset, skip) = perms[i];
            loop {
                let slot = ((offset + next[i] * skip) % m) as usize;
                next[i] += 1;
                if table[slot] == u32::MAX {
                    table[slot] = i as u32;
                    filled += 1;
                    break;
                }
            }
            if filled == MAGLEV_SIZE {
                break;
            }
        }
    }
    table
}

/// FNV-1a followed by a 64-bit finalizer: stable across processes and builds,
/// so every sidecar hashes a key to the same endpoint.
pub fn hash_bytes(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for x in b {
        h ^= *x as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ceb9fe1a85ec53);
    h ^ (h >> 33)
}

/// Picks endpoints of one cluster and ejects outliers.
pub struct Balancer {
    policy: LbPolicy,
    set: ArcSwap<EndpointSet>,
    next: AtomicUsize,
    outlier: Option<OutlierDetection>,
    ejected_total: Counter,
}

impl Balancer {
    pub fn new(
        policy: LbPolicy,
        endpoints: Vec<(SocketAddr, u32)>,
        outlier: Option<OutlierDetection>,
        ejected_total: Counter,
    ) -> Self {
        let eps = endpoints
            .into_iter()
            .map(|(a, w)| Arc::new(Endpoint::new(a, w)))
            .collect();
        Self {
            policy,
            set: ArcSwap::from_pointee(EndpointSet::new(policy, eps)),
            next: AtomicUsize::new(0),
            outlier,
            ejected_total,
        }
    }

    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.set.load_full()
    }

    /// Replaces the endpoints (DNS refresh), keeping the state of those that stay.
    pub fn update(&self, addrs: Vec<(SocketAddr, u32)>) {
        let old = self.set.load();
        let eps: Vec<_> = addrs
            .into_iter()
            .map(|(a, w)| {
                old.endpoints
                    .iter()
                    .find(|e| e.addr == a && e.weight == w.max(1))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Endpoint::new(a, w)))
            })
            .collect();
        let same = eps.len() == old.endpoints.len()
            && eps
                .iter()
                .zip(old.endpoints.iter())
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if !same {
            self.set.store(Arc::new(EndpointSet::new(self.policy, eps)));
        }
    }

    /// Chooses an endpoint; `hash` is the consistent-hash key for ring hash
    /// and Maglev (a random endpoint when absent). When every endpoint is
    /// ejected, ejection is ignored (panic mode) rather than failing all.
    pub fn pick(&self, hash: Option<u64>) -> Option<Arc<Endpoint>> {
        let set = self.set.load();
        let eps = &set.endpoints;
        if eps.is_empty() {
            return None;
        }
        let now = now_ms();
        let any_ejected = eps.iter().any(|e| e.is_ejected(now));
        let healthy = |i: usize| !any_ejected || !eps[i].is_ejected(now);
        let mut rng = rand::rng();
        let idx = match (&set.table, self.policy) {
            (Table::Schedule(s), _) => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..s.len())
                    .map(|k| s[(start + k) % s.len()] as usize)
                    .find(|i| healthy(*i))
                    .unwrap_or(s[start % s.len()] as usize)
            }
            (Table::Ring(ring), _) if hash.is_some() => {
                let h = hash.unwrap_or_default();
                let start = ring.partition_point(|(x, _)| *x < h);
                (0..ring.len())
                    .map(|k| ring[(start + k) % ring.len()].1 as usize)
                    .find(|i| healthy(*i))
                    .unwrap_or(ring[start % ring.len()].1 as usize)
            }
            (Table::Maglev(t), _) if hash.is_some() => {
                let h = hash.unwrap_or_default() as usize;
                (0..t.len())
                    .map(|k| t[(h + k) % t.len()] as usize)
                    .find(|i| healthy(*i))
                    .unwrap_or(t[h % t.len()] as usize)
            }
            (_, LbPolicy::LeastRequest) if eps.len() > 1 => {
                let cands: Vec<usize> = (0..eps.len()).filter(|i| healthy(*i)).collect();
                let cands = if cands.is_empty() {
                    (0..eps.len()).collect()
                } else {
                    cands
                };
                let a = cands[rng.random_range(0..cands.len())];
                let b = cands[rng.random_range(0..cands.len())];
                let load = |i: usize| {
                    (eps[i].active.load(Ordering::Relaxed) + 1)
                        * if set.uniform {
                            1
                        } else {
                            1_000_000 / eps[i].weight as u64
                        }
                };
                if load(b) < load(a) { b } else { a }
            }
            _ => {
                // Weighted random among healthy endpoints.
                let total: u64 = (0..eps.len())
                    .filter(|i| healthy(*i))
                    .map(|i| eps[i].weight as u64)
                    .sum();
                if total == 0 {
                    rng.random_range(0..eps.len())
                } else {
                    let mut r = rng.random_range(0..total);
                    (0..eps.len())
                        .filter(|i| healthy(*i))
                        .find(|i| {
                            let w = eps[*i].weight as u64;
                            if r < w {
                                true
                            } else {
                                r -= w;
                                false
                            }
                        })
                        .unwrap_or(0)
                }
            }
        };
        Some(eps[idx].clone())
    }

    /// Records an outcome for outlier detection; returns true when it
    /// ejected the endpoint.
    pub fn record(&self, ep: &Endpoint, outcome: Outcome) -> bool {
        let Some(od) = &self.outlier else {
            return false;
        };
        let (counter, threshold) = match outcome {
            Outcome::Success => {
                ep.consecutive_5xx.store(0, Ordering::Relaxed);
                ep.consecutive_connect_failures.store(0, Ordering::Relaxed);
                return false;
            }
            Outcome::ServerError => (&ep.consecutive_5xx, od.consecutive_5xx),
            Outcome::ConnectFailure => (
                &ep.consecutive_connect_failures,
                od.consecutive_connect_failures,
            ),
        };
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if threshold == 0 || n < threshold {
            return false;
        }
        let now = now_ms();
        if ep.is_ejected(now) {
            return false;
        }
        let set = self.set.load();
        let ejected = set.endpoints.iter().filter(|e| e.is_ejected(now)).count();
        let max = set.endpoints.len() * od.max_ejection_percent as usize / 100;
        if ejected >= max {
            return false;
        }
        // Each further ejection lasts longer: base × count, at most 300 s (or base).
        let k = ep.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let base = od.base_ejection_time.as_std();
        let dur = (base * k).min(base.max(Duration::from_secs(300)));
        ep.ejected_until_ms
            .store(now + dur.as_millis() as u64, Ordering::Relaxed);
        ep.consecutive_5xx.store(0, Ordering::Relaxed);
        ep.consecutive_connect_failures.store(0, Ordering::Relaxed);
        self.ejected_total.inc();
        tracing::warn!(endpoint = %ep.addr, ms = dur.as_millis() as u64, "outlier ejected");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<(SocketAddr, u32)> {
        (0..n)
            .map(|i| (SocketAddr::from(([10, 0, 0, 1], 8000 + i)), 1))
            .collect()
    }

    fn od(max: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 3,
            consecutive_connect_failures: 2,
            base_ejection_time: remora_api::Duration::from_secs(30),
            max_ejection_percent: max,
        }
    }

    #[test]
    fn round_robin_follows_weights() {
        let mut a = addrs(2);
        a[0].1 = 3;
        let b = Balancer::new(LbPolicy::RoundRobin, a, None, Counter::default());
        let picks: Vec<u16> = (0..8).map(|_| b.pick(None).unwrap().addr.port()).collect();
        assert_eq!(picks.iter().filter(|p| **p == 8000).count(), 6);
    }

    #[test]
    fn ring_hash_and_maglev_are_consistent_and_spread() {
        for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
            let b = Balancer::new(policy, addrs(4), None, Counter::default());
            let mut seen = std::collections::HashSet::new();
            for k in 0..200u32 {
                let h = hash_bytes(&k.to_be_bytes());
                let first = b.pick(Some(h)).unwrap().addr;
                assert_eq!(first, b.pick(Some(h)).unwrap().addr);
                seen.insert(first);
            }
            assert_eq!(seen.len(), 4, "{policy:?} uses every endpoint");
        }
    }

    #[test]
    fn maglev_moves_few_keys_when_an_endpoint_goes() {
        let b = Balancer::new(LbPolicy::Maglev, addrs(5), None, Counter::default());
        let before: Vec<_> = (0..1000u32)
            .map(|k| b.pick(Some(hash_bytes(&k.to_be_bytes()))).unwrap().addr)
            .collect();
        b.update(addrs(4));
        let moved = (0..1000u32)
            .filter(|k| {
                let a = before[*k as usize];
                a.port() != 8004 && b.pick(Some(hash_bytes(&k.to_be_bytes()))).unwrap().addr != a
            })
            .count();
        assert!(
            moved < 150,
            "{moved} of the keys on surviving endpoints moved"
        );
    }

    #[test]
    fn least_request_prefers_idle_endpoint() {
        let b = Balancer::new(LbPolicy::LeastRequest, addrs(2), None, Counter::default());
        b.endpoints().endpoints[0]
            .active
            .store(100, Ordering::Relaxed);
        let busy = (0..1000)
            .filter(|_| b.pick(None).unwrap().addr.port() == 8000)
            .count();
        // P2C picks the busy one only when both draws land on it (~25%).
        assert!(busy < 350, "{busy}");
    }

    #[test]
    fn ejection_respects_max_percent_and_skips_ejected() {
        let ejected = Counter::default();
        let b = Balancer::new(
            LbPolicy::RoundRobin,
            addrs(4),
            Some(od(50)),
            ejected.clone(),
        );
        let eps = b.endpoints();
        for e in &eps.endpoints {
            for _ in 0..3 {
                b.record(e, Outcome::ServerError);
            }
        }
        assert_eq!(ejected.get(), 2, "at most 50% of 4 endpoints");
        let now = now_ms();
        for _ in 0..20 {
            assert!(!b.pick(None).unwrap().is_ejected(now));
        }
    }

    #[test]
    fn success_resets_consecutive_count() {
        let b = Balancer::new(
            LbPolicy::Random,
            addrs(2),
            Some(od(100)),
            Counter::default(),
        );
        let e = b.endpoints().endpoints[0].clone();
        b.record(&e, Outcome::ConnectFailure);
        b.record(&e, Outcome::Success);
        assert!(!b.record(&e, Outcome::ConnectFailure));
        assert!(b.record(&e, Outcome::ConnectFailure));
        assert!(e.is_ejected(now_ms()));
    }
}
