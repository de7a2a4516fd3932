//! The stores on disk (the log's segments, the state's redb file): reopening recovers the log state, the vote, the committed hint and
//! the snapshot; a snapshot built on one state machine installs into a fresh one identically.

use std::collections::BTreeSet;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::log_id;
use openraft::{
    Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder, StoredMembership, Vote,
};
use tempfile::TempDir;
use vcos_canon_raft::snapshot::SnapshotStream;
use vcos_canon_raft::{LogStore, Op, Request, StateMachineStore, TypeConfig};

fn open(dir: &TempDir) -> (LogStore, StateMachineStore) {
    vcos_canon_raft::open(dir.path()).expect("the store opens")
}

fn request(index: u64) -> Entry<TypeConfig> {
    let op = Op::Put { key: format!("k/{index:03}").into_bytes(), value: index.to_be_bytes().to_vec() };
    Entry { log_id: log_id(1, 1, index), payload: EntryPayload::Normal(Request { client_id: 1, seq: index, op }) }
}

fn membership(index: u64) -> Entry<TypeConfig> {
    let voters = BTreeSet::from([1u64]);
    Entry { log_id: log_id(1, 1, index), payload: EntryPayload::Membership(Membership::new(vec![voters], None)) }
}

/// Receives `bytes` as a follower does: a stream begun by the state machine, written, shut down.
async fn receive(sm: &mut StateMachineStore, bytes: &[u8]) -> Box<SnapshotStream> {
    use tokio::io::AsyncWriteExt;
    let mut data = sm.begin_receiving_snapshot().await.expect("receiving");
    data.write_all(bytes).await.expect("written");
    data.shutdown().await.expect("shut down");
    data
}

/// Appends through openraft's blocking helper, which waits for the flush callback.
async fn append(log: &mut LogStore, entries: Vec<Entry<TypeConfig>>) {
    use openraft::storage::RaftLogStorageExt;
    log.blocking_append(entries).await.expect("append succeeds");
}

#[tokio::test]
async fn reopen_recovers_log_state_vote_and_committed() {
    let dir = TempDir::new().expect("temp dir");
    {
        let (mut log, _sm) = open(&dir);
        append(&mut log, vec![membership(1)]).await;
        append(&mut log, (2..=10).map(request).collect()).await;
        log.save_vote(&Vote::new_committed(3, 1)).await.expect("vote saved");
        log.save_committed(Some(log_id(1, 1, 8))).await.expect("committed saved");
        log.purge(log_id(1, 1, 4)).await.expect("purged");
        log.truncate(log_id(1, 1, 9)).await.expect("truncated");
    }
    let (mut log, _sm) = open(&dir);
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 4)));
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 8)));
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new_committed(3, 1)));
    assert_eq!(log.read_committed().await.expect("committed"), Some(log_id(1, 1, 8)));
    let entries = log.try_get_log_entries(0..100).await.expect("entries");
    let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, vec![5, 6, 7, 8]);
    assert_eq!(entries[0], request(5));
}

/// The committed hint rides in the store's next transaction (an append, as a rule): the newest
/// one saved before it is what a reopen reads.
#[tokio::test]
async fn the_committed_hint_is_written_by_the_next_append() {
    let dir = TempDir::new().expect("temp dir");
    {
        let (mut log, _sm) = open(&dir);
        append(&mut log, vec![membership(1)]).await;
        append(&mut log, (2..=5).map(request).collect()).await;
        log.save_committed(Some(log_id(1, 1, 3))).await.expect("committed saved");
        log.save_committed(Some(log_id(1, 1, 4))).await.expect("committed saved");
        assert_eq!(log.read_committed().await.expect("committed"), Some(log_id(1, 1, 4)), "read back before any transaction");
        append(&mut log, vec![request(6)]).await;
        log.save_committed(Some(log_id(1, 1, 6))).await.expect("committed saved");
        // No transaction after this one: a lower hint survives, never a higher one.
    }
    let (mut log, _sm) = open(&dir);
    assert_eq!(log.read_committed().await.expect("committed"), Some(log_id(1, 1, 4)));
}

#[tokio::test]
async fn purging_everything_keeps_the_last_log_id() {
    let dir = TempDir::new().expect("temp dir");
    {
        let (mut log, _sm) = open(&dir);
        append(&mut log, (1..=3).map(request).collect()).await;
        log.purge(log_id(1, 1, 3)).await.expect("purged");
    }
    let (mut log, _sm) = open(&dir);
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 3)));
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 3)));
}

#[tokio::test]
async fn snapshot_installs_identically_and_survives_reopen() {
    let source_dir = TempDir::new().expect("temp dir");
    let (_log, mut source) = open(&source_dir);
    let mut entries = vec![membership(1)];
    entries.extend((2..=20).map(request));
    source.apply(entries).await.expect("applied");
    let mut snapshot = source.get_snapshot_builder().await.build_snapshot().await.expect("snapshot built");
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1, 20)));

    let target_dir = TempDir::new().expect("temp dir");
    {
        let (_log, mut target) = open(&target_dir);
        let data = receive(&mut target, &snapshot.snapshot.to_vec().expect("the snapshot reads back")).await;
        target.install_snapshot(&snapshot.meta, data).await.expect("installed");
        assert_eq!(target.reader().state().expect("a read of the canon"), source.reader().state().expect("a read of the canon"));
        assert_eq!(target.applied_state().await.expect("applied"), source.applied_state().await.expect("applied"));
    }
    // After a restart the target is restored from the stored snapshot.
    let (_log, mut target) = open(&target_dir);
    assert_eq!(target.reader().state().expect("a read of the canon"), source.reader().state().expect("a read of the canon"));
    let (last_applied, members): (Option<LogId<u64>>, StoredMembership<u64, _>) =
        target.applied_state().await.expect("applied");
    assert_eq!(last_applied, Some(log_id(1, 1, 20)));
    assert_eq!(members.log_id(), &Some(log_id(1, 1, 1)));
    let current = target.get_current_snapshot().await.expect("read").expect("a snapshot is stored");
    assert_eq!(current.meta, snapshot.meta);
    assert_eq!(target.reader().get(b"k/007").expect("a read of the canon"), Some(7u64.to_be_bytes().to_vec()));
    let page = target.reader().range(b"k/", Some(b"k/018"), 10).expect("a read of the canon");
    assert_eq!(page.len(), 2);
}

#[tokio::test]
async fn corrupt_snapshot_is_refused() {
    let source_dir = TempDir::new().expect("temp dir");
    let (_log, mut source) = open(&source_dir);
    source.apply((1..=3).map(request)).await.expect("applied");
    let mut snapshot = source.get_snapshot_builder().await.build_snapshot().await.expect("snapshot built");
    let mut corrupt = snapshot.snapshot.to_vec().expect("the snapshot reads back");
    corrupt.truncate(corrupt.len() / 2);
    let data = receive(&mut source, &corrupt).await;
    let result = source.install_snapshot(&snapshot.meta, data).await;
    assert!(result.is_err());
    // The state is unchanged.
    assert_eq!(source.reader().get(b"k/002").expect("a read of the canon"), Some(2u64.to_be_bytes().to_vec()));
}

/// The one segment of a small log.
fn segment(dir: &TempDir) -> std::path::PathBuf {
    let log_dir = dir.path().join(vcos_canon_raft::LOG_DIR_NAME);
    let mut segments: Vec<_> = std::fs::read_dir(&log_dir).expect("log dir").map(|e| e.expect("entry").path()).filter(|p| p.extension().is_some_and(|x| x == "wal")).collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments.remove(0)
}

/// Where a segment's records end (past them, its reservation reads as zeros): walks the
/// records' lengths (`len: u32 LE | crc32 | len bytes`) after the 8-byte header.
fn data_len(bytes: &[u8]) -> usize {
    let mut offset = vcos_canon_raft::wal::SEGMENT_MAGIC.len();
    while let Some(len) = bytes.get(offset..offset + 4) {
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        if len == 0 || offset + 8 + len > bytes.len() {
            break;
        }
        offset += 8 + len;
    }
    offset
}

/// A crash in the middle of an append leaves half of its record, in one of two shapes: zeros
/// after it, inside the segment's reservation; or the file's end, where the file grew with
/// each append (a build before reservations, or a file system without `fallocate`). Either
/// way the record is dropped (its fsync never returned, so it was never acknowledged) and the
/// log goes on.
#[tokio::test]
async fn an_append_cut_by_a_crash_is_dropped_and_the_log_goes_on() {
    for file_ends_inside in [false, true] {
        let dir = TempDir::new().expect("temp dir");
        {
            let (mut log, _sm) = open(&dir);
            append(&mut log, (1..=3).map(request).collect()).await;
        }
        let path = segment(&dir);
        let whole = data_len(&std::fs::read(&path).expect("segment"));
        {
            let (mut log, _sm) = open(&dir);
            append(&mut log, vec![request(4)]).await;
        }
        let mut with_four = std::fs::read(&path).expect("segment");
        let four = data_len(&with_four);
        let cut = whole + (four - whole) / 2;
        if file_ends_inside {
            with_four.truncate(cut);
        } else {
            with_four[cut..four].fill(0);
        }
        std::fs::write(&path, &with_four).expect("cut");
        {
            let (mut log, _sm) = open(&dir);
            assert_eq!(log.get_log_state().await.expect("log state").last_log_id, Some(log_id(1, 1, 3)), "file ends inside: {file_ends_inside}");
            append(&mut log, vec![request(4), request(5)]).await;
        }
        let (mut log, _sm) = open(&dir);
        let indexes: Vec<u64> = log.try_get_log_entries(0..100).await.expect("entries").iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, vec![1, 2, 3, 4, 5], "file ends inside: {file_ends_inside}");
        assert_eq!(std::fs::metadata(&path).expect("segment").len(), vcos_canon_raft::wal::SEGMENT_BYTES, "reserved again after the cut");
    }
}

/// A segment is reserved whole when it starts, so its appends write inside the file and their
/// fsync flushes data alone; when the next segment starts, the one before is cut to its data.
#[tokio::test]
async fn segments_are_reserved_whole_and_cut_to_their_data_when_closed() {
    use vcos_canon_raft::wal::Wal;
    use vcos_canon_raft::wal_files::{DirFiles, WalFiles};
    let dir = TempDir::new().expect("temp dir");
    let segment_bytes = 4 << 10;
    let files: std::sync::Arc<dyn WalFiles> = std::sync::Arc::new(DirFiles::open(dir.path()).expect("dir"));
    let mut wal = Wal::open_with_segment_bytes(std::sync::Arc::clone(&files), segment_bytes).expect("open");
    for index in 1..=200 {
        wal.append([request(index)]).expect("append");
    }
    let mut segments: Vec<(String, u64)> = files.list().expect("list").into_iter().filter(|n| n.ends_with(".wal")).map(|n| {
        let len = files.len(&n).expect("len");
        (n, len)
    }).collect();
    segments.sort();
    assert!(segments.len() > 2, "{segments:?}");
    let (last, closed) = segments.split_last().expect("segments");
    assert!(last.1 >= segment_bytes, "the last segment is reserved whole: {segments:?}");
    for (name, len) in closed {
        let mut bytes = vec![0; usize::try_from(*len).expect("len")];
        files.read_at(name, 0, &mut bytes).expect("read");
        assert_eq!(data_len(&bytes), bytes.len(), "{name} is cut to its data");
    }
    drop(wal);
    let wal = Wal::open_with_segment_bytes(files, segment_bytes).expect("reopen");
    let indexes: Vec<u64> = wal.entries(0, u64::MAX).expect("entries").iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, (1..=200).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_damaged_record_inside_the_log_is_refused_not_skipped() {
    let dir = TempDir::new().expect("temp dir");
    {
        let (mut log, _sm) = open(&dir);
        append(&mut log, (1..=3).map(request).collect()).await;
    }
    let path = segment(&dir);
    let mut bytes = std::fs::read(&path).expect("segment");
    // A bit flipped in the first entry's payload: records after it are intact, so this is not
    // a torn append but damage to acknowledged entries.
    let at = 8 + 9 + 12;
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).expect("write");
    let Err(error) = vcos_canon_raft::open(dir.path()) else { panic!("a damaged log is refused") };
    let message = error.to_string();
    assert!(message.contains("checksum") && message.contains(".wal at 8"), "{message}");
}

#[tokio::test]
async fn a_log_kept_in_redb_by_an_older_build_is_migrated() {
    const LOG: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("raft_log");
    const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("raft_meta");
    let dir = TempDir::new().expect("temp dir");
    {
        let db = redb::Database::create(dir.path().join(vcos_canon_raft::DB_FILE_NAME)).expect("db opens");
        let txn = db.begin_write().expect("write txn");
        {
            let mut log = txn.open_table(LOG).expect("log table");
            for index in 5..=9 {
                log.insert(index, vcos_canon_raft::wire::encode_entry(request(index)).as_slice()).expect("insert");
            }
            let mut meta = txn.open_table(META).expect("meta table");
            meta.insert("vote", serde_json::to_vec(&Vote::new_committed(3, 1)).expect("json").as_slice()).expect("insert");
            meta.insert("last_purged", serde_json::to_vec(&log_id(1, 1, 4)).expect("json").as_slice()).expect("insert");
            meta.insert("committed", serde_json::to_vec(&Some(log_id(1, 1, 8))).expect("json").as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    for _ in 0..2 {
        let (mut log, _sm) = open(&dir);
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 4)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 9)));
        assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new_committed(3, 1)));
        assert_eq!(log.read_committed().await.expect("committed"), Some(log_id(1, 1, 8)));
        assert_eq!(log.try_get_log_entries(0..100).await.expect("entries"), (5..=9).map(request).collect::<Vec<_>>());
    }
    assert!(!dir.path().join(vcos_canon_raft::DB_FILE_NAME).exists(), "the old file is renamed once migrated");
    assert!(dir.path().join(format!("{}{}", vcos_canon_raft::DB_FILE_NAME, vcos_canon_raft::MIGRATED_SUFFIX)).exists());
}

/// A node whose first start was cut short while it created its state file (a disk that failed
/// or filled then) left only the file's temporary name behind: the next start removes it and
/// creates the file whole, where a half-written `canon-state.redb` used to be refused on every
/// start ("not a redb database"; the canon scenario's seed 4871 on the simulator's disk).
#[tokio::test]
async fn a_state_file_cut_short_while_created_does_not_block_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut creating = dir.path().join(vcos_canon_raft::STATE_FILE_NAME).into_os_string();
    creating.push(vcos_canon_raft::STATE_FILE_CREATING_SUFFIX);
    std::fs::write(&creating, b"half a redb header").expect("a file cut short");
    let (mut log, sm) = open(&dir);
    append(&mut log, vec![request(1)]).await;
    drop((log, sm));
    assert!(!std::path::Path::new(&creating).exists(), "the temporary file is gone");
    assert!(dir.path().join(vcos_canon_raft::STATE_FILE_NAME).exists(), "the state file is in place");
    let (mut log, _sm) = open(&dir);
    assert_eq!(log.get_log_state().await.expect("log state").last_log_id.map(|id| id.index), Some(1), "and it opens again");
}
