//! Quiet panics: caught panics become restarts, not stderr noise.
//!
//! Supervised code panics on purpose (assertions in cores) and the supervisor
//! restarts it. The default panic hook prints every such panic and, with
//! `RUST_BACKTRACE=1`, captures a backtrace each time, which makes a restart
//! about 15x slower. [`catch`] and [`catch_async`] mark the current thread as
//! "quiet" while they run; the hook [`install`]ed here then records the
//! message in a thread-local slot ([`take_last_panic`]) instead of printing,
//! and captures no backtrace. Panics outside `catch` (and on other threads)
//! still reach the previously installed hook unchanged.
//!
//! Set `VCOS_PANIC_BACKTRACE=1` to send caught panics to the previous hook
//! too (printing, and a backtrace when `RUST_BACKTRACE` asks for one).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{AssertUnwindSafe, PanicHookInfo};
use std::sync::Once;
use std::task::Poll;

/// Environment variable that makes caught panics print with the previous hook.
pub const BACKTRACE_ENV: &str = "VCOS_PANIC_BACKTRACE";

/// Payload text used when a panic carries neither `&str` nor `String`.
pub const NON_STRING_PAYLOAD: &str = "non-string panic payload";

static INSTALL: Once = Once::new();

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs the quiet-aware panic hook, wrapping the hook in place now.
/// Idempotent: only the first call (from any thread) installs.
pub fn install() {
    INSTALL.call_once(|| {
        let verbose = std::env::var(BACKTRACE_ENV).is_ok_and(|value| value == "1");
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // `try_with`: a panic during thread teardown has no thread-locals left.
            let quiet = QUIET.try_with(Cell::get).unwrap_or(false);
            if quiet {
                record(info);
            }
            if !quiet || verbose {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, turning a panic into `Err(message)` without printing it.
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    install();
    let _quiet = QuietGuard::enter();
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(payload_message)
}

/// Polls `future` to completion, turning a panic in any poll into
/// `Err(message)` without printing it. The thread is quiet only while the
/// future is being polled, so other tasks on the same thread are unaffected.
pub async fn catch_async<F: Future>(future: F) -> Result<F::Output, String> {
    install();
    let mut future = Box::pin(future);
    std::future::poll_fn(move |cx| {
        let _quiet = QuietGuard::enter();
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload_message(payload))),
        }
    })
    .await
}

/// Takes the last quiet panic recorded on this thread: the message and where
/// it was raised.
pub fn take_last_panic() -> Option<String> {
    LAST_PANIC.with(|slot| slot.borrow_mut().take())
}

/// The text of a panic payload: `&str` and `String` payloads, or
/// [`NON_STRING_PAYLOAD`].
pub fn payload_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(text) => (*text).to_owned(),
            Err(_) => NON_STRING_PAYLOAD.to_owned(),
        },
    }
}

fn record(info: &PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        NON_STRING_PAYLOAD.to_owned()
    };
    let entry = match info.location() {
        Some(location) => format!("{message} (at {location})"),
        None => message,
    };
    let _ = LAST_PANIC.try_with(|slot| *slot.borrow_mut() = Some(entry));
}

/// Sets the quiet flag and restores the previous value on drop, so nested
/// `catch` calls and unwinding leave the flag as they found it.
struct QuietGuard {
    previous: bool,
}

impl QuietGuard {
    fn enter() -> Self {
        Self {
            previous: QUIET.with(|quiet| quiet.replace(true)),
        }
    }
}

impl Drop for QuietGuard {
    fn drop(&mut self) {
        let previous = self.previous;
        let _ = QUIET.try_with(|quiet| quiet.set(previous));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_returns_the_value_or_the_message() {
        assert_eq!(catch(|| 7), Ok(7));
        assert_eq!(
            catch(|| -> u8 { panic!("boom {}", 1) }),
            Err("boom 1".to_owned())
        );
        assert_eq!(
            catch(|| -> u8 { panic!("static boom") }),
            Err("static boom".to_owned())
        );
        let non_string = catch(|| -> u8 { std::panic::panic_any(42_u32) });
        assert_eq!(non_string, Err(NON_STRING_PAYLOAD.to_owned()));
    }

    #[test]
    fn catch_records_location_and_restores_flag() {
        let _ = take_last_panic();
        let outer = catch(|| {
            let inner = catch(|| -> u8 { panic!("inner") });
            assert_eq!(inner, Err("inner".to_owned()));
            // Still quiet after the nested catch returns.
            assert!(QUIET.with(Cell::get));
            5
        });
        assert_eq!(outer, Ok(5));
        assert!(!QUIET.with(Cell::get));
        let last = take_last_panic().expect("the inner panic was recorded");
        assert!(last.starts_with("inner (at "), "{last}");
        assert!(last.contains("quiet_panic.rs"), "{last}");
    }

    #[tokio::test]
    async fn catch_async_catches_a_panic_after_an_await() {
        let ok = catch_async(async {
            tokio::task::yield_now().await;
            3
        })
        .await;
        assert_eq!(ok, Ok(3));
        let failed = catch_async(async {
            tokio::task::yield_now().await;
            if ok.is_ok() {
                panic!("async boom");
            }
            4
        })
        .await;
        assert_eq!(failed, Err("async boom".to_owned()));
        assert!(!QUIET.with(Cell::get));
    }
}
