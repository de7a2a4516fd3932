//! IMVUs that think: the `assistant` kind embeds notes and questions and generates answers
//! through `Context::embed` / `Context::generate`, served by the real models; while model
//! calls are in flight the shard keeps answering its other IMVUs; tokens count as the
//! tenant's usage; a node without models answers the calls with an error, never a hang.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vcos_actors::kinds::{Assistant, Counter};
use vcos_actors::metering::UsageUnit;
use vcos_actors::{Caller, ImvuKey, MemoryStore, Runtime, RuntimeConfig, SystemClock, TenantId, TenantPolicy};
use vcos_gpu_workers::models::{install_all, InstallOptions, ModelCache};
use vcos_gpu_workers::serve::{ImvuModels, Inference, InferenceSettings};

async fn runtime() -> (Runtime, TenantId) {
    let mut config = RuntimeConfig::new(Arc::new(MemoryStore::new()), Arc::new(SystemClock::new()));
    config.shards_per_kind = 1;
    let runtime = Runtime::builder(config).kind(Assistant).kind(Counter).start().await.expect("runtime");
    let tenant = TenantId::default_tenant();
    runtime.ensure_tenant(tenant, TenantPolicy::default()).await.expect("tenant");
    (runtime, tenant)
}

async fn create(runtime: &Runtime, tenant: &TenantId, kind: &str) -> ImvuKey {
    runtime.create_imvu(tenant, kind, &Caller::internal(tenant, "test")).await.expect("created").key
}

/// Polls `{op: answers}` until `n` answers and nothing waiting.
async fn answers(runtime: &Runtime, key: &ImvuKey, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = runtime.ask_json(key, json!({"op": "answers"})).await.expect("answers");
        if got["answers"].as_array().is_some_and(|a| a.len() >= n) && got["waiting"] == 0 {
            return got;
        }
        assert!(Instant::now() < deadline, "no answers in time: {got}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assistant_remembers_by_embedding_and_answers_by_generating() {
    let inference = tokio::task::spawn_blocking(|| {
        let cache = ModelCache::resolve(None).expect("cache");
        install_all(&cache, &InstallOptions::default()).expect("models install");
        Inference::load(&cache, &InferenceSettings::default())
    })
    .await
    .expect("load");
    let (inference, notes) = inference;
    assert!(notes.is_empty(), "{notes:?}");
    let inference = Arc::new(inference);
    let (runtime, tenant) = runtime().await;
    runtime.set_models(Arc::new(ImvuModels::new(runtime.downgrade(), Arc::new(vcos_gpu_workers::serve::LocalModels::new(inference.clone())))));

    let assistant = create(&runtime, &tenant, "assistant").await;
    for note in ["The office cat is called Miso.", "The quarterly report is due on Friday.", "Paris is the capital of France."] {
        let reply = runtime.ask_json(&assistant, json!({"op": "remember", "text": note})).await.expect("remember");
        assert!(reply["request"].as_u64().is_some(), "answered at once with the request's number: {reply}");
    }
    // A note is usable once its embedding came back (answers arrive in any order).
    let deadline = Instant::now() + Duration::from_secs(60);
    while runtime.ask_json(&assistant, json!({"op": "notes"})).await.expect("notes").as_array().map_or(0, Vec::len) < 3 {
        assert!(Instant::now() < deadline, "notes not embedded in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reply = runtime.ask_json(&assistant, json!({"op": "ask", "question": "What is the name of the office cat?", "max_tokens": 24})).await.expect("ask");
    let request = reply["request"].as_u64().expect("a number");

    // While the models work, the shard answers: another assistant on the same (only) shard,
    // and this one's own queries, in mailbox order.
    let other = create(&runtime, &tenant, "assistant").await;
    let quick = runtime.ask_json(&other, json!({"op": "notes"})).await.expect("served meanwhile");
    assert_eq!(quick, json!([]));

    let got = answers(&runtime, &assistant, 1).await;
    let answer = &got["answers"][0];
    assert_eq!(answer["request"].as_u64(), Some(request));
    assert_eq!(answer["recalled"][0], "The office cat is called Miso.", "the closest note first: {answer}");
    let text = answer["answer"]["Ok"].as_str().unwrap_or_else(|| panic!("an answer: {answer}"));
    assert!(text.contains("Miso"), "the recalled note reached the prompt: {text:?}");

    // Tokens (3 notes, 1 question embedded, 1 generation) are the tenant's usage.
    runtime.write_usage().await.expect("usage written");
    let usage = runtime.usage(&tenant, 0, u64::MAX).expect("usage");
    let tokens = usage.totals.get(&UsageUnit::Tokens).copied().unwrap_or(0);
    assert!(tokens > 30, "tokens counted: {tokens}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_models_a_thinking_imvu_gets_an_error_not_a_hang() {
    let (runtime, tenant) = runtime().await;
    let assistant = create(&runtime, &tenant, "assistant").await;
    runtime.ask_json(&assistant, json!({"op": "ask", "question": "Anyone there?"})).await.expect("ask");
    let got = answers(&runtime, &assistant, 1).await;
    let error = got["answers"][0]["answer"]["Err"].as_str().unwrap_or_default();
    assert!(error.starts_with("unavailable") && error.contains("vcos models install"), "{got}");
}
