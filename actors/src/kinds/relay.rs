//! `relay`: an IMVU that talks to other IMVUs — the smallest useful example of `Context::ask`,
//! `Context::tell` and `on_reply`. It asks (or tells) any IMVU of its tenant and keeps the
//! answers, so that an app can watch IMVUs talking across nodes over plain HTTP.

use serde::{Deserialize, Serialize};

use crate::error::ActorError;
use crate::ids::{ImvuId, ImvuKey};
use crate::imvu::{Context, Imvu};

/// Answers kept, at most (the oldest are dropped first).
pub const RELAY_ANSWERS_MAX: usize = 64;
/// Notes kept, at most (the oldest are dropped first).
pub const RELAY_NOTES_MAX: usize = 4_096;
/// Messages one `tell_each` may send.
pub const RELAY_TELL_EACH_MAX: usize = 4_096;

/// The `relay` kind.
pub struct Relay;

/// What a relay is asked to do.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum RelayMsg {
    /// Ask IMVU `to` (same tenant) `message`; the answer lands in the relay's state.
    Ask {
        /// The target's id.
        to: u64,
        /// The message, as the target's kind takes it.
        message: serde_json::Value,
    },
    /// Tell IMVU `to` (same tenant) `message`: at most once, no answer.
    Tell {
        /// The target's id.
        to: u64,
        /// The message.
        message: serde_json::Value,
    },
    /// Tell IMVU `to` each of `messages`, in this order (they arrive in it: one sender, one
    /// receiver).
    TellEach {
        /// The target's id.
        to: u64,
        /// The messages, at most [`RELAY_TELL_EACH_MAX`].
        messages: Vec<serde_json::Value>,
    },
    /// The answers received so far.
    Answers,
    /// Keeps `value` (what another relay's `tell_each` sends, say).
    Note {
        /// Any JSON value.
        value: serde_json::Value,
    },
    /// The values noted so far, oldest first.
    Notes,
}

/// One answer the relay received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayAnswer {
    /// The correlation id its ask returned.
    pub correlation: u64,
    /// The answer, or the error's code and message.
    pub reply: Result<serde_json::Value, String>,
}

/// A relay's memory.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RelayState {
    /// Asks sent.
    pub asked: u64,
    /// Answers received, oldest first.
    pub answers: Vec<RelayAnswer>,
    /// Values noted, oldest first.
    #[serde(default)]
    pub notes: Vec<serde_json::Value>,
}

impl Imvu for Relay {
    const KIND: &'static str = "relay";
    type State = RelayState;
    type Msg = RelayMsg;
    type Reply = serde_json::Value;

    fn genesis(&self) -> RelayState {
        RelayState::default()
    }

    fn handle(&self, state: &mut RelayState, msg: RelayMsg, ctx: &mut Context<'_>) -> serde_json::Value {
        let tenant = ctx.key().tenant;
        match msg {
            RelayMsg::Ask { to, message } => {
                state.asked += 1;
                let correlation = ctx.ask(ImvuKey { tenant, id: ImvuId(to) }, message);
                serde_json::json!({ "correlation": correlation })
            }
            RelayMsg::Tell { to, message } => {
                ctx.tell(ImvuKey { tenant, id: ImvuId(to) }, message);
                serde_json::Value::Null
            }
            RelayMsg::TellEach { to, messages } => {
                if messages.len() > RELAY_TELL_EACH_MAX {
                    return serde_json::json!({ "error": format!("tell_each sends at most {RELAY_TELL_EACH_MAX} messages, got {}", messages.len()) });
                }
                let sent = messages.len();
                for message in messages {
                    ctx.tell(ImvuKey { tenant, id: ImvuId(to) }, message);
                }
                serde_json::json!({ "sent": sent })
            }
            RelayMsg::Answers => serde_json::to_value(&state.answers).unwrap_or_default(),
            RelayMsg::Note { value } => {
                if state.notes.len() >= RELAY_NOTES_MAX {
                    state.notes.remove(0);
                }
                state.notes.push(value);
                serde_json::json!(state.notes.len())
            }
            RelayMsg::Notes => serde_json::Value::Array(state.notes.clone()),
        }
    }

    fn on_reply(&self, state: &mut RelayState, correlation: u64, reply: Result<serde_json::Value, ActorError>, _ctx: &mut Context<'_>) {
        if state.answers.len() >= RELAY_ANSWERS_MAX {
            state.answers.remove(0);
        }
        state.answers.push(RelayAnswer { correlation, reply: reply.map_err(|e| format!("{}: {e}", e.code())) });
    }

    fn description(&self) -> &'static str {
        "asks or tells other IMVUs of its tenant (any node) and keeps their answers: {op: ask|tell, to, message} | {op: tell_each, to, messages} | {op: answers} | {op: note, value} | {op: notes}"
    }
}
