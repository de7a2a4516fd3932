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

use crate::error::ActorError;
use crate::ids::ImvuKey;

/// When an IMVU's state is written to canon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// After every message, before the reply is released: a reply is a durable acknowledgement.
    EveryMessage,
    /// Only at lifecycle transitions and passivation: replies are not durable until then.
    /// For scratch state that may be recomputed; much cheaper. A passivation (idle timer or
    /// shutdown) lets go of the IMVU only once its state is durable; if the write is refused,
    /// it stays resident with its state for the next passivation.
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

    /// The answer to [`Context::ask`] (or [`Context::create_child`]) number `correlation`,
    /// or the error that stood for it (the target failed, did not exist, or did not answer
    /// within the runtime's ask timeout). It arrives as a message: in mailbox order, one at a
    /// time, persisted like any other. Default: ignored.
    fn on_reply(
        &self,
        _state: &mut Self::State,
        _correlation: u64,
        _reply: Result<serde_json::Value, ActorError>,
        _ctx: &mut Context<'_>,
    ) {
    }

    /// Whether answers that wait together in the IMVU's shard are handed over together
    /// ([`Imvu::on_replies`]), moved ahead of the messages between them. Default: `false`,
    /// every answer on its own, in mailbox order.
    fn batches_replies(&self) -> bool {
        false
    }

    /// Several answers that arrived together (only for kinds whose [`Imvu::batches_replies`]
    /// is `true`), in arrival order: one handler run and one snapshot for all of them. A kind
    /// that does work per event after recording an answer (a workflow replays its code) does
    /// it once here. Default: [`Imvu::on_reply`] for each.
    fn on_replies(&self, state: &mut Self::State, replies: Vec<(u64, Result<serde_json::Value, ActorError>)>, ctx: &mut Context<'_>) {
        for (correlation, reply) in replies {
            self.on_reply(state, correlation, reply, ctx);
        }
    }

    /// Timer `timer_id` set with [`Context::set_timer`] fired. Timers live in memory: one set
    /// before a crash, a passivation or a node restart does not fire. Default: ignored.
    fn on_timer(&self, _state: &mut Self::State, _timer_id: u64, _ctx: &mut Context<'_>) {}

    /// Whether an idle instance in this state stays resident instead of being passivated (its
    /// timers live in memory: a workflow waiting on a timer stays). Default: no.
    fn keep_resident(&self, _state: &Self::State) -> bool {
        false
    }

    /// Whether [`Imvu::on_activate`] is called when an instance is loaded from canon. Default:
    /// no (an activation then costs no commit).
    fn resumes(&self) -> bool {
        false
    }

    /// Called when an instance is loaded from canon (on its first message after a restart, a
    /// crash, a passivation or a move to another node), before that message, if
    /// [`Imvu::resumes`] says so. What was only in memory (timers, asks in flight) is gone:
    /// this is where a kind that must go on by itself, such as a workflow, sets them again.
    /// Run like a message: its state and requests are committed first. Default: nothing.
    fn on_activate(&self, _state: &mut Self::State, _ctx: &mut Context<'_>) {}

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

/// Low bits of correlation and timer numbers: the shard's counter (it wraps after 2^32
/// numbers under one epoch, far beyond the life of any ask or timer).
const NUMBER_LOW_MASK: u64 = 0xFFFF_FFFF;

/// Where an ask's answer goes: the asking IMVU and the number it will be answered under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AskToken {
    /// The IMVU that asked.
    pub from: ImvuKey,
    /// The number [`Context::ask`] returned; the answer comes to [`Imvu::on_reply`] with it.
    pub correlation: u64,
}

/// Something a handler asked the runtime to do once its message is committed.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A message to another IMVU (`correlation`: an ask, answered to `on_reply`).
    Send {
        /// The target.
        to: ImvuKey,
        /// The message, as the target's kind reads it from JSON.
        msg: serde_json::Value,
        /// `Some` for an ask.
        correlation: Option<u64>,
    },
    /// A new IMVU of `kind` in the same tenant; its key comes back to `on_reply`.
    CreateChild {
        /// Kind name.
        kind: String,
        /// The number the answer comes under.
        correlation: u64,
    },
    /// A model request (an embedding, a generation); the answer comes back to `on_reply`.
    Model {
        /// What to compute.
        request: crate::models::ModelRequest,
        /// The number the answer comes under.
        correlation: u64,
    },
    /// A registered activity (work outside the runtime, at least once); the answer comes back
    /// to `on_reply`.
    Activity {
        /// The activity's registered name.
        name: String,
        /// Its input.
        input: serde_json::Value,
        /// The same for every attempt of one logical call, so the world can drop repeats.
        idempotency_key: String,
        /// The number the answer comes under.
        correlation: u64,
    },
    /// Call `on_timer(timer_id)` in `after_ms`.
    Timer {
        /// The timer's number.
        timer_id: u64,
        /// Delay, on the node's clock.
        after_ms: u64,
    },
    /// Wake this IMVU's in-process watchers ([`crate::notices`]) once the message is durable.
    Notify,
}

/// What a handler may know and ask of the runtime while it runs.
///
/// Requests to other IMVUs (tell, ask, create a child) and timers are *recorded* here, not
/// performed: the runtime performs them after the handler's message is committed (a message
/// whose commit fails sends nothing), and answers come back later as messages. A handler never
/// waits, so its shard never does. See ARCHITECTURE.md, "Messages between IMVUs".
pub struct Context<'a> {
    pub(crate) key: &'a ImvuKey,
    pub(crate) unix_ms: u64,
    pub(crate) stop_requested: bool,
    pub(crate) outgoing: Vec<Outgoing>,
    /// The last correlation or timer number handed out (the shard's counter: unique per
    /// shard run).
    pub(crate) next_number: u64,
    /// High bits of every number handed out: the fencing epoch the IMVU is served under, so
    /// that numbers stay unique when the IMVU moves to another node (whose shard counts on
    /// its own) and a late answer to an earlier activation's ask cannot be taken for a new one.
    pub(crate) number_base: u64,
    /// Set by [`Context::unchanged`]: nothing to commit for this message.
    pub(crate) unchanged: bool,
    /// Workflow steps to charge to the tenant ([`Context::meter_steps`]).
    pub(crate) steps: u64,
    /// Index entries written with this message's snapshot ([`Context::index`]).
    pub(crate) index: Vec<(String, bool)>,
}

impl<'a> Context<'a> {
    /// A context for unit-testing a behaviour outside the runtime.
    pub fn for_test(key: &'a ImvuKey, unix_ms: u64) -> Self {
        Self {
            key,
            unix_ms,
            stop_requested: false,
            outgoing: Vec::new(),
            next_number: 0,
            number_base: 0,
            unchanged: false,
            steps: 0,
            index: Vec::new(),
        }
    }

    fn number(&mut self) -> u64 {
        self.next_number += 1;
        self.number_base | (self.next_number & NUMBER_LOW_MASK)
    }

    /// Sends `msg` to `to` after this message is committed; no answer.
    pub fn tell(&mut self, to: ImvuKey, msg: serde_json::Value) {
        self.outgoing.push(Outgoing::Send { to, msg, correlation: None });
    }

    /// Asks `to` after this message is committed; returns the number the answer will come
    /// back under, to [`Imvu::on_reply`] (unique for this IMVU, across nodes it moves to).
    pub fn ask(&mut self, to: ImvuKey, msg: serde_json::Value) -> u64 {
        let correlation = self.number();
        self.outgoing.push(Outgoing::Send { to, msg, correlation: Some(correlation) });
        correlation
    }

    /// Creates an IMVU of `kind` in this IMVU's tenant after this message is committed; its
    /// key (as JSON: `{"tenant":…,"id":…}`) comes back to [`Imvu::on_reply`] under the
    /// returned number.
    pub fn create_child(&mut self, kind: &str) -> u64 {
        let correlation = self.number();
        self.outgoing.push(Outgoing::CreateChild { kind: kind.to_owned(), correlation });
        correlation
    }

    /// Embeds `texts` with the node's embedding model after this message is committed; the
    /// answer (`{"embeddings": [[…]…], "tokens": n}`, or the error) comes back to
    /// [`Imvu::on_reply`] under the returned number. The shard serves its other IMVUs meanwhile.
    pub fn embed(&mut self, texts: Vec<String>) -> u64 {
        let correlation = self.number();
        self.outgoing.push(Outgoing::Model { request: crate::models::ModelRequest::Embed { texts }, correlation });
        correlation
    }

    /// Generates a reply with the node's generation model after this message is committed; the
    /// answer (`{"text": …, "finish_reason": …, "prompt_tokens": n, "completion_tokens": m}`,
    /// or the error) comes back to [`Imvu::on_reply`] under the returned number. The shard
    /// serves its other IMVUs meanwhile.
    pub fn generate(&mut self, request: crate::models::GenerateRequest) -> u64 {
        let correlation = self.number();
        self.outgoing.push(Outgoing::Model { request: crate::models::ModelRequest::Generate(request), correlation });
        correlation
    }

    /// Runs the registered activity `name` on `input` after this message is committed; the
    /// answer (or the error) comes back to [`Imvu::on_reply`] under the returned number.
    /// Activities act on the world outside the runtime: at least once, so each gets an
    /// `idempotency_key` to drop repeats with.
    pub fn activity(&mut self, name: &str, input: serde_json::Value, idempotency_key: String) -> u64 {
        let correlation = self.number();
        self.outgoing.push(Outgoing::Activity { name: name.to_owned(), input, idempotency_key, correlation });
        correlation
    }

    /// Says this message changed nothing in the state: no snapshot is committed for it (its
    /// reply goes out at once). Only for messages that truly changed nothing: a change made
    /// anyway lives in memory until the next committed message.
    pub fn unchanged(&mut self) {
        self.unchanged = true;
    }

    /// Charges `steps` workflow steps to the tenant's usage.
    pub fn meter_steps(&mut self, steps: u64) {
        self.steps = self.steps.saturating_add(steps);
    }

    /// Puts (`present`) or removes this IMVU in the tenant's index `name`, in the same commit as
    /// its snapshot (kinds with [`Persistence::EveryMessage`] only). Indexes are listed with
    /// `Runtime::index` (for example the workflows that are running, or dead-lettered).
    pub fn index(&mut self, name: &str, present: bool) {
        self.index.push((name.to_owned(), present));
    }

    /// Wakes, once this message's commit is durable, whoever on this node waits for this IMVU
    /// through [`crate::Runtime::watch`] (a workflow that ended, for a caller that started it
    /// and waits for its end).
    pub fn notify_watchers(&mut self) {
        self.outgoing.push(Outgoing::Notify);
    }

    /// Calls [`Imvu::on_timer`] in `after_ms` (node clock); returns the timer's number.
    pub fn set_timer(&mut self, after_ms: u64) -> u64 {
        let timer_id = self.number();
        self.outgoing.push(Outgoing::Timer { timer_id, after_ms });
        timer_id
    }

    /// What this handler asked for so far, in order (for tests of behaviours).
    pub fn outgoing(&self) -> &[Outgoing] {
        &self.outgoing
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
