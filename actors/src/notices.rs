//! In-process watchers of IMVUs: a handler calls [`crate::Context::notify_watchers`], and once
//! its message is durable every [`Notices::watch`] of that IMVU registered before resolves.
//!
//! What it is for: a caller that waits for something an IMVU will reach later (the HTTP
//! facade's "start a workflow and wait for its end") learns it at once instead of asking
//! again and again. It is a hint, not a channel: a notice says "look again", carries nothing,
//! and is only raised on the node that runs the IMVU, so a watcher on another node (or one
//! that registered too late) still has to look by itself after a while.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::ids::ImvuKey;

/// Watchers per IMVU at most; past it the oldest are told at once (they look again).
const WATCHERS_PER_IMVU_MAX: usize = 1_024;

/// The runtime's table of watchers.
#[derive(Default)]
pub struct Notices {
    // Looked up by key only (never iterated): order cannot matter.
    watchers: Mutex<HashMap<ImvuKey, Vec<oneshot::Sender<()>>, ahash::RandomState>>,
}

impl Notices {
    /// Resolves at the next notice of `key` after this call (or when the runtime drops it).
    pub fn watch(&self, key: ImvuKey) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut watchers = self.watchers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let list = watchers.entry(key).or_default();
        // Watchers that gave up (timed out, disconnected) leave with the next one.
        list.retain(|w| !w.is_closed());
        if list.len() >= WATCHERS_PER_IMVU_MAX {
            let _ = list.remove(0).send(());
        }
        list.push(tx);
        rx
    }

    /// Tells every watcher of `key`.
    pub(crate) fn notify(&self, key: &ImvuKey) {
        let told = self.watchers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(key);
        for watcher in told.into_iter().flatten() {
            let _ = watcher.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ImvuId, TenantId};

    fn key(id: u64) -> ImvuKey {
        ImvuKey { tenant: TenantId::default_tenant(), id: ImvuId(id) }
    }

    #[test]
    fn a_notice_resolves_the_watchers_registered_before_it_and_only_of_that_imvu() {
        let notices = Notices::default();
        let mut first = notices.watch(key(1));
        let mut second = notices.watch(key(1));
        let mut other = notices.watch(key(2));
        notices.notify(&key(1));
        assert_eq!(first.try_recv(), Ok(()));
        assert_eq!(second.try_recv(), Ok(()));
        assert!(other.try_recv().is_err(), "another IMVU's watcher waits");
        let mut later = notices.watch(key(1));
        assert!(later.try_recv().is_err(), "a watch sees notices after it only");
        notices.notify(&key(1));
        assert_eq!(later.try_recv(), Ok(()));
    }

    #[test]
    fn watchers_that_gave_up_are_dropped_and_the_table_is_bounded() {
        let notices = Notices::default();
        for _ in 0..10 {
            drop(notices.watch(key(1)));
        }
        let kept = notices.watch(key(1));
        assert_eq!(notices.watchers.lock().expect("lock").get(&key(1)).map(Vec::len), Some(1));
        drop(kept);
        let mut receivers: Vec<_> = (0..WATCHERS_PER_IMVU_MAX + 1).map(|_| notices.watch(key(3))).collect();
        assert_eq!(receivers[0].try_recv(), Ok(()), "the oldest is told to look again");
        assert!(receivers[1].try_recv().is_err());
    }
}
