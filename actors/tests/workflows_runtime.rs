//! Workflows in a real runtime (memory store): a Rust workflow calls a counter through an
//! idempotent ask, an activity that panics fails its step (never a hang), and a model step on
//! a node without models fails with `unavailable`; each outcome is journaled.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use vcos_actors::kinds::Counter;
use vcos_actors::workflow::{Command, Program, RetryPolicy, StepOptions, WorkflowContext, Workflows};
use vcos_actors::{Caller, ImvuKey, MemoryStore, Runtime, RuntimeConfig, SystemClock, TenantId, TenantPolicy};

async fn until_ended(rt: &Runtime, key: &ImvuKey) -> Value {
    for _ in 0..500 {
        let view = rt.ask_json(key, json!({"op": "get"})).await.expect("a view");
        if !matches!(view["status"].as_str(), Some("running" | "created")) {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the workflow did not end");
}

#[tokio::test]
async fn steps_fail_cleanly_and_calls_land_once() {
    let config = RuntimeConfig::new(Arc::new(MemoryStore::new()), Arc::new(SystemClock::new()));
    let once = StepOptions { retry: RetryPolicy { max_attempts: 1, ..RetryPolicy::default() }, ..StepOptions::default() };
    let workflows = Workflows::new().register("mixed", move |ctx: WorkflowContext, input: Value| {
        let once = once.clone();
        async move {
            let counter = input["counter"].as_u64().unwrap_or(0);
            let total = ctx.call(counter, json!({"op": "add", "n": 2})).await?;
            let boom = ctx.step(Command::Activity { name: "boom".into(), input: json!(null) }, once.clone()).await;
            let model = ctx.embed(vec!["hello".into()]).await;
            Ok(json!({"total": total, "boom": boom.err().map(|e| e.to_string()), "model": model.err().map(|e| e.to_string())}))
        }
    });
    let rt = Runtime::builder(config)
        .kind(Counter)
        .kind(workflows)
        .activity("boom", |_call| async move {
            if true {
                panic!("the activity blew up");
            }
            Ok(Value::Null)
        })
        .start()
        .await
        .expect("start");
    let tenant = TenantId::default_tenant();
    rt.ensure_tenant(tenant.clone(), TenantPolicy::default()).await.expect("tenant");
    let caller = Caller::internal(&tenant, "test");
    let counter = rt.create_imvu(&tenant, "counter", &caller).await.expect("counter").key;
    let workflow = rt.create_imvu(&tenant, "workflow", &caller).await.expect("workflow").key;
    let start = json!({"op": "start", "program": Program::Rust { name: "mixed".into() }, "input": {"counter": counter.id.0}});
    rt.ask_json(&workflow, start).await.expect("started");
    let view = until_ended(&rt, &workflow).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["result"]["total"], json!(2));
    assert!(view["result"]["boom"].as_str().is_some_and(|e| e.contains("panicked")), "{view}");
    assert!(view["result"]["model"].as_str().is_some_and(|e| e.contains("unavailable")), "{view}");
    assert_eq!(rt.ask_json(&counter, json!({"op": "get"})).await.expect("state"), json!(2));
}
