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
}

async fn start(store: Arc<dyn CanonStore>) -> Api {
    // Before the runtime: its metrics bind to the recorder present when they are registered.
    let metrics = vcos_api::install_metrics_recorder();
    let mut config = RuntimeConfig::new(store, Arc::new(SystemClock::new()));
    config.shards_per_kind = 2;
    let runtime = Runtime::builder(config).kind(Counter).kind(KvMemory).kind(TextWorker).start().await.expect("runtime starts");
    runtime.ensure_tenant(TenantId::default_tenant(), TenantPolicy::default()).await.expect("default tenant");
    Api { router: vcos_api::router(runtime.clone(), metrics), runtime }
}

async fn api() -> Api {
    start(Arc::new(MemoryStore::new())).await
}

impl Api {
    /// Sends one request; returns status, headers and the raw body.
    async fn raw(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        let response = self.router.clone().oneshot(request).await.expect("the router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024).await.expect("body reads");
        (status, headers, body)
    }

    /// Sends `body` (if any) as JSON with an optional bearer key; returns status and JSON body.
    async fn call(&self, method: Method, path: &str, body: Option<Value>, key: Option<&str>) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(key) = key {
            request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let request = match body {
            Some(body) => request.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .expect("valid request");
        let (status, headers, bytes) = self.raw(request).await;
        (status, json_body(&headers, &bytes))
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
async fn tenants_with_a_key_need_it() {
    let api = api().await;
    let key = "acme-secret-key";
    let (status, created) = api.post("/v1/tenants", json!({"name": "acme", "policy": {"api_key": key, "max_imvus": 10}})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], "acme");
    assert_eq!(created["api_key"], key, "the key is returned on creation");
    assert_eq!(created["policy"]["requires_api_key"], true);
    assert_eq!(created["policy"]["max_imvus"], 10);

    let (status, tenants) = api.get("/v1/tenants").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tenants, json!({"tenants": ["acme", "default"]}));
    assert!(!tenants.to_string().contains(key));

    let imvus = "/v1/tenants/acme/imvus";
    let refused = api.call(Method::POST, imvus, Some(json!({"kind": "counter"})), None).await;
    check_error(refused, 403, "handshake_refused", &["stage 45"]);
    let wrong = api.call(Method::POST, imvus, Some(json!({"kind": "counter"})), Some("not-the-key")).await;
    check_error(wrong, 401, "unauthorized", &["unknown API key"]);
    let (status, info) = api.call(Method::POST, imvus, Some(json!({"kind": "counter"})), Some(key)).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    let imvu = format!("{imvus}/{}", info["key"]["id"]);

    check_error(api.get(&imvu).await, 403, "forbidden", &["acme"]);
    check_error(api.send(&imvu, json!({"op": "get"})).await, 403, "forbidden", &[]);
    check_error(api.get(&format!("{imvu}/history")).await, 403, "forbidden", &[]);
    check_error(api.post(&format!("{imvu}/pause"), json!(null)).await, 403, "handshake_refused", &["45"]);
    let message = json!({"message": {"op": "add", "n": 2}});
    assert_eq!(api.call(Method::POST, &format!("{imvu}/messages"), Some(message), Some(key)).await.1, json!({"reply": 2}));
    assert_eq!(api.call(Method::GET, &imvu, None, Some(key)).await.1["state"], 2);

    // Another tenant's key is no key for acme.
    let (status, _) = api.post("/v1/tenants", json!({"name": "globex", "policy": {"api_key": "globex-secret"}})).await;
    assert_eq!(status, StatusCode::CREATED);
    check_error(api.call(Method::GET, &imvu, None, Some("globex-secret")).await, 403, "forbidden", &[]);
    // Open tenants need no key, but a wrong key is still refused.
    assert_eq!(api.call(Method::GET, "/v1/kinds", None, Some("whatever")).await.0, StatusCode::OK);
    check_error(
        api.call(Method::POST, "/v1/tenants/default/imvus", Some(json!({"kind": "counter"})), Some("whatever-key")).await,
        401,
        "unauthorized",
        &[],
    );

    check_error(api.post("/v1/tenants", json!({"name": "acme"})).await, 409, "conflict", &["acme"]);
    check_error(api.post("/v1/tenants", json!({"name": "initech", "policy": {"api_key": key}})).await, 409, "conflict", &["api_key"]);
    check_error(api.post("/v1/tenants", json!({"name": "Bad Name"})).await, 400, "bad_request", &["name"]);
    check_error(api.post("/v1/tenants", json!({"name": "x", "policy": {"api_key": "short"}})).await, 400, "bad_request", &["api_key"]);
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
        assert_eq!(e["caller"], "http");
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
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }

    api.runtime.node().shutting_down.store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, health) = api.get("/health").await;
    assert_eq!((status, &health["status"]), (StatusCode::SERVICE_UNAVAILABLE, &json!("stopping")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_route_and_docs_are_served() {
    let api = api().await;
    let (status, doc) = api.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let expected: [(&str, &[&str]); 27] = [
        ("/health", &["get"]),
        ("/metrics", &["get"]),
        ("/openapi.json", &["get"]),
        ("/v1/kinds", &["get"]),
        ("/v1/tenants", &["get", "post"]),
        ("/v1/tenants/{tenant}/imvus", &["post"]),
        ("/v1/tenants/{tenant}/imvus/{id}", &["get"]),
        ("/v1/tenants/{tenant}/imvus/{id}/messages", &["post"]),
        ("/v1/tenants/{tenant}/imvus/{id}/pause", &["post"]),
        ("/v1/tenants/{tenant}/imvus/{id}/resume", &["post"]),
        ("/v1/tenants/{tenant}/imvus/{id}/terminate", &["post"]),
        ("/v1/tenants/{tenant}/imvus/{id}/history", &["get"]),
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
    ];
    for (path, methods) in expected {
        for method in methods {
            let op = &doc["paths"][path][method];
            assert!(op.is_object(), "{method} {path} is not documented");
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} has no responses");
        }
    }
    let paths = doc["paths"].as_object().expect("paths").len();
    assert_eq!(paths, 27, "exactly the routes above");
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
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
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
