//! [`LogStore`]: openraft's `RaftLogStorage` (storage v2) on the write-ahead log of
//! [`crate::wal`].
//!
//! Appends, truncations, purges and votes are durable before they return, and the append
//! callback runs only after the append's fsync returned. `committed` is a hint openraft uses to
//! re-apply on restart (a lost or older one is only a lower hint): `save_committed` keeps it in
//! memory and the next append writes it in the same write, so a commit costs one write and one
//! fsync.
//!
//! The log's calls block on the disk; they run on the calling task (openraft drives the log
//! from its own task, one call at a time). Readers (replication) share the log's index behind
//! a mutex that an append holds only to prepare and to publish, not through its fsync.
//!
//! Older stores kept the log in a redb file ([`crate::DB_FILE_NAME`]): [`migrate_redb_log`]
//! copies it into a new log once.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::early_append::EarlyAppend;
use crate::error::Error;
use crate::wal::Wal;
use crate::wal_files::WalFiles;
use crate::TypeConfig;

type StorageResult<T> = Result<T, StorageError<u64>>;

/// The durable raft log and vote. Cloning gives another handle on the same log.
#[derive(Clone)]
pub struct LogStore {
    wal: Arc<Mutex<Wal>>,
    /// Held through each change of the log, fsync included, while `wal` is held only to read
    /// or update the index: readers (replication) never wait for the disk.
    writer: Arc<Mutex<()>>,
    /// Sends a leader's new entries to the voters during its fsync (set once the group's Raft
    /// runs; see [`crate::early_append`]).
    early: Arc<OnceLock<Arc<EarlyAppend>>>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens the log kept in `files` (recovering it; see [`crate::wal`]).
    pub fn open(files: Arc<dyn WalFiles>) -> Result<Self, Error> {
        Self::open_with_segment_bytes(files, crate::wal::SEGMENT_BYTES)
    }

    /// Like [`LogStore::open`], starting a new segment at `segment_bytes`.
    pub fn open_with_segment_bytes(files: Arc<dyn WalFiles>, segment_bytes: u64) -> Result<Self, Error> {
        Ok(Self {
            wal: Arc::new(Mutex::new(Wal::open_with_segment_bytes(files, segment_bytes)?)),
            writer: Arc::default(),
            early: Arc::default(),
        })
    }

    /// From now on, appends made as the leader go to the voters while their fsync runs.
    pub(crate) fn send_early(&self, early: Arc<EarlyAppend>) {
        // Set once, when the group opens.
        let _ = self.early.set(early);
    }

    fn wal(&self) -> MutexGuard<'_, Wal> {
        self.wal.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends with the log's index held only to prepare and to publish, not through the
    /// write and its fsync.
    fn append_entries(&self, entries: impl IntoIterator<Item = Entry<TypeConfig>>) -> Result<(), Error> {
        let _writer = self.writer();
        let (pending, files, early) = match self.early.get() {
            Some(early) => {
                let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
                let mut wal = self.wal();
                let plan = early.plan(&entries, wal.last_log_id(), wal.committed());
                (wal.prepare_append(entries)?, wal.files(), plan)
            }
            None => {
                let mut wal = self.wal();
                (wal.prepare_append(entries)?, wal.files(), None)
            }
        };
        let Some(pending) = pending else { return Ok(()) };
        let written = pending.write_then_sync(&*files, || {
            if let Some(plan) = early {
                plan.send();
            }
        });
        self.wal().finish_append(pending, written)
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
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        self.wal().entries(start, end).map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let wal = self.wal();
        Ok(LogState { last_purged_log_id: wal.last_purged(), last_log_id: wal.last_log_id() })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        let _writer = self.writer();
        self.wal().save_vote(*vote).map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        Ok(self.wal().vote())
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        self.wal().save_committed(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        Ok(self.wal().committed())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let appended = self.append_entries(entries);
        match appended {
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
        let _writer = self.writer();
        self.wal().truncate(log_id.index).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let _writer = self.writer();
        self.wal().purge(log_id).map_err(write_err)
    }
}

const LEGACY_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const LEGACY_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

fn legacy_meta<T: serde::de::DeserializeOwned>(table: &redb::ReadOnlyTable<&'static str, &'static [u8]>, key: &str) -> Result<Option<T>, Error> {
    match table.get(key)? {
        Some(bytes) => Ok(Some(serde_json::from_slice(bytes.value()).map_err(|source| Error::Corrupt { what: "raft meta", source })?)),
        None => Ok(None),
    }
}

/// Copies the log an older store kept in redb (`db`) into a new log in `files` (which must be
/// empty): vote, last purged id, commit hint and entries. The caller makes `files` the live log
/// only once this returned (see [`crate::open_with`]).
pub fn migrate_redb_log(db: &Database, files: Arc<dyn WalFiles>) -> Result<(), Error> {
    let mut wal = Wal::open(files)?;
    let txn = db.begin_read()?;
    let meta = match txn.open_table(LEGACY_META) {
        Ok(table) => Some(table),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(meta) = &meta {
        if let Some(vote) = legacy_meta::<Vote<u64>>(meta, "vote")? {
            wal.save_vote(vote)?;
        }
        if let Some(purged) = legacy_meta::<LogId<u64>>(meta, "last_purged")? {
            wal.purge(purged)?;
        }
        if let Some(committed) = legacy_meta::<Option<LogId<u64>>>(meta, "committed")? {
            wal.save_committed(committed);
        }
    }
    let log = match txn.open_table(LEGACY_LOG) {
        Ok(table) => Some(table),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(log) = log {
        let mut batch = Vec::new();
        for item in log.iter()? {
            let (index, bytes) = item?;
            let index = index.value();
            let entry = crate::wire::decode_entry(bytes.value()).map_err(|e| Error::CorruptEntry { index, reason: e.to_string() })?;
            batch.push(entry);
            if batch.len() == 1024 {
                wal.append(std::mem::take(&mut batch))?;
            }
        }
        wal.append(batch)?;
    }
    Ok(())
}
