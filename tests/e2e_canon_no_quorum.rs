//! The defect this guards against, as an operator would hit it: one `POST /v1/canon/members`
//! adding a voter at an address where nothing listens used to stop the node for good (writes
//! hung, removal refused, Ctrl-C never completed, a restart never answered).
//!
//! Now: the bogus node is added as a learner and left one (409 `learner_not_promoted`), writes
//! go on, removing it works. Then a real second voter joins and is killed: writes answer 503
//! `canon_unavailable` with `Retry-After` by the deadline, `/health` says `degraded`, SIGTERM
//! stops the node within its bound even with a write in flight, and after a restart without
//! a quorum the node serves HTTP (health degraded, writes 503, stale reads 200).

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Proc;
use serde_json::{json, Value};

/// `vcos up` until it prints its URL (a restart without quorum waits one canon deadline).
const UP_DEADLINE: Duration = Duration::from_secs(30);
/// The canon request deadline (5 s) plus scheduling slack on a loaded machine.
const CANON_ANSWER_MAX: Duration = Duration::from_secs(9);
/// The bound `vcos up` keeps when stopping (15 s), plus slack.
const STOP_MAX: Duration = Duration::from_secs(17);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

struct Member {
    id: u64,
    http: u16,
    raft: u16,
    dir: String,
    join: Option<String>,
    join_key: String,
}

impl Member {
    fn new(id: u64, root: &Path, join: Option<String>) -> Self {
        let dir = root.join(format!("node{id}")).to_str().expect("UTF-8 temp path").to_owned();
        let join_key = common::admin_key_file(root.join("node1")).to_str().expect("UTF-8 temp path").to_owned();
        Self { id, http: free_port(), raft: free_port(), dir, join, join_key }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    fn start(&self) -> Proc {
        let (id, http, raft) = (self.id.to_string(), format!("127.0.0.1:{}", self.http), format!("127.0.0.1:{}", self.raft));
        let mut args = vec!["up", "--data-dir", &self.dir, "--listen", &http, "--raft-listen", &raft, "--node-id", &id, "--region", "eu", "--no-models"];
        if let Some(join) = &self.join {
            args.extend(["--join", join.as_str(), "--api-key-file", self.join_key.as_str()]);
        }
        let mut proc = Proc::spawn(&args);
        assert_eq!(proc.wait_up(UP_DEADLINE), self.base());
        proc
    }
}

/// Sends `signal` and returns how long the process took to exit (it must exit cleanly).
fn stop(proc: &mut Proc, signal: &str) -> Duration {
    let started = Instant::now();
    let sent = Command::new("kill").args([signal, &proc.pid().to_string()]).status().expect("kill runs");
    assert!(sent.success(), "kill {signal} failed");
    let (status, output) = proc.finish(STOP_MAX);
    assert!(status.success(), "`vcos up` stopped with {status} after {signal}; output:\n{output}");
    started.elapsed()
}

async fn call(http: &reqwest::Client, method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Option<String>, Value) {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the node answers");
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = response.bytes().await.unwrap_or_default();
    (status, retry_after, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn put(http: &reqwest::Client, base: &str, key: &str) -> (u16, Option<String>, Value, Duration) {
    let started = Instant::now();
    let (status, retry_after, body) =
        call(http, reqwest::Method::PUT, format!("{base}/v1/canon/kv/{key}"), Some(json!({"value": key}))).await;
    (status, retry_after, body, started.elapsed())
}

fn roles(status: &Value) -> Vec<(u64, String)> {
    let groups = status["groups"].as_array().cloned().unwrap_or_default();
    let eu = groups.into_iter().find(|g| g["region"] == "eu").unwrap_or(Value::Null);
    eu["members"]
        .as_array()
        .map(|m| m.iter().map(|m| (m["node_id"].as_u64().unwrap_or(0), m["role"].as_str().unwrap_or("").to_owned())).collect())
        .unwrap_or_default()
}

async fn until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bogus_voter_and_a_lost_quorum_leave_the_node_serving_and_stoppable() {
    let root = tempfile::tempdir().expect("temp dir");
    let one = Member::new(1, root.path(), None);
    let base = one.base();
    let mut proc1 = one.start();
    let http = common::keyed_client(root.path().join("node1"), Duration::from_secs(30));

    // The mistake: a voter at an address where nothing listens.
    let bogus = json!({"node_id": 9, "raft_addr": format!("127.0.0.1:{}", free_port()),
        "http_addr": format!("127.0.0.1:{}", free_port()), "region": "eu", "role": "voter"});
    let started = Instant::now();
    let (status, _, body) = call(&http, reqwest::Method::POST, format!("{base}/v1/canon/members"), Some(bogus)).await;
    assert_eq!((status, &body["code"]), (409, &json!("learner_not_promoted")), "{body}");
    assert!(started.elapsed() < CANON_ANSWER_MAX + Duration::from_secs(5), "{:?}", started.elapsed());
    let (_, _, view) = call(&http, reqwest::Method::GET, format!("{base}/v1/canon/status"), None).await;
    assert_eq!(roles(&view), vec![(1, "voter".to_owned()), (9, "learner".to_owned())], "{view}");

    // Writes go on; the bogus learner is removed.
    let (status, _, body, took) = put(&http, &base, "a").await;
    assert_eq!(status, 200, "{body}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let (status, _, body) = call(&http, reqwest::Method::DELETE, format!("{base}/v1/canon/members/9"), None).await;
    assert_eq!(status, 204, "{body}");
    let (status, _, health) = call(&http, reqwest::Method::GET, format!("{base}/health"), None).await;
    assert_eq!((status, &health["status"], &health["canon"]["ok"]), (200, &json!("ok"), &json!(true)), "{health}");

    // A real second voter joins, then dies: the region of two has no quorum.
    let two = Member::new(2, root.path(), Some(base.clone()));
    let mut proc2 = two.start();
    until("two voters", Duration::from_secs(20), async || {
        let (_, _, view) = call(&http, reqwest::Method::GET, format!("{base}/v1/canon/status"), None).await;
        roles(&view) == vec![(1, "voter".to_owned()), (2, "voter".to_owned())]
    })
    .await;
    proc2.kill_hard();

    let (status, retry_after, body, took) = put(&http, &base, "b").await;
    assert_eq!((status, &body["code"]), (503, &json!("canon_unavailable")), "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(took < CANON_ANSWER_MAX, "{took:?}");
    until("health degraded", Duration::from_secs(10), async || {
        let (status, _, health) = call(&http, reqwest::Method::GET, format!("{base}/health"), None).await;
        status == 503 && health["status"] == "degraded" && health["canon"]["ok"] == false
    })
    .await;

    // SIGTERM with a write in flight: the node stops within its bound.
    let in_flight = tokio::spawn({
        let (http, base) = (http.clone(), base.clone());
        async move { http.put(format!("{base}/v1/canon/kv/c")).json(&json!({"value": "c"})).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let took = stop(&mut proc1, "-TERM");
    assert!(took < STOP_MAX, "{took:?}");
    let in_flight = in_flight.await.expect("the request task ends");
    assert!(in_flight.as_ref().map_or(true, |status| *status == 503), "{in_flight:?}");

    // Restarted without a quorum, it serves HTTP.
    let mut proc1 = one.start();
    let (status, _, health) = call(&http, reqwest::Method::GET, format!("{base}/health"), None).await;
    assert_eq!((status, &health["status"], &health["canon"]["ok"]), (503, &json!("degraded"), &json!(false)), "{health}");
    let (status, retry_after, body, took) = put(&http, &base, "d").await;
    assert_eq!((status, &body["code"], retry_after.as_deref()), (503, &json!("canon_unavailable"), Some("1")), "{body}");
    assert!(took < CANON_ANSWER_MAX, "{took:?}");
    let (status, _, body) = call(&http, reqwest::Method::GET, format!("{base}/v1/canon/kv/a?consistency=stale"), None).await;
    assert_eq!((status, &body["value"]), (200, &json!("a")), "{body}");
    let took = stop(&mut proc1, "-INT");
    assert!(took < STOP_MAX, "{took:?}");
}
