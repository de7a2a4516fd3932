//! Three canon nodes in one process over real loopback TCP: forming a region by join, writes
//! through a follower (forwarded), linearizable and stale reads, leader loss, membership
//! refusals, and a replica region that reads the first region's canon as a learner.

use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use vcos_canon_raft::{CanonError, CanonNode, NodeConfig, Op, RaftCanonStore, Response, TcpTransport};
use vcos_actors::store::{commit_durable, CanonStore, CanonWrite};

struct Running {
    node: CanonNode,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(id: u64, region: &str, dir: &TempDir) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut config = NodeConfig::new(id, region, &dir.path().join(format!("n{id}")));
    config.info.raft_addr = listener.local_addr().expect("addr").to_string();
    config.info.http_addr = format!("http-of-{id}");
    config.raft.heartbeat_interval = 50;
    config.raft.election_timeout_min = 200;
    config.raft.election_timeout_max = 400;
    let node = CanonNode::start(config, Arc::new(TcpTransport)).await.expect("node starts");
    let server = tokio::spawn({
        let node = node.clone();
        async move { node.serve(listener).await }
    });
    Running { node, server }
}

fn put(key: &str, value: &str) -> Op {
    Op::Put { key: key.as_bytes().to_vec(), value: value.as_bytes().to_vec() }
}

async fn wait_for<F: Fn() -> bool>(what: &str, check: F) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_forms_by_join_survives_its_leader_and_feeds_a_replica_region() {
    let dir = TempDir::new().expect("temp dir");
    let n1 = start(1, "eu", &dir).await;
    n1.node.bootstrap().await.expect("bootstrap");
    let n2 = start(2, "eu", &dir).await;
    let n3 = start(3, "eu", &dir).await;
    for joining in [&n2, &n3] {
        joining.node.join(&n1.node.views()).await.expect("join");
    }
    let view = n1.node.views().into_iter().find(|v| v.region == "eu").expect("eu group");
    assert_eq!(view.members.iter().filter(|m| m.role == "voter").count(), 3, "{view:?}");

    // A write through a follower is forwarded to the leader and visible locally at once.
    let (response, index) = n3.node.write("eu", put("k/1", "one")).await.expect("forwarded write");
    assert_eq!(response, Response::Put);
    assert!(index > 0);
    assert_eq!(n3.node.home().expect("home").reader().get(b"k/1").expect("a read of the canon"), Some(b"one".to_vec()));

    // The CanonStore seam on a follower: group commit, canon indexes in order, read back.
    let store = RaftCanonStore::start(n2.node.clone());
    let mut indexes = Vec::new();
    for i in 0..5 {
        let writes = vec![CanonWrite::Append { prefix: "ev/".into(), value: vec![i] }, CanonWrite::Put { key: format!("meta/{i}"), value: vec![i] }];
        indexes.push(commit_durable(&store, writes).await.expect("commit"));
    }
    assert!(indexes.windows(2).all(|w| w[0] < w[1]), "{indexes:?}");
    assert_eq!(store.scan_prefix("ev/", None, 100).expect("scan").len(), 5);

    // A replica region: node 4 of "us" reads "eu" as a learner.
    let n4 = start(4, "us", &dir).await;
    n4.node.join(&n1.node.views()).await.expect("replica joins");
    // The leader adds the learner without waiting for it: n4 hosts "eu" once its first frames
    // arrive.
    let eu_on_4 = {
        let node = n4.node.clone();
        wait_for("n4 hosts eu", || node.group("eu").is_ok()).await;
        node.group("eu").expect("eu")
    };
    wait_for("eu replicated to us", || eu_on_4.reader().get(b"k/1").expect("a read of the canon").is_some()).await;
    assert_eq!(n4.node.lag("eu").expect("lag").role, "learner");
    // ... and "eu" nodes read "us" as learners.
    n4.node.write("us", put("us/1", "x")).await.expect("write in us");
    let us_on_1 = {
        let node = n1.node.clone();
        wait_for("n1 hosts us", || node.group("us").is_ok()).await;
        node.group("us").expect("us")
    };
    wait_for("us replicated to eu", || us_on_1.reader().get(b"us/1").expect("a read of the canon").is_some()).await;

    // Removing a voter is refused when the remaining voters could not form a quorum.
    let leader_id = n1.node.home().expect("home").leader().expect("leader").0;
    let nodes = [&n1, &n2, &n3];
    let leader = nodes.iter().find(|n| n.node.id() == leader_id).expect("leader is one of them");
    let others: Vec<_> = nodes.iter().filter(|n| n.node.id() != leader_id).collect();
    let refused = leader.node.remove_member("eu", leader_id).await;
    assert!(refused.is_ok() || matches!(refused, Err(CanonError::Refused(_))), "{refused:?}");

    // Kill the leader: the other two elect a new one and keep every acknowledged write.
    leader.server.abort();
    leader.node.shutdown().await;
    let survivor = &others[0].node;
    let (_, _) = survivor.write("eu", put("k/2", "two")).await.expect("write after leader loss");
    let barrier = others[1].node.read_barrier("eu").await.expect("linearizable barrier on a follower");
    assert!(barrier > 0);
    let reader = others[1].node.home().expect("home");
    assert_eq!(reader.reader().get(b"k/1").expect("a read of the canon"), Some(b"one".to_vec()));
    assert_eq!(reader.reader().get(b"k/2").expect("a read of the canon"), Some(b"two".to_vec()));
    assert_eq!(reader.reader().range(b"ev/", None, 100).expect("a read of the canon").len(), 5);

    // With the leader dead, removing another voter would leave one live voter of two: refused.
    let dead = leader_id;
    let new_leader = survivor.home().expect("home").leader().expect("a new leader").0;
    assert_ne!(new_leader, dead);
    let live = others.iter().map(|n| n.node.id()).find(|id| *id != new_leader).expect("a live follower");
    let refused = survivor.remove_member("eu", live).await;
    assert!(matches!(refused, Err(CanonError::Refused(ref reason)) if reason.contains("quorum")), "{refused:?} (dead {dead})");
    for n in [&n1, &n2, &n3, &n4] {
        n.server.abort();
        n.node.shutdown().await;
    }
}
