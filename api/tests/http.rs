//! The HTTP facade end to end, against a real runtime: every route, every error shape.
//!
//! Requests go through one helper, [`Api::call`], so the tests read as (request, expected
//! status and body) and stay independent of how the router is driven. One test runs a real
//! listener with `reqwest` to cover `serve` and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;
use vcos_actors::kinds::{Counter, KvMemory, TextWorker};
use vcos_actors::{CanonStore, MemoryStore, RedbStore, Runtime, RuntimeConfig, SystemClock, TenantId, TenantPolicy};

struct Api {
    router: axum::Router,
    runtime: Runtime,
    /// A cluster-admin key: what every request sends unless it names another (or [`NO_KEY`]).
    admin: String,
}

/// Passed as the key: send no Authorization header.
const NO_KEY: &str = "";

async fn start(store: Arc<dyn CanonStore>) -> Api {
    // Before the runtime: its metrics bind to the recorder present when they are registered.
    let metrics = vcos_api::install_metrics_recorder();
    let mut config = RuntimeConfig::new(store, Arc::new(SystemClock::new()));
    config.shards_per_kind = 2;
    let runtime = Runtime::builder(config).kind(Counter).kind(KvMemory).kind(TextWorker).start().await.expect("runtime starts");
    runtime.ensure_tenant(TenantId::default_tenant(), TenantPolicy::default()).await.expect("default tenant");
    let (_, admin) = runtime.keys().bootstrap().await.expect("bootstrap").expect("the first cluster-admin key");
    Api { router: vcos_api::router(runtime.clone(), metrics), runtime, admin: admin.expose().to_owned() }
}

async fn api() -> Api {
    start(Arc::new(MemoryStore::new())).await
}

impl Api {
    /// Sends one request (with the admin key unless it has an Authorization header); returns
    /// status, headers and the raw body.
    async fn raw(&self, mut request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        if !request.headers().contains_key(header::AUTHORIZATION) {
            let admin = format!("Bearer {}", self.admin).parse().expect("header value");
            request.headers_mut().insert(header::AUTHORIZATION, admin);
        }
        let response = self.router.clone().oneshot(request).await.expect("the router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024).await.expect("body reads");
        (status, headers, body)
    }

    /// Sends `body` (if any) as JSON with `key` (default: the admin key; [`NO_KEY`]: none);
    /// returns status and JSON body.
    async fn call(&self, method: Method, path: &str, body: Option<Value>, key: Option<&str>) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        match key {
            Some(NO_KEY) => request = request.header("x-no-key", "1"),
            Some(key) => request = request.header(header::AUTHORIZATION, format!("Bearer {key}")),
            None => {}
        }
        let request = match body {
            Some(body) => request.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .expect("valid request");
        let (status, headers, bytes) = self.raw_keyed(request).await;
        (status, json_body(&headers, &bytes))
    }

    /// [`Self::raw`], but a request marked `x-no-key` goes without any key.
    async fn raw_keyed(&self, mut request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        if request.headers_mut().remove("x-no-key").is_some() {
            let response = self.router.clone().oneshot(request).await.expect("the router is infallible");
            let (status, headers) = (response.status(), response.headers().clone());
            let body = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024).await.expect("body reads");
            return (status, headers, body);
        }
        self.raw(request).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body), None).await
    }

    /// Creates an IMVU of `kind` in the default tenant; returns its path.
    async fn create(&self, kind: &str) -> String {
        let (status, body) = self.post("/v1/tenants/default/imvus", json!({"kind": kind})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        format!("/v1/tenants/default/imvus/{}", body["key"]["id"].as_u64().expect("numeric id"))
    }

    async fn send(&self, imvu: &str, message: Value) -> (StatusCode, Value) {
        self.post(&format!("{imvu}/messages"), json!({ "message": message })).await
    }
}

/// Error and API bodies must be JSON; a non-JSON body fails the test with what it was.
fn json_body(headers: &HeaderMap, bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(content_type.starts_with("application/json"), "not JSON ({content_type}): {}", String::from_utf8_lossy(bytes));
    serde_json::from_slice(bytes).expect("valid JSON")
}

/// An error response: status, code, and a message containing each of `mentions`.
fn check_error((status, body): (StatusCode, Value), expect_status: u16, code: &str, mentions: &[&str]) {
    assert_eq!(status.as_u16(), expect_status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    let message = body["message"].as_str().expect("a message");
    for m in mentions {
        assert!(message.contains(m), "message {message:?} should mention {m:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_adds_and_reports_its_state() {
    let api = api().await;
    let imvu = api.create("counter").await;
    let (status, body) = api.send(&imvu, json!({"op": "add", "n": 5})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"reply": 5})));
    let (status, body) = api.send(&imvu, json!({"op": "get"})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"reply": 5})));
    let (status, info) = api.get(&imvu).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["state"], 5);
    assert_eq!(info["lifecycle"], "active");
    assert_eq!(info["held_messages"], 0);
    assert_eq!(info["kind"], "counter");
    assert_eq!(info["key"]["tenant"], "default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_imvu_holds_messages_and_runs_them_in_order_on_resume() {
    let api = Arc::new(api().await);
    let imvu = api.create("counter").await;
    let (status, info) = api.post(&format!("{imvu}/pause"), json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["lifecycle"], "paused");

    let mut pending = Vec::new();
    for (n, held) in [(1, 1), (10, 2)] {
        let (api2, imvu2) = (api.clone(), imvu.clone());
        pending.push(tokio::spawn(async move { api2.send(&imvu2, json!({"op": "add", "n": n})).await }));
        // Wait until it is held, so the order of sending is the order of holding.
        let mut seen = 0;
        for _ in 0..200 {
            seen = api.get(&imvu).await.1["held_messages"].as_u64().unwrap_or(0);
            if seen == held {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(seen, held, "message {n} should be held");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(pending.iter().all(|p| !p.is_finished()), "held messages must not complete while paused");

    let (status, info) = api.post(&format!("{imvu}/resume"), json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    let mut replies = Vec::new();
    for p in pending {
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), p).await.expect("completes").expect("no panic");
        assert_eq!(status, StatusCode::OK, "{body}");
        replies.push(body["reply"].clone());
    }
    assert_eq!(replies, [json!(1), json!(11)], "held messages run in order");
    assert_eq!(api.get(&imvu).await.1["held_messages"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_errors_are_conflicts() {
    let api = api().await;
    let imvu = api.create("counter").await;
    let resume = api.post(&format!("{imvu}/resume"), json!(null)).await;
    check_error(resume, 409, "illegal_transition", &["active", "resume"]);

    let (status, info) = api.post(&format!("{imvu}/terminate"), json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["lifecycle"], "terminated");
    check_error(api.send(&imvu, json!({"op": "get"})).await, 409, "terminated", &[]);
    check_error(api.post(&format!("{imvu}/terminate"), json!(null)).await, 409, "illegal_transition", &["terminated"]);
    // Still readable after termination, from canon.
    let (status, info) = api.get(&imvu).await;
    assert_eq!((status, &info["lifecycle"]), (StatusCode::OK, &json!("terminated")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_json_400s_naming_the_problem() {
    let api = api().await;
    let malformed = Request::post("/v1/tenants/default/imvus")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"kind": "counter""#))
        .expect("request");
    let (status, headers, bytes) = api.raw(malformed).await;
    check_error((status, json_body(&headers, &bytes)), 400, "bad_request", &["malformed JSON"]);

    check_error(api.post("/v1/tenants/default/imvus", json!({})).await, 400, "bad_request", &["missing field", "kind"]);
    check_error(api.post("/v1/tenants/default/imvus", json!({"kind": 7})).await, 400, "bad_request", &["kind", "invalid type"]);
    check_error(
        api.post("/v1/tenants/default/imvus", json!({"kind": "counter", "colour": "red"})).await,
        400,
        "bad_request",
        &["colour"],
    );
    check_error(api.post("/v1/tenants/default/imvus", json!({"kind": "dragon"})).await, 400, "unknown_kind", &["dragon"]);

    let imvu = api.create("counter").await;
    check_error(api.post(&format!("{imvu}/messages"), json!({"msg": 1})).await, 400, "bad_request", &["msg"]);
    check_error(api.post(&format!("{imvu}/messages"), json!({})).await, 400, "bad_request", &["message"]);
    check_error(api.send(&imvu, json!({"op": "fly"})).await, 400, "bad_request", &["message", "fly"]);

    let form = Request::post("/v1/tenants/default/imvus")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(r#"{"kind":"counter"}"#))
        .expect("request");
    let (status, headers, bytes) = api.raw(form).await;
    check_error((status, json_body(&headers, &bytes)), 415, "unsupported_media_type", &["application/json"]);
    // No content type at all is fine: the body is read as JSON.
    let bare = Request::post("/v1/tenants/default/imvus").body(Body::from(r#"{"kind":"counter"}"#)).expect("request");
    assert_eq!(api.raw(bare).await.0, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_json_413s() {
    let api = api().await;
    let imvu = api.create("counter").await;
    let big = format!(r#"{{"message": {{"op": "add", "pad": "{}"}}}}"#, "x".repeat(2 * 1024 * 1024));
    // With a Content-Length (refused up front) and without one (refused while reading).
    for with_length in [true, false] {
        let mut request = Request::post(format!("{imvu}/messages")).header(header::CONTENT_TYPE, "application/json");
        if with_length {
            request = request.header(header::CONTENT_LENGTH, big.len());
        }
        // A body without Content-Length is only refused while it is read.
        let body = Body::from(big.clone());
        let (status, headers, bytes) = api.raw(request.body(body).expect("request")).await;
        check_error((status, json_body(&headers, &bytes)), 413, "too_large", &["1048576 bytes"]);
    }
    // The counter was not touched and the node serves on.
    assert_eq!(api.send(&imvu, json!({"op": "get"})).await, (StatusCode::OK, json!({"reply": 0})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_things_are_404_and_bad_paths_400() {
    let api = api().await;
    check_error(api.get("/v1/tenants/default/imvus/999999").await, 404, "not_found", &["999999"]);
    check_error(api.post("/v1/tenants/nobody/imvus", json!({"kind": "counter"})).await, 404, "not_found", &["nobody"]);
    check_error(api.get("/v1/tenants/nobody/imvus/1").await, 404, "not_found", &["nobody"]);
    check_error(api.post("/v1/tenants/default/imvus/999999/pause", json!(null)).await, 404, "not_found", &[]);
    check_error(api.get("/v1/tenants/default/imvus/999999/history").await, 404, "not_found", &[]);
    check_error(api.get("/v1/tenants/default/imvus/seven").await, 400, "bad_request", &["id", "seven"]);
    check_error(api.get("/v1/tenants/Not%20Valid/imvus/1").await, 400, "bad_request", &["tenant"]);
    check_error(api.get("/v2/nothing/here").await, 404, "not_found", &["/v2/nothing/here"]);
    check_error(api.call(Method::DELETE, "/v1/kinds", None, None).await, 405, "method_not_allowed", &["DELETE"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_is_a_500_and_the_counter_keeps_its_durable_total() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(RedbStore::open(&dir.path().join("canon.redb")).expect("redb opens"));
    let api = start(store).await;
    let imvu = api.create("counter").await;
    assert_eq!(api.send(&imvu, json!({"op": "add", "n": 41})).await.1, json!({"reply": 41}));
    check_error(api.send(&imvu, json!({"op": "crash"})).await, 500, "imvu_crashed", &["crash"]);
    assert_eq!(api.send(&imvu, json!({"op": "get"})).await, (StatusCode::OK, json!({"reply": 41})));
    assert_eq!(api.send(&imvu, json!({"op": "add", "n": 1})).await.1, json!({"reply": 42}));
    let (status, health) = api.get("/health").await;
    assert_eq!((status, &health["status"]), (StatusCode::OK, &json!("ok")));
    let (_, history) = api.get(&format!("{imvu}/history")).await;
    let supervision: Vec<&Value> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event"] == "supervision")
        .collect();
    assert_eq!(supervision.len(), 1, "{history}");
    assert_eq!(supervision[0]["decision"], "restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_issued_by_the_server_and_roles_decide() {
    let api = api().await;
    let (status, created) = api.post("/v1/tenants", json!({"name": "acme", "policy": {"max_imvus": 10}})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["policy"]["max_imvus"], 10);
    assert_eq!(created["admin_key"]["role"], "tenant_admin");
    let acme_admin = created["admin_key"]["key"].as_str().expect("the first key, once").to_owned();
    assert!(acme_admin.starts_with("vcos_"));

    // The tenant admin issues keys of its tenant; secrets are shown once, never listed.
    let issue = |role: &str| json!({"role": role, "name": format!("{role} key")});
    let mut keys = std::collections::BTreeMap::new();
    for role in ["app", "viewer", "operator"] {
        let (status, issued) = api.call(Method::POST, "/v1/tenants/acme/keys", Some(issue(role)), Some(&acme_admin)).await;
        assert_eq!(status, StatusCode::CREATED, "{issued}");
        keys.insert(role, (issued["id"].as_str().expect("id").to_owned(), issued["key"].as_str().expect("key").to_owned()));
    }
    let (status, listed) = api.call(Method::GET, "/v1/tenants/acme/keys", None, Some(&acme_admin)).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["keys"].as_array().expect("keys").len(), 4);
    for (_, secret) in keys.values() {
        assert!(!listed.to_string().contains(&secret[22..]), "a listing shows no secret");
    }
    let (app, viewer, operator) = (&keys["app"].1, &keys["viewer"].1, &keys["operator"].1);

    // Roles: app creates and messages, viewer reads, operator pauses; none does more.
    let imvus = "/v1/tenants/acme/imvus";
    let (status, info) = api.call(Method::POST, imvus, Some(json!({"kind": "counter"})), Some(app)).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    let imvu = format!("{imvus}/{}", info["key"]["id"]);
    let add = json!({"message": {"op": "add", "n": 2}});
    assert_eq!(api.call(Method::POST, &format!("{imvu}/messages"), Some(add.clone()), Some(app)).await.1, json!({"reply": 2}));
    assert_eq!(api.call(Method::GET, &imvu, None, Some(viewer)).await.1["state"], 2);
    check_error(api.call(Method::POST, &format!("{imvu}/messages"), Some(add.clone()), Some(viewer)).await, 403, "forbidden", &["viewer", "use"]);
    check_error(api.call(Method::POST, &format!("{imvu}/pause"), None, Some(app)).await, 403, "forbidden", &["operate"]);
    assert_eq!(api.call(Method::POST, &format!("{imvu}/pause"), None, Some(operator)).await.0, StatusCode::OK);
    assert_eq!(api.call(Method::POST, &format!("{imvu}/resume"), None, Some(operator)).await.0, StatusCode::OK);
    check_error(api.call(Method::POST, "/v1/tenants/acme/keys", Some(issue("viewer")), Some(app)).await, 403, "forbidden", &["administer"]);
    // No key raises its rights: a tenant admin cannot issue a cluster key or reach the cluster.
    check_error(api.call(Method::POST, "/v1/tenants/acme/keys", Some(issue("cluster_admin")), Some(&acme_admin)).await, 403, "forbidden", &["cluster_admin"]);
    check_error(api.call(Method::POST, "/v1/keys", Some(issue("metrics")), Some(&acme_admin)).await, 403, "forbidden", &[]);
    check_error(api.call(Method::GET, "/v1/canon/kv", None, Some(&acme_admin)).await, 403, "forbidden", &[]);
    check_error(api.call(Method::POST, "/v1/tenants", Some(json!({"name": "mine"})), Some(&acme_admin)).await, 403, "forbidden", &[]);
    assert_eq!(api.call(Method::GET, "/v1/tenants", None, Some(viewer)).await.1, json!({"tenants": ["acme"]}));
    assert_eq!(api.get("/v1/tenants").await.1, json!({"tenants": ["acme", "default"]}));

    // Another tenant's key is no key for acme, and says nothing of what acme holds.
    let (_, globex) = api.post("/v1/tenants", json!({"name": "globex"})).await;
    let globex_admin = globex["admin_key"]["key"].as_str().expect("key").to_owned();
    let foreign = api.call(Method::GET, &imvu, None, Some(&globex_admin)).await;
    check_error(foreign.clone(), 403, "forbidden", &[]);
    let missing = api.call(Method::GET, "/v1/tenants/acme/imvus/999999", None, Some(&globex_admin)).await;
    assert_eq!(foreign, missing, "an existing and a missing IMVU of another tenant look the same");
    assert!(!foreign.1.to_string().contains("acme"));
    let acme_app_id = &keys["app"].0;
    check_error(api.call(Method::DELETE, &format!("/v1/tenants/globex/keys/{acme_app_id}"), None, Some(&globex_admin)).await, 404, "not_found", &[]);

    // No key, a malformed one, one in the URL, an unknown one, a revoked one: 401, each its code.
    check_error(api.call(Method::GET, &imvu, None, Some(NO_KEY)).await, 401, "key_missing", &["Authorization"]);
    check_error(api.call(Method::GET, &imvu, None, Some("acme-secret-key")).await, 401, "key_malformed", &["vcos_"]);
    let truncated = &app[..app.len() - 1];
    check_error(api.call(Method::GET, &imvu, None, Some(truncated)).await, 401, "key_malformed", &[]);
    let forged = vcos_actors::auth::KeyText::generate(&vcos_actors::auth::OsSecrets);
    check_error(api.call(Method::GET, &imvu, None, Some(forged.expose())).await, 401, "key_unknown", &[]);
    check_error(api.call(Method::GET, &format!("{imvu}?api_key={app}"), None, Some(app)).await, 401, "key_in_url", &["header"]);
    let (status, revoked) = api.call(Method::DELETE, &format!("/v1/tenants/acme/keys/{}", keys["viewer"].0), None, Some(&acme_admin)).await;
    assert_eq!((status, revoked["active"].clone()), (StatusCode::OK, json!(false)), "{revoked}");
    check_error(api.call(Method::GET, &imvu, None, Some(viewer)).await, 401, "key_revoked", &[]);

    // Rotation: the old key works during the overlap, the new one from now on.
    let rotate = format!("/v1/tenants/acme/keys/{}/rotate", keys["app"].0);
    let (status, rotated) = api.call(Method::POST, &rotate, Some(json!({"overlap_s": 60})), Some(&acme_admin)).await;
    assert_eq!(status, StatusCode::CREATED, "{rotated}");
    assert_eq!(rotated["old"]["replaced_by"], rotated["new"]["id"]);
    let new_app = rotated["new"]["key"].as_str().expect("new key");
    assert_eq!(api.call(Method::GET, &imvu, None, Some(app)).await.0, StatusCode::OK);
    assert_eq!(api.call(Method::GET, &imvu, None, Some(new_app)).await.0, StatusCode::OK);
    let (_, who) = api.call(Method::GET, "/v1/whoami", None, Some(new_app)).await;
    assert_eq!((who["tenant"].as_str(), who["role"].as_str()), (Some("acme"), Some("app")));

    // Tenant creation: names and policies checked; clients never choose keys.
    check_error(api.post("/v1/tenants", json!({"name": "acme"})).await, 409, "conflict", &["acme"]);
    check_error(api.post("/v1/tenants", json!({"name": "initech", "policy": {"api_key": "my-own-key"}})).await, 400, "bad_request", &["api_key"]);
    check_error(api.post("/v1/tenants", json!({"name": "Bad Name"})).await, 400, "bad_request", &["name"]);
    check_error(api.post("/v1/tenants", json!({"name": "x", "policy": {"max_imvus": "many"}})).await, 400, "bad_request", &["policy.max_imvus"]);
    check_error(api.post("/v1/tenants", json!({"name": "x", "policy": {"maximum": 1}})).await, 400, "bad_request", &["maximum"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_records_every_transition_with_its_verdict() {
    let api = api().await;
    let imvu = api.create("counter").await;
    for step in ["pause", "resume", "terminate"] {
        let (status, body) = api.post(&format!("{imvu}/{step}"), json!(null)).await;
        assert_eq!(status, StatusCode::OK, "{step}: {body}");
    }
    let (status, history) = api.get(&format!("{imvu}/history")).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let events = history["events"].as_array().expect("events");
    let transitions: Vec<&str> = events.iter().filter_map(|e| e["transition"].as_str()).collect();
    assert_eq!(transitions, ["create", "activate", "pause", "resume", "terminate"], "{history}");
    let indexes: Vec<u64> = events.iter().map(|e| e["canon_index"].as_u64().expect("canon_index")).collect();
    assert!(indexes.windows(2).all(|w| w[0] < w[1]), "canon_index increases: {indexes:?}");
    for e in events {
        assert_eq!(e["event"], "transition");
        assert_eq!(e["handshake"], json!({"outcome": "admitted"}), "{e}");
        assert!(e["caller"].as_str().is_some_and(|c| c.starts_with("key:")), "the caller is the key's id: {e}");
    }
    assert_eq!(events[4]["to"], "terminated");
    assert_eq!(events[4]["final_state"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_kinds_and_metrics() {
    let api = api().await;
    let imvu = api.create("counter").await;
    api.send(&imvu, json!({"op": "add", "n": 1})).await;

    let (status, health) = api.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
    assert!(health["imvus_resident"].as_u64().expect("count") >= 1, "{health}");

    let (status, kinds) = api.get("/v1/kinds").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = kinds["kinds"].as_array().expect("kinds").iter().filter_map(|k| k["name"].as_str()).collect();
    for kind in ["counter", "kv-memory", "text-worker"] {
        assert!(names.contains(&kind), "{kinds}");
    }

    let (status, headers, bytes) = api.raw(Request::get("/metrics").body(Body::empty()).expect("request")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE].to_str().expect("ascii").starts_with("text/plain"));
    let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
    for needle in [
        "vcos_http_requests_total",
        "vcos_http_request_duration_seconds_bucket",
        "vcos_messages_total",
        r#"route="/v1/tenants/{tenant}/imvus/{id}/messages""#,
        r#"method="POST""#,
        r#"status="201""#,
        "# HELP vcos_http_requests_total",
        "# HELP vcos_messages_total",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }
    let problems = lint_exposition(&text);
    assert!(problems.is_empty(), "/metrics fails the exposition lint: {problems:#?}\n{text}");

    api.runtime.node().shutting_down.store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, health) = api.get("/health").await;
    assert_eq!((status, &health["status"]), (StatusCode::SERVICE_UNAVAILABLE, &json!("stopping")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_route_and_docs_are_served() {
    let api = api().await;
    let (status, doc) = api.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let expected: [(&str, &[&str]); 69] = [
        ("/health", &["get"]),
        ("/metrics", &["get"]),
        ("/openapi.json", &["get"]),
        ("/v1/kinds", &["get"]),
        ("/v1/whoami", &["get"]),
        ("/v1/tenants", &["get", "post"]),
        ("/v1/tenants/{tenant}/keys", &["get", "post"]),
        ("/v1/tenants/{tenant}/keys/{key_id}", &["get", "delete"]),
        ("/v1/tenants/{tenant}/keys/{key_id}/rotate", &["post"]),
        ("/v1/keys", &["get", "post"]),
        ("/v1/keys/{key_id}", &["get", "delete"]),
        ("/v1/keys/{key_id}/rotate", &["post"]),
        ("/v1/tenants/{tenant}/imvus", &["post"]),
        ("/v1/tenants/{tenant}/imvus/{id}", &["get"]),
        ("/v1/tenants/{tenant}/imvus/{id}/messages", &["post"]),
        ("/v1/tenants/{tenant}/imvus/{id}/pause", &["post"]),
        ("/v1/tenants/{tenant}/imvus/{id}/resume", &["post"]),
        ("/v1/tenants/{tenant}/imvus/{id}/terminate", &["post"]),
        ("/v1/tenants/{tenant}/imvus/{id}/history", &["get"]),
        ("/v1/tenants/{tenant}/sessions", &["get", "post"]),
        ("/v1/tenants/{tenant}/sessions/{id}", &["get"]),
        ("/v1/tenants/{tenant}/sessions/{id}/pause", &["post"]),
        ("/v1/tenants/{tenant}/sessions/{id}/resume", &["post"]),
        ("/v1/tenants/{tenant}/sessions/{id}/terminate", &["post"]),
        ("/v1/tenants/{tenant}/sessions/{id}/screenshot.png", &["get"]),
        ("/v1/tenants/{tenant}/workspaces", &["post"]),
        ("/v1/tenants/{tenant}/workspaces/{id}", &["get"]),
        ("/v1/tenants/{tenant}/workspaces/{id}/pause", &["post"]),
        ("/v1/tenants/{tenant}/workspaces/{id}/resume", &["post"]),
        ("/v1/tenants/{tenant}/workspaces/{id}/terminate", &["post"]),
        ("/v1/tenants/{tenant}/workflow-definitions", &["get"]),
        ("/v1/tenants/{tenant}/workflow-definitions/{name}", &["get", "put"]),
        ("/v1/tenants/{tenant}/workflows", &["get", "post"]),
        ("/v1/tenants/{tenant}/workflows/{id}", &["get"]),
        ("/v1/tenants/{tenant}/workflows/{id}/signals/{name}", &["post"]),
        ("/v1/tenants/{tenant}/workflows/{id}/cancel", &["post"]),
        ("/v1/tenants/{tenant}/workflows/{id}/retry", &["post"]),
        ("/v1/tenants/{tenant}/workflows/{id}/skip", &["post"]),
        ("/v1/tenants/{tenant}/swarms", &["post"]),
        ("/v1/tenants/{tenant}/swarms/{id}", &["get"]),
        ("/v1/tenants/{tenant}/swarms/{id}/work", &["post"]),
        ("/v1/tenants/{tenant}/swarms/{id}/credits", &["get"]),
        ("/v1/tenants/{tenant}/swarms/{id}/memory/{key}", &["get", "put"]),
        ("/v1/tenants/{tenant}/swarms/{id}/votes", &["post"]),
        ("/v1/tenants/{tenant}/swarms/{id}/votes/{vote}/ballots", &["post"]),
        ("/v1/canon/status", &["get"]),
        ("/v1/canon/kv", &["get"]),
        ("/v1/canon/kv/{key}", &["get", "put", "delete"]),
        ("/v1/canon/kv/{key}/cas", &["post"]),
        ("/v1/canon/members", &["post"]),
        ("/v1/canon/members/{id}", &["delete"]),
        ("/v1/canon/members/{id}/promote", &["post"]),
        ("/v1/cluster", &["get"]),
        ("/v1/cluster/secret", &["get"]),
        ("/v1/tenants/{tenant}/kv", &["get"]),
        ("/v1/tenants/{tenant}/kv/{key}", &["get", "put", "delete"]),
        ("/v1/tenants/{tenant}/kv/{key}/cas", &["post"]),
        ("/v1/tenants/{tenant}/export", &["get"]),
        ("/v1/tenants/{tenant}/usage", &["get"]),
        ("/v1/tenants/{tenant}/bill", &["get"]),
        ("/v1/tenants/{tenant}/audit", &["get"]),
        ("/v1/tenants/{tenant}/audit/verify", &["get"]),
        ("/v1/audit", &["get"]),
        ("/v1/audit/verify", &["get"]),
        ("/v1/tenants/{tenant}", &["delete"]),
        ("/v1/tenants/{tenant}/erasure", &["get"]),
        ("/v1/models", &["get"]),
        ("/v1/embeddings", &["post"]),
        ("/v1/chat/completions", &["post"]),
    ];
    for (path, methods) in expected {
        for method in methods {
            let op = &doc["paths"][path][method];
            assert!(op.is_object(), "{method} {path} is not documented");
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} has no responses");
        }
    }
    let paths = doc["paths"].as_object().expect("paths").len();
    assert_eq!(paths, 69, "exactly the routes above");
    let messages = &doc["paths"]["/v1/tenants/{tenant}/imvus/{id}/messages"]["post"]["responses"];
    for code in ["200", "400", "401", "403", "404", "409", "413", "429", "500", "503"] {
        assert!(messages[code].is_object(), "messages lacks {code}: {messages}");
    }
    for schema in [
        "ErrorBody",
        "ImvuView",
        "History",
        "HistoryEntry",
        "CreateTenantRequest",
        "MessageRequest",
        "SwarmSpecBody",
        "SwarmView",
        "SwarmMember",
        "SubmitWorkRequest",
        "Credits",
        "MemoryValue",
        "OpenVoteRequest",
        "BallotRequest",
        "VoteView",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "schema {schema} missing");
    }

    // The document states the rules the server enforces, and every status it answers.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["CreateTenantRequest"]["properties"]["name"]["pattern"], "^[a-z0-9_-]{1,31}$");
    assert_eq!(schemas["OpenVoteRequest"]["properties"]["options"]["minItems"], 2);
    assert_eq!(schemas["SubmitWorkRequest"]["properties"]["items"]["minItems"], 1);
    assert!(schemas["MemoryValue"]["properties"]["value"].get("type").is_none(), "any JSON value: {}", schemas["MemoryValue"]);
    let text = doc.to_string();
    for reference in text.split(r##""$ref":"#/components/schemas/"##).skip(1) {
        let name = reference.split('"').next().unwrap_or_default();
        assert!(schemas[name].is_object(), "a $ref to the missing schema {name}");
    }
    let params = doc["paths"]["/v1/canon/kv/{key}"]["get"]["parameters"].as_array().expect("parameters");
    let consistency = params.iter().find(|p| p["name"] == "consistency").expect("the consistency parameter");
    assert!(consistency.to_string().contains(r#"["linearizable","stale"]"#), "{consistency}");
    for (path, method) in [("/v1/canon/kv/{key}", "get"), ("/v1/canon/kv/{key}", "put"), ("/v1/canon/members", "post"), ("/v1/canon/members/{id}", "delete")] {
        for code in ["400", "401", "403", "404", "503"] {
            assert!(doc["paths"][path][method]["responses"][code].is_object(), "{method} {path} lacks {code}");
        }
    }

    let (status, _, bytes) = api.raw(Request::get("/docs/").body(Body::empty()).expect("request")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&bytes).contains("swagger"), "Swagger UI is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_over_tcp_and_stops_gracefully() {
    let api = api().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(vcos_api::serve(listener, api.router.clone(), async move {
        let _ = stopped.await;
    }));
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", api.admin).parse().expect("header"));
    let client = reqwest::Client::builder().default_headers(headers).build().expect("client");
    let anonymous = reqwest::Client::new();
    let base = format!("http://{addr}");
    // On loopback, /metrics is open to scrapers; the rest needs a key.
    assert_eq!(anonymous.get(format!("{base}/metrics")).send().await.expect("metrics").status().as_u16(), 200);
    assert_eq!(anonymous.get(format!("{base}/v1/kinds")).send().await.expect("kinds").status().as_u16(), 401);
    let created: Value = client
        .post(format!("{base}/v1/tenants/default/imvus"))
        .json(&json!({"kind": "kv-memory"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let imvu = format!("{base}/v1/tenants/default/imvus/{}", created["key"]["id"]);
    let put = client
        .post(format!("{imvu}/messages"))
        .json(&json!({"message": {"op": "put", "key": "k", "value": [1, 2]}}))
        .send()
        .await
        .expect("put");
    assert_eq!(put.status().as_u16(), 200);
    let got: Value = client
        .post(format!("{imvu}/messages"))
        .json(&json!({"message": {"op": "get", "key": "k"}}))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(got, json!({"reply": {"value": [1, 2]}}));
    let health = client.get(format!("{base}/health")).send().await.expect("health");
    assert_eq!(health.status().as_u16(), 200);

    stop.send(()).expect("server waits for the signal");
    let result = tokio::time::timeout(Duration::from_secs(10), server).await.expect("stops").expect("no panic");
    assert!(result.is_ok(), "{result:?}");
    assert!(client.get(format!("{base}/health")).send().await.is_err(), "no longer listening");
}

/// A value for a path parameter of the matrix's requests.
fn sample(param: &str, key_id: &str) -> String {
    match param {
        "tenant" => "acme".into(),
        "key_id" => key_id.into(),
        "key" => "k".into(),
        _ => "1".into(),
    }
}

/// The authorisation matrix, generated from the OpenAPI document: for every operation, no key,
/// a malformed key, a revoked key, another tenant's key, a role without the permission, and the
/// right key; 401 / 401 / 401 / 403 / 403 / anything else. An operation without a declared
/// rule fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix_from_the_document() {
    let api = api().await;
    let (_, doc) = api.get("/openapi.json").await;
    // Enterprise: the matrix sends hundreds of requests at once with acme's keys.
    let (_, acme) = api.post("/v1/tenants", json!({"name": "acme", "policy": {"tier": "enterprise"}})).await;
    let (_, globex) = api.post("/v1/tenants", json!({"name": "globex", "policy": {"tier": "enterprise"}})).await;
    let acme_admin = acme["admin_key"]["key"].as_str().expect("key").to_owned();
    let globex_admin = globex["admin_key"]["key"].as_str().expect("key").to_owned();
    let mut role_keys = std::collections::BTreeMap::new();
    for role in ["viewer", "app", "operator"] {
        let (_, issued) = api.call(Method::POST, "/v1/tenants/acme/keys", Some(json!({"role": role})), Some(&acme_admin)).await;
        role_keys.insert(role.to_owned(), issued["key"].as_str().expect("key").to_owned());
    }
    role_keys.insert("tenant_admin".into(), acme_admin.clone());
    let (_, metrics) = api.post("/v1/keys", json!({"role": "metrics"})).await;
    role_keys.insert("metrics".into(), metrics["key"].as_str().expect("key").to_owned());
    let (_, doomed) = api.call(Method::POST, "/v1/tenants/acme/keys", Some(json!({"role": "app"})), Some(&acme_admin)).await;
    let revoked = doomed["key"].as_str().expect("key").to_owned();
    api.call(Method::DELETE, &format!("/v1/tenants/acme/keys/{}", doomed["id"].as_str().expect("id")), None, Some(&acme_admin)).await;
    // A key id that exists for the key routes; the revoked one will do.
    let key_id = doomed["id"].as_str().expect("id").to_owned();

    let mut cases = 0;
    let mut operations: Vec<(&String, &String, &Value)> =
        doc["paths"].as_object().expect("paths").iter().flat_map(|(path, item)| item.as_object().expect("operations").iter().map(move |(m, op)| (path, m, op))).collect();
    // Erasing acme (its right-key case) goes last: the cases after it need acme.
    operations.sort_by_key(|(path, method, _)| path.as_str() == "/v1/tenants/{tenant}" && method.as_str() == "delete");
    {
        for (path, method, op) in operations {
            let security = op["security"].as_array().unwrap_or_else(|| panic!("{method} {path} declares no access rule"));
            let open = security.iter().all(|s| s.as_object().is_some_and(|o| o.is_empty()));
            let roles: Vec<String> = security
                .iter()
                .filter_map(|s| s["bearer"].as_array())
                .flatten()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect();
            let uri = path
                .split('/')
                .map(|seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(param) => sample(param, &key_id),
                    None => seg.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("/");
            let method: Method = method.to_uppercase().parse().expect("method");
            let body = matches!(method, Method::POST | Method::PUT).then(|| json!({}));
            let status = |key: String| {
                let (api, method, uri, body) = (&api, method.clone(), uri.clone(), body.clone());
                async move {
                    let mut request = Request::builder().method(method).uri(&uri);
                    request = if key == NO_KEY { request.header("x-no-key", "1") } else { request.header(header::AUTHORIZATION, format!("Bearer {key}")) };
                    let request = match body {
                        Some(body) => request.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())),
                        None => request.body(Body::empty()),
                    };
                    api.raw_keyed(request.expect("request")).await.0.as_u16()
                }
            };
            if open {
                assert_ne!(status(NO_KEY.into()).await, 401, "{method} {path} is open");
                cases += 1;
                continue;
            }
            let scoped = path.starts_with("/v1/tenants/{tenant}");
            let metrics_route = path == "/metrics";
            if !metrics_route {
                assert_eq!(status(NO_KEY.into()).await, 401, "{method} {path} without a key");
                assert_eq!(status("vcos_nonsense".into()).await, 401, "{method} {path} with a malformed key");
                assert_eq!(status(revoked.clone()).await, 401, "{method} {path} with a revoked key");
                cases += 3;
            }
            if scoped {
                assert_eq!(status(globex_admin.clone()).await, 403, "{method} {path} with another tenant's key");
                cases += 1;
            }
            let any_key = roles.is_empty();
            if !any_key {
                for (role, key) in &role_keys {
                    if !roles.contains(role) {
                        assert_eq!(status(key.clone()).await, 403, "{method} {path} with a {role} key (allowed: {roles:?})");
                        cases += 1;
                    }
                }
            }
            let right = if any_key || roles.contains(&"tenant_admin".to_owned()) && scoped { acme_admin.clone() } else { api.admin.clone() };
            let got = status(right).await;
            assert!(got != 401 && got != 403, "{method} {path} with the right key answered {got}");
            cases += 1;
        }
    }
    eprintln!("authorisation matrix: {cases} cases");
    assert!(cases > 150, "the matrix covers every route ({cases} cases)");
}

/// The checks of `promtool check metrics` (client_golang's promlint) that apply to a text
/// exposition: every family has `# HELP` and `# TYPE` once, HELP before samples; names are
/// snake_case; counters end in `_total` and nothing else does; base units only.
fn lint_exposition(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut help = std::collections::BTreeSet::new();
    let mut types = std::collections::BTreeMap::new();
    let family_of = |sample: &str, types: &std::collections::BTreeMap<String, String>| -> Option<String> {
        let name = sample.split(['{', ' ']).next().unwrap_or_default();
        types.keys().filter(|f| name == f.as_str() || ["_bucket", "_sum", "_count"].iter().any(|s| name == format!("{f}{s}"))).max_by_key(|f| f.len()).cloned()
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            if text.trim().is_empty() {
                problems.push(format!("{name}: empty help"));
            }
            if !help.insert(name.to_owned()) {
                problems.push(format!("{name}: HELP twice"));
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            if !help.contains(name) {
                problems.push(format!("{name}: no help text"));
            }
            if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                problems.push(format!("{name}: TYPE twice"));
            }
            let snake = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b':');
            if !snake {
                problems.push(format!("{name}: not snake_case"));
            }
            match (kind, name.ends_with("_total")) {
                ("counter", false) => problems.push(format!("{name}: counter without the _total suffix")),
                (k, true) if k != "counter" => problems.push(format!("{name}: {k} with the _total suffix")),
                _ => {}
            }
            for unit in ["_ms", "_milliseconds", "_microseconds", "_minutes", "_hours", "_kilobytes", "_megabytes"] {
                if name.contains(unit) {
                    problems.push(format!("{name}: {unit} is not a base unit"));
                }
            }
        } else if !line.starts_with('#') && family_of(line, &types).is_none() {
            problems.push(format!("sample without a TYPE: {line}"));
        }
    }
    problems
}

#[test]
fn the_exposition_lint_finds_what_promtool_finds() {
    let bad = "# TYPE requests counter\nrequests 1\n# HELP latencyMs x\n# TYPE latencyMs gauge\nlatencyMs 2\nstray_total 3\n";
    let problems = lint_exposition(bad);
    for expected in ["requests: no help text", "requests: counter without the _total suffix", "latencyMs: not snake_case", "sample without a TYPE: stray_total 3"] {
        assert!(problems.iter().any(|p| p == expected), "{expected} in {problems:?}");
    }
    assert!(lint_exposition("# HELP a_total A.\n# TYPE a_total counter\na_total 1\n").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_changes_and_refusals_and_its_chain_detects_tampering() {
    let api = api().await;
    let (_, acme) = api.post("/v1/tenants", json!({"name": "acme"})).await;
    let admin = acme["admin_key"]["key"].as_str().expect("key").to_owned();
    let (_, viewer) = api.call(Method::POST, "/v1/tenants/acme/keys", Some(json!({"role": "viewer"})), Some(&admin)).await;
    let viewer_key = viewer["key"].as_str().expect("key").to_owned();
    let viewer_id = viewer["id"].as_str().expect("id").to_owned();
    // A change with a request id of the caller's; a refusal (403); reads, which are not recorded.
    let request = Request::post("/v1/tenants/acme/imvus")
        .header(header::AUTHORIZATION, format!("Bearer {admin}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-request-id", "req-42")
        .body(Body::from(r#"{"kind":"counter"}"#))
        .expect("request");
    let (status, headers, _) = api.raw(request).await;
    assert_eq!((status, headers["x-request-id"].to_str().expect("ascii")), (StatusCode::CREATED, "req-42"));
    let (status, _) = api.call(Method::POST, "/v1/tenants/acme/imvus", Some(json!({"kind": "counter"})), Some(&viewer_key)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    api.call(Method::GET, "/v1/tenants/acme/keys", None, Some(&admin)).await;
    // Unauthenticated refusals are sampled, not recorded one by one.
    for _ in 0..5 {
        api.call(Method::POST, "/v1/tenants/acme/imvus", Some(json!({"kind": "counter"})), Some(NO_KEY)).await;
    }
    api.runtime.audit().flush().await.expect("flush");

    let (status, page) = api.call(Method::GET, "/v1/tenants/acme/audit", None, Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let records = page["records"].as_array().expect("records");
    let actions: Vec<(&str, u64)> = records.iter().map(|r| (r["action"].as_str().expect("action"), r["outcome"].as_u64().expect("outcome"))).collect();
    assert_eq!(
        actions,
        [("POST /v1/tenants/{tenant}/imvus", 403), ("POST /v1/tenants/{tenant}/imvus", 201), ("POST /v1/tenants/{tenant}/keys", 201)],
        "newest first, reads left out: {page}"
    );
    assert_eq!(records[0]["key_id"], viewer_id.as_str());
    assert_eq!(records[1]["request_id"], "req-42");
    assert!(!page.to_string().contains(&admin[22..]), "no secret in the log");
    let (_, refusals) = api.call(Method::GET, "/v1/tenants/acme/audit?action=POST%20/v1/tenants/%7Btenant%7D/imvus&limit=1", None, Some(&admin)).await;
    assert_eq!(refusals["records"].as_array().map(Vec::len), Some(1));
    assert!(refusals["next_cursor"].is_u64(), "{refusals}");
    let (_, cluster) = api.get("/v1/audit").await;
    let cluster_actions: Vec<&str> = cluster["records"].as_array().expect("records").iter().filter_map(|r| r["action"].as_str()).collect();
    assert_eq!(cluster_actions.iter().filter(|a| **a == "POST /v1/tenants/{tenant}/imvus").count(), 1, "one sampled refusal: {cluster}");
    assert!(cluster_actions.contains(&"POST /v1/tenants"), "the tenant's creation: {cluster}");
    check_error(api.call(Method::GET, "/v1/tenants/acme/audit", None, Some(&viewer_key)).await, 403, "forbidden", &[]);

    let (_, verified) = api.call(Method::GET, "/v1/tenants/acme/audit/verify", None, Some(&admin)).await;
    assert_eq!((verified["intact"].clone(), verified["count"].clone()), (json!(true), json!(3)), "{verified}");
    // Someone with access to the canon rewrites record 2: the walk says so.
    let key = "audit/t/acme/00000000000000000002";
    let bytes = api.runtime.store().get(key).expect("read").expect("record 2");
    let forged = String::from_utf8(bytes).expect("json").replace("201", "200");
    vcos_actors::store::commit_durable(api.runtime.store().as_ref(), vec![vcos_actors::CanonWrite::Put { key: key.into(), value: forged.into_bytes() }])
        .await
        .expect("forged");
    let (_, verified) = api.call(Method::GET, "/v1/tenants/acme/audit/verify", None, Some(&admin)).await;
    assert_eq!(verified["intact"], false, "{verified}");
    assert!(verified["problems"].to_string().contains("record 3 does not link to record 2"), "{verified}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_rate_gets_429_with_retry_after_and_others_do_not() {
    let api = api().await;
    let (status, created) = api.post("/v1/tenants", json!({"name": "tiny", "policy": {"requests_per_s": 1, "burst": 2}})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!((created["policy"]["tier"].clone(), created["policy"]["burst"].clone()), (json!("basic"), json!(2)));
    let key = created["admin_key"]["key"].as_str().expect("key").to_owned();
    let statuses: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(api.call(Method::GET, "/v1/tenants/tiny/keys", None, Some(&key)).await.0.as_u16());
        }
        out
    };
    assert_eq!(statuses, [200, 200, 429], "the burst, then the limit");
    let request = Request::get("/v1/tenants/tiny/keys").header(header::AUTHORIZATION, format!("Bearer {key}")).body(Body::empty()).expect("request");
    let (status, headers, body) = api.raw(request).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.get(header::RETRY_AFTER).is_some(), "Retry-After");
    assert_eq!(serde_json::from_slice::<Value>(&body).expect("json")["code"], "rate_limited");
    // The cluster admin is not limited by the tenant's rate.
    assert_eq!(api.call(Method::GET, "/v1/tenants/tiny/keys", None, None).await.0, StatusCode::OK);
    check_error(api.post("/v1/tenants", json!({"name": "zero", "policy": {"burst": 0}})).await, 400, "bad_request", &["burst"]);
    check_error(api.post("/v1/tenants", json!({"name": "odd", "policy": {"tier": "platinum"}})).await, 400, "bad_request", &["tier"]);
    api.runtime.audit().flush().await.expect("flush");
    let (_, log) = api.get("/v1/tenants/tiny/audit").await;
    assert!(log["records"].as_array().expect("records").iter().any(|r| r["outcome"] == 429), "throttling is audited: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_metered_where_the_work_happens_and_the_bill_prices_it() {
    let api = api().await;
    let (_, created) = api.post("/v1/tenants", json!({"name": "meters", "policy": {"tier": "enterprise"}})).await;
    let admin = created["admin_key"]["key"].as_str().expect("key").to_owned();
    let (status, imvu) = api.call(Method::POST, "/v1/tenants/meters/imvus", Some(json!({"kind": "counter"})), Some(&admin)).await;
    assert_eq!(status, StatusCode::CREATED, "{imvu}");
    let messages = format!("/v1/tenants/meters/imvus/{}/messages", imvu["key"]["id"]);
    for _ in 0..7 {
        let (status, _) = api.call(Method::POST, &messages, Some(json!({"message": {"op": "add", "n": 1}})), Some(&admin)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, usage) = api.call(Method::GET, "/v1/tenants/meters/usage", None, Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    assert_eq!(usage["units"]["messages"], 7, "{usage}");
    assert!(usage["units"]["canon_bytes"].as_u64().is_some_and(|b| b > 0), "{usage}");
    let (_, default_usage) = api.get("/v1/tenants/default/usage").await;
    assert!(default_usage["units"].get("messages").is_none(), "another tenant's messages are not default's: {default_usage}");

    let now = api.runtime.clock().unix_ms();
    let period = (2020..2100)
        .flat_map(|y| (1..=12).map(move |m| format!("{y}-{m:02}")))
        .find(|p| vcos_actors::metering::month_range(p).is_some_and(|(from, to)| (from..to).contains(&now)))
        .expect("this month");
    let (status, bill) = api.call(Method::GET, &format!("/v1/tenants/meters/bill?period={period}"), None, Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{bill}");
    assert_eq!((bill["tier"].clone(), bill["currency"].clone()), (json!("enterprise"), json!("NXC")));
    let line = bill["lines"].as_array().expect("lines").iter().find(|l| l["unit"] == "messages").cloned().expect("a messages line");
    // 7 messages at 10 µNXC each, enterprise pays half.
    assert_eq!((line["quantity"].clone(), line["amount_nxc"].clone()), (json!(7), json!("0.000035")), "{bill}");
    check_error(api.call(Method::GET, "/v1/tenants/meters/bill?period=2026-13", None, Some(&admin)).await, 400, "bad_request", &["period"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_holds_everything_of_the_tenant_and_nothing_else() {
    let api = api().await;
    api.create("counter").await; // a default-tenant IMVU that must not appear
    let (_, created) = api.post("/v1/tenants", json!({"name": "exp", "policy": {"tier": "enterprise"}})).await;
    let admin = created["admin_key"]["key"].as_str().expect("key").to_owned();
    let (_, imvu) = api.call(Method::POST, "/v1/tenants/exp/imvus", Some(json!({"kind": "counter"})), Some(&admin)).await;
    let messages = format!("/v1/tenants/exp/imvus/{}/messages", imvu["key"]["id"]);
    api.call(Method::POST, &messages, Some(json!({"message": {"op": "add", "n": 3}})), Some(&admin)).await;
    api.runtime.audit().flush().await.expect("flush");
    let request = Request::get("/v1/tenants/exp/export").header(header::AUTHORIZATION, format!("Bearer {admin}")).body(Body::empty()).expect("request");
    let (status, headers, bytes) = api.raw(request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/x-ndjson");
    let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let last = lines.last().expect("lines");
    assert_eq!((last["section"].clone(), last["lines"].as_u64()), (json!("end"), Some(lines.len() as u64 - 1)), "the end line counts the others");
    let sections: std::collections::BTreeSet<&str> = lines.iter().filter_map(|l| l["section"].as_str()).collect();
    for expected in ["policy", "imvus", "audit", "audit_head", "key_index", "key", "end"] {
        assert!(sections.contains(expected), "no {expected} in {sections:?}");
    }
    for l in &lines {
        let key = l["key"].as_str().unwrap_or_default();
        assert!(l["section"] == "end" || l["section"] == "key" || key.contains("exp"), "a line of another tenant: {l}");
    }
    let snapshot = lines.iter().find(|l| l["key"].as_str().is_some_and(|k| k.ends_with("/snap"))).expect("the counter's snapshot");
    assert!(snapshot["value"].to_string().contains('3'), "{snapshot}");
    assert!(!text.contains(&admin[22..]), "no secret in an export");
    for key in lines.iter().filter(|l| l["section"] == "key") {
        assert!(key["value"].get("hash").is_none(), "a key's hash is not exported: {key}");
    }
}

/// Every canon key (a scan of everything, page by page).
fn all_canon_keys(store: &dyn CanonStore) -> Vec<String> {
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.scan_prefix("", after.as_deref(), 1024).expect("scan");
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        keys.extend(page.into_iter().map(|(k, _)| k));
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_tenant_fences_it_at_once_then_deletes_all_it_owns_and_nothing_else() {
    let api = api().await;
    let mut tenants = Vec::new();
    for name in ["doomed", "doomedx"] {
        let (_, created) = api.post("/v1/tenants", json!({"name": name, "policy": {"tier": "enterprise"}})).await;
        let admin = created["admin_key"]["key"].as_str().expect("key").to_owned();
        let (_, imvu) = api.call(Method::POST, &format!("/v1/tenants/{name}/imvus"), Some(json!({"kind": "counter"})), Some(&admin)).await;
        let imvu = format!("/v1/tenants/{name}/imvus/{}", imvu["key"]["id"]);
        let (status, _) = api.call(Method::POST, &format!("{imvu}/messages"), Some(json!({"message": {"op": "add", "n": 2}})), Some(&admin)).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = api.call(Method::PUT, &format!("/v1/tenants/{name}/kv/k"), Some(json!({"value": "v"})), Some(&admin)).await;
        assert_ne!(status, StatusCode::OK, "the in-process router has no raft canon, so its KV answers an error");
        let (status, _) = api.call(Method::POST, &format!("/v1/tenants/{name}/swarms"), Some(json!({"member_kind": "text-worker", "members": 1})), Some(&admin)).await;
        assert_eq!(status, StatusCode::CREATED);
        tenants.push((name, admin, imvu));
    }
    api.runtime.write_usage().await.expect("usage written");
    // Past the window in which messages are counted, so their audit records are written now.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    api.runtime.audit().flush().await.expect("audit written");
    let (doomed, doomed_admin, doomed_imvu) = tenants[0].clone();
    let owned = |keys: &[String], name: &str| keys.iter().filter(|k| k.split('/').any(|seg| seg == name)).cloned().collect::<Vec<_>>();
    let before = all_canon_keys(api.runtime.store().as_ref());
    assert!(owned(&before, doomed).len() >= 8, "the tenant owns records of every kind: {:?}", owned(&before, doomed));

    // Only a cluster admin erases.
    check_error(api.call(Method::DELETE, "/v1/tenants/doomed", None, Some(&doomed_admin)).await, 403, "forbidden", &[]);
    let request = Request::delete("/v1/tenants/doomed").body(Body::empty()).expect("request");
    let (status, headers, body) = api.raw(request).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers[header::LOCATION], "/v1/tenants/doomed/erasure");
    let erasing: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!((erasing["state"].as_str(), erasing["keys_revoked"].as_u64()), (Some("erasing"), Some(1)), "{erasing}");

    // Fenced at once: its keys, its IMVUs, its tenant are gone for everyone.
    check_error(api.call(Method::GET, "/v1/tenants/doomed/imvus", None, Some(&doomed_admin)).await, 401, "key_unknown", &[]);
    check_error(api.call(Method::POST, &format!("{doomed_imvu}/messages"), Some(json!({"message": {"op": "add", "n": 1}})), None).await, 404, "not_found", &[]);
    check_error(api.call(Method::DELETE, "/v1/tenants/doomed", None, None).await, 404, "not_found", &[]);
    let (_, listed) = api.get("/v1/tenants").await;
    assert!(!listed["tenants"].as_array().expect("names").contains(&json!("doomed")), "{listed}");

    // Deleted in the background: poll its erasure until it is over.
    let mut state = String::new();
    for _ in 0..200 {
        let (_, status) = api.get("/v1/tenants/doomed/erasure").await;
        state = status["state"].as_str().expect("state").to_owned();
        if state != "erasing" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "absent");
    let after = all_canon_keys(api.runtime.store().as_ref());
    assert_eq!(owned(&after, doomed), Vec::<String>::new(), "nothing of the erased tenant is left");
    assert_eq!(owned(&after, "doomedx"), owned(&before, "doomedx"), "a tenant whose name starts alike keeps everything");
    let (_, other) = api.call(Method::GET, &tenants[1].2, None, Some(&tenants[1].1)).await;
    assert_eq!(other["state"], json!(2), "{other}");

    // The cluster's log holds the request and the completion.
    api.runtime.audit().flush().await.expect("audit written");
    let (_, log) = api.get("/v1/audit?limit=1000").await;
    let actions: Vec<&str> = log["records"].as_array().expect("records").iter().filter(|r| r["target"] == "/v1/tenants/doomed").filter_map(|r| r["action"].as_str()).collect();
    assert!(actions.iter().any(|a| a.starts_with("DELETE")) && actions.iter().any(|a| a.starts_with("ERASED")), "{actions:?}");
    let (_, verified) = api.get("/v1/audit/verify").await;
    assert_eq!(verified["problems"], json!([]), "{verified}");

    // The name is free again, for a tenant that starts empty.
    let (status, again) = api.post("/v1/tenants", json!({"name": "doomed"})).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    let reborn = owned(&all_canon_keys(api.runtime.store().as_ref()), doomed);
    assert!(!reborn.iter().any(|k| k.starts_with("t/") || k.starts_with("usage/")), "{reborn:?}");
    check_error(api.call(Method::POST, &format!("{doomed_imvu}/messages"), Some(json!({"message": {"op": "add", "n": 1}})), None).await, 404, "not_found", &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_past_the_limit_and_alert_on_the_way() {
    let api = api().await;
    // Messages per day: three, then a 429 until midnight UTC.
    let (_, created) = api.post("/v1/tenants", json!({"name": "quota", "policy": {"messages_per_day": 3, "tier": "pro"}})).await;
    assert_eq!(created["policy"]["messages_per_day"], json!(3), "{created}");
    let admin = created["admin_key"]["key"].as_str().expect("key").to_owned();
    let (_, imvu) = api.call(Method::POST, "/v1/tenants/quota/imvus", Some(json!({"kind": "counter"})), Some(&admin)).await;
    let messages = format!("/v1/tenants/quota/imvus/{}/messages", imvu["key"]["id"]);
    let add = || Some(json!({"message": {"op": "add", "n": 1}}));
    for _ in 0..3 {
        let (status, body) = api.call(Method::POST, &messages, add(), Some(&admin)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let request = Request::post(&messages).header(header::CONTENT_TYPE, "application/json").header(header::AUTHORIZATION, format!("Bearer {admin}")).body(Body::from(add().expect("body").to_string())).expect("request");
    let (status, headers, body) = api.raw(request).await;
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!((status, body["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("quota_exceeded")), "{body}");
    let retry_after: u64 = headers[header::RETRY_AFTER].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=86_400).contains(&retry_after), "until midnight UTC: {retry_after}");
    assert!(body["message"].as_str().expect("message").contains("messages_per_day"), "{body}");
    let (_, usage) = api.call(Method::GET, "/v1/tenants/quota/usage", None, Some(&admin)).await;
    assert_eq!((usage["quotas"]["messages_per_day"].clone(), usage["quotas"]["messages_today"].clone()), (json!(3), json!(3)), "{usage}");
    // The refresh after the usage write found 100 % of the day used: alerts at 80 and 100 %.
    api.runtime.audit().flush().await.expect("audit written");
    let (_, log) = api.call(Method::GET, "/v1/tenants/quota/audit?limit=100", None, Some(&admin)).await;
    let alerts: Vec<&str> = log["records"].as_array().expect("records").iter().filter_map(|r| r["action"].as_str()).filter(|a| a.starts_with("ALERT")).collect();
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert!(alerts.iter().any(|a| a.contains("messages_per_day at 80%")) && alerts.iter().any(|a| a.contains("at 100%")), "{alerts:?}");
    // Once per threshold and day, however often it is measured.
    api.runtime.write_usage().await.expect("usage written");
    api.runtime.audit().flush().await.expect("audit written");
    let (_, log) = api.call(Method::GET, "/v1/tenants/quota/audit?limit=100", None, Some(&admin)).await;
    assert_eq!(log["records"].as_array().expect("records").iter().filter(|r| r["action"].as_str().is_some_and(|a| a.starts_with("ALERT"))).count(), 2);

    // Canon bytes stored: a tenant over it may not add records, but its IMVUs keep working.
    let (_, created) = api.post("/v1/tenants", json!({"name": "storage", "policy": {"canon_bytes_stored": 100}})).await;
    let admin = created["admin_key"]["key"].as_str().expect("key").to_owned();
    let (status, imvu) = api.call(Method::POST, "/v1/tenants/storage/imvus", Some(json!({"kind": "counter"})), Some(&admin)).await;
    assert_eq!(status, StatusCode::CREATED, "before any measurement: {imvu}");
    api.runtime.measure_storage().await.expect("measured");
    check_error(api.call(Method::POST, "/v1/tenants/storage/imvus", Some(json!({"kind": "counter"})), Some(&admin)).await, 429, "quota_exceeded", &["canon_bytes_stored"]);
    let (status, _) = api.call(Method::POST, &format!("/v1/tenants/storage/imvus/{}/messages", imvu["key"]["id"]), add(), Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "messages to existing IMVUs are not refused");
    let (_, usage) = api.call(Method::GET, "/v1/tenants/storage/usage", None, Some(&admin)).await;
    assert!(usage["quotas"]["stored_bytes"].as_u64().expect("measured") > 100, "{usage}");
}

/// Sends `request` as raw bytes on a fresh connection; returns what came back.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer (and close) before it has read everything: a failed write is fine.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_hyper_cannot_parse_is_answered_as_json_too() {
    let api = api().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(vcos_api::serve(listener, api.router.clone(), async move {
        let _ = stopped.await;
    }));
    let check = |answer: String, status: &str, code: &str| {
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head: {answer:?}"));
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
        assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
        let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
        assert_eq!(body["code"], code, "{body}");
    };
    let long_url = format!("GET /v1/tenants/{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000));
    check(raw_exchange(addr, long_url.as_bytes()).await, "414", "uri_too_long");
    let many_headers: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let request = format!("GET /health HTTP/1.1\r\nhost: x\r\n{many_headers}\r\n");
    check(raw_exchange(addr, request.as_bytes()).await, "431", "headers_too_large");
    check(raw_exchange(addr, b"NOT HTTP AT ALL\r\n\r\n").await, "400", "bad_request");
    // The connection still serves well-formed requests as before.
    let answer = raw_exchange(addr, b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_audited_as_counts_per_second_not_one_record_each() {
    let api = api().await;
    let (_, acme) = api.post("/v1/tenants", json!({"name": "acme", "policy": {"tier": "pro"}})).await;
    let admin = acme["admin_key"]["key"].as_str().expect("key").to_owned();
    let (_, imvu) = api.call(Method::POST, "/v1/tenants/acme/imvus", Some(json!({"kind": "counter"})), Some(&admin)).await;
    let messages = format!("/v1/tenants/acme/imvus/{}/messages", imvu["key"]["id"]);
    for _ in 0..7 {
        let (status, _) = api.call(Method::POST, &messages, Some(json!({"message": {"op": "add", "n": 1}})), Some(&admin)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = api.call(Method::POST, &messages, Some(json!({"message": {"op": "nonsense"}})), Some(&admin)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The counting window (1 s) must be over before the counts are written.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    api.runtime.audit().flush().await.expect("flush");
    let (_, page) = api.call(Method::GET, "/v1/tenants/acme/audit?action=POST%20/v1/tenants/%7Btenant%7D/imvus/%7Bid%7D/messages", None, Some(&admin)).await;
    let counted: Vec<(u64, u64)> = page["records"].as_array().expect("records").iter().map(|r| (r["outcome"].as_u64().expect("outcome"), r["count"].as_u64().expect("count"))).collect();
    assert_eq!(counted.iter().copied().collect::<std::collections::BTreeSet<_>>(), [(200, 7), (400, 1)].into_iter().collect(), "{page}");
    let (_, verified) = api.call(Method::GET, "/v1/tenants/acme/audit/verify", None, Some(&admin)).await;
    assert_eq!(verified["problems"], json!([]), "{verified}");
}
