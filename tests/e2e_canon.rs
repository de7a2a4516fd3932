//! The canon as an operator runs it: three `vcos up` processes on loopback form one region
//! (`--join`), clients write through every node while a voter and then the leader are killed
//! with `kill -9` and restarted, and every acknowledged key reads back, linearizably, from
//! every node. Also: a replica region, membership through the CLI (including a refused,
//! quorum-losing removal), writes to a follower, bad input.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Proc;
use serde_json::{json, Value};

const UP_DEADLINE: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONVERGE_DEADLINE: Duration = Duration::from_secs(60);

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// One cluster member's fixed addresses and data directory, so it can be restarted.
struct Member {
    id: u64,
    region: &'static str,
    http: u16,
    raft: u16,
    dir: String,
    join: Option<String>,
    /// The first member's admin key, which a joining member sends.
    join_key: String,
    proc: Option<Proc>,
}

impl Member {
    fn new(id: u64, region: &'static str, root: &Path, join: Option<String>) -> Self {
        let dir = root.join(format!("node{id}")).to_str().expect("UTF-8 temp path").to_owned();
        let join_key = common::admin_key_file(root.join("node1")).to_str().expect("UTF-8 temp path").to_owned();
        Self { id, region, http: free_port(), raft: free_port(), dir, join, join_key, proc: None }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    fn start(&mut self) {
        let (id, http, raft) = (self.id.to_string(), format!("127.0.0.1:{}", self.http), format!("127.0.0.1:{}", self.raft));
        let mut args = vec!["up", "--data-dir", &self.dir, "--listen", &http, "--raft-listen", &raft, "--node-id", &id, "--region", self.region, "--no-models"];
        if let Some(join) = &self.join {
            args.extend(["--join", join.as_str(), "--api-key-file", self.join_key.as_str()]);
        }
        let mut proc = Proc::spawn(&args);
        let base = proc.wait_up(UP_DEADLINE);
        assert_eq!(base, self.base());
        self.proc = Some(proc);
    }

    fn kill_9(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill_hard();
        }
    }
}

fn client(root: &Path) -> reqwest::Client {
    common::keyed_client(root.join("node1"), REQUEST_TIMEOUT)
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_default();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn status(http: &reqwest::Client, base: &str) -> Value {
    let response = http.get(format!("{base}/v1/canon/status")).send().await.expect("status answers");
    json_of(response).await.1
}

fn group<'a>(status: &'a Value, region: &str) -> &'a Value {
    status["groups"].as_array().and_then(|g| g.iter().find(|g| g["region"] == region)).unwrap_or(&Value::Null)
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < CONVERGE_DEADLINE, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn vcos(args: &[&str]) -> (bool, String) {
    let mut proc = Proc::spawn(args);
    let (status, output) = proc.finish(Duration::from_secs(120));
    (status.success(), output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_voters_survive_kill_9_of_a_voter_and_the_leader() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut members = vec![Member::new(1, "eu", root.path(), None)];
    members[0].start();
    let seed = members[0].base();
    for id in 2..=3 {
        members.push(Member::new(id, "eu", root.path(), Some(seed.clone())));
        members[(id - 1) as usize].start();
    }
    let http = client(root.path());
    until("three voters", async || {
        let view = status(&http, &seed).await;
        group(&view, "eu")["members"].as_array().is_some_and(|m| m.iter().filter(|m| m["role"] == "voter").count() == 3)
    })
    .await;

    // Writers: each writes its own keys through every node in turn; a key counts as
    // acknowledged only when the node answered 200.
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bases: Vec<String> = members.iter().map(Member::base).collect();
    let mut writers = Vec::new();
    for w in 0..6 {
        let (acked, stop, bases, http) = (acked.clone(), stop.clone(), bases.clone(), http.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("w{w}-{i}");
                let value = format!("value-{w}-{i}");
                let base = &bases[(i as usize + w) % bases.len()];
                let sent = http.put(format!("{base}/v1/canon/kv/{key}")).json(&json!({ "value": value })).send().await;
                if let Ok(response) = sent {
                    if response.status().as_u16() == 200 {
                        acked.lock().expect("lock").insert(key, value);
                    }
                }
                i += 1;
            }
        }));
    }
    let acked_count = || acked.lock().expect("lock").len();
    let wait_progress = async |from: usize| {
        let started = Instant::now();
        while acked_count() < from + 50 {
            assert!(started.elapsed() < CONVERGE_DEADLINE, "writes made no progress (stuck at {})", acked_count());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait_progress(0).await;

    // kill -9 a follower (a voter that is not the leader), keep writing, restart it.
    let leader = group(&status(&http, &seed).await, "eu")["leader_id"].as_u64().expect("a leader");
    let follower = members.iter().position(|m| m.id != leader).expect("a follower");
    members[follower].kill_9();
    wait_progress(acked_count()).await;
    members[follower].start();

    // kill -9 the leader, keep writing, restart it.
    let alive = members.iter().find(|m| m.proc.is_some() && m.id != leader).map(Member::base).expect("a live node");
    let leader_index = members.iter().position(|m| m.id == leader).expect("leader is a member");
    members[leader_index].kill_9();
    until("a new leader", async || {
        group(&status(&http, &alive).await, "eu")["leader_id"].as_u64().is_some_and(|id| id != leader)
    })
    .await;
    wait_progress(acked_count()).await;
    members[leader_index].start();
    wait_progress(acked_count()).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer task");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 200, "only {} writes acknowledged", acked.len());

    // Every acknowledged key, from every node, linearizably (a page listing per node).
    for base in &bases {
        let mut found = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let mut url = format!("{base}/v1/canon/kv?prefix=w&limit=1000");
            if let Some(after) = &after {
                url.push_str(&format!("&after={after}"));
            }
            let (code, page) = json_of(http.get(url).send().await.expect("list answers")).await;
            assert_eq!(code, 200, "{page}");
            let page = page.as_array().cloned().unwrap_or_default();
            for entry in &page {
                found.insert(entry["key"].as_str().unwrap_or_default().to_owned(), entry["value"].as_str().unwrap_or_default().to_owned());
            }
            match page.last() {
                Some(last) if page.len() == 1000 => after = last["key"].as_str().map(str::to_owned),
                _ => break,
            }
        }
        for (key, value) in &acked {
            assert_eq!(found.get(key), Some(value), "{base} lost acknowledged key {key}");
        }
    }

    // A replica region reads eu's canon; its lag shows in `vcos canon status`.
    let mut replica = Member::new(4, "us", root.path(), Some(seed.clone()));
    replica.start();
    let (key, value) = acked.iter().next().expect("one key");
    until("the replica region caught up", async || {
        let url = format!("{}/v1/canon/kv/{key}?region=eu&consistency=stale", replica.base());
        let (code, body) = json_of(http.get(url).send().await.expect("answers")).await;
        code == 200 && body["value"] == value.as_str()
    })
    .await;
    let key_file = common::admin_key_file(root.path().join("node1")).to_str().expect("UTF-8 temp path").to_owned();
    let (ok, out) = vcos(&["canon", "status", "--node", &replica.base(), "--api-key-file", &key_file]);
    assert!(ok && out.contains("eu") && out.contains("learner") && out.contains("us"), "{out}");

    // Membership from the CLI: removing the leader is refused with the reason; removing a
    // follower works, and the removed node stops serving.
    let view = status(&http, &replica.base()).await;
    let leader = group(&view, "eu")["leader_id"].as_u64().expect("leader");
    let at_leader = members.iter().find(|m| m.id == leader).map(Member::base).expect("the leader is a member");
    let (ok, out) = vcos(&["canon", "members", "remove", &leader.to_string(), "--node", &at_leader, "--api-key-file", &key_file]);
    assert!(!ok && out.contains("current leader"), "{out}");
    let victim = members.iter_mut().find(|m| m.id != leader).expect("a follower");
    let (ok, out) = vcos(&["canon", "members", "remove", &victim.id.to_string(), "--node", &at_leader, "--api-key-file", &key_file]);
    assert!(ok, "{out}");
    let proc = victim.proc.as_mut().expect("running");
    assert!(proc.wait_exit(Duration::from_secs(30)).is_some(), "a removed node stops serving; output:\n{}", proc.output());
    let (ok, out) = vcos(&["canon", "members", "list", "--node", &at_leader, "--api-key-file", &key_file]);
    assert!(ok && out.contains("voter"), "{out}");
    // Two voters left. With the other one killed, removing it is refused: the change itself
    // would need that dead voter's acknowledgement.
    let other = members
        .iter_mut()
        .position(|m| m.id != leader && m.proc.as_mut().is_some_and(|p| p.wait_exit(Duration::ZERO).is_none()))
        .expect("the other follower");
    let other = &mut members[other];
    let other_id = other.id;
    other.kill_9();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (ok, out) = vcos(&["canon", "members", "remove", &other_id.to_string(), "--node", &at_leader, "--api-key-file", &key_file]);
    assert!(!ok && out.contains("lose quorum"), "{out}");
}

#[test]
fn bad_canon_input_is_refused_with_the_reason() {
    let (ok, out) = vcos(&["up", "--region", "no/slashes", "--listen", "127.0.0.1:0"]);
    assert!(!ok && out.contains("invalid region"), "{out}");
    let (ok, out) = vcos(&["up", "--join", "ftp://x", "--listen", "127.0.0.1:0"]);
    assert!(!ok && out.contains("not an http:// URL"), "{out}");
    let (ok, out) = vcos(&["canon", "status", "--node", "http://127.0.0.1:1"]);
    assert!(!ok && out.contains("connect"), "{out}");
}
