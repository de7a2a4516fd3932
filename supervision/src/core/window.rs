//! The restart-intensity window: timestamps of recent restarts.
//!
//! OTP semantics: a restart at `now` is kept while `now - t <= period_ms`
//! (the window is closed at both ends, like `supervisor:add_restart/1`), and
//! the supervisor gives up when the window holds more than `max_restarts`
//! entries. The deque therefore never needs more than `max_restarts + 1`
//! entries: older ones are pruned before each push, and a push that makes it
//! `max_restarts + 1` long is the one that escalates.

use std::collections::VecDeque;

use super::Intensity;

/// Bounded record of the restarts inside the current intensity period.
#[derive(Debug, Clone)]
pub(crate) struct RestartWindow {
    intensity: Intensity,
    /// Restart timestamps, oldest first, non-decreasing.
    restarts_ms: VecDeque<u64>,
    /// Latest time seen; the clock is monotonic, so earlier values are clamped to it.
    latest_ms: u64,
}

impl RestartWindow {
    pub(crate) fn new(intensity: Intensity) -> Self {
        Self {
            intensity,
            restarts_ms: VecDeque::new(),
            latest_ms: 0,
        }
    }

    /// The injected clock is monotonic; a clock that goes backwards is clamped
    /// rather than trusted, so the window stays sorted.
    fn clamp(&mut self, now_ms: u64) -> u64 {
        self.latest_ms = self.latest_ms.max(now_ms);
        self.latest_ms
    }

    fn prune(&mut self, now_ms: u64) {
        let period_ms = self.intensity.period_ms;
        while let Some(&oldest_ms) = self.restarts_ms.front() {
            if now_ms - oldest_ms > period_ms {
                self.restarts_ms.pop_front();
            } else {
                break;
            }
        }
    }

    /// Records one restart at `now_ms`. Returns `false` when the restart would
    /// exceed the intensity (more than `max_restarts` within `period_ms`).
    pub(crate) fn record(&mut self, now_ms: u64) -> bool {
        let now_ms = self.clamp(now_ms);
        self.prune(now_ms);
        self.restarts_ms.push_back(now_ms);
        let len = self.restarts_ms.len();
        let max = self.intensity.max_restarts as usize;
        assert!(len <= max + 1, "restart window exceeded its bound");
        len <= max
    }

    /// Restarts recorded within `period_ms` before `now_ms` (inclusive).
    pub(crate) fn count(&self, now_ms: u64) -> u32 {
        let now_ms = self.latest_ms.max(now_ms);
        let period_ms = self.intensity.period_ms;
        let count = self
            .restarts_ms
            .iter()
            .filter(|&&t| now_ms - t <= period_ms)
            .count();
        u32::try_from(count).expect("window length is bounded by max_restarts + 1 <= u32::MAX")
    }
}
