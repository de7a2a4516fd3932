//! Swarms across nodes as an operator runs them: three `vcos up` processes of one region. A
//! swarm's coordinator is placed like an IMVU (its id's bucket, under that bucket's lease and
//! fence), so every node answers for every swarm; its members are IMVUs on any node. After
//! `kill -9` of the coordinator's node, the bucket's new holder starts the coordinator from
//! canon on the next request, hands out again what was in flight, and every item is credited
//! exactly once.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::{call, start_region, until, Node};
use serde_json::{json, Value};

/// The swarm's info through `base`, retrying while its bucket fails over (503).
async fn info(http: &reqwest::Client, base: &str, swarm: u64) -> Value {
    let started = Instant::now();
    loop {
        let (code, body) = call(http, "GET", format!("{base}/v1/tenants/default/swarms/{swarm}"), None).await;
        if code == 200 {
            return body;
        }
        assert!(matches!(code, 503 | 0), "only retryable errors while failing over: {code} {body}");
        assert!(started.elapsed() < Duration::from_secs(60), "swarm {swarm} unreadable: {code} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit(http: &reqwest::Client, base: &str, swarm: u64, items: &[Value]) -> Vec<u64> {
    let (code, body) = call(http, "POST", format!("{base}/v1/tenants/default/swarms/{swarm}/work"), Some(json!({"items": items}))).await;
    assert_eq!(code, 202, "{body}");
    body["item_ids"].as_array().expect("ids").iter().map(|id| id.as_u64().expect("an id")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swarm_coordinators_fail_over_with_exactly_once_credit() {
    let root = tempfile::tempdir().expect("temp dir");
    let (mut nodes, http) = start_region(root.path(), 3).await;
    let bases: Vec<String> = nodes.iter().map(Node::base).collect();

    // Created through node 1 (its coordinator runs there: the id is drawn in a bucket node 1
    // holds), fed and read through the others.
    let (code, created) =
        call(&http, "POST", format!("{}/v1/tenants/default/swarms", bases[0]), Some(json!({"member_kind": "text-worker", "members": 4}))).await;
    assert_eq!(code, 201, "{created}");
    let swarm = created["key"]["id"].as_u64().expect("an id");
    let words = |i: usize| json!({"op": "upper", "text": format!("item {i}")});
    let first: Vec<Value> = (0..20).map(words).collect();
    let mut ids: BTreeSet<u64> = submit(&http, &bases[1], swarm, &first).await.into_iter().collect();
    until("the first 20 items are done, as node 3 sees it", async || info(&http, &bases[2], swarm).await["progress"]["completed"] == json!(20)).await;

    // More work, then kill -9 the coordinator's node while it is being done.
    let second: Vec<Value> = (20..60).map(words).collect();
    ids.extend(submit(&http, &bases[1], swarm, &second).await);
    nodes[0].kill_9();
    let killed = Instant::now();
    until("every item is done after the coordinator's node died", async || {
        let progress = info(&http, &bases[1], swarm).await["progress"].clone();
        progress["completed"] == json!(60) && progress["pending"] == json!(0) && progress["in_flight"] == json!(0)
    })
    .await;
    eprintln!("swarm coordinator failover: all 60 items done {} ms after kill -9", killed.elapsed().as_millis());

    // Exactly-once credit: one record per item, each with the right result.
    let (code, credits) = call(&http, "GET", format!("{}/v1/tenants/default/swarms/{swarm}/credits", bases[2]), None).await;
    assert_eq!(code, 200, "{credits}");
    let credits = credits["credits"].as_array().cloned().expect("credits");
    let credited: Vec<u64> = credits.iter().map(|c| c["item"].as_u64().expect("an item id")).collect();
    assert_eq!(credited.len(), 60, "one credit per item: {credits:?}");
    assert_eq!(credited.iter().copied().collect::<BTreeSet<u64>>(), ids, "every item credited, none twice");
}
