//! A region that loses its quorum, and the mistake that used to cause it: adding a voter at an
//! address where nothing listens. Two canon nodes in one process over loopback TCP.
//!
//! Checked: a node added "as a voter" that never answers stays a learner
//! (`CanonError::NotPromoted`) and writes go on; it is removed without a quorum check; with
//! the other voter of two gone, writes, read barriers and `CanonStore` commits end by the
//! request deadline with the retryable `Unavailable` errors, health reports no quorum, and
//! the node stops within its bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use vcos_actors::store::{commit_durable, CanonWrite, StoreError};
use vcos_canon_raft::constants::{CANON_SHUTDOWN_MAX_MS, PROMOTE_CATCH_UP_MS};
use vcos_canon_raft::{CanonError, CanonNode, NodeConfig, NodeInfo, Op, RaftCanonStore, Response, TcpTransport};

/// The request deadline of these nodes (shorter than the default, to keep the test fast).
const DEADLINE: Duration = Duration::from_millis(1_500);
/// Scheduling slack on a loaded machine.
const SLACK: Duration = Duration::from_secs(2);

struct Running {
    node: CanonNode,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(id: u64, dir: &TempDir) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut config = NodeConfig::new(id, "eu", &dir.path().join(format!("n{id}")));
    config.info.raft_addr = listener.local_addr().expect("addr").to_string();
    config.info.http_addr = format!("http-of-{id}");
    config.raft.heartbeat_interval = 50;
    config.raft.election_timeout_min = 200;
    config.raft.election_timeout_max = 400;
    config.request_deadline = DEADLINE;
    let node = CanonNode::start(config, Arc::new(TcpTransport)).await.expect("node starts");
    let server = tokio::spawn({
        let node = node.clone();
        async move { node.serve(listener).await }
    });
    Running { node, server }
}

fn put(key: &str) -> Op {
    Op::Put { key: key.as_bytes().to_vec(), value: b"v".to_vec() }
}

/// An address where nothing listens (bound, then released).
fn dead_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

fn roles(node: &CanonNode) -> Vec<(u64, String)> {
    let view = node.views().into_iter().find(|v| v.region == "eu").expect("eu group");
    view.members.into_iter().map(|m| (m.node_id, m.role)).collect()
}

async fn until(what: &str, within: Duration, check: impl Fn() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < within, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_at_a_dead_address_stays_a_learner_and_a_lost_quorum_fails_fast() {
    let dir = TempDir::new().expect("temp dir");
    let n1 = start(1, &dir).await;
    n1.node.bootstrap().await.expect("bootstrap");
    n1.node.write("eu", put("k/0")).await.expect("first write");
    assert!(n1.node.health().ok, "{:?}", n1.node.health());

    // The mistake: a voter where nothing listens. It is added as a learner and left there.
    let bogus = NodeInfo { raft_addr: dead_addr(), http_addr: dead_addr(), region: "eu".into() };
    let started = Instant::now();
    let added = n1.node.add_member("eu", 9, bogus, true).await;
    assert!(matches!(added, Err(CanonError::NotPromoted(ref reason)) if reason.contains("learner")), "{added:?}");
    assert!(started.elapsed() < Duration::from_millis(PROMOTE_CATCH_UP_MS) + DEADLINE + SLACK, "{:?}", started.elapsed());
    assert_eq!(roles(&n1.node), vec![(1, "voter".to_owned()), (9, "learner".to_owned())]);

    // Writes are not blocked by the learner; promoting it is refused while it never answered.
    let started = Instant::now();
    let (response, _) = n1.node.write("eu", put("k/1")).await.expect("write with a dead learner");
    assert_eq!(response, Response::Put);
    assert!(started.elapsed() < DEADLINE, "{:?}", started.elapsed());
    let promoted = n1.node.promote("eu", 9).await;
    assert!(matches!(promoted, Err(CanonError::Refused(ref reason)) if reason.contains("acknowledged no entry")), "{promoted:?}");

    // Removing the learner is allowed (no quorum check for learners).
    n1.node.remove_member("eu", 9).await.expect("remove the bogus learner");
    assert_eq!(roles(&n1.node), vec![(1, "voter".to_owned())]);

    // A real second voter joins (learner, caught up, promoted), then dies: no quorum of two.
    let n2 = start(2, &dir).await;
    n2.node.join(&n1.node.views()).await.expect("join");
    assert_eq!(roles(&n1.node), vec![(1, "voter".to_owned()), (2, "voter".to_owned())]);
    n1.node.write("eu", put("k/2")).await.expect("write with two voters");
    n2.server.abort();
    n2.node.shutdown().await;

    // Every path ends by its deadline with the retryable error.
    let started = Instant::now();
    let write = n1.node.write("eu", put("k/3")).await;
    assert!(matches!(write, Err(CanonError::Unavailable { .. })), "{write:?}");
    assert!(write.as_ref().is_err_and(CanonError::is_retryable));
    assert!(started.elapsed() < DEADLINE + SLACK, "write took {:?}", started.elapsed());

    let started = Instant::now();
    let barrier = n1.node.read_barrier("eu").await;
    assert!(matches!(barrier, Err(CanonError::Unavailable { .. })), "{barrier:?}");
    assert!(started.elapsed() < DEADLINE + SLACK, "read barrier took {:?}", started.elapsed());

    let store = RaftCanonStore::start(n1.node.clone());
    let started = Instant::now();
    let commit = commit_durable(&store, vec![CanonWrite::Put { key: "meta/x".into(), value: vec![1] }]).await;
    assert!(matches!(commit, Err(StoreError::Unavailable(_))), "{commit:?}");
    assert!(started.elapsed() < DEADLINE + SLACK, "commit took {:?}", started.elapsed());
    let http_write = store.write_ops(vec![put("k/4")]).await;
    assert!(matches!(http_write, Err(CanonError::Unavailable { .. })), "{http_write:?}");

    // Health says so once the dead voter has been silent past the contact window.
    until("health reports no quorum", Duration::from_secs(6), || !n1.node.health().ok).await;
    let health = n1.node.health();
    let eu = health.groups.iter().find(|g| g.region == "eu").expect("eu health");
    assert!(!eu.quorum && eu.voters == 2, "{health:?}");

    // Removing the dead voter is refused for quorum (it would need the dead one), and fast.
    let started = Instant::now();
    let removed = n1.node.remove_member("eu", 2).await;
    assert!(matches!(removed, Err(CanonError::Refused(ref reason)) if reason.contains("quorum")), "{removed:?}");
    assert!(started.elapsed() < SLACK, "{:?}", started.elapsed());

    // Stopping is bounded whatever Raft does.
    let started = Instant::now();
    n1.server.abort();
    n1.node.shutdown().await;
    assert!(started.elapsed() < Duration::from_millis(CANON_SHUTDOWN_MAX_MS) + SLACK, "shutdown took {:?}", started.elapsed());
}
