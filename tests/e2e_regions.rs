//! Two regions as an operator runs them: five `vcos up` processes on loopback, three in `eu`
//! and two in `us`. IMVUs are created in both regions (each id carries its home region's tag),
//! every node answers for every IMVU (forwarded across regions to the home region's owner),
//! an IMVU in one region asks IMVUs in the other and tells one a sequence that arrives in
//! order, and after `kill -9` of an `eu` owner its
//! IMVUs answer again through the `us` nodes, with their state from `eu`'s canon.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::cluster::{add, add_one, call, client, read_imvu, until, Node};
use serde_json::{json, Value};

/// Buckets owned per node, as `base` sees its own region, and the members it sees alive.
async fn view(http: &reqwest::Client, base: &str) -> (BTreeMap<u64, u64>, usize) {
    let (code, view) = call(http, "GET", format!("{base}/v1/cluster"), None).await;
    if code != 200 {
        return (BTreeMap::new(), 0);
    }
    let members = view["members"].as_array().cloned().unwrap_or_default();
    let alive = members.iter().filter(|m| m["state"] == "alive").count();
    let owned = members
        .iter()
        .filter(|m| m["buckets_owned"].as_u64().unwrap_or(0) > 0)
        .map(|m| (m["node_id"].as_u64().unwrap_or(0), m["buckets_owned"].as_u64().unwrap_or(0)))
        .collect();
    (owned, alive)
}

async fn create(http: &reqwest::Client, base: &str, kind: &str) -> Value {
    let (code, body) = call(http, "POST", format!("{base}/v1/tenants/default/imvus"), Some(json!({"kind": kind}))).await;
    assert_eq!(code, 201, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn imvus_of_two_regions_answer_through_every_node_and_fail_over() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut nodes = vec![Node::in_region(1, "eu", root.path(), None)];
    nodes[0].start();
    let seed = nodes[0].base();
    for (id, region) in [(2, "eu"), (3, "eu"), (4, "us"), (5, "us")] {
        let mut node = Node::in_region(id, region, root.path(), Some(seed.clone()));
        node.start();
        nodes.push(node);
    }
    let http = client(root.path());
    let bases: Vec<String> = nodes.iter().map(Node::base).collect();
    let region_nodes = |region: &str| -> BTreeSet<u64> { nodes.iter().filter(|n| n.region == region).map(|n| n.id).collect() };
    let (eu, us) = (region_nodes("eu"), region_nodes("us"));
    for node in &nodes {
        let own = if node.region == "eu" { eu.clone() } else { us.clone() };
        until("every node sees five members; its region's nodes hold all 256 buckets", async || {
            let (owned, alive) = view(&http, &node.base()).await;
            alive == 5 && owned.values().sum::<u64>() == 256 && owned.keys().copied().collect::<BTreeSet<u64>>() == own
        })
        .await;
    }

    // Counters created through every node live in the creating node's region.
    let mut home: BTreeMap<u64, &str> = BTreeMap::new();
    for round in 0..4 {
        for node in &nodes {
            let id = create(&http, &node.base(), "counter").await["key"]["id"].as_u64().expect("an id");
            assert!(home.insert(id, node.region).is_none(), "ids are unique across regions (round {round}): {id}");
        }
    }
    let mut owner_of: BTreeMap<u64, u64> = BTreeMap::new();
    for (&id, &region) in &home {
        for base in [&bases[0], &bases[4]] {
            let body = read_imvu(&http, base, id).await;
            assert_eq!(body["placement"]["region"], json!(region), "IMVU {id} seen through {base}: {body}");
            let owner = body["placement"]["owner_node"].as_u64().expect("an owner");
            assert!(region_nodes(region).contains(&owner), "IMVU {id} of {region} is owned by node {owner} of its region");
            owner_of.insert(id, owner);
        }
    }

    // Messages through every node, in turn: each reaches the one activation in the IMVU's
    // home region (replies are the running total).
    let mut totals: BTreeMap<u64, i64> = BTreeMap::new();
    for round in 0..5 {
        for &id in home.keys() {
            add_one(&http, &bases[(round + id as usize) % 5], id, &mut totals).await;
        }
    }

    // IMVUs talk to IMVUs across regions: a relay in `us` asks counters in `eu`.
    let relay = create(&http, &bases[3], "relay").await["key"]["id"].as_u64().expect("an id");
    let remote: Vec<u64> = home.iter().filter(|(_, region)| **region == "eu").map(|(id, _)| *id).take(4).collect();
    for &id in &remote {
        let message = json!({"message": {"op": "ask", "to": id, "message": {"op": "get"}}});
        let (code, body) = call(&http, "POST", format!("{}/v1/tenants/default/imvus/{relay}/messages", bases[1]), Some(message)).await;
        assert_eq!(code, 200, "{body}");
    }
    let answers = async || {
        let message = json!({"message": {"op": "answers"}});
        let (_, body) = call(&http, "POST", format!("{}/v1/tenants/default/imvus/{relay}/messages", bases[4]), Some(message)).await;
        body["reply"].as_array().cloned().unwrap_or_default()
    };
    until("the relay in us got an answer from every counter in eu", async || answers().await.len() == remote.len()).await;
    let mut got: Vec<i64> = answers().await.iter().filter_map(|a| a["reply"]["Ok"].as_i64()).collect();
    let mut want: Vec<i64> = remote.iter().map(|id| totals[id]).collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "answers from the other region");

    // Order between two IMVUs on nodes of different regions: a relay in eu tells a relay in
    // us 300 notes from one handler; they arrive in the order sent.
    let noter = create(&http, &bases[4], "relay").await["key"]["id"].as_u64().expect("an id");
    let sender = create(&http, &bases[0], "relay").await["key"]["id"].as_u64().expect("an id");
    let notes: Vec<Value> = (1..=300).map(|i| json!({"op": "note", "value": i})).collect();
    let message = json!({"message": {"op": "tell_each", "to": noter, "messages": notes}});
    let (code, body) = call(&http, "POST", format!("{}/v1/tenants/default/imvus/{sender}/messages", bases[2]), Some(message)).await;
    assert_eq!((code, &body["reply"]["sent"]), (200, &json!(300)), "{body}");
    let noted = async || {
        let (_, body) = call(&http, "POST", format!("{}/v1/tenants/default/imvus/{noter}/messages", bases[3]), Some(json!({"message": {"op": "notes"}}))).await;
        body["reply"].as_array().cloned().unwrap_or_default()
    };
    until("the relay in us noted all 300", async || noted().await.len() == 300).await;
    assert_eq!(noted().await, (1..=300).map(|i| json!(i)).collect::<Vec<_>>(), "notes arrive in the order sent");

    // kill -9 the eu node owning the most eu IMVUs: each answers again through a us node.
    let mut per_owner: BTreeMap<u64, usize> = BTreeMap::new();
    for (id, owner) in &owner_of {
        if home[id] == "eu" {
            *per_owner.entry(*owner).or_insert(0) += 1;
        }
    }
    let victim = per_owner.iter().max_by_key(|(_, n)| **n).map(|(node, _)| *node).expect("an eu owner");
    nodes[(victim - 1) as usize].kill_9();
    let killed = Instant::now();
    let mut recovery_ms = Vec::new();
    let mut uncertain: BTreeMap<u64, i64> = BTreeMap::new();
    for (&id, _) in owner_of.iter().filter(|(_, owner)| **owner == victim) {
        loop {
            let (code, body) = add(&http, &bases[3], id, 1).await;
            if code == 200 {
                let total = totals.entry(id).or_insert(0);
                *total += 1;
                assert_eq!(body["reply"], json!(*total), "IMVU {id} came back with its state from eu's canon");
                break;
            }
            if body["message"].as_str().is_some_and(|m| m.contains("outcome unknown")) {
                // It may have been applied, or still be on its way: counted as either.
                *uncertain.entry(id).or_insert(0) += 1;
                break;
            }
            assert!(matches!(code, 503 | 0), "a failing-over IMVU answers a retryable error, got {code} {body}");
            assert!(killed.elapsed() < Duration::from_secs(30), "IMVU {id} did not come back: {code} {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        recovery_ms.push(killed.elapsed().as_millis());
    }
    eprintln!("cross-region failover after kill -9 of node {victim}: answering again through us after {recovery_ms:?} ms");

    // Nothing acknowledged was lost, in either region, seen from the other one.
    for (&id, &total) in &totals {
        let base = if home[&id] == "eu" { &bases[4] } else { &bases[victim as usize % 3] /* a surviving eu node */ };
        let state = read_imvu(&http, base, id).await["state"].as_i64().expect("a counter");
        let extra = uncertain.get(&id).copied().unwrap_or(0);
        assert!((total..=total + extra).contains(&state), "IMVU {id} of {}: {state}, acknowledged {total}, unknown {extra}", home[&id]);
    }
}
