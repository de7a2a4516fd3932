//! [`ShardLink`]: a caller's side of one shard — the bounded channel and the [`ShardSlot`]
//! it shares with the shard's task: the shard behind a mutex, and the count of commands sent
//! and not yet handled. (The task holds the slot, not the sender: the channel still closes when
//! the last caller's handle is dropped, and the task then answers what is in flight and ends.)
//!
//! Why: an ask handed to the shard's task costs two task wake-ups (the shard's, then the
//! caller's), and on tokio's multi-threaded scheduler a chain of them regularly wakes a parked
//! worker (a system call) that steals one of the two tasks, so the round trip crosses threads.
//! When the shard has nothing queued and no one else is stepping it, the caller takes the
//! mutex and runs its ask itself, exactly as the task would have in a wake of its own:
//! completions first, the time, the command, its effects, the deferred commits. The reply is
//! then ready when the caller awaits it (or follows its commit, for `EveryMessage`).
//!
//! Order is kept: every command sent on the channel counts in `queued` from before it is sent
//! until the task takes it in hand, under the mutex it handles it under; a caller runs inline
//! only when, holding the mutex, it sees `queued` at 0 — so everything sent before has been
//! handled, and its own earlier tells are never overtaken. Callers only `try_lock`: one that finds the shard busy
//! sends on the channel as before. The task takes the mutex for each wake only, never across an
//! await, and sleeps no longer than the earliest timer, which an inline step that sets an
//! earlier one (or escalates) wakes it to re-arm (or exit).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use tokio::sync::mpsc;

use super::driver::{Shard, ShardEnv, ShardExit};
use super::{Command, SHARD_BATCH_MAX};
use crate::imvu::Imvu;

/// How long a stopping shard waits for its commits in flight, so their callers get answers.
const SHUTDOWN_DRAIN_MS_MAX: u64 = 5_000;

/// A caller's side of one shard (see the module).
pub(crate) struct ShardLink<I: Imvu> {
    tx: mpsc::Sender<Command<I>>,
    slot: Arc<ShardSlot<I>>,
}

/// What callers and the shard's task share.
pub(crate) struct ShardSlot<I: Imvu> {
    /// Commands sent (or being sent) on the channel that the task has not yet taken in hand
    /// (it takes and handles them under `shard`'s mutex).
    queued: AtomicUsize,
    /// The shard while a task serves it; `None` between a stop and the next start.
    shard: Mutex<Option<Shard<I>>>,
}

/// Takes back a count for a command that did not make it onto the channel.
struct Unsent<'a>(&'a AtomicUsize);

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<I: Imvu> ShardLink<I> {
    /// A link over the channel `tx` and the `slot` its task serves.
    pub(crate) fn new(tx: mpsc::Sender<Command<I>>, slot: Arc<ShardSlot<I>>) -> Self {
        Self { tx, slot }
    }

    /// Enqueues without waiting: a full or closed channel gives the command back.
    pub(crate) fn try_send(&self, command: Command<I>) -> Result<(), mpsc::error::TrySendError<Command<I>>> {
        self.slot.queued.fetch_add(1, Ordering::SeqCst);
        let unsent = Unsent(&self.slot.queued);
        self.tx.try_send(command)?;
        std::mem::forget(unsent);
        Ok(())
    }

    /// Enqueues, waiting for room (back-pressure); a closed channel gives the command back. The
    /// non-blocking path first: no permit future to build and poll when there is room, which is
    /// almost always.
    pub(crate) async fn send(&self, command: Command<I>) -> Result<(), mpsc::error::SendError<Command<I>>> {
        self.slot.queued.fetch_add(1, Ordering::SeqCst);
        // Dropped (the count taken back) if the send fails or this future is dropped waiting.
        let unsent = Unsent(&self.slot.queued);
        let sent = match self.tx.try_send(command) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(command)) => self.tx.send(command).await,
            Err(mpsc::error::TrySendError::Closed(command)) => Err(mpsc::error::SendError(command)),
        };
        if sent.is_ok() {
            std::mem::forget(unsent);
        }
        sent
    }

    /// Runs `command` on the calling thread if the shard is idle with nothing queued; else
    /// gives it back, for the channel.
    pub(crate) fn try_inline(&self, command: Command<I>) -> Result<(), Command<I>> {
        let slot = &*self.slot;
        if slot.queued.load(Ordering::SeqCst) != 0 {
            return Err(command);
        }
        let mut guard = match slot.shard.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(command),
        };
        let Some(shard) = guard.as_mut().filter(|shard| shard.runs_inline()) else {
            return Err(command);
        };
        // Checked again under the mutex: the task decrements only while holding it.
        if slot.queued.load(Ordering::SeqCst) != 0 {
            return Err(command);
        }
        if shard.step_inline(command) {
            shard.wake_task();
        }
        Ok(())
    }
}

impl<I: Imvu> Default for ShardSlot<I> {
    fn default() -> Self {
        Self { queued: AtomicUsize::new(0), shard: Mutex::new(None) }
    }
}

impl<I: Imvu> ShardSlot<I> {
    fn lock(&self) -> MutexGuard<'_, Option<Shard<I>>> {
        self.shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shard task's life: installs a fresh shard, serves it until the channel closes or
    /// its supervisor escalates, then lets go of it (also when the task is aborted).
    pub(crate) async fn serve(&self, env: Arc<ShardEnv<I>>, rx: &mut mpsc::Receiver<Command<I>>) -> ShardExit {
        let shard = Shard::new(env);
        let completions = shard.completion_wake();
        *self.lock() = Some(shard);
        let _detach = Detach(self);
        let exit = self.serve_installed(&completions, rx).await;
        if matches!(exit, ShardExit::Closed) {
            self.drain_in_flight(&completions).await;
        }
        exit
    }

    async fn serve_installed(&self, wake: &super::driver::CompletionWake, rx: &mut mpsc::Receiver<Command<I>>) -> ShardExit {
        let mut batch = Vec::with_capacity(SHARD_BATCH_MAX);
        loop {
            let Some(timer_in_ms) = self.lock().as_mut().map(Shard::arm_timer) else {
                return ShardExit::Escalated("the shard was detached from its task".into());
            };
            let timer = async move {
                match timer_in_ms {
                    Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = wake.notified() => {}
                () = timer => {}
                received = rx.recv_many(&mut batch, SHARD_BATCH_MAX) => {
                    if received == 0 {
                        return ShardExit::Closed;
                    }
                }
            }
            let stepped = {
                let mut guard = self.lock();
                // Under the mutex, before the step: no caller can run inline until the batch is
                // handled, and a step that panics has already given its count back.
                self.queued.fetch_sub(batch.len(), Ordering::SeqCst);
                let stepped = match guard.as_mut() {
                    Some(shard) => shard.step_served(&mut batch),
                    None => Err("the shard was detached from its task".into()),
                };
                batch.clear();
                stepped
            };
            if let Err(reason) = stepped {
                return ShardExit::Escalated(reason);
            }
        }
    }

    /// The channel closed: answer the callers whose commits are in flight (bounded wait).
    async fn drain_in_flight(&self, wake: &super::driver::CompletionWake) {
        let deadline = tokio::time::sleep(Duration::from_millis(SHUTDOWN_DRAIN_MS_MAX));
        tokio::pin!(deadline);
        let mut empty = Vec::new();
        while self.lock().as_ref().is_some_and(Shard::has_pending) {
            tokio::select! {
                biased;
                () = wake.notified() => {}
                () = &mut deadline => return,
            }
            let stepped = self.lock().as_mut().map(|shard| shard.step_served(&mut empty));
            if !matches!(stepped, Some(Ok(()))) {
                return;
            }
        }
    }
}

/// Lets go of the shard when its task ends, however it ends: its cells are evicted (canon
/// keeps them) and callers send on the channel until the next task installs a fresh shard.
struct Detach<'a, I: Imvu>(&'a ShardSlot<I>);

impl<I: Imvu> Drop for Detach<'_, I> {
    fn drop(&mut self) {
        let shard = self.0.lock().take();
        if let Some(mut shard) = shard {
            shard.evict_all();
        }
    }
}
