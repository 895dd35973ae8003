use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Token buckets per source address: each source may send `rate` packets per second on average
/// and `burst` at once.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    max_sources: usize,
    buckets: HashMap<SocketAddr, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Outcome of [`RateLimiter::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allowed,
    Limited,
    /// The table of sources is full; the packet passes untracked.
    Untracked,
}

impl RateLimiter {
    pub(crate) fn new(rate: u32, burst: u32, max_sources: usize) -> Self {
        RateLimiter { rate: f64::from(rate), burst: f64::from(burst.max(1)), max_sources, buckets: HashMap::new() }
    }

    pub(crate) fn check(&mut self, now: Instant, source: SocketAddr) -> Verdict {
        if self.rate <= 0.0 {
            return Verdict::Allowed;
        }
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.max_sources {
            self.forget_idle(now);
            if self.buckets.len() >= self.max_sources {
                return Verdict::Untracked;
            }
        }
        let bucket = self.buckets.entry(source).or_insert(Bucket { tokens: self.burst, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Verdict::Allowed
        } else {
            Verdict::Limited
        }
    }

    /// Drops buckets that have refilled completely: they would allow a full burst anyway.
    fn forget_idle(&mut self, now: Instant) {
        let refill = Duration::from_secs_f64(self.burst / self.rate);
        self.buckets.retain(|_, bucket| now.saturating_duration_since(bucket.updated) < refill);
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_limited_then_refilled() {
        let now = Instant::now();
        let source: SocketAddr = "10.0.0.1:5".parse().unwrap();
        let mut limiter = RateLimiter::new(10, 3, 100);
        let verdicts: Vec<_> = (0..4).map(|_| limiter.check(now, source)).collect();
        assert_eq!(verdicts, [Verdict::Allowed, Verdict::Allowed, Verdict::Allowed, Verdict::Limited]);
        assert_eq!(limiter.check(now + Duration::from_millis(100), source), Verdict::Allowed);
    }

    #[test]
    fn sources_are_independent() {
        let now = Instant::now();
        let mut limiter = RateLimiter::new(1, 1, 100);
        assert_eq!(limiter.check(now, "10.0.0.1:5".parse().unwrap()), Verdict::Allowed);
        assert_eq!(limiter.check(now, "10.0.0.1:6".parse().unwrap()), Verdict::Allowed);
    }

    #[test]
    fn full_table_passes_untracked() {
        let now = Instant::now();
        let mut limiter = RateLimiter::new(1, 1, 2);
        limiter.check(now, "10.0.0.1:1".parse().unwrap());
        limiter.check(now, "10.0.0.1:2".parse().unwrap());
        assert_eq!(limiter.check(now, "10.0.0.1:3".parse().unwrap()), Verdict::Untracked);
        // Once the old buckets have refilled they are forgotten and new sources are tracked.
        assert_eq!(limiter.check(now + Duration::from_secs(5), "10.0.0.1:3".parse().unwrap()), Verdict::Allowed);
    }

    #[test]
    fn zero_rate_disables() {
        let now = Instant::now();
        let mut limiter = RateLimiter::new(0, 0, 1);
        for _ in 0..10 {
            assert_eq!(limiter.check(now, "10.0.0.1:1".parse().unwrap()), Verdict::Allowed);
        }
    }
}
