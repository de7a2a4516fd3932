//! An in-memory `CanonStore`: same contract as the durable one minus durability across process
//! restarts. Used by benchmarks of the actor layer alone, by unit tests and as the base of the
//! simulator's disk.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{appended_key, CanonStore, CanonWrite, Completion, StoreError};

/// A `BTreeMap` behind a mutex, with the canon index counter.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    kv: BTreeMap<String, Vec<u8>>,
    index: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.lock().kv.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock can only come from a bug in this file; the map is
        // never left half-updated (each write is a single insert/remove), so keep going.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl CanonStore for MemoryStore {
    fn commit(&self, writes: Vec<CanonWrite>, done: Completion) {
        let last = {
            let mut inner = self.lock();
            for write in writes {
                match write {
                    CanonWrite::Put { key, value } => {
                        inner.kv.insert(key, value);
                    }
                    CanonWrite::Delete { key } => {
                        inner.kv.remove(&key);
                    }
                    CanonWrite::Append { prefix, value } => {
                        inner.index += 1;
                        let key = appended_key(&prefix, inner.index);
                        inner.kv.insert(key, value);
                    }
                }
            }
            inner.index
        };
        done(Ok(last));
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().kv.get(key).cloned())
    }

    fn scan_prefix(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let inner = self.lock();
        let start = match after {
            Some(after) => std::ops::Bound::Excluded(after.to_owned()),
            None => std::ops::Bound::Included(prefix.to_owned()),
        };
        Ok(inner
            .kv
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}
