//! Local token-bucket rate limits on the inbound listener.

use std::{collections::HashMap, sync::Mutex, time::Instant};

use http::{HeaderName, HeaderValue, Request, StatusCode};
use remora_api::config::RateLimit;

use crate::{
    Error,
    matching::{RequestMatcher, header_name, header_value},
    metrics::{Counter, Registry},
};

/// Distinct `perHeader` values tracked before the table is reset (bounds memory
/// when a client sends a fresh value per request).
const MAX_KEYS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct RateLimiter {
    pub config: RateLimit,
    matcher: RequestMatcher,
    /// Tokens per second, and capacity.
    rate: f64,
    burst: f64,
    limit_header: HeaderValue,
    per_header: Option<HeaderName>,
    // A std mutex held for a few arithmetic operations, never across `.await`.
    buckets: Mutex<HashMap<Option<HeaderValue>, Bucket>>,
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: bytes::Bytes,
    allowed: Counter,
    limited: Counter,
    dry_run_limited: Counter,
}

pub enum Decision {
    /// Not counted by this limit.
    Skip,
    Allowed {
        remaining: u64,
    },
    Limited,
}

impl RateLimiter {
    pub fn compile(rl: &RateLimit, reg: &Registry) -> Result<Option<Self>, Error> {
        // Only the token bucket is enforced here; adaptive-only limits are skipped.
        let Some(b) = &rl.bucket else { return Ok(None) };
        let l = |result: &str| vec![("limit", rl.name.clone()), ("result", result.to_string())];
        let help = "Requests checked by a local rate limit";
        Ok(Some(Self {
            config: rl.clone(),
            matcher: RequestMatcher::compile(&rl.matches)?,
            rate: f64::from(b.requests) / b.per.as_std().as_secs_f64(),
            burst: f64::from(b.burst),
            limit_header: HeaderValue::from(b.requests),
            per_header: b.per_header.as_deref().map(header_name).transpose()?,
            buckets: Mutex::new(HashMap::new()),
            status: StatusCode::from_u16(rl.response.status)
                .map_err(|e| Error::Config(format!("rate limit {}: {e}", rl.name)))?,
            headers: rl
                .response
                .headers
                .iter()
                .map(|(k, v)| Ok((header_name(k)?, header_value(v)?)))
                .collect::<Result<_, Error>>()?,
            body: bytes::Bytes::from(rl.response.body.clone()),
            allowed: reg.counter("ratelimit_requests_total", help, l("allowed")),
            limited: reg.counter("ratelimit_requests_total", help, l("limited")),
            dry_run_limited: reg.counter("ratelimit_requests_total", help, l("dry_run_limited")),
        }))
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn limit_header(&self) -> &HeaderValue {
        &self.limit_header
    }

    pub fn check<B>(&self, req: &Request<B>) -> Decision {
        if !self.matcher.matches(req) {
            return Decision::Skip;
        }
        // Requests without the header share one bucket.
        let key = self
            .per_header
            .as_ref()
            .and_then(|h| req.headers().get(h).cloned());
        let now = Instant::now();
        let granted = {
            let mut buckets = self.buckets.lock().expect("rate limit lock");
            if buckets.len() >= MAX_KEYS && !buckets.contains_key(&key) {
                buckets.clear();
            }
            let b = buckets.entry(key).or_insert(Bucket {
                tokens: self.burst,
                last: now,
            });
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
            b.last = now;
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                Some(b.tokens as u64)
            } else {
                None
            }
        };
        match granted {
            Some(remaining) => {
                self.allowed.inc();
                Decision::Allowed { remaining }
            }
            None if self.config.dry_run => {
                self.dry_run_limited.inc();
                Decision::Allowed { remaining: 0 }
            }
            None => {
                self.limited.inc();
                Decision::Limited
            }
        }
    }
}

/// Reads downward-API labels (`key="value"` per line). A missing file means
/// no labels.
pub fn read_pod_labels(path: &std::path::Path) -> std::io::Result<remora_api::config::Labels> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(e),
    };
    Ok(parse_pod_labels(&text))
}

pub fn parse_pod_labels(text: &str) -> remora_api::config::Labels {
    text.lines()
        .filter_map(|line| {
            let (k, v) = line.trim().split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.replace("\\\"", "\"")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use remora_api::config::{LimitResponse, TokenBucket};

    fn limit(per_header: Option<&str>) -> RateLimit {
        RateLimit {
            name: "ns/p/l".into(),
            pod_selector: Default::default(),
            matches: Default::default(),
            bucket: Some(TokenBucket {
                requests: 1,
                per: remora_api::Duration::from_secs(3600),
                burst: 3,
                per_header: per_header.map(Into::into),
            }),
            test_traffic: None,
            adaptive: None,
            response: LimitResponse::default(),
            dry_run: false,
        }
    }

    fn req(user: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri("/");
        if let Some(u) = user {
            b = b.header("x-user", u);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn burst_then_limited() {
        let rl = RateLimiter::compile(&limit(None), &Registry::default())
            .unwrap()
            .unwrap();
        let mut remaining = vec![];
        for _ in 0..3 {
            match rl.check(&req(None)) {
                Decision::Allowed { remaining: r } => remaining.push(r),
                _ => panic!("burst allows 3"),
            }
        }
        assert_eq!(remaining, vec![2, 1, 0]);
        assert!(matches!(rl.check(&req(None)), Decision::Limited));
    }

    #[test]
    fn per_header_buckets_are_separate() {
        let rl = RateLimiter::compile(&limit(Some("x-user")), &Registry::default())
            .unwrap()
            .unwrap();
        for _ in 0..3 {
            assert!(matches!(
                rl.check(&req(Some("a"))),
                Decision::Allowed { .. }
            ));
        }
        assert!(matches!(rl.check(&req(Some("a"))), Decision::Limited));
        assert!(matches!(
            rl.check(&req(Some("b"))),
            Decision::Allowed { .. }
        ));
    }

    #[test]
    fn parses_downward_api_labels() {
        let l = parse_pod_labels("app=\"reviews\"\nversion=\"v2\"\n\npod-template-hash=\"abc\"\n");
        assert_eq!(l["app"], "reviews");
        assert_eq!(l["version"], "v2");
        assert_eq!(l.len(), 3);
    }
}
