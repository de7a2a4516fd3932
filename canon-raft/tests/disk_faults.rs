//! The state machine when its disk fails it: a disk that fills while a snapshot is written out
//! for sending or while one is installed fails that operation with an error (no panic), and
//! once space is back and the store reopened, the state is what was applied and no
//! half-written pages or staging tables are left; a page cache smaller than one value still
//! reads and writes it.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::testing::log_id;
use openraft::RaftSnapshotBuilder;
use redb::backends::FileBackend;
use redb::StorageBackend;
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;
use vcos_canon_raft::{Op, StateMachineStore, TypeConfig, STATE_FILE_NAME};

mod common;
use common::{entry, membership};

/// A file that cannot grow past `room` bytes while `room` is set (`u64::MAX`: no limit): a
/// disk with that much space. Writes inside the file's length still succeed, as on a real disk.
#[derive(Debug)]
struct FullableDisk {
    file: FileBackend,
    room: Arc<AtomicU64>,
}

fn no_space() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device (test disk)")
}

impl StorageBackend for FullableDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        if len > self.room.load(Ordering::SeqCst) {
            return Err(no_space());
        }
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        if offset + data.len() as u64 > self.room.load(Ordering::SeqCst).max(self.file.len()?) {
            return Err(no_space());
        }
        self.file.write(offset, data)
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.file.close()
    }
}

/// The group's state file on a [`FullableDisk`]; returns the store and the knob
/// that fills the disk.
fn open_on_fullable_disk(dir: &Path) -> (StateMachineStore, Arc<AtomicU64>) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(STATE_FILE_NAME))
        .expect("state file");
    let room = Arc::new(AtomicU64::new(u64::MAX));
    let disk = FullableDisk { file: FileBackend::new(file).expect("backend"), room: Arc::clone(&room) };
    let state_db = redb::Database::builder().create_with_backend(disk).expect("state db");
    let sm = StateMachineStore::new(Arc::new(state_db)).expect("store");
    (sm, room)
}

/// Fills the disk: the state's file may not grow from its length now.
fn fill_disk(dir: &Path, room: &AtomicU64) {
    let len = std::fs::metadata(dir.join(STATE_FILE_NAME)).expect("state file").len();
    room.store(len, Ordering::SeqCst);
}

/// `keys` keys of 1 KiB from log index 2 on; returns the last index.
async fn fill(sm: &mut StateMachineStore, keys: u64) -> u64 {
    let mut entries = vec![membership(1)];
    for chunk in 0..keys / 100 {
        let ops = (0..100)
            .map(|i| Op::Put { key: format!("k/{:06}", chunk * 100 + i).into_bytes(), value: vec![(i % 251) as u8; 1024] })
            .collect();
        entries.push(entry(chunk + 2, chunk % 50, Op::Batch(ops)));
    }
    let last = keys / 100 + 1;
    sm.apply(entries).await.expect("applied");
    last
}

async fn build(sm: &mut StateMachineStore) -> Result<Snapshot<TypeConfig>, openraft::StorageError<u64>> {
    sm.get_snapshot_builder().await.build_snapshot().await
}

fn reopen(dir: &Path) -> StateMachineStore {
    vcos_canon_raft::open(dir).expect("the store opens again").1
}

#[tokio::test]
async fn a_disk_that_fills_while_a_snapshot_is_written_out_fails_the_send_and_loses_nothing() {
    let dir = TempDir::new().expect("temp dir");
    let (expected, last) = {
        let (mut sm, room) = open_on_fullable_disk(dir.path());
        let last = fill(&mut sm, 2_000).await;
        // A build makes the state durable and writes nothing else: it fits on a full disk.
        let built = build(&mut sm).await.expect("built");
        assert_eq!(built.meta.last_log_id, Some(log_id(1, 1, last)));
        drop(built);
        let expected = sm.reader().state().expect("state");
        fill_disk(dir.path(), &room);
        // Sending writes the state out (about 2 MB here): there is no room for it.
        let mut sent = sm.get_current_snapshot().await.expect("current").expect("a snapshot");
        assert_eq!(sent.meta.last_log_id, Some(log_id(1, 1, last)));
        let error = sent.snapshot.to_vec().expect_err("no room to write the snapshot out");
        assert!(error.to_string().to_lowercase().contains("space"), "the error says why: {error}");
        drop(sent);
        assert_eq!(sm.reader().state().expect("state"), expected, "the state is untouched");
        (expected, last)
    };
    // Space is back; the node restarts: the built snapshot's state was fsynced.
    let mut sm = reopen(dir.path());
    let (applied, _) = sm.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(1, 1, last)));
    assert_eq!(sm.reader().state().expect("state"), expected);
    let mut sent = sm.get_current_snapshot().await.expect("current").expect("a snapshot");
    assert_eq!(sent.meta.last_log_id, applied);
    assert!(!sent.snapshot.to_vec().expect("with room, it is written out").is_empty());
    drop((sent, sm));
    common::assert_no_leftovers(dir.path());
}

#[tokio::test]
async fn a_disk_that_fills_while_a_snapshot_is_installed_refuses_it_and_keeps_the_state() {
    let source_dir = TempDir::new().expect("temp dir");
    let mut source = reopen(source_dir.path());
    fill(&mut source, 3_000).await;
    let mut snapshot = build(&mut source).await.expect("built");
    let bytes = snapshot.snapshot.to_vec().expect("reads back");

    let dir = TempDir::new().expect("temp dir");
    {
        let (mut target, room) = open_on_fullable_disk(dir.path());
        target.apply([membership(1), entry(2, 3, Op::Put { key: b"mine".to_vec(), value: b"kept".to_vec() })]).await.expect("applied");
        let _ = build(&mut target).await.expect("the target's own snapshot");
        fill_disk(dir.path(), &room);
        let mut data = target.begin_receiving_snapshot().await.expect("receiving");
        let received = async {
            for piece in bytes.chunks(256 << 10) {
                data.write_all(piece).await?;
            }
            data.shutdown().await
        }
        .await;
        match received {
            Err(e) => assert!(e.to_string().to_lowercase().contains("space"), "the error says why: {e}"),
            Ok(()) => {
                let error = target.install_snapshot(&snapshot.meta, data).await.expect_err("no room for the snapshot");
                assert!(format!("{error:?}").to_lowercase().contains("space"), "the error says why: {error:?}");
            }
        }
    }
    let mut target = reopen(dir.path());
    assert_eq!(target.reader().get(b"mine").expect("read"), Some(b"kept".to_vec()));
    assert_eq!(target.reader().get(b"k/000001").expect("read"), None, "nothing of the refused snapshot");
    let (applied, _) = target.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(1, 1, 2)));
    drop(target);
    common::assert_no_leftovers(dir.path());
}

#[tokio::test]
async fn a_cache_smaller_than_one_value_still_reads_and_writes_it() {
    let dir = TempDir::new().expect("temp dir");
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();
    {
        let (_log, mut sm) = vcos_canon_raft::open_with(dir.path(), 4 << 10).expect("opens with a 4 KiB cache");
        sm.apply([membership(1), entry(2, 1, Op::Put { key: b"big".to_vec(), value: big.clone() })]).await.expect("applied");
        assert_eq!(sm.reader().get(b"big").expect("read").as_deref(), Some(&big[..]));
        let mut snapshot = build(&mut sm).await.expect("built");
        assert!(snapshot.snapshot.to_vec().expect("reads back").len() > big.len());
    }
    let (_log, sm) = vcos_canon_raft::open_with(dir.path(), 0).expect("opens with no cache at all");
    assert_eq!(sm.reader().get(b"big").expect("read").as_deref(), Some(&big[..]));
}
