//! A thousand tenants on one node, each with its keys and an IMVU: isolation holds between
//! every sampled pair, and the memory an idle tenant keeps is measured (printed, not
//! asserted beyond a generous bound: figures live in benchmarks).
//!
//! Memory is the growth of the process's resident set (`VmRSS`), an upper bound of what the
//! tenants keep (the allocator may hold freed memory too).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;
use vcos_actors::kinds::Counter;
use vcos_actors::{MemoryStore, Runtime, RuntimeConfig, SystemClock, TenantId, TenantPolicy};

/// The process's resident set, bytes (Linux).
fn rss_bytes() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map_or(0, |kb| kb * 1024)
}

const TENANTS: usize = 1_000;

async fn call(router: &axum::Router, method: Method, path: &str, body: Option<Value>, key: &str) -> (StatusCode, Value) {
    let request = Request::builder().method(method).uri(path).header(header::AUTHORIZATION, format!("Bearer {key}"));
    let request = match body {
        Some(b) => request.header(header::CONTENT_TYPE, "application/json").body(Body::from(b.to_string())),
        None => request.body(Body::empty()),
    }
    .expect("request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tenants_stay_apart_and_idle_ones_cost_little_memory() {
    let metrics = vcos_api::install_metrics_recorder();
    let mut config = RuntimeConfig::new(Arc::new(MemoryStore::new()), Arc::new(SystemClock::new()));
    config.shards_per_kind = 2;
    let runtime = Runtime::builder(config).kind(Counter).start().await.expect("runtime");
    runtime.ensure_tenant(TenantId::default_tenant(), TenantPolicy::default()).await.expect("default");
    let (_, admin) = runtime.keys().bootstrap().await.expect("bootstrap").expect("first key");
    let router = vcos_api::router(runtime.clone(), metrics);
    let admin = admin.expose().to_owned();

    let before = rss_bytes();
    let mut tenants = Vec::with_capacity(TENANTS);
    for i in 0..TENANTS {
        let name = format!("t{i:04}");
        let (status, created) = call(&router, Method::POST, "/v1/tenants", Some(json!({"name": name, "policy": {"tier": "enterprise"}})), &admin).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let key = created["admin_key"]["key"].as_str().expect("key").to_owned();
        let (status, imvu) = call(&router, Method::POST, &format!("/v1/tenants/{name}/imvus"), Some(json!({"kind": "counter"})), &key).await;
        assert_eq!(status, StatusCode::CREATED, "{imvu}");
        tenants.push((name, key, imvu["key"]["id"].as_u64().expect("id")));
    }
    // Idle: every IMVU passivated, the audit written.
    runtime.passivate_idle(0).await;
    runtime.audit().flush().await.expect("flush");
    let per_tenant = (rss_bytes() - before) / TENANTS as i64;
    eprintln!("resident memory per idle tenant: {per_tenant} bytes ({TENANTS} tenants with a key and a passivated IMVU; the in-memory canon included)");
    assert!(per_tenant < 256 * 1024, "an idle tenant keeps {per_tenant} bytes");

    // Isolation: every tenant reads its own IMVU; its key reads nothing of its neighbours.
    for (i, (name, key, id)) in tenants.iter().enumerate() {
        let (status, _) = call(&router, Method::GET, &format!("/v1/tenants/{name}/imvus/{id}"), None, key).await;
        assert_eq!(status, StatusCode::OK, "{name} reads its own IMVU");
        let (other, _, other_id) = &tenants[(i * 7 + 13) % TENANTS];
        if other != name {
            for (method, path) in [
                (Method::GET, format!("/v1/tenants/{other}/imvus/{other_id}")),
                (Method::POST, format!("/v1/tenants/{other}/imvus/{other_id}/messages")),
                (Method::GET, format!("/v1/tenants/{other}/keys")),
                (Method::GET, format!("/v1/tenants/{other}/audit")),
            ] {
                let body = (method == Method::POST).then(|| json!({"message": {"op": "get"}}));
                let (status, answer) = call(&router, method.clone(), &path, body, key).await;
                assert_eq!(status, StatusCode::FORBIDDEN, "{name} → {method} {path}: {answer}");
                assert!(!answer.to_string().contains(other.as_str()), "the refusal names no other tenant: {answer}");
            }
        }
    }
    let (_, listed) = call(&router, Method::GET, "/v1/tenants", None, &tenants[0].1).await;
    assert_eq!(listed, json!({"tenants": [tenants[0].0]}), "a tenant key sees its own tenant only");
}
