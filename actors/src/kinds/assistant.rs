//! `assistant`: an IMVU that thinks with the node's models, through `Context::embed` and
//! `Context::generate`. It remembers notes by embedding them, and answers a question by
//! embedding it, recalling the closest notes (cosine similarity) and generating a reply with
//! them in the prompt. Every model call is a request answered later to `on_reply`, so the
//! shard serves its other IMVUs while the model works; the HTTP caller gets the request's
//! number at once and reads the answers with `{op: answers}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ActorError;
use crate::imvu::{Context, Imvu};
use crate::models::{ChatTurn, GenerateRequest};

/// Notes kept, at most (the oldest are forgotten first).
pub const ASSISTANT_NOTES_MAX: usize = 256;
/// Answers kept, at most (the oldest are dropped first).
pub const ASSISTANT_ANSWERS_MAX: usize = 64;
/// Notes recalled into the prompt of an answer.
pub const ASSISTANT_RECALL: usize = 3;
/// Tokens an answer may take, at most.
pub const ASSISTANT_ANSWER_TOKENS_MAX: u32 = 512;

/// The `assistant` kind.
pub struct Assistant;

/// What an assistant is asked to do.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AssistantMsg {
    /// Remember `text` (embedded first; usable once its embedding came back).
    Remember {
        /// The note.
        text: String,
    },
    /// Answer `question` from the closest notes; the answer lands in the state.
    Ask {
        /// The question.
        question: String,
        /// Tokens the answer may take (default 64, at most [`ASSISTANT_ANSWER_TOKENS_MAX`]).
        #[serde(default)]
        max_tokens: Option<u32>,
    },
    /// The answers so far, oldest first, and the requests still waiting on a model.
    Answers,
    /// The notes remembered, oldest first.
    Notes,
}

/// A note and its embedding.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Note {
    /// The text.
    pub text: String,
    /// Its embedding (unit length).
    pub vector: Vec<f32>,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssistantAnswer {
    /// The number `ask` returned.
    pub request: u64,
    /// The question.
    pub question: String,
    /// The notes recalled for it, closest first.
    pub recalled: Vec<String>,
    /// The reply, or the error's code and message.
    pub answer: Result<String, String>,
}

/// What a model call in flight was for.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Waiting {
    /// Embedding a note.
    Note { text: String },
    /// Embedding a question (step 1 of an answer).
    Question { request: u64, question: String, max_tokens: u32 },
    /// Generating the answer (step 2).
    Reply { request: u64, question: String, recalled: Vec<String> },
}

/// An assistant's memory.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AssistantState {
    /// Notes, oldest first.
    pub notes: Vec<Note>,
    /// Answers, oldest first.
    pub answers: Vec<AssistantAnswer>,
    /// Model calls in flight, by their number.
    waiting: BTreeMap<u64, Waiting>,
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn vector_of(reply: &serde_json::Value) -> Option<Vec<f32>> {
    let first = reply.get("embeddings")?.as_array()?.first()?.as_array()?;
    first.iter().map(|x| x.as_f64().map(|x| x as f32)).collect()
}

impl Assistant {
    fn push_answer(state: &mut AssistantState, answer: AssistantAnswer) {
        if state.answers.len() >= ASSISTANT_ANSWERS_MAX {
            state.answers.remove(0);
        }
        state.answers.push(answer);
    }
}

impl Imvu for Assistant {
    const KIND: &'static str = "assistant";
    type State = AssistantState;
    type Msg = AssistantMsg;
    type Reply = serde_json::Value;

    fn genesis(&self) -> AssistantState {
        AssistantState::default()
    }

    fn handle(&self, state: &mut AssistantState, msg: AssistantMsg, ctx: &mut Context<'_>) -> serde_json::Value {
        match msg {
            AssistantMsg::Remember { text } => {
                let request = ctx.embed(vec![text.clone()]);
                state.waiting.insert(request, Waiting::Note { text });
                serde_json::json!({ "request": request })
            }
            AssistantMsg::Ask { question, max_tokens } => {
                let max_tokens = max_tokens.unwrap_or(64).clamp(1, ASSISTANT_ANSWER_TOKENS_MAX);
                let request = ctx.embed(vec![question.clone()]);
                state.waiting.insert(request, Waiting::Question { request, question, max_tokens });
                serde_json::json!({ "request": request })
            }
            // Queries change nothing: answered from memory, with no commit (and no fsync) each.
            AssistantMsg::Answers => {
                ctx.unchanged();
                serde_json::json!({ "answers": state.answers, "waiting": state.waiting.len() })
            }
            AssistantMsg::Notes => {
                ctx.unchanged();
                serde_json::json!(state.notes.iter().map(|n| n.text.as_str()).collect::<Vec<_>>())
            }
        }
    }

    fn on_reply(&self, state: &mut AssistantState, correlation: u64, reply: Result<serde_json::Value, ActorError>, ctx: &mut Context<'_>) {
        let Some(waiting) = state.waiting.remove(&correlation) else { return };
        let failed = |e: &ActorError| format!("{}: {e}", e.code());
        match waiting {
            Waiting::Note { text } => match reply.as_ref().ok().and_then(vector_of) {
                Some(vector) => {
                    if state.notes.len() >= ASSISTANT_NOTES_MAX {
                        state.notes.remove(0);
                    }
                    state.notes.push(Note { text, vector });
                }
                None => tracing::debug!(key = %ctx.key(), "a note could not be embedded: {:?}", reply.err()),
            },
            Waiting::Question { request, question, max_tokens } => {
                let vector = match reply {
                    Ok(value) => vector_of(&value),
                    Err(e) => {
                        Self::push_answer(state, AssistantAnswer { request, question, recalled: Vec::new(), answer: Err(failed(&e)) });
                        return;
                    }
                };
                let Some(vector) = vector else {
                    Self::push_answer(state, AssistantAnswer { request, question, recalled: Vec::new(), answer: Err("the embedding came back malformed".into()) });
                    return;
                };
                let mut scored: Vec<(f32, &Note)> = state.notes.iter().map(|n| (cosine(&n.vector, &vector), n)).collect();
                scored.sort_by(|a, b| b.0.total_cmp(&a.0));
                let recalled: Vec<String> = scored.iter().take(ASSISTANT_RECALL).map(|(_, n)| n.text.clone()).collect();
                let notes = recalled.iter().map(|n| format!("- {n}")).collect::<Vec<_>>().join("\n");
                let system = if notes.is_empty() {
                    "You are a helpful assistant. Answer briefly.".to_owned()
                } else {
                    format!("You are a helpful assistant. Answer briefly, using these notes:\n{notes}")
                };
                let messages = vec![ChatTurn::new("system", system), ChatTurn::new("user", question.clone())];
                let call = ctx.generate(GenerateRequest::greedy(messages, max_tokens));
                state.waiting.insert(call, Waiting::Reply { request, question, recalled });
            }
            Waiting::Reply { request, question, recalled } => {
                let answer = match reply {
                    Ok(value) => value.get("text").and_then(|t| t.as_str()).map(str::to_owned).ok_or_else(|| "the reply came back malformed".to_owned()),
                    Err(e) => Err(failed(&e)),
                };
                Self::push_answer(state, AssistantAnswer { request, question, recalled, answer });
            }
        }
    }

    fn description(&self) -> &'static str {
        "remembers notes by embedding them and answers questions from the closest ones with the node's models: {op: remember, text} | {op: ask, question, max_tokens?} | {op: answers} | {op: notes}"
    }
}
