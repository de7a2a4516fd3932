//! [`ShardCore`]: the decisions of one shard, as a plain struct.
//!
//! Inputs: [`ShardCore::set_now`] (the time, read by the driver once per batch),
//! [`ShardCore::handle_command`], [`ShardCore::handle_committed`] (a commit's completion, by
//! token) and [`ShardCore::handle_loaded`] (an IMVU's meta and snapshot, read from canon).
//! Outputs: [`Effect`]s, drained with [`ShardCore::take_effects`] after each input, in order.
//! The core reads no clock, calls no store and spawns nothing: the same inputs give the same
//! effects, which is what its unit tests (and the simulator) rely on.
//!
//! Commits are pipelined: a handler's snapshot is committed and the next message runs before
//! the commit is durable; the reply waits for the completion. A failed completion poisons the
//! cell at once: it is evicted before the shard runs anything else, and its next message waits
//! for a barrier (an empty commit: every earlier commit of the shard has then settled) and a
//! reload from canon. (Messages that already ran on the unacknowledged state before the
//! failure came back are not undone: their own commits decide what canon holds, and a caller
//! told "failed" must treat the outcome as unknown, as with any timeout.)

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::oneshot;
use vcos_supervision::{quiet_panic, ChildSpec, Directive, ExitReason, Intensity, Strategy, Supervisor};

use super::{Command, ImvuInfo, Reply, LOADING_QUEUE_LEN_MAX, PAUSED_QUEUE_LEN_MAX, SHARD_TIMERS_MAX};
use crate::error::ActorError;
use crate::handshake::{bump, AdmissionRequest, Handshake, HandshakeOutcome, NodeHealth};
use crate::ids::{Caller, ImvuId, ImvuKey, TenantId};
use crate::imvu::{AskToken, Context, Imvu, Outgoing, Persistence};
use crate::lifecycle::{LifecycleState, Transition};
use crate::ownership::{Fence, Ownership};
use crate::records::{self, HistoryEvent, ImvuMeta, SupervisionRecord, TransitionRecord};
use crate::store::{CanonWrite, StoreError};
use crate::tenants::{TenantEntry, Tenants};

/// Something the driver must do for the core, in the order given.
pub(crate) enum Effect<I: Imvu> {
    /// Commit `writes` (empty: a barrier, complete once every earlier commit is) and report
    /// the outcome with [`ShardCore::handle_committed`]`(token, ..)`.
    Commit { token: u64, writes: Vec<CanonWrite> },
    /// Read `key`'s meta record and snapshot; report with [`ShardCore::handle_loaded`].
    Load { key: ImvuKey },
    /// Answer an ask.
    ReplyAsk(Reply<I::Reply>, Result<I::Reply, ActorError>),
    /// Answer a create, a transition or an inspection.
    ReplyInfo(Reply<ImvuInfo>, Result<ImvuInfo, ActorError>),
    /// Answer a passivation with how many IMVUs were evicted.
    ReplyCount(oneshot::Sender<usize>, usize),
    /// Deliver a message of IMVU `from` to `to` (through the runtime's `Router`); `ask`: the
    /// answer goes back to `from` as a [`Command::Reply`].
    Route { from: ImvuKey, to: ImvuKey, msg: serde_json::Value, ask: Option<AskToken> },
    /// Create an IMVU of `kind` in `ask.from`'s tenant; its key goes back as a reply.
    CreateChild { kind: String, ask: AskToken },
    /// Run a model request for `ask.from` (through the runtime's `Models`); the answer goes
    /// back as a reply.
    Model { request: crate::models::ModelRequest, ask: AskToken },
    /// Run a registered activity for `ask.from` (through the runtime's `Activities`); the
    /// answer goes back as a reply.
    Activity { name: String, input: serde_json::Value, idempotency_key: String, ask: AskToken },
    /// Wake the in-process watchers of `key` (its message is durable).
    Notify { key: ImvuKey },
}

/// What a canon read of one IMVU returned: its meta record and its snapshot, encoded.
pub(crate) type Loaded = Result<(Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Vec<u8>)>), StoreError>;

/// What the core shares with the runtime (no store, no clock).
pub(crate) struct CoreEnv<I: Imvu> {
    pub behaviour: Arc<I>,
    pub tenants: Arc<Tenants>,
    pub handshake: Handshake,
    pub node: Arc<NodeHealth>,
    /// Intensity of the shard's supervisor over its tenant supervisors.
    pub shard_intensity: Intensity,
    /// Whether this node may serve an IMVU now, and the fence its commits carry.
    pub ownership: Arc<dyn Ownership>,
}

/// What reaches a handler: a message, the answer to one of its asks, or one of its timers.
enum Delivery<I: Imvu> {
    Msg(I::Msg),
    /// A message applied at most once under its key.
    Once(I::Msg, Box<str>),
    Reply(u64, Box<Result<serde_json::Value, ActorError>>),
    Replies(Vec<(u64, Box<Result<serde_json::Value, ActorError>>)>),
    Timer(u64),
    /// The IMVU was just loaded from canon ([`Imvu::on_activate`]).
    Activated,
}

impl<I: Imvu> Delivery<I> {
    /// Back into the command it came as.
    fn into_command(self, key: ImvuKey, reply: Option<Reply<I::Reply>>) -> Command<I> {
        match (self, reply) {
            (Self::Msg(msg), Some(reply)) => Command::Ask { key, msg, reply },
            (Self::Msg(msg) | Self::Once(msg, _), None) => Command::Tell { key, msg },
            (Self::Once(msg, once), Some(reply)) => Command::AskOnce { key, msg, once, reply },
            (Self::Reply(correlation, reply), _) => Command::Reply { key, correlation, reply },
            (Self::Replies(replies), _) => Command::Replies { key, replies },
            (Self::Timer(timer_id), _) => Command::Timer { key, timer_id },
            // Never held or queued: run right after the load, or not at all.
            (Self::Activated, _) => Command::Timer { key, timer_id: 0 },
        }
    }
}

/// A message held while its IMVU is paused.
struct Held<I: Imvu>(Delivery<I>, Option<Reply<I::Reply>>);

/// One resident IMVU.
struct Cell<S> {
    tenant: Arc<TenantEntry>,
    state: Box<S>,
    /// Token of the last commit that carried this cell's state or records (0: none).
    last_commit: u64,
    /// Core time (ms) when it last handled something.
    last_used_ms: u64,
    lifecycle: LifecycleState,
    /// From its meta record: kept in every rewrite of the meta.
    created_unix_ms: u64,
    /// Idempotent asks applied (key → reply, JSON), as recorded in the canon beside the
    /// snapshot; none for most IMVUs.
    once: Option<Box<crate::once::Applied>>,
    /// The ownership fence it was activated under; every commit for it carries its guard.
    fence: Option<Fence>,
}

/// What waits for a commit's completion.
enum Pending<I: Imvu> {
    /// Completed (kept until the entries before it complete too).
    Done,
    /// A commit for IMVU `id`; `then` is answered with its outcome, and what its handler
    /// asked to send is sent once it is durable. `more`: the answers and sends of later
    /// handlers of the same IMVU whose writes joined this commit (see `defer_commit`), in
    /// order.
    Commit { key: ImvuKey, then: Then<I>, outgoing: Vec<Outgoing>, more: Vec<(Then<I>, Vec<Outgoing>)> },
    /// A barrier before reloading IMVU `id`.
    Barrier { id: u64 },
    /// A barrier before answering a passivation.
    Passivated { reply: oneshot::Sender<usize>, count: usize },
}

/// The answer a commit releases.
enum Then<I: Imvu> {
    Nothing,
    Ask(Reply<I::Reply>, I::Reply),
    /// An error to answer once the commit (a barrier) is durable.
    Fail(Reply<I::Reply>, ActorError),
    Info(Reply<ImvuInfo>, Box<ImvuInfo>),
    /// A passivation's write of a `LifecycleOnly` IMVU's state, for passivation call `call`:
    /// the cell is evicted only once it is durable (see [`ShardCore::passivation_written`]).
    Passivate { call: u64 },
}

/// A passivation whose `LifecycleOnly` writes are in flight: answered with the count of IMVUs
/// it evicted once the last of them completes.
struct PassivationCall {
    reply: oneshot::Sender<usize>,
    passivated: usize,
    outstanding: usize,
    /// Writes that failed (their IMVUs stay resident), and the first error.
    failed: usize,
    first_error: Option<String>,
}

/// An IMVU being (re)loaded from canon, and the commands that wait for it.
struct Loading<I: Imvu> {
    key: ImvuKey,
    /// The barrier commit it waits for first, if any.
    barrier: Option<u64>,
    commands: VecDeque<Command<I>>,
}

/// Counters for operators.
struct Counters {
    crashes: metrics::Counter,
    restarts: metrics::Counter,
    activations: metrics::Counter,
    passivations: metrics::Counter,
    poisoned: metrics::Counter,
    /// Cells dropped because ownership moved or lapsed under them.
    fenced: metrics::Counter,
    /// Idempotent asks answered from their record (sent again).
    once_repeats: metrics::Counter,
    /// Handler commits that joined the same IMVU's commit of the same wake.
    joined: metrics::Counter,
    resident: metrics::Gauge,
}

impl Counters {
    fn new(kind: &'static str) -> Self {
        Self {
            crashes: metrics::counter!("vcos_imvu_crashes_total", "kind" => kind),
            restarts: metrics::counter!("vcos_restarts_total", "kind" => kind),
            activations: metrics::counter!("vcos_activations_total", "kind" => kind),
            passivations: metrics::counter!("vcos_passivations_total", "kind" => kind),
            poisoned: metrics::counter!("vcos_imvu_poisoned_total", "kind" => kind),
            fenced: metrics::counter!("vcos_imvu_fenced_total", "kind" => kind),
            once_repeats: metrics::counter!("vcos_imvu_once_repeats_total", "kind" => kind),
            joined: metrics::counter!("vcos_imvu_commits_joined_total", "kind" => kind),
            resident: metrics::gauge!("vcos_imvus_resident", "kind" => kind),
        }
    }
}

fn transition_counter(t: Transition) {
    metrics::counter!("vcos_lifecycle_transitions_total", "transition" => t.to_string()).increment(1);
}

/// The shard's state and decisions; see the module docs.
pub(crate) struct ShardCore<I: Imvu> {
    env: CoreEnv<I>,
    cells: HashMap<u64, Cell<I::State>, ahash::RandomState>,
    held: BTreeMap<u64, VecDeque<Held<I>>>,
    loading: BTreeMap<u64, Loading<I>>,
    /// IMVUs not resident whose commits may not have settled: id → (last commit token,
    /// poisoned). Their next load waits for a barrier first.
    unsettled: BTreeMap<u64, (u64, bool)>,
    /// One supervisor per tenant over that tenant's IMVUs (one-for-one).
    tenant_supervisors: BTreeMap<TenantId, Supervisor<ImvuId>>,
    /// The shard's own supervisor over the tenant supervisors.
    shard_supervisor: Supervisor<TenantId>,
    /// Commits in flight, by token: `pending[0]` has token `first_token`.
    pending: VecDeque<Pending<I>>,
    /// Handler commits not handed to the store yet (token, writes), in token order; sent at
    /// the end of the driver's wake or before any other commit ([`ShardCore::flush`]).
    deferred: Vec<(u64, Vec<CanonWrite>)>,
    /// IMVU id → the token of its deferred commit, which its next handler's writes join.
    open: HashMap<u64, u64, ahash::RandomState>,
    first_token: u64,
    now_ms: u64,
    unix_ms: u64,
    effects: Vec<Effect<I>>,
    /// Timers set by handlers: (due ms, number) → (IMVU, timer number).
    timers: BTreeMap<(u64, u64), ImvuKey>,
    /// The last correlation or timer number handed to a handler.
    last_number: u64,
    /// `LifecycleOnly` IMVUs whose state a passivation is writing: id → the write's token.
    /// Any command for one of them cancels its eviction (its state moves on from what is
    /// being written); it stays resident.
    passivating: BTreeMap<u64, u64>,
    /// Passivations waiting for their writes, by call number.
    passivation_calls: BTreeMap<u64, PassivationCall>,
    next_passivation_call: u64,
    counters: Counters,
}

impl<I: Imvu> ShardCore<I> {
    pub(crate) fn new(env: CoreEnv<I>) -> Self {
        let shard_supervisor = Supervisor::new(Strategy::OneForOne, env.shard_intensity);
        Self {
            env,
            // Fixed seeds: iteration order (passivation) is the same on every run.
            cells: HashMap::with_hasher(ahash::RandomState::with_seeds(1, 2, 3, 4)),
            held: BTreeMap::new(),
            loading: BTreeMap::new(),
            unsettled: BTreeMap::new(),
            tenant_supervisors: BTreeMap::new(),
            shard_supervisor,
            pending: VecDeque::new(),
            deferred: Vec::new(),
            // Looked up by id only, never iterated.
            open: HashMap::with_hasher(ahash::RandomState::with_seeds(1, 2, 3, 4)),
            first_token: 1,
            now_ms: 0,
            unix_ms: 0,
            effects: Vec::new(),
            timers: BTreeMap::new(),
            last_number: 0,
            passivating: BTreeMap::new(),
            passivation_calls: BTreeMap::new(),
            next_passivation_call: 0,
            counters: Counters::new(I::KIND),
        }
    }

    // ---- inputs ----------------------------------------------------------------------------

    /// The time: monotonic (supervision windows, idleness) and wall (canon records). The
    /// driver reads its clock once per batch of commands.
    pub(crate) fn set_now(&mut self, now_ms: u64, unix_ms: u64) {
        self.now_ms = now_ms;
        self.unix_ms = unix_ms;
    }

    /// Hands over the effects produced so far (swapped with `into`, which must be empty: both
    /// buffers keep their capacity, so the hot path does not allocate).
    pub(crate) fn take_effects(&mut self, into: &mut Vec<Effect<I>>) {
        debug_assert!(into.is_empty());
        std::mem::swap(&mut self.effects, into);
    }

    /// Whether commits are in flight.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Hands the deferred handler commits to the store (as effects), in token order. The
    /// driver calls it at the end of every wake, so nothing waits past the batch it came in.
    pub(crate) fn flush(&mut self) {
        self.open.clear();
        for (token, writes) in self.deferred.drain(..) {
            self.effects.push(Effect::Commit { token, writes });
        }
    }

    /// Whether handler commits wait for [`ShardCore::flush`].
    pub(crate) fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// Handles one command; `Err` is an escalation out of the shard.
    pub(crate) fn handle_command(&mut self, command: Command<I>) -> Result<(), String> {
        let Some(key) = command.key().copied() else {
            if let Command::Passivate { idle_ms, reply } = command {
                self.passivate(idle_ms, reply);
            }
            return Ok(());
        };
        let id = key.id.0;
        // A command for an IMVU being passivated: it stays resident (see `passivating`).
        self.passivating.remove(&id);
        // An IMVU of a tenant erased meanwhile lets go of its memory: what follows finds
        // neither the tenant nor the IMVU.
        if self.cells.get(&id).is_some_and(|cell| cell.tenant.is_erased()) {
            self.drop_stale(id);
        }
        // At most one activation: serve only what this node owns now, and only from memory
        // that was loaded under the current fence (another node may have served the IMVU
        // while the fence was someone else's).
        if !matches!(command, Command::Evict { .. }) {
            match self.env.ownership.fence(&key, self.now_ms) {
                Err(error) => {
                    self.drop_stale(id);
                    self.fail(command, error);
                    return Ok(());
                }
                Ok(fence) => {
                    if self.cells.get(&id).is_some_and(|cell| cell.fence != fence) {
                        self.drop_stale(id);
                    }
                }
            }
        }
        // Messages for an IMVU being loaded wait behind the load, in order.
        if let Some(loading) = self.loading.get_mut(&id) {
            if matches!(command, Command::Evict { .. }) {
                return Ok(());
            }
            if loading.commands.len() >= LOADING_QUEUE_LEN_MAX {
                self.fail(command, ActorError::QueueFull(format!("IMVU {key} is loading and already holds {LOADING_QUEUE_LEN_MAX} messages")));
            } else {
                loading.commands.push_back(command);
            }
            return Ok(());
        }
        match command {
            Command::Tell { key, msg } => self.deliver(key, Delivery::Msg(msg), None),
            Command::Ask { key, msg, reply } => self.deliver(key, Delivery::Msg(msg), Some(reply)),
            Command::AskOnce { key, msg, once, reply } => self.deliver(key, Delivery::Once(msg, once), Some(reply)),
            Command::Reply { key, correlation, reply } => self.deliver(key, Delivery::Reply(correlation, reply), None),
            Command::Replies { key, replies } => self.deliver(key, Delivery::Replies(replies), None),
            Command::Timer { key, timer_id } => self.deliver(key, Delivery::Timer(timer_id), None),
            Command::Create { key, caller, reply } => {
                self.create(key, &caller, reply);
                Ok(())
            }
            Command::Evict { key } => {
                self.evict(key.id.0);
                Ok(())
            }
            command @ (Command::Lifecycle { .. } | Command::Inspect { .. }) => {
                match self.resident(&key) {
                    Ok(true) => {}
                    Ok(false) => {
                        self.begin_load(key, Some(command));
                        return Ok(());
                    }
                    Err(e) => {
                        self.fail(command, e);
                        return Ok(());
                    }
                }
                match command {
                    Command::Lifecycle { key, transition, caller, reply } => self.lifecycle(key, transition, &caller, reply),
                    Command::Inspect { key, reply } => {
                        let info = self.info(&key);
                        self.effects.push(Effect::ReplyInfo(reply, Ok(info)));
                    }
                    _ => unreachable!("matched above"),
                }
                Ok(())
            }
            Command::Passivate { .. } => unreachable!("has no key: handled above"),
        }
    }

    /// The outcome of commit `token`.
    pub(crate) fn handle_committed(&mut self, token: u64, result: Result<u64, StoreError>) {
        let Some(slot) = token.checked_sub(self.first_token).and_then(|at| usize::try_from(at).ok()).and_then(|at| self.pending.get_mut(at)) else {
            debug_assert!(false, "completion of unknown commit {token}");
            return;
        };
        let pending = std::mem::replace(slot, Pending::Done);
        while matches!(self.pending.front(), Some(Pending::Done)) {
            self.pending.pop_front();
            self.first_token += 1;
        }
        match &result {
            Ok(_) => {
                if !self.env.node.store_healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("canon commits succeed again: creations and activations are admitted");
                }
            }
            Err(StoreError::Overloaded | StoreError::Conflict { .. }) => {}
            Err(error) => {
                if self.env.node.store_healthy.swap(false, Ordering::Relaxed) {
                    // A refusal's own record is a commit: the first one that succeeds reopens.
                    tracing::warn!(%error, "canon commit failed: creations and activations are refused until a commit succeeds");
                }
            }
        }
        match pending {
            Pending::Done => debug_assert!(false, "commit {token} completed twice"),
            Pending::Commit { key, then: Then::Passivate { call }, outgoing, more } => {
                debug_assert!(outgoing.is_empty(), "a passivation's write sends nothing");
                self.passivation_written(key, token, call, more, result);
            }
            Pending::Commit { key, then, outgoing, more } => {
                let id = key.id.0;
                match result {
                    Ok(_) => {
                        if self.unsettled.get(&id).is_some_and(|(last, poisoned)| *last == token && !poisoned) {
                            self.unsettled.remove(&id);
                        }
                        for (then, outgoing) in std::iter::once((then, outgoing)).chain(more) {
                            self.dispatch(key, outgoing);
                            self.answer(then, None);
                        }
                    }
                    Err(e) => {
                        self.poison(id, &e);
                        let e = ActorError::from(e);
                        for (then, _) in std::iter::once((then, outgoing)).chain(more) {
                            self.answer(then, Some(&e));
                        }
                    }
                }
            }
            Pending::Barrier { id } => {
                let Some(loading) = self.loading.get_mut(&id) else { return };
                if loading.barrier != Some(token) {
                    return;
                }
                match result {
                    Ok(_) => {
                        loading.barrier = None;
                        let key = loading.key;
                        if self.unsettled.get(&id).is_some_and(|(last, _)| *last < token) {
                            self.unsettled.remove(&id);
                        }
                        self.effects.push(Effect::Load { key });
                    }
                    Err(e) => {
                        // The IMVU stays unloaded (and unsettled: the next message tries again);
                        // its callers may retry.
                        let loading = self.loading.remove(&id).expect("present: checked above");
                        let error = ActorError::Unavailable(format!("IMVU {} cannot be reloaded yet: {e}", loading.key));
                        for command in loading.commands {
                            self.fail(command, error.clone());
                        }
                    }
                }
            }
            Pending::Passivated { reply, count } => self.effects.push(Effect::ReplyCount(reply, count)),
        }
    }

    /// `key`'s canon records, read for a [`Effect::Load`]; runs the commands that waited for
    /// them. `Err` is an escalation out of the shard.
    pub(crate) fn handle_loaded(&mut self, key: ImvuKey, loaded: Loaded) -> Result<(), String> {
        let id = key.id.0;
        let Some(loading) = self.loading.remove(&id) else {
            return Ok(());
        };
        match self.activate(&key, loaded) {
            Ok(()) => {
                let active = self.cells.get(&id).is_some_and(|cell| cell.lifecycle == LifecycleState::Active);
                if active && self.env.behaviour.resumes() {
                    self.run_handler(key, Delivery::Activated, None)?;
                }
                for command in loading.commands {
                    self.handle_command(command)?;
                }
            }
            Err(error) => {
                for command in loading.commands {
                    // Another tenant's key for the same id was not what was read: try it alone.
                    if command.key().is_some_and(|other| other.tenant != key.tenant) {
                        self.handle_command(command)?;
                    } else {
                        self.fail(command, error.clone());
                    }
                }
            }
        }
        Ok(())
    }

    /// Drops every resident IMVU (the shard is stopping).
    pub(crate) fn evict_all(&mut self) {
        let ids: Vec<u64> = self.cells.keys().copied().collect();
        for id in ids {
            self.held.remove(&id);
            self.evict(id);
        }
    }

    // ---- commits ---------------------------------------------------------------------------

    /// Answers what waited for a commit: as handled when it is durable (`error` none), else
    /// with `error`.
    fn answer(&mut self, then: Then<I>, error: Option<&ActorError>) {
        match (then, error) {
            (Then::Nothing | Then::Passivate { .. }, _) => {}
            (Then::Ask(reply, value), None) => self.effects.push(Effect::ReplyAsk(reply, Ok(value))),
            (Then::Fail(reply, failure), None) => self.effects.push(Effect::ReplyAsk(reply, Err(failure))),
            (Then::Info(reply, info), None) => self.effects.push(Effect::ReplyInfo(reply, Ok(*info))),
            (Then::Ask(reply, _) | Then::Fail(reply, _), Some(e)) => self.effects.push(Effect::ReplyAsk(reply, Err(e.clone()))),
            (Then::Info(reply, _), Some(e)) => self.effects.push(Effect::ReplyInfo(reply, Err(e.clone()))),
        }
    }

    /// Queues a commit for IMVU `id`, guarded by the fence it was activated under; returns
    /// its token.
    fn commit(&mut self, key: &ImvuKey, mut writes: Vec<CanonWrite>, then: Then<I>) -> u64 {
        if let Some(cell) = self.cells.get(&key.id.0) {
            let bytes: usize = writes.iter().map(CanonWrite::len_bytes).sum();
            cell.tenant.usage.add(crate::metering::UsageUnit::CanonBytes, bytes as u64);
        }
        self.push_guards(key.id.0, &mut writes);
        self.push_commit(writes, Pending::Commit { key: *key, then, outgoing: Vec::new(), more: Vec::new() })
    }

    /// Adds the guards of resident IMVU `id`'s commits: its lease fence (a node that lost the
    /// IMVU's lease cannot commit for it) and its tenant's fence (nothing of an erased tenant
    /// is written back).
    fn push_guards(&self, id: u64, writes: &mut Vec<CanonWrite>) {
        let Some(cell) = self.cells.get(&id) else { return };
        if let Some(fence) = cell.fence {
            writes.push(self.env.ownership.guard(fence));
        }
        writes.extend(cell.tenant.guard());
    }

    /// Drops a cell that may no longer be served from memory (ownership moved or lapsed);
    /// messages it held (paused) fail with a retryable error, since they were never handled.
    fn drop_stale(&mut self, id: u64) {
        if !self.cells.contains_key(&id) {
            return;
        }
        for held in self.held.remove(&id).unwrap_or_default() {
            if let Held(_, Some(reply)) = held {
                let error = ActorError::Unavailable(format!("IMVU {id} moved to another node while paused; send again"));
                self.effects.push(Effect::ReplyAsk(reply, Err(error)));
            }
        }
        self.counters.fenced.increment(1);
        self.remove_cell(id);
    }

    fn push_commit(&mut self, writes: Vec<CanonWrite>, pending: Pending<I>) -> u64 {
        // Commits reach the store in token order: the deferred ones go first.
        self.flush();
        let token = self.first_token + self.pending.len() as u64;
        self.pending.push_back(pending);
        self.effects.push(Effect::Commit { token, writes });
        token
    }

    /// Queues a handler's commit for IMVU `key` until the end of the wake ([`Self::flush`]).
    /// When the same IMVU's previous handler left one there, the writes join it: the newer
    /// snapshot replaces the older in place (nothing else in an IMVU's commits touches its
    /// snapshot key), its other writes follow in order, and both handlers' answers and sends
    /// wait for the one commit. A busy IMVU (a workflow whose hundred answers arrive in one
    /// wake) so writes its state once per wake, not once per message; answers are released no
    /// earlier than before, and the writes of one commit are applied all or none.
    fn defer_commit(&mut self, key: ImvuKey, writes: Vec<CanonWrite>, then: Then<I>, outgoing: Vec<Outgoing>) -> u64 {
        let id = key.id.0;
        if let Some(&token) = self.open.get(&id) {
            let joined = self.deferred.iter_mut().rev().find(|(t, _)| *t == token).map(|(_, w)| w);
            let slot = token.checked_sub(self.first_token).and_then(|at| usize::try_from(at).ok()).and_then(|at| self.pending.get_mut(at));
            if let (Some(into), Some(Pending::Commit { more, .. })) = (joined, slot) {
                let snapshot = records::snap_key(&key);
                for write in writes {
                    match write {
                        CanonWrite::Put { key: k, value } if k == snapshot => match into.iter_mut().find(|w| matches!(w, CanonWrite::Put { key, .. } if *key == snapshot)) {
                            Some(CanonWrite::Put { value: older, .. }) => *older = value,
                            _ => into.push(CanonWrite::Put { key: k, value }),
                        },
                        other => into.push(other),
                    }
                }
                more.push((then, outgoing));
                self.counters.joined.increment(1);
                return token;
            }
        }
        let token = self.first_token + self.pending.len() as u64;
        self.pending.push_back(Pending::Commit { key, then, outgoing, more: Vec::new() });
        self.deferred.push((token, writes));
        self.open.insert(id, token);
        token
    }

    /// The commit `token`, while it is still to complete.
    fn pending_commit(&mut self, token: u64) -> Option<&mut Pending<I>> {
        let at = usize::try_from(token.checked_sub(self.first_token)?).ok()?;
        self.pending.get_mut(at).filter(|p| !matches!(p, Pending::Done))
    }

    fn in_flight(&self, token: u64) -> bool {
        token
            .checked_sub(self.first_token)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| self.pending.get(at))
            .is_some_and(|p| !matches!(p, Pending::Done))
    }

    /// A commit of IMVU `id` failed (`why`): no later command may run on its in-memory state.
    fn poison(&mut self, id: u64, why: &StoreError) {
        self.counters.poisoned.increment(1);
        let last = self.cells.get(&id).map_or(0, |c| c.last_commit);
        if self.remove_cell(id) {
            tracing::warn!(id, kind = I::KIND, error = %why, "commit failed: IMVU evicted, reloads from canon");
        }
        let entry = self.unsettled.entry(id).or_insert((last, true));
        entry.0 = entry.0.max(last);
        entry.1 = true;
    }

    /// Performs what a handler of `from` asked for, now that its message is durable.
    fn dispatch(&mut self, from: ImvuKey, outgoing: Vec<Outgoing>) {
        for request in outgoing {
            match request {
                Outgoing::Send { to, msg, correlation } => {
                    let ask = correlation.map(|correlation| AskToken { from, correlation });
                    self.effects.push(Effect::Route { from, to, msg, ask });
                }
                Outgoing::CreateChild { kind, correlation } => {
                    self.effects.push(Effect::CreateChild { kind, ask: AskToken { from, correlation } });
                }
                Outgoing::Model { request, correlation } => {
                    self.effects.push(Effect::Model { request, ask: AskToken { from, correlation } });
                }
                Outgoing::Activity { name, input, idempotency_key, correlation } => {
                    self.effects.push(Effect::Activity { name, input, idempotency_key, ask: AskToken { from, correlation } });
                }
                Outgoing::Notify => self.effects.push(Effect::Notify { key: from }),
                Outgoing::Timer { timer_id, after_ms } => {
                    if self.timers.len() >= SHARD_TIMERS_MAX {
                        metrics::counter!("vcos_timers_dropped_total", "kind" => I::KIND).increment(1);
                        tracing::warn!(key = %from, timer_id, "shard timer table full: timer dropped");
                        continue;
                    }
                    self.timers.insert((self.now_ms.saturating_add(after_ms), timer_id), from);
                }
            }
        }
    }

    /// When the next timer is due (core time, ms), if any is set.
    pub(crate) fn next_timer_ms(&self) -> Option<u64> {
        self.timers.first_key_value().map(|((due_ms, _), _)| *due_ms)
    }

    /// Fires every timer due at the current time (see [`ShardCore::set_now`]); `Err` is an
    /// escalation out of the shard.
    pub(crate) fn handle_timers(&mut self) -> Result<(), String> {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > self.now_ms {
                break;
            }
            let ((_, timer_id), key) = entry.remove_entry();
            self.handle_command(Command::Timer { key, timer_id })?;
        }
        Ok(())
    }

    // ---- residency -------------------------------------------------------------------------

    /// Whether `key` is resident (`Err`: resident under another tenant, i.e. not found).
    fn resident(&self, key: &ImvuKey) -> Result<bool, ActorError> {
        match self.cells.get(&key.id.0) {
            // Ids are node-unique, but the tenant is part of the key: a cell of another
            // tenant under this id is, for this caller, nothing.
            Some(cell) if cell.tenant.id != key.tenant => Err(ActorError::not_found("imvu", key)),
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }

    /// Starts loading `key` from canon (after a barrier when its commits may not have
    /// settled); `first` waits for it.
    fn begin_load(&mut self, key: ImvuKey, first: Option<Command<I>>) {
        let id = key.id.0;
        let barrier = self.unsettled.contains_key(&id).then(|| self.push_commit(Vec::new(), Pending::Barrier { id }));
        if barrier.is_none() {
            self.effects.push(Effect::Load { key });
        }
        self.loading.insert(id, Loading { key, barrier, commands: first.into_iter().collect() });
    }

    fn activate(&mut self, key: &ImvuKey, loaded: Loaded) -> Result<(), ActorError> {
        let (meta, snapshot, once) = loaded?;
        let meta_key = records::meta_key(key);
        let meta: ImvuMeta = match meta {
            Some(bytes) => records::decode(&meta_key, &bytes)?,
            None => return Err(ActorError::not_found("imvu", key)),
        };
        if meta.kind != I::KIND {
            return Err(ActorError::not_found("imvu", key));
        }
        if meta.lifecycle == LifecycleState::Terminated {
            return Err(ActorError::Terminated(key.to_string()));
        }
        let state = match snapshot {
            Some(bytes) => records::decode(&records::snap_key(key), &bytes)?,
            None => self.env.behaviour.genesis(),
        };
        let tenant = self.env.tenants.get(&key.tenant)?;
        let fence = self.env.ownership.fence(key, self.now_ms)?;
        self.insert_cell(key.id.0, tenant, state, meta.lifecycle, meta.created_unix_ms, fence);
        if let Some(cell) = self.cells.get_mut(&key.id.0) {
            cell.once = crate::once::Applied::load(once);
        }
        self.counters.activations.increment(1);
        Ok(())
    }

    fn insert_cell(&mut self, id: u64, tenant: Arc<TenantEntry>, state: I::State, lifecycle: LifecycleState, created_unix_ms: u64, fence: Option<Fence>) {
        let cell = Cell { tenant, state: Box::new(state), last_commit: 0, last_used_ms: self.now_ms, lifecycle, created_unix_ms, fence, once: None };
        if self.cells.insert(id, cell).is_none() {
            self.env.node.resident_imvus.fetch_add(1, Ordering::Relaxed);
            self.counters.resident.increment(1.0);
        }
    }

    /// Evicts `id` unless it holds messages (held messages live only in memory: a paused IMVU
    /// with held messages stays).
    fn evict(&mut self, id: u64) {
        if self.held.get(&id).is_some_and(|q| !q.is_empty()) {
            return;
        }
        self.remove_cell(id);
    }

    /// Drops the cell; if its last commit is in flight, its next load waits for a barrier.
    fn remove_cell(&mut self, id: u64) -> bool {
        let Some(cell) = self.cells.remove(&id) else {
            return false;
        };
        self.env.node.resident_imvus.fetch_sub(1, Ordering::Relaxed);
        self.counters.resident.decrement(1.0);
        if self.in_flight(cell.last_commit) {
            let entry = self.unsettled.entry(id).or_insert((cell.last_commit, false));
            entry.0 = entry.0.max(cell.last_commit);
        }
        true
    }

    fn info(&self, key: &ImvuKey) -> ImvuInfo {
        let cell = &self.cells[&key.id.0];
        ImvuInfo {
            key: *key,
            kind: I::KIND.to_owned(),
            lifecycle: cell.lifecycle,
            state: serde_json::to_value(&*cell.state).unwrap_or(serde_json::Value::Null),
            held_messages: self.held.get(&key.id.0).map_or(0, VecDeque::len),
        }
    }

    /// Answers `command` with `error`.
    fn fail(&mut self, command: Command<I>, error: ActorError) {
        match command {
            Command::Ask { reply, .. } | Command::AskOnce { reply, .. } => self.effects.push(Effect::ReplyAsk(reply, Err(error))),
            Command::Create { reply, .. } | Command::Inspect { reply, .. } => self.effects.push(Effect::ReplyInfo(reply, Err(error))),
            Command::Lifecycle { reply, transition, .. } => {
                let error = match error {
                    ActorError::Terminated(_) => ActorError::IllegalTransition { transition, current: "terminated".into() },
                    other => other,
                };
                self.effects.push(Effect::ReplyInfo(reply, Err(error)));
            }
            Command::Passivate { reply, .. } => self.effects.push(Effect::ReplyCount(reply, 0)),
            Command::Reply { key, correlation, .. } => {
                tracing::debug!(%key, correlation, %error, "answer for an IMVU that is gone: dropped");
            }
            Command::Replies { key, replies } => {
                tracing::debug!(%key, answers = replies.len(), %error, "answers for an IMVU that is gone: dropped");
            }
            Command::Tell { .. } | Command::Evict { .. } | Command::Timer { .. } => {}
        }
    }

    // ---- commands --------------------------------------------------------------------------

    fn admit(&self, tenant: &TenantEntry, entity_tenant: &TenantId, transition: Transition, caller: &Caller) -> HandshakeOutcome {
        self.env.handshake.admit(&AdmissionRequest { transition, tenant, entity_tenant, kind: I::KIND, caller, node: &self.env.node })
    }

    fn create(&mut self, key: ImvuKey, caller: &Caller, reply: Reply<ImvuInfo>) {
        let tenant = match self.env.tenants.get(&key.tenant) {
            Ok(tenant) => tenant,
            Err(e) => {
                self.effects.push(Effect::ReplyInfo(reply, Err(e)));
                return;
            }
        };
        let unix_ms = self.unix_ms;
        let mut writes = Vec::with_capacity(4);
        for (transition, from, to) in [
            (Transition::Create, None, LifecycleState::Genesis),
            (Transition::Activate, Some(LifecycleState::Genesis), LifecycleState::Active),
        ] {
            let outcome = self.admit(&tenant, &key.tenant, transition, caller);
            let refused = outcome != HandshakeOutcome::Admitted;
            let record = TransitionRecord {
                transition,
                from,
                to: if refused { from } else { Some(to) },
                handshake: outcome.clone(),
                caller: caller.principal.clone(),
                unix_ms,
                final_state: None,
            };
            if let HandshakeOutcome::Refused { stage, reason, transient } = outcome {
                // Refusals are recorded durably; nothing else of the creation is written.
                let prefix = if transition == Transition::Create { records::refused_prefix(&key.tenant) } else { records::history_prefix(&key) };
                let writes = vec![CanonWrite::Append { prefix, value: records::encode(&HistoryEvent::Transition(record)) }];
                self.commit(&key, writes, Then::Nothing);
                self.effects.push(Effect::ReplyInfo(reply, Err(refusal_error(stage, transition, reason, transient))));
                return;
            }
            writes.push(CanonWrite::Append {
                prefix: records::history_prefix(&key),
                value: records::encode(&HistoryEvent::Transition(record)),
            });
            transition_counter(transition);
        }
        let state = self.env.behaviour.genesis();
        let genesis_snapshot = match records::encode_state(&state) {
            Ok(snapshot) => snapshot,
            Err(reason) => {
                self.effects.push(Effect::ReplyInfo(reply, Err(ActorError::BadRequest { field: "kind".into(), reason })));
                return;
            }
        };
        let meta = ImvuMeta { kind: I::KIND.to_owned(), lifecycle: LifecycleState::Active, created_unix_ms: unix_ms };
        writes.push(CanonWrite::Put { key: records::meta_key(&key), value: records::encode(&meta) });
        writes.push(CanonWrite::Put { key: records::snap_key(&key), value: genesis_snapshot });
        let fence = match self.env.ownership.fence(&key, self.now_ms) {
            Ok(fence) => fence,
            Err(e) => {
                self.effects.push(Effect::ReplyInfo(reply, Err(e)));
                return;
            }
        };
        bump(&tenant.live_imvus, true);
        self.insert_cell(key.id.0, tenant, state, LifecycleState::Active, unix_ms, fence);
        let info = self.info(&key);
        let token = self.commit(&key, writes, Then::Info(reply, Box::new(info)));
        self.cells.get_mut(&key.id.0).expect("just inserted").last_commit = token;
    }

    fn deliver(&mut self, key: ImvuKey, delivery: Delivery<I>, reply: Option<Reply<I::Reply>>) -> Result<(), String> {
        // Fast path: resident, active, this tenant's.
        if self.cells.get(&key.id.0).is_some_and(|c| c.lifecycle == LifecycleState::Active && c.tenant.id == key.tenant) {
            return self.run_handler(key, delivery, reply);
        }
        match self.resident(&key) {
            Ok(true) => {}
            Ok(false) => {
                self.begin_load(key, Some(delivery.into_command(key, reply)));
                return Ok(());
            }
            Err(e) => {
                if let Some(reply) = reply {
                    self.effects.push(Effect::ReplyAsk(reply, Err(e)));
                }
                return Ok(());
            }
        }
        let id = key.id.0;
        let lifecycle = self.cells[&id].lifecycle;
        match lifecycle {
            LifecycleState::Active => self.run_handler(key, delivery, reply),
            LifecycleState::Paused => {
                let queue = self.held.entry(id).or_default();
                if queue.len() >= PAUSED_QUEUE_LEN_MAX {
                    if let Some(reply) = reply {
                        let error = ActorError::QueueFull(format!("IMVU {key} is paused and already holds {PAUSED_QUEUE_LEN_MAX} messages"));
                        self.effects.push(Effect::ReplyAsk(reply, Err(error)));
                    }
                } else {
                    queue.push_back(Held(delivery, reply));
                }
                Ok(())
            }
            LifecycleState::Genesis | LifecycleState::Terminated => {
                if let Some(reply) = reply {
                    let error = ActorError::IllegalTransition { transition: Transition::Activate, current: lifecycle.to_string() };
                    self.effects.push(Effect::ReplyAsk(reply, Err(error)));
                }
                Ok(())
            }
        }
    }

    fn run_handler(&mut self, key: ImvuKey, delivery: Delivery<I>, reply: Option<Reply<I::Reply>>) -> Result<(), String> {
        let behaviour = &*self.env.behaviour;
        let cell = self.cells.get_mut(&key.id.0).expect("resident: checked by deliver");
        cell.last_used_ms = self.now_ms;
        let every_message = behaviour.persistence() == Persistence::EveryMessage;
        // An idempotent ask already applied: its recorded reply, once what recorded it is
        // durable (a barrier behind the IMVU's commits). Not a new message: no quota, no usage.
        if let (Delivery::Once(_, once), true) = (&delivery, every_message) {
            if let Some(stored) = cell.once.as_ref().and_then(|applied| applied.reply(once)) {
                let then = match reply {
                    Some(reply) => Then::Fail(reply, ActorError::AlreadyApplied(stored)),
                    None => Then::Nothing,
                };
                self.counters.once_repeats.increment(1);
                self.commit(&key, Vec::new(), then);
                return Ok(());
            }
        }
        if matches!(delivery, Delivery::Msg(_) | Delivery::Once(..)) {
            // The tenant's messages of the day (replies and timers are not messages).
            if let Err(e) = crate::quota::admit_message(&cell.tenant, self.unix_ms) {
                if let Some(reply) = reply {
                    self.effects.push(Effect::ReplyAsk(reply, Err(e)));
                }
                return Ok(());
            }
            cell.tenant.usage.add(crate::metering::UsageUnit::Messages, 1);
        }
        let number_base = cell.fence.map_or(0, |fence| fence.epoch << 32);
        let mut ctx = Context {
            key: &key,
            unix_ms: self.unix_ms,
            stop_requested: false,
            outgoing: Vec::new(),
            next_number: self.last_number,
            number_base,
            unchanged: false,
            steps: 0,
            index: Vec::new(),
        };
        let state = &mut *cell.state;
        let once = match &delivery {
            Delivery::Once(_, once) if every_message => Some(once.clone()),
            _ => None,
        };
        let outcome = quiet_panic::catch(|| {
            if crate::failpoints::handler_should_panic(ctx.key) {
                panic!("failpoint: injected handler panic");
            }
            let reply = match delivery {
                Delivery::Msg(msg) | Delivery::Once(msg, _) => Some(behaviour.handle(state, msg, &mut ctx)),
                Delivery::Reply(correlation, answer) => {
                    behaviour.on_reply(state, correlation, *answer, &mut ctx);
                    None
                }
                Delivery::Replies(replies) => {
                    behaviour.on_replies(state, replies.into_iter().map(|(correlation, answer)| (correlation, *answer)).collect(), &mut ctx);
                    None
                }
                Delivery::Timer(timer_id) => {
                    behaviour.on_timer(state, timer_id, &mut ctx);
                    None
                }
                Delivery::Activated => {
                    behaviour.on_activate(state, &mut ctx);
                    None
                }
            };
            // Encoding runs the author's `Serialize`: inside the catch, so its failure is this
            // IMVU's crash, like a panic in `handle`.
            let snapshot = (every_message && !ctx.unchanged).then(|| records::encode_state(&*state)).transpose();
            match snapshot {
                Ok(snapshot) => (reply, snapshot),
                Err(reason) => panic!("{reason}"),
            }
        });
        let stop_requested = ctx.stop_requested;
        self.last_number = ctx.next_number;
        let (outgoing, index, steps) = (ctx.outgoing, ctx.index, ctx.steps);
        if steps > 0 {
            if let Some(cell) = self.cells.get(&key.id.0) {
                cell.tenant.usage.add(crate::metering::UsageUnit::WorkflowSteps, steps);
            }
        }
        match outcome {
            Ok((value, snapshot)) => {
                if let Some(snapshot) = snapshot {
                    let mut writes = vec![CanonWrite::Put { key: records::snap_key(&key), value: snapshot }];
                    for (name, present) in index {
                        let index_key = records::index_key(&key, &name);
                        writes.push(if present { CanonWrite::Put { key: index_key, value: Vec::new() } } else { CanonWrite::Delete { key: index_key } });
                    }
                    // The idempotent ask's record, in the same commit as its effect.
                    if let (Some(once), Some(value)) = (once, value.as_ref()) {
                        let unix_ms = self.unix_ms;
                        if let Some(cell) = self.cells.get_mut(&key.id.0) {
                            let applied = cell.once.get_or_insert_with(Default::default);
                            writes.extend(applied.record(&key, once, value, unix_ms));
                        }
                    }
                    // Fenced like every commit of an activation: a node that lost the IMVU's
                    // lease after this message was admitted cannot make its snapshot durable.
                    self.push_guards(key.id.0, &mut writes);
                    let then = match (reply, value) {
                        (Some(reply), Some(value)) => Then::Ask(reply, value),
                        _ => Then::Nothing,
                    };
                    // What the handler asked to send goes out once its message is durable.
                    let token = self.defer_commit(key, writes, then, outgoing);
                    if let Some(cell) = self.cells.get_mut(&key.id.0) {
                        cell.last_commit = token;
                    }
                } else {
                    let then = match (reply, value) {
                        (Some(reply), Some(value)) => Then::Ask(reply, value),
                        _ => Then::Nothing,
                    };
                    // Nothing to commit, but what the handler read may not be durable yet: an
                    // earlier message's commit of this IMVU can still be in flight (commits are
                    // pipelined). Its answer and sends then wait for that commit, and fail with
                    // it, so no caller is told of a state that a failed commit takes back (a
                    // workflow's repeated `start` answered "running" from memory, then lost).
                    let last = self.cells.get(&key.id.0).map_or(0, |cell| cell.last_commit);
                    match self.pending_commit(last) {
                        Some(Pending::Commit { more, .. }) => more.push((then, outgoing)),
                        _ => {
                            if let Then::Ask(reply, value) = then {
                                let epoch = self.cells.get(&key.id.0).and_then(|cell| cell.fence).map(|fence| fence.epoch);
                                crate::failpoints::served_from_memory(&key, epoch);
                                self.effects.push(Effect::ReplyAsk(reply, Ok(value)));
                            }
                            self.dispatch(key, outgoing);
                        }
                    }
                }
                if stop_requested {
                    let caller = Caller::internal(&key.tenant, "self");
                    let (tx, _rx) = oneshot::channel();
                    self.lifecycle(key, Transition::Terminate, &caller, tx);
                }
                Ok(())
            }
            Err(reason) => {
                self.counters.crashes.increment(1);
                if let Some(reply) = reply {
                    let error = ActorError::Crashed { key: key.to_string(), reason: reason.clone() };
                    self.effects.push(Effect::ReplyAsk(reply, Err(error)));
                }
                self.supervise_crash(key, reason)
            }
        }
    }

    /// A handler panicked: ask the tenant's supervisor what to do, and do it.
    fn supervise_crash(&mut self, key: ImvuKey, reason: String) -> Result<(), String> {
        let now_ms = self.now_ms;
        let tenant = self.cells[&key.id.0].tenant.clone();
        let supervisor = self
            .tenant_supervisors
            .entry(key.tenant)
            .or_insert_with(|| Supervisor::new(Strategy::OneForOne, tenant.policy.intensity()));
        // One-for-one needs no list of siblings, so an IMVU joins its supervisor only while it
        // is being handled: the supervisor holds the restart window, not a million children.
        let spec = ChildSpec { id: key.id, restart: self.env.behaviour.restart(), shutdown_timeout_ms: 0 };
        let _ = supervisor.add_child(spec);
        let mut directive = supervisor.handle_child_exit(now_ms, &key.id, ExitReason::Failed(reason.clone()));
        supervisor.remove_child(&key.id);
        let restarts_in_window = match directive {
            // An escalation's window is the one that overflowed.
            Directive::Escalate { .. } => supervisor.intensity().max_restarts + 1,
            _ => supervisor.restarts_in_window(now_ms),
        };
        if crate::failpoints::ignore_intensity() {
            if let Directive::Escalate { .. } = directive {
                // Planted bug (simulator only): keep restarting past the intensity.
                directive = Directive::Restart { stop: Vec::new(), start: vec![key.id] };
                self.tenant_supervisors.remove(&key.tenant);
            }
        }
        let unix_ms = self.unix_ms;
        let supervision = |decision: &str| {
            HistoryEvent::Supervision(SupervisionRecord { reason: reason.clone(), decision: decision.into(), restarts_in_window, unix_ms })
        };
        match directive {
            Directive::Restart { .. } => {
                self.record(&key, supervision("restarted"));
                // Restart = reload from the last durable snapshot: once this IMVU's commits have
                // settled, canon is read back; its messages wait for that, in order.
                self.remove_cell(key.id.0);
                self.counters.restarts.increment(1);
                self.begin_load(key, None);
                Ok(())
            }
            Directive::Ignore => {
                // Temporary (or transient exiting abnormally is restarted above): stays down,
                // which for an entity means terminated, final state = last durable snapshot.
                self.record(&key, supervision("stopped"));
                self.remove_cell(key.id.0);
                let (tx, _rx) = oneshot::channel();
                let terminate = Command::Lifecycle {
                    key,
                    transition: Transition::Terminate,
                    caller: Box::new(Caller::internal(&key.tenant, "supervisor")),
                    reply: tx,
                };
                self.begin_load(key, Some(terminate));
                Ok(())
            }
            Directive::Escalate { reason: why, .. } => {
                self.record(&key, supervision("escalated"));
                self.escalate_tenant(&key.tenant, format!("tenant {} supervisor: {why}; last crash: {reason}", key.tenant))
            }
        }
    }

    /// The tenant supervisor gave up: stop its IMVUs (reverse start order, which for node-unique
    /// ids allocated in creation order is descending id), then let the shard supervisor decide.
    fn escalate_tenant(&mut self, tenant: &TenantId, reason: String) -> Result<(), String> {
        tracing::warn!(%tenant, kind = I::KIND, %reason, "tenant supervisor escalates");
        let mut ids: Vec<u64> = self.cells.iter().filter(|(_, c)| &c.tenant.id == tenant).map(|(id, _)| *id).collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        for id in ids {
            self.evict(id);
        }
        self.tenant_supervisors.remove(tenant);
        let _ = self.shard_supervisor.add_child(ChildSpec {
            id: *tenant,
            restart: vcos_supervision::RestartType::Permanent,
            shutdown_timeout_ms: 0,
        });
        match self.shard_supervisor.handle_child_exit(self.now_ms, tenant, ExitReason::Failed(reason.clone())) {
            // Restarting a tenant supervisor is a fresh restart window; its IMVUs come back
            // from canon on their next message.
            Directive::Restart { .. } | Directive::Ignore => Ok(()),
            Directive::Escalate { reason: why, .. } => Err(format!("{} shard supervisor: {why}; cause: {reason}", I::KIND)),
        }
    }

    fn record(&mut self, key: &ImvuKey, event: HistoryEvent) {
        let writes = vec![CanonWrite::Append { prefix: records::history_prefix(key), value: records::encode(&event) }];
        let token = self.commit(&key, writes, Then::Nothing);
        if let Some(cell) = self.cells.get_mut(&key.id.0) {
            cell.last_commit = token;
        }
    }

    /// A transition of a resident IMVU.
    fn lifecycle(&mut self, key: ImvuKey, transition: Transition, caller: &Caller, reply: Reply<ImvuInfo>) {
        let id = key.id.0;
        let (from, tenant, created_unix_ms) = {
            let cell = &self.cells[&id];
            (cell.lifecycle, cell.tenant.clone(), cell.created_unix_ms)
        };
        let to = match LifecycleState::apply(Some(from), transition) {
            Ok(to) => to,
            Err(e) => {
                self.effects.push(Effect::ReplyInfo(reply, Err(e)));
                return;
            }
        };
        let outcome = self.admit(&tenant, &key.tenant, transition, caller);
        let mut record = TransitionRecord {
            transition,
            from: Some(from),
            to: Some(to),
            handshake: outcome.clone(),
            caller: caller.principal.clone(),
            unix_ms: self.unix_ms,
            final_state: None,
        };
        if let HandshakeOutcome::Refused { stage, reason, transient } = outcome {
            record.to = Some(from);
            self.record(&key, HistoryEvent::Transition(record));
            self.effects.push(Effect::ReplyInfo(reply, Err(refusal_error(stage, transition, reason, transient))));
            return;
        }
        let meta = ImvuMeta { kind: I::KIND.to_owned(), lifecycle: to, created_unix_ms };
        let now_ms = self.now_ms;
        let behaviour = self.env.behaviour.clone();
        let cell = self.cells.get_mut(&id).expect("resident: ensured by the caller");
        let hook = quiet_panic::catch(|| match transition {
            Transition::Pause => behaviour.on_pause(&mut cell.state),
            Transition::Resume => behaviour.on_resume(&mut cell.state),
            Transition::Terminate => behaviour.on_terminate(&mut cell.state),
            Transition::Create | Transition::Activate => {}
        });
        if let Err(panic) = hook {
            tracing::warn!(%key, %transition, %panic, "lifecycle hook panicked; transition proceeds");
        }
        cell.lifecycle = to;
        cell.last_used_ms = now_ms;
        let snapshot = match records::encode_state(&*cell.state) {
            Ok(snapshot) => snapshot,
            Err(reason) => {
                self.effects.push(Effect::ReplyInfo(reply, Err(ActorError::Crashed { key: key.to_string(), reason })));
                return;
            }
        };
        if to == LifecycleState::Terminated {
            record.final_state = serde_json::from_slice(&snapshot).ok();
        }
        let writes = vec![
            CanonWrite::Append { prefix: records::history_prefix(&key), value: records::encode(&HistoryEvent::Transition(record)) },
            CanonWrite::Put { key: records::meta_key(&key), value: records::encode(&meta) },
            CanonWrite::Put { key: records::snap_key(&key), value: snapshot },
        ];
        transition_counter(transition);
        let info = self.info(&key);
        let token = self.commit(&key, writes, Then::Info(reply, Box::new(info)));
        if let Some(cell) = self.cells.get_mut(&id) {
            cell.last_commit = token;
        }
        match to {
            LifecycleState::Active if transition == Transition::Resume => self.release_held(&key),
            LifecycleState::Terminated => {
                for Held(_, reply) in self.held.remove(&id).into_iter().flatten() {
                    if let Some(reply) = reply {
                        self.effects.push(Effect::ReplyAsk(reply, Err(ActorError::Terminated(key.to_string()))));
                    }
                }
                bump(&tenant.live_imvus, false);
                self.evict(id);
            }
            _ => {}
        }
    }

    /// Delivers held messages in arrival order after a resume.
    fn release_held(&mut self, key: &ImvuKey) {
        let Some(queue) = self.held.remove(&key.id.0) else {
            return;
        };
        for Held(delivery, reply) in queue {
            // A crash while draining is supervised like any other; escalation out of a resume
            // is reported at the next message (the shard keeps its invariants either way).
            let _ = self.handle_command(delivery.into_command(*key, reply));
        }
    }

    fn passivate(&mut self, idle_ms: u64, reply: oneshot::Sender<usize>) {
        let now = self.now_ms;
        let lifecycle_only = self.env.behaviour.persistence() == Persistence::LifecycleOnly;
        let mut candidates: Vec<u64> = self
            .cells
            .iter()
            .filter(|(id, c)| now.saturating_sub(c.last_used_ms) >= idle_ms && c.lifecycle != LifecycleState::Paused && !self.held.contains_key(id))
            .filter(|(id, _)| !self.passivating.contains_key(id))
            .filter(|(_, c)| !self.env.behaviour.keep_resident(&c.state))
            .map(|(id, _)| *id)
            .collect();
        candidates.sort_unstable();
        if !lifecycle_only {
            // Their state is durable already: let go at once.
            for id in &candidates {
                self.evict(*id);
            }
            let count = candidates.len();
            self.counters.passivations.increment(count as u64);
            if self.has_pending() {
                // Answer once everything written so far is durable.
                self.push_commit(Vec::new(), Pending::Passivated { reply, count });
            } else {
                self.effects.push(Effect::ReplyCount(reply, count));
            }
            return;
        }
        // Their state is only in memory: write it, and let go of each once its write is
        // durable. A write refused (a full commit queue, a canon without quorum) leaves the
        // IMVU resident with its state, for the next passivation; letting go first lost that
        // state. One whose state cannot be encoded stays resident too.
        let call = self.next_passivation_call;
        self.next_passivation_call += 1;
        let mut outstanding = 0;
        for id in candidates {
            let cell = &self.cells[&id];
            let key = ImvuKey { tenant: cell.tenant.id, id: ImvuId(id) };
            match records::encode_state(&*cell.state) {
                Ok(snapshot) => {
                    let token = self.commit(&key, vec![CanonWrite::Put { key: records::snap_key(&key), value: snapshot }], Then::Passivate { call });
                    if let Some(cell) = self.cells.get_mut(&id) {
                        cell.last_commit = token;
                    }
                    self.passivating.insert(id, token);
                    outstanding += 1;
                }
                Err(reason) => tracing::error!(%key, %reason, "cannot passivate"),
            }
        }
        if outstanding == 0 {
            self.effects.push(Effect::ReplyCount(reply, 0));
        } else {
            self.passivation_calls.insert(call, PassivationCall { reply, passivated: 0, outstanding, failed: 0, first_error: None });
        }
    }

    /// The outcome of a passivation's write of `key`'s state (commit `token`, call `call`).
    /// Durable: the IMVU is evicted, unless a command reached it meanwhile. Refused: it stays
    /// resident, unless the refusal is a fence (the IMVU is no longer this node's), which
    /// evicts it as any failed commit does. The call is answered after its last write.
    ///
    /// `more`: answers and sends of messages handled meanwhile that waited for this write (as
    /// an answer waits for its IMVU's commit in flight). They go out unless the IMVU is no
    /// longer this node's: a refused write takes nothing back from the state they saw.
    fn passivation_written(&mut self, key: ImvuKey, token: u64, call: u64, more: Vec<(Then<I>, Vec<Outgoing>)>, result: Result<u64, StoreError>) {
        let id = key.id.0;
        let fenced = matches!(result, Err(StoreError::Conflict { .. }));
        let fence_error = fenced.then(|| ActorError::from(StoreError::Conflict { key: records::snap_key(&key) }));
        for (then, outgoing) in more {
            if fence_error.is_none() {
                self.dispatch(key, outgoing);
            }
            self.answer(then, fence_error.as_ref());
        }
        let ours = self.passivating.get(&id) == Some(&token);
        if ours {
            self.passivating.remove(&id);
        }
        let mut evicted = false;
        let mut failure = None;
        match result {
            Ok(_) => {
                if self.unsettled.get(&id).is_some_and(|(last, poisoned)| *last == token && !poisoned) {
                    self.unsettled.remove(&id);
                }
                if ours && self.cells.contains_key(&id) {
                    self.evict(id);
                    evicted = !self.cells.contains_key(&id);
                }
            }
            Err(e @ StoreError::Conflict { .. }) => {
                self.poison(id, &e);
                failure = Some(e.to_string());
            }
            Err(e) => failure = Some(e.to_string()),
        }
        if evicted {
            self.counters.passivations.increment(1);
        }
        let Some(waiting) = self.passivation_calls.get_mut(&call) else { return };
        waiting.outstanding -= 1;
        waiting.passivated += usize::from(evicted);
        if let Some(error) = failure {
            waiting.failed += 1;
            waiting.first_error.get_or_insert(error);
        }
        if waiting.outstanding == 0 {
            let Some(done) = self.passivation_calls.remove(&call) else { return };
            if done.failed > 0 {
                tracing::warn!(
                    kind = I::KIND,
                    failed = done.failed,
                    first_error = done.first_error.as_deref().unwrap_or(""),
                    "passivation could not write these IMVUs' state now; they stay resident for the next one"
                );
            }
            self.effects.push(Effect::ReplyCount(done.reply, done.passivated));
        }
    }
}

#[cfg(test)]
mod tests;

/// What a caller of a refused transition gets: the refusal, or, when it was about the node's
/// condition right now, the same words as a retryable `Unavailable` (HTTP 503, not 403).
fn refusal_error(stage: crate::handshake::Stage, transition: Transition, reason: String, transient: bool) -> ActorError {
    let refused = ActorError::HandshakeRefused { stage, transition, reason };
    if transient {
        ActorError::Unavailable(refused.to_string())
    } else {
        refused
    }
}
