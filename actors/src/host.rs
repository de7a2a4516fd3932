//! The IMVU host: one task owns a shard of the IMVUs of one kind.
//!
//! Why not one ractor actor per IMVU: a ractor actor costs ~7.8 KB resident (four channels and
//! a boxed loop future) and 15 µs to spawn, and its mailbox is unbounded. Here an IMVU is a
//! [`Cell`] in its shard's table: its state, a pointer to its tenant, two counters and its
//! lifecycle — tens of bytes plus the state. It keeps actor semantics:
//! - **ordered, bounded mailbox**: its messages travel its shard's bounded channel in send
//!   order; a full channel is `QueueFull` for `try_tell` and back-pressure for `tell`/`ask`;
//! - **one message at a time**: the shard runs handlers one after another;
//! - **panic isolation**: every handler runs under `quiet_panic::catch`; a panic is a crash of
//!   that IMVU only, handled by its tenant's supervisor (the `vcos_supervision` core);
//! - **passivation**: an idle IMVU can be evicted; it lives on in canon (meta + snapshot) and
//!   is activated again by its next message.
//!
//! Invariant: canon is the truth. Anything that could make memory and canon disagree (a failed
//! commit, a crash) evicts the cell, and the next message reloads it from canon.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use vcos_supervision::{
    quiet_panic, ChildSpec, Clock, Directive, ExitReason, Strategy, Supervisor,
};

use crate::error::ActorError;
use crate::handshake::{bump, AdmissionRequest, Handshake, HandshakeOutcome, NodeHealth};
use crate::ids::{Caller, ImvuId, ImvuKey, TenantId};
use crate::imvu::{Context, Imvu, Persistence};
use crate::lifecycle::{LifecycleState, Transition};
use crate::records::{self, HistoryEvent, ImvuMeta, SupervisionRecord, TransitionRecord};
use crate::store::{commit_durable_blocking, CanonStore, CanonWrite};
use crate::tenants::{TenantEntry, Tenants};

/// Messages held for a paused IMVU, at most; beyond it the sender gets `QueueFull`.
pub const PAUSED_QUEUE_LEN_MAX: usize = 1024;
/// Commands a shard takes from its channel per wake-up.
pub(crate) const SHARD_BATCH_MAX: usize = 256;

type Reply<T> = oneshot::Sender<Result<T, ActorError>>;

/// What callers learn about an IMVU.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImvuInfo {
    /// `tenant/id`.
    pub key: ImvuKey,
    /// Kind name.
    pub kind: String,
    /// Lifecycle state.
    pub lifecycle: LifecycleState,
    /// The author's state, as JSON.
    pub state: serde_json::Value,
    /// Messages held while paused.
    pub held_messages: usize,
}

/// A command for a shard.
pub(crate) enum Command<I: Imvu> {
    // Rare commands box their bulk so that the common ones (tell, ask) stay small: every
    // command is copied into and out of the channel.
    Create {
        key: ImvuKey,
        caller: Box<Caller>,
        reply: Reply<ImvuInfo>,
    },
    Tell {
        key: ImvuKey,
        msg: I::Msg,
    },
    Ask {
        key: ImvuKey,
        msg: I::Msg,
        reply: Reply<I::Reply>,
    },
    Lifecycle {
        key: ImvuKey,
        transition: Transition,
        caller: Box<Caller>,
        reply: Reply<ImvuInfo>,
    },
    Inspect {
        key: ImvuKey,
        reply: Reply<ImvuInfo>,
    },
    /// Evict IMVUs idle for at least `idle_ms`; replies with how many were evicted.
    Passivate {
        idle_ms: u64,
        reply: oneshot::Sender<usize>,
    },
    /// Drop the in-memory copy (after a failed commit, or a sibling restart in a swarm).
    Evict {
        key: ImvuKey,
    },
}

/// A message held while its IMVU is paused.
enum Held<I: Imvu> {
    Tell(I::Msg),
    Ask(I::Msg, Reply<I::Reply>),
}

/// One resident IMVU.
struct Cell<S> {
    tenant: Arc<TenantEntry>,
    state: Box<S>,
    /// Host-local sequence of the last commit that carried this cell's state.
    last_commit: u64,
    /// Host clock (ms) when it last handled something.
    last_used_ms: u64,
    lifecycle: LifecycleState,
}

/// What a shard shares with the runtime.
pub(crate) struct ShardEnv<I: Imvu> {
    pub behaviour: Arc<I>,
    pub store: Arc<dyn CanonStore>,
    pub tenants: Arc<Tenants>,
    pub handshake: Handshake,
    pub node: Arc<NodeHealth>,
    pub clock: Arc<dyn Clock>,
    /// Intensity of the shard's supervisor over its tenant supervisors.
    pub shard_intensity: vcos_supervision::Intensity,
}

/// Why a shard stopped.
#[derive(Debug)]
pub(crate) enum ShardExit {
    /// Its channel closed: the node is stopping.
    Closed,
    /// Its supervisor gave up: the parent (the node's root supervisor) must decide.
    Escalated(String),
}

pub(crate) struct Shard<I: Imvu> {
    env: Arc<ShardEnv<I>>,
    cells: HashMap<u64, Cell<I::State>, ahash::RandomState>,
    held: BTreeMap<u64, VecDeque<Held<I>>>,
    /// One supervisor per tenant over that tenant's IMVUs (one-for-one).
    tenant_supervisors: BTreeMap<TenantId, Supervisor<ImvuId>>,
    /// The shard's own supervisor over the tenant supervisors.
    shard_supervisor: Supervisor<TenantId>,
    commit_seq: u64,
    durable_seq: Arc<AtomicU64>,
    self_tx: mpsc::WeakSender<Command<I>>,
    counters: Counters,
    clock_now_ms: u64,
    clock_unix_ms: u64,
}

struct Counters {
    messages: metrics::Counter,
    crashes: metrics::Counter,
    restarts: metrics::Counter,
    activations: metrics::Counter,
    passivations: metrics::Counter,
    resident: metrics::Gauge,
}

impl Counters {
    fn new(kind: &'static str) -> Self {
        Self {
            messages: metrics::counter!("vcos_messages_total", "kind" => kind),
            crashes: metrics::counter!("vcos_imvu_crashes_total", "kind" => kind),
            restarts: metrics::counter!("vcos_restarts_total", "kind" => kind),
            activations: metrics::counter!("vcos_activations_total", "kind" => kind),
            passivations: metrics::counter!("vcos_passivations_total", "kind" => kind),
            resident: metrics::gauge!("vcos_imvus_resident", "kind" => kind),
        }
    }
}

fn transition_counter(t: Transition) {
    metrics::counter!("vcos_lifecycle_transitions_total", "transition" => t.to_string())
        .increment(1);
}

impl<I: Imvu> Shard<I> {
    pub(crate) fn new(env: Arc<ShardEnv<I>>, self_tx: mpsc::WeakSender<Command<I>>) -> Self {
        let shard_supervisor = Supervisor::new(Strategy::OneForOne, env.shard_intensity);
        Self {
            env,
            // Fixed seeds: iteration order (passivation) is the same on every run.
            cells: HashMap::with_hasher(ahash::RandomState::with_seeds(1, 2, 3, 4)),
            held: BTreeMap::new(),
            tenant_supervisors: BTreeMap::new(),
            shard_supervisor,
            commit_seq: 0,
            durable_seq: Arc::new(AtomicU64::new(0)),
            self_tx,
            counters: Counters::new(I::KIND),
            clock_now_ms: 0,
            clock_unix_ms: 0,
        }
    }

    /// Runs until the channel closes or the shard's supervisor escalates.
    pub(crate) async fn run(mut self, rx: &mut mpsc::Receiver<Command<I>>) -> ShardExit {
        let mut batch = Vec::with_capacity(SHARD_BATCH_MAX);
        loop {
            if rx.recv_many(&mut batch, SHARD_BATCH_MAX).await == 0 {
                self.evict_all();
                return ShardExit::Closed;
            }
            self.read_clock();
            let mut handled = 0u64;
            for command in batch.drain(..) {
                handled += 1;
                if let Err(reason) = self.handle(command) {
                    self.evict_all();
                    return ShardExit::Escalated(reason);
                }
            }
            self.counters.messages.increment(handled);
        }
    }

    /// Handles one command; `Err` is an escalation out of the shard.
    fn handle(&mut self, command: Command<I>) -> Result<(), String> {
        match command {
            Command::Tell { key, msg } => self.deliver(key, msg, None),
            Command::Ask { key, msg, reply } => self.deliver(key, msg, Some(reply)),
            Command::Create { key, caller, reply } => {
                match self.create(&key, &caller) {
                    Ok((writes, info)) => self.commit_then(&key, writes, info, reply),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
                Ok(())
            }
            Command::Lifecycle {
                key,
                transition,
                caller,
                reply,
            } => {
                self.lifecycle(key, transition, &caller, reply);
                Ok(())
            }
            Command::Inspect { key, reply } => {
                let result = self.ensure_resident(&key).map(|_| self.info(&key));
                let _ = reply.send(result);
                Ok(())
            }
            Command::Passivate { idle_ms, reply } => {
                let _ = reply.send(self.passivate(idle_ms));
                Ok(())
            }
            Command::Evict { key } => {
                self.evict(key.id.0);
                Ok(())
            }
        }
    }

    /// Monotonic time, read once per batch of commands: a clock read costs as much as a
    /// handler, and one timestamp per batch is all supervision and passivation need.
    fn now_ms(&self) -> u64 {
        self.clock_now_ms
    }

    /// Wall-clock time (canon records), read once per batch.
    fn unix_ms(&self) -> u64 {
        self.clock_unix_ms
    }

    fn read_clock(&mut self) {
        self.clock_now_ms = self.env.clock.now_ms();
        self.clock_unix_ms = self.unix_ms();
    }

    fn info(&self, key: &ImvuKey) -> ImvuInfo {
        let cell = &self.cells[&key.id.0];
        ImvuInfo {
            key: key.clone(),
            kind: I::KIND.to_owned(),
            lifecycle: cell.lifecycle,
            state: serde_json::to_value(&*cell.state).unwrap_or(serde_json::Value::Null),
            held_messages: self.held.get(&key.id.0).map_or(0, VecDeque::len),
        }
    }

    /// Commits `writes` and sends `value` to `reply` once they are durable. A failed commit
    /// evicts the IMVU (memory may be ahead of canon) and reports the error.
    fn commit_then<T: Send + 'static>(
        &mut self,
        key: &ImvuKey,
        writes: Vec<CanonWrite>,
        value: T,
        reply: Reply<T>,
    ) {
        let done = self.completion(Some(key.clone()), move |result| {
            let _ = reply.send(result.map(|()| value));
        });
        self.env.store.commit(writes, done);
    }

    /// Commits without a reply (tells).
    fn commit_silently(&mut self, writes: Vec<CanonWrite>, key: ImvuKey) {
        let done = self.completion(Some(key), |_| {});
        self.env.store.commit(writes, done);
    }

    /// Wraps `then` with the shard's bookkeeping: advance the durable watermark; on failure,
    /// mark the store unhealthy and evict `key`.
    fn completion(
        &mut self,
        key: Option<ImvuKey>,
        then: impl FnOnce(Result<(), ActorError>) + Send + 'static,
    ) -> crate::store::Completion {
        self.commit_seq += 1;
        let seq = self.commit_seq;
        let durable = self.durable_seq.clone();
        let node = self.env.node.clone();
        let self_tx = self.self_tx.clone();
        Box::new(move |result| {
            durable.fetch_max(seq, Ordering::Release);
            match result {
                Ok(_) => {
                    node.store_healthy.store(true, Ordering::Relaxed);
                    then(Ok(()));
                }
                Err(e) => {
                    if e != crate::store::StoreError::Overloaded {
                        node.store_healthy.store(false, Ordering::Relaxed);
                    }
                    if let (Some(key), Some(tx)) = (key, self_tx.upgrade()) {
                        // Best effort: if the shard's queue is full the cell stays, and the
                        // next crash or passivation reloads it from canon anyway.
                        let _ = tx.try_send(Command::Evict { key });
                    }
                    then(Err(e.into()));
                }
            }
        })
    }

    /// Blocks until every commit this shard queued so far is durable. Used only on rare paths
    /// (crash restart, passivation) where canon must be read back exactly.
    fn wait_durable(&mut self) {
        self.wait_durable_upto(self.commit_seq);
    }

    /// Blocks until the shard's commit `seq` (and all before it) is durable.
    fn wait_durable_upto(&mut self, seq: u64) {
        if self.durable_seq.load(Ordering::Acquire) >= seq {
            return;
        }
        // The store is FIFO: an empty commit completes after all earlier ones.
        let _ = commit_durable_blocking(&*self.env.store, Vec::new());
    }

    fn create(
        &mut self,
        key: &ImvuKey,
        caller: &Caller,
    ) -> Result<(Vec<CanonWrite>, ImvuInfo), ActorError> {
        let tenant = self.env.tenants.get(&key.tenant)?;
        let unix_ms = self.unix_ms();
        let mut writes = Vec::with_capacity(4);
        for (transition, from, to) in [
            (Transition::Create, None, LifecycleState::Genesis),
            (
                Transition::Activate,
                Some(LifecycleState::Genesis),
                LifecycleState::Active,
            ),
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
            if let HandshakeOutcome::Refused { stage, reason } = outcome {
                // Refusals are recorded durably; nothing else of the creation is written.
                let prefix = if transition == Transition::Create {
                    records::refused_prefix(&key.tenant)
                } else {
                    records::history_prefix(key)
                };
                self.commit_silently(
                    vec![CanonWrite::Append {
                        prefix,
                        value: records::encode(&HistoryEvent::Transition(record)),
                    }],
                    key.clone(),
                );
                return Err(ActorError::HandshakeRefused {
                    stage,
                    transition,
                    reason,
                });
            }
            writes.push(CanonWrite::Append {
                prefix: records::history_prefix(key),
                value: records::encode(&HistoryEvent::Transition(record)),
            });
            transition_counter(transition);
        }
        let state = self.env.behaviour.genesis();
        let genesis_snapshot =
            records::encode_state(&state).map_err(|reason| ActorError::BadRequest {
                field: "kind".into(),
                reason,
            })?;
        let meta = ImvuMeta {
            kind: I::KIND.to_owned(),
            lifecycle: LifecycleState::Active,
            created_unix_ms: unix_ms,
        };
        writes.push(CanonWrite::Put {
            key: records::meta_key(key),
            value: records::encode(&meta),
        });
        writes.push(CanonWrite::Put {
            key: records::snap_key(key),
            value: genesis_snapshot,
        });
        bump(&tenant.live_imvus, true);
        self.insert_cell(key.id.0, tenant, state, LifecycleState::Active);
        self.cells
            .get_mut(&key.id.0)
            .expect("just inserted")
            .last_commit = self.commit_seq + 1;
        let info = self.info(key);
        Ok((writes, info))
    }

    fn admit(
        &self,
        tenant: &TenantEntry,
        entity_tenant: &TenantId,
        transition: Transition,
        caller: &Caller,
    ) -> HandshakeOutcome {
        self.env.handshake.admit(&AdmissionRequest {
            transition,
            tenant,
            entity_tenant,
            kind: I::KIND,
            caller,
            node: &self.env.node,
        })
    }

    fn insert_cell(
        &mut self,
        id: u64,
        tenant: Arc<TenantEntry>,
        state: I::State,
        lifecycle: LifecycleState,
    ) {
        let cell = Cell {
            tenant,
            state: Box::new(state),
            last_commit: 0,
            last_used_ms: self.now_ms(),
            lifecycle,
        };
        if self.cells.insert(id, cell).is_none() {
            self.env.node.resident_imvus.fetch_add(1, Ordering::Relaxed);
            self.counters.resident.increment(1.0);
        }
    }

    fn evict(&mut self, id: u64) {
        if self.held.get(&id).is_some_and(|q| !q.is_empty()) {
            // Held messages live only in memory: a paused IMVU with held messages stays.
            return;
        }
        if self.cells.remove(&id).is_some() {
            self.env.node.resident_imvus.fetch_sub(1, Ordering::Relaxed);
            self.counters.resident.decrement(1.0);
        }
    }

    fn evict_all(&mut self) {
        let ids: Vec<u64> = self.cells.keys().copied().collect();
        for id in ids {
            self.held.remove(&id);
            self.evict(id);
        }
    }

    /// Makes the IMVU resident, activating it from canon if needed.
    fn ensure_resident(&mut self, key: &ImvuKey) -> Result<(), ActorError> {
        if let Some(cell) = self.cells.get(&key.id.0) {
            // Ids are node-unique, but the tenant is part of the key: a cell of another
            // tenant under this id is, for this caller, nothing.
            if cell.tenant.id != key.tenant {
                return Err(ActorError::not_found("imvu", key));
            }
            return Ok(());
        }
        let meta_key = records::meta_key(key);
        let meta: ImvuMeta = match self.env.store.get(&meta_key)? {
            Some(bytes) => records::decode(&meta_key, &bytes)?,
            None => return Err(ActorError::not_found("imvu", key)),
        };
        if meta.kind != I::KIND {
            return Err(ActorError::not_found("imvu", key));
        }
        if meta.lifecycle == LifecycleState::Terminated {
            return Err(ActorError::Terminated(key.to_string()));
        }
        let state = self.load_state(key)?;
        let tenant = self.env.tenants.get(&key.tenant)?;
        self.insert_cell(key.id.0, tenant, state, meta.lifecycle);
        self.counters.activations.increment(1);
        Ok(())
    }

    fn load_state(&self, key: &ImvuKey) -> Result<I::State, ActorError> {
        let snap_key = records::snap_key(key);
        match self.env.store.get(&snap_key)? {
            Some(bytes) => Ok(records::decode(&snap_key, &bytes)?),
            None => Ok(self.env.behaviour.genesis()),
        }
    }

    fn deliver(
        &mut self,
        key: ImvuKey,
        msg: I::Msg,
        reply: Option<Reply<I::Reply>>,
    ) -> Result<(), String> {
        // Fast path: resident, active, this tenant's.
        if self
            .cells
            .get(&key.id.0)
            .is_some_and(|c| c.lifecycle == LifecycleState::Active && c.tenant.id == key.tenant)
        {
            return self.run_handler(key, msg, reply);
        }
        if let Err(e) = self.ensure_resident(&key) {
            if let Some(reply) = reply {
                let _ = reply.send(Err(e));
            }
            return Ok(());
        }
        let id = key.id.0;
        let lifecycle = self
            .cells
            .get(&id)
            .map_or(LifecycleState::Terminated, |c| c.lifecycle);
        match lifecycle {
            LifecycleState::Active => self.run_handler(key, msg, reply),
            LifecycleState::Paused => {
                let queue = self.held.entry(id).or_default();
                if queue.len() >= PAUSED_QUEUE_LEN_MAX {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(ActorError::QueueFull(format!(
                            "IMVU {key} is paused and already holds {PAUSED_QUEUE_LEN_MAX} messages"
                        ))));
                    }
                } else {
                    queue.push_back(match reply {
                        Some(reply) => Held::Ask(msg, reply),
                        None => Held::Tell(msg),
                    });
                }
                Ok(())
            }
            LifecycleState::Genesis | LifecycleState::Terminated => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(ActorError::IllegalTransition {
                        transition: Transition::Activate,
                        current: lifecycle.to_string(),
                    }));
                }
                Ok(())
            }
        }
    }

    fn run_handler(
        &mut self,
        key: ImvuKey,
        msg: I::Msg,
        reply: Option<Reply<I::Reply>>,
    ) -> Result<(), String> {
        let now_ms = self.now_ms();
        let unix_ms = self.unix_ms();
        let behaviour = &*self.env.behaviour;
        let cell = self
            .cells
            .get_mut(&key.id.0)
            .expect("resident: checked by deliver");
        cell.last_used_ms = now_ms;
        let mut ctx = Context {
            key: &key,
            unix_ms,
            stop_requested: false,
        };
        let state = &mut *cell.state;
        let every_message = behaviour.persistence() == Persistence::EveryMessage;
        let outcome = quiet_panic::catch(|| {
            if crate::failpoints::handler_should_panic(ctx.key) {
                panic!("failpoint: injected handler panic");
            }
            let reply = behaviour.handle(state, msg, &mut ctx);
            // Encoding runs the author's `Serialize`: inside the catch, so its failure is this
            // IMVU's crash, like a panic in `handle`.
            let snapshot = every_message
                .then(|| records::encode_state(&*state))
                .transpose();
            match snapshot {
                Ok(snapshot) => (reply, snapshot),
                Err(reason) => panic!("{reason}"),
            }
        });
        let stop_requested = ctx.stop_requested;
        match outcome {
            Ok((value, snapshot)) => {
                if let Some(snapshot) = snapshot {
                    let writes = vec![CanonWrite::Put {
                        key: records::snap_key(&key),
                        value: snapshot,
                    }];
                    cell.last_commit = self.commit_seq + 1;
                    match reply {
                        Some(reply) => self.commit_then(&key, writes, value, reply),
                        None => self.commit_silently(writes, key.clone()),
                    }
                } else if let Some(reply) = reply {
                    let _ = reply.send(Ok(value));
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
                    let _ = reply.send(Err(ActorError::Crashed {
                        key: key.to_string(),
                        reason: reason.clone(),
                    }));
                }
                self.supervise_crash(key, reason)
            }
        }
    }

    /// A handler panicked: ask the tenant's supervisor what to do, and do it.
    fn supervise_crash(&mut self, key: ImvuKey, reason: String) -> Result<(), String> {
        let now_ms = self.now_ms();
        let tenant = self.cells[&key.id.0].tenant.clone();
        let supervisor = self
            .tenant_supervisors
            .entry(key.tenant.clone())
            .or_insert_with(|| Supervisor::new(Strategy::OneForOne, tenant.policy.intensity()));
        // One-for-one needs no list of siblings, so an IMVU joins its supervisor only while it
        // is being handled: the supervisor holds the restart window, not a million children.
        let spec = ChildSpec {
            id: key.id,
            restart: self.env.behaviour.restart(),
            shutdown_timeout_ms: 0,
        };
        let _ = supervisor.add_child(spec);
        let mut directive =
            supervisor.handle_child_exit(now_ms, &key.id, ExitReason::Failed(reason.clone()));
        supervisor.remove_child(&key.id);
        let restarts_in_window = match directive {
            // An escalation's window is the one that overflowed.
            Directive::Escalate { .. } => supervisor.intensity().max_restarts + 1,
            _ => supervisor.restarts_in_window(now_ms),
        };
        if crate::failpoints::ignore_intensity() {
            if let Directive::Escalate { .. } = directive {
                // Planted bug (simulator only): keep restarting past the intensity.
                directive = Directive::Restart {
                    stop: Vec::new(),
                    start: vec![key.id],
                };
                self.tenant_supervisors.remove(&key.tenant);
            }
        }
        let unix_ms = self.unix_ms();
        match directive {
            Directive::Restart { .. } => {
                self.restart_from_canon(&key)?;
                self.record(
                    &key,
                    HistoryEvent::Supervision(SupervisionRecord {
                        reason,
                        decision: "restarted".into(),
                        restarts_in_window,
                        unix_ms,
                    }),
                );
                Ok(())
            }
            Directive::Ignore => {
                // Temporary (or transient exiting abnormally is restarted above): stays down,
                // which for an entity means terminated, final state = last durable snapshot.
                self.record(
                    &key,
                    HistoryEvent::Supervision(SupervisionRecord {
                        reason,
                        decision: "stopped".into(),
                        restarts_in_window,
                        unix_ms,
                    }),
                );
                let caller = Caller::internal(&key.tenant, "supervisor");
                let (tx, _rx) = oneshot::channel();
                self.restart_from_canon(&key)?;
                self.lifecycle(key, Transition::Terminate, &caller, tx);
                Ok(())
            }
            Directive::Escalate { reason: why, .. } => {
                self.record(
                    &key,
                    HistoryEvent::Supervision(SupervisionRecord {
                        reason: reason.clone(),
                        decision: "escalated".into(),
                        restarts_in_window,
                        unix_ms,
                    }),
                );
                self.escalate_tenant(
                    &key.tenant,
                    format!(
                        "tenant {} supervisor: {why}; last crash: {reason}",
                        key.tenant
                    ),
                )
            }
        }
    }

    /// The tenant supervisor gave up: stop its IMVUs (reverse start order, which for node-unique
    /// ids allocated in creation order is descending id), then let the shard supervisor decide.
    fn escalate_tenant(&mut self, tenant: &TenantId, reason: String) -> Result<(), String> {
        tracing::warn!(%tenant, kind = I::KIND, %reason, "tenant supervisor escalates");
        self.wait_durable();
        let mut ids: Vec<u64> = self
            .cells
            .iter()
            .filter(|(_, c)| &c.tenant.id == tenant)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        for id in ids {
            self.evict(id);
        }
        self.tenant_supervisors.remove(tenant);
        let _ = self.shard_supervisor.add_child(ChildSpec {
            id: tenant.clone(),
            restart: vcos_supervision::RestartType::Permanent,
            shutdown_timeout_ms: 0,
        });
        match self.shard_supervisor.handle_child_exit(
            self.now_ms(),
            tenant,
            ExitReason::Failed(reason.clone()),
        ) {
            // Restarting a tenant supervisor is a fresh restart window; its IMVUs come back
            // from canon on their next message.
            Directive::Restart { .. } | Directive::Ignore => Ok(()),
            Directive::Escalate { reason: why, .. } => Err(format!(
                "{} shard supervisor: {why}; cause: {reason}",
                I::KIND
            )),
        }
    }

    fn restart_from_canon(&mut self, key: &ImvuKey) -> Result<(), String> {
        // Only this IMVU's own state writes must have landed before it is read back.
        let last = self.cells.get(&key.id.0).map_or(0, |c| c.last_commit);
        self.wait_durable_upto(last);
        match self.load_state(key) {
            Ok(state) => {
                if let Some(cell) = self.cells.get_mut(&key.id.0) {
                    *cell.state = state;
                }
                self.counters.restarts.increment(1);
                Ok(())
            }
            Err(e) => {
                tracing::error!(%key, error = %e, "cannot reload IMVU from canon; evicting it");
                self.evict(key.id.0);
                Ok(())
            }
        }
    }

    fn record(&mut self, key: &ImvuKey, event: HistoryEvent) {
        let writes = vec![CanonWrite::Append {
            prefix: records::history_prefix(key),
            value: records::encode(&event),
        }];
        self.commit_silently(writes, key.clone());
    }

    fn lifecycle(
        &mut self,
        key: ImvuKey,
        transition: Transition,
        caller: &Caller,
        reply: Reply<ImvuInfo>,
    ) {
        if let Err(e) = self.ensure_resident(&key) {
            let e = match e {
                ActorError::Terminated(_) => ActorError::IllegalTransition {
                    transition,
                    current: "terminated".into(),
                },
                other => other,
            };
            let _ = reply.send(Err(e));
            return;
        }
        let id = key.id.0;
        let (from, tenant) = {
            let cell = &self.cells[&id];
            (cell.lifecycle, cell.tenant.clone())
        };
        let to = match LifecycleState::apply(Some(from), transition) {
            Ok(to) => to,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let outcome = self.admit(&tenant, &key.tenant, transition, caller);
        let unix_ms = self.unix_ms();
        let mut record = TransitionRecord {
            transition,
            from: Some(from),
            to: Some(to),
            handshake: outcome.clone(),
            caller: caller.principal.clone(),
            unix_ms,
            final_state: None,
        };
        if let HandshakeOutcome::Refused { stage, reason } = outcome {
            record.to = Some(from);
            let writes = vec![CanonWrite::Append {
                prefix: records::history_prefix(&key),
                value: records::encode(&HistoryEvent::Transition(record)),
            }];
            self.commit_silently(writes, key.clone());
            let _ = reply.send(Err(ActorError::HandshakeRefused {
                stage,
                transition,
                reason,
            }));
            return;
        }
        let meta = self.merge_created(
            &key,
            ImvuMeta {
                kind: I::KIND.to_owned(),
                lifecycle: to,
                created_unix_ms: 0,
            },
        );
        let now_ms = self.now_ms();
        let behaviour = self.env.behaviour.clone();
        let cell = self.cells.get_mut(&id).expect("resident: ensured above");
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
                let _ = reply.send(Err(ActorError::Crashed {
                    key: key.to_string(),
                    reason,
                }));
                return;
            }
        };
        if to == LifecycleState::Terminated {
            record.final_state = serde_json::from_slice(&snapshot).ok();
        }
        let writes = vec![
            CanonWrite::Append {
                prefix: records::history_prefix(&key),
                value: records::encode(&HistoryEvent::Transition(record)),
            },
            CanonWrite::Put {
                key: records::meta_key(&key),
                value: records::encode(&meta),
            },
            CanonWrite::Put {
                key: records::snap_key(&key),
                value: snapshot,
            },
        ];
        cell.last_commit = self.commit_seq + 1;
        transition_counter(transition);
        let info = self.info(&key);
        self.commit_then(&key, writes, info, reply);
        match to {
            LifecycleState::Active if transition == Transition::Resume => self.release_held(&key),
            LifecycleState::Terminated => {
                for held in self.held.remove(&id).into_iter().flatten() {
                    if let Held::Ask(_, reply) = held {
                        let _ = reply.send(Err(ActorError::Terminated(key.to_string())));
                    }
                }
                bump(&tenant.live_imvus, false);
                self.evict(id);
            }
            _ => {}
        }
    }

    /// Keeps the original creation time in the rewritten meta record.
    fn merge_created(&self, key: &ImvuKey, mut meta: ImvuMeta) -> ImvuMeta {
        let meta_key = records::meta_key(key);
        if let Ok(Some(bytes)) = self.env.store.get(&meta_key) {
            if let Ok(old) = records::decode::<ImvuMeta>(&meta_key, &bytes) {
                meta.created_unix_ms = old.created_unix_ms;
            }
        }
        meta
    }

    /// Delivers held messages in arrival order after a resume.
    fn release_held(&mut self, key: &ImvuKey) {
        let Some(queue) = self.held.remove(&key.id.0) else {
            return;
        };
        for held in queue {
            // A crash while draining is supervised like any other; escalation out of a resume
            // is reported at the next message (the shard keeps its invariants either way).
            let _ = match held {
                Held::Tell(msg) => self.deliver(key.clone(), msg, None),
                Held::Ask(msg, reply) => self.deliver(key.clone(), msg, Some(reply)),
            };
        }
    }

    fn passivate(&mut self, idle_ms: u64) -> usize {
        let now = self.now_ms();
        let lifecycle_only = self.env.behaviour.persistence() == Persistence::LifecycleOnly;
        let mut candidates: Vec<u64> = self
            .cells
            .iter()
            .filter(|(id, c)| {
                now.saturating_sub(c.last_used_ms) >= idle_ms
                    && c.lifecycle != LifecycleState::Paused
                    && !self.held.contains_key(id)
            })
            .map(|(id, _)| *id)
            .collect();
        candidates.sort_unstable();
        if lifecycle_only {
            // Their state is only in memory: write it before letting go. One whose state
            // cannot be encoded stays resident.
            let mut writable = Vec::with_capacity(candidates.len());
            for id in candidates {
                let cell = &self.cells[&id];
                let key = ImvuKey {
                    tenant: cell.tenant.id,
                    id: ImvuId(id),
                };
                match records::encode_state(&*cell.state) {
                    Ok(snapshot) => {
                        self.commit_silently(
                            vec![CanonWrite::Put {
                                key: records::snap_key(&key),
                                value: snapshot,
                            }],
                            key,
                        );
                        writable.push(id);
                    }
                    Err(reason) => tracing::error!(%key, %reason, "cannot passivate"),
                }
            }
            candidates = writable;
        }
        self.wait_durable();
        for id in &candidates {
            self.evict(*id);
        }
        self.counters
            .passivations
            .increment(candidates.len() as u64);
        candidates.len()
    }
}
