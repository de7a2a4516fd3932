//! What the two pools share: the state a worker thread shares with its watchdog (which
//! incarnation of the worker is the current one, and when its current model call began), the
//! watchdog itself, and stopping when the last handle goes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::error::ServeError;

/// Heartbeat of a worker: the watchdog reads it, the worker writes it around each model call.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    /// Origin of the millisecond stamps (a monotonic clock; the worker is real time by nature).
    origin: Instant,
    /// When the current model call began (ms since `origin`, plus one); 0 when not in a call.
    busy_since: AtomicU64,
    /// Incarnation of the worker thread that owns the queue now.
    epoch: AtomicU64,
    /// Set when the pool's last handle went: its threads stop.
    stopped: Arc<AtomicBool>,
    /// How long a model call may run before the watchdog gives it up.
    hang_after: Duration,
}

impl Heartbeat {
    pub(crate) fn new(hang_after: Duration) -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            busy_since: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            stopped: Arc::new(AtomicBool::new(false)),
            hang_after,
        })
    }

    /// Whether the pool was stopped.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// What stops the pool when the last handle goes.
    pub(crate) fn stopper(&self) -> StopOnDrop {
        StopOnDrop(Arc::clone(&self.stopped))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// A model call begins.
    pub(crate) fn begin(&self) {
        self.busy_since.store(self.now_ms() + 1, Ordering::Release);
    }

    /// The model call returned.
    pub(crate) fn end(&self) {
        self.busy_since.store(0, Ordering::Release);
    }

    /// How long the current call has run, if one runs.
    pub(crate) fn busy_for(&self) -> Option<Duration> {
        match self.busy_since.load(Ordering::Acquire) {
            0 => None,
            since => Some(Duration::from_millis(self.now_ms().saturating_sub(since - 1))),
        }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Replaces the worker `epoch` (if it is still current): returns the new epoch.
    pub(crate) fn supersede(&self, epoch: u64) -> Option<u64> {
        self.epoch.compare_exchange(epoch, epoch + 1, Ordering::AcqRel, Ordering::Acquire).ok()?;
        self.busy_since.store(0, Ordering::Release);
        Some(epoch + 1)
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
    /// The worker of `epoch` hung in a call for `busy`: fail the callers it held and start the
    /// worker of epoch `next`.
    fn replace_hung(self: Arc<Self>, epoch: u64, next: u64, busy: Duration);
}

/// Starts the watchdog thread of a pool: it looks every [`WATCH_EVERY`] and replaces a worker
/// whose call runs past `hang_after`.
pub(crate) fn spawn_watchdog<T: Watched>(inner: &Arc<T>, pool: &'static str) -> Result<(), ServeError> {
    let weak: Weak<T> = Arc::downgrade(inner);
    std::thread::Builder::new()
        .name(format!("{pool}-watchdog-{}", inner.model()))
        .spawn(move || loop {
            std::thread::sleep(WATCH_EVERY);
            let Some(inner) = weak.upgrade() else { return };
            if inner.heartbeat().is_stopped() {
                return;
            }
            let Some(busy) = inner.heartbeat().busy_for() else { continue };
            if busy < inner.heartbeat().hang_after {
                continue;
            }
            let epoch = inner.heartbeat().epoch();
            let Some(next) = inner.heartbeat().supersede(epoch) else { continue };
            tracing::error!(model = inner.model(), busy_ms = busy.as_millis() as u64, "{pool} call hung; failing its callers and starting a new worker");
            count_restart(inner.model(), "hung");
            inner.replace_hung(epoch, next, busy);
        })
        .map(|_| ())
        .map_err(|e| ServeError::Stopped(format!("cannot start the watchdog thread: {e}")))
}
