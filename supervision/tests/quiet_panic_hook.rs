//! The quiet hook against a previously installed hook, in a binary of its own
//! because the panic hook is process-global.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use vcos_supervision::quiet_panic;

#[test]
fn caught_panics_are_quiet_and_other_panics_reach_the_previous_hook() {
    if std::env::var(quiet_panic::BACKTRACE_ENV).is_ok_and(|value| value == "1") {
        return; // Caught panics are meant to reach the previous hook then.
    }
    let seen = Arc::new(AtomicUsize::new(0));
    let seen_by_hook = Arc::clone(&seen);
    std::panic::set_hook(Box::new(move |_info| {
        seen_by_hook.fetch_add(1, Ordering::SeqCst);
    }));
    quiet_panic::install();
    quiet_panic::install(); // Idempotent: still one wrapper.

    let caught = quiet_panic::catch(|| -> u8 { panic!("quiet one") });
    assert_eq!(caught, Err("quiet one".to_owned()));
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    let recorded = quiet_panic::take_last_panic().expect("recorded by the quiet hook");
    assert!(recorded.starts_with("quiet one (at "), "{recorded}");

    // A panic outside `catch`, on a thread spawned from inside `catch`:
    // the quiet flag is per thread, so it reaches the previous hook.
    let nested = quiet_panic::catch(|| std::thread::spawn(|| panic!("loud one")).join().is_err());
    assert_eq!(nested, Ok(true));
    assert_eq!(seen.load(Ordering::SeqCst), 1);

    // And on this thread, once `catch` has returned.
    let outside = std::panic::catch_unwind(|| panic!("loud two"));
    assert!(outside.is_err());
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    assert_eq!(quiet_panic::take_last_panic(), None);
}
