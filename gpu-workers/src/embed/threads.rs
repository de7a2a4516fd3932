//! The thread budget of an embedder, and what candle 0.11.1 lets us control.
//!
//! candle's CPU backend runs on three kinds of threads:
//!
//! 1. **gemm** (every matrix product, the bulk of BERT's work) splits work with
//!    `Parallelism::Rayon(n)` on the *current* rayon pool; `n` comes from
//!    `candle_core::utils::get_num_threads()` (`RAYON_NUM_THREADS`, else physical cores)
//!    and is 1 (no split) only when that says 1.
//! 2. **candle-nn's softmax and layer norm** use rayon `par_chunks` on the current pool.
//! 3. **Element-wise ops on 64 Ki elements or more** (GELU, adds, the attention mask) and
//!    quantised matmuls run on candle's own process-wide *barrier pool*, created on first
//!    use with `CANDLE_NUM_THREADS` (else `RAYON_NUM_THREADS`, else physical cores)
//!    threads that spin `CANDLE_BARRIER_POOL_SPIN_LIMIT` (25,000) rounds before parking.
//!
//! What the embedder controls: it owns a rayon pool of exactly
//! [`super::EmbedConfig::threads`] threads and runs tokenisation and the forward pass inside
//! it, so (1) and (2) never use more threads than that, whatever the machine.
//!
//! What it cannot control per embedder: the barrier pool (3) is one per process, sized
//! once from the environment. Set `CANDLE_NUM_THREADS` (e.g. to the sum of the workers'
//! budgets, or 1) in the process environment before the first model runs;
//! [`shared_pool_threads`] reports what it got. Seen on 2 cores with `threads = 1` and no
//! `CANDLE_NUM_THREADS`: the barrier pool had one worker (`candle-bp-0`) using about a
//! third of what the embedder thread used, so the process took ~1.3 cores; with
//! `CANDLE_NUM_THREADS=1` it has no worker and the embedder uses one core.
//!
//! When `threads` is 1 and the environment says more, gemm still cuts its work into `n`
//! pieces but runs them one after another on the single pool thread (no measurable cost).

use super::error::EmbedError;

/// A dedicated rayon pool sized to the budget.
pub(crate) struct ThreadBudget {
    pool: rayon::ThreadPool,
}

impl ThreadBudget {
    /// A pool of `threads` threads (at least 1).
    pub(crate) fn new(threads: usize) -> Result<Self, EmbedError> {
        if threads == 0 {
            return Err(EmbedError::Setting("threads must be at least 1".into()));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("vcos-embed-{i}"))
            .start_handler(|_| crate::priority::lower_this_thread())
            .build()
            .map_err(|e| EmbedError::ThreadPool(e.to_string()))?;
        Ok(ThreadBudget { pool })
    }

    /// Runs `f` with this pool as the current rayon pool.
    pub(crate) fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// Threads in the pool.
    pub(crate) fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }
}

/// Threads of candle's process-wide barrier pool (its workers plus the calling thread);
/// creates the pool if no op has yet.
pub fn shared_pool_threads() -> usize {
    candle_core::utils::barrier_pool().n_workers() + 1
}

/// What candle's gemm will split a matrix product into (`RAYON_NUM_THREADS`, else
/// physical cores).
pub fn gemm_split() -> usize {
    candle_core::utils::get_num_threads()
}
