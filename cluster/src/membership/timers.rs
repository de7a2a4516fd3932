//! [`TimerQueue`]: the core's scheduled timers, ordered by due time, for drivers and tests.

use std::collections::BTreeMap;

use crate::membership::core::Timer;

/// Upper bound on pending timers: foca keeps a handful per member plus ours; a queue this long
/// means timers are scheduled and never fired.
pub const TIMERS_PENDING_MAX: usize = 1 << 20;

/// Timers by `(at_ms, arrival)`; due ones come out in the order foca wants.
#[derive(Debug, Default)]
pub struct TimerQueue {
    timers: BTreeMap<(u64, u64), Timer>,
    arrivals: u64,
}

impl TimerQueue {
    /// Adds a timer due at `at_ms`.
    pub fn insert(&mut self, at_ms: u64, timer: Timer) {
        assert!(self.timers.len() < TIMERS_PENDING_MAX, "timer queue overflow: timers are scheduled but never fired");
        self.arrivals += 1;
        self.timers.insert((at_ms, self.arrivals), timer);
    }

    /// When the earliest timer is due.
    pub fn next_at_ms(&self) -> Option<u64> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    /// Pending timers.
    pub fn len(&self) -> usize {
        self.timers.len()
    }

    /// Whether none are pending.
    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }

    /// Removes and returns the timers due at `now_ms`, earliest first; timers due at the same
    /// millisecond in foca's order (indirect probes before the next probe).
    pub fn pop_due(&mut self, now_ms: u64) -> Vec<(u64, Timer)> {
        let later = self.timers.split_off(&(now_ms + 1, 0));
        let due = std::mem::replace(&mut self.timers, later);
        let mut due: Vec<(u64, Timer)> = due.into_iter().map(|((at, _), timer)| (at, timer)).collect();
        // Stable: same-millisecond timers of equal rank keep their arrival order.
        due.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        due
    }
}
