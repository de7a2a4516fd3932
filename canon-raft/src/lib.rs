//! Canon Memory Layer on openraft: the durable log store and the deterministic state machine.
//!
//! This crate is the only place that writes replicated canon state. This slice runs on one node
//! (no network yet); the network and multi-node membership come later.
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
//! - [`log_store`]: [`LogStore`], openraft's `RaftLogStorage` on redb, fsynced appends.
//! - [`state_machine`]: [`StateMachineStore`], openraft's `RaftStateMachine` over the tables,
//!   with snapshots stored in the same redb file.
//! - [`network`]: [`UnreachableNetwork`], the network of a single voter, which never sends.
//!
//! [`open`] opens (or creates) one redb file under a directory and returns both stores.
//!
//! Deliberately absent: a network transport, multi-node membership changes, and the
//! `CanonStore` seam adapter (a later session builds them on these stores).

use std::path::Path;
use std::sync::Arc;

pub mod app;
pub mod auth;
pub mod canon_store;
pub mod constants;
pub mod disk;
pub mod error;
pub mod health;
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
/// creates beside the log's. A file of its own, so that the log's fsyncs (one per append) do
/// not also write the state's pages: the state is fsynced every
/// [`state_machine::STATE_SYNC_EVERY`] applies and at snapshots, and after a crash openraft
/// replays the log from where the state file stands (never before the last snapshot, the
/// furthest the log is purged to).
pub const STATE_FILE_NAME: &str = "canon-state.redb";

/// The name of the redb file of the log (and vote) that [`open`] creates under its directory.
pub const DB_FILE_NAME: &str = "canon-raft.redb";

/// Opens (or creates) the canon database under `dir` and returns its log store and state
/// machine. The state machine is restored from the last stored snapshot; openraft replays the
/// log after it.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), Error> {
    open_with(dir, constants::CACHE_BYTES_DEFAULT)
}

/// Like [`open`], with a page cache of `cache_bytes`: with the log's recent entries, it is
/// what the group's file keeps in memory, however large the canon grows.
pub fn open_with(dir: &Path, cache_bytes: usize) -> Result<(LogStore, StateMachineStore), Error> {
    std::fs::create_dir_all(dir).map_err(Error::Io)?;
    // A quarter for the log (its recent entries, read when followers catch up), the rest for
    // the state.
    let log_db = redb::Database::builder()
        .set_cache_size(cache_bytes / 4)
        .create(dir.join(DB_FILE_NAME))
        .map_err(redb::Error::from)?;
    let state_db = redb::Database::builder()
        .set_cache_size(cache_bytes - cache_bytes / 4)
        .create(dir.join(STATE_FILE_NAME))
        .map_err(redb::Error::from)?;
    let log_db = Arc::new(log_db);
    let log = LogStore::new(Arc::clone(&log_db))?;
    let sm = StateMachineStore::with_own_file(Arc::new(state_db), &log_db)?;
    Ok((log, sm))
}

/// Like [`open`], on one database the caller opened for both the log and the state (the
/// simulator's in-memory backend): the log's fsyncs then make each apply durable too.
pub fn open_db(db: redb::Database) -> Result<(LogStore, StateMachineStore), Error> {
    let db = Arc::new(db);
    let log = LogStore::new(Arc::clone(&db))?;
    let sm = StateMachineStore::new(db)?;
    Ok((log, sm))
}
