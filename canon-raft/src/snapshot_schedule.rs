//! When a group builds a snapshot: once the records written since the last one number at
//! least [`SnapshotEvery::min_writes`] *and* a set fraction of the state's record count.
//!
//! Why not openraft's `LogsSinceLast(n)`: what a snapshot costs grows with the state. Builds
//! once copied the whole state (at 10 M passivated IMVUs a 20 k-entry interval asked for a
//! multi-GiB copy every second, wrote 43 GB in nine minutes and pinned old pages of the state
//! file until writes failed). Since the state file became the snapshot, a build is one fsynced
//! commit; the cost that still grows with the state is *sending* one, to a follower that fell
//! behind the purged log. Spacing builds in proportion to the state keeps that trade even at
//! any size: the log since the last build stays under `1 / state_fraction` of the state's
//! records, so a follower behind by less catches up from the log, and the log's disk stays a
//! bounded fraction of the state's.
//!
//! Why 8 and not 2, the first fraction: with 2 the log held up to half the state, and at 1 M
//! passivated IMVUs on three voters each node kept 0.94 KB of log per IMVU beside 1.6 KB of
//! state; with 8, 0.37 KB (`vcos bench passivated --imvus 1000000`). Disk, not memory, is what
//! bounds a node's passivated IMVUs, and a snapshot install is rare beside the log's growth.
//!
//! Counted in records written (puts, removals, lease and dedup records), not in log entries:
//! one group commit of the actor layer is one entry carrying thousands of records, so a count
//! of entries would let the log grow far past the state before a snapshot came due.
//!
//! The count restarts at 0 when a snapshot becomes current and when the process starts (the
//! writes applied while a build ran, and those before a restart, are not counted: the next
//! snapshot comes at most one threshold later). The check runs inside the state machine's
//! apply (deterministic: it reads what was applied and the tables' lengths, which redb keeps
//! in each table's header), once per threshold; a build it asks for is started by [`run`], a
//! task per group that calls openraft's trigger.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// How far apart snapshots are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotEvery {
    /// Never fewer records written than this since the last snapshot.
    pub min_writes: u64,
    /// Never fewer records written than the state's record count divided by this.
    pub state_fraction: u64,
}

impl Default for SnapshotEvery {
    fn default() -> Self {
        Self { min_writes: 20_000, state_fraction: 8 }
    }
}

impl SnapshotEvery {
    /// The records written since the last snapshot that make the next one due, for a state of
    /// `records` records.
    pub fn threshold(&self, records: u64) -> u64 {
        self.min_writes.max(records / self.state_fraction.max(1)).max(1)
    }
}

/// The schedule's state, shared by the state machine (which counts and checks) and [`run`]
/// (which triggers).
#[derive(Debug)]
pub(crate) struct Schedule {
    every: std::sync::Mutex<SnapshotEvery>,
    /// Records written since the current snapshot (or since this process started).
    written: AtomicU64,
    /// The count of `written` from which the next check runs.
    next_check: AtomicU64,
    /// A build was asked for and has not finished.
    requested: AtomicBool,
    due: Notify,
}

impl Default for Schedule {
    fn default() -> Self {
        let every = SnapshotEvery::default();
        Self {
            every: std::sync::Mutex::new(every),
            written: AtomicU64::new(0),
            next_check: AtomicU64::new(every.min_writes),
            requested: AtomicBool::new(false),
            due: Notify::new(),
        }
    }
}

impl Schedule {
    fn every(&self) -> SnapshotEvery {
        *self.every.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn set_every(&self, every: SnapshotEvery) {
        *self.every.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = every;
        self.next_check.store(every.min_writes, Ordering::Release);
    }

    /// Counts `writes` more records written; returns whether the state's size must now be
    /// looked at (cheap: two atomic operations).
    pub(crate) fn note(&self, writes: u64) -> bool {
        let written = self.written.fetch_add(writes, Ordering::AcqRel) + writes;
        !self.requested.load(Ordering::Acquire) && written >= self.next_check.load(Ordering::Acquire)
    }

    /// Called when [`Schedule::note`] said so, with the state's record count: asks for a
    /// build if one is due, or moves the next check to where one would be.
    pub(crate) fn check(&self, records: u64) {
        let threshold = self.every().threshold(records);
        if self.written.load(Ordering::Acquire) >= threshold {
            if !self.requested.swap(true, Ordering::AcqRel) {
                metrics::counter!("vcos_canon_snapshots_requested_total").increment(1);
                self.due.notify_one();
            }
        } else {
            self.next_check.store(threshold, Ordering::Release);
        }
    }

    /// A build or an install ended: the count restarts if a new snapshot became current.
    pub(crate) fn built(&self, current: bool) {
        if current {
            self.written.store(0, Ordering::Release);
        }
        self.next_check.store(self.every().min_writes, Ordering::Release);
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
        let every = SnapshotEvery { min_writes: 100, state_fraction: 2 };
        assert_eq!(every.threshold(0), 100);
        assert_eq!(every.threshold(199), 100);
        assert_eq!(every.threshold(1_000), 500);
        assert_eq!(every.threshold(10_000_000), 5_000_000);
        assert_eq!(SnapshotEvery { min_writes: 0, state_fraction: 0 }.threshold(0), 1);
    }

    #[test]
    fn a_build_is_asked_for_once_until_it_ends() {
        let schedule = Schedule::default();
        schedule.set_every(SnapshotEvery { min_writes: 10, state_fraction: 2 });
        assert!(!schedule.note(9));
        assert!(schedule.note(1));
        // 100 records: due only after 50 writes; the next check moves there.
        schedule.check(100);
        assert!(!schedule.requested.load(Ordering::Acquire));
        assert!(!schedule.note(39));
        assert!(schedule.note(1));
        schedule.check(100);
        assert!(schedule.requested.load(Ordering::Acquire));
        assert!(!schedule.note(1_000), "no second request while one is pending");
        // A build that ended without a new snapshot keeps the count.
        schedule.built(false);
        assert!(schedule.note(0));
        schedule.check(100);
        schedule.built(true);
        assert!(!schedule.note(9));
        assert!(schedule.note(1));
    }
}
