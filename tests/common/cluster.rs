//! A cluster of `vcos up` processes on loopback, as the end-to-end cluster tests drive it:
//! nodes with free ports, HTTP calls that never panic on a transport error, and the counter
//! IMVU's `add`, read and reconciliation while buckets fail over.

use std::collections::BTreeMap;
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Proc;

pub(crate) const UP_DEADLINE: Duration = Duration::from_secs(60);
pub(crate) const CONVERGE_DEADLINE: Duration = Duration::from_secs(60);

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

pub(crate) fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

pub(crate) struct Node {
    pub(crate) id: u64,
    pub(crate) region: &'static str,
    pub(crate) http: u16,
    raft: u16,
    gossip: u16,
    dir: String,
    join: Option<String>,
    /// The first node's admin key, which a joining node sends.
    join_key: String,
    /// Serves the installed models (else `--no-models`).
    models: bool,
    /// Runs desktops (`--desktops`, no warm pool).
    desktops: bool,
    proc: Option<Proc>,
    /// Whether it has come up once (its ports are then part of the cluster's state).
    started: bool,
}

impl Node {
    /// Node `id` of region `eu`, its data under `root`, joining through `join`.
    pub(crate) fn new(id: u64, root: &Path, join: Option<String>) -> Self {
        Self::in_region(id, "eu", root, join)
    }

    /// Node `id` of `region`.
    pub(crate) fn in_region(id: u64, region: &'static str, root: &Path, join: Option<String>) -> Self {
        let dir = root.join(format!("node{id}")).to_str().expect("UTF-8 temp path").to_owned();
        let join_key = super::admin_key_file(root.join("node1")).to_str().expect("UTF-8 temp path").to_owned();
        Self { id, region, http: free_port(), raft: free_port(), gossip: free_udp_port(), dir, join, join_key, models: false, desktops: false, proc: None, started: false }
    }

    /// The same node, running desktops (`--desktops --desktop-pool 0`).
    pub(crate) fn with_desktops(mut self) -> Self {
        self.desktops = true;
        self
    }

    /// The same node, serving the installed models (`vcos models install` first).
    pub(crate) fn with_models(mut self) -> Self {
        self.models = true;
        self
    }

    pub(crate) fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    /// Starts the node. A first start whose port was taken between `free_port` and the bind
    /// (another process's outgoing connection may get it) starts again on fresh ports, with a
    /// fresh data directory; a restart keeps its ports, which the cluster knows.
    pub(crate) fn start(&mut self) {
        for _ in 0..3 {
            match self.try_start() {
                Ok(proc) => {
                    self.proc = Some(proc);
                    self.started = true;
                    return;
                }
                Err(why) if !self.started && why.contains("Address already in use") => {
                    eprintln!("node {}: a port was taken before `vcos up` bound it; again on fresh ports", self.id);
                    let _ = std::fs::remove_dir_all(&self.dir);
                    (self.http, self.raft, self.gossip) = (free_port(), free_port(), free_udp_port());
                }
                Err(why) => panic!("{why}"),
            }
        }
        panic!("node {}: no free ports in 3 tries", self.id);
    }

    fn try_start(&mut self) -> Result<Proc, String> {
        let id = self.id.to_string();
        let http = format!("127.0.0.1:{}", self.http);
        let raft = format!("127.0.0.1:{}", self.raft);
        let gossip = format!("127.0.0.1:{}", self.gossip);
        let mut args = vec![
            "up", "--data-dir", &self.dir, "--listen", &http, "--raft-listen", &raft, "--gossip-listen", &gossip, "--node-id", &id,
            "--region", self.region,
        ];
        if !self.models {
            args.push("--no-models");
        }
        if self.desktops {
            args.extend(["--desktops", "--desktop-pool", "0"]);
        }
        if let Some(join) = &self.join {
            args.extend(["--join", join.as_str(), "--api-key-file", self.join_key.as_str()]);
        }
        let mut proc = Proc::spawn(&args);
        let base = proc.try_wait_up(UP_DEADLINE)?;
        assert_eq!(base, self.base());
        Ok(proc)
    }

    pub(crate) fn kill_9(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill_hard();
        }
    }

    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.proc.as_ref().expect("running").pid().to_string();
        let status = std::process::Command::new("kill").args([signal, &pid]).status().expect("kill runs");
        assert!(status.success());
    }
}

/// A client sending the admin key of the cluster whose first node's data is under `root`.
pub(crate) fn client(root: &Path) -> reqwest::Client {
    super::keyed_client(root.join("node1"), Duration::from_secs(15))
}

pub(crate) async fn call(http: &reqwest::Client, method: &str, url: String, body: Option<Value>) -> (u16, Value) {
    let mut request = match method {
        "GET" => http.get(url),
        "DELETE" => http.delete(url),
        _ => http.post(url),
    };
    if let Some(body) = body {
        request = request.json(&body);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let bytes = response.bytes().await.unwrap_or_default();
            (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
        }
        Err(e) => (0, json!({ "transport_error": e.to_string() })),
    }
}

pub(crate) async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < CONVERGE_DEADLINE, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Buckets owned per node id, as `base` sees them, and how many members it sees alive.
pub(crate) async fn cluster_view(http: &reqwest::Client, base: &str) -> (BTreeMap<u64, u64>, usize) {
    let (code, view) = call(http, "GET", format!("{base}/v1/cluster"), None).await;
    if code != 200 {
        return (BTreeMap::new(), 0);
    }
    let members = view["members"].as_array().cloned().unwrap_or_default();
    let alive = members.iter().filter(|m| m["state"] == "alive").count();
    let owned = members.iter().map(|m| (m["node_id"].as_u64().unwrap_or(0), m["buckets_owned"].as_u64().unwrap_or(0))).collect();
    (owned, alive)
}

pub(crate) async fn add(http: &reqwest::Client, base: &str, id: u64, n: i64) -> (u16, Value) {
    call(http, "POST", format!("{base}/v1/tenants/default/imvus/{id}/messages"), Some(json!({"message": {"op": "add", "n": n}}))).await
}

/// `GET` an IMVU, retrying while its bucket fails over (503).
pub(crate) async fn read_imvu(http: &reqwest::Client, base: &str, id: u64) -> Value {
    let started = Instant::now();
    loop {
        let (code, body) = call(http, "GET", format!("{base}/v1/tenants/default/imvus/{id}"), None).await;
        if code == 200 {
            return body;
        }
        assert!(matches!(code, 503 | 0), "only retryable errors while failing over: {code} {body}");
        assert!(started.elapsed() < CONVERGE_DEADLINE, "IMVU {id} unreadable: {code} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `add 1` and checks the reply is the running total, retrying while the IMVU's bucket
/// fails over (a 503 that says the message was not applied). An answer whose outcome is
/// unknown (a timeout between nodes) is reconciled by reading the state.
pub(crate) async fn add_one(http: &reqwest::Client, base: &str, id: u64, totals: &mut BTreeMap<u64, i64>) {
    let started = Instant::now();
    let total = totals.entry(id).or_insert(0);
    loop {
        let (code, body) = add(http, base, id, 1).await;
        if code == 200 {
            *total += 1;
            assert_eq!(body["reply"], json!(*total), "IMVU {id} through {base}: every earlier message is seen, once");
            return;
        }
        let message = body["message"].as_str().unwrap_or_default();
        if code == 0 || message.contains("outcome unknown") {
            let state = read_imvu(http, base, id).await["state"].as_i64().expect("a counter");
            assert!(state == *total || state == *total + 1, "IMVU {id}: {state} after an unknown outcome at {total}");
            *total = state;
            return;
        }
        assert_eq!(code, 503, "only retryable errors while failing over: {code} {body}");
        assert!(started.elapsed() < CONVERGE_DEADLINE, "IMVU {id} did not answer: {code} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `n` nodes of region `eu` under `root` (the first bootstraps, the others join it) and
/// waits until every node sees them all alive, each holding some of the 256 buckets. Returns
/// them and a client with the cluster's admin key.
pub(crate) async fn start_region(root: &Path, n: u64) -> (Vec<Node>, reqwest::Client) {
    let mut nodes = vec![Node::new(1, root, None)];
    nodes[0].start();
    let client = client(root);
    let http = &client;
    let seed = nodes[0].base();
    for id in 2..=n {
        let mut node = Node::new(id, root, Some(seed.clone()));
        node.start();
        nodes.push(node);
    }
    let n = n as usize;
    for node in &nodes {
        until("every node sees every member alive, each holding buckets, all 256 held", async || {
            let (owned, alive) = cluster_view(http, &node.base()).await;
            alive == n && owned.values().sum::<u64>() == 256 && owned.len() == n && owned.values().all(|&b| b > 0)
        })
        .await;
    }
    (nodes, client)
}
