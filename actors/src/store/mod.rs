//! The `CanonStore` seam: the only way the actor layer reads or writes the Canon Memory Layer.
//!
//! The seam is a small ordered key-value interface with one twist: [`CanonWrite::Append`]
//! lets the store finish the key with the record's canon index, the position of the record in
//! the canon's single total order. That index *is* the canon timestamp: the single-node store
//! assigns it from a durable counter, the Raft store (a later crate) from its log index.
//!
//! Invariant: a `Completion` is called with `Ok` only after every write of its commit is
//! durable (fsynced, or replicated to a quorum). Callers acknowledge users from completions,
//! never earlier.
//!
//! Guards: a commit may carry [`CanonWrite::Expect`]s. All of them are checked against the
//! state *before* the commit (after every earlier commit, those of the same group commit
//! included; never against the commit's own writes, wherever the guard sits in it). If one
//! fails, nothing of the commit is applied and it completes with [`StoreError::Conflict`];
//! other commits of the same group are not affected. This is what lets several nodes that
//! share one canon region advance a shared counter without a lease (read, then write guarded
//! by the value read, retry on conflict).

mod memory;
mod redb_store;

pub use memory::{MemoryStore, OrderedKv};
pub use redb_store::{RedbStore, CACHE_BYTES_DEFAULT};

/// Errors from a canon store.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The write queue is full: back off and retry.
    #[error("write queue full")]
    Overloaded,
    /// The underlying storage failed (I/O, fsync, disk full).
    #[error("storage failure: {0}")]
    Io(String),
    /// The store has been closed.
    #[error("store closed")]
    Closed,
    /// A guard ([`CanonWrite::Expect`]) of the commit failed: `key` did not hold the expected
    /// value. Nothing of the commit was applied; read again and retry.
    #[error("conflict: {key} changed")]
    Conflict {
        /// The key whose guard failed (the first one, in the commit's order).
        key: String,
    },
    /// The replicated store has no quorum right now (the commit did not complete by its
    /// deadline): retry later. A commit that ended so may still be applied.
    #[error("canon unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded.
    #[error("corrupt record at {key}: {reason}")]
    Corrupt {
        /// Which key.
        key: String,
        /// What was wrong.
        reason: String,
    },
}

/// One write inside an atomic commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CanonWrite {
    /// Set `key` to `value`.
    Put {
        /// Full key.
        key: String,
        /// Encoded record.
        value: Vec<u8>,
    },
    /// Remove `key` (absent is fine).
    Delete {
        /// Full key.
        key: String,
    },
    /// Store `value` under `prefix` followed by the record's canon index, zero-padded to 20
    /// digits so that a prefix scan returns records in canon order.
    Append {
        /// Key prefix, normally ending in `/`.
        prefix: String,
        /// Encoded record.
        value: Vec<u8>,
    },
    /// A guard, not a write: the commit applies only if `key` holds exactly `value` (`None`:
    /// the key is absent) before the commit; otherwise nothing of it is applied and it
    /// completes with [`StoreError::Conflict`].
    Expect {
        /// Full key.
        key: String,
        /// The value the key must hold; `None`: it must be absent.
        value: Option<Vec<u8>>,
    },
}

impl CanonWrite {
    /// Encoded size, for batch limits.
    pub fn len_bytes(&self) -> usize {
        match self {
            Self::Put { key, value } => key.len() + value.len(),
            Self::Delete { key } => key.len(),
            Self::Append { prefix, value } => prefix.len() + 20 + value.len(),
            Self::Expect { key, value } => key.len() + value.as_ref().map_or(0, Vec::len),
        }
    }
}

/// The first guard of `writes` that the state before the commit does not meet; `holds(key,
/// value)` says whether `key` holds `value` there (`None`: absent).
pub(crate) fn failed_guard<'a, E>(
    writes: &'a [CanonWrite],
    mut holds: impl FnMut(&str, Option<&[u8]>) -> Result<bool, E>,
) -> Result<Option<&'a str>, E> {
    for write in writes {
        if let CanonWrite::Expect { key, value } = write {
            if !holds(key, value.as_deref())? {
                return Ok(Some(key));
            }
        }
    }
    Ok(None)
}

/// Called once with the canon index of the commit's last record, after the commit is durable.
pub type Completion = Box<dyn FnOnce(Result<u64, StoreError>) + Send>;

/// Key under which an appended record lands.
pub fn appended_key(prefix: &str, index: u64) -> String {
    let mut key = String::with_capacity(prefix.len() + crate::records::PADDED_U64_LEN);
    key.push_str(prefix);
    crate::records::push_padded_u64(&mut key, index);
    key
}

/// The canon index encoded at the end of an appended record's key.
pub fn index_of_appended_key(key: &str) -> Option<u64> {
    key.len()
        .checked_sub(20)
        .and_then(|start| key.get(start..))
        .and_then(|digits| digits.parse().ok())
}

/// The durable record of the node: see the module docs for the contract.
pub trait CanonStore: Send + Sync + 'static {
    /// Applies `writes` atomically and calls `done` once they are durable (or failed).
    /// Never blocks: a full queue completes at once with [`StoreError::Overloaded`].
    /// An empty commit is a barrier: it completes after every earlier commit is durable (a store
    /// may flush right away for it).
    fn commit(&self, writes: Vec<CanonWrite>, done: Completion);
    /// Reads one key.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Reads up to `limit` keys starting with `prefix`, in key order, strictly after `after`.
    fn scan_prefix(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// The bytes (keys and values) of every record that counts for `tenant`
    /// ([`crate::quota::counted_tenant`]), if this store keeps that sum as it applies writes;
    /// `Ok(None)` if it does not, and the caller reads the records to sum them.
    fn stored_bytes(&self, tenant: &crate::ids::TenantId) -> Result<Option<u64>, StoreError> {
        let _ = tenant;
        Ok(None)
    }
}

/// Commits and waits for durability.
pub async fn commit_durable(
    store: &dyn CanonStore,
    writes: Vec<CanonWrite>,
) -> Result<u64, StoreError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    store.commit(
        writes,
        Box::new(move |result| {
            // The receiver may have given up (caller dropped); the commit still happened.
            let _ = tx.send(result);
        }),
    );
    rx.await.unwrap_or(Err(StoreError::Closed))
}

/// Commits and blocks the current (non-async) thread until durable.
pub fn commit_durable_blocking(
    store: &dyn CanonStore,
    writes: Vec<CanonWrite>,
) -> Result<u64, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    store.commit(
        writes,
        Box::new(move |result| {
            let _ = tx.send(result);
        }),
    );
    rx.recv().unwrap_or(Err(StoreError::Closed))
}

#[cfg(test)]
mod contract_tests;
