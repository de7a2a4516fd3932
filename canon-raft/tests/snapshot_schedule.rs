//! Snapshots are spaced in proportion to the state (`NodeConfig::snapshot_every`): a build
//! copies the whole state, so a growing state is snapshotted less and less often, the copying
//! per written entry stays bounded, and the log behind each snapshot is still purged.
//!
//! One node on loopback, every write a new key: each entry writes two records (the key and
//! its client's dedup record) and adds one to the state.

use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use vcos_canon_raft::{CanonNode, NodeConfig, Op, SnapshotEvery, TcpTransport};

const MIN_WRITES: u64 = 40;
const WRITES: u64 = 700;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_spaced_in_proportion_to_the_state() {
    let dir = TempDir::new().expect("temp dir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut config = NodeConfig::new(1, "eu", dir.path());
    config.info.raft_addr = listener.local_addr().expect("addr").to_string();
    config.snapshot_every = Some(SnapshotEvery { min_writes: MIN_WRITES, state_fraction: 2 });
    config.raft.max_in_snapshot_log_to_keep = 0;
    let node = CanonNode::start(config, Arc::new(TcpTransport)).await.expect("node starts");
    let server = tokio::spawn({
        let node = node.clone();
        async move { node.serve(listener).await }
    });
    node.bootstrap().await.expect("bootstrap");
    let group = node.home().expect("home");

    let mut seen: Vec<u64> = Vec::new();
    for i in 0..WRITES {
        let op = Op::Put { key: format!("imvu/{i:06}").into_bytes(), value: vec![7; 16] };
        node.write("eu", op).await.expect("write");
        if let Some(snapshot) = group.raft().metrics().borrow().snapshot {
            if seen.last() != Some(&snapshot.index) {
                seen.push(snapshot.index);
            }
        }
    }
    // Let a build that was asked for at the end finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(snapshot) = group.raft().metrics().borrow().snapshot {
        if seen.last() != Some(&snapshot.index) {
            seen.push(snapshot.index);
        }
    }

    eprintln!("snapshots at {seen:?}");
    // A fixed interval of 20 entries (40 writes) would have built 35 snapshots. Here a
    // snapshot is due once the writes since the last one are half the records: past 80
    // entries, each comes at about 4/3 of the index of the last (20, 40, 60, 80, 106, 141,
    // 188, 251, 335, 447, 596).
    assert!(seen.len() >= 6, "builds go on as the state grows: {seen:?}");
    assert!(seen.len() <= 15, "builds are spaced out as the state grows: {seen:?}");
    assert!(seen[0] >= MIN_WRITES / 2, "{seen:?}");
    for pair in seen.windows(2) {
        // Every entry past the membership and blank entries added one record and wrote two.
        let records_at_least = pair[0].saturating_sub(3);
        let due_after_writes = MIN_WRITES.max(records_at_least / 2);
        let gap = pair[1] - pair[0];
        assert!(2 * gap >= due_after_writes, "a snapshot at {} came {gap} entries after the one at {}: {seen:?}", pair[1], pair[0]);
    }
    let last = *seen.last().expect("a snapshot");
    assert!(last >= WRITES / 2, "the last snapshot is recent: {seen:?}");
    let purged = group.raft().metrics().borrow().purged.map(|id| id.index);
    assert!(purged.is_some_and(|p| p >= seen[seen.len() - 2]), "the log behind the snapshots is purged: {purged:?}, {seen:?}");

    // The state is whole: every key reads back.
    let keys = group.reader().range(b"imvu/", None, 10_000).expect("a read of the canon");
    assert_eq!(keys.len() as u64, WRITES);

    server.abort();
    node.shutdown().await;
}
