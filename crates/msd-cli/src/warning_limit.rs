//! Rate limits for warnings that a peer or a flood can repeat many times a second.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Fixed windows that each admit at most a given number of warnings, counting the ones they
/// reject so that the next warning logged can report them.
#[derive(Debug)]
pub(crate) struct WarningLimit {
    window: Duration,
    per_window: u32,
    state: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl WarningLimit {
    pub(crate) fn new(window: Duration, per_window: u32) -> Self {
        WarningLimit { window, per_window, state: Mutex::new(Window::default()) }
    }

    /// Decides whether a warning at `now` may be logged. Returns `None` when it must be
    /// suppressed, else the number of warnings suppressed since the last one logged, which the
    /// caller reports in the warning.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.start.is_none_or(|start| now.saturating_duration_since(start) >= self.window) {
            state.start = Some(now);
            state.logged = 0;
        }
        if state.logged >= self.per_window {
            state.suppressed = state.suppressed.saturating_add(1);
            return None;
        }
        state.logged += 1;
        Some(std::mem::take(&mut state.suppressed))
    }
}

/// Returns `count` when it is above zero, so that a log field appears only when it carries
/// information.
pub(crate) fn nonzero(count: u64) -> Option<u64> {
    (count > 0).then_some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_admits_its_share() {
        let limit = WarningLimit::new(Duration::from_secs(1), 5);
        let start = Instant::now();
        let admitted: Vec<_> = (0..20).map(|_| limit.admit(start)).collect();
        let logged = admitted.iter().filter(|admission| admission.is_some()).count();
        assert_eq!(logged, 5);
        assert!(admitted.iter().flatten().all(|suppressed| *suppressed == 0));

        let almost = start + Duration::from_millis(999);
        assert_eq!(limit.admit(almost), None);

        // The next window reports the 16 suppressed so far in its first warning, once.
        let next = start + Duration::from_secs(1);
        assert_eq!(limit.admit(next), Some(16));
        assert_eq!(limit.admit(next), Some(0));
    }

    #[test]
    fn one_per_minute() {
        let limit = WarningLimit::new(Duration::from_secs(60), 1);
        let start = Instant::now();
        assert_eq!(limit.admit(start), Some(0));
        assert_eq!(limit.admit(start + Duration::from_secs(59)), None);
        assert_eq!(limit.admit(start + Duration::from_secs(60)), Some(1));
    }
}
