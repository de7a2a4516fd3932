//! Canon Memory Layer on openraft: the durable log store, the deterministic state machine, and
//! the connections between nodes that Raft and the cluster's messages share.
//!
//! - [`TypeConfig`]: the openraft type configuration (`NodeId = u64`, `Node = BasicNode`,
//!   `D = Request`, `R = Response`, tokio runtime, snapshots as [`snapshot::SnapshotStream`]).
//! - [`types`]: the wire types, [`Request`] (an [`Op`] with its client id and sequence number)
//!   and [`Response`].
//! - [`state`]: the pure, deterministic core (`apply` over any `Tables`): key-value map, leases
//!   with fencing epochs, client dedup. No clock: time only comes inside a request. [`KvState`]
//!   is that core on in-memory maps (tests, checkers).
//! - [`disk`]: the state's tables in redb, what a replica runs the core on: memory bounded by
//!   redb's page cache, whatever the canon's size.
//! - [`snapshot`]: snapshots built from a read transaction, stored as pages, streamed and
//!   installed chunk by chunk.
//! - [`wal`], [`log_store`]: [`LogStore`], openraft's `RaftLogStorage` on a write-ahead log
//!   of segment files, one write and one fsync per append.
//! - [`state_machine`]: [`StateMachineStore`], openraft's `RaftStateMachine` over the tables,
//!   with snapshots stored in the same redb file.
//! - [`node`]: [`CanonNode`], one process's Raft groups (its region's, and other regions' as a
//!   learner), with membership changes ([`membership`]) and health ([`health`]).
//! - [`wire`], [`transport`], `server`, [`network`], [`auth`]: the node-to-node connections —
//!   rkyv frames validated before use, one connection per peer address, the cluster secret
//!   proven first. `frame_sink` and `in_flight` keep a connection's hot path free of task
//!   hand-offs (ARCHITECTURE.md, "Connections").
//! - [`app`]: the cluster's messages between IMVUs over those same connections.
//! - [`canon_store`]: [`RaftCanonStore`], the `CanonStore` seam of the actor runtime on a group.
//!
//! [`open`] opens (or creates) one redb file under a directory and returns both stores.

use std::path::Path;
use std::sync::Arc;

pub mod app;
pub mod auth;
pub mod canon_store;
pub mod constants;
pub mod disk;
mod early_append;
pub mod error;
mod frame_sink;
pub mod health;
mod in_flight;
pub mod log_store;
pub mod membership;
pub mod node;
pub mod runtime;
mod server;
pub mod network;
pub mod snapshot;
pub mod snapshot_schedule;
pub mod state;
pub mod state_machine;
pub mod transport;
pub mod wal;
pub mod wal_files;
// rkyv's derive generates resolver types whose enum fields carry no docs; every type written
// here is documented.
#[allow(missing_docs)]
pub mod types;
#[allow(missing_docs)]
pub mod wire;

pub use app::{AppCallError, AppHandler};
pub use canon_store::RaftCanonStore;
pub use error::Error;
pub use health::{CanonHealth, GroupHealth};
pub use membership::{GroupView, MemberView};
pub use node::{CanonError, CanonNode, Group, Lag, NodeConfig};
pub use transport::{TcpTransport, Transport};
pub use log_store::LogStore;
pub use network::{CanonNetwork, PeerSet, UnreachableNetwork};
pub use state::KvState;
pub use snapshot_schedule::SnapshotEvery;
pub use state_machine::{StateMachineStore, StateReader};
pub use types::{LeaseInfo, NodeInfo, Op, Request, Response};

openraft::declare_raft_types!(
    /// The openraft type configuration of the canon layer.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = snapshot::SnapshotStream,
        AsyncRuntime = runtime::CanonRuntime,
);

/// The openraft node of the canon layer.
pub type CanonRaft = openraft::Raft<TypeConfig>;

/// The name of the redb file of the state (keys, leases, dedup table, snapshots) that [`open`]
/// creates beside the log. The state is fsynced every [`state_machine::STATE_SYNC_EVERY`]
/// applies and at snapshots, and after a crash openraft replays the log from where the state
/// file stands (never before the last snapshot, the furthest the log is purged to).
pub const STATE_FILE_NAME: &str = "canon-state.redb";

/// The directory of the Raft log (and vote) that [`open`] creates: the write-ahead log of
/// [`wal`].
pub const LOG_DIR_NAME: &str = "raft-log";

/// The redb file where older stores kept the log (and, in format 1, the state's snapshot):
/// migrated into [`LOG_DIR_NAME`] on open, then renamed with [`MIGRATED_SUFFIX`].
pub const DB_FILE_NAME: &str = "canon-raft.redb";

/// What the redb log file is renamed with once migrated (kept, not deleted: an operator may
/// go back to the older build with it until they remove it).
pub const MIGRATED_SUFFIX: &str = ".migrated";

/// Opens (or creates) the canon database under `dir` and returns its log store and state
/// machine. The state machine is restored from the last stored snapshot; openraft replays the
/// log after it.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), Error> {
    open_with(dir, constants::CACHE_BYTES_DEFAULT)
}

/// Like [`open`], with a page cache of `cache_bytes` for the state's file: with the index of
/// the log's entries since the last snapshot, it is what a group keeps in memory, however large
/// the canon grows.
pub fn open_with(dir: &Path, cache_bytes: usize) -> Result<(LogStore, StateMachineStore), Error> {
    std::fs::create_dir_all(dir).map_err(Error::Io)?;
    let state_db = open_state_file(dir, cache_bytes)?;
    let legacy_path = dir.join(DB_FILE_NAME);
    let log_dir = dir.join(LOG_DIR_NAME);
    let legacy = if legacy_path.exists() { Some(redb::Database::open(&legacy_path).map_err(redb::Error::from)?) } else { None };
    if let Some(legacy) = &legacy {
        if !log_dir.exists() {
            // Into a directory of its own first: the log goes live whole, with its rename.
            let staging = dir.join(format!("{LOG_DIR_NAME}.migrating"));
            if staging.exists() {
                std::fs::remove_dir_all(&staging).map_err(Error::Io)?;
            }
            log_store::migrate_redb_log(legacy, Arc::new(wal_files::DirFiles::open(&staging).map_err(Error::Io)?))?;
            rename_into_place(&staging, &log_dir, dir)?;
            tracing::info!(dir = %dir.display(), "canon: the Raft log moved from {DB_FILE_NAME} to {LOG_DIR_NAME}/");
        }
    }
    let log = LogStore::open(Arc::new(wal_files::DirFiles::open(&log_dir).map_err(Error::Io)?))?;
    let sm = StateMachineStore::open(Arc::new(state_db), legacy.as_ref())?;
    if let Some(legacy) = legacy {
        drop(legacy);
        let mut migrated = legacy_path.clone().into_os_string();
        migrated.push(MIGRATED_SUFFIX);
        std::fs::rename(&legacy_path, migrated).map_err(Error::Io)?;
    }
    Ok((log, sm))
}

/// A group's files when the caller provides them (the simulator's disks): the state's redb
/// database and the log's files.
pub struct GroupFiles {
    /// The state's database.
    pub state: redb::Database,
    /// The log's files.
    pub log: Arc<dyn wal_files::WalFiles>,
    /// Where the log starts a new segment ([`wal::SEGMENT_BYTES`] in `vcos up`; the simulator
    /// scales it down, as it does the page cache, so that its runs roll segments).
    pub log_segment_bytes: u64,
}

/// What a state file being created is called until it is whole (see [`open_state_file`]).
pub const STATE_FILE_CREATING_SUFFIX: &str = ".creating";

/// Opens the state's file in `dir`, creating it whole if there is none: under a temporary
/// name, synced, then renamed into place. A disk that fails or fills while a new file is
/// created (a node's first start) would otherwise leave a half-written file that every later
/// start refuses ("not a redb database"); now it leaves only the temporary file, which the next
/// start removes. (Found by the canon scenario, seed 4871, on the simulator's disk.)
fn open_state_file(dir: &Path, cache_bytes: usize) -> Result<redb::Database, Error> {
    let path = dir.join(STATE_FILE_NAME);
    if path.exists() {
        return Ok(redb::Database::builder().set_cache_size(cache_bytes).create(&path).map_err(redb::Error::from)?);
    }
    let mut creating = path.clone().into_os_string();
    creating.push(STATE_FILE_CREATING_SUFFIX);
    let creating = std::path::PathBuf::from(creating);
    if creating.exists() {
        std::fs::remove_file(&creating).map_err(Error::Io)?;
    }
    let db = redb::Database::builder().set_cache_size(cache_bytes).create(&creating).map_err(redb::Error::from)?;
    // The file's bytes, then its name: a crash after the rename finds a whole file.
    std::fs::File::open(&creating).and_then(|file| file.sync_all()).map_err(Error::Io)?;
    rename_into_place(&creating, &path, dir)?;
    Ok(db)
}

/// Renames `from` to `to` in `dir` and syncs `dir`, so that the new name survives a crash.
fn rename_into_place(from: &Path, to: &Path, dir: &Path) -> Result<(), Error> {
    std::fs::rename(from, to).map_err(Error::Io)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(Error::Io)
}

/// Like [`open`], on files the caller provides.
pub fn open_on(files: GroupFiles) -> Result<(LogStore, StateMachineStore), Error> {
    let log = LogStore::open_with_segment_bytes(files.log, files.log_segment_bytes)?;
    let sm = StateMachineStore::new(Arc::new(files.state))?;
    Ok((log, sm))
}
