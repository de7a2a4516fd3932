//! IMVU kinds that ship with the binary, written exactly as an author would write their own.

mod assistant;
mod counter;
mod kv_memory;
mod relay;
mod text_worker;

pub use assistant::{Assistant, AssistantAnswer, AssistantMsg, AssistantState, Note, ASSISTANT_ANSWERS_MAX, ASSISTANT_ANSWER_TOKENS_MAX, ASSISTANT_NOTES_MAX, ASSISTANT_RECALL};
pub use counter::{Counter, CounterMsg};
pub use kv_memory::{KvMemory, KvMsg, KvReply};
pub use relay::{Relay, RelayAnswer, RelayMsg, RelayState, RELAY_ANSWERS_MAX, RELAY_NOTES_MAX, RELAY_TELL_EACH_MAX};
pub use text_worker::{TextOp, TextWorker, TextWorkerState};
