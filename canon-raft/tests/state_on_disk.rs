//! The state machine's state on disk: a snapshot build writes nothing out (the state is the
//! snapshot), snapshots of many pages stream and install identically (chunks sent again
//! included), a stream cut short is refused and leaves nothing behind, a
//! store of an unknown format is refused with its version named, a format 1 store (the
//! state in memory, one JSON snapshot) is migrated when opened, and a store whose older build
//! kept a snapshot's pages opens without them. Each tenant's stored bytes are kept as writes
//! apply, survive a snapshot's install, and are counted once when a format 2 store opens.

use std::collections::BTreeSet;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::testing::log_id;
use openraft::{Entry, EntryPayload, Membership, RaftSnapshotBuilder, SnapshotMeta, StoredMembership};
use tempfile::TempDir;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use vcos_canon_raft::snapshot::SnapshotStream;
use vcos_canon_raft::{KvState, LeaseInfo, Op, Request, Response, StateMachineStore, TypeConfig};

mod common;
use common::{entry, membership, tables_of};

fn open(dir: &TempDir) -> StateMachineStore {
    vcos_canon_raft::open(dir.path()).expect("the store opens").1
}

/// A state of a few megabytes: keys with 1 KiB values, appends, a lease, many clients.
async fn fill(sm: &mut StateMachineStore, keys: u64) -> u64 {
    let mut entries = vec![membership(1)];
    let mut index = 1;
    for chunk in 0..keys / 100 {
        index += 1;
        let ops = (0..100)
            .map(|i| Op::Put { key: format!("k/{:06}", chunk * 100 + i).into_bytes(), value: vec![(i % 251) as u8; 1024] })
            .collect();
        entries.push(entry(index, chunk % 50, Op::Batch(ops)));
    }
    index += 1;
    entries.push(entry(index, 900, Op::Append { prefix: b"ev/".to_vec(), value: b"first".to_vec() }));
    index += 1;
    entries.push(entry(index, 901, Op::AcquireLease { name: "bucket/1".into(), holder: "n1".into(), ttl_ms: 500, now_ms: 10 }));
    sm.apply(entries).await.expect("applied");
    index
}

/// Receives `bytes` in chunks of `chunk` as a follower does, sending every third chunk twice
/// (a chunk sent again after its answer was lost).
async fn receive(sm: &mut StateMachineStore, bytes: &[u8], chunk: usize) -> Box<SnapshotStream> {
    let mut data = sm.begin_receiving_snapshot().await.expect("receiving");
    for (n, piece) in bytes.chunks(chunk).enumerate() {
        let offset = (n * chunk) as u64;
        data.seek(std::io::SeekFrom::Start(offset)).await.expect("seek");
        data.write_all(piece).await.expect("written");
        if n % 3 == 0 {
            data.seek(std::io::SeekFrom::Start(offset)).await.expect("seek back");
            data.write_all(piece).await.expect("written again");
        }
    }
    data.shutdown().await.expect("shut down");
    data
}

async fn build(sm: &mut StateMachineStore) -> Snapshot<TypeConfig> {
    sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot built")
}

/// The tables of the state's file.
fn tables(dir: &TempDir) -> Vec<String> {
    tables_of(dir.path(), vcos_canon_raft::STATE_FILE_NAME)
}

#[tokio::test]
async fn a_build_writes_nothing_out_and_a_sent_snapshot_takes_its_pages_along() {
    let dir = TempDir::new().expect("temp dir");
    let mut sm = open(&dir);
    let last = fill(&mut sm, 3_000).await;
    let file = dir.path().join(vcos_canon_raft::STATE_FILE_NAME);
    let before = std::fs::metadata(&file).expect("state file").len();
    for _ in 0..3 {
        let built = build(&mut sm).await;
        assert_eq!(built.meta.last_log_id, Some(log_id(1, 1, last)));
    }
    let grown = std::fs::metadata(&file).expect("state file").len().saturating_sub(before);
    assert!(grown < 1 << 20, "three builds of a 3 MiB state grew its file by {grown} bytes");
    // Sending writes the state out into pages of its own, dropped with the stream.
    let mut sent = sm.get_current_snapshot().await.expect("read").expect("a snapshot");
    assert!(sent.snapshot.to_vec().expect("written out").len() > 3 << 20);
    drop((sent, sm));
    // Listed with the file closed (opening the store would drop leftovers itself).
    let pages = tables(&dir).into_iter().filter(|t| t.starts_with("sm_snapshot_pages.")).count();
    assert_eq!(pages, 0, "no build left pages, and the sent snapshot's went with it");
}

#[tokio::test]
async fn a_store_whose_older_build_kept_a_snapshot_opens_without_it() {
    use redb::{ReadableDatabase, TableDefinition};
    let dir = TempDir::new().expect("temp dir");
    let expected = {
        let mut sm = open(&dir);
        fill(&mut sm, 1_000).await;
        drop(build(&mut sm).await);
        sm.reader().state().expect("state")
    };
    // What builds before the state file became the snapshot left: the last snapshot's pages
    // and a pointer to them (never read now, so its content does not matter).
    let file = dir.path().join(vcos_canon_raft::STATE_FILE_NAME);
    let meta_table = TableDefinition::<&str, &[u8]>::new("sm_meta");
    {
        let db = redb::Database::open(&file).expect("state file");
        let txn = db.begin_write().expect("write");
        {
            let mut pages = txn.open_table(TableDefinition::<u64, &[u8]>::new("sm_snapshot_pages.7")).expect("pages");
            pages.insert(0u64, [1u8; 64].as_slice()).expect("page");
            txn.open_table(meta_table).expect("meta").insert("snapshot", b"{}".as_slice()).expect("pointer");
        }
        txn.commit().expect("committed");
    }
    let mut sm = open(&dir);
    assert_eq!(sm.reader().state().expect("state"), expected);
    let mut sent = sm.get_current_snapshot().await.expect("read").expect("a snapshot");
    assert!(!sent.snapshot.to_vec().expect("written out").is_empty());
    drop((sent, sm));
    assert!(tables(&dir).iter().all(|t| !t.starts_with("sm_snapshot_pages.")), "{:?}", tables(&dir));
    let db = redb::Database::open(&file).expect("state file");
    let read = db.begin_read().expect("read");
    assert!(read.open_table(meta_table).expect("meta").get("snapshot").expect("get").is_none(), "the old pointer is gone");
}

#[tokio::test]
async fn a_snapshot_of_many_pages_streams_and_installs_identically() {
    let source_dir = TempDir::new().expect("temp dir");
    let mut source = open(&source_dir);
    let last = fill(&mut source, 3_000).await;
    let mut snapshot = build(&mut source).await;
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1, last)));
    let bytes = snapshot.snapshot.to_vec().expect("reads back");
    assert!(bytes.len() > 3 << 20, "about 3 MiB of values make several pages: {} bytes", bytes.len());

    let expected = source.reader().state().expect("source state");
    // A snapshot taken for sending is the state when it was taken, even if applies go on
    // before it is written out; the next one taken is the newer state.
    let mut taken = source.get_current_snapshot().await.expect("read").expect("a snapshot");
    assert_eq!(taken.meta, snapshot.meta);
    source.apply([entry(last + 1, 7, Op::Put { key: b"after".to_vec(), value: b"x".to_vec() })]).await.expect("applied");
    assert_eq!(taken.snapshot.to_vec().expect("reads back"), bytes);
    drop(taken);
    let newer = source.get_current_snapshot().await.expect("read").expect("a snapshot");
    assert_eq!(newer.meta.last_log_id, Some(log_id(1, 1, last + 1)));
    drop(newer);

    let target_dir = TempDir::new().expect("temp dir");
    {
        let mut target = open(&target_dir);
        target.apply([entry(1, 3, Op::Put { key: b"stale".to_vec(), value: b"gone".to_vec() })]).await.expect("applied");
        let data = receive(&mut target, &bytes, 300_000).await;
        target.install_snapshot(&snapshot.meta, data).await.expect("installed");
        let installed = target.reader().state().expect("target state");
        assert_eq!(installed.get(b"stale"), None, "the snapshot replaces the state");
        assert_eq!(installed.lease("bucket/1").map(|l| l.epoch), Some(1));
        assert_eq!(installed.canon_index(), 1);
        assert_eq!(installed, expected);
    }
    // After a restart: the same state, which is the current snapshot (the same stream again),
    // and no staging tables or pages left.
    let mut target = open(&target_dir);
    assert_eq!(target.reader().get(b"k/002999").expect("read"), Some(vec![99u8; 1024]));
    let (applied, _) = target.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(1, 1, last)));
    let mut current = target.get_current_snapshot().await.expect("read").expect("stored");
    assert_eq!(current.meta, snapshot.meta);
    assert_eq!(current.snapshot.to_vec().expect("reads back"), bytes);
    drop((current, target));
    common::assert_no_leftovers(target_dir.path());
}

#[tokio::test]
async fn a_stream_cut_short_is_refused_and_leaves_the_state_and_no_tables() {
    let source_dir = TempDir::new().expect("temp dir");
    let mut source = open(&source_dir);
    fill(&mut source, 1_000).await;
    let mut snapshot = build(&mut source).await;
    let bytes = snapshot.snapshot.to_vec().expect("reads back");

    let target_dir = TempDir::new().expect("temp dir");
    {
        let mut target = open(&target_dir);
        target.apply([entry(1, 3, Op::Put { key: b"kept".to_vec(), value: b"yes".to_vec() })]).await.expect("applied");
        for cut in [bytes.len() - 1, bytes.len() / 2, 3] {
            let data = receive(&mut target, &bytes[..cut], 64 << 10).await;
            let error = target.install_snapshot(&snapshot.meta, data).await.expect_err("a cut stream is refused");
            assert!(error.to_string().contains("snapshot"), "{error}");
            assert_eq!(target.reader().get(b"kept").expect("read"), Some(b"yes".to_vec()));
            assert_eq!(target.reader().get(b"k/000001").expect("read"), None);
        }
        // A stream whose meta says otherwise is refused too.
        let mut wrong = snapshot.meta.clone();
        wrong.last_log_id = Some(log_id(2, 1, 99));
        let data = receive(&mut target, &bytes, 1 << 20).await;
        assert!(target.install_snapshot(&wrong, data).await.is_err());
    }
    let names = tables(&target_dir);
    assert!(names.iter().all(|n| !n.ends_with(".staging") && !n.starts_with("sm_snapshot_pages.")), "{names:?}");
}

#[tokio::test]
async fn a_store_of_an_unknown_format_is_refused_naming_its_version() {
    let dir = TempDir::new().expect("temp dir");
    drop(open(&dir));
    {
        const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("sm_meta");
        let db = redb::Database::create(dir.path().join(vcos_canon_raft::STATE_FILE_NAME)).expect("db opens");
        let txn = db.begin_write().expect("write");
        txn.open_table(META).expect("meta").insert("format", 99u64.to_be_bytes().as_slice()).expect("insert");
        txn.commit().expect("commit");
    }
    let error = vcos_canon_raft::open(dir.path()).expect_err("a newer format is refused");
    assert!(error.to_string().contains("format version 99"), "{error}");
}

#[tokio::test]
async fn a_format_1_store_is_migrated_to_the_tables() {
    // Format 1 kept the state in memory and saved it as one JSON snapshot in `sm_snapshot`, in
    // the log's file.
    const V1: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("sm_snapshot");
    let mut state = KvState::new();
    state.apply(2, &Request { client_id: 5, seq: 1, op: Op::Put { key: b"k/1".to_vec(), value: b"one".to_vec() } });
    state.apply(3, &Request { client_id: 5, seq: 2, op: Op::Append { prefix: b"ev/".to_vec(), value: b"e".to_vec() } });
    let membership = StoredMembership::new(Some(log_id(1, 1, 1)), Membership::new(vec![BTreeSet::from([1u64])], None));
    let meta: SnapshotMeta<u64, vcos_canon_raft::NodeInfo> =
        SnapshotMeta { last_log_id: Some(log_id(1, 1, 3)), last_membership: membership.clone(), snapshot_id: "1-1-3".into() };
    let data = serde_json::json!({ "last_applied": log_id(1, 1, 3), "membership": membership, "state": state });
    let dir = TempDir::new().expect("temp dir");
    std::fs::create_dir_all(dir.path()).expect("dir");
    {
        let db = redb::Database::create(dir.path().join(vcos_canon_raft::DB_FILE_NAME)).expect("db opens");
        let txn = db.begin_write().expect("write");
        {
            let mut table = txn.open_table(V1).expect("v1 table");
            table.insert("meta", serde_json::to_vec(&meta).expect("encodes").as_slice()).expect("insert");
            table.insert("data", serde_json::to_vec(&data).expect("encodes").as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    let mut sm = open(&dir);
    assert_eq!(sm.reader().state().expect("state"), state);
    assert_eq!(sm.applied_state().await.expect("applied"), (Some(log_id(1, 1, 3)), membership));
    // The client's dedup record came along: its last request again gets the stored answer.
    let retry = Request { client_id: 5, seq: 2, op: Op::Put { key: b"x".to_vec(), value: b"y".to_vec() } };
    let replies = sm.apply([Entry { log_id: log_id(1, 1, 4), payload: EntryPayload::Normal(retry) }]).await.expect("applied");
    assert_eq!(replies, vec![Response::Appended { index: 1 }]);
    assert_eq!(sm.reader().get(b"x").expect("read"), None);
    assert_eq!(sm.reader().lease("none").expect("read"), None::<LeaseInfo>);
    drop(sm);
    // The old snapshot, kept in the log's file, is gone (the file is kept, renamed, once its log
    // moved to the write-ahead log).
    let migrated = format!("{}{}", vcos_canon_raft::DB_FILE_NAME, vcos_canon_raft::MIGRATED_SUFFIX);
    assert!(!tables_of(dir.path(), &migrated).contains(&"sm_snapshot".to_owned()));
}

/// The bytes of `records` (key and value lengths).
fn bytes_of(records: &[(&str, usize)]) -> u64 {
    records.iter().map(|(key, value)| (key.len() + value) as u64).sum()
}

#[tokio::test]
async fn each_tenants_stored_bytes_are_kept_through_writes_roll_backs_snapshots_and_reopening() {
    let dir = TempDir::new().expect("temp dir");
    let mut sm = open(&dir);
    let put = |key: &str, len: usize| Op::Put { key: key.as_bytes().to_vec(), value: vec![b'v'; len] };
    sm.apply([
        membership(1),
        entry(2, 1, Op::Batch(vec![put("t/acme/imvu/1/meta", 100), put("t/acme/imvu/1/snap", 40), put("tenant/acme", 30), put("k/other", 500)])),
        entry(3, 2, Op::Batch(vec![put("t/acme/imvu/1/snap", 10), put("tkv/acme/x", 7), put("t/beta/imvu/2/meta", 50), put("audit/head/t/beta", 20)])),
        entry(4, 3, Op::Delete { key: b"tkv/acme/x".to_vec() }),
        // A batch stopped by its guard takes its writes back, and their counts with them.
        entry(5, 4, Op::Batch(vec![put("t/acme/imvu/9/meta", 1_000), Op::Expect { key: b"k/other".to_vec(), value: None }])),
        entry(6, 5, Op::Append { prefix: b"audit/t/acme/".to_vec(), value: vec![b'a'; 60] }),
        // Keys outside a valid tenant's prefixes count for nobody.
        entry(7, 6, Op::Batch(vec![put("t/Acme/imvu/1/meta", 5), put("tenant/acme/x", 5), put("t/acme", 5)])),
    ])
    .await
    .expect("applied");
    let appended = format!("audit/t/acme/{:020}", 1);
    let acme = bytes_of(&[("t/acme/imvu/1/meta", 100), ("t/acme/imvu/1/snap", 10), ("tenant/acme", 30), (&appended, 60)]);
    let beta = bytes_of(&[("t/beta/imvu/2/meta", 50), ("audit/head/t/beta", 20)]);
    let usage = |sm: &StateMachineStore, tenant: &str| sm.reader().usage(tenant.as_bytes()).expect("usage reads");
    assert_eq!((usage(&sm, "acme"), usage(&sm, "beta"), usage(&sm, "gamma")), (acme, beta, 0));
    sm.reader().state().expect("the usage table agrees with the records");

    // Installed elsewhere from a snapshot (which does not carry the counts), they are the same.
    let mut snapshot = build(&mut sm).await;
    let bytes = snapshot.snapshot.to_vec().expect("reads back");
    let target_dir = TempDir::new().expect("temp dir");
    let mut target = open(&target_dir);
    target.apply([entry(1, 3, Op::Put { key: b"t/acme/stale".to_vec(), value: vec![0; 999] })]).await.expect("applied");
    let data = receive(&mut target, &bytes, 64).await;
    target.install_snapshot(&snapshot.meta, data).await.expect("installed");
    assert_eq!((usage(&target, "acme"), usage(&target, "beta")), (acme, beta));
    target.reader().state().expect("the installed usage agrees with the records");

    // Deleting a tenant's last record leaves no row behind; reopening keeps what was counted.
    sm.apply([entry(8, 7, Op::Batch(vec![Op::Delete { key: b"t/beta/imvu/2/meta".to_vec() }, Op::Delete { key: b"audit/head/t/beta".to_vec() }]))])
        .await
        .expect("applied");
    drop((snapshot, sm));
    let sm = open(&dir);
    assert_eq!((usage(&sm, "acme"), usage(&sm, "beta")), (acme, 0));
    sm.reader().state().expect("the usage table agrees with the records");
}

#[tokio::test]
async fn a_format_2_store_is_migrated_by_counting_its_records_once() {
    use redb::{ReadableDatabase, TableDefinition};
    let dir = TempDir::new().expect("temp dir");
    let expected = {
        let mut sm = open(&dir);
        fill(&mut sm, 300).await;
        let tenant_records = (0..20).map(|i| Op::Put { key: format!("t/acme/imvu/{i}/meta").into_bytes(), value: vec![1; 64] }).collect();
        sm.apply([entry(100, 60, Op::Batch(tenant_records))]).await.expect("applied");
        sm.reader().state().expect("state")
    };
    // What format 2 wrote: the same tables without `sm_usage`.
    let file = dir.path().join(vcos_canon_raft::STATE_FILE_NAME);
    {
        let db = redb::Database::open(&file).expect("state file");
        let txn = db.begin_write().expect("write");
        assert!(txn.delete_table(TableDefinition::<&[u8], u64>::new("sm_usage")).expect("delete"), "format 3 has the table");
        txn.open_table(TableDefinition::<&str, &[u8]>::new("sm_meta")).expect("meta").insert("format", 2u64.to_be_bytes().as_slice()).expect("insert");
        txn.commit().expect("committed");
    }
    let sm = open(&dir);
    let counted: u64 = (0..20).map(|i| format!("t/acme/imvu/{i}/meta").len() as u64 + 64).sum();
    assert_eq!(sm.reader().usage(b"acme").expect("usage"), counted);
    assert_eq!(sm.reader().state().expect("state"), expected);
    drop(sm);
    let db = redb::Database::open(&file).expect("state file");
    let read = db.begin_read().expect("read");
    let format = read.open_table(TableDefinition::<&str, &[u8]>::new("sm_meta")).expect("meta").get("format").expect("get").map(|v| v.value().to_vec());
    assert_eq!(format, Some(3u64.to_be_bytes().to_vec()));
}
