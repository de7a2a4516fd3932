//! Simulator-only fault injection points in production code (feature `failpoints`).
//!
//! Without the feature every check is a constant `false` and compiles away. With it, the
//! simulator (one thread, all simulated nodes) installs thread-local hooks: a decision whether
//! a handler should panic on its next message, and planted bugs used to prove the simulator's
//! checkers catch real mistakes, and observers that let the checkers see what each node did.

use crate::ids::ImvuKey;

#[cfg(feature = "failpoints")]
mod imp {
    use std::cell::{Cell, RefCell};

    use crate::ids::ImvuKey;

    type PanicHook = Box<dyn FnMut(&ImvuKey) -> bool>;
    type ServedHook = Box<dyn FnMut(&ImvuKey, Option<u64>)>;

    thread_local! {
        static HANDLER_PANIC: RefCell<Option<PanicHook>> = const { RefCell::new(None) };
        static IGNORE_INTENSITY: Cell<bool> = const { Cell::new(false) };
        static SERVED: RefCell<Option<ServedHook>> = const { RefCell::new(None) };
        static SKIP_LEASE_CHECK: Cell<bool> = const { Cell::new(false) };
        static IGNORE_LEASE_EXPIRY: Cell<bool> = const { Cell::new(false) };
        static WORKFLOW_RERUN_JOURNALED: Cell<bool> = const { Cell::new(false) };
        static WORKFLOW_EARLY_TIMERS: Cell<bool> = const { Cell::new(false) };
    }

    /// Planted bug: a workflow resuming after a load runs its journaled `call` steps again
    /// (as an engine that forgot their results would, and without their idempotency keys).
    pub fn set_workflow_rerun_journaled(on: bool) {
        WORKFLOW_RERUN_JOURNALED.with(|c| c.set(on));
    }

    pub(crate) fn workflow_rerun_journaled() -> bool {
        WORKFLOW_RERUN_JOURNALED.with(Cell::get)
    }

    /// Planted bug: workflow sleeps are armed for half their time and end when their timer
    /// fires, without checking the due time.
    pub fn set_workflow_early_timers(on: bool) {
        WORKFLOW_EARLY_TIMERS.with(|c| c.set(on));
    }

    pub(crate) fn workflow_early_timers() -> bool {
        WORKFLOW_EARLY_TIMERS.with(Cell::get)
    }

    /// Installs (or clears) the observer told of every answer released from memory, without a
    /// commit (`Persistence::LifecycleOnly` kinds), with the fencing epoch it was served under.
    pub fn set_served_observer(hook: Option<ServedHook>) {
        SERVED.with(|h| *h.borrow_mut() = hook);
    }

    pub(crate) fn served_from_memory(key: &ImvuKey, epoch: Option<u64>) {
        SERVED.with(|h| {
            if let Some(hook) = h.borrow_mut().as_mut() {
                hook(key, epoch);
            }
        });
    }

    /// Planted bug: a node serves every IMVU it is asked for without checking its lease
    /// (activation without a lease check; commits carry no fence).
    pub fn set_skip_lease_check(on: bool) {
        SKIP_LEASE_CHECK.with(|c| c.set(on));
    }

    pub(crate) fn skip_lease_check() -> bool {
        SKIP_LEASE_CHECK.with(Cell::get)
    }

    /// Planted bug: a node keeps serving the buckets it held after its lease lapsed (until it
    /// reads that another node took them).
    pub fn set_ignore_lease_expiry(on: bool) {
        IGNORE_LEASE_EXPIRY.with(|c| c.set(on));
    }

    pub(crate) fn ignore_lease_expiry() -> bool {
        IGNORE_LEASE_EXPIRY.with(Cell::get)
    }

    /// Installs (or clears) the hook asked before every handler call on this thread.
    pub fn set_handler_panic(hook: Option<PanicHook>) {
        HANDLER_PANIC.with(|h| *h.borrow_mut() = hook);
    }

    /// Planted bug: tenant supervisors restart forever, ignoring their intensity.
    pub fn set_ignore_intensity(on: bool) {
        IGNORE_INTENSITY.with(|c| c.set(on));
    }

    pub(crate) fn handler_should_panic(key: &ImvuKey) -> bool {
        HANDLER_PANIC.with(|h| h.borrow_mut().as_mut().is_some_and(|hook| hook(key)))
    }

    pub(crate) fn ignore_intensity() -> bool {
        IGNORE_INTENSITY.with(Cell::get)
    }
}

#[cfg(feature = "failpoints")]
pub use imp::{
    set_handler_panic, set_ignore_intensity, set_ignore_lease_expiry, set_served_observer, set_skip_lease_check, set_workflow_early_timers,
    set_workflow_rerun_journaled,
};

/// Whether the planted "re-run journaled workflow steps" bug is switched on.
#[inline(always)]
pub(crate) fn workflow_rerun_journaled() -> bool {
    #[cfg(feature = "failpoints")]
    {
        imp::workflow_rerun_journaled()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        false
    }
}

/// Whether the planted "early workflow timers" bug is switched on.
#[inline(always)]
pub(crate) fn workflow_early_timers() -> bool {
    #[cfg(feature = "failpoints")]
    {
        imp::workflow_early_timers()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        false
    }
}

/// Tells the simulator's observer that `key` answered from memory under `epoch`.
#[inline(always)]
pub(crate) fn served_from_memory(_key: &ImvuKey, _epoch: Option<u64>) {
    #[cfg(feature = "failpoints")]
    imp::served_from_memory(_key, _epoch);
}

/// Whether the planted "activation without a lease check" bug is switched on (placement reads
/// it; always `false` outside the simulator).
#[inline(always)]
pub fn skip_lease_check() -> bool {
    #[cfg(feature = "failpoints")]
    {
        imp::skip_lease_check()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        false
    }
}

/// Whether the planted "serving after the lease lapsed" bug is switched on (placement reads
/// it; always `false` outside the simulator).
#[inline(always)]
pub fn ignore_lease_expiry() -> bool {
    #[cfg(feature = "failpoints")]
    {
        imp::ignore_lease_expiry()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        false
    }
}

/// Whether the simulator wants this handler call to panic.
#[inline(always)]
pub(crate) fn handler_should_panic(_key: &ImvuKey) -> bool {
    #[cfg(feature = "failpoints")]
    {
        imp::handler_should_panic(_key)
    }
    #[cfg(not(feature = "failpoints"))]
    {
        false
    }
}

/// Whether the planted "ignore restart intensity" bug is switched on.
#[inline(always)]
pub(crate) fn ignore_intensity() -> bool {
    #[cfg(feature = "failpoints")]
    {
        imp::ignore_intensity()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        false
    }
}
