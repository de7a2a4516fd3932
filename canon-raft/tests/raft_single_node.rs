//! A single-voter `openraft::Raft` over the redb stores, in process: initialize, write, read
//! back, snapshot and purge, restart from the same directory and read again.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Config, SnapshotPolicy};
use tempfile::TempDir;
use vcos_canon_raft::{CanonRaft, LeaseInfo, NodeInfo, Op, Request, Response, StateReader, UnreachableNetwork};

const NODE_ID: u64 = 1;
const WAIT: Option<Duration> = Some(Duration::from_secs(10));

/// Starts the node on `dir`. The previous node's database handle may still be closing after
/// its shutdown, so opening retries for a while.
async fn start(dir: &Path) -> (CanonRaft, StateReader) {
    let mut tries = 0;
    let (log, sm) = loop {
        match vcos_canon_raft::open(dir) {
            Ok(stores) => break stores,
            Err(e) if tries < 100 => {
                tries += 1;
                tracing::debug!("reopen: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the store does not reopen: {e}"),
        }
    };
    let reader = sm.reader();
    let config = Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(10),
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    };
    let config = Arc::new(config.validate().expect("the config is valid"));
    let raft = CanonRaft::new(NODE_ID, config, UnreachableNetwork, log, sm).await.expect("raft starts");
    (raft, reader)
}

async fn write(raft: &CanonRaft, request: Request) -> Response {
    raft.client_write(request).await.expect("the single voter commits").data
}

fn put(seq: u64) -> Request {
    let op = Op::Put { key: format!("k/{seq:03}").into_bytes(), value: seq.to_be_bytes().to_vec() };
    Request { client_id: 1, seq, op }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_writes_survive_restart() {
    let dir = TempDir::new().expect("temp dir");
    let last_index = {
        let (raft, reader) = start(dir.path()).await;
        raft.initialize(BTreeMap::from([(NODE_ID, NodeInfo::default())])).await.expect("initialized");
        raft.wait(WAIT).current_leader(NODE_ID, "leader elected").await.expect("becomes leader");

        for seq in 1..=25 {
            assert_eq!(write(&raft, put(seq)).await, Response::Put);
        }
        let cas = Request {
            client_id: 2,
            seq: 1,
            op: Op::CompareAndSet { key: b"cas".to_vec(), expected: None, new: Some(b"1".to_vec()) },
        };
        let first = write(&raft, cas.clone()).await;
        assert_eq!(first, Response::Cas { success: true, current: Some(b"1".to_vec()) });
        assert_eq!(write(&raft, cas).await, first, "a retried request returns the stored response");
        let lease = Request {
            client_id: 3,
            seq: 1,
            op: Op::AcquireLease { name: "l".into(), holder: "me".into(), ttl_ms: 100, now_ms: 1_000 },
        };
        let granted = LeaseInfo { holder: Some("me".into()), epoch: 1, expires_at_ms: 1_100 };
        assert_eq!(write(&raft, lease).await, Response::Lease { granted: true, lease: Some(granted) });

        assert_eq!(reader.get(b"k/007").expect("a read of the canon"), Some(7u64.to_be_bytes().to_vec()));
        assert_eq!(reader.range(b"k/", None, 100).expect("a read of the canon").len(), 25);

        raft.trigger().snapshot().await.expect("snapshot triggered");
        let metrics = raft
            .wait(WAIT)
            .metrics(|m| m.snapshot.is_some() && m.purged.is_some(), "snapshot built and log purged")
            .await
            .expect("snapshot and purge happen");
        let snapshot_index = metrics.snapshot.expect("a snapshot was built").index;
        // Written after the snapshot: only the log holds it, so the restart must replay it.
        let after = Request { client_id: 4, seq: 1, op: Op::Put { key: b"after".to_vec(), value: b"x".to_vec() } };
        let written = raft.client_write(after).await.expect("the single voter commits");
        assert!(written.log_id.index > snapshot_index);
        let last_index = written.log_id.index;
        raft.shutdown().await.expect("clean shutdown");
        last_index
    };

    let (raft, reader) = start(dir.path()).await;
    raft.wait(WAIT).current_leader(NODE_ID, "leader after restart").await.expect("leader again");
    raft.wait(WAIT).applied_index_at_least(Some(last_index), "replayed").await.expect("replays the log");
    assert_eq!(reader.get(b"k/007").expect("a read of the canon"), Some(7u64.to_be_bytes().to_vec()));
    assert_eq!(reader.get(b"cas").expect("a read of the canon"), Some(b"1".to_vec()));
    assert_eq!(reader.get(b"after").expect("a read of the canon"), Some(b"x".to_vec()));
    assert_eq!(reader.range(b"k/", Some(b"k/020"), 100).expect("a read of the canon").len(), 5);
    assert_eq!(reader.lease("l").expect("a read of the canon").map(|l| l.epoch), Some(1));
    // Dedup state survived too: the old request is stale, a new one applies.
    assert_eq!(write(&raft, put(25)).await, Response::Put, "seq 25 was client 1's last: stored response");
    assert_eq!(write(&raft, put(3)).await, Response::StaleSequence { last_seq: 25 });
    assert_eq!(write(&raft, put(26)).await, Response::Put);
    assert_eq!(reader.range(b"k/", None, 100).expect("a read of the canon").len(), 26);
    raft.shutdown().await.expect("clean shutdown");
}
