//! [`StateMachineStore`]: openraft's `RaftStateMachine` over [`KvState`].
//!
//! Persistence choice: the applied state lives in memory and is made durable by snapshots,
//! not by writing every apply to redb. The log already holds every applied request durably,
//! and openraft re-applies the log after the last snapshot on restart (up to the `committed`
//! hint the log store keeps, or once the leader commits again). Writing the state on each
//! apply would cost a second fsync per entry for nothing the log does not already guarantee.
//! The price is replay time after a restart, bounded by openraft's snapshot policy.
//!
//! The current snapshot is stored in the `sm_snapshot` table of the same redb file (meta as
//! JSON, data as bytes, one fsynced transaction), so it survives restart; [`crate::open`]
//! restores the state from it. A snapshot's data is JSON of its last applied log id, its
//! membership and the whole [`KvState`].
//!
//! [`StateReader`] serves reads (`get`, `range`, `lease`) from the applied state; it holds no
//! database handle, so dropping the raft node closes the file.

use std::fmt::Debug;
use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::state::KvState;
use crate::types::{LeaseInfo, NodeInfo, Response};
use crate::TypeConfig;

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_snapshot");
const KEY_META: &str = "meta";
const KEY_DATA: &str = "data";

type StorageResult<T> = Result<T, StorageError<u64>>;

/// A stored snapshot: its meta and its data.
type StoredSnapshot = (SnapshotMeta<u64, NodeInfo>, Vec<u8>);

/// What has been applied: the state and where it stands in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, NodeInfo>,
    state: KvState,
}

/// The state machine; cloning gives another handle on the same state and database.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    applied: Arc<RwLock<Applied>>,
    /// Woken after every apply (see [`StateReader::wait_applied`]).
    applied_changed: Arc<tokio::sync::Notify>,
}

impl Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore").finish_non_exhaustive()
    }
}

/// A read handle on the applied state (no database handle).
#[derive(Clone)]
pub struct StateReader {
    applied: Arc<RwLock<Applied>>,
    applied_changed: Arc<tokio::sync::Notify>,
}

impl Debug for StateReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateReader").finish_non_exhaustive()
    }
}

fn read_lock(applied: &RwLock<Applied>) -> RwLockReadGuard<'_, Applied> {
    applied.read().expect("state lock poisoned: a panic while applying leaves no trustworthy state")
}

fn write_lock(applied: &RwLock<Applied>) -> RwLockWriteGuard<'_, Applied> {
    applied.write().expect("state lock poisoned: a panic while applying leaves no trustworthy state")
}

impl StateReader {
    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        read_lock(&self.applied).state.get(key).map(<[u8]>::to_vec)
    }

    /// See [`KvState::range`].
    pub fn range(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        read_lock(&self.applied).state.range(prefix, after, limit)
    }

    /// The state of lease `name`.
    pub fn lease(&self, name: &str) -> Option<LeaseInfo> {
        read_lock(&self.applied).state.lease(name).cloned()
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId<u64>> {
        read_lock(&self.applied).last_applied
    }

    /// The index applied so far (0: nothing).
    pub fn applied_index(&self) -> u64 {
        read_lock(&self.applied).last_applied.map_or(0, |id| id.index)
    }

    /// Waits until `index` is applied, at most `timeout`; returns whether it was.
    ///
    /// Waiters queue on one `Notify`, woken in order. (Not the metrics `watch` channel: tokio
    /// spreads a watch's waiters over shards chosen at random, so their wake order is not
    /// reproducible in the simulator.)
    pub async fn wait_applied(&self, index: u64, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            let notified = self.applied_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.applied_index() >= index {
                return true;
            }
            tokio::select! {
                biased;
                () = &mut notified => {}
                () = &mut deadline => return self.applied_index() >= index,
            }
        }
    }

    /// A copy of the whole state (for tests and checkers; it clones everything).
    pub fn state(&self) -> KvState {
        read_lock(&self.applied).state.clone()
    }
}

impl StateMachineStore {
    /// Wraps `db`, creating the snapshot table if missing and restoring the state from the
    /// stored snapshot if there is one.
    pub fn new(db: Arc<Database>) -> Result<Self, Error> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            txn.open_table(SNAPSHOT)?;
        }
        txn.commit()?;
        let store = Self { db, applied: Arc::default(), applied_changed: Arc::default() };
        if let Some((meta, data)) = store.load_snapshot()? {
            let applied = decode_body(&meta, &data)?;
            *write_lock(&store.applied) = applied;
        }
        Ok(store)
    }

    /// A read handle on the applied state.
    pub fn reader(&self) -> StateReader {
        StateReader { applied: Arc::clone(&self.applied), applied_changed: Arc::clone(&self.applied_changed) }
    }

    fn load_snapshot(&self) -> Result<Option<StoredSnapshot>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOT)?;
        let (Some(meta), Some(data)) = (table.get(KEY_META)?, table.get(KEY_DATA)?) else {
            return Ok(None);
        };
        let meta = serde_json::from_slice(meta.value()).map_err(|source| Error::Corrupt { what: "snapshot meta", source })?;
        Ok(Some((meta, data.value().to_vec())))
    }

    fn store_snapshot(&self, meta: &SnapshotMeta<u64, NodeInfo>, data: &[u8]) -> Result<(), Error> {
        let meta = serde_json::to_vec(meta).map_err(|source| Error::Corrupt { what: "snapshot meta", source })?;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut table = txn.open_table(SNAPSHOT)?;
            table.insert(KEY_META, meta.as_slice())?;
            table.insert(KEY_DATA, data)?;
        }
        txn.commit()?;
        Ok(())
    }
}

/// Decodes snapshot data and checks it against its meta.
fn decode_body(meta: &SnapshotMeta<u64, NodeInfo>, data: &[u8]) -> Result<Applied, Error> {
    let applied: Applied =
        serde_json::from_slice(data).map_err(|source| Error::Corrupt { what: "snapshot data", source })?;
    if applied.last_applied != meta.last_log_id || applied.membership != meta.last_membership {
        return Err(Error::Corrupt {
            what: "snapshot data",
            source: serde::de::Error::custom("snapshot data disagrees with its meta"),
        });
    }
    Ok(applied)
}

/// Runs CPU-heavy `work` without holding up the tasks of a multi-threaded runtime's worker
/// (`block_in_place` hands them to another worker); inline elsewhere (the simulator's
/// single-threaded runtimes, where it must stay deterministic).
fn off_the_runtime<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
        _ => work(),
    }
}

fn snapshot_id(last_applied: &Option<LogId<u64>>) -> String {
    match last_applied {
        Some(log_id) => format!("{}-{}", log_id.leader_id, log_id.index),
        None => "empty".to_owned(),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        // A copy taken under the lock, encoded without it: encoding a large state takes
        // seconds, and applies (every write of the region) wait for this lock.
        let applied = read_lock(&self.applied).clone();
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
            snapshot_id: snapshot_id(&applied.last_applied),
        };
        let data = off_the_runtime(|| serde_json::to_vec(&applied)).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        drop(applied);
        self.store_snapshot(&meta, &data)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<u64>>, StoredMembership<u64, NodeInfo>)> {
        let applied = read_lock(&self.applied);
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut applied = write_lock(&self.applied);
        let mut responses = Vec::new();
        for entry in entries {
            if let Some(last) = applied.last_applied {
                assert!(entry.log_id.index > last.index, "entries are applied in log order, once");
            }
            applied.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::Noop,
                EntryPayload::Normal(request) => applied.state.apply_owned(entry.log_id.index, request),
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Response::Noop
                }
            };
            responses.push(response);
        }
        drop(applied);
        self.applied_changed.notify_waiters();
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let installed =
            decode_body(meta, &data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.store_snapshot(meta, &data)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        *write_lock(&self.applied) = installed;
        self.applied_changed.notify_waiters();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let stored = self.load_snapshot().map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}
