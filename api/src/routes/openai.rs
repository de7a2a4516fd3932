//! OpenAI-shaped inference routes: `GET /v1/models`, `POST /v1/embeddings`,
//! `POST /v1/chat/completions` (also streamed as server-sent events), so that OpenAI client
//! libraries work against a node unchanged (`base_url = http://node/v1`, the tenant key as the
//! API key). Requests act for the key's tenant: tokens count as its usage (unit `tokens`). A
//! cluster key (an operator trying a model) is served too; its tokens are billed to no tenant
//! and show in the metrics under `tenant="(cluster)"`.
//!
//! Differences from OpenAI, each answered with a clear 400 rather than ignored: one choice
//! (`n` = 1), no penalties, no log-probabilities, no tools, text input only (no token arrays),
//! `dimensions` only as the model's own.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedReceiver;
use utoipa::ToSchema;
use vcos_actors::metering::UsageUnit;
use vcos_actors::models::{ChatTurn, GenerateRequest, ModelRequest};
use vcos_actors::{ActorError, Caller, TenantEntry};
use vcos_gpu_workers::generate::{ChatMessage, FinishReason, Role, SamplingParams};
use vcos_gpu_workers::serve::{GenEvent, ServeError};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, Auth};
use crate::AppState;

/// Stop sequences per request, at most (as OpenAI).
const STOP_MAX: usize = 4;
/// Tokens generated when the request does not say (and the context allows).
const MAX_TOKENS_DEFAULT: usize = 1_024;

/// One model.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ModelView {
    /// Its name, as requests give it.
    id: String,
    /// Always `model`.
    object: String,
    /// Unix seconds (0: the model's own date is not known).
    created: u64,
    /// Always `vcos`.
    owned_by: String,
}

/// The models this node serves.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ModelList {
    /// Always `list`.
    object: String,
    /// The models.
    data: Vec<ModelView>,
}

/// Lists the models served: this node's (those `vcos models install` put in its cache) and,
/// in a cluster, those of the nodes with the `inference` role.
#[utoipa::path(get, path = "/v1/models", tag = "inference",
    responses((status = 200, description = "The models", body = ModelList)))]
pub(super) async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    let mut names: Vec<String> = state.inference.models().into_iter().map(str::to_owned).collect();
    if let Some(remote) = &state.remote_models {
        for name in remote.models().await {
            if !names.iter().any(|n| same_model(n, &name)) {
                names.push(name);
            }
        }
    }
    let data = names.into_iter().map(|id| ModelView { id, object: "model".into(), created: 0, owned_by: "vcos".into() }).collect();
    Json(ModelList { object: "list".into(), data })
}

/// Text to embed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmbeddingsRequest {
    /// The embedding model (`GET /v1/models`).
    model: String,
    /// A string, or an array of strings (token arrays are not accepted).
    #[schema(schema_with = input_schema)]
    input: serde_json::Value,
    /// `float` (default) or `base64` (little-endian f32, as OpenAI clients ask by default).
    encoding_format: Option<EncodingFormat>,
    /// Must be the model's own (384), if given.
    #[schema(minimum = 384, maximum = 384)]
    dimensions: Option<u64>,
    /// The end user, for the caller's records (not used).
    user: Option<String>,
}

/// How vectors are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EncodingFormat {
    /// An array of numbers.
    Float,
    /// Base64 of the little-endian f32 bytes.
    Base64,
}

/// A non-blank string of at most 64 KiB, or 1 to 64 of them.
fn input_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    let text = || ObjectBuilder::new().schema_type(Type::String).pattern(Some(r"\S")).min_length(Some(1)).max_length(Some(16_384));
    OneOfBuilder::new()
        .item(text())
        .item(ArrayBuilder::new().items(text()).min_items(Some(1)).max_items(Some(64)))
        .description(Some("A string, or an array of strings (token arrays are not accepted)"))
        .build()
        .into()
}

/// A non-empty string, or 1 to 4 of them, or null.
fn stop_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    let text = || ObjectBuilder::new().schema_type(Type::String).min_length(Some(1));
    OneOfBuilder::new()
        .item(text())
        .item(ArrayBuilder::new().items(text()).max_items(Some(4)))
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some("Up to 4 strings; generation stops before any of them"))
        .build()
        .into()
}

/// A string, or an array of text parts.
fn content_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    let part = ObjectBuilder::new()
        .property("type", ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["text"])))
        .property("text", ObjectBuilder::new().schema_type(Type::String))
        .required("type")
        .required("text");
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(ArrayBuilder::new().items(part))
        .description(Some("The text: a string, or an array of `{\"type\": \"text\", \"text\": …}` parts"))
        .build()
        .into()
}

/// One embedding.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct EmbeddingView {
    /// Always `embedding`.
    object: String,
    /// Position in the input.
    index: usize,
    /// The vector (unit length): an array of numbers, or a base64 string.
    #[schema(value_type = Object)]
    embedding: serde_json::Value,
}

/// Tokens used.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct UsageView {
    /// Tokens read.
    prompt_tokens: usize,
    /// Tokens generated (chat only).
    #[serde(skip_serializing_if = "Option::is_none")]
    completion_tokens: Option<usize>,
    /// All tokens.
    total_tokens: usize,
}

/// Embeddings, in input order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct EmbeddingsResponse {
    /// Always `list`.
    object: String,
    /// One per input text.
    data: Vec<EmbeddingView>,
    /// The model.
    model: String,
    /// Tokens read.
    usage: UsageView,
}

/// The tenant a request acts for: the key's; `None` for a cluster key.
fn tenant_entry(state: &AppState, caller: &Caller) -> Result<Option<Arc<TenantEntry>>, ApiError> {
    match caller.authenticated_tenant.as_ref() {
        Some(tenant) => Ok(Some(state.runtime.tenant_or_load(tenant)?)),
        None => Ok(None),
    }
}

/// Counts `n` tokens of `kind` for the tenant (its usage, and the metrics).
fn charge(entry: Option<&TenantEntry>, model: &str, kind: &'static str, n: usize) {
    if let Some(entry) = entry {
        entry.usage.add(UsageUnit::Tokens, n as u64);
    }
    let tenant = entry.map_or_else(|| "(cluster)".to_owned(), |e| e.id.as_str().to_owned());
    metrics::counter!("vcos_inference_tokens_total", "tenant" => tenant, "model" => model.to_owned(), "kind" => kind).increment(n as u64);
}

/// 404 for a name no node serves, 503 for a known model this node has not loaded.
fn model_missing(model: &str, served: &[&str]) -> ApiError {
    if known_model(model) {
        ApiError::Actor(vcos_actors::ActorError::Unavailable(format!(
            "model {model} is not loaded on this node: install it with `vcos models install`, then restart the node"
        )))
    } else {
        ApiError::NotFound(format!("no model {model:?}; served here: {}", if served.is_empty() { "none".to_owned() } else { served.join(", ") }))
    }
}

/// Whether some node could serve `model` (it is one of the catalog's).
fn known_model(model: &str) -> bool {
    vcos_gpu_workers::models::ModelId::ALL.iter().any(|id| same_model(id.name(), model))
}

/// Model names match case-insensitively (`all-MiniLM-L6-v2` is `all-minilm-l6-v2`).
fn same_model(served: &str, asked: &str) -> bool {
    served.eq_ignore_ascii_case(asked)
}

fn serve_error(e: ServeError) -> ApiError {
    match e {
        ServeError::Invalid(message) => ApiError::BadRequest(message),
        e @ ServeError::Overloaded { .. } => ApiError::Throttled { code: "model_overloaded", message: e.to_string(), retry_after_s: 1 },
        e @ (ServeError::WorkerFailed { .. } | ServeError::Stopped(_)) => ApiError::Actor(vcos_actors::ActorError::Unavailable(e.to_string())),
    }
}

fn texts_of(input: serde_json::Value) -> Result<Vec<String>, ApiError> {
    let bad = |reason: &str| ApiError::BadRequest(format!("field `input`: {reason}"));
    match input {
        serde_json::Value::String(text) => Ok(vec![text]),
        serde_json::Value::Array(items) if items.is_empty() => Err(bad("an empty array: give at least one text")),
        serde_json::Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                serde_json::Value::String(text) => Ok(text),
                serde_json::Value::Number(_) | serde_json::Value::Array(_) => Err(bad("token arrays are not accepted: send text")),
                other => Err(bad(&format!("item {i} is {}, not a string", json_type(&other)))),
            })
            .collect(),
        other => Err(bad(&format!("expected a string or an array of strings, got {}", json_type(&other)))),
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Base64 (standard alphabet, padded) of the vector's little-endian f32 bytes.
fn base64_f32(vector: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16) | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8) | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Embeds text with the embedding model: OpenAI's `POST /v1/embeddings`.
#[utoipa::path(post, path = "/v1/embeddings", tag = "inference",
    request_body = EmbeddingsRequest,
    responses(
        (status = 200, description = "One embedding per input text", body = EmbeddingsResponse),
        (status = 400, description = "`bad_request`: empty or oversized input, token arrays, an unknown field or encoding", body = ErrorBody),
        (status = 404, description = "`not_found`: no such model", body = ErrorBody),
        (status = 429, description = "`model_overloaded`: the model's queue is full; retry after `Retry-After`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the model is not loaded here, or its worker failed and restarted (retry)", body = ErrorBody),
    ))]
pub(super) async fn embeddings(State(state): State<AppState>, Auth(caller): Auth, ApiJson(request): ApiJson<EmbeddingsRequest>) -> Result<Json<EmbeddingsResponse>, ApiError> {
    let entry = tenant_entry(&state, &caller)?;
    let _ = request.user;
    let base64 = request.encoding_format == Some(EncodingFormat::Base64);
    let local = state.inference.embeddings().filter(|p| same_model(p.model(), &request.model));
    let (vectors, tokens, model) = match (local, &state.remote_models) {
        // Here, unless this node's queue is full and another node may have room.
        (Some(pool), remote) if remote.is_none() || pool.has_room() => {
            if let Some(dimensions) = request.dimensions.filter(|d| *d != pool.dim() as u64) {
                return Err(ApiError::BadRequest(format!("field `dimensions`: {} makes {}-dimension vectors only, not {dimensions}", pool.model(), pool.dim())));
            }
            let texts = texts_of(request.input)?;
            let output = pool.embed(texts).await.map_err(serve_error)?;
            let tokens = output.total_tokens();
            (output.vectors, tokens, pool.model().to_owned())
        }
        (_, Some(remote)) if known_model(&request.model) => {
            let texts = texts_of(request.input)?;
            let answer = remote.run(ModelRequest::Embed { texts }).await?;
            let vectors: Vec<Vec<f32>> = answer
                .value
                .get("embeddings")
                .cloned()
                .and_then(|v| serde_json::from_value(v).ok())
                .ok_or_else(|| ApiError::Actor(ActorError::Unavailable(format!("the node serving {} answered without embeddings", answer.model))))?;
            if let Some(dimensions) = request.dimensions.filter(|d| vectors.first().is_some_and(|v| v.len() as u64 != *d)) {
                return Err(ApiError::BadRequest(format!("field `dimensions`: {} makes {}-dimension vectors only, not {dimensions}", answer.model, vectors.first().map_or(0, Vec::len))));
            }
            (vectors, usize::try_from(answer.tokens).unwrap_or(usize::MAX), answer.model)
        }
        _ => return Err(model_missing(&request.model, &state.inference.models())),
    };
    charge(entry.as_deref(), &model, "prompt", tokens);
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 { serde_json::Value::String(base64_f32(&vector)) } else { serde_json::json!(vector) };
            EmbeddingView { object: "embedding".into(), index, embedding }
        })
        .collect();
    Ok(Json(EmbeddingsResponse { object: "list".into(), data, model, usage: UsageView { prompt_tokens: tokens, completion_tokens: None, total_tokens: tokens } }))
}

/// One message of a conversation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChatMessageIn {
    /// Who speaks (`developer` is taken as `system`; tools are not supported).
    role: RoleIn,
    /// The text: a string, or an array of `{"type": "text", "text": …}` parts.
    #[schema(schema_with = content_schema)]
    content: serde_json::Value,
    /// A name for the participant (not used).
    name: Option<String>,
}

/// Who speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RoleIn {
    /// Instructions.
    System,
    /// Instructions (OpenAI's newer name for `system`).
    Developer,
    /// The user.
    User,
    /// The model's earlier replies.
    Assistant,
}

/// Streaming options.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamOptions {
    /// Send a last chunk with the usage.
    include_usage: Option<bool>,
}

/// A chat completion request (OpenAI's shape).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChatRequest {
    /// The generation model (`GET /v1/models`).
    model: String,
    /// The conversation so far.
    #[schema(min_items = 1)]
    messages: Vec<ChatMessageIn>,
    /// 0 (greedy) to 2; default 1.
    #[schema(minimum = 0, maximum = 2)]
    temperature: Option<f64>,
    /// Nucleus sampling, in (0, 1]; default 1.
    #[schema(minimum = 0.001, maximum = 1)]
    top_p: Option<f64>,
    /// Tokens to generate, at most (default: as many as fit, up to 1,024).
    #[schema(minimum = 1)]
    max_tokens: Option<u64>,
    /// Same as `max_tokens` (OpenAI's newer name).
    #[schema(minimum = 1)]
    max_completion_tokens: Option<u64>,
    /// Up to 4 strings; generation stops before any of them.
    #[schema(schema_with = stop_schema)]
    stop: Option<serde_json::Value>,
    /// Same seed, same request: same reply.
    seed: Option<i64>,
    /// Stream the reply as server-sent events.
    stream: Option<bool>,
    /// Streaming options.
    stream_options: Option<StreamOptions>,
    /// Choices: only 1.
    #[schema(minimum = 1, maximum = 1)]
    n: Option<u64>,
    /// Only 0.
    #[schema(minimum = 0, maximum = 0)]
    presence_penalty: Option<f64>,
    /// Only 0.
    #[schema(minimum = 0, maximum = 0)]
    frequency_penalty: Option<f64>,
    /// Only false.
    logprobs: Option<bool>,
    /// The end user, for the caller's records (not used).
    user: Option<String>,
}

/// The reply.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ChatMessageOut {
    /// Always `assistant`.
    role: String,
    /// The text.
    content: String,
}

/// One choice.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ChoiceView {
    /// Always 0.
    index: usize,
    /// The reply.
    message: ChatMessageOut,
    /// `stop` (end of reply or a stop sequence) or `length` (`max_tokens` or the context).
    finish_reason: String,
}

/// A chat completion (OpenAI's shape).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ChatResponse {
    /// `chatcmpl-…`.
    id: String,
    /// Always `chat.completion`.
    object: String,
    /// Unix seconds.
    created: u64,
    /// The model.
    model: String,
    /// One choice.
    choices: Vec<ChoiceView>,
    /// Tokens read and generated.
    usage: UsageView,
}

fn message_of(i: usize, m: ChatMessageIn) -> Result<ChatMessage, ApiError> {
    let _ = m.name;
    let bad = |reason: String| ApiError::BadRequest(format!("field `messages[{i}]`: {reason}"));
    let role = match m.role {
        RoleIn::System | RoleIn::Developer => Role::System,
        RoleIn::User => Role::User,
        RoleIn::Assistant => Role::Assistant,
    };
    let content = match m.content {
        serde_json::Value::String(text) => text,
        serde_json::Value::Null if role == Role::Assistant => String::new(),
        serde_json::Value::Array(parts) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(|t| t.as_str()), part.get("text").and_then(|t| t.as_str())) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => return Err(bad(format!("content part {j} is not {{\"type\": \"text\", \"text\": …}} (only text is supported)"))),
                }
            }
            text
        }
        other => return Err(bad(format!("content is {}, not a string or an array of text parts", json_type(&other)))),
    };
    Ok(match role {
        Role::System => ChatMessage::system(content),
        Role::User => ChatMessage::user(content),
        Role::Assistant => ChatMessage::assistant(content),
    })
}

fn stops_of(stop: Option<serde_json::Value>) -> Result<Vec<String>, ApiError> {
    let bad = |reason: &str| ApiError::BadRequest(format!("field `stop`: {reason}"));
    let stops = match stop {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => vec![s],
        Some(serde_json::Value::Array(items)) => {
            items.into_iter().map(|s| s.as_str().map(str::to_owned).ok_or_else(|| bad("every stop sequence must be a string"))).collect::<Result<_, _>>()?
        }
        Some(other) => return Err(bad(&format!("expected a string or an array of strings, got {}", json_type(&other)))),
    };
    if stops.len() > STOP_MAX {
        return Err(bad(&format!("{} stop sequences; at most {STOP_MAX}", stops.len())));
    }
    if stops.iter().any(String::is_empty) {
        return Err(bad("a stop sequence is empty"));
    }
    Ok(stops)
}

static COMPLETIONS: AtomicU64 = AtomicU64::new(0);

/// Counts a request's tokens as its tenant's usage, also when a stream is dropped midway.
struct TokenMeter {
    entry: Option<Arc<TenantEntry>>,
    model: String,
    completion: usize,
}

impl TokenMeter {
    fn token(&mut self) {
        self.completion += 1;
    }
}

impl Drop for TokenMeter {
    fn drop(&mut self) {
        charge(self.entry.as_deref(), &self.model, "completion", self.completion);
    }
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// Generates a reply with the generation model: OpenAI's `POST /v1/chat/completions`. With
/// `"stream": true` the reply comes as server-sent events (`chat.completion.chunk` objects,
/// then `data: [DONE]`); a client that disconnects leaves the batch at once.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "inference",
    request_body = ChatRequest,
    responses(
        (status = 200, description = "The reply (or, with `stream`, `text/event-stream` chunks)", body = ChatResponse),
        (status = 400, description = "`bad_request`: no messages, a prompt longer than the context, sampling parameters out of range, unsupported options", body = ErrorBody),
        (status = 404, description = "`not_found`: no such model", body = ErrorBody),
        (status = 429, description = "`model_overloaded`: the model's queue is full; retry after `Retry-After`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the model is not loaded here, or its worker failed and restarted (retry)", body = ErrorBody),
    ))]
pub(super) async fn chat_completions(State(state): State<AppState>, Auth(caller): Auth, ApiJson(request): ApiJson<ChatRequest>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let entry = tenant_entry(&state, &caller)?;
    let _ = request.user;
    // Here, unless this node's queue is full and another node may have room; elsewhere when
    // this node does not serve the model and another may.
    let local = state.inference.chat().filter(|c| same_model(c.model(), &request.model));
    let local = local.filter(|chat| state.remote_models.is_none() || chat.pool().has_room());
    if local.is_none() && (state.remote_models.is_none() || !known_model(&request.model)) {
        return Err(model_missing(&request.model, &state.inference.models()));
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::BadRequest("field `n`: only one choice per request (n = 1)".into()));
    }
    for (name, value) in [("presence_penalty", request.presence_penalty), ("frequency_penalty", request.frequency_penalty)] {
        if value.is_some_and(|v| v != 0.0) {
            return Err(ApiError::BadRequest(format!("field `{name}`: penalties are not supported (give 0 or leave it out)")));
        }
    }
    if request.logprobs == Some(true) {
        return Err(ApiError::BadRequest("field `logprobs`: log-probabilities are not supported".into()));
    }
    let temperature = request.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::BadRequest(format!("field `temperature`: {temperature} is not between 0 and 2")));
    }
    let top_p = request.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::BadRequest(format!("field `top_p`: {top_p} is not in (0, 1]")));
    }
    if request.messages.is_empty() {
        return Err(ApiError::BadRequest("field `messages`: empty; give at least one message".into()));
    }
    let messages = request.messages.into_iter().enumerate().map(|(i, m)| message_of(i, m)).collect::<Result<Vec<_>, _>>()?;
    let stop = stops_of(request.stop)?;
    let asked = request.max_completion_tokens.or(request.max_tokens);
    if asked == Some(0) {
        return Err(ApiError::BadRequest("field `max_tokens`: must be at least 1".into()));
    }
    let number = COMPLETIONS.fetch_add(1, Ordering::Relaxed);
    let now_ms = state.runtime.clock().unix_ms();
    // Without a seed, each request samples differently (as OpenAI's do).
    let seed = request.seed.map_or_else(|| now_ms ^ number.wrapping_mul(0x9e37_79b9_7f4a_7c15), |s| s as u64);
    let max_tokens = usize::try_from(asked.unwrap_or(MAX_TOKENS_DEFAULT as u64)).unwrap_or(usize::MAX);
    let stream = request.stream == Some(true);
    let include_usage = request.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
    let id = format!("chatcmpl-{:x}{:04x}", now_ms, number & 0xffff);
    let created = now_ms / 1_000;
    let Some(chat) = local else {
        let remote = state.remote_models.as_ref().ok_or_else(|| model_missing(&request.model, &state.inference.models()))?;
        let turns = messages.into_iter().map(|m| ChatTurn::new(m.role.as_str(), m.content)).collect();
        let max_tokens = u32::try_from(max_tokens).unwrap_or(u32::MAX);
        let generate = GenerateRequest { messages: turns, max_tokens, temperature, seed, stop, top_p };
        let answer = remote.run(ModelRequest::Generate(generate)).await?;
        let reply = RemoteReply::of(&answer.value).ok_or_else(|| ApiError::Actor(ActorError::Unavailable(format!("the node serving {} answered without a reply", answer.model))))?;
        charge(entry.as_deref(), &answer.model, "prompt", reply.prompt_tokens);
        let meter = TokenMeter { entry, model: answer.model.clone(), completion: reply.completion_tokens };
        metrics::histogram!("vcos_inference_request_seconds", "model" => answer.model.clone(), "kind" => "chat").record(started.elapsed().as_secs_f64());
        let usage = UsageView { prompt_tokens: reply.prompt_tokens, completion_tokens: Some(reply.completion_tokens), total_tokens: reply.prompt_tokens + reply.completion_tokens };
        if stream {
            // The other node answers whole: its reply comes as one chunk.
            let (_, events) = tokio::sync::mpsc::unbounded_channel();
            let mut st = ChatStream { events, meter, queue: VecDeque::new(), id, created, model: answer.model, prompt_tokens: reply.prompt_tokens, include_usage, started, first: false, done: true };
            st.queue.push_back(st.chunk(serde_json::json!({"role": "assistant", "content": ""}), None));
            st.queue.push_back(st.chunk(serde_json::json!({"content": reply.text}), None));
            st.queue.push_back(st.chunk(serde_json::json!({}), Some(&reply.finish_reason)));
            if include_usage {
                st.queue.push_back(st.usage_chunk());
            }
            st.queue.push_back(Event::default().data("[DONE]"));
            return Ok(Sse::new(st.into_stream()).keep_alive(KeepAlive::default()).into_response());
        }
        drop(meter);
        let choice = ChoiceView { index: 0, message: ChatMessageOut { role: "assistant".into(), content: reply.text }, finish_reason: reply.finish_reason };
        return Ok(Json(ChatResponse { id, object: "chat.completion".into(), created, model: answer.model, choices: vec![choice], usage }).into_response());
    };
    let params = SamplingParams { temperature, top_p, seed, max_tokens, stop, skip_special_tokens: true };
    let (prompt_tokens, ticket) = chat.start(messages, params).map_err(serve_error)?;
    charge(entry.as_deref(), chat.model(), "prompt", prompt_tokens);
    let meter = TokenMeter { entry, model: chat.model().to_owned(), completion: 0 };
    let model = chat.model().to_owned();
    if stream {
        let stream = ChatStream { events: ticket.events, meter, queue: VecDeque::new(), id, created, model, prompt_tokens, include_usage, started, first: true, done: false };
        return Ok(Sse::new(stream.into_stream()).keep_alive(KeepAlive::default()).into_response());
    }
    let mut meter = meter;
    let mut events = ticket.events;
    let mut text = String::new();
    let mut first = true;
    loop {
        match events.recv().await {
            Some(GenEvent::Token(piece)) => {
                if std::mem::take(&mut first) {
                    metrics::histogram!("vcos_inference_time_to_first_token_seconds", "model" => model.clone()).record(started.elapsed().as_secs_f64());
                }
                meter.token();
                text.push_str(&piece);
            }
            Some(GenEvent::Text(piece)) => text.push_str(&piece),
            Some(GenEvent::Done(generation)) => {
                let completion = meter.completion;
                metrics::histogram!("vcos_inference_request_seconds", "model" => model.clone(), "kind" => "chat").record(started.elapsed().as_secs_f64());
                let choice = ChoiceView { index: 0, message: ChatMessageOut { role: "assistant".into(), content: text }, finish_reason: finish_reason(generation.finish).into() };
                let usage = UsageView { prompt_tokens, completion_tokens: Some(completion), total_tokens: prompt_tokens + completion };
                return Ok(Json(ChatResponse { id, object: "chat.completion".into(), created, model, choices: vec![choice], usage }).into_response());
            }
            Some(GenEvent::Failed(e)) => return Err(serve_error(e)),
            None => return Err(serve_error(ServeError::WorkerFailed { model, reason: "the worker dropped the request".into() })),
        }
    }
}

/// A generation answered by another node (`ModelRequest::Generate`'s JSON).
#[derive(Deserialize)]
struct RemoteReply {
    text: String,
    finish_reason: String,
    prompt_tokens: usize,
    completion_tokens: usize,
}

impl RemoteReply {
    fn of(value: &serde_json::Value) -> Option<Self> {
        serde_json::from_value(value.clone()).ok()
    }
}

/// The state of one streamed reply.
struct ChatStream {
    events: UnboundedReceiver<GenEvent>,
    meter: TokenMeter,
    queue: VecDeque<Event>,
    id: String,
    created: u64,
    model: String,
    prompt_tokens: usize,
    include_usage: bool,
    started: Instant,
    first: bool,
    done: bool,
}

impl ChatStream {
    fn chunk(&self, delta: serde_json::Value, finish: Option<&str>) -> Event {
        let body = serde_json::json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        Event::default().data(body.to_string())
    }

    /// The last chunk when the client asked for the usage.
    fn usage_chunk(&self) -> Event {
        let completion = self.meter.completion;
        let body = serde_json::json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "choices": [],
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion, "total_tokens": self.prompt_tokens + completion},
        });
        Event::default().data(body.to_string())
    }

    fn into_stream(self) -> impl futures_util::Stream<Item = Result<Event, Infallible>> {
        futures_util::stream::unfold(self, |mut st| async move {
            loop {
                if let Some(event) = st.queue.pop_front() {
                    return Some((Ok(event), st));
                }
                if st.done {
                    return None;
                }
                match st.events.recv().await {
                    Some(GenEvent::Token(piece)) => {
                        if std::mem::take(&mut st.first) {
                            metrics::histogram!("vcos_inference_time_to_first_token_seconds", "model" => st.model.clone()).record(st.started.elapsed().as_secs_f64());
                            let role = st.chunk(serde_json::json!({"role": "assistant", "content": ""}), None);
                            st.queue.push_back(role);
                        }
                        st.meter.token();
                        if !piece.is_empty() {
                            let chunk = st.chunk(serde_json::json!({"content": piece}), None);
                            st.queue.push_back(chunk);
                        }
                    }
                    Some(GenEvent::Text(piece)) => {
                        let chunk = st.chunk(serde_json::json!({"content": piece}), None);
                        st.queue.push_back(chunk);
                    }
                    Some(GenEvent::Done(generation)) => {
                        metrics::histogram!("vcos_inference_request_seconds", "model" => st.model.clone(), "kind" => "chat").record(st.started.elapsed().as_secs_f64());
                        let last = st.chunk(serde_json::json!({}), Some(finish_reason(generation.finish)));
                        st.queue.push_back(last);
                        if st.include_usage {
                            let usage = st.usage_chunk();
                            st.queue.push_back(usage);
                        }
                        st.queue.push_back(Event::default().data("[DONE]"));
                        st.done = true;
                    }
                    Some(GenEvent::Failed(e)) => {
                        let error = serve_error(e);
                        let (_, code) = error.status_and_code();
                        let body = serde_json::json!({"error": {"message": error.to_string(), "type": code, "code": code}});
                        st.queue.push_back(Event::default().data(body.to_string()));
                        st.queue.push_back(Event::default().data("[DONE]"));
                        st.done = true;
                    }
                    None => {
                        let body = serde_json::json!({"error": {"message": "the worker dropped the request", "type": "unavailable", "code": "unavailable"}});
                        st.queue.push_back(Event::default().data(body.to_string()));
                        st.done = true;
                    }
                }
            }
        })
    }
}
