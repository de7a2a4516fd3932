//! Log entries and file checks shared by the state machine's disk tests.

use std::collections::BTreeSet;
use std::path::Path;

use openraft::testing::log_id;
use openraft::{Entry, EntryPayload, Membership};
use vcos_canon_raft::{Op, Request, TypeConfig};

/// The one-voter membership, at log index `index`.
pub(crate) fn membership(index: u64) -> Entry<TypeConfig> {
    let voters = BTreeSet::from([1u64]);
    Entry { log_id: log_id(1, 1, index), payload: EntryPayload::Membership(Membership::new(vec![voters], None)) }
}

/// `op` from client `client_id` at log index `index` (its sequence number too).
pub(crate) fn entry(index: u64, client_id: u64, op: Op) -> Entry<TypeConfig> {
    Entry { log_id: log_id(1, 1, index), payload: EntryPayload::Normal(Request { client_id, seq: index, op }) }
}

/// The tables of one of a group's files.
pub(crate) fn tables_of(dir: &Path, file: &str) -> Vec<String> {
    use redb::{ReadableDatabase, TableHandle};
    let db = redb::Database::open(dir.join(file)).expect("db opens");
    let txn = db.begin_read().expect("read");
    txn.list_tables().expect("tables").map(|t| t.name().to_owned()).collect()
}

/// The state's file holds no snapshot pages and no staging tables: nothing left behind by an
/// interrupted send or install (the state itself is the snapshot).
pub(crate) fn assert_no_leftovers(dir: &Path) {
    let names = tables_of(dir, vcos_canon_raft::STATE_FILE_NAME);
    assert!(names.iter().all(|n| !n.ends_with(".staging")), "{names:?}");
    assert!(names.iter().all(|n| !n.starts_with("sm_snapshot_pages.")), "{names:?}");
}
