//! In-memory canon: [`OrderedKv`], the ordered map with canon's write semantics (shared with
//! the simulator's disk), and [`MemoryStore`], a `CanonStore` over it — same contract as the
//! durable store minus surviving a process restart. Used by unit tests and embedders that keep
//! canon elsewhere.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use super::{appended_key, failed_guard, CanonStore, CanonWrite, Completion, StoreError};

/// An ordered key-value map plus the canon index counter, applying [`CanonWrite`]s.
///
/// Keys and values are boxed slices, not `String`/`Vec`: 16 bytes less per entry in the tree's
/// nodes, and no spare capacity kept (an in-memory spawn writes four records).
#[derive(Clone, Debug, Default)]
pub struct OrderedKv {
    kv: BTreeMap<Box<str>, Box<[u8]>>,
    index: u64,
}

impl OrderedKv {
    /// Applies one commit; returns the canon index after it, or [`StoreError::Conflict`] (and
    /// applies nothing) when one of its guards fails.
    pub fn apply(&mut self, writes: Vec<CanonWrite>) -> Result<u64, StoreError> {
        let failed = failed_guard(&writes, |key, value| {
            Ok::<_, std::convert::Infallible>(self.kv.get(key).map(|v| &**v) == value)
        });
        if let Ok(Some(key)) = failed {
            return Err(StoreError::Conflict { key: key.to_owned() });
        }
        for write in writes {
            match write {
                CanonWrite::Put { key, value } => {
                    self.kv.insert(key.into_boxed_str(), value.into_boxed_slice());
                }
                CanonWrite::Delete { key } => {
                    self.kv.remove(key.as_str());
                }
                CanonWrite::Append { prefix, value } => {
                    self.index += 1;
                    self.kv.insert(appended_key(&prefix, self.index).into_boxed_str(), value.into_boxed_slice());
                }
                CanonWrite::Expect { .. } => {}
            }
        }
        Ok(self.index)
    }

    /// The canon index of the last appended record.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// One key.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.kv.get(key).map(|v| v.to_vec())
    }

    /// Up to `limit` keys with `prefix`, in order, strictly after `after`.
    pub fn scan_prefix(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<(String, Vec<u8>)> {
        let start = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Included(prefix),
        };
        self.kv
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.kv.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty()
    }
}

/// An [`OrderedKv`] behind a mutex.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<OrderedKv>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OrderedKv> {
        // A panic while holding this lock can only come from a bug in this file; the map is
        // never left half-updated (each write is a single insert/remove), so keep going.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl CanonStore for MemoryStore {
    fn commit(&self, writes: Vec<CanonWrite>, done: Completion) {
        let result = self.lock().apply(writes);
        done(result);
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().get(key))
    }

    fn scan_prefix(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self.lock().scan_prefix(prefix, after, limit))
    }
}
