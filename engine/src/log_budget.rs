//! A budget of log lines per interval, for messages that can repeat as fast as something
//! retries: a client sending requests that are refused, a full disk failing every index write
//! or segment preparation, accepts failing while descriptors run out. Within the budget every
//! occurrence is logged; past it they are counted, and the first line of the next interval
//! says how many were not logged. One mechanism for all of them, so the log stays readable and
//! cannot fill the disk it reports on.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines allowed per interval, and the count of those held back.
pub struct LogBudget {
    lines_per_interval: u32,
    interval: Duration,
    state: Mutex<State>,
}

struct State {
    window_start: Option<Instant>,
    used: u32,
    held_back: u64,
}

impl State {
    const IDLE: State = State {
        window_start: None,
        used: 0,
        held_back: 0,
    };
}

impl LogBudget {
    /// At most `lines_per_interval` lines every `interval`.
    pub const fn new(lines_per_interval: u32, interval: Duration) -> LogBudget {
        LogBudget {
            lines_per_interval,
            interval,
            state: Mutex::new(State::IDLE),
        }
    }

    /// Whether a line may be logged at `now`: `Some(n)` with the number of lines held back
    /// since the last one logged (to be said in this one), or `None` to hold this one back.
    pub fn take(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let expired = st
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.interval);
        if expired {
            st.window_start = Some(now);
            st.used = 0;
        }
        if st.used >= self.lines_per_interval {
            st.held_back += 1;
            return None;
        }
        st.used += 1;
        Some(std::mem::take(&mut st.held_back))
    }

    /// Ends a run of occurrences (the failing thing works again): returns whether there was
    /// one since the last reset, so that its end can be logged, and starts afresh.
    pub fn reset(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let active = st.window_start.is_some();
        *st = State::IDLE;
        active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_budget_are_counted_and_reported_by_the_next_one_logged() {
        let budget = LogBudget::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        let first: Vec<_> = (0..5).map(|_| budget.take(t0)).collect();
        assert_eq!(first, vec![Some(0), Some(0), Some(0), None, None]);
        // Still inside the interval: held back.
        assert_eq!(budget.take(t0 + Duration::from_millis(999)), None);
        // The next interval: logged, and it reports the three held back.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(budget.take(t1), Some(3));
        assert_eq!(budget.take(t1), Some(0));
        // The run ends; a new one starts with a full budget.
        assert!(budget.reset());
        assert!(!budget.reset());
        assert_eq!(budget.take(t1), Some(0));
    }
}
