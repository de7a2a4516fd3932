//! The trace: every observable event of a run, in order, and its hash. Same seed (same commit,
//! same Cargo.lock, same toolchain) ⇒ same trace ⇒ same hash.

use std::sync::{Arc, Mutex};

/// Shared, append-only event list.
#[derive(Clone, Default)]
pub struct Trace {
    events: Arc<Mutex<Vec<String>>>,
}

impl Trace {
    /// Appends an event stamped with simulated time.
    pub fn record(&self, event: impl Into<String>) {
        let line = format!("{:>8} {}", crate::node_env::sim_now_ms(), event.into());
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    /// Appends an event stamped with a time the caller knows (outside any host).
    pub fn record_at(&self, at_ms: u64, event: impl Into<String>) {
        let line = format!("{at_ms:>8} {}", event.into());
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    /// All events so far.
    pub fn events(&self) -> Vec<String> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// FNV-1a, 64 bit: stable across platforms and toolchains, unlike `DefaultHasher`.
pub fn hash_events(events: &[String]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for line in events {
        for byte in line.bytes().chain(std::iter::once(b'\n')) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    #[test]
    fn hash_is_fnv1a() {
        assert_eq!(super::hash_events(&[]), 0xcbf2_9ce4_8422_2325);
        assert_ne!(super::hash_events(&["a".into()]), super::hash_events(&["b".into()]));
    }
}
