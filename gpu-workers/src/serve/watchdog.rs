//! What the two pools share: the state a worker thread shares with its watchdog (which
//! incarnation of the worker is the current one, and when its current model call began), the
//! watchdog itself, and stopping when the last handle goes.
//!
//! Time is tokio's clock: real under [`Driver::Threads`], simulated under the simulator.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::driver::{Driver, Role};
use super::error::ServeError;

/// Heartbeat of a worker: the watchdog reads it, the worker writes it around each model call.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    beat: Mutex<Beat>,
    /// Set when the pool's last handle went: its loops stop.
    stopped: Arc<AtomicBool>,
    /// How long a model call may run before the watchdog gives it up.
    hang_after: Duration,
}

/// Which worker owns the queue, and when its model call began. One lock for both: a worker
/// given up as hung may return from its call while its successor is in one, and must then
/// touch neither the successor's start time nor its callers (epoch-checked under the lock).
#[derive(Debug, Default)]
struct Beat {
    /// Incarnation of the worker that owns the queue now.
    epoch: u64,
    /// When its current model call began; `None` between calls.
    busy_since: Option<Instant>,
}

impl Heartbeat {
    pub(crate) fn new(hang_after: Duration) -> Arc<Self> {
        Arc::new(Self { beat: Mutex::default(), stopped: Arc::new(AtomicBool::new(false)), hang_after })
    }

    /// Whether the pool was stopped.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// What stops the pool when the last handle goes.
    pub(crate) fn stopper(&self) -> StopOnDrop {
        StopOnDrop(Arc::clone(&self.stopped))
    }

    /// Worker `epoch` begins a model call; false if it is no longer the current worker.
    pub(crate) fn begin(&self, epoch: u64) -> bool {
        let mut beat = lock(&self.beat);
        if beat.epoch != epoch {
            return false;
        }
        beat.busy_since = Some(Instant::now());
        true
    }

    /// Worker `epoch`'s model call returned; false if it was given up meanwhile (its callers
    /// were failed and a successor owns the queue).
    pub(crate) fn end(&self, epoch: u64) -> bool {
        let mut beat = lock(&self.beat);
        if beat.epoch != epoch {
            return false;
        }
        beat.busy_since = None;
        true
    }

    /// The current worker, and how long its current call has run, if one runs.
    fn busy(&self) -> Option<(u64, Duration)> {
        let beat = lock(&self.beat);
        beat.busy_since.map(|since| (beat.epoch, since.elapsed()))
    }

    pub(crate) fn epoch(&self) -> u64 {
        lock(&self.beat).epoch
    }

    /// Replaces the worker `epoch` if it is still current and still in a call (it may have
    /// returned since the watchdog looked): returns the new epoch.
    fn supersede(&self, epoch: u64) -> Option<u64> {
        let mut beat = lock(&self.beat);
        if beat.epoch != epoch || beat.busy_since.is_none() {
            return None;
        }
        beat.epoch += 1;
        beat.busy_since = None;
        Some(beat.epoch)
    }
}

/// How often a watchdog looks.
pub(crate) const WATCH_EVERY: Duration = Duration::from_millis(200);

pub(crate) fn count_restart(model: &str, reason: &'static str) {
    metrics::counter!("vcos_inference_worker_restarts_total", "model" => model.to_owned(), "reason" => reason).increment(1);
}

/// Sets its flag when dropped: held (in an `Arc`) by every handle of a pool, so the worker and
/// the watchdog stop once the last handle goes.
pub(crate) struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A poisoned lock still guards valid data here (queues, tables of callers).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A pool as its watchdog sees it.
pub(crate) trait Watched: Send + Sync + 'static {
    /// The worker's heartbeat.
    fn heartbeat(&self) -> &Heartbeat;
    /// The model's name.
    fn model(&self) -> &str;
    /// What runs the pool's loops.
    fn driver(&self) -> Driver;
    /// The worker of `epoch` hung in a call for `busy`: fail the callers it held and start the
    /// worker of epoch `next`.
    fn replace_hung(self: Arc<Self>, epoch: u64, next: u64, busy: Duration);
}

/// Starts the watchdog of a pool: it looks every [`WATCH_EVERY`] and replaces a worker whose
/// call runs past `hang_after`.
pub(crate) fn spawn_watchdog<T: Watched>(inner: &Arc<T>, pool: &'static str) -> Result<(), ServeError> {
    let weak: Weak<T> = Arc::downgrade(inner);
    inner.driver().spawn(format!("{pool}-watchdog-{}", inner.model()), Role::Watchdog, watch(weak, pool))
}

async fn watch<T: Watched>(weak: Weak<T>, pool: &'static str) {
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.heartbeat().is_stopped() {
            return;
        }
        let Some((epoch, busy)) = inner.heartbeat().busy() else { continue };
        if busy < inner.heartbeat().hang_after {
            continue;
        }
        let Some(next) = inner.heartbeat().supersede(epoch) else { continue };
        tracing::error!(model = inner.model(), busy_ms = busy.as_millis() as u64, "{pool} call hung; failing its callers and starting a new worker");
        count_restart(inner.model(), "hung");
        inner.replace_hung(epoch, next, busy);
    }
}
