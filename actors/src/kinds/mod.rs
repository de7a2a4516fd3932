//! IMVU kinds that ship with the binary, written exactly as an author would write their own.

mod counter;
mod kv_memory;
mod relay;
mod text_worker;

pub use counter::{Counter, CounterMsg};
pub use kv_memory::{KvMemory, KvMsg, KvReply};
pub use relay::{Relay, RelayAnswer, RelayMsg, RelayState, RELAY_ANSWERS_MAX, RELAY_NOTES_MAX, RELAY_TELL_EACH_MAX};
pub use text_worker::{TextOp, TextWorker, TextWorkerState};
