//! The weighted split of a route across clusters (a canary's 95/5), exact
//! over any number of requests.
//!
//! Envoy picks each request's cluster at random, so a 5 % canary over 2,000
//! requests lands anywhere between 4 % and 6 % (±2σ). A route here keeps a
//! counter and walks a fixed schedule of one period (the weights' sum,
//! 100): the schedule is smooth weighted round robin (nginx's), which
//! spreads each cluster's turns evenly through the period. Over every run
//! of N consecutive requests a cluster's count is within ±1 of N·w/W (the
//! tests check every prefix of 10,000), and a 95/5 split sends one request
//! to v2 about every 20, never 5 in a row.

use std::sync::atomic::{AtomicU64, Ordering};

/// The smooth weighted round-robin order of one period: `weights.iter().sum()`
/// entries, each the index of a weight, with index `i` appearing `weights[i]`
/// times, spread as evenly as the weights allow. Weights are first divided by
/// their greatest common divisor, so 50/50 is the period `[0, 1]`.
pub fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().fold(0, |g, w| gcd(g, *w));
    if g == 0 {
        return Vec::new();
    }
    let w: Vec<i64> = weights.iter().map(|w| i64::from(w / g)).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&w) {
            *c += w;
        }
        // The largest current value wins; ties go to the first, which keeps
        // the schedule a pure function of the weights.
        let (best, _) = current
            .iter()
            .enumerate()
            .fold(
                (0, i64::MIN),
                |(bi, bv), (i, v)| {
                    if *v > bv { (i, *v) } else { (bi, bv) }
                },
            );
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Targets with weights, picked in the smooth schedule's order by a shared
/// counter: lock-free, and exact per instance (per route, per sidecar).
#[derive(Debug)]
pub struct WeightedSplit<T> {
    /// `(target, cumulative weight)`, for callers that roll their own number.
    targets: Vec<(T, u32)>,
    schedule: Vec<u32>,
    next: AtomicU64,
}

impl<T> WeightedSplit<T> {
    /// `targets` with their weights (not cumulative); at least one target.
    pub fn new(targets: Vec<(T, u32)>) -> Self {
        let weights: Vec<u32> = targets.iter().map(|(_, w)| *w).collect();
        let mut upto = 0;
        let targets = targets
            .into_iter()
            .map(|(t, w)| {
                upto += w;
                (t, upto)
            })
            .collect();
        Self {
            targets,
            schedule: smooth_schedule(&weights),
            next: AtomicU64::new(0),
        }
    }

    /// The next target in the schedule.
    pub fn pick(&self) -> Option<&T> {
        if self.schedule.is_empty() {
            return self.targets.first().map(|(t, _)| t);
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let i = self.schedule[(n % self.schedule.len() as u64) as usize];
        self.targets.get(i as usize).map(|(t, _)| t)
    }

    pub fn targets(&self) -> impl Iterator<Item = &T> {
        self.targets.iter().map(|(t, _)| t)
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest distance, over every prefix of `n` picks, between a
    /// target's count and its exact share.
    fn worst_prefix_error(weights: &[u32], n: usize) -> f64 {
        let split = WeightedSplit::new(weights.iter().copied().enumerate().collect());
        let total: u32 = weights.iter().sum();
        let mut counts = vec![0u64; weights.len()];
        let mut worst = 0f64;
        for k in 1..=n {
            let i = *split.pick().expect("a target");
            counts[i] += 1;
            for (c, w) in counts.iter().zip(weights) {
                let exact = k as f64 * f64::from(*w) / f64::from(total);
                worst = worst.max((*c as f64 - exact).abs());
            }
        }
        worst
    }

    #[test]
    fn every_prefix_of_ten_thousand_picks_is_within_two_of_the_weights() {
        for weights in [
            &[95, 5][..],
            &[50, 50],
            &[1, 99],
            &[99, 1],
            &[100],
            &[70, 20, 10],
            &[34, 33, 33],
            &[60, 25, 10, 5],
            &[100, 0],
            &[0, 100],
        ] {
            let worst = worst_prefix_error(weights, 10_000);
            assert!(worst <= 2.0, "{weights:?}: a prefix is off by {worst}");
            // In fact by less than one request.
            assert!(worst < 1.0, "{weights:?}: a prefix is off by {worst}");
        }
    }

    #[test]
    fn any_weights_summing_to_100_stay_within_two_over_every_prefix() {
        // Every two-way split, and three-way splits on a grid.
        for a in 0..=100 {
            let worst = worst_prefix_error(&[a, 100 - a], 1_000);
            assert!(worst < 1.0, "{a}/{}: off by {worst}", 100 - a);
        }
        for a in (0..=100).step_by(7) {
            for b in (0..=100 - a).step_by(11) {
                let w = [a, b, 100 - a - b];
                let worst = worst_prefix_error(&w, 1_000);
                assert!(worst < 2.0, "{w:?}: off by {worst}");
            }
        }
    }

    #[test]
    fn a_period_is_exact_and_the_canary_interleaves() {
        // 95/5 is 19:1, a period of 20 with v2 once.
        let s = smooth_schedule(&[95, 5]);
        assert_eq!(s.len(), 20);
        assert_eq!(s.iter().filter(|i| **i == 1).count(), 1);
        // Over 1,000 picks v2 comes every 20th, never twice in a row and
        // never after more than 19 v1 picks.
        let split = WeightedSplit::new(vec![("v1", 95), ("v2", 5)]);
        let picks: Vec<&str> = (0..1_000)
            .map(|_| *split.pick().expect("a target"))
            .collect();
        let at: Vec<usize> = (0..picks.len()).filter(|k| picks[*k] == "v2").collect();
        assert_eq!(at.len(), 50);
        assert!(at.windows(2).all(|w| w[1] - w[0] == 20), "v2 at {at:?}");
        assert!(at[0] < 20, "the first v2 pick comes at {}", at[0]);
        assert_eq!(
            smooth_schedule(&[70, 20, 10]),
            vec![0, 0, 1, 0, 0, 2, 0, 0, 1, 0]
        );
        assert_eq!(smooth_schedule(&[50, 50]), vec![0, 1]);
        assert_eq!(smooth_schedule(&[100]), vec![0]);
        assert!(smooth_schedule(&[0, 0]).is_empty());
    }

    #[test]
    fn pick_with_no_weight_falls_back_to_the_first_target() {
        let split = WeightedSplit::new(vec![("a", 0), ("b", 0)]);
        assert_eq!(split.pick(), Some(&"a"));
        let split = WeightedSplit::new(vec![("a", 95), ("b", 5)]);
        assert_eq!(split.len(), 2);
        assert_eq!(split.targets().count(), 2);
    }
}
