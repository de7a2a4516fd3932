//! The requests a connection is still answering, polled by the connection's own task.
//!
//! Like `futures_util::stream::FuturesUnordered` (each future has its own waker, and only the
//! woken ones are polled), with one difference that matters on the hot path of a connection:
//! `FuturesUnordered` wakes its own task whenever it has polled every future it holds and one
//! stayed pending — always, with a single request in flight. Tokio treats a task woken while it
//! runs as one that yields: it goes to the back of the run queue and another worker thread is
//! woken to take it, a futex wake-up and a context switch for every request answered later.
//! This set yields only when it had more woken futures than [`POLLS_PER_TURN_MAX`] to poll in
//! one turn, so that one busy connection still cannot hold a worker thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// Futures polled in one call at most; past it the set wakes its task again and returns.
const POLLS_PER_TURN_MAX: usize = 64;

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A set of futures, polled when woken; outputs come out in completion order.
pub(crate) struct InFlight<T> {
    slots: Vec<Option<Slot<T>>>,
    /// Indices of empty slots, reused before the vector grows.
    free: Vec<usize>,
    woken: Arc<Woken>,
    len: usize,
}

struct Slot<T> {
    future: Boxed<T>,
    waker: Waker,
}

/// The slots woken since the last poll, and the waker of the task that polls the set.
#[derive(Default)]
struct Woken {
    state: Mutex<WokenState>,
}

#[derive(Default)]
struct WokenState {
    slots: Vec<usize>,
    task: Option<Waker>,
}

impl Woken {
    fn lock(&self) -> MutexGuard<'_, WokenState> {
        // Only plain pushes and takes happen under the lock: a poisoned state is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mark(&self, slot: usize) {
        let task = {
            let mut state = self.lock();
            state.slots.push(slot);
            state.task.clone()
        };
        if let Some(task) = task {
            task.wake();
        }
    }
}

/// The waker of one slot: marks the slot woken, then wakes the polling task. A waker of a
/// future that already finished may mark a slot that now holds another future: that one is
/// polled once for nothing, which futures allow.
struct SlotWaker {
    slot: usize,
    woken: Arc<Woken>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.woken.mark(self.slot);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.mark(self.slot);
    }
}

impl<T> InFlight<T> {
    pub(crate) fn new() -> Self {
        Self { slots: Vec::new(), free: Vec::new(), woken: Arc::default(), len: 0 }
    }

    /// Futures not finished yet.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `future`; it is polled (with its own waker) at the next [`Self::next`].
    pub(crate) fn push(&mut self, future: impl Future<Output = T> + Send + 'static) {
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let waker = Waker::from(Arc::new(SlotWaker { slot: index, woken: Arc::clone(&self.woken) }));
        self.slots[index] = Some(Slot { future: Box::pin(future), waker });
        self.len += 1;
        self.woken.lock().slots.push(index);
    }

    /// The next output of a future of the set; `None` once the set is empty.
    pub(crate) async fn next(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if self.len == 0 {
            return Poll::Ready(None);
        }
        let mut woken = {
            let mut state = self.woken.lock();
            if !state.task.as_ref().is_some_and(|task| task.will_wake(cx.waker())) {
                state.task = Some(cx.waker().clone());
            }
            std::mem::take(&mut state.slots)
        };
        let mut polled = 0;
        let mut output = None;
        let mut rest = 0;
        for (i, &index) in woken.iter().enumerate() {
            if polled == POLLS_PER_TURN_MAX {
                rest = i;
                break;
            }
            let Some(Some(slot)) = self.slots.get_mut(index) else { continue };
            polled += 1;
            if let Poll::Ready(out) = slot.future.as_mut().poll(&mut Context::from_waker(&slot.waker)) {
                self.slots[index] = None;
                self.free.push(index);
                self.len -= 1;
                output = Some(out);
                rest = i + 1;
                break;
            }
        }
        if rest > 0 && rest < woken.len() {
            // Not polled this turn: they stay marked, for the next call.
            let mut state = self.woken.lock();
            woken.drain(..rest);
            state.slots.extend(woken);
            if output.is_none() {
                // A turn's worth polled and nothing finished: let other tasks run first.
                cx.waker().wake_by_ref();
            }
        }
        match output {
            Some(out) => Poll::Ready(Some(out)),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts how often the polling task is woken.
    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll<T>(set: &mut InFlight<T>, counter: &Arc<CountingWaker>) -> Poll<Option<T>> {
        let waker = Waker::from(Arc::clone(counter));
        set.poll_next(&mut Context::from_waker(&waker))
    }

    #[test]
    fn a_lone_pending_future_does_not_wake_its_task() {
        let counter = Arc::new(CountingWaker::default());
        let mut set = InFlight::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        set.push(async move { rx.await.unwrap_or(0) });
        assert_eq!(poll(&mut set, &counter), Poll::Pending);
        assert_eq!(counter.0.load(Ordering::SeqCst), 0, "FuturesUnordered would have woken its task here");
        tx.send(7).unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "the future's wake-up reaches the task");
        assert_eq!(poll(&mut set, &counter), Poll::Ready(Some(7)));
        assert!(set.is_empty());
        assert_eq!(poll(&mut set, &counter), Poll::Ready(None));
    }

    #[test]
    fn outputs_come_in_completion_order_and_slots_are_reused() {
        let counter = Arc::new(CountingWaker::default());
        let mut set = InFlight::new();
        let mut senders = Vec::new();
        for i in 0..3u32 {
            let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
            senders.push(tx);
            set.push(async move { rx.await.unwrap_or(100 + i) });
        }
        assert_eq!(poll(&mut set, &counter), Poll::Pending);
        let third = senders.pop().unwrap();
        third.send(30).unwrap();
        assert_eq!(poll(&mut set, &counter), Poll::Ready(Some(30)));
        // The freed slot takes the next future; the old future's waker is gone with it.
        set.push(async { 40 });
        assert_eq!(set.len(), 3);
        assert_eq!(poll(&mut set, &counter), Poll::Ready(Some(40)));
        drop(senders.remove(0));
        assert_eq!(poll(&mut set, &counter), Poll::Ready(Some(100)));
        assert_eq!(poll(&mut set, &counter), Poll::Pending);
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn a_crowd_of_woken_futures_is_polled_a_turn_at_a_time() {
        let counter = Arc::new(CountingWaker::default());
        let mut set = InFlight::new();
        let mut senders = Vec::new();
        for _ in 0..(POLLS_PER_TURN_MAX * 2) {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            senders.push(tx);
            set.push(async move {
                let _ = rx.await;
            });
        }
        // First turn: a turn's worth polled, all pending, the task asks to run again.
        assert_eq!(poll(&mut set, &counter), Poll::Pending);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut set, &counter), Poll::Pending);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "the second turn polled the rest and did not yield");
        drop(senders);
        let mut finished = 0;
        while let Poll::Ready(Some(())) = poll(&mut set, &counter) {
            finished += 1;
        }
        assert_eq!(finished, POLLS_PER_TURN_MAX * 2);
    }
}
