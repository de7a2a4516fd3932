//! Idempotent asks: the same envelope sent again gets the recorded reply and changes nothing,
//! also after the IMVU was evicted and reloaded from canon (as after a crash or a move).

use std::sync::Arc;

use serde_json::json;
use vcos_actors::kinds::Counter;
use vcos_actors::once::envelope;
use vcos_actors::{Caller, MemoryStore, Runtime, RuntimeConfig, SystemClock, TenantId, TenantPolicy};

#[tokio::test]
async fn an_idempotent_ask_is_applied_once_across_reloads() {
    let config = RuntimeConfig::new(Arc::new(MemoryStore::new()), Arc::new(SystemClock::new()));
    let rt = Runtime::builder(config).kind(Counter).start().await.expect("start");
    let tenant = TenantId::default_tenant();
    rt.ensure_tenant(tenant.clone(), TenantPolicy::default()).await.expect("tenant");
    let key = rt.create_imvu(&tenant, "counter", &Caller::internal(&tenant, "test")).await.expect("created").key;

    let add = |n: i64, once: &str| envelope(once, json!({"op": "add", "n": n}));
    assert_eq!(rt.ask_json(&key, add(5, "step-1")).await.expect("applied"), json!(5));
    assert_eq!(rt.ask_json(&key, add(5, "step-1")).await.expect("recorded reply"), json!(5), "sent again: the recorded reply");
    assert_eq!(rt.ask_json(&key, add(1, "step-2")).await.expect("applied"), json!(6));
    // Plain messages are not deduplicated.
    assert_eq!(rt.ask_json(&key, json!({"op": "add", "n": 1})).await.expect("applied"), json!(7));

    // Reloaded from canon: the records come back with the IMVU.
    rt.evict(&key).await.expect("evicted");
    assert_eq!(rt.ask_json(&key, add(5, "step-1")).await.expect("recorded reply"), json!(5));
    assert_eq!(rt.ask_json(&key, add(1, "step-2")).await.expect("recorded reply"), json!(6));
    assert_eq!(rt.ask_json(&key, json!({"op": "get"})).await.expect("state"), json!(7));

    // A malformed envelope is refused, naming the field.
    let error = rt.ask_json(&key, json!({"$once": 3, "message": {"op": "get"}})).await.expect_err("refused");
    assert!(error.to_string().contains("$once"), "{error}");
}
