//! [`ImvuModels`]: the models of [`super::Inference`] behind the actor runtime's `Models` seam,
//! so that IMVUs think through `Context::embed` and `Context::generate` without holding up
//! their shards. Tokens count as the IMVU's tenant's usage.

use std::sync::Arc;

use serde_json::json;
use vcos_actors::imvu::AskToken;
use vcos_actors::metering::UsageUnit;
use vcos_actors::models::{ModelRequest, Models};
use vcos_actors::{ActorError, WeakRuntime};

use super::error::ServeError;
use super::gen_pool::GenEvent;
use super::inference::Inference;
use crate::generate::{ChatMessage, FinishReason, SamplingParams};

/// Serves IMVUs' model requests from `inference`.
pub struct ImvuModels {
    runtime: WeakRuntime,
    inference: Arc<Inference>,
}

impl ImvuModels {
    /// Models for the IMVUs of `runtime` (held weakly: the runtime holds this).
    pub fn new(runtime: WeakRuntime, inference: Arc<Inference>) -> Self {
        Self { runtime, inference }
    }
}

fn actor_error(e: ServeError) -> ActorError {
    match e {
        ServeError::Invalid(reason) => ActorError::BadRequest { field: "model request".into(), reason },
        e @ ServeError::Overloaded { .. } => ActorError::QueueFull(e.to_string()),
        e => ActorError::Unavailable(e.to_string()),
    }
}

impl Models for ImvuModels {
    fn call(&self, request: ModelRequest, ask: AskToken) {
        let Some(runtime) = self.runtime.upgrade() else { return };
        let inference = Arc::clone(&self.inference);
        tokio::spawn(async move {
            let tenant = ask.from.tenant;
            let answer = run(&inference, request).await;
            if let Ok((_, tokens)) = &answer {
                if let Ok(entry) = runtime.tenant(&tenant) {
                    entry.usage.add(UsageUnit::Tokens, *tokens);
                }
            }
            runtime.deliver_reply(ask, answer.map(|(value, _)| value)).await;
        });
    }
}

/// Runs one request: its answer and the tokens it used.
async fn run(inference: &Inference, request: ModelRequest) -> Result<(serde_json::Value, u64), ActorError> {
    let unavailable = |what: &str| ActorError::Unavailable(format!("this node serves no {what} model (`vcos models install`, then restart it)"));
    match request {
        ModelRequest::Embed { texts } => {
            let pool = inference.embeddings().ok_or_else(|| unavailable("embedding"))?;
            let output = pool.embed(texts).await.map_err(actor_error)?;
            let tokens = output.total_tokens() as u64;
            Ok((json!({"embeddings": output.vectors, "tokens": tokens}), tokens))
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
                top_p: 1.0,
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
                        return Ok((value, prompt_tokens as u64 + completion));
                    }
                    GenEvent::Failed(e) => return Err(actor_error(e)),
                }
            }
            Err(ActorError::Unavailable("the generation worker dropped the request".into()))
        }
    }
}
