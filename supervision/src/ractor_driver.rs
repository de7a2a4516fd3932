//! A thin ractor driver for node-level system actors.
//!
//! [`SupervisorActor`] owns one [`Supervisor`] core and carries out its
//! directives on real ractor actors: children are spawned linked to the
//! supervisor, their `ActorFailed`/`ActorTerminated` events become
//! `handle_child_exit` calls, and stops are ordered (reverse start order,
//! graceful `stop` with the child's `shutdown_timeout_ms`, then a hard kill).
//!
//! Exits are matched by `ActorId`, not by child id: the exit of an incarnation
//! the supervisor stopped itself (or one already replaced) is stale and never
//! reaches the core, so it is not counted as a failure.
//!
//! Escalation: a supervisor whose intensity is exceeded stops its children,
//! calls `on_escalate` when set (the root: one `tracing::error!` line, and the
//! binary stops the node) and fails, so its parent sees `ActorFailed` and
//! applies its own strategy. Nested `SupervisorActor`s thus escalate to the
//! root.
//!
//! Deliberately absent: dynamic children (IMVUs are supervised by the host in
//! `actors`), metrics (restarts are `tracing` events on target
//! [`RESTART_TARGET`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RactorErr, RpcReplyPort, SpawnErr,
    SupervisionEvent,
};

use crate::clock::Clock;
use crate::constants::{KILL_WAIT_MS, RESTART_ATTEMPTS_PER_EXIT_MAX};
use crate::core::{ChildSpec, Directive, ExitReason, Intensity, Strategy, Supervisor};
use crate::error::SupervisionError;

/// `tracing` target of the events emitted for each restart and escalation.
pub const RESTART_TARGET: &str = "vcos_supervision::restart";

/// Stop reason given to children stopped by their supervisor.
pub const SHUTDOWN_REASON: &str = "shutdown";

/// The future a [`StartFn`] returns: the started child's cell.
pub type StartFuture = Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>>;

/// Starts one incarnation of a child. It receives the supervisor's cell and
/// must spawn the child linked to it (e.g. `Actor::spawn_linked`).
pub type StartFn = Arc<dyn Fn(ActorCell) -> StartFuture + Send + Sync>;

/// Called once with the reason when a supervisor escalates.
pub type EscalateFn = Arc<dyn Fn(String) + Send + Sync>;

/// A child: its spec and how to start it.
#[derive(Clone)]
pub struct ChildDef {
    /// Id, restart type and shutdown timeout.
    pub spec: ChildSpec<String>,
    /// Spawns a new incarnation linked to the given supervisor cell.
    pub start: StartFn,
}

impl ChildDef {
    /// A child started by `Actor::spawn_linked` with a fresh `(handler,
    /// arguments)` pair from `make` for each incarnation (no registry name,
    /// so incarnations never collide).
    pub fn actor<A, F>(spec: ChildSpec<String>, make: F) -> Self
    where
        A: Actor,
        F: Fn() -> (A, A::Arguments) + Send + Sync + 'static,
    {
        let start: StartFn = Arc::new(move |supervisor: ActorCell| -> StartFuture {
            let (handler, arguments) = make();
            Box::pin(async move {
                let (actor, _join) = A::spawn_linked(None, handler, arguments, supervisor).await?;
                Ok(actor.get_cell())
            })
        });
        Self { spec, start }
    }
}

impl std::fmt::Debug for ChildDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildDef")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// Arguments of [`SupervisorActor`].
#[derive(Clone)]
pub struct SupervisorArgs {
    /// Name used in logs and errors (not registered with ractor).
    pub name: String,
    /// Restart strategy.
    pub strategy: Strategy,
    /// Restart intensity.
    pub intensity: Intensity,
    /// Children, in start order.
    pub children: Vec<ChildDef>,
    /// Time source for the restart window.
    pub clock: Arc<dyn Clock>,
    /// Set for the root supervisor only: called once when it escalates.
    pub on_escalate: Option<EscalateFn>,
}

impl std::fmt::Debug for SupervisorArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorArgs")
            .field("name", &self.name)
            .field("strategy", &self.strategy)
            .field("intensity", &self.intensity)
            .field("children", &self.children)
            .finish_non_exhaustive()
    }
}

/// Messages a [`SupervisorActor`] accepts.
#[derive(Debug)]
pub enum SupervisorMsg {
    /// Child ids in start order, each with the `ActorId` of its running
    /// incarnation (`None` while it is not running).
    WhichChildren(RpcReplyPort<Vec<(String, Option<ActorId>)>>),
    /// The cell of a running child, by child id.
    ChildCell(String, RpcReplyPort<Option<ActorCell>>),
    /// Ordered shutdown: children stopped in reverse start order (each
    /// gracefully within its timeout, then killed); the reply comes when all
    /// are down, then the supervisor stops with reason `shutdown`.
    Shutdown(RpcReplyPort<()>),
}

/// A supervisor actor (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct SupervisorActor;

/// State of a [`SupervisorActor`].
pub struct SupervisorState {
    name: String,
    core: Supervisor<String>,
    defs: BTreeMap<String, ChildDef>,
    /// Running incarnations by child id, and the reverse index.
    running: BTreeMap<String, ActorCell>,
    by_actor: BTreeMap<ActorId, String>,
    clock: Arc<dyn Clock>,
    on_escalate: Option<EscalateFn>,
}

impl std::fmt::Debug for SupervisorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorState")
            .field("name", &self.name)
            .field("core", &self.core)
            .field("running", &self.running.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// How a ractor termination reason maps to an OTP exit reason: no reason,
/// `normal`, `shutdown` and ractor's `Drained` are normal exits; anything
/// else (`killed`, a custom reason) is abnormal, as in OTP.
pub fn exit_reason_of_termination(reason: Option<&str>) -> ExitReason {
    match reason {
        None | Some("normal") | Some("shutdown") | Some("Drained") => ExitReason::Normal,
        Some(other) => ExitReason::Failed(other.to_owned()),
    }
}

impl Actor for SupervisorActor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            name: args.name,
            core: Supervisor::new(args.strategy, args.intensity),
            defs: BTreeMap::new(),
            running: BTreeMap::new(),
            by_actor: BTreeMap::new(),
            clock: args.clock,
            on_escalate: args.on_escalate,
        };
        for def in args.children {
            state.core.add_child(def.spec.clone())?;
            state.defs.insert(def.spec.id.clone(), def);
        }
        let supervisor = myself.get_cell();
        for id in state.core.start_order() {
            if let Err(err) = state.start_child(&supervisor, &id).await {
                tracing::warn!(supervisor = %state.name, child = %id, error = %err, "child failed to start");
                let order = state.core.handle_shutdown();
                state.stop_everything(&order).await;
                return Err(SupervisionError::StartFailed {
                    id,
                    reason: err.to_string(),
                }
                .into());
            }
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A graceful stop from the parent: stop children in order instead of
        // leaving them to ractor's unordered kill of linked children.
        let order = state.core.handle_shutdown();
        state.stop_everything(&order).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::WhichChildren(reply) => {
                let children = state
                    .core
                    .start_order()
                    .into_iter()
                    .map(|id| {
                        let actor = state.running.get(&id).map(ActorCell::get_id);
                        (id, actor)
                    })
                    .collect();
                // The caller may have given up waiting; nothing to do then.
                let _ = reply.send(children);
            }
            SupervisorMsg::ChildCell(id, reply) => {
                let _ = reply.send(state.running.get(&id).cloned());
            }
            SupervisorMsg::Shutdown(reply) => {
                let order = state.core.handle_shutdown();
                state.stop_everything(&order).await;
                let _ = reply.send(());
                myself.stop(Some(SHUTDOWN_REASON.to_owned()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match message {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, exit_reason_of_termination(reason.as_deref()))
            }
            SupervisionEvent::ActorFailed(cell, err) => (cell, ExitReason::Failed(err.to_string())),
            _ => return Ok(()),
        };
        let Some(id) = state.by_actor.remove(&cell.get_id()) else {
            // An incarnation this supervisor stopped or already replaced.
            tracing::trace!(supervisor = %state.name, actor = %cell.get_id(), "stale child exit ignored");
            return Ok(());
        };
        let removed = state.running.remove(&id);
        assert!(removed.is_some(), "running and by_actor agree");
        let now_ms = state.clock.now_ms();
        tracing::debug!(supervisor = %state.name, child = %id, reason = ?reason, "child exited");
        let directive = state.core.handle_child_exit(now_ms, &id, reason);
        state.carry_out(&myself.get_cell(), directive).await
    }
}

impl SupervisorState {
    /// Carries out `directive`, feeding failed restarts back to the core as
    /// new exits, at most `RESTART_ATTEMPTS_PER_EXIT_MAX` times.
    async fn carry_out(
        &mut self,
        supervisor: &ActorCell,
        mut directive: Directive<String>,
    ) -> Result<(), ActorProcessingErr> {
        for _attempt in 0..RESTART_ATTEMPTS_PER_EXIT_MAX {
            match directive {
                Directive::Ignore => {
                    self.forget_removed();
                    return Ok(());
                }
                Directive::Escalate { stop, reason } => {
                    return Err(self.escalate(&stop, reason).await);
                }
                Directive::Restart { stop, start } => {
                    let now_ms = self.clock.now_ms();
                    tracing::warn!(
                        target: RESTART_TARGET,
                        supervisor = %self.name,
                        stop = ?stop,
                        start = ?start,
                        restarts_in_window = self.core.restarts_in_window(now_ms),
                        "restarting children"
                    );
                    self.stop_all(&stop).await;
                    self.forget_removed();
                    match self.start_all(supervisor, &start).await {
                        Ok(()) => return Ok(()),
                        Err((id, err)) => {
                            let reason = ExitReason::Failed(format!("restart failed: {err}"));
                            directive =
                                self.core
                                    .handle_child_exit(self.clock.now_ms(), &id, reason);
                        }
                    }
                }
            }
        }
        let stop = self.core.handle_shutdown();
        let reason =
            format!("more than {RESTART_ATTEMPTS_PER_EXIT_MAX} restart attempts for one exit");
        Err(self.escalate(&stop, reason).await)
    }

    async fn escalate(&mut self, stop: &[String], reason: String) -> ActorProcessingErr {
        self.stop_everything(stop).await;
        match &self.on_escalate {
            Some(on_escalate) => {
                tracing::error!(
                    target: RESTART_TARGET,
                    supervisor = %self.name,
                    "root supervisor gave up, stopping the node: {reason}"
                );
                on_escalate(reason.clone());
            }
            None => {
                tracing::warn!(
                    target: RESTART_TARGET,
                    supervisor = %self.name,
                    "supervisor gave up, escalating to its parent: {reason}"
                );
            }
        }
        SupervisionError::Escalated {
            name: self.name.clone(),
            reason,
        }
        .into()
    }

    /// Drops the start functions of children the core no longer has.
    fn forget_removed(&mut self) {
        let core = &self.core;
        self.defs.retain(|id, _| core.contains(id));
    }

    async fn start_all(
        &mut self,
        supervisor: &ActorCell,
        ids: &[String],
    ) -> Result<(), (String, SpawnErr)> {
        for id in ids {
            if let Err(err) = self.start_child(supervisor, id).await {
                tracing::warn!(supervisor = %self.name, child = %id, error = %err, "child failed to restart");
                return Err((id.clone(), err));
            }
        }
        Ok(())
    }

    async fn start_child(&mut self, supervisor: &ActorCell, id: &str) -> Result<(), SpawnErr> {
        assert!(
            !self.running.contains_key(id),
            "a child runs one incarnation at a time"
        );
        let start = Arc::clone(
            &self
                .defs
                .get(id)
                .expect("every child has a definition")
                .start,
        );
        let cell = start(supervisor.clone()).await?;
        let linked = cell.try_get_supervisor().map(|parent| parent.get_id());
        if linked != Some(supervisor.get_id()) {
            tracing::warn!(supervisor = %self.name, child = %id, "start fn did not link the child; linking it now");
            cell.link(supervisor.clone());
        }
        self.by_actor.insert(cell.get_id(), id.to_owned());
        self.running.insert(id.to_owned(), cell);
        Ok(())
    }

    /// Stops `ids` in the given order.
    async fn stop_all(&mut self, ids: &[String]) {
        for id in ids {
            self.stop_child(id).await;
        }
    }

    /// Stops `ids` in the given order, then anything still running in reverse
    /// start order (nothing, unless the core and the running set disagree).
    async fn stop_everything(&mut self, ids: &[String]) {
        self.stop_all(ids).await;
        let order = self.core.start_order();
        self.stop_all_rev(&order).await;
        let rest: Vec<String> = self.running.keys().rev().cloned().collect();
        self.stop_all(&rest).await;
    }

    async fn stop_all_rev(&mut self, ids: &[String]) {
        for id in ids.iter().rev() {
            self.stop_child(id).await;
        }
    }

    /// Graceful stop within the child's timeout, then a hard kill. A child
    /// that is not running is skipped.
    async fn stop_child(&mut self, id: &str) {
        let Some(cell) = self.running.remove(id) else {
            return;
        };
        let removed = self.by_actor.remove(&cell.get_id());
        assert!(removed.is_some(), "running and by_actor agree");
        // From `defs`, not the core: a stopped temporary sibling has already
        // left the core but still deserves its graceful stop.
        let timeout_ms = self
            .defs
            .get(id)
            .map_or(0, |def| def.spec.shutdown_timeout_ms);
        let stopped = cell
            .stop_and_wait(
                Some(SHUTDOWN_REASON.to_owned()),
                Some(Duration::from_millis(timeout_ms)),
            )
            .await;
        match stopped {
            Ok(()) => {}
            Err(RactorErr::Timeout) => {
                tracing::warn!(supervisor = %self.name, child = %id, timeout_ms, "child did not stop in time; killing it");
                if let Err(err) = cell
                    .kill_and_wait(Some(Duration::from_millis(KILL_WAIT_MS)))
                    .await
                {
                    tracing::error!(supervisor = %self.name, child = %id, error = %err, "child did not die after kill");
                }
            }
            // The child is already gone.
            Err(_) => {}
        }
    }
}
