//! What a simulated node sees of the world: its clock and its disk, both steered by the fault
//! plan, both surviving the node's crashes (they are the machine, not the process).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vcos_actors::store::{CanonStore, CanonWrite, Completion, OrderedKv, StoreError};
use vcos_supervision::Clock;

/// Fsync latency of a healthy simulated disk.
pub const FSYNC_MS_DEFAULT: u64 = 2;
/// Wall clock at simulated time zero (2026-01-01T00:00:00Z).
pub const EPOCH_UNIX_MS: u64 = 1_767_225_600_000;

/// Fault knobs of one node, set by the world as the plan unfolds.
#[derive(Debug, Default)]
pub struct NodeFaults {
    /// Added to the node's wall clock.
    pub clock_offset_ms: i64,
    /// Fsyncs fail until this simulated time.
    pub disk_fail_until_ms: u64,
    /// Fsyncs take `.0` ms until `.1`.
    pub disk_slow: (u64, u64),
    /// Planted bug: the store acknowledges commits before they are fsynced.
    pub ack_before_fsync: bool,
    /// Paused (SIGSTOP) since this simulated time: the node's clock stands still there.
    pub paused_at_ms: Option<u64>,
}

/// Simulated time, ms.
pub fn sim_now_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The node's clock: monotonic = simulated time; wall = epoch + simulated time + jumps.
pub struct SimClock {
    faults: Arc<Mutex<NodeFaults>>,
}

impl SimClock {
    /// A clock steered by `faults`.
    pub fn new(faults: Arc<Mutex<NodeFaults>>) -> Self {
        Self { faults }
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        lock(&self.faults).paused_at_ms.unwrap_or_else(sim_now_ms)
    }

    fn unix_ms(&self) -> u64 {
        let faults = lock(&self.faults);
        let now = faults.paused_at_ms.unwrap_or_else(sim_now_ms);
        EPOCH_UNIX_MS.saturating_add(now).saturating_add_signed(faults.clock_offset_ms)
    }
}

struct Pending {
    writes: Vec<CanonWrite>,
    done: Option<Completion>,
}

#[derive(Default)]
struct DiskState {
    synced: OrderedKv,
    pending: VecDeque<Pending>,
    fsyncs: u64,
    failed_fsyncs: u64,
    lost_on_crash: u64,
}

/// A node's disk: what was fsynced survives crashes; what was not is lost (a torn tail is
/// discarded on recovery, as an atomic store does).
#[derive(Default)]
pub struct SimDisk {
    state: Mutex<DiskState>,
}

/// Counters of a disk, for traces and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskStats {
    /// Successful fsyncs.
    pub fsyncs: u64,
    /// Injected fsync failures.
    pub failed_fsyncs: u64,
    /// Commits lost because the node crashed before they were fsynced.
    pub lost_on_crash: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimDisk {
    /// The machine lost power: unsynced commits are gone. Their completions are dropped
    /// without being called, as a dead process never answers.
    pub fn crash(&self) {
        let mut state = lock(&self.state);
        state.lost_on_crash += state.pending.len() as u64;
        state.pending.clear();
    }

    /// Counters.
    pub fn stats(&self) -> DiskStats {
        let s = lock(&self.state);
        DiskStats { fsyncs: s.fsyncs, failed_fsyncs: s.failed_fsyncs, lost_on_crash: s.lost_on_crash }
    }
}

/// The `CanonStore` of a simulated node: the production seam over a [`SimDisk`].
pub struct SimStore {
    disk: Arc<SimDisk>,
    faults: Arc<Mutex<NodeFaults>>,
}

impl SimStore {
    /// A store on `disk`; spawns its flusher on the current (simulated host's) runtime.
    pub fn start(disk: Arc<SimDisk>, faults: Arc<Mutex<NodeFaults>>) -> Arc<Self> {
        let store = Arc::new(Self { disk, faults });
        let flusher = Arc::downgrade(&store);
        tokio::spawn(async move {
            loop {
                let Some(store) = flusher.upgrade() else { return };
                let fsync_ms = store.fsync_ms();
                drop(store);
                tokio::time::sleep(Duration::from_millis(fsync_ms)).await;
                match flusher.upgrade() {
                    Some(store) => store.flush(),
                    None => return,
                }
            }
        });
        store
    }

    fn fsync_ms(&self) -> u64 {
        let (slow_ms, until) = lock(&self.faults).disk_slow;
        if sim_now_ms() < until { slow_ms.max(FSYNC_MS_DEFAULT) } else { FSYNC_MS_DEFAULT }
    }

    /// One fsync: everything pending becomes durable (or fails), completions are called after
    /// the disk lock is released.
    fn flush(&self) {
        let failing = sim_now_ms() < lock(&self.faults).disk_fail_until_ms;
        let mut callbacks: Vec<(Completion, Result<u64, StoreError>)> = Vec::new();
        {
            let mut state = lock(&self.disk.state);
            if state.pending.is_empty() {
                return;
            }
            let pending: Vec<Pending> = state.pending.drain(..).collect();
            if failing {
                state.failed_fsyncs += 1;
                for p in pending {
                    if let Some(done) = p.done {
                        callbacks.push((done, Err(StoreError::Io("injected fsync failure".into()))));
                    }
                }
            } else {
                state.fsyncs += 1;
                for p in pending {
                    // A failed guard skips its own commit only (as the durable stores do).
                    let outcome = state.synced.apply(p.writes);
                    if let Some(done) = p.done {
                        callbacks.push((done, outcome));
                    }
                }
            }
        }
        for (done, result) in callbacks {
            done(result);
        }
    }
}

impl CanonStore for SimStore {
    fn commit(&self, writes: Vec<CanonWrite>, done: Completion) {
        if writes.is_empty() {
            // A barrier: flush now (the caller may be blocking its thread on it).
            self.flush();
            let index = lock(&self.disk.state).synced.index();
            done(Ok(index));
            return;
        }
        if lock(&self.faults).ack_before_fsync {
            // Planted bug: acknowledge first, make durable later (or never, on a crash).
            let index = lock(&self.disk.state).synced.index();
            lock(&self.disk.state).pending.push_back(Pending { writes, done: None });
            done(Ok(index));
            return;
        }
        lock(&self.disk.state).pending.push_back(Pending { writes, done: Some(done) });
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(lock(&self.disk.state).synced.get(key))
    }

    fn scan_prefix(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(lock(&self.disk.state).synced.scan_prefix(prefix, after, limit))
    }
}
