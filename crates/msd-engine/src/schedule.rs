use std::time::{Duration, Instant};

/// A repeating timer that starts with a few quick rounds and then settles to a steady interval.
///
/// The first round is due at once. The startup rounds that follow are spaced `spacing`, then
/// twice that, and so on; after them each round comes `interval` after the previous one.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Instant,
    startup_left: u32,
    spacing: Duration,
    interval: Duration,
}

impl Backoff {
    pub(crate) fn new(now: Instant, startup_rounds: u32, spacing: Duration, interval: Duration) -> Self {
        Backoff { next: now, startup_left: startup_rounds.saturating_sub(1), spacing, interval }
    }

    pub(crate) fn due(&self, now: Instant) -> bool {
        self.next <= now
    }

    pub(crate) fn next(&self) -> Instant {
        self.next
    }

    /// Moves to the round after the one that was just sent.
    pub(crate) fn advance(&mut self) {
        if self.startup_left > 0 {
            self.startup_left -= 1;
            self.next += self.spacing;
            self.spacing = self.spacing.saturating_mul(2);
        } else {
            self.next += self.interval.max(Duration::from_millis(1));
        }
    }

    /// Like [`Backoff::advance`], but a steady round comes `steady` after the previous one
    /// instead of the fixed interval, for jittered heartbeats.
    pub(crate) fn advance_with(&mut self, steady: Duration) {
        if self.startup_left > 0 {
            self.advance();
        } else {
            self.next += steady.max(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn startup_gaps_double_then_settle() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut schedule = Backoff::new(start, 3, ms(250), ms(20_000));
        let mut due = Vec::new();
        for _ in 0..5 {
            due.push(schedule.next() - start);
            schedule.advance();
        }
        assert_eq!(due, [ms(0), ms(250), ms(750), ms(20_750), ms(40_750)]);
    }

    #[test]
    fn zero_startup_rounds_still_sends_first_at_once() {
        let start = Instant::now();
        let schedule = Backoff::new(start, 0, Duration::from_millis(250), Duration::from_secs(1));
        assert!(schedule.due(start));
    }
}
