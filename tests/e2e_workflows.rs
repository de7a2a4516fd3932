//! Durable workflows as a user gets them over HTTP: a definition uploaded in YAML, validated
//! (a bad one refused with the path to the fault), exported, and run; the same workflow in
//! Rust; signals, a saga that compensates, the dead-letter list with skip; `kill -9` of a
//! single node mid-way and the workflow finishing after the restart; and on a region of three
//! nodes, the owner of a running workflow killed and the workflow finishing on another node.
//! Each step's effect on its counter is applied exactly once in both.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{call, read_imvu, start_region, until, Node};
use common::Proc;
use serde_json::{json, Value};

const UP_DEADLINE: Duration = Duration::from_secs(60);
const FINISH_DEADLINE: Duration = Duration::from_secs(60);

fn up(data: &Path, port: u16) -> (Proc, String) {
    let dir = data.to_str().expect("UTF-8");
    let listen = format!("127.0.0.1:{port}");
    let mut proc = Proc::spawn(&["up", "--data-dir", dir, "--listen", &listen, "--no-models"]);
    let base = proc.wait_up(UP_DEADLINE);
    (proc, base)
}

async fn put_yaml(http: &reqwest::Client, url: String, yaml: &str) -> (u16, Value) {
    let response = http.put(url).header("content-type", "application/yaml").body(yaml.to_owned()).send().await.expect("a response");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls a workflow until it has ended (retrying while its node is away); its view.
async fn finished(http: &reqwest::Client, base: &str, id: u64) -> Value {
    let started = Instant::now();
    loop {
        let (code, view) = call(http, "GET", format!("{base}/v1/tenants/default/workflows/{id}"), None).await;
        if code == 200 && !matches!(view["status"].as_str(), Some("running" | "created")) {
            return view;
        }
        assert!(code == 200 || code == 503 || code == 0, "only retryable errors while waiting: {code} {view}");
        assert!(started.elapsed() < FINISH_DEADLINE, "workflow {id} did not finish: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn counter(http: &reqwest::Client, base: &str) -> u64 {
    let (code, body) = call(http, "POST", format!("{base}/v1/tenants/default/imvus"), Some(json!({"kind": "counter"}))).await;
    assert_eq!(code, 201, "{body}");
    body["key"]["id"].as_u64().expect("an id")
}

async fn start(http: &reqwest::Client, base: &str, body: Value) -> u64 {
    let (code, view) = call(http, "POST", format!("{base}/v1/tenants/default/workflows"), Some(body)).await;
    assert_eq!(code, 201, "{view}");
    assert_eq!(view["status"], "running", "{view}");
    view["id"].as_u64().expect("an id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_in_yaml_and_rust_survive_a_kill_and_compensate() {
    let data = tempfile::tempdir().expect("temp dir");
    let port = common::cluster::free_port();
    let (mut node, base) = up(data.path(), port);
    let http = common::keyed_client(data.path(), Duration::from_secs(30));
    let defs = format!("{base}/v1/tenants/default/workflow-definitions");

    // A bad definition is refused with the path to the fault.
    let (code, error) = put_yaml(&http, format!("{defs}/bad"), "steps:\n  - id: a\n    set: { x: \"${vars.nope}\" }\n").await;
    assert_eq!(code, 400, "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("/steps/0/set/x") && message.contains("vars.nope"), "{error}");
    let (code, error) = put_yaml(&http, format!("{defs}/bad"), "steps:\n  - id: a\n    repeat: { while: \"${true}\", steps: [] }\n").await;
    assert_eq!(code, 400, "{error}");
    assert!(error["message"].as_str().unwrap_or_default().contains("/steps/0/repeat/max"), "{error}");

    // The shipped `tally`, in YAML: uploaded, versioned, exported again.
    let (code, stored) = put_yaml(&http, format!("{defs}/tally"), vcos_actors::workflow::examples::TALLY_YAML).await;
    assert_eq!((code, stored["version"].as_u64()), (201, Some(1)), "{stored}");
    let (code, stored) = put_yaml(&http, format!("{defs}/tally"), vcos_actors::workflow::examples::TALLY_YAML).await;
    assert_eq!((code, stored["version"].as_u64()), (201, Some(2)), "{stored}");
    let exported = http.get(format!("{defs}/tally?format=yaml")).send().await.expect("export");
    assert_eq!(exported.headers()["content-type"], "application/yaml");
    let exported = exported.text().await.expect("text");
    let (code, again) = put_yaml(&http, format!("{defs}/tally"), &exported).await;
    assert_eq!(code, 201, "an export uploads again: {again}");
    assert_eq!(again["definition"], stored["definition"]);

    // The same workflow in YAML and in Rust gives the same result.
    let c1 = counter(&http, &base).await;
    let yaml = start(&http, &base, json!({"definition": "tally", "input": {"counter": c1, "times": 3, "pause_ms": 50}})).await;
    let view = finished(&http, &base, yaml).await;
    assert_eq!((view["status"].as_str(), view["result"].as_u64()), (Some("completed"), Some(3)), "{view}");
    assert_eq!(view["steps"].as_array().map(Vec::len), Some(6), "three calls, three sleeps: {view}");
    let c2 = counter(&http, &base).await;
    let rust = start(&http, &base, json!({"workflow": "tally", "input": {"counter": c2, "times": 3, "pause_ms": 50}})).await;
    let view = finished(&http, &base, rust).await;
    assert_eq!((view["status"].as_str(), view["result"].as_u64()), (Some("completed"), Some(3)), "{view}");

    // A saga: a reservation, then a refusal by signal; the reservation is compensated.
    let saga = "name: saga\nsteps:\n  - id: reserve\n    call: { imvu: \"${input.counter}\", message: { op: add, n: 10 } }\n    compensate: { id: release, call: { imvu: \"${input.counter}\", message: { op: add, n: -10 } } }\n  - id: approve\n    wait: { signal: approval, timeout_ms: 60000 }\n  - id: decide\n    if: \"${steps.approve.result.signal.ok == true}\"\n    then: []\n    else: [ { id: refuse, fail: \"not approved\" } ]\n";
    let (code, body) = put_yaml(&http, format!("{defs}/saga"), saga).await;
    assert_eq!(code, 201, "{body}");
    let c3 = counter(&http, &base).await;
    let id = start(&http, &base, json!({"definition": "saga", "input": {"counter": c3}})).await;
    let url = format!("{base}/v1/tenants/default/workflows/{id}");
    until("the reservation is made and the approval awaited", async || {
        let (_, view) = call(&http, "GET", url.clone(), None).await;
        view["current"] == json!(["approve"])
    })
    .await;
    let (code, body) = call(&http, "POST", format!("{url}/signals/approval"), Some(json!({"ok": false}))).await;
    assert_eq!(code, 202, "{body}");
    let view = finished(&http, &base, id).await;
    assert_eq!(view["status"], "compensated", "{view}");
    assert_eq!(read_imvu(&http, &base, c3).await["state"], json!(0), "reserved, then released");
    let (code, body) = call(&http, "POST", format!("{url}/signals/approval"), Some(json!({}))).await;
    assert_eq!((code, body["code"].as_str()), (409, Some("conflict")), "no signals after the end: {body}");

    // Exhausted retries: dead-lettered, listed, then skipped with a result.
    let failing = "name: failing\nsteps:\n  - id: boom\n    activity: { name: fail, input: { message: kaput } }\n    retry: { max_attempts: 2, initial_interval_ms: 10 }\noutput: \"${steps.boom.result}\"\n";
    let (code, body) = put_yaml(&http, format!("{defs}/failing"), failing).await;
    assert_eq!(code, 201, "{body}");
    let id = start(&http, &base, json!({"definition": "failing"})).await;
    let view = finished(&http, &base, id).await;
    assert_eq!((view["status"].as_str(), view["failed_step"].as_str()), (Some("dead_lettered"), Some("0")), "{view}");
    let (_, dead) = call(&http, "GET", format!("{base}/v1/tenants/default/workflows?status=dead_lettered"), None).await;
    assert!(dead.as_array().is_some_and(|ids| ids.contains(&json!(id))), "{dead}");
    let (code, view) = call(&http, "POST", format!("{base}/v1/tenants/default/workflows/{id}/skip"), Some(json!({"result": "by hand"}))).await;
    assert_eq!((code, view["status"].as_str(), view["result"].as_str()), (200, Some("completed"), Some("by hand")), "{view}");

    // kill -9 mid-way: after the restart the workflow goes on from its journal by itself.
    let c4 = counter(&http, &base).await;
    let id = start(&http, &base, json!({"definition": "tally", "input": {"counter": c4, "times": 10, "pause_ms": 300}})).await;
    until("a few rounds are journaled", async || {
        let (_, view) = call(&http, "GET", format!("{base}/v1/tenants/default/workflows/{id}"), None).await;
        view["steps"].as_array().is_some_and(|s| s.len() >= 6)
    })
    .await;
    node.kill_hard();
    let (_node, base) = up(data.path(), port);
    let view = finished(&http, &base, id).await;
    assert_eq!(view["status"], "completed", "{view}");
    let total = read_imvu(&http, &base, c4).await["state"].as_u64().expect("a total");
    // An ask in flight at the kill is sent again, and applied once (an idempotent ask).
    assert_eq!(total, 10, "ten additions, each applied once");
    assert_eq!(view["result"].as_u64(), Some(total), "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workflow_whose_owner_is_killed_finishes_on_another_node() {
    let root = tempfile::tempdir().expect("temp dir");
    let (mut nodes, http) = start_region(root.path(), 3).await;
    let bases: Vec<String> = nodes.iter().map(Node::base).collect();
    let (code, body) = put_yaml(&http, format!("{}/v1/tenants/default/workflow-definitions/tally", bases[0]), vcos_actors::workflow::examples::TALLY_YAML).await;
    assert_eq!(code, 201, "{body}");

    // Workflows started through node 1 until one is owned by another node (its counter too).
    let mut chosen = None;
    for _ in 0..20 {
        let c = counter(&http, &bases[0]).await;
        let id = start(&http, &bases[0], json!({"definition": "tally", "input": {"counter": c, "times": 12, "pause_ms": 300}})).await;
        let owner = read_imvu(&http, &bases[0], id).await["placement"]["owner_node"].as_u64().expect("an owner");
        if owner != 1 {
            chosen = Some((id, c, owner));
            break;
        }
    }
    let (id, c, owner) = chosen.expect("some workflow lands on node 2 or 3");
    until("a few rounds are journaled", async || {
        let (_, view) = call(&http, "GET", format!("{}/v1/tenants/default/workflows/{id}", bases[0]), None).await;
        view["steps"].as_array().is_some_and(|s| s.len() >= 4)
    })
    .await;
    nodes[(owner - 1) as usize].kill_9();
    let view = finished(&http, &bases[0], id).await;
    assert_eq!(view["status"], "completed", "{view}");
    let after = read_imvu(&http, &bases[0], id).await;
    assert_ne!(after["placement"]["owner_node"].as_u64(), Some(owner), "it finished elsewhere: {after}");
    let total = read_imvu(&http, &bases[0], c).await["state"].as_u64().expect("a total");
    assert_eq!(total, 12, "twelve additions, each applied once");
}
