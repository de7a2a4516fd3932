//! [`CanonRuntime`]: openraft's async runtime on tokio, with a seeded random source.
//!
//! openraft draws election timeouts from `AsyncRuntime::thread_rng`; its own tokio runtime
//! uses the thread RNG, which the simulator cannot replay. Here every thread draws from its own
//! `StdRng`, seeded from the process seed and the thread's arrival order. The simulator runs
//! every host on one thread and calls [`reseed_this_thread`] at the start of each run, so the
//! same seed gives the same elections; a production process calls [`set_process_seed`] once
//! at start (timeouts must differ between nodes, not be unpredictable).

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioInstant, TokioRuntime};
use rand08::{RngCore, SeedableRng};

static PROCESS_SEED: AtomicU64 = AtomicU64::new(0x5eed_0f_ca_70_u64);
static THREADS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static RNG: RefCell<rand08::rngs::StdRng> = RefCell::new(rand08::rngs::StdRng::seed_from_u64(
        PROCESS_SEED.load(Ordering::Relaxed) ^ THREADS.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    ));
}

/// Sets the seed of threads that draw for the first time after this call.
pub fn set_process_seed(seed: u64) {
    PROCESS_SEED.store(seed, Ordering::Relaxed);
}

/// Reseeds the calling thread's source (the simulator: one thread, one seed per run).
pub fn reseed_this_thread(seed: u64) {
    RNG.with(|rng| *rng.borrow_mut() = rand08::rngs::StdRng::seed_from_u64(seed));
}

/// A handle on the calling thread's seeded source.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadSeededRng;

impl RngCore for ThreadSeededRng {
    fn next_u32(&mut self) -> u32 {
        RNG.with(|rng| rng.borrow_mut().next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        RNG.with(|rng| rng.borrow_mut().next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        RNG.with(|rng| rng.borrow_mut().fill_bytes(dest));
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand08::Error> {
        RNG.with(|rng| rng.borrow_mut().try_fill_bytes(dest))
    }
}

/// openraft's tokio runtime with [`ThreadSeededRng`] as its random source.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CanonRuntime;

impl AsyncRuntime for CanonRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = ThreadSeededRng;
    type OneshotSender<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <TokioRuntime as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ThreadSeededRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        TokioRuntime::oneshot()
    }
}
