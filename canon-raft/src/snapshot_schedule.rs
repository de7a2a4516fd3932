//! When a group builds a snapshot: once the log since the last one holds at least
//! [`SnapshotEvery::min_entries`] entries *and* a set fraction of the state's record count.
//!
//! Why not openraft's `LogsSinceLast(n)`: a build copies the whole state, so with a fixed `n`
//! the copying per written entry grows with the state. At 10 M passivated IMVUs a 20 k-entry
//! interval asked for a multi-GiB copy every second; builds ran back to back, wrote 43 GB in
//! nine minutes and pinned old pages of the state file (which grew to 20 GiB) until writes
//! failed. Spacing builds in proportion to the state keeps the copying per entry bounded (a
//! build copies its `R` records after at least `R / state_fraction` entries: `state_fraction`
//! records per entry written, whatever the size) and the log since the last build at most a
//! fraction of the state, which is what a follower catching up from the log replays.
//!
//! The check runs inside the state machine's apply (deterministic: it reads the applied index
//! and the tables' lengths, which redb keeps in each table's header), at most once per
//! `min_entries` entries while the state is small and once per threshold as it grows; a
//! build it asks for is started by [`run`], a task per group that calls openraft's trigger.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// How far apart snapshots are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotEvery {
    /// Never fewer entries than this since the last snapshot.
    pub min_entries: u64,
    /// Never fewer entries than the state's record count divided by this.
    pub state_fraction: u64,
}

impl Default for SnapshotEvery {
    fn default() -> Self {
        Self { min_entries: 20_000, state_fraction: 2 }
    }
}

impl SnapshotEvery {
    /// The entries since the last snapshot that make the next one due, for a state of
    /// `records` records.
    pub fn threshold(&self, records: u64) -> u64 {
        self.min_entries.max(records / self.state_fraction.max(1)).max(1)
    }
}

/// The schedule's state, shared by the state machine (which checks) and [`run`] (which
/// triggers).
#[derive(Debug)]
pub(crate) struct Schedule {
    every: std::sync::Mutex<SnapshotEvery>,
    /// The last log index of the current snapshot (0: none).
    snapshot_index: AtomicU64,
    /// The applied index from which the next check runs.
    next_check: AtomicU64,
    /// A build was asked for and has not finished.
    requested: AtomicBool,
    due: Notify,
}

impl Schedule {
    pub(crate) fn new(snapshot_index: u64) -> Self {
        let every = SnapshotEvery::default();
        Self {
            every: std::sync::Mutex::new(every),
            snapshot_index: AtomicU64::new(snapshot_index),
            next_check: AtomicU64::new(snapshot_index.saturating_add(every.min_entries)),
            requested: AtomicBool::new(false),
            due: Notify::new(),
        }
    }

    fn every(&self) -> SnapshotEvery {
        *self.every.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn set_every(&self, every: SnapshotEvery) {
        *self.every.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = every;
        let base = self.snapshot_index.load(Ordering::Acquire);
        self.next_check.store(base.saturating_add(every.min_entries), Ordering::Release);
    }

    /// Whether `applied` is where the state's size must be looked at (cheap: one load).
    pub(crate) fn wants_check(&self, applied: u64) -> bool {
        !self.requested.load(Ordering::Acquire) && applied >= self.next_check.load(Ordering::Acquire)
    }

    /// Called when [`Schedule::wants_check`] said so, with the state's record count: asks
    /// for a build if one is due, or moves the next check to where one would be.
    pub(crate) fn check(&self, applied: u64, records: u64) {
        let base = self.snapshot_index.load(Ordering::Acquire);
        let threshold = self.every().threshold(records);
        if applied.saturating_sub(base) >= threshold {
            if !self.requested.swap(true, Ordering::AcqRel) {
                metrics::counter!("vcos_canon_snapshots_requested_total").increment(1);
                self.due.notify_one();
            }
        } else {
            self.next_check.store(base.saturating_add(threshold), Ordering::Release);
        }
    }

    /// A snapshot up to `index` became current (built here or installed from the leader), or
    /// a build ended without one: the next check counts from the current snapshot.
    pub(crate) fn built(&self, index: Option<u64>) {
        if let Some(index) = index {
            self.snapshot_index.fetch_max(index, Ordering::AcqRel);
        }
        let base = self.snapshot_index.load(Ordering::Acquire);
        self.next_check.store(base.saturating_add(self.every().min_entries), Ordering::Release);
        self.requested.store(false, Ordering::Release);
    }
}

/// Starts openraft's snapshot build each time the schedule finds one due; ends when the group's
/// Raft has stopped. (The group aborts it when it is dropped or shut down.)
pub(crate) async fn run(schedule: Arc<Schedule>, raft: crate::CanonRaft) {
    loop {
        schedule.due.notified().await;
        if let Err(e) = raft.trigger().snapshot().await {
            tracing::debug!(error = %e, "snapshot trigger: raft stopped");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_grows_with_the_state() {
        let every = SnapshotEvery { min_entries: 100, state_fraction: 2 };
        assert_eq!(every.threshold(0), 100);
        assert_eq!(every.threshold(199), 100);
        assert_eq!(every.threshold(1_000), 500);
        assert_eq!(every.threshold(10_000_000), 5_000_000);
        assert_eq!(SnapshotEvery { min_entries: 0, state_fraction: 0 }.threshold(0), 1);
    }

    #[test]
    fn a_build_is_asked_for_once_until_it_ends() {
        let schedule = Schedule::new(0);
        schedule.set_every(SnapshotEvery { min_entries: 10, state_fraction: 2 });
        assert!(!schedule.wants_check(9));
        assert!(schedule.wants_check(10));
        // 100 records: due only after 50 entries; the next check moves there.
        schedule.check(10, 100);
        assert!(!schedule.wants_check(49));
        assert!(schedule.wants_check(50));
        schedule.check(50, 100);
        assert!(schedule.requested.load(Ordering::Acquire));
        assert!(!schedule.wants_check(1_000), "no second request while one is pending");
        schedule.built(Some(50));
        assert!(!schedule.wants_check(59));
        assert!(schedule.wants_check(60));
        // A build that ended without a snapshot frees the schedule without moving its base.
        schedule.check(200, 0);
        schedule.built(None);
        assert!(schedule.wants_check(60));
    }
}
