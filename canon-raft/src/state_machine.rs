//! [`StateMachineStore`]: openraft's `RaftStateMachine` over the state's tables on disk.
//!
//! Persistence: every call to `apply` writes its entries' effects and the new last applied log
//! id in one redb transaction, committed without fsync (`Durability::None`). The state has a
//! file of its own ([`crate::STATE_FILE_NAME`]; the log is the write-ahead log of
//! [`crate::wal`]), fsynced every [`STATE_SYNC_EVERY`]th apply, every snapshot and every
//! install; a crash loses at most the applies since, whose entries the log still holds, and
//! openraft applies them again after the restart from the last applied log id it reads here.
//! Fsyncing the state on each apply would cost I/O for nothing the log does not already
//! guarantee. The log is purged only up to a snapshot, and building a snapshot is an fsynced
//! commit of the state: the state on disk is always at or past the purged log. The simulator
//! runs the same code on in-memory files.
//!
//! Memory: the state lives in the tables (see [`crate::disk`]); what a node keeps in memory
//! is redb's page cache, whose size is set when the file is opened ([`crate::open_with`]).
//!
//! Snapshots (see [`crate::snapshot`]): the state file is the snapshot. A build is one fsynced
//! commit, whatever the state's size; only a snapshot that is sent is written out, from one
//! read transaction while applies go on, into pages in the same file that go with the stream.
//! A received one is installed into staging tables in bounded transactions and swapped in with
//! one fsynced commit. (Until 2026-11-30 every build wrote the whole state out: at 256 writers
//! of new keys, builds of 0.3–0.6 s every few seconds on every voter at once, 121 MB of state
//! file for 18 MB of records, and the canon's p99 at ten times its p50.)
//!
//! Older stores (format 1: the state in memory, saved as one JSON snapshot) are migrated when
//! opened: the snapshot's state is written to the tables once.
//!
//! [`StateReader`] serves reads (`get`, `range`, `lease`) from the tables through a weak
//! handle on the database, so dropping the raft node closes the file.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};

use crate::disk::{self, AppliedMeta, DiskTables, Names};
use crate::error::Error;
use crate::snapshot::{self, SnapshotStream, PAGES_PREFIX};
use crate::snapshot_schedule::{Schedule, SnapshotEvery};
use crate::state::KvState;
use crate::types::{LeaseInfo, NodeInfo, Response};
use crate::TypeConfig;

/// Format 1's snapshot table: meta and data as JSON.
const V1_SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_snapshot");
const V1_KEY_META: &str = "meta";
const V1_KEY_DATA: &str = "data";

type StorageResult<T> = Result<T, StorageError<u64>>;

/// Format 1's snapshot data: the whole state and where it stood in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct V1Applied {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, NodeInfo>,
    state: KvState,
}

/// The state machine; cloning gives another handle on the same state and database.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    /// A copy of what `sm_meta` says, kept in step with every commit that changes it.
    applied: Arc<RwLock<AppliedMeta>>,
    /// Woken after every apply (see [`StateReader::wait_applied`]).
    applied_changed: Arc<tokio::sync::Notify>,
    /// The number of the next snapshot page table.
    next_pages: Arc<AtomicU64>,
    /// Applies committed without fsync since the last fsynced one.
    unsynced: Arc<AtomicU64>,
    /// When the next snapshot is due (see [`crate::snapshot_schedule`]).
    schedule: Arc<Schedule>,
}

/// With the state in a file of its own, every this many applies one is committed with fsync
/// (so redb reuses freed pages and a restart replays a bounded part of the log; snapshots and
/// installs are fsynced too).
pub const STATE_SYNC_EVERY: u64 = 100;

impl Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore").finish_non_exhaustive()
    }
}

/// A read handle on the applied state (a weak database handle).
#[derive(Clone)]
pub struct StateReader {
    db: Weak<Database>,
    applied: Arc<RwLock<AppliedMeta>>,
    applied_changed: Arc<tokio::sync::Notify>,
}

impl Debug for StateReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateReader").finish_non_exhaustive()
    }
}

fn read_lock(applied: &RwLock<AppliedMeta>) -> RwLockReadGuard<'_, AppliedMeta> {
    applied.read().expect("applied meta lock poisoned: a panic while applying leaves no trustworthy state")
}

fn write_lock(applied: &RwLock<AppliedMeta>) -> RwLockWriteGuard<'_, AppliedMeta> {
    applied.write().expect("applied meta lock poisoned: a panic while applying leaves no trustworthy state")
}

impl StateReader {
    fn disk(&self) -> Result<disk::DiskReader, Error> {
        let db = self.db.upgrade().ok_or(Error::Closed)?;
        Ok(disk::DiskReader::new(db.begin_read()?))
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.disk()?.get(key)
    }

    /// See [`KvState::range`].
    pub fn range(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<disk::KeyValues, Error> {
        self.disk()?.range(prefix, after, limit)
    }

    /// The state of lease `name`.
    pub fn lease(&self, name: &str) -> Result<Option<LeaseInfo>, Error> {
        self.disk()?.lease(name)
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

    /// A copy of the whole state in memory (for tests and checkers: it reads everything, and
    /// checks the usage table against the records).
    pub fn state(&self) -> Result<KvState, Error> {
        self.disk()?.state()
    }

    /// The bytes (keys and values) of the records that count for `tenant`
    /// (`vcos_actors::quota::counted_tenant`), kept as writes are applied.
    pub fn usage(&self, tenant: &[u8]) -> Result<u64, Error> {
        self.disk()?.usage(tenant)
    }
}

impl StateMachineStore {
    /// Wraps `db`: creates the tables if missing, migrates a format 1 store, refuses a newer
    /// format, and drops what an interrupted snapshot build or install left.
    pub fn new(db: Arc<Database>) -> Result<Self, Error> {
        Self::open(db, None)
    }

    /// Like [`StateMachineStore::new`], migrating a format 1 store whose snapshot sits in the
    /// older log file `log_db`, when there is one.
    pub fn open(db: Arc<Database>, log_db: Option<&Database>) -> Result<Self, Error> {
        let mut legacy = match log_db {
            Some(log_db) => read_v1_from(log_db)?,
            None => None,
        };
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let meta = {
            let live = Names::live();
            let mut meta_table = txn.open_table(disk::META)?;
            let format = match meta_table.get(disk::KEY_FORMAT)? {
                Some(bytes) => Some(
                    <[u8; 8]>::try_from(bytes.value())
                        .map(u64::from_be_bytes)
                        .map_err(|_| Error::CorruptRecord { what: "format version", reason: "not 8 bytes".into() })?,
                ),
                None => None,
            };
            match format {
                Some(disk::FORMAT_VERSION) => {}
                Some(2) => {
                    // Format 2 had no usage table: count the records once.
                    let mut tables = DiskTables::open(&txn, &live, 0)?;
                    tables.recount_usage()?;
                    tables.finish()?;
                    meta_table.insert(disk::KEY_FORMAT, disk::FORMAT_VERSION.to_be_bytes().as_slice())?;
                    tracing::info!("canon store migrated from format 2 to 3: each tenant's stored bytes counted from its records");
                }
                Some(found) => return Err(Error::Format { found, expected: disk::FORMAT_VERSION }),
                None => {
                    let mut tables = DiskTables::open(&txn, &live, 0)?;
                    let v1 = match log_db {
                        Some(_) => legacy.take(),
                        None => read_v1(&txn.open_table(V1_SNAPSHOT)?)?,
                    };
                    if let Some(v1) = v1 {
                        migrate_v1(&mut tables, &mut meta_table, v1)?;
                    }
                    tables.finish()?;
                    meta_table.insert(disk::KEY_FORMAT, disk::FORMAT_VERSION.to_be_bytes().as_slice())?;
                }
            }
            // The live tables exist from here on (readers open them without writing).
            drop(DiskTables::open(&txn, &live, 0)?);
            // Where an older build kept its last snapshot's pages: the state is the snapshot
            // now, so they go with the other page tables below.
            meta_table.remove(disk::KEY_SNAPSHOT)?;
            disk::read_meta(&meta_table)?
        };
        txn.delete_table(V1_SNAPSHOT)?;
        // Page tables (of snapshots being sent or received when the process stopped, or an
        // older build's stored snapshots) and staging tables of an install that did not finish.
        let mut highest = 0u64;
        let mut stale = Vec::new();
        for table in txn.list_tables()? {
            let name = table.name().to_owned();
            if let Some(number) = name.strip_prefix(PAGES_PREFIX).and_then(|n| n.parse::<u64>().ok()) {
                highest = highest.max(number);
                stale.push(name);
            } else if name.ends_with(disk::STAGING_SUFFIX) {
                stale.push(name);
            }
        }
        for name in stale {
            txn.delete_table(TableDefinition::<&[u8], &[u8]>::new(&name))?;
        }
        txn.commit()?;
        if let Some(log_db) = log_db {
            // Migrated (now or on an earlier open): the old snapshot goes.
            let mut txn = log_db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.delete_table(V1_SNAPSHOT)?;
            txn.commit()?;
        }
        Ok(Self {
            db,
            applied: Arc::new(RwLock::new(meta)),
            applied_changed: Arc::default(),
            next_pages: Arc::new(AtomicU64::new(highest + 1)),
            unsynced: Arc::default(),
            schedule: Arc::default(),
        })
    }

    /// Sets how far apart this store's snapshots are built (see [`crate::snapshot_schedule`];
    /// it takes effect where openraft's own policy is `Never`, as [`crate::CanonNode`] sets it).
    pub fn set_snapshot_every(&self, every: SnapshotEvery) {
        self.schedule.set_every(every);
    }

    pub(crate) fn schedule(&self) -> Arc<Schedule> {
        Arc::clone(&self.schedule)
    }

    /// A read handle on the applied state.
    pub fn reader(&self) -> StateReader {
        StateReader {
            db: Arc::downgrade(&self.db),
            applied: Arc::clone(&self.applied),
            applied_changed: Arc::clone(&self.applied_changed),
        }
    }

    fn apply_entries(&self, entries: Vec<Entry<TypeConfig>>) -> Result<Vec<Response>, Error> {
        let mut meta = read_lock(&self.applied).clone();
        let mut responses = Vec::with_capacity(entries.len());
        let sync = self.unsynced.fetch_add(1, Ordering::Relaxed) + 1 >= STATE_SYNC_EVERY;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if sync { Durability::Immediate } else { Durability::None })?;
        {
            let mut tables = DiskTables::open(&txn, &Names::live(), meta.canon_index)?;
            for entry in entries {
                if let Some(last) = meta.last_applied {
                    assert!(entry.log_id.index > last.index, "entries are applied in log order, once");
                }
                meta.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Response::Noop,
                    EntryPayload::Normal(request) => crate::state::apply_owned(&mut tables, entry.log_id.index, request)?,
                    EntryPayload::Membership(membership) => {
                        meta.membership = StoredMembership::new(Some(entry.log_id), membership);
                        Response::Noop
                    }
                };
                responses.push(response);
            }
            meta.canon_index = crate::state::Tables::canon_index(&tables);
            if self.schedule.note(tables.writes()) {
                self.schedule.check(tables.records()?);
            }
            tables.finish()?;
            disk::write_meta(&mut txn.open_table(disk::META)?, &meta)?;
        }
        txn.commit()?;
        if sync {
            self.unsynced.store(0, Ordering::Relaxed);
        }
        *write_lock(&self.applied) = meta;
        Ok(responses)
    }

    /// The snapshot openraft sends: the live state as a read transaction opened now sees it
    /// (written out only if it is read); `None` before anything was applied.
    fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, Error> {
        let read = self.db.begin_read()?;
        let state = disk::read_meta(&read.open_table(disk::META)?)?;
        if state.last_applied.is_none() {
            return Ok(None);
        }
        Ok(Some(self.live_snapshot(read, state)))
    }

    fn live_snapshot(&self, read: redb::ReadTransaction, state: AppliedMeta) -> Snapshot<TypeConfig> {
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership,
            snapshot_id: snapshot_id(&state.last_applied),
        };
        let table = format!("{PAGES_PREFIX}{}", self.next_pages.fetch_add(1, Ordering::Relaxed));
        Snapshot { meta, snapshot: Box::new(SnapshotStream::live(Arc::clone(&self.db), read, table)) }
    }

    fn build(&self) -> Result<Snapshot<TypeConfig>, Error> {
        let built = self.build_current();
        self.schedule.built(built.is_ok());
        built
    }

    /// Builds a snapshot: the state file is the snapshot, so this makes it durable (one fsynced
    /// commit, whatever its size) and says where it stands. The read transaction is opened
    /// while this commit holds redb's write lock, so no apply lands between the state it sees
    /// and the state made durable: the snapshot's meta is exactly what is on disk, and openraft
    /// may purge the log behind it.
    fn build_current(&self) -> Result<Snapshot<TypeConfig>, Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let read = self.db.begin_read()?;
        let state = disk::read_meta(&read.open_table(disk::META)?)?;
        disk::write_meta(&mut txn.open_table(disk::META)?, &state)?;
        txn.commit()?;
        self.unsynced.store(0, Ordering::Relaxed);
        Ok(self.live_snapshot(read, state))
    }

    fn install(&self, meta: &SnapshotMeta<u64, NodeInfo>, stream: &mut SnapshotStream) -> Result<(), Error> {
        let (table, len) = match stream.received()? {
            Some(received) => received,
            None => {
                let table = format!("{PAGES_PREFIX}{}", self.next_pages.fetch_add(1, Ordering::Relaxed));
                let mut copy = snapshot::PageWriter::new(Arc::clone(&self.db), table.clone());
                stream.copy_into(&mut copy)?;
                (table, copy.finish()?)
            }
        };
        let installed = match snapshot::install_into_staging(&self.db, &table, len) {
            Ok(installed) => installed,
            Err(e) => {
                // Nothing of it is kept: neither its staging tables nor its pages.
                let _ = snapshot::clear_staging(&self.db);
                let _ = snapshot::drop_pages(&self.db, &table);
                return Err(e);
            }
        };
        if installed.last_applied != meta.last_log_id || installed.membership != meta.last_membership {
            let _ = snapshot::clear_staging(&self.db);
            let _ = snapshot::drop_pages(&self.db, &table);
            return Err(Error::CorruptRecord { what: "snapshot", reason: "its data disagrees with its meta".into() });
        }
        // One fsynced transaction: the staging tables become the live ones, the meta follows,
        // the received stream becomes the current snapshot.
        let live = Names::live();
        let staging = Names::staging();
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            txn.delete_table(live.kv())?;
            txn.delete_table(live.leases())?;
            txn.delete_table(live.clients())?;
            txn.delete_table(live.age())?;
            txn.delete_table(live.usage())?;
            // Tables an install left empty were never created; create them to rename them.
            drop(DiskTables::open(&txn, &staging, 0)?);
            txn.rename_table(staging.kv(), live.kv())?;
            txn.rename_table(staging.leases(), live.leases())?;
            txn.rename_table(staging.clients(), live.clients())?;
            txn.rename_table(staging.age(), live.age())?;
            txn.rename_table(staging.usage(), live.usage())?;
            let mut meta_table = txn.open_table(disk::META)?;
            disk::write_meta(&mut meta_table, &installed)?;
            drop(meta_table);
            // Installed, the state is the snapshot: the received stream's pages go.
            txn.delete_table(snapshot::pages_table(&table))?;
        }
        txn.commit()?;
        *write_lock(&self.applied) = installed;
        self.schedule.built(true);
        Ok(())
    }

}

/// Format 1's stored snapshot in `log_db`, if it holds one.
fn read_v1_from(log_db: &Database) -> Result<Option<V1Applied>, Error> {
    let txn = log_db.begin_read()?;
    match txn.open_table(V1_SNAPSHOT) {
        Ok(table) => read_v1(&table),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Format 1's stored snapshot, if this table holds one.
fn read_v1(table: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Option<V1Applied>, Error> {
    let (Some(meta), Some(data)) = (table.get(V1_KEY_META)?, table.get(V1_KEY_DATA)?) else {
        return Ok(None);
    };
    let meta: SnapshotMeta<u64, NodeInfo> =
        serde_json::from_slice(meta.value()).map_err(|source| Error::Corrupt { what: "snapshot meta", source })?;
    let applied: V1Applied =
        serde_json::from_slice(data.value()).map_err(|source| Error::Corrupt { what: "snapshot data", source })?;
    if applied.last_applied != meta.last_log_id || applied.membership != meta.last_membership {
        return Err(Error::CorruptRecord { what: "snapshot data", reason: "it disagrees with its meta".into() });
    }
    Ok(Some(applied))
}

/// Writes a format 1 snapshot's state into the tables.
fn migrate_v1(
    tables: &mut DiskTables<'_>,
    meta_table: &mut redb::Table<'_, &'static str, &'static [u8]>,
    v1: V1Applied,
) -> Result<(), Error> {
    let parts = v1.state.into_parts();
    for (key, value) in &parts.kv {
        tables.put_kv(key, value)?;
    }
    for (name, lease) in &parts.leases {
        tables.put_lease(name, &disk::encode_lease(lease))?;
    }
    for (id, seq, applied_index, response) in &parts.clients {
        tables.put_client_record(*id, &disk::encode_client(*seq, *applied_index, response))?;
    }
    let meta = AppliedMeta { last_applied: v1.last_applied, membership: v1.membership, canon_index: parts.canon_index };
    disk::write_meta(meta_table, &meta)?;
    tracing::info!(keys = parts.kv.len(), "canon store migrated from format 1 (state in memory) to format 2 (state on disk)");
    Ok(())
}

/// Runs heavy `work` without holding up the tasks of a multi-threaded runtime's worker
/// (`block_in_place` hands them to another worker); inline elsewhere (the simulator's
/// single-threaded runtimes, where it must stay deterministic).
pub(crate) fn off_the_runtime<T>(work: impl FnOnce() -> T) -> T {
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
        off_the_runtime(|| self.build()).map_err(|e| StorageIOError::write_snapshot(None, &e).into())
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
        let responses = self.apply_entries(entries.into_iter().collect()).map_err(|e| StorageIOError::write_state_machine(&e))?;
        self.applied_changed.notify_waiters();
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<SnapshotStream>> {
        let table = format!("{PAGES_PREFIX}{}", self.next_pages.fetch_add(1, Ordering::Relaxed));
        Ok(Box::new(SnapshotStream::writer(Arc::clone(&self.db), table)))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta<u64, NodeInfo>, mut snapshot: Box<SnapshotStream>) -> StorageResult<()> {
        off_the_runtime(|| self.install(meta, &mut snapshot))
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.applied_changed.notify_waiters();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        self.current_snapshot().map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}
