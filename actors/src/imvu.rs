//! The API an IMVU author writes against.
//!
//! An [`Imvu`] is a *behaviour*: one value per kind, shared by every instance of the kind. Each
//! instance's data is its `State`, owned by the runtime and lent to `handle` one message at a
//! time. That split is what lets an idle IMVU cost only its state plus a few words, not a task
//! and a channel: see ARCHITECTURE.md, "Hosting".
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use vcos_actors::{Context, Imvu};
//!
//! struct Counter;
//!
//! #[derive(Deserialize, Serialize)]
//! #[serde(tag = "op", rename_all = "snake_case")]
//! enum Msg { Add { n: i64 }, Get }
//!
//! impl Imvu for Counter {
//!     const KIND: &'static str = "counter";
//!     type State = i64;
//!     type Msg = Msg;
//!     type Reply = i64;
//!     fn genesis(&self) -> i64 { 0 }
//!     fn handle(&self, total: &mut i64, msg: Msg, _ctx: &mut Context<'_>) -> i64 {
//!         if let Msg::Add { n } = msg { *total += n; }
//!         *total
//!     }
//! }
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;

use vcos_supervision::RestartType;

use crate::ids::ImvuKey;

/// When an IMVU's state is written to canon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// After every message, before the reply is released: a reply is a durable acknowledgement.
    EveryMessage,
    /// Only at lifecycle transitions and passivation: replies are not durable until then.
    /// For scratch state that may be recomputed; much cheaper.
    LifecycleOnly,
}

/// Behaviour of one IMVU kind. See the module docs for an example.
pub trait Imvu: Send + Sync + 'static {
    /// Name of the kind, as used in the HTTP API (`"kv-memory"`).
    const KIND: &'static str;
    /// Per-instance state; serialised into canon snapshots.
    type State: Serialize + DeserializeOwned + Send + 'static;
    /// Messages the kind accepts (JSON over HTTP).
    type Msg: DeserializeOwned + Send + 'static;
    /// Replies it gives.
    type Reply: Serialize + Send + 'static;

    /// The state of a newborn instance.
    fn genesis(&self) -> Self::State;

    /// Handles one message. A panic here is a crash: the caller gets an error and the
    /// supervisor restarts the instance from its last durable snapshot.
    fn handle(&self, state: &mut Self::State, msg: Self::Msg, ctx: &mut Context<'_>)
        -> Self::Reply;

    /// Called on Active → Paused.
    fn on_pause(&self, _state: &mut Self::State) {}

    /// Called on Paused → Active, before held messages are delivered.
    fn on_resume(&self, _state: &mut Self::State) {}

    /// Called on → Terminated; the state after it is recorded as the final state.
    fn on_terminate(&self, _state: &mut Self::State) {}

    /// When state is written to canon. Default: after every message.
    fn persistence(&self) -> Persistence {
        Persistence::EveryMessage
    }

    /// Whether a crashed instance is restarted (OTP restart type). Default: always.
    fn restart(&self) -> RestartType {
        RestartType::Permanent
    }

    /// One line for `GET /v1/kinds`.
    fn description(&self) -> &'static str {
        ""
    }
}

/// What a handler may know and ask of the runtime while it runs.
pub struct Context<'a> {
    pub(crate) key: &'a ImvuKey,
    pub(crate) unix_ms: u64,
    pub(crate) stop_requested: bool,
}

impl<'a> Context<'a> {
    /// A context for unit-testing a behaviour outside the runtime.
    pub fn for_test(key: &'a ImvuKey, unix_ms: u64) -> Self {
        Self {
            key,
            unix_ms,
            stop_requested: false,
        }
    }

    /// This instance's key.
    pub fn key(&self) -> &ImvuKey {
        self.key
    }

    /// Wall-clock time from the node's injected clock, in Unix milliseconds.
    pub fn unix_ms(&self) -> u64 {
        self.unix_ms
    }

    /// Asks to terminate normally after this message (a normal exit: a transient IMVU is not
    /// restarted; the final state is recorded).
    pub fn stop(&mut self) {
        self.stop_requested = true;
    }

    /// Whether `stop` was called.
    pub fn stop_requested(&self) -> bool {
        self.stop_requested
    }
}
