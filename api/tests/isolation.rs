//! Cross-tenant isolation as a property: random sequences of requests made with tenant A's
//! keys (its tenant admin's and its app's), aimed at A's and at B's resources, never read or
//! change anything of B. Every request aimed at B is refused with a 403 that names nothing of
//! B; a request aimed at A but naming one of B's IMVU or swarm ids finds nothing; and B's whole
//! export (policy, IMVUs with state and history, swarms, usage, audit chain, keys) is byte for
//! byte what it was before.

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;
use vcos_actors::Runtime;

struct Node {
    router: axum::Router,
    runtime: Runtime,
    admin: String,
}

impl Node {
    async fn start() -> Self {
        let (runtime, metrics, admin) = common::runtime_with_admin().await;
        Self { router: vcos_api::router(runtime.clone(), metrics), runtime, admin }
    }

    /// Sends a request with `key`; returns the status and the body's text.
    async fn call(&self, key: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, String) {
        let request = Request::builder().method(method).uri(path).header(header::AUTHORIZATION, format!("Bearer {key}"));
        let request = match body {
            Some(body) => request.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .expect("request");
        let response = self.router.clone().oneshot(request).await.expect("the router is infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 64 << 20).await.expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn json(&self, key: &str, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, text) = self.call(key, method, path, body).await;
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).expect("JSON")
    }

    /// Creates tenant `name`; returns its tenant-admin key.
    async fn tenant(&self, name: &str) -> String {
        let created = self.json(&self.admin, Method::POST, "/v1/tenants", Some(json!({"name": name, "policy": {"tier": "enterprise"}}))).await;
        created["admin_key"]["key"].as_str().expect("key").to_owned()
    }
}

/// A deterministic generator (splitmix64): the sequence is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

/// The operations a sequence draws from: method, path template (`{t}` a tenant, `{id}` an
/// IMVU id, `{swarm}` a swarm id, `{key}` a key id) and body.
fn operations() -> Vec<(Method, &'static str, Option<Value>)> {
    let add = json!({"message": {"op": "add", "n": 1}});
    vec![
        (Method::GET, "/v1/tenants/{t}/imvus/{id}", None),
        (Method::POST, "/v1/tenants/{t}/imvus/{id}/messages", Some(add)),
        (Method::GET, "/v1/tenants/{t}/imvus/{id}/history", None),
        (Method::POST, "/v1/tenants/{t}/imvus/{id}/pause", None),
        (Method::POST, "/v1/tenants/{t}/imvus/{id}/resume", None),
        (Method::POST, "/v1/tenants/{t}/imvus/{id}/terminate", None),
        (Method::POST, "/v1/tenants/{t}/imvus", Some(json!({"kind": "counter"}))),
        (Method::GET, "/v1/tenants/{t}/swarms/{swarm}", None),
        (Method::POST, "/v1/tenants/{t}/swarms/{swarm}/work", Some(json!({"items": [{"op": "upper", "text": "x"}]}))),
        (Method::PUT, "/v1/tenants/{t}/swarms/{swarm}/memory/k", Some(json!({"value": "mine"}))),
        (Method::GET, "/v1/tenants/{t}/swarms/{swarm}/memory/k", None),
        (Method::POST, "/v1/tenants/{t}/keys", Some(json!({"role": "viewer"}))),
        (Method::GET, "/v1/tenants/{t}/keys", None),
        (Method::GET, "/v1/tenants/{t}/keys/{key}", None),
        (Method::DELETE, "/v1/tenants/{t}/keys/{key}", None),
        (Method::GET, "/v1/tenants/{t}/audit", None),
        (Method::GET, "/v1/tenants/{t}/usage", None),
        (Method::GET, "/v1/tenants/{t}/bill?period=2026-11", None),
        (Method::GET, "/v1/tenants/{t}/export", None),
        (Method::DELETE, "/v1/tenants/{t}", None),
    ]
}

/// B's export, without the end line's count of lines (the same records give the same lines).
async fn export(node: &Node, key: &str, tenant: &str) -> String {
    let (status, text) = node.call(key, Method::GET, &format!("/v1/tenants/{tenant}/export"), None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sequence_of_tenant_a_requests_reads_or_changes_anything_of_tenant_b() {
    let node = Node::start().await;
    let a_admin = node.tenant("alpha").await;
    let b_admin = node.tenant("beta").await;
    let a_app = node.json(&a_admin, Method::POST, "/v1/tenants/alpha/keys", Some(json!({"role": "app"}))).await["key"].as_str().expect("key").to_owned();
    // Each tenant: two counters (one at 5), a swarm, a key; ids of both kinds for each.
    let mut ids = std::collections::BTreeMap::new();
    for (tenant, key) in [("alpha", &a_admin), ("beta", &b_admin)] {
        let mut imvus = Vec::new();
        for _ in 0..2 {
            let created = node.json(key, Method::POST, &format!("/v1/tenants/{tenant}/imvus"), Some(json!({"kind": "counter"}))).await;
            imvus.push(created["key"]["id"].as_u64().expect("id"));
        }
        node.json(key, Method::POST, &format!("/v1/tenants/{tenant}/imvus/{}/messages", imvus[0]), Some(json!({"message": {"op": "add", "n": 5}}))).await;
        let swarm = node.json(key, Method::POST, &format!("/v1/tenants/{tenant}/swarms"), Some(json!({"member_kind": "text-worker", "members": 1}))).await;
        let issued = node.json(key, Method::POST, &format!("/v1/tenants/{tenant}/keys"), Some(json!({"role": "viewer"}))).await;
        ids.insert(tenant, (imvus, swarm["key"]["id"].as_u64().expect("swarm id"), issued["id"].as_str().expect("key id").to_owned()));
    }
    node.runtime.write_usage().await.expect("usage written");
    // Past the window in which messages are counted (1 s), so the setup's records are written.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    node.runtime.audit().flush().await.expect("audit written");
    let before = export(&node, &b_admin, "beta").await;

    let seed = std::env::var("VCOS_ISOLATION_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x150_1a7e);
    let steps: usize = std::env::var("VCOS_ISOLATION_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    eprintln!("isolation: seed {seed:#x}, {steps} steps");
    let trace = std::env::var_os("VCOS_ISOLATION_TRACE").is_some();
    let mut rng = Rng(seed);
    let ops = operations();
    let (mut at_b, mut b_ids_at_a) = (0, 0);
    for step in 0..steps {
        let key = if rng.next() % 2 == 0 { &a_admin } else { &a_app };
        let (method, template, body) = rng.pick(&ops).clone();
        // Aimed at B's tenant, or at A's tenant naming B's ids, or at A's own.
        let aim = rng.next() % 3;
        let path_tenant = if aim == 0 { "beta" } else { "alpha" };
        let ids_of = if aim == 2 { "alpha" } else { "beta" };
        let (imvus, swarm, key_id) = &ids[ids_of];
        // Never erase A itself: the sequence needs it.
        if template == "/v1/tenants/{t}" && path_tenant == "alpha" {
            continue;
        }
        let path = template
            .replace("{t}", path_tenant)
            .replace("{id}", &rng.pick(imvus).to_string())
            .replace("{swarm}", &swarm.to_string())
            .replace("{key}", key_id);
        if trace {
            eprintln!("step {step}: {method} {path}");
        }
        // A message to one of A's own IMVUs that the sequence paused is held until it is
        // resumed (by design): the request waits, and the sequence goes on without it.
        let Ok((status, text)) = tokio::time::timeout(std::time::Duration::from_secs(2), node.call(key, method.clone(), &path, body)).await else {
            assert!(path_tenant == "alpha" && ids_of == "alpha" && path.ends_with("/messages"), "step {step}: {method} {path} did not answer");
            continue;
        };
        let what = format!("step {step}: {method} {path} → {status} {text}");
        // A's own audit log and export list A's attempts on B's paths: its own records.
        let own_records = path_tenant == "alpha" && (template.ends_with("/audit") || template.ends_with("/export"));
        assert!(own_records || !text.contains("beta"), "an answer names B: {what}");
        if path_tenant == "beta" {
            at_b += 1;
            assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
        } else if ids_of == "beta" && (template.contains("{id}") || template.contains("{swarm}") || template.contains("{key}")) {
            b_ids_at_a += 1;
            assert!(status == StatusCode::NOT_FOUND || status == StatusCode::FORBIDDEN, "one of B's ids found through A: {what}");
        }
    }
    node.runtime.write_usage().await.expect("usage written");
    node.runtime.audit().flush().await.expect("audit written");
    assert_eq!(export(&node, &b_admin, "beta").await, before, "B's records changed");
    eprintln!("isolation: {at_b} requests at B's tenant, {b_ids_at_a} at A's naming B's ids, B unchanged");
    assert!(at_b > steps / 5 && b_ids_at_a > steps / 10, "the sequence tried B enough ({at_b}, {b_ids_at_a})");
}
