//! [`LogStore`]: openraft's `RaftLogStorage` (storage v2) on redb.
//!
//! Tables (in the one redb file [`crate::open`] creates):
//! - `raft_log`: log index → the entry in its rkyv form (`wire::encode_entry`, validated on
//!   read). The key is redb's `u64` key type, which orders
//!   numerically (the order of big-endian bytes), so ranges and `last()` follow the log;
//! - `raft_meta`: `vote`, `last_purged`, `committed` → JSON.
//!
//! Appends, votes, truncations and purges commit with `Durability::Immediate` (fsync), and
//! the append callback runs only after that commit returned. `committed` is a hint openraft
//! uses to re-apply on restart (a lost or older one is only a lower hint): `save_committed`
//! keeps it in memory and the next transaction of this store (an append, as a rule) writes it,
//! so a commit costs one redb transaction, not two. (It used to be a transaction of its own
//! without fsync, made durable by the next fsynced one: the same durability, one more commit
//! of pages; about 4 % of the CPU of a one-voter commit.) A purge records `last_purged` in the
//! same transaction that deletes the entries, so recovery always knows where the log starts.
//!
//! redb calls block; they run on the calling task (openraft drives the log from its own task).
//! Moving them to a writer thread with group commit, as `RedbStore` does, is left for later.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Error;
use crate::TypeConfig;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const KEY_VOTE: &str = "vote";
const KEY_LAST_PURGED: &str = "last_purged";
const KEY_COMMITTED: &str = "committed";

type StorageResult<T> = Result<T, StorageError<u64>>;

/// The durable raft log and vote. Cloning gives another handle on the same database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// The newest commit index openraft saved that no transaction wrote yet (`Some`), shared
    /// by the clones.
    unwritten_committed: Arc<Mutex<Option<Option<LogId<u64>>>>>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    /// Wraps `db`, creating the tables if they are missing.
    pub fn new(db: Arc<Database>) -> Result<Self, Error> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            txn.open_table(LOG)?;
            txn.open_table(META)?;
        }
        txn.commit()?;
        Ok(Self { db, unwritten_committed: Arc::default() })
    }

    fn unwritten_committed(&self) -> std::sync::MutexGuard<'_, Option<Option<LogId<u64>>>> {
        self.unwritten_committed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the commit index saved since the last transaction into `txn`; it stays pending
    /// if `txn` does not commit.
    fn write_unwritten_committed(&self, txn: &redb::WriteTransaction) -> Result<Option<Option<LogId<u64>>>, Error> {
        let pending = *self.unwritten_committed();
        if let Some(committed) = pending {
            let bytes = serde_json::to_vec(&committed).map_err(|source| Error::Corrupt { what: "raft meta", source })?;
            txn.open_table(META)?.insert(KEY_COMMITTED, bytes.as_slice())?;
        }
        Ok(pending)
    }

    /// After a commit that wrote `written`: clears it unless a newer one was saved meanwhile.
    fn committed_written(&self, written: Option<Option<LogId<u64>>>) {
        let mut pending = self.unwritten_committed();
        if written.is_some() && *pending == written {
            *pending = None;
        }
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(META)?;
        let Some(bytes) = table.get(key)? else {
            return Ok(None);
        };
        let value = serde_json::from_slice(bytes.value()).map_err(|source| Error::Corrupt { what: "raft meta", source })?;
        Ok(Some(value))
    }

    fn write_meta<T: Serialize>(&self, key: &str, value: &T, durability: Durability) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value).map_err(|source| Error::Corrupt { what: "raft meta", source })?;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)?;
        let committed = self.write_unwritten_committed(&txn)?;
        {
            let mut table = txn.open_table(META)?;
            table.insert(key, bytes.as_slice())?;
        }
        txn.commit()?;
        self.committed_written(committed);
        Ok(())
    }

    fn entries<R: RangeBounds<u64>>(&self, range: R) -> Result<Vec<Entry<TypeConfig>>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        let mut entries = Vec::new();
        for item in table.range::<u64>((range.start_bound().cloned(), range.end_bound().cloned()))? {
            let (index, bytes) = item?;
            let index = index.value();
            let entry = crate::wire::decode_entry(bytes.value()).map_err(|e| Error::CorruptEntry { index, reason: e.to_string() })?;
            if entry.log_id.index != index {
                return Err(Error::CorruptEntry { index, reason: format!("holds entry {}", entry.log_id.index) });
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    fn last_log_id(&self) -> Result<Option<LogId<u64>>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        let Some((index, bytes)) = table.last()? else {
            return Ok(None);
        };
        let index = index.value();
        let entry = crate::wire::decode_entry(bytes.value()).map_err(|e| Error::CorruptEntry { index, reason: e.to_string() })?;
        Ok(Some(entry.log_id))
    }

    fn append_entries(&self, entries: impl IntoIterator<Item = Entry<TypeConfig>>) -> Result<(), Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let committed = self.write_unwritten_committed(&txn)?;
        {
            let mut table = txn.open_table(LOG)?;
            for entry in entries {
                let index = entry.log_id.index;
                table.insert(index, crate::wire::encode_entry(entry).as_slice())?;
            }
        }
        txn.commit()?;
        self.committed_written(committed);
        Ok(())
    }

    /// Deletes entries with index `>= from`.
    fn delete_from(&self, from: u64) -> Result<(), Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let committed = self.write_unwritten_committed(&txn)?;
        {
            let mut table = txn.open_table(LOG)?;
            table.retain_in(from.., |_, _| false)?;
        }
        txn.commit()?;
        self.committed_written(committed);
        Ok(())
    }

    /// Records `log_id` as purged and deletes entries up to it, in one transaction.
    fn purge_to(&self, log_id: &LogId<u64>) -> Result<(), Error> {
        let bytes = serde_json::to_vec(log_id).map_err(|source| Error::Corrupt { what: "raft meta", source })?;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let committed = self.write_unwritten_committed(&txn)?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(KEY_LAST_PURGED, bytes.as_slice())?;
            let mut table = txn.open_table(LOG)?;
            table.retain_in(..=log_id.index, |_, _| false)?;
        }
        txn.commit()?;
        self.committed_written(committed);
        Ok(())
    }
}

fn read_err(e: Error) -> StorageError<u64> {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: Error) -> StorageError<u64> {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let range = (range.start_bound().cloned(), range.end_bound().cloned());
        let range: (Bound<u64>, Bound<u64>) = range;
        self.entries(range).map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<u64>> = self.read_meta(KEY_LAST_PURGED).map_err(read_err)?;
        let last_log_id = self.last_log_id().map_err(read_err)?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        self.write_meta(KEY_VOTE, vote, Durability::Immediate)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        self.read_meta(KEY_VOTE).map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        *self.unwritten_committed() = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        if let Some(committed) = *self.unwritten_committed() {
            return Ok(committed);
        }
        let committed: Option<Option<LogId<u64>>> = self.read_meta(KEY_COMMITTED).map_err(read_err)?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        match self.append_entries(entries) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        self.delete_from(log_id.index).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        self.purge_to(&log_id).map_err(write_err)
    }
}
