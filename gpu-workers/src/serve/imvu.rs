//! The node's models behind the actor runtime's seams: [`LocalModels`] (the pools of
//! [`super::Inference`] as a `ModelService`: one call, one answer, what the cluster places
//! here or forwards from other nodes) and [`ImvuModels`] (the `Models` seam, so that IMVUs
//! think through `Context::embed` and `Context::generate` without holding up their shards,
//! over whichever `ModelService` the node uses). Tokens count as the IMVU's tenant's usage.

use std::sync::Arc;

use serde_json::json;
use vcos_actors::imvu::AskToken;
use vcos_actors::metering::UsageUnit;
use vcos_actors::models::{ModelAnswer, ModelRequest, ModelService, Models};
use vcos_actors::{ActorError, BoxFuture, WeakRuntime};

use super::error::ServeError;
use super::gen_pool::GenEvent;
use super::inference::Inference;
use crate::generate::{ChatMessage, FinishReason, SamplingParams};

/// The models this node's pools serve, one call at a time.
#[derive(Debug, Clone)]
pub struct LocalModels {
    inference: Arc<Inference>,
}

impl LocalModels {
    /// Serves from `inference`.
    pub fn new(inference: Arc<Inference>) -> Self {
        Self { inference }
    }
}

impl ModelService for LocalModels {
    fn models(&self) -> BoxFuture<'static, Vec<String>> {
        let names = self.inference.models().into_iter().map(str::to_owned).collect();
        Box::pin(async move { names })
    }

    fn has_room(&self, request: &ModelRequest) -> bool {
        match request {
            ModelRequest::Embed { .. } => self.inference.embeddings().is_some_and(super::EmbedPool::has_room),
            ModelRequest::Generate(_) => self.inference.chat().is_some_and(|chat| chat.pool().has_room()),
        }
    }

    fn run(&self, request: ModelRequest) -> BoxFuture<'static, Result<ModelAnswer, ActorError>> {
        let inference = Arc::clone(&self.inference);
        Box::pin(async move { run(&inference, request).await })
    }
}

/// Serves IMVUs' model requests through `service`.
pub struct ImvuModels {
    runtime: WeakRuntime,
    service: Arc<dyn ModelService>,
}

impl ImvuModels {
    /// Models for the IMVUs of `runtime` (held weakly: the runtime holds this), served by
    /// `service` (a node's [`LocalModels`], or the cluster's placement over them).
    pub fn new(runtime: WeakRuntime, service: Arc<dyn ModelService>) -> Self {
        Self { runtime, service }
    }
}

impl Models for ImvuModels {
    fn call(&self, request: ModelRequest, ask: AskToken) {
        let Some(runtime) = self.runtime.upgrade() else { return };
        let answer = self.service.run(request);
        tokio::spawn(async move {
            let tenant = ask.from.tenant;
            let answer = answer.await;
            if let Ok(answer) = &answer {
                if let Ok(entry) = runtime.tenant(&tenant) {
                    entry.usage.add(UsageUnit::Tokens, answer.tokens);
                }
            }
            runtime.deliver_reply(ask, answer.map(|answer| answer.value)).await;
        });
    }
}

fn actor_error(e: ServeError) -> ActorError {
    match e {
        ServeError::Invalid(reason) => ActorError::BadRequest { field: "model request".into(), reason },
        e @ ServeError::Overloaded { .. } => ActorError::QueueFull(e.to_string()),
        e => ActorError::Unavailable(e.to_string()),
    }
}

/// Runs one request: its answer and the tokens it used.
async fn run(inference: &Inference, request: ModelRequest) -> Result<ModelAnswer, ActorError> {
    let unavailable = |what: &str| ActorError::Unavailable(format!("this node serves no {what} model (`vcos models install`, then restart it)"));
    match request {
        ModelRequest::Embed { texts } => {
            let pool = inference.embeddings().ok_or_else(|| unavailable("embedding"))?;
            let output = pool.embed(texts).await.map_err(actor_error)?;
            let tokens = output.total_tokens() as u64;
            Ok(ModelAnswer { value: json!({"embeddings": output.vectors, "tokens": tokens}), tokens, model: pool.model().to_owned() })
        }
        ModelRequest::Generate(request) => {
            let chat = inference.chat().ok_or_else(|| unavailable("generation"))?;
            let messages = request
                .messages
                .into_iter()
                .map(|turn| match turn.role.as_str() {
                    "system" => Ok(ChatMessage::system(turn.content)),
                    "user" => Ok(ChatMessage::user(turn.content)),
                    "assistant" => Ok(ChatMessage::assistant(turn.content)),
                    other => Err(ActorError::BadRequest { field: "role".into(), reason: format!("{other:?} is not system, user or assistant") }),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let params = SamplingParams {
                temperature: request.temperature,
                top_p: request.top_p,
                seed: request.seed,
                max_tokens: request.max_tokens as usize,
                stop: request.stop,
                skip_special_tokens: true,
            };
            let (prompt_tokens, mut ticket) = chat.start(messages, params).map_err(actor_error)?;
            let mut text = String::new();
            let mut completion = 0u64;
            while let Some(event) = ticket.events.recv().await {
                match event {
                    GenEvent::Token(piece) => {
                        completion += 1;
                        text.push_str(&piece);
                    }
                    GenEvent::Text(piece) => text.push_str(&piece),
                    GenEvent::Done(generation) => {
                        let finish = if generation.finish == FinishReason::Length { "length" } else { "stop" };
                        let value = json!({"text": text, "finish_reason": finish, "prompt_tokens": prompt_tokens, "completion_tokens": completion});
                        return Ok(ModelAnswer { value, tokens: prompt_tokens as u64 + completion, model: chat.model().to_owned() });
                    }
                    GenEvent::Failed(e) => return Err(actor_error(e)),
                }
            }
            Err(ActorError::Unavailable("the generation worker dropped the request".into()))
        }
    }
}
