//! [`Shard`]: what drives one [`ShardCore`].
//!
//! It owns what the core may not touch: the store, the clock. Each wake (of its task, or an
//! ask run by its caller) it drains commit completions, reads the clock once, feeds the batch
//! of commands (draining completions again between commands as soon as one arrives, so a
//! failed commit poisons its IMVU before anything else runs on it), then performs the effects
//! in order. It never waits on the store: completions are pushed by the store (from whatever
//! thread completes them) into a queue and wake the task.
//!
//! The shard sits behind its slot's mutex (`super::link`), which the task takes for each wake
//! and an asking caller may take to run its ask at once: the task holds it only while it
//! steps, never across an await.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;
use vcos_supervision::Clock;

use super::core::{CoreEnv, Effect, ShardCore};
use super::Command;
use crate::handshake::{Handshake, NodeHealth};
use crate::imvu::Imvu;
use crate::records;
use crate::router::Router;
use crate::store::{CanonStore, StoreError};
use crate::tenants::Tenants;

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
    /// Placement's answer: may this node serve an IMVU now, under which fence.
    pub ownership: Arc<dyn crate::ownership::Ownership>,
    /// Where messages between IMVUs go (set once the runtime exists).
    pub router: Arc<OnceLock<Arc<dyn Router>>>,
    /// Where model requests go (`Runtime::set_models`; until then they are answered
    /// `unavailable`).
    pub models: ModelsSlot,
    /// Where activities run (set once the runtime exists).
    pub activities: ActivitiesSlot,
    /// In-process watchers of IMVUs.
    pub notices: Arc<crate::notices::Notices>,
}

/// The runtime's activities and a handle to answer with (set once the runtime exists).
pub(crate) type ActivitiesSlot = Arc<OnceLock<(Arc<crate::activities::ActivityRegistry>, crate::WeakRuntime)>>;

/// The runtime's [`crate::models::Models`], replaceable once models are loaded.
pub(crate) type ModelsSlot = Arc<std::sync::RwLock<Arc<dyn crate::models::Models>>>;

/// Why a shard stopped.
#[derive(Debug)]
pub(crate) enum ShardExit {
    /// Its channel closed: the node is stopping.
    Closed,
    /// Its supervisor gave up: the parent (the node's root supervisor) must decide.
    Escalated(String),
}

/// Commit completions on their way back to the shard task.
#[derive(Default)]
struct Completions {
    queue: Mutex<Vec<(u64, Result<u64, StoreError>)>>,
    /// Set when `queue` is not empty: checked between commands.
    ready: AtomicBool,
    /// Set while someone (the task, or a caller running an ask) steps the shard: it drains
    /// what arrives before it stops, so a completion then needs no wake-up of the task (a store
    /// that completes at once, inside the commit call, would otherwise wake it for every
    /// commit, on another thread).
    stepping: AtomicBool,
    wake: Notify,
}

impl Completions {
    fn push(&self, token: u64, result: Result<u64, StoreError>) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push((token, result));
        // SeqCst with `end_step`: either this sees `stepping` cleared and wakes the task, or
        // the stepper sees `ready` after clearing it and wakes the task.
        if !self.ready.swap(true, Ordering::SeqCst) && !self.stepping.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    fn begin_step(&self) {
        self.stepping.store(true, Ordering::SeqCst);
    }

    /// A completion that came after the step's last drain wakes the task.
    fn end_step(&self) {
        self.stepping.store(false, Ordering::SeqCst);
        if self.ready.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }
}

/// What wakes a shard's task besides its channel and its timer: a commit completion, or a
/// caller's inline step that needs the task.
pub(crate) struct CompletionWake(Arc<Completions>);

impl CompletionWake {
    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.wake.notified()
    }
}

/// Reports a commit's outcome to the shard; a completion the store drops without calling it
/// (a writer that stopped) reports [`StoreError::Closed`], so no caller waits forever.
struct CompletionGuard {
    completions: Option<Arc<Completions>>,
    token: u64,
}

impl CompletionGuard {
    fn complete(mut self, result: Result<u64, StoreError>) {
        if let Some(completions) = self.completions.take() {
            completions.push(self.token, result);
        }
    }
}

impl Drop for CompletionGuard {
    fn drop(&mut self) {
        if let Some(completions) = self.completions.take() {
            completions.push(self.token, Err(StoreError::Closed));
        }
    }
}

pub(crate) struct Shard<I: Imvu> {
    env: Arc<ShardEnv<I>>,
    core: ShardCore<I>,
    completions: Arc<Completions>,
    /// Reused buffers (the hot path allocates none of its own).
    effects: Vec<Effect<I>>,
    completed: Vec<(u64, Result<u64, StoreError>)>,
    /// The one-command batch of asks run by their callers (reused).
    inline: Vec<Command<I>>,
    /// The core's timer the task sleeps until (`None`: it sleeps until woken).
    armed_due_ms: Option<u64>,
    /// Why a caller's step escalated: the task exits with it at its next wake.
    escalated: Option<String>,
    messages: metrics::Counter,
}

impl<I: Imvu> Shard<I> {
    pub(crate) fn new(env: Arc<ShardEnv<I>>) -> Self {
        let core = ShardCore::new(CoreEnv {
            behaviour: env.behaviour.clone(),
            tenants: env.tenants.clone(),
            handshake: env.handshake.clone(),
            node: env.node.clone(),
            shard_intensity: env.shard_intensity,
            ownership: env.ownership.clone(),
        });
        Self {
            env,
            core,
            completions: Arc::default(),
            effects: Vec::new(),
            completed: Vec::new(),
            inline: Vec::with_capacity(1),
            armed_due_ms: None,
            escalated: None,
            messages: metrics::counter!("vcos_messages_total", "kind" => I::KIND),
        }
    }

    /// The task's sleep until the core's next timer (tokio time: simulated under the
    /// simulator; the due time is on the injected clock), noting what it sleeps until.
    pub(crate) fn arm_timer(&mut self) -> Option<u64> {
        self.armed_due_ms = self.core.next_timer_ms();
        self.armed_due_ms.map(|due_ms| due_ms.saturating_sub(self.env.clock.now_ms()))
    }

    /// Runs one command on the caller's thread, as the task would have in a wake of its own.
    /// Returns whether the task must wake: the step escalated, or set a timer earlier than
    /// the one it sleeps until.
    pub(crate) fn step_inline(&mut self, command: Command<I>) -> bool {
        let mut batch = std::mem::take(&mut self.inline);
        batch.push(command);
        // Handlers run under their own `catch`; a panic here is the shard's own code failing,
        // which on the task would end it with an escalation: the same, not the caller's panic.
        let stepped = vcos_supervision::quiet_panic::catch(|| self.step(&mut batch))
            .unwrap_or_else(|panic| Err(format!("shard panicked running an ask on its caller's thread: {panic}")));
        batch.clear();
        self.inline = batch;
        if let Err(reason) = stepped {
            self.escalated = Some(reason);
            return true;
        }
        match (self.core.next_timer_ms(), self.armed_due_ms) {
            (Some(due_ms), Some(armed_ms)) => due_ms < armed_ms,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// Whether asks may run on their callers' threads now.
    pub(crate) fn runs_inline(&self) -> bool {
        self.escalated.is_none()
    }

    /// What wakes the task besides its channel and its timer.
    pub(crate) fn completion_wake(&self) -> CompletionWake {
        CompletionWake(self.completions.clone())
    }

    /// Wakes the task (a caller's inline step needs it: see `step_inline`).
    pub(crate) fn wake_task(&self) {
        self.completions.wake.notify_one();
    }

    /// The task's wake: exits with a caller's escalation if there was one, else steps.
    pub(crate) fn step_served(&mut self, batch: &mut Vec<Command<I>>) -> Result<(), String> {
        if let Some(reason) = self.escalated.take() {
            return Err(reason);
        }
        self.step(batch)
    }

    /// Whether commits are still in flight.
    pub(crate) fn has_pending(&self) -> bool {
        self.core.has_pending()
    }

    /// Lets go of every cell (the shard is stopping; canon keeps them).
    pub(crate) fn evict_all(&mut self) {
        self.core.evict_all();
    }

    /// One wake: completions, the time, then each command followed by its effects (so a
    /// commit that fails at once poisons its IMVU before the next command runs), then the
    /// handler commits the core deferred to the end of the wake.
    fn step(&mut self, batch: &mut Vec<Command<I>>) -> Result<(), String> {
        self.completions.begin_step();
        let handled = self.handle_batch(batch);
        // Even on an escalation: its records and its callers' answers go out first.
        let flushed = self.flush();
        self.completions.end_step();
        handled.and(flushed)
    }

    fn handle_batch(&mut self, batch: &mut Vec<Command<I>>) -> Result<(), String> {
        self.core.set_now(self.env.clock.now_ms(), self.env.clock.unix_ms());
        self.perform()?;
        let fired = self.core.handle_timers();
        let performed = self.perform();
        fired.and(performed)?;
        let handled = batch.len() as u64;
        if self.env.behaviour.batches_replies() {
            group_replies(batch);
        }
        for command in batch.drain(..) {
            let handled = self.core.handle_command(command);
            let performed = self.perform();
            handled.and(performed)?;
        }
        self.messages.increment(handled);
        Ok(())
    }

    /// Sends the deferred handler commits (performing their effects may run more handlers,
    /// whose commits are deferred in turn: until none is left).
    fn flush(&mut self) -> Result<(), String> {
        let mut result = Ok(());
        while self.core.has_deferred() {
            self.core.flush();
            let performed = self.perform();
            result = result.and(performed);
        }
        result
    }

    fn drain_completions(&mut self) {
        self.completions.ready.store(false, Ordering::SeqCst);
        std::mem::swap(&mut *self.completions.queue.lock().unwrap_or_else(|p| p.into_inner()), &mut self.completed);
        for (token, result) in self.completed.drain(..) {
            self.core.handle_committed(token, result);
        }
    }

    /// Feeds the completions that arrived and performs the core's effects, until neither is
    /// left (a completion or a load's result may produce more).
    fn perform(&mut self) -> Result<(), String> {
        loop {
            if self.completions.ready.load(Ordering::Acquire) {
                self.drain_completions();
            }
            self.core.take_effects(&mut self.effects);
            if self.effects.is_empty() {
                return Ok(());
            }
            let mut effects = std::mem::take(&mut self.effects);
            let mut result = Ok(());
            for effect in effects.drain(..) {
                match effect {
                    Effect::Commit { token, writes } => {
                        let guard = CompletionGuard { completions: Some(self.completions.clone()), token };
                        self.env.store.commit(writes, Box::new(move |result| guard.complete(result)));
                    }
                    Effect::Load { key } => {
                        // Local reads of the node's canon replica: no waiting on anyone.
                        let store = &*self.env.store;
                        let loaded = store.get(&records::meta_key(&key)).and_then(|meta| {
                            let snapshot = store.get(&records::snap_key(&key))?;
                            let once = store.scan_prefix(&crate::once::records_prefix(&key), None, crate::once::ONCE_KEPT_MAX + 1)?;
                            Ok((meta, snapshot, once))
                        });
                        if result.is_ok() {
                            result = self.core.handle_loaded(key, loaded);
                        }
                    }
                    Effect::ReplyAsk(reply, value) => {
                        let _ = reply.send(value);
                    }
                    Effect::ReplyInfo(reply, value) => {
                        let _ = reply.send(value);
                    }
                    Effect::ReplyCount(reply, count) => {
                        let _ = reply.send(count);
                    }
                    Effect::Route { from, to, msg, ask } => match self.env.router.get() {
                        Some(router) => router.route(from, to, msg, ask),
                        None => tracing::warn!(%from, %to, "no router yet: message dropped"),
                    },
                    Effect::CreateChild { kind, ask } => match self.env.router.get() {
                        Some(router) => router.create_child(ask.from, &kind, ask),
                        None => tracing::warn!(from = %ask.from, "no router yet: child not created"),
                    },
                    Effect::Model { request, ask } => {
                        let models = self.env.models.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                        models.call(request, ask);
                    }
                    Effect::Activity { name, input, idempotency_key, ask } => match self.env.activities.get() {
                        Some((registry, runtime)) => {
                            let call = crate::activities::ActivityCall { tenant: ask.from.tenant, input, idempotency_key };
                            registry.spawn(&name, call, ask, runtime.clone());
                        }
                        None => tracing::warn!(from = %ask.from, "no activities yet: activity not run"),
                    },
                    Effect::Notify { key } => self.env.notices.notify(&key),
                }
            }
            self.effects = effects;
            result?;
        }
    }
}

/// Gathers the answers to each IMVU in `batch` into one [`Command::Replies`], in arrival
/// order, at the place of its first answer (later answers move ahead of the commands between
/// them: an answer is not ordered with the IMVU's messages). One handler run, one replay and
/// one snapshot per IMVU and wake, where a workflow's hundred answers cost a hundred.
fn group_replies<I: Imvu>(batch: &mut Vec<Command<I>>) {
    if batch.iter().filter(|c| matches!(c, Command::Reply { .. })).take(2).count() < 2 {
        return;
    }
    let mut first: std::collections::BTreeMap<crate::ids::ImvuKey, usize> = std::collections::BTreeMap::new();
    let commands = std::mem::take(batch);
    for command in commands {
        match command {
            Command::Reply { key, correlation, reply } => match first.get(&key) {
                Some(&at) => {
                    if let Some(Command::Replies { replies, .. }) = batch.get_mut(at) {
                        replies.push((correlation, reply));
                    }
                }
                None => {
                    first.insert(key, batch.len());
                    batch.push(Command::Replies { key, replies: vec![(correlation, reply)] });
                }
            },
            other => batch.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ImvuId, ImvuKey, TenantId};
    use crate::kinds::{Counter, CounterMsg};

    fn key(id: u64) -> ImvuKey {
        ImvuKey { tenant: TenantId::default_tenant(), id: ImvuId(id) }
    }

    fn reply(id: u64, correlation: u64) -> Command<Counter> {
        Command::Reply { key: key(id), correlation, reply: Box::new(Ok(serde_json::json!(correlation))) }
    }

    /// What a batch looks like: `R1:[3,5]` answers 3 and 5 to IMVU 1, `T1` a tell to it.
    fn shape(batch: &[Command<Counter>]) -> Vec<String> {
        batch
            .iter()
            .map(|c| match c {
                Command::Replies { key, replies } => format!("R{}:{:?}", key.id.0, replies.iter().map(|(n, _)| *n).collect::<Vec<_>>()),
                Command::Reply { key, correlation, .. } => format!("r{}:{correlation}", key.id.0),
                Command::Tell { key, .. } => format!("T{}", key.id.0),
                _ => "other".into(),
            })
            .collect()
    }

    #[test]
    fn answers_to_one_imvu_are_gathered_at_its_first_in_arrival_order() {
        let tell = |id| Command::Tell { key: key(id), msg: CounterMsg::Get };
        let mut batch = vec![reply(1, 3), tell(1), reply(2, 4), reply(1, 5), tell(2), reply(1, 6)];
        group_replies(&mut batch);
        assert_eq!(shape(&batch), ["R1:[3, 5, 6]", "T1", "R2:[4]", "T2"]);
        // A lone answer stays as it came.
        let mut batch = vec![reply(1, 3), tell(1)];
        group_replies(&mut batch);
        assert_eq!(shape(&batch), ["r1:3", "T1"]);
    }
}
