use std::time::{Duration, Instant};

/// Wall-clock time derived from the monotonic `now` the caller passes in, so that the engine
/// never reads a clock itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WallClock {
    start: Instant,
    start_unix_ms: u64,
}

impl WallClock {
    pub(crate) fn new(start: Instant, start_unix_ms: u64) -> Self {
        WallClock { start, start_unix_ms }
    }

    /// Returns the Unix time in milliseconds at `now`.
    pub(crate) fn unix_ms(&self, now: Instant) -> u64 {
        let elapsed = u64::try_from(now.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX);
        self.start_unix_ms.saturating_add(elapsed)
    }

    /// Returns whether a peer's timestamp is within `skew` of our clock at `now`.
    pub(crate) fn within(&self, now: Instant, timestamp_ms: u64, skew: Duration) -> bool {
        let ours = self.unix_ms(now);
        let skew_ms = u64::try_from(skew.as_millis()).unwrap_or(u64::MAX);
        ours.abs_diff(timestamp_ms) <= skew_ms
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn follows_monotonic_time() {
        let start = Instant::now();
        let clock = WallClock::new(start, 1_000);
        assert_eq!(clock.unix_ms(start + Duration::from_millis(250)), 1_250);
    }

    #[test]
    fn skew_window_is_symmetric() {
        let start = Instant::now();
        let clock = WallClock::new(start, 100_000);
        let skew = Duration::from_secs(30);
        assert!(clock.within(start, 70_000, skew));
        assert!(clock.within(start, 130_000, skew));
        assert!(!clock.within(start, 69_999, skew));
        assert!(!clock.within(start, 130_001, skew));
    }
}
