//! Simulator-only fault injection points in production code (feature `failpoints`).
//!
//! Without the feature every check is a constant `false` and compiles away. With it, the
//! simulator (one thread, all simulated nodes) installs thread-local hooks: a decision whether
//! a handler should panic on its next message, and planted bugs used to prove the simulator's
//! checkers catch real mistakes.

use crate::ids::ImvuKey;

#[cfg(feature = "failpoints")]
mod imp {
    use std::cell::{Cell, RefCell};

    use crate::ids::ImvuKey;

    type PanicHook = Box<dyn FnMut(&ImvuKey) -> bool>;

    thread_local! {
        static HANDLER_PANIC: RefCell<Option<PanicHook>> = const { RefCell::new(None) };
        static IGNORE_INTENSITY: Cell<bool> = const { Cell::new(false) };
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
pub use imp::{set_handler_panic, set_ignore_intensity};

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
