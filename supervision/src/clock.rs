//! Time as an injected dependency.
//!
//! Cores never read the OS clock; drivers read a [`Clock`] and pass `now_ms`
//! in. Production uses [`SystemClock`]; tests and the simulator use
//! [`ManualClock`], which only moves when told to, so a run replays exactly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A source of time.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic milliseconds since an arbitrary origin; never goes backwards.
    /// Used for restart windows, timeouts and leases.
    fn now_ms(&self) -> u64;
    /// Wall-clock milliseconds since the Unix epoch, for canon timestamps.
    /// May jump; never use it to measure durations.
    fn unix_ms(&self) -> u64;
    /// Both readings at once: `(now_ms, unix_ms)`. Hot loops read the clock once per batch of
    /// work through this; a clock may answer it with a single OS read.
    fn read(&self) -> (u64, u64) {
        (self.now_ms(), self.unix_ms())
    }
}

/// The OS clock.
///
/// This is the one production place allowed to read `Instant::now` and
/// `SystemTime::now`: everything else receives time through [`Clock`], so the
/// simulator can substitute [`ManualClock`] and keep runs deterministic.
#[derive(Debug, Clone)]
pub struct SystemClock {
    origin: Instant,
    origin_unix_ms: u64,
}

impl SystemClock {
    /// A clock whose monotonic origin is now.
    pub fn new() -> Self {
        Self { origin: Instant::now(), origin_unix_ms: wall_clock_ms() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // u64 milliseconds last 584 million years; saturate rather than wrap.
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn unix_ms(&self) -> u64 {
        wall_clock_ms()
    }

    /// One OS read: wall time is the start's wall time plus monotonic time since, so canon
    /// timestamps taken this way never go backwards even if the host clock is stepped.
    fn read(&self) -> (u64, u64) {
        let now_ms = self.now_ms();
        (now_ms, self.origin_unix_ms.saturating_add(now_ms))
    }
}

fn wall_clock_ms() -> u64 {
    // A wall clock before 1970 is a misconfigured host: report the epoch.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A clock that moves only when told to. Clone it (or wrap it in an `Arc`)
/// to share one time between a test and the code under test.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Debug, Default)]
struct ManualInner {
    now_ms: AtomicU64,
    unix_ms: AtomicU64,
}

impl ManualClock {
    /// A clock at monotonic 0 and Unix time `unix_ms`.
    pub fn new(unix_ms: u64) -> Self {
        let clock = Self::default();
        clock.inner.unix_ms.store(unix_ms, Ordering::SeqCst);
        clock
    }

    /// Moves both the monotonic and the wall clock forward by `ms`.
    pub fn advance(&self, ms: u64) {
        // Saturating, so a huge advance cannot wrap time backwards.
        let bump = |now: u64| Some(now.saturating_add(ms));
        let _ = self
            .inner
            .now_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, bump);
        let _ = self
            .inner
            .unix_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, bump);
    }

    /// Sets the wall clock only (it may jump, as a real one does).
    pub fn set_unix_ms(&self, unix_ms: u64) {
        self.inner.unix_ms.store(unix_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.inner.now_ms.load(Ordering::SeqCst)
    }

    fn unix_ms(&self) -> u64 {
        self.inner.unix_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        let shared = clock.clone();
        assert_eq!(clock.now_ms(), 0);
        shared.advance(250);
        assert_eq!(clock.now_ms(), 250);
        assert_eq!(clock.unix_ms(), 1_250);
        shared.set_unix_ms(7);
        assert_eq!(clock.unix_ms(), 7);
        assert_eq!(clock.now_ms(), 250);
        shared.advance(u64::MAX);
        assert_eq!(clock.now_ms(), u64::MAX);
    }

    #[test]
    fn system_clock_is_monotonic() {
        let clock = SystemClock::new();
        let first = clock.now_ms();
        let second = clock.now_ms();
        assert!(second >= first);
        assert!(clock.unix_ms() > 0);
    }
}
