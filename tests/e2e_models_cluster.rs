//! Models across a cluster as an operator runs one: node 1 serves the installed models (it
//! takes the `inference` role), node 2 serves none (`--no-models`). Through node 2, the
//! OpenAI-shaped routes answer with node 1's models (the same vectors and the same greedy
//! reply as node 1 gives itself), and an `assistant` IMVU that node 2 hosts thinks with them.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{call, cluster_view, until, Node};
use common::Proc;
use serde_json::{json, Value};

const EMBED: &str = "all-minilm-l6-v2";
const CHAT: &str = "smollm2-135m-instruct";

async fn embeddings(http: &reqwest::Client, base: &str) -> Vec<Vec<f64>> {
    let body = json!({"model": EMBED, "input": ["The office cat is called Miso.", "Raft keeps the canon."]});
    let (status, reply) = call(http, "POST", format!("{base}/v1/embeddings"), Some(body)).await;
    assert_eq!(status, 200, "{reply}");
    reply["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| d["embedding"].as_array().expect("a vector").iter().map(|x| x.as_f64().expect("a number")).collect())
        .collect()
}

async fn greedy(http: &reqwest::Client, base: &str) -> Value {
    let body = json!({"model": CHAT, "messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0, "max_tokens": 16});
    let (status, reply) = call(http, "POST", format!("{base}/v1/chat/completions"), Some(body)).await;
    assert_eq!(status, 200, "{reply}");
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_without_models_serves_them_through_an_inference_node() {
    let (status, output) = Proc::spawn(&["models", "install"]).finish(Duration::from_secs(600));
    assert!(status.success(), "`vcos models install` failed:\n{output}");
    let root = tempfile::tempdir().expect("temp dir");
    let mut serving = Node::new(1, root.path(), None).with_models();
    serving.start();
    let mut plain = Node::new(2, root.path(), Some(serving.base()));
    plain.start();
    let http = common::cluster::client(root.path());
    let (one, two) = (serving.base(), plain.base());
    for base in [&one, &two] {
        until("both nodes see both alive, each holding buckets, all 256 held", async || {
            let (owned, alive) = cluster_view(&http, base).await;
            alive == 2 && owned.values().sum::<u64>() == 256 && owned.len() == 2 && owned.values().all(|&b| b > 0)
        })
        .await;
    }

    // The roles say who serves models.
    let (_, view) = call(&http, "GET", format!("{two}/v1/cluster"), None).await;
    let roles = |node: u64| -> Vec<String> {
        let member = view["members"].as_array().expect("members").iter().find(|m| m["node_id"] == node).cloned().expect("the member");
        member["roles"].as_array().expect("roles").iter().filter_map(|r| r.as_str().map(str::to_owned)).collect()
    };
    assert!(roles(1).contains(&"inference".to_owned()), "{view}");
    assert!(!roles(2).contains(&"inference".to_owned()), "{view}");

    // Node 2 lists the cluster's models and serves them through node 1.
    let (status, models) = call(&http, "GET", format!("{two}/v1/models"), None).await;
    assert_eq!(status, 200, "{models}");
    let ids: Vec<&str> = models["data"].as_array().expect("a list").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, [EMBED, CHAT]);
    let (here, there) = (embeddings(&http, &one).await, embeddings(&http, &two).await);
    assert_eq!(there.len(), 2);
    assert_eq!(there[0].len(), 384);
    for (a, b) in here.iter().flatten().zip(there.iter().flatten()) {
        assert!((a - b).abs() < 1e-6, "node 2's vectors are node 1's");
    }
    let (here, there) = (greedy(&http, &one).await, greedy(&http, &two).await);
    assert_eq!(here["choices"][0]["message"], there["choices"][0]["message"], "greedy: the same reply through either node");
    assert!(there["choices"][0]["message"]["content"].as_str().is_some_and(|c| c.contains("Paris")), "{there}");
    assert_eq!(here["usage"], there["usage"]);

    // Streamed through node 2: one content chunk, the finish, the usage, the end.
    let body = json!({"model": CHAT, "messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0, "max_tokens": 16,
        "stream": true, "stream_options": {"include_usage": true}});
    let response = http.post(format!("{two}/v1/chat/completions")).json(&body).send().await.expect("a response");
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.expect("the stream");
    let events: Vec<Value> = text.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|d| *d != "[DONE]").map(|d| serde_json::from_str(d).expect("JSON")).collect();
    let content: String = events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(Some(content.as_str()), here["choices"][0]["message"]["content"].as_str(), "{text}");
    assert_eq!(events.last().map(|e| e["usage"].clone()), Some(here["usage"].clone()), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // An unknown model is still a 404, whichever node is asked.
    let (status, error) = call(&http, "POST", format!("{two}/v1/embeddings"), Some(json!({"model": "no-such-model", "input": "x"}))).await;
    assert_eq!(status, 404, "{error}");

    // An assistant hosted by node 2 remembers (embedding) and answers (generation) with
    // node 1's models.
    let mut url = None;
    for _ in 0..32 {
        let (status, created) = call(&http, "POST", format!("{two}/v1/tenants/default/imvus"), Some(json!({"kind": "assistant"}))).await;
        assert_eq!(status, 201, "{created}");
        if created["placement"]["owner_node"] == 2 {
            url = Some(format!("{two}/v1/tenants/default/imvus/{}/messages", created["key"]["id"]));
            break;
        }
    }
    let url = url.unwrap_or_else(|| panic!("no assistant placed on node 2 within 32 tries"));
    let message = async |body: Value| call(&http, "POST", url.clone(), Some(json!({ "message": body }))).await;
    assert_eq!(message(json!({"op": "remember", "text": "The office cat is called Miso."})).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    while message(json!({"op": "notes"})).await.1["reply"].as_array().map_or(0, Vec::len) < 1 {
        assert!(Instant::now() < deadline, "the note was not embedded in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(message(json!({"op": "ask", "question": "What is the office cat called?", "max_tokens": 16})).await.0, 200);
    loop {
        let (_, answers) = message(json!({"op": "answers"})).await;
        if let Some(answer) = answers["reply"]["answers"].get(0) {
            assert!(answer["answer"]["Ok"].as_str().is_some_and(|a| a.contains("Miso")), "{answer}");
            break;
        }
        assert!(Instant::now() < deadline, "no answer in time: {answers}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `vcos bench think` as a user runs it, at a small size: it reports both phases.
#[test]
fn bench_think_quick_runs() {
    let (status, output) = Proc::spawn(&["models", "install"]).finish(Duration::from_secs(600));
    assert!(status.success(), "`vcos models install` failed:\n{output}");
    let (status, output) = Proc::spawn(&["bench", "think", "--waiting", "16", "--probes", "4", "--asks", "40", "--max-tokens", "4"]).finish(Duration::from_secs(300));
    assert!(status.success(), "{output}");
    assert!(output.contains("idle node") && output.contains("while the others wait on generation") && output.contains("p99 while waiting"), "{output}");
}
