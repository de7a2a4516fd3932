//! The [`Models`] seam: how an IMVU thinks without holding up its shard.
//!
//! A handler asks for an embedding or a generation through its `Context` (`embed`,
//! `generate`); like an ask to another IMVU, the request is recorded, performed once the
//! handler's message is durable, and answered later as a message to [`crate::Imvu::on_reply`]
//! under the number the call returned. While a model works, the shard serves its other IMVUs;
//! the asking IMVU's own mailbox stays in order. The model side (`gpu-workers`) implements
//! [`Models`] and is plugged in with `Runtime::set_models`; without it, calls are answered
//! `unavailable`.

use serde::{Deserialize, Serialize};

use crate::error::ActorError;
use crate::imvu::AskToken;

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatTurn {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatTurn {
    /// A turn of `role`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self { role: role.to_owned(), content: content.into() }
    }
}

/// A generation request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// The conversation (ChatML).
    pub messages: Vec<ChatTurn>,
    /// Tokens to generate, at most.
    pub max_tokens: u32,
    /// 0: greedy.
    pub temperature: f64,
    /// Seed of the sampler (same seed, same reply).
    pub seed: u64,
    /// Generation stops before any of these.
    pub stop: Vec<String>,
    /// Nucleus sampling, in (0, 1] (1: off).
    #[serde(default = "top_p_off")]
    pub top_p: f64,
}

fn top_p_off() -> f64 {
    1.0
}

impl GenerateRequest {
    /// Greedy generation of at most `max_tokens` tokens for `messages`.
    pub fn greedy(messages: Vec<ChatTurn>, max_tokens: u32) -> Self {
        Self { messages, max_tokens, temperature: 0.0, seed: 0, stop: Vec::new(), top_p: 1.0 }
    }
}

/// What an IMVU asks of a model (JSON on the wire when a node forwards it to another).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelRequest {
    /// Embeddings of texts: answered `{"embeddings": [[f32…]…], "tokens": n}`.
    Embed {
        /// The texts.
        texts: Vec<String>,
    },
    /// A reply: answered `{"text": …, "finish_reason": "stop"|"length", "prompt_tokens": n,
    /// "completion_tokens": m}`.
    Generate(GenerateRequest),
}

impl ModelRequest {
    /// `embed` or `generate`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Embed { .. } => "embed",
            Self::Generate(_) => "generate",
        }
    }
}

/// A model's answer to a [`ModelRequest`]: the JSON described there, and the tokens it used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelAnswer {
    /// The answer (JSON).
    pub value: serde_json::Value,
    /// Tokens read and generated (the tenant's usage).
    pub tokens: u64,
    /// The model that answered.
    pub model: String,
}

/// Model work as one call and its answer: what a node's pools do, and what a node forwards to
/// another that serves models (`vcos_cluster`'s `ClusterModels` places it: here if the local
/// pool has room, else on a node with the `inference` role). Usage is charged by the caller.
pub trait ModelService: Send + Sync + 'static {
    /// The names of the models served.
    fn models(&self) -> crate::BoxFuture<'static, Vec<String>>;
    /// Whether `request` would be queued now rather than refused (the model is served and its
    /// queue has room): a placement hint, not a promise.
    fn has_room(&self, request: &ModelRequest) -> bool;
    /// Performs `request`.
    fn run(&self, request: ModelRequest) -> crate::BoxFuture<'static, Result<ModelAnswer, ActorError>>;
}

/// Runs model requests for IMVUs. Implementations must not block (shards call them): they
/// queue or spawn, and deliver the answer (or the error standing for it) to `ask.from` under
/// `ask.correlation` through `Runtime::deliver_reply`, and count the tokens as the tenant's.
pub trait Models: Send + Sync + 'static {
    /// Performs `request` for `ask.from` (its tenant is charged).
    fn call(&self, request: ModelRequest, ask: AskToken);
}

/// The error an IMVU gets when its node serves no model.
pub(crate) fn no_models() -> ActorError {
    ActorError::Unavailable("this node serves no models (`vcos models install`, then restart it)".into())
}
