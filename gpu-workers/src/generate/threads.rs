//! The CPU thread budget of generation, as an explicit setting.
//!
//! candle 0.11.1's CPU backend uses three kinds of threads: gemm (f32 matmuls) and
//! candle-nn's softmax/norms split work on the *current* rayon pool (gemm into
//! `get_num_threads()` pieces, read from `RAYON_NUM_THREADS` on every call), while quantized
//! matmuls and large element-wise ops run on one process-wide *barrier pool*, sized once from
//! `CANDLE_NUM_THREADS` (else `RAYON_NUM_THREADS`, else physical cores) when first used. Those
//! threads spin while waiting, so on a machine shared with other actors a pool as wide as the
//! machine collapses (models.md: 2-thread decode fell from 60 to 2–5 tok/s under contention,
//! 1 thread stayed steady).
//!
//! So the generator takes its budget from config and
//! * owns a rayon pool of exactly that many threads and runs every step inside it
//!   ([`ThreadBudget::run`]);
//! * pins `CANDLE_NUM_THREADS` / `RAYON_NUM_THREADS` for the process the first time a budget
//!   is applied ([`apply_cpu_thread_budget`]), so the barrier pool gets the same size if it does
//!   not exist yet. If something else in the process created it first, its real size is
//!   reported by [`ThreadBudget::shared_pool_threads`] rather than hidden.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use super::error::{GenerateError, Result};

static APPLIED: Mutex<Option<usize>> = Mutex::new(None);

/// Pins candle's process-wide CPU thread count. Idempotent for the same value; a different
/// value after the first call gives [`GenerateError::ThreadBudgetConflict`], since the pool
/// cannot be resized.
///
/// It sets environment variables, so call it at start-up, before other threads read the
/// environment through C code.
pub fn apply_cpu_thread_budget(threads: NonZeroUsize) -> Result<()> {
    let requested = threads.get();
    let mut applied = APPLIED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match *applied {
        Some(active) if active == requested => Ok(()),
        Some(active) => Err(GenerateError::ThreadBudgetConflict { active, requested }),
        None => {
            let v = requested.to_string();
            std::env::set_var("CANDLE_NUM_THREADS", &v);
            std::env::set_var("RAYON_NUM_THREADS", &v);
            *applied = Some(requested);
            Ok(())
        }
    }
}

/// A generator's own rayon pool, sized to its budget.
#[derive(Debug)]
pub struct ThreadBudget {
    pool: rayon::ThreadPool,
}

impl ThreadBudget {
    /// Applies the process-wide setting and builds the pool.
    pub fn new(threads: NonZeroUsize) -> Result<Self> {
        apply_cpu_thread_budget(threads)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.get())
            .thread_name(|i| format!("vcos-generate-{i}"))
            .start_handler(|_| crate::priority::lower_this_thread())
            .build()
            .map_err(|e| GenerateError::InvalidConfig(format!("thread pool: {e}")))?;
        Ok(Self { pool })
    }

    /// Runs `f` with this pool as the current rayon pool.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// Threads of the generator's own pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Threads of candle's process-wide barrier pool (its workers plus the caller); creates the
    /// pool if nothing has yet.
    pub fn shared_pool_threads() -> usize {
        candle_core::utils::barrier_pool().n_workers() + 1
    }
}
