//! Model threads run at a lower CPU priority than the rest of the node.
//!
//! A forward pass keeps its cores busy for milliseconds to seconds, and candle's pools spin
//! while they wait. On a machine where the same cores serve the IMVUs' shards and the HTTP
//! facade, a model thread at normal priority holds a core for a whole scheduler slice (about
//! 3 ms) before a woken request task gets it: `vcos bench think` measured the p99 of other
//! IMVUs' asks at 2.5–3.1 ms while 1,000 IMVUs waited on their models, against 0.8 ms idle
//! (1.6–1.7 ms in two of three runs with this change alone; 0.6–0.75 ms once the window also
//! excluded the embedding phase). Under `SCHED_BATCH` at nice [`MODEL_THREAD_NICE`] the
//! scheduler hands the core to a woken request thread at once; the model loses nothing when
//! nothing else wants the core.

/// The nice value of model threads (0 is normal; 19 the lowest priority).
pub const MODEL_THREAD_NICE: i32 = 10;

/// Lowers the calling thread to `SCHED_BATCH` (no wake-up preemption of interactive threads)
/// at nice [`MODEL_THREAD_NICE`]. Best effort: where it is not supported or refused, the thread
/// keeps its priority (logged).
pub(crate) fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy};
        // thread-priority maps 0..=99 onto nice 19..=-20: 22 is nice 10.
        let Ok(value) = ThreadPriorityValue::try_from(22u8) else { return };
        let policy = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
        if let Err(e) = thread_priority::set_thread_priority_and_policy(thread_priority::thread_native_id(), ThreadPriority::Crossplatform(value), policy) {
            tracing::debug!(error = ?e, "model thread keeps its priority");
        }
    }
}
